//! The view never goes back in time, as a property over the fake engine: random interleavings
//! of Starts, Stops (removing or not), outside exits, health changes (each an event the monitor
//! inspects), inspects that answer late with a stale snapshot, and relists running beside them.
//! After every acknowledged operation, and at any moment later, Poll never reports a state
//! older than that operation. No Docker engine is used.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::time::Duration;

use berth_proto::v1 as pb;
use berth_proto::v1::server_status::State;
use common::fake_node::{FakeNode, SERVE, start_req};
use common::{Stop, poll, state};
use proptest::prelude::*;

const USERS: [&str; 2] = ["ann", "bob"];

#[derive(Debug, Clone)]
enum Op {
    Start(usize),
    Stop {
        user: usize,
        remove: bool,
    },
    /// The next inspect of the user's container answers `ms` late with its snapshot from before.
    SlowInspect {
        user: usize,
        ms: u64,
    },
    /// An event the monitor inspects for.
    Health(usize),
    /// The server ends on its own.
    Exit(usize),
    /// A relist (the Admin Reconcile RPC), left running beside what follows.
    Relist,
    /// Only the polls every step makes.
    Poll,
}

fn op() -> impl Strategy<Value = Op> {
    let user = 0..USERS.len();
    prop_oneof![
        3 => user.clone().prop_map(Op::Start),
        3 => (user.clone(), any::<bool>()).prop_map(|(user, remove)| Op::Stop { user, remove }),
        3 => (user.clone(), 1u64..40).prop_map(|(user, ms)| Op::SlowInspect { user, ms }),
        2 => user.clone().prop_map(Op::Health),
        1 => user.clone().prop_map(Op::Exit),
        2 => Just(Op::Relist),
        2 => Just(Op::Poll),
    ]
}

/// What the last acknowledged operation of a user says the view must show.
#[derive(Debug, Clone, PartialEq)]
enum Known {
    Nothing,
    /// Started this container; it may have exited since (on its own, not by a Stop).
    Started(String),
    /// Stopped and kept: exited, this container.
    Exited(String),
    /// Stopped and removed.
    Removed,
}

fn check(user: &str, known: &Known, p: &pb::ServerStatus, when: &str) -> Result<(), TestCaseError> {
    let s = state(p);
    match known {
        Known::Nothing => {}
        Known::Started(id) => {
            prop_assert!(
                matches!(s, State::Running | State::Exited) && p.container_id == *id,
                "{user} {when}: started {id}, Poll says {s:?} {}",
                p.container_id
            );
        }
        Known::Exited(id) => {
            prop_assert!(
                s == State::Exited && p.container_id == *id,
                "{user} {when}: stopped {id} (kept), Poll says {s:?} {}",
                p.container_id
            );
        }
        Known::Removed => {
            prop_assert!(
                s == State::Absent,
                "{user} {when}: removed, Poll says {s:?} {}",
                p.container_id
            );
        }
    }
    Ok(())
}

async fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let node = FakeNode::start().await;
    let mut known = [Known::Nothing, Known::Nothing];
    let mut spawns = 0;
    let mut relists = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        match *op {
            Op::Start(u) => {
                spawns += 1;
                let started = node
                    .client()
                    .start(start_req(USERS[u], &format!("s{spawns}"), SERVE))
                    .await;
                match started {
                    Ok(r) => known[u] = Known::Started(r.into_inner().container_id),
                    // Still running under an earlier spawn: nothing changed.
                    Err(e) if e.code() == tonic::Code::AlreadyExists => {}
                    Err(e) => prop_assert!(false, "start of {}: {e:?}", USERS[u]),
                }
            }
            Op::Stop { user, remove } => {
                let how = if remove { Stop::Remove } else { Stop::Now };
                let stopped = common::stop_as(&node.client(), USERS[user], "", how)
                    .await
                    .unwrap();
                known[user] = match (&known[user], remove) {
                    (_, true) => Known::Removed,
                    (Known::Started(id) | Known::Exited(id), false) => Known::Exited(id.clone()),
                    (Known::Nothing | Known::Removed, false) => known[user].clone(),
                };
                check(USERS[user], &known[user], &stopped, "in Stop's answer")?;
            }
            Op::SlowInspect { user, ms } => {
                if let Known::Started(id) | Known::Exited(id) = &known[user] {
                    node.fake
                        .delay_inspects(Some(id), Duration::from_millis(ms), 1);
                }
            }
            Op::Health(u) => {
                if let Known::Started(id) = &known[u] {
                    node.fake
                        .set_health(id, if i % 2 == 0 { "healthy" } else { "unhealthy" });
                }
            }
            Op::Exit(u) => {
                if let Known::Started(id) = &known[u] {
                    node.fake.exit(id, 3);
                }
            }
            Op::Relist => {
                let rt = node.rt.clone();
                relists.push(tokio::spawn(async move { rt.reconcile().await }));
            }
            Op::Poll => {}
        }
        for (u, user) in USERS.iter().enumerate() {
            let p = poll(&node.client, user, "").await;
            check(user, &known[u], &p, &format!("after op {i} {op:?}"))?;
        }
    }
    // Let every late inspect and relist land, then look once more.
    for r in relists {
        r.await.unwrap().unwrap();
    }
    common::eventually(Duration::from_secs(5), || async {
        (node.fake.delayed_inspects() == 0).then_some(())
    })
    .await
    .unwrap();
    for (u, user) in USERS.iter().enumerate() {
        let p = poll(&node.client, user, "").await;
        check(user, &known[u], &p, "at the end")?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn the_view_never_reports_a_state_older_than_the_last_acknowledged_operation(
        ops in prop::collection::vec(op(), 4..14)
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(run(ops))?;
    }
}
