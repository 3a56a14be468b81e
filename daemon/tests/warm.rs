//! Warm pools against a real dockerd and the real berthd binary: a Start takes a container
//! booted ahead, with its volume mounted after the fact and its identity sent on stdin; a pool
//! container holds no secret and no user file before its claim; a berthd killed at each step
//! of a claim never leaves a container shared, leaked or handed to a second user.
//!
//! The tiny image's HTTP server serves `/www`: a user's volume mounted at `/www/files` shows
//! through the server's own URL.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::time::Duration;

use berth_proto::v1 as pb;
use common::{Daemon, TINY, docker, eventually, http_get, poll, tiny_start, unique};

const SECRET: &str = "warm-secret-token-4711";

fn pool_config(dir: &std::path::Path, size: u32) -> std::path::PathBuf {
    common::write_file(
        dir,
        "config.toml",
        &format!(
            "[[warm.pools]]\nimage = \"{TINY}\"\nsize = {size}\nlauncher = \"shell\"\nmemory_bytes = \"8M\"\n"
        ),
    )
}

fn warm_daemon(size: u32, env: &[(&str, &str)]) -> (Daemon, std::path::PathBuf) {
    let dir = common::temp_dir("warm-config");
    let config = pool_config(&dir, size);
    let d = Daemon::start_with_env(&["--config", config.to_str().unwrap()], env);
    (d, dir)
}

/// The node's warm pool of the tiny image, once it reports `ready` members.
async fn ready(d: &Daemon, want: u32) -> pb::WarmPool {
    let got = eventually(Duration::from_secs(60), || async {
        let cap = d
            .client()
            .await
            .capacity(pb::CapacityRequest {})
            .await
            .ok()?
            .into_inner();
        cap.warm.into_iter().find(|w| w.ready == want)
    })
    .await;
    got.unwrap_or_else(|| panic!("the pool never had {want} ready; log:\n{}", d.log_text()))
}

/// Names of this daemon's containers that are still warm (unclaimed).
fn warm_members(d: &Daemon) -> Vec<String> {
    d.containers()
        .into_iter()
        .filter(|id| {
            docker(&["inspect", "-f", "{{.Name}}", id])
                .trim()
                .starts_with("/berthwarm-")
        })
        .collect()
}

fn start_with_volume(user: &str, spawn: &str, volume: &str) -> pb::StartRequest {
    let mut req = tiny_start(user, spawn);
    req.env.insert("JUPYTERHUB_API_TOKEN".into(), SECRET.into());
    req.volumes.push(pb::Volume {
        source: volume.to_owned(),
        target: "/www/files".to_owned(),
        ..Default::default()
    });
    req
}

