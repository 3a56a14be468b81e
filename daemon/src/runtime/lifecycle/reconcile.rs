//! Reconciliation: rebuild the view from the records on disk and the containers Docker runs.
//! It never starts, stops, restarts or recreates a container; the one container it removes is
//! one that never started and that no Start holds (berthd stopped between create and start):
//! its caller is gone, and it would hold its devices and the key for nothing.

use std::collections::{HashMap, HashSet};

use crate::docker::{
    ContainerEngine, ContainerInfo, LABEL_DEVICES, LABEL_MANAGED, LABEL_NODE, LABEL_OWNED_VOLUMES,
    LABEL_PORT, LABEL_SERVER, LABEL_SPAWN_ID, LABEL_SPEC_HASH, LABEL_USER, RunStatus,
};
use crate::key::ServerKey;
use crate::runtime::view::WatchKind;
use crate::runtime::{Error, Runtime};
use crate::state::RecordStatus;

/// Each key's generation and record's container id, read before the list.
type Before = HashMap<ServerKey, (u64, String)>;

/// What a reconciliation found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReconcileReport {
    /// Containers matched to their record.
    pub adopted: u32,
    /// Records rebuilt from a container's labels (record missing or corrupt).
    pub rebuilt: u32,
    /// Records whose container is gone.
    pub vanished: u32,
}

/// The key a container's labels name.
pub(in crate::runtime) fn key_of(c: &ContainerInfo) -> Option<ServerKey> {
    ServerKey::new(c.label(LABEL_USER)?, c.label(LABEL_SERVER)?).ok()
}

impl<E: ContainerEngine> Runtime<E> {
    /// Relists this node's containers and brings records and view in line with them.
    pub async fn reconcile(&self) -> Result<ReconcileReport, Error> {
        let node = self.inner.cfg.node_id.clone();
        // What each key looked like before the list: a key whose view or record changed
        // since (a Start that created a container after the list) is not judged by it.
        let before: Before = self
            .inner
            .view
            .lock()
            .iter()
            .map(|(k, e)| (k.clone(), (e.generation, e.record.container_id.clone())))
            .collect();
        let ids = self
            .inner
            .engine
            .list(&[(LABEL_MANAGED, "true"), (LABEL_NODE, &node)])
            .await?;
        let mut report = ReconcileReport::default();
        let mut seen = HashSet::new();
        for id in ids {
            if let Some(key) = self.adopt(&id, &before, &mut report).await? {
                seen.insert(key);
            }
        }
        self.forget_vanished(&seen, &before, &mut report).await;
        Ok(report)
    }

    /// Takes listed container `id` into the view (rebuilding its record if need be); returns
    /// its key, or `None` for a container that is not a valid server of this node.
    async fn adopt(
        &self,
        id: &str,
        before: &Before,
        report: &mut ReconcileReport,
    ) -> Result<Option<ServerKey>, Error> {
        let Some(c) = self.inner.engine.inspect(id).await? else {
            return Ok(None);
        };
        let Some(key) = key_of(&c) else {
            tracing::warn!(container = %c.id, "container has berth labels that are not a valid key; leaving it alone");
            return Ok(None);
        };
        if c.name != key.container_name() {
            tracing::warn!(container = %c.id, name = %c.name, "container's name does not match its key; leaving it alone");
            return Ok(None);
        }
        match self.inner.view.get(&key) {
            None => {
                tracing::warn!(user = key.user(), server = key.server(), container = %c.id, "no record for a running berth container; rebuilding it from the container's labels");
                self.rebuild(&key, &c).await?;
                report.rebuilt += 1;
            }
            Some(e) if e.record.container_id != c.id => {
                // observe() below adopts it: the key's name makes it the key's container.
                tracing::info!(user = key.user(), server = key.server(), container = %c.id, "record now points at the key's container");
                report.adopted += 1;
            }
            Some(_) => report.adopted += 1,
        }
        // Read before the list, so anything applied since wins over this relist.
        let generation = before.get(&key).map_or(0, |b| b.0);
        let id = c.id.clone();
        let never_started = c.status == RunStatus::Created;
        self.observe(&key, &id, Some(c), generation, WatchKind::Changed)
            .await;
        let starting = self
            .inner
            .view
            .get(&key)
            .is_some_and(|e| e.record.status == RecordStatus::Starting);
        if (never_started || starting) && self.inner.keys.current(&key).is_none() {
            self.settle_orphan(&key, &id).await;
        }
        Ok(Some(key))
    }

