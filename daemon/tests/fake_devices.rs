//! Device holds across a crash during start, over the fake engine: a record that names devices
//! but has no container keeps them held after a restart until reconcile finds no spawn under
//! way, and then frees them.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use berthd::devices::{Class, Device, Inventory, Pass};
use berthd::key::ServerKey;
use berthd::runtime::Runtime;
use berthd::state::{FileStore, Record, RecordStatus};
use common::fake_node::{engine, state_dir};

fn two_gpus() -> Inventory {
    let gpu = |i: usize| Device {
        id: i.to_string(),
        paths: vec![],
        model: "FakeGPU".into(),
        memory_bytes: 0,
        uuid: format!("GPU-{i}"),
    };
    Inventory {
        classes: vec![Class {
            name: "gpu".into(),
            shares: 1,
            pass: Pass::Nvidia,
            common_paths: vec![],
            devices: vec![gpu(0), gpu(1)],
            discovery_error: None,
        }],
    }
}

#[tokio::test]
async fn a_crash_between_the_record_and_the_container_holds_the_device_until_reconcile() {
    let dir = state_dir();
    berthd::serve::prepare_state_dir(&dir).unwrap();
    // What a SIGKILL right after the record's write and before Docker's create leaves.
    let key = ServerKey::new("crashed", "").unwrap();
    let mut r = Record::new(&key);
    r.status = RecordStatus::Starting;
    r.spawn_id = "s1".into();
    r.devices = vec!["gpu/1".into()];
    FileStore::open(&dir).unwrap().put(&r).unwrap();

    let mut cfg = berthd::config::Config {
        node_id: "fake-node".to_owned(),
        state_dir: dir.clone(),
        ..Default::default()
    }
    .runtime();
    cfg.devices = two_gpus();
    let rt = Runtime::new(engine(), cfg, FileStore::open(&dir).unwrap());
    rt.load_records().await.unwrap();
    let before = rt.capacity().await.devices;
    assert_eq!(
        (before[0].committed, before[0].free_devices),
        (1, 1),
        "held from the record alone"
    );
    rt.reconcile().await.unwrap();
    let after = rt.capacity().await.devices;
    assert_eq!(
        (after[0].committed, after[0].free_devices),
        (0, 2),
        "no container, no spawn under way: freed"
    );
    let reread = FileStore::open(&dir).unwrap().load_all().unwrap().0;
    assert!(reread.iter().all(|r| r.devices.is_empty()), "{reread:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
