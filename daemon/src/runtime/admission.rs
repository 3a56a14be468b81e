//! Admission control: draining, capacity (memory, cpu, server count) and the bounded spawn
//! queue in front of Docker; and the Capacity report.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{Error, Runtime, RuntimeConfig};
use crate::capacity::{self, Alloc, Host};
use crate::docker::{ContainerEngine, ContainerInfo, RunStatus};
use crate::key::ServerKey;
use crate::spec::StartSpec;

/// Name of the file in the state directory that marks a draining node across restarts.
pub const DRAIN_FILE: &str = "draining";
/// Memory pressure: less than this share of memory available.
pub const MEMORY_PRESSURE_RATIO: f64 = 0.10;
/// Disk pressure: less than this share of a disk free.
pub const DISK_PRESSURE_RATIO: f64 = 0.10;

/// The admission state of the node.
pub struct Admission {
    /// Admitted spawns whose container does not run yet.
    pending: Mutex<HashMap<ServerKey, Alloc>>,
    draining: Mutex<Option<String>>,
    slots: Arc<Semaphore>,
    waiting: AtomicUsize,
    drain_file: PathBuf,
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
            draining: Mutex::new(draining.map(|r| r.trim().to_owned())),
            slots: Arc::new(Semaphore::new(cfg.max_concurrent_spawns as usize)),
            waiting: AtomicUsize::new(0),
            drain_file,
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

fn holds_resources(c: &ContainerInfo) -> bool {
    matches!(
        c.status,
        RunStatus::Running | RunStatus::Created | RunStatus::Paused | RunStatus::Restarting
    )
}

/// One condition of the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    /// Ready, DockerDown, MemoryPressure, DiskPressure, Draining.
    pub kind: &'static str,
    /// "True", "False" or "Unknown".
    pub status: &'static str,
    /// CamelCase cause.
    pub reason: String,
    /// Detail.
    pub message: String,
}

/// The node's capacity report.
#[derive(Debug, Clone)]
pub struct NodeCapacity {
    /// Host readings.
    pub host: Host,
    /// Capacity minus the reservation.
    pub allocatable: Alloc,
    /// Held by running (and admitted) servers.
    pub committed: Alloc,
    /// Running (and admitted) servers.
    pub running: u32,
    /// 0 = no limit.
    pub max_servers: u32,
    /// Conditions.
    pub conditions: Vec<Condition>,
    /// Whether the node refuses new servers.
    pub draining: bool,
    /// Images present.
    pub images: Vec<String>,
}

fn condition(kind: &'static str, on: Option<bool>, reason: &str, message: String) -> Condition {
    Condition {
        kind,
        status: match on {
            Some(true) => "True",
            Some(false) => "False",
            None => "Unknown",
        },
        reason: reason.to_owned(),
        message,
    }
}

impl<E: ContainerEngine> Runtime<E> {
    /// What running servers (and admitted spawns of other keys) hold, and how many they are.
    /// `except` leaves one key out (the one being admitted).
    fn committed(
        &self,
        pending: &HashMap<ServerKey, Alloc>,
        except: Option<&ServerKey>,
    ) -> (Alloc, u32) {
        let view = self.inner.view.lock();
        let mut held: HashMap<&ServerKey, Alloc> = view
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
        let running = u32::try_from(held.len()).unwrap_or(u32::MAX);
        (capacity::committed(held.into_values()), running)
    }

    /// Admits `spec` or says why not; an admitted spawn holds its share until
    /// [`Runtime::release`].
    pub(super) fn admit(&self, spec: &StartSpec) -> Result<(), Error> {
        let adm = &self.inner.admission;
        if let Some(reason) = lock(&adm.draining).clone() {
            return Err(Error::Draining {
                node: self.inner.cfg.node_id.clone(),
                reason,
            });
        }
        let r = spec.resources;
        let request = capacity::demand(r.mem_guarantee, r.mem_limit, r.cpu_guarantee, r.cpu_limit);
        let limits = self.inner.cfg.limits;
        let mut pending = lock(&adm.pending);
        let (committed, running) = self.committed(&pending, Some(&spec.key));
        let allocatable = capacity::allocatable(capacity::read_host(), limits);
        capacity::admit(allocatable, committed, running, limits, request)?;
        pending.insert(spec.key.clone(), request);
        Ok(())
    }

    /// Ends an admitted spawn's hold (its container, if running, now counts instead).
    pub(super) fn release(&self, key: &ServerKey) {
        lock(&self.inner.admission.pending).remove(key);
    }

    /// A Docker slot if one is free right now.
    pub(super) fn spawn_slot_now(&self) -> Option<OwnedSemaphorePermit> {
        self.inner.admission.slots.clone().try_acquire_owned().ok()
    }

