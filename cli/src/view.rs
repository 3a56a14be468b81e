//! What berthctl prints: the JSON documents of `-o json` (field names are the proto's; times
//! RFC 3339 in UTC; absent values `null`; new fields may be added, none renamed or removed) and
//! the human tables, with sizes in KiB/MiB/GiB and ages like `5m`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use berth_proto::v1 as pb;
use berthd::config::units::format_size;
use serde::Serialize;

/// One server: `ps` (as `{"servers": [...]}`), `inspect`, `stop`.
#[derive(Serialize, Debug)]
pub(crate) struct Server {
    pub(crate) user: String,
    /// "" for the default server.
    pub(crate) server: String,
    /// ABSENT, STARTING, RUNNING, STOPPING or EXITED.
    pub(crate) state: String,
    pub(crate) exit_code: Option<i64>,
    // Absent (`null`), never "": the proto's empty string means "none".
    pub(crate) reason: Option<String>,
    pub(crate) message: Option<String>,
    pub(crate) started_at: Option<String>,
    pub(crate) finished_at: Option<String>,
    pub(crate) last_activity: Option<String>,
    pub(crate) url: Option<String>,
    pub(crate) container_id: Option<String>,
    pub(crate) spawn_id: Option<String>,
    pub(crate) node_id: String,
    pub(crate) image: Option<String>,
    pub(crate) health: Option<String>,
}

