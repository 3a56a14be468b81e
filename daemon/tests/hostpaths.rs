//! Host paths and image references are judged as Docker will use them (real Docker, real
//! berthd): links beneath an allowed root are refused, a path swapped during the spawn never
//! reaches the container, and an image is matched in the form Docker resolves.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;
mod pinhelper;

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use berth_proto::v1 as pb;
use common::{Daemon, TINY, docker, tiny_start, unique};
use pinhelper::PinHelper;
use tonic::Code;

/// A fresh directory (the allowed root lives inside it) and a berthd whose policy allows only
/// `<dir>/root` for host paths, plus whatever `extra` policy lines say.
fn setup(extra: &str) -> (PathBuf, PathBuf, Daemon) {
    let (dir, root, cfg) = config(extra);
    let d = Daemon::start_with(&["--config", cfg.to_str().unwrap()]);
    (dir, root, d)
}

/// As [`setup`], but berthd pins through a real `berth-pin` reading the same configuration.
fn setup_with_helper() -> (PathBuf, PathBuf, Daemon, PinHelper) {
    let (dir, root, cfg) = config("");
    let h = PinHelper::start(&cfg, &dir.join("pin"), &[]);
    let d = Daemon::start_with(&[
        "--config",
        cfg.to_str().unwrap(),
        "--hostpaths-pin-helper-socket",
        h.socket.to_str().unwrap(),
    ]);
    (dir, root, d, h)
}

fn config(extra: &str) -> (PathBuf, PathBuf, PathBuf) {
    let dir = common::temp_dir("berth-hostpaths");
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
    (dir, root, cfg)
}

fn mounting(user: &str, spawn_id: &str, source: &Path) -> pb::StartRequest {
    let mut r = tiny_start(user, spawn_id);
    r.volumes.push(pb::Volume {
        source: source.display().to_string(),
        target: "/data".into(),
        read_only: false,
        ..Default::default()
    });
    r
}