/// The environment of the server process inside container `id` (the launcher exec'd it).
fn server_env(id: &str) -> String {
    docker(&[
        "exec",
        id,
        "sh",
        "-c",
        "tr '\\0' '\\n' < /proc/$(pidof httpd)/environ",
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_claims_a_warm_container_with_its_volume_and_identity() {
    let (d, dir) = warm_daemon(2, &[]);
    ready(&d, 2).await;
    let members = warm_members(&d);
    assert_eq!(members.len(), 2, "two warm containers: {members:?}");
    for m in &members {
        let env = docker(&["inspect", "-f", "{{json .Config.Env}}", m]);
        assert!(
            !env.contains("JUPYTERHUB"),
            "a pool container holds no hub variable: {env}"
        );
        let mounts = docker(&["inspect", "-f", "{{json .Mounts}}", m]);
        assert_eq!(mounts.trim(), "[]", "a pool container mounts nothing");
    }
    let user = unique("warmu");
    let vol = unique("warmvol");
    docker(&["volume", "create", &vol]);
    docker(&[
        "run",
        "--rm",
        "-v",
        &format!("{vol}:/v"),
        TINY,
        "sh",
        "-c",
        "echo hello-from-the-volume > /v/f",
    ]);

    let c = d.client().await;
    let began = std::time::Instant::now();
    let started = c
        .clone()
        .start(start_with_volume(&user, "s1", &vol))
        .await
        .expect("the warm start succeeds")
        .into_inner();
    let took = began.elapsed();
    assert!(
        members.contains(&started.container_id),
        "the server is one of the warm containers; log:\n{}",
        d.log_text()
    );
    let name = docker(&["inspect", "-f", "{{.Name}}", &started.container_id]);
    assert_eq!(
        name.trim(),
        format!(
            "/{}",
            berthd::key::ServerKey::new(&user, "")
                .unwrap()
                .container_name()
        )
    );
    let (code, body) = http_get(&format!("{}/files/f", started.url)).await;
    assert_eq!(code, 200);
    assert!(
        body.trim_end().ends_with("\r\n\r\nhello-from-the-volume"),
        "the volume is there: {body}"
    );
    docker(&[
        "exec",
        &started.container_id,
        "sh",
        "-c",
        "echo from-the-server > /www/files/g",
    ]);
    let back = docker(&[
        "run",
        "--rm",
        "-v",
        &format!("{vol}:/v"),
        TINY,
        "cat",
        "/v/g",
    ]);
    assert_eq!(back.trim(), "from-the-server", "writes reach the volume");
    let env = server_env(&started.container_id);
    assert!(
        env.contains(&format!("JUPYTERHUB_API_TOKEN={SECRET}")),
        "the server has its identity: {env}"
    );
    let config_env = docker(&[
        "inspect",
        "-f",
        "{{json .Config.Env}}",
        &started.container_id,
    ]);
    assert!(
        !config_env.contains(SECRET),
        "the token is in no container config"
    );
    let claim = d
        .state_dir
        .join("claims")
        .join(format!("{}.json", started.container_id));
    let claim_text = std::fs::read_to_string(&claim).expect("a claim file");
    assert!(
        !claim_text.contains(SECRET),
        "the claim file holds no secret"
    );
    assert!(!d.log_text().contains(SECRET), "the log holds no secret");
    eprintln!("warm start answered in {took:?}");

    let status = poll(&c, &user, "").await;
    assert_eq!(common::state(&status), pb::server_status::State::Running);
    assert_eq!(status.container_id, started.container_id);
    // Docker knows nothing of the grafted volume; berthd does.
    let rm = c
        .clone()
        .remove_volume(pb::RemoveVolumeRequest { name: vol.clone() })
        .await;
    assert!(
        rm.is_err(),
        "a volume a claimed server uses cannot be removed: {rm:?}"
    );

    // The pool makes a new member in the background.
    ready(&d, 2).await;
    let now = warm_members(&d);
    assert!(
        !now.contains(&started.container_id),
        "a claimed container never returns"
    );

    common::stop_remove(&c, &user).await;
    assert!(
        docker(&[
            "ps",
            "-aq",
            "--filter",
            &format!("id={}", started.container_id)
        ])
        .trim()
        .is_empty()
    );
    assert!(!claim.exists(), "the claim file goes with its container");
    docker(&["volume", "rm", &vol]);
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_that_cannot_be_warm_starts_cold_and_leaves_the_pool() {
    let (d, dir) = warm_daemon(1, &[]);
    ready(&d, 1).await;
    let members = warm_members(&d);
    let user = unique("coldu");
    let mut req = tiny_start(&user, "s1");
    req.resumable = true;
    let c = d.client().await;
    let started = c.clone().start(req).await.expect("cold start").into_inner();
    assert!(
        !members.contains(&started.container_id),
        "a kept server is never a warm one"
    );
    assert_eq!(warm_members(&d), members, "the pool is untouched");
    common::stop_remove(&c, &user).await;
    std::fs::remove_dir_all(dir).ok();
}

/// berthd SIGKILLed at each step of a claim: after the restart the member taken is either
/// gone or the server of the user who claimed it, never waiting in the pool; the user starts
/// again, and another user gets another container.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_berthd_killed_mid_claim_never_hands_the_container_to_another_user() {
    for step in [
        "claim.claimed",
        "claim.recorded",
        "claim.renamed",
        "claim.grafted",
        "claim.sent",
    ] {
        let (mut d, dir) = warm_daemon(1, &[("BERTHD_TEST_CRASH_AT", step)]);
        ready(&d, 1).await;
        let member = warm_members(&d).pop().expect("one member");
        let user = unique("crashu");
        let vol = unique("crashvol");
        let c = d.client().await;
        let r = c.clone().start(start_with_volume(&user, "s1", &vol)).await;
        assert!(
            r.is_err(),
            "{step}: the Start dies with berthd; log:\n{}",
            d.log_text()
        );
        assert!(
            d.wait_exit(Duration::from_secs(10)).is_some(),
            "{step}: berthd was killed"
        );
        d.set_env(&[]);
        d.respawn();
        let c = d.client().await;
        // Give the keeper its first pass (adoption happens before the first refill).
        ready(&d, 1).await;
        let members = warm_members(&d);
        assert!(
            !members.contains(&member),
            "{step}: the claimed container is not back in the pool"
        );
        let name = docker(&[
            "ps",
            "-a",
            "--filter",
            &format!("id={member}"),
            "--format",
            "{{.Names}}",
        ]);
        let name = name.trim();
        assert!(
            name.is_empty()
                || name
                    == berthd::key::ServerKey::new(&user, "")
                        .unwrap()
                        .container_name(),
            "{step}: the container is gone or the user's: {name:?}"
        );
        // Another user takes a warm container: never the crashed one.
        let other = unique("otheru");
        let mut req = tiny_start(&other, "o1");
        req.env
            .insert("JUPYTERHUB_API_TOKEN".into(), "other-token".into());
        let o = c
            .clone()
            .start(req)
            .await
            .expect("another user starts")
            .into_inner();
        assert_ne!(
            o.container_id, member,
            "{step}: never handed to a second user"
        );
        // The user who was claiming starts again.
        let again = c
            .clone()
            .start(start_with_volume(&user, "s2", &vol))
            .await
            .unwrap_or_else(|e| {
                panic!("{step}: the user starts again: {e}; log:\n{}", d.log_text())
            })
            .into_inner();
        let (code, _) = http_get(&again.url).await;
        assert_eq!(code, 200, "{step}");
        if again.container_id == member {
            let env = server_env(&member);
            assert!(!env.contains("other-token"), "{step}");
        }
        common::stop_remove(&c, &user).await;
        common::stop_remove(&c, &other).await;
        drop(d);
        docker(&["volume", "rm", "-f", &vol]);
        std::fs::remove_dir_all(dir).ok();
    }
}

/// The hub's Warm: a pool's size set at run time (over the config's), filled, kept across a
/// restart; an image the policy does not allow is refused, naming the rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hub_sets_a_pool_size_that_survives_a_restart_and_the_policy_holds() {
    let dir = common::temp_dir("warm-config");
    let config = common::write_file(
        &dir,
        "config.toml",
        &format!(
            "[policy]\nallowed_images = [\"{TINY}\"]\n\n[[warm.pools]]\nimage = \"{TINY}\"\nsize = 0\nlauncher = \"shell\"\n"
        ),
    );
    let mut d = Daemon::start_with(&["--config", config.to_str().unwrap()]);
    let c = d.client().await;
    let w = c
        .clone()
        .warm(pb::WarmRequest {
            image: TINY.to_owned(),
            size: 2,
            ..Default::default()
        })
        .await
        .expect("Warm")
        .into_inner();
    assert_eq!((w.size, w.port), (2, 8888));
    ready(&d, 2).await;
    let refused = c
        .clone()
        .warm(pb::WarmRequest {
            image: "docker.io/library/other:1".to_owned(),
            size: 1,
            ..Default::default()
        })
        .await
        .expect_err("not allowed");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    assert!(
        refused.message().contains("allowed_images"),
        "{}",
        refused.message()
    );
    let too_many = c
        .clone()
        .warm(pb::WarmRequest {
            image: TINY.to_owned(),
            size: 100_000,
            ..Default::default()
        })
        .await
        .expect_err("too many");
    assert_eq!(too_many.code(), tonic::Code::InvalidArgument);

    d.kill9();
    d.respawn();
    let pool = ready(&d, 2).await;
    assert_eq!(pool.size, 2, "the hub's size outlives a restart");
    assert_eq!(
        warm_members(&d).len(),
        2,
        "the members of the earlier run wait again"
    );
    std::fs::remove_dir_all(dir).ok();
}

/// A draining node makes no new warm server (no create-and-remove at every tick), and makes
/// them again once undrained.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_node_makes_no_warm_servers() {
    let (d, dir) = warm_daemon(1, &[]);
    ready(&d, 1).await;
    let mut admin = common::admin(&d.state_dir.join("admin.sock")).await;
    admin
        .drain(pb::DrainRequest {
            reason: "maintenance".into(),
        })
        .await
        .expect("drain");
    let c = d.client().await;
    c.clone()
        .warm(pb::WarmRequest {
            image: TINY.to_owned(),
            size: 3,
            ..Default::default()
        })
        .await
        .expect("Warm while draining is taken");
    let made = |d: &Daemon| d.log_text().matches("warm container started").count();
    let before = made(&d);
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(made(&d), before, "nothing made while draining");
    assert!(
        !d.log_text().contains("no room for another warm container"),
        "no container made and removed again while draining"
    );
    assert_eq!(warm_members(&d).len(), 1);
    admin
        .undrain(pb::DrainRequest::default())
        .await
        .expect("undrain");
    ready(&d, 3).await;
    std::fs::remove_dir_all(dir).ok();
}

/// The claim files berthd keeps.
fn claim_files(d: &Daemon) -> Vec<String> {
    std::fs::read_dir(d.state_dir.join("claims"))
        .map(|r| {
            r.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".json"))
                .collect()
        })
        .unwrap_or_default()
}

