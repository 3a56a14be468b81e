//! Durable state and restart safety, against a real dockerd and the real berthd binary.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use berth_proto::v1 as pb;
use berth_proto::v1::server_status::State;
use berthd::state::FileStore;
use common::*;
use futures::StreamExt;
use tonic::Code;

/// StartedAt and RestartCount of a container, per Docker.
fn docker_identity(id: &str) -> String {
    docker(&[
        "inspect",
        "--format",
        "{{.State.StartedAt}} {{.RestartCount}} {{.State.Pid}}",
        id,
    ])
}

async fn start_many(d: &Daemon, users: &[String]) -> Vec<pb::StartResponse> {
    let c = d.client().await;
    let calls = users.iter().map(|u| {
        let mut c = c.clone();
        let req = tiny_start(u, "s");
        tokio::spawn(async move { c.start(req).await.map(|r| r.into_inner()) })
    });
    futures::future::join_all(calls)
        .await
        .into_iter()
        .map(|r| r.unwrap().unwrap())
        .collect()
}

/// Waits until berthd (just restarted) reports every user RUNNING in both List and Poll.
async fn all_running_within(d: &Daemon, users: &[String], limit: Duration) -> Duration {
    let t0 = Instant::now();
    let mut c = d.client().await;
    loop {
        let list = c
            .list(pb::ListRequest::default())
            .await
            .unwrap()
            .into_inner();
        let running = list
            .servers
            .iter()
            .filter(|s| state(s) == State::Running)
            .count();
        let mut polled = 0;
        if running == users.len() {
            for u in users {
                let p = common::poll(&c, u, "").await;
                if state(&p) == State::Running {
                    polled += 1;
                }
            }
        }
        if polled == users.len() {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < limit,
            "only {running} of {} running after {limit:?}",
            users.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn sigkill_ten_times_never_costs_a_server() {
    let mut d = Daemon::start();
    let users: Vec<String> = (0..20).map(|i| unique(&format!("k{i}"))).collect();
    let started = start_many(&d, &users).await;
    let before: HashMap<String, String> = started
        .iter()
        .map(|s| (s.container_id.clone(), docker_identity(&s.container_id)))
        .collect();
    for round in 0..10 {
        d.kill9();
        let t0 = Instant::now();
        d.respawn();
        let took = all_running_within(&d, &users, Duration::from_secs(2)).await;
        eprintln!(
            "round {round}: all 20 RUNNING {took:?} after respawn ({:?} incl. start)",
            t0.elapsed()
        );
    }
    let ids = d.containers();
    assert_eq!(ids.len(), 20, "no container added or lost");
    for (id, identity) in &before {
        assert_eq!(
            &docker_identity(id),
            identity,
            "container {id} was restarted or recreated"
        );
    }
}

/// A tiny deterministic generator: the test must not depend on a random crate.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

#[tokio::test]
async fn crashes_during_churn_leave_one_container_and_one_sound_record_per_key() {
    let mut d = Daemon::start();
    let users: Vec<String> = (0..4).map(|i| unique(&format!("churn{i}"))).collect();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    eprintln!("churn seed {seed}");
    let mut rng = Lcg(u64::try_from(seed % u128::from(u64::MAX)).unwrap());
    for round in 0..6u32 {
        let c = d.client().await;
        let mut tasks = Vec::new();
        for (i, u) in users.iter().enumerate() {
            let mut c = c.clone();
            let u = u.clone();
            let ops = 1 + rng.next(4);
            let remove = rng.next(2) == 0;
            tasks.push(tokio::spawn(async move {
                for op in 0..ops {
                    let _ = c.start(tiny_start(&u, &format!("r{round}-{i}-{op}"))).await;
                    let how = if remove { Stop::Remove } else { Stop::Now };
                    let _ = common::stop_as(&c, &u, "", how).await;
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(50 + rng.next(400))).await;
        d.kill9();
        for t in tasks {
            let _ = t.await;
        }
        d.respawn();
    }
    // Let the last daemon settle, then check the invariants against Docker and the disk.
    let mut c = d.client().await;
    c.version(pb::VersionRequest {}).await.unwrap();
    let store = FileStore::open(&d.state_dir).unwrap();
    let (records, problems) = store.load_all().unwrap();
    assert!(problems.is_empty(), "torn records: {problems:?}");
    let by_key: HashMap<(String, String), String> = records
        .iter()
        .map(|r| ((r.user.clone(), r.server.clone()), r.container_id.clone()))
        .collect();
    for u in &users {
        let name = berthd::key::ServerKey::new(u, "").unwrap().container_name();
        // The ids of the containers named `name`, as Docker lists them now.
        let named = || {
            docker(&[
                "ps",
                "-aq",
                "--no-trunc",
                "--filter",
                &format!("name=^{name}$"),
            ])
        };
        let ids = named();
        let ids: Vec<&str> = ids.lines().collect();
        assert!(ids.len() <= 1, "two containers for {u}: {ids:?}");
        if let Some(id) = ids.first() {
            let rec = by_key.get(&(u.clone(), String::new()));
            assert!(rec.is_some(), "container {id} of {u} has no record");
        }
        // And berthd's view agrees with Docker, once the events of a create that dockerd
        // finished after the kill (and after the restart's relist) have come in.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let id = named().lines().next().map(str::to_owned);
            let p = common::poll(&c, u, "").await;
            let agrees = match &id {
                Some(id) => p.container_id == *id,
                None => matches!(state(&p), State::Absent | State::Exited),
            };
            if agrees {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{u}: Docker has {id:?}, berthd says {p:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[tokio::test]
async fn a_corrupt_or_deleted_record_is_rebuilt_from_labels_without_a_second_container() {
    let mut d = Daemon::start();
    let (u1, u2) = (unique("rec1"), unique("rec2"));
    let started = start_many(&d, &[u1.clone(), u2.clone()]).await;
    d.kill9();
    let store = FileStore::open(&d.state_dir).unwrap();
    let p1 = store.path(&berthd::key::ServerKey::new(&u1, "").unwrap());
    let mut bytes = std::fs::read(&p1).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(&p1, bytes).unwrap();
    std::fs::remove_file(store.path(&berthd::key::ServerKey::new(&u2, "").unwrap())).unwrap();

    d.respawn();
    let mut c = d.client().await;
    for (u, s) in [(&u1, &started[0]), (&u2, &started[1])] {
        let p = common::poll(&c, u, "").await;
        assert_eq!(state(&p), State::Running, "{u}");
        assert_eq!(p.container_id, s.container_id);
        assert_eq!(p.spawn_id, "s");
    }
    let log = d.log_text();
    assert!(log.contains("corrupt"), "corruption reported in the log");
    assert!(
        log.contains("rebuilding it from the container's labels"),
        "rebuild reported"
    );
    assert_eq!(d.containers().len(), 2, "no second container");
    let (records, problems) = store.load_all().unwrap();
    assert!(problems.is_empty());
    assert_eq!(records.len(), 2, "both records rebuilt");
    assert!(
        records
            .iter()
            .all(|r| !r.container_id.is_empty() && r.spawn_id == "s")
    );
    // A retried Start of the same spawn is still the same server.
    let again = c.start(tiny_start(&u1, "s")).await.unwrap().into_inner();
    assert_eq!(again.container_id, started[0].container_id);
}

#[tokio::test]
async fn watch_reports_an_outside_kill_within_two_seconds() {
    let d = Daemon::start();
    let mut c = d.client().await;
    let user = unique("watch");
    let mut watch = c
        .watch(pb::WatchRequest {
            snapshot: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.next().await.unwrap().unwrap();
    assert_eq!(
        first.kind,
        pb::watch_event::Kind::SnapshotEnd as i32,
        "empty node: snapshot is just its end"
    );
    let r = c.start(tiny_start(&user, "s")).await.unwrap().into_inner();

    // The ready event of our start comes first.
    loop {
        let ev = watch.next().await.unwrap().unwrap();
        if ev.kind == pb::watch_event::Kind::Ready as i32 {
            assert_eq!(ev.status.unwrap().url, r.url);
            break;
        }
    }
    let t0 = Instant::now();
    docker(&["kill", &r.container_id]);
    let exited = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            let ev = watch.next().await.unwrap().unwrap();
            if ev.kind == pb::watch_event::Kind::Exited as i32 {
                return ev;
            }
        }
    })
    .await
    .expect("EXITED within 2 s of the kill");
    eprintln!(
        "exit seen on Watch {:?} after docker kill returned",
        t0.elapsed()
    );
    let s = exited.status.unwrap();
    assert_eq!(s.exit_code, Some(137));
    assert_eq!(s.reason, "Killed");
    assert_eq!(s.node_id, d.node_id);
}

#[tokio::test]
async fn an_unwritable_state_dir_fails_start_cleanly_and_keeps_old_records() {
    let d = Daemon::start();
    let mut c = d.client().await;
    let (old, new) = (unique("old"), unique("new"));
    c.start(tiny_start(&old, "s")).await.unwrap();
    let servers = d.state_dir.join("servers");
    let before = std::fs::read_dir(&servers).unwrap().count();
    let chattr = std::process::Command::new("chattr")
        .arg("+i")
        .arg(&servers)
        .status()
        .unwrap();
    assert!(
        chattr.success(),
        "chattr +i must work on the test filesystem"
    );

    let err = c.start(tiny_start(&new, "s")).await.unwrap_err();
    let _ = std::process::Command::new("chattr")
        .arg("-i")
        .arg(&servers)
        .status();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        err.message().contains(servers.to_str().unwrap()),
        "names the path: {}",
        err.message()
    );
    let name = berthd::key::ServerKey::new(&new, "")
        .unwrap()
        .container_name();
    assert!(
        docker(&["ps", "-aq", "--filter", &format!("name=^{name}$")]).is_empty(),
        "no container created"
    );
    assert_eq!(d.containers().len(), 1);

    let (records, problems) = FileStore::open(&d.state_dir).unwrap().load_all().unwrap();
    assert!(problems.is_empty());
    assert_eq!(records.len(), before);
    assert_eq!(records[0].user, old);
    // berthd keeps serving.
    let p = common::poll(&c, &old, "").await;
    assert_eq!(state(&p), State::Running);
    c.start(tiny_start(&new, "s2")).await.unwrap();
}

#[tokio::test]
async fn state_blobs_compare_and_swap_and_secrets_stay_off_disk_and_out_of_logs() {
    let d = Daemon::start();
    let mut c = d.client().await;
    let user = unique("cas");
    let secret = format!("tok-{}-SECRET", unique("x"));
    let mut req = tiny_start(&user, "s");
    req.env
        .insert("JUPYTERHUB_API_TOKEN".into(), secret.clone());
    req.env.insert("JPY_API_TOKEN".into(), secret.clone());
    c.start(req).await.unwrap();

    let empty = c
        .get_state(pb::GetStateRequest {
            key: key(&user, ""),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(empty.version, 0);
    let v1 = c
        .put_state(pb::PutStateRequest {
            key: key(&user, ""),
            blob: b"{\"a\":1}".to_vec(),
            expected_version: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v1.version, 1);
    let stale = c
        .put_state(pb::PutStateRequest {
            key: key(&user, ""),
            blob: b"{\"a\":2}".to_vec(),
            expected_version: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::Aborted, "{stale:?}");
    let got = c
        .get_state(pb::GetStateRequest {
            key: key(&user, ""),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (got.blob.as_slice(), got.version),
        (b"{\"a\":1}".as_slice(), 1)
    );
    let v2 = c
        .put_state(pb::PutStateRequest {
            key: key(&user, ""),
            blob: b"{\"a\":3}".to_vec(),
            expected_version: 1,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v2.version, 2);
    let too_big = c
        .put_state(pb::PutStateRequest {
            key: key(&user, ""),
            blob: vec![b'x'; 100_000],
            expected_version: 2,
        })
        .await
        .unwrap_err();
    assert_eq!(too_big.code(), Code::InvalidArgument);

    // The blob survives a crash.
    let mut d = d;
    d.kill9();
    d.respawn();
    let mut c = d.client().await;
    let got = c
        .get_state(pb::GetStateRequest {
            key: key(&user, ""),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.version, 2);

    // A failing start quotes output, not env; make one to exercise the error paths too.
    let mut bad = tiny_start(&unique("bad"), "s");
    bad.env
        .insert("JUPYTERHUB_API_TOKEN".into(), secret.clone());
    bad.cmd = vec!["sh".into(), "-c".into(), "exit 9".into()];
    c.start(bad).await.unwrap_err();

    for entry in walk(&d.state_dir) {
        let bytes = std::fs::read(&entry).unwrap();
        assert!(
            !String::from_utf8_lossy(&bytes).contains(&secret),
            "secret in {}",
            entry.display()
        );
    }
    assert!(!d.log_text().contains(&secret), "secret in berthd's log");
    assert!(d.log_text().contains("DEBUG"), "the log ran at debug level");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        let ft = e.file_type().unwrap();
        if ft.is_dir() {
            out.extend(walk(&p))
        } else if ft.is_file() {
            out.push(p)
        }
    }
    out
}

#[tokio::test]
async fn delete_forever_removes_container_record_and_owned_volumes() {
    let d = Daemon::start();
    let mut c = d.client().await;
    let user = unique("del");
    let mut req = tiny_start(&user, "s");
    req.volumes.push(pb::Volume {
        source: "berth-test-home-{user}".into(),
        target: "/home/u".into(),
        read_only: false,
        ..Default::default()
    });
    req.volumes.push(pb::Volume {
        source: "berth-test-shared".into(),
        target: "/shared".into(),
        read_only: true,
        ..Default::default()
    });
    c.start(req).await.unwrap();
    c.put_state(pb::PutStateRequest {
        key: key(&user, ""),
        blob: b"x".to_vec(),
        expected_version: 0,
    })
    .await
    .unwrap();
    let vol = format!("berth-test-home-{}", berthd::key::escape(&user));
    assert_eq!(
        docker(&["volume", "ls", "-q", "--filter", &format!("name=^{vol}$")]),
        vol
    );

    let r = c
        .delete_forever(pb::DeleteForeverRequest {
            key: key(&user, ""),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.container_removed && r.record_removed);
    assert_eq!(r.volumes_removed, vec![vol.clone()]);
    assert!(d.containers().is_empty());
    assert!(docker(&["volume", "ls", "-q", "--filter", &format!("name=^{vol}$")]).is_empty());
    assert!(
        !docker(&["volume", "ls", "-q", "--filter", "name=^berth-test-shared$"]).is_empty(),
        "shared volume kept"
    );
    let st = c
        .get_state(pb::GetStateRequest {
            key: key(&user, ""),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(st.version, 0);
    let p = common::poll(&c, &user, "").await;
    assert_eq!(state(&p), State::Absent);
    let again = c
        .delete_forever(pb::DeleteForeverRequest {
            key: key(&user, ""),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!again.container_removed && !again.record_removed);
}
