//! Pulls over the fake engine's registry, through the real Spawner service: pull policies, one
//! pull for many spawns, byte progress, failures that create nothing, credentials, and a pull
//! cancelled only when no spawn follows it. No Docker engine is used (`daemon/tests/pulls.rs`
//! is the proof against a real registry).
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use berth_proto::v1 as pb;
use berthd::docker::fake::Behaviour;
use berthd::registry::RegistryAuth;
use common::fake_node::{FakeNode, engine, start_in_background, start_req, state_dir};
use common::{Stop, key, stop_as};
use futures::StreamExt;
use tonic::Code;
use tonic_types::StatusExt;

const IMAGE: &str = "registry.test:5000/team/nb:1";
const FULL: &str = "registry.test:5000/team/nb:1";
const LAYERS: [u64; 3] = [1_000_000, 2_500_000, 4_000];
/// Generous for in-memory work; only a hang ever reaches it.
const LIMIT: Duration = Duration::from_secs(10);

fn auth(password: &str) -> RegistryAuth {
    RegistryAuth {
        username: "ann".into(),
        password: password.into(),
    }
}

async fn node(tune: impl FnOnce(&mut berthd::runtime::RuntimeConfig)) -> FakeNode {
    let fake = engine();
    fake.publish_image(IMAGE, Behaviour::Serve, &LAYERS, None);
    FakeNode::start_on(fake, state_dir(), |cfg| {
        cfg.max_concurrent_spawns = 16;
        tune(cfg);
    })
    .await
}

fn with_policy(mut r: pb::StartRequest, p: pb::PullPolicy) -> pb::StartRequest {
    r.pull_policy = p.into();
    r
}

/// The events of `user`'s spawn `spawn_id`, until it ends.
async fn events(node: &FakeNode, user: &str, spawn_id: &str) -> Vec<pb::ProgressEvent> {
    let req = pb::ProgressRequest {
        key: key(user, ""),
        spawn_id: spawn_id.to_owned(),
    };
    let stream = node.client().progress(req).await.unwrap().into_inner();
    tokio::time::timeout(LIMIT, stream.map(Result::unwrap).collect())
        .await
        .expect("the spawn ends")
}

/// Waits until `user`'s spawn reports PULLING.
async fn pulling(node: &FakeNode, user: &str, spawn_id: &str) {
    let req = pb::ProgressRequest {
        key: key(user, ""),
        spawn_id: spawn_id.to_owned(),
    };
    let mut stream = node.client().progress(req).await.unwrap().into_inner();
    let seen = tokio::time::timeout(LIMIT, async {
        while let Some(ev) = stream.next().await {
            if ev.unwrap().phase() == pb::progress_event::Phase::Pulling {
                return true;
            }
        }
        false
    });
    assert!(seen.await.unwrap(), "{user}'s spawn reports pulling");
}

fn reason(e: &tonic::Status) -> (String, std::collections::HashMap<String, String>) {
    let info = e.get_details_error_info().expect("a reason");
    (info.reason, info.metadata)
}

#[tokio::test]
async fn a_missing_image_is_pulled_with_byte_progress_then_started() {
    let node = node(|_| {}).await;
    let ok = node.client().start(start_req("ann", "s1", IMAGE)).await;
    assert!(ok.is_ok(), "{ok:?}");
    let evs = events(&node, "ann", "s1").await;
    let pulls: Vec<_> = evs
        .iter()
        .filter(|e| e.phase() == pb::progress_event::Phase::Pulling)
        .collect();
    assert!(!pulls.is_empty(), "{evs:?}");
    for w in pulls.windows(2) {
        assert!(w[1].bytes_done >= w[0].bytes_done, "{w:?}");
        assert!(w[1].progress >= w[0].progress, "{w:?}");
    }
    let last = pulls.last().unwrap();
    let size: u64 = LAYERS.iter().sum();
    assert_eq!(
        (last.bytes_done, last.bytes_total),
        (size, size),
        "{last:?}"
    );
    assert_eq!((last.layers_done, last.layers_total), (3, 3));
    assert_eq!(last.image, FULL);
    // Words only when new (see runtime/progress/mod.rs); every worded pull event names the image.
    let worded: Vec<&str> = pulls
        .iter()
        .map(|e| e.message.as_str())
        .filter(|m| !m.is_empty())
        .collect();
    assert!(
        !worded.is_empty()
            && worded
                .iter()
                .all(|m| m.starts_with(&format!("Pulling {FULL}"))),
        "{worded:?}"
    );
    assert!(evs.last().unwrap().ready);
    let percents: Vec<u32> = evs.iter().map(|e| e.progress).collect();
    assert!(percents.windows(2).all(|w| w[0] <= w[1]), "{percents:?}");

    // Present now: ifnotpresent does not pull again, always does.
    stop_as(&node.client, "ann", "", Stop::Now).await.unwrap();
    node.client()
        .start(start_req("ann", "s2", IMAGE))
        .await
        .unwrap();
    assert_eq!(node.fake.calls("pull"), 1);
    stop_as(&node.client, "ann", "", Stop::Now).await.unwrap();
    let req = with_policy(start_req("ann", "s3", IMAGE), pb::PullPolicy::Always);
    node.client().start(req).await.unwrap();
    assert_eq!(node.fake.calls("pull"), 2);
}