/// Nothing of a refused spawn exists: no container, no pin left in the staging directory.
fn assert_nothing_created(d: &Daemon, what: &str) {
    assert!(d.containers().is_empty(), "{what}: a container was created");
    let staging = d.state_dir.join("mounts");
    let left: Vec<_> = std::fs::read_dir(&staging)
        .map(|r| r.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{what}: pins left behind: {left:?}");
}

#[tokio::test]
async fn links_beneath_an_allowed_root_are_refused_and_create_nothing() {
    let (dir, root, d) = setup("");
    let mut c = d.client().await;
    std::fs::create_dir_all(root.join("a/b")).unwrap();
    symlink("/etc", root.join("top")).unwrap();
    symlink("/etc", root.join("a/b/deep")).unwrap();
    symlink("../../../../../../../../etc", root.join("climb")).unwrap();
    symlink("/var/run/docker.sock", root.join("dsock")).unwrap();
    // A link that stays inside the root is refused too: beneath a user-writable root it could
    // as well point at another user's home (see daemon/src/hostpath.rs).
    symlink(root.join("real"), root.join("inside")).unwrap();
    for name in ["top", "a/b/deep", "climb", "dsock", "inside", "top/passwd"] {
        let user = unique("link");
        let err = c
            .start(mounting(&user, "s1", &root.join(name)))
            .await
            .expect_err(name);
        assert_eq!(err.code(), Code::PermissionDenied, "{name}: {err:?}");
        assert!(
            err.message().contains("allowed_host_path_roots")
                && err.message().contains("symbolic link"),
            "{name}: {}",
            err.message()
        );
        assert_nothing_created(&d, name);
    }
    drop(d);
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn a_real_directory_and_a_file_beneath_the_root_are_mounted() {
    let (dir, root, d) = setup("");
    let mut c = d.client().await;
    std::fs::write(root.join("file"), b"one file").unwrap();
    let user = unique("legit");
    let mut req = mounting(&user, "s1", &root.join("real"));
    req.volumes.push(pb::Volume {
        source: format!("{}//file", root.display()),
        target: "/one".into(),
        read_only: true,
        ..Default::default()
    });
    let r = c.start(req).await.unwrap().into_inner();
    let seen = docker(&["exec", &r.container_id, "cat", "/data/marker", "/one"]);
    assert_eq!(seen, "checkedone file");
    // The container writes through to the host directory.
    docker(&[
        "exec",
        &r.container_id,
        "sh",
        "-c",
        "echo hi > /data/written",
    ]);
    assert_eq!(
        std::fs::read_to_string(root.join("real/written")).unwrap(),
        "hi\n"
    );
    // The pin is gone once the container runs; the container keeps its mount.
    assert_nothing_created_but(&d, &r.container_id);
    common::stop_remove(&c, &user).await;
    drop(d);
    std::fs::remove_dir_all(dir).unwrap();
}

fn assert_nothing_created_but(d: &Daemon, id: &str) {
    assert_eq!(d.containers(), vec![id.to_owned()]);
    let left: Vec<_> = std::fs::read_dir(d.state_dir.join("mounts"))
        .map(|r| {
            r.flatten()
                .flat_map(|e| std::fs::read_dir(e.path()).into_iter().flatten().flatten())
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "pins outlived the start: {left:?}");
}

/// The attack the pin exists for: the checked directory is swapped for a link to `/` over and
/// over while spawns run for 30 s. Each spawn is refused or mounts the real directory; no
/// container ever sees the host's root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_swapped_for_a_link_during_the_spawn_never_reaches_the_container() {
    let (dir, root, d) = setup("");
    race(&d, &root, None).await;
    drop(d);
    std::fs::remove_dir_all(dir).unwrap();
}

/// The same race with berthd pinning through `berth-pin`: every container that runs mounts
/// the helper's pin (its staging path is the mount's source), never berthd's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_the_pin_helper_a_swapped_path_never_reaches_the_container() {
    let (dir, root, d, h) = setup_with_helper();
    race(&d, &root, Some(&h)).await;
    assert!(
        !d.state_dir.join("mounts").exists(),
        "berthd pinned in process although a helper is configured"
    );
    h.wait_released();
    drop(d);
    drop(h);
    std::fs::remove_dir_all(dir).unwrap();
}

/// A helper that is configured but not there: host paths fail closed (berthd never falls
/// back to pinning itself), naming the socket; nothing is created.
#[tokio::test]
async fn a_configured_helper_that_does_not_answer_fails_the_start_closed() {
    let (dir, root, cfg) = config("");
    let socket = dir.join("no-helper.sock");
    let d = Daemon::start_with(&[
        "--config",
        cfg.to_str().unwrap(),
        "--hostpaths-pin-helper-socket",
        socket.to_str().unwrap(),
    ]);
    let mut c = d.client().await;
    let user = unique("nohelper");
    let err = c
        .start(mounting(&user, "s1", &root.join("real")))
        .await
        .expect_err("no helper");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    let info = tonic_types::StatusExt::get_details_error_info(&err).unwrap();
    assert_eq!(info.reason, "HOST_PATH_ERROR", "{err:?}");
    assert!(
        err.message().contains("no-helper.sock"),
        "{}",
        err.message()
    );
    assert_nothing_created(&d, "no helper");
    drop(d);
    std::fs::remove_dir_all(dir).unwrap();
}

/// Spawns mounting `root/race` for 30 s while a thread swaps it for a link to `/`.
async fn race(d: &Daemon, root: &Path, helper: Option<&PinHelper>) {
    let mut c = d.client().await;
    let path = root.join("race");
    std::fs::create_dir(&path).unwrap();
    std::fs::write(path.join("marker"), b"checked").unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let racer = {
        let (path, stop) = (path.clone(), stop.clone());
        let aside = root.join("race.aside");
        std::thread::spawn(move || {
            let mut swaps = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // Real directory -> link to / -> real directory, each held for a moment.
                std::fs::rename(&path, &aside).unwrap();
                symlink("/", &path).unwrap();
                std::thread::sleep(Duration::from_micros(200 + swaps % 7 * 300));
                std::fs::remove_file(&path).unwrap();
                std::fs::rename(&aside, &path).unwrap();
                std::thread::sleep(Duration::from_micros(200 + swaps % 5 * 300));
                swaps += 1;
            }
            swaps
        })
    };
    let (mut mounted, mut refused, mut missing) = (0, 0, 0);
    let end = Instant::now() + Duration::from_secs(30);
    let mut n = 0;
    while Instant::now() < end {
        n += 1;
        let user = unique("race");
        match c.start(mounting(&user, &format!("s{n}"), &path)).await {
            Ok(r) => {
                let r = r.into_inner();
                let listing = docker(&["exec", &r.container_id, "ls", "/data"]);
                assert_eq!(listing, "marker", "spawn {n} saw {listing:?} at /data");
                if let Some(h) = helper {
                    let source = docker(&[
                        "inspect",
                        "-f",
                        "{{range .Mounts}}{{.Source}}{{end}}",
                        &r.container_id,
                    ]);
                    assert!(
                        Path::new(&source).starts_with(h.staging()),
                        "spawn {n} mounted {source}, not a pin of the helper"
                    );
                }
                mounted += 1;
            }
            Err(e) if e.code() == Code::PermissionDenied => {
                assert!(
                    e.message().contains("allowed_host_path_roots"),
                    "{}",
                    e.message()
                );
                refused += 1;
            }
            // Between the rename and the link the path briefly does not exist.
            Err(e)
                if tonic_types::StatusExt::get_details_error_info(&e)
                    .is_some_and(|i| i.reason == "HOST_PATH_MISSING") =>
            {
                missing += 1;
            }
            Err(e) => panic!("spawn {n}: unexpected {e:?}"),
        }
        common::stop_remove(&c, &user).await;
    }
    stop.store(true, Ordering::Relaxed);
    let swaps = racer.join().unwrap();
    eprintln!(
        "race: {n} spawns, {mounted} mounted the real directory, {refused} refused, {missing} missing, {swaps} swaps"
    );
    assert!(
        mounted > 0 && refused > 0,
        "the race was not exercised: {mounted} mounted, {refused} refused"
    );
    assert!(d.containers().is_empty());
}

