use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;

use super::*;
use crate::docker::{
    ContainerEngine, ContainerInfo, ContainerSpec, EngineError, LABEL_USER, RunStatus,
};

fn spec(name: &str, image: &str) -> ContainerSpec {
    ContainerSpec {
        entrypoint: None,
        options: Default::default(),
        name: name.to_owned(),
        image: image.to_owned(),
        cmd: None,
        env: Vec::new(),
        labels: HashMap::from([(LABEL_USER.to_owned(), name.to_owned())]),
        port: 8888,
        host_ip: "127.0.0.1".to_owned(),
        memory: None,
        memory_reservation: None,
        nano_cpus: None,
        cpu_shares: None,
        mounts: Vec::new(),
        host: crate::spec::HostAccess::default(),
        device_requests: vec![],
        stdin: false,
    }
}

async fn answers(info: &ContainerInfo) -> bool {
    let port = info.host_port(8888).expect("a published port");
    crate::runtime::lifecycle::ready::probe(([127, 0, 0, 1], port).into(), "/").await
}

#[tokio::test]
async fn create_refuses_a_taken_name_and_a_missing_image_like_dockerd() {
    let fake = FakeEngine::new();
    let missing = fake.create(&spec("a", "nope")).await;
    assert!(
        matches!(&missing, Err(EngineError::NotFound { what }) if what.contains("No such image")),
        "{missing:?}"
    );
    fake.add_image("img", Behaviour::Serve);
    let id = fake.create(&spec("a", "img:latest")).await.expect("create");
    let again = fake.create(&spec("a", "img")).await;
    assert!(
        matches!(again, Err(EngineError::Conflict { .. })),
        "{again:?}"
    );
    assert_eq!(fake.container_ids(), [id]);
    assert_eq!(fake.calls("create"), 3);
}

#[tokio::test]
async fn a_started_container_answers_http_until_it_exits() {
    let fake = FakeEngine::new();
    fake.add_image("serve", Behaviour::Serve);
    fake.add_image("silent", Behaviour::Silent);
    let a = fake.create(&spec("a", "serve")).await.expect("create");
    let b = fake.create(&spec("b", "silent")).await.expect("create");
    fake.start(&a).await.expect("start");
    fake.start(&b).await.expect("start");
    let info_a = fake.inspect(&a).await.expect("inspect").expect("exists");
    let info_b = fake.inspect("b").await.expect("inspect").expect("exists");
    assert_eq!(info_a.status, RunStatus::Running);
    assert!(answers(&info_a).await);
    assert!(!answers(&info_b).await, "a silent server must not answer");
    assert!(fake.set_answering("b", true));
    assert!(answers(&info_b).await);
    assert!(fake.exit(&a, 3));
    let exited = fake.container(&a).expect("exists");
    assert_eq!(
        (exited.status, exited.exit_code),
        (RunStatus::Exited, Some(3))
    );
    assert!(exited.ports.is_empty());
    assert!(
        !answers(&info_a).await,
        "the port closes with the container"
    );
    assert_eq!(fake.wait_exit(&a).await.expect("wait"), 3);
}

#[tokio::test(start_paused = true)]
async fn a_graceful_stop_is_143_or_after_the_grace_137() {
    let fake = FakeEngine::new();
    fake.add_image("serve", Behaviour::Serve);
    let a = fake.create(&spec("a", "serve")).await.expect("create");
    let b = fake.create(&spec("b", "serve")).await.expect("create");
    fake.start(&a).await.expect("start");
    fake.start(&b).await.expect("start");
    fake.stop(&a, Duration::from_secs(30)).await.expect("stop");
    assert_eq!(fake.container(&a).and_then(|c| c.exit_code), Some(143));
    fake.ignore_sigterm(&b, true);
    let t0 = tokio::time::Instant::now();
    fake.stop(&b, Duration::from_secs(30)).await.expect("stop");
    assert_eq!(t0.elapsed(), Duration::from_secs(30));
    assert_eq!(fake.container(&b).and_then(|c| c.exit_code), Some(137));
    fake.stop(&b, Duration::from_secs(30))
        .await
        .expect("stopping a stopped one");
    assert!(fake.kill("nope").await.is_err());
    fake.remove("nope")
        .await
        .expect("removing an absent container succeeds");
}

