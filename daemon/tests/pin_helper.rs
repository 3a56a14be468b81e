//! The real `berth-pin` binary over its real socket: it pins only what its own configuration
//! allows, releases a connection's pins when the connection ends, answers `verify` only for
//! its own pins, and serves only root and the users it is told to (SO_PEERCRED). Needs root
//! (it bind-mounts), not Docker.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;
mod pinhelper;

use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pinhelper::{Conn, PinHelper, is_mount_point};
use serde_json::{Value, json};

/// A temp dir with `root/real/marker`, a config allowing only `root` (plus `extra` policy
/// lines), and a helper on `<dir>/pin/pin.sock`.
fn setup(extra: &str, args: &[&str]) -> (PathBuf, PathBuf, PinHelper) {
    let dir = common::temp_dir("berth-pin");
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("real")).unwrap();
    std::fs::write(root.join("real/marker"), b"checked").unwrap();
    let cfg = dir.join("config.toml");
    std::fs::write(
        &cfg,
        format!(
            "[policy]\nallowed_host_path_roots = [{:?}]\n{extra}",
            root.display()
        ),
    )
    .unwrap();
    let h = PinHelper::start(&cfg, &dir.join("pin"), args);
    (dir, root, h)
}

fn pin_line(path: &Path, container: &str, index: u32, make: bool) -> String {
    json!({"pin": {"path": path, "container": container, "index": index, "make": make}}).to_string()
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_checked_directory_is_pinned_until_the_connection_closes() {
    let (dir, root, h) = setup("", &[]);
    let mut c = Conn::open(&h.socket);
    let a = c.ask(&pin_line(&root.join("real"), "berth-alice-", 0, false));
    let staging = PathBuf::from(
        a["pinned"]["staging"]
            .as_str()
            .unwrap_or_else(|| panic!("{a}")),
    );
    assert_eq!(staging, h.staging().join("berth-alice-/0"));
    let real = std::fs::metadata(root.join("real")).unwrap();
    assert_eq!(a["pinned"]["ino"], json!(real.ino()));
    assert_eq!(a["pinned"]["dev"], json!(real.dev()));
    // The staging path is a mount of that very inode, the host's (this test's) namespace sees it.
    assert!(
        is_mount_point(&staging),
        "{} is not mounted",
        staging.display()
    );
    assert_eq!(std::fs::read(staging.join("marker")).unwrap(), b"checked");
    // Swapping the checked path now changes nothing: the pin names the inode.
    std::fs::rename(root.join("real"), root.join("aside")).unwrap();
    symlink("/etc", root.join("real")).unwrap();
    assert_eq!(std::fs::read(staging.join("marker")).unwrap(), b"checked");
    // A second pin at the same index on the same connection is refused.
    let again = c.ask(&pin_line(&root.join("aside"), "berth-alice-", 0, false));
    assert_eq!(again["refused"]["bad_request"]["field"], "index", "{again}");
    drop(c);
    wait_until("the pin is released", || !staging.exists());
    assert!(!is_mount_point(&staging));
    h.wait_released();
    drop(h);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn links_paths_outside_the_roots_and_bad_requests_are_refused_and_pin_nothing() {
    let (dir, root, h) = setup("", &[]);
    symlink("/etc", root.join("top")).unwrap();
    symlink(root.join("real"), root.join("inside")).unwrap();
    let mut c = Conn::open(&h.socket);
    let cases: Vec<(String, &str)> = vec![
        (pin_line(&root.join("top"), "c", 0, false), "symlink"),
        (pin_line(&root.join("inside"), "c", 0, false), "symlink"),
        (pin_line(&root.join("../etc"), "c", 0, false), "escapes"),
        (pin_line(Path::new("/etc"), "c", 0, false), "not_under_root"),
        // The request cannot widen the policy: there is no field for roots.
        (
            json!({"pin": {"path": "/etc", "container": "c", "index": 0, "make": false,
                "roots": ["/"]}})
            .to_string(),
            "bad_request",
        ),
        (pin_line(&root.join("missing"), "c", 0, false), "missing"),
        (
            pin_line(&root.join("real"), "../../etc", 0, false),
            "bad_request",
        ),
        ("{\"unmount\": {\"path\": \"/\"}}".into(), "bad_request"),
        ("garbage".into(), "bad_request"),
    ];
    for (line, kind) in cases {
        let a = c.ask(&line);
        assert!(a["refused"][kind].is_object(), "{line}: {a}");
    }
    // The connection survived all that, and nothing was pinned.
    let left: Vec<_> = std::fs::read_dir(h.staging())
        .map(|r| r.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "pins or directories left: {left:?}");
    // A line past the limit ends the connection after one answer.
    let long = format!("{{\"pin\": \"{}\"}}", "a".repeat(20_000));
    let a = c.ask(&long);
    assert_eq!(a["refused"]["bad_request"]["field"], "request", "{a}");
    assert_eq!(c.answer(), Value::Null);
    drop(h);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn templated_paths_are_made_with_the_owner_of_the_helpers_policy() {
    let (dir, root, h) = setup(
        "host_path_uid = 4242\nhost_path_gid = 4343\nhost_path_mode = 0o750\n",
        &[],
    );
    let mut c = Conn::open(&h.socket);
    let want = root.join("homes/alice");
    let a = c.ask(&pin_line(&want, "berth-alice-", 1, true));
    assert!(a["pinned"].is_object(), "{a}");
    let m = std::fs::metadata(&want).unwrap();
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (4242, 4343, 0o750));
    // Without `make` a missing path is not made.
    let a = c.ask(&pin_line(&root.join("homes/bob"), "berth-bob-", 2, false));
    assert!(a["refused"]["missing"].is_object(), "{a}");
    assert!(!root.join("homes/bob").exists());
    drop(c);
    h.wait_released();
    drop(h);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn verify_answers_for_the_connections_own_pins_only() {
    let (dir, root, h) = setup("", &[]);
    let me = std::process::id();
    let mut c = Conn::open(&h.socket);
    let a = c.ask(&pin_line(&root.join("real"), "c", 0, false));
    assert!(a["pinned"].is_object(), "{a}");
    let verify = |c: &mut Conn, index: u32, target: &Path| {
        c.ask(&json!({"verify": {"index": index, "pid": me, "target": target}}).to_string())
    };
    // This process sees the pinned inode at root/real, and something else at /etc.
    let target = root.join("real");
    assert_eq!(
        verify(&mut c, 0, &target),
        json!({"verified": {"ok": true}})
    );
    assert_eq!(
        verify(&mut c, 0, Path::new("/etc")),
        json!({"verified": {"ok": false}})
    );
    let a = verify(&mut c, 1, &target);
    assert_eq!(a["refused"]["bad_request"]["field"], "index", "{a}");
    // Another connection cannot ask about this one's pins.
    let mut other = Conn::open(&h.socket);
    let a = verify(&mut other, 0, &target);
    assert_eq!(a["refused"]["bad_request"]["field"], "index", "{a}");
    drop(c);
    h.wait_released();
    drop(h);
    std::fs::remove_dir_all(dir).unwrap();
}

/// Connects from a thread whose effective uid is `uid` (SO_PEERCRED reports the connecting
/// thread's credentials) and asks for one pin.
fn ask_as(uid: u32, socket: &Path, line: String) -> Value {
    let socket = socket.to_owned();
    std::thread::spawn(move || {
        let nobody = rustix::thread::Uid::from_raw(uid);
        rustix::thread::set_thread_res_uid(None, Some(nobody), None).unwrap();
        let mut c = Conn::open(&socket);
        c.ask(&line)
    })
    .join()
    .unwrap()
}

#[test]
fn a_peer_that_is_neither_root_nor_a_named_user_is_refused() {
    let (dir, root, h) = setup("", &[]);
    // Let anyone reach the socket, so that only SO_PEERCRED stands in the way.
    for p in [&dir, &dir.join("pin"), &h.socket] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let line = pin_line(&root.join("real"), "c", 0, false);
    let a = ask_as(65534, &h.socket, line.clone());
    assert_eq!(a["refused"]["bad_request"]["field"], "peer", "{a}");
    assert!(!h.staging().join("c").exists());
    h.wait_released();
    drop(h);
    // Named with --peer-user, the same uid is served.
    let cfg = dir.join("config.toml");
    let h = PinHelper::start(&cfg, &dir.join("pin"), &["--peer-user", "nobody"]);
    for p in [&dir.join("pin"), &h.socket] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let a = ask_as(65534, &h.socket, line);
    assert!(a["pinned"].is_object(), "{a}");
    h.wait_released();
    drop(h);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_missing_configuration_or_user_is_exit_64() {
    let dir = common::temp_dir("berth-pin-bad");
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_berth-pin"))
            .args(args)
            .arg("--socket")
            .arg(dir.join("pin.sock"))
            .output()
            .unwrap()
    };
    let out = run(&["--config", dir.join("none.toml").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    std::fs::write(dir.join("c.toml"), "").unwrap();
    let out = run(&[
        "--config",
        dir.join("c.toml").to_str().unwrap(),
        "--peer-user",
        "no-such-user-x",
    ]);
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-user-x"));
    std::fs::remove_dir_all(dir).unwrap();
}

/// A process in a mount namespace of its own (`unshare -m`), standing in for a container's
/// first process; killed when dropped.
struct OtherNamespace(std::process::Child);

impl OtherNamespace {
    fn start() -> Self {
        let child = std::process::Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sleep", "120"])
            .spawn()
            .expect("unshare (util-linux) runs");
        let me = std::fs::read_link("/proc/self/ns/mnt").unwrap();
        let pid = child.id();
        wait_until("the process has a mount namespace of its own", || {
            std::fs::read_link(format!("/proc/{pid}/ns/mnt")).is_ok_and(|ns| ns != me)
        });
        Self(child)
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    /// `path` as the process sees it.
    fn sees(&self, path: &Path) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root{}", self.pid(), path.display()))
    }
}

impl Drop for OtherNamespace {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn graft_line(source: Value, pid: u32, target: &Path, read_only: bool) -> String {
    json!({"graft": {"source": source, "pid": pid, "target": target, "read_only": read_only}})
        .to_string()
}

#[test]
fn a_pin_or_a_docker_volume_is_grafted_into_another_mount_namespace_and_nowhere_else() {
    let (dir, root, _) = setup("", &[]);
    let volumes = dir.join("volumes");
    std::fs::create_dir_all(volumes.join("vol-a/_data")).unwrap();
    std::fs::write(volumes.join("vol-a/_data/f"), b"in-the-volume").unwrap();
    std::fs::create_dir_all(volumes.join("vol-link")).unwrap();
    symlink("/etc", volumes.join("vol-link/_data")).unwrap();
    let h = PinHelper::start(
        &dir.join("config.toml"),
        &dir.join("pin2"),
        &["--docker-volumes", volumes.to_str().unwrap()],
    );
    let other = OtherNamespace::start();
    let mut c = Conn::open(&h.socket);
    let a = c.ask(&pin_line(&root.join("real"), "c", 0, false));
    assert!(a["pinned"].is_object(), "{a}");

    // The pin, read-only, at a target whose directories do not exist yet.
    let target = dir.join("inside/home/data");
    let a = c.ask(&graft_line(json!({"pin": 0}), other.pid(), &target, true));
    assert_eq!(a, json!("grafted"), "{a}");
    assert_eq!(
        std::fs::read(other.sees(&target).join("marker")).unwrap(),
        b"checked"
    );
    let write = std::fs::write(other.sees(&target).join("new"), b"x").unwrap_err();
    assert_eq!(write.raw_os_error(), Some(30), "read-only (EROFS): {write}");
    // This namespace (the helper's, the host's) sees only the directory made for the target.
    assert!(!is_mount_point(&target));
    assert_eq!(std::fs::read_dir(&target).unwrap().count(), 0);

    // A volume by name, read-write.
    let target = dir.join("inside/home/vol");
    let a = c.ask(&graft_line(
        json!({"volume": "vol-a"}),
        other.pid(),
        &target,
        false,
    ));
    assert_eq!(a, json!("grafted"), "{a}");
    std::fs::write(other.sees(&target).join("g"), b"from-inside").unwrap();
    assert_eq!(
        std::fs::read(volumes.join("vol-a/_data/g")).unwrap(),
        b"from-inside"
    );

    // Refused, with nothing mounted: a volume whose _data is a link, a missing volume, a pin
    // of no one's, and this very namespace.
    let t = dir.join("inside/refused");
    let a = c.ask(&graft_line(
        json!({"volume": "vol-link"}),
        other.pid(),
        &t,
        false,
    ));
    assert!(a["refused"]["symlink"].is_object(), "{a}");
    let a = c.ask(&graft_line(
        json!({"volume": "vol-none"}),
        other.pid(),
        &t,
        false,
    ));
    assert!(a["refused"]["missing"].is_object(), "{a}");
    let a = c.ask(&graft_line(json!({"pin": 1}), other.pid(), &t, false));
    assert_eq!(a["refused"]["bad_request"]["field"], "source", "{a}");
    let a = c.ask(&graft_line(
        json!({"pin": 0}),
        std::process::id(),
        &t,
        false,
    ));
    let why = a["refused"]["failed"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(why.contains("not a container"), "{a}");
    assert!(!other.sees(&t).exists() || std::fs::read_dir(other.sees(&t)).unwrap().count() == 0);
    assert!(!is_mount_point(&t));

    drop(c);
    h.wait_released();
    drop(other);
    drop(h);
    std::fs::remove_dir_all(dir).unwrap();
}
