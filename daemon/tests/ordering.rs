//! The view never goes back in time (real Docker, real berthd): under concurrent churn, a Poll
//! straight after an acknowledged Stop never reports the container as it was before, and every
//! Watch stream numbers its events strictly upwards across the snapshot.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use berth_proto::v1 as pb;
use common::{Daemon, Stop, state, stop_as, tiny_start, unique};
use futures::StreamExt;
use pb::server_status::State;

const WORKERS: usize = 5;
const CYCLES: usize = 25;
/// Polls after each Stop: at once, then every 30 ms.
const POLLS_PER_STOP: usize = 4;
const RESUBSCRIPTIONS: usize = 200;

/// One worker: start, stop (removing every other time), and poll straight after the Stop.
/// Returns how many polls it made.
async fn churn(d: &Daemon, worker: usize) -> usize {
    let mut c = d.client().await;
    let user = unique(&format!("order{worker}"));
    let mut polls = 0;
    for cycle in 0..CYCLES {
        let started = c
            .start(tiny_start(&user, &format!("w{worker}-c{cycle}")))
            .await
            .unwrap()
            .into_inner();
        let remove = cycle % 2 == 0;
        let how = match (remove, cycle % 4 < 2) {
            (true, true) => Stop::Remove,
            (true, false) => Stop::GracefulRemove,
            (false, true) => Stop::Now,
            (false, false) => Stop::Graceful(1),
        };
        let stopped = stop_as(&c, &user, "", how).await.unwrap();
        let want = if remove { State::Absent } else { State::Exited };
        assert_eq!(state(&stopped), want, "Stop's own answer");
        for i in 0..POLLS_PER_STOP {
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            let p = common::poll(&c, &user, "").await;
            polls += 1;
            assert_eq!(
                state(&p),
                want,
                "worker {worker} cycle {cycle} poll {i} after Stop(remove={remove}) of {}: {p:?}",
                started.container_id
            );
            if !remove {
                assert_eq!(p.container_id, started.container_id);
            }
        }
    }
    polls
}

/// Subscribes with a snapshot again and again while the churn runs; every stream's numbers
/// must strictly increase from its first snapshot event through its live events.
async fn resubscribe(d: &Daemon, done: Arc<AtomicBool>) -> (usize, usize) {
    let mut c = d.client().await;
    let (mut streams, mut live_seen) = (0, 0);
    while streams < RESUBSCRIPTIONS {
        let mut s = c
            .watch(pb::WatchRequest {
                snapshot: true,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let mut last = 0u64;
        let mut after_end = 0;
        let read = async {
            while let Some(ev) = s.next().await {
                let ev = ev.unwrap();
                assert!(
                    ev.sequence > last,
                    "stream {streams}: #{} after #{last} ({:?})",
                    ev.sequence,
                    ev.kind
                );
                last = ev.sequence;
                if ev.kind == pb::watch_event::Kind::SnapshotEnd as i32 {
                    after_end = 1;
                } else if after_end > 0 {
                    after_end += 1;
                    live_seen += 1;
                    if after_end > 3 {
                        break;
                    }
                }
            }
        };
        // Live events come with the churn; a quiet moment just ends this stream early.
        let _ = tokio::time::timeout(Duration::from_millis(150), read).await;
        streams += 1;
        if done.load(Ordering::Relaxed) && streams >= RESUBSCRIPTIONS {
            break;
        }
    }
    (streams, live_seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn polls_after_stop_and_watch_numbers_never_go_back_under_churn() {
    let d = Arc::new(Daemon::start());
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (d, done) = (d.clone(), done.clone());
        tokio::spawn(async move { resubscribe(&d, done).await })
    };
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let d = d.clone();
            tokio::spawn(async move { churn(&d, w).await })
        })
        .collect();
    let mut polls = 0;
    for w in workers {
        polls += w.await.unwrap();
    }
    done.store(true, Ordering::Relaxed);
    let (streams, live) = watcher.await.unwrap();
    eprintln!(
        "ordering: {polls} polls straight after Stop, {streams} Watch streams, {live} live events checked"
    );
    assert_eq!(polls, WORKERS * CYCLES * POLLS_PER_STOP);
    assert!(polls >= 500);
    assert!(streams >= RESUBSCRIPTIONS);
    assert!(
        live > 0,
        "no live event reached any Watch stream: the churn was not watched"
    );
}
