//! Host paths a request names, resolved beneath the node's allowed roots by the kernel and
//! pinned, so that Docker mounts exactly the directory that was checked.
//!
//! Why not check the text: anyone who can write inside an allowed root (every user, once homes
//! live there) can plant `root/x -> /etc`; a text check passes `root/x`, and Docker follows the
//! link. So:
//!
//! 1. **Resolve, never read text.** The allowed root is opened as the operator wrote it (links
//!    above the root are the operator's and are followed). Below it, the rest of the path is
//!    opened with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`: the kernel refuses any `..`
//!    that climbs out and any symbolic link, the last component included.
//! 2. **No symlink beneath a root, even one that stays inside.** A link inside a user-writable
//!    tree is user-controlled: `root/alice/x -> ../bob` stays beneath the root yet hands Alice
//!    Bob's files. Only the kernel's refusal of every link closes that, so links are refused,
//!    not followed. Only directories and regular files may be mounted (not sockets such as
//!    `docker.sock`, devices or FIFOs, which a hard link could otherwise bring inside).
//! 3. **Pin what was checked.** Docker resolves a bind source by its text when the container
//!    starts, so a checked path could be swapped for a link in between. berthd therefore
//!    bind-mounts the opened descriptor (`/proc/self/fd/N`, which names the inode, not the path)
//!    onto a staging path under `<state_dir>/mounts/` (root's, mode 0700, nobody else can write
//!    there) and hands Docker the staging path; Docker's own `safepath` does the same for volume
//!    subpaths. The staging mount exists only from before `create` until `start` returns: the
//!    container's mount namespace keeps its own copy, and a later `docker start` by hand fails
//!    on the missing staging path instead of mounting anything else.
//! 4. **Verify.** After start, the container's view of the target (through
//!    `/proc/<pid>/root`, resolved in the container's root) must be the pinned inode; otherwise
//!    the container is killed. This catches a berthd that does not share dockerd's mount
//!    namespace (a systemd unit with `ProtectSystem=`/`PrivateTmp=`), where the pin is invisible
//!    to Docker.
//!
//! 5. **Who does it.** Steps 1, 3 and 4 need the host's view of the file system and its mount
//!    namespace (a pin made in a namespace of berthd's own never reaches dockerd), and
//!    CAP_SYS_ADMIN. berthd does them itself when `[hostpaths] pin_helper_socket` is empty (a
//!    dev run; it must then share dockerd's namespace), or asks `berth-pin` ([`helper`], over
//!    the protocol in [`wire`]) so that the packaged berthd can run sandboxed, in a mount
//!    namespace of its own and without CAP_SYS_ADMIN. The helper applies the roots of its
//!    own configuration, so a request cannot widen them. Device nodes (`check_device`) stay in
//!    berthd: it sees the host's `/dev`, read-only.
//!
//! The remaining race: none on the path itself, which is resolved once into a descriptor. The
//! staging path could be swapped only by root. What is mounted is the directory the user had
//! at check time; they may rename it elsewhere inside the root afterwards, which is theirs to do.

