//! systemd notifications from the real berthd binary to a datagram socket the test owns:
//! READY=1 only once Docker answered and the gRPC port accepts, STATUS=, STOPPING=1 on
//! SIGTERM, and watchdog pings at half of `WATCHDOG_USEC` that stop when the monitor loop is
//! wedged (test hook of the `test-util` build).
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use berth_proto::v1 as pb;
use common::*;

/// The socket systemd would own; each datagram with the time it arrived.
struct NotifySocket {
    sock: UnixDatagram,
}

impl NotifySocket {
    fn bind_path(path: &Path) -> Self {
        let sock = UnixDatagram::bind(path).unwrap();
        Self { sock }
    }

    fn bind_abstract(name: &str) -> Self {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let sock = UnixDatagram::bind_addr(&addr).unwrap();
        Self { sock }
    }

    /// The next message, or `None` after `timeout`.
    fn recv(&self, timeout: Duration) -> Option<String> {
        self.sock
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))
            .unwrap();
        let mut buf = [0u8; 4096];
        match self.sock.recv(&mut buf) {
            Ok(n) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(_) => None,
        }
    }

    /// Every message until `deadline`, each with when it arrived.
    fn collect_until(&self, deadline: Instant) -> Vec<(Instant, String)> {
        let mut out = Vec::new();
        loop {
            let now = Instant::now();
            if now >= deadline {
                return out;
            }
            if let Some(m) = self.recv(deadline - now) {
                out.push((Instant::now(), m));
            }
        }
    }

    /// Waits for a message with `line` among its lines; the messages before it are returned too.
    fn wait_for(&self, line: &str, timeout: Duration) -> (Option<String>, Vec<String>) {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            if let Some(m) = self.recv(deadline - Instant::now()) {
                if m.lines().any(|l| l == line) {
                    return (Some(m), seen);
                }
                seen.push(m);
            }
        }
        (None, seen)
    }
}

/// A stand-in for `/var/run/docker.sock` at `path` that forwards to the real engine: Docker
/// "comes up" when the test says so.
fn docker_proxy(path: &Path) {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(client) = conn else { return };
            let Ok(engine) = UnixStream::connect("/var/run/docker.sock") else {
                return;
            };
            let (mut c1, mut e1) = (client.try_clone().unwrap(), engine.try_clone().unwrap());
            let (mut c2, mut e2) = (client, engine);
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut c1, &mut e1);
                let _ = e1.shutdown(std::net::Shutdown::Write);
            });
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut e2, &mut c2);
                let _ = c2.shutdown(std::net::Shutdown::Write);
            });
        }
    });
}

fn sigterm(pid: u32) {
    let ok = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -TERM {pid}");
}

async fn answers(d: &Daemon) -> bool {
    let Ok(mut c) =
        berth_proto::v1::spawner_client::SpawnerClient::connect(format!("http://{}", d.addr)).await
    else {
        return false;
    };
    c.list(pb::ListRequest::default()).await.is_ok()
}

