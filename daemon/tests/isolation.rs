//! Network isolation of users, against the real berthd binary and a real dockerd: on berth's
//! isolated network (the default) one user's container cannot open a connection to another's,
//! on the server port or any other, nor to berthd's gRPC and metrics listeners, while the host
//! (where the hub, its proxy and the readiness probe run) reaches every server. With
//! `network.isolate_users = false` the same probe gets through, which shows it can fail.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A port A listens on besides the server's (8888): a second busybox httpd.
const OTHER_PORT: u16 = 7777;

/// The HTTP/2 connection preface: a gRPC server answers it with a SETTINGS frame.
const H2_PREFACE: &str = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn free_port() -> u16 {
    std::net::TcpListener::bind("0.0.0.0:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The daemon's container of `user`.
fn container_of(d: &Daemon, user: &str) -> String {
    let filter = format!("label=berth.user={user}");
    let ids = docker(&[
        "ps",
        "-q",
        "--filter",
        &filter,
        "--filter",
        &format!("label=berth.node={}", d.node_id),
    ]);
    assert_eq!(ids.lines().count(), 1, "one container of {user}: {ids:?}");
    ids
}

/// The container's address and its network's gateway (an address of the host).
fn addresses(id: &str) -> (String, String, String) {
    let out = docker(&[
        "inspect",
        "-f",
        "{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{$v.IPAddress}} {{$v.Gateway}}{{end}}",
        id,
    ]);
    let parts: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(parts.len(), 3, "one network: {out:?}");
    (
        parts[0].to_owned(),
        parts[1].to_owned(),
        parts[2].to_owned(),
    )
}

/// Whether `sh -c script` in container `id` exits 0.
fn exec_ok(id: &str, script: &str) -> bool {
    std::process::Command::new("docker")
        .args(["exec", id, "sh", "-c", script])
        .status()
        .unwrap()
        .success()
}

/// A shell command that succeeds when the tiny server at `ip:port` answers a GET (busybox
/// nc: the image's wget crashes in this static build).
fn fetch(ip: &str, port: u16) -> String {
    format!(
        "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | timeout 5 nc -w 3 {ip} {port} | grep -q 'berth tiny server'"
    )
}

/// Bytes a gRPC listener at `addr` sends back to the HTTP/2 preface from the host.
async fn h2_answer_from_host(addr: SocketAddr) -> usize {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(H2_PREFACE.as_bytes()).await.unwrap();
    let mut buf = [0u8; 64];
    tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .map_or(0, |r| r.unwrap_or(0))
}

/// Starts A (HTTP on 8888 and 7777) and B on a fresh berthd with `extra` flags; returns the
/// daemon, the two containers and the users.
async fn two_users(extra: &[&str]) -> (Daemon, String, String, String, String) {
    let d = Daemon::start_with(extra);
    let c = d.client().await;
    let (a, b) = (unique("iso-a"), unique("iso-b"));
    let mut start_a = tiny_start(&a, "s");
    start_a.cmd = vec![
        "sh".into(),
        "-c".into(),
        format!("httpd -p {OTHER_PORT} -h /www && exec httpd -f -p 8888 -h /www"),
    ];
    // Each Start returns once the readiness probe, from the host, got an HTTP answer.
    let url_a = c.clone().start(start_a).await.unwrap().into_inner().url;
    let url_b = c
        .clone()
        .start(tiny_start(&b, "s"))
        .await
        .unwrap()
        .into_inner()
        .url;
    // The hub's proxy reaches both at their published URLs.
    for url in [&url_a, &url_b] {
        assert_eq!(http_get(url).await.0, 200, "{url}");
    }
    let (ca, cb) = (container_of(&d, &a), container_of(&d, &b));
    (d, ca, cb, a, b)
}

#[tokio::test]
async fn on_the_isolated_network_users_reach_neither_each_other_nor_berthd_but_the_host_reaches_them()
 {
    let network = unique("berth-iso");
    let metrics_port = free_port();
    let metrics = format!("0.0.0.0:{metrics_port}");
    let (d, ca, cb, a, b) = two_users(&[
        "--listen",
        "0.0.0.0:0",
        "--security-insecure-plaintext-on-network",
        "true",
        "--metrics-listen",
        &metrics,
        "--metrics-allow-network",
        "true",
        "--network-name",
        &network,
    ])
    .await;
    let (net_a, ip_a, gateway) = addresses(&ca);
    let (net_b, _, _) = addresses(&cb);
    assert_eq!(
        (net_a.as_str(), net_b.as_str()),
        (network.as_str(), network.as_str())
    );
    let icc = docker(&[
        "network",
        "inspect",
        "-f",
        "{{index .Options \"com.docker.network.bridge.enable_icc\"}} {{index .Labels \"berth.managed\"}}",
        &network,
    ]);
    assert_eq!(
        icc, "false true",
        "made by berthd, inter-container traffic off"
    );

    // A listens on both ports: from inside A itself, and from the host, both answer.
    for port in [8888, OTHER_PORT] {
        assert!(exec_ok(&ca, &fetch("127.0.0.1", port)), "A serves {port}");
        let (code, _) = http_get(&format!("http://{ip_a}:{port}/")).await;
        assert_eq!(code, 200, "the host reaches A's {ip_a}:{port}");
        // B does not.
        assert!(
            !exec_ok(&cb, &fetch(&ip_a, port)),
            "B reached A's {ip_a}:{port}"
        );
    }

    // berthd's listeners: served to the host, closed unread to a container.
    let grpc_port = d.addr.port();
    assert!(
        h2_answer_from_host(SocketAddr::from(([127, 0, 0, 1], grpc_port))).await > 0,
        "the host gets berthd's gRPC answer"
    );
    let (code, _) = http_get(&format!("http://127.0.0.1:{metrics_port}/metrics")).await;
    assert_eq!(code, 200, "the host reads /metrics");
    let h2_probe = |host: &str| {
        format!(
            "(printf '{}'; sleep 3) | timeout 5 nc -w 3 {host} {grpc_port} | wc -c",
            H2_PREFACE.replace("\r\n", "\\r\\n")
        )
    };
    // The same probe from a container on the host's network (its peer address is the host's)
    // gets the answer: what B gets below is the refusal, not a probe that cannot work.
    let control = docker(&[
        "run",
        "--rm",
        "--network",
        "host",
        TINY,
        "sh",
        "-c",
        &h2_probe("127.0.0.1"),
    ]);
    assert_ne!(control, "0", "the probe works from the host's network");
    let out = std::process::Command::new("docker")
        .args(["exec", &cb, "sh", "-c", &h2_probe(&gateway)])
        .output()
        .unwrap();
    let got = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert_eq!(got, "0", "B got {got} bytes from berthd's gRPC listener");
    assert!(
        !exec_ok(
            &cb,
            &format!(
                "printf 'GET /metrics HTTP/1.0\\r\\n\\r\\n' | timeout 5 nc -w 3 {gateway} {metrics_port} | grep -q HTTP"
            )
        ),
        "B read berthd's /metrics"
    );
    assert!(
        d.log_text()
            .contains("refused a connection from a container network"),
        "berthd logs the refusals"
    );

    let c = d.client().await;
    stop_remove(&c, &a).await;
    stop_remove(&c, &b).await;
    drop(d);
    docker(&["network", "rm", &network]);
}

#[tokio::test]
async fn with_isolation_off_users_share_the_default_bridge_and_reach_each_other() {
    let (d, ca, cb, a, b) = two_users(&["--network-isolate-users", "false"]).await;
    let (net_a, ip_a, _) = addresses(&ca);
    assert_eq!(
        net_a, "bridge",
        "today's behaviour: Docker's default bridge"
    );
    for port in [8888, OTHER_PORT] {
        assert!(exec_ok(&cb, &fetch(&ip_a, port)), "B reaches A's {port}");
    }
    let c = d.client().await;
    stop_remove(&c, &a).await;
    stop_remove(&c, &b).await;
}

/// Two networks of berth's name, as two creators racing on a fresh Docker 20.10 leave them
/// (its API makes a second network of a taken name unless told to check): berthd keeps one,
/// removes the other and starts servers on it, where every Start failed on "ambiguous".
#[tokio::test]
async fn two_networks_of_one_name_are_made_one_and_spawns_go_on() {
    let network = unique("berth-twice");
    let docker_api = bollard::Docker::connect_with_local_defaults().unwrap();
    for _ in 0..2 {
        docker_api
            .create_network(bollard::models::NetworkCreateRequest {
                name: network.clone(),
                driver: Some("bridge".into()),
                options: Some(
                    [(
                        "com.docker.network.bridge.enable_icc".to_owned(),
                        "false".to_owned(),
                    )]
                    .into(),
                ),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let ids = || {
        docker(&[
            "network",
            "ls",
            "-q",
            "--filter",
            &format!("name=^{network}$"),
        ])
    };
    assert_eq!(
        ids().lines().count(),
        2,
        "two networks of one name to begin"
    );
    let d = Daemon::start_with(&["--network-name", &network]);
    let c = d.client().await;
    let user = unique("twice");
    let url = c
        .clone()
        .start(tiny_start(&user, "s"))
        .await
        .unwrap_or_else(|e| panic!("{e}; log:\n{}", d.log_text()))
        .into_inner()
        .url;
    assert_eq!(http_get(&url).await.0, 200, "{url}");
    let left = ids();
    assert_eq!(left.lines().count(), 1, "one network is left: {left}");
    let joined = docker(&[
        "inspect",
        "-f",
        "{{range $k, $v := .NetworkSettings.Networks}}{{$v.NetworkID}}{{end}}",
        &container_of(&d, &user),
    ]);
    assert!(joined.starts_with(left.trim()), "{joined} on {left}");
    drop(d);
    docker(&["network", "rm", &network]);
}