    /// Waits for a Docker slot in the bounded spawn queue.
    pub(super) async fn spawn_slot(&self) -> Result<OwnedSemaphorePermit, Error> {
        let adm = &self.inner.admission;
        if let Ok(p) = adm.slots.clone().try_acquire_owned() {
            return Ok(p);
        }
        let limit = self.inner.cfg.spawn_queue_limit;
        let waiting = adm.waiting.fetch_add(1, Ordering::SeqCst);
        if waiting >= limit as usize {
            adm.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(Error::QueueFull { waiting, limit });
        }
        let after = self.inner.cfg.spawn_queue_timeout;
        let got = tokio::time::timeout(after, adm.slots.clone().acquire_owned()).await;
        adm.waiting.fetch_sub(1, Ordering::SeqCst);
        match got {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(_)) => Err(Error::Internal("the spawn queue was closed".to_owned())),
            Err(_) => Err(Error::QueueTimeout { after }),
        }
    }

    /// Refuses new Starts from now on (and after restarts) until [`Runtime::undrain`].
    pub fn drain(&self, reason: &str) -> Result<(), Error> {
        let adm = &self.inner.admission;
        let reason = if reason.trim().is_empty() {
            "drained by the operator"
        } else {
            reason.trim()
        };
        // Atomic like the records: a crash never leaves an empty marker (which would drain
        // the node with no reason) or a torn one.
        static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = adm
            .drain_file
            .with_extension(format!("tmp-{}-{n}", std::process::id()));
        crate::state::write_atomic(&tmp, &adm.drain_file, reason.as_bytes())?;
        *lock(&adm.draining) = Some(reason.to_owned());
        tracing::warn!(
            reason,
            "node draining: new servers are refused, running ones keep running"
        );
        Ok(())
    }

    /// Accepts new Starts again.
    pub fn undrain(&self) -> Result<(), Error> {
        let adm = &self.inner.admission;
        match std::fs::remove_file(&adm.drain_file) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(crate::state::StoreError::Io {
                    op: "remove",
                    path: adm.drain_file.clone(),
                    source,
                }
                .into());
            }
        }
        *lock(&adm.draining) = None;
        tracing::info!("node undrained: accepting new servers");
        Ok(())
    }

    /// Whether the node is draining.
    pub fn draining(&self) -> Option<String> {
        lock(&self.inner.admission.draining).clone()
    }

    /// The capacity report: host readings, arithmetic and conditions.
    pub async fn capacity(&self, docker_root: Option<&str>) -> NodeCapacity {
        let host = capacity::read_host();
        let limits = self.inner.cfg.limits;
        let (committed, running) = {
            let pending = lock(&self.inner.admission.pending);
            self.committed(&pending, None)
        };
        let docker_up = self.inner.engine.ping().await.is_ok();
        let images = if docker_up {
            self.inner.engine.images().await.unwrap_or_default()
        } else {
            Vec::new()
        };
        let draining = self.draining();
        #[allow(clippy::cast_precision_loss)]
        let mem_ratio = host.memory_available as f64 / host.memory_total.max(1) as f64;
        let mut disks = vec![("state directory", self.inner.cfg.state_dir.clone())];
        if let Some(root) = docker_root {
            disks.push(("Docker root", PathBuf::from(root)));
        }
        let mut disk_msgs = Vec::new();
        let mut disk_known = true;
        for (what, path) in &disks {
            match capacity::disk_of(path) {
                #[allow(clippy::cast_precision_loss)]
                Some((free, total)) if (free as f64) < (total as f64) * DISK_PRESSURE_RATIO => {
                    disk_msgs.push(format!(
                        "{what} {} has {free} of {total} bytes free",
                        path.display()
                    ));
                }
                Some(_) => {}
                None => disk_known = false,
            }
        }
        let conditions = vec![
            condition(
                "Ready",
                Some(docker_up),
                if docker_up {
                    "DockerReachable"
                } else {
                    "DockerDown"
                },
                String::new(),
            ),
            condition(
                "DockerDown",
                Some(!docker_up),
                if docker_up {
                    "DockerReachable"
                } else {
                    "PingFailed"
                },
                String::new(),
            ),
            condition(
                "MemoryPressure",
                Some(mem_ratio < MEMORY_PRESSURE_RATIO),
                if mem_ratio < MEMORY_PRESSURE_RATIO {
                    "LowMemory"
                } else {
                    "SufficientMemory"
                },
                format!(
                    "{} of {} bytes available",
                    host.memory_available, host.memory_total
                ),
            ),
            condition(
                "DiskPressure",
                if disk_msgs.is_empty() && !disk_known {
                    None
                } else {
                    Some(!disk_msgs.is_empty())
                },
                if disk_msgs.is_empty() {
                    "SufficientDisk"
                } else {
                    "LowDisk"
                },
                disk_msgs.join("; "),
            ),
            condition(
                "Draining",
                Some(draining.is_some()),
                if draining.is_some() {
                    "DrainedByOperator"
                } else {
                    "NotDraining"
                },
                draining.clone().unwrap_or_default(),
            ),
        ];
        NodeCapacity {
            host,
            allocatable: capacity::allocatable(host, limits),
            committed,
            running,
            max_servers: limits.max_servers,
            conditions,
            draining: draining.is_some(),
            images,
        }
    }

    /// The engine's storage root (for disk pressure).
    pub async fn engine_root(&self) -> Option<String> {
        self.inner.engine.root_dir().await.ok()
    }
}
