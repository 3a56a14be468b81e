//! The lifecycle of single-user servers on this node: start, stop, poll, list, logs, progress.
//! Per-key serialisation lives in `keys`, readiness in `ready`, spawn progress in `progress`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;

use crate::docker::{
    ContainerEngine, ContainerInfo, EngineError, EngineVersion, LABEL_MANAGED, LABEL_SERVER,
    LABEL_USER, LogStream,
};
use crate::key::ServerKey;
use crate::state::{FileStore, StoreError};

pub mod admission;
pub mod keys;
pub mod progress;
pub mod ready;
mod reconcile;
mod start;
pub mod state_ops;
mod stop;
pub mod view;

pub use stop::StopSpec;

use keys::KeyTable;
use progress::ProgressRegistry;
use view::View;

pub use reconcile::ReconcileReport;

/// How the runtime behaves; filled from the daemon config.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// This node's id, written into every container's labels.
    pub node_id: String,
    /// Host address container ports are published on.
    pub publish_host_ip: IpAddr,
    /// Host name or address put into server URLs.
    pub advertise_host: String,
    /// Readiness deadline when the request gives none.
    pub default_ready_timeout: Duration,
    /// Longest readiness deadline a request may ask for.
    pub max_ready_timeout: Duration,
    /// SIGTERM-to-SIGKILL grace when the request gives none.
    pub stop_grace: Duration,
    /// Log lines quoted when a server dies during start.
    pub failure_log_lines: u32,
    /// Reservation and server limit.
    pub limits: crate::capacity::Limits,
    /// Docker create+start operations at once.
    pub max_concurrent_spawns: u32,
    /// Spawns that may wait for a slot.
    pub spawn_queue_limit: u32,
    /// How long a spawn may wait for a slot.
    pub spawn_queue_timeout: Duration,
    /// State directory (disk pressure, the drain marker).
    pub state_dir: std::path::PathBuf,
    /// What a hub may ask of this node.
    pub policy: crate::policy::Policy,
}

/// Why a lifecycle operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The image is not on this node.
    #[error(
        "image {image:?} is not present on node {node:?}; load it on the node first (this berthd does not pull images)"
    )]
    ImageMissing {
        /// Image reference.
        image: String,
        /// Node id.
        node: String,
    },
    /// The key runs under another spawn.
    #[error("server {key} already runs on this node under spawn id {spawn_id:?}; stop it first")]
    AlreadyRunning {
        /// The server.
        key: ServerKey,
        /// The spawn holding it.
        spawn_id: String,
    },
    /// A container berthd does not manage holds the name.
    #[error(
        "a container named {name:?} exists that berthd does not manage (or that belongs to another key); remove it first"
    )]
    NameTaken {
        /// Container name.
        name: String,
    },
    /// The container exited before it answered HTTP.
    #[error("server {key} exited during start with exit code {exit_code} ({reason}){output}")]
    ExitedDuringStart {
        /// The server.
        key: ServerKey,
        /// Exit code.
        exit_code: i64,
        /// CamelCase reason.
        reason: &'static str,
        /// "; last output: ..." or "".
        output: String,
    },
    /// Docker refused to start the container (bad command, missing executable, ...).
    #[error("Docker could not start server {key}: {message}")]
    StartRefused {
        /// The server.
        key: ServerKey,
        /// Docker's reason.
        message: String,
    },
    /// The server did not answer HTTP in time; it has been stopped.
    #[error("server {key} did not answer HTTP at {url}{path} within {after:?}; it was stopped")]
    ReadyTimeout {
        /// The server.
        key: ServerKey,
        /// Its URL.
        url: String,
        /// Readiness path.
        path: String,
        /// The deadline.
        after: Duration,
    },
    /// A Stop arrived while the server was starting.
    #[error("the start of server {key} was cancelled by a stop")]
    Cancelled {
        /// The server.
        key: ServerKey,
    },
    /// Nothing of that key exists here.
    #[error("no server {key} on this node")]
    NotFound {
        /// The server.
        key: ServerKey,
    },
    /// The container engine failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The state store failed; nothing was created.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A PutState with a stale version.
    #[error("state of server {key} is at version {current}, not {expected}; read it again")]
    StateConflict {
        /// The server.
        key: ServerKey,
        /// The version the caller expected.
        expected: u64,
        /// The current version.
        current: u64,
    },
    /// The node policy forbids the spec.
    #[error(transparent)]
    Policy(#[from] crate::policy::Violation),
    /// A host path or device cannot be used as asked (link, escape, missing, unverified).
    #[error(transparent)]
    HostPath(#[from] crate::hostpath::HostPathError),
    /// The node refuses new servers.
    #[error("node {node:?} is draining ({reason}); start the server on another node")]
    Draining {
        /// Node id.
        node: String,
        /// The operator's reason.
        reason: String,
    },
    /// The server does not fit.
    #[error("{0}")]
    Capacity(#[from] crate::capacity::Refusal),
    /// Too many spawns are waiting.
    #[error(
        "the spawn queue of this node is full ({waiting} waiting, limit {limit}); try another node or later"
    )]
    QueueFull {
        /// Waiting now.
        waiting: usize,
        /// The bound.
        limit: u32,
    },
    /// The spawn waited too long for a slot.
    #[error("the spawn waited {after:?} for a free slot on this node")]
    QueueTimeout {
        /// How long.
        after: Duration,
    },
    /// The hub's state blob is too large.
    #[error("state blob of {size} bytes is larger than {max}")]
    BlobTooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// A broken invariant: a bug.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// A CamelCase reason for progress events and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::ImageMissing { .. } => "ImageMissing",
            Error::AlreadyRunning { .. } | Error::NameTaken { .. } => "Conflict",
            Error::ExitedDuringStart { reason, .. } => reason,
            Error::StartRefused { .. } => "StartRefused",
            Error::ReadyTimeout { .. } => "ReadyTimeout",
            Error::Cancelled { .. } => "Cancelled",
            Error::NotFound { .. } => "NotFound",
            Error::Engine(_) => "DockerError",
            Error::Store(_) => "StateStoreError",
            Error::Draining { .. } => "Draining",
            Error::Policy(_) => "PolicyViolation",
            Error::HostPath(e) if e.is_policy() => "PolicyViolation",
            Error::HostPath(_) => "HostPath",
            Error::Capacity(_) | Error::QueueFull { .. } | Error::QueueTimeout { .. } => "Capacity",
            Error::StateConflict { .. } | Error::BlobTooLarge { .. } => "StateError",
            Error::Internal(_) => "Internal",
        }
    }
}

