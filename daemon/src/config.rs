//! The daemon's one typed configuration: embedded defaults < TOML file < `BERTH_*` env < flags,
//! validated once before anything binds.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::runtime::RuntimeConfig;

/// gRPC listen address of the embedded default: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051";
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
/// Docker create+start operations at once; more wait in the spawn queue.
pub const DEFAULT_MAX_CONCURRENT_SPAWNS: u32 = 4;
/// Spawns that may wait for a slot; beyond it a Start is refused at once.
pub const DEFAULT_SPAWN_QUEUE_LIMIT: u32 = 32;
/// How long a spawn may wait for a slot.
pub const DEFAULT_SPAWN_QUEUE_TIMEOUT_SECONDS: u64 = 60;

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// This node's id: stable, unique among the hub's nodes. Default: the host name.
    pub node_id: String,
    /// gRPC listen address.
    pub listen: SocketAddr,
    /// Where durable state lives.
    pub state_dir: PathBuf,
    /// The Docker engine.
    pub docker: DockerConfig,
    /// Unix socket of the Admin service; "" = `<state_dir>/admin.sock`.
    pub admin_socket: PathBuf,
    /// Spawn behaviour.
    pub spawn: SpawnConfig,
    /// Capacity and admission.
    pub capacity: CapacityConfig,
    /// Who may drive this node.
    pub security: SecurityConfig,
    /// What a hub may ask of this node.
    pub policy: crate::policy::Policy,
    /// Activity reports to the hub.
    pub activity: crate::reporter::ActivityConfig,
}

/// `[security]`
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityConfig {
    /// File holding the bearer token the hub must send (`authorization: Bearer <token>`).
    pub token_file: PathBuf,
    /// Server certificate (PEM) for TLS.
    pub tls_cert_file: PathBuf,
    /// Server private key (PEM) for TLS.
    pub tls_key_file: PathBuf,
    /// CA (PEM) whose client certificates are accepted: mutual TLS.
    pub client_ca_file: PathBuf,
    /// Serve plaintext gRPC on a non-loopback address. Anyone who reaches the port then
    /// controls the node's Docker engine: only for networks that are trusted end to end.
    pub insecure_plaintext_on_network: bool,
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

/// `[capacity]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CapacityConfig {
    /// Most servers at once; 0 = no limit.
    pub max_servers: u32,
    /// Cores held back for the system.
    pub reserved_cpu: f64,
    /// Memory held back for the system, in bytes.
    pub reserved_memory_bytes: u64,
    /// Docker create+start operations at once.
    pub max_concurrent_spawns: u32,
    /// Spawns that may wait for a slot.
    pub spawn_queue_limit: u32,
    /// How long a spawn may wait for a slot.
    pub spawn_queue_timeout_seconds: u64,
}

impl Default for CapacityConfig {
    fn default() -> Self {
        Self {
            max_servers: 0,
            reserved_cpu: 0.0,
            reserved_memory_bytes: 0,
            max_concurrent_spawns: DEFAULT_MAX_CONCURRENT_SPAWNS,
            spawn_queue_limit: DEFAULT_SPAWN_QUEUE_LIMIT,
            spawn_queue_timeout_seconds: DEFAULT_SPAWN_QUEUE_TIMEOUT_SECONDS,
        }
    }
}

/// `[docker]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DockerConfig {
    /// `unix:///path/docker.sock` or `tcp://host:port`.
    pub host: String,
    /// Deadline of one Docker API call.
    pub timeout_seconds: u64,
    /// Host address that container ports are published on.
    pub publish_host_ip: IpAddr,
    /// Host name or address put in server URLs; "" = `publish_host_ip`.
    pub advertise_host: String,
}

/// `[spawn]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpawnConfig {
    /// Readiness deadline when a Start gives none.
    pub ready_timeout_seconds: u64,
    /// Longest readiness deadline a Start may ask for.
    pub max_ready_timeout_seconds: u64,
    /// Grace between SIGTERM and SIGKILL when a Stop gives none.
    pub stop_grace_seconds: u64,
    /// Output lines quoted when a server dies during start.
    pub failure_log_lines: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            node_id: default_node_id(),
            listen: DEFAULT_LISTEN
                .parse()
                .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 50051))),
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            docker: DockerConfig::default(),
            admin_socket: PathBuf::new(),
            spawn: SpawnConfig::default(),
            capacity: CapacityConfig::default(),
            security: SecurityConfig::default(),
            policy: crate::policy::Policy::default(),
            activity: crate::reporter::ActivityConfig::default(),
        }
    }
}