fn exists(id: &str) -> bool {
    !docker(&["ps", "-aq", "--filter", &format!("id={id}")])
        .trim()
        .is_empty()
}

/// A claim refused half-way (the volume's target lies beneath a file of the image, so it
/// cannot be mounted: after the claim file, the record and the rename) removes the member and
/// undoes the claim: the Start fails as a cold one would (Docker refuses the same mount), no
/// claim file is left, and the pool's next member serves the user's next Start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_refused_half_way_removes_the_member_and_undoes_the_claim() {
    let (d, dir) = warm_daemon(1, &[]);
    ready(&d, 1).await;
    let member = warm_members(&d).pop().expect("one member");
    let user = unique("refusedu");
    let vol = unique("refusedvol");
    let mut req = start_with_volume(&user, "s1", &vol);
    req.volumes[0].target = "/www/index.html/files".into();
    let c = d.client().await;
    let err = c
        .clone()
        .start(req)
        .await
        .expect_err("nothing can be mounted beneath a file");
    assert!(
        err.message().contains("not a directory"),
        "the reason: {}",
        err.message()
    );
    let log = d.log_text();
    assert!(
        log.contains("claim failed; the warm container is removed"),
        "the claim was tried and failed:\n{log}"
    );
    assert!(!exists(&member), "the member is removed");
    assert!(claim_files(&d).is_empty(), "no claim is left");
    let status = poll(&c, &user, "").await;
    assert_eq!(common::state(&status), pb::server_status::State::Absent);
    ready(&d, 1).await;
    let next = warm_members(&d).pop().expect("a new member");
    assert_ne!(next, member);
    let started = c
        .clone()
        .start(start_with_volume(&user, "s2", &vol))
        .await
        .unwrap_or_else(|e| panic!("{e}; log:\n{}", d.log_text()))
        .into_inner();
    assert_eq!(
        started.container_id, next,
        "the next member serves the user"
    );
    common::stop_remove(&c, &user).await;
    docker(&["volume", "rm", "-f", &vol]);
    std::fs::remove_dir_all(dir).ok();
}

