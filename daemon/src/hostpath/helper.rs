//! `berth-pin`, the minimal privileged helper: the only part of berth that needs the host's
//! mount namespace and CAP_SYS_ADMIN, so that berthd itself can run in a sandboxed unit
//! (`ProtectSystem=strict`, `ProtectHome=`, its own mount namespace) whose mounts would never
//! reach dockerd.
//!
//! It does four things, each on behalf of one connection (see [`super::wire`]): make a
//! templated host path, resolve and pin a host path (the same code as an in-process pin),
//! check that a container sees the pinned inode, and mount a pin or a local Docker volume into
//! a claimed warm container (the same code as berthd's own graft). The allowed roots and the owner of new
//! directories come from the helper's own reading of the configuration file, never from the
//! request, so a caller cannot pin more than the node policy allows. Only peers whose
//! `SO_PEERCRED` uid is root or one of the configured uids are served. Plain threads and
//! blocking I/O: it serves one daemon, a handful of pins per spawn.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::wire::{
    BadRequest, GraftRequest, GraftSource, MAX_LINE, PinRequest, Reply, Request, VerifyRequest,
    WireError,
};
use super::{NewDir, Pin, STAGING_DIR};

/// Connections served at once; more are refused (berthd holds one per spawn in progress).
pub const MAX_CONNECTIONS: usize = 64;
/// A peer that sends half a line and stops is dropped after this long.
const IDLE_TIMEOUT: Duration = Duration::from_secs(600);

/// What the helper serves and for whom.
#[derive(Debug, Clone)]
pub struct HelperConfig {
    /// The socket it listens on; its directory holds the staging mounts (`<dir>/mounts`).
    pub socket: PathBuf,
    /// The node's allowed host-path roots (`[policy] allowed_host_path_roots`).
    pub roots: Vec<PathBuf>,
    /// Owner and mode of directories made for templated host paths.
    pub new_dir: NewDir,
    /// Peer uids served besides root (berthd's, when it runs as its own user).
    pub peer_uids: Vec<u32>,
    /// Docker's volume directory: a `graft` of a volume mounts `<this>/<name>/_data`.
    pub docker_volumes: PathBuf,
}

/// Docker's volume directory with its default data root.
pub const DOCKER_VOLUMES: &str = "/var/lib/docker/volumes";

impl HelperConfig {
    /// The helper's configuration from berthd's: the policy's roots and new-directory owner.
    pub fn from_config(cfg: &crate::config::Config, socket: PathBuf, peer_uids: Vec<u32>) -> Self {
        Self {
            socket,
            roots: cfg.policy.allowed_host_path_roots.clone(),
            new_dir: cfg.policy.new_dir(),
            peer_uids,
            docker_volumes: PathBuf::from(DOCKER_VOLUMES),
        }
    }

    /// The directory the staging mounts live under.
    pub fn staging_base(&self) -> PathBuf {
        self.socket
            .parent()
            .map_or_else(|| PathBuf::from("/"), Path::to_path_buf)
    }
}

/// Why the helper cannot start.
#[derive(Debug, thiserror::Error)]
pub enum HelperError {
    /// The socket cannot be made.
    #[error("cannot listen on {path}: {source}")]
    Listen {
        /// The socket path.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A user named as a peer does not exist.
    #[error("no user {name} in /etc/passwd")]
    NoUser {
        /// The name.
        name: String,
    },
}

/// The uid of user `name`, from /etc/passwd (the helper links no NSS).
pub fn uid_of(name: &str) -> Result<u32, HelperError> {
    let text = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            let (n, _, uid) = (f.next()?, f.next()?, f.next()?);
            (n == name).then(|| uid.parse().ok()).flatten()
        })
        .next()
        .ok_or_else(|| HelperError::NoUser {
            name: name.to_owned(),
        })
}

