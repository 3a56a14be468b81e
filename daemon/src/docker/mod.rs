//! The narrow view of a container engine that berthd needs, and its types; `bollard_engine`
//! implements it over the Docker Engine API.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use futures::stream::BoxStream;

pub mod bollard_engine;
pub mod claimed;
#[cfg(any(test, feature = "test-util"))]
pub mod fake;

pub use bollard_engine::BollardEngine;

/// Label marking every container berthd manages.
pub const LABEL_MANAGED: &str = "berth.managed";
/// Label holding the exact JupyterHub user name.
pub const LABEL_USER: &str = "berth.user";
/// Label holding the exact server name ("" for the default server).
pub const LABEL_SERVER: &str = "berth.server";
/// Label holding the id of the node that created the container.
pub const LABEL_NODE: &str = "berth.node";
/// Label holding the spawn id (the idempotency key of Start).
pub const LABEL_SPAWN_ID: &str = "berth.spawn-id";
/// Label holding the hash of the spec without secrets.
pub const LABEL_SPEC_HASH: &str = "berth.spec-hash";
/// Label holding the comma-separated volumes the node created for this key.
pub const LABEL_OWNED_VOLUMES: &str = "berth.owned-volumes";
/// Docker's bridge option that, set to "false", drops traffic between containers of a network.
pub const OPTION_ENABLE_ICC: &str = "com.docker.network.bridge.enable_icc";

/// What berthd needs to know of a Docker network.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkInfo {
    /// Its subnets, as CIDR text (`172.18.0.0/16`).
    pub subnets: Vec<String>,
    /// Whether its containers can open connections to each other (Docker's default).
    pub icc: bool,
}

/// Label marking a container on the host's network (its port is the host's port).
pub const LABEL_HOST_NETWORK: &str = "berth.host-network";
/// Label on a volume berthd made: `user` (from `{user}` alone) or `server` (`{server}`).
pub const LABEL_VOLUME_SCOPE: &str = "berth.volume-scope";
/// Label holding the container port the server listens on.
pub const LABEL_PORT: &str = "berth.port";
/// Label: the devices the container was given, `class/id` comma-separated.
pub const LABEL_DEVICES: &str = "berth.devices";
/// Label marking a container made to be resumed: its per-spawn env comes from a file.
pub const LABEL_RESUMABLE: &str = "berth.resumable";
/// Label holding what a resume compares: the image id and a digest per aspect of the spec.
pub const LABEL_FINGERPRINT: &str = "berth.fingerprint";
/// Label marking a warm pool container, holding the image reference of its pool. A claimed one
/// keeps it (labels never change); its claim in the state directory says whose it is.
pub const LABEL_POOL: &str = "berth.pool";

/// What went wrong talking to the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The object does not exist.
    #[error("{what} not found")]
    NotFound {
        /// What was looked for.
        what: String,
    },
    /// The engine refused because of the object's state or a name conflict.
    #[error("conflict: {message}")]
    Conflict {
        /// The engine's message.
        message: String,
    },
    /// The engine did not answer or could not be reached.
    #[error("Docker engine unreachable during {op}: {message}")]
    Unavailable {
        /// The operation.
        op: &'static str,
        /// Why.
        message: String,
    },
    /// The engine took longer than the configured deadline.
    #[error("Docker engine did not answer {op} within {after:?}")]
    Timeout {
        /// The operation.
        op: &'static str,
        /// The deadline.
        after: Duration,
    },
    /// The engine answered with an error.
    #[error("Docker refused {op} (HTTP {status}): {message}")]
    Api {
        /// The operation.
        op: &'static str,
        /// HTTP status.
        status: u16,
        /// The engine's message.
        message: String,
    },
}

/// The engine's identity.
#[derive(Debug, Clone)]
pub struct EngineVersion {
    /// Docker release, e.g. "20.10.24".
    pub version: String,
    /// API version in use, e.g. "1.41".
    pub api_version: String,
}

