//! Node capacity: host readings (sysinfo) and the pure arithmetic of allocatable, committed and
//! admission, kept free of I/O so it can be property-tested.

use std::path::Path;

/// An amount of CPU (cores) and memory (bytes).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Alloc {
    /// Cores.
    pub cpu: f64,
    /// Bytes.
    pub memory: u64,
}

/// What the host has right now.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Host {
    /// Logical CPUs.
    pub cpus: u32,
    /// Total memory in bytes.
    pub memory_total: u64,
    /// Available memory in bytes (MemAvailable).
    pub memory_available: u64,
}

/// The limits an operator sets on a node.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Limits {
    /// Held back for the system (daemons, page cache).
    pub reserved: Alloc,
    /// Most servers at once; 0 = no limit.
    pub max_servers: u32,
}

/// Which resource a refused Start lacked.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    /// Not enough memory.
    #[error(
        "not enough memory on this node: the server needs {requested} bytes, {available} of {allocatable} allocatable bytes are free"
    )]
    Memory {
        /// Asked for.
        requested: u64,
        /// Left.
        available: u64,
        /// In all.
        allocatable: u64,
    },
    /// Not enough CPU.
    #[error(
        "not enough cpu on this node: the server needs {requested} cores, {available:.2} of {allocatable:.2} allocatable cores are free"
    )]
    Cpu {
        /// Asked for.
        requested: f64,
        /// Left.
        available: f64,
        /// In all.
        allocatable: f64,
    },
    /// The node holds its maximum number of servers.
    #[error("too many servers on this node: {running} running, at most {max} allowed")]
    Servers {
        /// Running now.
        running: u32,
        /// The limit.
        max: u32,
    },
}

impl Refusal {
    /// The resource's name: memory, cpu or servers.
    pub fn resource(&self) -> &'static str {
        match self {
            Refusal::Memory { .. } => "memory",
            Refusal::Cpu { .. } => "cpu",
            Refusal::Servers { .. } => "servers",
        }
    }
}

/// Capacity minus the reservation; never negative.
pub fn allocatable(host: Host, limits: Limits) -> Alloc {
    Alloc {
        cpu: (f64::from(host.cpus) - limits.reserved.cpu).max(0.0),
        memory: host.memory_total.saturating_sub(limits.reserved.memory),
    }
}

/// The sum of what running servers hold.
pub fn committed(servers: impl IntoIterator<Item = Alloc>) -> Alloc {
    servers.into_iter().fold(Alloc::default(), |acc, s| Alloc {
        cpu: acc.cpu + s.cpu.max(0.0),
        memory: acc.memory.saturating_add(s.memory),
    })
}

/// What one server holds: its guarantee, or its limit where it has no guarantee.
pub fn demand(
    mem_guarantee: Option<u64>,
    mem_limit: Option<u64>,
    cpu_guarantee: Option<f64>,
    cpu_limit: Option<f64>,
) -> Alloc {
    Alloc {
        cpu: cpu_guarantee.or(cpu_limit).unwrap_or(0.0).max(0.0),
        memory: mem_guarantee.or(mem_limit).unwrap_or(0),
    }
}

/// Whether a server demanding `request` fits beside `committed` (held by `running` servers).
pub fn admit(
    allocatable: Alloc,
    committed: Alloc,
    running: u32,
    limits: Limits,
    request: Alloc,
) -> Result<(), Refusal> {
    if limits.max_servers > 0 && running >= limits.max_servers {
        return Err(Refusal::Servers {
            running,
            max: limits.max_servers,
        });
    }
    let free_memory = allocatable.memory.saturating_sub(committed.memory);
    if request.memory > free_memory {
        return Err(Refusal::Memory {
            requested: request.memory,
            available: free_memory,
            allocatable: allocatable.memory,
        });
    }
    let free_cpu = (allocatable.cpu - committed.cpu).max(0.0);
    // A small tolerance so that 4 × 0.25 fits in 1.0 despite binary fractions.
    if request.cpu > free_cpu + 1e-9 {
        return Err(Refusal::Cpu {
            requested: request.cpu,
            available: free_cpu,
            allocatable: allocatable.cpu,
        });
    }
    Ok(())
}

