//! The Spawner API against a real dockerd, through the real berthd binary.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use berth_proto::v1 as pb;
use berth_proto::v1::server_status::State;
use common::*;
use futures::StreamExt;
use tonic::Code;

#[tokio::test]
async fn start_answers_http_and_poll_and_list_report_running() {
    let d = Daemon::start();
    let mut c = d.client().await;
    let user = unique("ann");

    let v = c.version(pb::VersionRequest {}).await.unwrap().into_inner();
    assert_eq!(v.node_id, d.node_id);
    assert_eq!(v.api_version, "v1");
    assert!(!v.docker_api_version.is_empty());

    let r = c.start(tiny_start(&user, "s1")).await.unwrap().into_inner();
    assert_eq!(r.node_id, d.node_id);
    assert_eq!(r.spawn_id, "s1");
    assert!(r.url.starts_with("http://127.0.0.1:"), "{}", r.url);
    let (code, body) = http_get(&r.url).await;
    assert_eq!(code, 200);
    assert!(body.contains("berth tiny server"));

    let p = common::poll(&c, &user, "").await;
    assert_eq!(state(&p), State::Running);
    assert_eq!(p.container_id, r.container_id);
    assert_eq!(p.url, r.url);
    assert_eq!(p.spawn_id, "s1");
    assert!(p.started_at.is_some());

    let list = c
        .list(pb::ListRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.servers.len(), 1);
    assert_eq!(list.servers[0].key, key(&user, ""));
    assert_eq!(state(&list.servers[0]), State::Running);

    // The container carries the exact key and our node id.
    let labels = docker(&[
        "inspect",
        "--format",
        "{{json .Config.Labels}}",
        &r.container_id,
    ]);
    let labels: serde_json::Value = serde_json::from_str(&labels).unwrap();
    assert_eq!(labels["berth.user"], user.as_str());
    assert_eq!(labels["berth.server"], "");
    assert_eq!(labels["berth.node"], d.node_id.as_str());
    assert_eq!(labels["berth.spawn-id"], "s1");
    assert!(
        labels["berth.spec-hash"]
            .as_str()
            .is_some_and(|h| h.len() == 24)
    );
}

#[tokio::test]
async fn a_container_killed_from_outside_is_exited_and_stop_still_succeeds() {
    let d = Daemon::start();
    let mut c = d.client().await;
    let user = unique("bob");
    let r = c.start(tiny_start(&user, "s1")).await.unwrap().into_inner();

    docker(&["kill", &r.container_id]);
    let exited = wait_for_state(&c, &user, "", State::Exited, Duration::from_secs(10))
        .await
        .expect("poll reports EXITED after docker kill");
    assert_eq!(exited.exit_code, Some(137));
    assert_eq!(exited.reason, "Killed");
    assert!(exited.finished_at.is_some());

    let stopped = stop_as(&c, &user, "", Stop::Graceful(0)).await.unwrap();
    assert_eq!(state(&stopped), State::Exited);
    assert_eq!(stopped.exit_code, Some(137));

    let unknown = stop_as(&c, &unique("nobody"), "x", Stop::Now)
        .await
        .unwrap();
    assert_eq!(state(&unknown), State::Absent);

    let removed = stop_as(&c, &user, "", Stop::GracefulRemove).await.unwrap();
    assert_eq!(state(&removed), State::Absent);
    assert!(d.containers().is_empty(), "remove deletes the container");
}

#[tokio::test]
async fn graceful_stop_and_immediate_stop() {
    let d = Daemon::start();
    let mut c = d.client().await;
    let (u1, u2) = (unique("g1"), unique("g2"));
    c.start(tiny_start(&u1, "a")).await.unwrap();
    c.start(tiny_start(&u2, "b")).await.unwrap();

    let graceful = stop_as(&c, &u1, "", Stop::Graceful(5)).await.unwrap();
    assert_eq!(state(&graceful), State::Exited);
    // busybox httpd under tini ends on SIGTERM, long before the grace runs out.
    assert_ne!(
        graceful.exit_code,
        Some(137),
        "SIGTERM was enough: {graceful:?}"
    );

    let killed = stop_as(&c, &u2, "", Stop::Now).await.unwrap();
    assert_eq!(state(&killed), State::Exited);
    assert_eq!(killed.exit_code, Some(137));

    // A stopped key starts again under a new spawn id, replacing the old container.
    let again = c.start(tiny_start(&u1, "a2")).await.unwrap().into_inner();
    assert_ne!(again.container_id, graceful.container_id);
    assert_eq!(d.containers().len(), 2);
}

