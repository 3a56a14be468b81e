//! berth benchmarks, each measured against a baseline in the same run on the same machine.
//!
//! `cargo run --release -p berth-bench -- [start N] [poll N] [restart N]`
//!
//! - start: median time to a server answering HTTP, berthd `Start` vs raw bollard
//!   create + start + the same HTTP wait (the tiny image), sequential, N each.
//! - poll: Poll latency (p50/p99) over loopback with N servers tracked.
//! - restart: SIGKILL berthd with N servers running; time until List shows all RUNNING, and
//!   whether any container restarted. Also berthd's idle RSS with N servers.
//!
//! Needs the tiny image (`tests/images/build-tiny.sh`) and a release build of berthd.
#![allow(clippy::print_stdout, missing_docs)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use berth_proto::v1 as pb;
use berth_proto::v1::spawner_client::SpawnerClient;
use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig, PortBinding};
use bollard::query_parameters::{CreateContainerOptions, RemoveContainerOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;

const IMAGE: &str = "berth-test/tiny:latest";

struct Berthd {
    child: Child,
    addr: String,
    node: String,
    state: String,
}

impl Berthd {
    fn start(node: &str, state: &str) -> Result<Self> {
        let bin = std::env::var("BERTHD").unwrap_or_else(|_| "target/release/berthd".to_owned());
        let mut child = Command::new(&bin)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--node-id",
                node,
                "--state-dir",
                state,
            ])
            .env("BERTH_LOG", "warn,berthd=info")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("run {bin} (cargo build --release -p berthd)"))?;
        let stderr = child.stderr.take().context("stderr")?;
        let mut lines = BufReader::new(stderr).lines();
        let addr = loop {
            let line = lines.next().context("berthd exited before listening")??;
            if let Some(a) = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("addr="))
            {
                break a.to_owned();
            }
        };
        std::thread::spawn(move || for _ in lines {});
        Ok(Self {
            child,
            addr,
            node: node.to_owned(),
            state: state.to_owned(),
        })
    }

    async fn client(&self) -> Result<SpawnerClient<Channel>> {
        Ok(SpawnerClient::connect(format!("http://{}", self.addr)).await?)
    }

    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn key(user: &str) -> Option<pb::ServerKey> {
    Some(pb::ServerKey {
        user: user.to_owned(),
        server_name: String::new(),
    })
}

fn start_req(user: &str) -> pb::StartRequest {
    pb::StartRequest {
        key: key(user),
        spawn_id: "b".into(),
        image: IMAGE.into(),
        ..Default::default()
    }
}

