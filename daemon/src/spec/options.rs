//! Container options of a spawn (user, shm size, pids limit, ulimits, hosts, DNS, read-only
//! root, network, post-start command), validated field by field.

use std::net::IpAddr;

use super::{SpecError, check_argv};

/// Most entries of any list option.
pub const MAX_OPTION_ENTRIES: usize = 64;
/// Largest /dev/shm asked for: more than any node's memory is a mistake.
pub const MAX_SHM_BYTES: u64 = 1 << 40;
/// Ulimit names Docker knows.
pub const ULIMIT_NAMES: [&str; 15] = [
    "core",
    "cpu",
    "data",
    "fsize",
    "locks",
    "memlock",
    "msgqueue",
    "nice",
    "nofile",
    "nproc",
    "rss",
    "rtprio",
    "rttime",
    "sigpending",
    "stack",
];

/// One ulimit.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Ulimit {
    /// Its name, one of [`ULIMIT_NAMES`].
    pub name: String,
    /// Soft limit.
    pub soft: i64,
    /// Hard limit, at least `soft`.
    pub hard: i64,
}

/// The validated options; empty or `None` = Docker's default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct ContainerOptions {
    /// `uid` or `uid:gid`.
    pub user: Option<(u32, Option<u32>)>,
    /// Supplementary groups (gids or names).
    pub group_add: Vec<String>,
    /// Absolute working directory.
    pub working_dir: Option<String>,
    /// /dev/shm size in bytes.
    pub shm_size: Option<u64>,
    /// Most processes.
    pub pids_limit: Option<i64>,
    /// Resource limits.
    pub ulimits: Vec<Ulimit>,
    /// `(host, ip)` lines for /etc/hosts.
    pub extra_hosts: Vec<(String, IpAddr)>,
    /// DNS servers.
    pub dns: Vec<IpAddr>,
    /// DNS search domains.
    pub dns_search: Vec<String>,
    /// Read-only root filesystem.
    pub read_only_rootfs: bool,
    /// Writable tmpfs mounts (absolute paths).
    pub tmpfs: Vec<String>,
    /// Docker network to attach to.
    pub network_name: Option<String>,
    /// Command run in the container once it answers.
    pub post_start_cmd: Vec<String>,
}

/// The raw options as the request carries them.
#[derive(Debug, Clone, Default)]
pub struct RawOptions {
    /// See [`ContainerOptions`]; the proto's fields one to one.
    pub user: String,
    /// Supplementary groups.
    pub group_add: Vec<String>,
    /// Working directory.
    pub working_dir: String,
    /// /dev/shm bytes.
    pub shm_size_bytes: u64,
    /// Most processes.
    pub pids_limit: i64,
    /// `(name, soft, hard)`.
    pub ulimits: Vec<(String, i64, i64)>,
    /// `host:ip`.
    pub extra_hosts: Vec<String>,
    /// DNS servers.
    pub dns: Vec<String>,
    /// DNS search domains.
    pub dns_search: Vec<String>,
    /// Read-only root.
    pub read_only_rootfs: bool,
    /// tmpfs paths.
    pub tmpfs: Vec<String>,
    /// Network.
    pub network_name: String,
    /// Post-start command.
    pub post_start_cmd: Vec<String>,
}

fn field(name: &str) -> String {
    format!("options.{name}")
}

fn bounded(name: &str, n: usize) -> Result<(), SpecError> {
    if n > MAX_OPTION_ENTRIES {
        return Err(SpecError::new(
            field(name),
            format!("{n} entries; at most {MAX_OPTION_ENTRIES}"),
        ));
    }
    Ok(())
}

fn abs_path(name: &str, p: &str) -> Result<(), SpecError> {
    if !p.starts_with('/')
        || p.len() > 4096
        || p.split('/').any(|c| c == "..")
        || p.chars().any(|c| c.is_control() || c == ':' || c == ',')
    {
        return Err(SpecError::new(
            field(name),
            format!("{p:?} is not an absolute path without '..', ':' or ','"),
        ));
    }
    Ok(())
}

/// A host or domain name: dot-separated labels of letters, digits and '-'.
fn hostname(name: &str, h: &str) -> Result<(), SpecError> {
    let ok = !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(SpecError::new(
            field(name),
            format!("{h:?} is not a host name"),
        ))
    }
}

fn ip(name: &str, s: &str) -> Result<IpAddr, SpecError> {
    s.parse()
        .map_err(|_| SpecError::new(field(name), format!("{s:?} is not an IP address")))
}

fn user(u: &str) -> Result<Option<(u32, Option<u32>)>, SpecError> {
    if u.is_empty() {
        return Ok(None);
    }
    let bad = || {
        SpecError::new(
            field("user"),
            format!("{u:?} must be a numeric uid or uid:gid"),
        )
    };
    let (uid, gid) = match u.split_once(':') {
        Some((a, b)) => (a, Some(b)),
        None => (u, None),
    };
    let uid = uid.parse::<u32>().map_err(|_| bad())?;
    let gid = gid
        .map(|g| g.parse::<u32>().map_err(|_| bad()))
        .transpose()?;
    Ok(Some((uid, gid)))
}

