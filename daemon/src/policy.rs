//! The node policy: what a hub may ask of this node. Checked on every Start before anything is
//! created; a violation names the rule.

use std::path::{Component, Path, PathBuf};

use crate::spec::{StartSpec, normalize_image_glob};

pub mod options;

/// Mode of a directory made for a templated host path: its owner only.
pub const DEFAULT_HOST_PATH_MODE: u32 = 0o700;

section! {
    /// `[policy]` in the configuration.
    pub struct Policy at "policy." {
        /// Image references allowed, as globs (`*` any run of characters, `?` one), matched against the full reference Docker resolves (`ubuntu` is `docker.io/library/ubuntu:latest`).
        allowed_images: Vec<String> = vec!["*".to_owned()],
            env "BERTH_POLICY_ALLOWED_IMAGES", flag "policy-allowed-images";
        /// Host directories under which bind mounts are allowed; empty = no host paths.
        allowed_host_path_roots: Vec<PathBuf> = Vec::new(),
            env "BERTH_POLICY_ALLOWED_HOST_PATH_ROOTS", flag "policy-allowed-host-path-roots";
        /// Owner uid of the directories made for templated host paths (`/srv/homes/{user}`) on first use; unset: root's.
        host_path_uid: Option<u32> = None,
            env "BERTH_POLICY_HOST_PATH_UID", flag "policy-host-path-uid";
        /// Owner gid of those directories; unset: root's.
        host_path_gid: Option<u32> = None,
            env "BERTH_POLICY_HOST_PATH_GID", flag "policy-host-path-gid";
        /// Permission bits of those directories (0o700 or 448).
        host_path_mode: u32 = DEFAULT_HOST_PATH_MODE,
            env "BERTH_POLICY_HOST_PATH_MODE", flag "policy-host-path-mode";
        /// Largest memory limit per server in bytes; 0 = no cap.
        #[serde(deserialize_with = "crate::config::units::bytes")]
        max_mem_limit_bytes: u64 = 0,
            env "BERTH_POLICY_MAX_MEM_LIMIT_BYTES", flag "policy-max-mem-limit-bytes";
        /// Largest CPU limit per server in cores; 0 = no cap.
        max_cpu_limit: f64 = 0.0,
            env "BERTH_POLICY_MAX_CPU_LIMIT", flag "policy-max-cpu-limit";
        /// Every server must set a memory limit.
        require_mem_limit: bool = false,
            env "BERTH_POLICY_REQUIRE_MEM_LIMIT", flag "policy-require-mem-limit";
        /// Allow privileged containers.
        allow_privileged: bool = false,
            env "BERTH_POLICY_ALLOW_PRIVILEGED", flag "policy-allow-privileged";
        /// Allow the host's network namespace.
        allow_host_network: bool = false,
            env "BERTH_POLICY_ALLOW_HOST_NETWORK", flag "policy-allow-host-network";
        /// Allow the host's PID namespace.
        allow_host_pid: bool = false,
            env "BERTH_POLICY_ALLOW_HOST_PID", flag "policy-allow-host-pid";
        /// Allow the host's IPC namespace.
        allow_host_ipc: bool = false,
            env "BERTH_POLICY_ALLOW_HOST_IPC", flag "policy-allow-host-ipc";
        /// Capabilities that may be added (upper case, without `CAP_`).
        allowed_capabilities: Vec<String> = Vec::new(),
            env "BERTH_POLICY_ALLOWED_CAPABILITIES", flag "policy-allowed-capabilities";
        /// Host devices that may be passed through.
        allowed_devices: Vec<String> = Vec::new(),
            env "BERTH_POLICY_ALLOWED_DEVICES", flag "policy-allowed-devices";
        /// Which container options (user, shm size, network, …) a hub may set, and their bounds.
        container_options: options::OptionsPolicy = options::OptionsPolicy::default();
        /// Accept registry credentials in a Start (`pull_secret`, used for that pull only); otherwise only the node's own (`images.registry_auth_file`) are used.
        allow_pull_secrets: bool = false,
            env "BERTH_POLICY_ALLOW_PULL_SECRETS", flag "policy-allow-pull-secrets";
    }
}

/// A Start the policy forbids.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("node policy {rule}: {detail}")]
pub struct Violation {
    /// The policy key that forbids it.
    pub rule: &'static str,
    /// What was asked.
    pub detail: String,
}

fn deny(rule: &'static str, detail: String) -> Result<(), Violation> {
    Err(Violation { rule, detail })
}

/// Matches `text` against a glob of `*` and `?`.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// Whether `path` lies under `root`, comparing normalised components (no `..` escapes:
/// request paths with `..` are refused before this).
fn under(path: &Path, root: &Path) -> bool {
    let norm = |p: &Path| -> Vec<String> {
        p.components()
            .filter_map(|c| match c {
                Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
                _ => None,
            })
            .collect()
    };
    let (p, r) = (norm(path), norm(root));
    !r.is_empty() && p.starts_with(&r)
}

