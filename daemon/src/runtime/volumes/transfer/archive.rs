//! A volume's tree as a tar stream and back (blocking file work): packed in a fixed order
//! without following links or leaving the volume's file system, unpacked beneath the volume
//! only — absolute paths, `..`, device nodes and writes through links are refused; links
//! themselves are kept as they are, wherever they point — with owner, mode and times kept.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

use tar::{EntryType, Header, HeaderMode};

/// Why a tree could not be packed or unpacked.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The file system failed (or the stream went away).
    #[error("{path}: {source}")]
    Io {
        /// Where, inside the volume.
        path: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// An entry that may not be packed or unpacked.
    #[error("{path}: {why}")]
    Refused {
        /// Where, inside the volume.
        path: String,
        /// Why.
        why: &'static str,
    },
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> ArchiveError + '_ {
    move |source| ArchiveError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Writes the tree under `root` to `out` as a tar stream: the root itself as `.`, then every
/// entry in name order with its path, type, mode, owner, mtime and contents only (so the same
/// tree gives the same stream on any node, and a copy can be compared by checksum). Links are stored as links,
/// hard links as separate files; sockets and FIFOs (left by dead processes) are skipped; a
/// device node, or a file that changes size while read, is an error.
pub fn pack(root: &Path, out: impl Write) -> Result<(), ArchiveError> {
    let mut b = tar::Builder::new(out);
    b.follow_symlinks(false);
    let root_meta = fs::symlink_metadata(root).map_err(io_at(root))?;
    let dev = root_meta.dev();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let at = root.join(&rel);
        let meta = fs::symlink_metadata(&at).map_err(io_at(&rel))?;
        let kind = meta.file_type();
        let name = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            &rel
        };
        let mut h = Header::new_gnu();
        h.set_metadata_in_mode(&meta, HeaderMode::Complete);
        if kind.is_dir() {
            h.set_size(0);
            b.append_data(&mut h, name, io::empty())
                .map_err(io_at(&rel))?;
            if meta.dev() != dev {
                // Another file system mounted inside: its mount point, not its contents.
                continue;
            }
            let mut children: Vec<PathBuf> = fs::read_dir(&at)
                .map_err(io_at(&rel))?
                .map(|e| e.map(|e| rel.join(e.file_name())))
                .collect::<Result<_, _>>()
                .map_err(io_at(&rel))?;
            children.sort();
            stack.extend(children.into_iter().rev());
        } else if kind.is_symlink() {
            let target = fs::read_link(&at).map_err(io_at(&rel))?;
            b.append_link(&mut h, name, &target).map_err(io_at(&rel))?;
        } else if kind.is_file() {
            let f = File::open(&at).map_err(io_at(&rel))?;
            let exact = Exact {
                inner: f.take(meta.len()),
                left: meta.len(),
            };
            b.append_data(&mut h, name, exact).map_err(io_at(&rel))?;
        } else if kind.is_block_device() || kind.is_char_device() {
            return Err(ArchiveError::Refused {
                path: rel.display().to_string(),
                why: "a device node cannot be moved",
            });
        } else {
            tracing::debug!(path = %rel.display(), "socket or FIFO not moved");
        }
    }
    b.into_inner()
        .map_err(io_at(root))?
        .flush()
        .map_err(io_at(root))
}

/// A reader of exactly `left` bytes: a file that shrank while read is an error, not a corrupt
/// archive.
struct Exact<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && self.left > 0 && !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file shrank while it was read",
            ));
        }
        self.left = self.left.saturating_sub(n as u64);
        Ok(n)
    }
}

/// The entry's path as plain names beneath the root ("" for the root itself); an absolute
/// path or `..` is refused.
fn checked(path: &Path) -> Result<PathBuf, ArchiveError> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => {
                return Err(ArchiveError::Refused {
                    path: path.display().to_string(),
                    why: "absolute path in the archive",
                });
            }
            Component::ParentDir => {
                return Err(ArchiveError::Refused {
                    path: path.display().to_string(),
                    why: "`..` in the archive",
                });
            }
        }
    }
    Ok(out)
}