/// Lifecycle state of a server, as the API reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// No container.
    Absent,
    /// Starting.
    Starting,
    /// Running.
    Running,
    /// Stopping.
    Stopping,
    /// Exited.
    Exited,
}

/// The status of one server.
#[derive(Debug, Clone)]
pub struct Status {
    /// The server.
    pub key: ServerKey,
    /// Its state.
    pub state: State,
    /// Exit code, once exited.
    pub exit_code: Option<i64>,
    /// CamelCase reason of the exit.
    pub reason: String,
    /// Detail.
    pub message: String,
    /// RFC 3339 start time.
    pub started_at: Option<String>,
    /// RFC 3339 finish time.
    pub finished_at: Option<String>,
    /// Server URL while it runs.
    pub url: Option<String>,
    /// Container id.
    pub container_id: String,
    /// Spawn id.
    pub spawn_id: String,
    /// Image.
    pub image: String,
    /// Docker health status, "" without a HEALTHCHECK.
    pub health: String,
    /// Newest activity the reporter saw.
    pub last_activity: Option<std::time::SystemTime>,
}

/// A server that answers HTTP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Started {
    /// Where to reach it.
    pub url: String,
    /// Its container.
    pub container_id: String,
    /// The spawn that started it.
    pub spawn_id: String,
}

/// One line of output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// Stdout or stderr.
    pub stream: LogStream,
    /// The line without its newline.
    pub line: String,
}

/// The runtime: cheap to clone, shared by every RPC.
pub struct Runtime<E> {
    inner: Arc<Inner<E>>,
}

impl<E> Clone for Runtime<E> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<E> {
    engine: E,
    cfg: RuntimeConfig,
    keys: Arc<KeyTable>,
    progress: ProgressRegistry,
    store: FileStore,
    view: View,
    admission: admission::Admission,
}

/// The CamelCase reason of an exit.
pub fn exit_reason(exit_code: i64, oom_killed: bool) -> &'static str {
    match (oom_killed, exit_code) {
        (true, _) => "OOMKilled",
        (false, 0) => "Completed",
        (false, 137) => "Killed",
        (false, 143) => "Terminated",
        _ => "Error",
    }
}

