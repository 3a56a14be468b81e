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
//! Lock order: `publish` → `entries` → `activity`; the key table's lock is taken alone. The
//! async `save_lock` is never taken while a std lock is held.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::SystemTime;

use tokio::sync::broadcast;

use super::keys::Op;
use super::{Error, Runtime, State, Status, exit_reason};
use crate::docker::{ContainerEngine, ContainerInfo, LABEL_PORT, RunStatus};
use crate::key::ServerKey;
use crate::state::{Record, RecordStatus, now_ms};

/// How often an observation overtaken by a newer change is taken again.
const OBSERVE_ATTEMPTS: usize = 3;

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
}

/// One status change.
#[derive(Debug, Clone)]
pub struct WatchEvent {
    /// Kind.
    pub kind: WatchKind,
    /// The server's status after the change (`None` only for SnapshotEnd).
    pub status: Option<Status>,
    /// Sequence number on this daemon run.
    pub seq: u64,
    /// When.
    pub at: SystemTime,
}

/// The view and its broadcast.
pub struct View {
    entries: Mutex<HashMap<ServerKey, Entry>>,
    /// Newest activity seen by the reporter, per server (memory only).
    activity: Mutex<HashMap<ServerKey, SystemTime>>,
    tx: broadcast::Sender<WatchEvent>,
    seq: AtomicU64,
    /// Held while an event is numbered and sent, and while a subscriber takes its snapshot.
    publish: Mutex<()>,
    /// Serialises read-modify-persist of records, so a monitor update and a lifecycle update
    /// never overwrite each other's fields.
    pub(super) save_lock: tokio::sync::Mutex<()>,
}

impl Default for View {
    fn default() -> Self {
        Self {
            entries: Mutex::default(),
            activity: Mutex::default(),
            tx: broadcast::channel(WATCH_BUFFER).0,
            seq: AtomicU64::new(0),
            publish: Mutex::new(()),
            save_lock: tokio::sync::Mutex::new(()),
        }
    }
}

impl View {
    pub(super) fn lock(&self) -> MutexGuard<'_, HashMap<ServerKey, Entry>> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn publishing(&self) -> MutexGuard<'_, ()> {
        self.publish
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::SeqCst) + 1
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

impl<E: ContainerEngine> Runtime<E> {
    /// The status of `key`, from memory.
    pub fn poll(&self, key: &ServerKey) -> Status {
        let entry = self.inner.view.lock().get(key).cloned();
        self.status_of(key, entry.as_ref())
    }

    /// Every server with a container (or a vanished one), optionally of one user, from memory.
    pub fn list(&self, user: Option<&str>) -> Vec<Status> {
        let entries: Vec<(ServerKey, Entry)> = self
            .inner
            .view
            .lock()
            .iter()
            .filter(|(k, _)| user.is_none_or(|u| k.user() == u))
            .map(|(k, e)| (k.clone(), e.clone()))
            .collect();
        let mut out: Vec<Status> = entries
            .iter()
            .map(|(k, e)| self.status_of(k, Some(e)))
            .filter(|s| s.state != State::Absent)
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out
    }

    /// Running servers and their containers, for the activity reporter.
    pub fn running_containers(&self) -> Vec<(ServerKey, String)> {
        self.inner
            .view
            .lock()
            .iter()
            .filter_map(|(k, e)| {
                e.live
                    .as_ref()
                    .filter(|c| c.status == RunStatus::Running)
                    .map(|c| (k.clone(), c.id.clone()))
            })
            .collect()
    }

    /// Every key the node knows.
    pub fn known_keys(&self) -> std::collections::HashSet<ServerKey> {
        self.inner.view.lock().keys().cloned().collect()
    }

    /// One reading of a container's counters.
    pub async fn usage(&self, id: &str) -> Result<crate::docker::Usage, Error> {
        Ok(self.inner.engine.usage(id).await?)
    }