/// Binds the socket (replacing a stale one), mode 0600, and clears pins a crashed helper left.
pub fn bind(cfg: &HelperConfig) -> Result<UnixListener, HelperError> {
    let err = |source| HelperError::Listen {
        path: cfg.socket.display().to_string(),
        source,
    };
    if let Ok(m) = std::fs::symlink_metadata(&cfg.socket)
        && m.file_type().is_socket()
    {
        std::fs::remove_file(&cfg.socket).map_err(err)?;
    }
    super::clear_staging(&cfg.staging_base());
    let listener = UnixListener::bind(&cfg.socket).map_err(err)?;
    std::fs::set_permissions(&cfg.socket, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    Ok(listener)
}

/// Whether a peer with this uid is served.
pub fn authorized(cfg: &HelperConfig, uid: u32) -> bool {
    uid == 0 || cfg.peer_uids.contains(&uid)
}

/// Accepts connections until the listener fails; each is served on its own thread.
pub fn serve(listener: &UnixListener, cfg: HelperConfig) {
    let cfg = Arc::new(cfg);
    let open = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        let mut stream = match conn {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                continue;
            }
        };
        let uid = match rustix::net::sockopt::socket_peercred(&stream) {
            Ok(cred) => cred.uid.as_raw(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the peer's credentials; refused");
                continue;
            }
        };
        if !authorized(&cfg, uid) {
            tracing::warn!(
                uid,
                "a peer that is neither root nor berthd's user was refused"
            );
            let _ = stream.write_all(&refusal("peer", format!("uid {uid} is not served")));
            continue;
        }
        if open.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            open.fetch_sub(1, Ordering::SeqCst);
            let _ = stream.write_all(&refusal(
                "request",
                format!("more than {MAX_CONNECTIONS} connections"),
            ));
            continue;
        }
        let (cfg, open) = (Arc::clone(&cfg), Arc::clone(&open));
        let spawned = std::thread::Builder::new()
            .name("berth-pin-conn".into())
            .spawn(move || {
                if let Err(e) = connection(stream, &cfg) {
                    tracing::debug!(error = %e, "connection ended");
                }
                open.fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start a connection thread");
        }
    }
}

fn refusal(field: &'static str, message: String) -> Vec<u8> {
    Reply::Refused(WireError::from(BadRequest { field, message })).to_line()
}

/// The pins of one connection; released (unmounted) when it ends.
struct Session<'a> {
    cfg: &'a HelperConfig,
    pins: HashMap<u32, Pin>,
    containers: Vec<PathBuf>,
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        self.pins.clear();
        for dir in &self.containers {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

fn connection(stream: UnixStream, cfg: &HelperConfig) -> std::io::Result<()> {
    stream.set_read_timeout(Some(IDLE_TIMEOUT))?;
    let mut out = stream.try_clone()?;
    let mut lines = BufReader::new(stream);
    let mut session = Session {
        cfg,
        pins: HashMap::new(),
        containers: Vec::new(),
    };
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = lines
            .by_ref()
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut buf)?;
        if n == 0 {
            return Ok(());
        }
        if buf.last() != Some(&b'\n') {
            // Too long, or the peer went away mid-line: answer once and end.
            out.write_all(&refusal("request", "line too long or unterminated".into()))?;
            return Ok(());
        }
        buf.pop();
        let reply = match Request::parse(&buf) {
            Ok(req) => session.handle(req),
            Err(bad) => Reply::Refused(bad.into()),
        };
        out.write_all(&reply.to_line())?;
    }
}

