//! Who holds which device, and the assignment of free ones to a Start. What servers hold is
//! derived from each record's `devices` and its container (so after a restart it is rebuilt
//! from the records and the containers' labels, with nothing else to trust); spawns admitted
//! but not yet recorded are held in `pending`, under the one lock every assignment takes, so
//! two concurrent Starts never get one exclusive device.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use crate::capacity::{ClassCapacity, Condition};
use crate::devices::{self, DeviceError, DeviceRef, Inventory, Pass};
use crate::docker::{ContainerEngine, DeviceRequest};
use crate::key::ServerKey;
use crate::runtime::error::blocking;
use crate::runtime::resources::admission::holds_resources;
use crate::runtime::view::{Entry, View};
use crate::runtime::{Error, Runtime, RuntimeConfig};
use crate::spec::StartSpec;
use crate::state::RecordStatus;

/// Held shares, by class, then device id.
type Used = HashMap<String, HashMap<String, u32>>;

/// The node's devices and the spawns holding some before their record does.
pub struct Devices {
    inventory: Inventory,
    node_id: String,
    /// Lock order: this → the view's entries (as `admission.pending`); never both pendings.
    pending: Mutex<HashMap<ServerKey, Vec<DeviceRef>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Whether `e`'s record still holds its devices: while its container holds resources, or,
/// with no container, while its spawn is starting (a crash between the record and the
/// container leaves it held until reconcile settles it).
fn holds(e: &Entry) -> bool {
    if e.record.devices.is_empty() {
        return false;
    }
    match &e.live {
        Some(c) => holds_resources(c) || crate::mutation::active("devices.held_by_stopped"),
        None => e.record.status == RecordStatus::Starting,
    }
}

/// What a container needs for its devices.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Passing {
    /// Device nodes to map (same path inside).
    pub paths: Vec<String>,
    /// The value of `NVIDIA_VISIBLE_DEVICES` ("void" for none); set on every node.
    pub visible: Option<String>,
    /// Docker DeviceRequests.
    pub requests: Vec<DeviceRequest>,
}

impl Devices {
    /// The devices of `cfg`.
    pub fn new(cfg: &RuntimeConfig) -> Self {
        Self {
            inventory: cfg.devices.clone(),
            node_id: cfg.node_id.clone(),
            pending: Mutex::default(),
        }
    }

    fn used(
        pending: &HashMap<ServerKey, Vec<DeviceRef>>,
        view: &View,
        except: Option<&ServerKey>,
    ) -> Used {
        let entries = view.lock();
        let mut by_key: HashMap<&ServerKey, Vec<DeviceRef>> = entries
            .iter()
            .filter(|(_, e)| holds(e))
            .map(|(k, e)| {
                let refs = e.record.devices.iter().filter_map(|d| DeviceRef::decode(d));
                (k, refs.collect())
            })
            .collect();
        for (k, refs) in pending {
            by_key.insert(k, refs.clone());
        }
        if let Some(k) = except {
            by_key.remove(k);
        }
        let mut used = Used::new();
        for d in by_key.into_values().flatten() {
            *used.entry(d.class).or_default().entry(d.id).or_default() += 1;
        }
        used
    }

    /// Picks the devices `spec` asks for and holds them for it until [`Devices::release`]
    /// (its record holds them from then on).
    pub fn assign(&self, view: &View, spec: &StartSpec) -> Result<Vec<DeviceRef>, DeviceError> {
        if spec.gpus.count == 0 {
            return Ok(Vec::new());
        }
        let name = spec.gpus.class();
        let class = self
            .inventory
            .class_named(name)
            .ok_or_else(|| DeviceError::NotConfigured {
                node: self.node_id.clone(),
                class: name.to_owned(),
            })?;
        let mut pending = lock(&self.pending);
        let used = Self::used(&pending, view, Some(&spec.key));
        let none = HashMap::new();
        let got = devices::choose(
            &self.node_id,
            class,
            used.get(name).unwrap_or(&none),
            &spec.gpus,
        )?;
        pending.insert(spec.key.clone(), got.clone());
        Ok(got)
    }

    /// Ends an admitted spawn's hold (its record and container hold the devices now, if any).
    pub fn release(&self, key: &ServerKey) {
        lock(&self.pending).remove(key);
    }

