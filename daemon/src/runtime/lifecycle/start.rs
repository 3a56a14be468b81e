//! Start: idempotent by spawn id, serialised per key, done when the server answers HTTP.

use std::collections::HashMap;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::devices::DeviceRef;
use crate::docker::{
    ContainerEngine, ContainerInfo, ContainerSpec, EngineError, ImageInfo, LABEL_DEVICES,
    LABEL_FINGERPRINT, LABEL_HOST_NETWORK, LABEL_MANAGED, LABEL_NODE, LABEL_OWNED_VOLUMES,
    LABEL_PORT, LABEL_RESUMABLE, LABEL_SERVER, LABEL_SPAWN_ID, LABEL_SPEC_HASH, LABEL_USER, Mount,
    RunStatus,
};
use crate::hostpath::{self, HostPathError, PinSet, Wanted};
use crate::key::ServerKey;
use crate::runtime::error::{blocking, detached};
use crate::runtime::lifecycle::ready;
use crate::runtime::lifecycle::resume::{self, Limits};
use crate::runtime::progress::boot_times;
use crate::runtime::progress::{Event, Phase, Reporter};
use crate::runtime::view::WatchKind;
use crate::runtime::view::keys::Op;
use crate::runtime::{Error, Runtime, Started, exit_reason};
use crate::spec::StartSpec;
use crate::state::RecordStatus;

/// The bar's share of a booting server: from here ...
const BOOT_FROM: u8 = 60;
/// ... toward here, never reached (the hub ends the bar at 100 once the server answers).
const BOOT_TO: u8 = 95;
/// How often the bar moves while the server boots.
const BOOT_TICK: std::time::Duration = std::time::Duration::from_millis(500);

/// A pinned host path and where the container mounts it.
type Pins = PinSet;

impl<E: ContainerEngine> Runtime<E> {
    /// Starts the server of `spec` and returns once it answers HTTP. The work runs in its own
    /// task, so a caller that gives up (hub timeout, dropped connection) never leaves a spawn
    /// half done; a retry with the same spawn id joins the result.
    pub async fn start(&self, spec: StartSpec) -> Result<Started, Error> {
        // Before anything else, even for a retry: the policy may have changed.
        self.inner.cfg.policy.check(&spec)?;
        let spec = self.inner.cfg.policy.with_defaults(spec);
        // The work runs in its own task, so a caller that gives up never leaves a spawn half
        // done; a retry with the same spawn id within the grace joins it, else it is cancelled
        // and what it made removed (`callers.rs`).
        let caller = self.inner.callers.arrive(&spec.key, &spec.spawn_id);
        let abandoned = caller.abandoned();
        let rt = self.clone();
        let result = detached("start", async move {
            let began = std::time::Instant::now();
            let result = rt.start_serialised(spec, abandoned).await;
            rt.inner.metrics.spawn_done(began.elapsed(), result.is_ok());
            result
        })
        .await;
        caller.answered();
        result
    }

    async fn start_serialised(
        &self,
        spec: StartSpec,
        abandoned: CancellationToken,
    ) -> Result<Started, Error> {
        let progress = self.inner.progress.begin(&spec.key, &spec.spawn_id);
        let guard = tokio::select! {
            g = self.inner.keys.acquire(&spec.key, Op::Starting) => g,
            () = abandoned.cancelled() => {
                let e = Error::Cancelled { key: spec.key.clone() };
                progress.failed(e.reason(), &e.to_string());
                return Err(e);
            }
        };
        // Abandonment cancels the spawn as a Stop would: the pull it follows, its wait for a
        // slot, its wait for HTTP.
        let token = guard.token().clone();
        let link = tokio::spawn({
            let token = token.clone();
            let abandoned = abandoned.clone();
            async move {
                abandoned.cancelled().await;
                token.cancel();
            }
        });
        let mut result = self.start_locked(&spec, &progress, &token).await;
        link.abort();
        if let Err(e) = &result {
            // A Stop that cancelled the Start deals with the container itself, as it asks
            // (kept or removed); every other failure is cleaned up here.
            let by_stop = matches!(e, Error::Cancelled { .. }) && !abandoned.is_cancelled();
            if !by_stop {
                self.clean_up_failed(&spec, e).await;
            }
        }
        self.settle_outcome(&spec.key).await;
        if result.is_ok()
            && let Err(e) = self.hand_over(&spec, &abandoned).await
        {
            // Nobody will receive the answer: the server must not run for no one.
            if matches!(e, Error::Cancelled { .. }) {
                self.clean_up_spawn(&spec.key, &spec.spawn_id).await;
                self.settle_outcome(&spec.key).await;
            }
            result = Err(e);
        }
        drop(guard);
        self.publish(
            &spec.key,
            if result.is_ok() {
                WatchKind::Ready
            } else {
                WatchKind::Changed
            },
        );
        match &result {
            Ok(s) => {
                tracing::info!(user = spec.key.user(), server = spec.key.server(), container = %s.container_id, url = %s.url, "server ready");
                progress.ready(&s.url);
            }
            Err(e) => {
                tracing::warn!(user = spec.key.user(), server = spec.key.server(), reason = e.reason(), error = %e, "start failed");
                progress.failed(e.reason(), &e.to_string());
            }
        }
        result
    }