    /// Settles container `id` of `key`, left by a Start that no one holds any more (berthd
    /// stopped mid-start, so the hub's call failed with it): what that spawn made is removed
    /// and a container it resumed is stopped without its secrets, as a failed Start leaves
    /// them; a container that never started is removed whatever made it. The key is held
    /// meanwhile, so no Start can be carrying it on.
    async fn settle_orphan(&self, key: &ServerKey, id: &str) {
        let guard = self
            .inner
            .keys
            .acquire(key, crate::runtime::view::keys::Op::Stopping)
            .await;
        let entry = self.inner.view.get(key);
        if let Some(e) = entry.filter(|e| e.record.status == RecordStatus::Starting) {
            tracing::warn!(user = key.user(), server = key.server(), container = %id, spawn_id = %e.record.spawn_id, "a start no one holds any more (berthd stopped mid-start): undoing it");
            self.clean_up_spawn(key, &e.record.spawn_id).await;
        }
        let still = matches!(self.inner.engine.inspect(id).await, Ok(Some(c)) if c.status == RunStatus::Created);
        if still {
            match crate::runtime::lifecycle::start::persist("remove", || {
                self.inner.engine.remove(id)
            })
            .await
            {
                Ok(()) => {
                    tracing::warn!(user = key.user(), server = key.server(), container = %id, "removed a container that never started and that no Start holds (berthd stopped mid-start)");
                    self.inner.view.removed(key, id);
                    let saved = self.inner.records.save(key, |r| {
                        if r.container_id == id {
                            r.container_id.clear();
                            r.status = RecordStatus::Absent;
                            r.exit_code = None;
                        }
                    });
                    if let Err(e) = saved.await {
                        tracing::error!(user = key.user(), server = key.server(), error = %e, "cannot record the removal");
                    }
                }
                Err(e) => {
                    tracing::warn!(container = %id, error = %e, "cannot remove a container that never started");
                }
            }
        }
        self.refresh(key).await;
        drop(guard);
        self.settle_devices(key).await;
        self.publish(key, WatchKind::Changed);
    }

    /// Marks gone the containers of keys the list did not show and that nothing touched since.
    async fn forget_vanished(
        &self,
        seen: &HashSet<ServerKey>,
        before: &Before,
        report: &mut ReconcileReport,
    ) {
        let gone: Vec<(ServerKey, String, bool)> = self
            .inner
            .view
            .lock()
            .iter()
            .filter(|(k, e)| {
                !seen.contains(*k)
                    && before.get(*k).is_some_and(|(generation, id)| {
                        *generation == e.generation && *id == e.record.container_id
                    })
            })
            .map(|(k, e)| {
                let was_live = e.live.is_some()
                    || matches!(
                        e.record.status,
                        RecordStatus::Running | RecordStatus::Starting
                    );
                let id = e.record.container_id.clone();
                let vanished = was_live && !id.is_empty();
                (k.clone(), id, vanished)
            })
            .collect();
        for (key, id, vanished) in gone {
            if self.inner.keys.current(&key).is_some() {
                // A Start or Stop holds the key; it keeps the view up to date itself.
                continue;
            }
            if vanished {
                tracing::warn!(user = key.user(), server = key.server(), container = %id, "the server's container is gone");
                report.vanished += 1;
            }
            let generation = before.get(&key).map_or(0, |b| b.0);
            self.observe(&key, &id, None, generation, WatchKind::Changed)
                .await;
            // No container and no spawn under way: a crash during start left its devices
            // held; nothing can use them now.
            self.settle_devices(&key).await;
        }
    }

    /// Takes one Docker event of this node's containers into the view.
    pub async fn observe_event(&self, ev: &crate::docker::EngineEvent) {
        let (Some(user), Some(server)) = (ev.labels.get(LABEL_USER), ev.labels.get(LABEL_SERVER))
        else {
            return;
        };
        let Ok(key) = ServerKey::new(user, server) else {
            return;
        };
        let kind = crate::runtime::view::kind_of_action(&ev.action, None);
        if ev.action == "destroy" {
            let seen = self.inner.view.generation(&key);
            self.observe(&key, &ev.container_id, None, seen, kind).await;
        } else {
            self.observe_fresh(&key, Some(&ev.container_id), kind).await;
        }
    }

    async fn rebuild(&self, key: &ServerKey, c: &ContainerInfo) -> Result<(), Error> {
        let label = |k| c.label(k).unwrap_or_default().to_owned();
        let running = !matches!(c.status, RunStatus::Exited | RunStatus::Dead);
        self.inner
            .records
            .save(key, |r| {
                r.spawn_id = label(LABEL_SPAWN_ID);
                r.spec_hash = label(LABEL_SPEC_HASH);
                r.container_id.clone_from(&c.id);
                r.status = if running {
                    RecordStatus::Running
                } else {
                    RecordStatus::Exited
                };
                r.exit_code = c.exit_code;
                r.image.clone_from(&c.image);
                r.port = c
                    .label(LABEL_PORT)
                    .and_then(|p| p.parse().ok())
                    .unwrap_or(crate::spec::DEFAULT_PORT);
                r.owned_volumes = label(LABEL_OWNED_VOLUMES)
                    .split(',')
                    .filter(|v| !v.is_empty())
                    .map(str::to_owned)
                    .collect();
                r.devices = label(LABEL_DEVICES)
                    .split(',')
                    .filter(|v| !v.is_empty())
                    .map(str::to_owned)
                    .collect();
            })
            .await
            .map(drop)
    }
}
