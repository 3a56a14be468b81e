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
    (
        "images.gc_high_percent",
        "BERTH_IMAGE_GC_HIGH_PERCENT",
        "image-gc-high-percent",
    ),
    ("log.filter", "BERTH_LOG", "log"),
    ("log.format", "BERTH_LOG_FORMAT", "log-format"),
];

/// A setting's variable by the rule: `BERTH_` and its key, dots as underscores, upper case.
fn env_by_rule(key: &str) -> String {
    format!("BERTH_{}", key.replace('.', "_").to_uppercase())
}

#[test]
fn every_setting_has_its_documented_names_and_a_key_in_the_file() {
    let defaults = Value::try_from(Config::default()).expect("serialisable");
    for &(key, env, flag) in DOCUMENTED {
        let s = settings()
            .find(|s| s.key == key)
            .unwrap_or_else(|| panic!("{key} is settable"));
        assert_eq!((s.env, s.flag), (env, flag), "{key}");
    }
    let mut envs = std::collections::BTreeSet::new();
    for s in settings() {
        assert!(envs.insert(s.env), "{} is declared twice", s.env);
        assert_eq!(
            s.env,
            format!("BERTH_{}", s.flag.to_uppercase().replace('-', "_")),
            "{}: the variable is the flag's name",
            s.key
        );
        let legacy = DOCUMENTED.iter().any(|(k, ..)| *k == s.key);
        assert!(
            legacy || s.env == env_by_rule(s.key),
            "{}: a new setting's variable is {} (only the DOCUMENTED ones keep a short name)",
            s.key,
            env_by_rule(s.key)
        );
        assert!(!s.help.trim().is_empty(), "{} has help", s.key);
        // Unset by default, so absent from the defaults (written in the file as comments).
        let optional = matches!(s.key, "policy.host_path_uid" | "policy.host_path_gid");
        assert!(
            optional || layers_lookup(&defaults, s.key).is_some(),
            "{} is a key of the file",
            s.key
        );
    }
}

