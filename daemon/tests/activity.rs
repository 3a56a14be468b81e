//! The activity reporter against a real dockerd, reporting to a recording HTTP endpoint that
//! speaks the JupyterHub activity API (the real-hub suite is in tests/e2e).
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[derive(Clone, Default)]
struct Hub {
    /// (path, authorization, body) of every request.
    seen: Arc<Mutex<Vec<(String, String, String)>>>,
    /// Status to answer with; 0 = 200.
    status: Arc<AtomicU16>,
}

impl Hub {
    async fn start() -> (Self, String) {
        let hub = Hub::default();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hub/api", listener.local_addr().unwrap());
        let h = hub.clone();
        tokio::spawn(async move {
            while let Ok((mut c, _)) = listener.accept().await {
                let h = h.clone();
                tokio::spawn(async move {
                    let mut got = Vec::new();
                    let mut buf = [0u8; 4096];
                    let (head, body_len) = loop {
                        let Ok(n) = c.read(&mut buf).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        got.extend_from_slice(&buf[..n]);
                        let text = String::from_utf8_lossy(&got).into_owned();
                        if let Some(i) = text.find("\r\n\r\n") {
                            let len = text[..i]
                                .lines()
                                .find_map(|l| {
                                    l.to_ascii_lowercase()
                                        .strip_prefix("content-length:")
                                        .map(|v| v.trim().to_owned())
                                })
                                .and_then(|v| v.parse::<usize>().ok())
                                .unwrap_or(0);
                            break (i + 4, len);
                        }
                    };
                    while got.len() < head + body_len {
                        let Ok(n) = c.read(&mut buf).await else {
                            return;
                        };
                        if n == 0 {
                            break;
                        }
                        got.extend_from_slice(&buf[..n]);
                    }
                    let text = String::from_utf8_lossy(&got).into_owned();
                    let path = text
                        .split_whitespace()
                        .nth(1)
                        .unwrap_or_default()
                        .to_owned();
                    let auth = text
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .starts_with("authorization:")
                                .then(|| l[14..].trim().to_owned())
                        })
                        .unwrap_or_default();
                    let body = text[head.min(text.len())..].to_owned();
                    h.seen.lock().unwrap().push((path.clone(), auth, body));
                    let status = match h.status.load(Ordering::SeqCst) {
                        0 if path.contains("/users/gone-") => 404,
                        0 => 200,
                        s => s,
                    };
                    let reply = format!(
                        "HTTP/1.1 {status} X\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
                    );
                    let _ = c.write_all(reply.as_bytes()).await;
                });
            }
        });
        (hub, url)
    }

    fn posts_for(&self, user: &str) -> Vec<String> {
        let path = format!("/hub/api/users/{user}/activity");
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _, _)| *p == path)
            .map(|(_, _, b)| b.clone())
            .collect()
    }
}

/// Keeps HTTP traffic flowing to `url` until the returned flag is dropped.
fn traffic(url: String) -> Arc<()> {
    let alive = Arc::new(());
    let weak = Arc::downgrade(&alive);
    tokio::spawn(async move {
        while weak.upgrade().is_some() {
            let _ = http_get(&url).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    alive
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_is_activity_silence_is_not_and_an_outage_loses_only_old_values() {
    let (hub, url) = Hub::start().await;
    let dir = std::env::temp_dir().join(unique("berth-act"));
    std::fs::create_dir_all(&dir).unwrap();
    let token = dir.join("token");
    std::fs::write(&token, "activity-service-token-123\n").unwrap();
    common::set_mode(&token, 0o600);
    let cfg = dir.join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "[activity]\nenabled = true\nhub_api_url = \"{url}\"\ntoken_file = \"{}\"\ninterval_seconds = 1\nnetwork_bytes_threshold = 1000\ncpu_threshold = 0.5\n",
            token.display()
        ),
    )
    .unwrap();
    let d = Daemon::start_with(&["--config", cfg.to_str().unwrap()]);
    let mut c = d.client().await;
    let (busy, idle, gone) = (unique("busy"), unique("idle"), unique("gone"));
    let busy_url = c
        .start(tiny_start(&busy, "s"))
        .await
        .unwrap()
        .into_inner()
        .url;
    c.start(tiny_start(&idle, "s")).await.unwrap();
    let gone_url = c
        .start(tiny_start(&gone, "s"))
        .await
        .unwrap()
        .into_inner()
        .url;

    let flow = traffic(busy_url.clone());
    let once = traffic(gone_url);
    let posted = eventually(Duration::from_secs(10), || {
        let hub = hub.clone();
        let busy = busy.clone();
        async move { hub.posts_for(&busy).first().cloned() }
    })
    .await
    .expect("busy server's activity reached the hub");
    let body: serde_json::Value = serde_json::from_str(&posted).unwrap();
    assert!(body["last_activity"].as_str().unwrap().ends_with('Z'));
    assert!(body["servers"][""]["last_activity"].is_string(), "{body}");
    assert_eq!(
        hub.seen.lock().unwrap()[0].1,
        "token activity-service-token-123"
    );
    let p = common::poll(&c, &busy, "").await;
    assert!(
        p.last_activity.is_some(),
        "ServerStatus carries last_activity"
    );

    // The deleted user: refused once, and that value is not retried.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    drop(once);
    // Docker's one-shot stats can trail by a pass; wait for the traffic's last bytes to be
    // reported, then nothing more may come: a refused value is never sent again.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let settled = hub.posts_for(&gone).len();
    assert!(settled >= 1, "the deleted user's activity was tried");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let bodies = hub.posts_for(&gone);
    assert_eq!(bodies.len(), settled, "a 404 is not retried: {bodies:?}");
    let mut unique_bodies = bodies.clone();
    unique_bodies.dedup();
    assert_eq!(
        unique_bodies.len(),
        bodies.len(),
        "no refused value was sent twice"
    );
    assert!(d.log_text().contains("hub refused activity"), "logged");
    assert!(
        hub.posts_for(&idle).is_empty(),
        "an idle server reports nothing"
    );

    // Outage: the hub answers 503 while the server stays busy; nothing is lost but old values.
    hub.status.store(503, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let failed_before = hub.posts_for(&busy).len();
    let outage_end = Instant::now();
    hub.status.store(0, Ordering::SeqCst);
    let delivered = eventually(Duration::from_secs(5), || {
        let hub = hub.clone();
        let busy = busy.clone();
        async move { (hub.posts_for(&busy).len() > failed_before).then_some(()) }
    })
    .await;
    assert!(delivered.is_some(), "delivered after the hub returned");
    eprintln!(
        "delivered {:?} after the hub returned",
        outage_end.elapsed()
    );
    drop(flow);
    let p = common::poll(&c, &busy, "").await;
    assert_eq!(
        state(&p),
        berth_proto::v1::server_status::State::Running,
        "the outage never touched the server"
    );
    assert!(
        d.log_text().contains("activity reporter"),
        "metrics are logged"
    );
}
