//! The lifecycle of single-user servers on this node. [`Runtime`] is a cheap handle over parts
//! that each own their state:
//!
//! | part | owns | file |
//! |---|---|---|
//! | [`view::View`] | every server's record + container as last seen, activity, the Watch broadcast | `view/mod.rs` |
//! | [`view::records::Records`] | the state store and its save lock; writes disk, then the view | `view/records.rs` |
//! | [`view::keys::KeyTable`] | one lifecycle operation per key, and what is under way | `view/keys.rs` |
//! | [`lifecycle::callers::Callers`] | who still waits for each spawn; abandonment after the grace | `lifecycle/callers.rs` |
//! | [`resources::admission::Admission`] | draining, pending spawns, the spawn queue | `resources/admission.rs` |
//! | [`resources::devices::Devices`] | the device inventory, spawns holding devices before their record | `resources/devices.rs` |
//! | [`progress::ProgressRegistry`] | each spawn's phases, for replay | `progress/mod.rs` |
//! | [`progress::boot_times::BootTimes`] | each image's recent boot times, for the progress bar | `progress/boot_times.rs` |
//! | [`images::pull::Pulls`] | the image pulls under way, one per image, and who follows each | `images/pull.rs` |
//! | [`images::image_gc::ImageUse`] | when each image was last seen in use, for image GC | `images/image_gc.rs` |
//! | [`resources::capfeed::Feed`] | the capacity report pushed on Watch, recomputed at each change | `resources/capfeed.rs` |
//!
//! What is derived, not stored: a server's status ([`view::status::derive`], a pure function of
//! record, container and operation); the capacity report (`resources/report.rs`). The
//! operations on top, in `lifecycle/`: `start.rs`, `stop.rs`, `state_ops.rs` (the hub's blob,
//! DeleteForever), `reconcile.rs` (relist), `resume.rs` (restarting a kept container, naming a
//! drift), `observe.rs` (Docker's reports into the view, in order), `ready.rs` (readiness
//! probing), `logs.rs`; Poll, List and Watch in `view/read.rs`; the user volumes
//! (`volumes/mod.rs`) and their moves between nodes (`volumes/transfer/`: the tar stream in
//! `volumes/transfer/archive.rs`); errors in `error.rs`.
//!
//! Each folder is a concern, with its own map at the top of its `mod.rs`. Dependencies point
//! one way: `lifecycle` → `resources`, `images`, `volumes` → `view`, `progress`; no file names
//! one that names it back (`scripts/check-module-cycles.py`, run by CI).
//!
//! **Lock order.** Async: a key's lock (`keys`) → the save lock (`records`) → the spawn queue
//! (`admission`); never the reverse, and no std lock is held across an await. Std locks are
//! held only to copy or update plain data: `admission.pending` → `view.entries`; `devices.pending` → `view.entries`;
//! `view.publish` → `view.entries` / `view.activity` / the key table's; `view.publish` →
//! `admission.pending` / `devices.pending` (the capacity feed's report); no other nesting.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use crate::docker::claimed::{ClaimBook, Claimed};
use crate::docker::{ContainerEngine, ContainerInfo, LABEL_MANAGED, LABEL_SERVER, LABEL_USER};
use crate::key::ServerKey;
use crate::state::FileStore;

mod error;
pub mod images;
pub mod lifecycle;
pub mod pool;
pub mod progress;
pub mod resources;
pub mod view;
pub mod volumes;

pub use error::Error;
pub use lifecycle::logs::LogLine;
pub use lifecycle::reconcile::ReconcileReport;
pub use lifecycle::stop::StopSpec;
pub use view::status::{State, Status, exit_reason};

use images::{image_gc, pull};
use lifecycle::callers;
use progress::ProgressRegistry;
use progress::boot_times;
use resources::{admission, capfeed, devices};
use view::View;
use view::keys::KeyTable;
use view::records::Records;
use view::status;
use volumes::transfer;

