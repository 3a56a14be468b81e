//! Devices berthd owns (GPUs and other classes): each class of the `[devices]` config,
//! discovered with `nvidia-smi` or listed by hand, the node's inventory, and the pure choice of
//! free devices for a Start. Who holds what is derived from the records and containers (see
//! `runtime/resources/devices.rs`), so a restart forgets nothing.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The class a Start's `gpus` names when it gives none.
pub const DEFAULT_CLASS: &str = "gpu";
/// The `nvidia-smi` a discovering class runs unless told otherwise.
pub const DEFAULT_NVIDIA_SMI: &str = "nvidia-smi";
/// The query discovery runs.
pub const NVIDIA_SMI_ARGS: [&str; 2] = ["--query-gpu=index,uuid,name,memory.total", "--format=csv"];
/// How long discovery may take before the class is reported as failed.
pub const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(10);
/// Most devices a single Start may ask for.
pub const MAX_ASK: u32 = 64;
/// The variable the NVIDIA runtime and CUDA read to know which GPUs a container may use.
pub const NVIDIA_VISIBLE_DEVICES: &str = "NVIDIA_VISIBLE_DEVICES";

/// How a class's devices are discovered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Discover {
    /// Only the devices listed in the config.
    #[default]
    None,
    /// The GPUs `nvidia-smi` reports (plus any listed).
    NvidiaSmi,
}

/// How a class's devices reach a container.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pass {
    /// The device nodes themselves (and the class's common ones), plus `NVIDIA_VISIBLE_DEVICES`.
    #[default]
    DeviceNodes,
    /// A Docker DeviceRequest for the `nvidia` driver with the devices' ids.
    Nvidia,
}

/// One device listed by hand.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    /// Unique in its class; what the NVIDIA runtime calls it (index or UUID).
    pub id: String,
    /// Host device nodes the container gets (mapped at the same path).
    #[serde(default)]
    pub paths: Vec<String>,
    /// Model name, for constraints and the capacity report.
    #[serde(default)]
    pub model: String,
    /// Memory of the device in bytes (0 = unknown); a size like every `*_bytes` key ("40G").
    #[serde(default, deserialize_with = "crate::config::units::bytes")]
    pub memory_bytes: u64,
}

/// One `[[devices.classes]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClassConfig {
    /// The class name a Start asks for ("gpu").
    pub name: String,
    /// "none" (the listed devices only) or "nvidia-smi".
    #[serde(default)]
    pub discover: Discover,
    /// The `nvidia-smi` to run for discovery.
    #[serde(default = "default_nvidia_smi")]
    pub nvidia_smi: PathBuf,
    /// Servers one device may serve at once: 1 (default) = exclusive, more = shared by count.
    #[serde(default = "one")]
    pub shares: u32,
    /// "device-nodes" (default) or "nvidia".
    #[serde(default)]
    pub pass: Pass,
    /// Device nodes every container of the class gets besides its devices' own (e.g.
    /// /dev/nvidiactl, /dev/nvidia-uvm).
    #[serde(default)]
    pub common_paths: Vec<String>,
    /// Devices listed by hand.
    #[serde(default)]
    pub devices: Vec<DeviceConfig>,
}

fn default_nvidia_smi() -> PathBuf {
    PathBuf::from(DEFAULT_NVIDIA_SMI)
}

fn one() -> u32 {
    1
}

fn name_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
}

/// Checks the `[devices]` classes; the error names the key.
pub fn validate(classes: &[ClassConfig]) -> Result<(), (String, String)> {
    let mut names = BTreeSet::new();
    for (i, c) in classes.iter().enumerate() {
        let key = |k: &str| format!("devices.classes[{i}].{k}");
        if !name_ok(&c.name) || c.name.contains(':') {
            return Err((
                key("name"),
                format!("{:?} must be 1-63 of [A-Za-z0-9._-]", c.name),
            ));
        }
        if !names.insert(c.name.as_str()) {
            return Err((key("name"), format!("class {:?} is declared twice", c.name)));
        }
        if c.shares == 0 {
            return Err((key("shares"), "must be at least 1".to_owned()));
        }
        if c.discover == Discover::None && c.devices.is_empty() {
            return Err((
                key("devices"),
                "a class without discovery lists its devices".to_owned(),
            ));
        }
        if let Some(p) = c.common_paths.iter().find(|p| !under_dev(p)) {
            return Err((key("common_paths"), format!("{p:?} {NOT_UNDER_DEV}")));
        }
        let mut ids = BTreeSet::new();
        for (j, d) in c.devices.iter().enumerate() {
            let dkey = |k: &str| format!("devices.classes[{i}].devices[{j}].{k}");
            if !name_ok(&d.id) {
                return Err((
                    dkey("id"),
                    format!("{:?} must be 1-63 of [A-Za-z0-9._:-]", d.id),
                ));
            }
            if !ids.insert(d.id.as_str()) {
                return Err((dkey("id"), format!("device {:?} is listed twice", d.id)));
            }
            if c.pass == Pass::DeviceNodes && d.paths.is_empty() {
                return Err((
                    dkey("paths"),
                    "device-nodes passing needs the device's nodes".to_owned(),
                ));
            }
            if let Some(p) = d.paths.iter().find(|p| !under_dev(p)) {
                return Err((dkey("paths"), format!("{p:?} {NOT_UNDER_DEV}")));
            }
        }
    }
    Ok(())
}

