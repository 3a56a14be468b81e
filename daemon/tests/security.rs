//! Security: authentication (bearer token, mutual TLS), the plaintext guard, the node policy,
//! input hardening and secrets, against the real berthd binary and a real dockerd.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::time::Duration;

use berth_proto::v1 as pb;
use berth_proto::v1::spawner_client::SpawnerClient;
use common::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use tonic::Code;
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

fn with_auth<T>(mut req: tonic::Request<T>, header: &str, value: &str) -> tonic::Request<T> {
    let key: tonic::metadata::MetadataKey<tonic::metadata::Ascii> = header.parse().unwrap();
    req.metadata_mut()
        .insert(key, MetadataValue::try_from(value).unwrap());
    req
}

#[tokio::test]
async fn without_the_right_bearer_token_nothing_is_done() {
    let dir = common::temp_dir("berth-sec");
    let token = format!("tok-{}-0123456789", unique("t"));
    let file = common::write_file(&dir, "token", &format!("{token}\n"));
    let d = Daemon::start_with(&["--token-file", file.to_str().unwrap()]);
    let mut c = d.client().await;
    let user = unique("auth");
    let attempts = [
        None,
        Some(("authorization", "Bearer wrong-token-0123456789".to_owned())),
        Some(("authorization", token.clone())),
        Some(("authorization", format!("Token {token}"))),
        Some(("x-auth-token", token.clone())),
        Some(("x-authorization", format!("Bearer {token}"))),
    ];
    for a in &attempts {
        let mut req = tonic::Request::new(tiny_start(&user, "s"));
        if let Some((h, v)) = a {
            req = with_auth(req, h, v);
        }
        let err = c.start(req).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{a:?}: {err:?}");
        let poll = tonic::Request::new(pb::PollRequest {
            key: key(&user, ""),
        });
        assert_eq!(
            c.poll(poll).await.unwrap_err().code(),
            Code::Unauthenticated
        );
    }
    assert!(d.containers().is_empty(), "nothing done without the token");
    let ok = with_auth(
        tonic::Request::new(tiny_start(&user, "s")),
        "authorization",
        &format!("Bearer {token}"),
    );
    c.start(ok).await.unwrap();
    assert_eq!(d.containers().len(), 1);
    assert!(!d.log_text().contains(&token), "the token is never logged");
}

