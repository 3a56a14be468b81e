//! Table-driven tests of the configuration: every setting's names, the layers' precedence,
//! the file checks `check-config` and `serve` share, and the TOML the configuration prints as.

use std::sync::atomic::{AtomicUsize, Ordering};

use clap::{Args, FromArgMatches};
use toml::Value;

use super::*;

fn temp_dir() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "berth-cfg-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    dir
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    path
}

fn value_at(cfg: &Config, key: &str) -> Value {
    let tree = Value::try_from(cfg).expect("serialisable");
    layers_lookup(&tree, key).expect("key present").clone()
}

fn layers_lookup<'v>(tree: &'v Value, key: &str) -> Option<&'v Value> {
    key.split('.').try_fold(tree, |v, part| v.get(part))
}

/// The documented names: the e2e suite, the systemd unit and operators' scripts use them.
const DOCUMENTED: &[(&str, &str, &str)] = &[
    ("node_id", "BERTH_NODE_ID", "node-id"),
    ("listen", "BERTH_LISTEN", "listen"),
    ("state_dir", "BERTH_STATE_DIR", "state-dir"),
    ("admin_socket", "BERTH_ADMIN_SOCKET", "admin-socket"),
    ("docker.host", "BERTH_DOCKER_HOST", "docker-host"),
    (
        "docker.publish_host_ip",
        "BERTH_PUBLISH_HOST_IP",
        "publish-host-ip",
    ),
    (
        "docker.advertise_host",
        "BERTH_ADVERTISE_HOST",
        "advertise-host",
    ),
    ("security.token_file", "BERTH_TOKEN_FILE", "token-file"),
    (
        "security.tls_cert_file",
        "BERTH_TLS_CERT_FILE",
        "tls-cert-file",
    ),
    (
        "security.tls_key_file",
        "BERTH_TLS_KEY_FILE",
        "tls-key-file",
    ),
    (
        "security.client_ca_file",
        "BERTH_CLIENT_CA_FILE",
        "client-ca-file",
    ),
    ("metrics.listen", "BERTH_METRICS_LISTEN", "metrics-listen"),
];

#[test]
fn every_setting_has_its_documented_names_and_a_key_in_the_file() {
    let all: Vec<_> = settings().collect();
    assert_eq!(all.len(), DOCUMENTED.len(), "{all:#?}");
    let defaults = Value::try_from(Config::default()).expect("serialisable");
    for &(key, env, flag) in DOCUMENTED {
        let s = settings()
            .find(|s| s.key == key)
            .unwrap_or_else(|| panic!("{key} is settable"));
        assert_eq!((s.env, s.flag), (env, flag), "{key}");
        assert_eq!(
            s.env,
            format!("BERTH_{}", s.flag.to_uppercase().replace('-', "_")),
            "{key}: the variable is the flag's name"
        );
        assert!(!s.help.trim().is_empty(), "{key} has help");
        let default = layers_lookup(&defaults, key).unwrap_or_else(|| panic!("{key} in file"));
        assert!(
            matches!(default, Value::String(_)),
            "{key} is a scalar the command line can give"
        );
    }
}

#[test]
fn every_flag_is_a_clap_argument_with_its_env_and_help() {
    let mut cmd = Overrides::augment_args(clap::Command::new("t"));
    let help = cmd.render_long_help().to_string();
    for s in settings() {
        assert!(help.contains(&format!("--{}", s.flag)), "{help}");
        assert!(help.contains(&format!("[env: {}]", s.env)), "{help}");
        let m = Overrides::augment_args(clap::Command::new("t"))
            .try_get_matches_from(["t", &format!("--{}", s.flag), "v"])
            .expect("parses");
        let o = Overrides::from_arg_matches(&m).expect("matches");
        assert_eq!(o.values, vec![(s, "v".to_owned())]);
    }
    assert!(help.contains("[default: 127.0.0.1:50051]"), "{help}");
    assert!(help.contains("--config"), "{help}");
}

/// For each setting: the file's value, the env's and the flag's.
const LAYER_VALUES: &[(&str, [&str; 3])] = &[
    ("node_id", ["n-file", "n-env", "n-flag"]),
    ("listen", ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]),
    ("state_dir", ["/s/file", "/s/env", "/s/flag"]),
    ("admin_socket", ["/a/file", "/a/env", "/a/flag"]),
    (
        "docker.host",
        ["tcp://file:1", "tcp://env:2", "tcp://flag:3"],
    ),
    (
        "docker.publish_host_ip",
        ["10.0.0.1", "10.0.0.2", "10.0.0.3"],
    ),
    (
        "docker.advertise_host",
        ["file.example", "env.example", "flag.example"],
    ),
    ("security.token_file", ["/t/file", "/t/env", "/t/flag"]),
    ("security.tls_cert_file", ["/c/file", "/c/env", "/c/flag"]),
    ("security.tls_key_file", ["/k/file", "/k/env", "/k/flag"]),
    (
        "security.client_ca_file",
        ["/ca/file", "/ca/env", "/ca/flag"],
    ),
    (
        "metrics.listen",
        ["127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"],
    ),
];

