//! The node's capacity report: host readings, what servers hold, and the conditions the hub
//! places by (Ready, DockerDown, MemoryPressure, DiskPressure, Draining).

use std::path::PathBuf;

use crate::capacity::{self, Condition, Host, NodeCapacity};
use crate::docker::ContainerEngine;
use crate::runtime::Runtime;

/// Memory pressure: less than this share of memory available.
pub const MEMORY_PRESSURE_RATIO: f64 = 0.10;
/// Disk pressure: less than this share of a disk free.
pub const DISK_PRESSURE_RATIO: f64 = 0.10;

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

/// `true` = "True"; `None` = "Unknown". The reason is the first of `reasons` when on, the
/// second when off.
fn flag(kind: &'static str, on: Option<bool>, reasons: [&str; 2], message: String) -> Condition {
    let reason = if on == Some(true) {
        reasons[0]
    } else {
        reasons[1]
    };
    condition(kind, on, reason, message)
}

/// Disks under pressure (one message each), and whether every disk could be read.
fn disk_pressure(disks: &[(&str, PathBuf)]) -> (Vec<String>, bool) {
    let mut msgs = Vec::new();
    let mut known = true;
    for (what, path) in disks {
        match capacity::disk_of(path) {
            #[allow(clippy::cast_precision_loss)]
            Some((free, total)) if (free as f64) < (total as f64) * DISK_PRESSURE_RATIO => {
                msgs.push(format!(
                    "{what} {} has {free} of {total} bytes free",
                    path.display()
                ));
            }
            Some(_) => {}
            None => known = false,
        }
    }
    (msgs, known)
}

/// What the capacity report reads from the host and Docker (the part that takes I/O).
#[derive(Debug)]
pub(in crate::runtime) struct Readings {
    host: Host,
    docker_up: bool,
    images: Vec<String>,
    /// Each reference's image size in bytes.
    image_sizes: std::collections::BTreeMap<String, u64>,
    /// Disks under pressure, and whether every disk could be read.
    disk_msgs: Vec<String>,
    disk_known: bool,
    root_usage: Option<f64>,
}

/// The conditions of a node with these readings.
fn conditions(
    host: &Host,
    docker_up: bool,
    (disk_msgs, disk_known): (Vec<String>, bool),
    draining: Option<&str>,
) -> Vec<Condition> {
    #[allow(clippy::cast_precision_loss)]
    let mem_ratio = host.memory_available as f64 / host.memory_total.max(1) as f64;
    let low_memory = mem_ratio < MEMORY_PRESSURE_RATIO;
    let disk_on = if disk_msgs.is_empty() && !disk_known {
        None
    } else {
        Some(!disk_msgs.is_empty())
    };
    vec![
        flag(
            "Ready",
            Some(docker_up),
            ["DockerReachable", "DockerDown"],
            String::new(),
        ),
        flag(
            "DockerDown",
            Some(!docker_up),
            ["PingFailed", "DockerReachable"],
            String::new(),
        ),
        flag(
            "MemoryPressure",
            Some(low_memory),
            ["LowMemory", "SufficientMemory"],
            format!(
                "{} of {} bytes available",
                host.memory_available, host.memory_total
            ),
        ),
        flag(
            "DiskPressure",
            disk_on,
            ["LowDisk", "SufficientDisk"],
            disk_msgs.join("; "),
        ),
        flag(
            "Draining",
            Some(draining.is_some()),
            ["DrainedByOperator", "NotDraining"],
            draining.unwrap_or_default().to_owned(),
        ),
    ]
}

impl<E: ContainerEngine> Runtime<E> {
    /// Allocatable and committed resources now, without asking Docker (for metrics).
    pub fn allocation(&self) -> (capacity::Alloc, capacity::Alloc) {
        let inner = &self.inner;
        let (committed, _) = inner.admission.held(&inner.view);
        (
            capacity::allocatable(capacity::read_host(), inner.cfg.limits),
            committed,
        )
    }

    /// The capacity report: host readings, arithmetic and conditions.
    pub async fn capacity(&self) -> NodeCapacity {
        let readings = self.capacity_readings().await;
        self.capacity_report(readings)
    }

