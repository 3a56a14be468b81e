//! The checks a configuration must pass before anything binds; each error names its key.

use super::{Config, ConfigError, SecurityConfig, files, invalid};

/// Most labels a node may carry.
const MAX_LABELS: usize = 64;

/// 1-63 ASCII letters, digits and `extra`, starting with a letter or digit.
fn label_word(s: &str, extra: &str) -> bool {
    s.len() <= 63
        && s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || extra.contains(c))
}

impl Config {
    /// Checks every value and then every file the configuration names (readable, parses, key
    /// matches certificate), exactly as `serve` will use them; the error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_values()?;
        self.validate_security()?;
        if let Some(name) = self.policy.container_options.unknown_option() {
            return Err(invalid(
                "policy.container_options.forbidden",
                format!(
                    "{name:?} is not a container option (one of {:?})",
                    crate::spec::options::OPTION_NAMES
                ),
            ));
        }
        self.activity
            .validate()
            .map_err(|(key, message)| invalid(key, message))?;
        crate::devices::validate(&self.devices.classes)
            .map_err(|(key, message)| invalid(key, message))?;
        crate::warm::validate(&self.warm.pools).map_err(|(key, message)| invalid(key, message))?;
        crate::devices::check_nodes(&self.devices.classes, crate::devices::check_node)
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
        files::check(self)
    }

    pub(super) fn validate_values(&self) -> Result<(), ConfigError> {
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
        // The pin helper makes these directories as root (and runs without systemd's
        // RestrictSUIDSGID=, see berth-pin.service): permission bits only, no set-user-ID.
        let mode = self.policy.host_path_mode;
        if mode > 0o7777 || mode & 0o4000 != 0 {
            return Err(invalid(
                "policy.host_path_mode",
                format!(
                    "{mode:#o} must be permission bits (at most 0o7777) without set-user-ID (0o4000)"
                ),
            ));
        }
        self.log
            .env_filter()
            .map_err(|message| invalid("log.filter", message))?;
        self.validate_docker()?;
        self.validate_spawn()?;
        self.validate_images()?;
        self.validate_capacity()?;
        self.validate_metrics()?;
        self.validate_network()?;
        self.validate_labels()
    }

    /// `metrics.listen` is "" or an address; off loopback only with `metrics.allow_network`.
    fn validate_metrics(&self) -> Result<(), ConfigError> {
        let m = &self.metrics;
        if m.listen.is_empty() {
            return Ok(());
        }
        let addr: std::net::SocketAddr = m.listen.parse().map_err(|_| {
            invalid(
                "metrics.listen",
                format!(
                    "{:?} must be an address with a port, e.g. 127.0.0.1:9151, or \"\" (off)",
                    m.listen
                ),
            )
        })?;
        if !addr.ip().is_loopback() && !m.allow_network {
            return Err(invalid(
                "metrics.listen",
                format!(
                    "{addr} is not a loopback address: /metrics is plain HTTP without authentication; set metrics.allow_network = true to serve it there"
                ),
            ));
        }
        Ok(())
    }

    /// `network.name` is a Docker network name berthd may create (not one of Docker's own).
    fn validate_network(&self) -> Result<(), ConfigError> {
        let n = &self.network.name;
        let grammar = n.len() <= 64
            && n.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
        if !grammar || ["bridge", "host", "none"].contains(&n.as_str()) {
            return Err(invalid(
                "network.name",
                format!(
                    "{n:?} must be 1-64 characters of [a-zA-Z0-9_.-] and not one of Docker's own networks (bridge, host, none)"
                ),
            ));
        }
        Ok(())
    }

    fn validate_images(&self) -> Result<(), ConfigError> {
        if self.images.pull_timeout_seconds == 0 || self.images.pull_timeout_seconds > 86_400 {
            return Err(invalid("images.pull_timeout_seconds", "must be 1-86400"));
        }
        let i = &self.images;
        if i.gc_high_percent > 100
            || (i.gc_high_percent > 0 && i.gc_low_percent >= i.gc_high_percent)
        {
            return Err(invalid(
                "images.gc_low_percent",
                "must be below images.gc_high_percent (at most 100; 0 turns image GC off)",
            ));
        }
        if i.gc_interval_seconds == 0 || i.gc_interval_seconds > 86_400 {
            return Err(invalid("images.gc_interval_seconds", "must be 1-86400"));
        }
        Ok(())
    }

    /// Label keys and values are short words a hub can write as `key=value` in a selector and
    /// a message: no `=`, `,`, spaces or control characters.
    fn validate_labels(&self) -> Result<(), ConfigError> {
        let labels = &self.node.labels;
        if labels.len() > MAX_LABELS {
            return Err(invalid(
                "node.labels",
                format!("at most {MAX_LABELS} labels, got {}", labels.len()),
            ));
        }
        for (k, v) in labels {
            if !label_word(k, "./-_") {
                return Err(invalid(
                    format!("node.labels.{k}"),
                    format!(
                        "the key {k:?} must be 1-63 characters of [A-Za-z0-9._/-], starting with a letter or digit"
                    ),
                ));
            }
            if !label_word(v, ".-_") {
                return Err(invalid(
                    format!("node.labels.{k}"),
                    format!(
                        "the value {v:?} must be 1-63 characters of [A-Za-z0-9._-], starting with a letter or digit"
                    ),
                ));
            }
        }
        Ok(())
    }

    fn validate_docker(&self) -> Result<(), ConfigError> {
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
        Ok(())
    }

    fn validate_spawn(&self) -> Result<(), ConfigError> {
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
        if s.abandon_grace_seconds > 3600 {
            return Err(invalid(
                "spawn.abandon_grace_seconds",
                "must be at most 3600",
            ));
        }
        Ok(())
    }

    fn validate_capacity(&self) -> Result<(), ConfigError> {
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
        if !sec.hub_client_names.is_empty() && !sec.mutual_tls() {
            return Err(invalid(
                "security.hub_client_names",
                "names client certificates: it needs security.client_ca_file (mutual TLS)",
            ));
        }
        if let Some(bad) = sec
            .hub_client_names
            .iter()
            .find(|n| n.is_empty() || n.len() > 253 || !n.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err(invalid(
                "security.hub_client_names",
                format!("{bad:?} must be a DNS name or URI: 1-253 printable ASCII characters"),
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
}
