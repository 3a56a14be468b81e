//! dockerd restarted under a running berthd: the monitor reconnects and Poll converges.
//! This restarts the machine's Docker engine, which stops every container on it; it lives in
//! its own test binary so no other suite runs beside it (cargo runs test binaries one by one).
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth_proto::v1::server_status::State;
use common::*;

fn docker_answers() -> bool {
    Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(
            t0.elapsed() < limit,
            "{what} did not happen within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Restarts dockerd the way it runs here: through systemd when it manages docker, else by
/// signalling the process and starting it again with the same command line.
fn restart_dockerd() {
    let systemd = Command::new("systemctl")
        .args(["is-active", "--quiet", "docker"])
        .status()
        .is_ok_and(|s| s.success());
    if systemd {
        assert!(
            Command::new("systemctl")
                .args(["restart", "docker"])
                .status()
                .unwrap()
                .success()
        );
    } else {
        let pid = String::from_utf8(
            Command::new("pgrep")
                .args(["-x", "dockerd"])
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap()
        .trim()
        .to_owned();
        assert!(!pid.is_empty(), "no dockerd process to restart");
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        let argv: Vec<String> = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        wait_for("dockerd exit", Duration::from_secs(60), || {
            !std::path::Path::new(&format!("/proc/{pid}")).exists()
        });
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open("/var/log/berth-dockerd.log")
            .unwrap();
        Command::new("setsid")
            .arg("-f")
            .args(&argv)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .status()
            .unwrap();
    }
    wait_for(
        "dockerd to answer again",
        Duration::from_secs(60),
        docker_answers,
    );
}

#[tokio::test]
async fn after_a_dockerd_restart_the_monitor_reconnects_and_poll_converges() {
    let d = Daemon::start();
    let mut c = d.client().await;
    let users = [unique("dr1"), unique("dr2")];
    let mut ids = Vec::new();
    for u in &users {
        ids.push(
            c.start(tiny_start(u, "s"))
                .await
                .unwrap()
                .into_inner()
                .container_id,
        );
    }

    restart_dockerd();
    let back = Instant::now();
    // The truth: what Docker now says of each container (without live-restore they stopped).
    for (u, id) in users.iter().zip(&ids) {
        let truth = docker(&[
            "inspect",
            "--format",
            "{{.State.Status}} {{.State.ExitCode}}",
            id,
        ]);
        let want = if truth.starts_with("running") {
            State::Running
        } else {
            State::Exited
        };
        let got = wait_for_state(&c, u, "", want, Duration::from_secs(5)).await;
        assert!(
            got.is_some(),
            "{u}: Poll did not converge to Docker's {truth:?} within 5 s"
        );
    }
    eprintln!(
        "converged {:?} after dockerd answered again",
        back.elapsed()
    );

    // The event stream is live again: a new server killed from outside is seen at once.
    let fresh = unique("dr3");
    let r = c.start(tiny_start(&fresh, "s")).await.unwrap().into_inner();
    docker(&["kill", &r.container_id]);
    let seen = wait_for_state(&c, &fresh, "", State::Exited, Duration::from_secs(5))
        .await
        .expect("exit after the restart seen through the new event stream");
    assert_eq!(seen.exit_code, Some(137));
    assert!(
        d.log_text().contains("Docker event stream lost"),
        "the loss was logged"
    );
}
