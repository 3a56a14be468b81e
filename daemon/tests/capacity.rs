//! Node capacity, admission control, drain and the spawn queue, against a real dockerd.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use berth_proto::v1 as pb;
use berth_proto::v1::server_status::State;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tonic::Code;

const MIB: i64 = 1024 * 1024;

fn meminfo(field: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap();
    let line = text.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}

fn nproc() -> u32 {
    String::from_utf8(std::process::Command::new("nproc").output().unwrap().stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn within_5_percent(a: u64, b: u64) -> bool {
    u128::from(a.abs_diff(b)) * 20 <= u128::from(b)
}

fn config_file(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(unique("berth-cap"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

async fn capacity(
    c: &mut berth_proto::v1::spawner_client::SpawnerClient<tonic::transport::Channel>,
) -> pb::NodeCapacity {
    c.capacity(pb::CapacityRequest {})
        .await
        .unwrap()
        .into_inner()
}

fn condition<'a>(cap: &'a pb::NodeCapacity, kind: &str) -> &'a pb::Condition {
    cap.conditions.iter().find(|c| c.r#type == kind).unwrap()
}

#[tokio::test]
async fn capacity_agrees_with_the_host_and_committed_moves_by_the_guarantee() {
    let d = Daemon::start();
    let mut c = d.client().await;
    let cap = capacity(&mut c).await;
    assert_eq!(cap.node_id, d.node_id);
    assert_eq!(cap.cpus, nproc());
    assert!(
        within_5_percent(cap.memory_total_bytes, meminfo("MemTotal:")),
        "{cap:?}"
    );
    assert!(
        within_5_percent(cap.memory_available_bytes, meminfo("MemAvailable:")),
        "{cap:?}"
    );
    let alloc = cap.allocatable.unwrap();
    assert_eq!(
        alloc.memory_bytes, cap.memory_total_bytes,
        "no reservation configured"
    );
    assert_eq!(alloc.cpu, f64::from(cap.cpus));
    for kind in [
        "Ready",
        "DockerDown",
        "MemoryPressure",
        "DiskPressure",
        "Draining",
    ] {
        assert!(
            cap.conditions.iter().any(|k| k.r#type == kind),
            "{kind} missing"
        );
    }
    assert_eq!(condition(&cap, "Ready").status, "True");
    assert_eq!(condition(&cap, "DockerDown").status, "False");
    assert_eq!(condition(&cap, "Draining").status, "False");
    assert!(cap.images.iter().any(|i| i == TINY), "{:?}", cap.images);
    let base = cap.committed.unwrap();
    let base_running = cap.running_servers;

    let user = unique("cap");
    let mut req = tiny_start(&user, "s");
    req.resources = Some(pb::Resources {
        mem_limit_bytes: 256 * MIB,
        mem_guarantee_bytes: 64 * MIB,
        cpu_limit: 1.0,
        cpu_guarantee: 0.25,
        ..Default::default()
    });
    c.start(req).await.unwrap();
    let after = capacity(&mut c).await;
    let committed = after.committed.unwrap();
    assert_eq!(committed.memory_bytes - base.memory_bytes, 64 * 1024 * 1024);
    assert!(
        (committed.cpu - base.cpu - 0.25).abs() < 1e-9,
        "{committed:?}"
    );
    assert_eq!(after.running_servers, base_running + 1);

    // Without a guarantee the limit counts.
    let limited = unique("lim");
    let mut req = tiny_start(&limited, "s");
    req.resources = Some(pb::Resources {
        mem_limit_bytes: 32 * MIB,
        cpu_limit: 0.5,
        ..Default::default()
    });
    c.start(req).await.unwrap();
    let both = capacity(&mut c).await.committed.unwrap();
    assert_eq!(both.memory_bytes - committed.memory_bytes, 32 * 1024 * 1024);
    assert!((both.cpu - committed.cpu - 0.5).abs() < 1e-9);

    for u in [&user, &limited] {
        stop_remove(&c, u).await;
    }
    let end = capacity(&mut c).await;
    assert_eq!(end.committed.unwrap().memory_bytes, base.memory_bytes);
    assert_eq!(end.running_servers, base_running);
}

#[tokio::test]
async fn admission_refuses_what_does_not_fit_and_drain_refuses_everything_new() {
    let cfg = config_file(
        "cap.toml",
        "[capacity]\nmax_servers = 2\nreserved_cpu = 0.5\n",
    );
    let sock = std::env::temp_dir().join(format!("{}.sock", unique("adm")));
    let d = Daemon::start_with(&[
        "--config",
        cfg.to_str().unwrap(),
        "--admin-socket",
        sock.to_str().unwrap(),
    ]);
    let mut c = d.client().await;
    let cap = capacity(&mut c).await;
    assert_eq!(cap.max_servers, 2);
    assert_eq!(cap.allocatable.unwrap().cpu, f64::from(nproc()) - 0.5);

    // Memory beyond allocatable.
    let mut big = tiny_start(&unique("big"), "s");
    let too_much = i64::try_from(cap.allocatable.unwrap().memory_bytes).unwrap() + 1024 * MIB;
    big.resources = Some(pb::Resources {
        mem_limit_bytes: too_much,
        mem_guarantee_bytes: too_much,
        ..Default::default()
    });
    let err = c.start(big).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("memory"), "{}", err.message());
    assert!(
        err.message().contains(&too_much.to_string()),
        "the numbers: {}",
        err.message()
    );
    // CPU beyond allocatable.
    let mut hungry = tiny_start(&unique("cpu"), "s");
    hungry.resources = Some(pb::Resources {
        cpu_limit: 64.0,
        cpu_guarantee: 64.0,
        ..Default::default()
    });
    let err = c.start(hungry).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(err.message().contains("cpu"), "{}", err.message());
    assert!(d.containers().is_empty(), "nothing created");

    // max_servers.
    let (a, b) = (unique("a"), unique("b"));
    c.start(tiny_start(&a, "s")).await.unwrap();
    c.start(tiny_start(&b, "s")).await.unwrap();
    let err = c
        .start(tiny_start(&unique("third"), "s"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(err.message().contains("servers"), "{}", err.message());
    assert_eq!(d.containers().len(), 2);
    // A retry of a running spawn is not a new server.
    c.start(tiny_start(&a, "s")).await.unwrap();

    // Drain through the Admin socket (mode 0660).
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777,
        0o660
    );
    let mut adm = admin(&sock).await;
    adm.drain(pb::DrainRequest {
        reason: "kernel update".into(),
    })
    .await
    .unwrap();
    stop_remove(&c, &b).await;
    let err = c.start(tiny_start(&unique("new"), "s")).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    let info = tonic_types::StatusExt::get_details_error_info(&err).expect("a reason");
    assert_eq!(info.reason, "NODE_DRAINING", "{}", err.message());
    let cap = capacity(&mut c).await;
    assert!(cap.draining);
    let drain = condition(&cap, "Draining");
    assert_eq!(
        (drain.status.as_str(), drain.message.as_str()),
        ("True", "kernel update")
    );
    let p = common::poll(&c, &a, "").await;
    assert_eq!(state(&p), State::Running, "running servers keep running");

    adm.undrain(pb::DrainRequest::default()).await.unwrap();
    assert!(!capacity(&mut c).await.draining);
    c.start(tiny_start(&unique("back"), "s")).await.unwrap();
    let _ = std::fs::remove_file(&sock);
}

/// The next CAPACITY event on `watch` that satisfies `want` (other events passed over).
async fn pushed_until(
    watch: &mut tonic::Streaming<pb::WatchEvent>,
    want: impl Fn(&pb::NodeCapacity) -> bool,
) -> pb::NodeCapacity {
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(60), watch.message())
            .await
            .expect("a Watch event within a minute")
            .unwrap()
            .expect("the stream goes on");
        if ev.kind == pb::watch_event::Kind::Capacity as i32 {
            let cap = ev.capacity.unwrap();
            if want(&cap) {
                return cap;
            }
        }
    }
}

#[tokio::test]
async fn capacity_is_pushed_on_watch_as_servers_start_and_the_node_drains() {
    let sock = std::env::temp_dir().join(format!("{}.sock", unique("capw")));
    let d = Daemon::start_with(&["--admin-socket", sock.to_str().unwrap()]);
    let mut c = d.client().await;
    let mut watch = c
        .watch(pb::WatchRequest {
            snapshot: true,
            capacity: true,
        })
        .await
        .unwrap()
        .into_inner();
    let first = pushed_until(&mut watch, |_| true).await;
    let asked = capacity(&mut c).await;
    assert_eq!(first.node_id, d.node_id);
    assert_eq!(first.running_servers, asked.running_servers);
    assert_eq!(first.committed, asked.committed);

    // A server with a memory guarantee starts: the push shows it and what it holds.
    let user = unique("pushed");
    let mut req = tiny_start(&user, "s");
    req.resources = Some(pb::Resources {
        mem_limit_bytes: 64 * MIB,
        mem_guarantee_bytes: 64 * MIB,
        ..Default::default()
    });
    c.start(req).await.unwrap();
    let running = first.running_servers + 1;
    let cap = pushed_until(&mut watch, |k| k.running_servers == running).await;
    let before = first.committed.unwrap().memory_bytes;
    assert_eq!(cap.committed.unwrap().memory_bytes, before + (64 << 20));

    // A drain shows, with its reason.
    let mut adm = admin(&sock).await;
    adm.drain(pb::DrainRequest {
        reason: "pushed drain".into(),
    })
    .await
    .unwrap();
    let cap = pushed_until(&mut watch, |k| k.draining).await;
    assert_eq!(condition(&cap, "Draining").message, "pushed drain");
    adm.undrain(pb::DrainRequest::default()).await.unwrap();
    pushed_until(&mut watch, |k| !k.draining).await;

    // The stop shows, and the last push is what Capacity answers (images aside: other tests
    // share this Docker engine).
    stop_remove(&c, &user).await;
    let cap = pushed_until(&mut watch, |k| k.running_servers == running - 1).await;
    assert_eq!(cap.committed.unwrap().memory_bytes, before);
    let asked = capacity(&mut c).await;
    assert_eq!(
        (cap.running_servers, cap.committed, cap.draining),
        (asked.running_servers, asked.committed, asked.draining)
    );
    let _ = std::fs::remove_file(&sock);
}

/// A proxy in front of the Docker socket that counts container creates in flight, and can
/// hold each create back to make the queue observable.
struct DockerProxy {
    socket: PathBuf,
    max_inflight: Arc<AtomicUsize>,
    creates: Arc<AtomicUsize>,
}

impl DockerProxy {
    async fn start(hold_create: Duration) -> Self {
        let socket = std::env::temp_dir().join(format!("{}.sock", unique("dproxy")));
        let listener = UnixListener::bind(&socket).unwrap();
        let inflight = Arc::new(AtomicUsize::new(0));
        let max_inflight = Arc::new(AtomicUsize::new(0));
        let creates = Arc::new(AtomicUsize::new(0));
        let (i, m, n) = (inflight.clone(), max_inflight.clone(), creates.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let upstream = UnixStream::connect("/var/run/docker.sock").await.unwrap();
                tokio::spawn(relay(
                    client,
                    upstream,
                    i.clone(),
                    m.clone(),
                    n.clone(),
                    hold_create,
                ));
            }
        });
        DockerProxy {
            socket,
            max_inflight,
            creates,
        }
    }
}

async fn relay(
    client: UnixStream,
    upstream: UnixStream,
    inflight: Arc<AtomicUsize>,
    max: Arc<AtomicUsize>,
    creates: Arc<AtomicUsize>,
    hold: Duration,
) {
    let (mut cr, mut cw) = client.into_split();
    let (mut ur, mut uw) = upstream.into_split();
    // Creates sent on this connection whose response has not come back yet.
    let open = Arc::new(AtomicUsize::new(0));
    let (open_up, inflight_up) = (open.clone(), inflight.clone());
    let up = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match cr.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let head = String::from_utf8_lossy(&buf[..n.min(200)]).into_owned();
            if head.starts_with("POST ")
                && head
                    .lines()
                    .next()
                    .is_some_and(|l| l.contains("/containers/create"))
            {
                let now = inflight_up.fetch_add(1, Ordering::SeqCst) + 1;
                max.fetch_max(now, Ordering::SeqCst);
                creates.fetch_add(1, Ordering::SeqCst);
                open_up.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(hold).await;
            }
            if uw.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    let down = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match ur.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if buf[..n].starts_with(b"HTTP/1.1 ") && open.load(Ordering::SeqCst) > 0 {
                open.fetch_sub(1, Ordering::SeqCst);
                inflight.fetch_sub(1, Ordering::SeqCst);
            }
            if cw.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    tokio::join!(up, down);
}

async fn start_30(d: &Daemon) -> Vec<(Result<pb::StartResponse, tonic::Status>, Duration)> {
    let c = d.client().await;
    let calls = (0..30).map(|i| {
        let mut c = c.clone();
        let req = tiny_start(&unique(&format!("q{i}")), "s");
        tokio::spawn(async move {
            let t0 = Instant::now();
            let r = c.start(req).await.map(|r| r.into_inner());
            (r, t0.elapsed())
        })
    });
    futures::future::join_all(calls)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect()
}

// The proxy runs on the test's runtime while the harness blocks waiting for berthd: two workers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_starts_never_put_more_than_four_creates_in_flight() {
    let proxy = DockerProxy::start(Duration::from_millis(50)).await;
    let cfg = config_file(
        "q.toml",
        "[capacity]\nmax_concurrent_spawns = 4\nspawn_queue_limit = 32\n",
    );
    let host = format!("unix://{}", proxy.socket.display());
    let d = Daemon::start_with(&["--config", cfg.to_str().unwrap(), "--docker-host", &host]);
    let results = start_30(&d).await;
    for (r, _) in &results {
        assert!(r.is_ok(), "{r:?}");
    }
    let max = proxy.max_inflight.load(Ordering::SeqCst);
    eprintln!(
        "creates {} max in flight {max}",
        proxy.creates.load(Ordering::SeqCst)
    );
    assert_eq!(proxy.creates.load(Ordering::SeqCst), 30);
    assert!(max <= 4, "{max} creates in flight");
    assert!(max >= 2, "the limit, not a lack of load, kept it at {max}");
    assert_eq!(d.containers().len(), 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spawn_queue_refuses_at_once() {
    // Each create is held 400 ms, so 4 run, 10 wait, and the other 16 find the queue full.
    let proxy = DockerProxy::start(Duration::from_millis(400)).await;
    let cfg = config_file(
        "q.toml",
        "[capacity]\nmax_concurrent_spawns = 4\nspawn_queue_limit = 10\n",
    );
    let host = format!("unix://{}", proxy.socket.display());
    let d = Daemon::start_with(&["--config", cfg.to_str().unwrap(), "--docker-host", &host]);
    let results = start_30(&d).await;
    let refused: Vec<_> = results.iter().filter(|(r, _)| r.is_err()).collect();
    let ok = results.len() - refused.len();
    eprintln!("{ok} started, {} refused", refused.len());
    assert_eq!(ok, 14, "4 slots + 10 queued");
    for (r, took) in &refused {
        let e = r.as_ref().unwrap_err();
        assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
        assert!(e.message().contains("queue"), "{}", e.message());
        assert!(
            *took < Duration::from_millis(400),
            "refused at once, not after a wait: {took:?}"
        );
    }
    assert!(proxy.max_inflight.load(Ordering::SeqCst) <= 4);
    assert_eq!(d.containers().len(), 14);
}