#[tokio::test]
async fn devices_in_user_writable_directories_are_refused() {
    let dir = common::temp_dir("berth-dev");
    // /dev/shm is writable by every user: a name there can be swapped after any check.
    let planted = PathBuf::from("/dev/shm").join(unique("berth-null"));
    symlink("/dev/null", &planted).unwrap();
    let cfg = dir.join("config.toml");
    std::fs::write(
        &cfg,
        format!(
            "[policy]\nallowed_devices = [\"/dev/null\", {:?}]\n",
            planted.display()
        ),
    )
    .unwrap();
    let d = Daemon::start_with(&["--config", cfg.to_str().unwrap()]);
    let mut c = d.client().await;
    let user = unique("dev");
    let mut req = tiny_start(&user, "s1");
    req.host_access = Some(pb::HostAccess {
        devices: vec![planted.display().to_string()],
        ..Default::default()
    });
    let err = c.start(req.clone()).await.expect_err("a planted link");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(
        err.message().contains("allowed_devices"),
        "{}",
        err.message()
    );
    assert!(d.containers().is_empty());
    req.host_access = Some(pb::HostAccess {
        devices: vec!["/dev/null".into()],
        ..Default::default()
    });
    c.start(req).await.expect("a real device node in /dev");
    common::stop_remove(&c, &user).await;
    drop(d);
    std::fs::remove_file(planted).unwrap();
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn images_are_matched_and_run_in_the_form_docker_resolves() {
    common::require_docker();
    // Local names for the tiny image, so that only the policy can refuse them.
    for tag in ["ubuntu:berth-test", "evil.example/ubuntu:berth-test"] {
        docker(&["tag", TINY, tag]);
    }
    let id = docker(&["image", "inspect", "-f", "{{.Id}}", TINY]);
    let short_id = id.trim_start_matches("sha256:")[..12].to_owned();
    let dir = common::temp_dir("berth-images");
    let cfg = dir.join("config.toml");
    std::fs::write(
        &cfg,
        "[policy]\nallowed_images = [\"docker.io/library/*\"]\n",
    )
    .unwrap();
    let d = Daemon::start_with(&["--config", cfg.to_str().unwrap()]);
    let mut c = d.client().await;

    let user = unique("img");
    let mut req = tiny_start(&user, "s1");
    req.image = "ubuntu:berth-test".into();
    c.start(req.clone())
        .await
        .expect("ubuntu is docker.io/library/ubuntu");
    common::stop_remove(&c, &user).await;

    req.spawn_id = "s2".into();
    req.image = "evil.example/ubuntu:berth-test".into();
    let err = c.start(req.clone()).await.expect_err("another registry");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(
        err.message().contains("allowed_images"),
        "{}",
        err.message()
    );

    // A short image id passes the glob as docker.io/library/<hex>:latest, and Docker is handed
    // exactly that: it never picks the local image whose id starts so.
    req.spawn_id = "s3".into();
    req.image = short_id.clone();
    // Not pulled (this machine reaches no public registry): the point is what Docker is handed.
    req.pull_policy = pb::PullPolicy::Never.into();
    let err = c.start(req).await.expect_err("an image id prefix");
    assert_eq!(err.code(), Code::NotFound, "{short_id}: {err:?}");
    assert!(d.containers().is_empty());
    drop(d);
    for tag in ["ubuntu:berth-test", "evil.example/ubuntu:berth-test"] {
        docker(&["rmi", tag]);
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn a_named_volume_that_binds_a_host_path_is_refused() {
    let (dir, root, d) = setup("");
    let mut c = d.client().await;
    let name = unique("berth-bindvol");
    docker(&[
        "volume",
        "create",
        "--opt",
        "type=none",
        "--opt",
        "o=bind",
        "--opt",
        "device=/etc",
        &name,
    ]);
    let user = unique("bindvol");
    let mut req = tiny_start(&user, "s1");
    req.volumes.push(pb::Volume {
        source: name.clone(),
        target: "/data".into(),
        read_only: false,
        ..Default::default()
    });
    let err = c.start(req.clone()).await.expect_err("a bind volume");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(
        err.message().contains("allowed_host_path_roots") && err.message().contains("/etc"),
        "{}",
        err.message()
    );
    assert!(d.containers().is_empty());
    docker(&["volume", "rm", &name]);
    // An ordinary named volume (created on first use) still works.
    req.volumes[0].source = format!("{name}-plain");
    c.start(req).await.expect("a plain named volume");
    common::stop_remove(&c, &user).await;
    docker(&["volume", "rm", &format!("{name}-plain")]);
    drop(d);
    let _ = root;
    std::fs::remove_dir_all(dir).unwrap();
}
