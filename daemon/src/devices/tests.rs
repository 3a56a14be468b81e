#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)]

use std::collections::HashMap;

use proptest::prelude::*;

use super::*;

const A100X4: &str = include_str!("../../tests/fixtures/nvidia-smi/a100x4.csv");
const MIXED: &str = include_str!("../../tests/fixtures/nvidia-smi/mixed.csv");
const DRIVER_FAILED: &str = include_str!("../../tests/fixtures/nvidia-smi/driver-failed.txt");
const NO_DEVICES: &str = include_str!("../../tests/fixtures/nvidia-smi/no-devices.txt");

#[test]
fn parses_four_gpus_of_one_model() {
    let d = parse_nvidia_smi(true, A100X4, "").unwrap();
    assert_eq!(d.len(), 4);
    assert_eq!(d[0].id, "0");
    assert_eq!(d[3].id, "3");
    assert_eq!(d[2].paths, vec!["/dev/nvidia2".to_owned()]);
    assert_eq!(d[1].model, "NVIDIA A100-SXM4-40GB");
    assert_eq!(d[1].memory_bytes, 40960 << 20);
    assert_eq!(d[0].uuid, "GPU-5f2b7c1e-9a0d-4c1b-8e52-0b9d2f6a1c01");
    assert_eq!(d[0].nvidia_id(), d[0].uuid);
}

#[test]
fn parses_mixed_models() {
    let d = parse_nvidia_smi(true, MIXED, "").unwrap();
    let models: Vec<&str> = d.iter().map(|d| d.model.as_str()).collect();
    assert_eq!(models, ["Tesla T4", "NVIDIA GeForce RTX 3090"]);
    assert_eq!(d[0].memory_bytes, 15360 << 20);
}

#[test]
fn a_failing_nvidia_smi_is_an_error_quoting_it() {
    let e = parse_nvidia_smi(false, DRIVER_FAILED, "").unwrap_err();
    assert!(
        e.contains("couldn't communicate with the NVIDIA driver"),
        "{e}"
    );
    let e = parse_nvidia_smi(false, NO_DEVICES, "").unwrap_err();
    assert!(e.contains("No devices were found"), "{e}");
    let e = parse_nvidia_smi(false, "", "").unwrap_err();
    assert!(e.contains("no output"), "{e}");
}

#[test]
fn output_that_is_not_the_query_is_refused() {
    for bad in [
        "",
        "garbage\n",
        "index, uuid, name, memory.total [MiB]\nx, GPU-1, T4, 1 MiB\n",
        "index, uuid, name, memory.total [MiB]\n0, GPU-1\n",
    ] {
        assert!(parse_nvidia_smi(true, bad, "").is_err(), "{bad:?}");
    }
    assert_eq!(memory("[N/A]"), 0);
}