impl Default for DockerConfig {
    fn default() -> Self {
        Self {
            host: DEFAULT_DOCKER_HOST.to_owned(),
            timeout_seconds: DEFAULT_DOCKER_TIMEOUT_SECONDS,
            publish_host_ip: DEFAULT_PUBLISH_HOST_IP,
            advertise_host: String::new(),
        }
    }
}

impl Default for SpawnConfig {
    fn default() -> Self {
        Self {
            ready_timeout_seconds: DEFAULT_READY_TIMEOUT_SECONDS,
            max_ready_timeout_seconds: DEFAULT_MAX_READY_TIMEOUT_SECONDS,
            stop_grace_seconds: DEFAULT_STOP_GRACE_SECONDS,
            failure_log_lines: DEFAULT_FAILURE_LOG_LINES,
        }
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

/// Where environment variables come from (the process env, or a map in tests).
pub trait EnvSource {
    /// The variable's value, if set.
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
pub struct ProcessEnv;

impl EnvSource for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl<const N: usize> EnvSource for [(&str, &str); N] {
    fn var(&self, name: &str) -> Option<String> {
        self.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| (*v).to_owned())
    }
}

/// Settings given on the command line; each wins over file and env.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--config`
    pub config: Option<PathBuf>,
    /// `--listen`
    pub listen: Option<String>,
    /// `--state-dir`
    pub state_dir: Option<PathBuf>,
    /// `--node-id`
    pub node_id: Option<String>,
    /// `--docker-host`
    pub docker_host: Option<String>,
    /// `--publish-host-ip`
    pub publish_host_ip: Option<String>,
    /// `--advertise-host`
    pub advertise_host: Option<String>,
    /// `--admin-socket`
    pub admin_socket: Option<PathBuf>,
    /// `--token-file`
    pub token_file: Option<PathBuf>,
    /// `--tls-cert-file`
    pub tls_cert_file: Option<PathBuf>,
    /// `--tls-key-file`
    pub tls_key_file: Option<PathBuf>,
    /// `--client-ca-file`
    pub client_ca_file: Option<PathBuf>,
}

impl Config {
    /// Builds the configuration from its layers and validates it.
    pub fn load(env: &dyn EnvSource, flags: &Overrides) -> Result<Self, ConfigError> {
        let file = flags
            .config
            .clone()
            .or_else(|| env.var("BERTH_CONFIG").map(PathBuf::from));
        let mut cfg = match file {
            Some(path) => Self::from_file(&path)?,
            None => Self::default(),
        };
        cfg.apply_env(env)?;
        cfg.apply_flags(flags)?;
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

    fn apply_env(&mut self, env: &dyn EnvSource) -> Result<(), ConfigError> {
        if let Some(v) = env.var("BERTH_NODE_ID") {
            self.node_id = v;
        }
        if let Some(v) = env.var("BERTH_LISTEN") {
            self.listen = parse("BERTH_LISTEN", &v)?;
        }
        if let Some(v) = env.var("BERTH_STATE_DIR") {
            self.state_dir = PathBuf::from(v);
        }
        if let Some(v) = env.var("BERTH_DOCKER_HOST") {
            self.docker.host = v;
        }
        if let Some(v) = env.var("BERTH_PUBLISH_HOST_IP") {
            self.docker.publish_host_ip = parse("BERTH_PUBLISH_HOST_IP", &v)?;
        }
        if let Some(v) = env.var("BERTH_ADVERTISE_HOST") {
            self.docker.advertise_host = v;
        }
        if let Some(v) = env.var("BERTH_ADMIN_SOCKET") {
            self.admin_socket = PathBuf::from(v);
        }
        if let Some(v) = env.var("BERTH_TOKEN_FILE") {
            self.security.token_file = PathBuf::from(v);
        }
        Ok(())
    }

    fn apply_flags(&mut self, f: &Overrides) -> Result<(), ConfigError> {
        if let Some(v) = &f.node_id {
            self.node_id.clone_from(v);
        }
        if let Some(v) = &f.listen {
            self.listen = parse("--listen", v)?;
        }
        if let Some(v) = &f.state_dir {
            self.state_dir.clone_from(v);
        }
        if let Some(v) = &f.docker_host {
            self.docker.host.clone_from(v);
        }
        if let Some(v) = &f.publish_host_ip {
            self.docker.publish_host_ip = parse("--publish-host-ip", v)?;
        }
        if let Some(v) = &f.advertise_host {
            self.docker.advertise_host.clone_from(v);
        }
        if let Some(v) = &f.admin_socket {
            self.admin_socket.clone_from(v);
        }
        let sec = &mut self.security;
        for (flag, field) in [
            (&f.token_file, &mut sec.token_file),
            (&f.tls_cert_file, &mut sec.tls_cert_file),
            (&f.tls_key_file, &mut sec.tls_key_file),
            (&f.client_ca_file, &mut sec.client_ca_file),
        ] {
            if let Some(v) = flag {
                field.clone_from(v);
            }
        }
        Ok(())
    }

    /// Checks every value; the error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let id_ok = !self.node_id.is_empty()
            && self.node_id.len() <= 63
            && self
                .node_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
        if !id_ok {
            return Err(invalid(
                "node_id",
                format!(
                    "{:?} must be 1-63 characters of [A-Za-z0-9._-]",
                    self.node_id
                ),
            ));
        }
        if !self.state_dir.is_absolute() {
            return Err(invalid("state_dir", "must be an absolute path"));
        }
        let host = &self.docker.host;
        if !(host.starts_with("unix:///")
            || host.starts_with("tcp://")
            || host.starts_with("http://"))
        {
            return Err(invalid(
                "docker.host",
                format!("{host:?} must start with unix:///, tcp:// or http://"),
            ));
        }
        if self.docker.timeout_seconds == 0 || self.docker.timeout_seconds > 3600 {
            return Err(invalid("docker.timeout_seconds", "must be 1-3600"));
        }
        let adv = &self.docker.advertise_host;
        if adv
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "/?#@".contains(c))
        {
            return Err(invalid(
                "docker.advertise_host",
                format!("{adv:?} must be a bare host name or address"),
            ));
        }
        let s = &self.spawn;
        if s.ready_timeout_seconds == 0 || s.ready_timeout_seconds > s.max_ready_timeout_seconds {
            return Err(invalid(
                "spawn.ready_timeout_seconds",
                "must be at least 1 and at most spawn.max_ready_timeout_seconds",
            ));
        }
        if s.max_ready_timeout_seconds > 86_400 {
            return Err(invalid(
                "spawn.max_ready_timeout_seconds",
                "must be at most 86400",
            ));
        }
        if s.stop_grace_seconds > 3600 {
            return Err(invalid("spawn.stop_grace_seconds", "must be at most 3600"));
        }
        if s.failure_log_lines > 1000 {
            return Err(invalid("spawn.failure_log_lines", "must be at most 1000"));
        }
        let c = &self.capacity;
        if !c.reserved_cpu.is_finite() || c.reserved_cpu < 0.0 {
            return Err(invalid(
                "capacity.reserved_cpu",
                "must be a number of cores, 0 or more",
            ));
        }
        if c.max_concurrent_spawns == 0 || c.max_concurrent_spawns > 1024 {
            return Err(invalid("capacity.max_concurrent_spawns", "must be 1-1024"));
        }
        if c.spawn_queue_limit > 100_000 {
            return Err(invalid(
                "capacity.spawn_queue_limit",
                "must be at most 100000",
            ));
        }
        if c.spawn_queue_timeout_seconds == 0 || c.spawn_queue_timeout_seconds > 3600 {
            return Err(invalid(
                "capacity.spawn_queue_timeout_seconds",
                "must be 1-3600",
            ));
        }
        self.validate_security()?;
        self.activity
            .validate()
            .map_err(|(key, message)| invalid(key, message))?;
        let sock = self.admin_socket();
        if !sock.is_absolute() || sock.as_os_str().len() > 100 {
            return Err(invalid(
                "admin_socket",
                format!(
                    "{} must be an absolute path of at most 100 bytes",
                    sock.display()
                ),
            ));
        }
        Ok(())
    }