use std::ffi::OsStr;
use std::fs;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use rustix::fs::{FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;
use rustix::mount::{MountPropagationFlags, UnmountFlags};

pub mod graft;
pub mod helper;
mod pins;
pub mod wire;

pub(crate) use pins::{Graft, PinSet, Pinner, Wanted};

section! {
    /// `[hostpaths]`: who pins host paths.
    pub struct HostPathsConfig at "hostpaths." {
        /// Unix socket of the pin helper (berth-pin) that pins host paths in the host's mount namespace; "" = berthd pins them itself (it must then share dockerd's mount namespace).
        pin_helper_socket: PathBuf = PathBuf::new(),
            env "BERTH_HOSTPATHS_PIN_HELPER_SOCKET", flag "hostpaths-pin-helper-socket";
    }
}

impl HostPathsConfig {
    /// Who pins, for a node whose policy allows `roots` and makes new directories as
    /// `new_dir`, with this state directory.
    pub(crate) fn pinner(&self, roots: &[PathBuf], new_dir: NewDir, state_dir: &Path) -> Pinner {
        if self.pin_helper_socket.as_os_str().is_empty() {
            Pinner::InProcess {
                roots: roots.to_vec(),
                state_dir: state_dir.to_owned(),
                new_dir,
            }
        } else {
            Pinner::Helper(self.pin_helper_socket.clone())
        }
    }
}

/// The rule named in every refusal.
pub(crate) const RULE: &str = "allowed_host_path_roots";

/// Name of the staging directory inside the state directory.
pub(crate) const STAGING_DIR: &str = "mounts";

/// Why a host path cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum HostPathError {
    /// The text of the path is under no allowed root.
    #[error("node policy {RULE}: host path {path} is not under an allowed root")]
    NotUnderRoot {
        /// The path asked for.
        path: String,
    },
    /// A component beneath the root (the last one included) is a symbolic link.
    #[error(
        "node policy {RULE}: host path {path} crosses a symbolic link beneath {root} (links are never followed beneath an allowed root)"
    )]
    Symlink {
        /// The path asked for.
        path: String,
        /// The root it was resolved beneath.
        root: String,
    },
    /// The path climbs out of its root.
    #[error("node policy {RULE}: host path {path} leaves the allowed root {root}")]
    Escapes {
        /// The path asked for.
        path: String,
        /// The root.
        root: String,
    },
    /// Neither a directory nor a regular file.
    #[error(
        "node policy {RULE}: host path {path} is a {kind}; only directories and regular files can be mounted"
    )]
    Kind {
        /// The path asked for.
        path: String,
        /// What it is.
        kind: &'static str,
    },
    /// The path does not exist on this node.
    #[error("host path {path} does not exist on this node")]
    Missing {
        /// The path asked for.
        path: String,
    },
    /// A named volume that is a bind mount of a host path, which Docker resolves by its text.
    #[error(
        "node policy {RULE}: named volume {name} is a bind mount of host path {device}; ask for a host path under an allowed root instead"
    )]
    BindVolume {
        /// The volume.
        name: String,
        /// The host path it binds.
        device: String,
    },
    /// A device path is not a device node in a directory only root can change.
    #[error("node policy allowed_devices: {path}: {why}")]
    Device {
        /// The device path.
        path: String,
        /// Why it is refused.
        why: String,
    },
    /// The container does not see the pinned directory at its target.
    #[error(
        "the mount of {path} at {target} could not be verified in the container (is berthd in dockerd's mount namespace?); the container was stopped"
    )]
    NotVerified {
        /// The host path.
        path: String,
        /// The container path.
        target: String,
    },
    /// A system call failed.
    #[error("cannot {op} {path}: {source}")]
    Io {
        /// What was done.
        op: &'static str,
        /// On what.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl HostPathError {
    /// Whether this is a refusal by the node policy (as opposed to a missing path or an I/O
    /// failure).
    pub fn is_policy(&self) -> bool {
        matches!(
            self,
            Self::NotUnderRoot { .. }
                | Self::Symlink { .. }
                | Self::Escapes { .. }
                | Self::Kind { .. }
                | Self::Device { .. }
                | Self::BindVolume { .. }
        )
    }
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(Errno) -> HostPathError {
    let path = path.to_owned();
    move |e| HostPathError::Io {
        op,
        path: path.display().to_string(),
        source: e.into(),
    }
}

/// A host path opened beneath its root: the descriptor names the inode that was checked.
#[derive(Debug)]
pub(crate) struct Resolved {
    fd: OwnedFd,
    /// A directory (else a regular file).
    pub is_dir: bool,
    /// Device of the inode.
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
}

/// The components of `p` as the kernel walks them: `.`, repeated and trailing slashes drop
/// out; `..` stays (and is judged by the kernel, beneath the root).
fn normal_components(p: &Path) -> Vec<&OsStr> {
    p.components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s),
            Component::ParentDir => Some(OsStr::new("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect()
}

/// The root `path` lies under by its text, with the rest of the path relative to it. The
/// longest matching root wins, so a narrower root's rules are the ones applied.
fn split_root<'a>(roots: &'a [PathBuf], path: &Path) -> Option<(&'a Path, PathBuf)> {
    let comps = normal_components(path);
    roots
        .iter()
        .filter_map(|root| {
            let rc = normal_components(root);
            let under = !rc.is_empty() && comps.starts_with(&rc) && !rc.contains(&OsStr::new(".."));
            under.then(|| {
                (
                    root.as_path(),
                    comps[rc.len()..].iter().collect::<PathBuf>(),
                )
            })
        })
        .max_by_key(|(root, _)| root.as_os_str().len())
}

fn kind_name(t: FileType) -> &'static str {
    match t {
        FileType::RegularFile => "regular file",
        FileType::Directory => "directory",
        FileType::Symlink => "symbolic link",
        FileType::Fifo => "FIFO",
        FileType::Socket => "socket",
        FileType::CharacterDevice => "character device",
        FileType::BlockDevice => "block device",
        FileType::Unknown => "file of unknown type",
    }
}

