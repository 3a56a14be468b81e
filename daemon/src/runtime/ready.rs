//! Readiness: probe a server over HTTP from the node, with a fine-grained backoff.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// First pause between probes; a fresh server often answers within a few tens of ms.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(10);
/// Longest pause between probes.
pub const MAX_BACKOFF: Duration = Duration::from_millis(200);
/// Deadline of one probe.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// One HTTP probe: true when the server sends back an HTTP status line. Any status counts,
/// as it does for JupyterHub's own wait. Docker's userland proxy accepts connections before
/// the server listens, so a connection alone proves nothing.
pub async fn probe(addr: SocketAddr, path: &str) -> bool {
    tokio::time::timeout(PROBE_TIMEOUT, probe_inner(addr, path))
        .await
        .unwrap_or(false)
}

async fn probe_inner(addr: SocketAddr, path: &str) -> bool {
    let Ok(mut conn) = TcpStream::connect(addr).await else {
        return false;
    };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: berthd\r\nConnection: close\r\n\r\n"
    );
    if conn.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut buf = [0u8; 12];
    let mut got = 0;
    while got < buf.len() {
        match conn.read(&mut buf[got..]).await {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    is_status_line(&buf[..got])
}

fn is_status_line(head: &[u8]) -> bool {
    head.len() >= 12 && head.starts_with(b"HTTP/") && head[9..12].iter().all(u8::is_ascii_digit)
}

/// Probes until the server answers (true) or `deadline` passes (false).
pub async fn wait_ready(addr: SocketAddr, path: &str, deadline: Instant) -> bool {
    let mut backoff = FIRST_BACKOFF;
    loop {
        if probe(addr, path).await {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        tokio::time::sleep(backoff.min(deadline - now)).await;
        backoff = (backoff * 3 / 2).min(MAX_BACKOFF);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[test]
    fn status_lines() {
        assert!(is_status_line(b"HTTP/1.1 200 OK"));
        assert!(is_status_line(b"HTTP/1.0 404 Not"));
        assert!(!is_status_line(b"HTTP/1.1 2"));
        assert!(!is_status_line(b"SSH-2.0-OpenSSH"));
        assert!(!is_status_line(b""));
    }

    #[tokio::test]
    async fn a_listener_that_closes_is_not_ready_but_one_that_answers_is() {
        let mute = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let mute_addr = mute.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((c, _)) = mute.accept().await {
                drop(c);
            }
        });
        assert!(!probe(mute_addr, "/").await);

        let http = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let http_addr = http.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut c, _)) = http.accept().await {
                let mut buf = [0u8; 256];
                let _ = c.read(&mut buf).await;
                let _ = c.write_all(b"HTTP/1.1 302 Found\r\n\r\n").await;
            }
        });
        let deadline = Instant::now() + Duration::from_secs(5);
        assert!(wait_ready(http_addr, "/user/a/api", deadline).await);
        let past = Instant::now();
        assert!(!wait_ready(mute_addr, "/", past).await);
    }
}
