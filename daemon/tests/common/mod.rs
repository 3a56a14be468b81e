//! Test harness: runs the real berthd binary against the real Docker engine, or (in
//! `fake_node`) the runtime in-process over the fake engine; and the helpers both share.
// Shared by test crates that each `mod common;` it privately, so `pub` means "to the tests".
#![allow(dead_code, missing_docs, unreachable_pub, clippy::unwrap_used)]

pub mod fake_node;
pub mod registry;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_proto::v1 as pb;
use berth_proto::v1::spawner_client::SpawnerClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;

/// The tiny test image: busybox, default command an HTTP server on 8888.
pub const TINY: &str = "berth-test/tiny:latest";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name unique to this test process and call.
pub fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}-{}-{n}-{}", std::process::id(), t % 100_000)
}

/// Runs `docker args...` and returns stdout; panics loudly when Docker is missing.
pub fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("the docker CLI must be installed for these tests");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Fails the test loudly unless a Docker engine answers and the test image exists.
pub fn require_docker() {
    let ok = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "these tests need a running Docker engine: `docker info` failed (start dockerd; .ci/run does)"
    );
    let img = Command::new("docker")
        .args(["image", "inspect", TINY])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        img,
        "test image {TINY} is missing: run tests/images/build-tiny.sh"
    );
}

/// A running berthd with its own node id and state directory.
pub struct Daemon {
    child: Child,
    pub addr: SocketAddr,
    pub node_id: String,
    pub state_dir: PathBuf,
    pub log: Arc<Mutex<Vec<String>>>,
    extra: Vec<String>,
    env: Vec<(String, String)>,
}

impl Daemon {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    pub fn start_with(extra: &[&str]) -> Self {
        Self::start_with_env(extra, &[])
    }

    pub fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> Self {
        require_docker();
        let node_id = unique("node");
        let state_dir = std::env::temp_dir().join(unique("berth-state"));
        let extra: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (child, addr) = Self::launch(&node_id, &state_dir, &extra, &env, &log);
        Daemon {
            child,
            addr,
            node_id,
            state_dir,
            log,
            extra,
            env,
        }
    }

    /// The berthd process id (to signal it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits up to `timeout` for berthd to exit; its status, or `None` if it still runs.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Replaces the environment the next [`Daemon::respawn`] gives berthd.
    pub fn set_env(&mut self, env: &[(&str, &str)]) {
        self.env = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
    }

    /// Starts berthd again with the same node id and state directory.
    pub fn respawn(&mut self) {
        let (child, addr) = Self::launch(
            &self.node_id,
            &self.state_dir,
            &self.extra,
            &self.env,
            &self.log,
        );
        self.child = child;
        self.addr = addr;
    }

    fn launch(
        node_id: &str,
        state_dir: &PathBuf,
        extra: &[String],
        env: &[(String, String)],
        log: &Arc<Mutex<Vec<String>>>,
    ) -> (Child, SocketAddr) {
        // Loopback unless the test names its own address.
        let listen = if extra.iter().any(|a| a == "--listen") {
            &[][..]
        } else {
            &["--listen", "127.0.0.1:0"][..]
        };
        let mut child = Command::new(env!("CARGO_BIN_EXE_berthd"))
            .arg("serve")
            .args(listen)
            .args(["--node-id", node_id])
            .arg("--state-dir")
            .arg(state_dir)
            .args(extra)
            .env("BERTH_LOG", "info,berthd=debug")
            // Image GC off: the host engine's images are shared by every test (and may be
            // unused at the moment a pass runs); image_gc.rs tests GC on its own engine.
            .env("BERTH_IMAGE_GC_HIGH_PERCENT", "0")
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn berthd");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        let log = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("berthd listening") {
                    let _ = tx.send(line.clone());
                }
                sink.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(line);
            }
        });
        let Ok(line) = rx.recv_timeout(Duration::from_secs(30)) else {
            let _ = child.kill();
            let _ = child.wait();
            let lines = log
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            panic!("berthd did not start: {lines:?}");
        };
        let addr = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("addr="))
            .expect("listening line has addr=")
            .parse()
            .expect("addr parses");
        (child, addr)
    }

    pub async fn client(&self) -> SpawnerClient<Channel> {
        SpawnerClient::connect(format!("http://{}", self.addr))
            .await
            .expect("connect to berthd")
    }

    /// Ids of this daemon's containers, per Docker itself.
    pub fn containers(&self) -> Vec<String> {
        let filter = format!("label=berth.node={}", self.node_id);
        docker(&["ps", "-aq", "--no-trunc", "--filter", &filter])
            .lines()
            .map(str::to_owned)
            .collect()
    }

    pub fn log_text(&self) -> String {
        self.log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .join("\n")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let ids = self.containers();
        if !ids.is_empty() {
            let mut args = vec!["rm", "-f"];
            args.extend(ids.iter().map(String::as_str));
            docker(&args);
        }
        let _ = std::fs::remove_dir_all(&self.state_dir);
    }
}

