//! Pulls against the real Docker engine and a real registry (Debian's `docker-registry` on
//! 127.0.0.1, started by each test): byte progress of a pull, one pull for five spawns, node
//! credentials right and wrong (and the password in no log or file of berthd), and failures
//! that come at once and create nothing.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use berth_proto::v1 as pb;
use common::registry::{Pushed, Registry, SlowProxy, auth_file, push_test_image, remove_local};
use common::{Daemon, key, stop_remove, temp_dir, unique};
use futures::StreamExt;
use tonic::Code;
use tonic_types::StatusExt;

/// What the issue allows a failed pull before the Start must have failed.
const FAIL_WITHIN: Duration = Duration::from_secs(3);

fn start(user: &str, image: &str, policy: pb::PullPolicy) -> pb::StartRequest {
    pb::StartRequest {
        key: key(user, ""),
        spawn_id: unique("s"),
        image: image.to_owned(),
        pull_policy: policy.into(),
        ready_timeout_seconds: 60,
        ..Default::default()
    }
}

fn daemon_with_config(toml: &str) -> (Daemon, std::path::PathBuf) {
    let dir = temp_dir("pull-cfg");
    let path = common::write_file(&dir, "config.toml", toml);
    let d = Daemon::start_with(&["--config", path.to_str().unwrap()]);
    (d, dir)
}

fn reason(e: &tonic::Status) -> (String, String) {
    let info = e.get_details_error_info().expect("a reason");
    let cause = info.metadata.get("cause").cloned().unwrap_or_default();
    (info.reason, cause)
}

/// Every file under `dir`, read as text.
fn files_under(dir: &std::path::Path) -> Vec<(std::path::PathBuf, String)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else if let Ok(bytes) = std::fs::read(&p) {
            out.push((p, String::from_utf8_lossy(&bytes).into_owned()));
        }
    }
    out
}

#[tokio::test]
async fn always_pulls_with_bytes_rising_to_the_image_size_then_ready() {
    let reg = Registry::start(None);
    let image: Pushed = push_test_image(&reg, 3, 3);
    // About 2.5 s for the 9.4 MB, so the bar has something to show on loopback.
    let slow = SlowProxy::start(reg.port, 4_000_000).await;
    let reference = slow.reference(&image);
    let d = Daemon::start();
    let c = d.client().await;
    let req = start("ann", &reference, pb::PullPolicy::Always);
    let progress_req = pb::ProgressRequest {
        key: key("ann", ""),
        spawn_id: req.spawn_id.clone(),
    };
    let mut sc = c.clone();
    let spawn = tokio::spawn(async move { sc.start(req).await });
    let events: Vec<pb::ProgressEvent> = c
        .clone()
        .progress(progress_req)
        .await
        .unwrap()
        .into_inner()
        .map(Result::unwrap)
        .collect()
        .await;
    let started = spawn.await.unwrap();
    assert!(started.is_ok(), "{started:?}\n{}", d.log_text());

    let pulls: Vec<&pb::ProgressEvent> = events
        .iter()
        .filter(|e| e.phase() == pb::progress_event::Phase::Pulling)
        .collect();
    let size: u64 = image.new_layer_sizes.iter().sum();
    assert!(
        size > 9_000_000,
        "three layers of 3 MiB of random data: {size}"
    );
    let last = pulls.last().expect("pull progress");
    for w in pulls.windows(2) {
        assert!(
            w[1].bytes_done >= w[0].bytes_done,
            "{:?} then {:?}",
            w[0],
            w[1]
        );
        assert!(w[1].progress >= w[0].progress, "{:?} then {:?}", w[0], w[1]);
    }
    assert_eq!(
        (last.bytes_done, last.bytes_total),
        (size, size),
        "bytes end at the image's size: {last:?}"
    );
    assert_eq!(last.layers_done, last.layers_total);
    let between: std::collections::BTreeSet<u64> = pulls
        .iter()
        .map(|e| e.bytes_done)
        .filter(|b| *b > 0 && *b < size)
        .collect();
    assert!(between.len() >= 3, "the bytes rise in steps: {between:?}");
    // Repeated PULLING events move the bar alone; words come with the phase and at most
    // every few seconds (the hub's Event log gets a line only when they say something new).
    let worded = pulls
        .iter()
        .rev()
        .find(|e| !e.message.is_empty())
        .expect("a PULLING event with words");
    assert!(
        worded
            .message
            .starts_with(&format!("Pulling {reference}: ")),
        "{}",
        worded.message
    );
    let worded_count = pulls.iter().filter(|e| !e.message.is_empty()).count();
    assert!(
        worded_count <= 2,
        "a pull of a few seconds has at most two lines with words, not one per chunk: {worded_count}"
    );
    assert!(events.last().unwrap().ready, "{:?}", events.last());
    eprintln!(
        "pull progress: {} PULLING events, bytes {:?}",
        pulls.len(),
        pulls.iter().map(|e| e.bytes_done).collect::<Vec<_>>()
    );

    stop_remove(&c, "ann").await;
    remove_local(&reference);
}