/// For every setting: the text a variable or flag gives, and the same value as TOML in the
/// file. Each differs from the default, so a setting the layers drop fails.
const SAMPLES: &[(&str, &str, &str)] = &[
    ("node_id", "n1", "\"n1\""),
    ("listen", "127.0.0.1:9", "\"127.0.0.1:9\""),
    ("state_dir", "/s", "\"/s\""),
    ("admin_socket", "/a.sock", "\"/a.sock\""),
    ("docker.host", "tcp://h:1", "\"tcp://h:1\""),
    ("docker.timeout_seconds", "90s", "90"),
    ("docker.publish_host_ip", "10.0.0.1", "\"10.0.0.1\""),
    ("docker.advertise_host", "h.example", "\"h.example\""),
    ("spawn.ready_timeout_seconds", "2m", "120"),
    ("spawn.max_ready_timeout_seconds", "1h", "3600"),
    ("spawn.stop_grace_seconds", "5", "5"),
    ("spawn.failure_log_lines", "7", "7"),
    ("spawn.abandon_grace_seconds", "30s", "30"),
    ("capacity.max_servers", "3", "3"),
    ("capacity.reserved_cpu", "1.5", "1.5"),
    ("capacity.reserved_memory_bytes", "2G", "2147483648"),
    ("capacity.max_concurrent_spawns", "2", "2"),
    ("capacity.spawn_queue_limit", "9", "9"),
    ("capacity.spawn_queue_timeout_seconds", "30s", "30"),
    ("security.token_file", "/t", "\"/t\""),
    ("security.tls_cert_file", "/c", "\"/c\""),
    ("security.tls_key_file", "/k", "\"/k\""),
    ("security.client_ca_file", "/ca", "\"/ca\""),
    (
        "security.hub_client_names",
        "hub, alice.operator",
        "[\"hub\", \"alice.operator\"]",
    ),
    ("security.insecure_plaintext_on_network", "true", "true"),
    ("network.isolate_users", "false", "false"),
    ("network.name", "lab-users", "\"lab-users\""),
    ("fencing.stop_after_hub_lost_seconds", "90", "90"),
    ("images.pull_policy", "always", "\"always\""),
    ("images.registry_auth_file", "/r.json", "\"/r.json\""),
    ("images.pull_timeout_seconds", "10m", "600"),
    ("images.gc_high_percent", "90", "90"),
    ("images.gc_low_percent", "70", "70"),
    ("images.gc_interval_seconds", "1m", "60"),
    ("images.gc_min_age_seconds", "1h", "3600"),
    (
        "images.gc_images",
        "quay.io/jupyter/*, berth-test/*",
        "[\"quay.io/jupyter/*\", \"berth-test/*\"]",
    ),
    (
        "policy.allowed_images",
        "berth-test/*, quay.io/x/*",
        "[\"berth-test/*\", \"quay.io/x/*\"]",
    ),
    (
        "policy.allowed_host_path_roots",
        "/srv/a,/srv/b",
        "[\"/srv/a\", \"/srv/b\"]",
    ),
    ("policy.host_path_uid", "1000", "1000"),
    ("policy.host_path_gid", "100", "100"),
    ("policy.host_path_mode", "0o750", "0o750"),
    ("policy.max_mem_limit_bytes", "4G", "4294967296"),
    ("policy.max_cpu_limit", "2", "2.0"),
    ("policy.require_mem_limit", "true", "true"),
    ("policy.allow_privileged", "true", "true"),
    ("policy.allow_host_network", "true", "true"),
    ("policy.allow_host_pid", "true", "true"),
    ("policy.allow_host_ipc", "true", "true"),
    (
        "policy.allowed_capabilities",
        "NET_ADMIN,SYS_PTRACE",
        "[\"NET_ADMIN\", \"SYS_PTRACE\"]",
    ),
    ("policy.allowed_devices", "/dev/fuse", "[\"/dev/fuse\"]"),
    ("policy.allow_pull_secrets", "true", "true"),
    (
        "policy.container_options.forbidden",
        "user,shm_size",
        "[\"user\", \"shm_size\"]",
    ),
    ("policy.container_options.min_uid", "1000", "1000"),
    (
        "policy.container_options.max_shm_size_bytes",
        "1024",
        "1024",
    ),
    ("policy.container_options.max_pids_limit", "100", "100"),
    (
        "policy.container_options.allowed_networks",
        "berth-*",
        "[\"berth-*\"]",
    ),
    (
        "policy.container_options.allow_network_create",
        "true",
        "true",
    ),
    (
        "hostpaths.pin_helper_socket",
        "/run/berth-pin/pin.sock",
        "\"/run/berth-pin/pin.sock\"",
    ),
    ("activity.enabled", "true", "true"),
    (
        "activity.hub_api_url",
        "http://hub:8081/hub/api",
        "\"http://hub:8081/hub/api\"",
    ),
    ("activity.token_file", "/at", "\"/at\""),
    ("activity.ca_file", "/aca", "\"/aca\""),
    ("activity.interval_seconds", "30s", "30"),
    ("activity.signals", "cpu", "[\"cpu\"]"),
    ("activity.network_bytes_threshold", "8KiB", "8192"),
    ("activity.cpu_threshold", "0.5", "0.5"),
    ("activity.max_concurrent_sends", "8", "8"),
    (
        "node.labels",
        "gpu=a100, zone=b",
        "{ gpu = \"a100\", zone = \"b\" }",
    ),
    ("metrics.listen", "127.0.0.1:9151", "\"127.0.0.1:9151\""),
    ("metrics.allow_network", "true", "true"),
    ("log.filter", "info,berthd=debug", "\"info,berthd=debug\""),
    ("log.format", "json", "\"json\""),
];