    /// How `assigned` reaches the container.
    pub fn passing(&self, assigned: &[DeviceRef]) -> Passing {
        let mut out = Passing::default();
        if self.inventory.is_empty() {
            // Every node, with devices configured or not: where nvidia is the default runtime
            // an image whose ENV says `all` would otherwise see every GPU.
            out.visible = Some("void".to_owned());
            return out;
        }
        let mut visible = Vec::new();
        let mut by_driver: Vec<String> = Vec::new();
        for r in assigned {
            let Some(class) = self.inventory.class_named(&r.class) else {
                continue;
            };
            let Some(d) = class.device(&r.id) else {
                continue;
            };
            visible.push(d.nvidia_id().to_owned());
            match class.pass {
                Pass::DeviceNodes => {
                    for p in class.common_paths.iter().chain(&d.paths) {
                        if !out.paths.contains(p) {
                            out.paths.push(p.clone());
                        }
                    }
                }
                Pass::Nvidia => by_driver.push(d.nvidia_id().to_owned()),
            }
        }
        if !by_driver.is_empty() {
            out.requests.push(DeviceRequest {
                driver: "nvidia".to_owned(),
                device_ids: by_driver,
            });
        }
        // Without devices a container sees none, even where nvidia is the default runtime.
        out.visible = Some(if visible.is_empty() {
            "void".to_owned()
        } else {
            visible.join(",")
        });
        out
    }

    /// Per class: the capacity report's figures.
    pub fn capacity(&self, view: &View) -> Vec<ClassCapacity> {
        let used = Self::used(&lock(&self.pending), view, None);
        let none = HashMap::new();
        self.inventory
            .classes
            .iter()
            .map(|c| {
                let u = used.get(&c.name).unwrap_or(&none);
                let n = |x: usize| u32::try_from(x).unwrap_or(u32::MAX);
                let total = n(c.devices.len()).saturating_mul(c.shares);
                let committed: u32 = c
                    .devices
                    .iter()
                    .map(|d| u.get(&d.id).copied().unwrap_or(0).min(c.shares))
                    .sum();
                let free = c
                    .devices
                    .iter()
                    .filter(|d| u.get(&d.id).copied().unwrap_or(0) < c.shares)
                    .count();
                ClassCapacity {
                    class: c.name.clone(),
                    total,
                    allocatable: total,
                    committed,
                    models: c.models(),
                    free_devices: n(free),
                    shares: c.shares,
                    discovery_error: c.discovery_error.clone().unwrap_or_default(),
                }
            })
            .collect()
    }

    /// A `DeviceDiscoveryFailed` condition when a class's discovery failed.
    pub fn conditions(&self) -> Vec<Condition> {
        let failed: Vec<String> = self
            .inventory
            .classes
            .iter()
            .filter_map(|c| {
                c.discovery_error
                    .as_ref()
                    .map(|e| format!("{}: {e}", c.name))
            })
            .collect();
        if failed.is_empty() {
            return Vec::new();
        }
        vec![Condition {
            kind: "DeviceDiscoveryFailed",
            status: "True",
            reason: "DiscoveryFailed".to_owned(),
            message: failed.join("; "),
        }]
    }

    /// The host nodes of `assigned`, to check before Docker maps them.
    fn paths(&self, assigned: &[DeviceRef]) -> Vec<String> {
        self.passing(assigned).paths
    }
}

impl<E: ContainerEngine> Runtime<E> {
    /// Assigns `spec`'s devices (held until [`Runtime::settle_devices`]) and checks their
    /// nodes are device nodes only root can swap.
    pub(in crate::runtime) async fn assign_devices(
        &self,
        spec: &StartSpec,
    ) -> Result<Vec<DeviceRef>, Error> {
        let got = self.inner.devices.assign(&self.inner.view, spec)?;
        let paths = self.inner.devices.paths(&got);
        if !paths.is_empty() {
            blocking("device check", move || {
                paths
                    .iter()
                    .try_for_each(|p| crate::hostpath::check_device(p))
            })
            .await??;
        }
        if !got.is_empty() {
            let ids: Vec<String> = got.iter().map(DeviceRef::encode).collect();
            tracing::info!(user = spec.key.user(), server = spec.key.server(), devices = %ids.join(","), "devices assigned");
        }
        Ok(got)
    }