#[tokio::test(start_paused = true)]
async fn an_exit_behaviour_ends_the_run_after_its_time_with_its_output() {
    let fake = FakeEngine::new();
    let after = Duration::from_secs(5);
    let output = "line one\nline two".to_owned();
    fake.add_image(
        "crash",
        Behaviour::Exit {
            code: 2,
            output,
            after,
        },
    );
    let id = fake.create(&spec("a", "crash")).await.expect("create");
    fake.start(&id).await.expect("start");
    assert_eq!(
        fake.container(&id).map(|c| c.status),
        Some(RunStatus::Running)
    );
    assert_eq!(fake.wait_exit(&id).await.expect("wait"), 2);
    let lines: Vec<_> = fake
        .logs(
            &id,
            crate::docker::LogsWanted {
                tail: Some(1),
                ..Default::default()
            },
        )
        .collect()
        .await;
    assert_eq!(lines.len(), 1);
    let last = lines[0].as_ref().expect("chunk");
    assert_eq!(last.data, b"line two\n");
}

#[tokio::test]
async fn events_replay_since_a_time_and_end_when_the_engine_goes_away() {
    let fake = FakeEngine::new();
    fake.add_image("serve", Behaviour::Serve);
    let id = fake.create(&spec("a", "serve")).await.expect("create");
    fake.start(&id).await.expect("start");
    let mut all = fake.events(&[(LABEL_USER, "a")], Some(0));
    let mut other = fake.events(&[(LABEL_USER, "b")], Some(0));
    let mut now = fake.events(&[(LABEL_USER, "a")], None);
    for want in ["create", "start"] {
        let ev = all.next().await.expect("event").expect("ok");
        assert_eq!(
            (ev.action.as_str(), ev.container_id.as_str()),
            (want, id.as_str())
        );
    }
    let later = fake.history()[1].time_nano / 1_000_000_000 + 1;
    let mut none_yet = fake.events(&[], Some(later));
    fake.oom_kill(&id);
    for want in ["oom", "die"] {
        assert_eq!(all.next().await.expect("event").expect("ok").action, want);
        assert_eq!(now.next().await.expect("event").expect("ok").action, want);
    }
    fake.go_away();
    assert!(
        all.next().await.is_none(),
        "the stream ends with the engine"
    );
    assert!(other.next().await.is_none(), "other keys saw nothing");
    let first = none_yet.next().await.expect("event").expect("ok");
    assert_eq!(first.action, "oom", "no replay of events before `since`");
    let refused = fake.events(&[], None).next().await.expect("an error");
    assert!(matches!(refused, Err(EngineError::Unavailable { .. })));
    assert!(matches!(
        fake.ping().await,
        Err(EngineError::Unavailable { .. })
    ));
    fake.come_back();
    fake.ping().await.expect("back");
    assert_eq!(fake.calls("ping"), 2);
}

#[tokio::test(start_paused = true)]
async fn a_delayed_inspect_answers_with_the_snapshot_it_took_before_the_delay() {
    let fake = FakeEngine::new();
    fake.add_image("serve", Behaviour::Serve);
    let id = fake.create(&spec("a", "serve")).await.expect("create");
    fake.start(&id).await.expect("start");
    fake.delay_inspects(Some("a"), Duration::from_secs(3), 1);
    let slow = tokio::spawn({
        let fake = fake.clone();
        let id = id.clone();
        async move { fake.inspect(&id).await }
    });
    fake.wait_delayed_inspects(1).await;
    fake.exit(&id, 0);
    let stale = slow.await.expect("task").expect("inspect").expect("exists");
    assert_eq!(stale.status, RunStatus::Running, "taken before the exit");
    assert_eq!(fake.delayed_inspects(), 0);
    let fresh = fake.inspect(&id).await.expect("inspect").expect("exists");
    assert_eq!(
        fresh.status,
        RunStatus::Exited,
        "only one inspect was armed"
    );
}

