//! `/metrics` of a real berthd over a real dockerd: spawns and stops are counted, gauges follow.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use common::*;

/// A loopback port free right now (bound, then released for berthd to take).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// The value of the sample line `name` (labels included, exactly as written), if present.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?.strip_prefix(' ')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

async fn scrape(port: u16) -> String {
    let (code, text) = http_get(&format!("http://127.0.0.1:{port}/metrics")).await;
    assert_eq!(code, 200, "{text}");
    text
}

#[tokio::test]
async fn spawns_stops_and_gauges_are_exported() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let d = Daemon::start_with(&["--metrics-listen", &listen]);
    let c = d.client().await;

    let before = scrape(port).await;
    assert!(before.contains("# TYPE berthd_server_spawn_duration_seconds histogram"));
    assert_eq!(
        sample(
            &before,
            r#"berthd_server_spawn_duration_seconds_count{status="success"}"#
        ),
        Some(0.0),
        "{before}"
    );
    assert_eq!(sample(&before, "berthd_running_servers"), Some(0.0));

    let a = unique("metrics-a");
    let b = unique("metrics-b");
    c.clone().start(tiny_start(&a, "s1")).await.unwrap();
    c.clone().start(tiny_start(&b, "s2")).await.unwrap();
    let after_starts = scrape(port).await;
    assert_eq!(
        sample(
            &after_starts,
            r#"berthd_server_spawn_duration_seconds_count{status="success"}"#
        ),
        Some(2.0),
        "{after_starts}"
    );
    assert_eq!(
        sample(&after_starts, "berthd_running_servers"),
        Some(2.0),
        "{after_starts}"
    );
    // JupyterHub's buckets: both tiny spawns are well under 10 minutes.
    assert_eq!(
        sample(
            &after_starts,
            r#"berthd_server_spawn_duration_seconds_bucket{le="600.0",status="success"}"#
        ),
        Some(2.0),
        "{after_starts}"
    );
    assert!(
        sample(
            &after_starts,
            r#"berthd_grpc_requests_total{method="berth.v1.Spawner/Start",code="OK"}"#
        )
        .is_some_and(|n| n >= 2.0),
        "{after_starts}"
    );
    dashboard_names_only_exported_families(&after_starts);
    let alloc_mem = sample(&after_starts, "berthd_allocatable_memory_bytes").unwrap();
    assert!(alloc_mem > 0.0, "{after_starts}");

    stop_remove(&c, &a).await;
    let after_stop = scrape(port).await;
    assert_eq!(
        sample(
            &after_stop,
            r#"berthd_server_stop_duration_seconds_count{status="success"}"#
        ),
        Some(1.0),
        "{after_stop}"
    );
    assert_eq!(
        sample(&after_stop, "berthd_running_servers"),
        Some(1.0),
        "{after_stop}"
    );
    assert_eq!(
        sample(
            &after_stop,
            r#"berthd_server_spawn_duration_seconds_count{status="success"}"#
        ),
        Some(2.0)
    );
    // Docker's health is reported once the first health ping answered (every 5 s).
    let up = eventually(std::time::Duration::from_secs(15), || async {
        let text = scrape(port).await;
        (sample(&text, "berthd_docker_up") == Some(1.0)).then_some(())
    })
    .await;
    assert!(up.is_some(), "berthd_docker_up never became 1");

    // Calls over the Admin socket are counted too.
    let mut a = admin(&d.state_dir.join("admin.sock")).await;
    a.undrain(berth_proto::v1::DrainRequest::default())
        .await
        .unwrap();
    let text = scrape(port).await;
    assert_eq!(
        sample(
            &text,
            r#"berthd_grpc_requests_total{method="berth.v1.Admin/Undrain",code="OK"}"#
        ),
        Some(1.0),
        "{text}"
    );

    // A refused call is counted under its code.
    let refused = c
        .clone()
        .start(pb_start_without_key())
        .await
        .expect_err("a Start without a key is refused");
    let code = berthd::metrics::code_name(refused.code());
    let text = scrape(port).await;
    assert!(
        sample(
            &text,
            &format!(
                r#"berthd_grpc_requests_total{{method="berth.v1.Spawner/Start",code="{code}"}}"#
            )
        )
        .is_some_and(|n| n >= 1.0),
        "{code}: {text}"
    );
    // A pull that fails (nothing listens at that registry) is timed as a failure.
    let mut pull = tiny_start(&unique("metrics-pull"), "p");
    pull.image = "127.0.0.1:1/berth-test/absent:1".to_owned();
    pull.pull_policy = berth_proto::v1::PullPolicy::Always as i32;
    c.clone().start(pull).await.expect_err("the pull fails");
    let text = scrape(port).await;
    assert_eq!(
        sample(
            &text,
            r#"berthd_image_pull_duration_seconds_count{status="failure"}"#
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            r#"berthd_server_spawn_duration_seconds_count{status="failure"}"#
        ),
        Some(1.0),
        "{text}"
    );
    stop_remove(&c, &b).await;
}

fn pb_start_without_key() -> berth_proto::v1::StartRequest {
    let mut req = tiny_start("x", "s");
    req.key = None;
    req
}

#[tokio::test]
async fn metrics_are_off_by_default_and_refused_off_loopback() {
    // Off by default: no metrics line in the start-up log.
    let d = Daemon::start();
    let _ = d.client().await;
    assert!(!d.log_text().contains("Prometheus"), "{}", d.log_text());
    drop(d);
    // A network address without the opt-in is a configuration error naming the key.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_berthd"))
        .args(["config", "check", "--metrics-listen", "0.0.0.0:9151"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("metrics.listen"), "{err}");
}

/// Every `berthd_*` name the Grafana dashboard queries is a family `/metrics` declares.
fn dashboard_names_only_exported_families(text: &str) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/grafana-berthd.json");
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut queried = 0;
    for panel in dash["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for (at, _) in expr.match_indices("berthd_") {
                let name: String = expr[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                let family = ["_bucket", "_count", "_sum", "_total"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s))
                    .unwrap_or(&name);
                assert!(
                    text.contains(&format!("# TYPE {family} ")),
                    "the dashboard queries {name}, not exported: {text}"
                );
                queried += 1;
            }
        }
    }
    assert!(queried >= 10, "{queried}");
}