    /// After a spawn (or on finding a key with no container): ends its pending hold and, when
    /// no container of the key holds resources, frees the devices its record names.
    pub(in crate::runtime) async fn settle_devices(&self, key: &ServerKey) {
        self.inner.devices.release(key);
        self.inner.view.capacity_changed();
        let Some(e) = self.inner.view.get(key) else {
            return;
        };
        let live = e.live.as_ref().is_some_and(holds_resources);
        if e.record.devices.is_empty() || live {
            return;
        }
        let freed = e.record.devices.join(",");
        match self.inner.records.save(key, |r| r.devices.clear()).await {
            Ok(_) => {
                tracing::info!(user = key.user(), server = key.server(), devices = %freed, "devices freed: no container holds them");
            }
            Err(e) => {
                tracing::error!(user = key.user(), server = key.server(), error = %e, "cannot free devices in the record; they stay held");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::{Class, Device};

    fn devices(pass: Pass) -> Devices {
        let mk = |i: usize| Device {
            id: i.to_string(),
            paths: vec![format!("/dev/g{i}")],
            model: "m".into(),
            memory_bytes: 0,
            uuid: format!("GPU-{i}"),
        };
        Devices {
            inventory: Inventory {
                classes: vec![Class {
                    name: "gpu".into(),
                    shares: 1,
                    pass,
                    common_paths: vec!["/dev/ctl".into()],
                    devices: vec![mk(0), mk(1)],
                    discovery_error: None,
                }],
            },
            node_id: "n".into(),
            pending: Mutex::default(),
        }
    }

    fn r(id: &str) -> DeviceRef {
        DeviceRef {
            class: "gpu".into(),
            id: id.into(),
        }
    }

    #[test]
    fn device_nodes_pass_the_nodes_and_the_visible_ids() {
        let p = devices(Pass::DeviceNodes).passing(&[r("1")]);
        assert_eq!(p.paths, ["/dev/ctl", "/dev/g1"]);
        assert_eq!(p.visible.as_deref(), Some("GPU-1"));
        assert!(p.requests.is_empty());
        let none = devices(Pass::DeviceNodes).passing(&[]);
        assert_eq!(none.visible.as_deref(), Some("void"));
        assert!(none.paths.is_empty());
    }

    #[test]
    fn a_node_without_devices_still_hides_every_gpu() {
        let d = Devices {
            inventory: Inventory::default(),
            node_id: "n".into(),
            pending: Mutex::default(),
        };
        let p = d.passing(&[]);
        assert_eq!(p.visible.as_deref(), Some("void"));
        assert!(p.paths.is_empty() && p.requests.is_empty());
    }

    #[test]
    fn nvidia_passes_a_device_request_with_the_ids() {
        let p = devices(Pass::Nvidia).passing(&[r("0"), r("1")]);
        assert!(p.paths.is_empty());
        assert_eq!(
            p.requests,
            [DeviceRequest {
                driver: "nvidia".into(),
                device_ids: vec!["GPU-0".into(), "GPU-1".into()]
            }]
        );
    }

    fn start_of(user: &str, count: u32) -> StartSpec {
        StartSpec {
            gpus: crate::devices::Ask {
                count,
                ..Default::default()
            },
            ..StartSpec::plain(user, "img:1")
        }
    }

    fn recorded(view: &View, user: &str, devices: &[&str], status: RecordStatus) {
        let key = ServerKey::new(user, "").expect("a valid key");
        let mut r = crate::state::Record::new(&key);
        r.devices = devices.iter().map(|d| (*d).to_owned()).collect();
        r.status = status;
        view.put_record(&key, r);
    }

    #[test]
    fn a_record_starting_without_a_container_holds_its_devices() {
        let d = devices(Pass::DeviceNodes);
        let view = View::default();
        // A crash between the record and the container: the device stays held.
        recorded(&view, "crashed", &["gpu/0"], RecordStatus::Starting);
        let got = d.assign(&view, &start_of("b", 1)).expect("one is free");
        assert_eq!(got, [r("1")]);
        assert!(matches!(
            d.assign(&view, &start_of("c", 1)),
            Err(DeviceError::Insufficient { free: 0, .. })
        ));
        // The crashed key itself may have it again (a retry of its spawn).
        d.release(&ServerKey::new("b", "").expect("key"));
        let again = d
            .assign(&view, &start_of("crashed", 2))
            .expect("its own and b's");
        assert_eq!(again, [r("0"), r("1")]);
        d.release(&ServerKey::new("crashed", "").expect("key"));
        // Once the record is no longer starting (exited, removed), the device is free.
        recorded(&view, "crashed", &["gpu/0"], RecordStatus::Exited);
        let cap = d.capacity(&view);
        assert_eq!((cap[0].committed, cap[0].free_devices), (0, 2));
    }

    #[test]
    fn pending_spawns_count_until_released() {
        let d = devices(Pass::DeviceNodes);
        let view = View::default();
        d.assign(&view, &start_of("a", 2)).expect("two free");
        assert_eq!(d.capacity(&view)[0].committed, 2);
        assert!(d.assign(&view, &start_of("b", 1)).is_err());
        d.release(&ServerKey::new("a", "").expect("key"));
        assert_eq!(d.capacity(&view)[0].committed, 0);
        let mut other = start_of("c", 1);
        other.gpus.class = "tpu".into();
        assert!(matches!(
            d.assign(&view, &other),
            Err(DeviceError::NotConfigured { .. })
        ));
    }
}
