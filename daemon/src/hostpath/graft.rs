//! Grafting a host directory into a running container, at any path: how a claimed warm
//! container gets its user's volumes, which did not exist when it was created.
//!
//! The directory is cloned as a detached mount in the host's namespace (`open_tree` with
//! `OPEN_TREE_CLONE`). A fresh, single-threaded `berthd graft-into` process (a process must be
//! single-threaded to change its mount namespace, and berthd is not) receives the clone as its
//! stdin, enters the container's mount namespace and root (`setns`, then `chroot` through the
//! container's `/proc/<pid>/root`), makes the target's missing directories (owned by root, as
//! Docker makes a missing mount target), attaches the clone there with `move_mount`, and makes
//! it read-only with a bind remount when asked.
//!
//! The target is resolved inside the container's root, so a link in the image can send it
//! nowhere but elsewhere in that container. The mount lives in the container's namespace only
//! and ends with the container. Afterwards the container must see the directory's inode at
//! the target, or the graft failed. It needs CAP_SYS_ADMIN and CAP_SYS_CHROOT in the host's
//! namespaces: a berthd that pins host paths itself as root grafts itself; a sandboxed one
//! asks the pin helper ([`super::wire::Request::Graft`]), which grafts with this same code.
//! [`available`] says whether this berthd can have a graft made.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};

use rustix::fs::{CWD, Mode, OFlags};
use rustix::io::Errno;
use rustix::mount::{MountFlags, MoveMountFlags, OpenTreeFlags};
use rustix::thread::LinkNameSpaceType;

/// Why a graft failed.
#[derive(Debug, thiserror::Error)]
pub enum GraftError {
    /// A step failed.
    #[error("cannot graft {source_dir} at {target}: {message}")]
    Failed {
        /// The host directory.
        source_dir: String,
        /// Where in the container.
        target: String,
        /// What failed.
        message: String,
    },
    /// The target is not an absolute path of plain components.
    #[error("cannot graft at {0:?}: not an absolute path without . or ..")]
    Target(String),
}

/// Whether this berthd can have volumes grafted: through the pin helper (`helper`), or
/// itself, as root with the host's mount namespace.
pub fn available(helper: bool) -> bool {
    helper || rustix::process::geteuid().is_root()
}

/// [`graft`] of the directory at `source`, opened here.
pub fn graft_path(
    pid: u32,
    source: &Path,
    target: &str,
    read_only: bool,
) -> Result<(), GraftError> {
    let dir = rustix::fs::open(
        source,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| GraftError::Failed {
        source_dir: source.display().to_string(),
        target: target.to_owned(),
        message: format!("open the directory: {e}"),
    })?;
    graft(pid, &dir, &source.display().to_string(), target, read_only)
}

/// Grafts directory `dir` (an open descriptor; `shown` names it in errors) at `target` in the
/// mount namespace of process `pid` (a running container's first process), read-only when
/// asked, and checks that the container then sees `dir`'s inode there. Refuses a process of
/// this process's own mount namespace. Blocks: call it off the async threads.
pub fn graft(
    pid: u32,
    dir: impl AsFd,
    shown: &str,
    target: &str,
    read_only: bool,
) -> Result<(), GraftError> {
    let failed = |message: String| GraftError::Failed {
        source_dir: shown.to_owned(),
        target: target.to_owned(),
        message,
    };
    if prefixes(target).is_none() {
        return Err(GraftError::Target(target.to_owned()));
    }
    let ns = |p: String| rustix::fs::stat(p.as_str()).map(|st| (st.st_dev, st.st_ino));
    match (
        ns(format!("/proc/{pid}/ns/mnt")),
        ns("/proc/self/ns/mnt".into()),
    ) {
        (Ok(theirs), Ok(ours)) if theirs != ours => {}
        (Ok(_), Ok(_)) => {
            return Err(failed(format!(
                "process {pid} shares this process's mount namespace: not a container"
            )));
        }
        (Err(e), _) | (_, Err(e)) => {
            return Err(failed(format!("read process {pid}'s mount namespace: {e}")));
        }
    }
    let st = rustix::fs::fstat(&dir).map_err(|e| failed(format!("stat the directory: {e}")))?;
    let tree: OwnedFd = rustix::mount::open_tree(
        &dir,
        "",
        OpenTreeFlags::OPEN_TREE_CLONE
            | OpenTreeFlags::OPEN_TREE_CLOEXEC
            | OpenTreeFlags::AT_EMPTY_PATH
            | OpenTreeFlags::AT_RECURSIVE,
    )
    .map_err(|e| failed(format!("clone the directory: {e}")))?;
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg("graft-into")
        .arg("--pid")
        .arg(pid.to_string())
        .arg("--target")
        .arg(target);
    if read_only {
        cmd.arg("--read-only");
    }
    let out = cmd
        .stdin(Stdio::from(tree))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .env_clear()
        .output()
        .map_err(|e| failed(format!("run graft-into: {e}")))?;
    if !out.status.success() {
        return Err(failed(
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ));
    }
    if !super::verify(pid, target, st.st_dev, st.st_ino) {
        return Err(failed(
            "the container does not see the directory at the target after the mount".into(),
        ));
    }
    Ok(())
}

