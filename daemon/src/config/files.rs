//! The files a configuration names, read and checked the one way both `check-config` and
//! `serve` use them (the TLS files through [`crate::tls::server_config`], which `serve` and
//! SIGHUP use), so the two cannot disagree about a file.

use std::path::Path;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::{Config, ConfigError, invalid};
use crate::api::auth::MIN_TOKEN_BYTES;

/// Longest token accepted: far above any real one, low enough that a wrong file (a log, an
/// image) is caught rather than sent as a header.
pub(super) const MAX_TOKEN_BYTES: usize = 4096;

fn bad_file(key: &str, path: &Path, message: impl std::fmt::Display) -> ConfigError {
    invalid(key, format!("{}: {message}", path.display()))
}

fn read(key: &str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|e| bad_file(key, path, format!("cannot read: {e}")))
}

/// The PEM text of `path` (the file of `key`), checked to hold at least one certificate.
pub fn read_certificates(key: &str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    let pem = read(key, path)?;
    certificates(key, path, &pem)?;
    Ok(pem)
}

fn certificates(
    key: &str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad_file(key, path, format!("not PEM: {e}")))?;
    if certs.is_empty() {
        return Err(bad_file(key, path, "holds no PEM CERTIFICATE"));
    }
    Ok(certs)
}

/// The PEM text of `path` (the file of `key`), checked to hold a private key.
pub fn read_private_key(key: &str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    let pem = read(key, path)?;
    PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| bad_file(key, path, format!("holds no PEM private key: {e}")))?;
    Ok(pem)
}

/// The token in `path` (the file of `key`), surrounding whitespace removed: at least `min`
/// bytes, at most [`MAX_TOKEN_BYTES`], and only characters an HTTP header can carry. The file
/// must be readable by its owner alone (mode 0600 or stricter), as the registry auth file: a
/// token another local user can read opens the node to that user. Errors never quote the token.
pub fn read_token(key: &str, path: &Path, min: usize) -> Result<String, ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map_err(|e| bad_file(key, path, format!("cannot read: {e}")))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(bad_file(
            key,
            path,
            format!(
                "is readable or writable by group or others (mode {:o}); it holds a token: chmod 600 it",
                mode & 0o777
            ),
        ));
    }
    let bytes = read(key, path)?;
    let text = String::from_utf8(bytes).map_err(|_| bad_file(key, path, "is not UTF-8 text"))?;
    let token = text.trim();
    if token.len() < min.max(1) {
        return Err(bad_file(
            key,
            path,
            format!(
                "holds a token of {} bytes; at least {} are needed",
                token.len(),
                min.max(1)
            ),
        ));
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(bad_file(
            key,
            path,
            format!(
                "holds {} bytes; a token is at most {MAX_TOKEN_BYTES}",
                token.len()
            ),
        ));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
        return Err(bad_file(
            key,
            path,
            "the token holds characters an HTTP header cannot carry (only printable ASCII)",
        ));
    }
    Ok(token.to_owned())
}

/// Reads and checks every file `cfg` names, as `serve` will.
pub(super) fn check(cfg: &Config) -> Result<(), ConfigError> {
    let sec = &cfg.security;
    if sec.token() {
        read_token("security.token_file", &sec.token_file, MIN_TOKEN_BYTES)?;
    }
    if sec.tls() {
        // The listener's TLS configuration, built as `serve` builds it (and SIGHUP rebuilds it):
        // certificate and key, their match, and the client CA as a verifier's roots.
        crate::tls::server_config(sec)?;
    } else if sec.mutual_tls() {
        read_certificates("security.client_ca_file", &sec.client_ca_file)?;
    }
    let auth = &cfg.images.registry_auth_file;
    if !auth.as_os_str().is_empty() {
        crate::registry::AuthFile::read(auth)
            .map_err(|e| bad_file("images.registry_auth_file", auth, e))?;
    }
    let a = &cfg.activity;
    if a.enabled {
        read_token("activity.token_file", &a.token_file, 1)?;
        if !a.ca_file.as_os_str().is_empty() {
            read_certificates("activity.ca_file", &a.ca_file)?;
        }
    }
    Ok(())
}

/// The server certificate chain and its private key, read as [`check`] reads them: both parse
/// and the key is the certificate's. Errors name the key of the file and its path, never what
/// the key file holds.
pub fn read_identity(
    cert_path: &Path,
    key_path: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), ConfigError> {
    const CERT: &str = "security.tls_cert_file";
    const KEY: &str = "security.tls_key_file";
    let certs = certificates(CERT, cert_path, &read(CERT, cert_path)?)?;
    let key = PrivateKeyDer::from_pem_slice(&read(KEY, key_path)?)
        .map_err(|e| bad_file(KEY, key_path, format!("holds no PEM private key: {e}")))?;
    let provider = rustls::crypto::ring::default_provider();
    rustls::sign::CertifiedKey::from_der(certs.clone(), key.clone_key(), &provider).map_err(
        |e| {
            bad_file(
                KEY,
                key_path,
                format!("does not go with {}: {e}", cert_path.display()),
            )
        },
    )?;
    Ok((certs, key))
}

/// The certificates of the CA file of `key` at `path`, parsed.
pub fn read_certificate_ders(
    key: &str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    certificates(key, path, &read(key, path)?)
}
