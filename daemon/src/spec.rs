//! Validated domain types of a spawn: what a Start may ask for, checked once at the edge.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::key::{ServerKey, escape};

/// Container port used when the request gives none (JupyterHub's container convention).
pub const DEFAULT_PORT: u16 = 8888;
/// Docker refuses memory limits below 6 MiB.
pub const MIN_MEMORY_BYTES: u64 = 6 * 1024 * 1024;
/// More memory than any node has; a request above it is a mistake.
pub const MAX_MEMORY_BYTES: u64 = 1 << 50;
/// Docker's smallest CPU quota (0.01 core).
pub const MIN_CPU: f64 = 0.01;
/// More cores than any node has.
pub const MAX_CPU: f64 = 4096.0;
/// Longest spawn id, in bytes.
pub const MAX_SPAWN_ID_BYTES: usize = 128;
/// Most entries in env, cmd+args, labels or volumes.
pub const MAX_ENTRIES: usize = 1024;
/// Longest single string (an env value, an argument, a label value).
pub const MAX_VALUE_BYTES: usize = 128 * 1024;
/// Longest env key or label key.
pub const MAX_KEY_BYTES: usize = 1024;
/// Largest total size of the env, keys and values together.
pub const MAX_ENV_TOTAL_BYTES: usize = 1024 * 1024;
/// Label keys under this prefix belong to berthd.
pub const RESERVED_LABEL_PREFIX: &str = "berth.";
/// Longest Docker volume name (a directory name under Docker's root).
pub const MAX_VOLUME_NAME_BYTES: usize = 255;

/// A field of the request that is wrong, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct SpecError {
    /// The request field, e.g. `resources.mem_limit_bytes` or `env["A=B"]`.
    pub field: String,
    /// What is wrong with it.
    pub problem: String,
}

impl SpecError {
    /// A new error for `field`.
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

/// Memory and CPU of one server; `None` = not set.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Resources {
    /// Hard memory limit in bytes.
    pub mem_limit: Option<u64>,
    /// Memory reservation in bytes.
    pub mem_guarantee: Option<u64>,
    /// Hard CPU limit in cores.
    pub cpu_limit: Option<f64>,
    /// Guaranteed CPU in cores (mapped to CPU shares).
    pub cpu_guarantee: Option<f64>,
}

impl Resources {
    /// Validates raw request numbers: zero means unset; negative, non-finite or absurd values
    /// are refused; a guarantee may not exceed its limit.
    pub fn new(
        mem_limit: i64,
        mem_guarantee: i64,
        cpu_limit: f64,
        cpu_guarantee: f64,
    ) -> Result<Self, SpecError> {
        let mem_limit = memory("resources.mem_limit_bytes", mem_limit)?;
        let mem_guarantee = memory("resources.mem_guarantee_bytes", mem_guarantee)?;
        let cpu_limit = cpu("resources.cpu_limit", cpu_limit)?;
        let cpu_guarantee = cpu("resources.cpu_guarantee", cpu_guarantee)?;
        if let (Some(g), Some(l)) = (mem_guarantee, mem_limit)
            && g > l
        {
            return Err(SpecError::new(
                "resources.mem_guarantee_bytes",
                format!("{g} exceeds mem_limit_bytes {l}"),
            ));
        }
        if let (Some(g), Some(l)) = (cpu_guarantee, cpu_limit)
            && g > l
        {
            return Err(SpecError::new(
                "resources.cpu_guarantee",
                format!("{g} exceeds cpu_limit {l}"),
            ));
        }
        Ok(Self {
            mem_limit,
            mem_guarantee,
            cpu_limit,
            cpu_guarantee,
        })
    }
}

