#![allow(clippy::unwrap_used)]

use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};

use super::*;

fn temp(tag: &str) -> PathBuf {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let d = std::env::temp_dir().join(format!("berth-archive-{tag}-{}-{n}", std::process::id()));
    fs::create_dir_all(&d).unwrap();
    d
}

/// Path, kind, mode, uid, gid, mtime, and content or link target.
type Entry = (String, String, u32, u32, u32, i64, Vec<u8>);

/// Every entry under `root`, sorted.
fn listing(root: &Path) -> Vec<Entry> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = fs::symlink_metadata(&p).unwrap();
            let (kind, body) = if m.is_dir() {
                stack.push(p.clone());
                ("dir", Vec::new())
            } else if m.file_type().is_symlink() {
                (
                    "link",
                    fs::read_link(&p)
                        .unwrap()
                        .into_os_string()
                        .into_encoded_bytes(),
                )
            } else {
                ("file", fs::read(&p).unwrap())
            };
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            out.push((
                rel,
                kind.to_owned(),
                m.mode() & 0o7777,
                m.uid(),
                m.gid(),
                m.mtime(),
                body,
            ));
        }
    }
    out.sort();
    out
}

fn packed(root: &Path) -> Vec<u8> {
    let mut buf = Vec::new();
    pack(root, &mut buf).unwrap();
    buf
}

#[test]
fn a_tree_round_trips_with_owner_mode_times_and_links() {
    let src = temp("src");
    fs::create_dir_all(src.join("a/b/c")).unwrap();
    fs::write(src.join("a/b/c/deep.txt"), b"deep").unwrap();
    fs::write(src.join("top.bin"), vec![7u8; 300_000]).unwrap();
    fs::set_permissions(src.join("top.bin"), fs::Permissions::from_mode(0o640)).unwrap();
    fs::set_permissions(src.join("a/b"), fs::Permissions::from_mode(0o700)).unwrap();
    symlink("b/c/deep.txt", src.join("a/rel-link")).unwrap();
    symlink("/etc/passwd", src.join("abs-link")).unwrap();
    let long = "n".repeat(150);
    fs::write(src.join(&long), b"long name").unwrap();
    let root_uid = fs::metadata("/proc/self").unwrap().uid() == 0;
    if root_uid {
        std::os::unix::fs::lchown(src.join("top.bin"), Some(1234), Some(4321)).unwrap();
    }
    let t = filetime::FileTime::from_unix_time(1_600_000_000, 0);
    filetime::set_file_mtime(src.join("a/b/c"), t).unwrap();
    fs::set_permissions(&src, fs::Permissions::from_mode(0o751)).unwrap();

    let stream = packed(&src);
    assert_eq!(stream, packed(&src), "the same tree gives the same stream");
    let dst = temp("dst");
    unpack(&dst, stream.as_slice()).unwrap();
    assert_eq!(listing(&src), listing(&dst));
    let root_mode = fs::metadata(&dst).unwrap().mode() & 0o7777;
    assert_eq!(root_mode, 0o751, "the root's mode is the volume's");
    fs::remove_dir_all(src).unwrap();
    fs::remove_dir_all(dst).unwrap();
}

/// A one-entry archive whose raw name is `name` (bypassing the builder's checks).
fn raw_entry(name: &[u8], kind: EntryType, link: &[u8]) -> Vec<u8> {
    let mut h = Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(0o644);
    // Valid owner and time fields: without them the entry fails to unpack before the check
    // under test is reached (the hostile archives of the issue are well-formed).
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(if kind == EntryType::Regular { 4 } else { 0 });
    h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name);
    h.as_gnu_mut().unwrap().linkname[..link.len()].copy_from_slice(link);
    h.set_cksum();
    let mut out = h.as_bytes().to_vec();
    if kind == EntryType::Regular {
        let mut block = [0u8; 512];
        block[..4].copy_from_slice(b"evil");
        out.extend_from_slice(&block);
    }
    out
}

fn archive(entries: &[Vec<u8>]) -> Vec<u8> {
    let mut out: Vec<u8> = entries.concat();
    out.extend_from_slice(&[0u8; 1024]);
    out
}

#[test]
fn hostile_entries_are_refused_and_nothing_escapes() {
    let outside = temp("outside");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "parent",
            archive(&[raw_entry(b"../escape", EntryType::Regular, b"")]),
        ),
        (
            "nested parent",
            archive(&[raw_entry(b"a/../../escape", EntryType::Regular, b"")]),
        ),
        (
            "absolute",
            archive(&[raw_entry(b"/tmp/escape", EntryType::Regular, b"")]),
        ),
        (
            "char device",
            archive(&[raw_entry(b"null", EntryType::Char, b"")]),
        ),
        (
            "block device",
            archive(&[raw_entry(b"sda", EntryType::Block, b"")]),
        ),
        (
            "hard link out",
            archive(&[raw_entry(b"h", EntryType::Link, b"../../etc/passwd")]),
        ),
        (
            "write through a link",
            archive(&[
                raw_entry(
                    b"l",
                    EntryType::Symlink,
                    outside.as_os_str().as_encoded_bytes(),
                ),
                raw_entry(b"l/escape", EntryType::Regular, b""),
            ]),
        ),
        (
            "hard link through a link",
            archive(&[
                raw_entry(
                    b"l",
                    EntryType::Symlink,
                    outside.as_os_str().as_encoded_bytes(),
                ),
                raw_entry(b"escape", EntryType::Link, b"l/escape"),
            ]),
        ),
        (
            "write onto a link",
            archive(&[
                raw_entry(b"escape", EntryType::Symlink, b"../escape"),
                raw_entry(b"escape", EntryType::Regular, b""),
            ]),
        ),
    ];
    for (what, bytes) in cases {
        let dst = temp("hostile");
        let err = unpack(&dst, bytes.as_slice());
        // Refused (ARCHIVE_REFUSED, the caller's fault), not an I/O failure (the retry class).
        assert!(
            matches!(err, Err(ArchiveError::Refused { .. })),
            "{what}: {err:?}"
        );
        assert!(
            !outside.join("escape").exists() && !dst.parent().unwrap().join("escape").exists(),
            "{what}: wrote outside"
        );
        fs::remove_dir_all(dst).unwrap();
    }
    fs::remove_dir_all(outside).unwrap();
}

#[test]
fn a_device_node_in_the_volume_is_not_packed() {
    let src = temp("dev");
    if fs::metadata("/proc/self").unwrap().uid() == 0 {
        let made = rustix::fs::mknodat(
            rustix::fs::CWD,
            src.join("null"),
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::Mode::from_raw_mode(0o600),
            rustix::fs::makedev(1, 3),
        );
        made.unwrap();
        let err = pack(&src, Vec::new()).unwrap_err();
        assert!(matches!(err, ArchiveError::Refused { .. }), "{err}");
    }
    fs::remove_dir_all(src).unwrap();
}