#[tokio::test]
async fn ready_only_once_docker_answers_and_the_port_accepts_then_stopping_on_sigterm() {
    let dir = temp_dir("notify");
    let notify_path = dir.join("notify.sock");
    let docker_path = dir.join("docker.sock");
    let notify = NotifySocket::bind_path(&notify_path);
    let docker_host = format!("unix://{}", docker_path.display());
    let admin = dir.join("admin.sock");
    // A socket file nobody listens on: connections are refused, as with a stopped dockerd.
    drop(UnixListener::bind(&docker_path).unwrap());
    // Docker is not there yet: berthd binds and serves (health NOT_SERVING) but is not ready.
    let mut d = Daemon::start_with_env(
        &[
            "--docker-host",
            &docker_host,
            "--admin-socket",
            admin.to_str().unwrap(),
        ],
        &[("NOTIFY_SOCKET", notify_path.to_str().unwrap())],
    );
    // The harness returned once berthd logged its bound address: the port accepts now.
    assert!(
        std::net::TcpStream::connect(d.addr).is_ok(),
        "the gRPC port accepts"
    );
    let before = notify.collect_until(Instant::now() + Duration::from_secs(3));
    assert!(
        before
            .iter()
            .all(|(_, m)| !m.lines().any(|l| l == "READY=1")),
        "READY=1 before Docker answered: {before:?}"
    );
    assert!(
        before
            .iter()
            .any(|(_, m)| m.starts_with("STATUS=") && m.contains("Docker DOWN")),
        "a STATUS= line says Docker is down: {before:?}\n{}",
        d.log_text()
    );

    docker_proxy(&docker_path);
    let (ready, _) = notify.wait_for("READY=1", Duration::from_secs(30));
    let ready =
        ready.unwrap_or_else(|| panic!("no READY=1 once Docker answered:\n{}", d.log_text()));
    assert!(
        ready.contains("STATUS=0 servers (0 running), Docker up, accepting servers"),
        "READY carries the status line: {ready:?}"
    );
    assert!(answers(&d).await, "berthd answers gRPC once READY=1 came");

    sigterm(d.pid());
    let (stopping, _) = notify.wait_for("STOPPING=1", Duration::from_secs(10));
    assert!(
        stopping.is_some(),
        "STOPPING=1 on SIGTERM:\n{}",
        d.log_text()
    );
    let status = d
        .wait_exit(Duration::from_secs(30))
        .expect("berthd exits after SIGTERM");
    assert!(status.success(), "clean exit after SIGTERM: {status:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn watchdog_pings_at_half_the_period_and_stop_when_the_monitor_loop_wedges() {
    let name = unique("berth-notify");
    let notify = NotifySocket::bind_abstract(&name);
    let dir = temp_dir("watchdog");
    let admin = dir.join("admin.sock");
    // WATCHDOG_USEC of 1 s: a ping every 0.5 s. The loop wedges itself 6 s after it starts.
    let d = Daemon::start_with_env(
        &["--admin-socket", admin.to_str().unwrap()],
        &[
            ("NOTIFY_SOCKET", &format!("@{name}")),
            ("WATCHDOG_USEC", "1000000"),
            ("BERTH_TEST_WEDGE_MONITOR_AFTER_MS", "6000"),
        ],
    );
    let (ready, _) = notify.wait_for("READY=1", Duration::from_secs(30));
    assert!(
        ready.is_some(),
        "READY=1 on the abstract socket:\n{}",
        d.log_text()
    );

    // Pings before the wedge: at the rate asked, never faster.
    let window = Duration::from_secs(4);
    let got = notify.collect_until(Instant::now() + window);
    let pings: Vec<Instant> = got
        .iter()
        .filter(|(_, m)| m == "WATCHDOG=1")
        .map(|(t, _)| *t)
        .collect();
    // 4 s at one ping per 0.5 s is 8; a loaded machine delays some, none come early.
    assert!(
        (5..=10).contains(&pings.len()),
        "{} pings in {window:?} (expected about 8): {got:?}",
        pings.len()
    );
    let gaps: Vec<Duration> = pings.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps.iter().all(|g| *g >= Duration::from_millis(350)),
        "pings come at half the period, not faster: {gaps:?}"
    );

    // The wedge: the pings stop while the rest of berthd still answers.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !d.log_text().contains("the monitor loop is wedged") {
        assert!(
            Instant::now() < deadline,
            "the test hook did not wedge the loop:\n{}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Drop what was queued before the wedge, then watch six periods of silence.
    while notify.recv(Duration::from_millis(1)).is_some() {}
    let after = notify.collect_until(Instant::now() + Duration::from_secs(3));
    assert!(
        after.iter().all(|(_, m)| m != "WATCHDOG=1"),
        "a wedged monitor loop still pings: {after:?}"
    );
    assert!(
        answers(&d).await,
        "berthd still answers gRPC: only the loop is wedged"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