pub fn key(user: &str, server: &str) -> Option<pb::ServerKey> {
    Some(pb::ServerKey {
        user: user.to_owned(),
        server_name: server.to_owned(),
    })
}

/// A Start of the tiny HTTP server for `user`.
pub fn tiny_start(user: &str, spawn_id: &str) -> pb::StartRequest {
    pb::StartRequest {
        key: key(user, ""),
        spawn_id: spawn_id.to_owned(),
        image: TINY.to_owned(),
        ready_timeout_seconds: 30,
        ..Default::default()
    }
}

/// A plain HTTP GET; returns the status code and body.
pub async fn http_get(url: &str) -> (u16, String) {
    let rest = url.strip_prefix("http://").expect("http url");
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let mut conn = tokio::net::TcpStream::connect(hostport)
        .await
        .expect("connect");
    let req = format!("GET {path} HTTP/1.0\r\nHost: {hostport}\r\n\r\n");
    conn.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    conn.read_to_end(&mut buf).await.expect("read");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, text)
}

/// Polls `f` until it returns Some or `limit` passes. On tokio's clock, so under a paused
/// clock the limit is virtual time and the pauses between tries cost nothing.
pub async fn eventually<T, F, Fut>(limit: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if tokio::time::Instant::now() > end {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn state(s: &pb::ServerStatus) -> pb::server_status::State {
    pb::server_status::State::try_from(s.state).unwrap_or(pb::server_status::State::Unspecified)
}

/// Polls `user`/`server` until it is in state `want`, for at most `limit`.
pub async fn wait_for_state(
    c: &SpawnerClient<Channel>,
    user: &str,
    server: &str,
    want: pb::server_status::State,
    limit: Duration,
) -> Option<pb::ServerStatus> {
    eventually(limit, || {
        let mut c = c.clone();
        async move {
            let p = c
                .poll(pb::PollRequest {
                    key: key(user, server),
                })
                .await
                .ok()?
                .into_inner();
            (state(&p) == want).then_some(p)
        }
    })
    .await
}

/// The status of `user`/`server`.
pub async fn poll(c: &SpawnerClient<Channel>, user: &str, server: &str) -> pb::ServerStatus {
    c.clone()
        .poll(pb::PollRequest {
            key: key(user, server),
        })
        .await
        .unwrap()
        .into_inner()
}

/// Stops `user`'s default server at once and removes its container; the status after.
pub async fn stop_remove(c: &SpawnerClient<Channel>, user: &str) -> pb::ServerStatus {
    stop_as(c, user, "", Stop::Remove).await.unwrap()
}

/// How a test stops a server.
#[derive(Debug, Clone, Copy)]
pub enum Stop {
    /// SIGTERM, then SIGKILL after this many seconds (0: the node's default); kept.
    Graceful(u32),
    /// SIGKILL; kept.
    Now,
    /// SIGKILL, then the container is removed.
    Remove,
    /// SIGTERM with the node's default grace, then removed.
    GracefulRemove,
}

/// Stops `user`/`server` as `how` says; the status after, or the refusal.
pub async fn stop_as(
    c: &SpawnerClient<Channel>,
    user: &str,
    server: &str,
    how: Stop,
) -> Result<pb::ServerStatus, tonic::Status> {
    let (now, grace_seconds, remove) = match how {
        Stop::Graceful(g) => (false, g, false),
        Stop::Now => (true, 0, false),
        Stop::Remove => (true, 0, true),
        Stop::GracefulRemove => (false, 0, true),
    };
    c.clone()
        .stop(pb::StopRequest {
            key: key(user, server),
            now,
            grace_seconds,
            remove,
        })
        .await
        .map(|r| r.into_inner().status.unwrap())
}

/// A fresh directory under the system's temp dir, its name from `tag` and unique to the call.
pub fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(unique(tag));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes `text` to `dir/name`; returns the path.
pub fn write_file(dir: &std::path::Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    // Mode 0600, as berthd wants of a token file (and as a deployment keeps its keys).
    set_mode(&path, 0o600);
    path
}

/// Sets the permission bits of `path`.
pub fn set_mode(path: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A gRPC channel over berthd's Unix socket at `socket` (the Admin socket).
pub async fn unix_channel(socket: &std::path::Path) -> Channel {
    let path = socket.to_owned();
    tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(path).await?,
                ))
            }
        }))
        .await
        .unwrap()
}

/// An Admin client over berthd's Unix socket at `socket`.
pub async fn admin(
    socket: &std::path::Path,
) -> berth_proto::v1::admin_client::AdminClient<Channel> {
    berth_proto::v1::admin_client::AdminClient::new(unix_channel(socket).await)
}