    /// Takes a Start's outcome into the view before the key is released (or a Poll in between
    /// would see a record without its container), then hands the admitted share over to the
    /// container, or frees it.
    async fn settle_outcome(&self, key: &ServerKey) {
        self.refresh(key).await;
        self.inner.admission.release(key);
        self.settle_devices(key).await;
        self.inner.view.capacity_changed();
    }

    /// Makes a spawn that succeeded RUNNING for a caller that waits for it: the record says
    /// RUNNING only once a caller waits (until then it stays STARTING, which a reconcile after a
    /// crash undoes), and from the last check that a caller waits until the answer is handed
    /// over there is no await, so an answer is either received or undone. `Cancelled` when
    /// nobody wants it any more.
    async fn hand_over(
        &self,
        spec: &StartSpec,
        abandoned: &CancellationToken,
    ) -> Result<(), Error> {
        let set = |status| {
            self.inner
                .records
                .save(&spec.key, move |r| r.status = status)
        };
        loop {
            if crate::mutation::active("start.ignore_abandon") {
                return set(RecordStatus::Running).await.map(drop);
            }
            if !self.answer_wanted(spec, abandoned).await {
                return Err(Error::Cancelled {
                    key: spec.key.clone(),
                });
            }
            set(RecordStatus::Running).await?;
            let callers = &self.inner.callers;
            if callers.waiting(&spec.key, &spec.spawn_id) > 0
                || (!abandoned.is_cancelled() && !callers.tracks(&spec.key, &spec.spawn_id))
            {
                return Ok(());
            }
            // The caller left while the record was written: STARTING again until a retry.
            set(RecordStatus::Starting).await?;
        }
    }

    /// Whether anyone will receive the answer of a spawn that succeeded: a caller waits now,
    /// or a retry arrives before the spawn is abandoned. The key stays held (the server reads
    /// STARTING) meanwhile, so a retry carries on from here.
    async fn answer_wanted(&self, spec: &StartSpec, abandoned: &CancellationToken) -> bool {
        let callers = &self.inner.callers;
        let limit = tokio::time::Instant::now() + callers.grace() + ANSWER_MARGIN;
        loop {
            if callers.waiting(&spec.key, &spec.spawn_id) > 0 {
                return true;
            }
            if abandoned.is_cancelled() {
                return false;
            }
            if !callers.tracks(&spec.key, &spec.spawn_id) {
                // Answered to a retry and forgotten: nothing is left to cancel.
                return true;
            }
            if tokio::time::Instant::now() >= limit {
                // The grace passed without the spawn being abandoned: a retry came and got
                // its answer (or the table forgot the spawn); keep the server.
                return true;
            }
            tokio::select! {
                () = abandoned.cancelled() => {}
                () = tokio::time::sleep(ANSWER_POLL) => {}
            }
        }
    }

    /// What a failed Start leaves: nothing of a container this spawn made (its last output is
    /// already in the error), which frees its devices; a kept container it resumed stays,
    /// stopped, without the spawn's secrets. A container of another spawn is not touched.
    async fn clean_up_failed(&self, spec: &StartSpec, e: &Error) {
        if matches!(e, Error::AlreadyRunning { .. } | Error::NameTaken { .. }) {
            return;
        }
        self.clean_up_spawn(&spec.key, &spec.spawn_id).await;
    }