fn memory(field: &str, v: i64) -> Result<Option<u64>, SpecError> {
    match u64::try_from(v) {
        Err(_) => Err(SpecError::new(field, format!("{v} is negative"))),
        Ok(0) => Ok(None),
        Ok(b) if b < MIN_MEMORY_BYTES => Err(SpecError::new(
            field,
            format!("{b} bytes is below Docker's minimum of {MIN_MEMORY_BYTES}"),
        )),
        Ok(b) if b > MAX_MEMORY_BYTES => Err(SpecError::new(
            field,
            format!("{b} bytes is more than {MAX_MEMORY_BYTES}"),
        )),
        Ok(b) => Ok(Some(b)),
    }
}

fn cpu(field: &str, v: f64) -> Result<Option<f64>, SpecError> {
    if !v.is_finite() {
        return Err(SpecError::new(field, format!("{v} is not a finite number")));
    }
    if v < 0.0 {
        return Err(SpecError::new(field, format!("{v} is negative")));
    }
    if v == 0.0 {
        return Ok(None);
    }
    if v < MIN_CPU {
        return Err(SpecError::new(
            field,
            format!("{v} is below the minimum of {MIN_CPU} cores"),
        ));
    }
    if v > MAX_CPU {
        return Err(SpecError::new(
            field,
            format!("{v} is more than {MAX_CPU} cores"),
        ));
    }
    Ok(Some(v))
}

/// The server's environment. It holds the hub's API token, so its values never appear in
/// `Debug` output, logs, errors or the spec hash.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Env(BTreeMap<String, String>);

impl Env {
    /// Validates env entries: keys non-empty, without `=` or NUL or whitespace, bounded; values
    /// without NUL; the whole bounded.
    pub fn new(entries: impl IntoIterator<Item = (String, String)>) -> Result<Self, SpecError> {
        let mut map = BTreeMap::new();
        let mut total = 0usize;
        for (k, v) in entries {
            let field = || format!("env[{}]", printable(&k));
            if k.is_empty() {
                return Err(SpecError::new("env", "a key is empty"));
            }
            if k.len() > MAX_KEY_BYTES {
                return Err(SpecError::new(
                    field(),
                    format!("key is longer than {MAX_KEY_BYTES} bytes"),
                ));
            }
            if k.contains('=') || k.chars().any(|c| c.is_control() || c.is_whitespace()) {
                return Err(SpecError::new(
                    field(),
                    "key must not contain '=', whitespace or control characters",
                ));
            }
            if v.contains('\0') {
                return Err(SpecError::new(field(), "value must not contain NUL"));
            }
            if v.len() > MAX_VALUE_BYTES {
                return Err(SpecError::new(
                    field(),
                    format!("value is longer than {MAX_VALUE_BYTES} bytes"),
                ));
            }
            total += k.len() + v.len() + 2;
            map.insert(k, v);
        }
        if map.len() > MAX_ENTRIES {
            return Err(SpecError::new(
                "env",
                format!("{} entries; at most {MAX_ENTRIES}", map.len()),
            ));
        }
        if total > MAX_ENV_TOTAL_BYTES {
            return Err(SpecError::new(
                "env",
                format!("{total} bytes in all; at most {MAX_ENV_TOTAL_BYTES}"),
            ));
        }
        Ok(Self(map))
    }

    /// `KEY=value` strings for Docker.
    pub fn to_docker(&self) -> Vec<String> {
        self.0.iter().map(|(k, v)| format!("{k}={v}")).collect()
    }