#[test]
fn discovery_runs_the_configured_command() {
    let dir = std::env::temp_dir().join(format!("berth-nvsmi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ok = dir.join("ok");
    let fail = dir.join("fail");
    let fixture = dir.join("out.csv");
    std::fs::write(&fixture, A100X4).unwrap();
    std::fs::write(&ok, format!("#!/bin/sh\ncat {}\n", fixture.display())).unwrap();
    std::fs::write(&fail, "#!/bin/sh\necho 'NVIDIA-SMI has failed'\nexit 9\n").unwrap();
    for p in [&ok, &fail] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let cfg = |name: &str, path: &std::path::Path| ClassConfig {
        name: name.to_owned(),
        discover: Discover::NvidiaSmi,
        nvidia_smi: path.to_owned(),
        shares: 1,
        pass: Pass::Nvidia,
        common_paths: vec![],
        devices: vec![],
    };
    let inv = Inventory::discover(&[
        cfg("gpu", &ok),
        cfg("broken", &fail),
        cfg("absent", &dir.join("missing")),
    ]);
    assert_eq!(inv.class_named("gpu").unwrap().devices.len(), 4);
    assert!(inv.class_named("gpu").unwrap().discovery_error.is_none());
    let broken = inv.class_named("broken").unwrap();
    assert!(broken.devices.is_empty());
    assert!(
        broken
            .discovery_error
            .as_deref()
            .unwrap()
            .contains("NVIDIA-SMI has failed")
    );
    assert!(inv.class_named("absent").unwrap().discovery_error.is_some());
    std::fs::remove_dir_all(&dir).unwrap();
}

fn listed(name: &str, shares: u32, models: &[&str]) -> Class {
    Class {
        name: name.to_owned(),
        shares,
        pass: Pass::DeviceNodes,
        common_paths: vec![],
        devices: models
            .iter()
            .enumerate()
            .map(|(i, m)| Device {
                id: i.to_string(),
                paths: vec![format!("/dev/fake{i}")],
                model: (*m).to_owned(),
                memory_bytes: 0,
                uuid: String::new(),
            })
            .collect(),
        discovery_error: None,
    }
}

fn ask(count: u32, model: &str) -> Ask {
    Ask {
        count,
        class: String::new(),
        model: model.to_owned(),
    }
}

fn ids(v: &[DeviceRef]) -> Vec<&str> {
    v.iter().map(|d| d.id.as_str()).collect()
}

#[test]
fn exclusive_devices_go_in_order_and_never_twice() {
    let c = listed("gpu", 1, &["a", "a", "a", "a"]);
    let mut used = HashMap::new();
    used.insert("1".to_owned(), 1);
    assert_eq!(
        ids(&choose("n", &c, &used, &ask(2, "")).unwrap()),
        ["0", "2"]
    );
    used.extend([
        ("0".to_owned(), 1),
        ("2".to_owned(), 1),
        ("3".to_owned(), 1),
    ]);
    let e = choose("n", &c, &used, &ask(1, "")).unwrap_err();
    assert_eq!(
        e,
        DeviceError::Insufficient {
            node: "n".into(),
            class: "gpu".into(),
            model: String::new(),
            asked: 1,
            free: 0,
            total: 4
        }
    );
    assert!(
        e.to_string()
            .contains("0 free gpu device(s), 1 asked (of 4)"),
        "{e}"
    );
}

#[test]
fn the_model_constraint_filters_case_insensitively() {
    let c = listed("gpu", 1, &["Tesla T4", "RTX 3090", "Tesla T4"]);
    let got = choose("n", &c, &HashMap::new(), &ask(2, "tesla t4")).unwrap();
    assert_eq!(ids(&got), ["0", "2"]);
    let e = choose("n", &c, &HashMap::new(), &ask(2, "RTX 3090")).unwrap_err();
    assert!(
        e.to_string()
            .contains("1 free gpu device(s) of model RTX 3090"),
        "{e}"
    );
}

#[test]
fn shared_devices_fill_the_least_used_first() {
    let c = listed("gpu", 2, &["a", "a"]);
    let mut used = HashMap::from([("0".to_owned(), 1)]);
    assert_eq!(ids(&choose("n", &c, &used, &ask(1, "")).unwrap()), ["1"]);
    used.insert("1".to_owned(), 1);
    // Two distinct devices, each with one share left.
    assert_eq!(
        ids(&choose("n", &c, &used, &ask(2, "")).unwrap()),
        ["0", "1"]
    );
    used.insert("0".to_owned(), 2);
    assert!(choose("n", &c, &used, &ask(2, "")).is_err());
}

#[test]
fn refs_round_trip_and_config_is_checked() {
    let r = DeviceRef {
        class: "gpu".into(),
        id: "GPU-1".into(),
    };
    assert_eq!(DeviceRef::decode(&r.encode()), Some(r));
    assert_eq!(DeviceRef::decode("nothing"), None);
    let good = ClassConfig {
        name: "gpu".into(),
        discover: Discover::None,
        nvidia_smi: PathBuf::from(DEFAULT_NVIDIA_SMI),
        shares: 1,
        pass: Pass::DeviceNodes,
        common_paths: vec![],
        devices: vec![DeviceConfig {
            id: "0".into(),
            paths: vec!["/dev/x".into()],
            model: String::new(),
            memory_bytes: 0,
        }],
    };
    assert!(validate(std::slice::from_ref(&good)).is_ok());
    type Change = fn(&mut ClassConfig);
    let table: [(&str, Change); 8] = [
        ("devices.classes[0].name", |c| c.name = "a/b".into()),
        ("devices.classes[0].shares", |c| c.shares = 0),
        ("devices.classes[0].devices", |c| c.devices.clear()),
        ("devices.classes[0].devices[1].id", |c| {
            c.devices.push(c.devices[0].clone());
        }),
        ("devices.classes[0].devices[0].paths", |c| {
            c.devices[0].paths = vec!["rel".into()];
        }),
        ("devices.classes[0].common_paths", |c| {
            c.common_paths = vec!["/dev/../etc".into()];
        }),
        ("devices.classes[0].devices[0].paths", |c| {
            c.devices[0].paths = vec!["/etc/passwd".into()];
        }),
        ("devices.classes[0].common_paths", |c| {
            c.common_paths = vec!["/dev/".into()];
        }),
    ];
    for (key, change) in table {
        let mut c = good.clone();
        change(&mut c);
        assert_eq!(validate(&[c]).unwrap_err().0, key);
    }
    assert_eq!(
        validate(&[good.clone(), good]).unwrap_err().0,
        "devices.classes[1].name"
    );
}

proptest! {
    /// Whatever is held, a choice is distinct devices of the class, each with a share left,
    /// exactly as many as asked; a refusal happens only when fewer are free.
    #[test]
    fn choices_never_overcommit(
        shares in 1u32..4,
        held in proptest::collection::vec(0u32..5, 1..8),
        count in 0u32..9,
    ) {
        let models: Vec<&str> = held.iter().map(|_| "m").collect();
        let c = listed("gpu", shares, &models);
        let used: HashMap<String, u32> =
            held.iter().enumerate().map(|(i, n)| (i.to_string(), *n)).collect();
        let free = held.iter().filter(|n| **n < shares).count() as u32;
        match choose("n", &c, &used, &ask(count, "")) {
            Ok(got) => {
                prop_assert!(count <= free);
                prop_assert_eq!(got.len() as u32, count);
                let mut seen = std::collections::HashSet::new();
                for d in &got {
                    prop_assert!(seen.insert(d.id.clone()));
                    prop_assert!(used[&d.id] < shares);
                }
            }
            Err(DeviceError::Insufficient { free: f, asked, .. }) => {
                prop_assert!(count > free);
                prop_assert_eq!(f, free);
                prop_assert_eq!(asked, count);
            }
            Err(e) => prop_assert!(false, "{e}"),
        }
    }
}

#[test]
fn the_node_check_refuses_links_other_files_and_paths_outside_dev() {
    assert_eq!(check_node("/dev/null"), Ok(()));
    // (path, words of the refusal); /dev/stdin is a link and /dev/shm a directory on Linux.
    for (path, words) in [
        ("/dev/stdin", "symbolic link"),
        ("/dev/shm", "directory"),
        ("/etc/passwd", "under /dev"),
        ("/dev/../etc/passwd", "under /dev"),
        ("/dev/berth-no-such-device", "cannot be read"),
    ] {
        let e = check_node(path).expect_err(path);
        assert!(e.contains(words), "{path}: {e}");
    }
}

#[test]
fn unusable_devices_are_left_out_of_the_inventory_and_the_reason_kept() {
    let bad = |p: &str| {
        if p.ends_with('1') {
            Err(format!("{p} is bad"))
        } else {
            Ok(())
        }
    };
    let mut c = listed("gpu", 1, &["A", "B", "C"]);
    drop_unusable(&mut c, bad);
    assert_eq!(
        c.devices.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(),
        ["0", "2"]
    );
    assert_eq!(
        c.discovery_error.as_deref(),
        Some("device 1: /dev/fake1 is bad")
    );
    // A bad common node makes every device of the class unusable.
    let mut c = listed("gpu", 1, &["A", "B"]);
    c.common_paths = vec!["/dev/ctl1".into()];
    drop_unusable(&mut c, bad);
    assert!(c.devices.is_empty());
    // Devices passed through the nvidia driver have no nodes of berth's to check.
    let mut c = listed("gpu", 1, &["A", "B"]);
    c.pass = Pass::Nvidia;
    drop_unusable(&mut c, bad);
    assert_eq!(c.devices.len(), 2);
}

#[test]
fn check_nodes_names_the_key_of_the_first_bad_path() {
    let class = |pass: Pass, paths: &[&str]| ClassConfig {
        name: "gpu".into(),
        discover: Discover::None,
        nvidia_smi: PathBuf::from(DEFAULT_NVIDIA_SMI),
        shares: 1,
        pass,
        common_paths: vec![],
        devices: paths
            .iter()
            .enumerate()
            .map(|(i, p)| DeviceConfig {
                id: i.to_string(),
                paths: vec![(*p).to_owned()],
                model: String::new(),
                memory_bytes: 0,
            })
            .collect(),
    };
    let ok = class(Pass::DeviceNodes, &["/dev/null"]);
    let bad = class(Pass::DeviceNodes, &["/dev/null", "/dev/stdin"]);
    let (key, why) = check_nodes(&[ok.clone(), bad], check_node).unwrap_err();
    assert_eq!(key, "devices.classes[1].devices[1].paths");
    assert!(why.contains("symbolic link"), "{why}");
    assert_eq!(check_nodes(&[ok], check_node), Ok(()));
    let nvidia = class(Pass::Nvidia, &["/dev/stdin"]);
    assert_eq!(check_nodes(&[nvidia], check_node), Ok(()));
}

#[test]
fn a_device_memory_takes_a_size_like_every_bytes_key() {
    let d: DeviceConfig = toml::from_str("id = \"0\"\nmemory_bytes = \"40G\"").unwrap();
    assert_eq!(d.memory_bytes, 40 << 30);
    let d: DeviceConfig = toml::from_str("id = \"0\"\nmemory_bytes = 1024").unwrap();
    assert_eq!(d.memory_bytes, 1024);
    let d: DeviceConfig = toml::from_str("id = \"0\"").unwrap();
    assert_eq!(d.memory_bytes, 0);
    assert!(toml::from_str::<DeviceConfig>("id = \"0\"\nmemory_bytes = \"lots\"").is_err());
}