    /// Undoes what spawn `spawn_id` of `key` left: its own container removed, a container it
    /// resumed stopped and scrubbed. Each Docker call is retried ([`persist`]): a passing
    /// hiccup must not leave a container, a device or a secret behind. The caller holds the
    /// key.
    pub(in crate::runtime) async fn clean_up_spawn(&self, key: &ServerKey, spawn_id: &str) {
        let engine = &self.inner.engine;
        let name = key.container_name();
        let c = match persist("inspect", || engine.inspect(&name)).await {
            Ok(Some(c)) if crate::runtime::is_container_of(&c, key) => c,
            Ok(_) => return,
            Err(e) => {
                tracing::error!(user = key.user(), server = key.server(), error = %e, "cannot inspect the container of a failed start; the next reconcile settles it");
                return;
            }
        };
        let made_here = c.label(LABEL_SPAWN_ID) == Some(spawn_id);
        let resumed_here =
            !made_here
                && self.inner.view.get(key).is_some_and(|r| {
                    r.record.container_id == c.id && r.record.spawn_id == spawn_id
                });
        let (user, server) = (key.user(), key.server());
        if made_here {
            match persist("remove", || engine.remove(&c.id)).await {
                Ok(()) => {
                    self.inner.view.removed(key, &c.id);
                    let saved = self.inner.records.save(key, |r| {
                        r.container_id.clear();
                        r.status = RecordStatus::Absent;
                        r.exit_code =
                            c.exit_code.filter(|_| c.started_at.is_some()).or_else(|| {
                                crate::mutation::active("start.exit_code_of_unstarted").then_some(0)
                            });
                        r.devices.clear();
                    });
                    if let Err(e) = saved.await {
                        tracing::error!(user, server, error = %e, "cannot record the removal of a failed start's container");
                    }
                    tracing::info!(user, server, container = %c.id, "removed the container of a failed start");
                }
                Err(rm) => {
                    tracing::error!(user, server, container = %c.id, error = %rm, "cannot remove the container of a failed start; the next reconcile tries again");
                }
            }
        } else if resumed_here {
            if matches!(
                c.status,
                RunStatus::Running | RunStatus::Paused | RunStatus::Restarting
            ) && let Err(k) = persist("kill", || engine.kill(&c.id)).await
            {
                tracing::error!(user, server, container = %c.id, error = %k, "cannot stop a resumed server whose start failed");
            }
            let saved = self
                .inner
                .records
                .save(key, |r| r.status = RecordStatus::Exited);
            if let Err(e) = saved.await {
                tracing::error!(user, server, error = %e, "cannot record the end of a failed resume");
            }
            self.scrub_secrets(key, &c.id).await;
        }
    }

    /// Overwrites the per-spawn files (env, internal_ssl key) of kept container `id` with
    /// empty ones, so no secret of a spawn outlives it in the container's writable layer.
    pub(in crate::runtime) async fn scrub_secrets(&self, key: &ServerKey, id: &str) {
        let files = resume::scrubbed();
        let engine = &self.inner.engine;
        if let Err(e) = persist("put_files", || engine.put_files(id, &files)).await {
            tracing::error!(user = key.user(), server = key.server(), container = %id, error = %e, "cannot scrub the spawn's secrets from a kept container");
        }
    }

    async fn start_locked(
        &self,
        spec: &StartSpec,
        progress: &Reporter,
        cancel: &CancellationToken,
    ) -> Result<Started, Error> {
        let mut note = String::new();
        if let Some(c) = self.container_of(&spec.key).await?
            && let Some(done) = self.carry_on(spec, c, progress, cancel, &mut note).await
        {
            return done;
        }
        let warm = self.reserve_warm(spec);
        let claiming = warm.as_ref().map(|m| m.id.as_str());
        if let Err(e) = self
            .inner
            .admission
            .admit_claiming(&self.inner.view, spec, claiming)
        {
            if let Some(m) = warm {
                self.return_warm(m);
            }
            return Err(e);
        }
        self.inner.view.capacity_changed();
        let before = async {
            let devices = self.assign_devices(spec).await?;
            self.inner.view.capacity_changed();
            let image = self.ensure_image(spec, progress, cancel).await?;
            Ok::<_, Error>((devices, image))
        };
        let (devices, image) = match before.await {
            Ok(got) => got,
            Err(e) => {
                if let Some(m) = warm {
                    // Taken from the pool for this spawn, which failed: never handed to another.
                    self.discard_member(spec, &m.id).await;
                }
                return Err(e);
            }
        };
        self.inner.image_use.note(&image.id, true);
        if let Some(m) = warm
            && let Some(done) = self.start_warm(spec, &image, m, progress, cancel).await
        {
            return done.map(|started| Started { note, ..started });
        }
        let slot = match self.inner.admission.slot_now() {
            Some(slot) => slot,
            None => {
                let ahead = self.inner.admission.queued();
                let message = match ahead {
                    0 => "Waiting for a free slot.".to_owned(),
                    n => format!("Waiting for a free slot ({n} ahead of you)."),
                };
                progress.emit(Event::new(Phase::Queued, 5, message));
                tokio::select! {
                    slot = self.inner.admission.slot() => slot?,
                    () = cancel.cancelled() => return Err(Error::Cancelled { key: spec.key.clone() }),
                }
            }
        };
        // Host paths are resolved and pinned, and volumes checked and made, before the
        // container is created: a refusal leaves no container behind, and what Docker mounts
        // is what was checked.
        let pins = self.pin_host_paths(spec).await?;
        self.prepare_volumes(spec).await?;
        self.prepare_network(spec).await?;
        progress.emit(Event::new(Phase::Creating, 20, "Preparing your server."));
        let id = self.create(spec, &image, &devices, &pins).await?;
        let started = self
            .launch(spec, &id, progress, cancel, Some(slot), pins)
            .await?;
        Ok(Started { note, ..started })
    }

