//! The berthd binary's configuration handling: bad configuration exits 64 naming the key.
#![allow(missing_docs, clippy::unwrap_used)]

use std::process::Command;

fn berthd(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let (code, _, err) = berthd_out(args, env);
    (code, err)
}

/// Exit code, stdout and stderr.
fn berthd_out(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_berthd"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run berthd");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn temp_file(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("berth-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    let private = <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o600);
    std::fs::set_permissions(&path, private).unwrap();
    path
}

#[test]
fn bad_config_exits_64_naming_the_key() {
    let unknown = temp_file(
        "unknown.toml",
        "node_id = \"n1\"\nlisen = \"127.0.0.1:1\"\n",
    );
    let (code, err) = berthd(&["serve", "--config", unknown.to_str().unwrap()], &[]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("lisen"), "{err}");

    let bad_type = temp_file("type.toml", "[docker]\ntimeout_seconds = \"soon\"\n");
    let (code, err) = berthd(&["serve", "--config", bad_type.to_str().unwrap()], &[]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("timeout_seconds"), "{err}");

    let bad_value = temp_file("value.toml", "[spawn]\nready_timeout_seconds = 0\n");
    let (code, err) = berthd(&["serve", "--config", bad_value.to_str().unwrap()], &[]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("spawn.ready_timeout_seconds"), "{err}");

    let (code, err) = berthd(&["serve", "--listen", "not-an-address"], &[]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("--listen"), "{err}");

    let (code, err) = berthd(&["serve"], &[("BERTH_NODE_ID", "has space")]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("node_id"), "{err}");

    let (code, err) = berthd(&["serve", "--config", "/nonexistent/berth.toml"], &[]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("/nonexistent/berth.toml"), "{err}");
}

#[test]
fn the_example_config_is_valid() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../systemd/config.toml");
    let (code, err) = berthd(&["check-config", "--config", example], &[]);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn an_unusable_state_dir_is_reported_with_its_path() {
    let file = temp_file("not-a-dir", "");
    let dir = file.join("state");
    let (code, err) = berthd(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--state-dir",
            dir.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, 73, "{err}");
    assert!(err.contains(dir.to_str().unwrap()), "{err}");
}

#[test]
fn check_config_and_serve_both_refuse_a_missing_tls_or_token_file_naming_key_and_file() {
    let missing = std::env::temp_dir().join("berth-cli-no-such-file.pem");
    let missing = missing.to_str().unwrap();
    // (flags, the key and the file the error must name)
    let open = temp_file("token-open", "0123456789abcdef-very-secret\n");
    std::fs::set_permissions(
        &open,
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o644),
    )
    .unwrap();
    let open = open.to_str().unwrap();
    let cases: [(&[&str], &str, &str); 4] = [
        (
            &["--tls-cert-file", missing, "--tls-key-file", missing],
            "security.tls_cert_file",
            missing,
        ),
        (&["--token-file", missing], "security.token_file", missing),
        (
            &["--token-file", "/dev/null"],
            "security.token_file",
            "/dev/null",
        ),
        // Readable by others: refused like the registry auth file, never used.
        (&["--token-file", open], "security.token_file", open),
    ];
    for (flags, key, file) in cases {
        for command in [&["check-config"][..], &["config", "check"], &["serve"]] {
            let mut args = command.to_vec();
            args.extend_from_slice(&["--listen", "127.0.0.1:0"]);
            args.extend_from_slice(flags);
            // A state directory serve cannot create: had the file passed, serve would exit 73.
            args.extend_from_slice(&["--state-dir", "/proc/berth-cli-state"]);
            let (code, err) = berthd(&args, &[]);
            assert_eq!(code, 64, "{command:?} {flags:?}: {err}");
            assert!(
                err.contains(key),
                "{command:?} {flags:?} names {key}: {err}"
            );
            assert!(
                err.contains(file),
                "{command:?} {flags:?} names {file}: {err}"
            );
        }
    }
}

