//! What a failed Start leaves, against the real binary and the real Docker engine: a start
//! Docker refuses frees its device; a kept server whose image lacks /bin/sh leaves no token
//! anywhere and says why; a Start whose caller gave up during a slow pull makes nothing and
//! stops the pull; a `docker update` by hand between two spawns makes the next one recreate,
//! naming the change; and an omitted option gets the node's bound.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use berth_proto::v1 as pb;
use berth_proto::v1::spawner_client::SpawnerClient;
use common::registry::{Registry, SlowProxy, push_test_image, remove_local};
use common::{Daemon, Stop, docker, key, poll, stop_as, tiny_start, unique};
use tonic::Code;
use tonic::transport::Channel;

/// The token the tests look for everywhere afterwards.
fn secret() -> String {
    unique("hub-token-secret")
}

fn refusal(e: &tonic::Status) -> (Code, String) {
    let info = tonic_types::StatusExt::get_details_error_info(e).expect("a reason");
    (e.code(), info.reason)
}

/// Every container (running or not) of `user` on `node`.
fn containers_of(user: &str, node: &str) -> Vec<String> {
    docker(&[
        "ps",
        "-aq",
        "--filter",
        &format!("label=berth.user={user}"),
        "--filter",
        &format!("label=berth.node={node}"),
    ])
    .split_whitespace()
    .map(str::to_owned)
    .collect()
}

/// Every file under `dir` whose bytes contain `needle`.
fn files_holding(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for e in entries.flatten() {
        let p = e.path();
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if meta.is_dir() {
            found.extend(files_holding(&p, needle));
        } else if meta.is_file()
            && let Ok(bytes) = std::fs::read(&p)
            && bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
        {
            found.push(p);
        }
    }
    found
}

/// The client's deadline passed (tonic's own timer says Cancelled, the server's
/// DeadlineExceeded).
fn gave_up(e: &tonic::Status) -> bool {
    matches!(e.code(), Code::Cancelled | Code::DeadlineExceeded)
}

fn config(tag: &str, toml: &str) -> PathBuf {
    let dir = common::temp_dir(tag);
    common::write_file(&dir, "config.toml", toml)
}

/// A root-owned device node under /dev for a device class, removed on drop.
struct FakeGpu(PathBuf);

impl FakeGpu {
    fn make() -> Self {
        let dir = PathBuf::from("/dev").join(unique("berth-fgpu"));
        std::fs::create_dir(&dir).expect("these tests run as root (mknod under /dev)");
        let node = dir.join("gpu0");
        let ok = Command::new("mknod")
            .arg(&node)
            .args(["c", "1", "3"])
            .status()
            .unwrap()
            .success();
        assert!(ok, "mknod {}", node.display());
        Self(dir)
    }
}