    /// What to do with the key's existing container `c`: finish a retried spawn that got this
    /// far, or clear the way for a new one (`None`: go on and create).
    async fn carry_on(
        &self,
        spec: &StartSpec,
        c: ContainerInfo,
        progress: &Reporter,
        cancel: &CancellationToken,
        note: &mut String,
    ) -> Option<Result<Started, Error>> {
        let recorded = self.inner.view.get(&spec.key);
        // A resumed container keeps the spawn id label of the spawn that made it; the
        // record names the spawn that runs it now.
        let same_spawn = c.label(LABEL_SPAWN_ID) == Some(spec.spawn_id.as_str())
            || recorded.as_ref().is_some_and(|e| {
                e.record.container_id == c.id && e.record.spawn_id == spec.spawn_id
            });
        if recorded.is_none_or(|e| e.record.container_id != c.id) {
            // The record lost track of this container (e.g. a crash right after create).
            let id = c.id.clone();
            let spawn = c.label(LABEL_SPAWN_ID).unwrap_or_default().to_owned();
            let saved = self.inner.records.save(&spec.key, |r| {
                r.container_id = id;
                r.spawn_id = spawn;
            });
            if let Err(e) = saved.await {
                return Some(Err(e));
            }
        }
        Some(match (same_spawn, c.status) {
            // A retry of a spawn that got this far: carry on from where it is.
            (true, RunStatus::Running) => self.await_ready(spec, &c, progress, cancel).await,
            (true, RunStatus::Created) => match self.pin_host_paths(spec).await {
                Ok(pins) => self.launch(spec, &c.id, progress, cancel, None, pins).await,
                Err(e) => Err(self.discard_unstarted(&spec.key, &c.id, e).await),
            },
            (true, RunStatus::Exited | RunStatus::Dead) => Err(self.exited_error(spec, &c).await),
            (false, RunStatus::Exited | RunStatus::Dead | RunStatus::Created) => {
                return self.resume_or_clear(spec, &c, progress, cancel, note).await;
            }
            _ => Err(Error::AlreadyRunning {
                key: spec.key.clone(),
                spawn_id: c.label(LABEL_SPAWN_ID).unwrap_or_default().to_owned(),
            }),
        })
    }

    /// Writes the spawn's record, then creates its container; the record is durable before
    /// the container exists, so a crash from here on leaves a record to reconcile against,
    /// never an unaccounted container.
    async fn create(
        &self,
        spec: &StartSpec,
        image: &ImageInfo,
        devices: &[DeviceRef],
        pins: &Pins,
    ) -> Result<String, Error> {
        let engine = &self.inner.engine;
        let container = self.container_spec(spec, image, devices, pins);
        self.record_spawn(spec, devices, "").await?;
        let id = match engine.create(&container).await {
            Ok(id) => id,
            // Someone else created a container of this name between our inspect and create.
            Err(EngineError::Conflict { .. }) => {
                return Err(Error::NameTaken {
                    name: container.name,
                });
            }
            Err(e) => return Err(e.into()),
        };
        tracing::info!(user = spec.key.user(), server = spec.key.server(), container = %id, image = %spec.image, "container created");
        let saved = self
            .inner
            .records
            .save(&spec.key, |r| r.container_id.clone_from(&id))
            .await;
        if let Err(e) = saved {
            // Without its id in the record the container must not run; take it back.
            return Err(self.discard_unstarted(&spec.key, &id, e).await);
        }
        Ok(id)
    }