async fn answers(addr: &str) -> bool {
    let Ok(mut c) = tokio::net::TcpStream::connect(addr).await else {
        return false;
    };
    if c.write_all(b"GET / HTTP/1.0\r\n\r\n").await.is_err() {
        return false;
    }
    let mut buf = [0u8; 12];
    let mut got = 0;
    while got < 12 {
        match c.read(&mut buf[got..]).await {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    buf.starts_with(b"HTTP/")
}

/// The baseline: what any spawner must do at least: create, start, wait for HTTP.
async fn raw_spawn(docker: &Docker, name: &str) -> Result<Duration> {
    let t0 = Instant::now();
    let body = ContainerCreateBody {
        image: Some(IMAGE.into()),
        exposed_ports: Some(vec!["8888/tcp".into()]),
        host_config: Some(HostConfig {
            port_bindings: Some(HashMap::from([(
                "8888/tcp".to_owned(),
                Some(vec![PortBinding {
                    host_ip: Some("127.0.0.1".into()),
                    host_port: Some(String::new()),
                }]),
            )])),
            init: Some(true),
            ..Default::default()
        }),
        ..Default::default()
    };
    let opts = CreateContainerOptions {
        name: Some(name.into()),
        ..Default::default()
    };
    let id = docker.create_container(Some(opts), body).await?.id;
    docker.start_container(&id, None).await?;
    let info = docker.inspect_container(&id, None).await?;
    let port = info
        .network_settings
        .and_then(|n| n.ports)
        .and_then(|p| p.get("8888/tcp").cloned().flatten())
        .and_then(|b| b.first().and_then(|b| b.host_port.clone()))
        .context("no host port")?;
    let addr = format!("127.0.0.1:{port}");
    let mut backoff = Duration::from_millis(10);
    while !answers(&addr).await {
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 3 / 2).min(Duration::from_millis(200));
    }
    Ok(t0.elapsed())
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// The quantile `permille`/1000 by nearest rank.
fn pct(v: &mut [Duration], permille: usize) -> Duration {
    v.sort();
    let last = v.len().saturating_sub(1);
    v[(last * permille.min(1000) + 500) / 1000]
}

async fn bench_start(docker: &Docker, n: usize) -> Result<()> {
    let tag = std::process::id();
    let d = Berthd::start(
        &format!("bench-start-{tag}"),
        &format!("/tmp/berth-bench-start-{tag}"),
    )?;
    let mut c = d.client().await?;
    let (mut raw, mut berth) = (Vec::new(), Vec::new());
    // Interleave the two so drift in the machine's load hits both alike.
    for i in 0..n {
        let name = format!("berth-bench-raw-{tag}-{i}");
        raw.push(raw_spawn(docker, &name).await?);
        let user = format!("bench-{tag}-{i}");
        let t0 = Instant::now();
        c.start(start_req(&user)).await?;
        berth.push(t0.elapsed());
        let rm = RemoveContainerOptions {
            force: true,
            ..Default::default()
        };
        docker.remove_container(&name, Some(rm)).await?;
        c.stop(pb::StopRequest {
            key: key(&user),
            now: true,
            remove: true,
            ..Default::default()
        })
        .await?;
    }
    let (r, b) = (median(&mut raw), median(&mut berth));
    println!(
        "start: n={n} raw bollard median {r:?}, berthd Start median {b:?}, ratio {:.3}",
        b.as_secs_f64() / r.as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&d.state);
    Ok(())
}

async fn spawn_many(c: &SpawnerClient<Channel>, prefix: &str, n: usize) -> Result<()> {
    let users: Vec<String> = (0..n).map(|i| format!("{prefix}-{i}")).collect();
    for chunk in users.chunks(16) {
        let calls = chunk.iter().map(|u| {
            let mut c = c.clone();
            let req = start_req(u);
            async move { c.start(req).await }
        });
        for r in futures::future::join_all(calls).await {
            r?;
        }
    }
    Ok(())
}

fn cleanup(node: &str) {
    let ids = Command::new("docker")
        .args(["ps", "-aq", "--filter", &format!("label=berth.node={node}")])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let ids: Vec<&str> = ids.split_whitespace().collect();
    if !ids.is_empty() {
        let _ = Command::new("docker")
            .args(["rm", "-f"])
            .args(&ids)
            .output();
    }
}

/// Docker's StartedAt of each container (changes when a container is restarted).
fn started_at(ids: &[String]) -> Result<Vec<String>> {
    let out = Command::new("docker")
        .args(["inspect", "--format", "{{.State.StartedAt}}"])
        .args(ids)
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect())
}

async fn bench_poll_and_restart(n: usize) -> Result<()> {
    let tag = std::process::id();
    let node = format!("bench-many-{tag}");
    let state = format!("/tmp/berth-bench-many-{tag}");
    let mut d = Berthd::start(&node, &state)?;
    let c = d.client().await?;
    let t0 = Instant::now();
    spawn_many(&c, &format!("many-{tag}"), n).await?;
    println!("spawned {n} servers in {:?}", t0.elapsed());

    tokio::time::sleep(Duration::from_secs(3)).await;
    println!("idle RSS with {n} servers: {} KiB", d.rss_kib());

    let mut c = d.client().await?;
    let mut lat = Vec::new();
    for i in 0..10_000 {
        let user = format!("many-{tag}-{}", i % n);
        let t = Instant::now();
        c.poll(pb::PollRequest { key: key(&user) }).await?;
        lat.push(t.elapsed());
    }
    let (p50, p99) = (pct(&mut lat, 500), pct(&mut lat, 990));
    let mut ver = Vec::new();
    for _ in 0..10_000 {
        let t = Instant::now();
        c.get_state(pb::GetStateRequest { key: key("nobody") })
            .await?;
        ver.push(t.elapsed());
    }
    println!(
        "poll: {n} servers tracked, p50 {p50:?} p99 {p99:?} (baseline: an RPC that touches one map entry, p99 {:?})",
        pct(&mut ver, 990)
    );

    let before = Command::new("docker")
        .args([
            "ps",
            "-q",
            "--filter",
            &format!("label=berth.node={node}"),
            "--format",
            "{{.ID}} {{.Status}}",
        ])
        .output()?;
    let ids: Vec<String> = String::from_utf8_lossy(&before.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect();
    let before_started = started_at(&ids)?;
    d.kill9();
    let t0 = Instant::now();
    let d2 = Berthd::start(&node, &state)?;
    let serving = t0.elapsed();
    let mut c = d2.client().await?;
    loop {
        let list = c.list(pb::ListRequest::default()).await?.into_inner();
        let running = list
            .servers
            .iter()
            .filter(|s| s.state == pb::server_status::State::Running as i32)
            .count();
        if running == n {
            break;
        }
        if t0.elapsed() > Duration::from_secs(60) {
            bail!("only {running} of {n} running a minute after the restart");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let reconciled = t0.elapsed();
    let after_started = started_at(&ids)?;
    let restarted = before_started
        .iter()
        .zip(&after_started)
        .filter(|(a, b)| a != b)
        .count();
    println!(
        "restart with {n} containers: serving after {serving:?} (process start to listening), all RUNNING after {reconciled:?}; containers restarted: {restarted}"
    );
    cleanup(&node);
    drop(d2);
    let _ = std::fs::remove_dir_all(&state);
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let docker = Docker::connect_with_socket_defaults()?
        .negotiate_version()
        .await?;
    let arg = |name: &str, default: usize| -> Option<usize> {
        let i = args.iter().position(|a| a == name)?;
        Some(
            args.get(i + 1)
                .and_then(|v| v.parse().ok())
                .unwrap_or(default),
        )
    };
    let all = args.is_empty();
    if let Some(n) = arg("start", 20).or(all.then_some(20)) {
        bench_start(&docker, n).await?;
    }
    if let Some(n) = arg("poll", 500)
        .or(arg("restart", 500))
        .or(all.then_some(500))
    {
        bench_poll_and_restart(n).await?;
    }
    Ok(())
}

impl Drop for Berthd {
    fn drop(&mut self) {
        self.kill9();
        cleanup(&self.node);
    }
}