/// What berthd needs to know of an image.
#[derive(Debug, Clone)]
pub struct ImageInfo {
    /// Image id.
    pub id: String,
    /// The image's default command.
    pub cmd: Vec<String>,
    /// The image's entrypoint.
    pub entrypoint: Vec<String>,
}

/// A file or directory to put into a container before it starts. Its contents may be
/// secret (the per-spawn env): never logged.
#[derive(Clone, PartialEq, Eq)]
pub struct NewFile {
    /// Path relative to the container's root, e.g. `.berth/spawn-env`.
    pub path: String,
    /// Permission bits.
    pub mode: u32,
    /// The bytes of a file; `None` for a directory.
    pub contents: Option<Vec<u8>>,
}

impl std::fmt::Debug for NewFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewFile")
            .field("path", &self.path)
            .field("mode", &format_args!("{:o}", self.mode))
            .field("bytes", &self.contents.as_ref().map(Vec::len))
            .finish()
    }
}

/// One report of a pull under way, as the engine streams it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PullEvent {
    /// The layer it is about; "" for the image as a whole.
    pub layer: String,
    /// Docker's status text: `Pulling fs layer`, `Waiting`, `Downloading`, `Download
    /// complete`, `Extracting`, `Pull complete`, `Already exists`, ...
    pub status: String,
    /// Bytes done of this step (downloaded, or extracted), when Docker tells.
    pub current: Option<u64>,
    /// Size of this step, when Docker tells.
    pub total: Option<u64>,
}

/// One image as the engine lists it, for image garbage collection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageSummary {
    /// Image id (`sha256:...`).
    pub id: String,
    /// Its `repo:tag` references (none for a dangling image).
    pub refs: Vec<String>,
    /// Bytes on disk.
    pub size: u64,
    /// Creation time, seconds since the epoch.
    pub created: i64,
}

/// A mount: a named volume or (policy permitting) a host path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Volume name, or when `bind` the staging path that pins the checked host path (see
    /// [`crate::hostpath`]), never the path as the request wrote it.
    pub volume: String,
    /// A bind mount of a host path.
    pub bind: bool,
    /// Path inside the container.
    pub target: String,
    /// Read-only mount.
    pub read_only: bool,
}

/// Everything needed to create one container.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    /// Container name.
    pub name: String,
    /// Image reference.
    pub image: String,
    /// Entrypoint; `None` = the image's.
    pub entrypoint: Option<Vec<String>>,
    /// Full command; `None` = the image's.
    pub cmd: Option<Vec<String>>,
    /// `KEY=value` strings. Secret: never logged.
    pub env: Vec<String>,
    /// Labels.
    pub labels: HashMap<String, String>,
    /// Container port to publish.
    pub port: u16,
    /// Host address the port is published on.
    pub host_ip: String,
    /// Memory limit in bytes.
    pub memory: Option<i64>,
    /// Memory reservation in bytes.
    pub memory_reservation: Option<i64>,
    /// CPU limit in units of 1e-9 cores.
    pub nano_cpus: Option<i64>,
    /// Relative CPU weight (1024 = one core's worth).
    pub cpu_shares: Option<i64>,
    /// Named volumes.
    pub mounts: Vec<Mount>,
    /// Privileges over the host (already allowed by the node policy). On the host network
    /// no port is published: the server uses the host's port.
    pub host: crate::spec::HostAccess,
    /// Container options (already allowed by the node policy).
    pub options: crate::spec::options::ContainerOptions,
    /// Devices requested from a Docker device driver (the nvidia runtime), by id.
    pub device_requests: Vec<DeviceRequest>,
    /// Stdin kept open for one writer (a warm pool container's launcher reads its identity
    /// there); closed when that writer is done.
    pub stdin: bool,
}

/// The resources of a running container that `docker update` changes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Memory limit in bytes (`None` = unchanged).
    pub memory: Option<i64>,
    /// Memory reservation in bytes.
    pub memory_reservation: Option<i64>,
    /// CPU limit in 1e-9 cores.
    pub nano_cpus: Option<i64>,
    /// Relative CPU weight.
    pub cpu_shares: Option<i64>,
}