impl<E: ContainerEngine> Runtime<E> {
    /// A runtime over `engine`, keeping its records in `store`. Call
    /// [`Runtime::reconcile`] before serving so the view holds what Docker runs.
    pub fn new(engine: E, cfg: RuntimeConfig, store: FileStore) -> Self {
        let cfg_for_admission = cfg.clone();
        Self {
            inner: Arc::new(Inner {
                engine,
                cfg,
                keys: Arc::default(),
                progress: ProgressRegistry::default(),
                store,
                view: View::default(),
                admission: admission::Admission::new(&cfg_for_admission),
            }),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &RuntimeConfig {
        &self.inner.cfg
    }

    /// The spawn progress registry.
    pub fn progress(&self) -> &ProgressRegistry {
        &self.inner.progress
    }

    /// The engine's version.
    pub async fn engine_version(&self) -> Result<EngineVersion, Error> {
        Ok(self.inner.engine.version().await?)
    }

    /// Whether the engine answers.
    pub async fn engine_ping(&self) -> Result<(), Error> {
        Ok(self.inner.engine.ping().await?)
    }

    /// The URL of a server published on `host_port`.
    pub fn url_for(&self, host_port: u16) -> String {
        let host = &self.inner.cfg.advertise_host;
        if host.contains(':') && !host.starts_with('[') {
            format!("http://[{host}]:{host_port}")
        } else {
            format!("http://{host}:{host_port}")
        }
    }

    /// Where the node itself reaches a server published on `host_port`.
    fn probe_addr(&self, host_port: u16) -> SocketAddr {
        let ip = match self.inner.cfg.publish_host_ip {
            IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        SocketAddr::new(ip, host_port)
    }

    /// The container of `key` if it is ours; a foreign container under our name is an error.
    async fn container_of(&self, key: &ServerKey) -> Result<Option<ContainerInfo>, Error> {
        let name = key.container_name();
        let Some(info) = self.inner.engine.inspect(&name).await? else {
            return Ok(None);
        };
        let ours = info.label(LABEL_MANAGED) == Some("true")
            && info.label(LABEL_USER) == Some(key.user())
            && info.label(LABEL_SERVER) == Some(key.server());
        if ours {
            Ok(Some(info))
        } else {
            Err(Error::NameTaken { name })
        }
    }

    /// The output of `key`'s container, line by line.
    pub async fn logs(
        &self,
        key: &ServerKey,
        tail: Option<u32>,
        follow: bool,
    ) -> Result<BoxStream<'static, Result<LogLine, Error>>, Error> {
        let c = self
            .container_of(key)
            .await?
            .ok_or_else(|| Error::NotFound { key: key.clone() })?;
        let chunks = self.inner.engine.logs(&c.id, tail, follow);
        Ok(chunks
            .flat_map(|chunk| {
                let lines: Vec<Result<LogLine, Error>> = match chunk {
                    Ok(c) => split_lines(c.stream, &c.data).into_iter().map(Ok).collect(),
                    Err(e) => vec![Err(Error::Engine(e))],
                };
                futures::stream::iter(lines)
            })
            .boxed())
    }

    /// The last `n` lines of output of container `id`, for failure messages; best effort.
    async fn last_lines(&self, id: &str, n: u32) -> Vec<String> {
        let collect = self
            .inner
            .engine
            .logs(id, Some(n), false)
            .filter_map(|c| async move { c.ok() })
            .flat_map(|c| futures::stream::iter(split_lines(c.stream, &c.data)))
            .map(|l| l.line)
            .collect::<Vec<_>>();
        tokio::time::timeout(Duration::from_secs(2), collect)
            .await
            .unwrap_or_default()
    }
}

/// Splits a chunk of output into lines, dropping the final newline.
fn split_lines(stream: LogStream, data: &[u8]) -> Vec<LogLine> {
    let text = String::from_utf8_lossy(data);
    let text = text.strip_suffix('\n').unwrap_or(&text);
    text.split('\n')
        .map(|l| LogLine {
            stream,
            line: l.strip_suffix('\r').unwrap_or(l).to_owned(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_reasons() {
        assert_eq!(exit_reason(0, false), "Completed");
        assert_eq!(exit_reason(137, true), "OOMKilled");
        assert_eq!(exit_reason(137, false), "Killed");
        assert_eq!(exit_reason(3, false), "Error");
    }

    #[test]
    fn chunks_split_into_lines() {
        let lines = split_lines(LogStream::Stderr, b"a\r\nb\n");
        let text: Vec<_> = lines.iter().map(|l| l.line.as_str()).collect();
        assert_eq!(text, ["a", "b"]);
        assert_eq!(split_lines(LogStream::Stdout, b"partial").len(), 1);
    }
}