#[test]
fn precedence_is_defaults_then_file_then_env_then_flags_for_every_setting() {
    assert_eq!(LAYER_VALUES.len(), settings().count());
    // (file, env, flag) given → which value wins; None = the default.
    let layers: [([bool; 3], Option<usize>); 7] = [
        ([false, false, false], None),
        ([true, false, false], Some(0)),
        ([false, true, false], Some(1)),
        ([false, false, true], Some(2)),
        ([true, true, false], Some(1)),
        ([true, false, true], Some(2)),
        ([true, true, true], Some(2)),
    ];
    for &(key, values) in LAYER_VALUES {
        let s = settings().find(|s| s.key == key).expect("settable");
        for (given, wins) in layers {
            let cfg = if given[0] {
                Config::from_toml(&format!("{key} = {:?}", values[0])).expect("file")
            } else {
                Config::default()
            };
            let env = [(s.env, values[1])];
            let no_env = [("BERTH_UNRELATED", "x")];
            let env: &dyn EnvSource = if given[1] { &env } else { &no_env };
            let mut flags = Overrides::default();
            if given[2] {
                flags = flags.with(s.flag, values[2]).expect("flag");
            }
            let got = layers::apply(cfg, env, &flags).expect("applies");
            let want = match wins {
                Some(i) => Value::String(values[i].to_owned()),
                None => value_at(&Config::default(), key),
            };
            assert_eq!(value_at(&got, key), want, "{key} with {given:?}");
        }
    }
}