    /// Writes the record of spawn `spec` (STARTING, with `container_id`, "" before create),
    /// durable before its container exists or is claimed.
    pub(in crate::runtime) async fn record_spawn(
        &self,
        spec: &StartSpec,
        devices: &[DeviceRef],
        container_id: &str,
    ) -> Result<(), Error> {
        let owned = owned_volumes(spec);
        self.inner
            .records
            .save(&spec.key, |r| {
                r.spawn_id.clone_from(&spec.spawn_id);
                r.spec_hash = spec.spec_hash();
                container_id.clone_into(&mut r.container_id);
                r.status = RecordStatus::Starting;
                r.exit_code = None;
                r.image.clone_from(&spec.image);
                r.port = spec.port;
                r.started_ms = crate::state::now_ms();
                r.fence_after_seconds = spec.fence.to_record();
                r.fenced = false;
                r.devices = devices.iter().map(DeviceRef::encode).collect();
                r.volumes = spec
                    .volumes
                    .iter()
                    .filter(|v| !v.host_path)
                    .map(|v| v.name.clone())
                    .collect();
                for v in owned {
                    if !r.owned_volumes.contains(&v) {
                        r.owned_volumes.push(v);
                    }
                }
            })
            .await
            .map(drop)
    }

    /// Who pins this node's host paths (and grafts into claimed warm containers).
    pub(in crate::runtime) fn pinner(&self) -> crate::hostpath::Pinner {
        let cfg = &self.inner.cfg;
        cfg.hostpaths.pinner(
            &cfg.policy.allowed_host_path_roots,
            cfg.policy.new_dir(),
            &cfg.state_dir,
        )
    }

    /// Resolves every host path of `spec` beneath its allowed root (making a templated one on
    /// first use) and pins it at its staging path, and checks its devices; off the async
    /// threads, as a network filesystem may be slow.
    pub(in crate::runtime) async fn pin_host_paths(&self, spec: &StartSpec) -> Result<Pins, Error> {
        let devices = spec.host.devices.clone();
        let wanted: Vec<Wanted> = spec
            .volumes
            .iter()
            .enumerate()
            .filter(|(_, v)| v.host_path)
            .map(|(index, v)| Wanted {
                index,
                path: v.name.clone(),
                target: v.target.clone(),
                make: v.per_user || v.per_server,
            })
            .collect();
        if wanted.is_empty() && devices.is_empty() {
            return Ok(PinSet::default());
        }
        let pinner = self.pinner();
        let name = spec.key.container_name();
        let pinned = blocking("host path", move || -> Result<Pins, HostPathError> {
            for d in &devices {
                hostpath::check_device(d)?;
            }
            pinner.pin_all(&name, wanted)
        })
        .await??;
        Ok(pinned)
    }

    /// Removes container `id`, which never started, because its spawn failed with `e`.
    async fn discard_unstarted(&self, key: &ServerKey, id: &str, e: Error) -> Error {
        match self.inner.engine.remove(id).await {
            Ok(()) => self.inner.view.removed(key, id),
            Err(rm) => {
                tracing::warn!(container = %id, error = %rm, "cannot remove a container that never started");
            }
        }
        e
    }

    /// Whether the running container `c` sees every pinned inode at its target; a container
    /// that does not is killed.
    async fn verify_pins(&self, c: &ContainerInfo, pins: Pins) -> Result<Pins, Error> {
        if pins.is_empty() || !matches!(c.status, RunStatus::Running | RunStatus::Paused) {
            // Not running (it crashed at once): it sees nothing; the exit is reported instead.
            return Ok(pins);
        }
        // A running container without a process id cannot be checked: fail closed (0).
        let pid = c.pid.unwrap_or(0);
        let (pins, verified) = blocking("host path check", move || {
            let mut pins = pins;
            let verified = pins.verify(pid);
            (pins, verified)
        })
        .await?;
        if let Err(e) = verified {
            if let Err(kill) = self.inner.engine.kill(&c.id).await {
                tracing::error!(container = %c.id, error = %kill, "cannot kill a container whose mount is not the checked path");
            }
            return Err(e.into());
        }
        Ok(pins)
    }

