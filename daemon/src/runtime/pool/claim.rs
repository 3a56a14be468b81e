//! A Start claiming a warm member: the claim file first (from then on a restart never offers
//! the member again), the record, the rename to the server's name (the commit point), the
//! volumes, the resources and, last, the identity.

use std::path::PathBuf;

use tokio_util::sync::CancellationToken;

use super::{Member, crash_point, fit, identity};
use crate::docker::claimed::Claim;
use crate::docker::{ContainerEngine, EngineError, ImageInfo, Limits};
use crate::hostpath::Graft;
use crate::runtime::error::blocking;
use crate::runtime::lifecycle::resume;
use crate::runtime::progress::{Event, Phase, Reporter};
use crate::runtime::{Error, Runtime, Started};
use crate::spec::StartSpec;
use crate::state::RecordStatus;

/// How a claim failed.
enum Failed {
    /// Before the server had its identity: the member is removed and the spawn starts cold.
    Early(Error),
    /// The server, with its identity, failed as a cold one would (it exited, never answered).
    Late(Error),
}

impl<E: ContainerEngine> Runtime<E> {
    /// Takes a ready warm member for `spec` if its image and port have a pool and it fits;
    /// the caller passes it to [`Runtime::start_warm`] once admitted, or back with
    /// [`Runtime::return_warm`].
    pub(in crate::runtime) fn reserve_warm(&self, spec: &StartSpec) -> Option<Member> {
        let pools = self.inner.pool.configs();
        let pool = pools.iter().position(|p| {
            crate::spec::normalize_image(&p.image) == spec.image && p.port == spec.port
        })?;
        let can = fit::Can {
            graft: self.inner.cfg.graft,
        };
        if let Err(why) = fit::fits(spec, can) {
            tracing::info!(
                user = spec.key.user(),
                server = spec.key.server(),
                why,
                "a warm container waits for this image, but this start cannot take it"
            );
            return None;
        }
        let m = self.inner.pool.take(pool);
        if m.is_none() {
            tracing::info!(user = spec.key.user(), server = spec.key.server(), image = %spec.image, "no warm container is ready for this image; starting cold");
        }
        m
    }

    /// Puts back a member [`Runtime::reserve_warm`] took for a spawn that was not admitted.
    pub(in crate::runtime) fn return_warm(&self, m: Member) {
        self.inner.pool.add(m);
    }

    /// Serves `spec` from warm member `member` (admitted, so no longer held as warm); `None`
    /// when the claim failed before the server had its identity (the member is removed) or
    /// the member is of an older image: start cold. The caller holds the key.
    pub(in crate::runtime) async fn start_warm(
        &self,
        spec: &StartSpec,
        image: &ImageInfo,
        member: Member,
        progress: &Reporter,
        cancel: &CancellationToken,
    ) -> Option<Result<Started, Error>> {
        self.inner.pool.wake.notify_one();
        if member.image_id != image.id {
            tracing::info!(container = %member.id, image = %spec.image, "a warm container of an older image is removed; starting cold");
            self.discard_member(spec, &member.id).await;
            return None;
        }
        tracing::info!(user = spec.key.user(), server = spec.key.server(), container = %member.id, "claiming a warm container");
        match self.claim(spec, image, &member, progress, cancel).await {
            Ok(started) => Some(Ok(started)),
            Err(Failed::Late(e)) => Some(Err(e)),
            Err(Failed::Early(e)) => {
                tracing::warn!(user = spec.key.user(), server = spec.key.server(), container = %member.id, error = %e, "claim failed; the warm container is removed and the server starts cold");
                self.discard_member(spec, &member.id).await;
                None
            }
        }
    }

