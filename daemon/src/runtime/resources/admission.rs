//! Admission control: draining, capacity (memory, cpu, server count) over a snapshot of the
//! view, and the bounded spawn queue in front of Docker.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::capacity::{self, Alloc};
use crate::docker::{ContainerInfo, RunStatus};
use crate::key::ServerKey;
use crate::runtime::view::View;
use crate::runtime::{Error, RuntimeConfig};
use crate::spec::StartSpec;

/// Name of the file in the state directory that marks a draining node across restarts.
pub const DRAIN_FILE: &str = "draining";

/// The admission state of the node.
pub struct Admission {
    /// Admitted spawns whose container does not run yet.
    pending: Mutex<HashMap<ServerKey, Alloc>>,
    /// Warm members not yet claimed, by container id: each holds a server's place.
    warm: Mutex<HashMap<String, Alloc>>,
    draining: Mutex<Option<String>>,
    slots: Arc<Semaphore>,
    waiting: AtomicUsize,
    drain_file: PathBuf,
    node_id: String,
    limits: capacity::Limits,
    queue_limit: u32,
    queue_timeout: std::time::Duration,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Admission {
    /// Admission for `cfg`; a drain marker left by an earlier run keeps the node draining.
    pub fn new(cfg: &RuntimeConfig) -> Self {
        let drain_file = cfg.state_dir.join(DRAIN_FILE);
        let draining = std::fs::read_to_string(&drain_file).ok();
        if let Some(reason) = &draining {
            tracing::warn!(reason = %reason.trim(), "node is draining (marker from an earlier run)");
        }
        Self {
            pending: Mutex::default(),
            warm: Mutex::default(),
            draining: Mutex::new(draining.map(|r| r.trim().to_owned())),
            slots: Arc::new(Semaphore::new(cfg.max_concurrent_spawns as usize)),
            waiting: AtomicUsize::new(0),
            drain_file,
            node_id: cfg.node_id.clone(),
            limits: cfg.limits,
            queue_limit: cfg.spawn_queue_limit,
            queue_timeout: cfg.spawn_queue_timeout,
        }
    }
}

/// What a live container holds: its reservation, or its limit where it has none.
pub fn held_by(c: &ContainerInfo) -> Alloc {
    let pos = |v: i64| u64::try_from(v).ok().filter(|v| *v > 0);
    #[allow(clippy::cast_precision_loss)]
    let cores = |v: i64, unit: f64| pos(v).map(|v| v as f64 / unit);
    capacity::demand(
        pos(c.memory_reservation),
        pos(c.memory),
        cores(c.cpu_shares, 1024.0),
        cores(c.nano_cpus, 1e9),
    )
}

pub(in crate::runtime) fn holds_resources(c: &ContainerInfo) -> bool {
    matches!(
        c.status,
        RunStatus::Running | RunStatus::Created | RunStatus::Paused | RunStatus::Restarting
    )
}

impl Admission {
    /// What running servers (and admitted spawns of other keys) hold, and how many they are.
    /// `except` leaves one key out (the one being admitted). Takes the view's lock while
    /// `pending` is held: a spawn counts in `pending` until its container is in the view.
    fn committed(
        pending: &HashMap<ServerKey, Alloc>,
        warm: &HashMap<String, Alloc>,
        view: &View,
        except: Option<&ServerKey>,
    ) -> (Alloc, u32) {
        let entries = view.lock();
        let mut held: HashMap<&ServerKey, Alloc> = entries
            .iter()
            .filter_map(|(k, e)| {
                e.live
                    .as_ref()
                    .filter(|c| holds_resources(c))
                    .map(|c| (k, held_by(c)))
            })
            .collect();
        for (k, a) in pending {
            held.insert(k, *a);
        }
        if let Some(k) = except {
            held.remove(k);
        }
        let servers = held.len() + warm.len();
        let running = u32::try_from(servers).unwrap_or(u32::MAX);
        (
            capacity::committed(held.into_values().chain(warm.values().copied())),
            running,
        )
    }

    /// What is held now, and by how many servers, for the capacity report.
    pub fn held(&self, view: &View) -> (Alloc, u32) {
        let pending = lock(&self.pending);
        Self::committed(&pending, &lock(&self.warm), view, None)
    }

    /// Warm members waiting for a claim.
    pub fn warm_count(&self) -> usize {
        lock(&self.warm).len()
    }