    /// Records activity of `key` (shown as `last_activity` in its status).
    pub fn note_activity(&self, key: &ServerKey, at: SystemTime) {
        let mut a = self
            .inner
            .view
            .activity
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let known = self.inner.view.lock().contains_key(key);
        if known {
            a.insert(key.clone(), at);
        }
        let entries = self.inner.view.lock();
        a.retain(|k, _| entries.contains_key(k));
    }

    /// A copy of `key`'s entry.
    pub(super) fn entry(&self, key: &ServerKey) -> Option<Entry> {
        self.inner.view.lock().get(key).cloned()
    }

    /// Changes `key`'s record with `change`, persists it, then publishes it to the view. When
    /// the write fails nothing changes in memory either.
    pub(super) async fn save(
        &self,
        key: &ServerKey,
        change: impl FnOnce(&mut Record),
    ) -> Result<Record, Error> {
        self.try_save(key, |r| {
            change(r);
            Ok(())
        })
        .await
    }

    /// Like [`Runtime::save`], but `change` may refuse (and then nothing is written).
    pub(super) async fn try_save(
        &self,
        key: &ServerKey,
        change: impl FnOnce(&mut Record) -> Result<(), Error>,
    ) -> Result<Record, Error> {
        let _serial = self.inner.view.save_lock.lock().await;
        let mut record = self
            .entry(key)
            .map_or_else(|| Record::new(key), |e| e.record);
        change(&mut record)?;
        record.updated_ms = now_ms();
        let rt = self.clone();
        let to_write = record.clone();
        tokio::task::spawn_blocking(move || rt.inner.store.put(&to_write))
            .await
            .map_err(|e| Error::Internal(format!("state write task failed: {e}")))??;
        let mut view = self.inner.view.lock();
        let entry = view
            .entry(key.clone())
            .or_insert_with(|| Entry::new(record.clone()));
        entry.record = record.clone();
        Ok(record)
    }

    /// The generation of `key`'s container view, to be read before a Docker call whose answer
    /// is then applied with [`Runtime::apply`].
    pub(super) fn generation(&self, key: &ServerKey) -> u64 {
        self.inner.view.lock().get(key).map_or(0, |e| e.generation)
    }

    /// Records what Docker said of `key`'s container, if nothing newer was applied since
    /// generation `seen` was read. A container that exists under the key's name is the key's
    /// container by definition (names are unique), so it is adopted even when the record still
    /// points at an older one (a create that dockerd finished after berthd died). A report
    /// that a container is gone only counts for the container the view holds.
    pub(super) fn apply(
        &self,
        key: &ServerKey,
        container_id: &str,
        info: Option<ContainerInfo>,
        seen: u64,
    ) -> Applied {
        let mut view = self.inner.view.lock();
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
        Applied::Taken
    }

    /// Records that berthd removed container `id` of `key`: final for that container, whatever
    /// Docker reports of it later.
    pub(super) fn removed(&self, key: &ServerKey, id: &str) {
        let mut view = self.inner.view.lock();
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
    }

    /// Makes the record follow the container: its id, and exited with its code.
    pub(super) async fn follow_record(&self, key: &ServerKey) {
        let Some(e) = self.entry(key) else { return };
        let exited = e.live.as_ref().and_then(|c| {
            matches!(c.status, RunStatus::Exited | RunStatus::Dead).then_some(c.exit_code)
        });
        let adopted_spawn = e
            .live
            .as_ref()
            .and_then(|c| c.label(crate::docker::LABEL_SPAWN_ID))
            .map(str::to_owned);
        // Only a container that exists can become the record's container.
        let live_id = e.live.as_ref().map(|c| c.id.clone());
        let stale_id = live_id
            .as_ref()
            .is_some_and(|id| *id != e.record.container_id);
        let stale_exit = exited.is_some_and(|code| {
            e.record.status != RecordStatus::Exited || e.record.exit_code != code
        });
        if !stale_id && !stale_exit {
            return;
        }
        let id = live_id.unwrap_or(e.record.container_id);
        let saved = self
            .save(key, |r| {
                if r.container_id != id
                    && let Some(spawn) = adopted_spawn
                {
                    r.spawn_id = spawn;
                }
                r.container_id = id;
                if let Some(code) = exited {
                    r.status = RecordStatus::Exited;
                    r.exit_code = code;
                }
            })
            .await;
        if let Err(e) = saved {
            tracing::error!(user = key.user(), server = key.server(), error = %e, "cannot record a status change");
        }
    }