    /// Keys and values, for the runtime alone (the values are secret).
    pub(crate) fn entries(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The entries whose key `keep` accepts.
    pub(crate) fn filtered(&self, keep: impl Fn(&str) -> bool) -> Self {
        Self(
            self.0
                .iter()
                .filter(|(k, _)| keep(k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        )
    }

    /// The keys, safe to log.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }
}

impl fmt::Debug for Env {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

/// A key shown in an error, cut short and with control characters escaped.
fn printable(s: &str) -> String {
    let cut: String = s.chars().take(64).collect();
    cut.escape_debug().to_string()
}

/// A named volume (or, policy permitting, a host path) mounted into the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeSpec {
    /// Docker volume name with templates expanded, or the absolute host path.
    pub name: String,
    /// `name` is a host path (a bind mount), subject to the node policy.
    pub host_path: bool,
    /// Absolute path inside the container.
    pub target: String,
    /// Mounted read-only.
    pub read_only: bool,
    /// The source was templated with `{user}`.
    pub per_user: bool,
    /// The source was templated with `{server}`.
    pub per_server: bool,
    /// Named volumes: the Docker volume driver ("" = local).
    pub driver: String,
    /// Named volumes: the driver's options.
    pub driver_opts: BTreeMap<String, String>,
}

impl VolumeSpec {
    // Long: host path and volume name are two forms of one field, checked side by side.
    /// Expands `{user}`/`{server}` in `source` with the escaped names of `key` and checks the
    /// result is a Docker volume name; host paths are refused (the node policy comes later).
    pub fn new(
        index: usize,
        key: &ServerKey,
        source: &str,
        target: &str,
        read_only: bool,
    ) -> Result<Self, SpecError> {
        let field = |f: &str| format!("volumes[{index}].{f}");
        let per_user = source.contains("{user}");
        let per_server = source.contains("{server}");
        if source.starts_with('/') {
            // Escaped names are [a-z0-9-] only: a user name cannot add a `/` or a `..`.
            let path = source
                .replace("{user}", &escape(key.user()))
                .replace("{server}", &escape(key.server()));
            if path.contains('\0') || path.len() > 4096 || path.split('/').any(|c| c == "..") {
                return Err(SpecError::new(
                    field("source"),
                    "a host path must be absolute, without '..', at most 4096 bytes",
                ));
            }
            check_target(index, target)?;
            return Ok(Self {
                name: path,
                host_path: true,
                target: target.to_owned(),
                read_only,
                per_user,
                per_server,
                driver: String::new(),
                driver_opts: BTreeMap::new(),
            });
        }
        if source.starts_with('.') {
            return Err(SpecError::new(
                field("source"),
                "must be a volume name or an absolute host path",
            ));
        }
        let name = source
            .replace("{user}", &escape(key.user()))
            .replace("{server}", &escape(key.server()));
        let valid_chars = name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if name.is_empty()
            || !valid_chars
            || !name.as_bytes()[0].is_ascii_alphanumeric()
            || name.len() > MAX_VOLUME_NAME_BYTES
        {
            return Err(SpecError::new(
                field("source"),
                format!(
                    "{:?} does not expand to a volume name ([a-zA-Z0-9][a-zA-Z0-9_.-]*, at most {MAX_VOLUME_NAME_BYTES} bytes)",
                    printable(source)
                ),
            ));
        }
        check_target(index, target)?;
        Ok(Self {
            name,
            host_path: false,
            target: target.to_owned(),
            read_only,
            per_user,
            per_server,
            driver: String::new(),
            driver_opts: BTreeMap::new(),
        })
    }

    /// Sets the Docker volume driver and its options (named volumes only); refuses options
    /// that make the volume a bind mount of a host path.
    pub fn with_driver(
        mut self,
        index: usize,
        driver: &str,
        opts: BTreeMap<String, String>,
    ) -> Result<Self, SpecError> {
        let field = |f: &str| format!("volumes[{index}].{f}");
        if driver.is_empty() && opts.is_empty() {
            return Ok(self);
        }
        if self.host_path {
            return Err(SpecError::new(
                field("driver"),
                "a host path takes no volume driver",
            ));
        }
        let name_ok = |t: &str| {
            !t.is_empty()
                && t.len() <= 255
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-/:".contains(&b))
        };
        if !driver.is_empty() && !name_ok(driver) {
            return Err(SpecError::new(field("driver"), "not a driver name"));
        }
        if opts.len() > 64 {
            return Err(SpecError::new(field("driver_opts"), "at most 64 options"));
        }
        for (k, v) in &opts {
            if !name_ok(k) || v.contains('\0') || v.len() > 4096 {
                return Err(SpecError::new(
                    format!("volumes[{index}].driver_opts[{}]", printable(k)),
                    "key must be a plain name, value without NUL and at most 4096 bytes",
                ));
            }
        }
        self.driver = driver.to_owned();
        self.driver_opts = opts;
        Ok(self)
    }
}

fn check_target(index: usize, target: &str) -> Result<(), SpecError> {
    let field = format!("volumes[{index}].target");
    if !target.starts_with('/') || target.contains('\0') || target.len() > 4096 {
        return Err(SpecError::new(
            field,
            "must be an absolute path inside the container",
        ));
    }
    if target.split('/').any(|c| c == "..") {
        return Err(SpecError::new(field, "must not contain '..'"));
    }
    Ok(())
}

/// Privileges over the node a server asks for; the node policy decides.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostAccess {
    /// A privileged container.
    pub privileged: bool,
    /// The host's network namespace.
    pub host_network: bool,
    /// The host's PID namespace.
    pub host_pid: bool,
    /// The host's IPC namespace.
    pub host_ipc: bool,
    /// Added capabilities, upper case without the `CAP_` prefix.
    pub cap_add: Vec<String>,
    /// Host device paths.
    pub devices: Vec<String>,
}

impl HostAccess {
    /// Validates capability names and device paths.
    pub fn new(
        privileged: bool,
        host_network: bool,
        host_pid: bool,
        host_ipc: bool,
        cap_add: &[String],
        devices: &[String],
    ) -> Result<Self, SpecError> {
        if cap_add.len() > 64 || devices.len() > 64 {
            return Err(SpecError::new(
                "host_access",
                "at most 64 capabilities and 64 devices",
            ));
        }
        let mut caps = Vec::new();
        for (i, c) in cap_add.iter().enumerate() {
            let name = c.strip_prefix("CAP_").unwrap_or(c).to_ascii_uppercase();
            if name.is_empty()
                || name.len() > 32
                || !name.bytes().all(|b| b.is_ascii_uppercase() || b == b'_')
            {
                return Err(SpecError::new(
                    format!("host_access.cap_add[{i}]"),
                    "not a capability name",
                ));
            }
            caps.push(name);
        }
        for (i, d) in devices.iter().enumerate() {
            if !d.starts_with("/dev/")
                || d.contains('\0')
                || d.split('/').any(|c| c == "..")
                || d.len() > 256
            {
                return Err(SpecError::new(
                    format!("host_access.devices[{i}]"),
                    "must be a path under /dev",
                ));
            }
        }
        Ok(Self {
            privileged,
            host_network,
            host_pid,
            host_ipc,
            cap_add: caps,
            devices: devices.to_vec(),
        })
    }
}

/// Everything a Start asks for, validated.
#[derive(Debug, Clone)]
pub struct StartSpec {
    /// The server.
    pub key: ServerKey,
    /// Idempotency key of this spawn.
    pub spawn_id: String,
    /// Image reference.
    pub image: String,
    /// Command; empty = the image's.
    pub cmd: Vec<String>,
    /// Arguments appended to the command.
    pub args: Vec<String>,
    /// Environment (secret).
    pub env: Env,
    /// Container port.
    pub port: u16,
    /// Memory and CPU.
    pub resources: Resources,
    /// Named volumes.
    pub volumes: Vec<VolumeSpec>,
    /// Extra labels.
    pub labels: BTreeMap<String, String>,
    /// Opaque JSON from the hub.
    pub user_options: String,
    /// Readiness path.
    pub ready_path: String,
    /// How long readiness may take; `None` = the node's default.
    pub ready_timeout: Option<Duration>,
    /// Host privileges asked for.
    pub host: HostAccess,
    /// Devices (GPUs) asked for.
    pub gpus: crate::devices::Ask,
    /// The container is kept when the server stops and may be resumed by a later Start.
    pub resumable: bool,
    /// Container options (user, shm size, network, …).
    pub options: options::ContainerOptions,
    /// JupyterHub's internal_ssl files for the server, if the hub uses it.
    pub internal_ssl: Option<Certs>,
    /// When to pull the image; `None` = the node's default.
    pub pull_policy: Option<crate::registry::PullPolicy>,
    /// Registry credentials for this Start's pull only (secret: never kept, never hashed).
    pub pull_secret: Option<crate::registry::RegistryAuth>,
    /// When the node fences this server.
    pub fence: Fence,
}

#[cfg(test)]
impl StartSpec {
    /// A Start of `image` for `user`'s default server on port 8888 asking nothing else, for
    /// unit tests to change what they are about.
    pub(crate) fn plain(user: &str, image: &str) -> Self {
        Self {
            key: ServerKey::new(user, "").expect("a valid key"),
            spawn_id: "s1".into(),
            image: image.into(),
            cmd: vec![],
            args: vec![],
            env: Env::default(),
            port: 8888,
            resources: Resources::default(),
            volumes: vec![],
            labels: BTreeMap::new(),
            user_options: String::new(),
            ready_path: "/".into(),
            ready_timeout: None,
            host: HostAccess::default(),
            gpus: crate::devices::Ask::default(),
            resumable: false,
            options: options::ContainerOptions::default(),
            internal_ssl: None,
            pull_policy: None,
            pull_secret: None,
            fence: Fence::NodeDefault,
        }
    }
}

/// When a node cut off from the hub stops a server (`[fencing]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fence {
    /// As the node's `[fencing] stop_after_hub_lost_seconds` says.
    #[default]
    NodeDefault,
    /// Never: the server outlives any partition.
    Never,
    /// After this long without the hub.
    After(Duration),
}

impl Fence {
    /// The form kept in a record: `None` = the node's setting, `Some(0)` = never, else seconds.
    pub fn to_record(self) -> Option<u64> {
        match self {
            Self::NodeDefault => None,
            Self::Never => Some(0),
            Self::After(d) => Some(d.as_secs().max(1)),
        }
    }