/// Opens `path` beneath the allowed root it names, refusing links, escapes and anything but a
/// directory or regular file. Blocking (it may touch a network filesystem).
pub(crate) fn resolve(roots: &[PathBuf], path: &str) -> Result<Resolved, HostPathError> {
    resolve_path(roots, Path::new(path))
}

/// [`resolve`] for any path, names that are not UTF-8 included.
// Long: the resolution and each errno's meaning read best in one place.
pub(crate) fn resolve_path(roots: &[PathBuf], p: &Path) -> Result<Resolved, HostPathError> {
    let shown = p.display().to_string();
    let path = shown.as_str();
    let not_under = || HostPathError::NotUnderRoot {
        path: path.to_owned(),
    };
    if !p.is_absolute() {
        return Err(not_under());
    }
    let (root, rel) = split_root(roots, p).ok_or_else(not_under)?;
    let root_fd = rustix::fs::open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        Errno::NOENT => HostPathError::Missing {
            path: path.to_owned(),
        },
        e => io_err("open the allowed root", root)(e),
    })?;
    let rel = if rel.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        rel
    };
    let fd = rustix::fs::openat2(
        &root_fd,
        &rel,
        OFlags::PATH | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    )
    .map_err(|e| {
        let root = root.display().to_string();
        match e {
            Errno::LOOP => HostPathError::Symlink {
                path: path.to_owned(),
                root,
            },
            Errno::XDEV => HostPathError::Escapes {
                path: path.to_owned(),
                root,
            },
            Errno::NOENT | Errno::NOTDIR => HostPathError::Missing {
                path: path.to_owned(),
            },
            // Not the path's fault: say what takes openat2 away.
            Errno::NOSYS => io_err(
                "resolve (openat2 is unavailable: a kernel older than 5.6, or a seccomp \
                 filter such as systemd's RestrictSUIDSGID=)",
                p,
            )(e),
            e => io_err("resolve", p)(e),
        }
    })?;
    let st = rustix::fs::fstat(&fd).map_err(io_err("stat", p))?;
    let kind = FileType::from_raw_mode(st.st_mode);
    if !matches!(kind, FileType::Directory | FileType::RegularFile) {
        return Err(HostPathError::Kind {
            path: path.to_owned(),
            kind: kind_name(kind),
        });
    }
    Ok(Resolved {
        fd,
        is_dir: kind == FileType::Directory,
        dev: st.st_dev,
        ino: st.st_ino,
    })
}

impl Resolved {
    /// The open descriptor (`O_PATH`) of the checked inode.
    pub(crate) fn into_fd(self) -> OwnedFd {
        self.fd
    }
}