/// A claimed server the hub gave up on (its Start call cut, no retry within the grace) is
/// removed as a cold one would be, with its claim: it neither runs on for nobody nor returns
/// to the pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_the_hub_gave_up_on_leaves_no_server_and_no_claim() {
    let dir = common::temp_dir("warm-config");
    let config = common::write_file(
        &dir,
        "config.toml",
        &format!(
            "[spawn]\nabandon_grace_seconds = 1\n\n[[warm.pools]]\nimage = \"{TINY}\"\nsize = 1\nlauncher = \"shell\"\nmemory_bytes = \"8M\"\n"
        ),
    );
    let d = Daemon::start_with(&["--config", config.to_str().unwrap()]);
    ready(&d, 1).await;
    let member = warm_members(&d).pop().expect("one member");
    let user = unique("gaveupu");
    let mut req = tiny_start(&user, "s1");
    // A server that never answers: the claim is done, the readiness wait is not.
    req.cmd = vec!["sleep".into(), "600".into()];
    req.ready_timeout_seconds = 300;
    let mut call = tonic::Request::new(req);
    call.set_timeout(Duration::from_secs(3));
    let mut c = d.client().await;
    let err = c.start(call).await.expect_err("the hub gives up");
    assert!(
        matches!(
            err.code(),
            tonic::Code::Cancelled | tonic::Code::DeadlineExceeded
        ),
        "{err:?}"
    );
    let ended = common::wait_for_state(
        &c,
        &user,
        "",
        pb::server_status::State::Absent,
        Duration::from_secs(20),
    )
    .await;
    let log = d.log_text();
    assert!(ended.is_some(), "still starting:\n{log}");
    assert!(
        log.contains("warm container claimed"),
        "it was claimed:\n{log}"
    );
    assert!(log.contains("no retry came"), "the log says why:\n{log}");
    assert!(!exists(&member), "the claimed container is removed");
    assert!(claim_files(&d).is_empty(), "no claim is left");
    ready(&d, 1).await;
    assert!(!warm_members(&d).contains(&member), "it never returns");
    std::fs::remove_dir_all(dir).ok();
}
