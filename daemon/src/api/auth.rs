//! Bearer-token authentication of the Spawner service, compared in constant time.

use std::sync::{Arc, PoisonError, RwLock};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::{Request, Status};

/// Shortest token accepted from the token file.
pub const MIN_TOKEN_BYTES: usize = 16;

/// Checks `authorization: Bearer <token>` on every call; open when no token is configured.
/// Clones share the token, so [`BearerAuth::replace`] (SIGHUP) reaches the running server.
#[derive(Clone)]
pub struct BearerAuth {
    /// SHA-256 of the token: comparing digests keeps the comparison constant in time and
    /// independent of the token's length. `None` for an open server, which stays open.
    digest: Option<Arc<RwLock<[u8; 32]>>>,
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
            digest: Some(Arc::new(RwLock::new(
                Sha256::digest(token.as_bytes()).into(),
            ))),
        }
    }

    /// From now on only `token` passes (calls already admitted go on). Returns false, changing
    /// nothing, for a server started without a token: reloading never closes an open one or
    /// opens a closed one.
    pub fn replace(&self, token: &str) -> bool {
        let Some(digest) = &self.digest else {
            return false;
        };
        *digest.write().unwrap_or_else(PoisonError::into_inner) =
            Sha256::digest(token.as_bytes()).into();
        true
    }

    fn check(&self, header: Option<&str>) -> bool {
        let Some(digest) = &self.digest else {
            return true;
        };
        let want: [u8; 32] = *digest.read().unwrap_or_else(PoisonError::into_inner);
        let want = &want;
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

    #[test]
    fn a_replaced_token_reaches_every_clone() {
        let auth = BearerAuth::with_token("0123456789abcdef-old");
        let serving = auth.clone();
        assert!(auth.replace("0123456789abcdef-new"));
        assert!(serving.check(Some("Bearer 0123456789abcdef-new")));
        assert!(!serving.check(Some("Bearer 0123456789abcdef-old")));
        assert!(!BearerAuth::open().replace("0123456789abcdef-new"));
        assert!(BearerAuth::open().check(None));
    }
}
