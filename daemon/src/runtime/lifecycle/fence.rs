//! Fencing: a node cut off from the hub stops its servers, so that a user's server never runs
//! here beside the replacement the hub started on another node.
//!
//! [`HubContact`] is the node's own account of when the hub last reached it: every
//! authenticated call on the gRPC listener touches it, and while a Watch stream is open the
//! hub counts as present (a stream to a hub that vanished is closed by the listener's HTTP/2
//! keepalive within [`DEAD_PEER_DETECTION`]). Time is the node's monotonic clock: a wall-clock
//! step neither fences early nor late. Calls over the Admin socket (an operator on the node)
//! are not the hub.
//!
//! [`run`] looks once a second: each running server whose limit ([`Fence::limit`]: its
//! Start's, else `[fencing] stop_after_hub_lost_seconds`) has passed is marked fenced in its
//! record, then stopped as a graceful Stop would (SIGTERM, the stop grace, kept): Poll reads
//! EXITED with reason `Fenced`. A server is fenced once; the next Start clears the mark.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::docker::{ContainerEngine, RunStatus};
use crate::key::ServerKey;
use crate::runtime::{Runtime, StopSpec};
use crate::spec::Fence;

/// HTTP/2 keepalive of the gRPC listener: a ping this often on every connection...
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// ...and a connection whose peer has not answered one within this long is closed.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest a Watch stream to a hub that is gone stays open.
pub const DEAD_PEER_DETECTION: Duration =
    Duration::from_secs(KEEPALIVE_INTERVAL.as_secs() + KEEPALIVE_TIMEOUT.as_secs());
/// How often the fencer looks.
const TICK: Duration = Duration::from_secs(1);

/// When the hub last reached this node.
#[derive(Debug)]
pub struct HubContact {
    last: Mutex<Instant>,
    watches: AtomicUsize,
}

impl Default for HubContact {
    /// Counted from now: a node that starts during a partition gives the hub its full time.
    fn default() -> Self {
        Self {
            last: Mutex::new(Instant::now()),
            watches: AtomicUsize::new(0),
        }
    }
}

impl HubContact {
    /// An authenticated call of the hub arrived.
    pub fn touch(&self) {
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) = Instant::now();
    }

    /// A Watch stream of the hub opened: the hub counts as present until the guard drops.
    pub fn watching(self: &Arc<Self>) -> WatchGuard {
        self.watches.fetch_add(1, Ordering::SeqCst);
        self.touch();
        WatchGuard(self.clone())
    }

    /// How long the hub has been out of touch (zero while a Watch stream is open).
    pub fn lost_for(&self) -> Duration {
        if self.watches.load(Ordering::SeqCst) > 0 {
            return Duration::ZERO;
        }
        self.last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .elapsed()
    }
}

/// An open Watch stream of the hub; dropping it ends it (and counts as contact).
#[derive(Debug)]
pub struct WatchGuard(Arc<HubContact>);

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.0.touch();
        if self.0.watches.fetch_sub(1, Ordering::SeqCst) == 1 {
            tracing::info!(
                "hub contact: no Watch stream of the hub is open any more; fencing counts from its last call"
            );
        }
    }
}

/// What a node reports as its fence time: from the last contact to the first stop, the
/// detection of a dead Watch stream included; `None` when it does not fence by default.
pub fn reported(node: Option<Duration>) -> Option<Duration> {
    node.map(|d| d + DEAD_PEER_DETECTION)
}

/// [`reported`] in whole seconds for the wire; 0 = the node does not fence by default.
pub fn reported_seconds(node: Option<Duration>) -> u32 {
    reported(node).map_or(0, |d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX))
}

impl<E: ContainerEngine> Runtime<E> {
    /// The node's account of the hub's calls.
    pub fn hub_contact(&self) -> &Arc<HubContact> {
        &self.inner.contact
    }

    /// The running servers whose fence time has passed, with how long the hub was away.
    fn due_for_fencing(&self) -> Vec<(ServerKey, Duration)> {
        let lost = self.inner.contact.lost_for();
        if lost.is_zero() {
            return Vec::new();
        }
        let node = self.inner.cfg.fence_after;
        self.inner
            .view
            .entries(None)
            .into_iter()
            .filter(|(_, e)| {
                // Not the record's fenced mark: a berthd that died between marking and
                // stopping fences the still running server again after its restart. A server
                // being stopped is not seen twice: `run` awaits each round's stops.
                e.live
                    .as_ref()
                    .is_some_and(|c| matches!(c.status, RunStatus::Running | RunStatus::Paused))
                    && Fence::limit(e.record.fence_after_seconds, node).is_some_and(|l| lost >= l)
            })
            .map(|(k, _)| (k, lost))
            .collect()
    }

    /// Marks `key` fenced and stops it gracefully, keeping its container.
    async fn fence(&self, key: &ServerKey, lost: Duration) {
        tracing::warn!(
            user = key.user(),
            server = key.server(),
            hub_lost_seconds = lost.as_secs(),
            "fencing: no contact with the hub; stopping the server"
        );
        if let Err(e) = self.inner.records.save(key, |r| r.fenced = true).await {
            tracing::error!(user = key.user(), server = key.server(), error = %e, "fencing: cannot mark the record; not stopping");
            return;
        }
        let spec = StopSpec {
            now: false,
            grace: None,
            remove: false,
        };
        if let Err(e) = self.stop(key, spec).await {
            tracing::error!(user = key.user(), server = key.server(), error = %e, "fencing: the stop failed; trying again");
            let _ = self.inner.records.save(key, |r| r.fenced = false).await;
        }
    }
}

/// Fences servers once a second until `shutdown`.
pub async fn run<E: ContainerEngine>(rt: Runtime<E>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(TICK) => {}
        }
        let due = rt.due_for_fencing();
        let stops = due.iter().map(|(key, lost)| rt.fence(key, *lost));
        futures::future::join_all(stops).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_open_watch_is_contact_and_its_end_restarts_the_count() {
        let c = Arc::new(HubContact::default());
        *c.last.lock().expect("not poisoned") = Instant::now() - Duration::from_secs(100);
        assert!(c.lost_for() >= Duration::from_secs(100));
        let g = c.watching();
        assert_eq!(c.lost_for(), Duration::ZERO);
        drop(g);
        assert!(c.lost_for() < Duration::from_secs(1));
    }

    #[test]
    fn a_servers_limit_is_its_own_else_the_nodes_and_zero_is_never() {
        let node = Some(Duration::from_secs(60));
        assert_eq!(Fence::limit(None, node), node);
        assert_eq!(Fence::limit(None, None), None);
        assert_eq!(Fence::limit(Some(0), node), None);
        assert_eq!(Fence::limit(Some(5), None), Some(Duration::from_secs(5)));
        assert_eq!(Fence::After(Duration::from_millis(10)).to_record(), Some(1));
        assert_eq!(Fence::Never.to_record(), Some(0));
        assert_eq!(reported(node), Some(Duration::from_secs(75)));
    }
}
