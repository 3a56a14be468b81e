//! Docker's reports of containers taken into the view in order (see [`crate::runtime::view`]): an
//! inspect overtaken by a newer change is taken again, and the record follows the container.

use crate::docker::{ContainerEngine, ContainerInfo, RunStatus};
use crate::key::ServerKey;
use crate::runtime::Runtime;
use crate::runtime::error::Error;
use crate::runtime::view::{Applied, WatchKind};
use crate::state::RecordStatus;

/// How often an observation overtaken by a newer change is taken again.
const OBSERVE_ATTEMPTS: usize = 3;

impl<E: ContainerEngine> Runtime<E> {
    /// Makes the record follow the container: its id, and exited with its code.
    pub(in crate::runtime) async fn follow_record(&self, key: &ServerKey) {
        let Some(e) = self.inner.view.get(key) else {
            return;
        };
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
            e.record.status != RecordStatus::Starting
                && (e.record.status != RecordStatus::Exited || e.record.exit_code != code)
        });
        if !stale_id && !stale_exit {
            return;
        }
        let id = live_id.unwrap_or(e.record.container_id);
        let saved = self
            .inner
            .records
            .save(key, |r| {
                if r.container_id != id
                    && let Some(spawn) = adopted_spawn
                {
                    r.spawn_id = spawn;
                }
                r.container_id = id;
                // A record in STARTING belongs to its Start (or, after a crash, to the
                // reconcile that undoes it): an exit seen meanwhile must not make it look
                // like a server that ran and ended.
                if let Some(code) = exited.filter(|_| r.status != RecordStatus::Starting) {
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
    pub(in crate::runtime) async fn observe(
        &self,
        key: &ServerKey,
        container_id: &str,
        info: Option<ContainerInfo>,
        seen: u64,
        kind: WatchKind,
    ) -> Applied {
        let before = self.poll(key);
        let applied = self.inner.view.apply(key, container_id, info, seen);
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
    pub(in crate::runtime) async fn observe_fresh(
        &self,
        key: &ServerKey,
        id: Option<&str>,
        kind: WatchKind,
    ) {
        self.observe_fresh_with(key, id, kind, 0).await;
    }

    /// [`Runtime::observe_fresh`], trying a failed inspect up to `retries` more times after a
    /// doubling pause from 50 ms.
    async fn observe_fresh_with(
        &self,
        key: &ServerKey,
        id: Option<&str>,
        kind: WatchKind,
        mut retries: u32,
    ) {
        let mut pause = std::time::Duration::from_millis(50);
        let mut attempt = 0;
        while attempt < OBSERVE_ATTEMPTS {
            attempt += 1;
            let seen = self.inner.view.generation(key);
            let found = match id {
                Some(id) => self.inner.engine.inspect(id).await.map_err(Error::from),
                None => self.container_of(key).await,
            };
            let (about, info) = match found {
                Ok(Some(c)) => (c.id.clone(), Some(c)),
                Ok(None) => (
                    id.map(str::to_owned)
                        .or_else(|| self.inner.view.get(key).map(|e| e.record.container_id))
                        .unwrap_or_default(),
                    None,
                ),
                Err(e) if retries > 0 => {
                    tracing::debug!(user = key.user(), server = key.server(), error = %e, "cannot inspect a server's container; trying again");
                    retries -= 1;
                    attempt -= 1;
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                    continue;
                }
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

    /// Brings `key`'s view up to date with Docker after a lifecycle operation (an inspect,
    /// again if overtaken, and up to three more times if it fails: the operation's outcome
    /// must not wait for the next relist).
    pub(in crate::runtime) async fn refresh(&self, key: &ServerKey) {
        self.observe_fresh_with(key, None, WatchKind::Changed, 3)
            .await;
    }
}