const NOT_UNDER_DEV: &str = "is not an absolute path under /dev";

/// The text test: an absolute path below `/dev` that does not climb out with `..`.
fn under_dev(p: &str) -> bool {
    p.strip_prefix("/dev/")
        .is_some_and(|rest| !rest.is_empty() && !rest.split('/').any(|s| s == ".."))
}

/// Checks on the node that every path a device-nodes class hands to containers is a device
/// node (not a link, not a regular file) in directories only root can change, with `check`
/// (the one Start runs, [`crate::hostpath::check_device`]); the error names the key. Run by
/// `config check` and `serve` alike, so a path Start would refuse never reaches Capacity.
pub fn check_nodes(
    classes: &[ClassConfig],
    check: impl Fn(&str) -> Result<(), String>,
) -> Result<(), (String, String)> {
    for (i, c) in classes.iter().enumerate() {
        if c.pass != Pass::DeviceNodes {
            continue;
        }
        for p in &c.common_paths {
            check(p).map_err(|why| (format!("devices.classes[{i}].common_paths"), why))?;
        }
        for (j, d) in c.devices.iter().enumerate() {
            for p in &d.paths {
                check(p)
                    .map_err(|why| (format!("devices.classes[{i}].devices[{j}].paths"), why))?;
            }
        }
    }
    Ok(())
}

/// The node check of one device path, as Start runs it, its refusal as text.
pub fn check_node(path: &str) -> Result<(), String> {
    if !under_dev(path) {
        return Err(format!("{path:?} {NOT_UNDER_DEV}"));
    }
    crate::hostpath::check_device(path).map_err(|e| match e {
        crate::hostpath::HostPathError::Device { path, why } => format!("{path} {why}"),
        other => other.to_string(),
    })
}

/// Drops from a device-nodes `class` every device whose nodes (or the class's common nodes)
/// fail `check`, noting why in `discovery_error`: a device Start would refuse is never
/// advertised as free.
pub fn drop_unusable(class: &mut Class, check: impl Fn(&str) -> Result<(), String>) {
    if class.pass != Pass::DeviceNodes {
        return;
    }
    let common = class.common_paths.iter().find_map(|p| check(p).err());
    let mut why = Vec::new();
    class.devices.retain(|d| {
        let bad = common
            .clone()
            .or_else(|| d.paths.iter().find_map(|p| check(p).err()));
        if let Some(b) = &bad {
            why.push(format!("device {}: {b}", d.id));
        }
        bad.is_none()
    });
    if !why.is_empty() {
        let why = why.join("; ");
        tracing::warn!(class = %class.name, error = %why, "devices left out of the inventory");
        class.discovery_error = Some(match class.discovery_error.take() {
            Some(e) => format!("{e}; {why}"),
            None => why,
        });
    }
}

/// One device of the inventory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// Unique in its class.
    pub id: String,
    /// Host device nodes.
    pub paths: Vec<String>,
    /// Model name.
    pub model: String,
    /// Bytes (0 = unknown).
    pub memory_bytes: u64,
    /// The GPU's UUID when discovered ("" otherwise); preferred as the NVIDIA id.
    pub uuid: String,
}

impl Device {
    /// The id the NVIDIA runtime knows the device by.
    pub fn nvidia_id(&self) -> &str {
        if self.uuid.is_empty() {
            &self.id
        } else {
            &self.uuid
        }
    }
}

