//! Start: idempotent by spawn id, serialised per key, done when the server answers HTTP.

use std::collections::HashMap;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::boot_times;
use super::error::{blocking, detached};
use super::keys::Op;
use super::progress::{Event, Phase, Reporter};
use super::view::WatchKind;
use super::{Error, Runtime, Started, exit_reason, ready, resume};
use crate::devices::DeviceRef;
use crate::docker::{
    ContainerEngine, ContainerInfo, ContainerSpec, EngineError, ImageInfo, LABEL_DEVICES,
    LABEL_FINGERPRINT, LABEL_HOST_NETWORK, LABEL_MANAGED, LABEL_NODE, LABEL_OWNED_VOLUMES,
    LABEL_PORT, LABEL_RESUMABLE, LABEL_SERVER, LABEL_SPAWN_ID, LABEL_SPEC_HASH, LABEL_USER, Mount,
    RunStatus,
};
use crate::hostpath::{self, HostPathError, Pin};
use crate::key::ServerKey;
use crate::spec::StartSpec;
use crate::state::RecordStatus;

/// The bar's share of a booting server: from here ...
const BOOT_FROM: u8 = 60;
/// ... toward here, never reached (the hub ends the bar at 100 once the server answers).
const BOOT_TO: u8 = 95;
/// How often the bar moves while the server boots.
const BOOT_TICK: std::time::Duration = std::time::Duration::from_millis(500);

/// A pinned host path and where the container mounts it.
type Pins = Vec<(String, Pin)>;

impl<E: ContainerEngine> Runtime<E> {
    /// Starts the server of `spec` and returns once it answers HTTP. The work runs in its own
    /// task, so a caller that gives up (hub timeout, dropped connection) never leaves a spawn
    /// half done; a retry with the same spawn id joins the result.
    pub async fn start(&self, spec: StartSpec) -> Result<Started, Error> {
        // Before anything else, even for a retry: the policy may have changed.
        self.inner.cfg.policy.check(&spec)?;
        let rt = self.clone();
        detached("start", async move {
            let began = std::time::Instant::now();
            let result = rt.start_serialised(spec).await;
            rt.inner.metrics.spawn_done(began.elapsed(), result.is_ok());
            result
        })
        .await
    }

