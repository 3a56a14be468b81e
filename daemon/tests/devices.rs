//! GPUs owned by berthd, against the real binary and the real Docker engine: four fake "GPUs"
//! (character devices made with mknod, so Docker really maps them) handed out exclusively to
//! concurrent Starts, freed when a server stops, and never double-assigned across a SIGKILL.
//! Discovery runs the configured `nvidia-smi`, here scripts replaying recorded outputs.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use berth_proto::v1 as pb;
use berth_proto::v1::spawner_client::SpawnerClient;
use common::{Daemon, Stop, stop_as, tiny_start, unique, write_file};
use tonic::Code;
use tonic::transport::Channel;

/// A root-owned directory under /dev holding `n` character devices (copies of /dev/null),
/// removed on drop.
struct FakeGpus {
    dir: PathBuf,
}

impl FakeGpus {
    fn make(n: usize) -> Self {
        let dir = PathBuf::from("/dev").join(unique("berth-gpus"));
        std::fs::create_dir(&dir).expect("these tests run as root (mknod under /dev)");
        for i in 0..n {
            let node = dir.join(format!("gpu{i}"));
            let ok = Command::new("mknod")
                .arg(&node)
                .args(["c", "1", "3"])
                .status()
                .unwrap()
                .success();
            assert!(ok, "mknod {}", node.display());
        }
        Self { dir }
    }

    fn path(&self, i: usize) -> String {
        self.dir.join(format!("gpu{i}")).display().to_string()
    }
}

impl Drop for FakeGpus {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/nvidia-smi")
        .join(name)
}

