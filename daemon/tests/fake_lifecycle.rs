//! The lifecycle over the fake engine, through the real Spawner service: idempotent Start,
//! key conflicts, Stop cancelling a Start, the status table and adoption after a restart.
//! No Docker engine is used.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::time::Duration;

use berth_proto::v1 as pb;
use berth_proto::v1::server_status::State;
use berthd::docker::RunStatus;
use berthd::docker::fake::Behaviour;
use common::fake_node::{
    FakeNode, SERVE, SILENT, engine, start_in_background, start_req, started, state_dir,
};
use common::{Stop, eventually, key, poll, state, stop_as, wait_for_state};
use futures::StreamExt;
use tonic::Code;

/// Generous for in-memory work; only a hang ever reaches it.
const LIMIT: Duration = Duration::from_secs(5);

/// Waits until the fake says `user`'s container is in `status`.
async fn container_reaches(node: &FakeNode, user: &str, status: RunStatus) {
    let name = FakeNode::container_name(user);
    eventually(LIMIT, || async {
        (node.fake.container(&name).map(|c| c.status) == Some(status)).then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("{name} never became {status:?}"));
}

#[tokio::test]
async fn a_retried_start_returns_the_same_answer_and_creates_one_container() {
    let node = FakeNode::start().await;
    let mut c = node.client();
    let first = c
        .start(start_req("ann", "s1", SERVE))
        .await
        .unwrap()
        .into_inner();
    let again = c
        .start(start_req("ann", "s1", SERVE))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first, again);
    // Retries racing each other join the same spawn too.
    let retries = (0..5).map(|_| {
        let mut c = node.client();
        tokio::spawn(async move { c.start(start_req("bob", "s1", SERVE)).await })
    });
    let answers: Vec<pb::StartResponse> = futures::future::join_all(retries)
        .await
        .into_iter()
        .map(|r| r.unwrap().unwrap().into_inner())
        .collect();
    assert!(answers.iter().all(|a| *a == answers[0]), "{answers:?}");
    assert_eq!(node.fake.calls("create"), 2, "one container per key");
    assert_eq!(node.fake.calls("start"), 2);
    assert_eq!(state(&poll(&c, "ann", "").await), State::Running);
}