#[test]
fn every_setting_reads_its_text_from_env_and_flag_as_the_file_reads_its_value() {
    let keys: Vec<_> = SAMPLES.iter().map(|(k, ..)| *k).collect();
    let declared: Vec<_> = settings().map(|s| s.key).collect();
    assert_eq!(keys, declared, "SAMPLES has every setting, in order");
    for &(key, text, toml_value) in SAMPLES {
        let s = settings().find(|s| s.key == key).expect("settable");
        let file = Config::from_toml(&format!("{key} = {toml_value}"))
            .unwrap_or_else(|e| panic!("{key} = {toml_value}: {e}"));
        assert_ne!(
            file,
            Config::default(),
            "{key}: the sample is not the default"
        );
        let by_env = layers::apply(Config::default(), &[(s.env, text)], &Overrides::default())
            .unwrap_or_else(|e| panic!("{} = {text:?}: {e}", s.env));
        assert_eq!(by_env, file, "{} = {text:?}", s.env);
        let flags = Overrides::default().with(s.flag, text).expect("a flag");
        let by_flag = layers::apply(Config::default(), &[("BERTH_UNRELATED", "x")], &flags)
            .unwrap_or_else(|e| panic!("--{} {text:?}: {e}", s.flag));
        assert_eq!(by_flag, file, "--{} {text:?}", s.flag);
        // The flag wins over the variable, which wins over the file.
        let over = layers::apply(file.clone(), &[(s.env, text)], &flags).expect("applies");
        assert_eq!(over, file, "{key}");
    }
}

/// The documented default file with its commented-out keys (`# node_id = ...`) written in,
/// as a TOML tree.
fn default_file_with_every_key() -> Value {
    let text: String = show::DEFAULT_FILE
        .lines()
        .map(|l| {
            let bare = l.strip_prefix("# ").unwrap_or(l);
            let commented_key = l.starts_with("# ")
                && bare
                    .split_once(" = ")
                    .is_some_and(|(k, _)| k.chars().all(|c| c.is_ascii_lowercase() || c == '_'));
            if commented_key { bare } else { l }
        })
        .collect::<Vec<_>>()
        .join("\n");
    toml::from_str(&text).expect("the default file, its examples written in, is TOML")
}

/// Walks the file's keys: each is a setting, a documented file-only key, or a section holding
/// some of those; returns the keys seen.
fn walk(tree: &Value, at: &str, seen: &mut Vec<String>) {
    let Value::Table(t) = tree else { return };
    for (k, v) in t {
        let key = format!("{at}{k}");
        if settings().any(|s| s.key == key) || FILE_ONLY.iter().any(|(f, _)| *f == key) {
            seen.push(key);
            continue;
        }
        let prefix = format!("{key}.");
        let section = settings().any(|s| s.key.starts_with(&prefix))
            || FILE_ONLY.iter().any(|(f, _)| f.starts_with(&prefix));
        assert!(
            section && matches!(v, Value::Table(_)),
            "{key} in systemd/config.toml has no BERTH_* variable or flag and is not in FILE_ONLY"
        );
        walk(v, &prefix, seen);
    }
}