/// An executable `nvidia-smi` that prints `fixture` and exits with `code`.
fn fake_nvidia_smi(dir: &Path, name: &str, fixture_name: &str, code: i32) -> PathBuf {
    let script = format!(
        "#!/bin/sh\ncat '{}'\nexit {code}\n",
        fixture(fixture_name).display()
    );
    let p = write_file(dir, name, &script);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

/// A node with the four fake GPUs as class "gpu", plus a class discovered from the A100
/// fixture and one whose nvidia-smi fails.
fn node(gpus: &FakeGpus, cfg_dir: &Path) -> Daemon {
    let mut toml = String::from("[[devices.classes]]\nname = \"gpu\"\n");
    for i in 0..4 {
        toml += &format!(
            "[[devices.classes.devices]]\nid = \"{i}\"\npaths = [\"{}\"]\nmodel = \"FakeGPU\"\n",
            gpus.path(i)
        );
    }
    let ok = fake_nvidia_smi(cfg_dir, "nvidia-smi-ok", "a100x4.csv", 0);
    let bad = fake_nvidia_smi(cfg_dir, "nvidia-smi-bad", "driver-failed.txt", 9);
    toml += &format!(
        "[[devices.classes]]\nname = \"a100\"\ndiscover = \"nvidia-smi\"\nnvidia_smi = \"{}\"\npass = \"nvidia\"\n",
        ok.display()
    );
    toml += &format!(
        "[[devices.classes]]\nname = \"broken\"\ndiscover = \"nvidia-smi\"\nnvidia_smi = \"{}\"\npass = \"nvidia\"\n",
        bad.display()
    );
    let cfg = write_file(cfg_dir, "node.toml", &toml);
    Daemon::start_with(&["--config", cfg.to_str().unwrap()])
}

fn gpu_start(user: &str) -> pb::StartRequest {
    let mut s = tiny_start(user, "s");
    s.resources = Some(pb::Resources {
        gpus: 1,
        ..Default::default()
    });
    s
}

async fn class(c: &mut SpawnerClient<Channel>, name: &str) -> pb::DeviceClassCapacity {
    let cap = c
        .capacity(pb::CapacityRequest {})
        .await
        .unwrap()
        .into_inner();
    cap.devices.into_iter().find(|d| d.class == name).unwrap()
}

/// The devices of `user`'s container: its label and what `ls` shows inside it.
fn seen(gpus: &FakeGpus, user: &str, node: &str) -> (String, Vec<String>) {
    let filter_u = format!("label=berth.user={user}");
    let filter_n = format!("label=berth.node={node}");
    let id = common::docker(&["ps", "-q", "--filter", &filter_u, "--filter", &filter_n]);
    assert!(!id.is_empty(), "{user} has a running container");
    let label = common::docker(&[
        "inspect",
        "--format",
        "{{index .Config.Labels \"berth.devices\"}}",
        &id,
    ]);
    let dir = gpus.dir.display().to_string();
    let ls = common::docker(&["exec", &id, "ls", &dir]);
    (label, ls.split_whitespace().map(str::to_owned).collect())
}

/// The environment Docker gives container `id`.
fn env_of(id: &str) -> Vec<String> {
    let json = common::docker(&["inspect", "--format", "{{json .Config.Env}}", id]);
    serde_json::from_str(&json).unwrap()
}

fn refusal(e: &tonic::Status) -> (Code, String, std::collections::HashMap<String, String>) {
    let info = tonic_types::StatusExt::get_details_error_info(e).expect("a reason");
    (e.code(), info.reason, info.metadata)
}

#[tokio::test]
async fn four_gpus_go_to_four_servers_and_survive_a_sigkill() {
    let gpus = FakeGpus::make(4);
    let cfg_dir = common::temp_dir("devcfg");
    let mut d = node(&gpus, &cfg_dir);
    let mut c = d.client().await;

    let gpu = class(&mut c, "gpu").await;
    assert_eq!((gpu.total, gpu.committed, gpu.free_devices), (4, 0, 4));
    assert_eq!(gpu.models, ["FakeGPU"]);

    // Six at once: exactly four run, each with its own device; two are refused.
    let users: Vec<String> = (0..6).map(|i| unique(&format!("g{i}"))).collect();
    let results = futures::future::join_all(users.iter().map(|u| {
        let mut c = c.clone();
        let req = gpu_start(u);
        async move { c.start(req).await }
    }))
    .await;
    let (ok, refused): (Vec<_>, Vec<_>) = users.iter().zip(&results).partition(|(_, r)| r.is_ok());
    assert_eq!(ok.len(), 4, "{results:?}");
    for (_, r) in &refused {
        let (code, reason, meta) = refusal(r.as_ref().unwrap_err());
        assert_eq!(
            (code, reason.as_str()),
            (Code::ResourceExhausted, "INSUFFICIENT_DEVICES")
        );
        assert_eq!(meta["class"], "gpu");
        assert_eq!((meta["asked"].as_str(), meta["free"].as_str()), ("1", "0"));
    }
    let mut held = Vec::new();
    for (u, _) in &ok {
        let (label, ls) = seen(&gpus, u, &d.node_id);
        let id = label.strip_prefix("gpu/").unwrap().to_owned();
        assert_eq!(ls, [format!("gpu{id}")], "{u} sees only its own device");
        held.push((u.to_string(), id));
    }
    let mut ids: Vec<&str> = held.iter().map(|(_, i)| i.as_str()).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["0", "1", "2", "3"], "four distinct devices");
    assert_eq!(class(&mut c, "gpu").await.committed, 4);
    assert_eq!(d.containers().len(), 4, "nothing created for the refused");

    // Stop one: its device goes to the next Start.
    let (first, freed) = held.remove(0);
    stop_as(&c, &first, "", Stop::Now).await.unwrap();
    let next = refused[0].0.clone();
    c.start(gpu_start(&next)).await.unwrap();
    assert_eq!(seen(&gpus, &next, &d.node_id).0, format!("gpu/{freed}"));
    held.push((next, freed));

    // SIGKILL with four assigned: after the restart nothing is double-assigned.
    d.kill9();
    d.respawn();
    let mut c = d.client().await;
    let gpu = class(&mut c, "gpu").await;
    assert_eq!(
        (gpu.committed, gpu.free_devices),
        (4, 0),
        "rebuilt after restart"
    );
    let late = refused[1].0.clone();
    let e = c.start(gpu_start(&late)).await.unwrap_err();
    assert_eq!(refusal(&e).1, "INSUFFICIENT_DEVICES", "{e:?}");
    // Stop one: that exact device is handed out next.
    let (victim, its) = held.remove(1);
    stop_as(&c, &victim, "", Stop::Remove).await.unwrap();
    c.start(gpu_start(&late)).await.unwrap();
    let (label, ls) = seen(&gpus, &late, &d.node_id);
    assert_eq!(label, format!("gpu/{its}"));
    assert_eq!(ls, [format!("gpu{its}")]);
    drop(d);
    let _ = std::fs::remove_dir_all(&cfg_dir);
}

