//! Container options against a real dockerd, through the real berthd binary: each one lands in
//! `docker inspect`; a policy that forbids or bounds one refuses the Start naming it.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use berth_proto::v1 as pb;
use common::*;
use futures::StreamExt;
use tonic::Code;

fn inspect(id: &str, format: &str) -> String {
    docker(&["inspect", "--format", format, id])
}

/// Every option set, on the tiny image.
fn all_options(network: &str) -> pb::ContainerOptions {
    pb::ContainerOptions {
        user: "1234:2345".into(),
        group_add: vec!["3456".into()],
        working_dir: "/www".into(),
        shm_size_bytes: 256 << 20,
        pids_limit: 321,
        ulimits: vec![pb::Ulimit {
            name: "nofile".into(),
            soft: 1000,
            hard: 2000,
        }],
        extra_hosts: vec!["db.example:10.1.2.3".into()],
        dns: vec!["10.9.8.7".into()],
        dns_search: vec!["corp.example".into()],
        read_only_rootfs: true,
        tmpfs: vec!["/scratch".into()],
        network_name: network.into(),
        post_start_cmd: vec!["sh".into(), "-c".into(), "echo done > /scratch/post".into()],
    }
}

#[tokio::test]
async fn each_container_option_appears_in_docker_inspect() {
    let dir = temp_dir("berth-opts");
    let cfg = write_file(
        &dir,
        "config.toml",
        "[policy.container_options]\nallow_network_create = true\n",
    );
    let d = Daemon::start_with(&["--config", cfg.to_str().unwrap()]);
    let mut c = d.client().await;
    let user = unique("opts");
    let network = unique("berth-test-net");
    let req = pb::StartRequest {
        options: Some(all_options(&network)),
        labels: [("team".to_owned(), "physics".to_owned())].into(),
        ..tiny_start(&user, "o1")
    };
    let r = c.start(req).await.unwrap().into_inner();
    let id = &r.container_id;
    for (format, want) in [
        ("{{.Config.User}}", "1234:2345"),
        ("{{json .HostConfig.GroupAdd}}", r#"["3456"]"#),
        ("{{.Config.WorkingDir}}", "/www"),
        ("{{.HostConfig.ShmSize}}", "268435456"),
        ("{{.HostConfig.PidsLimit}}", "321"),
        (
            "{{json .HostConfig.Ulimits}}",
            r#"[{"Name":"nofile","Hard":2000,"Soft":1000}]"#,
        ),
        (
            "{{json .HostConfig.ExtraHosts}}",
            r#"["db.example:10.1.2.3"]"#,
        ),
        ("{{json .HostConfig.Dns}}", r#"["10.9.8.7"]"#),
        ("{{json .HostConfig.DnsSearch}}", r#"["corp.example"]"#),
        ("{{.HostConfig.ReadonlyRootfs}}", "true"),
        ("{{json .HostConfig.Tmpfs}}", r#"{"/scratch":""}"#),
        ("{{.HostConfig.NetworkMode}}", network.as_str()),
        ("{{index .Config.Labels \"team\"}}", "physics"),
    ] {
        assert_eq!(inspect(id, format), want, "{format}");
    }
    let nets = inspect(id, "{{json .NetworkSettings.Networks}}");
    assert!(nets.contains(&network), "attached to {network}: {nets}");
    assert_eq!(
        docker(&[
            "network",
            "inspect",
            "--format",
            "{{index .Labels \"berth.managed\"}}",
            &network
        ]),
        "true",
        "the node made the missing network"
    );
    // The server answers through its published port on the user network.
    let (code, _) = http_get(&r.url).await;
    assert_eq!(code, 200);
    // The post-start command ran, as the container's user, once it answered.
    assert_eq!(docker(&["exec", id, "cat", "/scratch/post"]), "done");
    stop_remove(&c, &user).await;
    docker(&["network", "rm", &network]);
}

#[tokio::test]
async fn a_failing_post_start_cmd_is_shown_and_the_server_keeps_running() {
    let d = Daemon::start();
    let mut c = d.client().await;
    let user = unique("post");
    let req = pb::StartRequest {
        options: Some(pb::ContainerOptions {
            post_start_cmd: vec!["sh".into(), "-c".into(), "exit 3".into()],
            ..Default::default()
        }),
        ..tiny_start(&user, "p1")
    };
    let mut progress = c
        .progress(pb::ProgressRequest {
            key: key(&user, ""),
            spawn_id: "p1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let r = c.start(req).await.unwrap().into_inner();
    let mut messages = Vec::new();
    while let Some(e) = progress.next().await {
        messages.push(e.unwrap().message);
    }
    assert!(
        messages
            .iter()
            .any(|m| m.contains("post_start_cmd failed (exited with 3)")),
        "{messages:?}"
    );
    assert_eq!(http_get(&r.url).await.0, 200, "the server keeps running");
    assert!(d.log_text().contains("post_start_cmd failed"));
    stop_remove(&c, &user).await;
}

#[tokio::test]
async fn a_policy_refuses_a_forbidden_or_out_of_bounds_option_naming_it_and_creates_nothing() {
    let dir = temp_dir("berth-opts-policy");
    let cfg = write_file(
        &dir,
        "config.toml",
        "[policy.container_options]\nforbidden = [\"dns\", \"post_start_cmd\"]\nmin_uid = 1000\nmax_shm_size_bytes = 1073741824\nmax_pids_limit = 4096\nallowed_networks = [\"lab-*\"]\n",
    );
    let d = Daemon::start_with(&["--config", cfg.to_str().unwrap()]);
    let mut c = d.client().await;
    let user = unique("denied");
    let cases: Vec<(&str, pb::ContainerOptions)> = vec![
        (
            "container_options.forbidden",
            pb::ContainerOptions {
                dns: vec!["1.1.1.1".into()],
                ..Default::default()
            },
        ),
        (
            "container_options.forbidden",
            pb::ContainerOptions {
                post_start_cmd: vec!["true".into()],
                ..Default::default()
            },
        ),
        (
            "container_options.min_uid",
            pb::ContainerOptions {
                user: "0".into(),
                ..Default::default()
            },
        ),
        (
            "container_options.max_shm_size_bytes",
            pb::ContainerOptions {
                shm_size_bytes: 2 << 30,
                ..Default::default()
            },
        ),
        (
            "container_options.max_pids_limit",
            pb::ContainerOptions {
                pids_limit: 10_000,
                ..Default::default()
            },
        ),
        (
            "container_options.allowed_networks",
            pb::ContainerOptions {
                network_name: "other".into(),
                ..Default::default()
            },
        ),
        (
            "container_options.allow_network_create",
            pb::ContainerOptions {
                network_name: unique("lab-absent"),
                ..Default::default()
            },
        ),
    ];
    for (i, (rule, options)) in cases.into_iter().enumerate() {
        let req = pb::StartRequest {
            options: Some(options),
            ..tiny_start(&user, &format!("d{i}"))
        };
        let e = c.start(req).await.unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{rule}: {e:?}");
        assert!(e.message().contains(rule), "{rule}: {}", e.message());
    }
    assert!(d.containers().is_empty(), "nothing was created");
    // Bad input is INVALID_ARGUMENT naming the field, also before anything is created.
    let req = pb::StartRequest {
        options: Some(pb::ContainerOptions {
            user: "jovyan".into(),
            ..Default::default()
        }),
        ..tiny_start(&user, "bad")
    };
    let e = c.start(req).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("options.user"), "{}", e.message());
    assert!(d.containers().is_empty());
}

#[test]
fn an_unknown_option_in_the_policy_is_a_config_error() {
    let dir = temp_dir("berth-opts-cfg");
    let cfg = write_file(
        &dir,
        "config.toml",
        "[policy.container_options]\nforbidden = [\"usr\"]\n",
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_berthd"))
        .args(["check-config", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("policy.container_options.forbidden"), "{err}");
}
