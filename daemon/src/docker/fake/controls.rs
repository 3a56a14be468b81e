//! What a test does to the fake engine and what it reads back: images, exits, OOM kills,
//! outages, slow inspects, call counts.

use std::collections::BTreeMap;
use std::time::Duration;

use super::model::{EXIT_SIGKILL, Image, InspectDelay, normalise};
use super::{Behaviour, FakeEngine};
use crate::docker::{
    ContainerInfo, ContainerSpec, EngineEvent, LogChunk, LogStream, Usage, VolumeInfo,
};

impl FakeEngine {
    /// Makes `reference` present (`name` means `name:latest`, as in Docker).
    pub fn add_image(&self, reference: &str, behaviour: Behaviour) {
        let reference = normalise(reference);
        let image = Image::new(&reference, behaviour);
        self.world().images.insert(reference, image);
    }

    /// Removes `reference`; containers made from it keep their behaviour.
    pub fn remove_image(&self, reference: &str) {
        self.world().images.remove(&normalise(reference));
    }

    /// Ends the run of the container with exit `code`, as if its process exited. False when
    /// it does not exist or does not run.
    pub fn exit(&self, name_or_id: &str, code: i64) -> bool {
        let mut world = self.world();
        world
            .resolve(name_or_id)
            .is_some_and(|id| world.terminate(&id, code, false))
    }

    /// The kernel OOM killer ends the container: an `oom` event, then `die` with 137.
    pub fn oom_kill(&self, name_or_id: &str) -> bool {
        let mut world = self.world();
        world
            .resolve(name_or_id)
            .is_some_and(|id| world.terminate(&id, EXIT_SIGKILL, true))
    }

    /// Whether the container's server answers HTTP (a [`Behaviour::Silent`] one starts not to).
    pub fn set_answering(&self, name_or_id: &str, answering: bool) -> bool {
        self.world().get(name_or_id).is_some_and(|c| {
            c.answering
                .store(answering, std::sync::atomic::Ordering::SeqCst);
            true
        })
    }

    /// Sets the container's HEALTHCHECK status ("starting", "healthy", "unhealthy") and sends
    /// the `health_status: <status>` event dockerd sends.
    pub fn set_health(&self, name_or_id: &str, health: &str) -> bool {
        let mut world = self.world();
        let Some(id) = world.resolve(name_or_id) else {
            return false;
        };
        if let Some(c) = world.containers.get_mut(&id) {
            health.clone_into(&mut c.info.health);
        }
        world.emit(&id, &format!("health_status: {health}"), &[]);
        true
    }

    /// A container that ignores SIGTERM runs on through a graceful stop until the grace ends
    /// (then it is killed: 137), instead of ending at once with 143.
    pub fn ignore_sigterm(&self, name_or_id: &str, ignore: bool) -> bool {
        self.world().get_mut(name_or_id).is_some_and(|c| {
            c.ignores_sigterm = ignore;
            true
        })
    }

    /// Appends one line of output to the container's log (and to followers).
    pub fn write_log(&self, name_or_id: &str, stream: LogStream, line: &str) -> bool {
        self.world().get_mut(name_or_id).is_some_and(|c| {
            let chunk = LogChunk {
                stream,
                data: format!("{line}\n").into_bytes(),
            };
            c.logs.push(chunk.clone());
            let _ = c.log_tx.send(chunk);
            true
        })
    }

    /// Sets the counters `usage` answers for the container.
    pub fn set_usage(&self, name_or_id: &str, usage: Usage) -> bool {
        self.world().get_mut(name_or_id).is_some_and(|c| {
            c.usage = usage;
            true
        })
    }

    /// Makes a named volume exist, as `docker volume create` would.
    pub fn add_volume(&self, name: &str) {
        self.world().volumes.insert(
            name.to_owned(),
            VolumeInfo {
                name: name.to_owned(),
                driver: "local".to_owned(),
                ..VolumeInfo::default()
            },
        );
    }

    /// Names of the volumes present, sorted.
    pub fn volumes(&self) -> Vec<String> {
        self.world().volumes.keys().cloned().collect()
    }

    /// The engine goes away: every call fails with `Unavailable`, event streams, log
    /// followers and waits end. Containers keep running (as with live-restore).
    pub fn go_away(&self) {
        self.shared.reachable.send_replace(false);
    }

    /// The engine answers again. Events that happened meanwhile replay for a `since`.
    pub fn come_back(&self) {
        self.shared.reachable.send_replace(true);
    }

    /// Whether the engine answers.
    pub fn is_reachable(&self) -> bool {
        *self.shared.reachable.borrow()
    }

    /// Arms `times` slow inspects of `target` (a name or id; `None` = any): each takes its
    /// snapshot when called, then sleeps `delay` on tokio's clock and answers with that
    /// snapshot, however the container changed meanwhile. Arming again adds a rule; the
    /// oldest matching rule is used first.
    pub fn delay_inspects(&self, target: Option<&str>, delay: Duration, times: usize) {
        self.world().inspect_delays.push(InspectDelay {
            target: target.map(str::to_owned),
            delay,
            remaining: times,
        });
    }

    /// How many inspects are sleeping in an armed delay now, i.e. hold a snapshot that
    /// may be stale.
    pub fn delayed_inspects(&self) -> usize {
        *self.shared.delayed.borrow()
    }

    /// Waits until at least `n` inspects sleep in an armed delay.
    pub async fn wait_delayed_inspects(&self, n: usize) {
        let mut rx = self.shared.delayed.subscribe();
        // The sender lives as long as `self`, so this cannot end early.
        let _ = rx.wait_for(|d| *d >= n).await;
    }

    /// Every later `start` takes `delay` before its container runs (a simulated start time).
    pub fn set_start_delay(&self, delay: Duration) {
        *self
            .shared
            .start_delay
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = delay;
    }

    /// How often `op` was called ("create", "start", "inspect", "wait_exit", "events", ... —
    /// the trait method's name), including calls that failed.
    pub fn calls(&self, op: &str) -> u64 {
        self.world().calls.get(op).copied().unwrap_or(0)
    }

    /// The container as it is now, without counting a call or honouring delays or outages.
    pub fn container(&self, name_or_id: &str) -> Option<ContainerInfo> {
        self.world().get(name_or_id).map(|c| c.info.clone())
    }

    /// What the container was created with.
    pub fn spec_of(&self, name_or_id: &str) -> Option<ContainerSpec> {
        self.world().get(name_or_id).map(|c| c.spec.clone())
    }

    /// The files put into the container, by path.
    pub fn files_of(&self, name_or_id: &str) -> BTreeMap<String, Vec<u8>> {
        self.world()
            .get(name_or_id)
            .map(|c| c.files.clone())
            .unwrap_or_default()
    }

    /// Ids of every container, oldest first.
    pub fn container_ids(&self) -> Vec<String> {
        self.world().ids()
    }

    /// Every event so far, oldest first.
    pub fn history(&self) -> Vec<EngineEvent> {
        self.world().history.clone()
    }

    /// Runs containers' servers and timers on `handle` from now on, so they outlive the
    /// runtime of a berthd a test crashes (as containers outlive their daemon).
    pub fn run_containers_on(&self, handle: tokio::runtime::Handle) {
        self.world().background = Some(handle);
    }

    /// Sets what `root_dir` answers (by default the temporary directory).
    pub fn set_root_dir(&self, dir: &str) {
        dir.clone_into(&mut self.world().root_dir);
    }
}