#[tokio::test]
async fn five_concurrent_starts_of_a_missing_image_make_one_pull() {
    let reg = Registry::start(None);
    let image = push_test_image(&reg, 2, 2);
    let before = reg.manifest_gets(&image.repo);
    let d = Daemon::start();
    let c = d.client().await;
    let users: Vec<String> = (0..5).map(|i| format!("five{i}")).collect();
    let spawns = users.iter().map(|u| {
        let mut c = c.clone();
        let req = start(u, &image.reference, pb::PullPolicy::Ifnotpresent);
        tokio::spawn(async move { c.start(req).await })
    });
    for r in futures::future::join_all(spawns).await {
        let r = r.unwrap();
        assert!(r.is_ok(), "{r:?}\n{}", d.log_text());
    }
    assert_eq!(d.containers().len(), 5, "five servers");
    assert_eq!(
        reg.manifest_gets(&image.repo) - before,
        1,
        "one pull: one manifest GET\n{}",
        reg.log_text()
    );
    for u in &users {
        stop_remove(&c, u).await;
    }
    remove_local(&image.reference);
}

#[tokio::test]
async fn node_credentials_pull_wrong_ones_fail_at_once_and_no_password_is_written() {
    const PASSWORD: &str = "pw-Zq81-right";
    const WRONG: &str = "pw-Xk27-wrong";
    let reg = Registry::start(Some(("ann", PASSWORD)));
    let image = push_test_image(&reg, 2, 1);
    let dir = temp_dir("pull-auth");
    // Wrong first; the file is read again for every pull, so fixing it needs no restart.
    let auth = auth_file(&dir, &reg.host(), "ann", WRONG);
    let (d, cfg_dir) = daemon_with_config(&format!(
        "[images]\nregistry_auth_file = {:?}\n",
        auth.display().to_string()
    ));
    let c = d.client().await;

    let t = Instant::now();
    let e = c
        .clone()
        .start(start("ann", &image.reference, pb::PullPolicy::Always))
        .await
        .unwrap_err();
    assert!(t.elapsed() < FAIL_WITHIN, "{:?}", t.elapsed());
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert_eq!(
        reason(&e),
        ("IMAGE_PULL_FAILED".into(), "unauthorized".into())
    );
    let m = e.message();
    assert!(m.contains(&image.reference), "{m}");
    assert!(
        m.contains("authentication required") || m.contains("denied"),
        "{m}"
    );
    assert!(d.containers().is_empty(), "a failed pull creates nothing");

    auth_file(&dir, &reg.host(), "ann", PASSWORD);
    let ok = c
        .clone()
        .start(start("ann", &image.reference, pb::PullPolicy::Always))
        .await;
    assert!(ok.is_ok(), "{ok:?}\n{}", d.log_text());

    let log = d.log_text();
    for secret in [PASSWORD, WRONG] {
        assert!(!log.contains(secret), "berthd's log holds a password");
        for (path, text) in files_under(&d.state_dir) {
            assert!(
                !text.contains(secret),
                "{} holds a password",
                path.display()
            );
        }
    }
    assert!(log.contains("pulling image"), "pulls are logged: {log}");
    stop_remove(&c, "ann").await;
    remove_local(&image.reference);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&cfg_dir);
}