/// Who owns a directory berthd makes for a templated host path, and its mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewDir {
    /// Owner uid and gid; `None` = root's.
    pub owner: Option<(u32, u32)>,
    /// Permission bits.
    pub mode: u32,
}

/// Makes the directories of `path` that do not exist, beneath the allowed root it names, one
/// component at a time with no link followed (the same rules as [`resolve`]); new directories
/// get `new`'s owner and mode. For templated host paths (`/srv/homes/{user}`) on first use.
pub(crate) fn ensure_dir(roots: &[PathBuf], path: &str, new: NewDir) -> Result<(), HostPathError> {
    let p = Path::new(path);
    let (root, rel) = split_root(roots, p).ok_or_else(|| HostPathError::NotUnderRoot {
        path: path.to_owned(),
    })?;
    let mut dir = rustix::fs::open(root, OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        .map_err(io_err("open the allowed root", root))?;
    let refuse = |e: Errno| match e {
        Errno::LOOP => HostPathError::Symlink {
            path: path.to_owned(),
            root: root.display().to_string(),
        },
        Errno::XDEV => HostPathError::Escapes {
            path: path.to_owned(),
            root: root.display().to_string(),
        },
        e => io_err("create", p)(e),
    };
    let step = |at: &OwnedFd, name: &OsStr| {
        rustix::fs::openat2(
            at,
            name,
            OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
        )
    };
    for name in rel.iter() {
        let next = match step(&dir, name) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => {
                match rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(0o700)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => return Err(refuse(e)),
                }
                let made = step(&dir, name).map_err(refuse)?;
                let file = fs::File::from(made);
                if let Some((uid, gid)) = new.owner {
                    std::os::unix::fs::fchown(&file, Some(uid), Some(gid)).map_err(|source| {
                        HostPathError::Io {
                            op: "chown",
                            path: path.to_owned(),
                            source,
                        }
                    })?;
                }
                use std::os::unix::fs::PermissionsExt;
                file.set_permissions(fs::Permissions::from_mode(new.mode & 0o7777))
                    .map_err(|source| HostPathError::Io {
                        op: "chmod",
                        path: path.to_owned(),
                        source,
                    })?;
                tracing::info!(path, owner = ?new.owner, mode = format!("{:o}", new.mode), "created a templated host path");
                OwnedFd::from(file)
            }
            Err(e) => return Err(refuse(e)),
        };
        dir = next;
    }
    Ok(())
}

/// Where the pin of mount `index` of container `name` lives.
pub(crate) fn staging_path(state_dir: &Path, container: &str, index: usize) -> PathBuf {
    state_dir
        .join(STAGING_DIR)
        .join(container)
        .join(index.to_string())
}

/// A resolved host path bind-mounted at its staging path; unmounted when dropped.
#[derive(Debug)]
pub(crate) struct Pin {
    /// The staging path handed to Docker.
    pub staging: PathBuf,
    /// Device of the pinned inode.
    pub dev: u64,
    /// Inode number of the pinned inode.
    pub ino: u64,
}

/// Bind-mounts the inode `r` holds at `staging` (created, a directory or an empty file to
/// match), private so that it propagates nowhere.
pub(crate) fn pin(r: &Resolved, staging: &Path) -> Result<Pin, HostPathError> {
    release_path(staging);
    if let Some(parent) = staging.parent() {
        fs::create_dir_all(parent).map_err(|source| HostPathError::Io {
            op: "create the staging directory",
            path: parent.display().to_string(),
            source,
        })?;
    }
    let made = if r.is_dir {
        fs::create_dir(staging)
    } else {
        fs::File::create(staging).map(drop)
    };
    made.map_err(|source| HostPathError::Io {
        op: "create the staging path",
        path: staging.display().to_string(),
        source,
    })?;
    let pinned = Pin {
        staging: staging.to_owned(),
        dev: r.dev,
        ino: r.ino,
    };
    // The magic link names the open inode; the text path is never looked up again.
    let source = format!("/proc/self/fd/{}", r.fd.as_fd().as_raw_fd());
    rustix::mount::mount_bind_recursive(source.as_str(), staging)
        .map_err(io_err("bind-mount the checked path at", staging))?;
    rustix::mount::mount_change(
        staging,
        MountPropagationFlags::PRIVATE | MountPropagationFlags::REC,
    )
    .map_err(io_err("make private", staging))?;
    Ok(pinned)
}