#[tokio::test]
async fn discovery_and_refusals_of_what_is_not_configured() {
    let gpus = FakeGpus::make(4);
    let cfg_dir = common::temp_dir("devcfg");
    let d = node(&gpus, &cfg_dir);
    let mut c = d.client().await;
    let cap = c
        .capacity(pb::CapacityRequest {})
        .await
        .unwrap()
        .into_inner();

    let a100 = cap.devices.iter().find(|d| d.class == "a100").unwrap();
    assert_eq!((a100.total, a100.free_devices), (4, 4));
    assert_eq!(a100.models, ["NVIDIA A100-SXM4-40GB"]);
    assert!(a100.discovery_error.is_empty());
    let broken = cap.devices.iter().find(|d| d.class == "broken").unwrap();
    assert_eq!(broken.total, 0);
    assert!(
        broken
            .discovery_error
            .contains("couldn't communicate with the NVIDIA driver"),
        "{}",
        broken.discovery_error
    );
    let cond = cap
        .conditions
        .iter()
        .find(|k| k.r#type == "DeviceDiscoveryFailed")
        .expect("a condition names the failed class");
    assert_eq!(cond.status, "True");
    assert!(cond.message.starts_with("broken:"), "{}", cond.message);

    // A class the node does not have.
    let mut s = gpu_start(&unique("tpu"));
    s.resources.as_mut().unwrap().gpu_class = "tpu".into();
    let (code, reason, meta) = refusal(&c.start(s).await.unwrap_err());
    assert_eq!(
        (code, reason.as_str()),
        (Code::FailedPrecondition, "DEVICES_NOT_CONFIGURED")
    );
    assert_eq!(meta["class"], "tpu");
    // A model the class does not have.
    let mut s = gpu_start(&unique("model"));
    s.resources.as_mut().unwrap().gpu_model = "H100".into();
    let (code, reason, meta) = refusal(&c.start(s).await.unwrap_err());
    assert_eq!(
        (code, reason.as_str()),
        (Code::ResourceExhausted, "INSUFFICIENT_DEVICES")
    );
    assert_eq!(
        (meta["model"].as_str(), meta["free"].as_str()),
        ("H100", "0")
    );
    // Too many.
    let mut s = gpu_start(&unique("many"));
    s.resources.as_mut().unwrap().gpus = 5;
    let (_, reason, meta) = refusal(&c.start(s).await.unwrap_err());
    assert_eq!(
        (reason.as_str(), meta["free"].as_str()),
        ("INSUFFICIENT_DEVICES", "4")
    );
    // Two of the model asked for, case aside; no GPU server sees a device it was not given,
    // and a server without GPUs sees none.
    let two = unique("two");
    let mut s = gpu_start(&two);
    s.resources.as_mut().unwrap().gpus = 2;
    s.resources.as_mut().unwrap().gpu_model = "fakegpu".into();
    c.start(s).await.unwrap();
    let (label, ls) = seen(&gpus, &two, &d.node_id);
    assert_eq!(label, "gpu/0,gpu/1");
    assert_eq!(ls, ["gpu0", "gpu1"]);
    let id = common::docker(&["ps", "-q", "--filter", &format!("label=berth.user={two}")]);
    assert!(env_of(&id).contains(&"NVIDIA_VISIBLE_DEVICES=0,1".to_owned()));
    let plain = unique("plain");
    c.start(tiny_start(&plain, "s")).await.unwrap();
    let id = common::docker(&["ps", "-q", "--filter", &format!("label=berth.user={plain}")]);
    assert!(env_of(&id).contains(&"NVIDIA_VISIBLE_DEVICES=void".to_owned()));
    assert_eq!(d.containers().len(), 2, "refused Starts created nothing");
    drop(d);
    let _ = std::fs::remove_dir_all(&cfg_dir);
}