#[tokio::test]
async fn never_unknown_tags_and_a_stopped_registry_fail_within_3s_creating_nothing() {
    let mut reg = Registry::start(None);
    let image = push_test_image(&reg, 1, 1);
    let d = Daemon::start();
    let c = d.client().await;
    let unknown_tag = format!("{}/{}:no-such-tag", reg.host(), image.repo);
    let unknown_repo = format!("{}/no-such-repo:1", reg.host());
    let cases = [
        (
            image.reference.clone(),
            pb::PullPolicy::Never,
            Code::NotFound,
            "IMAGE_NOT_FOUND",
            "",
        ),
        (
            unknown_tag,
            pb::PullPolicy::Ifnotpresent,
            Code::FailedPrecondition,
            "IMAGE_PULL_FAILED",
            "not_found",
        ),
        (
            unknown_repo,
            pb::PullPolicy::Always,
            Code::FailedPrecondition,
            "IMAGE_PULL_FAILED",
            "not_found",
        ),
    ];
    for (img, policy, code, want, cause) in cases {
        let t = Instant::now();
        let e = c
            .clone()
            .start(start("nina", &img, policy))
            .await
            .unwrap_err();
        eprintln!("{img} ({policy:?}) failed after {:?}", t.elapsed());
        assert!(t.elapsed() < FAIL_WITHIN, "{img}: {:?}", t.elapsed());
        assert_eq!(
            (e.code(), reason(&e)),
            (code, (want.into(), cause.into())),
            "{e:?}"
        );
        assert!(e.message().contains(&img), "{}", e.message());
    }
    reg.stop();
    let t = Instant::now();
    let e = c
        .clone()
        .start(start("nina", &image.reference, pb::PullPolicy::Always))
        .await
        .unwrap_err();
    eprintln!("stopped registry: failed after {:?}", t.elapsed());
    assert!(t.elapsed() < FAIL_WITHIN, "{:?}", t.elapsed());
    assert_eq!(
        reason(&e),
        ("IMAGE_PULL_FAILED".into(), "registry_unreachable".into()),
        "{e:?}"
    );
    assert!(
        e.message().contains("connection refused"),
        "{}",
        e.message()
    );
    assert!(d.containers().is_empty(), "failed pulls create nothing");
    let status = common::poll(&c, "nina", "").await;
    assert_eq!(common::state(&status), pb::server_status::State::Absent);
}

#[tokio::test]
async fn prepull_warms_the_node_with_progress_and_names_what_it_could_not_pull() {
    let reg = Registry::start(None);
    let image = push_test_image(&reg, 2, 2);
    let missing = format!("{}/{}:no-such-tag", reg.host(), image.repo);
    let d = Daemon::start();
    let c = d.client().await;
    let req = pb::PrepullRequest {
        images: vec![image.reference.clone(), missing.clone()],
    };
    let events: Vec<pb::PrepullEvent> = c
        .clone()
        .prepull(req)
        .await
        .unwrap()
        .into_inner()
        .map(Result::unwrap)
        .collect()
        .await;
    let done: Vec<&pb::PrepullEvent> = events.iter().filter(|e| e.done).collect();
    assert_eq!(done.len(), 1, "{events:?}");
    assert_eq!(done[0].image, image.reference);
    let failed = events
        .iter()
        .find(|e| !e.error.is_empty())
        .expect("a failure");
    assert_eq!(
        (failed.image.as_str(), failed.reason.as_str()),
        (missing.as_str(), "IMAGE_PULL_FAILED")
    );
    let size: u64 = image.new_layer_sizes.iter().sum();
    let last = events
        .iter()
        .filter(|e| e.image == image.reference)
        .filter_map(|e| e.progress.as_ref())
        .next_back()
        .expect("progress");
    assert_eq!(last.bytes_done, size);
    // The image is on the node now: a Start with `never` finds it.
    let ok = c
        .clone()
        .start(start("pre", &image.reference, pb::PullPolicy::Never))
        .await;
    assert!(ok.is_ok(), "{ok:?}");
    stop_remove(&c, "pre").await;
    remove_local(&image.reference);
}