#[tokio::test]
async fn five_spawns_of_one_missing_image_share_one_pull() {
    let node = node(|_| {}).await;
    node.fake.hold_pulls(true);
    let users: Vec<String> = (0..5).map(|i| format!("u{i}")).collect();
    let starts: Vec<_> = users
        .iter()
        .map(|u| start_in_background(&node, u, "s", IMAGE))
        .collect();
    for u in &users {
        pulling(&node, u, "s").await;
    }
    assert_eq!(node.rt.pulling(), vec![FULL.to_owned()]);
    node.fake.hold_pulls(false);
    for s in starts {
        let r = tokio::time::timeout(LIMIT, s).await.unwrap().unwrap();
        assert!(r.is_ok(), "{r:?}");
    }
    assert_eq!(node.fake.calls("pull"), 1, "one pull for five spawns");
    assert_eq!(node.fake.calls("create"), 5);
    assert!(node.rt.pulling().is_empty());
}

#[tokio::test]
async fn a_pull_goes_on_while_a_spawn_follows_it_and_stops_when_none_does() {
    let node = node(|_| {}).await;
    node.fake.hold_pulls(true);
    let a = start_in_background(&node, "a", "s", IMAGE);
    let b = start_in_background(&node, "b", "s", IMAGE);
    pulling(&node, "a", "s").await;
    pulling(&node, "b", "s").await;
    // The hub gives up on a's spawn: b still follows the pull.
    stop_as(&node.client, "a", "", Stop::Now).await.unwrap();
    let e = tokio::time::timeout(LIMIT, a)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert_eq!(reason(&e).0, "CANCELLED_BY_STOP", "{e:?}");
    assert_eq!(node.rt.pulling(), vec![FULL.to_owned()]);
    node.fake.hold_pulls(false);
    tokio::time::timeout(LIMIT, b)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(node.fake.calls("pull"), 1);

    // Nobody follows: the pull is cancelled and the image never lands.
    let other = "registry.test:5000/team/other:2";
    node.fake
        .publish_image(other, Behaviour::Serve, &LAYERS, None);
    node.fake.hold_pulls(true);
    let c = start_in_background(&node, "c", "s", other);
    pulling(&node, "c", "s").await;
    stop_as(&node.client, "c", "", Stop::Now).await.unwrap();
    let e = tokio::time::timeout(LIMIT, c)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert_eq!(reason(&e).0, "CANCELLED_BY_STOP");
    let gone = common::eventually(LIMIT, || async {
        node.rt.pulling().is_empty().then_some(())
    });
    assert!(gone.await.is_some(), "{:?}", node.rt.pulling());
    node.fake.hold_pulls(false);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let req = with_policy(start_req("c", "s2", other), pb::PullPolicy::Never);
    let e = node.client().start(req).await.unwrap_err();
    assert_eq!(
        reason(&e).0,
        "IMAGE_NOT_FOUND",
        "the cancelled pull left no image"
    );
}

#[tokio::test]
async fn failed_pulls_fail_at_once_with_their_cause_and_create_nothing() {
    let node = node(|_| {}).await;
    let cases = [
        (
            with_policy(
                start_req("n", "s", "registry.test:5000/team/absent:1"),
                pb::PullPolicy::Never,
            ),
            Code::NotFound,
            "IMAGE_NOT_FOUND",
            "never",
        ),
        (
            start_req("t", "s", "registry.test:5000/team/nb:nope"),
            Code::FailedPrecondition,
            "IMAGE_PULL_FAILED",
            "not_found",
        ),
    ];
    for (req, code, want, cause) in cases {
        let image = req.image.clone();
        let e = node.client().start(req).await.unwrap_err();
        let (r, meta) = reason(&e);
        assert_eq!((e.code(), r.as_str()), (code, want), "{e:?}");
        assert!(e.message().contains(&image), "{}", e.message());
        if want == "IMAGE_PULL_FAILED" {
            assert_eq!(meta.get("cause").map(String::as_str), Some(cause));
            assert_eq!(meta.get("image").map(String::as_str), Some(image.as_str()));
        } else {
            assert!(e.message().contains(cause), "{}", e.message());
        }
    }
    assert_eq!(node.fake.calls("create"), 0);
    assert_eq!(node.fake.calls("pull"), 1, "never does not pull");
}

