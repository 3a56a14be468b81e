//! An in-memory [`ContainerEngine`] for tests, so the lifecycle runs without a Docker engine.
//!
//! A "running" container is a tiny HTTP server on `127.0.0.1:0` (its published port), so the
//! runtime's real readiness probe reaches it. What a container does is set by its image's
//! [`Behaviour`]; the test drives the rest: exits, OOM kills, an engine that goes away and
//! comes back, slow inspects that answer with a stale snapshot, and a count of calls per method.
//!
//! Not modelled: pulls, networks other than published ports on 127.0.0.1 (host networking
//! publishes nothing reachable), restart policies, health checks, pause, image commands, and
//! the deadline on calls (a fake call never times out; an armed delay or a graceful stop of a
//! container that ignores SIGTERM is the only wait).

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::sync::{broadcast, watch};

use super::{
    ContainerEngine, ContainerInfo, ContainerSpec, EngineError, EngineEvent, EngineVersion,
    ImageInfo, LogChunk, LogStream, Usage,
};

mod model;
#[cfg(test)]
mod tests;

use model::{EXIT_SIGKILL, EXIT_SIGTERM, Image, InspectDelay, World, normalise};

/// What a container made from an image does once started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Behaviour {
    /// Answers HTTP on its published port from the moment it runs.
    Serve,
    /// Runs but closes every connection unanswered until [`FakeEngine::set_answering`].
    Silent,
    /// Prints `output` (to stderr, line by line) and exits with `code` once `after` has
    /// passed on tokio's clock (`Duration::ZERO`: before `start` returns).
    Exit {
        /// The exit code.
        code: i64,
        /// Lines it prints first.
        output: String,
        /// How long it runs.
        after: Duration,
    },
    /// Docker refuses to start it (HTTP 400, as for a missing executable) with this message.
    RefuseStart {
        /// dockerd's message.
        message: String,
    },
}

/// A fake Docker engine; clones share one world, so a test keeps a handle to the engine it
/// gives a `Runtime`, and a second `Runtime` over a clone sees the same containers.
#[derive(Clone)]
pub struct FakeEngine {
    shared: Arc<Shared>,
}

struct Shared {
    world: Mutex<World>,
    /// False while the engine is away: calls fail, event streams and waits end.
    reachable: watch::Sender<bool>,
    /// Inspects sleeping in an armed delay right now.
    delayed: watch::Sender<usize>,
}

impl Default for FakeEngine {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeEngine {
    /// An engine with no images, containers or volumes, reachable.
    pub fn new() -> Self {
        Self {
            shared: Arc::new(Shared {
                world: Mutex::new(World::new()),
                reachable: watch::channel(true).0,
                delayed: watch::channel(0).0,
            }),
        }
    }

    fn world(&self) -> MutexGuard<'_, World> {
        self.shared
            .world
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts a call of `op` and fails it while the engine is away.
    fn enter(&self, op: &'static str) -> Result<MutexGuard<'_, World>, EngineError> {
        let mut world = self.world();
        *world.calls.entry(op).or_default() += 1;
        if *self.shared.reachable.borrow() {
            Ok(world)
        } else {
            Err(away(op))
        }
    }

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
        self.world().volumes.insert(name.to_owned());
    }

    /// Names of the volumes present, sorted.
    pub fn volumes(&self) -> Vec<String> {
        self.world().volumes.iter().cloned().collect()
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

    /// Ids of every container, oldest first.
    pub fn container_ids(&self) -> Vec<String> {
        self.world().ids()
    }

    /// Every event so far, oldest first.
    pub fn history(&self) -> Vec<EngineEvent> {
        self.world().history.clone()
    }

    /// Sets what `root_dir` answers (by default the temporary directory).
    pub fn set_root_dir(&self, dir: &str) {
        dir.clone_into(&mut self.world().root_dir);
    }

    fn not_found(id: &str) -> EngineError {
        EngineError::NotFound {
            what: format!("No such container: {id}"),
        }
    }

    /// Resolves with `Err(Unavailable)` once the engine goes away.
    async fn outage(&self, op: &'static str) -> EngineError {
        let mut rx = self.shared.reachable.subscribe();
        let _ = rx.wait_for(|up| !up).await;
        away(op)
    }
}

fn away(op: &'static str) -> EngineError {
    EngineError::Unavailable {
        op,
        message: "the fake Docker engine is away (FakeEngine::go_away)".to_owned(),
    }
}

fn matches(ev: &EngineEvent, labels: &[(String, String)]) -> bool {
    labels
        .iter()
        .all(|(k, v)| ev.labels.get(k).is_some_and(|x| x == v))
}

/// Decrements the count of delayed inspects when the delay ends or the call is dropped.
struct Delayed<'a>(&'a watch::Sender<usize>);

impl Drop for Delayed<'_> {
    fn drop(&mut self) {
        self.0.send_modify(|d| *d = d.saturating_sub(1));
    }
}