    /// The capacity report's readings that take I/O (host, Docker, disks), for
    /// [`Runtime::capacity_report`].
    pub(in crate::runtime) async fn capacity_readings(&self) -> Readings {
        let inner = &self.inner;
        let host = capacity::read_host();
        let docker_up = inner.engine.ping().await.is_ok();
        let summaries = if docker_up {
            inner.engine.image_summaries().await.unwrap_or_default()
        } else {
            Vec::new()
        };
        let image_sizes: std::collections::BTreeMap<String, u64> = summaries
            .iter()
            .flat_map(|i| i.refs.iter().map(|r| (r.clone(), i.size)))
            .collect();
        let images: Vec<String> = image_sizes.keys().cloned().collect();
        let mut disks = vec![("state directory", inner.cfg.state_dir.clone())];
        let mut root_usage = None;
        if let Some(root) = self.docker_root().await {
            root_usage = crate::capacity::usage_of(std::path::Path::new(&root));
            disks.push(("Docker root", PathBuf::from(root)));
        }
        let (disk_msgs, disk_known) = disk_pressure(&disks);
        Readings {
            host,
            docker_up,
            images,
            image_sizes,
            disk_msgs,
            disk_known,
            root_usage,
        }
    }

    /// The capacity report from `readings` and what servers, drains and devices hold now:
    /// memory only, no I/O, so the capacity feed can take it under the Watch publish lock.
    pub(in crate::runtime) fn capacity_report(&self, readings: Readings) -> NodeCapacity {
        let inner = &self.inner;
        let Readings {
            host,
            docker_up,
            images,
            image_sizes,
            disk_msgs,
            disk_known,
            root_usage,
        } = readings;
        let limits = inner.cfg.limits;
        let (committed, running) = inner.admission.held(&inner.view);
        let draining = inner.admission.draining();
        let mut conditions = conditions(
            &host,
            docker_up,
            (disk_msgs, disk_known),
            draining.as_deref(),
        );
        conditions.extend(inner.devices.conditions());
        crate::runtime::images::image_gc::report_pressure(
            &mut conditions,
            root_usage,
            &inner.cfg.image_gc,
        );
        NodeCapacity {
            host,
            allocatable: capacity::allocatable(host, limits),
            committed,
            running,
            max_servers: limits.max_servers,
            conditions,
            draining: draining.is_some(),
            images,
            image_sizes,
            devices: inner.devices.capacity(&inner.view),
            labels: inner.cfg.labels.clone(),
            fence_after_seconds: crate::runtime::lifecycle::fence::reported_seconds(
                inner.cfg.fence_after,
            ),
            stop_grace_seconds: u32::try_from(inner.cfg.stop_grace.as_secs()).unwrap_or(u32::MAX),
            warm: inner
                .pool
                .configs()
                .iter()
                .enumerate()
                .map(|(i, p)| capacity::WarmPool {
                    image: p.image.clone(),
                    port: p.port,
                    ready: u32::try_from(inner.pool.ready_in(i).len()).unwrap_or(u32::MAX),
                    size: p.size,
                    memory_bytes: p.memory_bytes,
                })
                .collect(),
        }
    }

    /// Docker's storage root, asked once it answers.
    pub(in crate::runtime) async fn docker_root(&self) -> Option<String> {
        self.inner
            .docker_root
            .get_or_try_init(|| async { self.inner.engine.root_dir().await.map(Some) })
            .await
            .ok()
            .cloned()
            .flatten()
    }

    /// Refuses new Starts from now on (and after restarts) until [`Runtime::undrain`].
    pub fn drain(&self, reason: &str) -> Result<(), crate::runtime::Error> {
        let r = self.inner.admission.drain(reason);
        self.inner.view.capacity_changed();
        r
    }

    /// Accepts new Starts again.
    pub fn undrain(&self) -> Result<(), crate::runtime::Error> {
        let r = self.inner.admission.undrain();
        self.inner.view.capacity_changed();
        r
    }

    /// Why the node is draining, if it is.
    pub fn draining(&self) -> Option<String> {
        self.inner.admission.draining()
    }
}