    async fn start_serialised(&self, spec: StartSpec) -> Result<Started, Error> {
        let progress = self.inner.progress.begin(&spec.key, &spec.spawn_id);
        let guard = self.inner.keys.acquire(&spec.key, Op::Starting).await;
        let mut result = self.start_locked(&spec, &progress, guard.token()).await;
        // The view must hold the outcome before the key is released, or a Poll in between
        // would see a record without its container; then the admitted share is handed over
        // to the container (or freed).
        self.refresh(&spec.key).await;
        self.inner.admission.release(&spec.key);
        self.settle_devices(&spec.key).await;
        self.inner.view.capacity_changed();
        if result.is_ok()
            && let Err(e) = self
                .inner
                .records
                .save(&spec.key, |r| r.status = RecordStatus::Running)
                .await
        {
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
        self.inner.admission.admit(&self.inner.view, spec)?;
        self.inner.view.capacity_changed();
        let devices = self.assign_devices(spec).await?;
        self.inner.view.capacity_changed();
        let image = self.ensure_image(spec, progress, cancel).await?;
        let slot = match self.inner.admission.slot_now() {
            Some(slot) => slot,
            None => {
                let ahead = self.inner.admission.queued();
                let message = match ahead {
                    0 => "Waiting for a free slot.".to_owned(),
                    n => format!("Waiting for a free slot ({n} ahead of you)."),
                };
                progress.emit(Event::new(Phase::Queued, 5, message));
                self.inner.admission.slot().await?
            }
        };
        // Host paths are resolved and pinned, and volumes checked and made, before the
        // container is created: a refusal leaves no container behind, and what Docker mounts
        // is what was checked.
        let pins = self.pin_host_paths(spec).await?;
        self.prepare_volumes(spec).await?;
        self.prepare_network(spec).await?;
        progress.emit(Event::new(Phase::Creating, 20, "Preparing your server."));
        let id = self.create(spec, &image, &devices).await?;
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
    ) -> Result<String, Error> {
        let engine = &self.inner.engine;
        let container = self.container_spec(spec, image, devices);
        let owned = owned_volumes(spec);
        self.inner
            .records
            .save(&spec.key, |r| {
                r.spawn_id.clone_from(&spec.spawn_id);
                r.spec_hash = spec.spec_hash();
                r.container_id.clear();
                r.status = RecordStatus::Starting;
                r.exit_code = None;
                r.image.clone_from(&spec.image);
                r.port = spec.port;
                r.started_ms = crate::state::now_ms();
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
            .await?;
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

    /// Resolves every host path of `spec` beneath its allowed root (making a templated one on
    /// first use) and pins it at its staging path, and checks its devices; off the async
    /// threads, as a network filesystem may be slow.
    pub(super) async fn pin_host_paths(&self, spec: &StartSpec) -> Result<Pins, Error> {
        let devices = spec.host.devices.clone();
        let wanted: Vec<(usize, String, String, bool)> = spec
            .volumes
            .iter()
            .enumerate()
            .filter(|(_, v)| v.host_path)
            .map(|(i, v)| {
                let templated = v.per_user || v.per_server;
                (i, v.name.clone(), v.target.clone(), templated)
            })
            .collect();
        if wanted.is_empty() && devices.is_empty() {
            return Ok(Vec::new());
        }
        let roots = self.inner.cfg.policy.allowed_host_path_roots.clone();
        let state_dir = self.inner.cfg.state_dir.clone();
        let name = spec.key.container_name();
        let new_dir = self.inner.cfg.policy.new_dir();
        let pinned = blocking("host path", move || -> Result<Pins, HostPathError> {
            for d in &devices {
                hostpath::check_device(d)?;
            }
            wanted
                .into_iter()
                .map(|(i, path, target, templated)| {
                    if templated {
                        hostpath::ensure_dir(&roots, &path, new_dir)?;
                    }
                    let r = hostpath::resolve(&roots, &path)?;
                    let pin = hostpath::pin(&r, &hostpath::staging_path(&state_dir, &name, i))?;
                    Ok((target, pin))
                })
                .collect()
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
    async fn verify_pins(&self, c: &ContainerInfo, pins: &Pins) -> Result<(), Error> {
        if pins.is_empty() || !matches!(c.status, RunStatus::Running | RunStatus::Paused) {
            // Not running (it crashed at once): it sees nothing; the exit is reported instead.
            return Ok(());
        }
        // A running container without a process id cannot be checked: fail closed.
        let pid = c.pid.unwrap_or(0);
        for (target, pin) in pins {
            if !hostpath::verify(pid, target, pin.dev, pin.ino) {
                if let Err(e) = self.inner.engine.kill(&c.id).await {
                    tracing::error!(container = %c.id, error = %e, "cannot kill a container whose mount is not the checked path");
                }
                return Err(HostPathError::NotVerified {
                    path: pin.path.clone(),
                    target: target.clone(),
                }
                .into());
            }
        }
        Ok(())
    }

    /// Starts created container `id` and waits until it answers.
    pub(super) async fn launch(
        &self,
        spec: &StartSpec,
        id: &str,
        progress: &Reporter,
        cancel: &CancellationToken,
        slot: Option<tokio::sync::OwnedSemaphorePermit>,
        pins: Pins,
    ) -> Result<Started, Error> {
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
                    message,
                },
                other => other.into(),
            });
        }
        let c = engine
            .inspect(id)
            .await?
            .ok_or_else(|| Error::Internal(format!("container {id} vanished right after start")))?;
        self.verify_pins(&c, &pins).await?;
        // The container's mount namespace holds its own copy now; the pins can go.
        drop(pins);
        let started = self.await_ready(spec, &c, progress, cancel).await?;
        self.post_start(spec, id, progress).await;
        Ok(started)
    }

    /// Probes the running container until it answers HTTP; fails at once when it exits.
    async fn await_ready(
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
            ok = ready::wait_ready(self.probe_addr(host_port), &spec.ready_path, spec.internal_ssl.is_some(), deadline) => {
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
                progress.emit(Event::new(Phase::WaitingForHttp, now.0, now.1.clone()));
                last = now;
            }
        }
    }

    async fn exited_error(&self, spec: &StartSpec, c: &ContainerInfo) -> Error {
        let exit_code = c.exit_code.unwrap_or(-1);
        if !c.error.is_empty() && exit_code != 0 && c.started_at.is_none() {
            return Error::StartRefused {
                key: spec.key.clone(),
                message: c.error.clone(),
            };
        }
        let lines = self
            .last_lines(&c.id, self.inner.cfg.failure_log_lines)
            .await;
        let output = if lines.is_empty() {
            String::new()
        } else {
            format!("; last output:\n{}", lines.join("\n"))
        };
        Error::ExitedDuringStart {
            key: spec.key.clone(),
            exit_code,
            reason: exit_reason(exit_code, c.oom_killed),
            output,
        }
    }

    // Long: a field-by-field translation of the spec into the engine's, clearer whole.
    fn container_spec(
        &self,
        spec: &StartSpec,
        image: &ImageInfo,
        devices: &[DeviceRef],
    ) -> ContainerSpec {
        let cmd = match (spec.cmd.is_empty(), spec.args.is_empty()) {
            (true, true) => None,
            (true, false) => Some(image.cmd.iter().chain(&spec.args).cloned().collect()),
            (false, _) => Some(spec.cmd.iter().chain(&spec.args).cloned().collect()),
        };
        let mut labels: HashMap<String, String> = spec.labels.clone().into_iter().collect();
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
            let env = spec.env.filtered(|k| !resume::is_per_spawn(k));
            (Some(entrypoint), Some(argv), env.to_docker())
        } else {
            (None, cmd, spec.env.to_docker())
        };
        for (k, v) in [
            (LABEL_MANAGED, "true"),
            (LABEL_USER, spec.key.user()),
            (LABEL_SERVER, spec.key.server()),
            (LABEL_NODE, &cfg.node_id),
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
        let r = spec.resources;
        let to_i64 = |b: u64| i64::try_from(b).unwrap_or(i64::MAX);
        #[allow(clippy::cast_possible_truncation)]
        let cores = |c: f64, unit: f64| (c * unit).round() as i64;
        ContainerSpec {
            name: spec.key.container_name(),
            image: spec.image.clone(),
            entrypoint,
            cmd,
            env,
            labels,
            port: spec.port,
            host_ip,
            memory: r.mem_limit.map(to_i64),
            memory_reservation: r.mem_guarantee.map(to_i64),
            nano_cpus: r.cpu_limit.map(|c| cores(c, 1e9)),
            cpu_shares: r.cpu_guarantee.map(|c| cores(c, 1024.0).max(2)),
            mounts: spec
                .volumes
                .iter()
                .enumerate()
                .map(|(i, v)| Mount {
                    bind: v.host_path,
                    volume: if v.host_path {
                        hostpath::staging_path(&cfg.state_dir, &spec.key.container_name(), i)
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
        }
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