    async fn claim(
        &self,
        spec: &StartSpec,
        image: &ImageInfo,
        m: &Member,
        progress: &Reporter,
        cancel: &CancellationToken,
    ) -> Result<Started, Failed> {
        let engine = &self.inner.engine;
        progress.emit(Event::new(
            Phase::Starting,
            40,
            "Your server was ready and waiting: handing it to you.",
        ));
        let mut pins = self.pin_host_paths(spec).await.map_err(Failed::Early)?;
        self.prepare_volumes(spec).await.map_err(Failed::Early)?;
        let mut grafts: Vec<Graft> = Vec::new();
        for (index, v) in spec.volumes.iter().enumerate() {
            let volume = if v.host_path {
                None
            } else {
                Some((v.name.clone(), self.volume_dir(&v.name).await?))
            };
            grafts.push(Graft {
                index,
                volume,
                target: v.target.clone(),
                read_only: v.read_only,
            });
        }
        let claim = Claim {
            labels: self.server_labels(spec, &[]),
            volumes: spec
                .volumes
                .iter()
                .filter(|v| !v.host_path)
                .map(|v| v.name.clone())
                .collect(),
        };
        engine
            .book()
            .put(&m.id, claim)
            .map_err(|e| Failed::Early(e.into()))?;
        crash_point("claim.claimed");
        self.record_spawn(spec, &[], &m.id)
            .await
            .map_err(Failed::Early)?;
        crash_point("claim.recorded");
        let name = spec.key.container_name();
        engine.rename(&m.id, &name).await.map_err(|e| {
            Failed::Early(match e {
                EngineError::Conflict { .. } => Error::NameTaken { name: name.clone() },
                other => other.into(),
            })
        })?;
        crash_point("claim.renamed");
        let c = engine
            .inspect(&m.id)
            .await
            .map_err(|e| Failed::Early(e.into()))?
            .filter(|c| c.status == crate::docker::RunStatus::Running)
            .ok_or_else(|| Failed::Early(Error::Internal("the warm container stopped".into())))?;
        if !grafts.is_empty() {
            let pid = c.pid.unwrap_or(0);
            let pinner = self.pinner();
            pins = blocking("graft", move || {
                pinner.graft(&mut pins, pid, &grafts).map(|()| pins)
            })
            .await
            .map_err(Failed::Early)?
            .map_err(|e| Failed::Early(e.into()))?;
        }
        // The container's mount namespace holds its own copy now.
        drop(pins);
        crash_point("claim.grafted");
        let limits = resume::Limits::of(spec);
        let some = |v: i64| (v > 0).then_some(v);
        engine
            .update_limits(
                &m.id,
                Limits {
                    memory: some(limits.memory),
                    memory_reservation: some(limits.memory_reservation),
                    nano_cpus: some(limits.nano_cpus),
                    cpu_shares: some(limits.cpu_shares),
                },
            )
            .await
            .map_err(|e| Failed::Early(e.into()))?;
        // The command a cold container of this spawn would run.
        let cmd = match (spec.cmd.is_empty(), spec.args.is_empty()) {
            (true, _) => image.cmd.iter().chain(&spec.args),
            (false, _) => spec.cmd.iter().chain(&spec.args),
        };
        let argv: Vec<String> = image.entrypoint.iter().chain(cmd).cloned().collect();
        engine
            .send_stdin(&m.id, identity(spec.env.entries(), &argv))
            .await
            .map_err(|e| Failed::Early(e.into()))?;
        crash_point("claim.sent");
        tracing::info!(user = spec.key.user(), server = spec.key.server(), container = %m.id, "warm container claimed");
        let started = self
            .await_ready(spec, &c, progress, cancel)
            .await
            .map_err(Failed::Late)?;
        Ok(started)
    }

    /// The directory of local volume `name` (made first, as Docker makes a missing named
    /// volume at create), to mount into a running container.
    async fn volume_dir(&self, name: &str) -> Result<PathBuf, Failed> {
        let engine = &self.inner.engine;
        let early = |e: EngineError| Failed::Early(e.into());
        let mut info = engine.volume(name).await.map_err(early)?;
        if info.is_none() {
            let new = crate::docker::NewVolume {
                name: name.to_owned(),
                ..Default::default()
            };
            engine.create_volume(&new).await.map_err(early)?;
            info = engine.volume(name).await.map_err(early)?;
        }
        info.filter(|i| i.driver == "local" && i.options.is_empty() && !i.mountpoint.is_empty())
            .map(|i| PathBuf::from(i.mountpoint))
            .ok_or_else(|| {
                Failed::Early(Error::Internal(format!(
                    "volume {name} has no directory on this node to mount"
                )))
            })
    }

    /// Removes member `id` after a claim that failed early, and undoes its record.
    pub(in crate::runtime) async fn discard_member(&self, spec: &StartSpec, id: &str) {
        if let Err(e) = self.inner.engine.remove(id).await {
            tracing::error!(container = %id, error = %e, "cannot remove a warm container whose claim failed; the next restart removes it");
        }
        self.inner.view.removed(&spec.key, id);
        let id = id.to_owned();
        let saved = self.inner.records.save(&spec.key, move |r| {
            if r.container_id == id {
                r.container_id.clear();
                r.status = RecordStatus::Absent;
            }
        });
        if let Err(e) = saved.await {
            tracing::error!(user = spec.key.user(), server = spec.key.server(), error = %e, "cannot record the end of a failed claim");
        }
    }
}