#[tokio::test]
async fn the_same_start_twice_is_one_container_with_the_same_answer() {
    let d = Daemon::start();
    let mut c = d.client().await;
    let user = unique("cat");
    let first = c
        .start(tiny_start(&user, "same"))
        .await
        .unwrap()
        .into_inner();
    let second = c
        .start(tiny_start(&user, "same"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first, second);
    assert_eq!(d.containers(), vec![first.container_id.clone()]);

    // Another spawn id for a running key is refused, and changes nothing.
    let other = c.start(tiny_start(&user, "other")).await.unwrap_err();
    assert_eq!(other.code(), Code::AlreadyExists, "{other:?}");
    assert!(other.message().contains("same"), "{}", other.message());
    assert_eq!(d.containers(), vec![first.container_id]);
}

#[tokio::test]
async fn ten_concurrent_starts_of_one_key_make_one_container() {
    let d = Daemon::start();
    let c = d.client().await;

    // Same spawn id: every caller gets the one result.
    let user = unique("dan");
    let calls = (0..10).map(|_| {
        let mut c = c.clone();
        let req = tiny_start(&user, "one");
        tokio::spawn(async move { c.start(req).await.map(|r| r.into_inner()) })
    });
    let results: Vec<_> = futures::future::join_all(calls).await;
    let answers: Vec<_> = results.into_iter().map(|r| r.unwrap().unwrap()).collect();
    assert!(answers.windows(2).all(|w| w[0] == w[1]), "{answers:?}");
    assert_eq!(d.containers().len(), 1);

    // Different spawn ids: exactly one wins, the others are told it exists.
    let user2 = unique("eve");
    let calls = (0..10).map(|i| {
        let mut c = c.clone();
        let req = tiny_start(&user2, &format!("spawn-{i}"));
        tokio::spawn(async move { c.start(req).await.map(|r| r.into_inner()) })
    });
    let results: Vec<_> = futures::future::join_all(calls)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, 1, "{results:?}");
    for r in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(r.code(), Code::AlreadyExists, "{r:?}");
    }
    assert_eq!(d.containers().len(), 2);
}

#[tokio::test]
async fn a_server_that_exits_at_once_fails_fast_with_code_and_output() {
    let d = Daemon::start();
    let mut c = d.client().await;
    let user = unique("fay");
    let mut req = tiny_start(&user, "crash");
    req.cmd = vec![
        "sh".into(),
        "-c".into(),
        "echo starting up; echo 'fatal: notebook dir /nope missing' >&2; exit 3".into(),
    ];
    req.ready_timeout_seconds = 120;
    let mut progress = c
        .progress(pb::ProgressRequest {
            key: key(&user, ""),
            spawn_id: "crash".into(),
        })
        .await
        .unwrap()
        .into_inner();

    let t0 = Instant::now();
    let err = c.start(req).await.unwrap_err();
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(3), "took {took:?}");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("exit code 3"), "{}", err.message());
    assert!(
        err.message().contains("fatal: notebook dir /nope missing"),
        "{}",
        err.message()
    );

    let mut events = Vec::new();
    while let Some(e) = progress.next().await {
        events.push(e.unwrap());
    }
    let last = events.last().unwrap();
    assert!(last.failed && !last.ready, "{events:?}");
    assert_eq!(last.reason, "Error");
    // The last message says what to do; the technical detail is the event before it (the
    // event log under the hub's progress bar).
    assert!(!last.message.contains("exit code 3"), "{}", last.message);
    let detail = &events[events.len() - 2];
    assert!(!detail.failed, "{detail:?}");
    assert!(detail.message.contains("exit code 3"), "{}", detail.message);
    assert!(
        detail.message.contains("fatal: notebook dir /nope missing"),
        "{}",
        detail.message
    );
    assert_eq!(last.progress, 100);

    let p = common::poll(&c, &user, "").await;
    // A failed start leaves nothing of the container it made (its output is in the error);
    // the exit code of the run stays.
    assert_eq!(state(&p), State::Absent);
    assert_eq!(p.exit_code, Some(3));
    assert!(d.containers().is_empty(), "{:?}", d.containers());
}

#[tokio::test]
async fn a_missing_image_fails_fast_and_creates_nothing() {
    let d = Daemon::start();
    let mut c = d.client().await;
    let user = unique("gus");
    let mut req = tiny_start(&user, "s");
    req.image = "berth-test/not-here:1.0".into();
    req.pull_policy = pb::PullPolicy::Never.into();
    let t0 = Instant::now();
    let err = c.start(req).await.unwrap_err();
    assert!(t0.elapsed() < Duration::from_secs(3));
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(
        err.message().contains("berth-test/not-here:1.0"),
        "{}",
        err.message()
    );
    assert!(err.message().contains("not present"), "{}", err.message());
    assert!(d.containers().is_empty());
}

