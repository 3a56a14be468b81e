//! The edge: proto requests become validated domain types, domain results become proto.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use berth_proto::v1 as pb;

use crate::capacity::Alloc;
use crate::capacity::NodeCapacity;
use crate::docker::LogStream;
use crate::key::ServerKey;
use crate::registry::{PullPolicy, RegistryAuth};
use crate::runtime::Error as RuntimeError;
use crate::runtime::StopSpec;
use crate::runtime::progress::{Event, Phase};
use crate::runtime::view::{WatchEvent, WatchKind};
use crate::runtime::volumes::transfer::{Checksum, ExportPart, ImportPart, VolumeHeader};
use crate::runtime::{LogLine, State, Status};
use crate::spec::options::{ContainerOptions, RawOptions};
use crate::spec::{self, Env, HostAccess, Resources, SpecError, StartSpec, VolumeSpec};

/// Longest readiness deadline any request may name, whatever the node allows.
pub const MAX_READY_TIMEOUT_SECONDS: u32 = 86_400;

/// The key of a request; a missing key is an empty user.
pub fn key(key: Option<&pb::ServerKey>) -> Result<ServerKey, SpecError> {
    let (user, server) = key.map_or(("", ""), |k| (k.user.as_str(), k.server_name.as_str()));
    ServerKey::new(user, server)
        .map_err(|(field, e)| SpecError::new(format!("key.{field}"), e.to_string()))
}

fn container_options(o: pb::ContainerOptions) -> Result<ContainerOptions, SpecError> {
    ContainerOptions::try_from(RawOptions {
        user: o.user,
        group_add: o.group_add,
        working_dir: o.working_dir,
        shm_size_bytes: o.shm_size_bytes,
        pids_limit: o.pids_limit,
        ulimits: o
            .ulimits
            .into_iter()
            .map(|u| (u.name, u.soft, u.hard))
            .collect(),
        extra_hosts: o.extra_hosts,
        dns: o.dns,
        dns_search: o.dns_search,
        read_only_rootfs: o.read_only_rootfs,
        tmpfs: o.tmpfs,
        network_name: o.network_name,
        post_start_cmd: o.post_start_cmd,
    })
}

impl TryFrom<pb::StartRequest> for StartSpec {
    type Error = SpecError;

