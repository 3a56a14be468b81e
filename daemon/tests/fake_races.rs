//! Races over the fake engine, through the real Spawner service: admission against the
//! server and memory limits, the compare-and-swap of the hub's state blob, and inspects that
//! answer after the container changed. No Docker engine is used.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::time::Duration;

use berth_proto::v1 as pb;
use berth_proto::v1::server_status::State;
use common::fake_node::{FakeNode, SERVE, engine, start_req, started, state_dir};
use common::{Stop, key, poll, state, stop_as};
use futures::StreamExt;
use tonic::Code;

const STARTS: usize = 8;
/// Generous for in-memory work; only a hang ever reaches it.
const LIMIT: Duration = Duration::from_secs(5);
const FIT: usize = 3;

/// `STARTS` Starts of different users at once; returns how many succeeded and the refusals.
async fn start_all(
    node: &FakeNode,
    tune: fn(&mut pb::StartRequest),
) -> (usize, Vec<tonic::Status>) {
    let calls = (0..STARTS).map(|i| {
        let mut c = node.client();
        let mut req = start_req(&format!("u{i}"), "s", SERVE);
        tune(&mut req);
        tokio::spawn(async move { c.start(req).await })
    });
    let mut ok = 0;
    let mut refused = Vec::new();
    for r in futures::future::join_all(calls).await {
        match r.unwrap() {
            Ok(_) => ok += 1,
            Err(e) => refused.push(e),
        }
    }
    (ok, refused)
}

async fn node_with(tune: impl FnOnce(&mut berthd::runtime::RuntimeConfig)) -> FakeNode {
    FakeNode::start_on(engine(), state_dir(), |cfg| {
        // Room for every spawn at once: only the limit under test may refuse.
        cfg.max_concurrent_spawns = 64;
        cfg.spawn_queue_limit = 64;
        tune(cfg);
    })
    .await
}

fn assert_refusals(refused: &[tonic::Status], resource: &str) {
    for e in refused {
        assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
        assert!(e.message().contains(resource), "{}", e.message());
    }
}

#[tokio::test]
async fn concurrent_starts_against_max_servers_admit_exactly_the_limit() {
    let node = node_with(|cfg| cfg.limits.max_servers = u32::try_from(FIT).unwrap()).await;
    let (ok, refused) = start_all(&node, |_| {}).await;
    assert_eq!((ok, refused.len()), (FIT, STARTS - FIT), "{refused:?}");
    assert_refusals(&refused, "servers");
    assert_eq!(
        node.fake.calls("create"),
        FIT as u64,
        "a refused start creates nothing"
    );

    // A stopped server frees its place.
    let running = node.rt.view().running_containers();
    let user = running[0].0.user().to_owned();
    stop_as(&node.client, &user, "", Stop::Now).await.unwrap();
    node.client()
        .start(start_req("late", "s", SERVE))
        .await
        .unwrap();
}

#[tokio::test]
async fn concurrent_starts_against_memory_admit_exactly_what_fits() {
    const GUARANTEE: u64 = 64 << 20;
    let total = berthd::capacity::read_host().memory_total;
    assert!(
        total > 4 * GUARANTEE,
        "the host reports {total} bytes of memory"
    );
    let node = node_with(|cfg| {
        // Allocatable is three and a half guarantees.
        cfg.limits.reserved.memory = total - (FIT as u64 * GUARANTEE + GUARANTEE / 2);
    })
    .await;
    let (ok, refused) = start_all(&node, |req| {
        req.resources = Some(pb::Resources {
            mem_guarantee_bytes: i64::try_from(GUARANTEE).unwrap(),
            ..Default::default()
        });
    })
    .await;
    assert_eq!((ok, refused.len()), (FIT, STARTS - FIT), "{refused:?}");
    assert_refusals(&refused, "memory");
    assert_eq!(node.fake.calls("create"), FIT as u64);
}

#[tokio::test]
async fn put_state_is_a_compare_and_swap() {
    let node = FakeNode::start().await;
    let put = |data: &str, expected: u64| {
        let mut c = node.client();
        let req = pb::PutStateRequest {
            key: key("ann", ""),
            blob: data.as_bytes().to_vec(),
            expected_version: expected,
        };
        async move { c.put_state(req).await }
    };
    let first = put("v1", 0).await.unwrap().into_inner();
    assert_eq!(first.version, 1);
    let stale = put("stale", 0).await.unwrap_err();
    assert_eq!(stale.code(), Code::Aborted, "{stale:?}");

    let racers = (0..10).map(|i| tokio::spawn(put(&format!("racer {i}"), 1)));
    let results: Vec<_> = futures::future::join_all(racers)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let winners: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    for r in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(r.code(), Code::Aborted, "{r:?}");
    }
    let stored = node
        .client()
        .get_state(pb::GetStateRequest {
            key: key("ann", ""),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (stored.version, &stored.blob),
        (2, &winners[0].get_ref().blob)
    );
}

#[tokio::test]
async fn a_reconcile_racing_a_removing_stop_does_not_resurrect_the_server() {
    let node = FakeNode::start().await;
    let ann = started(&node, "ann", "s", SERVE).await;
    node.fake
        .delay_inspects(Some(&ann.container_id), Duration::from_millis(300), 1);
    let reconcile = tokio::spawn({
        let rt = node.rt.clone();
        async move { rt.reconcile().await }
    });
    node.fake.wait_delayed_inspects(1).await;
    assert_eq!(state(&remove_now(&node, "ann").await), State::Absent);
    assert!(node.fake.container(&ann.container_id).is_none());
    reconcile.await.unwrap().unwrap();
    let p = poll(&node.client, "ann", "").await;
    assert_eq!(state(&p), State::Absent, "{p:?}");
}

/// Stops and removes `user`'s server at once.
async fn remove_now(node: &FakeNode, user: &str) -> pb::ServerStatus {
    common::stop_remove(&node.client, user).await
}

#[tokio::test]
async fn a_slow_event_inspect_does_not_report_a_removed_server_running_again() {
    let node = FakeNode::start().await;
    let ann = started(&node, "ann", "s", SERVE).await;
    let mut watch = node
        .client()
        .watch(pb::WatchRequest {
            snapshot: false,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    node.fake
        .delay_inspects(Some(&ann.container_id), Duration::from_millis(300), 1);
    node.fake.set_health(&ann.container_id, "healthy");
    node.fake.wait_delayed_inspects(1).await;
    assert_eq!(state(&remove_now(&node, "ann").await), State::Absent);
    // The monitor handles events in order: once it reports bob's container started, it has
    // handled every event of ann's before it (the health change, the kill, the destroy).
    node.client()
        .start(start_req("bob", "s", SERVE))
        .await
        .unwrap();
    let mut seen = Vec::new();
    loop {
        let ev = tokio::time::timeout(LIMIT, watch.next())
            .await
            .expect("the monitor reports bob's start")
            .unwrap()
            .unwrap();
        let kind = pb::watch_event::Kind::try_from(ev.kind).unwrap();
        let status = ev.status.unwrap();
        let user = status.key.as_ref().unwrap().user.clone();
        if user == "bob" && kind == pb::watch_event::Kind::Started {
            break;
        }
        if user == "ann" {
            seen.push((kind, state(&status)));
        }
    }
    assert!(
        seen.iter().all(|(_, s)| *s != State::Running),
        "a removed server showed as running again: {seen:?}"
    );
    assert!(
        seen.contains(&(pb::watch_event::Kind::Removed, State::Absent)),
        "{seen:?}"
    );
}