impl Drop for Pin {
    fn drop(&mut self) {
        release_path(&self.staging);
    }
}

/// Unmounts (lazily, without following links) and removes a staging path; best effort.
fn release_path(staging: &Path) {
    // Each loop undoes one mount stacked there (a crash can leave more than one).
    while rustix::mount::unmount(staging, UnmountFlags::DETACH | UnmountFlags::NOFOLLOW).is_ok() {}
    let removed = match fs::symlink_metadata(staging) {
        Ok(m) if m.is_dir() => fs::remove_dir(staging),
        Ok(_) => fs::remove_file(staging),
        Err(_) => Ok(()),
    };
    if let Err(e) = removed {
        tracing::warn!(path = %staging.display(), error = %e, "cannot remove a staging path");
    }
}

/// Removes every pin a crashed berthd left under `<state_dir>/mounts`.
pub(crate) fn clear_staging(state_dir: &Path) {
    let base = state_dir.join(STAGING_DIR);
    let Ok(containers) = fs::read_dir(&base) else {
        return;
    };
    for c in containers.flatten() {
        if let Ok(pins) = fs::read_dir(c.path()) {
            for p in pins.flatten() {
                tracing::info!(path = %p.path().display(), "removing a staging mount left by an earlier run");
                release_path(&p.path());
            }
        }
        let _ = fs::remove_dir(c.path());
    }
}

/// Whether the process `pid` (a container's init) sees inode (`dev`, `ino`) at `target`,
/// resolved inside the container's own root.
pub(crate) fn verify(pid: u32, target: &str, dev: u64, ino: u64) -> bool {
    let proc_root = PathBuf::from(format!("/proc/{pid}/root"));
    let Ok(root) = rustix::fs::open(
        &proc_root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    ) else {
        return false;
    };
    let rel = target.trim_start_matches('/');
    let rel = if rel.is_empty() { "." } else { rel };
    let Ok(fd) = rustix::fs::openat2(
        &root,
        rel,
        OFlags::PATH | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    ) else {
        return false;
    };
    rustix::fs::fstat(&fd).is_ok_and(|st| st.st_dev == dev && st.st_ino == ino)
}

/// Checks that `path` is a device node, not a link, in a directory that only root can change
/// (Docker reads the device when the container is created, so nobody else must be able to swap
/// it after this check).
pub(crate) fn check_device(path: &str) -> Result<(), HostPathError> {
    let bad = |why: String| HostPathError::Device {
        path: path.to_owned(),
        why,
    };
    let p = Path::new(path);
    let st = rustix::fs::lstat(p).map_err(|e| bad(format!("cannot be read ({e})")))?;
    let kind = FileType::from_raw_mode(st.st_mode);
    if !matches!(kind, FileType::CharacterDevice | FileType::BlockDevice) {
        return Err(bad(format!("is a {}, not a device node", kind_name(kind))));
    }
    let mut dir = p.parent();
    while let Some(d) = dir {
        let st = rustix::fs::lstat(d).map_err(|e| bad(format!("{}: {e}", d.display())))?;
        if st.st_uid != 0 || st.st_mode & 0o022 != 0 {
            return Err(bad(format!(
                "{} can be changed by users other than root",
                d.display()
            )));
        }
        dir = d.parent();
    }
    Ok(())
}

#[cfg(test)]
mod tests;