/// Devices of one driver, by id (Docker's `DeviceRequests`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRequest {
    /// The driver ("nvidia").
    pub driver: String,
    /// The devices' ids as the driver knows them.
    pub device_ids: Vec<String>,
}

/// Coarse lifecycle state reported by the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    /// Created, never started.
    Created,
    /// Running.
    Running,
    /// Paused.
    Paused,
    /// Being restarted by the engine.
    Restarting,
    /// Being removed.
    Removing,
    /// Exited.
    Exited,
    /// Dead (failed removal or similar).
    Dead,
}

/// One published port binding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortBinding {
    /// Container port.
    pub container_port: u16,
    /// Host address.
    pub host_ip: String,
    /// Host port.
    pub host_port: u16,
}

/// What berthd needs to know of one container.
#[derive(Debug, Clone)]
pub struct ContainerInfo {
    /// Full container id.
    pub id: String,
    /// Name without the leading `/`.
    pub name: String,
    /// Image reference it was created from.
    pub image: String,
    /// Labels.
    pub labels: HashMap<String, String>,
    /// Lifecycle state.
    pub status: RunStatus,
    /// Exit code once exited.
    pub exit_code: Option<i64>,
    /// Killed by the kernel OOM killer.
    pub oom_killed: bool,
    /// The engine's error text (e.g. why start failed).
    pub error: String,
    /// RFC 3339 start time, if ever started.
    pub started_at: Option<String>,
    /// RFC 3339 finish time, if ever finished.
    pub finished_at: Option<String>,
    /// Published ports.
    pub ports: Vec<PortBinding>,
    /// Memory limit in bytes (0 = none).
    pub memory: i64,
    /// CPU limit in 1e-9 cores (0 = none).
    pub nano_cpus: i64,
    /// Memory reservation in bytes (0 = none).
    pub memory_reservation: i64,
    /// CPU shares (0 = default).
    pub cpu_shares: i64,
    /// Most processes at once (0 = no limit).
    pub pids_limit: i64,
    /// Docker HEALTHCHECK status ("starting", "healthy", "unhealthy"), "" without one.
    pub health: String,
    /// How often Docker restarted it.
    pub restart_count: i64,
    /// Host PID of the container's first process while it runs.
    pub pid: Option<u32>,
}

/// What berthd needs to know of a named volume.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VolumeInfo {
    /// Its name.
    pub name: String,
    /// Volume driver (`local` for Docker's own).
    pub driver: String,
    /// Driver options (for `local`: `type`, `o`, `device`, as `mount(8)` takes them).
    pub options: HashMap<String, String>,
    /// Labels given when it was created.
    pub labels: HashMap<String, String>,
    /// Where the local driver keeps its data on the host ("" for other drivers).
    pub mountpoint: String,
}

/// A volume to create.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewVolume {
    /// Its name.
    pub name: String,
    /// Driver, "" for local.
    pub driver: String,
    /// Driver options.
    pub options: HashMap<String, String>,
    /// Labels.
    pub labels: HashMap<String, String>,
}

impl VolumeInfo {
    /// The host path a `local` volume bind-mounts (`type=none` or `o=bind` with a `device`),
    /// which Docker resolves by its text, links and all, when the container starts.
    pub fn bind_source(&self) -> Option<&str> {
        if self.driver != "local" {
            return None;
        }
        let device = self.options.get("device")?;
        let o = self.options.get("o").map_or("", String::as_str);
        let bind = self.options.get("type").is_some_and(|t| t == "none")
            || o.split(',').any(|f| f == "bind" || f == "rbind");
        bind.then_some(device.as_str())
    }
}

/// Cumulative counters of one container, for activity detection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// CPU time used since the container started, in nanoseconds.
    pub cpu_ns: u64,
    /// Network bytes received and sent since the container started.
    pub net_bytes: u64,
    /// Memory in use without the page cache, bytes.
    pub memory_bytes: u64,
    /// The memory limit Docker reports (the host's memory without one), bytes.
    pub memory_limit_bytes: u64,
}

