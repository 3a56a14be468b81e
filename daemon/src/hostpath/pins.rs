//! berthd's side of pinning: in its own process (dev runs, tests, a unit without a mount
//! namespace) or through the pin helper (`[hostpaths] pin_helper_socket`), with the same
//! results either way: a [`PinSet`] that names each staging path, verifies a running
//! container and releases every pin when dropped.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::wire::{GraftRequest, GraftSource, PinRequest, Reply, Request, VerifyRequest};
use super::{HostPathError, NewDir, Pin};

/// Deadline of one exchange with the helper (a pin may touch a slow network filesystem).
const HELPER_TIMEOUT: Duration = Duration::from_secs(60);

/// One host path a Start mounts.
#[derive(Debug, Clone)]
pub(crate) struct Wanted {
    /// The mount's index in the Start.
    pub index: usize,
    /// The host path.
    pub path: String,
    /// The target in the container.
    pub target: String,
    /// Templated: make it first.
    pub make: bool,
}

/// A volume or host path a claimed warm container gets while it runs.
#[derive(Debug, Clone)]
pub(crate) struct Graft {
    /// The mount's index in the Start.
    pub index: usize,
    /// A local Docker volume (its name and mountpoint); `None` = the host path pinned as
    /// mount `index`.
    pub volume: Option<(String, PathBuf)>,
    /// The target in the container.
    pub target: String,
    /// Read-only.
    pub read_only: bool,
}

/// Who pins.
#[derive(Debug, Clone)]
pub(crate) enum Pinner {
    /// berthd itself, under `<state_dir>/mounts` (it must share dockerd's mount namespace).
    InProcess {
        /// Allowed roots.
        roots: Vec<PathBuf>,
        /// The state directory.
        state_dir: PathBuf,
        /// Owner and mode of new directories.
        new_dir: NewDir,
    },
    /// The helper listening on this socket.
    Helper(PathBuf),
}

/// One pinned host path.
#[derive(Debug)]
struct Held {
    index: usize,
    target: String,
    path: String,
    staging: PathBuf,
    dev: u64,
    ino: u64,
    /// An in-process pin (unmounted when dropped); `None` for the helper's.
    _local: Option<Pin>,
}

/// A spawn's pins; dropping it releases them (closing the helper's connection does that
/// helper-side).
#[derive(Debug, Default)]
pub(crate) struct PinSet {
    held: Vec<Held>,
    helper: Option<Conn>,
}

#[derive(Debug)]
struct Conn {
    socket: PathBuf,
    out: UnixStream,
    replies: BufReader<UnixStream>,
}

fn helper_io(op: &'static str, socket: &Path) -> impl FnOnce(std::io::Error) -> HostPathError {
    let path = socket.display().to_string();
    move |source| HostPathError::Io { op, path, source }
}

impl Conn {
    fn open(socket: &Path) -> Result<Self, HostPathError> {
        let s =
            UnixStream::connect(socket).map_err(helper_io("reach the pin helper at", socket))?;
        s.set_read_timeout(Some(HELPER_TIMEOUT))
            .and_then(|()| s.set_write_timeout(Some(HELPER_TIMEOUT)))
            .and_then(|()| s.try_clone())
            .map(|out| Self {
                socket: socket.to_owned(),
                out,
                replies: BufReader::new(s),
            })
            .map_err(helper_io("reach the pin helper at", socket))
    }

    fn ask(&mut self, req: &Request) -> Result<Reply, HostPathError> {
        self.out
            .write_all(&req.to_line())
            .map_err(helper_io("send to the pin helper at", &self.socket))?;
        let mut line = Vec::new();
        self.replies
            .read_until(b'\n', &mut line)
            .map_err(helper_io("read the pin helper's answer from", &self.socket))?;
        let reply: Reply = serde_json::from_slice(&line).map_err(|e| {
            helper_io("understand the pin helper's answer from", &self.socket)(
                std::io::Error::other(if line.is_empty() {
                    "it closed the connection".to_owned()
                } else {
                    e.to_string()
                }),
            )
        })?;
        match reply {
            Reply::Refused(w) => Err(w.into_error(&self.socket)),
            r => Ok(r),
        }
    }
}

fn unexpected(socket: &Path, reply: &Reply) -> HostPathError {
    helper_io("understand the pin helper's answer from", socket)(std::io::Error::other(format!(
        "unexpected answer {reply:?}"
    )))
}