#[tokio::test]
async fn credentials_come_from_the_node_or_an_allowed_pull_secret() {
    let dir = common::temp_dir("pull-auth");
    let file = |password: &str| {
        let text = format!(
            r#"{{"auths": {{"registry.test:5000": {{"username": "ann", "password": "{password}"}}}}}}"#
        );
        let path = common::write_file(&dir, &format!("{password}.json"), &text);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    };
    let (right, wrong) = (file("s3cret"), file("wrong"));
    let private = "registry.test:5000/team/private:1";

    let node_wrong = node(|cfg| cfg.pulls.auth_file = Some(wrong.clone())).await;
    node_wrong
        .fake
        .publish_image(private, Behaviour::Serve, &LAYERS, Some(auth("s3cret")));
    let e = node_wrong
        .client()
        .start(start_req("a", "s", private))
        .await
        .unwrap_err();
    assert_eq!(
        reason(&e).1.get("cause").map(String::as_str),
        Some("unauthorized"),
        "{e:?}"
    );
    assert!(
        e.message().contains("authentication required"),
        "{}",
        e.message()
    );
    assert!(!e.message().contains("wrong"), "{}", e.message());
    // A pull secret is refused unless the node policy allows it.
    let mut req = start_req("b", "s", private);
    req.pull_secret = Some(pb::RegistryCredentials {
        username: "ann".into(),
        password: "s3cret".into(),
    });
    let e = node_wrong.client().start(req.clone()).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(!e.message().contains("s3cret"), "{}", e.message());
    drop(node_wrong);

    let node_right = node(|cfg| cfg.pulls.auth_file = Some(right.clone())).await;
    node_right
        .fake
        .publish_image(private, Behaviour::Serve, &LAYERS, Some(auth("s3cret")));
    node_right
        .client()
        .start(start_req("a", "s", private))
        .await
        .unwrap();

    let node_secret = node(|cfg| cfg.policy.allow_pull_secrets = true).await;
    node_secret
        .fake
        .publish_image(private, Behaviour::Serve, &LAYERS, Some(auth("s3cret")));
    node_secret.client().start(req).await.unwrap();
    let records = std::fs::read_dir(node_secret.state_dir.join("servers")).unwrap();
    for f in records {
        let bytes = std::fs::read(f.unwrap().path()).unwrap();
        assert!(
            !String::from_utf8_lossy(&bytes).contains("s3cret"),
            "a pull secret is never kept"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn prepull_pulls_each_image_with_progress_and_reports_each_outcome() {
    let node = node(|cfg| cfg.policy.allowed_images = vec!["registry.test:5000/*".into()]).await;
    let req = pb::PrepullRequest {
        images: vec![IMAGE.into(), "registry.test:5000/team/absent:1".into()],
    };
    let stream = node.client().prepull(req).await.unwrap().into_inner();
    let events: Vec<pb::PrepullEvent> =
        tokio::time::timeout(LIMIT, stream.map(Result::unwrap).collect())
            .await
            .unwrap();
    let of = |image: &str| -> Vec<&pb::PrepullEvent> {
        events.iter().filter(|e| e.image == image).collect()
    };
    let first = of(FULL);
    let last = first.last().unwrap();
    assert!(last.done && last.error.is_empty(), "{last:?}");
    let bytes: Vec<u64> = first
        .iter()
        .filter_map(|e| e.progress.as_ref())
        .map(|p| p.bytes_done)
        .collect();
    assert!(
        !bytes.is_empty() && bytes.windows(2).all(|w| w[0] <= w[1]),
        "{bytes:?}"
    );
    assert_eq!(*bytes.last().unwrap(), LAYERS.iter().sum::<u64>());
    let second = of("registry.test:5000/team/absent:1");
    let last = second.last().unwrap();
    assert!(!last.done && last.reason == "IMAGE_PULL_FAILED", "{last:?}");
    assert!(last.error.contains("no such repository"), "{}", last.error);
    assert_eq!(node.fake.calls("create"), 0, "a prepull starts no server");

    // The node policy applies per image: one it does not allow is refused before any pull,
    // with its own event, and the next image still pulls.
    let req = pb::PrepullRequest {
        images: vec!["docker.io/library/ubuntu:22.04".into(), IMAGE.into()],
    };
    let stream = node.client().prepull(req).await.unwrap().into_inner();
    let events: Vec<pb::PrepullEvent> =
        tokio::time::timeout(LIMIT, stream.map(Result::unwrap).collect())
            .await
            .unwrap();
    let denied = &events[0];
    assert_eq!(denied.image, "docker.io/library/ubuntu:22.04");
    assert!(
        !denied.done && denied.reason == "POLICY_DENIED",
        "{denied:?}"
    );
    assert!(denied.error.contains("allowed_images"), "{}", denied.error);
    let last = events.last().unwrap();
    assert!(last.image == FULL && last.done, "{last:?}");
    // Two pulls above and the allowed image again; never the refused one.
    assert_eq!(node.fake.calls("pull"), 3);
}