#[tokio::test]
async fn bad_input_is_invalid_argument_naming_the_field_and_creates_nothing() {
    let d = Daemon::start();
    let mut c = d.client().await;
    let before = docker(&["ps", "-aq"]).lines().count();
    let user = unique("hal");
    type Mutation = Box<dyn Fn(&mut pb::StartRequest)>;
    let cases: Vec<(&str, Mutation)> = vec![
        ("key.user", Box::new(|r| r.key = key("", ""))),
        ("key.user", Box::new(|r| r.key = key(&"u".repeat(300), ""))),
        ("key.server_name", Box::new(|r| r.key = key("ok", "a\0b"))),
        ("spawn_id", Box::new(|r| r.spawn_id.clear())),
        ("image", Box::new(|r| r.image = "Not/Valid Image".into())),
        ("image", Box::new(|r| r.image.clear())),
        (
            "resources.mem_limit_bytes",
            Box::new(|r| {
                r.resources = Some(pb::Resources {
                    mem_limit_bytes: -1,
                    ..Default::default()
                })
            }),
        ),
        (
            "resources.mem_limit_bytes",
            Box::new(|r| {
                r.resources = Some(pb::Resources {
                    mem_limit_bytes: i64::MAX,
                    ..Default::default()
                })
            }),
        ),
        (
            "resources.cpu_limit",
            Box::new(|r| {
                r.resources = Some(pb::Resources {
                    cpu_limit: -0.5,
                    ..Default::default()
                })
            }),
        ),
        (
            "resources.cpu_limit",
            Box::new(|r| {
                r.resources = Some(pb::Resources {
                    cpu_limit: 1e12,
                    ..Default::default()
                })
            }),
        ),
        (
            "env[A=B]",
            Box::new(|r| {
                r.env.insert("A=B".into(), "x".into());
            }),
        ),
        (
            "env",
            Box::new(|r| {
                r.env.insert(String::new(), "x".into());
            }),
        ),
        ("port", Box::new(|r| r.port = 70000)),
        (
            "volumes[0].source",
            Box::new(|r| {
                r.volumes.push(pb::Volume {
                    source: "/srv/../etc".into(),
                    target: "/x".into(),
                    read_only: false,
                    ..Default::default()
                });
            }),
        ),
        (
            "labels[berth.node]",
            Box::new(|r| {
                r.labels.insert("berth.node".into(), "evil".into());
            }),
        ),
        ("ready_path", Box::new(|r| r.ready_path = "no-slash".into())),
    ];
    for (field, mutate) in cases {
        let mut req = tiny_start(&user, "s");
        mutate(&mut req);
        let err = c.start(req).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{field}: {err:?}");
        assert!(
            err.message().starts_with(field),
            "expected {field}: {}",
            err.message()
        );
    }
    let err = c
        .poll(pb::PollRequest { key: key("", "") })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = c
        .stop(pb::StopRequest {
            key: None,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    assert!(d.containers().is_empty());
    // Other suites may run in parallel, so count only what could be ours: nothing new at all
    // carrying this daemon's node label, and no container under the key's name.
    let name = format!("berth-{}", user.replace('-', "-2d"));
    assert!(docker(&["ps", "-aq", "--filter", &format!("name=^{name}$")]).is_empty());
    let after = docker(&["ps", "-aq"]).lines().count();
    assert!(
        after <= before + 20,
        "no runaway creation: {before} -> {after}"
    );
}

#[tokio::test]
async fn memory_and_cpu_limits_are_what_docker_enforces() {
    let d = Daemon::start();
    let mut c = d.client().await;
    let user = unique("ida");
    let mut req = tiny_start(&user, "s");
    req.resources = Some(pb::Resources {
        mem_limit_bytes: 96 * 1024 * 1024,
        mem_guarantee_bytes: 32 * 1024 * 1024,
        cpu_limit: 0.5,
        cpu_guarantee: 0.25,
        ..Default::default()
    });
    let r = c.start(req).await.unwrap().into_inner();
    let got = docker(&[
        "inspect",
        "--format",
        "{{.HostConfig.Memory}} {{.HostConfig.MemoryReservation}} {{.HostConfig.NanoCpus}} {{.HostConfig.CpuShares}}",
        &r.container_id,
    ]);
    assert_eq!(
        got,
        format!("{} {} 500000000 256", 96 * 1024 * 1024, 32 * 1024 * 1024)
    );
}

#[tokio::test]
async fn progress_of_a_successful_spawn_ends_ready_with_the_url() {
    let d = Daemon::start();
    let mut c = d.client().await;
    let user = unique("jon");
    // Subscribe before the Start arrives, as the hub may.
    let mut progress = c
        .progress(pb::ProgressRequest {
            key: key(&user, ""),
            spawn_id: "p1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let r = c.start(tiny_start(&user, "p1")).await.unwrap().into_inner();
    let mut events = Vec::new();
    while let Some(e) = progress.next().await {
        events.push(e.unwrap());
    }
    use pb::progress_event::Phase;
    let phases: Vec<_> = events
        .iter()
        .map(|e| Phase::try_from(e.phase).unwrap())
        .collect();
    assert_eq!(phases.first(), Some(&Phase::Queued));
    assert!(
        phases.contains(&Phase::Creating) && phases.contains(&Phase::WaitingForHttp),
        "{phases:?}"
    );
    let last = events.last().unwrap();
    assert!(last.ready && !last.failed);
    assert_eq!(last.url, r.url);
    assert_eq!(last.progress, 100);
    assert!(events.windows(2).all(|w| w[0].progress <= w[1].progress));

    // A late subscriber (no spawn id: the newest spawn) replays the same events.
    let replay: Vec<_> = c
        .progress(pb::ProgressRequest {
            key: key(&user, ""),
            spawn_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .map(|e| e.unwrap().phase)
        .collect()
        .await;
    assert_eq!(replay.len(), events.len());
}

#[tokio::test]
async fn logs_stream_the_container_output() {
    let d = Daemon::start();
    let mut c = d.client().await;
    let user = unique("kim");
    let mut req = tiny_start(&user, "s");
    req.cmd = vec![
        "sh".into(),
        "-c".into(),
        "for i in 1 2 3; do echo line-$i; done; echo oops >&2; exec httpd -f -p 8888 -h /www"
            .into(),
    ];
    c.start(req).await.unwrap();
    let lines: Vec<pb::LogLine> = c
        .logs(pb::LogsRequest {
            key: key(&user, ""),
            tail: 0,
            follow: false,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .map(|l| l.unwrap())
        .collect()
        .await;
    // Docker keeps order within a stream, not across stdout and stderr.
    let stdout: Vec<&str> = lines
        .iter()
        .filter(|l| l.stream == pb::log_line::Stream::Stdout as i32)
        .map(|l| l.line.as_str())
        .collect();
    assert!(
        stdout.starts_with(&["line-1", "line-2", "line-3"]),
        "{stdout:?}"
    );
    let oops = lines
        .iter()
        .find(|l| l.line == "oops")
        .expect("stderr line");
    assert_eq!(oops.stream, pb::log_line::Stream::Stderr as i32);

    let tail: Vec<_> = c
        .logs(pb::LogsRequest {
            key: key(&user, ""),
            tail: 1,
            follow: false,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .collect()
        .await;
    assert_eq!(tail.len(), 1);

    let err = c
        .logs(pb::LogsRequest {
            key: key(&unique("none"), ""),
            tail: 0,
            follow: false,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test]
async fn named_servers_and_named_volumes() {
    let d = Daemon::start();
    let mut c = d.client().await;
    let user = unique("Lee Ünï");
    let mut a = tiny_start(&user, "s");
    a.key = key(&user, "gpu box");
    a.volumes.push(pb::Volume {
        source: "berth-test-{user}_{server}".into(),
        target: "/home/data".into(),
        read_only: false,
        ..Default::default()
    });
    let ra = c.start(a).await.unwrap().into_inner();
    let rb = c.start(tiny_start(&user, "s")).await.unwrap().into_inner();
    assert_ne!(ra.container_id, rb.container_id);
    let list = c
        .list(pb::ListRequest { user: user.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.servers.len(), 2);
    let mounts = docker(&[
        "inspect",
        "--format",
        "{{range .Mounts}}{{.Name}}:{{.Destination}}{{end}}",
        &ra.container_id,
    ]);
    assert!(mounts.ends_with(":/home/data"), "{mounts}");
    assert!(
        mounts.starts_with("berth-test--4cee-20-c3-9cn-c3-af"),
        "{mounts}"
    );
    assert!(mounts.contains("_gpu-20box:"), "{mounts}");
    drop(d);
    let vol = mounts.split(':').next().unwrap().to_owned();
    docker(&["volume", "rm", "-f", &vol]);
}
