//! The daemon's one typed configuration: embedded defaults < TOML file < `BERTH_*` env < flags,
//! validated once (files it names included) before anything binds.
//!
//! Every key is declared once, in a `section!` below: its doc line (also the flag's help), its
//! type, its default and, for the keys the command line may set, its `BERTH_*` variable and
//! flag. The structs, their defaults, the env layer, the flags ([`Overrides`]) and the tests are
//! all derived from those declarations.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

mod files;
mod layers;
pub mod show;
pub mod units;
mod validate;

pub use files::{
    read_certificate_ders, read_certificates, read_identity, read_private_key, read_token,
};
pub use layers::{
    CONFIG_ENV, EnvSource, FILE_ONLY, Overrides, ProcessEnv, Setting, VALUE_RULES, regular_env,
    settings, unknown_vars,
};

/// gRPC listen address of the embedded default: loopback only.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 50051);
/// State directory of the embedded default.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/berth";
/// The local Docker engine.
pub const DEFAULT_DOCKER_HOST: &str = "unix:///var/run/docker.sock";
/// Deadline of one Docker API call.
pub const DEFAULT_DOCKER_TIMEOUT_SECONDS: u64 = 30;
/// Container ports are published on loopback unless told otherwise.
pub const DEFAULT_PUBLISH_HOST_IP: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// Readiness deadline when a Start gives none (JupyterHub's own start_timeout is 60 s).
pub const DEFAULT_READY_TIMEOUT_SECONDS: u64 = 60;
/// Longest readiness deadline a Start may ask for.
pub const DEFAULT_MAX_READY_TIMEOUT_SECONDS: u64 = 900;
/// Grace between SIGTERM and SIGKILL when a Stop gives none.
pub const DEFAULT_STOP_GRACE_SECONDS: u64 = 10;
/// Output lines quoted when a server dies during start.
pub const DEFAULT_FAILURE_LOG_LINES: u32 = 20;
/// Seconds a Start whose caller has gone waits for a retry of its spawn id before it is
/// cancelled.
pub const DEFAULT_ABANDON_GRACE_SECONDS: u64 = 10;
/// Docker create+start operations at once; more wait in the spawn queue.
pub const DEFAULT_MAX_CONCURRENT_SPAWNS: u32 = 4;
/// Spawns that may wait for a slot; beyond it a Start is refused at once.
pub const DEFAULT_SPAWN_QUEUE_LIMIT: u32 = 32;
/// How long a spawn may wait for a slot.
pub const DEFAULT_SPAWN_QUEUE_TIMEOUT_SECONDS: u64 = 60;

/// Longest a pull may take before it is given up.
pub const DEFAULT_PULL_TIMEOUT_SECONDS: u64 = 3600;
/// Disk usage (percent) above which images are collected (the kubelet's default).
pub const DEFAULT_GC_HIGH_PERCENT: u8 = 85;
/// Disk usage (percent) collection brings the disk down to (the kubelet's default).
pub const DEFAULT_GC_LOW_PERCENT: u8 = 80;
/// Time between two image collection passes.
pub const DEFAULT_GC_INTERVAL_SECONDS: u64 = 300;
/// Images first seen more recently than this are kept (the kubelet's default).
pub const DEFAULT_GC_MIN_AGE_SECONDS: u64 = 120;