/// How the runtime behaves; filled from the daemon config.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// This node's id, written into every container's labels.
    pub node_id: String,
    /// Host address container ports are published on.
    pub publish_host_ip: IpAddr,
    /// Host name or address put into server URLs.
    pub advertise_host: String,
    /// Readiness deadline when the request gives none.
    pub default_ready_timeout: Duration,
    /// Longest readiness deadline a request may ask for.
    pub max_ready_timeout: Duration,
    /// SIGTERM-to-SIGKILL grace when the request gives none.
    pub stop_grace: Duration,
    /// Log lines quoted when a server dies during start.
    pub failure_log_lines: u32,
    /// How long a Start whose callers have all gone waits for a retry before it is cancelled.
    pub abandon_grace: Duration,
    /// Reservation and server limit.
    pub limits: crate::capacity::Limits,
    /// Docker create+start operations at once.
    pub max_concurrent_spawns: u32,
    /// Spawns that may wait for a slot.
    pub spawn_queue_limit: u32,
    /// How long a spawn may wait for a slot.
    pub spawn_queue_timeout: Duration,
    /// State directory (disk pressure, the drain marker).
    pub state_dir: std::path::PathBuf,
    /// What a hub may ask of this node.
    pub policy: crate::policy::Policy,
    /// Who pins host paths.
    pub hostpaths: crate::hostpath::HostPathsConfig,
    /// The devices the node hands out, as discovered at start-up.
    pub devices: crate::devices::Inventory,
    /// Image pulls.
    pub pulls: pull::PullConfig,
    /// Image garbage collection.
    pub image_gc: image_gc::GcConfig,
    /// The node's labels, reported by Capacity for the hub's node selectors.
    pub labels: std::collections::BTreeMap<String, String>,
    /// The network a server joins when its Start names none: berth's, with traffic between
    /// containers dropped (`network.isolate_users`); `None` = Docker's default bridge.
    pub isolated_network: Option<String>,
    /// `[fencing] stop_after_hub_lost_seconds`; `None` = the node does not fence by default.
    pub fence_after: Option<Duration>,
    /// `[[warm.pools]]`.
    pub pools: Vec<pool::PoolConfig>,
    /// Whether this berthd may mount volumes into running containers (warm claims).
    pub graft: bool,
}

/// The runtime's share of the node configuration is the runtime's to define: `config` knows
/// nothing of the runtime.
impl crate::config::Config {
    /// The runtime's share of the configuration.
    pub fn runtime(&self) -> RuntimeConfig {
        RuntimeConfig {
            node_id: self.node_id.clone(),
            publish_host_ip: self.docker.publish_host_ip,
            advertise_host: self.advertise_host(),
            default_ready_timeout: Duration::from_secs(self.spawn.ready_timeout_seconds),
            max_ready_timeout: Duration::from_secs(self.spawn.max_ready_timeout_seconds),
            stop_grace: Duration::from_secs(self.spawn.stop_grace_seconds),
            failure_log_lines: self.spawn.failure_log_lines,
            abandon_grace: Duration::from_secs(self.spawn.abandon_grace_seconds),
            limits: crate::capacity::Limits {
                reserved: crate::capacity::Alloc {
                    cpu: self.capacity.reserved_cpu,
                    memory: self.capacity.reserved_memory_bytes,
                },
                max_servers: self.capacity.max_servers,
            },
            max_concurrent_spawns: self.capacity.max_concurrent_spawns,
            spawn_queue_limit: self.capacity.spawn_queue_limit,
            spawn_queue_timeout: Duration::from_secs(self.capacity.spawn_queue_timeout_seconds),
            state_dir: self.state_dir.clone(),
            policy: self.policy.clone(),
            hostpaths: self.hostpaths.clone(),
            devices: crate::devices::Inventory::discover(&self.devices.classes),
            pulls: crate::runtime::images::pull::PullConfig {
                default_policy: self.images.pull_policy,
                auth_file: (!self.images.registry_auth_file.as_os_str().is_empty())
                    .then(|| self.images.registry_auth_file.clone()),
                timeout: Duration::from_secs(self.images.pull_timeout_seconds),
            },
            image_gc: crate::runtime::images::image_gc::GcConfig {
                high_percent: self.images.gc_high_percent,
                low_percent: self.images.gc_low_percent,
                interval: Duration::from_secs(self.images.gc_interval_seconds),
                min_age: Duration::from_secs(self.images.gc_min_age_seconds),
                images: self.images.gc_images.clone(),
            },
            labels: self.node.labels.clone(),
            isolated_network: self
                .network
                .isolate_users
                .then(|| self.network.name.clone()),
            fence_after: (self.fencing.stop_after_hub_lost_seconds > 0)
                .then(|| Duration::from_secs(self.fencing.stop_after_hub_lost_seconds)),
            pools: self.warm.pools.clone(),
            graft: crate::hostpath::graft::available(
                !self.hostpaths.pin_helper_socket.as_os_str().is_empty(),
            ),
        }
    }
}

/// A server that answers HTTP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Started {
    /// Where to reach it.
    pub url: String,
    /// Its container.
    pub container_id: String,
    /// The spawn that started it.
    pub spawn_id: String,
    /// What became of a kept stopped container (resumed, or recreated and why); "" otherwise.
    pub note: String,
}

/// The runtime: cheap to clone, shared by every RPC.
pub struct Runtime<E> {
    inner: Arc<Inner<E>>,
}

