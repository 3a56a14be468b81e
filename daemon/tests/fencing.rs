//! Fencing against a real dockerd: a node whose hub stays silent past
//! `[fencing] stop_after_hub_lost_seconds` stops its servers (kept, EXITED reason Fenced); an
//! open Watch stream of the hub holds it off; a server started with never_fence is left
//! running; the Admin socket (an operator on the node) is not the hub. The node reports its
//! fence time, detection of a dead stream included.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use berth_proto::v1 as pb;
use berth_proto::v1::server_status::State;
use berth_proto::v1::spawner_client::SpawnerClient;
use common::*;

const FENCE: &str = "2";

fn running(id: &str) -> bool {
    docker(&["inspect", "-f", "{{.State.Running}}", id]) == "true"
}

/// Waits (without calling berthd: that would be the hub) until container `id` is stopped.
fn until_stopped(id: &str, limit: Duration) -> Option<Duration> {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if !running(id) {
            return Some(t0.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

#[tokio::test]
async fn a_silent_hub_gets_the_nodes_servers_stopped_and_fenced_an_open_watch_holds_it_off() {
    let d = Daemon::start_with(&["--fencing-stop-after-hub-lost-seconds", FENCE]);
    let c = d.client().await;
    let v = c
        .clone()
        .version(pb::VersionRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        v.fence_after_seconds,
        2 + 15,
        "the fence time, dead-stream detection included"
    );
    assert!(v.features.iter().any(|f| f == "fencing"));
    let cap = c
        .clone()
        .capacity(pb::CapacityRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cap.fence_after_seconds, 17);

    // The hub watches: no fencing however long it says nothing else.
    let (plain, never) = (unique("fence"), unique("never"));
    let a = c
        .clone()
        .start(tiny_start(&plain, "s"))
        .await
        .unwrap()
        .into_inner();
    let b = c
        .clone()
        .start(pb::StartRequest {
            never_fence: true,
            ..tiny_start(&never, "s")
        })
        .await
        .unwrap()
        .into_inner();
    let mut watch = c
        .clone()
        .watch(pb::WatchRequest {
            snapshot: false,
            capacity: false,
        })
        .await
        .unwrap()
        .into_inner();
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        running(&a.container_id),
        "fenced while the hub's Watch was open"
    );

    // The stream ends; an operator on the node keeps asking over the Admin socket: fenced.
    drop(watch);
    let socket = d.state_dir.join("admin.sock");
    let operator = tokio::spawn(async move {
        let mut ops = SpawnerClient::new(unix_channel(&socket).await);
        for _ in 0..40 {
            let _ = ops.list(pb::ListRequest::default()).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let took = until_stopped(&a.container_id, Duration::from_secs(20))
        .expect("the server was not fenced within 20 s of the hub going silent");
    eprintln!("fenced {took:?} after the watch ended (fence time {FENCE} s)");
    assert!(
        took >= Duration::from_millis(1500),
        "fenced before its time: {took:?}"
    );
    operator.await.unwrap();
    assert!(running(&b.container_id), "never_fence was fenced");

    // Kept, and read as fenced by the hub when it comes back.
    let p = poll(&c, &plain, "").await;
    assert_eq!(state(&p), State::Exited, "{p:?}");
    assert_eq!(p.reason, "Fenced", "{p:?}");
    assert!(p.message.contains("lost touch with the hub"), "{p:?}");
    assert!(d.log_text().contains("fencing: no contact with the hub"));

    // A new Start clears the mark.
    let again = c
        .clone()
        .start(tiny_start(&plain, "s2"))
        .await
        .unwrap()
        .into_inner();
    let p = poll(&c, &plain, "").await;
    assert_eq!(state(&p), State::Running);
    assert_eq!(p.reason, "");
    watch = c
        .clone()
        .watch(pb::WatchRequest::default())
        .await
        .unwrap()
        .into_inner();
    drop(watch);
    for u in [&plain, &never] {
        stop_remove(&c, u).await;
    }
    assert!(!again.container_id.is_empty());
}

#[tokio::test]
async fn a_servers_own_fence_time_applies_on_a_node_that_does_not_fence() {
    let d = Daemon::start();
    let c = d.client().await;
    let cap = c
        .clone()
        .capacity(pb::CapacityRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cap.fence_after_seconds, 0, "off by default");
    let (own, default) = (unique("own"), unique("dflt"));
    let a = c
        .clone()
        .start(pb::StartRequest {
            fence_after_seconds: 2,
            ..tiny_start(&own, "s")
        })
        .await
        .unwrap()
        .into_inner();
    let b = c
        .clone()
        .start(tiny_start(&default, "s"))
        .await
        .unwrap()
        .into_inner();
    until_stopped(&a.container_id, Duration::from_secs(20))
        .expect("a server asking to be fenced after 2 s was not");
    assert!(running(&b.container_id), "the node's default is off");
    let bad = c
        .clone()
        .start(pb::StartRequest {
            fence_after_seconds: 5,
            never_fence: true,
            ..tiny_start(&unique("bad"), "s")
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument, "{bad:?}");
    for u in [&own, &default] {
        stop_remove(&c, u).await;
    }
}
