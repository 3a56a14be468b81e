//! Bearer-token authentication of the Spawner service, compared in constant time.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::{Request, Status};

/// Shortest token accepted from the token file.
pub const MIN_TOKEN_BYTES: usize = 16;

/// Checks `authorization: Bearer <token>` on every call; open when no token is configured.
#[derive(Clone)]
pub struct BearerAuth {
    /// SHA-256 of the token: comparing digests keeps the comparison constant in time and
    /// independent of the token's length.
    digest: Option<[u8; 32]>,
}

/// Why a token file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Unreadable.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Too short to be a secret.
    #[error("{path} holds a token of {len} bytes; at least {MIN_TOKEN_BYTES} are needed")]
    TooShort {
        /// The file.
        path: String,
        /// Its length.
        len: usize,
    },
}

impl BearerAuth {
    /// No authentication (loopback development setups).
    pub fn open() -> Self {
        Self { digest: None }
    }

    /// Authentication with the token in `path` (surrounding whitespace ignored).
    pub fn from_file(path: &std::path::Path) -> Result<Self, TokenError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| TokenError::Read {
            path: shown.clone(),
            source,
        })?;
        let token = text.trim();
        if token.len() < MIN_TOKEN_BYTES {
            return Err(TokenError::TooShort {
                path: shown,
                len: token.len(),
            });
        }
        Ok(Self::with_token(token))
    }

    /// Authentication with `token`.
    pub fn with_token(token: &str) -> Self {
        Self {
            digest: Some(Sha256::digest(token.as_bytes()).into()),
        }
    }

    fn check(&self, header: Option<&str>) -> bool {
        let Some(want) = &self.digest else {
            return true;
        };
        let Some(token) = header.and_then(|h| h.strip_prefix("Bearer ")) else {
            return false;
        };
        let got: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        got.ct_eq(want).into()
    }
}

impl tonic::service::Interceptor for BearerAuth {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let header = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        if self.check(header) {
            Ok(request)
        } else {
            Err(super::status::with_reason(
                tonic::Code::Unauthenticated,
                "missing or invalid bearer token: send `authorization: Bearer <token>`".to_owned(),
                "UNAUTHENTICATED",
                vec![],
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_bearer_token_passes() {
        let auth = BearerAuth::with_token("0123456789abcdef-secret");
        assert!(auth.check(Some("Bearer 0123456789abcdef-secret")));
        assert!(!auth.check(None));
        assert!(!auth.check(Some("0123456789abcdef-secret")));
        assert!(!auth.check(Some("bearer 0123456789abcdef-secret")));
        assert!(!auth.check(Some("Bearer 0123456789abcdef-secreT")));
        assert!(!auth.check(Some("Bearer ")));
        assert!(BearerAuth::open().check(None));
    }
}
