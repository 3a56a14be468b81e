//! The log of the real berthd binary with `BERTH_LOG_FORMAT=json`: every line one JSON object,
//! the start-up line with the version and the effective publish address, no secret.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

#[test]
fn json_log_lines_carry_version_and_publish_address_and_no_secret() {
    require_docker();
    let dir = temp_dir("jsonlog");
    let token = "s3cret-token-never-logged-0123456789";
    let token_file = write_file(&dir, "token", token);
    let mut child = Command::new(env!("CARGO_BIN_EXE_berthd"))
        .args(["serve", "--listen", "127.0.0.1:0", "--node-id"])
        .arg(unique("jsonlog"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--token-file")
        .arg(&token_file)
        .env("BERTH_LOG_FORMAT", "json")
        .env("BERTH_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut lines = Vec::new();
    let listening = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(line) = rx.recv_timeout(left) else {
            let _ = child.kill();
            panic!("no start-up line: {lines:?}");
        };
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        lines.push(line);
        if v["message"] == "berthd listening" {
            break v;
        }
    };
    // A little of the running daemon's log too (the monitor, health) before stopping it.
    let until = Instant::now() + Duration::from_secs(2);
    while let Ok(line) = rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
        serde_json::from_str::<serde_json::Value>(&line)
            .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        lines.push(line);
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        listening["version"],
        env!("CARGO_PKG_VERSION"),
        "{listening}"
    );
    assert_eq!(listening["publish_host_ip"], "127.0.0.1", "{listening}");
    assert_eq!(listening["level"], "INFO", "{listening}");
    assert!(
        listening["addr"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    let all = lines.join("\n");
    assert!(!all.contains(token), "the token is in the log:\n{all}");
    let _ = std::fs::remove_dir_all(&dir);
}