    /// Admits warm member `id` holding `request`, unless the node drains or is full.
    pub fn admit_warm(&self, view: &View, id: &str, request: Alloc) -> Result<(), Error> {
        if let Some(reason) = lock(&self.draining).clone() {
            return Err(Error::Draining {
                node: self.node_id.clone(),
                reason,
            });
        }
        let pending = lock(&self.pending);
        let mut warm = lock(&self.warm);
        let (committed, running) = Self::committed(&pending, &warm, view, None);
        let allocatable = capacity::allocatable(capacity::read_host(), self.limits);
        capacity::admit(allocatable, committed, running, self.limits, request)?;
        warm.insert(id.to_owned(), request);
        Ok(())
    }

    /// Ends warm member `id`'s hold (claimed: its spawn's admission counts instead; or gone).
    pub fn release_warm(&self, id: &str) {
        lock(&self.warm).remove(id);
    }

    /// Admits `spec` or says why not; an admitted spawn holds its share until
    /// [`Admission::release`].
    pub fn admit(&self, view: &View, spec: &StartSpec) -> Result<(), Error> {
        self.admit_claiming(view, spec, None)
    }

    /// [`Admission::admit`] for a spawn that takes warm member `claiming`: the member's hold
    /// passes to the spawn (it is not counted beside it), and ends if admitted.
    pub fn admit_claiming(
        &self,
        view: &View,
        spec: &StartSpec,
        claiming: Option<&str>,
    ) -> Result<(), Error> {
        if let Some(reason) = lock(&self.draining).clone() {
            return Err(Error::Draining {
                node: self.node_id.clone(),
                reason,
            });
        }
        let r = spec.resources;
        let request = capacity::demand(r.mem_guarantee, r.mem_limit, r.cpu_guarantee, r.cpu_limit);
        let mut pending = lock(&self.pending);
        let mut warm = lock(&self.warm);
        let mut others = warm.clone();
        if let Some(id) = claiming {
            others.remove(id);
        }
        let (committed, running) = Self::committed(&pending, &others, view, Some(&spec.key));
        let allocatable = capacity::allocatable(capacity::read_host(), self.limits);
        capacity::admit(allocatable, committed, running, self.limits, request)?;
        pending.insert(spec.key.clone(), request);
        if let Some(id) = claiming {
            warm.remove(id);
        }
        Ok(())
    }

    /// Ends an admitted spawn's hold (its container, if running, now counts instead).
    pub fn release(&self, key: &ServerKey) {
        lock(&self.pending).remove(key);
    }

    /// A Docker slot if one is free right now.
    pub fn slot_now(&self) -> Option<OwnedSemaphorePermit> {
        self.slots.clone().try_acquire_owned().ok()
    }

    /// Spawns waiting in the queue now: those ahead of one that joins it.
    pub fn queued(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// Waits for a Docker slot in the bounded spawn queue.
    pub async fn slot(&self) -> Result<OwnedSemaphorePermit, Error> {
        if let Some(p) = self.slot_now() {
            return Ok(p);
        }
        let limit = self.queue_limit;
        let waiting = self.waiting.fetch_add(1, Ordering::SeqCst);
        if waiting >= limit as usize {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(Error::QueueFull { waiting, limit });
        }
        let after = self.queue_timeout;
        let got = tokio::time::timeout(after, self.slots.clone().acquire_owned()).await;
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        match got {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(_)) => Err(Error::Internal("the spawn queue was closed".to_owned())),
            Err(_) => Err(Error::QueueTimeout { after }),
        }
    }

    /// Refuses new Starts from now on (and after restarts) until [`Admission::undrain`].
    pub fn drain(&self, reason: &str) -> Result<(), Error> {
        let reason = if reason.trim().is_empty() {
            "drained by the operator"
        } else {
            reason.trim()
        };
        // Atomic like the records: a crash never leaves an empty marker (which would drain
        // the node with no reason) or a torn one.
        static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = WRITES.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .drain_file
            .with_extension(format!("tmp-{}-{n}", std::process::id()));
        crate::state::write_atomic(&tmp, &self.drain_file, reason.as_bytes())?;
        *lock(&self.draining) = Some(reason.to_owned());
        tracing::warn!(
            reason,
            "node draining: new servers are refused, running ones keep running"
        );
        Ok(())
    }

    /// Accepts new Starts again.
    pub fn undrain(&self) -> Result<(), Error> {
        match std::fs::remove_file(&self.drain_file) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(crate::state::StoreError::Io {
                    op: "remove",
                    path: self.drain_file.clone(),
                    source,
                }
                .into());
            }
        }
        *lock(&self.draining) = None;
        tracing::info!("node undrained: accepting new servers");
        Ok(())
    }

    /// Why the node is draining, if it is.
    pub fn draining(&self) -> Option<String> {
        lock(&self.draining).clone()
    }
}