    // Long: one check per request field, in the order of the message, so a reader can see
    // that every field is validated.
    fn try_from(r: pb::StartRequest) -> Result<Self, SpecError> {
        let key = key(r.key.as_ref())?;
        spec::check_spawn_id(&r.spawn_id)?;
        spec::check_image(&r.image)?;
        spec::check_argv("cmd", &r.cmd)?;
        spec::check_argv("args", &r.args)?;
        let env = Env::new(r.env)?;
        let port = spec::port(r.port)?;
        let res = r.resources.unwrap_or_default();
        let resources = Resources::new(
            res.mem_limit_bytes,
            res.mem_guarantee_bytes,
            res.cpu_limit,
            res.cpu_guarantee,
        )?;
        let gpus = spec::device_ask(res.gpus, &res.gpu_class, &res.gpu_model)?;
        if r.volumes.len() > spec::MAX_ENTRIES {
            return Err(SpecError::new("volumes", "too many volumes"));
        }
        let volumes = r
            .volumes
            .iter()
            .enumerate()
            .map(|(i, v)| {
                VolumeSpec::new(i, &key, &v.source, &v.target, v.read_only)?.with_driver(
                    i,
                    &v.driver,
                    v.driver_opts.clone().into_iter().collect(),
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut targets: Vec<&str> = volumes.iter().map(|v| v.target.as_str()).collect();
        targets.sort_unstable();
        if targets.windows(2).any(|w| w[0] == w[1]) {
            return Err(SpecError::new("volumes", "two volumes share a target path"));
        }
        let labels: BTreeMap<String, String> = r.labels.into_iter().collect();
        spec::check_labels(&labels)?;
        if r.user_options.len() > spec::MAX_VALUE_BYTES {
            return Err(SpecError::new("user_options", "longer than 128 KiB"));
        }
        let ready_path = spec::ready_path(&r.ready_path)?;
        if r.ready_timeout_seconds > MAX_READY_TIMEOUT_SECONDS {
            return Err(SpecError::new(
                "ready_timeout_seconds",
                format!(
                    "{} is more than {MAX_READY_TIMEOUT_SECONDS}",
                    r.ready_timeout_seconds
                ),
            ));
        }
        let ready_timeout = (r.ready_timeout_seconds > 0)
            .then(|| Duration::from_secs(u64::from(r.ready_timeout_seconds)));
        let h = r.host_access.unwrap_or_default();
        let host = HostAccess::new(
            h.privileged,
            h.host_network,
            h.host_pid,
            h.host_ipc,
            &h.cap_add,
            &h.devices,
        )?;
        let options = container_options(r.options.unwrap_or_default())?;
        let ssl = r.internal_ssl.unwrap_or_default();
        let internal_ssl = spec::Certs::new(ssl.key, ssl.cert, ssl.ca)?
            .map(|c| c.with_server_ca(ssl.server_ca))
            .transpose()?;
        let pull_policy = match pb::PullPolicy::try_from(r.pull_policy) {
            Ok(pb::PullPolicy::Unspecified) => None,
            Ok(pb::PullPolicy::Ifnotpresent) => Some(PullPolicy::IfNotPresent),
            Ok(pb::PullPolicy::Always) => Some(PullPolicy::Always),
            Ok(pb::PullPolicy::Never) => Some(PullPolicy::Never),
            Err(_) => {
                return Err(SpecError::new(
                    "pull_policy",
                    format!("{} is not a pull policy", r.pull_policy),
                ));
            }
        };
        let pull_secret = r.pull_secret.map(pull_secret).transpose()?;
        let fence = match (r.never_fence, r.fence_after_seconds) {
            (true, 0) => spec::Fence::Never,
            (true, _) => {
                return Err(SpecError::new(
                    "fence_after_seconds",
                    "is set with never_fence: choose one",
                ));
            }
            (false, 0) => spec::Fence::NodeDefault,
            (false, s) => spec::Fence::After(Duration::from_secs(u64::from(s))),
        };
        Ok(StartSpec {
            pull_policy,
            pull_secret,
            fence,
            host,
            key,
            spawn_id: r.spawn_id,
            image: spec::normalize_image(&r.image),
            cmd: r.cmd,
            args: r.args,
            env,
            port,
            resources,
            volumes,
            labels,
            user_options: r.user_options,
            ready_path,
            ready_timeout,
            gpus,
            // A read-only root has no writable layer to keep, nor room for the env file.
            resumable: r.resumable && !options.read_only_rootfs,
            options,
            internal_ssl,
        })
    }
}

/// A pull secret of a request: a user name and a password, bounded; the error never quotes
/// the password.
fn pull_secret(c: pb::RegistryCredentials) -> Result<RegistryAuth, SpecError> {
    if c.username.is_empty() || c.password.is_empty() {
        return Err(SpecError::new(
            "pull_secret",
            "needs both a username and a password",
        ));
    }
    if c.username.len() > 1024 || c.password.len() > spec::MAX_VALUE_BYTES {
        return Err(SpecError::new("pull_secret", "too long"));
    }
    if c.username.contains(':') || c.username.chars().any(char::is_control) {
        return Err(SpecError::new(
            "pull_secret.username",
            "must not hold ':' or control characters",
        ));
    }
    Ok(RegistryAuth {
        username: c.username,
        password: c.password,
    })
}

/// The stop options of a request.
pub fn stop_spec(r: &pb::StopRequest) -> StopSpec {
    StopSpec {
        now: r.now,
        grace: (r.grace_seconds > 0).then(|| Duration::from_secs(u64::from(r.grace_seconds))),
        remove: r.remove,
    }
}

fn timestamp(rfc3339: Option<&String>) -> Option<prost_types::Timestamp> {
    rfc3339.and_then(|t| t.parse().ok())
}

impl From<Status> for pb::ServerStatus {
    fn from(s: Status) -> Self {
        use pb::server_status::State as P;
        let state = match s.state {
            State::Absent => P::Absent,
            State::Starting => P::Starting,
            State::Running => P::Running,
            State::Stopping => P::Stopping,
            State::Exited => P::Exited,
        };
        pb::ServerStatus {
            key: Some(pb::ServerKey {
                user: s.key.user().to_owned(),
                server_name: s.key.server().to_owned(),
            }),
            state: state.into(),
            exit_code: s.exit_code,
            reason: s.reason,
            message: s.message,
            started_at: timestamp(s.started_at.as_ref()),
            finished_at: timestamp(s.finished_at.as_ref()),
            url: s.url.unwrap_or_default(),
            container_id: s.container_id,
            spawn_id: s.spawn_id,
            node_id: String::new(),
            image: s.image,
            health: s.health,
            last_activity: s.last_activity.map(prost_types::Timestamp::from),
        }
    }
}

impl From<Event> for pb::ProgressEvent {
    fn from(e: Event) -> Self {
        use pb::progress_event::Phase as P;
        let phase = match e.phase {
            Phase::Queued => P::Queued,
            Phase::Pulling => P::Pulling,
            Phase::Creating => P::Creating,
            Phase::Starting => P::Starting,
            Phase::WaitingForHttp => P::WaitingForHttp,
            Phase::Ready => P::Ready,
            Phase::Failed => P::Failed,
        };
        let pull = e.pull.unwrap_or_default();
        pb::ProgressEvent {
            bytes_done: pull.bytes_done,
            bytes_total: pull.bytes_total,
            layers_done: pull.layers_done,
            layers_total: pull.layers_total,
            image: pull.image,
            progress: u32::from(e.percent),
            message: e.message,
            phase: phase.into(),
            ready: e.phase == Phase::Ready,
            failed: e.phase == Phase::Failed,
            url: e.url.unwrap_or_default(),
            reason: e.reason.unwrap_or_default(),
            time: Some(prost_types::Timestamp::from(
                e.at.max(SystemTime::UNIX_EPOCH),
            )),
        }
    }
}

impl From<LogLine> for pb::LogLine {
    fn from(l: LogLine) -> Self {
        let stream = match l.stream {
            LogStream::Stdout => pb::log_line::Stream::Stdout,
            LogStream::Stderr => pb::log_line::Stream::Stderr,
        };
        pb::LogLine {
            stream: stream.into(),
            line: l.line,
        }
    }
}

/// A Watch event for the wire, stamped with this node's id.
pub fn watch_event(ev: WatchEvent, node_id: &str) -> pb::WatchEvent {
    use pb::watch_event::Kind as K;
    let kind = match ev.kind {
        WatchKind::Snapshot => K::Snapshot,
        WatchKind::SnapshotEnd => K::SnapshotEnd,
        WatchKind::Started => K::Started,
        WatchKind::Ready => K::Ready,
        WatchKind::Exited => K::Exited,
        WatchKind::Oom => K::Oom,
        WatchKind::Removed => K::Removed,
        WatchKind::Health => K::Health,
        WatchKind::Changed => K::Changed,
        WatchKind::Capacity => K::Capacity,
    };
    pb::WatchEvent {
        kind: kind.into(),
        capacity: ev
            .capacity
            .map(|c| node_capacity((*c).clone(), node_id.to_owned())),
        status: ev.status.map(|s| {
            let mut p = pb::ServerStatus::from(s);
            p.node_id = node_id.to_owned();
            p
        }),
        time: Some(prost_types::Timestamp::from(
            ev.at.max(SystemTime::UNIX_EPOCH),
        )),
        sequence: ev.seq,
    }
}

/// What of a capacity report counts as a change worth a Watch event: all of it but the
/// readings that move all the time (available memory, condition messages).
pub fn capacity_change_key(c: &pb::NodeCapacity) -> pb::NodeCapacity {
    let mut k = c.clone();
    k.memory_available_bytes = 0;
    for cond in &mut k.conditions {
        cond.message.clear();
    }
    k
}

/// A warm pool for the wire.
pub fn warm_pool(w: &crate::capacity::WarmPool) -> pb::WarmPool {
    pb::WarmPool {
        image: w.image.clone(),
        port: u32::from(w.port),
        ready: w.ready,
        size: w.size,
        memory_bytes: w.memory_bytes,
    }
}

/// The capacity report for the wire.
pub fn node_capacity(c: NodeCapacity, node_id: String) -> pb::NodeCapacity {
    let alloc = |a: Alloc| pb::Allocation {
        cpu: a.cpu,
        memory_bytes: a.memory,
    };
    pb::NodeCapacity {
        warm: c.warm.iter().map(warm_pool).collect(),
        image_sizes: c.image_sizes.into_iter().collect(),
        fence_after_seconds: c.fence_after_seconds,
        stop_grace_seconds: c.stop_grace_seconds,
        node_id,
        cpus: c.host.cpus,
        memory_total_bytes: c.host.memory_total,
        memory_available_bytes: c.host.memory_available,
        allocatable: Some(alloc(c.allocatable)),
        committed: Some(alloc(c.committed)),
        running_servers: c.running,
        max_servers: c.max_servers,
        conditions: c
            .conditions
            .into_iter()
            .map(|k| pb::Condition {
                r#type: k.kind.to_owned(),
                status: k.status.to_owned(),
                reason: k.reason,
                message: k.message,
            })
            .collect(),
        draining: c.draining,
        images: c.images,
        devices: c
            .devices
            .into_iter()
            .map(|d| pb::DeviceClassCapacity {
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
    }
}

impl From<crate::runtime::volumes::UserVolume> for pb::UserVolume {
    fn from(v: crate::runtime::volumes::UserVolume) -> Self {
        Self {
            name: v.name,
            owner: Some(pb::ServerKey {
                user: v.owner.user().to_owned(),
                server_name: v.owner.server().to_owned(),
            }),
            driver: v.driver,
            size_bytes: v.size.map_or(-1, |b| i64::try_from(b).unwrap_or(i64::MAX)),
            last_used: v.last_used.map(prost_types::Timestamp::from),
        }
    }
}

/// A Docker volume name from `field`: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`, as Docker takes it (so
/// it is also a safe file name in the state directory).
pub fn volume_name(field: &str, name: &str) -> Result<String, SpecError> {
    let ok = name.len() <= spec::MAX_VOLUME_NAME_BYTES
        && name
            .as_bytes()
            .first()
            .is_some_and(u8::is_ascii_alphanumeric)
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(name.to_owned())
    } else {
        Err(SpecError::new(
            field,
            "not a volume name ([a-zA-Z0-9][a-zA-Z0-9_.-]*, at most 255 bytes)",
        ))
    }
}

impl TryFrom<pb::VolumeHeader> for VolumeHeader {
    type Error = SpecError;

    fn try_from(h: pb::VolumeHeader) -> Result<Self, SpecError> {
        let name = volume_name("header.name", &h.name)?;
        let owner = key(h.owner.as_ref())
            .map_err(|e| SpecError::new(format!("header.owner.{}", e.field), e.to_string()))?;
        let per_server = match h.scope.as_str() {
            "user" if owner.server().is_empty() => false,
            "server" => true,
            _ => {
                return Err(SpecError::new(
                    "header.scope",
                    "\"user\" (with server_name \"\") or \"server\"",
                ));
            }
        };
        if !(h.driver.is_empty() || h.driver == "local") || !h.driver_opts.is_empty() {
            return Err(SpecError::new(
                "header.driver",
                "only plain local volumes (no driver options) are moved",
            ));
        }
        if h.source_node.is_empty() {
            return Err(SpecError::new("header.source_node", "must be set"));
        }
        Ok(Self {
            name,
            owner,
            per_server,
            source_node: h.source_node,
        })
    }
}

impl From<VolumeHeader> for pb::VolumeHeader {
    fn from(h: VolumeHeader) -> Self {
        Self {
            name: h.name,
            owner: Some(pb::ServerKey {
                user: h.owner.user().to_owned(),
                server_name: h.owner.server().to_owned(),
            }),
            scope: if h.per_server { "server" } else { "user" }.to_owned(),
            driver: "local".to_owned(),
            driver_opts: Default::default(),
            source_node: h.source_node,
        }
    }
}

impl From<ExportPart> for pb::VolumeChunk {
    fn from(p: ExportPart) -> Self {
        use pb::volume_chunk::Part;
        let part = match p {
            ExportPart::Header(h) => Part::Header(h.into()),
            ExportPart::Data(d) => Part::Data(d),
            ExportPart::Trailer(t) => Part::Trailer(pb::VolumeTrailer {
                sha256: t.sha256,
                bytes: t.bytes,
            }),
        };
        Self { part: Some(part) }
    }
}

/// A message of an import after its header; anything else ends the import.
pub fn import_part(name: &str, chunk: pb::VolumeChunk) -> Result<ImportPart, RuntimeError> {
    use pb::volume_chunk::Part;
    match chunk.part {
        Some(Part::Data(d)) => Ok(ImportPart::Data(d)),
        Some(Part::Trailer(t)) => Ok(ImportPart::Trailer(Checksum {
            sha256: t.sha256,
            bytes: t.bytes,
        })),
        Some(Part::Header(_)) | None => Err(RuntimeError::ImportIncomplete {
            name: name.to_owned(),
            why: "a message after the header was neither data nor the trailer".to_owned(),
        }),
    }
}

/// One server's counters for the wire.
pub fn server_stats(u: crate::runtime::resources::usage::ServerUse) -> pb::ServerStats {
    pb::ServerStats {
        key: Some(pb::ServerKey {
            user: u.key.user().to_owned(),
            server_name: u.key.server().to_owned(),
        }),
        container_id: u.container_id,
        cpu_ns: u.usage.cpu_ns,
        memory_bytes: u.usage.memory_bytes,
        memory_limit_bytes: u.usage.memory_limit_bytes,
        network_bytes: u.usage.net_bytes,
        time: Some(prost_types::Timestamp::from(u.at)),
    }
}