    /// How long without the hub a server with record form `kept` may run, the node's
    /// setting being `node` (`None`: the node does not fence); `None` = never fenced.
    pub fn limit(kept: Option<u64>, node: Option<Duration>) -> Option<Duration> {
        match kept {
            None => node,
            Some(0) => None,
            Some(s) => Some(Duration::from_secs(s)),
        }
    }
}

/// Largest PEM file of [`Certs`].
pub const MAX_PEM_BYTES: usize = 64 * 1024;

/// The server's key, certificate and CA bundle for JupyterHub's internal_ssl (PEM). The key is
/// secret: `Debug` shows sizes only, and it is never hashed.
#[derive(Clone, PartialEq, Eq)]
pub struct Certs {
    /// Private key.
    pub key: Vec<u8>,
    /// Certificate.
    pub cert: Vec<u8>,
    /// CA bundle the server trusts for its clients.
    pub ca: Vec<u8>,
    /// CA bundle the hub checks the server's certificate against (the readiness probe does
    /// too); empty when the hub side sent none.
    pub server_ca: Vec<u8>,
}

impl fmt::Debug for Certs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Certs {{ key: {} bytes, cert: {} bytes, ca: {} bytes, server_ca: {} bytes }}",
            self.key.len(),
            self.cert.len(),
            self.ca.len(),
            self.server_ca.len()
        )
    }
}

