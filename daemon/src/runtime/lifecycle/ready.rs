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

/// How the server is probed: plain HTTP, or TLS (JupyterHub's internal_ssl) with the CA bundle
/// its certificate must chain to, if the hub sent one.
#[derive(Debug, Clone)]
pub enum Scheme {
    /// An HTTP request; any status line counts.
    Http,
    /// A TLS handshake; the server's certificate is checked against these CAs (PEM) when
    /// there are any.
    Tls(Option<Vec<u8>>),
}

impl Scheme {
    /// The scheme of a server with `certs` (internal_ssl) or without.
    pub fn of(certs: Option<&crate::spec::Certs>) -> Self {
        match certs {
            None => Self::Http,
            Some(c) if c.server_ca.is_empty() => Self::Tls(None),
            Some(c) => Self::Tls(Some(c.server_ca.clone())),
        }
    }
}

/// One TLS probe of a server under JupyterHub's internal_ssl: true when it answers a TLS
/// handshake with a certificate that chains to `server_ca` (when given; its names are not
/// checked, as the node reaches the server on its own published address). Such a server
/// demands a client certificate the node does not hold, so a handshake the server ends with
/// an alert, after the node accepted its certificate, counts too.
pub async fn probe_tls(addr: SocketAddr, server_ca: Option<&[u8]>) -> bool {
    tokio::time::timeout(PROBE_TIMEOUT, probe_tls_inner(addr, server_ca))
        .await
        .unwrap_or(false)
}

async fn probe_tls_inner(addr: SocketAddr, server_ca: Option<&[u8]>) -> bool {
    let Some(config) = probe_tls_config(server_ca) else {
        return false;
    };
    let Ok(conn) = TcpStream::connect(addr).await else {
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

fn probe_tls_config(server_ca: Option<&[u8]>) -> Option<Arc<rustls::ClientConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier: Arc<dyn rustls::client::danger::ServerCertVerifier> = match server_ca {
        None => Arc::new(AnyServer(provider.clone())),
        Some(pem) => {
            use rustls::pki_types::pem::PemObject;
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls::pki_types::CertificateDer::pem_slice_iter(pem) {
                roots.add(cert.ok()?).ok()?;
            }
            let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots),
                provider.clone(),
            )
            .build()
            .ok()?;
            Arc::new(ChainOnly(inner))
        }
    };
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .ok()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Some(Arc::new(config))
}

/// Checks the server's certificate chain against the hub's CAs, not its names.
#[derive(Debug)]
struct ChainOnly(Arc<rustls::client::WebPkiServerVerifier>);

impl rustls::client::danger::ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        use rustls::{CertificateError, Error};
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(rustls::client::danger::ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Accepts any server certificate: with no CA from the hub side, the readiness probe only
/// learns that TLS is spoken.
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

/// Probes until the server answers (true) or `deadline` passes (false), as `scheme` says.
pub async fn wait_ready(addr: SocketAddr, path: &str, scheme: Scheme, deadline: Instant) -> bool {
    let mut backoff = FIRST_BACKOFF;
    loop {
        let answered = match &scheme {
            Scheme::Http => probe(addr, path).await,
            Scheme::Tls(ca) => probe_tls(addr, ca.as_deref()).await,
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
        assert!(wait_ready(http_addr, "/user/a/api", Scheme::Http, deadline).await);
        let past = Instant::now();
        assert!(!wait_ready(mute_addr, "/", Scheme::Http, past).await);
        assert!(
            !probe_tls(mute_addr, None).await,
            "a closed connection is not TLS"
        );
        assert!(!probe_tls(http_addr, None).await, "plain HTTP is not TLS");
    }

    /// A CA (its PEM) and a server certificate it signed, for a name that is not the address
    /// the probe uses.
    fn ca_and_server() -> (String, rustls::ServerConfig) {
        let ca_key = rcgen::KeyPair::generate().expect("key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).expect("ca");
        let issuer = rcgen::Issuer::new(ca_params, &ca_key);
        let key = rcgen::KeyPair::generate().expect("key");
        let params =
            rcgen::CertificateParams::new(vec!["jupyter-someone".to_owned()]).expect("params");
        let cert = params.signed_by(&key, &issuer).expect("signed");
        let der = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).expect("der");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], der)
            .expect("server config");
        (ca.pem(), server)
    }

    #[tokio::test]
    async fn the_tls_probe_accepts_only_a_server_certificate_from_the_hubs_ca() {
        let (ca, server) = ca_and_server();
        let (other_ca, _) = ca_and_server();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        tokio::spawn(async move {
            while let Ok((c, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let _ = acceptor.accept(c).await;
                });
            }
        });
        assert!(
            probe_tls(addr, Some(ca.as_bytes())).await,
            "a certificate from the hub's CA, under another name, is ready"
        );
        assert!(
            !probe_tls(addr, Some(other_ca.as_bytes())).await,
            "a certificate from another CA is not"
        );
        assert!(probe_tls(addr, None).await, "without a CA: TLS is spoken");
        let deadline = Instant::now() + Duration::from_millis(300);
        assert!(
            !wait_ready(
                addr,
                "/",
                Scheme::Tls(Some(other_ca.into_bytes())),
                deadline
            )
            .await,
            "never ready with the wrong CA"
        );
    }
}
