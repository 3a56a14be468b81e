use super::*;
use crate::key::ServerKey;
use crate::spec::VolumeSpec;

fn spec() -> StartSpec {
    let key = ServerKey::new("u", "").expect("valid");
    StartSpec {
        volumes: vec![VolumeSpec::new(0, &key, "home-{user}", "/home/jovyan", false).expect("ok")],
        args: vec!["--debug".into()],
        env: Env::new([
            ("JUPYTERHUB_API_TOKEN".to_owned(), "t1".to_owned()),
            ("JPY_API_TOKEN".to_owned(), "t1".to_owned()),
            ("JUPYTERHUB_OAUTH_SCOPES".to_owned(), "[\"a\"]".to_owned()),
            ("JUPYTERHUB_USER".to_owned(), "u".to_owned()),
            ("SITE".to_owned(), "one".to_owned()),
        ])
        .expect("valid"),
        resumable: true,
        ..StartSpec::plain("u", "docker.io/library/img:1")
    }
}

const IMAGE: &str = "sha256:aaa";

fn changes(
    change: impl FnOnce(&mut StartSpec) -> &'static str,
) -> (Vec<&'static str>, &'static str) {
    let before = Fingerprint::of(&spec(), IMAGE, "127.0.0.1");
    let mut s = spec();
    let mut image = IMAGE;
    let expected = change(&mut s);
    if expected == "image" {
        image = "sha256:bbb";
    }
    let after = Fingerprint::of(&s, image, "127.0.0.1");
    (before.changes(&after), expected)
}

#[test]
fn each_aspect_that_matters_is_named_when_it_changes() {
    type Change = fn(&mut StartSpec) -> &'static str;
    let cases: [Change; 8] = [
        |_| "image",
        |s| {
            s.cmd = vec!["start.sh".into()];
            "command"
        },
        |s| {
            s.args.clear();
            "command"
        },
        |s| {
            s.env = s.env.filtered(|k| k != "SITE");
            "env"
        },
        |s| {
            s.resources.mem_limit = Some(1 << 30);
            "resources"
        },
        |s| {
            s.volumes[0].read_only = true;
            "mounts"
        },
        |s| {
            s.port = 9999;
            "ports"
        },
        |s| {
            s.labels.insert("team".into(), "x".into());
            "options"
        },
    ];
    for case in cases {
        let (got, expected) = changes(case);
        assert_eq!(got, vec![expected]);
    }
}

#[test]
fn an_env_value_change_is_a_drift_but_a_new_token_is_not() {
    let before = Fingerprint::of(&spec(), IMAGE, "127.0.0.1");
    let mut s = spec();
    s.env = Env::new(
        s.env
            .entries()
            .map(|(k, v)| {
                let v = if is_per_spawn(k) { "t2" } else { v };
                (k.to_owned(), v.to_owned())
            })
            .chain([("JUPYTERHUB_CLIENT_ID".to_owned(), "new".to_owned())]),
    )
    .expect("valid");
    s.spawn_id = "s2".into();
    assert!(
        before
            .changes(&Fingerprint::of(&s, IMAGE, "127.0.0.1"))
            .is_empty()
    );
    let mut s = spec();
    s.env = Env::new(s.env.entries().map(|(k, v)| {
        let v = if k == "SITE" { "two" } else { v };
        (k.to_owned(), v.to_owned())
    }))
    .expect("valid");
    assert_eq!(
        before.changes(&Fingerprint::of(&s, IMAGE, "127.0.0.1")),
        vec!["env"]
    );
}

#[test]
fn the_label_round_trips_and_holds_no_env_value() {
    let f = Fingerprint::of(&spec(), IMAGE, "127.0.0.1");
    let label = f.to_label();
    assert_eq!(Fingerprint::parse(&label), Some(f));
    for secret in ["t1", "one"] {
        assert!(!label.contains(&format!("={secret}")), "{label}");
    }
    assert_eq!(Fingerprint::parse("image=x"), None);
    assert_eq!(Fingerprint::parse("garbage"), None);
}

#[test]
fn per_spawn_variables_follow_the_hub_contract() {
    for k in [
        "JUPYTERHUB_API_TOKEN",
        "JPY_API_TOKEN",
        "JUPYTERHUB_CLIENT_ID",
        "JUPYTERHUB_OAUTH_CALLBACK_URL",
        "JUPYTERHUB_OAUTH_ACCESS_SCOPES",
        "JUPYTERHUB_OAUTH_CLIENT_ALLOWED_SCOPES",
    ] {
        assert!(is_per_spawn(k), "{k}");
    }
    for k in ["JUPYTERHUB_USER", "JUPYTERHUB_API_URL", "MEM_LIMIT", "PATH"] {
        assert!(!is_per_spawn(k), "{k}");
    }
}

#[test]
fn the_env_file_holds_only_per_spawn_variables_quoted_for_sh() {
    let env = Env::new([
        ("JUPYTERHUB_API_TOKEN".to_owned(), "it's\nodd".to_owned()),
        ("SITE".to_owned(), "one".to_owned()),
    ])
    .expect("valid");
    let files = env_files(&env);
    assert_eq!(files[0].path, ENV_DIR);
    assert!(files[0].contents.is_none());
    let text = String::from_utf8(files[1].contents.clone().expect("a file")).expect("utf-8");
    assert_eq!(text, "JUPYTERHUB_API_TOKEN='it'\\''s\nodd'\n");
    // What /bin/sh makes of it is the value itself.
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{text}printf %s \"$JUPYTERHUB_API_TOKEN\""))
        .output()
        .expect("sh runs");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "it's\nodd");
    assert!(
        !format!("{:?}", files[1]).contains("odd"),
        "Debug shows no contents"
    );
}

#[test]
fn a_container_with_devices_or_a_start_asking_for_them_is_never_resumed() {
    let s = spec();
    let now = Fingerprint::of(&s, IMAGE, "127.0.0.1");
    let kept = |devices: &str| ContainerInfo {
        id: "c1".into(),
        name: "berth-u".into(),
        image: IMAGE.into(),
        labels: [
            (LABEL_RESUMABLE.to_owned(), "true".to_owned()),
            (LABEL_FINGERPRINT.to_owned(), now.to_label()),
            (LABEL_DEVICES.to_owned(), devices.to_owned()),
        ]
        .into_iter()
        .collect(),
        status: RunStatus::Exited,
        exit_code: Some(0),
        oom_killed: false,
        error: String::new(),
        started_at: None,
        finished_at: None,
        ports: vec![],
        memory: 0,
        nano_cpus: 0,
        memory_reservation: 0,
        cpu_shares: 0,
        pids_limit: 0,
        health: String::new(),
        restart_count: 0,
        pid: None,
    };
    assert!(
        drift(&s, &kept(""), &now).is_empty(),
        "the control: no devices, no drift"
    );
    // The device it was made with may be another server's by now.
    assert_eq!(
        drift(&s, &kept("gpu/0"), &now),
        ["devices are assigned afresh at each start"]
    );
    let mut asks = spec();
    asks.gpus.count = 1;
    assert_eq!(
        drift(&asks, &kept(""), &now),
        ["devices are assigned afresh at each start"]
    );
}