/// `None` for the proto's empty string.
fn given(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

impl From<pb::ServerStatus> for Server {
    fn from(s: pb::ServerStatus) -> Self {
        let key = s.key.unwrap_or_default();
        let state = pb::server_status::State::try_from(s.state)
            .unwrap_or(pb::server_status::State::Unspecified)
            .as_str_name()
            .to_owned();
        Self {
            user: key.user,
            server: key.server_name,
            state,
            exit_code: s.exit_code,
            reason: given(s.reason),
            message: given(s.message),
            started_at: s.started_at.as_ref().map(rfc3339),
            finished_at: s.finished_at.as_ref().map(rfc3339),
            last_activity: s.last_activity.as_ref().map(rfc3339),
            url: given(s.url),
            container_id: given(s.container_id),
            spawn_id: given(s.spawn_id),
            node_id: s.node_id,
            image: given(s.image),
            health: given(s.health),
        }
    }
}

/// `ps -o json`.
#[derive(Serialize, Debug)]
pub(crate) struct ServerList {
    pub(crate) servers: Vec<Server>,
}

/// `capacity -o json`: the Capacity RPC's answer, field for field.
#[derive(Serialize, Debug)]
pub(crate) struct Capacity {
    pub(crate) node_id: String,
    pub(crate) cpus: u32,
    pub(crate) memory_total_bytes: u64,
    pub(crate) memory_available_bytes: u64,
    pub(crate) allocatable: Allocation,
    pub(crate) committed: Allocation,
    pub(crate) running_servers: u32,
    /// 0 = no limit.
    pub(crate) max_servers: u32,
    pub(crate) draining: bool,
    pub(crate) conditions: Vec<Condition>,
    pub(crate) images: Vec<String>,
    pub(crate) devices: Vec<DeviceClass>,
    pub(crate) labels: std::collections::BTreeMap<String, String>,
    /// Seconds from the hub's last contact until the node stops its servers; 0 = off.
    pub(crate) fence_after_seconds: u32,
    pub(crate) stop_grace_seconds: u32,
    /// Warm pools: servers booted ahead per image (they count in running_servers).
    pub(crate) warm: Vec<WarmPool>,
    /// Each image reference's size, bytes.
    pub(crate) image_sizes: std::collections::BTreeMap<String, u64>,
}

/// One warm pool of `capacity`/`describe`/`warm`.
#[derive(Serialize, Debug)]
pub(crate) struct WarmPool {
    pub(crate) image: String,
    pub(crate) port: u32,
    pub(crate) ready: u32,
    pub(crate) size: u32,
    pub(crate) memory_bytes: u64,
}

impl From<pb::WarmPool> for WarmPool {
    fn from(w: pb::WarmPool) -> Self {
        Self {
            image: w.image,
            port: w.port,
            ready: w.ready,
            size: w.size,
            memory_bytes: w.memory_bytes,
        }
    }
}

/// One device class of `capacity`/`describe`.
#[derive(Serialize, Debug)]
pub(crate) struct DeviceClass {
    pub(crate) class: String,
    pub(crate) total: u32,
    pub(crate) allocatable: u32,
    pub(crate) committed: u32,
    pub(crate) models: Vec<String>,
    pub(crate) free_devices: u32,
    pub(crate) shares: u32,
    pub(crate) discovery_error: String,
}

/// One line of `events` (`-o json`: one document per line).
#[derive(Serialize, Debug)]
pub(crate) struct Event {
    /// SNAPSHOT, STARTED, READY, EXITED, OOM, REMOVED, HEALTH, CHANGED, ...
    pub(crate) kind: String,
    pub(crate) at: Option<String>,
    pub(crate) user: String,
    pub(crate) server: String,
    pub(crate) state: String,
    pub(crate) reason: Option<String>,
    pub(crate) exit_code: Option<i64>,
    pub(crate) container_id: Option<String>,
}

impl From<pb::WatchEvent> for Event {
    fn from(e: pb::WatchEvent) -> Self {
        let kind = pb::watch_event::Kind::try_from(e.kind)
            .unwrap_or(pb::watch_event::Kind::Unspecified)
            .as_str_name()
            .to_owned();
        let at = e.time.as_ref().map(rfc3339);
        match e.status.map(Server::from) {
            Some(s) => Self {
                kind,
                at,
                user: s.user,
                server: s.server,
                state: s.state,
                reason: s.reason,
                exit_code: s.exit_code,
                container_id: s.container_id,
            },
            None => Self {
                kind,
                at,
                user: String::new(),
                server: String::new(),
                state: String::new(),
                reason: None,
                exit_code: None,
                container_id: None,
            },
        }
    }
}

/// One server of `top`.
#[derive(Serialize, Debug)]
pub(crate) struct Top {
    pub(crate) user: String,
    pub(crate) server: String,
    pub(crate) container_id: String,
    /// Percent of one core over the interval (200 = two cores); `null` when the server was
    /// not running at the first sample.
    pub(crate) cpu_percent: Option<f64>,
    pub(crate) memory_bytes: u64,
    pub(crate) memory_limit_bytes: u64,
    pub(crate) network_bytes: u64,
}

impl Top {
    /// The row of `now`, with its CPU rate since `before` (the same container's earlier sample).
    pub(crate) fn from_samples(before: Option<&pb::ServerStats>, now: pb::ServerStats) -> Self {
        let nanos = |t: Option<&prost_types::Timestamp>| {
            t.map(|t| i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos))
        };
        let cpu_percent = before.and_then(|b| {
            let dt = nanos(now.time.as_ref())? - nanos(b.time.as_ref())?;
            let used = i128::from(now.cpu_ns) - i128::from(b.cpu_ns);
            #[allow(clippy::cast_precision_loss)]
            (dt > 0 && used >= 0).then(|| used as f64 * 100.0 / dt as f64)
        });
        let key = now.key.unwrap_or_default();
        Self {
            user: key.user,
            server: key.server_name,
            container_id: now.container_id,
            cpu_percent,
            memory_bytes: now.memory_bytes,
            memory_limit_bytes: now.memory_limit_bytes,
            network_bytes: now.network_bytes,
        }
    }
}

/// One image of `images`.
#[derive(Serialize, Debug)]
pub(crate) struct Image {
    pub(crate) reference: String,
    /// Its size on the node's disk, bytes (null when the node does not say).
    pub(crate) size_bytes: Option<u64>,
    /// Servers running it now.
    pub(crate) servers_running: usize,
    /// Servers kept stopped with it.
    pub(crate) servers_kept: usize,
}