/// A container event from the engine.
#[derive(Debug, Clone)]
pub struct EngineEvent {
    /// Container id.
    pub container_id: String,
    /// Docker's action: create, start, die, oom, kill, stop, destroy, health_status: ...
    pub action: String,
    /// The container's labels (Docker sends them as event attributes).
    pub labels: HashMap<String, String>,
    /// Event time, nanoseconds since the epoch.
    pub time_nano: i64,
}

impl ContainerInfo {
    /// The label value, if present.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.get(key).map(String::as_str)
    }

    /// The host port that `container_port` is published on (itself on the host network).
    pub fn host_port(&self, container_port: u16) -> Option<u16> {
        if self.label(LABEL_HOST_NETWORK) == Some("true") {
            return Some(container_port);
        }
        self.ports
            .iter()
            .find(|p| p.container_port == container_port && p.host_port != 0)
            .map(|p| p.host_port)
    }
}

/// Which output stream a log chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// A piece of container output.
#[derive(Debug, Clone)]
pub struct LogChunk {
    /// Its stream.
    pub stream: LogStream,
    /// Raw bytes (usually whole lines).
    pub data: Vec<u8>,
}

/// A label value in [`ContainerEngine::list`] that matches any value of its label.
pub const ANY_VALUE: &str = "*";