impl Policy {
    /// Owner and mode of the directories made for templated host paths.
    pub(crate) fn new_dir(&self) -> crate::hostpath::NewDir {
        crate::hostpath::NewDir {
            owner: self
                .host_path_uid
                .map(|uid| (uid, self.host_path_gid.unwrap_or(uid))),
            mode: self.host_path_mode,
        }
    }

    /// Checks a normalised image reference against `allowed_images`.
    pub fn check_image(&self, image: &str) -> Result<(), Violation> {
        if !self
            .allowed_images
            .iter()
            .any(|g| glob_match(&normalize_image_glob(g), image))
        {
            return deny(
                "allowed_images",
                format!("image {image:?} is not in the node's allow-list"),
            );
        }
        Ok(())
    }

    /// Checks a validated spec against the policy.
    pub fn check(&self, spec: &StartSpec) -> Result<(), Violation> {
        self.check_image(&spec.image)?;
        for v in spec.volumes.iter().filter(|v| v.host_path) {
            if !self
                .allowed_host_path_roots
                .iter()
                .any(|r| under(Path::new(&v.name), r))
            {
                return deny(
                    "allowed_host_path_roots",
                    format!("host path {} is not under an allowed root", v.name),
                );
            }
        }
        if spec.pull_secret.is_some() && !self.allow_pull_secrets {
            return deny(
                "allow_pull_secrets",
                "this node takes no registry credentials in a Start; it uses its own".to_owned(),
            );
        }
        self.check_resources(spec.resources)?;
        self.check_host(&spec.host)?;
        self.container_options.check(&spec.options)
    }

    /// `spec` with each bound of the policy applied where the Start leaves its option out
    /// (see [`options::OptionsPolicy::with_defaults`]); the memory and CPU caps refuse an
    /// omitted limit in [`Policy::check`] instead.
    pub fn with_defaults(&self, mut spec: StartSpec) -> StartSpec {
        spec.options = self.container_options.with_defaults(spec.options);
        spec
    }

    fn check_resources(&self, r: crate::spec::Resources) -> Result<(), Violation> {
        if self.require_mem_limit && r.mem_limit.is_none() {
            return deny(
                "require_mem_limit",
                "the server must set a memory limit".to_owned(),
            );
        }
        if self.max_mem_limit_bytes > 0 {
            let asked = r.mem_limit.unwrap_or(u64::MAX);
            if asked > self.max_mem_limit_bytes
                || r.mem_guarantee.unwrap_or(0) > self.max_mem_limit_bytes
            {
                let shown = r
                    .mem_limit
                    .map_or_else(|| "no limit".to_owned(), |m| format!("{m} bytes"));
                return deny(
                    "max_mem_limit_bytes",
                    format!(
                        "{shown} asked; at most {} bytes per server",
                        self.max_mem_limit_bytes
                    ),
                );
            }
        }
        if self.max_cpu_limit > 0.0 {
            let asked = r.cpu_limit.unwrap_or(f64::INFINITY);
            if asked > self.max_cpu_limit || r.cpu_guarantee.unwrap_or(0.0) > self.max_cpu_limit {
                return deny(
                    "max_cpu_limit",
                    format!(
                        "{asked} cores asked; at most {} per server",
                        self.max_cpu_limit
                    ),
                );
            }
        }
        Ok(())
    }