impl<E> Clone for Runtime<E> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<E> {
    /// The engine, with claimed warm containers answering as the servers they became.
    engine: Claimed<E>,
    cfg: RuntimeConfig,
    keys: Arc<KeyTable>,
    /// Who still waits for each spawn.
    callers: Arc<callers::Callers>,
    progress: ProgressRegistry,
    boot_times: boot_times::BootTimes,
    view: Arc<View>,
    records: Records,
    admission: admission::Admission,
    /// Device inventory and who holds what.
    devices: devices::Devices,
    /// Volumes being exported, imported or removed.
    transfers: transfer::Busy,
    /// The pulls under way.
    pulls: Arc<pull::Pulls>,
    /// When each image was last seen in use, for image GC.
    image_use: image_gc::ImageUse,
    /// Docker's storage root, asked once (for disk pressure).
    docker_root: tokio::sync::OnceCell<Option<String>>,
    /// The Prometheus families this runtime records into.
    metrics: Arc<crate::metrics::Metrics>,
    /// The capacity pushed on Watch.
    feed: capfeed::Feed,
    /// The subnets of the networks servers are put on, whose peers the listeners refuse.
    nets: crate::netguard::ContainerNets,
    /// When the hub last reached this node (fencing).
    contact: Arc<lifecycle::fence::HubContact>,
    /// The warm pools' ready members.
    pool: pool::Pool,
}

impl<E: ContainerEngine> Runtime<E> {
    /// A runtime over `engine`, keeping its records in `store`. Call
    /// [`Runtime::reconcile`] before serving so the view holds what Docker runs.
    pub fn new(engine: E, cfg: RuntimeConfig, store: FileStore) -> Self {
        let view = Arc::new(View::default());
        let pool = pool::Pool::new(&cfg.pools, &cfg.state_dir);
        Self {
            inner: Arc::new(Inner {
                admission: admission::Admission::new(&cfg),
                devices: devices::Devices::new(&cfg),
                records: Records::new(store, view.clone()),
                engine: Claimed::new(engine, Arc::new(ClaimBook::open_or_empty(&cfg.state_dir))),
                view,
                callers: callers::Callers::new(cfg.abandon_grace),
                cfg,
                keys: Arc::default(),
                progress: ProgressRegistry::default(),
                boot_times: boot_times::BootTimes::default(),
                transfers: transfer::Busy::default(),
                pulls: Arc::default(),
                image_use: image_gc::ImageUse::default(),
                docker_root: tokio::sync::OnceCell::new(),
                metrics: Arc::default(),
                feed: capfeed::Feed::default(),
                nets: crate::netguard::ContainerNets::default(),
                contact: Arc::default(),
                pool,
            }),
        }
    }

    /// The Prometheus families, for the `/metrics` server and the gRPC layer.
    pub fn metrics(&self) -> &Arc<crate::metrics::Metrics> {
        &self.inner.metrics
    }

    /// The subnets of the container networks, for the listeners to refuse their peers.
    pub fn container_nets(&self) -> &crate::netguard::ContainerNets {
        &self.inner.nets
    }

    /// The container engine, for those who feed or read the runtime (the monitor's events,
    /// the reporter's usage readings, the health check).
    pub fn engine(&self) -> &Claimed<E> {
        &self.inner.engine
    }

    /// The view of every server, for the reporter.
    pub fn view(&self) -> &View {
        &self.inner.view
    }

    /// Loads the durable records into the view; returns how many were corrupt (moved aside).
    pub async fn load_records(&self) -> Result<usize, Error> {
        self.inner.records.load().await
    }

    /// The configuration.
    pub fn config(&self) -> &RuntimeConfig {
        &self.inner.cfg
    }

    /// The spawn progress registry.
    pub fn progress(&self) -> &ProgressRegistry {
        &self.inner.progress
    }

    /// The URL of a server published on `host_port`.
    fn url_for(&self, host_port: u16) -> String {
        status::url_for(&self.inner.cfg.advertise_host, host_port)
    }

    /// Where the node itself reaches a server published on `host_port`.
    fn probe_addr(&self, host_port: u16) -> SocketAddr {
        let ip = match self.inner.cfg.publish_host_ip {
            IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        SocketAddr::new(ip, host_port)
    }

    /// The container of `key` if it is ours; a foreign container under our name is an error.
    async fn container_of(&self, key: &ServerKey) -> Result<Option<ContainerInfo>, Error> {
        let name = key.container_name();
        let Some(info) = self.inner.engine.inspect(&name).await? else {
            return Ok(None);
        };
        if is_container_of(&info, key) {
            Ok(Some(info))
        } else {
            Err(Error::NameTaken { name })
        }
    }
}

/// Whether container `c` (found by `key`'s name) is berth's container of `key`, by its labels.
fn is_container_of(c: &ContainerInfo, key: &ServerKey) -> bool {
    c.label(LABEL_MANAGED) == Some("true")
        && c.label(LABEL_USER) == Some(key.user())
        && c.label(LABEL_SERVER) == Some(key.server())
}

impl<E: ContainerEngine> crate::metrics::Scraped for Runtime<E> {
    fn metrics(&self) -> &crate::metrics::Metrics {
        &self.inner.metrics
    }

    fn gauges(&self) -> crate::metrics::Gauges {
        let (allocatable, committed) = self.allocation();
        crate::metrics::Gauges {
            running: self.view().running_containers().len(),
            allocatable,
            committed,
        }
    }

    fn container_nets(&self) -> &crate::netguard::ContainerNets {
        &self.inner.nets
    }
}