fn group(g: &str) -> bool {
    g.parse::<u32>().is_ok()
        || (!g.is_empty()
            && g.len() <= 32
            && g.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
            && !g.starts_with('-'))
}

/// The Docker network name grammar: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`.
fn network(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 128
        && n.as_bytes()[0].is_ascii_alphanumeric()
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

impl TryFrom<RawOptions> for ContainerOptions {
    type Error = SpecError;

    // Long: one check per option, in the order of the message.
    fn try_from(r: RawOptions) -> Result<Self, SpecError> {
        let user = user(&r.user)?;
        bounded("group_add", r.group_add.len())?;
        if let Some(g) = r.group_add.iter().find(|g| !group(g)) {
            return Err(SpecError::new(
                field("group_add"),
                format!("{g:?} is not a gid or group name"),
            ));
        }
        let working_dir = (!r.working_dir.is_empty()).then_some(r.working_dir);
        if let Some(w) = &working_dir {
            abs_path("working_dir", w)?;
        }
        if r.shm_size_bytes > MAX_SHM_BYTES {
            return Err(SpecError::new(
                field("shm_size_bytes"),
                format!("{} is more than {MAX_SHM_BYTES}", r.shm_size_bytes),
            ));
        }
        if r.pids_limit < 0 {
            return Err(SpecError::new(
                field("pids_limit"),
                "must not be negative (0 = Docker's default)",
            ));
        }
        bounded("ulimits", r.ulimits.len())?;
        let mut ulimits = Vec::new();
        for (name, soft, hard) in r.ulimits {
            if !ULIMIT_NAMES.contains(&name.as_str()) {
                return Err(SpecError::new(
                    field("ulimits"),
                    format!("{name:?} is not one of {ULIMIT_NAMES:?}"),
                ));
            }
            if soft < -1 || hard < -1 || (hard != -1 && (soft == -1 || soft > hard)) {
                return Err(SpecError::new(
                    field("ulimits"),
                    format!(
                        "{name}: soft {soft} and hard {hard} must be -1 (unlimited) or 0 <= soft <= hard"
                    ),
                ));
            }
            ulimits.push(Ulimit { name, soft, hard });
        }
        bounded("extra_hosts", r.extra_hosts.len())?;
        let mut extra_hosts = Vec::new();
        for h in &r.extra_hosts {
            let Some((host, addr)) = h.split_once(':') else {
                return Err(SpecError::new(
                    field("extra_hosts"),
                    format!("{h:?} must be host:ip"),
                ));
            };
            hostname("extra_hosts", host)?;
            extra_hosts.push((host.to_owned(), ip("extra_hosts", addr)?));
        }
        bounded("dns", r.dns.len())?;
        let dns = r
            .dns
            .iter()
            .map(|d| ip("dns", d))
            .collect::<Result<_, _>>()?;
        bounded("dns_search", r.dns_search.len())?;
        for d in &r.dns_search {
            hostname("dns_search", d)?;
        }
        bounded("tmpfs", r.tmpfs.len())?;
        for t in &r.tmpfs {
            abs_path("tmpfs", t)?;
        }
        let network_name = (!r.network_name.is_empty()).then_some(r.network_name);
        if let Some(n) = &network_name
            && (!network(n) || ["host", "none", "container"].contains(&n.as_str()))
        {
            return Err(SpecError::new(
                field("network_name"),
                format!(
                    "{n:?} is not the name of a Docker network (host and none are host access)"
                ),
            ));
        }
        check_argv(&field("post_start_cmd"), &r.post_start_cmd)?;
        Ok(Self {
            user,
            group_add: r.group_add,
            working_dir,
            shm_size: (r.shm_size_bytes > 0).then_some(r.shm_size_bytes),
            pids_limit: (r.pids_limit > 0).then_some(r.pids_limit),
            ulimits,
            extra_hosts,
            dns,
            dns_search: r.dns_search,
            read_only_rootfs: r.read_only_rootfs,
            tmpfs: r.tmpfs,
            network_name,
            post_start_cmd: r.post_start_cmd,
        })
    }
}

impl ContainerOptions {
    /// The names of the options set, as the policy and the proto name them.
    pub fn set(&self) -> Vec<&'static str> {
        [
            ("user", self.user.is_some()),
            ("group_add", !self.group_add.is_empty()),
            ("working_dir", self.working_dir.is_some()),
            ("shm_size", self.shm_size.is_some()),
            ("pids_limit", self.pids_limit.is_some()),
            ("ulimits", !self.ulimits.is_empty()),
            ("extra_hosts", !self.extra_hosts.is_empty()),
            ("dns", !self.dns.is_empty()),
            ("dns_search", !self.dns_search.is_empty()),
            ("read_only_rootfs", self.read_only_rootfs),
            ("tmpfs", !self.tmpfs.is_empty()),
            ("network_name", self.network_name.is_some()),
            ("post_start_cmd", !self.post_start_cmd.is_empty()),
        ]
        .into_iter()
        .filter_map(|(n, on)| on.then_some(n))
        .collect()
    }

    /// `uid[:gid]` for Docker.
    pub fn user_string(&self) -> Option<String> {
        self.user.map(|(u, g)| match g {
            Some(g) => format!("{u}:{g}"),
            None => u.to_string(),
        })
    }
}