/// One class of the inventory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Class {
    /// Its name.
    pub name: String,
    /// Servers per device.
    pub shares: u32,
    /// How its devices reach a container.
    pub pass: Pass,
    /// Nodes every container of the class gets.
    pub common_paths: Vec<String>,
    /// Its devices, in the order they are handed out.
    pub devices: Vec<Device>,
    /// Why discovery failed, if it did (the listed devices are still served).
    pub discovery_error: Option<String>,
}

impl Class {
    /// The device `id`.
    pub fn device(&self, id: &str) -> Option<&Device> {
        self.devices.iter().find(|d| d.id == id)
    }

    /// The distinct model names.
    pub fn models(&self) -> Vec<String> {
        let set: BTreeSet<&str> = self
            .devices
            .iter()
            .map(|d| d.model.as_str())
            .filter(|m| !m.is_empty())
            .collect();
        set.into_iter().map(str::to_owned).collect()
    }
}

/// The node's device classes as discovered at start-up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inventory {
    /// Every class.
    pub classes: Vec<Class>,
}

impl Inventory {
    /// Discovers every class of `classes` (running `nvidia-smi` where configured).
    pub fn discover(classes: &[ClassConfig]) -> Self {
        let classes = classes
            .iter()
            .map(|c| {
                let found = match c.discover {
                    Discover::None => Ok(Vec::new()),
                    Discover::NvidiaSmi => run_nvidia_smi(&c.nvidia_smi),
                };
                let mut class = Self::class(c, found);
                drop_unusable(&mut class, check_node);
                class
            })
            .collect();
        Self { classes }
    }

    /// A class from its config and what discovery found (or why it failed).
    pub fn class(c: &ClassConfig, found: Result<Vec<Device>, String>) -> Class {
        let (mut devices, discovery_error) = match found {
            Ok(d) => (d, None),
            Err(e) => (Vec::new(), Some(e)),
        };
        for d in &c.devices {
            if let Some(i) = devices.iter().position(|x| x.id == d.id) {
                devices.remove(i);
            }
            devices.push(Device {
                id: d.id.clone(),
                paths: d.paths.clone(),
                model: d.model.clone(),
                memory_bytes: d.memory_bytes,
                uuid: String::new(),
            });
        }
        if let Some(e) = &discovery_error {
            tracing::warn!(class = %c.name, error = %e, "device discovery failed");
        } else {
            tracing::info!(class = %c.name, devices = devices.len(), "device class ready");
        }
        Class {
            name: c.name.clone(),
            shares: c.shares,
            pass: c.pass,
            common_paths: c.common_paths.clone(),
            devices,
            discovery_error,
        }
    }

    /// The class `name`.
    pub fn class_named(&self, name: &str) -> Option<&Class> {
        self.classes.iter().find(|c| c.name == name)
    }

    /// Whether any class is configured.
    pub fn is_empty(&self) -> bool {
        self.classes.is_empty()
    }
}

/// Runs `nvidia-smi` with the discovery query and a deadline.
fn run_nvidia_smi(path: &std::path::Path) -> Result<Vec<Device>, String> {
    let mut child = Command::new(path)
        .args(NVIDIA_SMI_ARGS)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", path.display()))?;
    let deadline = Instant::now() + DISCOVERY_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{} did not answer within {} s",
                    path.display(),
                    DISCOVERY_TIMEOUT.as_secs()
                ));
            }
            Err(e) => return Err(format!("cannot wait for {}: {e}", path.display())),
        }
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    parse_nvidia_smi(
        out.status.success(),
        &String::from_utf8_lossy(&out.stdout),
        &String::from_utf8_lossy(&out.stderr),
    )
}

/// Parses the output of `nvidia-smi --query-gpu=index,uuid,name,memory.total --format=csv`:
/// a header line, then one `index, uuid, name, N MiB` line per GPU. A failed run (non-zero
/// exit, no header) is an error quoting its first line.
pub fn parse_nvidia_smi(success: bool, stdout: &str, stderr: &str) -> Result<Vec<Device>, String> {
    let first = |s: &str| {
        s.lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or("")
            .to_owned()
    };
    if !success {
        let why = [first(stdout), first(stderr)]
            .into_iter()
            .find(|l| !l.is_empty())
            .unwrap_or_else(|| "no output".to_owned());
        return Err(format!("nvidia-smi failed: {why}"));
    }
    let mut lines = stdout.lines().map(str::trim).filter(|l| !l.is_empty());
    match lines.next() {
        Some(h) if h.starts_with("index") => {}
        other => {
            return Err(format!(
                "nvidia-smi: unexpected output {:?}",
                other.unwrap_or("")
            ));
        }
    }
    lines
        .map(|l| {
            let f: Vec<&str> = l.split(',').map(str::trim).collect();
            let [index, uuid, name, mem] = f[..] else {
                return Err(format!("nvidia-smi: cannot read line {l:?}"));
            };
            if index.parse::<u32>().is_err() {
                return Err(format!("nvidia-smi: bad index in {l:?}"));
            }
            Ok(Device {
                id: index.to_owned(),
                paths: vec![format!("/dev/nvidia{index}")],
                model: name.to_owned(),
                memory_bytes: memory(mem),
                uuid: uuid.to_owned(),
            })
        })
        .collect()
}