impl Certs {
    /// Validates the three files: all given or none, each a bounded PEM file.
    pub fn new(key: Vec<u8>, cert: Vec<u8>, ca: Vec<u8>) -> Result<Option<Self>, SpecError> {
        if key.is_empty() && cert.is_empty() && ca.is_empty() {
            return Ok(None);
        }
        for (name, v) in [("key", &key), ("cert", &cert), ("ca", &ca)] {
            let field = format!("internal_ssl.{name}");
            if v.is_empty() {
                return Err(SpecError::new(
                    field,
                    "missing (key, cert and ca go together)",
                ));
            }
            if v.len() > MAX_PEM_BYTES {
                return Err(SpecError::new(
                    field,
                    format!("longer than {MAX_PEM_BYTES} bytes"),
                ));
            }
            if !v.windows(11).any(|w| w == b"-----BEGIN ") {
                return Err(SpecError::new(field, "not a PEM file"));
            }
        }
        Ok(Some(Self {
            key,
            cert,
            ca,
            server_ca: Vec::new(),
        }))
    }

    /// With the CA bundle the server's certificate is checked against (optional: empty is
    /// none); a bounded PEM file when given.
    pub fn with_server_ca(mut self, server_ca: Vec<u8>) -> Result<Self, SpecError> {
        let field = "internal_ssl.server_ca";
        if server_ca.len() > MAX_PEM_BYTES {
            return Err(SpecError::new(
                field,
                format!("longer than {MAX_PEM_BYTES} bytes"),
            ));
        }
        if !server_ca.is_empty() && !server_ca.windows(11).any(|w| w == b"-----BEGIN ") {
            return Err(SpecError::new(field, "not a PEM file"));
        }
        self.server_ca = server_ca;
        Ok(self)
    }
}

