use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{MetadataExt, symlink};
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicU32, Ordering};

use proptest::prelude::*;

use super::*;

fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let d = std::env::temp_dir().join(format!("berth-hostpath-{tag}-{}-{n}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).expect("temp dir");
    d
}

/// `<tmp>/root` holding: `real/` (with `inner/` and `file`), `top -> /etc`, `real/deep -> /etc`,
/// `climb -> ../..`, `inside -> real`, `sock` (a socket), `dsock -> /var/run/docker.sock`.
fn tree() -> (PathBuf, PathBuf) {
    let base = temp_dir("tree");
    let root = base.join("root");
    fs::create_dir_all(root.join("real/inner")).expect("mkdir");
    fs::write(root.join("real/file"), b"x").expect("write");
    symlink("/etc", root.join("top")).expect("link");
    symlink("/etc", root.join("real/deep")).expect("link");
    symlink("../..", root.join("climb")).expect("link");
    symlink("real", root.join("inside")).expect("link");
    symlink("/var/run/docker.sock", root.join("dsock")).expect("link");
    UnixListener::bind(root.join("sock")).expect("socket");
    (base, root)
}

#[derive(Debug, PartialEq)]
enum Outcome {
    Ok,
    NotUnderRoot,
    Symlink,
    Escapes,
    Kind,
    Missing,
    Other,
}

fn outcome(r: &Result<Resolved, HostPathError>) -> Outcome {
    match r {
        Ok(_) => Outcome::Ok,
        Err(HostPathError::NotUnderRoot { .. }) => Outcome::NotUnderRoot,
        Err(HostPathError::Symlink { .. }) => Outcome::Symlink,
        Err(HostPathError::Escapes { .. }) => Outcome::Escapes,
        Err(HostPathError::Kind { .. }) => Outcome::Kind,
        Err(HostPathError::Missing { .. }) => Outcome::Missing,
        Err(_) => Outcome::Other,
    }
}

#[test]
fn links_escapes_and_odd_kinds_are_refused() {
    let (base, root) = tree();
    let roots = vec![root.clone()];
    let r = root.display();
    let cases: Vec<(String, Outcome)> = vec![
        (format!("{r}/real"), Outcome::Ok),
        (format!("{r}/real/"), Outcome::Ok),
        (format!("{r}//real/./inner//"), Outcome::Ok),
        (format!("{r}/real/file"), Outcome::Ok),
        (format!("{r}"), Outcome::Ok),
        (format!("{r}/top"), Outcome::Symlink),
        (format!("{r}/top/passwd"), Outcome::Symlink),
        (format!("{r}/real/deep"), Outcome::Symlink),
        (format!("{r}/climb"), Outcome::Symlink),
        (format!("{r}/climb/etc"), Outcome::Symlink),
        (format!("{r}/inside"), Outcome::Symlink),
        (format!("{r}/dsock"), Outcome::Symlink),
        (format!("{r}/sock"), Outcome::Kind),
        (format!("{r}/../root/real"), Outcome::Escapes),
        (format!("{r}/real/../../x"), Outcome::Escapes),
        (format!("{r}/missing"), Outcome::Missing),
        (format!("{r}/real/file/x"), Outcome::Missing),
        ("/etc".to_owned(), Outcome::NotUnderRoot),
        (format!("{r}X/real"), Outcome::NotUnderRoot),
        ("relative/path".to_owned(), Outcome::NotUnderRoot),
    ];
    for (path, want) in cases {
        let got = resolve(&roots, &path);
        assert_eq!(outcome(&got), want, "{path}: {got:?}");
        if let Err(e) = got {
            let text = e.to_string();
            assert!(text.contains(&path) || want == Outcome::Other, "{text}");
            if want != Outcome::Missing {
                assert!(e.is_policy() && text.contains(RULE), "{text}");
            }
        }
    }
    fs::remove_dir_all(base).expect("cleanup");
}

#[test]
fn the_longest_root_wins_and_a_root_may_be_reached_through_a_link_above_it() {
    let base = temp_dir("roots");
    fs::create_dir_all(base.join("data/homes/u")).expect("mkdir");
    symlink(base.join("data"), base.join("srv")).expect("link");
    let roots = vec![base.join("srv"), base.join("srv/homes")];
    let got = resolve(&roots, &format!("{}/srv/homes/u", base.display())).expect("resolves");
    let want = fs::metadata(base.join("data/homes/u")).expect("stat");
    assert_eq!((got.dev, got.ino), (want.dev(), want.ino()));
    fs::remove_dir_all(base).expect("cleanup");
}

#[test]
fn a_pin_holds_the_checked_directory_after_the_path_is_swapped_for_a_link() {
    let (base, root) = tree();
    let staging_dir = base.join("state");
    let path = format!("{}/real", root.display());
    let r = resolve(std::slice::from_ref(&root), &path).expect("resolves");
    // The attack: after the check, the checked path becomes a link to the host's /etc.
    fs::rename(root.join("real"), root.join("moved")).expect("rename");
    symlink("/etc", root.join("real")).expect("link");
    let at = staging_path(&staging_dir, "berth-u", 0);
    let pin = pin(&r, &at).expect("pins");
    assert_eq!(fs::read(at.join("file")).expect("pinned file"), b"x");
    assert!(!at.join("passwd").exists(), "the pin must not reach /etc");
    drop(pin);
    assert!(!at.exists(), "the staging path is removed with its pin");
    fs::remove_dir_all(base).expect("cleanup");
}

#[test]
fn a_file_can_be_pinned_and_left_over_pins_are_cleared() {
    let (base, root) = tree();
    let state = base.join("state");
    let r = resolve(
        std::slice::from_ref(&root),
        &format!("{}/real/file", root.display()),
    )
    .expect("resolves");
    let at = staging_path(&state, "berth-v", 1);
    let pin = pin(&r, &at).expect("pins");
    assert_eq!(fs::read(&at).expect("read"), b"x");
    // A crash: the pin is never dropped; the next start clears it.
    std::mem::forget(pin);
    clear_staging(&state);
    assert!(!at.exists());
    assert!(!state.join(STAGING_DIR).join("berth-v").exists());
    fs::remove_dir_all(base).expect("cleanup");
}

#[test]
fn devices_must_be_device_nodes_in_root_only_directories() {
    assert!(check_device("/dev/null").is_ok());
    let base = temp_dir("dev");
    let link = base.join("null");
    symlink("/dev/null", &link).expect("link");
    for bad in [
        link.display().to_string(),
        "/etc/passwd".to_owned(),
        "/dev/nope".to_owned(),
    ] {
        let e = check_device(&bad).expect_err(&bad);
        assert!(
            e.is_policy() && e.to_string().contains("allowed_devices"),
            "{e}"
        );
    }
    fs::remove_dir_all(base).expect("cleanup");
}

/// What [`resolve`] must answer, computed without openat2: walk the components with lstat.
fn model(root: &Path, rel: &[OsString]) -> (Outcome, Option<(u64, u64)>) {
    let mut stack: Vec<&OsString> = Vec::new();
    for (i, c) in rel.iter().enumerate() {
        if c == ".." {
            if stack.pop().is_none() {
                return (Outcome::Escapes, None);
            }
            continue;
        }
        let here: PathBuf = std::iter::once(root.as_os_str())
            .chain(stack.iter().map(|s| s.as_os_str()))
            .chain(std::iter::once(c.as_os_str()))
            .collect();
        let m = match fs::symlink_metadata(&here) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (Outcome::Missing, None),
            Err(_) => return (Outcome::Other, None),
        };
        if m.file_type().is_symlink() {
            return (Outcome::Symlink, None);
        }
        if !m.is_dir() && i + 1 < rel.len() {
            return (Outcome::Missing, None);
        }
        stack.push(c);
    }
    let end: PathBuf = std::iter::once(root.as_os_str())
        .chain(stack.iter().map(|s| s.as_os_str()))
        .collect();
    let m = fs::symlink_metadata(&end).expect("the walk reached it");
    if m.is_dir() || m.is_file() {
        (Outcome::Ok, Some((m.dev(), m.ino())))
    } else {
        (Outcome::Kind, None)
    }
}

