//! An in-memory [`ContainerEngine`] for tests, so the lifecycle runs without a Docker engine.
//!
//! A "running" container is a tiny HTTP server on `127.0.0.1:0` (its published port), so the
//! runtime's real readiness probe reaches it. What a container does is set by its image's
//! [`Behaviour`]; the test drives the rest: exits, OOM kills, an engine that goes away and
//! comes back, slow inspects that answer with a stale snapshot, and a count of calls per method.
//!
//! Pulls come from a registry inside the fake (`publish_image`), with per-layer reports.
//!
//! Not modelled: networks (a server always listens on 127.0.0.1, whatever `host_ip`,
//! and host networking publishes nothing reachable); resource enforcement (limits are only
//! recorded; an OOM kill happens when a test says so); restart policies and restart counts;
//! HEALTHCHECK probes (a test sets the status); pause; what an image's command does (but for
//! the resume wrapper, which deletes the per-spawn env file it reads); id
//! prefixes in lookups; events other than containers'; dockerd losing its event log when it
//! restarts (the history is kept for good); and call deadlines (no fake call times out by
//! itself: an armed inspect delay and the grace of a SIGTERM-ignoring container are the only
//! waits, and a [`FaultPlan`] injects timeouts, errors, hangs and crashes).

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;

use super::{EngineError, EngineEvent};

mod controls;
mod engine;
mod faults;
mod model;
mod pull;
#[cfg(test)]
mod tests;

pub use faults::{Fault, FaultPlan};
use model::World;

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
    /// The images a pull can fetch.
    registry: pull::Registry,
    /// How long each `start` takes before the container runs (the `sim` engine's start time).
    start_delay: Mutex<Duration>,
    /// The fault schedule.
    faults: Mutex<faults::Schedule>,
    /// True once a [`Fault::Crash`] was injected, until cleared.
    crash: watch::Sender<bool>,
    /// Calls hanging now (not counting streams).
    hung: watch::Sender<usize>,
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
                registry: pull::Registry::default(),
                start_delay: Mutex::new(Duration::ZERO),
                faults: Mutex::default(),
                crash: watch::channel(false).0,
                hung: watch::channel(0).0,
            }),
        }
    }

    fn world(&self) -> MutexGuard<'_, World> {
        self.shared
            .world
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs `task` (a container's server or timer) on the runtime given to
    /// [`FakeEngine::run_containers_on`], or the caller's.
    fn spawn_bg(
        &self,
        task: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> tokio::task::AbortHandle {
        let bg = self.world().background.clone();
        match bg {
            Some(h) => h.spawn(task).abort_handle(),
            None => tokio::spawn(task).abort_handle(),
        }
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

/// Decrements a count of waiting calls (delayed inspects, hanging calls) when the call ends or
/// is dropped.
struct Delayed<'a>(&'a watch::Sender<usize>);

impl Drop for Delayed<'_> {
    fn drop(&mut self) {
        self.0.send_modify(|d| *d = d.saturating_sub(1));
    }
}