impl StartSpec {
    /// A digest of the spec without secrets (env values are left out), to tell two specs apart.
    pub fn spec_hash(&self) -> String {
        let mut h = Sha256::new();
        let mut put = |tag: &str, v: &str| {
            h.update(tag.as_bytes());
            h.update((v.len() as u64).to_le_bytes());
            h.update(v.as_bytes());
        };
        put("image", &self.image);
        self.cmd.iter().for_each(|c| put("cmd", c));
        self.args.iter().for_each(|a| put("arg", a));
        self.env.keys().for_each(|k| put("env-key", k));
        put("port", &self.port.to_string());
        put("resources", &format!("{:?}", self.resources));
        for v in &self.volumes {
            put(
                "volume",
                &format!("{}:{}:{}", v.name, v.target, v.read_only),
            );
        }
        for (k, v) in &self.labels {
            put("label", &format!("{k}={v}"));
        }
        put("ready", &self.ready_path);
        put("host", &format!("{:?}", self.host));
        if self.gpus.count > 0 {
            put("gpus", &format!("{:?}", self.gpus));
        }
        put("options", &format!("{:?}", self.options));
        put("internal-ssl", &self.internal_ssl.is_some().to_string());
        hex::encode(&h.finalize()[..12])
    }
}

/// Checks a spawn id: non-empty, bounded, printable.
pub fn check_spawn_id(id: &str) -> Result<(), SpecError> {
    if id.is_empty() {
        return Err(SpecError::new("spawn_id", "must not be empty"));
    }
    if id.len() > MAX_SPAWN_ID_BYTES {
        return Err(SpecError::new(
            "spawn_id",
            format!("longer than {MAX_SPAWN_ID_BYTES} bytes"),
        ));
    }
    if id.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(SpecError::new(
            "spawn_id",
            "must not contain whitespace or control characters",
        ));
    }
    Ok(())
}

/// Checks command-line strings (cmd or args).
pub fn check_argv(field: &str, argv: &[String]) -> Result<(), SpecError> {
    if argv.len() > MAX_ENTRIES {
        return Err(SpecError::new(
            field,
            format!("{} entries; at most {MAX_ENTRIES}", argv.len()),
        ));
    }
    for (i, a) in argv.iter().enumerate() {
        if a.contains('\0') {
            return Err(SpecError::new(
                format!("{field}[{i}]"),
                "must not contain NUL",
            ));
        }
        if a.len() > MAX_VALUE_BYTES {
            return Err(SpecError::new(
                format!("{field}[{i}]"),
                format!("longer than {MAX_VALUE_BYTES} bytes"),
            ));
        }
    }
    Ok(())
}