/// Declares one section of the file: `/// help` (one line) then `key: Type = default` and,
/// for a value (not a sub-section), `, env "BERTH_X", flag "x"`. Generates the struct (serde,
/// `deny_unknown_fields`, missing keys default), its `Default` and its `OVERRIDABLE` settings.
/// Sections of other modules (`[policy]`, `[activity]`) use it too. A value without env and
/// flag must be in [`FILE_ONLY`], which a test holds to the default file.
macro_rules! section {
    (
        $(#[$section_meta:meta])*
        pub struct $name:ident at $prefix:literal {
            $(
                #[doc = $doc:literal]
                $(#[$attr:meta])*
                $field:ident : $ty:ty = $default:expr $(, env $env:literal, flag $flag:literal)? ;
            )*
        }
    ) => {
        $(#[$section_meta])*
        #[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
        #[serde(deny_unknown_fields, default)]
        pub struct $name {
            $( #[doc = $doc] $(#[$attr])* pub $field: $ty, )*
        }

        impl Default for $name {
            fn default() -> Self {
                Self { $( $field: $default, )* }
            }
        }

        impl $name {
            /// The keys of this section that a `BERTH_*` variable and a flag may set too.
            pub const OVERRIDABLE: &'static [$crate::config::Setting] = &[
                $( $( $crate::config::Setting {
                    key: concat!($prefix, stringify!($field)),
                    env: $env,
                    flag: $flag,
                    help: $doc,
                }, )? )*
            ];
        }
    };
}

section! {
    /// The whole configuration.
    pub struct Config at "" {
        /// This node's id: stable, unique among the hub's nodes (default: the host name).
        node_id: String = default_node_id(), env "BERTH_NODE_ID", flag "node-id";
        /// gRPC listen address, e.g. 127.0.0.1:50051.
        listen: SocketAddr = DEFAULT_LISTEN, env "BERTH_LISTEN", flag "listen";
        /// Where durable state lives.
        state_dir: PathBuf = PathBuf::from(DEFAULT_STATE_DIR), env "BERTH_STATE_DIR", flag "state-dir";
        /// Unix socket of the Admin service; "" = <state_dir>/admin.sock.
        admin_socket: PathBuf = PathBuf::new(), env "BERTH_ADMIN_SOCKET", flag "admin-socket";
        /// The Docker engine.
        docker: DockerConfig = DockerConfig::default();
        /// Spawn behaviour.
        spawn: SpawnConfig = SpawnConfig::default();
        /// Capacity and admission.
        capacity: CapacityConfig = CapacityConfig::default();
        /// Who may drive this node.
        security: SecurityConfig = SecurityConfig::default();
        /// The Docker network of the servers.
        network: NetworkConfig = NetworkConfig::default();
        /// What the node does when the hub is out of touch.
        fencing: FencingConfig = FencingConfig::default();
        /// Image pulls.
        images: ImagesConfig = ImagesConfig::default();
        /// What a hub may ask of this node.
        policy: crate::policy::Policy = crate::policy::Policy::default();
        /// Who pins host paths.
        hostpaths: crate::hostpath::HostPathsConfig = crate::hostpath::HostPathsConfig::default();
        /// Activity reports to the hub.
        activity: crate::reporter::ActivityConfig = crate::reporter::ActivityConfig::default();
        /// GPUs and other devices the node hands out.
        devices: DevicesConfig = DevicesConfig::default();
        /// Servers booted ahead of time, per image.
        warm: WarmConfig = WarmConfig::default();
        /// What this node is, for the hub's placement.
        node: NodeConfig = NodeConfig::default();
        /// The Prometheus endpoint.
        metrics: MetricsConfig = MetricsConfig::default();
        /// berthd's own log.
        log: crate::logging::LogConfig = crate::logging::LogConfig::default();
    }
}

/// The network berth puts servers on when a Start names none.
pub const DEFAULT_NETWORK_NAME: &str = "berth-users";

section! {
    /// `[network]`
    pub struct NetworkConfig at "network." {
        /// Put servers whose Start names no network on network.name, a bridge where containers cannot open connections to each other (the hub, the proxy and the node still reach every server); false = Docker's default bridge, where they can.
        isolate_users: bool = true,
            env "BERTH_NETWORK_ISOLATE_USERS", flag "network-isolate-users";
        /// The isolated network, created by berthd (labelled berth.managed) when missing.
        name: String = DEFAULT_NETWORK_NAME.to_owned(),
            env "BERTH_NETWORK_NAME", flag "network-name";
    }
}

section! {
    /// `[fencing]`
    pub struct FencingConfig at "fencing." {
        /// Stop this node's servers (SIGTERM and the stop grace, as a Stop) once no call of the hub (an authenticated RPC, or an open Watch stream) has reached berthd for this long, so that a node cut off from the hub never runs a user's server beside its replacement on another node; 0 = never (off: a hub that is merely down, e.g. for an upgrade, would fence every node too).
        #[serde(deserialize_with = "units::seconds")]
        stop_after_hub_lost_seconds: u64 = 0,
            env "BERTH_FENCING_STOP_AFTER_HUB_LOST_SECONDS", flag "fencing-stop-after-hub-lost-seconds";
    }
}

section! {
    /// `[metrics]`
    pub struct MetricsConfig at "metrics." {
        /// Address of the plain-HTTP Prometheus endpoint (GET /metrics), e.g. 127.0.0.1:9151; "" = off.
        listen: String = String::new(), env "BERTH_METRICS_LISTEN", flag "metrics-listen";
        /// Serve /metrics on a non-loopback address: it is plain HTTP without authentication (counts and timings, no user names or secrets).
        allow_network: bool = false,
            env "BERTH_METRICS_ALLOW_NETWORK", flag "metrics-allow-network";
    }
}

impl MetricsConfig {
    /// The endpoint's address, when it is on (`listen` was checked by `validate`).
    pub fn addr(&self) -> Option<SocketAddr> {
        self.listen.parse().ok()
    }
}

section! {
    /// `[devices]`
    pub struct DevicesConfig at "devices." {
        /// Device classes, each a `[[devices.classes]]` table (see `crate::devices::ClassConfig`).
        classes: Vec<crate::devices::ClassConfig> = Vec::new();
    }
}

section! {
    /// `[warm]`
    pub struct WarmConfig at "warm." {
        /// Warm pools, each a `[[warm.pools]]` table (see `crate::warm::PoolConfig`).
        pools: Vec<crate::warm::PoolConfig> = Vec::new();
    }
}

section! {
    /// `[node]`
    pub struct NodeConfig at "node." {
        /// Labels reported by Capacity (in the file { gpu = "a100", zone = "b" }, else gpu=a100,zone=b); a hub's node selector places servers only on nodes carrying all the labels it names.
        labels: BTreeMap<String, String> = BTreeMap::new(),
            env "BERTH_NODE_LABELS", flag "node-labels";
    }
}

section! {
    /// `[docker]`
    pub struct DockerConfig at "docker." {
        /// Docker engine address, unix:///path/docker.sock or tcp://host:port.
        host: String = DEFAULT_DOCKER_HOST.to_owned(), env "BERTH_DOCKER_HOST", flag "docker-host";
        /// Deadline of one Docker API call.
        #[serde(deserialize_with = "units::seconds")]
        timeout_seconds: u64 = DEFAULT_DOCKER_TIMEOUT_SECONDS,
            env "BERTH_DOCKER_TIMEOUT_SECONDS", flag "docker-timeout-seconds";
        /// Host address that container ports are published on.
        publish_host_ip: IpAddr = DEFAULT_PUBLISH_HOST_IP, env "BERTH_PUBLISH_HOST_IP", flag "publish-host-ip";
        /// Host name or address put in server URLs; "" = publish_host_ip.
        advertise_host: String = String::new(), env "BERTH_ADVERTISE_HOST", flag "advertise-host";
    }
}

section! {
    /// `[spawn]`
    pub struct SpawnConfig at "spawn." {
        /// Readiness deadline when a Start gives none.
        #[serde(deserialize_with = "units::seconds")]
        ready_timeout_seconds: u64 = DEFAULT_READY_TIMEOUT_SECONDS,
            env "BERTH_SPAWN_READY_TIMEOUT_SECONDS", flag "spawn-ready-timeout-seconds";
        /// Longest readiness deadline a Start may ask for.
        #[serde(deserialize_with = "units::seconds")]
        max_ready_timeout_seconds: u64 = DEFAULT_MAX_READY_TIMEOUT_SECONDS,
            env "BERTH_SPAWN_MAX_READY_TIMEOUT_SECONDS", flag "spawn-max-ready-timeout-seconds";
        /// Grace between SIGTERM and SIGKILL when a Stop gives none.
        #[serde(deserialize_with = "units::seconds")]
        stop_grace_seconds: u64 = DEFAULT_STOP_GRACE_SECONDS,
            env "BERTH_SPAWN_STOP_GRACE_SECONDS", flag "spawn-stop-grace-seconds";
        /// Output lines quoted when a server dies during start.
        failure_log_lines: u32 = DEFAULT_FAILURE_LOG_LINES,
            env "BERTH_SPAWN_FAILURE_LOG_LINES", flag "spawn-failure-log-lines";
        /// How long a Start whose caller has gone (the hub's deadline passed, its connection
        /// dropped) waits for a retry with the same spawn id before it is cancelled and what
        /// it made is removed.
        #[serde(deserialize_with = "units::seconds")]
        abandon_grace_seconds: u64 = DEFAULT_ABANDON_GRACE_SECONDS,
            env "BERTH_SPAWN_ABANDON_GRACE_SECONDS", flag "spawn-abandon-grace-seconds";
    }
}

section! {
    /// `[capacity]`
    pub struct CapacityConfig at "capacity." {
        /// Most servers at once; 0 = no limit.
        max_servers: u32 = 0,
            env "BERTH_CAPACITY_MAX_SERVERS", flag "capacity-max-servers";
        /// Cores held back for the system.
        reserved_cpu: f64 = 0.0,
            env "BERTH_CAPACITY_RESERVED_CPU", flag "capacity-reserved-cpu";
        /// Memory held back for the system, in bytes.
        #[serde(deserialize_with = "units::bytes")]
        reserved_memory_bytes: u64 = 0,
            env "BERTH_CAPACITY_RESERVED_MEMORY_BYTES", flag "capacity-reserved-memory-bytes";
        /// Docker create+start operations at once.
        max_concurrent_spawns: u32 = DEFAULT_MAX_CONCURRENT_SPAWNS,
            env "BERTH_CAPACITY_MAX_CONCURRENT_SPAWNS", flag "capacity-max-concurrent-spawns";
        /// Spawns that may wait for a slot.
        spawn_queue_limit: u32 = DEFAULT_SPAWN_QUEUE_LIMIT,
            env "BERTH_CAPACITY_SPAWN_QUEUE_LIMIT", flag "capacity-spawn-queue-limit";
        /// How long a spawn may wait for a slot.
        #[serde(deserialize_with = "units::seconds")]
        spawn_queue_timeout_seconds: u64 = DEFAULT_SPAWN_QUEUE_TIMEOUT_SECONDS,
            env "BERTH_CAPACITY_SPAWN_QUEUE_TIMEOUT_SECONDS", flag "capacity-spawn-queue-timeout-seconds";
    }
}

section! {
    /// `[images]`
    pub struct ImagesConfig at "images." {
        /// When to pull a Start's image if the Start does not say: ifnotpresent, always or never.
        pull_policy: crate::registry::PullPolicy = crate::registry::PullPolicy::IfNotPresent,
            env "BERTH_IMAGES_PULL_POLICY", flag "images-pull-policy";
        /// Registry credentials in Docker's config.json format (`auths`: per registry host, `auth` or `username` and `password`), readable by berthd only; "" = pull anonymously.
        registry_auth_file: PathBuf = PathBuf::new(),
            env "BERTH_IMAGES_REGISTRY_AUTH_FILE", flag "images-registry-auth-file";
        /// Longest one pull may take.
        #[serde(deserialize_with = "units::seconds")]
        pull_timeout_seconds: u64 = DEFAULT_PULL_TIMEOUT_SECONDS,
            env "BERTH_IMAGES_PULL_TIMEOUT_SECONDS", flag "images-pull-timeout-seconds";
        /// Disk usage (percent of the disk holding Docker's root) above which unused images are removed, least recently used first; 0 = never.
        gc_high_percent: u8 = DEFAULT_GC_HIGH_PERCENT, env "BERTH_IMAGE_GC_HIGH_PERCENT", flag "image-gc-high-percent";
        /// Disk usage (percent) image GC brings the disk down to.
        gc_low_percent: u8 = DEFAULT_GC_LOW_PERCENT,
            env "BERTH_IMAGES_GC_LOW_PERCENT", flag "images-gc-low-percent";
        /// Time between two image GC passes (the first comes one interval after start).
        #[serde(deserialize_with = "units::seconds")]
        gc_interval_seconds: u64 = DEFAULT_GC_INTERVAL_SECONDS,
            env "BERTH_IMAGES_GC_INTERVAL_SECONDS", flag "images-gc-interval-seconds";
        /// Images first seen more recently than this are never removed.
        #[serde(deserialize_with = "units::seconds")]
        gc_min_age_seconds: u64 = DEFAULT_GC_MIN_AGE_SECONDS,
            env "BERTH_IMAGES_GC_MIN_AGE_SECONDS", flag "images-gc-min-age-seconds";
        /// Images image GC may remove besides berth's own (those this berthd pulled or started a server of), as globs like `policy.allowed_images`; empty = berth's own only.
        gc_images: Vec<String> = Vec::new(),
            env "BERTH_IMAGES_GC_IMAGES", flag "images-gc-images";
    }
}

section! {
    /// `[security]`
    pub struct SecurityConfig at "security." {
        /// File with the bearer token the hub must present (`authorization: Bearer <token>`).
        token_file: PathBuf = PathBuf::new(), env "BERTH_TOKEN_FILE", flag "token-file";
        /// TLS server certificate (chain), PEM.
        tls_cert_file: PathBuf = PathBuf::new(), env "BERTH_TLS_CERT_FILE", flag "tls-cert-file";
        /// TLS server private key, PEM.
        tls_key_file: PathBuf = PathBuf::new(), env "BERTH_TLS_KEY_FILE", flag "tls-key-file";
        /// CA of accepted client certificates (mutual TLS), PEM.
        client_ca_file: PathBuf = PathBuf::new(), env "BERTH_CLIENT_CA_FILE", flag "client-ca-file";
        /// Names (DNS or URI subject alternative names) of the client certificates that may connect, e.g. ["hub"]; empty = any certificate client_ca_file signed.
        hub_client_names: Vec<String> = Vec::new(),
            env "BERTH_SECURITY_HUB_CLIENT_NAMES", flag "security-hub-client-names";
        /// Serve plaintext gRPC on a non-loopback address: whoever reaches the port controls the node's Docker engine, so only for networks trusted end to end.
        insecure_plaintext_on_network: bool = false,
            env "BERTH_SECURITY_INSECURE_PLAINTEXT_ON_NETWORK", flag "security-insecure-plaintext-on-network";
    }
}

impl SecurityConfig {
    fn set(p: &Path) -> bool {
        !p.as_os_str().is_empty()
    }

    /// TLS is configured.
    pub fn tls(&self) -> bool {
        Self::set(&self.tls_cert_file)
    }

    /// A bearer token is configured.
    pub fn token(&self) -> bool {
        Self::set(&self.token_file)
    }

    /// Client certificates are required.
    pub fn mutual_tls(&self) -> bool {
        Self::set(&self.client_ca_file)
    }
}

fn default_node_id() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let id: String = raw
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        .take(63)
        .collect();
    if id.is_empty() { "node".to_owned() } else { id }
}

/// A configuration that cannot be used; the daemon exits with status 64.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, naming the key and line.
        message: String,
    },
    /// A key holds a bad value.
    #[error("config key {key}: {message}")]
    Invalid {
        /// The key, as in the file, or the env var / flag it came from.
        key: String,
        /// What is wrong.
        message: String,
    },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

impl Config {
    /// Builds the configuration from its layers and validates it, files included.
    pub fn load(env: &dyn EnvSource, flags: &Overrides) -> Result<Self, ConfigError> {
        let file = flags
            .config
            .clone()
            .or_else(|| env.var(CONFIG_ENV).map(PathBuf::from));
        let cfg = match file {
            Some(path) => Self::from_file(&path)?,
            None => Self::default(),
        };
        let cfg = layers::apply(cfg, env, flags)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Parses a TOML file; keys it leaves out keep their defaults.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })
    }

    /// Parses TOML text.
    pub fn from_toml(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// The configuration as TOML, every key written out. It holds paths, never file contents,
    /// so no secret is in it.
    pub fn to_toml(&self) -> Result<String, ConfigError> {
        toml::to_string(self).map_err(|e| invalid("(all)", e.to_string()))
    }

    /// The Admin socket path.
    pub fn admin_socket(&self) -> PathBuf {
        if self.admin_socket.as_os_str().is_empty() {
            self.state_dir.join("admin.sock")
        } else {
            self.admin_socket.clone()
        }
    }

    /// The advertised host for server URLs.
    pub fn advertise_host(&self) -> String {
        if self.docker.advertise_host.is_empty() {
            self.docker.publish_host_ip.to_string()
        } else {
            self.docker.advertise_host.clone()
        }
    }
}

#[cfg(test)]
mod tests;