#[tokio::test]
async fn a_wait_ends_unavailable_when_the_engine_goes_away() {
    let fake = FakeEngine::new();
    fake.add_image("serve", Behaviour::Serve);
    let id = fake.create(&spec("a", "serve")).await.expect("create");
    fake.start(&id).await.expect("start");
    let wait = tokio::spawn({
        let fake = fake.clone();
        async move { fake.wait_exit(&id).await }
    });
    // Away only once the wait is under way, so the wait itself must notice.
    while fake.calls("wait_exit") == 0 {
        tokio::task::yield_now().await;
    }
    fake.go_away();
    let r = wait.await.expect("task");
    assert!(matches!(r, Err(EngineError::Unavailable { .. })), "{r:?}");
}

/// Runs `n` `ping`s under `plan`; what each answered ("ok", "error", "timeout", "hang").
async fn pings(fake: &FakeEngine, n: usize) -> Vec<&'static str> {
    let mut out = Vec::new();
    for _ in 0..n {
        let r = tokio::time::timeout(Duration::from_millis(20), fake.ping()).await;
        out.push(match r {
            Err(_) => "hang",
            Ok(Ok(())) => "ok",
            Ok(Err(EngineError::Timeout { .. })) => "timeout",
            Ok(Err(_)) => "error",
        });
    }
    out
}

#[tokio::test]
async fn a_fault_plan_is_a_seeded_schedule_of_every_kind_of_fault() {
    let fake = FakeEngine::new();
    let plan = FaultPlan {
        seed: 7,
        errors: 300,
        hangs: 100,
        crashes: 0,
    };
    fake.set_faults(Some(plan));
    let first = pings(&fake, 60).await;
    let injected = fake.injected();
    fake.set_faults(Some(plan));
    assert_eq!(
        pings(&fake, 60).await,
        first,
        "the same seed, the same faults"
    );
    for kind in ["ok", "error", "timeout", "hang"] {
        assert!(first.contains(&kind), "{kind} never happened: {first:?}");
    }
    assert_eq!(
        injected.len(),
        first.iter().filter(|a| **a != "ok").count(),
        "{injected:?}"
    );
    assert_eq!(
        fake.hung_calls(),
        0,
        "a dropped hanging call is no longer counted"
    );
    fake.set_faults(None);
    assert!(pings(&fake, 20).await.iter().all(|a| *a == "ok"));
}

#[tokio::test]
async fn a_lost_reply_does_the_call_and_a_failed_one_does_not() {
    // Every call faults: each seed's first draw is one of the three kinds.
    let mut seen = Vec::new();
    for seed in 0..200 {
        let fake = FakeEngine::new();
        fake.add_image("img", Behaviour::Serve);
        fake.set_faults(Some(FaultPlan {
            seed,
            errors: 1000,
            ..FaultPlan::default()
        }));
        let r = fake.create(&spec("a", "img")).await;
        let fault = fake.injected()[0].1;
        let made = fake.container("a").is_some();
        assert!(r.is_err(), "{fault:?} answered {r:?}");
        assert_eq!(made, fault == Fault::LostReply, "{fault:?}");
        seen.push(fault);
    }
    for kind in [Fault::Fail, Fault::Timeout, Fault::LostReply] {
        assert!(seen.contains(&kind), "{kind:?} never drawn");
    }
}

#[tokio::test]
async fn a_crash_hangs_every_later_call_until_cleared() {
    let fake = FakeEngine::new();
    fake.set_faults(Some(FaultPlan {
        seed: 1,
        crashes: 1000,
        ..FaultPlan::default()
    }));
    assert_eq!(pings(&fake, 1).await, ["hang"]);
    assert!(fake.crashed());
    tokio::time::timeout(Duration::from_secs(1), fake.wait_crashed())
        .await
        .expect("the crash is reported");
    fake.set_faults(None);
    assert_eq!(
        pings(&fake, 2).await,
        ["hang", "hang"],
        "a crashed berthd gets no answers"
    );
    fake.clear_crash();
    assert_eq!(pings(&fake, 1).await, ["ok"]);
}
