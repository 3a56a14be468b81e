//! SIGHUP to the real berthd: the token file and the TLS files are read again and swapped in,
//! without restarting anything: open connections and streams stay, running servers are
//! untouched, new TLS handshakes use the new files, and a bad file keeps the old ones.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_proto::v1 as pb;
use berth_proto::v1::spawner_client::SpawnerClient;
use common::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

async fn list_with(c: &mut SpawnerClient<Channel>, token: &str) -> Result<(), tonic::Code> {
    let mut req = tonic::Request::new(pb::ListRequest::default());
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    c.list(req).await.map(|_| ()).map_err(|s| s.code())
}

#[tokio::test]
async fn sighup_swaps_the_token_on_the_open_connection() {
    let dir = temp_dir("reload");
    let old = "old-token-0123456789abcdef";
    let new = "new-token-0123456789abcdef";
    let file = write_file(&dir, "token", old);
    let mut d = Daemon::start_with(&["--token-file", file.to_str().unwrap()]);
    let mut c = d.client().await;
    assert_eq!(list_with(&mut c, old).await, Ok(()));
    assert_eq!(
        list_with(&mut c, new).await,
        Err(tonic::Code::Unauthenticated)
    );

    std::fs::write(&file, format!("{new}\n")).unwrap();
    let hup = Command::new("kill")
        .args(["-HUP", &d.pid().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while list_with(&mut c, new).await != Ok(()) {
        assert!(
            Instant::now() < deadline,
            "new token not accepted:\n{}",
            d.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        list_with(&mut c, old).await,
        Err(tonic::Code::Unauthenticated)
    );

    // A file that no longer passes keeps the token in force.
    std::fs::write(&file, "short").unwrap();
    let hup = Command::new("kill")
        .args(["-HUP", &d.pid().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !d.log_text().contains("token not reloaded") {
        assert!(
            Instant::now() < deadline,
            "no refusal logged:\n{}",
            d.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(list_with(&mut c, new).await, Ok(()));
    assert!(
        d.wait_exit(Duration::from_millis(100)).is_none(),
        "berthd still runs"
    );
    assert!(!d.log_text().contains(new), "the token is not logged");
    let _ = std::fs::remove_dir_all(&dir);
}

fn hup(d: &Daemon) {
    let hup = Command::new("kill")
        .args(["-HUP", &d.pid().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
}

/// Waits for the `n`th log line holding `what` (they count up over the test).
fn wait_log(d: &Daemon, what: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while d.log_text().matches(what).count() < n {
        assert!(
            Instant::now() < deadline,
            "no {what:?} logged:\n{}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A CA, a server certificate for localhost from it and a client certificate from it.
struct Pki {
    ca_pem: String,
    server: (String, String),
    server_der: Vec<u8>,
    client: (String, String),
}

fn pki(name: &str) -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, name);
    let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(ca, ca_key);
    let leaf = |names: &[&str]| {
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(names.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        (cert.pem(), key.serialize_pem(), cert.der().to_vec())
    };
    let (cert, key, server_der) = leaf(&["localhost", "127.0.0.1"]);
    let (ccert, ckey, _) = leaf(&["hub"]);
    Pki {
        ca_pem,
        server: (cert, key),
        server_der,
        client: (ccert, ckey),
    }
}

/// Replaces `path` the way an operator's tooling would: a new file renamed over the old one.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).unwrap();
    common::set_mode(&tmp, 0o600);
    std::fs::rename(&tmp, path).unwrap();
}

/// The certificate berthd shows a new TLS connection (a raw handshake, trusting `ca`, with the
/// client certificate `client`).
async fn served_certificate(d: &Daemon, ca: &str, client: &(String, String)) -> Vec<u8> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let chain: Vec<_> = CertificateDer::pem_slice_iter(client.0.as_bytes())
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_slice(client.1.as_bytes()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)
    .unwrap();
    let tcp = tokio::net::TcpStream::connect(d.addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("handshake");
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

async fn tls_client(
    d: &Daemon,
    ca: &str,
    client: &(String, String),
) -> Result<SpawnerClient<Channel>, String> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost")
        .identity(Identity::from_pem(&client.0, &client.1));
    let channel = Endpoint::from_shared(format!("https://{}", d.addr))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))?;
    Ok(SpawnerClient::new(channel))
}

async fn lists(c: &mut SpawnerClient<Channel>) -> bool {
    c.list(pb::ListRequest::default()).await.is_ok()
}

#[tokio::test]
async fn sighup_reloads_the_tls_files_for_new_connections_and_keeps_open_ones() {
    let dir = temp_dir("reload-tls");
    let (old, new) = (pki("berth reload CA 1"), pki("berth reload CA 2"));
    let cert_file = write_file(&dir, "server.pem", &old.server.0);
    let key_file = write_file(&dir, "server.key", &old.server.1);
    let ca_file = write_file(&dir, "clients.pem", &old.ca_pem);
    let d = Daemon::start_with(&[
        "--tls-cert-file",
        cert_file.to_str().unwrap(),
        "--tls-key-file",
        key_file.to_str().unwrap(),
        "--client-ca-file",
        ca_file.to_str().unwrap(),
    ]);
    assert_eq!(
        served_certificate(&d, &old.ca_pem, &old.client).await,
        old.server_der
    );
    let mut c = tls_client(&d, &old.ca_pem, &old.client).await.unwrap();
    let mut watch = c
        .watch(pb::WatchRequest {
            snapshot: false,
            capacity: false,
        })
        .await
        .unwrap()
        .into_inner();
    let first = unique("tlsreload");
    let running = c.start(tiny_start(&first, "s")).await.unwrap().into_inner();

    // Rotate everything: a new server certificate and key, and a new client CA.
    replace(&cert_file, &new.server.0);
    replace(&key_file, &new.server.1);
    replace(&ca_file, &new.ca_pem);
    hup(&d);
    wait_log(&d, "SIGHUP: TLS reloaded", 1);
    assert_eq!(
        served_certificate(&d, &new.ca_pem, &new.client).await,
        new.server_der,
        "a new connection gets the new certificate"
    );
    let mut fresh = tls_client(&d, &new.ca_pem, &new.client).await.unwrap();
    assert!(lists(&mut fresh).await, "the new CA's client is served");
    let refused = match tls_client(&d, &new.ca_pem, &old.client).await {
        Err(_) => true,
        Ok(mut stale) => !lists(&mut stale).await,
    };
    assert!(
        refused,
        "a client of the old CA is refused on a new connection"
    );

    // The connection opened before the reload still works, its Watch stream included, and
    // the server started before it runs on, untouched.
    assert!(lists(&mut c).await, "the open connection survives");
    let second = unique("tlsreload");
    fresh.start(tiny_start(&second, "s")).await.unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(ev) = watch.message().await.unwrap() {
            if ev
                .status
                .as_ref()
                .is_some_and(|s| s.key == key(&second, ""))
            {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(seen, Ok(true), "the open Watch stream sees the new server");
    let p = poll(&c, &first, "").await;
    assert_eq!(state(&p), pb::server_status::State::Running);
    assert_eq!(p.container_id, running.container_id, "the same container");

    // A broken certificate keeps the one in force, and the log names the file.
    replace(
        &cert_file,
        "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
    );
    hup(&d);
    wait_log(&d, "SIGHUP: TLS not reloaded", 1);
    let log = d.log_text();
    let refusal = log
        .lines()
        .find(|l| l.contains("SIGHUP: TLS not reloaded"))
        .unwrap();
    assert!(refusal.contains(cert_file.to_str().unwrap()), "{refusal}");
    assert_eq!(
        served_certificate(&d, &new.ca_pem, &new.client).await,
        new.server_der,
        "the old certificate stays"
    );
    // A key that is not the certificate's is refused too, naming the key file.
    replace(&cert_file, &new.server.0);
    replace(&key_file, &old.server.1);
    hup(&d);
    wait_log(&d, "SIGHUP: TLS not reloaded", 2);
    let log = d.log_text();
    let refusal = log
        .lines()
        .filter(|l| l.contains("SIGHUP: TLS not reloaded"))
        .nth(1)
        .unwrap();
    assert!(refusal.contains(key_file.to_str().unwrap()), "{refusal}");
    assert!(lists(&mut fresh).await);
    assert_eq!(
        served_certificate(&d, &new.ca_pem, &new.client).await,
        new.server_der
    );
    for secret in [&old.server.1, &new.server.1] {
        let body = secret.lines().nth(1).unwrap();
        assert!(!log.contains(body), "no key material in the log");
    }
    stop_remove(&c, &first).await;
    stop_remove(&fresh, &second).await;
    let _ = std::fs::remove_dir_all(&dir);
}