    /// Takes a Docker report of `key`'s container, read at generation `seen`, keeps the record
    /// in step and tells Watch subscribers when the status changed (or always, for kinds other
    /// than Changed).
    pub(super) async fn observe(
        &self,
        key: &ServerKey,
        container_id: &str,
        info: Option<ContainerInfo>,
        seen: u64,
        kind: WatchKind,
    ) -> Applied {
        let before = self.poll(key);
        let applied = self.apply(key, container_id, info, seen);
        if applied != Applied::Taken {
            return applied;
        }
        self.follow_record(key).await;
        let after = self.poll(key);
        let changed = before.state != after.state
            || before.container_id != after.container_id
            || before.health != after.health
            || before.exit_code != after.exit_code;
        if kind != WatchKind::Changed || changed {
            self.publish(key, kind);
        }
        Applied::Taken
    }

    /// Inspects `id` (or, with `None`, the key's container by name) and takes the answer into
    /// the view; an answer overtaken by a newer change is taken again, a few times.
    pub(super) async fn observe_fresh(&self, key: &ServerKey, id: Option<&str>, kind: WatchKind) {
        for _ in 0..OBSERVE_ATTEMPTS {
            let seen = self.generation(key);
            let found = match id {
                Some(id) => self.inner.engine.inspect(id).await.map_err(Error::from),
                None => self.container_of(key).await,
            };
            let (about, info) = match found {
                Ok(Some(c)) => (c.id.clone(), Some(c)),
                Ok(None) => (
                    id.map(str::to_owned)
                        .or_else(|| self.entry(key).map(|e| e.record.container_id))
                        .unwrap_or_default(),
                    None,
                ),
                Err(e) => {
                    tracing::warn!(user = key.user(), server = key.server(), error = %e, "cannot inspect a server's container; the next relist will catch up");
                    return;
                }
            };
            let kind = match (kind, &info) {
                (WatchKind::Exited, Some(c)) if c.oom_killed => WatchKind::Oom,
                (k, _) => k,
            };
            if self.observe(key, &about, info, seen, kind).await != Applied::Stale {
                return;
            }
        }
        tracing::debug!(
            user = key.user(),
            server = key.server(),
            "view changed under every inspect; the next event or relist will catch up"
        );
    }

    /// Brings `key`'s view up to date with Docker (one inspect, again if overtaken).
    pub(super) async fn refresh(&self, key: &ServerKey) {
        self.observe_fresh(key, None, WatchKind::Changed).await;
    }

    /// Sends `key`'s current status to Watch subscribers.
    pub(super) fn publish(&self, key: &ServerKey, kind: WatchKind) {
        let view = &self.inner.view;
        let _numbering = view.publishing();
        let status = self.poll(key);
        // No subscriber is not an error.
        let _ = view.tx.send(WatchEvent {
            kind,
            status: Some(status),
            seq: view.next_seq(),
            at: SystemTime::now(),
        });
    }

    /// A receiver of every change from now on and, when `snapshot`, the current status of
    /// every known server followed by SnapshotEnd — numbered at the same point of the event
    /// sequence as the subscription, so numbers only increase along the stream.
    pub fn watch(&self, snapshot: bool) -> (broadcast::Receiver<WatchEvent>, Vec<WatchEvent>) {
        let view = &self.inner.view;
        let _numbering = view.publishing();
        let rx = view.tx.subscribe();
        if !snapshot {
            return (rx, Vec::new());
        }
        let keys: Vec<ServerKey> = view.lock().keys().cloned().collect();
        let mut out: Vec<WatchEvent> = keys
            .iter()
            .map(|k| WatchEvent {
                kind: WatchKind::Snapshot,
                status: Some(self.poll(k)),
                seq: view.next_seq(),
                at: SystemTime::now(),
            })
            .collect();
        out.push(WatchEvent {
            kind: WatchKind::SnapshotEnd,
            status: None,
            seq: view.next_seq(),
            at: SystemTime::now(),
        });
        (rx, out)
    }