/// The hidden `graft-into` command of berthd and berth-pin: the child [`graft`] runs.
#[derive(Debug, clap::Args)]
pub struct GraftInto {
    /// The container's first process.
    #[arg(long)]
    pub pid: u32,
    /// The absolute path inside the container.
    #[arg(long)]
    pub target: String,
    /// Make the mount read-only.
    #[arg(long)]
    pub read_only: bool,
}

impl GraftInto {
    /// Runs it on the detached mount on stdin; the error goes to stderr, for [`graft`] to
    /// read. Call it before anything starts a thread.
    pub fn run(&self) -> std::process::ExitCode {
        match graft_into(std::io::stdin(), self.pid, &self.target, self.read_only) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("{e}");
                std::process::ExitCode::FAILURE
            }
        }
    }
}

/// The child's work (`berthd graft-into`): attaches the detached mount `tree` at `target` in
/// the mount namespace and root of process `pid`. Must run single-threaded, before any runtime
/// starts threads. The error names the step.
pub fn graft_into(tree: impl AsFd, pid: u32, target: &str, read_only: bool) -> Result<(), String> {
    let step = |what: &'static str| move |e: Errno| format!("{what}: {e}");
    let parts =
        prefixes(target).ok_or_else(|| format!("{target:?} is not a plain absolute path"))?;
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/mnt"))
        .map_err(|e| format!("open the container's mount namespace: {e}"))?;
    let root = std::fs::File::open(format!("/proc/{pid}/root"))
        .map_err(|e| format!("open the container's root: {e}"))?;
    rustix::thread::move_into_link_name_space(ns.as_fd(), Some(LinkNameSpaceType::Mount))
        .map_err(step("enter the container's mount namespace"))?;
    rustix::process::fchdir(root.as_fd()).map_err(step("change into the container's root"))?;
    rustix::process::chroot(".").map_err(step("enter the container's root"))?;
    for p in &parts {
        match rustix::fs::mkdir(p, Mode::from_raw_mode(0o755)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(format!("make {}: {e}", p.display())),
        }
    }
    rustix::mount::move_mount(
        tree.as_fd(),
        "",
        CWD,
        target,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(step("attach the mount"))?;
    if read_only {
        rustix::mount::mount_remount(target, MountFlags::BIND | MountFlags::RDONLY, "")
            .map_err(step("make the mount read-only"))?;
    }
    Ok(())
}

/// `target` and each of its ancestors below `/`, shortest first; `None` unless `target` is
/// absolute without `.` or `..`.
fn prefixes(target: &str) -> Option<Vec<PathBuf>> {
    let path = Path::new(target);
    if !path.is_absolute() {
        return None;
    }
    let mut out = Vec::new();
    let mut so_far = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::RootDir => {}
            Component::Normal(n) => {
                so_far.push(n);
                out.push(so_far.clone());
            }
            _ => return None,
        }
    }
    (!out.is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::prefixes;

    #[test]
    fn targets_are_absolute_plain_paths() {
        let p = prefixes("/home/jovyan/work").expect("plain");
        let p: Vec<_> = p.iter().map(|c| c.to_str().expect("utf-8")).collect();
        assert_eq!(p, ["/home", "/home/jovyan", "/home/jovyan/work"]);
        assert!(prefixes("home").is_none());
        assert!(prefixes("/home/../etc").is_none());
        assert!(prefixes("/").is_none());
    }
}