fn name() -> impl Strategy<Value = OsString> {
    prop_oneof![
        Just(OsString::from("a")),
        Just(OsString::from("b")),
        Just(OsString::from("l")),
        Just(OsString::from("..")),
        Just(OsString::from(".")),
        Just(OsString::from("")),
        prop::collection::vec(1u8..=255, 1..8).prop_map(|mut v| {
            v.retain(|b| *b != b'/');
            if v.is_empty() {
                v.push(0xff);
            }
            OsString::from_vec(v)
        }),
        Just(OsString::from_vec(vec![b'n'; 300])),
    ]
}

/// Link targets: inside, outside, absolute, relative climbs, loops.
fn target() -> impl Strategy<Value = OsString> {
    prop_oneof![
        Just(OsString::from("/etc")),
        Just(OsString::from("/")),
        Just(OsString::from("..")),
        Just(OsString::from("../..")),
        Just(OsString::from("a")),
        Just(OsString::from("./b")),
        Just(OsString::from("l")),
        Just(OsString::from("/var/run/docker.sock")),
    ]
}

#[derive(Debug, Clone)]
enum Node {
    Dir,
    File,
    Link(OsString),
}

fn node() -> impl Strategy<Value = Node> {
    prop_oneof![
        Just(Node::Dir),
        Just(Node::File),
        target().prop_map(Node::Link)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// Random trees with links (absolute, relative, climbing, looping), and random paths with
    /// `..`, `.`, empty components (doubled or trailing slashes), non-UTF-8 and over-long names:
    /// the checker agrees with an lstat walk of the same tree, and what it opens is the inode
    /// the walk reached — never anything outside the root.
    #[test]
    fn resolve_agrees_with_an_lstat_walk(
        layout in prop::collection::vec((prop::collection::vec(name(), 1..3), node()), 0..8),
        ask in prop::collection::vec(name(), 0..6),
        trailing in any::<bool>(),
    ) {
        let base = temp_dir("prop");
        let root = base.join("root");
        fs::create_dir_all(&root).expect("mkdir");
        for (at, kind) in &layout {
            let mut p = root.clone();
            for c in at.iter().filter(|c| !c.is_empty() && *c != "." && *c != "..") {
                p.push(c);
            }
            if p == root || p.symlink_metadata().is_ok() {
                continue;
            }
            if let Some(parent) = p.parent() && fs::create_dir_all(parent).is_err() {
                continue;
            }
            let _ = match kind {
                Node::Dir => fs::create_dir(&p),
                Node::File => fs::write(&p, b"f"),
                Node::Link(t) => symlink(t, &p),
            };
        }
        let mut text = root.as_os_str().to_owned();
        for c in &ask {
            text.push("/");
            text.push(c);
        }
        if trailing {
            text.push("/");
        }
        let path = PathBuf::from(&text);
        let rel: Vec<OsString> = ask
            .iter()
            .filter(|c| !c.is_empty() && *c != ".")
            .cloned()
            .collect();
        let got = resolve_path(std::slice::from_ref(&root), &path);
        let (want, inode) = model(&root, &rel);
        let got_outcome = outcome(&got);
        prop_assert!(got_outcome == want, "{}: resolve {:?}, model {:?}", path.display(), got, want);
        if let (Ok(r), Some(ino)) = (&got, inode) {
            prop_assert_eq!((r.dev, r.ino), ino);
        }
        fs::remove_dir_all(base).expect("cleanup");
    }
}