    /// The status of `key` from its entry and the operation under way.
    pub(super) fn status_of(&self, key: &ServerKey, entry: Option<&Entry>) -> Status {
        let op = self.inner.keys.current(key);
        let mut s = Status {
            key: key.clone(),
            state: State::Absent,
            exit_code: None,
            reason: String::new(),
            message: String::new(),
            started_at: None,
            finished_at: None,
            url: None,
            container_id: String::new(),
            spawn_id: String::new(),
            image: String::new(),
            health: String::new(),
            last_activity: self
                .inner
                .view
                .activity
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get(key)
                .copied(),
        };
        let Some(entry) = entry else {
            if op == Some(Op::Starting) {
                s.state = State::Starting;
            }
            return s;
        };
        let r = &entry.record;
        s.spawn_id.clone_from(&r.spawn_id);
        s.image.clone_from(&r.image);
        s.container_id.clone_from(&r.container_id);
        let Some(c) = &entry.live else {
            if op == Some(Op::Starting) && r.status != RecordStatus::Starting {
                // The record still names an earlier spawn's container; this spawn has none yet.
                s.container_id.clear();
            }
            (s.state, s.reason, s.message) = match (op, r.status) {
                (Some(Op::Starting), _) => (State::Starting, String::new(), String::new()),
                (_, RecordStatus::Running | RecordStatus::Starting | RecordStatus::Stopping)
                    if !r.container_id.is_empty() =>
                {
                    (
                        State::Exited,
                        "Vanished".to_owned(),
                        "the container disappeared outside berthd's control".to_owned(),
                    )
                }
                _ => (State::Absent, String::new(), String::new()),
            };
            s.exit_code = if s.state == State::Absent {
                r.exit_code
            } else {
                None
            };
            return s;
        };
        let port = c
            .label(LABEL_PORT)
            .and_then(|p| p.parse().ok())
            .unwrap_or(r.port);
        let url = c.host_port(port).map(|p| self.url_for(p));
        let (state, exit_code, reason, message) = match (c.status, op) {
            (RunStatus::Exited | RunStatus::Dead, _) => {
                let code = c.exit_code.unwrap_or(-1);
                let message = if c.error.is_empty() {
                    format!("exited with code {code}")
                } else {
                    format!("exited with code {code}: {}", c.error)
                };
                (
                    State::Exited,
                    Some(code),
                    exit_reason(code, c.oom_killed),
                    message,
                )
            }
            (_, Some(Op::Stopping)) | (RunStatus::Removing, _) => {
                (State::Stopping, None, "", String::new())
            }
            (RunStatus::Created | RunStatus::Restarting, Some(Op::Starting)) => {
                (State::Starting, None, "", String::new())
            }
            (RunStatus::Created, _) => (
                State::Exited,
                Some(0),
                "Error",
                "created but never started".to_owned(),
            ),
            (RunStatus::Running | RunStatus::Paused, Some(Op::Starting)) => {
                (State::Starting, None, "", String::new())
            }
            (RunStatus::Paused, _) => (State::Running, None, "", "paused".to_owned()),
            (RunStatus::Running | RunStatus::Restarting, _) => {
                (State::Running, None, "", String::new())
            }
        };
        s.state = state;
        s.exit_code = exit_code;
        s.reason = reason.to_owned();
        s.message = message;
        s.started_at.clone_from(&c.started_at);
        s.finished_at.clone_from(&c.finished_at);
        s.url = if state == State::Exited { None } else { url };
        s.container_id.clone_from(&c.id);
        s.health.clone_from(&c.health);
        s.image.clone_from(&c.image);
        if let Some(id) = c.label(crate::docker::LABEL_SPAWN_ID) {
            s.spawn_id = id.to_owned();
        }
        s
    }
}
