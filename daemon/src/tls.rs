//! TLS for the gRPC listener, reloadable: the rustls server configuration (certificate, key and
//! client CA) sits behind a handle that SIGHUP swaps, and every new connection's handshake uses
//! whatever configuration the handle holds at that moment. Connections already open keep the
//! session they negotiated; nothing is dropped by a reload.
//!
//! With mutual TLS a client certificate must chain to `client_ca_file` and, when
//! `hub_client_names` lists names, carry one of them as a DNS or URI subject alternative name
//! ([`NamedClients`]): a handshake that fails either check never reaches tonic.
//!
//! tonic's own `tls_config` builds its acceptor once, so the listener here does the handshakes
//! itself (tokio-rustls) and hands tonic finished streams through `serve_with_incoming`.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::DistinguishedName;
use rustls::RootCertStore;
use rustls::ServerConfig;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::config::{self, ConfigError, SecurityConfig};
use crate::netguard::ContainerNets;

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
        if sec.hub_client_names.is_empty() {
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_client_cert_verifier(Arc::new(NamedClients {
                chain: verifier,
                names: sec.hub_client_names.clone(),
            }))
        }
    } else {
        builder.with_no_client_auth()
    };
    let mut cfg = builder
        .with_single_cert(certs, key)
        .map_err(|e| tls_err("security.tls_key_file", &sec.tls_key_file, &e))?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

/// A client certificate verifier that, once `chain` has accepted the certificate, also wants
/// one of its DNS or URI subject alternative names to be in `names` (`hub_client_names`).
/// A certificate the client CA signed for some other purpose (an operator the list leaves
/// out, or a node's when one CA signs both) is refused in the handshake.
#[derive(Debug)]
struct NamedClients {
    chain: Arc<dyn ClientCertVerifier>,
    names: Vec<String>,
}

/// The DNS and URI subject alternative names of a certificate; none when it does not parse
/// (webpki has parsed it before this is asked).
fn client_names(cert: &CertificateDer<'_>) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert.as_ref()) else {
        return Vec::new();
    };
    let Ok(Some(san)) = parsed.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(s) | GeneralName::URI(s) => Some((*s).to_owned()),
            _ => None,
        })
        .collect()
}

impl ClientCertVerifier for NamedClients {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.chain.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .chain
            .verify_client_cert(end_entity, intermediates, now)?;
        let presented = client_names(end_entity);
        if presented
            .iter()
            .any(|p| self.names.iter().any(|n| n.eq_ignore_ascii_case(p)))
        {
            return Ok(verified);
        }
        // At warn, unlike other handshake failures: the client holds a certificate of the
        // client CA, so this is a misconfiguration or a node trying to act as the hub.
        tracing::warn!(
            names = ?presented,
            allowed = ?self.names,
            "refused a client certificate: none of its names is in security.hub_client_names"
        );
        Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::ApplicationVerificationFailure,
        ))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.chain.supported_verify_schemes()
    }

    fn offer_client_auth(&self) -> bool {
        self.chain.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.chain.client_auth_mandatory()
    }

    fn requires_raw_public_keys(&self) -> bool {
        self.chain.requires_raw_public_keys()
    }
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

/// Whether a connection from `peer` comes from a container network (`nets`): such a
/// connection is closed before anything is read, and logged.
pub fn refused(nets: &ContainerNets, peer: SocketAddr) -> bool {
    let refused = nets.refuses(peer.ip());
    if refused {
        tracing::warn!(%peer, "refused a connection from a container network");
    }
    refused
}

/// The connections of `listener`, each handed on once its handshake with the configuration
/// `tls` holds at accept time has finished; those from a container network (`nets`) are
/// closed at once. Handshakes run side by side, each for at most
/// [`HANDSHAKE_TIMEOUT`]; one that fails is logged (at debug: any port scanner causes them)
/// and dropped. Ends when `shutdown` is cancelled or the server stops taking connections.
pub fn incoming(
    listener: TcpListener,
    tls: ReloadableTls,
    nets: ContainerNets,
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
            if refused(&nets, peer) {
                continue;
            }
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