impl Drop for FakeGpu {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn committed(c: &mut SpawnerClient<Channel>, class: &str) -> u32 {
    let cap = c
        .capacity(pb::CapacityRequest {})
        .await
        .unwrap()
        .into_inner();
    cap.devices
        .into_iter()
        .find(|d| d.class == class)
        .unwrap()
        .committed
}

/// Item 1 of the issue: the nvidia driver on an engine without it. Docker refuses the start;
/// the container goes, and the device with it, at once and after a SIGKILL.
#[tokio::test]
async fn a_start_docker_refuses_frees_its_device() {
    let gpu = FakeGpu::make();
    let toml = format!(
        "[[devices.classes]]\nname = \"gpu\"\npass = \"nvidia\"\n\
         [[devices.classes.devices]]\nid = \"0\"\npaths = [\"{}/gpu0\"]\nmodel = \"FakeGPU\"\n",
        gpu.0.display()
    );
    let mut d = Daemon::start_with(&["--config", config("refused", &toml).to_str().unwrap()]);
    let mut c = d.client().await;
    let user = unique("refused");
    let mut req = tiny_start(&user, "s1");
    req.resources = Some(pb::Resources {
        gpus: 1,
        ..Default::default()
    });
    let err = c.start(req.clone()).await.unwrap_err();
    assert_eq!(
        refusal(&err),
        (Code::FailedPrecondition, "START_REFUSED".to_owned()),
        "{err:?}"
    );
    assert!(
        containers_of(&user, &d.node_id).is_empty(),
        "the refused container is removed"
    );
    assert_eq!(committed(&mut c, "gpu").await, 0, "the device is free");
    let st = poll(&c, &user, "").await;
    assert_eq!(common::state(&st), pb::server_status::State::Absent);
    assert_eq!(st.exit_code, None, "it never ran: no exit code");
    // What berthspawner sends after a failed start: succeeds, changes nothing.
    stop_as(&c, &user, "", Stop::Now).await.unwrap();
    // A second refusal does not add up either.
    req.spawn_id = "s2".into();
    assert!(c.start(req).await.is_err());
    assert_eq!(committed(&mut c, "gpu").await, 0);
    d.kill9();
    d.respawn();
    let mut c = d.client().await;
    assert_eq!(
        committed(&mut c, "gpu").await,
        0,
        "free after a restart too"
    );
    drop(gpu);
}

/// An image holding only a static busybox, not at /bin/sh: a kept server's wrapper cannot run.
fn image_without_shell() -> String {
    let reference = "berth-test/noshell:latest";
    let have = Command::new("docker")
        .args(["image", "inspect", reference])
        .output()
        .unwrap()
        .status
        .success();
    if !have {
        let dir = common::temp_dir("noshell");
        std::fs::create_dir_all(dir.join("www")).unwrap();
        std::fs::copy("/bin/busybox", dir.join("busybox"))
            .expect("busybox-static is installed (tests/run-all installs it)");
        std::fs::write(dir.join("www/index.html"), "ok").unwrap();
        let tar = Command::new("tar")
            .args(["-C", dir.to_str().unwrap(), "-cf", "-", "."])
            .output()
            .unwrap();
        let mut import = Command::new("docker")
            .args([
                "import",
                "--change",
                r#"CMD ["/busybox", "httpd", "-f", "-p", "8888", "-h", "/www"]"#,
                "-",
                reference,
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        use std::io::Write;
        import.stdin.take().unwrap().write_all(&tar.stdout).unwrap();
        assert!(import.wait().unwrap().success(), "docker import");
    }
    reference.to_owned()
}

/// Item 2: `remove = false` with an image without /bin/sh. The start fails, naming the
/// cause; afterwards the hub's token is in no container, no file of berthd, no log line.
#[tokio::test]
async fn a_failed_kept_start_leaves_no_token_and_names_the_shell() {
    let image = image_without_shell();
    let d = Daemon::start();
    let mut c = d.client().await;
    let user = unique("noshell");
    let token = secret();
    let mut req = tiny_start(&user, "s1");
    req.image = image;
    req.resumable = true;
    req.ready_timeout_seconds = 10;
    req.env.insert("JUPYTERHUB_API_TOKEN".into(), token.clone());
    req.env.insert(
        "JUPYTERHUB_OAUTH_CLIENT_ALLOWED_SCOPES".into(),
        token.clone(),
    );
    let err = c.start(req.clone()).await.unwrap_err();
    assert!(
        err.message().contains("/bin/sh"),
        "the error names the cause: {err:?}"
    );
    assert!(
        containers_of(&user, &d.node_id).is_empty(),
        "the failed start's container is removed"
    );
    assert!(
        files_holding(&d.state_dir, &token).is_empty(),
        "the token is in berthd's state dir"
    );
    assert!(
        !d.log_text().contains(&token),
        "the token is in berthd's log"
    );
    // Every later Start fails the same way and still leaves nothing.
    req.spawn_id = "s2".into();
    assert!(c.start(req).await.is_err());
    assert!(containers_of(&user, &d.node_id).is_empty());
}

/// Item 3: a Start whose caller's deadline passes during a throttled pull is cancelled once
/// the grace passes without a retry: the pull stops and no container is made.
#[tokio::test]
async fn a_start_whose_caller_gave_up_makes_nothing() {
    let reg = Registry::start(None);
    // Two 4 MiB layers through 1 MB/s: about 8 s of pull.
    let image = push_test_image(&reg, 2, 4);
    let slow = SlowProxy::start(reg.port, 1_000_000).await;
    let reference = slow.reference(&image);
    let d = Daemon::start_with(&["--spawn-abandon-grace-seconds", "1"]);
    let mut c = d.client().await;
    let user = unique("gaveup");
    let mut req = tiny_start(&user, "s1");
    req.image = reference.clone();
    req.pull_policy = pb::PullPolicy::Always.into();
    let mut call = tonic::Request::new(req);
    call.set_timeout(Duration::from_secs(3));
    let err = c.start(call).await.unwrap_err();
    assert!(gave_up(&err), "{err:?}");
    // The grace (1 s) passes: the spawn is cancelled and ends with nothing.
    let ended = common::wait_for_state(
        &c,
        &user,
        "",
        pb::server_status::State::Absent,
        Duration::from_secs(5),
    )
    .await;
    assert!(ended.is_some(), "still starting:\n{}", d.log_text());
    assert!(
        d.log_text().contains("no retry came"),
        "the log says why:\n{}",
        d.log_text()
    );
    // Long after the pull would have finished: no container, and the image never arrived.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(containers_of(&user, &d.node_id).is_empty());
    let pulled = Command::new("docker")
        .args(["image", "inspect", &reference])
        .output()
        .unwrap()
        .status
        .success();
    assert!(!pulled, "the pull went on after the spawn was given up");
    remove_local(&reference);
}

/// A retry with the same spawn id within the grace joins the spawn: it is not cancelled.
#[tokio::test]
async fn a_retry_within_the_grace_joins_the_spawn() {
    let d = Daemon::start_with(&["--spawn-abandon-grace-seconds", "5"]);
    let mut c = d.client().await;
    let user = unique("retry");
    // A server that takes 3 s to answer; a deadline of 300 ms cuts the first call.
    let mut req = tiny_start(&user, "s1");
    req.cmd = vec![
        "/bin/sh".into(),
        "-c".into(),
        "sleep 3; exec /bin/httpd -f -p 8888 -h /www".into(),
    ];
    let mut call = tonic::Request::new(req.clone());
    call.set_timeout(Duration::from_millis(300));
    let err = c.start(call).await.unwrap_err();
    assert!(gave_up(&err), "{err:?}");
    // The retry (same spawn id) arrives within the grace and gets the spawn's own answer.
    let ok = c.start(req).await;
    let ok = ok.unwrap_or_else(|e| panic!("the retry did not join: {e:?}\n{}", d.log_text()));
    assert_eq!(ok.into_inner().spawn_id, "s1");
    assert_eq!(containers_of(&user, &d.node_id).len(), 1);
    assert!(!d.log_text().contains("no retry came"));
}

/// Item 4 and item 5: a `docker update` between two spawns of a kept server makes the next
/// Start recreate it, naming the change; an omitted `pids_limit` and `user` get the node's
/// bounds.
#[tokio::test]
async fn a_hand_update_between_spawns_recreates_and_bounds_apply_when_omitted() {
    let toml = "[policy.container_options]\nmin_uid = 1000\nmax_pids_limit = 500\n";
    let d = Daemon::start_with(&["--config", config("bounds", toml).to_str().unwrap()]);
    let mut c = d.client().await;
    let user = unique("update");
    let mut req = tiny_start(&user, "s1");
    req.resumable = true;
    let first = c.start(req.clone()).await.unwrap().into_inner();
    let inspect = |id: &str, what: &str| docker(&["inspect", "--format", what, id]);
    assert_eq!(
        inspect(&first.container_id, "{{.HostConfig.PidsLimit}}"),
        "500",
        "an omitted pids_limit gets max_pids_limit"
    );
    assert_eq!(
        inspect(&first.container_id, "{{.Config.User}}"),
        "1000",
        "an omitted user gets min_uid"
    );
    stop_as(&c, &user, "", Stop::Now).await.unwrap();

    // Unchanged: resumed.
    req.spawn_id = "s2".into();
    let again = c.start(req.clone()).await.unwrap().into_inner();
    assert_eq!(again.container_id, first.container_id, "{}", again.note);
    stop_as(&c, &user, "", Stop::Now).await.unwrap();

    // By hand, above the node's bound: the next Start does not resume it.
    docker(&["update", "--pids-limit", "7777", &first.container_id]);
    assert_eq!(
        inspect(&first.container_id, "{{.HostConfig.PidsLimit}}"),
        "7777"
    );
    req.spawn_id = "s3".into();
    let third = c.start(req).await.unwrap().into_inner();
    assert_ne!(third.container_id, first.container_id, "recreated");
    assert!(
        third.note.contains("pids_limit changed outside berth"),
        "the reason is named: {:?}",
        third.note
    );
    assert_eq!(
        inspect(&third.container_id, "{{.HostConfig.PidsLimit}}"),
        "500"
    );
    stop_as(&c, &user, "", Stop::Remove).await.unwrap();
    let _ = key(&user, "");
}