#[test]
fn load_reads_the_file_named_by_flag_or_env_and_layers_over_it() {
    let dir = temp_dir();
    let path = write(
        &dir,
        "c.toml",
        "node_id = \"from-file\"\nlisten = \"127.0.0.1:1\"\n",
    );
    let other = write(&dir, "o.toml", "node_id = \"other-file\"\n");
    let env = [
        ("BERTH_CONFIG", other.to_str().expect("utf-8")),
        ("BERTH_LISTEN", "127.0.0.1:2"),
    ];
    let flags = Overrides {
        config: Some(path),
        ..Default::default()
    };
    let cfg = Config::load(&env, &flags).expect("valid config");
    assert_eq!(cfg.node_id, "from-file", "--config wins over BERTH_CONFIG");
    assert_eq!(cfg.listen.port(), 2);
    let cfg = Config::load(&env, &Overrides::default()).expect("valid config");
    assert_eq!(cfg.node_id, "other-file");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn embedded_default_is_valid() {
    let cfg = Config::load(&[("X", "y")], &Overrides::default()).expect("default valid");
    assert_eq!(cfg.listen, DEFAULT_LISTEN);
    assert_eq!(cfg.advertise_host(), "127.0.0.1");
}

#[test]
fn bad_values_name_their_key() {
    let cases = [
        ("lisen = \"x\"", "lisen"),
        ("[docker]\ntimeout_seconds = \"x\"", "timeout_seconds"),
        ("[spawn]\nbogus = 1", "bogus"),
    ];
    for (text, key) in cases {
        let err = Config::from_toml(text).expect_err(text);
        assert!(err.contains(key), "{err:?} should name {key}");
    }
    let mut cfg = Config::default();
    cfg.docker.timeout_seconds = 0;
    let err = cfg.validate().expect_err("zero").to_string();
    assert!(err.contains("docker.timeout_seconds"), "{err}");
    let cfg = Config {
        node_id: "no spaces".into(),
        ..Default::default()
    };
    let err = cfg.validate().expect_err("space").to_string();
    assert!(err.contains("node_id"), "{err}");
}

#[test]
fn a_bad_env_or_flag_value_names_its_key_and_where_it_came_from() {
    /// (env, flag, what the error must name)
    type Case = (
        &'static [(&'static str, &'static str)],
        Option<(&'static str, &'static str)>,
        &'static [&'static str],
    );
    let cases: [Case; 3] = [
        (
            &[("BERTH_LISTEN", "nope")],
            None,
            &["listen", "BERTH_LISTEN", "nope"],
        ),
        (
            &[],
            Some(("publish-host-ip", "x.y")),
            &["docker.publish_host_ip", "--publish-host-ip"],
        ),
        (&[("BERTH_NODE_ID", "has space")], None, &["node_id"]),
    ];
    struct Vars(&'static [(&'static str, &'static str)]);
    impl EnvSource for Vars {
        fn var(&self, name: &str) -> Option<String> {
            self.0
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }
    for (env, flag, named) in cases {
        let flags = match flag {
            Some((f, v)) => Overrides::default().with(f, v).expect("flag"),
            None => Overrides::default(),
        };
        let err = Config::load(&Vars(env), &flags)
            .expect_err("bad")
            .to_string();
        for n in named {
            assert!(err.contains(n), "{err} should name {n}");
        }
    }
}

struct Pki {
    cert: String,
    key: String,
    other_key: String,
}

fn pki() -> Pki {
    let key = rcgen::KeyPair::generate().expect("key");
    let params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
    let cert = params.self_signed(&key).expect("cert");
    Pki {
        cert: cert.pem(),
        key: key.serialize_pem(),
        other_key: rcgen::KeyPair::generate().expect("key").serialize_pem(),
    }
}

#[test]
fn files_are_checked_and_a_bad_one_is_named_with_its_key() {
    let p = pki();
    let dir = temp_dir();
    let cert = write(&dir, "cert.pem", &p.cert);
    let key = write(&dir, "key.pem", &p.key);
    let other_key = write(&dir, "other.key", &p.other_key);
    let token = write(&dir, "token", "0123456789abcdef-secret\n");
    let short = write(&dir, "short", "abc\n");
    let spaced = write(&dir, "spaced", "0123456789 abcdef-secret\n");
    let control = write(&dir, "control", "0123456789\x07abcdef-secret\n");
    let empty = write(&dir, "empty", "\n");
    let garbage = write(&dir, "garbage.pem", "not a certificate\n");
    let missing = dir.join("missing");
    let private = |name: &str, text: &str| {
        let p = write(&dir, name, text);
        let mode = <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o600);
        std::fs::set_permissions(&p, mode).expect("chmod");
        p
    };
    let auths = r#"{"auths": {"r.example": {"username": "u", "password": "abcdef-secret"}}}"#;
    let auth_ok = private("auth.json", auths);
    let auth_open = write(&dir, "auth-open.json", auths);
    let auth_bad = private(
        "auth-bad.json",
        r#"{"auths": {"r": {"auth": "abcdef-secret"}}}"#,
    );
    let s = |p: &PathBuf| p.to_str().expect("utf-8").to_owned();
    let images = |f: &PathBuf| format!("[images]\nregistry_auth_file = {:?}\n", s(f));
    let mtls = |c: &PathBuf, k: &PathBuf, ca: &PathBuf, t: &PathBuf| {
        format!(
            "[security]\ntls_cert_file = {:?}\ntls_key_file = {:?}\nclient_ca_file = {:?}\ntoken_file = {:?}\n",
            s(c),
            s(k),
            s(ca),
            s(t)
        )
    };
    let activity = |t: &PathBuf, ca: &str| {
        format!(
            "[activity]\nenabled = true\nhub_api_url = \"http://hub:8081/hub/api\"\ntoken_file = {:?}\nca_file = {ca:?}\n",
            s(t)
        )
    };
    // (configuration, None = valid or Some((key named, file named)))
    let cases: Vec<(String, Option<(&str, &PathBuf)>)> = vec![
        (images(&auth_ok), None),
        (
            images(&auth_open),
            Some(("images.registry_auth_file", &auth_open)),
        ),
        (
            images(&auth_bad),
            Some(("images.registry_auth_file", &auth_bad)),
        ),
        (
            images(&missing),
            Some(("images.registry_auth_file", &missing)),
        ),
        (mtls(&cert, &key, &cert, &token), None),
        (activity(&token, &s(&cert)), None),
        (activity(&token, ""), None),
        (
            mtls(&missing, &key, &cert, &token),
            Some(("security.tls_cert_file", &missing)),
        ),
        (
            mtls(&garbage, &key, &cert, &token),
            Some(("security.tls_cert_file", &garbage)),
        ),
        (
            mtls(&cert, &missing, &cert, &token),
            Some(("security.tls_key_file", &missing)),
        ),
        (
            mtls(&cert, &cert, &cert, &token),
            Some(("security.tls_key_file", &cert)),
        ),
        (
            mtls(&cert, &other_key, &cert, &token),
            Some(("security.tls_key_file", &other_key)),
        ),
        (
            mtls(&cert, &key, &missing, &token),
            Some(("security.client_ca_file", &missing)),
        ),
        (
            mtls(&cert, &key, &key, &token),
            Some(("security.client_ca_file", &key)),
        ),
        (
            mtls(&cert, &key, &cert, &missing),
            Some(("security.token_file", &missing)),
        ),
        (
            mtls(&cert, &key, &cert, &short),
            Some(("security.token_file", &short)),
        ),
        (mtls(&cert, &key, &cert, &spaced), None),
        (
            mtls(&cert, &key, &cert, &control),
            Some(("security.token_file", &control)),
        ),
        (
            activity(&missing, ""),
            Some(("activity.token_file", &missing)),
        ),
        (activity(&empty, ""), Some(("activity.token_file", &empty))),
        (
            activity(&token, &s(&garbage)),
            Some(("activity.ca_file", &garbage)),
        ),
    ];
    for (text, want) in cases {
        let cfg = Config::from_toml(&text).expect("parses");
        match (cfg.validate(), want) {
            (Ok(()), None) => {}
            (Err(e), Some((key, file))) => {
                let e = e.to_string();
                assert!(
                    e.contains(key) && e.contains(&s(file)),
                    "{e} should name {key}, {file:?}"
                );
                assert!(!e.contains("abcdef-secret"), "never quotes a token: {e}");
            }
            (got, want) => panic!("{text}: got {got:?}, want {want:?}"),
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn the_configuration_prints_as_toml_that_reads_back_the_same() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../systemd/config.toml");
    for cfg in [
        Config::default(),
        Config::from_file(Path::new(example)).expect("example parses"),
    ] {
        let text = cfg.to_toml().expect("prints");
        assert_eq!(Config::from_toml(&text).expect("reads back"), cfg, "{text}");
        assert!(
            text.contains("[security]") && text.contains("token_file"),
            "{text}"
        );
    }
}

#[test]
fn the_example_config_documents_every_settings_env_and_flag() {
    let example = include_str!("../../../systemd/config.toml");
    for s in settings() {
        let line = format!("# env/flag: {}, --{}\n", s.env, s.flag);
        let at = example
            .find(&line)
            .unwrap_or_else(|| panic!("systemd/config.toml lacks {line:?}"));
        let field = s.key.rsplit('.').next().expect("a key");
        // node_id follows commented out: each node sets its own.
        let next_key = example[at..]
            .lines()
            .find(|l| !l.starts_with('#') || l.starts_with(&format!("# {field} = ")))
            .expect("a key follows")
            .trim_start_matches("# ");
        assert!(
            next_key.starts_with(&format!("{field} = ")),
            "{line:?} is followed by {next_key:?}"
        );
    }
}

#[test]
fn node_labels_are_read_and_bad_ones_name_their_key() {
    let cfg = Config::from_toml("[node]\nlabels = { gpu = \"a100\", zone = \"b\" }")
        .expect("labels parse");
    cfg.validate().expect("labels valid");
    assert_eq!(
        cfg.runtime().labels.into_iter().collect::<Vec<_>>(),
        [("gpu".into(), "a100".into()), ("zone".into(), "b".into())]
    );
    let cases = [
        ("\"gpu=x\" = \"a\"", "node.labels.gpu=x"),
        ("\"\" = \"a\"", "node.labels."),
        ("gpu = \"\"", "node.labels.gpu"),
        ("gpu = \"a b\"", "node.labels.gpu"),
        ("gpu = \"a,b\"", "node.labels.gpu"),
        ("\"-gpu\" = \"a\"", "node.labels.-gpu"),
    ];
    for (labels, key) in cases {
        let text = format!("[node]\nlabels = {{ {labels} }}");
        let cfg = Config::from_toml(&text).expect(&text);
        let err = cfg.validate().expect_err(&text).to_string();
        assert!(err.contains(&format!("config key {key}:")), "{text}: {err}");
    }
    let err = Config::from_toml("[node]\nlabels = { gpu = 1 }").expect_err("a number");
    assert!(err.contains("labels"), "{err}");
}

#[test]
fn metrics_listen_is_an_address_on_loopback_unless_allowed() {
    let check = |toml: &str| {
        Config::from_toml(toml)
            .expect("parses")
            .validate_values()
            .map_err(|e| e.to_string())
    };
    assert!(Config::default().metrics.addr().is_none(), "off by default");
    check("[metrics]\nlisten = \"127.0.0.1:9151\"").expect("loopback");
    check("[metrics]\nlisten = \"[::1]:9151\"").expect("loopback v6");
    let err = check("[metrics]\nlisten = \"nine\"").expect_err("not an address");
    assert!(err.contains("metrics.listen"), "{err}");
    let err = check("[metrics]\nlisten = \"0.0.0.0:9151\"").expect_err("network");
    assert!(
        err.contains("metrics.listen") && err.contains("allow_network"),
        "{err}"
    );
    check("[metrics]\nlisten = \"0.0.0.0:9151\"\nallow_network = true").expect("opted in");
}
