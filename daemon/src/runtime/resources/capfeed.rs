//! The capacity feed: the node's capacity report pushed on Watch to subscribers who ask for it
//! (`WatchRequest.capacity`), so a hub places servers without asking Capacity at every spawn.
//!
//! One task per runtime, started by the first such subscriber, computes the report with the
//! Capacity RPC's own code ([`Runtime::capacity_readings`], then [`Runtime::capacity_report`]
//! under the Watch publish lock) and publishes it on the Watch broadcast:
//! - whenever the view says something the report shows may have changed
//!   ([`crate::runtime::view::View::capacity_changed`]: a record or container change, an admission or
//!   its release, a device hold, a drain);
//! - every [`RECHECK`] otherwise, for what changes without berthd doing anything (Docker going
//!   down or up, disk or memory pressure, images pulled or removed by others);
//! - at most once per [`COALESCE`]: a burst of changes gives one report, computed after the
//!   burst's last change was signalled, so the last report sent is never stale.
//!
//! Each subscriber's stream sends a report only when it differs from the last one it sent, not
//! counting the readings that move all the time (available memory, condition messages).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::broadcast;

use crate::docker::ContainerEngine;
use crate::runtime::view::WatchEvent;
use crate::runtime::{Inner, Runtime};

/// Shortest time between two reports: a burst of changes is coalesced into one.
pub const COALESCE: Duration = Duration::from_millis(100);
/// Longest time between two computations while someone subscribes.
pub const RECHECK: Duration = Duration::from_secs(2);

/// Whether the feed runs, and for how many subscribers.
#[derive(Debug, Default)]
pub struct Feed {
    started: AtomicBool,
    subscribers: Arc<AtomicUsize>,
}

/// Held by a capacity subscriber's stream: the feed computes only while one is held.
#[derive(Debug)]
pub struct Subscription(Arc<AtomicUsize>);

impl Drop for Subscription {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A Watch subscription (see [`Runtime::watch`]).
pub struct Watch {
    /// Live events: changes numbered after the snapshot (capacity reports among them).
    pub live: broadcast::Receiver<WatchEvent>,
    /// The snapshot, when asked, ending with SnapshotEnd.
    pub snapshot: Vec<WatchEvent>,
    /// With capacity: the number of the first capacity event ([`Runtime::first_capacity`])
    /// and the subscription that keeps the feed computing.
    pub capacity: Option<(u64, Subscription)>,
}

impl<E: ContainerEngine> Runtime<E> {
    /// Every change from now on and, with `snapshot`, first the status of every known server
    /// (see [`crate::runtime::view::View::subscribe`] for why the numbers only increase); with
    /// `capacity`, the capacity feed runs and its reports come among the live events.
    pub fn watch(&self, snapshot: bool, capacity: bool) -> Watch {
        let sub = capacity.then(|| self.feed_subscribe());
        let poll = |k: &crate::key::ServerKey| self.poll(k);
        let (live, snapshot, seq) = self.inner.view.subscribe(
            snapshot.then_some(&poll as &dyn Fn(&crate::key::ServerKey) -> crate::runtime::Status),
            capacity,
        );
        Watch {
            live,
            snapshot,
            capacity: seq.zip(sub),
        }
    }

    /// A subscriber's first capacity event, numbered `seq` (taken at its subscription);
    /// computed after the subscription, so every later change reaches it as a live event.
    pub async fn first_capacity(&self, seq: u64) -> WatchEvent {
        let report = self.capacity().await;
        WatchEvent {
            kind: crate::runtime::view::WatchKind::Capacity,
            status: None,
            capacity: Some(Arc::new(report)),
            seq,
            at: std::time::SystemTime::now(),
        }
    }

    /// Something the capacity report shows may have changed outside the runtime's own
    /// operations (Docker went down or came back): the feed computes it again.
    pub fn capacity_changed(&self) {
        self.inner.view.capacity_changed();
    }

    fn feed_subscribe(&self) -> Subscription {
        let feed = &self.inner.feed;
        feed.subscribers.fetch_add(1, Ordering::SeqCst);
        if !feed.started.swap(true, Ordering::SeqCst) {
            tokio::spawn(run(Arc::downgrade(&self.inner)));
        }
        Subscription(feed.subscribers.clone())
    }
}

/// The feed's loop; ends when the runtime is gone.
async fn run<E: ContainerEngine>(inner: std::sync::Weak<Inner<E>>) {
    loop {
        let Some(rt) = inner.upgrade().map(|inner| Runtime { inner }) else {
            return;
        };
        if rt.inner.feed.subscribers.load(Ordering::SeqCst) > 0 {
            let readings = rt.capacity_readings().await;
            rt.inner
                .view
                .publish_capacity(|| rt.capacity_report(readings));
        }
        // Not holding the runtime while waiting: it may go away meanwhile.
        let view = rt.inner.view.clone();
        drop(rt);
        tokio::time::sleep(COALESCE).await;
        tokio::select! {
            () = view.capacity_change() => {}
            () = tokio::time::sleep(RECHECK) => {}
        }
    }
}
