//! Capacity pushed on Watch (`WatchRequest.capacity`), over the fake engine through the real
//! Spawner service: the first report right after SNAPSHOT_END, one after each change, bursts
//! coalesced, the last report equal to what Capacity answers, numbers in the event sequence,
//! nothing for subscribers who did not ask. No Docker engine is used.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::time::Duration;

use berth_proto::v1 as pb;
use berth_proto::v1::watch_event::Kind;
use common::eventually;
use common::fake_node::{FakeNode, SERVE, start_req, started};
use futures::StreamExt;
use futures::stream::BoxStream;

/// Generous for in-memory work; only a hang ever reaches it.
const LIMIT: Duration = Duration::from_secs(10);

type Events = BoxStream<'static, pb::WatchEvent>;

async fn watch(node: &FakeNode, snapshot: bool, capacity: bool) -> Events {
    node.client()
        .watch(pb::WatchRequest { snapshot, capacity })
        .await
        .unwrap()
        .into_inner()
        .map(Result::unwrap)
        .boxed()
}

async fn next(events: &mut Events) -> pb::WatchEvent {
    tokio::time::timeout(LIMIT, events.next())
        .await
        .expect("a Watch event")
        .expect("the stream goes on")
}

fn kind(ev: &pb::WatchEvent) -> Kind {
    Kind::try_from(ev.kind).unwrap()
}

/// What Capacity answers now, without the readings that move by themselves.
async fn capacity_now(node: &FakeNode) -> pb::NodeCapacity {
    let c = node
        .client()
        .capacity(pb::CapacityRequest {})
        .await
        .unwrap()
        .into_inner();
    berthd::api::convert::capacity_change_key(&c)
}

/// Events until a CAPACITY one satisfies `want`; the events passed over, that one last.
async fn until_capacity(
    events: &mut Events,
    want: impl Fn(&pb::NodeCapacity) -> bool,
) -> Vec<pb::WatchEvent> {
    let mut seen = Vec::new();
    loop {
        let ev = next(events).await;
        let done = kind(&ev) == Kind::Capacity && want(ev.capacity.as_ref().unwrap());
        seen.push(ev);
        if done {
            return seen;
        }
    }
}

fn numbers_increase(events: &[pb::WatchEvent]) {
    for w in events.windows(2) {
        assert!(
            w[0].sequence < w[1].sequence,
            "numbers go up: {} then {}",
            w[0].sequence,
            w[1].sequence
        );
    }
}