/// "40960 MiB" in bytes; 0 when unreadable ("[N/A]").
fn memory(s: &str) -> u64 {
    let mut it = s.split_whitespace();
    let n: u64 = it.next().and_then(|n| n.parse().ok()).unwrap_or(0);
    let unit = match it.next() {
        Some("KiB") => 1 << 10,
        Some("GiB") => 1 << 30,
        Some("B") => 1,
        _ => 1 << 20,
    };
    n.saturating_mul(unit)
}

/// What a Start asks for: `count` devices of `class`, of `model` when given.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Ask {
    /// 0 = none.
    pub count: u32,
    /// "" = [`DEFAULT_CLASS`].
    pub class: String,
    /// "" = any model; otherwise the model name, case-insensitively.
    pub model: String,
}

impl Ask {
    /// The class asked for.
    pub fn class(&self) -> &str {
        if self.class.is_empty() {
            DEFAULT_CLASS
        } else {
            &self.class
        }
    }
}

/// A device held by a server, written `class/id` in records and labels.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceRef {
    /// Its class.
    pub class: String,
    /// Its id in the class.
    pub id: String,
}

impl DeviceRef {
    /// `class/id`.
    pub fn encode(&self) -> String {
        format!("{}/{}", self.class, self.id)
    }

    /// Reads `class/id`.
    pub fn decode(s: &str) -> Option<Self> {
        let (class, id) = s.split_once('/')?;
        (!class.is_empty() && !id.is_empty()).then(|| Self {
            class: class.to_owned(),
            id: id.to_owned(),
        })
    }
}

/// Why devices cannot be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    /// Fewer free devices than asked.
    #[error(
        "node {node:?} has {free} free {class} device(s){}, {asked} asked (of {total}); try another node or fewer",
        of_model(.model)
    )]
    Insufficient {
        /// Node id.
        node: String,
        /// The class.
        class: String,
        /// The model asked for ("" = any).
        model: String,
        /// Asked.
        asked: u32,
        /// Free that fit.
        free: u32,
        /// Devices of the class.
        total: u32,
    },
    /// The node has no such class.
    #[error("node {node:?} has no {class} devices configured")]
    NotConfigured {
        /// Node id.
        node: String,
        /// The class.
        class: String,
    },
}

fn of_model(model: &str) -> String {
    if model.is_empty() {
        String::new()
    } else {
        format!(" of model {model}")
    }
}

/// Picks `ask.count` distinct devices of `class` whose holders (`used`, by id) leave a share
/// free and whose model matches: least used first, then in the class's order. Pure.
pub fn choose(
    node: &str,
    class: &Class,
    used: &HashMap<String, u32>,
    ask: &Ask,
) -> Result<Vec<DeviceRef>, DeviceError> {
    let mut free: Vec<(u32, usize, &Device)> = class
        .devices
        .iter()
        .enumerate()
        .filter(|(_, d)| ask.model.is_empty() || d.model.eq_ignore_ascii_case(&ask.model))
        .map(|(i, d)| (used.get(&d.id).copied().unwrap_or(0), i, d))
        .filter(|(n, _, _)| *n < class.shares)
        .collect();
    free.sort_by_key(|(n, i, _)| (*n, *i));
    let have = u32::try_from(free.len()).unwrap_or(u32::MAX);
    if have < ask.count {
        return Err(DeviceError::Insufficient {
            node: node.to_owned(),
            class: class.name.clone(),
            model: ask.model.clone(),
            asked: ask.count,
            free: have,
            total: u32::try_from(class.devices.len()).unwrap_or(u32::MAX),
        });
    }
    Ok(free
        .into_iter()
        .take(ask.count as usize)
        .map(|(_, _, d)| DeviceRef {
            class: class.name.clone(),
            id: d.id.clone(),
        })
        .collect())
}

#[cfg(test)]
mod tests;
