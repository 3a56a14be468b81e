//! TLS for the gRPC listener, reloadable: the rustls server configuration (certificate, key and
//! client CA) sits behind a handle that SIGHUP swaps, and every new connection's handshake uses
//! whatever configuration the handle holds at that moment. Connections already open keep the
//! session they negotiated; nothing is dropped by a reload.
//!
//! tonic's own `tls_config` builds its acceptor once, so the listener here does the handshakes
//! itself (tokio-rustls) and hands tonic finished streams through `serve_with_incoming`.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::RootCertStore;
use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::config::{self, ConfigError, SecurityConfig};

/// Longest a client may take over its handshake before the connection is closed.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Finished handshakes waiting for the server to take them.
const ACCEPTED_QUEUE: usize = 64;

/// The rustls configuration `sec` names (`tls_cert_file`, `tls_key_file`, `client_ca_file`),
/// its files read and checked the way `config check` reads them; errors name the file.
pub fn server_config(sec: &SecurityConfig) -> Result<Arc<ServerConfig>, ConfigError> {
    let (certs, key) = config::read_identity(&sec.tls_cert_file, &sec.tls_key_file)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls_err =
        |key: &str, path: &std::path::Path, e: &dyn std::fmt::Display| ConfigError::Invalid {
            key: key.to_owned(),
            message: format!("{}: {e}", path.display()),
        };
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err("security.tls_cert_file", &sec.tls_cert_file, &e))?;
    let builder = if sec.mutual_tls() {
        const CA: &str = "security.client_ca_file";
        let path = &sec.client_ca_file;
        let mut roots = RootCertStore::empty();
        for cert in config::read_certificate_ders(CA, path)? {
            roots
                .add(cert)
                .map_err(|e| tls_err(CA, path, &format!("not a usable CA certificate: {e}")))?;
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| tls_err(CA, path, &e))?;
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let mut cfg = builder
        .with_single_cert(certs, key)
        .map_err(|e| tls_err("security.tls_key_file", &sec.tls_key_file, &e))?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

/// The listener's TLS configuration, swapped whole by [`ReloadableTls::reload`].
#[derive(Clone)]
pub struct ReloadableTls {
    current: Arc<RwLock<Arc<ServerConfig>>>,
}

impl ReloadableTls {
    /// The configuration `sec` names, read now.
    pub fn load(sec: &SecurityConfig) -> Result<Self, ConfigError> {
        Ok(Self {
            current: Arc::new(RwLock::new(server_config(sec)?)),
        })
    }

    /// Reads the files again; on success new handshakes use them, on error the configuration
    /// in force stays and the error (naming the file) is returned.
    pub fn reload(&self, sec: &SecurityConfig) -> Result<(), ConfigError> {
        let fresh = server_config(sec)?;
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = fresh;
        Ok(())
    }

    fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(
            self.current
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
        )
    }
}

/// A connection whose TLS handshake is done, as tonic serves it.
pub struct TlsConn(tokio_rustls::server::TlsStream<TcpStream>);

impl Connected for TlsConn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.0.get_ref().0.connect_info()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

/// The connections of `listener`, each handed on once its handshake with the configuration
/// `tls` holds at accept time has finished. Handshakes run side by side, each for at most
/// [`HANDSHAKE_TIMEOUT`]; one that fails is logged (at debug: any port scanner causes them)
/// and dropped. Ends when `shutdown` is cancelled or the server stops taking connections.
pub fn incoming(
    listener: TcpListener,
    tls: ReloadableTls,
    shutdown: CancellationToken,
) -> ReceiverStream<Result<TlsConn, io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel(ACCEPTED_QUEUE);
    tokio::spawn(async move {
        loop {
            let (tcp, peer): (TcpStream, SocketAddr) = tokio::select! {
                () = shutdown.cancelled() => return,
                () = tx.closed() => return,
                accepted = listener.accept() => match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        // Out of file descriptors and the like: pause rather than spin.
                        tracing::warn!(error = %e, "cannot accept a gRPC connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let acceptor = tls.acceptor();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(TlsConn(stream))).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("key");
        let params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
        (
            params.self_signed(&key).expect("cert").pem(),
            key.serialize_pem(),
        )
    }

    fn current(tls: &ReloadableTls) -> Arc<ServerConfig> {
        tls.current.read().expect("lock").clone()
    }

    #[test]
    fn a_reload_swaps_the_configuration_and_a_bad_file_keeps_the_old_one() {
        let dir = std::env::temp_dir().join(format!("berth-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let (cert, key) = (dir.join("c.pem"), dir.join("k.pem"));
        let write = |(c, k): &(String, String)| {
            std::fs::write(&cert, c).expect("cert");
            std::fs::write(&key, k).expect("key");
        };
        write(&identity());
        let sec = SecurityConfig {
            tls_cert_file: cert.clone(),
            tls_key_file: key.clone(),
            ..SecurityConfig::default()
        };
        let tls = ReloadableTls::load(&sec).expect("loads");
        let first = current(&tls);
        assert_eq!(first.alpn_protocols, vec![b"h2".to_vec()], "gRPC is HTTP/2");
        write(&identity());
        tls.reload(&sec).expect("reloads");
        let second = current(&tls);
        assert!(!Arc::ptr_eq(&first, &second), "swapped");
        // A key that is not the certificate's: refused, naming the key file; the old stays.
        let (c, _) = identity();
        let (_, k) = identity();
        write(&(c, k.clone()));
        let err = tls.reload(&sec).expect_err("mismatch").to_string();
        assert!(err.contains(&key.display().to_string()), "{err}");
        assert!(!err.contains(k.lines().nth(1).expect("pem")), "{err}");
        assert!(Arc::ptr_eq(&second, &current(&tls)), "the old one stays");
        std::fs::remove_dir_all(&dir).ok();
    }
}