impl ContainerEngine for FakeEngine {
    async fn version(&self) -> Result<EngineVersion, EngineError> {
        drop(self.enter("version")?);
        Ok(EngineVersion {
            version: "fake".to_owned(),
            api_version: "1.41".to_owned(),
        })
    }

    async fn ping(&self) -> Result<(), EngineError> {
        self.enter("ping").map(drop)
    }

    async fn image(&self, reference: &str) -> Result<Option<ImageInfo>, EngineError> {
        let world = self.enter("image")?;
        Ok(world.images.get(&normalise(reference)).map(|i| ImageInfo {
            id: i.id.clone(),
            cmd: vec!["fake-server".to_owned()],
        }))
    }

    async fn create(&self, spec: &ContainerSpec) -> Result<String, EngineError> {
        self.enter("create")?.create(spec)
    }

    async fn start(&self, id: &str) -> Result<(), EngineError> {
        let exits = {
            let mut world = self.enter("start")?;
            let id = world.resolve(id).ok_or_else(|| Self::not_found(id))?;
            world.start(&id)?.map(|e| (id, e))
        };
        match exits {
            Some((id, (_, code, after))) if after.is_zero() => {
                self.world().terminate(&id, code, false);
            }
            Some((id, (run, code, after))) => {
                let fake = self.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(after).await;
                    let mut world = fake.world();
                    if world.containers.get(&id).is_some_and(|c| c.run == run) {
                        world.terminate(&id, code, false);
                    }
                });
            }
            None => {}
        }
        Ok(())
    }

    async fn inspect(&self, name_or_id: &str) -> Result<Option<ContainerInfo>, EngineError> {
        let (snapshot, delay) = {
            let mut world = self.enter("inspect")?;
            let snapshot = world.get(name_or_id).map(|c| c.info.clone());
            (snapshot, world.take_inspect_delay(name_or_id))
        };
        if let Some(delay) = delay {
            self.shared.delayed.send_modify(|d| *d += 1);
            let _counted = Delayed(&self.shared.delayed);
            tokio::time::sleep(delay).await;
        }
        Ok(snapshot)
    }

    async fn list(&self, labels: &[(&str, &str)]) -> Result<Vec<String>, EngineError> {
        let world = self.enter("list")?;
        Ok(world
            .ids()
            .into_iter()
            .filter(|id| {
                world
                    .containers
                    .get(id)
                    .is_some_and(|c| labels.iter().all(|(k, v)| c.info.label(k) == Some(*v)))
            })
            .collect())
    }

    async fn kill(&self, id: &str) -> Result<(), EngineError> {
        let mut world = self.enter("kill")?;
        let id = world.resolve(id).ok_or_else(|| Self::not_found(id))?;
        world.kill(&id);
        Ok(())
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<(), EngineError> {
        let (mut exit, id) = {
            let mut world = self.enter("stop")?;
            let id = world.resolve(id).ok_or_else(|| Self::not_found(id))?;
            let Some(c) = world.containers.get(&id) else {
                return Err(Self::not_found(&id));
            };
            if !c.running() {
                return Ok(());
            }
            let ignores = c.ignores_sigterm;
            let exit = c.exit.subscribe();
            world.emit(&id, "kill", &[("signal", "15".to_owned())]);
            if !ignores {
                world.terminate(&id, EXIT_SIGTERM, false);
                world.emit(&id, "stop", &[]);
                return Ok(());
            }
            (exit, id)
        };
        // It ignores SIGTERM: dockerd waits out the grace (or an exit), then kills.
        let ended = tokio::select! {
            r = exit.wait_for(Option::is_some) => r.is_ok(),
            () = tokio::time::sleep(grace) => false,
        };
        let mut world = self.world();
        if !ended {
            world.kill(&id);
        }
        world.emit(&id, "stop", &[]);
        Ok(())
    }

    async fn remove(&self, id: &str) -> Result<(), EngineError> {
        let mut world = self.enter("remove")?;
        if let Some(id) = world.resolve(id) {
            world.remove(&id);
        }
        Ok(())
    }

    async fn wait_exit(&self, id: &str) -> Result<i64, EngineError> {
        let mut exit = {
            let world = self.enter("wait_exit")?;
            world
                .get(id)
                .ok_or_else(|| Self::not_found(id))?
                .exit
                .subscribe()
        };
        tokio::select! {
            r = exit.wait_for(Option::is_some) => match r {
                Ok(code) => Ok((*code).unwrap_or(0)),
                // Removed while waiting: it was killed first, so this is a race we lost.
                Err(_) => Ok(EXIT_SIGKILL),
            },
            e = self.outage("wait") => Err(e),
        }
    }

    async fn images(&self) -> Result<Vec<String>, EngineError> {
        Ok(self.enter("images")?.images.keys().cloned().collect())
    }

    async fn root_dir(&self) -> Result<String, EngineError> {
        Ok(self.enter("root_dir")?.root_dir.clone())
    }

    async fn usage(&self, id: &str) -> Result<Usage, EngineError> {
        let world = self.enter("usage")?;
        Ok(world.get(id).ok_or_else(|| Self::not_found(id))?.usage)
    }

    async fn remove_volume(&self, name: &str) -> Result<(), EngineError> {
        let mut world = self.enter("remove_volume")?;
        if let Some(user) = world.volume_in_use(name) {
            return Err(EngineError::Conflict {
                message: format!("remove {name}: volume is in use - [{user}]"),
            });
        }
        world.volumes.remove(name);
        Ok(())
    }

    fn events(
        &self,
        labels: &[(&str, &str)],
        since: Option<i64>,
    ) -> BoxStream<'static, Result<EngineEvent, EngineError>> {
        let labels: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        // Replay and subscription under one lock: nothing is missed or seen twice.
        let (replay, rx) = match self.enter("events") {
            Err(e) => return futures::stream::once(async move { Err(e) }).boxed(),
            Ok(world) => {
                let replay: Vec<EngineEvent> = since.map_or_else(Vec::new, |s| {
                    let from = s.saturating_mul(1_000_000_000);
                    world
                        .history
                        .iter()
                        .filter(|e| e.time_nano >= from && matches(e, &labels))
                        .cloned()
                        .collect()
                });
                (replay, world.events.subscribe())
            }
        };
        let fake = self.clone();
        let live =
            futures::stream::unfold((rx, fake, labels), |(mut rx, fake, labels)| async move {
                loop {
                    let next = tokio::select! {
                        // Events sent before the outage still arrive, then the stream ends.
                        biased;
                        r = rx.recv() => r,
                        // The stream ends when the engine goes away, as dockerd's does.
                        _ = fake.outage("events") => return None,
                    };
                    match next {
                        Ok(ev) if matches(&ev, &labels) => {
                            return Some((Ok(ev), (rx, fake, labels)));
                        }
                        Ok(_) => {}
                        Err(broadcast::error::RecvError::Lagged(_)) => {
                            let e = EngineError::Unavailable {
                                op: "events",
                                message: "the subscriber fell behind".to_owned(),
                            };
                            return Some((Err(e), (rx, fake, labels)));
                        }
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                }
            });
        futures::stream::iter(replay.into_iter().map(Ok))
            .chain(live)
            .boxed()
    }

    fn logs(
        &self,
        id: &str,
        tail: Option<u32>,
        follow: bool,
    ) -> BoxStream<'static, Result<LogChunk, EngineError>> {
        let found = self.enter("logs").and_then(|world| {
            let c = world.get(id).ok_or_else(|| Self::not_found(id))?;
            let skip = tail.map_or(0, |n| c.logs.len().saturating_sub(n as usize));
            let past: Vec<LogChunk> = c.logs[skip..].to_vec();
            let live = (follow && c.running()).then(|| (c.log_tx.subscribe(), c.exit.subscribe()));
            Ok((past, live))
        });
        let (past, live) = match found {
            Ok(v) => v,
            Err(e) => return futures::stream::once(async move { Err(e) }).boxed(),
        };
        let past = futures::stream::iter(past.into_iter().map(Ok));
        let Some((rx, exit)) = live else {
            return past.boxed();
        };
        let fake = self.clone();
        let live = futures::stream::unfold(Some((rx, exit, fake)), |state| async move {
            let (mut rx, mut exit, fake) = state?;
            // Ok(None): the follow ends; Err: the engine went away.
            let next: Result<Option<LogChunk>, EngineError> = tokio::select! {
                biased;
                r = rx.recv() => Ok(r.ok()),
                // Following ends when the container stops, as with dockerd.
                _ = exit.wait_for(Option::is_some) => Ok(None),
                e = fake.outage("logs") => Err(e),
            };
            match next {
                Ok(Some(chunk)) => Some((Ok(chunk), Some((rx, exit, fake)))),
                Ok(None) => None,
                Err(e) => Some((Err(e), None)),
            }
        });
        past.chain(live).boxed()
    }
}