#[test]
fn check_config_prints_toml_with_paths_and_never_a_token() {
    let token = temp_file("token-print", "0123456789abcdef-very-secret\n");
    let (code, out, err) = berthd_out(
        &["check-config", "--token-file", token.to_str().unwrap()],
        &[("BERTH_NODE_ID", "printed-node")],
    );
    assert_eq!(code, 0, "{err}");
    let printed: toml::Table = toml::from_str(&out).expect("stdout is TOML");
    assert_eq!(printed["node_id"].as_str(), Some("printed-node"));
    assert_eq!(
        printed["security"]["token_file"].as_str(),
        token.to_str(),
        "{out}"
    );
    assert!(
        !out.contains("very-secret") && !err.contains("very-secret"),
        "{out}{err}"
    );
}

#[test]
fn config_default_prints_the_documented_file_which_checks_clean() {
    let (code, out, err) = berthd_out(&["config", "default"], &[]);
    assert_eq!(code, 0, "{err}");
    let file = include_str!("../../systemd/config.toml");
    assert_eq!(out, file, "config default is systemd/config.toml");
    let path = temp_file("default.toml", &out);
    let (code, printed, err) = berthd_out(
        &["config", "check", "--config", path.to_str().unwrap()],
        &[("BERTH_NODE_ID", "n-default")],
    );
    assert_eq!(code, 0, "{err}");
    let printed: toml::Table = toml::from_str(&printed).expect("stdout is TOML");
    // The human values of the file come out as the numbers they mean.
    assert_eq!(printed["docker"]["timeout_seconds"].as_integer(), Some(30));
    assert_eq!(
        printed["spawn"]["max_ready_timeout_seconds"].as_integer(),
        Some(900)
    );
    assert_eq!(
        printed["activity"]["network_bytes_threshold"].as_integer(),
        Some(4096)
    );
}

#[test]
fn human_sizes_and_durations_read_from_the_file_and_bad_ones_name_the_key() {
    let good = temp_file(
        "units.toml",
        "[capacity]\nreserved_memory_bytes = \"1.5G\"\nspawn_queue_timeout_seconds = \"2m\"\n",
    );
    let (code, out, err) = berthd_out(
        &["config", "check", "--config", good.to_str().unwrap()],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let printed: toml::Table = toml::from_str(&out).unwrap();
    assert_eq!(
        printed["capacity"]["reserved_memory_bytes"].as_integer(),
        Some(1536 << 20)
    );
    assert_eq!(
        printed["capacity"]["spawn_queue_timeout_seconds"].as_integer(),
        Some(120)
    );
    let bad = temp_file(
        "bad-units.toml",
        "[spawn]\nstop_grace_seconds = \"10 parsecs\"\n",
    );
    let (code, err) = berthd(&["config", "check", "--config", bad.to_str().unwrap()], &[]);
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("stop_grace_seconds") && err.contains("10 parsecs"),
        "{err}"
    );
}

#[test]
fn serve_help_lists_every_setting_with_its_variable() {
    let (code, help, _) = berthd_out(&["serve", "--help"], &[]);
    assert_eq!(code, 0);
    for s in berthd::config::settings() {
        assert!(help.contains(&format!("--{} ", s.flag)), "--{}", s.flag);
        assert!(help.contains(&format!("[env: {}]", s.env)), "{}", s.env);
    }
    for (key, _) in berthd::config::FILE_ONLY {
        assert!(help.contains(key), "{key} is named as file-only");
    }
    assert!(help.contains("comma-separated"), "{help}");
}

#[test]
fn lists_tables_optional_numbers_sizes_and_durations_come_from_env_and_flags() {
    let (code, out, err) = berthd_out(
        &[
            "config",
            "check",
            "--policy-host-path-mode",
            "0o750",
            "--capacity-reserved-memory-bytes",
            "2G",
        ],
        &[
            ("BERTH_POLICY_ALLOWED_IMAGES", "berth-test/*, quay.io/x/*"),
            ("BERTH_NODE_LABELS", "gpu=a100,zone=b"),
            ("BERTH_POLICY_HOST_PATH_UID", "1000"),
            ("BERTH_SPAWN_STOP_GRACE_SECONDS", "1m"),
            // The flag wins over the variable.
            ("BERTH_POLICY_HOST_PATH_MODE", "0o700"),
        ],
    );
    assert_eq!(code, 0, "{err}");
    let cfg: toml::Value = toml::from_str(&out).unwrap();
    let policy = &cfg["policy"];
    assert_eq!(
        policy["allowed_images"].as_array().unwrap(),
        &vec![
            toml::Value::from("berth-test/*"),
            toml::Value::from("quay.io/x/*")
        ]
    );
    assert_eq!(policy["host_path_uid"].as_integer(), Some(1000));
    assert_eq!(policy["host_path_mode"].as_integer(), Some(0o750));
    assert_eq!(cfg["node"]["labels"]["zone"].as_str(), Some("b"));
    assert_eq!(cfg["spawn"]["stop_grace_seconds"].as_integer(), Some(60));
    assert_eq!(
        cfg["capacity"]["reserved_memory_bytes"].as_integer(),
        Some(2 << 30)
    );
    // A bad item names the key and where it came from.
    let (code, err) = berthd(
        &["config", "check"],
        &[("BERTH_NODE_LABELS", "gpu=a100,zone")],
    );
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("node.labels") && err.contains("BERTH_NODE_LABELS"),
        "{err}"
    );
}