/// Every option name the policy may forbid.
pub const OPTION_NAMES: [&str; 13] = [
    "user",
    "group_add",
    "working_dir",
    "shm_size",
    "pids_limit",
    "ulimits",
    "extra_hosts",
    "dns",
    "dns_search",
    "read_only_rootfs",
    "tmpfs",
    "network_name",
    "post_start_cmd",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn raw() -> RawOptions {
        RawOptions::default()
    }

    #[test]
    fn empty_options_are_docker_defaults() {
        let o = ContainerOptions::try_from(raw()).expect("valid");
        assert_eq!(o, ContainerOptions::default());
        assert!(o.set().is_empty());
    }

    #[test]
    fn each_bad_option_is_refused_naming_its_field() {
        let cases: Vec<(RawOptions, &str)> = vec![
            (
                RawOptions {
                    user: "jovyan".into(),
                    ..raw()
                },
                "options.user",
            ),
            (
                RawOptions {
                    user: "1000:x".into(),
                    ..raw()
                },
                "options.user",
            ),
            (
                RawOptions {
                    group_add: vec!["a b".into()],
                    ..raw()
                },
                "options.group_add",
            ),
            (
                RawOptions {
                    working_dir: "rel".into(),
                    ..raw()
                },
                "options.working_dir",
            ),
            (
                RawOptions {
                    working_dir: "/a/../b".into(),
                    ..raw()
                },
                "options.working_dir",
            ),
            (
                RawOptions {
                    shm_size_bytes: u64::MAX,
                    ..raw()
                },
                "options.shm_size_bytes",
            ),
            (
                RawOptions {
                    pids_limit: -5,
                    ..raw()
                },
                "options.pids_limit",
            ),
            (
                RawOptions {
                    ulimits: vec![("bogus".into(), 1, 1)],
                    ..raw()
                },
                "options.ulimits",
            ),
            (
                RawOptions {
                    ulimits: vec![("nofile".into(), 10, 5)],
                    ..raw()
                },
                "options.ulimits",
            ),
            (
                RawOptions {
                    extra_hosts: vec!["nohost".into()],
                    ..raw()
                },
                "options.extra_hosts",
            ),
            (
                RawOptions {
                    extra_hosts: vec!["db:notanip".into()],
                    ..raw()
                },
                "options.extra_hosts",
            ),
            (
                RawOptions {
                    dns: vec!["8.8.8".into()],
                    ..raw()
                },
                "options.dns",
            ),
            (
                RawOptions {
                    dns_search: vec!["bad_domain!".into()],
                    ..raw()
                },
                "options.dns_search",
            ),
            (
                RawOptions {
                    tmpfs: vec!["/a:b".into()],
                    ..raw()
                },
                "options.tmpfs",
            ),
            (
                RawOptions {
                    network_name: "host".into(),
                    ..raw()
                },
                "options.network_name",
            ),
            (
                RawOptions {
                    network_name: "-x".into(),
                    ..raw()
                },
                "options.network_name",
            ),
            (
                RawOptions {
                    post_start_cmd: vec!["a\0b".into()],
                    ..raw()
                },
                "options.post_start_cmd[0]",
            ),
        ];
        for (r, want) in cases {
            let e = ContainerOptions::try_from(r.clone()).expect_err(want);
            assert_eq!(e.field, want, "{r:?}: {e}");
        }
    }

    #[test]
    fn good_options_parse() {
        let o = ContainerOptions::try_from(RawOptions {
            user: "1000:100".into(),
            group_add: vec!["users".into(), "27".into()],
            working_dir: "/home/jovyan/work".into(),
            shm_size_bytes: 1 << 30,
            pids_limit: 512,
            ulimits: vec![("nofile".into(), 1024, 4096), ("core".into(), -1, -1)],
            extra_hosts: vec!["db.local:10.0.0.5".into()],
            dns: vec!["10.0.0.53".into()],
            dns_search: vec!["corp.example".into()],
            read_only_rootfs: true,
            tmpfs: vec!["/tmp".into()],
            network_name: "lab-net".into(),
            post_start_cmd: vec!["sh".into(), "-c".into(), "true".into()],
        })
        .expect("valid");
        assert_eq!(o.user_string().as_deref(), Some("1000:100"));
        assert_eq!(o.set().len(), OPTION_NAMES.len());
    }
}
