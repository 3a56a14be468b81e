//! The in-memory view of every server (its durable record and the container as Docker last
//! reported it), the status derived from it, and the Watch broadcast of its changes.
//! Poll and List read only this view: no Docker call.
//!
//! **The view never goes back in time.** Docker answers inspects in any order and late (an
//! inspect begun before a Stop removed the container can land after it), so every report of a
//! container is ordered against the key's *generation*, a counter bumped each time the key's
//! container view changes:
//! - an observation (an inspect, a relist, an event) reads the generation before its Docker call
//!   and is applied only if the generation is still the same; otherwise something newer was
//!   applied meanwhile and the observation is dropped and taken again ([`Runtime::observe`]
//!   retries with a fresh inspect);
//! - a removal berthd itself made is final for that container id: it is applied at once and the
//!   id is remembered, so no later report of that container is taken.
//!
//! **Watch numbers only increase.** Publishing (numbering, then sending) and subscribing with a
//! snapshot both hold the publish lock, so a snapshot is numbered and taken at one point of the
//! event sequence: everything before it is in the snapshot, everything after arrives live with
//! a higher number.
//!
//! The view holds data only; the runtime derives statuses from it ([`crate::runtime::view::status`]) and
//! feeds it ([`crate::runtime::lifecycle::observe`], [`crate::runtime::view::records`]). Its locks are std mutexes held for a copy
//! or an update, never across an await; `publish` is taken before `entries` or `activity`,
//! never after.

pub mod keys;
pub(crate) mod read;
pub mod records;
pub mod status;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::SystemTime;

use tokio::sync::broadcast;

use crate::docker::{ContainerInfo, RunStatus};
use crate::key::ServerKey;
use crate::runtime::view::status::Status;
use crate::state::Record;

/// Events a Watch subscriber may fall behind by before it is cut off.
pub const WATCH_BUFFER: usize = 4096;

/// Container ids berthd removed that each key remembers, newest last.
const REMOVED_REMEMBERED: usize = 8;

/// One server as berthd knows it.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The durable record.
    pub record: Record,
    /// Its container as Docker last reported it; `None` when there is none.
    pub live: Option<ContainerInfo>,
    /// Bumped on every change of `live`; observations are ordered by it.
    pub generation: u64,
    /// Containers berthd removed itself: no later report of them is taken.
    pub removed: Vec<String>,
}

impl Entry {
    /// An entry for `record` with no container seen yet.
    pub fn new(record: Record) -> Self {
        Self {
            record,
            live: None,
            generation: 0,
            removed: Vec::new(),
        }
    }
}

/// What became of an observation handed to [`Runtime::apply`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The view now holds it.
    Taken,
    /// Something newer was applied since the observation began: take it again.
    Stale,
    /// It does not concern the key's container (another container, a removed one, an unknown
    /// key).
    Ignored,
}

/// What kind of change a Watch event reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchKind {
    /// Current status, sent on subscribe.
    Snapshot,
    /// End of the snapshot.
    SnapshotEnd,
    /// A container started.
    Started,
    /// A server answers HTTP.
    Ready,
    /// A container exited.
    Exited,
    /// The OOM killer struck.
    Oom,
    /// A container was removed.
    Removed,
    /// Docker health changed.
    Health,
    /// Anything else.
    Changed,
    /// The node's capacity (only to subscribers who asked for it).
    Capacity,
}

/// One status change.
#[derive(Debug, Clone)]
pub struct WatchEvent {
    /// Kind.
    pub kind: WatchKind,
    /// The server's status after the change (`None` for SnapshotEnd and Capacity).
    pub status: Option<Status>,
    /// With Capacity: the node's capacity report.
    pub capacity: Option<std::sync::Arc<crate::capacity::NodeCapacity>>,
    /// Sequence number on this daemon run.
    pub seq: u64,
    /// When.
    pub at: SystemTime,
}

/// Every server's entry, the reporter's activity, and the Watch broadcast.
pub struct View {
    entries: Mutex<HashMap<ServerKey, Entry>>,
    /// Newest activity seen by the reporter, per server (memory only).
    activity: Mutex<HashMap<ServerKey, SystemTime>>,
    tx: broadcast::Sender<WatchEvent>,
    seq: AtomicU64,
    /// Held while an event is numbered and sent, and while a subscriber takes its snapshot.
    publish: Mutex<()>,
    /// Woken at every change the capacity report may show (the capacity feed, `capfeed.rs`).
    capacity_changed: tokio::sync::Notify,
}

