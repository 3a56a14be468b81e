//! Stop: graceful or immediate, optionally removing the container; idempotent.

use std::time::Duration;

use super::error::detached;
use super::keys::Op;
use super::view::{Applied, WatchKind};
use super::{Error, Runtime, State, Status};
use crate::docker::{ContainerEngine, ContainerInfo, LABEL_RESUMABLE, RunStatus};
use crate::key::ServerKey;
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
            if spec.now {
                engine.kill(&c.id).await?;
            } else {
                let grace = spec.grace.unwrap_or(self.inner.cfg.stop_grace);
                engine.stop(&c.id, grace).await?;
            }
        }
        let seen = self.inner.view.generation(key);
        let after = engine.inspect(&c.id).await?;
        let exit_code = after.as_ref().and_then(|a| a.exit_code);
        if spec.remove {
            engine.remove(&c.id).await?;
            self.inner.view.removed(key, &c.id);
        } else {
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
        Ok(exit_code)
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
        if self.inner.view.get(key).is_some() {
            self.inner
                .records
                .save(key, |r| {
                    r.container_id.clone_from(&c.id);
                    r.status = if spec.remove {
                        RecordStatus::Absent
                    } else {
                        RecordStatus::Exited
                    };
                    r.exit_code = exit_code;
                })
                .await?;
        }
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
