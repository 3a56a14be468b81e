//! Why a lifecycle operation failed, and the one place a task's panic becomes an error.

use std::future::Future;
use std::time::Duration;

use crate::docker::EngineError;
use crate::key::ServerKey;
use crate::state::StoreError;

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

/// Runs `fut` in a task of its own, so that a caller who goes away (a hub timeout, a dropped
/// connection) never leaves the operation half done; a panic in it is an internal error.
pub(super) async fn detached<T: Send + 'static>(
    what: &'static str,
    fut: impl Future<Output = Result<T, Error>> + Send + 'static,
) -> Result<T, Error> {
    tokio::spawn(fut)
        .await
        .map_err(|e| Error::Internal(format!("{what} task failed: {e}")))?
}

/// Runs blocking `f` (file system work) off the async threads; a panic in it is an internal
/// error.
pub(super) async fn blocking<T: Send + 'static>(
    what: &'static str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal(format!("{what} task failed: {e}")))
}