/// Reads the host's CPUs and memory.
pub fn read_host() -> Host {
    use sysinfo::{CpuRefreshKind, MemoryRefreshKind, RefreshKind, System};
    let kind = RefreshKind::nothing()
        .with_memory(MemoryRefreshKind::everything())
        .with_cpu(CpuRefreshKind::nothing());
    match System::new_with_specifics(kind) {
        Ok(sys) => Host {
            cpus: u32::try_from(sys.cpus().len()).unwrap_or(u32::MAX),
            memory_total: sys.total_memory(),
            memory_available: sys.available_memory(),
        },
        Err(e) => {
            tracing::error!(error = %e, "cannot read host capacity");
            Host::default()
        }
    }
}

/// Free and total bytes of the filesystem holding `path` (the longest matching mount point).
pub fn disk_of(path: &Path) -> Option<(u64, u64)> {
    let disks = sysinfo::Disks::new_with_refreshed_list().ok()?;
    disks
        .iter()
        .filter(|d| path.starts_with(d.mount_point()))
        .max_by_key(|d| d.mount_point().as_os_str().len())
        .map(|d| (d.available_space(), d.total_space()))
}

// ---- the capacity report (filled by the runtime, carried on Watch) ----------------------------

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
    /// Each image reference's size in bytes.
    pub image_sizes: std::collections::BTreeMap<String, u64>,
    /// Each device class.
    pub devices: Vec<ClassCapacity>,
    /// The configured labels (`[node] labels`).
    pub labels: std::collections::BTreeMap<String, String>,
    /// Seconds from the hub's last contact to the node fencing its servers; 0 = it does not.
    pub fence_after_seconds: u32,
    /// The node's stop grace, seconds.
    pub stop_grace_seconds: u32,
    /// Each warm pool.
    pub warm: Vec<WarmPool>,
}

/// One warm pool in the capacity report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WarmPool {
    /// The image reference.
    pub image: String,
    /// Its servers' port.
    pub port: u16,
    /// Members ready now.
    pub ready: u32,
    /// Members kept ready.
    pub size: u32,
    /// What each waiting member holds of the memory.
    pub memory_bytes: u64,
}

/// One device class in the capacity report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassCapacity {
    /// The class.
    pub class: String,
    /// Shares in all.
    pub total: u32,
    /// Shares that can be handed out.
    pub allocatable: u32,
    /// Shares held.
    pub committed: u32,
    /// Model names.
    pub models: Vec<String>,
    /// Devices with a free share.
    pub free_devices: u32,
    /// Shares per device.
    pub shares: u32,
    /// Why discovery failed ("" = it did not).
    pub discovery_error: String,
}

