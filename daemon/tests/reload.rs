//! SIGHUP to the real berthd: the token file is read again and swapped in, over the same open
//! connection, without restarting anything.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use berth_proto::v1 as pb;
use berth_proto::v1::spawner_client::SpawnerClient;
use common::*;
use tonic::transport::Channel;

async fn list_with(c: &mut SpawnerClient<Channel>, token: &str) -> Result<(), tonic::Code> {
    let mut req = tonic::Request::new(pb::ListRequest::default());
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    c.list(req).await.map(|_| ()).map_err(|s| s.code())
}

#[tokio::test]
async fn sighup_swaps_the_token_on_the_open_connection() {
    let dir = temp_dir("reload");
    let old = "old-token-0123456789abcdef";
    let new = "new-token-0123456789abcdef";
    let file = write_file(&dir, "token", old);
    let mut d = Daemon::start_with(&["--token-file", file.to_str().unwrap()]);
    let mut c = d.client().await;
    assert_eq!(list_with(&mut c, old).await, Ok(()));
    assert_eq!(
        list_with(&mut c, new).await,
        Err(tonic::Code::Unauthenticated)
    );

    std::fs::write(&file, format!("{new}\n")).unwrap();
    let hup = Command::new("kill")
        .args(["-HUP", &d.pid().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while list_with(&mut c, new).await != Ok(()) {
        assert!(
            Instant::now() < deadline,
            "new token not accepted:\n{}",
            d.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        list_with(&mut c, old).await,
        Err(tonic::Code::Unauthenticated)
    );

    // A file that no longer passes keeps the token in force.
    std::fs::write(&file, "short").unwrap();
    let hup = Command::new("kill")
        .args(["-HUP", &d.pid().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !d.log_text().contains("token not reloaded") {
        assert!(
            Instant::now() < deadline,
            "no refusal logged:\n{}",
            d.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(list_with(&mut c, new).await, Ok(()));
    assert!(
        d.wait_exit(Duration::from_millis(100)).is_none(),
        "berthd still runs"
    );
    assert!(!d.log_text().contains(new), "the token is not logged");
    let _ = std::fs::remove_dir_all(&dir);
}