#[tokio::test]
async fn a_second_start_under_another_spawn_id_while_the_first_runs_is_already_exists() {
    let node = FakeNode::start().await;
    let first = start_in_background(&node, "cat", "a", SILENT);
    container_reaches(&node, "cat", RunStatus::Running).await;
    let second = start_in_background(&node, "cat", "b", SILENT);
    // The second spawn has begun (it queues behind the first) before the first finishes.
    let mut progress = node
        .client()
        .progress(pb::ProgressRequest {
            key: key("cat", ""),
            spawn_id: "b".to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    progress.next().await.unwrap().unwrap();
    assert!(!first.is_finished());
    node.fake
        .set_answering(&FakeNode::container_name("cat"), true);
    let first = first.await.unwrap().unwrap().into_inner();
    let refused = second.await.unwrap().unwrap_err();
    assert_eq!(refused.code(), Code::AlreadyExists, "{refused:?}");
    assert!(refused.message().contains("\"a\""), "{}", refused.message());
    assert_eq!(node.fake.calls("create"), 1);
    let p = poll(&node.client, "cat", "").await;
    assert_eq!(
        (state(&p), p.container_id),
        (State::Running, first.container_id)
    );
}

#[tokio::test]
async fn stop_cancels_a_start_waiting_for_http() {
    let node = FakeNode::start().await;
    let start = start_in_background(&node, "dan", "s", SILENT);
    container_reaches(&node, "dan", RunStatus::Running).await;
    assert_eq!(state(&poll(&node.client, "dan", "").await), State::Starting);
    let stopped = stop_as(&node.client, "dan", "", Stop::Now).await.unwrap();
    let cancelled = tokio::time::timeout(LIMIT, start)
        .await
        .expect("the start ends with the stop, not at its ready timeout")
        .unwrap()
        .unwrap_err();
    assert_eq!(cancelled.code(), Code::Aborted, "{cancelled:?}");
    assert_eq!(state(&stopped), State::Exited);
    assert_eq!(
        (stopped.exit_code, stopped.reason.as_str()),
        (Some(137), "Killed")
    );
    let c = node
        .fake
        .container(&FakeNode::container_name("dan"))
        .unwrap();
    assert_eq!(c.exit_code, Some(137));
}

/// How a running server ends in the status table.
#[derive(Debug, Clone, Copy)]
enum End {
    Exit(i64),
    Oom,
    StopNow,
    StopGraceful,
}

#[tokio::test]
async fn poll_reports_every_state_and_exit_reason() {
    let node = FakeNode::start().await;
    let c = node.client();
    assert_eq!(state(&poll(&c, "nobody", "").await), State::Absent);

    // STARTING while it does not answer, RUNNING once it does.
    let start = start_in_background(&node, "eve", "s", SILENT);
    container_reaches(&node, "eve", RunStatus::Running).await;
    assert_eq!(state(&poll(&c, "eve", "").await), State::Starting);
    node.fake
        .set_answering(&FakeNode::container_name("eve"), true);
    let started = start.await.unwrap().unwrap().into_inner();
    let p = poll(&c, "eve", "").await;
    assert_eq!(state(&p), State::Running);
    assert_eq!(p.url, started.url);

    // STOPPING while a graceful stop waits for a server that ignores SIGTERM.
    let name = FakeNode::container_name("eve");
    node.fake.ignore_sigterm(&name, true);
    let stopping = tokio::spawn({
        let c = node.client();
        async move { stop_as(&c, "eve", "", Stop::Graceful(3600)).await }
    });
    wait_for_state(&c, "eve", "", State::Stopping, LIMIT)
        .await
        .expect("STOPPING during the grace");
    node.fake.exit(&name, 143);
    let stopped = stopping.await.unwrap().unwrap();
    assert_eq!(state(&stopped), State::Exited);

    let table = [
        ("u0", End::Exit(0), 0, "Completed"),
        ("u3", End::Exit(3), 3, "Error"),
        ("oom", End::Oom, 137, "OOMKilled"),
        ("kill", End::StopNow, 137, "Killed"),
        ("term", End::StopGraceful, 143, "Terminated"),
    ];
    for (user, end, code, reason) in table {
        c.clone().start(start_req(user, "s", SERVE)).await.unwrap();
        let name = FakeNode::container_name(user);
        match end {
            End::Exit(code) => assert!(node.fake.exit(&name, code)),
            End::Oom => assert!(node.fake.oom_kill(&name)),
            End::StopNow => drop(stop_as(&c, user, "", Stop::Now).await.unwrap()),
            End::StopGraceful => drop(stop_as(&c, user, "", Stop::Graceful(30)).await.unwrap()),
        }
        // Exits from outside reach the view through the event monitor.
        let p = wait_for_state(&c, user, "", State::Exited, LIMIT)
            .await
            .unwrap_or_else(|| panic!("{end:?} never showed as EXITED"));
        assert_eq!(
            (p.exit_code, p.reason.as_str()),
            (Some(code), reason),
            "{end:?}"
        );
        assert!(p.url.is_empty(), "an exited server has no URL");
    }
    let listed = c
        .clone()
        .list(pb::ListRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.servers.len(), 6);
}

#[tokio::test(start_paused = true)]
async fn a_server_that_never_answers_fails_at_its_ready_timeout_and_is_killed() {
    let node = FakeNode::start().await;
    let t0 = tokio::time::Instant::now();
    let mut req = start_req("fay", "s", SILENT);
    req.ready_timeout_seconds = 90;
    let err = node.client().start(req).await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(
        t0.elapsed() >= Duration::from_secs(90),
        "{:?}",
        t0.elapsed()
    );
    // A failed start leaves nothing of the container it made; it ran, so its exit code stays.
    let p = poll(&node.client, "fay", "").await;
    assert_eq!((state(&p), p.exit_code), (State::Absent, Some(137)));
    assert!(
        node.fake
            .container(&FakeNode::container_name("fay"))
            .is_none()
    );
}

#[tokio::test(start_paused = true)]
async fn a_graceful_stop_kills_a_server_that_ignores_sigterm_after_the_grace() {
    let node = FakeNode::start().await;
    node.client()
        .start(start_req("gus", "s", SERVE))
        .await
        .unwrap();
    node.fake
        .ignore_sigterm(&FakeNode::container_name("gus"), true);
    let t0 = tokio::time::Instant::now();
    let p = stop_as(&node.client, "gus", "", Stop::Graceful(20))
        .await
        .unwrap();
    assert!(
        t0.elapsed() >= Duration::from_secs(20),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!((p.exit_code, p.reason.as_str()), (Some(137), "Killed"));
}

#[tokio::test]
async fn a_restarted_node_adopts_its_containers_and_never_restarts_or_recreates_them() {
    let node = FakeNode::start().await;
    let ann = started(&node, "ann", "s1", SERVE).await;
    node.client()
        .start(start_req("bob", "s1", SERVE))
        .await
        .unwrap();
    let ann_name = FakeNode::container_name("ann");
    let before = node.fake.container(&ann_name).unwrap();
    // bob's server ends while no berthd runs.
    let (fake, dir) = node.shut_down().await;
    fake.exit(&FakeNode::container_name("bob"), 0);
    let node = FakeNode::start_on(fake.clone(), dir, |_| {}).await;
    let touched = ["create", "start", "stop", "kill", "remove"].map(|op| fake.calls(op));
    let p = poll(&node.client, "ann", "").await;
    assert_eq!(state(&p), State::Running);
    assert_eq!(
        (p.container_id.as_str(), p.url.as_str()),
        (ann.container_id.as_str(), ann.url.as_str())
    );
    let b = poll(&node.client, "bob", "").await;
    assert_eq!((state(&b), b.reason.as_str()), (State::Exited, "Completed"));
    // A retry of ann's spawn after the restart is answered from the adopted container.
    let again = started(&node, "ann", "s1", SERVE).await;
    assert_eq!(again, ann);
    assert_eq!(
        ["create", "start", "stop", "kill", "remove"].map(|op| fake.calls(op)),
        touched,
        "adoption and the retry made no container call that changes anything"
    );
    assert_eq!(touched, [2, 2, 0, 0, 0]);
    let after = fake.container(&ann_name).unwrap();
    assert_eq!(
        (after.started_at, after.restart_count),
        (before.started_at, before.restart_count)
    );
}

#[tokio::test]
async fn a_lost_record_is_rebuilt_from_the_labels_without_a_second_container() {
    let fake = engine();
    let node = FakeNode::start_on(fake.clone(), state_dir(), |_| {}).await;
    let ann = started(&node, "ann", "s1", SERVE).await;
    let records = node.state_dir.join("servers");
    for f in std::fs::read_dir(&records).unwrap() {
        std::fs::remove_file(f.unwrap().path()).unwrap();
    }
    let node = node.restart().await;
    let p = poll(&node.client, "ann", "").await;
    assert_eq!((state(&p), p.spawn_id.as_str()), (State::Running, "s1"));
    assert_eq!(p.container_id, ann.container_id);
    assert_eq!(
        std::fs::read_dir(&records).unwrap().count(),
        1,
        "rebuilt on disk"
    );
    assert_eq!(fake.container_ids().len(), 1);
}

#[tokio::test]
async fn after_an_engine_outage_the_monitor_catches_up_with_what_happened_meanwhile() {
    let node = FakeNode::start().await;
    for user in ["ann", "bob"] {
        node.client()
            .start(start_req(user, "s", SERVE))
            .await
            .unwrap();
    }
    let subscriptions = node.fake.calls("events");
    node.fake.go_away();
    // The monitor saw its stream end and tried (and failed) to subscribe again.
    eventually(LIMIT, || async {
        (node.fake.calls("events") > subscriptions).then_some(())
    })
    .await
    .expect("the monitor retries while the engine is away");
    node.fake.exit(&FakeNode::container_name("ann"), 0);
    assert_eq!(
        state(&poll(&node.client, "ann", "").await),
        State::Running,
        "Poll answers from memory while the engine is away"
    );
    node.fake.come_back();
    let p = wait_for_state(&node.client, "ann", "", State::Exited, LIMIT)
        .await
        .expect("the exit during the outage is seen once the engine is back");
    assert_eq!(p.reason, "Completed");
    assert_eq!(state(&poll(&node.client, "bob", "").await), State::Running);
}

#[tokio::test]
async fn start_failures_are_reported_at_once_with_their_cause() {
    let node = FakeNode::start().await;
    let crash = |after| Behaviour::Exit {
        code: 3,
        output: "starting\nno config found".to_owned(),
        after,
    };
    node.fake.add_image("crash/now", crash(Duration::ZERO));
    node.fake
        .add_image("crash/later", crash(Duration::from_millis(50)));
    node.fake.add_image(
        "broken",
        Behaviour::RefuseStart {
            message: "exec: \"jupyterhub-singleuser\": executable file not found".to_owned(),
        },
    );
    let table = [
        ("crash/now", Code::FailedPrecondition, "no config found"),
        ("crash/later", Code::FailedPrecondition, "no config found"),
        (
            "broken",
            Code::FailedPrecondition,
            "executable file not found",
        ),
        // Not on the node and not in the (fake) registry: the pull fails at once.
        (
            "absent/image",
            Code::FailedPrecondition,
            "no such repository or tag",
        ),
    ];
    for (i, (image, code, says)) in table.into_iter().enumerate() {
        let err = tokio::time::timeout(
            LIMIT,
            node.client().start(start_req(&format!("u{i}"), "s", image)),
        )
        .await
        .unwrap_or_else(|_| panic!("{image}: the start did not fail at once"))
        .unwrap_err();
        assert_eq!(err.code(), code, "{image}: {err:?}");
        assert!(err.message().contains(says), "{image}: {}", err.message());
        if image.starts_with("crash") {
            assert!(err.message().contains("exit code 3"), "{}", err.message());
        }
    }
    assert_eq!(
        node.fake.calls("create"),
        3,
        "a missing image creates nothing"
    );
}

#[tokio::test]
async fn capacity_reports_the_configured_node_labels() {
    let labels = [("gpu", "a100"), ("zone", "b")];
    let node = FakeNode::start_on(engine(), state_dir(), |cfg| {
        cfg.labels = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
    })
    .await;
    let cap = node
        .client()
        .capacity(pb::CapacityRequest {})
        .await
        .unwrap()
        .into_inner();
    let mut got: Vec<_> = cap.labels.into_iter().collect();
    got.sort();
    assert_eq!(
        got,
        labels.map(|(k, v)| (k.to_owned(), v.to_owned())).to_vec()
    );
}