    fn validate_security(&self) -> Result<(), ConfigError> {
        let sec = &self.security;
        if sec.tls() != SecurityConfig::set(&sec.tls_key_file) {
            return Err(invalid(
                "security.tls_key_file",
                "tls_cert_file and tls_key_file go together",
            ));
        }
        if sec.mutual_tls() && !sec.tls() {
            return Err(invalid(
                "security.client_ca_file",
                "mutual TLS needs tls_cert_file and tls_key_file too",
            ));
        }
        if self.listen.ip().is_loopback() || sec.insecure_plaintext_on_network {
            return Ok(());
        }
        if !sec.tls() {
            return Err(invalid(
                "listen",
                format!(
                    "refusing to serve plaintext gRPC on the non-loopback address {}: whoever reaches it controls this node's Docker engine. Set security.tls_cert_file and security.tls_key_file (and security.client_ca_file), or, on a network trusted end to end, security.insecure_plaintext_on_network = true",
                    self.listen
                ),
            ));
        }
        if !sec.token() && !sec.mutual_tls() {
            return Err(invalid(
                "security.token_file",
                "a node on the network needs security.token_file or security.client_ca_file to know the hub",
            ));
        }
        Ok(())
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
        }
    }
}

fn parse<T: std::str::FromStr>(key: &str, v: &str) -> Result<T, ConfigError>
where
    T::Err: std::fmt::Display,
{
    v.parse()
        .map_err(|e: T::Err| invalid(key, format!("{v:?}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_apply_in_order() {
        let file = Config::from_toml(
            "node_id = \"from-file\"\nlisten = \"127.0.0.1:1\"\n[docker]\nadvertise_host = \"file.example\"\n",
        )
        .expect("valid toml");
        assert_eq!(file.node_id, "from-file");
        assert_eq!(file.spawn, SpawnConfig::default());

        let dir = std::env::temp_dir().join(format!("berth-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp dir");
        let path = dir.join("c.toml");
        std::fs::write(&path, "node_id = \"from-file\"\nlisten = \"127.0.0.1:1\"\n")
            .expect("write");
        let env = [
            ("BERTH_LISTEN", "127.0.0.1:2"),
            ("BERTH_NODE_ID", "from-env"),
        ];
        let flags = Overrides {
            config: Some(path),
            node_id: Some("from-flag".into()),
            ..Default::default()
        };
        let cfg = Config::load(&env, &flags).expect("valid config");
        assert_eq!(cfg.node_id, "from-flag");
        assert_eq!(cfg.listen.port(), 2);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn embedded_default_is_valid() {
        let cfg = Config::load(&[("X", "y")], &Overrides::default()).expect("default valid");
        assert_eq!(cfg.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(cfg.advertise_host(), "127.0.0.1");
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            ("lisen = \"x\"", "lisen"),
            ("[docker]\ntimeout_seconds = \"x\"", "timeout_seconds"),
            ("[spawn]\nbogus = 1", "bogus"),
        ];
        for (text, key) in cases {
            let err = Config::from_toml(text).expect_err(text);
            assert!(err.contains(key), "{err:?} should name {key}");
        }
        let mut cfg = Config::default();
        cfg.docker.timeout_seconds = 0;
        assert!(
            cfg.validate()
                .expect_err("zero")
                .to_string()
                .contains("docker.timeout_seconds")
        );
        let cfg = Config {
            node_id: "no spaces".into(),
            ..Default::default()
        };
        assert!(
            cfg.validate()
                .expect_err("space")
                .to_string()
                .contains("node_id")
        );
        let err =
            Config::load(&[("BERTH_LISTEN", "nope")], &Overrides::default()).expect_err("bad env");
        assert!(err.to_string().contains("BERTH_LISTEN"), "{err}");
    }
}
