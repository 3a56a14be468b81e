//! Why a lifecycle operation failed, and the one place a task's panic becomes an error.

use std::future::Future;
use std::time::Duration;

use crate::docker::EngineError;
use crate::key::ServerKey;
use crate::state::StoreError;

/// Why a lifecycle operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The image is not on this node and the pull policy is `never`.
    #[error(
        "image {image:?} is not present on node {node:?} and the pull policy is \"never\"; load it on the node first, or pull it (pull_policy ifnotpresent or always)"
    )]
    ImageMissing {
        /// Image reference.
        image: String,
        /// Node id.
        node: String,
    },
    /// The image could not be pulled from its registry; nothing was created.
    #[error("cannot pull image {image:?} on node {node:?}: {cause}: {detail}")]
    ImagePullFailed {
        /// Image reference.
        image: String,
        /// Node id.
        node: String,
        /// Why, as a code.
        cause: crate::runtime::images::pull::PullCause,
        /// Docker's words.
        detail: String,
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
    /// The devices asked for cannot be had.
    #[error(transparent)]
    Devices(#[from] crate::devices::DeviceError),
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
    /// No user volume of that name on this node (or one berthd did not make).
    #[error("no user volume {name:?} on this node")]
    VolumeNotFound {
        /// Volume name.
        name: String,
    },
    /// A container mounts the volume: its data may change, or Docker would not remove it.
    #[error(
        "volume {name:?} is mounted by {} container {container}; stop the user's server first",
        if *running { "running" } else { "stopped, not berthd's," }
    )]
    VolumeInUse {
        /// Volume name.
        name: String,
        /// The container mounting it.
        container: String,
        /// Whether that container runs.
        running: bool,
    },
    /// berthd cannot copy this volume's contents.
    #[error("volume {name:?} cannot be moved: {why}")]
    VolumeNotMovable {
        /// Volume name.
        name: String,
        /// Why.
        why: String,
    },
    /// An import into a volume that exists and is not an unfinished import of the same move.
    #[error("volume {name:?} already exists on this node; remove it there first if it is stale")]
    VolumeExists {
        /// Volume name.
        name: String,
    },
    /// Another export, import or removal of the volume is under way.
    #[error("volume {name:?} is being exported, imported or removed by another call")]
    VolumeBusy {
        /// Volume name.
        name: String,
    },
    /// The volume is an import that has not been verified yet.
    #[error("volume {name:?} is an unfinished import; finish the move (or remove it) first")]
    VolumeImporting {
        /// Volume name.
        name: String,
    },
    /// The imported stream is not the one the sender sent; the partial volume was removed.
    #[error(
        "volume {name:?} did not verify: received {actual_bytes} bytes with SHA-256 {actual}, the sender sent {expected_bytes} with {expected}; the partial import was removed"
    )]
    ChecksumMismatch {
        /// Volume name.
        name: String,
        /// The sender's SHA-256 (hex).
        expected: String,
        /// The sender's byte count.
        expected_bytes: u64,
        /// What arrived.
        actual: String,
        /// Bytes that arrived.
        actual_bytes: u64,
    },
    /// The import stream ended before its checksum; the partial volume was removed.
    #[error("the import of volume {name:?} ended early ({why}); the partial import was removed")]
    ImportIncomplete {
        /// Volume name.
        name: String,
        /// What happened.
        why: String,
    },
    /// Packing or unpacking the volume's files failed or met an entry it refuses.
    #[error("volume {name:?}: {source}")]
    Archive {
        /// Volume name.
        name: String,
        /// What failed.
        #[source]
        source: crate::runtime::volumes::transfer::archive::ArchiveError,
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
            Error::ImagePullFailed { .. } => "ImagePullFailed",
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
            Error::Devices(_) => "Capacity",
            Error::Capacity(_) | Error::QueueFull { .. } | Error::QueueTimeout { .. } => "Capacity",
            Error::StateConflict { .. } | Error::BlobTooLarge { .. } => "StateError",
            Error::VolumeNotFound { .. }
            | Error::VolumeInUse { .. }
            | Error::VolumeNotMovable { .. }
            | Error::VolumeExists { .. }
            | Error::VolumeBusy { .. }
            | Error::VolumeImporting { .. }
            | Error::ChecksumMismatch { .. }
            | Error::ImportIncomplete { .. }
            | Error::Archive { .. } => "VolumeTransfer",
            Error::Internal(_) => "Internal",
        }
    }
}

/// Runs `fut` in a task of its own, so that a caller who goes away (a hub timeout, a dropped
/// connection) never leaves the operation half done; a panic in it is an internal error.
pub(in crate::runtime) async fn detached<T: Send + 'static>(
    what: &'static str,
    fut: impl Future<Output = Result<T, Error>> + Send + 'static,
) -> Result<T, Error> {
    tokio::spawn(fut)
        .await
        .map_err(|e| Error::Internal(format!("{what} task failed: {e}")))?
}

/// Runs blocking `f` (file system work) off the async threads; a panic in it is an internal
/// error.
pub(in crate::runtime) async fn blocking<T: Send + 'static>(
    what: &'static str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal(format!("{what} task failed: {e}")))
}
