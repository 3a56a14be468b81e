//! Docker HEALTHCHECK status and OOM kills in ServerStatus and on Watch, against a real dockerd.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use berth_proto::v1 as pb;
use berth_proto::v1::server_status::State;
use common::*;
use futures::StreamExt;

const HEALTHY_IMAGE: &str = "berth-test/tiny-health:latest";

/// The tiny image plus a HEALTHCHECK, built locally (no registry: the base is local).
fn build_health_image() {
    let mut child = Command::new("docker")
        .args(["build", "-q", "-t", HEALTHY_IMAGE, "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(
            format!(
                "FROM {TINY}\nHEALTHCHECK --interval=1s --timeout=1s --retries=1 CMD wget -q -O /dev/null http://127.0.0.1:8888/ || exit 1\n"
            )
            .as_bytes(),
        )
        .unwrap();
    assert!(
        child.wait().unwrap().success(),
        "docker build of the health image"
    );
}

#[tokio::test]
async fn docker_health_status_shows_in_poll_and_on_watch() {
    require_docker();
    build_health_image();
    let d = Daemon::start();
    let mut c = d.client().await;
    let mut watch = c
        .watch(pb::WatchRequest {
            snapshot: false,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let user = unique("healthy");
    let mut req = tiny_start(&user, "s");
    req.image = HEALTHY_IMAGE.into();
    c.start(req).await.unwrap();
    let healthy = tokio::time::timeout(Duration::from_secs(15), async {
        while let Some(ev) = watch.next().await {
            let ev = ev.unwrap();
            if ev.kind == pb::watch_event::Kind::Health as i32
                && ev.status.as_ref().unwrap().health == "healthy"
            {
                return ev;
            }
        }
        panic!("watch ended");
    })
    .await
    .expect("a HEALTH event with status healthy");
    assert_eq!(healthy.status.unwrap().key, key(&user, ""));
    let p = common::poll(&c, &user, "").await;
    assert_eq!(p.health, "healthy");

    // A server without a HEALTHCHECK reports none.
    let plain = unique("plain");
    c.start(tiny_start(&plain, "s")).await.unwrap();
    let p = common::poll(&c, &plain, "").await;
    assert_eq!(p.health, "");
}

#[tokio::test]
async fn an_oom_kill_is_reported_as_oomkilled_on_poll_and_watch() {
    let d = Daemon::start();
    let mut c = d.client().await;
    let mut watch = c
        .watch(pb::WatchRequest {
            snapshot: false,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let user = unique("oom");
    let mut req = tiny_start(&user, "s");
    req.resources = Some(pb::Resources {
        mem_limit_bytes: 16 << 20,
        ..Default::default()
    });
    // Serve (so the spawn succeeds), then grow a shell variable far past the limit.
    req.cmd = vec![
        "sh".into(),
        "-c".into(),
        "httpd -p 8888 -h /www; sleep 1; x=$(head -c 300000000 /dev/zero | tr '\\000' x); sleep 60"
            .into(),
    ];
    c.start(req).await.unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(ev) = watch.next().await {
            let ev = ev.unwrap();
            if ev.kind == pb::watch_event::Kind::Oom as i32
                && ev.status.as_ref().unwrap().key == key(&user, "")
            {
                return ev;
            }
        }
        panic!("watch ended");
    })
    .await
    .expect("an OOM event");
    let s = ev.status.unwrap();
    eprintln!("oom event status: {s:?}");
    let p = wait_for_state(&c, &user, "", State::Exited, Duration::from_secs(10))
        .await
        .expect("the server exited");
    assert_eq!(p.reason, "OOMKilled", "{p:?}");
    assert_eq!(p.exit_code, Some(137));
}