    /// Starts created container `id` and waits until it answers.
    pub(in crate::runtime) async fn launch(
        &self,
        spec: &StartSpec,
        id: &str,
        progress: &Reporter,
        cancel: &CancellationToken,
        slot: Option<tokio::sync::OwnedSemaphorePermit>,
        pins: Pins,
    ) -> Result<Started, Error> {
        if cancel.is_cancelled() {
            return Err(Error::Cancelled {
                key: spec.key.clone(),
            });
        }
        progress.emit(Event::new(Phase::Starting, 40, "Starting your server."));
        let engine = &self.inner.engine;
        if spec.resumable {
            engine.put_files(id, &resume::env_files(&spec.env)).await?;
        }
        if let Some(certs) = &spec.internal_ssl {
            engine.put_files(id, &resume::cert_files(certs)).await?;
        }
        let started = engine.start(id).await;
        // The slot bounds Docker work; waiting for HTTP needs none.
        drop(slot);
        if let Err(e) = started {
            return Err(match e {
                EngineError::Api { message, .. } => Error::StartRefused {
                    key: spec.key.clone(),
                    message: with_shell_hint(spec, message),
                },
                other => other.into(),
            });
        }
        let c = engine
            .inspect(id)
            .await?
            .ok_or_else(|| Error::Internal(format!("container {id} vanished right after start")))?;
        let pins = self.verify_pins(&c, pins).await?;
        // The container's mount namespace holds its own copy now; the pins can go.
        drop(pins);
        let started = self.await_ready(spec, &c, progress, cancel).await?;
        self.post_start(spec, id, progress).await;
        Ok(started)
    }

    /// Probes the running container until it answers HTTP; fails at once when it exits.
    pub(in crate::runtime) async fn await_ready(
        &self,
        spec: &StartSpec,
        c: &ContainerInfo,
        progress: &Reporter,
        cancel: &CancellationToken,
    ) -> Result<Started, Error> {
        if matches!(c.status, RunStatus::Exited | RunStatus::Dead) {
            return Err(self.exited_error(spec, c).await);
        }
        let host_port = c.host_port(spec.port).ok_or_else(|| {
            Error::Internal(format!(
                "container {} publishes no host port for {}",
                c.id, spec.port
            ))
        })?;
        let url = self.url_for(host_port);
        let boot_began = Instant::now();
        progress.emit(Event::new(
            Phase::WaitingForHttp,
            BOOT_FROM,
            "Your server is starting up.",
        ));
        let cfg = &self.inner.cfg;
        let timeout = spec
            .ready_timeout
            .unwrap_or(cfg.default_ready_timeout)
            .min(cfg.max_ready_timeout);
        let deadline = Instant::now() + timeout;
        let exited = async {
            match self.inner.engine.wait_exit(&c.id).await {
                Ok(code) => code,
                Err(e) => {
                    // Without the wait we still have the deadline; do not fail the spawn for it.
                    tracing::warn!(container = %c.id, error = %e, "cannot watch the container for exit");
                    std::future::pending().await
                }
            }
        };
        tokio::select! {
            ok = ready::wait_ready(self.probe_addr(host_port), &spec.ready_path, ready::Scheme::of(spec.internal_ssl.as_ref()), deadline) => {
                if ok {
                    self.inner.boot_times.record(&spec.image, boot_began.elapsed());
                    Ok(Started { url, container_id: c.id.clone(), spawn_id: spec.spawn_id.clone(), note: String::new() })
                } else {
                    if let Err(e) = self.inner.engine.kill(&c.id).await {
                        tracing::warn!(container = %c.id, error = %e, "cannot kill a server that never became ready");
                    }
                    Err(Error::ReadyTimeout { key: spec.key.clone(), url, path: spec.ready_path.clone(), after: timeout })
                }
            }
            _ = exited => {
                let c = self.inner.engine.inspect(&c.id).await?.unwrap_or_else(|| c.clone());
                Err(self.exited_error(spec, &c).await)
            }
            () = cancel.cancelled() => Err(Error::Cancelled { key: spec.key.clone() }),
            never = self.tick_boot(&spec.image, boot_began, progress) => match never {},
        }
    }