/// Checks extra labels: bounded, keys not under the reserved `berth.` prefix.
pub fn check_labels(labels: &BTreeMap<String, String>) -> Result<(), SpecError> {
    if labels.len() > MAX_ENTRIES {
        return Err(SpecError::new(
            "labels",
            format!("{} entries; at most {MAX_ENTRIES}", labels.len()),
        ));
    }
    for (k, v) in labels {
        let field = || format!("labels[{}]", printable(k));
        if k.is_empty() || k.len() > MAX_KEY_BYTES || k.chars().any(char::is_control) {
            return Err(SpecError::new(
                field(),
                "key must be 1 to 1024 bytes without control characters",
            ));
        }
        if k.starts_with(RESERVED_LABEL_PREFIX) {
            return Err(SpecError::new(
                field(),
                format!("keys under {RESERVED_LABEL_PREFIX:?} are reserved for berthd"),
            ));
        }
        if v.contains('\0') || v.len() > MAX_VALUE_BYTES {
            return Err(SpecError::new(
                field(),
                "value must be without NUL and bounded",
            ));
        }
    }
    Ok(())
}

/// Checks a readiness path: absolute, printable ASCII, bounded. `""` becomes `/`.
pub fn ready_path(path: &str) -> Result<String, SpecError> {
    if path.is_empty() {
        return Ok("/".to_owned());
    }
    if !path.starts_with('/') || path.len() > 2048 || !path.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(SpecError::new(
            "ready_path",
            "must be an absolute URL path of printable ASCII, at most 2048 bytes",
        ));
    }
    Ok(path.to_owned())
}

/// Checks a container port: 0 means [`DEFAULT_PORT`], else 1..=65535.
pub fn port(port: u32) -> Result<u16, SpecError> {
    match port {
        0 => Ok(DEFAULT_PORT),
        p => u16::try_from(p)
            .map_err(|_| SpecError::new("port", format!("{p} is out of range 1-65535"))),
    }
}

/// Checks an image reference against Docker's grammar:
/// `[domain[:port]/]path[:tag][@algo:hex]`, path components lowercase.
// Long: Docker's reference grammar, part by part, in one place.
pub fn check_image(image: &str) -> Result<(), SpecError> {
    let bad = |why: &str| {
        Err(SpecError::new(
            "image",
            format!(
                "{:?} is not a valid image reference: {why}",
                printable(image)
            ),
        ))
    };
    if image.is_empty() {
        return Err(SpecError::new("image", "must not be empty"));
    }
    if image.len() > 512 {
        return bad("longer than 512 bytes");
    }
    let (rest, digest) = match image.split_once('@') {
        Some((r, d)) => (r, Some(d)),
        None => (image, None),
    };
    if let Some(d) = digest {
        let Some((algo, hex)) = d.split_once(':') else {
            return bad("digest must be algorithm:hex");
        };
        if algo.is_empty()
            || !algo
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+._-".contains(&b))
            || hex.len() < 32
            || !hex.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return bad("digest must be algorithm:hex");
        }
    }
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
        None => (rest, None),
    };
    if let Some(t) = tag {
        let ok = !t.is_empty()
            && t.len() <= 128
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
            && (t.as_bytes()[0].is_ascii_alphanumeric() || t.as_bytes()[0] == b'_');
        if !ok {
            return bad("tag must be [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}");
        }
    }
    if name.len() > 255 {
        return bad("repository name is longer than 255 bytes");
    }
    let mut parts: Vec<&str> = name.split('/').collect();
    if parts.len() > 1 {
        let first = parts[0];
        if first.contains('.') || first.contains(':') || first == "localhost" {
            if !domain_ok(first) {
                return bad("registry host must be host[:port]");
            }
            parts.remove(0);
        }
    }
    if parts.is_empty() || !parts.iter().all(|c| path_component_ok(c)) {
        return bad(
            "path components must be lowercase [a-z0-9] separated by '.', '_', '__' or '-'",
        );
    }
    Ok(())
}