/// The container operations berthd uses. Every call is bounded by a deadline.
pub trait ContainerEngine: Send + Sync + 'static {
    /// The engine's version.
    fn version(&self) -> impl Future<Output = Result<EngineVersion, EngineError>> + Send;
    /// Cheap liveness check.
    fn ping(&self) -> impl Future<Output = Result<(), EngineError>> + Send;
    /// The image, or `None` when it is not present locally.
    fn image(
        &self,
        reference: &str,
    ) -> impl Future<Output = Result<Option<ImageInfo>, EngineError>> + Send;
    /// Pulls the full reference `reference` from its registry, with `auth` when given. The
    /// stream reports each layer's progress and ends after the image is complete, or with the
    /// error that stopped the pull. Not bounded by the call deadline: the caller bounds it
    /// (and cancels the pull by dropping the stream).
    fn pull(
        &self,
        reference: &str,
        auth: Option<&crate::registry::RegistryAuth>,
    ) -> BoxStream<'static, Result<PullEvent, EngineError>>;
    /// Every image of the engine (not intermediate layers).
    fn image_summaries(
        &self,
    ) -> impl Future<Output = Result<Vec<ImageSummary>, EngineError>> + Send;
    /// Ids of the images of every container, in any state, berthd's or not.
    fn images_in_use(&self) -> impl Future<Output = Result<Vec<String>, EngineError>> + Send;
    /// Removes one reference (or, by id, an untagged image) without force: an image a container
    /// uses, or with dependent child images, is a `Conflict`.
    fn remove_image(&self, reference: &str)
    -> impl Future<Output = Result<(), EngineError>> + Send;
    /// Creates a container and returns its id.
    fn create(
        &self,
        spec: &ContainerSpec,
    ) -> impl Future<Output = Result<String, EngineError>> + Send;
    /// Starts a created container.
    fn start(&self, id: &str) -> impl Future<Output = Result<(), EngineError>> + Send;
    /// Renames container `id`; a name in use is a `Conflict` (so a name is claimed only once).
    fn rename(&self, id: &str, name: &str) -> impl Future<Output = Result<(), EngineError>> + Send;
    /// Changes the resources of container `id`, running or not.
    fn update_limits(
        &self,
        id: &str,
        limits: Limits,
    ) -> impl Future<Output = Result<(), EngineError>> + Send;
    /// Writes `data` to the stdin of running container `id` (created with `stdin`) and closes
    /// it. Secret: never logged.
    fn send_stdin(
        &self,
        id: &str,
        data: Vec<u8>,
    ) -> impl Future<Output = Result<(), EngineError>> + Send;
    /// The network of this name, `None` when there is none.
    fn network(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<NetworkInfo>, EngineError>> + Send;
    /// Creates a bridge network with `labels`, its containers able to reach each other only
    /// when `icc`; creating one that exists succeeds.
    fn create_network(
        &self,
        name: &str,
        labels: &HashMap<String, String>,
        icc: bool,
    ) -> impl Future<Output = Result<(), EngineError>> + Send;
    /// Runs `argv` in the running container (as its user) and returns its exit code and its
    /// last output.
    fn exec(
        &self,
        id: &str,
        argv: &[String],
    ) -> impl Future<Output = Result<(i64, String), EngineError>> + Send;
    /// Writes `files` (directories first) into the container's filesystem, relative to its
    /// root, owned by root; the container need not run.
    fn put_files(
        &self,
        id: &str,
        files: &[NewFile],
    ) -> impl Future<Output = Result<(), EngineError>> + Send;
    /// The container by name or id, or `None` when there is none.
    fn inspect(
        &self,
        name_or_id: &str,
    ) -> impl Future<Output = Result<Option<ContainerInfo>, EngineError>> + Send;
    /// Ids of all containers (running or not) carrying every one of `labels` (with any value
    /// for a label paired with [`ANY_VALUE`]).
    fn list(
        &self,
        labels: &[(&str, &str)],
    ) -> impl Future<Output = Result<Vec<String>, EngineError>> + Send;
    /// Sends SIGKILL. Killing a container that is not running succeeds.
    fn kill(&self, id: &str) -> impl Future<Output = Result<(), EngineError>> + Send;
    /// SIGTERM, then SIGKILL after `grace`. Stopping a stopped container succeeds.
    fn stop(
        &self,
        id: &str,
        grace: Duration,
    ) -> impl Future<Output = Result<(), EngineError>> + Send;
    /// Removes the container (forcefully). Removing an absent container succeeds.
    fn remove(&self, id: &str) -> impl Future<Output = Result<(), EngineError>> + Send;
    /// Resolves with the exit code once the container is not running. Not bounded by the
    /// call deadline: it waits as long as the container runs.
    fn wait_exit(&self, id: &str) -> impl Future<Output = Result<i64, EngineError>> + Send;
    /// The engine's storage root directory.
    fn root_dir(&self) -> impl Future<Output = Result<String, EngineError>> + Send;
    /// One reading of the container's cumulative CPU and network counters.
    fn usage(&self, id: &str) -> impl Future<Output = Result<Usage, EngineError>> + Send;
    /// The named volume's driver and driver options, or `None` when it does not exist.
    fn volume(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<VolumeInfo>, EngineError>> + Send;
    /// Creates a named volume; creating one that exists succeeds and changes nothing.
    fn create_volume(&self, v: &NewVolume) -> impl Future<Output = Result<(), EngineError>> + Send;
    /// Named volumes carrying every one of `labels`.
    fn list_volumes(
        &self,
        labels: &[(&str, &str)],
    ) -> impl Future<Output = Result<Vec<VolumeInfo>, EngineError>> + Send;
    /// Ids of the containers, in any state, that mount the named volume.
    fn volume_users(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Vec<String>, EngineError>> + Send;
    /// Removes a named volume. Removing an absent volume succeeds.
    fn remove_volume(&self, name: &str) -> impl Future<Output = Result<(), EngineError>> + Send;
    /// Container events of containers carrying every one of `labels`, from `since` (seconds
    /// since the epoch) on. The stream ends when the engine goes away.
    fn events(
        &self,
        labels: &[(&str, &str)],
        since: Option<i64>,
    ) -> BoxStream<'static, Result<EngineEvent, EngineError>>;
    /// The container's output as `want` says.
    fn logs(&self, id: &str, want: LogsWanted)
    -> BoxStream<'static, Result<LogChunk, EngineError>>;
}

/// Which of a container's output to read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogsWanted {
    /// The last this many lines; `None` = all.
    pub tail: Option<u32>,
    /// Then new output as it comes.
    pub follow: bool,
    /// Only output from this time on, seconds since the epoch.
    pub since: Option<i64>,
    /// Each line begins with Docker's time of it and a space.
    pub timestamps: bool,
}