/// Whether a server's image (as berthd records it, normalised) is the node's `reference` (as
/// Docker lists it, e.g. `busybox:latest` for `docker.io/library/busybox:latest`).
pub(crate) fn same_image(server_image: &str, reference: &str) -> bool {
    server_image == reference || berthd::spec::normalize_image(reference) == server_image
}

/// Whether a server in `state` runs (or is starting or stopping).
pub(crate) fn is_live(state: i32) -> bool {
    use pb::server_status::State;
    matches!(
        State::try_from(state),
        Ok(State::Running | State::Starting | State::Stopping)
    )
}

#[derive(Serialize, Debug)]
pub(crate) struct Allocation {
    pub(crate) cpu: f64,
    pub(crate) memory_bytes: u64,
}

#[derive(Serialize, Debug)]
pub(crate) struct Condition {
    #[serde(rename = "type")]
    pub(crate) kind: String,
    pub(crate) status: String,
    pub(crate) reason: String,
    pub(crate) message: String,
}

impl From<Option<pb::Allocation>> for Allocation {
    fn from(a: Option<pb::Allocation>) -> Self {
        let a = a.unwrap_or_default();
        Self {
            cpu: a.cpu,
            memory_bytes: a.memory_bytes,
        }
    }
}

impl From<pb::NodeCapacity> for Capacity {
    fn from(c: pb::NodeCapacity) -> Self {
        Self {
            node_id: c.node_id,
            cpus: c.cpus,
            memory_total_bytes: c.memory_total_bytes,
            memory_available_bytes: c.memory_available_bytes,
            allocatable: c.allocatable.into(),
            committed: c.committed.into(),
            running_servers: c.running_servers,
            max_servers: c.max_servers,
            draining: c.draining,
            conditions: c
                .conditions
                .into_iter()
                .map(|c| Condition {
                    kind: c.r#type,
                    status: c.status,
                    reason: c.reason,
                    message: c.message,
                })
                .collect(),
            images: c.images,
            devices: c
                .devices
                .into_iter()
                .map(|d| DeviceClass {
                    class: d.class,
                    total: d.total,
                    allocatable: d.allocatable,
                    committed: d.committed,
                    models: d.models,
                    free_devices: d.free_devices,
                    shares: d.shares,
                    discovery_error: d.discovery_error,
                })
                .collect(),
            labels: c.labels.into_iter().collect(),
            fence_after_seconds: c.fence_after_seconds,
            stop_grace_seconds: c.stop_grace_seconds,
            warm: c.warm.into_iter().map(WarmPool::from).collect(),
            image_sizes: c.image_sizes.into_iter().collect(),
        }
    }
}

/// `volumes -o json`.
#[derive(Serialize, Debug)]
pub(crate) struct VolumeList {
    pub(crate) node_id: String,
    pub(crate) volumes: Vec<Volume>,
}

#[derive(Serialize, Debug)]
pub(crate) struct Volume {
    pub(crate) name: String,
    pub(crate) user: String,
    /// "" for a volume of the user (not of one server).
    pub(crate) server: String,
    pub(crate) driver: String,
    /// null when not measured (no `--sizes`) or not measurable.
    pub(crate) size_bytes: Option<u64>,
    pub(crate) last_used: Option<String>,
}

impl From<pb::UserVolume> for Volume {
    fn from(v: pb::UserVolume) -> Self {
        let owner = v.owner.unwrap_or_default();
        Self {
            name: v.name,
            user: owner.user,
            server: owner.server_name,
            driver: v.driver,
            size_bytes: u64::try_from(v.size_bytes).ok(),
            last_used: v.last_used.as_ref().map(rfc3339),
        }
    }
}

