//! A user's volumes on a node (real Docker, real berthd): made with their owner on first use,
//! listed with size and last use, made with the driver options asked for, removed with the
//! user; and templated host paths made beneath their root with the configured owner and mode.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use berth_proto::v1 as pb;
use common::{Daemon, docker, key, tiny_start, unique};
use tonic::Code;

fn volume(source: &str, target: &str) -> pb::Volume {
    pb::Volume {
        source: source.to_owned(),
        target: target.to_owned(),
        ..Default::default()
    }
}

async fn list(d: &Daemon, user: &str, sizes: bool) -> Vec<pb::UserVolume> {
    let r = d
        .client()
        .await
        .list_volumes(pb::ListVolumesRequest {
            user: user.to_owned(),
            sizes,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.node_id, d.node_id);
    r.volumes
}

#[tokio::test]
async fn a_users_volumes_are_made_with_their_owner_listed_and_removed_with_the_user() {
    let d = Daemon::start();
    let c = d.client().await;
    let user = unique("Vol Ünï");
    let mut req = tiny_start(&user, "s1");
    req.volumes
        .push(volume("berth-test-home-{user}", "/home/data"));
    req.volumes
        .push(volume("berth-test-scratch-{user}-{server}", "/scratch"));
    let started = c.clone().start(req).await.unwrap().into_inner();
    // 2 MB in the home volume, for the size.
    docker(&[
        "exec",
        &started.container_id,
        "dd",
        "if=/dev/zero",
        "of=/home/data/f",
        "bs=1024",
        "count=2048",
    ]);

    let vols = list(&d, &user, true).await;
    assert_eq!(vols.len(), 2, "{vols:?}");
    let home = vols
        .iter()
        .find(|v| v.name.starts_with("berth-test-home-"))
        .unwrap();
    assert_eq!(
        home.owner,
        key(&user, ""),
        "a {{user}} volume belongs to the user"
    );
    assert_eq!(home.driver, "local");
    assert!(
        home.size_bytes >= 2 * 1024 * 1024,
        "size {}",
        home.size_bytes
    );
    assert!(home.last_used.is_some());
    let scratch = vols
        .iter()
        .find(|v| v.name.starts_with("berth-test-scratch-"))
        .unwrap();
    assert_eq!(scratch.owner, key(&user, ""));
    assert!(
        scratch.size_bytes >= 0 && scratch.size_bytes < 1024 * 1024,
        "{}",
        scratch.size_bytes
    );
    // Without sizes asked, none are measured; another user sees none of these.
    assert!(
        list(&d, &user, false)
            .await
            .iter()
            .all(|v| v.size_bytes == -1)
    );
    assert!(list(&d, &unique("other"), false).await.is_empty());
    let labels = docker(&["volume", "inspect", "-f", "{{json .Labels}}", &home.name]);
    assert!(
        labels.contains("\"berth.volume-scope\":\"user\""),
        "{labels}"
    );

    c.clone()
        .delete_forever(pb::DeleteForeverRequest {
            key: key(&user, ""),
        })
        .await
        .unwrap();
    assert!(list(&d, &user, false).await.is_empty());
    assert_eq!(
        docker(&[
            "volume",
            "ls",
            "-q",
            "--filter",
            &format!("name={}", home.name)
        ]),
        ""
    );
}

#[tokio::test]
async fn driver_options_are_used_and_bind_options_refused() {
    let d = Daemon::start();
    let c = d.client().await;
    let user = unique("drv");
    let mut req = tiny_start(&user, "s1");
    let mut v = volume("berth-test-tmp-{user}", "/fast");
    v.driver = "local".into();
    v.driver_opts = [("type", "tmpfs"), ("device", "tmpfs"), ("o", "size=16m")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    req.volumes.push(v.clone());
    let started = c.clone().start(req).await.unwrap().into_inner();
    let mounts = docker(&[
        "exec",
        &started.container_id,
        "grep",
        " /fast ",
        "/proc/mounts",
    ]);
    assert!(mounts.starts_with("tmpfs /fast tmpfs"), "{mounts}");
    common::stop_remove(&c, &user).await;
    let name = list(&d, &user, false).await[0].name.clone();
    docker(&["volume", "rm", &name]);

    let other = unique("drvbind");
    let mut req = tiny_start(&other, "s1");
    v.driver_opts = [("type", "none"), ("o", "bind"), ("device", "/etc")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    req.volumes = vec![v];
    let err = c.clone().start(req).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("/etc"), "{}", err.message());
    assert!(list(&d, &other, false).await.is_empty(), "nothing was made");
    assert!(d.containers().is_empty());
}

#[tokio::test]
async fn a_templated_host_path_is_made_beneath_its_root_with_the_configured_owner() {
    let dir = common::temp_dir("berth-homes");
    let root = dir.join("homes");
    std::fs::create_dir(&root).unwrap();
    let cfg = common::write_file(
        &dir,
        "config.toml",
        &format!(
            "[policy]\nallowed_host_path_roots = [{:?}]\nhost_path_uid = 1000\nhost_path_gid = 100\nhost_path_mode = 0o750\n",
            root.display()
        ),
    );
    let d = Daemon::start_with(&["--config", cfg.to_str().unwrap()]);
    let c = d.client().await;
    // A user name that tries to climb out: escaped, it is one harmless directory name.
    for user in [unique("ann"), "../../etc".to_owned()] {
        let mut req = tiny_start(&user, "s1");
        req.volumes.push(volume(
            &format!("{}/{{user}}/work", root.display()),
            "/home/work",
        ));
        let started = c.clone().start(req).await.unwrap().into_inner();
        docker(&[
            "exec",
            &started.container_id,
            "sh",
            "-c",
            "echo mine > /home/work/f",
        ]);
        let made = root.join(berthd::key::escape(&user));
        let meta = std::fs::metadata(made.join("work")).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (1000, 100));
        assert_eq!(meta.permissions().mode() & 0o7777, 0o750);
        assert_eq!(
            std::fs::read_to_string(made.join("work/f")).unwrap(),
            "mine\n"
        );
        common::stop_remove(&c, &user).await;
    }
    assert_eq!(std::fs::read_dir(&root).unwrap().count(), 2);
    // `..` written into the template itself is bad input, refused before anything happens.
    let mut req = tiny_start(&unique("bad"), "s1");
    req.volumes.push(volume(
        &format!("{}/{{user}}/../../x", root.display()),
        "/x",
    ));
    let err = c.clone().start(req).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().starts_with("volumes[0].source"),
        "{}",
        err.message()
    );
    drop(d);
    std::fs::remove_dir_all(dir).unwrap();
}