    fn check_host(&self, h: &crate::spec::HostAccess) -> Result<(), Violation> {
        let namespaces = [
            (
                h.privileged,
                self.allow_privileged,
                "allow_privileged",
                "privileged containers are",
            ),
            (
                h.host_network,
                self.allow_host_network,
                "allow_host_network",
                "the host network namespace is",
            ),
            (
                h.host_pid,
                self.allow_host_pid,
                "allow_host_pid",
                "the host PID namespace is",
            ),
            (
                h.host_ipc,
                self.allow_host_ipc,
                "allow_host_ipc",
                "the host IPC namespace is",
            ),
        ];
        for (asked, allowed, rule, what) in namespaces {
            if asked && !allowed {
                return deny(rule, format!("{what} not allowed"));
            }
        }
        if let Some(c) = h
            .cap_add
            .iter()
            .find(|c| !self.allowed_capabilities.contains(c))
        {
            return deny(
                "allowed_capabilities",
                format!("capability {c} is not allowed"),
            );
        }
        if let Some(d) = h.devices.iter().find(|d| !self.allowed_devices.contains(d)) {
            return deny("allowed_devices", format!("device {d} is not allowed"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::ServerKey;
    use crate::spec::{HostAccess, Resources, VolumeSpec};

    fn spec() -> StartSpec {
        StartSpec::plain("u", "quay.io/jupyter/base-notebook:2025")
    }

    #[test]
    fn globs() {
        assert!(glob_match("*", "anything/at:all"));
        assert!(glob_match(
            "quay.io/jupyter/*",
            "quay.io/jupyter/base-notebook:2025"
        ));
        assert!(!glob_match("quay.io/jupyter/*", "docker.io/evil/image"));
        assert!(glob_match("img:v?", "img:v1"));
        assert!(!glob_match("img:v?", "img:v10"));
        assert!(glob_match("a*b*c", "aXXbYYc"));
        assert!(!glob_match("", "x"));
    }

    #[test]
    fn each_rule_is_named() {
        let strict = Policy {
            allowed_images: vec!["quay.io/jupyter/*".into()],
            allowed_host_path_roots: vec!["/srv/berth".into()],
            max_mem_limit_bytes: 1 << 30,
            max_cpu_limit: 2.0,
            ..Policy::default()
        };
        let key = ServerKey::new("u", "").expect("valid");
        let mut cases: Vec<(StartSpec, &str)> = Vec::new();
        let mut s = spec();
        s.image = "docker.io/evil:latest".into();
        cases.push((s, "allowed_images"));
        for bad in ["/", "/etc", "/srv/berthX", "/srv"] {
            let mut s = spec();
            s.volumes = vec![VolumeSpec::new(0, &key, bad, "/x", false).expect("parses")];
            cases.push((s, "allowed_host_path_roots"));
        }
        let mut s = spec();
        s.resources.mem_limit = Some(2 << 30);
        cases.push((s, "max_mem_limit_bytes"));
        cases.push((spec(), "max_mem_limit_bytes"));
        let mut s = spec();
        s.resources.mem_limit = Some(1 << 20);
        s.resources.cpu_limit = Some(4.0);
        cases.push((s, "max_cpu_limit"));
        let ok_res = Resources {
            mem_limit: Some(1 << 20),
            cpu_limit: Some(1.0),
            ..Resources::default()
        };
        for (host, rule) in [
            (
                HostAccess {
                    privileged: true,
                    ..HostAccess::default()
                },
                "allow_privileged",
            ),
            (
                HostAccess {
                    host_network: true,
                    ..HostAccess::default()
                },
                "allow_host_network",
            ),
            (
                HostAccess {
                    host_pid: true,
                    ..HostAccess::default()
                },
                "allow_host_pid",
            ),
            (
                HostAccess {
                    host_ipc: true,
                    ..HostAccess::default()
                },
                "allow_host_ipc",
            ),
            (
                HostAccess {
                    cap_add: vec!["SYS_ADMIN".into()],
                    ..HostAccess::default()
                },
                "allowed_capabilities",
            ),
            (
                HostAccess {
                    devices: vec!["/dev/fuse".into()],
                    ..HostAccess::default()
                },
                "allowed_devices",
            ),
        ] {
            let mut s = spec();
            s.resources = ok_res;
            s.host = host;
            cases.push((s, rule));
        }
        for (s, rule) in cases {
            let v = strict.check(&s).expect_err(rule);
            assert_eq!(v.rule, rule, "{v}");
        }
        let mut fine = spec();
        fine.resources = ok_res;
        fine.volumes =
            vec![VolumeSpec::new(0, &key, "/srv/berth/u", "/data", true).expect("parses")];
        assert_eq!(strict.check(&fine), Ok(()));
        assert_eq!(Policy::default().check(&spec()), Ok(()));
    }

    #[test]
    fn image_globs_match_the_reference_docker_resolves() {
        let hub = Policy {
            allowed_images: vec!["docker.io/library/*".into()],
            ..Policy::default()
        };
        let short = Policy {
            allowed_images: vec!["jupyter/*".into(), "busybox".into()],
            ..Policy::default()
        };
        let check = |p: &Policy, image: &str| {
            let mut s = spec();
            s.image = crate::spec::normalize_image(image);
            p.check(&s).map_err(|v| v.rule)
        };
        assert_eq!(check(&hub, "ubuntu"), Ok(()));
        assert_eq!(check(&hub, "ubuntu:22.04"), Ok(()));
        assert_eq!(check(&hub, "evil.example/ubuntu"), Err("allowed_images"));
        assert_eq!(check(&hub, "jupyter/base-notebook"), Err("allowed_images"));
        assert_eq!(check(&short, "docker.io/jupyter/base-notebook:x"), Ok(()));
        assert_eq!(check(&short, "busybox"), Ok(()));
        assert_eq!(check(&short, "busybox:1.36"), Err("allowed_images"));
        assert_eq!(
            check(&short, "quay.io/jupyter/base-notebook"),
            Err("allowed_images")
        );
    }
}