    /// Moves the bar while the server boots, measured against the image's recent boots on
    /// this node; never ends (the caller's other branches do).
    async fn tick_boot(
        &self,
        image: &str,
        began: Instant,
        progress: &Reporter,
    ) -> std::convert::Infallible {
        let expected = self.inner.boot_times.expected(image);
        let bar_expects = expected.unwrap_or(boot_times::DEFAULT_EXPECTED);
        let mut last = (BOOT_FROM, String::new());
        loop {
            tokio::time::sleep(BOOT_TICK).await;
            let elapsed = began.elapsed();
            let now = (
                boot_times::percent(elapsed, bar_expects, BOOT_FROM, BOOT_TO),
                boot_times::message(elapsed, expected),
            );
            if now != last {
                progress.emit(Event::tick(Phase::WaitingForHttp, now.0, now.1.clone()));
                last = now;
            }
        }
    }

    async fn exited_error(&self, spec: &StartSpec, c: &ContainerInfo) -> Error {
        let exit_code = c.exit_code.unwrap_or(-1);
        if !c.error.is_empty() && exit_code != 0 && c.started_at.is_none() {
            return Error::StartRefused {
                key: spec.key.clone(),
                message: with_shell_hint(spec, c.error.clone()),
            };
        }
        let lines = self
            .last_lines(&c.id, self.inner.cfg.failure_log_lines)
            .await;
        let mut output = if lines.is_empty() {
            String::new()
        } else {
            format!("; last output:\n{}", lines.join("\n"))
        };
        if spec.resumable && exit_code == 127 {
            output.push_str(SHELL_HINT);
        }
        Error::ExitedDuringStart {
            key: spec.key.clone(),
            exit_code,
            reason: exit_reason(exit_code, c.oom_killed),
            output,
        }
    }