#[test]
fn the_log_settings_are_checked_with_the_rest_naming_key_and_origin() {
    let (code, err) = berthd(&["serve"], &[("BERTH_LOG_FORMAT", "xml")]);
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("log.format") && err.contains("BERTH_LOG_FORMAT"),
        "{err}"
    );
    let file = temp_file("log.toml", "[log]\nfilter = \"info,=[\"\n");
    let (code, err) = berthd(
        &["config", "check", "--config", file.to_str().unwrap()],
        &[],
    );
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("log.filter"), "{err}");
    let (code, out, err) = berthd_out(&["config", "check", "--log-format", "json"], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("[log]") && out.contains("format = \"json\""),
        "{out}"
    );
}

/// A device path Start would refuse (a symbolic link, a regular file, a path outside /dev) is
/// a configuration error naming its key for `config check` and `serve` alike, so it is never
/// advertised as a free device. Mutation check: drop `check_nodes` from `Config::validate`
/// and the link and the regular file pass.
#[test]
fn a_device_path_that_is_a_link_a_file_or_outside_dev_is_a_config_error_naming_the_key() {
    let dir =
        std::path::PathBuf::from("/dev").join(format!("berth-cli-dev-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("this test runs as root (it writes under /dev)");
    let link = dir.join("link");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink("/dev/null", &link).unwrap();
    let file = dir.join("file");
    std::fs::write(&file, "").unwrap();
    let (link, file) = (link.to_str().unwrap(), file.to_str().unwrap());
    // (the device's paths, the common paths, the key the error names, words it must hold)
    let cases = [
        (
            link,
            "",
            "devices.classes[0].devices[1].paths",
            "symbolic link",
        ),
        (
            file,
            "",
            "devices.classes[0].devices[1].paths",
            "regular file",
        ),
        (
            "/tmp/gpu0",
            "",
            "devices.classes[0].devices[1].paths",
            "under /dev",
        ),
        (
            "/dev/null",
            link,
            "devices.classes[0].common_paths",
            "symbolic link",
        ),
    ];
    for (path, common, key, words) in cases {
        let common = if common.is_empty() {
            String::new()
        } else {
            format!("common_paths = [\"{common}\"]\n")
        };
        let toml = format!(
            "[[devices.classes]]\nname = \"gpu\"\n{common}\
             [[devices.classes.devices]]\nid = \"0\"\npaths = [\"/dev/null\"]\n\
             [[devices.classes.devices]]\nid = \"1\"\npaths = [\"{path}\"]\n"
        );
        let cfg = temp_file("devices.toml", &toml);
        for command in [&["config", "check"][..], &["serve"]] {
            let mut args = command.to_vec();
            args.extend_from_slice(&["--config", cfg.to_str().unwrap(), "--listen", "127.0.0.1:0"]);
            args.extend_from_slice(&["--state-dir", "/proc/berth-cli-state"]);
            let (code, err) = berthd(&args, &[]);
            assert_eq!(code, 64, "{command:?} {path}: {err}");
            assert!(err.contains(key), "{command:?} {path} names {key}: {err}");
            assert!(
                err.contains(words),
                "{command:?} {path} says {words}: {err}"
            );
        }
    }
    // The same class with good nodes only passes the check.
    let good = temp_file(
        "good-devices.toml",
        "[[devices.classes]]\nname = \"gpu\"\n[[devices.classes.devices]]\nid = \"0\"\npaths = [\"/dev/null\"]\n",
    );
    let (code, err) = berthd(
        &["config", "check", "--config", good.to_str().unwrap()],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