impl Default for View {
    fn default() -> Self {
        Self {
            entries: Mutex::default(),
            activity: Mutex::default(),
            tx: broadcast::channel(WATCH_BUFFER).0,
            seq: AtomicU64::new(0),
            publish: Mutex::new(()),
            capacity_changed: tokio::sync::Notify::new(),
        }
    }
}

impl View {
    pub(in crate::runtime) fn lock(&self) -> MutexGuard<'_, HashMap<ServerKey, Entry>> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn activity(&self) -> MutexGuard<'_, HashMap<ServerKey, SystemTime>> {
        self.activity
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn publishing(&self) -> MutexGuard<'_, ()> {
        self.publish
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Something the capacity report shows may have changed (a server, an admission, a drain,
    /// a device hold): the capacity feed computes it again.
    pub(in crate::runtime) fn capacity_changed(&self) {
        self.capacity_changed.notify_one();
    }

    /// Waits for [`View::capacity_changed`] (a change before the wait counts).
    pub(in crate::runtime) async fn capacity_change(&self) {
        self.capacity_changed.notified().await;
    }

    fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// A copy of `key`'s entry.
    pub fn get(&self, key: &ServerKey) -> Option<Entry> {
        self.lock().get(key).cloned()
    }

    /// Every entry, optionally of one user, copied.
    pub fn entries(&self, user: Option<&str>) -> Vec<(ServerKey, Entry)> {
        self.lock()
            .iter()
            .filter(|(k, _)| user.is_none_or(|u| k.user() == u))
            .map(|(k, e)| (k.clone(), e.clone()))
            .collect()
    }

    /// Every key the node knows.
    pub fn keys(&self) -> Vec<ServerKey> {
        self.lock().keys().cloned().collect()
    }

    /// Sets `key`'s record (a new entry when there is none), keeping what Docker reported.
    pub(in crate::runtime) fn put_record(&self, key: &ServerKey, record: Record) {
        let mut view = self.lock();
        match view.get_mut(key) {
            Some(e) => e.record = record,
            None => {
                view.insert(key.clone(), Entry::new(record));
            }
        }
        drop(view);
        self.capacity_changed();
    }

    /// Forgets `key` altogether (DeleteForever).
    pub(in crate::runtime) fn forget(&self, key: &ServerKey) {
        self.lock().remove(key);
        self.activity().remove(key);
        self.capacity_changed();
    }

    /// Running servers and their containers, for the activity reporter.
    pub fn running_containers(&self) -> Vec<(ServerKey, String)> {
        self.lock()
            .iter()
            .filter_map(|(k, e)| {
                e.live
                    .as_ref()
                    .filter(|c| c.status == RunStatus::Running)
                    .map(|c| (k.clone(), c.id.clone()))
            })
            .collect()
    }

    /// Records activity of `key` (shown as `last_activity` in its status); a key the view
    /// does not hold is ignored, and keys it no longer holds are forgotten.
    pub fn note_activity(&self, key: &ServerKey, at: SystemTime) {
        let keys: std::collections::HashSet<ServerKey> = self.lock().keys().cloned().collect();
        let mut a = self.activity();
        if keys.contains(key) {
            a.insert(key.clone(), at);
        }
        a.retain(|k, _| keys.contains(k));
    }

    /// The newest activity of `key`.
    pub fn last_activity(&self, key: &ServerKey) -> Option<SystemTime> {
        self.activity().get(key).copied()
    }

    /// The generation of `key`'s container view, to be read before a Docker call whose answer
    /// is then applied with [`View::apply`].
    pub(in crate::runtime) fn generation(&self, key: &ServerKey) -> u64 {
        self.lock().get(key).map_or(0, |e| e.generation)
    }

    /// Records what Docker said of `key`'s container, if nothing newer was applied since
    /// generation `seen` was read. A container that exists under the key's name is the key's
    /// container by definition (names are unique), so it is adopted even when the record still
    /// points at an older one (a create that dockerd finished after berthd died). A report
    /// that a container is gone only counts for the container the view holds.
    pub(in crate::runtime) fn apply(
        &self,
        key: &ServerKey,
        container_id: &str,
        info: Option<ContainerInfo>,
        seen: u64,
    ) -> Applied {
        let mut view = self.lock();
        let Some(entry) = view.get_mut(key) else {
            return Applied::Ignored;
        };
        let about = info.as_ref().map_or(container_id, |c| c.id.as_str());
        if entry.removed.iter().any(|r| r == about) {
            return Applied::Ignored;
        }
        if entry.generation != seen {
            return Applied::Stale;
        }
        match info {
            Some(c) if c.name == key.container_name() => entry.live = Some(c),
            Some(_) => return Applied::Ignored,
            None => {
                let held = entry.live.as_ref().map(|c| c.id.as_str());
                if held == Some(container_id) || entry.record.container_id == container_id {
                    entry.live = None;
                } else {
                    return Applied::Ignored;
                }
            }
        }
        entry.generation += 1;
        drop(view);
        self.capacity_changed();
        Applied::Taken
    }

    /// Records that berthd removed container `id` of `key`: final for that container, whatever
    /// Docker reports of it later.
    pub(in crate::runtime) fn removed(&self, key: &ServerKey, id: &str) {
        let mut view = self.lock();
        let Some(entry) = view.get_mut(key) else {
            return;
        };
        if entry.live.as_ref().is_some_and(|c| c.id == id) {
            entry.live = None;
        }
        if !entry.removed.iter().any(|r| r == id) {
            entry.removed.push(id.to_owned());
            let excess = entry.removed.len().saturating_sub(REMOVED_REMEMBERED);
            entry.removed.drain(..excess);
        }
        entry.generation += 1;
        drop(view);
        self.capacity_changed();
    }

    /// Numbers and sends one change; `status` is computed under the publish lock, so the
    /// event order is the order of the statuses.
    pub(in crate::runtime) fn publish(&self, kind: WatchKind, status: impl FnOnce() -> Status) {
        let _numbering = self.publishing();
        // No subscriber is not an error.
        let _ = self.tx.send(WatchEvent {
            kind,
            status: Some(status()),
            capacity: None,
            seq: self.next_seq(),
            at: SystemTime::now(),
        });
        drop(_numbering);
        self.capacity_changed();
    }

    /// Numbers and sends a capacity report; `report` is completed under the publish lock, so
    /// what servers hold in it reflects every change numbered before it.
    pub(in crate::runtime) fn publish_capacity(
        &self,
        report: impl FnOnce() -> crate::capacity::NodeCapacity,
    ) {
        let _numbering = self.publishing();
        let _ = self.tx.send(WatchEvent {
            kind: WatchKind::Capacity,
            status: None,
            capacity: Some(std::sync::Arc::new(report())),
            seq: self.next_seq(),
            at: SystemTime::now(),
        });
    }

    /// A receiver of every change from now on and, when `snapshot` is given, the status of
    /// every known server it derives followed by SnapshotEnd, numbered at the same point of the
    /// event sequence as the subscription: numbers only increase along the stream.
    ///
    /// With `capacity`, one more number is taken after the snapshot and returned: the
    /// subscriber's first capacity event, computed after this call, goes before every live one.
    pub(in crate::runtime) fn subscribe(
        &self,
        snapshot: Option<&dyn Fn(&ServerKey) -> Status>,
        capacity: bool,
    ) -> (
        broadcast::Receiver<WatchEvent>,
        Vec<WatchEvent>,
        Option<u64>,
    ) {
        let _numbering = self.publishing();
        let rx = self.tx.subscribe();
        let Some(status) = snapshot else {
            return (rx, Vec::new(), capacity.then(|| self.next_seq()));
        };
        let mut out: Vec<WatchEvent> = self
            .keys()
            .iter()
            .map(|k| WatchEvent {
                kind: WatchKind::Snapshot,
                status: Some(status(k)),
                capacity: None,
                seq: self.next_seq(),
                at: SystemTime::now(),
            })
            .collect();
        out.push(WatchEvent {
            kind: WatchKind::SnapshotEnd,
            status: None,
            capacity: None,
            seq: self.next_seq(),
            at: SystemTime::now(),
        });
        (rx, out, capacity.then(|| self.next_seq()))
    }
}

/// Docker's action name mapped to a Watch kind.
pub fn kind_of_action(action: &str, info: Option<&ContainerInfo>) -> WatchKind {
    match action {
        "start" => WatchKind::Started,
        "die" if info.is_some_and(|i| i.oom_killed) => WatchKind::Oom,
        "die" => WatchKind::Exited,
        "oom" => WatchKind::Oom,
        "destroy" => WatchKind::Removed,
        a if a.starts_with("health_status") => WatchKind::Health,
        _ => WatchKind::Changed,
    }
}
