//! `berthctl` against the real berthd binary and a real dockerd: what it lists, drains and
//! reports is what berthd holds; over the Admin socket with no credentials, and over mutual
//! TLS with the certificates `docs/make-certs.sh` makes.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use berth_proto::v1 as pb;
use berth_proto::v1::spawner_client::SpawnerClient;
use common::*;
use tonic::Code;
use tonic_types::StatusExt;

/// The berthctl binary, built once per test run (it is another package of the workspace, so
/// cargo gives this test no path to it).
fn berthctl_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let out = Command::new(cargo)
            .args([
                "build",
                "--quiet",
                "-p",
                "berthctl",
                "--bin",
                "berthctl",
                "--message-format=json",
            ])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("run cargo");
        assert!(
            out.status.success(),
            "building berthctl failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find_map(|m| {
                let exe = m.get("executable")?.as_str()?;
                exe.ends_with("/berthctl").then(|| PathBuf::from(exe))
            })
            .expect("cargo names the berthctl executable")
    })
}

/// Exit code, stdout, stderr of `berthctl args...` (no config file or env of the machine).
fn berthctl(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(berthctl_bin())
        .args(args)
        .env_remove("BERTH_ENDPOINT")
        .env_remove("BERTH_CONFIG")
        .output()
        .expect("run berthctl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `berthctl args... -o json` run on a blocking thread, parsed; panics on failure.
async fn json(args: Vec<String>) -> serde_json::Value {
    tokio::task::spawn_blocking(move || {
        let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
        all.extend(["-o", "json"]);
        let (code, out, err) = berthctl(&all);
        assert_eq!(code, 0, "berthctl {all:?}: {err}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{out}: {e}"))
    })
    .await
    .unwrap()
}

fn socket_endpoint(d: &Daemon) -> String {
    format!("unix:{}", d.state_dir.join("admin.sock").display())
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

async fn list(c: &SpawnerClient<tonic::transport::Channel>) -> Vec<pb::ServerStatus> {
    c.clone()
        .list(pb::ListRequest::default())
        .await
        .unwrap()
        .into_inner()
        .servers
}

#[tokio::test]
async fn ps_json_lists_exactly_the_servers_berthd_knows() {
    let d = Daemon::start();
    let c = d.client().await;
    let ep = socket_endpoint(&d);
    let empty = json(args(&["--endpoint", &ep, "ps"])).await;
    assert_eq!(empty, serde_json::json!({ "servers": [] }));

    let (ann, bob) = (unique("ann"), unique("bob"));
    c.clone().start(tiny_start(&ann, "s1")).await.unwrap();
    let mut named = tiny_start(&bob, "s2");
    named.key = key(&bob, "lab");
    c.clone().start(named).await.unwrap();

    let ps = json(args(&["--endpoint", &ep, "ps"])).await;
    let mut got: Vec<(String, String, String, String, String)> = ps["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let f = |k: &str| s[k].as_str().unwrap().to_owned();
            (
                f("user"),
                f("server"),
                f("state"),
                f("container_id"),
                f("url"),
            )
        })
        .collect();
    let mut want: Vec<_> = list(&c)
        .await
        .into_iter()
        .map(|s| {
            let k = s.key.clone().unwrap();
            (
                k.user,
                k.server_name,
                state(&s).as_str_name().to_owned(),
                s.container_id,
                s.url,
            )
        })
        .collect();
    got.sort();
    want.sort();
    assert_eq!(got, want);
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|s| s.2 == "RUNNING"), "{got:?}");
    for s in ps["servers"].as_array().unwrap() {
        assert!(s["started_at"].as_str().unwrap().ends_with('Z'), "{s}");
        assert_eq!(s["node_id"], d.node_id.as_str());
    }

    // The table names both; inspect and stop act on one of them.
    let (code, table, err) = berthctl(&["--endpoint", &ep, "ps"]);
    assert_eq!(code, 0, "{err}");
    assert!(table.starts_with("USER"), "{table}");
    assert!(table.contains(&ann) && table.contains(&bob) && table.contains("lab"));
    let one = json(args(&["--endpoint", &ep, "inspect", &bob, "lab"])).await;
    assert_eq!(
        (one["user"].as_str(), one["server"].as_str()),
        (Some(bob.as_str()), Some("lab"))
    );
    let stopped = json(args(&[
        "--endpoint",
        &ep,
        "stop",
        &bob,
        "lab",
        "--now",
        "--remove",
    ]))
    .await;
    assert_eq!(stopped["state"], "ABSENT");
    // Absent values are null, never "" (README); the exit code of the removed server stays.
    for absent in ["url", "health", "message"] {
        assert!(stopped[absent].is_null(), "{absent}: {stopped}");
    }
    assert!(stopped["exit_code"].is_i64(), "{stopped}");
    let left = list(&c).await;
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0].key.as_ref().unwrap().user, ann);

    // A kept, exited server: not in `ps` (what runs), in `ps --all` and `ps --state exited`.
    stop_as(&c, &ann, "", Stop::Now).await.unwrap();
    let users = |doc: serde_json::Value| -> Vec<(String, String)> {
        doc["servers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["user"].as_str().unwrap().to_owned(),
                    s["state"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    assert_eq!(users(json(args(&["--endpoint", &ep, "ps"])).await), vec![]);
    let exited = vec![(ann.clone(), "EXITED".to_owned())];
    assert_eq!(
        users(json(args(&["--endpoint", &ep, "ps", "--all"])).await),
        exited
    );
    assert_eq!(
        users(
            json(args(&[
                "--endpoint",
                &ep,
                "ps",
                "--state",
                "exited,running"
            ]))
            .await
        ),
        exited
    );
    assert_eq!(
        users(json(args(&["--endpoint", &ep, "ps", "--state", "running"])).await),
        vec![]
    );
    stop_remove(&c, &ann).await;
}

#[tokio::test]
async fn drain_through_berthctl_refuses_start_with_failed_precondition() {
    let d = Daemon::start();
    let c = d.client().await;
    let ep = socket_endpoint(&d);
    let r = json(args(&[
        "--endpoint",
        &ep,
        "drain",
        "--reason",
        "kernel update",
    ]))
    .await;
    assert_eq!(r, serde_json::json!({ "draining": true }));

    let err = c
        .clone()
        .start(tiny_start(&unique("drained"), "s"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    let info = err.get_error_details().error_info().cloned().unwrap();
    assert_eq!(info.reason, "NODE_DRAINING");
    assert!(
        d.containers().is_empty(),
        "a draining node made a container"
    );
    let cap = json(args(&["--endpoint", &ep, "capacity"])).await;
    assert_eq!(cap["draining"], true);

    let r = json(args(&["--endpoint", &ep, "undrain"])).await;
    assert_eq!(r, serde_json::json!({ "draining": false }));
    let user = unique("undrained");
    c.clone().start(tiny_start(&user, "s")).await.unwrap();
    stop_remove(&c, &user).await;

    // Over the network listener there is no Admin service: said, not attempted.
    let tcp = format!("http://{}", d.addr);
    let (code, _, err) = berthctl(&["--endpoint", &tcp, "drain"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("Admin socket"), "{err}");
}

#[tokio::test]
async fn capacity_json_matches_the_capacity_rpc() {
    let d = Daemon::start_with(&["--config", &capacity_config()]);
    let c = d.client().await;
    let user = unique("cap");
    let mut req = tiny_start(&user, "s");
    req.resources = Some(pb::Resources {
        mem_guarantee_bytes: 64 << 20,
        cpu_guarantee: 0.25,
        ..Default::default()
    });
    c.clone().start(req).await.unwrap();

    let before = c
        .clone()
        .capacity(pb::CapacityRequest {})
        .await
        .unwrap()
        .into_inner();
    let got = json(args(&["--endpoint", &socket_endpoint(&d), "capacity"])).await;
    let rpc = c
        .clone()
        .capacity(pb::CapacityRequest {})
        .await
        .unwrap()
        .into_inner();
    let alloc = |a: Option<pb::Allocation>| {
        let a = a.unwrap();
        serde_json::json!({ "cpu": a.cpu, "memory_bytes": a.memory_bytes })
    };
    let conditions: Vec<_> = rpc
        .conditions
        .iter()
        .map(|k| {
            serde_json::json!({
                "type": k.r#type, "status": k.status, "reason": k.reason, "message": k.message,
            })
        })
        .collect();
    // Available memory moves between the two readings; everything else is exact.
    let avail = got["memory_available_bytes"].as_u64().unwrap();
    assert!(
        avail.abs_diff(rpc.memory_available_bytes) * 20 <= rpc.memory_available_bytes,
        "{avail} vs {}",
        rpc.memory_available_bytes
    );
    let mut got = got;
    got["memory_available_bytes"] = rpc.memory_available_bytes.into();
    // ...as do the numbers the conditions quote (available memory, free disk) and the
    // images on the engine (shared with other tests): those match either reading.
    let digitless = |t: &str| t.replace(|c: char| c.is_ascii_digit(), "");
    for (k, want) in got["conditions"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .zip(&rpc.conditions)
    {
        let msg = k["message"].as_str().unwrap();
        assert_eq!(digitless(msg), digitless(&want.message), "{k}");
        k["message"] = want.message.clone().into();
    }
    let images: Vec<String> = serde_json::from_value(got["images"].clone()).unwrap();
    assert!(
        images == rpc.images || images == before.images,
        "{images:?}"
    );
    got["images"] = serde_json::json!(rpc.images);
    // Sizes: those of the same reading as the images.
    let sizes: std::collections::BTreeMap<String, u64> =
        serde_json::from_value(got["image_sizes"].clone()).unwrap();
    assert_eq!(
        sizes.keys().cloned().collect::<Vec<_>>(),
        images,
        "a size per image"
    );
    assert!(sizes.values().all(|s| *s > 0), "{sizes:?}");
    got["image_sizes"] = serde_json::json!(rpc.image_sizes);
    let want = serde_json::json!({
        "node_id": rpc.node_id,
        "cpus": rpc.cpus,
        "memory_total_bytes": rpc.memory_total_bytes,
        "memory_available_bytes": rpc.memory_available_bytes,
        "allocatable": alloc(rpc.allocatable),
        "committed": alloc(rpc.committed),
        "running_servers": rpc.running_servers,
        "max_servers": rpc.max_servers,
        "draining": rpc.draining,
        "conditions": conditions,
        "images": rpc.images,
        "devices": [],
        "labels": {},
        "fence_after_seconds": rpc.fence_after_seconds,
        "stop_grace_seconds": rpc.stop_grace_seconds,
        "warm": [],
        "image_sizes": rpc.image_sizes,
    });
    assert_eq!(got, want);
    assert_eq!(got["max_servers"], 7, "from the config file");
    assert_eq!(
        rpc.allocatable.unwrap().memory_bytes,
        rpc.memory_total_bytes - (16 << 20),
        "reserved_memory_bytes = \"16MiB\""
    );
    assert_eq!(got["committed"]["memory_bytes"], 64 << 20);

    // The table says the same with human sizes.
    let (code, table, err) = berthctl(&["--endpoint", &socket_endpoint(&d), "capacity"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        table.contains("64.0 MiB") && table.contains("GiB"),
        "{table}"
    );
    assert!(table.contains("1 running (max 7)"), "{table}");
    stop_remove(&c, &user).await;
}

/// A config file with a server cap and a human-sized reservation.
fn capacity_config() -> String {
    let dir = temp_dir("berthctl-cfg");
    write_file(
        &dir,
        "berthd.toml",
        "[capacity]\nmax_servers = 7\nreserved_memory_bytes = \"16MiB\"\nspawn_queue_timeout_seconds = \"2m\"\n",
    )
    .to_str()
    .unwrap()
    .to_owned()
}

#[tokio::test]
async fn the_admin_socket_serves_reads_and_stop_but_never_start() {
    let d = Daemon::start();
    let mut sock = SpawnerClient::new(unix_channel(&d.state_dir.join("admin.sock")).await);
    sock.list(pb::ListRequest::default()).await.unwrap();
    let err = sock
        .start(tiny_start(&unique("sock"), "s"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let info = err.get_error_details().error_info().cloned().unwrap();
    assert_eq!(info.reason, "HUB_ONLY");
    assert!(d.containers().is_empty());
}

#[tokio::test]
async fn make_certs_output_gives_mutual_tls_that_only_the_hub_and_named_operators_pass() {
    let dir = temp_dir("berthctl-pki");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/make-certs.sh");
    let out = Command::new("bash")
        .args([
            script,
            dir.to_str().unwrap(),
            "n1=127.0.0.1",
            "n2=127.0.0.1",
            "operator:alice",
            "operator:bob",
        ])
        .output()
        .expect("run make-certs.sh");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let p = |rel: &str| dir.join(rel).to_str().unwrap().to_owned();
    // The activity token: the hub's service token, the same on every node, 0600 everywhere.
    let activity = std::fs::read_to_string(p("hub/activity-token")).unwrap();
    assert_eq!(activity.trim().len(), 64, "{activity:?}");
    for f in [
        "hub/activity-token",
        "n1/activity-token",
        "n2/activity-token",
    ] {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::read_to_string(p(f)).unwrap(), activity, "{f}");
        let mode = std::fs::metadata(p(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{f}");
    }
    let d = Daemon::start_with(&[
        "--tls-cert-file",
        &p("n1/node.pem"),
        "--tls-key-file",
        &p("n1/node.key"),
        "--client-ca-file",
        &p("n1/client-ca.pem"),
        "--token-file",
        &p("n1/token"),
        "--security-hub-client-names",
        "hub,alice.operator",
    ]);
    let url = format!("https://127.0.0.1:{}", d.addr.port());
    let hub = [
        "--endpoint",
        &url,
        "--ca",
        &p("hub/ca.pem"),
        "--cert",
        &p("hub/hub.pem"),
        "--key",
        &p("hub/hub.key"),
    ];
    let with = |extra: &[&str]| {
        let mut a = hub.to_vec();
        a.extend_from_slice(extra);
        berthctl(&a)
    };
    // The hub's certificate and the node's token (as the hub keeps it) pass.
    let (code, out, err) = with(&["--token-file", &p("hub/tokens/n1"), "version", "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["server"]["node_id"], d.node_id.as_str());
    // No token: the certificate alone does not do.
    let (code, _, err) = with(&["ps"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("UNAUTHENTICATED"), "{err}");
    // No client certificate: the handshake is refused.
    let (code, _, err) = berthctl(&[
        "--endpoint",
        &url,
        "--ca",
        &p("hub/ca.pem"),
        "--token-file",
        &p("n1/token"),
        "ps",
    ]);
    assert_ne!(code, 0, "{err}");
    // node-2's certificate with node-1's token (a node taken over, acting as the hub): the
    // handshake fails, as n1 trusts only the client CA, which never signs a node.
    let as_client = |stem: &str, key: &str| {
        berthctl(&[
            "--endpoint",
            &url,
            "--ca",
            &p("hub/ca.pem"),
            "--cert",
            &p(&format!("{stem}.pem")),
            "--key",
            &p(&format!("{stem}.{key}")),
            "--token-file",
            &p("hub/tokens/n1"),
            "version",
        ])
    };
    let (code, out, err) = as_client("n2/node", "key");
    assert_ne!(code, 0, "node-2's certificate was served: {out}");
    // The transport's own cause is printed (the words vary with when the client noticed the
    // close: "connection closed", "broken pipe", ...), not only "operation was canceled".
    assert!(
        err.contains("transport error"),
        "the refusal says its cause: {err}"
    );
    assert!(!out.contains(&d.node_id), "{out}");
    assert!(
        !err.contains("UNAUTHENTICATED"),
        "refused in the handshake: {err}"
    );
    // An operator certificate of the client CA whose name hub_client_names leaves out: refused
    // in the handshake too, and berthd says why.
    let (code, out, err) = as_client("operators/bob/operator", "key");
    assert_ne!(code, 0, "bob's certificate was served: {out}");
    assert!(
        !err.contains("UNAUTHENTICATED"),
        "refused in the handshake: {err}"
    );
    assert!(
        d.log_text().contains("hub_client_names"),
        "berthd names the setting"
    );
    // An operator it names gets in, off the node, with the node's token.
    let (code, out, err) = as_client("operators/alice/operator", "key");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&d.node_id), "{out}");

    // Root on the node, from berthd's own config file: its Admin socket first...
    let cfg = write_file(
        &dir,
        "config.toml",
        &format!(
            "listen = \"{}\"\nstate_dir = \"{}\"\n[security]\ntoken_file = \"{}\"\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"\nclient_ca_file = \"{}\"\n",
            d.addr,
            d.state_dir.display(),
            p("n1/token"),
            p("n1/node.pem"),
            p("n1/node.key"),
            p("n1/client-ca.pem"),
        ),
    );
    let (code, out, err) = berthctl(&["--config", cfg.to_str().unwrap(), "version"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("via unix:"), "{out}");
    // ...and with no socket there, its listener with the node's token and an operator's
    // certificate (the node's own is a server certificate only).
    let elsewhere = write_file(
        &dir,
        "config-no-socket.toml",
        &std::fs::read_to_string(&cfg).unwrap().replace(
            "listen =",
            "admin_socket = \"/nonexistent/admin.sock\"\nlisten =",
        ),
    );
    let (code, out, err) = berthctl(&[
        "--config",
        elsewhere.to_str().unwrap(),
        "--ca",
        &p("operators/alice/ca.pem"),
        "--cert",
        &p("operators/alice/operator.pem"),
        "--key",
        &p("operators/alice/operator.key"),
        "version",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("via {url}")), "{out}");
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn logs_prints_each_stream_to_its_own_and_follows() {
    let d = Daemon::start();
    let c = d.client().await;
    let user = unique("logs");
    let mut req = tiny_start(&user, "s");
    req.cmd = vec![
        "sh".into(),
        "-c".into(),
        "echo line-1; echo oops >&2; (i=0; while true; do echo tick-$i; i=$((i+1)); sleep 0.3; done) & exec httpd -f -p 8888 -h /www".into(),
    ];
    c.clone().start(req).await.unwrap();
    let ep = socket_endpoint(&d);
    let (code, out, err) = berthctl(&["--endpoint", &ep, "logs", &user]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("line-1\n"), "{out}");
    assert!(
        !out.contains("oops") && err.contains("oops"),
        "{out} / {err}"
    );
    let ticks = |text: &str| -> Vec<u32> {
        text.lines()
            .filter_map(|l| l.strip_prefix("tick-")?.parse().ok())
            .collect()
    };
    let seen = ticks(&out).into_iter().max().unwrap_or(0);
    let (code, out, err) = berthctl(&["--endpoint", &ep, "logs", &user, "--tail", "1"]);
    assert_eq!(
        (code, out.lines().count() + err.lines().count()),
        (0, 1),
        "{out} / {err}"
    );
    // --timestamps: Docker's time first; --since: nothing older (the first lines came at start).
    let (code, out, err) = berthctl(&[
        "--endpoint",
        &ep,
        "logs",
        &user,
        "--timestamps",
        "--tail",
        "2",
    ]);
    assert_eq!(code, 0, "{err}");
    for line in out.lines() {
        let (when, _) = line.split_once(' ').unwrap_or_else(|| panic!("{line}"));
        assert!(
            when.starts_with("20") && when.contains('T') && when.ends_with('Z'),
            "{line}"
        );
    }
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let (code, out, err) = berthctl(&["--endpoint", &ep, "logs", &user, "--since", "1s"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        !out.contains("line-1") && !err.contains("oops"),
        "--since kept older output: {out}"
    );
    // berthd rounds `since` up to Docker's whole seconds: at most a second of ticks (one each
    // 0.3 s), with room for a slow tick loop.
    assert!(
        ticks(&out).len() <= 8,
        "more than two seconds' ticks: {out}"
    );

    // -f keeps printing what comes later.
    let mut child = Command::new(berthctl_bin())
        .args(["--endpoint", &ep, "logs", "-f", &user])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let later = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .filter_map(|l| l.strip_prefix("tick-")?.parse::<u32>().ok())
            .find(|&n| n > seen + 3)
    });
    let got = tokio::time::timeout(std::time::Duration::from_secs(30), later).await;
    child.kill().ok();
    child.wait().ok();
    assert!(
        matches!(got, Ok(Ok(Some(_)))),
        "no later line followed: {got:?}"
    );
    stop_remove(&c, &user).await;
}

#[test]
fn a_bad_endpoint_or_an_unreadable_credential_file_is_bad_usage_naming_it() {
    let (code, _, err) = berthctl(&["--endpoint", "ftp://x", "ps"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("ftp://x") && err.contains("expected unix:/path"),
        "{err}"
    );
    let (code, _, err) = berthctl(&[
        "--endpoint",
        "https://127.0.0.1:1",
        "--ca",
        "/nonexistent/ca.pem",
        "ps",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--ca /nonexistent/ca.pem"), "{err}");
    let (code, _, err) = berthctl(&[
        "--endpoint",
        "http://127.0.0.1:1",
        "--token-file",
        "/nonexistent/token",
        "ps",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("token file /nonexistent/token"), "{err}");
}

#[test]
fn no_berthd_is_exit_69_naming_where_it_looked() {
    let (code, _, err) = berthctl(&["--endpoint", "unix:/nonexistent/berth.sock", "ps"]);
    assert_eq!(code, 69, "{err}");
    assert!(err.contains("/nonexistent/berth.sock"), "{err}");
}

/// `berthctl ARGS` started in the background (for `events`, which follows).
fn spawn_berthctl(args: &[&str]) -> std::process::Child {
    Command::new(berthctl_bin())
        .args(args)
        .env_remove("BERTH_ENDPOINT")
        .env_remove("BERTH_CONFIG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run berthctl")
}

#[tokio::test]
async fn events_images_top_describe_prepull_and_rm_volume_over_the_admin_socket() {
    let d = Daemon::start_with(&[
        "--fencing-stop-after-hub-lost-seconds",
        "600",
        "--node-labels",
        "zone=b",
    ]);
    let c = d.client().await;
    let ep = socket_endpoint(&d);
    let user = unique("ctl");

    // events: a Start seen as it happens, one JSON document per line.
    let events = spawn_berthctl(&[
        "--endpoint",
        &ep,
        "events",
        "--user",
        &user,
        "--count",
        "2",
        "-o",
        "json",
    ]);
    // The stream is open once berthd counts it; a moment is enough for a local socket.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let mut req = tiny_start(&user, "s");
    req.volumes.push(pb::Volume {
        source: "ctl-home-{user}".into(),
        target: "/data".into(),
        ..Default::default()
    });
    let started = c.clone().start(req).await.unwrap().into_inner();
    let out = tokio::task::spawn_blocking(move || events.wait_with_output().unwrap())
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines.iter().all(|e| e["user"] == user.as_str()),
        "{lines:?}"
    );
    assert_eq!(
        lines[0]["container_id"],
        started.container_id.as_str(),
        "{lines:?}"
    );
    assert!(lines.iter().any(|e| e["kind"] == "STARTED"), "{lines:?}");

    // progress: the spawn's phases replayed, to its end (ready).
    let (code, text, err) = berthctl(&["--endpoint", &ep, "progress", &user, "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    let phases: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(phases.len() >= 2, "{text}");
    assert_eq!(phases.last().unwrap()["ready"], true, "{text}");
    assert!(
        phases
            .iter()
            .any(|p| p["phase"] == "STARTING" || p["phase"] == "CREATING"),
        "{text}"
    );

    // images: the node's images, and the server using the tiny one.
    let images = json(args(&["--endpoint", &ep, "images"])).await;
    let tiny = images["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["reference"].as_str().is_some_and(|r| r.starts_with(TINY)))
        .unwrap_or_else(|| panic!("{TINY} not in {images}"));
    assert_eq!(tiny["servers_running"], 1, "{images}");
    assert!(
        tiny["size_bytes"].as_u64().is_some_and(|s| s > 1 << 20),
        "the tiny image's size (about 2 MB): {images}"
    );

    // top: the running server's CPU over the interval, its memory and limit, from Docker.
    let top = json(args(&[
        "--endpoint",
        &ep,
        "top",
        "--user",
        &user,
        "--interval",
        "500ms",
    ]))
    .await;
    let row = &top["servers"][0];
    assert_eq!(row["container_id"], started.container_id.as_str(), "{top}");
    assert!(
        row["cpu_percent"].as_f64().is_some_and(|p| p >= 0.0),
        "{top}"
    );
    assert!(row["memory_bytes"].as_u64().is_some_and(|m| m > 0), "{top}");
    assert!(
        row["memory_limit_bytes"].as_u64() >= row["memory_bytes"].as_u64(),
        "{top}"
    );

    // describe: versions, labels, fencing (limit plus dead-stream detection).
    let described = json(args(&["--endpoint", &ep, "describe"])).await;
    assert_eq!(
        described["capacity"]["fence_after_seconds"], 615,
        "{described}"
    );
    assert_eq!(described["capacity"]["labels"]["zone"], "b", "{described}");
    assert!(
        described["features"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f == "fencing")
    );
    let (code, text, err) = berthctl(&["--endpoint", &ep, "describe"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        text.contains("fencing:      servers stopped 615 s") && text.contains("zone=b"),
        "{text}"
    );

    // prepull: a pull from a real registry on loopback, with its progress; one that cannot be
    // had fails the command (exit 1) without stopping the other.
    let reg = common::registry::Registry::start(None);
    let pushed = common::registry::push_test_image(&reg, 1, 2);
    let missing = format!("{}/berth-none/nothing:1", reg.host());
    let (code, text, err) = berthctl(&["--endpoint", &ep, "prepull", &missing, &pushed.reference]);
    assert_eq!(code, 1, "{text}{err}");
    assert!(
        text.contains(&format!("{}: on the node", pushed.reference)),
        "{text}"
    );
    assert!(text.contains(&format!("{missing}: failed")), "{text}");
    assert!(text.contains("Pulling"), "the pull's progress: {text}");
    assert!(err.contains("not pulled"), "{err}");

    // rm-volume: refused while the server uses it; removed once it is gone.
    let listed = json(args(&["--endpoint", &ep, "volumes", "--user", &user])).await;
    let volume = listed["volumes"][0]["name"]
        .as_str()
        .unwrap_or_else(|| panic!("{listed}"))
        .to_owned();
    assert!(volume.starts_with("ctl-home-"), "{listed}");
    let (code, _, err) = berthctl(&["--endpoint", &ep, "rm-volume", &volume]);
    assert_eq!(code, 1, "a volume in use must not go: {err}");
    assert!(docker(&["volume", "ls", "-q"]).lines().any(|v| v == volume));
    stop_remove(&c, &user).await;
    let (code, text, err) = berthctl(&["--endpoint", &ep, "rm-volume", &volume]);
    assert_eq!(code, 0, "{err}");
    assert!(text.contains("removed"), "{text}");
    assert!(!docker(&["volume", "ls", "-q"]).lines().any(|v| v == volume));
}

/// `berthctl warm IMAGE N` over the Admin socket sets the node's warm pool, which `describe`
/// then shows; an image the policy refuses exits 1 naming the rule.
#[tokio::test]
async fn warm_sets_a_pool_that_describe_shows() {
    let dir = common::temp_dir("ctl-warm");
    let config = common::write_file(
        &dir,
        "config.toml",
        &format!(
            "[policy]\nallowed_images = [\"{TINY}\"]\n\n[[warm.pools]]\nimage = \"{TINY}\"\nlauncher = \"shell\"\n"
        ),
    );
    let d = Daemon::start_with(&["--config", config.to_str().unwrap()]);
    let ep = socket_endpoint(&d);
    let (code, text, err) = berthctl(&["--endpoint", &ep, "warm", TINY, "1"]);
    assert_eq!(code, 0, "{err}");
    assert!(text.contains("of 1 ready (port 8888)"), "{text}");
    let shown = common::eventually(std::time::Duration::from_secs(60), || async {
        let (_, text, _) = berthctl(&["--endpoint", &ep, "describe"]);
        text.contains("1 of 1 ready").then_some(text)
    })
    .await;
    assert!(shown.is_some(), "describe shows the ready member");
    let (code, _, err) = berthctl(&["--endpoint", &ep, "warm", "docker.io/library/other:1", "1"]);
    assert_eq!(code, 1);
    assert!(err.contains("allowed_images"), "{err}");
    std::fs::remove_dir_all(dir).ok();
}