    /// The labels of `spec`'s server (the spec's own, then berth's), but those of a kept
    /// container: what a cold container has, and what a claimed warm one answers with.
    pub(in crate::runtime) fn server_labels(
        &self,
        spec: &StartSpec,
        devices: &[DeviceRef],
    ) -> HashMap<String, String> {
        let mut labels: HashMap<String, String> = spec.labels.clone().into_iter().collect();
        for (k, v) in [
            (LABEL_MANAGED, "true"),
            (LABEL_USER, spec.key.user()),
            (LABEL_SERVER, spec.key.server()),
            (LABEL_NODE, &self.inner.cfg.node_id),
            (LABEL_SPAWN_ID, &spec.spawn_id),
            (LABEL_SPEC_HASH, &spec.spec_hash()),
            (LABEL_PORT, &spec.port.to_string()),
            (LABEL_OWNED_VOLUMES, &owned_volumes(spec).join(",")),
            (
                LABEL_DEVICES,
                &devices
                    .iter()
                    .map(DeviceRef::encode)
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            (
                LABEL_HOST_NETWORK,
                if spec.host.host_network {
                    "true"
                } else {
                    "false"
                },
            ),
        ] {
            labels.insert(k.to_owned(), v.to_owned());
        }
        labels
    }

    // Long: a field-by-field translation of the spec into the engine's, clearer whole.
    fn container_spec(
        &self,
        spec: &StartSpec,
        image: &ImageInfo,
        devices: &[DeviceRef],
        pins: &Pins,
    ) -> ContainerSpec {
        let cmd = match (spec.cmd.is_empty(), spec.args.is_empty()) {
            (true, true) => None,
            (true, false) => Some(image.cmd.iter().chain(&spec.args).cloned().collect()),
            (false, _) => Some(spec.cmd.iter().chain(&spec.args).cloned().collect()),
        };
        let mut labels = HashMap::new();
        let cfg = &self.inner.cfg;
        let host_ip = cfg.publish_host_ip.to_string();
        // A resumable container gets its per-spawn env from a file at every start (see
        // `resume.rs`): a wrapper in front of the image's own entrypoint and command.
        let (entrypoint, cmd, env) = if spec.resumable {
            let argv: Vec<String> = image
                .entrypoint
                .iter()
                .chain(cmd.as_ref().unwrap_or(&image.cmd))
                .cloned()
                .collect();
            let (entrypoint, argv) = resume::wrapped(argv);
            let fingerprint = resume::Fingerprint::of(spec, &image.id, &host_ip);
            labels.insert(LABEL_RESUMABLE.to_owned(), "true".to_owned());
            labels.insert(LABEL_FINGERPRINT.to_owned(), fingerprint.to_label());
            let env = spec.env.filtered(|k| {
                !resume::is_per_spawn(k) || crate::mutation::active("resume.secret_in_config")
            });
            (Some(entrypoint), Some(argv), env.to_docker())
        } else {
            (None, cmd, spec.env.to_docker())
        };
        labels.extend(self.server_labels(spec, devices));
        let passing = self.inner.devices.passing(devices);
        let mut host = spec.host.clone();
        host.devices.extend(passing.paths);
        // The env chosen above: a resumable container's never holds the per-spawn variables.
        let mut env = env;
        if let Some(v) = passing.visible {
            let prefix = format!("{}=", crate::devices::NVIDIA_VISIBLE_DEVICES);
            env.retain(|e| !e.starts_with(&prefix));
            env.push(format!("{prefix}{v}"));
        }
        let limits = Limits::of(spec);
        let some = |v: i64| (v > 0).then_some(v);
        ContainerSpec {
            name: spec.key.container_name(),
            image: spec.image.clone(),
            entrypoint,
            cmd,
            env,
            labels,
            port: spec.port,
            host_ip,
            memory: some(limits.memory),
            memory_reservation: some(limits.memory_reservation),
            nano_cpus: some(limits.nano_cpus),
            cpu_shares: some(limits.cpu_shares),
            mounts: spec
                .volumes
                .iter()
                .enumerate()
                .map(|(i, v)| Mount {
                    bind: v.host_path,
                    // Every host path is pinned by now; a missing pin names a path that does
                    // not exist, so Docker refuses the mount rather than mounting the text.
                    volume: if v.host_path {
                        pins.staging(i)
                            .map_or_else(
                                || {
                                    hostpath::staging_path(
                                        &cfg.state_dir,
                                        &spec.key.container_name(),
                                        i,
                                    )
                                },
                                std::path::Path::to_path_buf,
                            )
                            .display()
                            .to_string()
                    } else {
                        v.name.clone()
                    },
                    target: v.target.clone(),
                    read_only: v.read_only,
                })
                .collect(),
            host,
            device_requests: passing.requests,
            options: self.options_with_network(spec),
            stdin: false,
        }
    }
}

/// How often a spawn whose callers have gone looks for a retry.
const ANSWER_POLL: std::time::Duration = std::time::Duration::from_millis(5);
/// How long past the grace it waits for the verdict.
const ANSWER_MARGIN: std::time::Duration = std::time::Duration::from_millis(500);

/// Tries of a clean-up call.
const CLEANUP_TRIES: u32 = 4;
/// The longest one try of a clean-up call may take.
const CLEANUP_CALL_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Runs clean-up call `f` until it succeeds, up to [`CLEANUP_TRIES`] times with a doubling
/// pause, each try bounded by [`CLEANUP_CALL_LIMIT`]. A container that is already gone counts
/// as removed (the engine answers `Ok` for that).
pub(in crate::runtime) async fn persist<T, F, Fut>(
    what: &'static str,
    mut f: F,
) -> Result<T, EngineError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, EngineError>>,
{
    let mut pause = std::time::Duration::from_millis(100);
    let mut tries = 0;
    loop {
        tries += 1;
        let err = match tokio::time::timeout(CLEANUP_CALL_LIMIT, f()).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => e,
            Err(_) => EngineError::Timeout {
                op: what,
                after: CLEANUP_CALL_LIMIT,
            },
        };
        if tries >= CLEANUP_TRIES {
            return Err(err);
        }
        tracing::debug!(call = what, error = %err, "clean-up call failed; trying again");
        tokio::time::sleep(pause).await;
        pause *= 2;
    }
}

/// Why a kept server may fail at once: its wrapper needs the image's `/bin/sh`.
const SHELL_HINT: &str = "; a server kept between spawns (remove = false) starts through the image's /bin/sh, which this image may lack (exit code 127: /bin/sh or the command not found)";

/// `message` of a refused start, with the `/bin/sh` hint when the wrapper of a kept server
/// may be the cause.
fn with_shell_hint(spec: &StartSpec, message: String) -> String {
    if spec.resumable && message.contains("/bin/sh") {
        format!("{message}{SHELL_HINT}")
    } else {
        message
    }
}

/// Volumes this node creates for the key and removes on DeleteForever: for a named server those
/// templated with `{server}`; for the default server (deleted with its user) also those
/// templated with `{user}`. A volume named without templates is shared and never owned.
fn owned_volumes(spec: &StartSpec) -> Vec<String> {
    spec.volumes
        .iter()
        .filter(|v| !v.host_path && (v.per_server || (v.per_user && spec.key.server().is_empty())))
        .map(|v| v.name.clone())
        .collect()
}
