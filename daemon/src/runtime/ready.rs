//! Readiness: probe a server over HTTP (or, under JupyterHub's internal_ssl, TLS) from the
//! node, with a fine-grained backoff.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// First pause between probes; a fresh server often answers within a few tens of ms.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(10);
/// Longest pause between probes.
pub const MAX_BACKOFF: Duration = Duration::from_millis(200);
/// Deadline of one probe.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// One HTTP probe: true when the server sends back an HTTP status line. Any status counts,
/// as it does for JupyterHub's own wait. Docker's userland proxy accepts connections before
/// the server listens, so a connection alone proves nothing.
pub async fn probe(addr: SocketAddr, path: &str) -> bool {
    tokio::time::timeout(PROBE_TIMEOUT, probe_inner(addr, path))
        .await
        .unwrap_or(false)
}

async fn probe_inner(addr: SocketAddr, path: &str) -> bool {
    let Ok(mut conn) = TcpStream::connect(addr).await else {
        return false;
    };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: berthd\r\nConnection: close\r\n\r\n"
    );
    if conn.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut buf = [0u8; 12];
    let mut got = 0;
    while got < buf.len() {
        match conn.read(&mut buf[got..]).await {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    is_status_line(&buf[..got])
}

fn is_status_line(head: &[u8]) -> bool {
    head.len() >= 12 && head.starts_with(b"HTTP/") && head[9..12].iter().all(u8::is_ascii_digit)
}

/// One TLS probe of a server under JupyterHub's internal_ssl: true when it answers a TLS
/// handshake. Such a server demands a client certificate the node does not hold, so a
/// handshake the server ends with an alert counts too: a TLS server is listening. The
/// probe sends nothing and trusts nothing it receives, so the server's certificate is not
/// checked here (the hub checks it).
pub async fn probe_tls(addr: SocketAddr) -> bool {
    tokio::time::timeout(PROBE_TIMEOUT, probe_tls_inner(addr))
        .await
        .unwrap_or(false)
}

async fn probe_tls_inner(addr: SocketAddr) -> bool {
    let Ok(conn) = TcpStream::connect(addr).await else {
        return false;
    };
    let Some(config) = probe_tls_config() else {
        return false;
    };
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    let connector = tokio_rustls::TlsConnector::from(config);
    match connector.connect(name, conn).await {
        Ok(_) => true,
        Err(e) => e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .is_some_and(|e| matches!(e, rustls::Error::AlertReceived(_))),
    }
}

fn probe_tls_config() -> Option<Arc<rustls::ClientConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(AnyServer(provider.clone()));
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .ok()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Some(Arc::new(config))
}

/// Accepts any server certificate: the readiness probe only learns that TLS is spoken.
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &rustls::pki_types::CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &rustls::pki_types::CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Probes until the server answers (true) or `deadline` passes (false); over TLS when `tls`.
pub async fn wait_ready(addr: SocketAddr, path: &str, tls: bool, deadline: Instant) -> bool {
    let mut backoff = FIRST_BACKOFF;
    loop {
        let answered = if tls {
            probe_tls(addr).await
        } else {
            probe(addr, path).await
        };
        if answered {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        tokio::time::sleep(backoff.min(deadline - now)).await;
        backoff = (backoff * 3 / 2).min(MAX_BACKOFF);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[test]
    fn status_lines() {
        assert!(is_status_line(b"HTTP/1.1 200 OK"));
        assert!(is_status_line(b"HTTP/1.0 404 Not"));
        assert!(!is_status_line(b"HTTP/1.1 2"));
        assert!(!is_status_line(b"SSH-2.0-OpenSSH"));
        assert!(!is_status_line(b""));
    }

    #[tokio::test]
    async fn a_listener_that_closes_is_not_ready_but_one_that_answers_is() {
        let mute = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let mute_addr = mute.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((c, _)) = mute.accept().await {
                drop(c);
            }
        });
        assert!(!probe(mute_addr, "/").await);

        let http = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let http_addr = http.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut c, _)) = http.accept().await {
                let mut buf = [0u8; 256];
                let _ = c.read(&mut buf).await;
                let _ = c.write_all(b"HTTP/1.1 302 Found\r\n\r\n").await;
            }
        });
        let deadline = Instant::now() + Duration::from_secs(5);
        assert!(wait_ready(http_addr, "/user/a/api", false, deadline).await);
        let past = Instant::now();
        assert!(!wait_ready(mute_addr, "/", false, past).await);
        assert!(
            !probe_tls(mute_addr).await,
            "a closed connection is not TLS"
        );
        assert!(!probe_tls(http_addr).await, "plain HTTP is not TLS");
    }
}