/// Percent of the disk holding `path` in use, as `df` counts it: used / (used + available to
/// unprivileged users). Blocks reserved for root or held outside the filesystem's reach count
/// as neither, so a disk with much of its size reserved is not taken for a full one.
pub fn usage_of(path: &std::path::Path) -> Option<f64> {
    let s = rustix::fs::statvfs(path).ok()?;
    let used = s.f_blocks.saturating_sub(s.f_bfree);
    let room = used + s.f_bavail;
    #[allow(clippy::cast_precision_loss)]
    (room > 0).then(|| 100.0 * used as f64 / room as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const GIB: u64 = 1 << 30;

    fn host() -> Host {
        Host {
            cpus: 4,
            memory_total: 16 * GIB,
            memory_available: 10 * GIB,
        }
    }

    #[test]
    fn admission_names_the_short_resource() {
        let limits = Limits {
            reserved: Alloc {
                cpu: 1.0,
                memory: 2 * GIB,
            },
            max_servers: 3,
        };
        let alloc = allocatable(host(), limits);
        assert_eq!(
            alloc,
            Alloc {
                cpu: 3.0,
                memory: 14 * GIB
            }
        );
        let used = committed([Alloc {
            cpu: 1.0,
            memory: 10 * GIB,
        }]);
        let big = Alloc {
            cpu: 0.5,
            memory: 5 * GIB,
        };
        assert_eq!(
            admit(alloc, used, 1, limits, big)
                .expect_err("memory")
                .resource(),
            "memory"
        );
        let hungry = Alloc {
            cpu: 2.5,
            memory: GIB,
        };
        assert_eq!(
            admit(alloc, used, 1, limits, hungry)
                .expect_err("cpu")
                .resource(),
            "cpu"
        );
        assert_eq!(
            admit(alloc, used, 3, limits, Alloc::default())
                .expect_err("servers")
                .resource(),
            "servers"
        );
        assert!(
            admit(
                alloc,
                used,
                2,
                limits,
                Alloc {
                    cpu: 2.0,
                    memory: 4 * GIB
                }
            )
            .is_ok()
        );
        let quarters = committed(
            [Alloc {
                cpu: 0.25,
                memory: 0,
            }; 11],
        );
        assert!(
            admit(
                alloc,
                quarters,
                0,
                Limits::default(),
                Alloc {
                    cpu: 0.25,
                    memory: 0
                }
            )
            .is_ok()
        );
    }

    #[test]
    fn demand_prefers_the_guarantee() {
        assert_eq!(
            demand(Some(1), Some(2), Some(0.5), Some(1.0)),
            Alloc {
                cpu: 0.5,
                memory: 1
            }
        );
        assert_eq!(
            demand(None, Some(2), None, Some(1.0)),
            Alloc {
                cpu: 1.0,
                memory: 2
            }
        );
        assert_eq!(demand(None, None, None, None), Alloc::default());
    }

    fn any_alloc() -> impl Strategy<Value = Alloc> {
        (0.0f64..64.0, 0u64..(1 << 40)).prop_map(|(cpu, memory)| Alloc { cpu, memory })
    }

    proptest! {
        #[test]
        fn allocatable_is_never_negative(cpus in 0u32..512, total in any::<u64>(), rc in 0.0f64..1e6, rm in any::<u64>()) {
            let a = allocatable(
                Host { cpus, memory_total: total, memory_available: 0 },
                Limits { reserved: Alloc { cpu: rc, memory: rm }, max_servers: 0 },
            );
            prop_assert!(a.cpu >= 0.0);
            prop_assert!(a.memory <= total);
        }

        #[test]
        fn committed_is_the_sum_and_freeing_a_server_frees_exactly_its_share(servers in proptest::collection::vec(any_alloc(), 0..40), i in any::<usize>()) {
            let all = committed(servers.clone());
            let cpu: f64 = servers.iter().map(|s| s.cpu).sum();
            let mem: u64 = servers.iter().map(|s| s.memory).sum();
            prop_assert!((all.cpu - cpu).abs() < 1e-6);
            prop_assert_eq!(all.memory, mem);
            prop_assert!(all.cpu >= 0.0);
            if !servers.is_empty() {
                let gone = i % servers.len();
                let mut rest = servers.clone();
                let freed = rest.remove(gone);
                let after = committed(rest);
                prop_assert_eq!(all.memory - after.memory, freed.memory);
                prop_assert!(((all.cpu - after.cpu) - freed.cpu).abs() < 1e-6);
            }
        }

        #[test]
        fn an_admitted_request_never_overcommits(alloc in any_alloc(), used in proptest::collection::vec(any_alloc(), 0..10), req in any_alloc(), max in 0u32..20) {
            let c = committed(used.clone());
            let running = u32::try_from(used.len()).unwrap_or(u32::MAX);
            let limits = Limits { reserved: Alloc::default(), max_servers: max };
            if admit(alloc, c, running, limits, req).is_ok() {
                prop_assert!(c.memory + req.memory <= alloc.memory);
                prop_assert!(c.cpu + req.cpu <= alloc.cpu + 1e-6);
                prop_assert!(max == 0 || running < max);
            }
        }
    }
}