#[test]
fn a_short_missing_or_open_token_file_is_a_config_error() {
    let dir = common::temp_dir("berth-sec");
    let short = common::write_file(&dir, "short", "abc\n");
    let open = common::write_file(&dir, "open", "0123456789abcdef-secret\n");
    common::set_mode(&open, 0o644);
    let group = common::write_file(&dir, "group", "0123456789abcdef-secret\n");
    common::set_mode(&group, 0o640);
    for (file, needle) in [
        (short, "at least 16"),
        (dir.join("missing"), "cannot read"),
        (open, "mode 644"),
        (group, "mode 640"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_berthd"))
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--token-file",
                file.to_str().unwrap(),
            ])
            .arg("--state-dir")
            .arg(dir.join("state"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{err}");
        assert!(
            err.contains("security.token_file") && err.contains(needle),
            "{err}"
        );
    }
}

#[test]
fn plaintext_on_a_non_loopback_address_is_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_berthd"))
        .args(["serve", "--listen", "0.0.0.0:50999"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(err.contains("listen") && err.contains("plaintext"), "{err}");
    assert!(
        err.contains("insecure_plaintext_on_network"),
        "names the way out: {err}"
    );

    // TLS without any client authentication is refused on the network too.
    let dir = common::temp_dir("berth-sec");
    let cfg = common::write_file(
        &dir,
        "c.toml",
        "listen = \"0.0.0.0:50999\"\n[security]\ntls_cert_file = \"/x.pem\"\ntls_key_file = \"/x.key\"\n",
    );
    let out = Command::new(env!("CARGO_BIN_EXE_berthd"))
        .args(["check-config", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(err.contains("security.token_file"), "{err}");

    let cfg = common::write_file(
        &dir,
        "i.toml",
        "listen = \"0.0.0.0:50999\"\n[security]\ninsecure_plaintext_on_network = true\n",
    );
    let out = Command::new(env!("CARGO_BIN_EXE_berthd"))
        .args(["check-config", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "the explicit option allows it");
}

struct Pki {
    ca_pem: String,
    server_cert: String,
    server_key: String,
    client: (String, String),
    foreign_client: (String, String),
    expired_client: (String, String),
}

fn ca(name: &str) -> (CertificateParams, KeyPair, String) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let pem = params.self_signed(&key).unwrap().pem();
    (params, key, pem)
}

fn leaf(names: &[&str], issuer: &Issuer<'_, KeyPair>, expired: bool) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(names.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>()).unwrap();
    if expired {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    let cert = params.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn pki() -> Pki {
    let (ca_params, ca_key, ca_pem) = ca("berth test CA");
    let issuer = Issuer::new(ca_params, ca_key);
    let (other_params, other_key, _) = ca("some other CA");
    let other = Issuer::new(other_params, other_key);
    let (server_cert, server_key) = leaf(&["localhost", "127.0.0.1"], &issuer, false);
    Pki {
        ca_pem,
        server_cert,
        server_key,
        client: leaf(&["hub"], &issuer, false),
        foreign_client: leaf(&["intruder"], &other, false),
        expired_client: leaf(&["old-hub"], &issuer, true),
    }
}

async fn tls_client(
    d: &Daemon,
    ca: &str,
    identity: Option<&(String, String)>,
) -> Result<SpawnerClient<Channel>, String> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let endpoint = Endpoint::from_shared(format!("https://{}", d.addr))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(Duration::from_secs(5));
    endpoint
        .connect()
        .await
        .map(SpawnerClient::new)
        .map_err(|e| format!("{e:?}"))
}

#[tokio::test]
async fn mutual_tls_refuses_missing_foreign_and_expired_client_certificates() {
    let p = pki();
    let dir = common::temp_dir("berth-sec");
    let (ca, cert, key) = (
        common::write_file(&dir, "ca.pem", &p.ca_pem),
        common::write_file(&dir, "server.pem", &p.server_cert),
        common::write_file(&dir, "server.key", &p.server_key),
    );
    let d = Daemon::start_with(&[
        "--tls-cert-file",
        cert.to_str().unwrap(),
        "--tls-key-file",
        key.to_str().unwrap(),
        "--client-ca-file",
        ca.to_str().unwrap(),
    ]);
    let user = unique("mtls");
    for (what, identity) in [
        ("no client certificate", None),
        ("a certificate from another CA", Some(&p.foreign_client)),
        ("an expired certificate", Some(&p.expired_client)),
    ] {
        let refused = match tls_client(&d, &p.ca_pem, identity).await {
            Err(_) => true,
            Ok(mut c) => {
                let r = c.start(tiny_start(&user, "s")).await;
                eprintln!("{what}: {r:?}");
                // The handshake fails, so the client sees a transport error (whose code
                // depends on when the server's alert arrives), never an answer from berthd.
                r.is_err_and(|e| {
                    matches!(
                        e.code(),
                        Code::Cancelled | Code::Unknown | Code::Unavailable
                    )
                })
            }
        };
        assert!(refused, "{what} must be refused");
    }
    assert!(d.containers().is_empty(), "nothing done");
    // Plaintext to a TLS port gets nowhere either.
    let plain = SpawnerClient::connect(format!("http://{}", d.addr)).await;
    if let Ok(mut c) = plain {
        assert!(c.start(tiny_start(&user, "s")).await.is_err());
    }
    let mut good = tls_client(&d, &p.ca_pem, Some(&p.client)).await.unwrap();
    let r = good
        .start(tiny_start(&user, "s"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.containers(), vec![r.container_id]);
}

#[tokio::test]
async fn hostile_specs_are_refused_naming_the_rule_and_create_nothing() {
    let dir = common::temp_dir("berth-sec");
    let cfg = common::write_file(
        &dir,
        "policy.toml",
        "[policy]\nallowed_images = [\"berth-test/*\"]\nallowed_host_path_roots = [\"/srv/berth-test\"]\nmax_mem_limit_bytes = 1073741824\n",
    );
    let d = Daemon::start_with(&["--config", cfg.to_str().unwrap()]);
    let mut c = d.client().await;
    let user = unique("hostile");
    type Mutation = Box<dyn Fn(&mut pb::StartRequest)>;
    let host_access = |f: fn(&mut pb::HostAccess)| -> Mutation {
        Box::new(move |r: &mut pb::StartRequest| {
            let mut h = pb::HostAccess::default();
            f(&mut h);
            r.host_access = Some(h);
        })
    };
    let mount = |src: &'static str| -> Mutation {
        Box::new(move |r: &mut pb::StartRequest| {
            r.volumes.push(pb::Volume {
                source: src.into(),
                target: "/mnt".into(),
                read_only: false,
                ..Default::default()
            })
        })
    };
    let cases: Vec<(&str, Code, &str, Mutation)> = vec![
        (
            "host path /",
            Code::PermissionDenied,
            "allowed_host_path_roots",
            mount("/"),
        ),
        (
            "host path /etc",
            Code::PermissionDenied,
            "allowed_host_path_roots",
            mount("/etc"),
        ),
        (
            "host path escaping",
            Code::InvalidArgument,
            "volumes[0].source",
            mount("/srv/berth-test/../../etc"),
        ),
        (
            "privileged",
            Code::PermissionDenied,
            "allow_privileged",
            host_access(|h| h.privileged = true),
        ),
        (
            "host network",
            Code::PermissionDenied,
            "allow_host_network",
            host_access(|h| h.host_network = true),
        ),
        (
            "host pid",
            Code::PermissionDenied,
            "allow_host_pid",
            host_access(|h| h.host_pid = true),
        ),
        (
            "cap add",
            Code::PermissionDenied,
            "allowed_capabilities",
            host_access(|h| h.cap_add = vec!["SYS_ADMIN".into()]),
        ),
        (
            "device",
            Code::PermissionDenied,
            "allowed_devices",
            host_access(|h| h.devices = vec!["/dev/mem".into()]),
        ),
        (
            "image outside the allow-list",
            Code::PermissionDenied,
            "allowed_images",
            Box::new(|r| r.image = "busybox:latest".into()),
        ),
        (
            "memory above the cap",
            Code::PermissionDenied,
            "max_mem_limit_bytes",
            Box::new(|r| {
                r.resources = Some(pb::Resources {
                    mem_limit_bytes: 2 << 30,
                    ..Default::default()
                })
            }),
        ),
        (
            "10 MB env",
            // tonic's own limit on request size (4 MiB) answers before berthd sees anything.
            Code::OutOfRange,
            "message length too large",
            Box::new(|r| {
                r.env.insert("BIG".into(), "x".repeat(10 * 1024 * 1024));
            }),
        ),
        (
            "2 MB env",
            Code::InvalidArgument,
            "env",
            Box::new(|r| {
                for i in 0..20 {
                    r.env.insert(format!("V{i}"), "x".repeat(100 * 1024));
                }
            }),
        ),
    ];
    for (what, code, rule, mutate) in &cases {
        let mut req = tiny_start(&user, "s");
        // Within the memory cap, so each case meets only its own rule.
        req.resources = Some(pb::Resources {
            mem_limit_bytes: 512 << 20,
            ..Default::default()
        });
        mutate(&mut req);
        let err = c.start(req).await.unwrap_err();
        assert_eq!(err.code(), *code, "{what}: {err:?}");
        assert!(err.message().contains(rule), "{what}: {}", err.message());
    }
    // Tests of this binary run in parallel, so count what this daemon could have made: every
    // container it creates carries its node label and the key's name.
    assert!(
        d.containers().is_empty(),
        "docker ps -a shows nothing of this node"
    );
    let name = berthd::key::ServerKey::new(&user, "")
        .unwrap()
        .container_name();
    assert!(docker(&["ps", "-aq", "--filter", &format!("name={name}")]).is_empty());

    // A key never maps onto another key's container: "a" + server "b" and user "a_b" differ.
    let alice = unique("alice");
    let twin = format!("{alice}_gpu");
    let capped = |mut r: pb::StartRequest| {
        r.resources = Some(pb::Resources {
            mem_limit_bytes: 512 << 20,
            ..Default::default()
        });
        r
    };
    let mut a = capped(tiny_start(&alice, "s"));
    a.key = key(&alice, "gpu");
    let ra = c.start(a).await.unwrap().into_inner();
    let rb = c
        .start(capped(tiny_start(&twin, "s")))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(ra.container_id, rb.container_id);
    let p = common::poll(&c, &alice, "gpu").await;
    assert_eq!(
        p.container_id, ra.container_id,
        "the first user's server is untouched"
    );

    // A container berth does not own under a key's name is never taken over.
    let squatter = unique("squat");
    let name = berthd::key::ServerKey::new(&squatter, "")
        .unwrap()
        .container_name();
    docker(&["create", "--name", &name, TINY]);
    let err = c
        .start(capped(tiny_start(&squatter, "s")))
        .await
        .unwrap_err();
    docker(&["rm", "-f", &name]);
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    assert!(err.message().contains(&name), "{}", err.message());
}

/// A small deterministic generator for hostile inputs.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 11
    }
    fn string(&mut self) -> String {
        let alphabet: &[&str] = &[
            "a", "Z", "_", "-", "/", "..", "=", "\0", "\n", "é", "{user}", "😀", " ", ":", "@", "*",
        ];
        let n = (self.next() % 12) as usize;
        (0..n)
            .map(|_| alphabet[usize::try_from(self.next()).unwrap_or(0) % alphabet.len()])
            .collect()
    }
}

#[tokio::test]
async fn random_requests_never_take_the_daemon_down() {
    let d = Daemon::start();
    let mut c = d.client().await;
    let mut g = Lcg(0x5eed);
    for _ in 0..300 {
        let mut req = pb::StartRequest {
            key: Some(pb::ServerKey {
                user: g.string(),
                server_name: g.string(),
            }),
            spawn_id: g.string(),
            image: if g.next().is_multiple_of(3) {
                TINY.to_owned()
            } else {
                g.string()
            },
            cmd: vec![g.string()],
            port: (g.next() % 70_000) as u32,
            ready_path: g.string(),
            ready_timeout_seconds: 1,
            ..Default::default()
        };
        req.env.insert(g.string(), g.string());
        req.labels.insert(g.string(), g.string());
        req.volumes.push(pb::Volume {
            source: g.string(),
            target: g.string(),
            read_only: false,
            ..Default::default()
        });
        req.resources = Some(pb::Resources {
            // Any bit pattern: negative, zero, absurd.
            mem_limit_bytes: i64::from_ne_bytes(g.next().to_ne_bytes()).wrapping_sub(1 << 52),
            cpu_limit: f64::from_bits(g.next()),
            ..Default::default()
        });
        let _ = tokio::time::timeout(Duration::from_secs(5), c.start(req)).await;
        let _ = c
            .poll(pb::PollRequest {
                key: Some(pb::ServerKey {
                    user: g.string(),
                    server_name: g.string(),
                }),
            })
            .await;
    }
    c.version(pb::VersionRequest {})
        .await
        .expect("the daemon still serves");
}

#[tokio::test]
async fn the_env_never_reaches_logs_even_at_trace_level() {
    let d = Daemon::start_with_env(&[], &[("BERTH_LOG", "trace")]);
    let mut c = d.client().await;
    let secret = format!("hub-token-{}-XYZ", unique("s"));
    let mut req = tiny_start(&unique("trace"), "s");
    req.env
        .insert("JUPYTERHUB_API_TOKEN".into(), secret.clone());
    c.start(req).await.unwrap();
    let mut bad = tiny_start(&unique("trace-bad"), "s");
    bad.env
        .insert("JUPYTERHUB_API_TOKEN".into(), secret.clone());
    bad.env.insert("BAD=KEY".into(), secret.clone());
    let err = c.start(bad).await.unwrap_err();
    assert!(!err.message().contains(&secret), "not in errors");
    let log = d.log_text();
    assert!(
        log.contains("TRACE") || log.contains("DEBUG"),
        "the log ran verbose"
    );
    assert!(!log.contains(&secret), "the env leaked into the log");
}