impl Session<'_> {
    fn handle(&mut self, req: Request) -> Reply {
        match req {
            Request::Pin(p) => self.pin(p),
            Request::Verify(v) => self.verify(&v),
            Request::Graft(g) => self.graft(&g),
        }
    }

    /// Mounts a pin of this connection, or a local volume found by name beneath Docker's
    /// volume directory (no link followed), into the running container `g.pid`.
    fn graft(&self, g: &GraftRequest) -> Reply {
        let opened = match &g.source {
            GraftSource::Pin(index) => match self.pins.get(index) {
                Some(pin) => rustix::fs::open(
                    &pin.staging,
                    rustix::fs::OFlags::PATH
                        | rustix::fs::OFlags::DIRECTORY
                        | rustix::fs::OFlags::CLOEXEC,
                    rustix::fs::Mode::empty(),
                )
                .map(|fd| (fd, pin.staging.display().to_string()))
                .map_err(|e| WireError::Failed {
                    path: pin.staging.display().to_string(),
                    message: format!("open the pin: {e}"),
                }),
                None => Err(WireError::from(BadRequest {
                    field: "source",
                    message: format!("{index} is not pinned on this connection"),
                })),
            },
            GraftSource::Volume(name) => {
                let path = self.cfg.docker_volumes.join(name).join("_data");
                super::resolve_path(std::slice::from_ref(&self.cfg.docker_volumes), &path)
                    .and_then(|r| {
                        if r.is_dir {
                            Ok((r.into_fd(), path.display().to_string()))
                        } else {
                            Err(super::HostPathError::Kind {
                                path: path.display().to_string(),
                                kind: "regular file",
                            })
                        }
                    })
                    .map_err(|e| WireError::from(&e))
            }
        };
        let (dir, shown) = match opened {
            Ok(o) => o,
            Err(w) => return Reply::Refused(w),
        };
        match super::graft::graft(g.pid, &dir, &shown, &g.target, g.read_only) {
            Ok(()) => {
                tracing::info!(source = %shown, pid = g.pid, target = %g.target, "grafted");
                Reply::Grafted
            }
            Err(e) => {
                tracing::info!(source = %shown, pid = g.pid, error = %e, "graft failed");
                Reply::Refused(WireError::Failed {
                    path: shown,
                    message: e.to_string(),
                })
            }
        }
    }

    fn pin(&mut self, p: PinRequest) -> Reply {
        if self.pins.contains_key(&p.index) {
            return Reply::Refused(WireError::from(BadRequest {
                field: "index",
                message: format!("{} is pinned already on this connection", p.index),
            }));
        }
        let dir = self.cfg.staging_base().join(STAGING_DIR).join(&p.container);
        let staging = dir.join(p.index.to_string());
        let pinned = (|| {
            if p.make {
                super::ensure_dir(&self.cfg.roots, &p.path, self.cfg.new_dir)?;
            }
            let r = super::resolve(&self.cfg.roots, &p.path)?;
            super::pin(&r, &staging)
        })();
        match pinned {
            Ok(pin) => {
                tracing::info!(path = %p.path, staging = %staging.display(), "pinned");
                let reply = Reply::Pinned {
                    staging: pin.staging.clone(),
                    dev: pin.dev,
                    ino: pin.ino,
                };
                self.pins.insert(p.index, pin);
                if !self.containers.contains(&dir) {
                    self.containers.push(dir);
                }
                reply
            }
            Err(e) => {
                tracing::info!(path = %p.path, error = %e, "refused");
                Reply::Refused(WireError::from(&e))
            }
        }
    }

    fn verify(&self, v: &VerifyRequest) -> Reply {
        match self.pins.get(&v.index) {
            Some(pin) => Reply::Verified {
                ok: super::verify(v.pid, &v.target, pin.dev, pin.ino),
            },
            None => Reply::Refused(WireError::from(BadRequest {
                field: "index",
                message: format!("{} is not pinned on this connection", v.index),
            })),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn cfg(peers: Vec<u32>) -> HelperConfig {
        HelperConfig {
            socket: "/run/berth-pin/pin.sock".into(),
            roots: vec![],
            new_dir: NewDir {
                owner: None,
                mode: 0o700,
            },
            peer_uids: peers,
            docker_volumes: DOCKER_VOLUMES.into(),
        }
    }

    #[test]
    fn only_root_and_the_configured_uids_are_served() {
        let c = cfg(vec![998]);
        for (uid, ok) in [(0, true), (998, true), (1000, false), (65534, false)] {
            assert_eq!(authorized(&c, uid), ok, "uid {uid}");
        }
        assert!(!authorized(&cfg(vec![]), 998));
    }

    #[test]
    fn staging_lives_beside_the_socket() {
        assert_eq!(cfg(vec![]).staging_base(), Path::new("/run/berth-pin"));
    }

    #[test]
    fn a_user_is_found_in_passwd_and_a_missing_one_is_an_error() {
        assert_eq!(uid_of("root").unwrap(), 0);
        assert!(matches!(
            uid_of("no-such-user-berth-x"),
            Err(HelperError::NoUser { .. })
        ));
    }
}