/// `version -o json`.
#[derive(Serialize, Debug)]
pub(crate) struct Version {
    pub(crate) client: ClientVersion,
    pub(crate) server: ServerVersion,
}

#[derive(Serialize, Debug)]
pub(crate) struct ClientVersion {
    pub(crate) version: String,
}

#[derive(Serialize, Debug)]
pub(crate) struct ServerVersion {
    pub(crate) api_version: String,
    pub(crate) daemon_version: String,
    pub(crate) node_id: String,
    pub(crate) docker_api_version: String,
    pub(crate) docker_version: String,
    pub(crate) features: Vec<String>,
}

fn to_system_time(t: &prost_types::Timestamp) -> Option<SystemTime> {
    let secs = u64::try_from(t.seconds).ok()?;
    let nanos = u32::try_from(t.nanos).ok()?;
    UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
}

/// RFC 3339 in UTC, whole seconds.
pub(crate) fn rfc3339(t: &prost_types::Timestamp) -> String {
    to_system_time(t)
        .map(|t| humantime::format_rfc3339_seconds(t).to_string())
        .unwrap_or_default()
}

/// How long ago `t` was, for people: `45s`, `12m`, `3h`, `2d`; "-" when unknown.
pub(crate) fn age(t: Option<&prost_types::Timestamp>, now: SystemTime) -> String {
    let Some(then) = t.and_then(to_system_time) else {
        return "-".to_owned();
    };
    let secs = now.duration_since(then).unwrap_or_default().as_secs();
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 2 * 3600 => format!("{}m", s / 60),
        s if s < 2 * 86_400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// Bytes for people: "4.0 GiB".
pub(crate) fn size(bytes: u64) -> String {
    format_size(bytes)
}

/// Left-aligned columns separated by two spaces, header first.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.trim_end().to_owned() + "\n"
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// The state column: `RUNNING`, `EXITED (137, Killed)`.
pub(crate) fn state_cell(s: &Server) -> String {
    match (s.exit_code, &s.reason) {
        (Some(code), Some(reason)) => format!("{} ({code}, {reason})", s.state),
        (Some(code), None) => format!("{} ({code})", s.state),
        (None, _) => s.state.clone(),
    }
}

/// "-" for the default server, for tables.
pub(crate) fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".to_owned()
    } else {
        s.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_at_a_glance() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let at = |ago: i64| prost_types::Timestamp {
            seconds: 1_000_000 - ago,
            nanos: 0,
        };
        for (ago, want) in [
            (5, "5s"),
            (119, "119s"),
            (600, "10m"),
            (3 * 3600, "3h"),
            (3 * 86_400, "3d"),
        ] {
            assert_eq!(age(Some(&at(ago)), now), want);
        }
        assert_eq!(age(None, now), "-");
    }

    #[test]
    fn tables_align_their_columns() {
        let t = table(
            &["USER", "STATE"],
            &[
                vec!["ann".into(), "RUNNING".into()],
                vec!["bobby".into(), "EXITED".into()],
            ],
        );
        assert_eq!(t, "USER   STATE\nann    RUNNING\nbobby  EXITED\n");
    }

    #[test]
    fn json_field_names_are_stable() {
        let s = Server::from(pb::ServerStatus {
            key: Some(pb::ServerKey {
                user: "ann".into(),
                server_name: String::new(),
            }),
            state: pb::server_status::State::Exited as i32,
            exit_code: Some(137),
            started_at: Some(prost_types::Timestamp {
                seconds: 0,
                nanos: 0,
            }),
            ..Default::default()
        });
        let v = serde_json::to_value(&s).expect("json");
        assert_eq!(v["user"], "ann");
        assert_eq!(v["state"], "EXITED");
        assert_eq!(v["exit_code"], 137);
        assert_eq!(v["started_at"], "1970-01-01T00:00:00Z");
        assert!(v["finished_at"].is_null());
        assert_eq!(state_cell(&s), "EXITED (137)");
    }
}