/// Docker Hub's registry as Docker names it in a full reference.
pub const DOCKER_HUB: &str = "docker.io";

/// Splits a repository name into registry and path the way Docker does: the first component is
/// a registry only if it holds `.` or `:` or is `localhost`.
fn split_domain(name: &str) -> (&str, &str) {
    match name.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first != first.to_lowercase() =>
        {
            (first, rest)
        }
        _ => (DOCKER_HUB, name),
    }
}

/// The full reference Docker resolves a valid image reference to: `ubuntu` is
/// `docker.io/library/ubuntu:latest`, `index.docker.io/x/y` is `docker.io/x/y:latest`. The
/// policy matches this form and Docker is handed this form, so what is checked is what runs —
/// and a short name can never be taken by Docker for an image id prefix.
pub fn normalize_image(image: &str) -> String {
    let (rest, digest) = match image.split_once('@') {
        Some((r, d)) => (r, Some(d)),
        None => (image, None),
    };
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
        None => (rest, None),
    };
    let (domain, path) = split_domain(name);
    let domain = if domain == "index.docker.io" {
        DOCKER_HUB
    } else {
        domain
    };
    let library = if domain == DOCKER_HUB && !path.contains('/') {
        "library/"
    } else {
        ""
    };
    let mut full = format!("{domain}/{library}{path}");
    match (tag, digest) {
        (Some(t), _) => {
            full.push(':');
            full.push_str(t);
        }
        (None, None) => full.push_str(":latest"),
        (None, Some(_)) => {}
    }
    if let Some(d) = digest {
        full.push('@');
        full.push_str(d);
    }
    full
}

/// An `allowed_images` glob in the form [`normalize_image`] gives: a plain reference is
/// normalised; a glob gets Docker Hub's registry (and `library/` for one component) unless it
/// names a registry or starts with a wildcard, so `jupyter/*` means `docker.io/jupyter/*`.
pub fn normalize_image_glob(glob: &str) -> String {
    if !glob.contains(['*', '?']) {
        return if check_image(glob).is_ok() {
            normalize_image(glob)
        } else {
            glob.to_owned()
        };
    }
    let first = glob.split('/').next().unwrap_or_default();
    if first.contains(['*', '?']) && glob.contains('/') || first.starts_with('*') {
        return glob.to_owned();
    }
    match glob.split_once('/') {
        None => format!("{DOCKER_HUB}/library/{glob}"),
        Some((first, rest)) => {
            let (domain, path) = split_domain(glob);
            if domain == DOCKER_HUB && first != DOCKER_HUB {
                format!("{DOCKER_HUB}/{path}")
            } else if first == "index.docker.io" {
                format!("{DOCKER_HUB}/{rest}")
            } else {
                glob.to_owned()
            }
        }
    }
}

fn domain_ok(d: &str) -> bool {
    let (host, port) = match d.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (d, None),
    };
    if let Some(p) = port
        && (p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return false;
    }
    !host.is_empty()
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

fn path_component_ok(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run: ".", "_", "__" or one or more "-".
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

pub mod options;

#[cfg(test)]
mod tests;

/// Checks a device ask: a bounded count, class and model names of printable characters.
pub fn device_ask(count: u32, class: &str, model: &str) -> Result<crate::devices::Ask, SpecError> {
    if count > crate::devices::MAX_ASK {
        return Err(SpecError::new(
            "resources.gpus",
            format!("{count} is more than {}", crate::devices::MAX_ASK),
        ));
    }
    let printable = |s: &str| s.len() <= 128 && !s.chars().any(char::is_control);
    if !printable(class) || class.contains('/') {
        return Err(SpecError::new(
            "resources.gpu_class",
            "at most 128 printable characters, no '/'",
        ));
    }
    if !printable(model) {
        return Err(SpecError::new(
            "resources.gpu_model",
            "at most 128 printable characters",
        ));
    }
    Ok(crate::devices::Ask {
        count,
        class: class.to_owned(),
        model: model.to_owned(),
    })
}