impl Pinner {
    /// Resolves and pins every wanted host path of container `container`. Blocking.
    pub(crate) fn pin_all(
        &self,
        container: &str,
        wanted: Vec<Wanted>,
    ) -> Result<PinSet, HostPathError> {
        let mut set = PinSet::default();
        if wanted.is_empty() {
            return Ok(set);
        }
        match self {
            Pinner::InProcess {
                roots,
                state_dir,
                new_dir,
            } => {
                for w in wanted {
                    if w.make {
                        super::ensure_dir(roots, &w.path, *new_dir)?;
                    }
                    let r = super::resolve(roots, &w.path)?;
                    let pin = super::pin(&r, &super::staging_path(state_dir, container, w.index))?;
                    set.held.push(Held {
                        index: w.index,
                        target: w.target,
                        path: w.path,
                        staging: pin.staging.clone(),
                        dev: pin.dev,
                        ino: pin.ino,
                        _local: Some(pin),
                    });
                }
            }
            Pinner::Helper(socket) => {
                let conn = set.helper.insert(Conn::open(socket)?);
                for w in wanted {
                    let index = u32::try_from(w.index).unwrap_or(u32::MAX);
                    let req = Request::Pin(PinRequest {
                        path: w.path.clone(),
                        container: container.to_owned(),
                        index,
                        make: w.make,
                    });
                    match conn.ask(&req)? {
                        Reply::Pinned { staging, dev, ino } => set.held.push(Held {
                            index: w.index,
                            target: w.target,
                            path: w.path,
                            staging,
                            dev,
                            ino,
                            _local: None,
                        }),
                        other => return Err(unexpected(socket, &other)),
                    }
                }
            }
        }
        Ok(set)
    }

    /// Mounts each of `grafts` into the running container whose first process is `pid`: the
    /// host paths of `pins`, and volumes. Blocking.
    pub(crate) fn graft(
        &self,
        pins: &mut PinSet,
        pid: u32,
        grafts: &[Graft],
    ) -> Result<(), HostPathError> {
        for g in grafts {
            // The name shown in errors, and the directory an in-process graft opens.
            let (shown, source) = match (&g.volume, pins.held.iter().find(|h| h.index == g.index)) {
                (Some((name, mountpoint)), _) => (name.clone(), mountpoint.clone()),
                (None, Some(h)) => (h.path.clone(), h.staging.clone()),
                (None, None) => {
                    return Err(HostPathError::Io {
                        op: "mount into the running container",
                        path: g.target.clone(),
                        source: std::io::Error::other(format!("mount {} is not pinned", g.index)),
                    });
                }
            };
            match self {
                Pinner::InProcess { .. } => {
                    super::graft::graft_path(pid, &source, &g.target, g.read_only).map_err(
                        |e| HostPathError::Io {
                            op: "mount into the running container",
                            path: shown,
                            source: std::io::Error::other(e.to_string()),
                        },
                    )?;
                }
                Pinner::Helper(socket) => {
                    let source = match &g.volume {
                        Some((name, _)) => GraftSource::Volume(name.clone()),
                        None => GraftSource::Pin(u32::try_from(g.index).unwrap_or(u32::MAX)),
                    };
                    let conn = match &mut pins.helper {
                        Some(c) => c,
                        none => none.insert(Conn::open(socket)?),
                    };
                    let req = Request::Graft(GraftRequest {
                        source,
                        pid,
                        target: g.target.clone(),
                        read_only: g.read_only,
                    });
                    match conn.ask(&req)? {
                        Reply::Grafted => {}
                        other => return Err(unexpected(socket, &other)),
                    }
                }
            }
        }
        Ok(())
    }
}

impl PinSet {
    /// Whether nothing is pinned.
    pub(crate) fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// The staging path of mount `index`, to hand Docker.
    pub(crate) fn staging(&self, index: usize) -> Option<&Path> {
        self.held
            .iter()
            .find(|h| h.index == index)
            .map(|h| h.staging.as_path())
    }

    /// Whether the container whose init is `pid` sees every pinned inode at its target; the
    /// first that it does not is the error. Blocking.
    pub(crate) fn verify(&mut self, pid: u32) -> Result<(), HostPathError> {
        for h in &self.held {
            if pid == 0 {
                // A running container without a process id cannot be checked: fail closed.
                return Err(HostPathError::NotVerified {
                    path: h.path.clone(),
                    target: h.target.clone(),
                });
            }
            let ok = match &mut self.helper {
                None => super::verify(pid, &h.target, h.dev, h.ino),
                Some(conn) => {
                    let req = Request::Verify(VerifyRequest {
                        index: u32::try_from(h.index).unwrap_or(u32::MAX),
                        pid,
                        target: h.target.clone(),
                    });
                    match conn.ask(&req)? {
                        Reply::Verified { ok } => ok,
                        other => return Err(unexpected(&conn.socket, &other)),
                    }
                }
            };
            if !ok {
                return Err(HostPathError::NotVerified {
                    path: h.path.clone(),
                    target: h.target.clone(),
                });
            }
        }
        Ok(())
    }
}