#[test]
fn every_key_of_the_default_file_is_a_setting_or_a_documented_file_only_key() {
    let file = default_file_with_every_key();
    for key in ["node_id", "policy.host_path_uid", "policy.host_path_gid"] {
        assert!(layers_lookup(&file, key).is_some(), "{key} is written in");
    }
    let mut seen = Vec::new();
    walk(&file, "", &mut seen);
    // The exceptions, named here so that a new one is a deliberate change to this test.
    let file_only: Vec<_> = FILE_ONLY.iter().map(|(k, _)| *k).collect();
    assert_eq!(file_only, ["devices.classes", "warm.pools"]);
    let mut want: Vec<String> = settings()
        .map(|s| s.key.to_owned())
        .chain(file_only.iter().map(|k| (*k).to_owned()))
        .collect();
    want.sort();
    seen.sort();
    assert_eq!(
        seen, want,
        "the file and the declarations hold the same keys"
    );
    // And `--help` says which keys only the file sets, and how lists and tables are written.
    let help = Overrides::augment_args(clap::Command::new("t"))
        .render_long_help()
        .to_string();
    for (key, _) in FILE_ONLY {
        assert!(help.contains(key), "{help}");
    }
    assert!(help.contains("comma-separated"), "{help}");
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
fn precedence_is_defaults_then_file_then_env_then_flags() {
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
    for mode in [0o4755, 0o10000] {
        let mut cfg = Config::default();
        cfg.policy.host_path_mode = mode;
        let err = cfg.validate().expect_err("mode").to_string();
        assert!(err.contains("policy.host_path_mode"), "{err}");
    }
    let mut cfg = Config::default();
    cfg.policy.host_path_mode = 0o2770;
    cfg.validate().expect("set-group-ID directories are fine");
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

        fn names(&self) -> Vec<String> {
            self.0.iter().map(|(k, _)| (*k).to_owned()).collect()
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
    let garbage = write(&dir, "garbage.pem", "not a certificate\n");
    let missing = dir.join("missing");
    let with_mode = |name: &str, text: &str, mode: u32| {
        let p = write(&dir, name, text);
        let mode = <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(mode);
        std::fs::set_permissions(&p, mode).expect("chmod");
        p
    };
    let private = |name: &str, text: &str| with_mode(name, text, 0o600);
    let token = private("token", "0123456789abcdef-secret\n");
    let token_0400 = with_mode("token-0400", "0123456789abcdef-secret\n", 0o400);
    let token_0644 = with_mode("token-0644", "0123456789abcdef-secret\n", 0o644);
    let token_0640 = with_mode("token-0640", "0123456789abcdef-secret\n", 0o640);
    let token_0602 = with_mode("token-0602", "0123456789abcdef-secret\n", 0o602);
    let short = private("short", "abc\n");
    let spaced = private("spaced", "0123456789 abcdef-secret\n");
    let control = private("control", "0123456789\x07abcdef-secret\n");
    let empty = private("empty", "\n");
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
        (mtls(&cert, &key, &cert, &token_0400), None),
        (
            mtls(&cert, &key, &cert, &token_0644),
            Some(("security.token_file", &token_0644)),
        ),
        (
            mtls(&cert, &key, &cert, &token_0640),
            Some(("security.token_file", &token_0640)),
        ),
        (
            mtls(&cert, &key, &cert, &token_0602),
            Some(("security.token_file", &token_0602)),
        ),
        (
            activity(&token_0644, ""),
            Some(("activity.token_file", &token_0644)),
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
    assert!(
        example.contains("BERTH_<SECTION>_<KEY>") && example.contains("--<section>-<key>"),
        "the file states the naming rule"
    );
    // The rule names the others; the older short names are written at their keys.
    for s in settings().filter(|s| DOCUMENTED.iter().any(|(k, ..)| *k == s.key)) {
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

#[test]
fn a_short_named_key_also_takes_its_regular_variable_and_unknown_variables_are_named() {
    let env = [("BERTH_IMAGES_GC_HIGH_PERCENT", "95")];
    let cfg = Config::load(&env, &Overrides::default()).expect("loads");
    assert_eq!(
        cfg.images.gc_high_percent, 95,
        "the regular spelling sets the key"
    );
    let both = [
        ("BERTH_IMAGE_GC_HIGH_PERCENT", "90"),
        ("BERTH_IMAGES_GC_HIGH_PERCENT", "95"),
    ];
    let cfg = Config::load(&both, &Overrides::default()).expect("loads");
    assert_eq!(cfg.images.gc_high_percent, 90, "the declared variable wins");
    let env = [
        ("BERTH_IMAGES_GC_HIGH_PERCENT", "95"),
        ("BERTH_IMAGE_GC_HIGH_PERCENT", "70"),
        ("BERTH_CONFIG", "/etc/berth/config.toml"),
        ("BERTH_CAPACITY_MAX_SERVER", "3"),
        ("BERTH_LOG", "debug"),
        ("PATH", "/usr/bin"),
    ];
    assert_eq!(
        crate::config::unknown_vars(&env),
        vec!["BERTH_CAPACITY_MAX_SERVER".to_owned()]
    );
}