/// Unpacks the tar stream `input` beneath `root` (an existing, empty directory), keeping
/// owner, mode and modification time (directories' too). Refuses absolute paths, `..`,
/// device nodes, hard links that leave `root`, and any write through a link. Returns the
/// entries unpacked.
pub fn unpack(root: &Path, input: impl Read) -> Result<u64, ArchiveError> {
    let mut a = tar::Archive::new(input);
    a.set_preserve_permissions(true);
    a.set_preserve_ownerships(true);
    a.set_preserve_mtime(true);
    a.set_unpack_xattrs(false);
    a.set_overwrite(false);
    let mut dirs: Vec<(PathBuf, u64)> = Vec::new();
    let mut count = 0u64;
    for entry in a.entries().map_err(io_at(root))? {
        let mut entry = entry.map_err(io_at(root))?;
        let raw = entry.path().map_err(io_at(root))?.into_owned();
        let rel = checked(&raw)?;
        let h = entry.header();
        let kind = h.entry_type();
        let refused = |why| ArchiveError::Refused {
            path: raw.display().to_string(),
            why,
        };
        match kind {
            EntryType::Block | EntryType::Char | EntryType::Fifo => {
                return Err(refused("device node or FIFO in the archive"));
            }
            EntryType::Link => {
                let target = entry
                    .link_name()
                    .map_err(io_at(&raw))?
                    .ok_or_else(|| refused("hard link without a target"))?;
                let target = checked(&target)?;
                if through_link(root, &target) {
                    return Err(refused("hard link to a path through a link"));
                }
            }
            EntryType::Regular
            | EntryType::Directory
            | EntryType::Symlink
            | EntryType::Continuous => {}
            _ => return Err(refused("unsupported entry type")),
        }
        let mtime = h.mtime().map_err(io_at(&raw))?;
        if rel.as_os_str().is_empty() {
            if kind != EntryType::Directory {
                return Err(refused("the root must be a directory"));
            }
            let (uid, gid, mode) = (
                h.uid().map_err(io_at(&raw))?,
                h.gid().map_err(io_at(&raw))?,
                h.mode().map_err(io_at(&raw))?,
            );
            own_root(root, uid, gid, mode)?;
            dirs.push((root.to_owned(), mtime));
            continue;
        }
        // A symbolic link the archive made earlier is kept as a link (pointing anywhere: it
        // is resolved inside the container, where it is harmless), but nothing is written
        // through one: the archive is refused, as for `..`. `unpack_in` checks the same by
        // the real path, as a second line.
        if through_link(root, &rel) {
            return Err(refused("write through a link in the archive"));
        }
        let done = entry.unpack_in(root).map_err(io_at(&raw))?;
        if !done {
            return Err(refused("entry outside the volume"));
        }
        if kind == EntryType::Directory {
            dirs.push((root.join(&rel), mtime));
        }
        count += 1;
    }
    // Directory times last, deepest first: unpacking their contents changed them.
    for (dir, mtime) in dirs.into_iter().rev() {
        let t = filetime::FileTime::from_unix_time(i64::try_from(mtime).unwrap_or(0), 0);
        filetime::set_symlink_file_times(&dir, t, t).map_err(io_at(&dir))?;
    }
    Ok(count)
}

/// Whether `rel` (plain names beneath `root`) passes through or ends at a symbolic link
/// already unpacked.
fn through_link(root: &Path, rel: &Path) -> bool {
    let mut at = root.to_path_buf();
    rel.components().any(|c| {
        at.push(c);
        fs::symlink_metadata(&at).is_ok_and(|m| m.file_type().is_symlink())
    })
}

fn own_root(root: &Path, uid: u64, gid: u64, mode: u32) -> Result<(), ArchiveError> {
    use std::os::unix::fs::PermissionsExt;
    let uid = u32::try_from(uid).ok();
    let gid = u32::try_from(gid).ok();
    std::os::unix::fs::lchown(root, uid, gid).map_err(io_at(root))?;
    fs::set_permissions(root, fs::Permissions::from_mode(mode & 0o7777)).map_err(io_at(root))
}

#[cfg(test)]
mod tests;
