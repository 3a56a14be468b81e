//! Resume of a kept container against a real dockerd, through the real berthd binary: the same
//! container comes back with its writable layer and a fresh per-spawn env; a drift recreates.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::time::Duration;

use berth_proto::v1 as pb;
use berth_proto::v1::server_status::State;
use common::*;
use futures::StreamExt;
use tonic::transport::Channel;

/// A resumable Start whose server publishes its API token at `/token` and then serves HTTP.
fn start(user: &str, spawn_id: &str, image: &str, token: &str, site: &str) -> pb::StartRequest {
    pb::StartRequest {
        image: image.to_owned(),
        cmd: vec![
            "sh".into(),
            "-c".into(),
            "printf %s \"$JUPYTERHUB_API_TOKEN\" > /www/token; exec httpd -f -p 8888 -h /www"
                .into(),
        ],
        env: [
            ("JUPYTERHUB_API_TOKEN".to_owned(), token.to_owned()),
            ("SITE".to_owned(), site.to_owned()),
        ]
        .into(),
        resumable: true,
        ..tiny_start(user, spawn_id)
    }
}

/// Starts `req` and returns its result and the messages of its progress stream.
async fn start_watching(
    c: &mut berth_proto::v1::spawner_client::SpawnerClient<Channel>,
    req: pb::StartRequest,
) -> (pb::StartResponse, Vec<String>) {
    let mut progress = c
        .progress(pb::ProgressRequest {
            key: req.key.clone(),
            spawn_id: req.spawn_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let r = c.start(req).await.unwrap().into_inner();
    let mut messages = Vec::new();
    while let Some(e) = progress.next().await {
        messages.push(e.unwrap().message);
    }
    (r, messages)
}

/// The token the server published at `/token`.
async fn token_at(url: &str) -> String {
    let (_, text) = http_get(&format!("{url}/token")).await;
    text.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or(text)
}

async fn stop_kept(c: &berth_proto::v1::spawner_client::SpawnerClient<Channel>, user: &str) {
    stop_as(c, user, "", Stop::Graceful(2)).await.unwrap();
    let p = wait_for_state(c, user, "", State::Exited, Duration::from_secs(30)).await;
    assert!(p.is_some(), "the server stops and its container is kept");
}

#[tokio::test]
async fn a_kept_container_resumes_with_its_files_and_a_new_token_and_a_drift_recreates_it() {
    require_docker();
    let d = Daemon::start();
    let mut c = d.client().await;
    let user = unique("resume");
    // An image of our own (a commit of the tiny image), so a re-tag can change its id.
    let image = format!("berth-test/{}:latest", user.to_lowercase());
    let base = docker(&["create", TINY]);
    docker(&["commit", &base, &image]);
    docker(&["rm", &base]);

    let (first, _) = start_watching(&mut c, start(&user, "s1", &image, "token-1", "a")).await;
    let id = first.container_id.clone();
    assert_eq!(token_at(&first.url).await, "token-1");
    docker(&["exec", &id, "sh", "-c", "echo kept > /installed.txt"]);
    let env = docker(&["inspect", "--format", "{{json .Config.Env}}", &id]);
    assert!(
        !env.contains("token-1"),
        "the token is not in Docker's config: {env}"
    );
    assert!(env.contains("SITE=a"), "{env}");
    stop_kept(&c, &user).await;

    let (second, messages) =
        start_watching(&mut c, start(&user, "s2", &image, "token-2", "a")).await;
    assert_eq!(second.container_id, id, "the same container resumes");
    assert!(
        messages.iter().any(|m| m == "Resuming your stopped server"),
        "{messages:?}"
    );
    assert_eq!(
        docker(&["exec", &id, "cat", "/installed.txt"]),
        "kept",
        "the writable layer survives"
    );
    assert_eq!(
        token_at(&second.url).await,
        "token-2",
        "the per-spawn env is refreshed"
    );
    assert_eq!(
        docker(&[
            "exec",
            &id,
            "sh",
            "-c",
            "test -e /.berth/spawn-env || echo gone"
        ]),
        "gone",
        "the env file is deleted once read"
    );
    let p = poll(&c, &user, "").await;
    assert_eq!((state(&p), p.spawn_id.as_str()), (State::Running, "s2"));
    // A retry of the resumed spawn joins it.
    let again = c.start(start(&user, "s2", &image, "token-2", "a")).await;
    assert_eq!(again.unwrap().into_inner().container_id, id);
    stop_kept(&c, &user).await;

    // The same tag now names another image: a drift, named.
    let base = docker(&["create", &image]);
    docker(&["commit", "--change", "LABEL rebuilt=1", &base, &image]);
    docker(&["rm", &base]);
    let (third, messages) =
        start_watching(&mut c, start(&user, "s3", &image, "token-3", "b")).await;
    assert_ne!(third.container_id, id, "recreated");
    assert!(
        messages
            .iter()
            .any(|m| m == "Recreating your server: image changed, env changed"),
        "{messages:?}"
    );
    assert!(
        d.log_text().contains("image changed, env changed"),
        "berthd's log names the change"
    );
    assert!(!d.log_text().contains("token-"), "no token in berthd's log");
    assert_eq!(
        docker(&["ps", "-aq", "--no-trunc", "--filter", &format!("id={id}")]),
        "",
        "the old container is gone"
    );
    stop_remove(&c, &user).await;
    docker(&["rmi", &image]);
}
