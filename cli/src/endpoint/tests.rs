//! Endpoint resolution: flags, berthd's config file, the default sockets.

use super::*;

fn args() -> ConnArgs {
    ConnArgs {
        endpoint: None,
        config: None,
        token_file: None,
        ca: None,
        cert: None,
        key: None,
    }
}

#[test]
fn endpoints_parse_or_say_what_is_expected() {
    let a = args();
    assert_eq!(
        parse_endpoint("unix:/run/berth/admin.sock", &a).expect("ok"),
        Target::Unix("/run/berth/admin.sock".into())
    );
    assert_eq!(
        parse_endpoint("unix:///run/b.sock", &a).expect("ok"),
        Target::Unix("/run/b.sock".into())
    );
    let Target::Tcp(t) = parse_endpoint("https://node-1:50051/", &a).expect("ok") else {
        panic!("tcp")
    };
    assert_eq!(t.url, "https://node-1:50051");
    for bad in ["unix:rel.sock", "node-1:50051", "ftp://x"] {
        assert!(parse_endpoint(bad, &a).is_err(), "{bad}");
    }
}

#[test]
fn the_config_gives_its_admin_socket_then_its_listener_with_its_credentials() {
    let cfg = Config::from_toml(
        r#"
        listen = "0.0.0.0:7000"
        admin_socket = "/run/x/admin.sock"
        [security]
        token_file = "/etc/berth/token"
        tls_cert_file = "/etc/berth/node.pem"
        tls_key_file = "/etc/berth/node.key"
        client_ca_file = "/etc/berth/ca.pem"
        "#,
    )
    .expect("parses");
    let t = from_config(&cfg, &args());
    assert_eq!(t[0], Target::Unix("/run/x/admin.sock".into()));
    assert_eq!(
        t[1],
        Target::Tcp(Tcp {
            url: "https://127.0.0.1:7000".into(),
            server_name: "localhost".into(),
            ca: Some("/etc/berth/ca.pem".into()),
            identity: Some(("/etc/berth/node.pem".into(), "/etc/berth/node.key".into())),
            token_file: Some("/etc/berth/token".into()),
        })
    );
    let mut flags = args();
    flags.token_file = Some("/mine".into());
    let Target::Tcp(t) = &from_config(&cfg, &flags)[1] else {
        panic!("tcp")
    };
    assert_eq!(t.token_file, Some("/mine".into()));
}

#[test]
fn without_a_config_the_default_admin_sockets_are_tried_and_a_present_one_is_read() {
    let absent = Path::new("/nonexistent/berth/config.toml");
    let (t, _) = targets_with(&args(), absent).expect("targets");
    assert_eq!(t[0], Target::Unix("/run/berth/admin.sock".into()));
    let named = ConnArgs {
        config: Some(absent.to_owned()),
        ..args()
    };
    assert!(
        targets_with(&named, absent).is_err(),
        "a named file must exist"
    );
    let dir = std::env::temp_dir().join(format!("berthctl-ep-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("config.toml");
    std::fs::write(&file, "admin_socket = \"/run/y/admin.sock\"\n").expect("write");
    let (t, _) = targets_with(&args(), &file).expect("targets");
    assert_eq!(t[0], Target::Unix("/run/y/admin.sock".into()));
    // A default file that cannot be read (not root) leaves the default sockets.
    let unreadable = dir.join("is-a-directory.toml");
    std::fs::create_dir_all(&unreadable).expect("dir");
    let (t, why) = targets_with(&args(), &unreadable).expect("targets");
    assert_eq!(t[0], Target::Unix("/run/berth/admin.sock".into()));
    assert!(why.contains("is-a-directory.toml"), "{why}");
    let ep = ConnArgs {
        endpoint: Some("unix:/e.sock".into()),
        ..args()
    };
    let (t, _) = targets_with(&ep, &file).expect("targets");
    assert_eq!(t, vec![Target::Unix("/e.sock".into())], "the flag wins");
    std::fs::remove_dir_all(&dir).ok();
}
