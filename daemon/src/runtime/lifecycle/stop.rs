//! Stop: graceful or immediate, optionally removing the container; idempotent.

use std::time::Duration;

use crate::docker::{ContainerEngine, ContainerInfo, LABEL_RESUMABLE, RunStatus};
use crate::key::ServerKey;
use crate::runtime::error::detached;
use crate::runtime::view::keys::Op;
use crate::runtime::view::{Applied, WatchKind};
use crate::runtime::{Error, Runtime, State, Status};
use crate::state::RecordStatus;

/// What a Stop asks for.
#[derive(Debug, Clone, Copy)]
pub struct StopSpec {
    /// Kill at once.
    pub now: bool,
    /// SIGTERM-to-SIGKILL grace; `None` = the node's default.
    pub grace: Option<Duration>,
    /// Delete the container afterwards.
    pub remove: bool,
}

impl<E: ContainerEngine> Runtime<E> {
    /// Ends container `c` of `key` as `spec` asks and takes the outcome into the view; returns
    /// its exit code.
    async fn halt(
        &self,
        key: &ServerKey,
        c: &ContainerInfo,
        spec: StopSpec,
    ) -> Result<Option<i64>, Error> {
        let engine = &self.inner.engine;
        if !matches!(c.status, RunStatus::Exited | RunStatus::Dead) {
            let halted = if spec.now {
                engine.kill(&c.id).await
            } else {
                let grace = spec.grace.unwrap_or(self.inner.cfg.stop_grace);
                engine.stop(&c.id, grace).await
            };
            if let Err(e) = halted {
                // It may have stopped all the same (the reply was lost): the view says
                // what Docker says before the error goes back.
                self.refresh(key).await;
                return Err(e.into());
            }
        }
        let seen = self.inner.view.generation(key);
        // The stop is done: reading its outcome is retried, or the view would keep a
        // stopped server running (and its slot and devices held) until the next relist.
        let after =
            crate::runtime::lifecycle::start::persist("inspect", || engine.inspect(&c.id)).await?;
        let exit_code = after.as_ref().and_then(|a| a.exit_code);
        if spec.remove && !crate::mutation::active("stop.skip_remove") {
            match engine.remove(&c.id).await {
                Ok(()) => {
                    self.inner.view.removed(key, &c.id);
                    return Ok(exit_code);
                }
                Err(e) => {
                    // Stopped but not removed: the view and record say stopped (so nothing
                    // stays held for it) before the error goes back.
                    self.take_stopped(key, c, after, seen).await;
                    self.save_stopped(key, c, false, exit_code).await?;
                    self.publish(key, WatchKind::Exited);
                    return Err(e.into());
                }
            }
        }
        self.take_stopped(key, c, after, seen).await;
        Ok(exit_code)
    }

    /// Takes stopped container `c` (as inspected `after` the stop) into the view, scrubbing a
    /// kept resumable one's secrets.
    async fn take_stopped(
        &self,
        key: &ServerKey,
        c: &ContainerInfo,
        after: Option<ContainerInfo>,
        seen: u64,
    ) {
        if c.label(LABEL_RESUMABLE) == Some("true")
            && after
                .as_ref()
                .is_some_and(|a| matches!(a.status, RunStatus::Exited | RunStatus::Dead))
        {
            // Kept: the spawn's internal_ssl key (and an env file a failed wrapper left)
            // must not outlive the spawn in the writable layer.
            self.scrub_secrets(key, &c.id).await;
        }
        if self.inner.view.apply(key, &c.id, after, seen) == Applied::Stale {
            self.refresh(key).await;
        }
    }

    /// Records the end of `key`'s container `c`: absent if `removed`, else exited.
    async fn save_stopped(
        &self,
        key: &ServerKey,
        c: &ContainerInfo,
        removed: bool,
        exit_code: Option<i64>,
    ) -> Result<(), Error> {
        if self.inner.view.get(key).is_none() {
            return Ok(());
        }
        self.inner
            .records
            .save(key, |r| {
                r.container_id.clone_from(&c.id);
                r.status = if removed {
                    RecordStatus::Absent
                } else {
                    RecordStatus::Exited
                };
                r.exit_code = exit_code;
            })
            .await
            .map(drop)
    }

    /// Stops `key`'s server. A Start under way is cancelled first. Stopping an absent or
    /// stopped server succeeds. Returns the status after the stop.
    pub async fn stop(&self, key: &ServerKey, spec: StopSpec) -> Result<Status, Error> {
        let rt = self.clone();
        let key = key.clone();
        // Like Start, a Stop runs to completion even if the caller goes away.
        detached("stop", async move {
            let began = std::time::Instant::now();
            let result = rt.stop_serialised(&key, spec).await;
            rt.inner.metrics.stop_done(began.elapsed(), result.is_ok());
            result
        })
        .await
    }

    async fn stop_serialised(&self, key: &ServerKey, spec: StopSpec) -> Result<Status, Error> {
        self.inner.keys.cancel_start(key);
        let guard = self.inner.keys.acquire(key, Op::Stopping).await;
        let Some(c) = self.container_of(key).await? else {
            drop(guard);
            if self.inner.view.get(key).is_some() {
                // The container is gone (removed outside berthd): the record says so now.
                self.refresh(key).await;
                self.inner
                    .records
                    .save(key, |r| r.status = RecordStatus::Absent)
                    .await?;
            }
            return Ok(self.poll(key));
        };
        let exit_code = self.halt(key, &c, spec).await?;
        self.save_stopped(key, &c, spec.remove, exit_code).await?;
        drop(guard);
        self.publish(
            key,
            if spec.remove {
                WatchKind::Removed
            } else {
                WatchKind::Exited
            },
        );
        let mut status = self.poll(key);
        tracing::info!(user = key.user(), server = key.server(), container = %c.id, exit_code = ?exit_code, removed = spec.remove, "server stopped");
        if spec.remove {
            // Keep the exit code: the hub may want to know how the server ended.
            status.state = State::Absent;
            status.exit_code = exit_code;
        }
        Ok(status)
    }
}