#[tokio::test]
async fn the_first_report_follows_the_snapshot_and_each_change_brings_one() {
    let node = FakeNode::start().await;
    started(&node, "ann", "s1", SERVE).await;
    let mut events = watch(&node, true, true).await;
    let mut all = vec![next(&mut events).await, next(&mut events).await];
    assert_eq!(kind(&all[0]), Kind::Snapshot);
    assert_eq!(kind(&all[1]), Kind::SnapshotEnd);
    let first = next(&mut events).await;
    assert_eq!(kind(&first), Kind::Capacity, "right after SNAPSHOT_END");
    let cap = first.capacity.clone().unwrap();
    assert_eq!(cap.node_id, "fake-node");
    assert!(first.status.is_none());
    assert_eq!(cap.running_servers, 1);
    assert_eq!(
        berthd::api::convert::capacity_change_key(&cap),
        capacity_now(&node).await
    );
    all.push(first);

    // A start shows.
    started(&node, "bob", "s1", SERVE).await;
    all.extend(until_capacity(&mut events, |c| c.running_servers == 2).await);
    // A stop with removal shows.
    common::stop_remove(&node.client(), "ann").await;
    all.extend(until_capacity(&mut events, |c| c.running_servers == 1).await);
    // A drain and its end show.
    node.rt.drain("maintenance").unwrap();
    let drained = until_capacity(&mut events, |c| c.draining).await;
    let cap = drained.last().unwrap().capacity.clone().unwrap();
    let cond = cap.conditions.iter().find(|c| c.r#type == "Draining");
    assert_eq!(cond.unwrap().status, "True");
    all.extend(drained);
    node.rt.undrain().unwrap();
    all.extend(until_capacity(&mut events, |c| !c.draining).await);
    numbers_increase(&all);
    assert_eq!(
        berthd::api::convert::capacity_change_key(all.last().unwrap().capacity.as_ref().unwrap()),
        capacity_now(&node).await,
        "the last report is what Capacity answers"
    );
}

#[tokio::test]
async fn docker_going_away_and_coming_back_is_pushed() {
    let node = FakeNode::start().await;
    let mut events = watch(&node, false, true).await;
    let first = next(&mut events).await;
    assert_eq!(kind(&first), Kind::Capacity, "first, without a snapshot");
    let ready = |c: &pb::NodeCapacity| {
        c.conditions
            .iter()
            .find(|k| k.r#type == "Ready")
            .map(|k| k.status.clone())
    };
    assert_eq!(ready(first.capacity.as_ref().unwrap()).unwrap(), "True");
    node.fake.go_away();
    until_capacity(&mut events, |c| ready(c).as_deref() == Some("False")).await;
    node.fake.come_back();
    until_capacity(&mut events, |c| ready(c).as_deref() == Some("True")).await;
}

#[tokio::test]
async fn a_burst_of_changes_gives_fewer_reports_and_the_last_one_is_current() {
    let node = FakeNode::start().await;
    let mut events = watch(&node, true, true).await;
    assert_eq!(kind(&next(&mut events).await), Kind::SnapshotEnd);
    assert_eq!(kind(&next(&mut events).await), Kind::Capacity);
    let n = 20;
    let starts = (0..n).map(|i| {
        let mut c = node.client();
        let req = start_req(&format!("u{i}"), "s1", SERVE);
        tokio::spawn(async move { c.start(req).await.unwrap() })
    });
    futures::future::join_all(starts).await;
    // Every start's READY, then events until the last report is what Capacity answers (a
    // report still due arrives; none is missing).
    let mut seen = Vec::new();
    while seen.iter().filter(|e| kind(e) == Kind::Ready).count() < n as usize {
        seen.push(next(&mut events).await);
    }
    loop {
        // The starts may all be READY before the first coalesced report is due.
        if let Some(last) = seen.iter().rev().find(|e| kind(e) == Kind::Capacity) {
            let last = berthd::api::convert::capacity_change_key(last.capacity.as_ref().unwrap());
            if last == capacity_now(&node).await {
                assert_eq!(last.running_servers, n);
                break;
            }
        }
        seen.push(next(&mut events).await);
    }
    let reports = seen.iter().filter(|e| kind(e) == Kind::Capacity).count();
    let statuses = seen.len() - reports;
    assert!(
        reports < statuses,
        "coalesced: {reports} reports for {statuses} status changes"
    );
    numbers_increase(&seen);
}

#[tokio::test]
async fn a_report_after_a_status_of_a_spawn_counts_that_spawn() {
    // What berthspawner relies on to stop counting its own placement: in the stream, a
    // CAPACITY event that comes after any status of a spawn reflects the spawn's admission.
    let node = FakeNode::start().await;
    let mut events = watch(&node, false, true).await;
    assert_eq!(kind(&next(&mut events).await), Kind::Capacity);
    for i in 0..5 {
        started(&node, &format!("p{i}"), "s1", SERVE).await;
    }
    let seen = until_capacity(&mut events, |c| c.running_servers == 5).await;
    let mut shown = 0;
    for ev in &seen {
        match kind(ev) {
            Kind::Capacity => assert!(
                ev.capacity.as_ref().unwrap().running_servers >= shown,
                "a report after {shown} servers showed counts them: {ev:?}"
            ),
            _ => {
                let user = &ev.status.as_ref().unwrap().key.as_ref().unwrap().user;
                let i: u32 = user[1..].parse().unwrap();
                shown = shown.max(i + 1);
            }
        }
    }
}

#[tokio::test]
async fn a_watch_that_did_not_ask_gets_no_reports() {
    let node = FakeNode::start().await;
    let mut plain = watch(&node, true, false).await;
    let mut pushed = watch(&node, true, true).await;
    assert_eq!(kind(&next(&mut plain).await), Kind::SnapshotEnd);
    started(&node, "ann", "s1", SERVE).await;
    until_capacity(&mut pushed, |c| c.running_servers == 1).await;
    common::stop_remove(&node.client(), "ann").await;
    until_capacity(&mut pushed, |c| c.running_servers == 0).await;
    // The plain stream saw the whole story, and no report in it.
    let mut kinds = Vec::new();
    loop {
        let ev = next(&mut plain).await;
        kinds.push(kind(&ev));
        if kind(&ev) == Kind::Removed {
            break;
        }
    }
    assert!(!kinds.contains(&Kind::Capacity), "{kinds:?}");
    let p = common::poll(&node.client(), "ann", "").await;
    assert_eq!(common::state(&p), pb::server_status::State::Absent);
    // The feed stops computing once no subscriber asks (it is still correct when one comes).
    drop(pushed);
    let again = eventually(LIMIT, || async {
        let mut w = watch(&node, false, true).await;
        let ev = next(&mut w).await;
        (kind(&ev) == Kind::Capacity).then_some(ev)
    })
    .await
    .unwrap();
    assert_eq!(again.capacity.unwrap().running_servers, 0);
}
