//! The one mapping from domain errors to gRPC status codes, each refusal with a
//! machine-readable reason (`google.rpc.ErrorInfo`, domain [`DOMAIN`]) that clients decide on;
//! the message is for people. INTERNAL is only for bugs. The reasons are listed in
//! `proto/berth/v1/spawner.proto`.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::capacity::Refusal;
use crate::devices::DeviceError;
use crate::docker::EngineError;
use crate::hostpath::HostPathError;
use crate::runtime::Error;
use crate::runtime::volumes::transfer::archive::ArchiveError;
use crate::spec::SpecError;

/// The `ErrorInfo.domain` of every berthd reason.
pub const DOMAIN: &str = "berth.v1";

/// A status with `reason` and its metadata attached as `ErrorInfo`.
pub fn with_reason(code: Code, message: String, reason: &str, meta: Vec<(&str, String)>) -> Status {
    let meta: HashMap<String, String> = meta.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    Status::with_error_details(
        code,
        message,
        ErrorDetails::with_error_info(reason, DOMAIN, meta),
    )
}

fn engine(e: &EngineError) -> (Code, &'static str) {
    match e {
        EngineError::NotFound { .. } => (Code::NotFound, "DOCKER_NOT_FOUND"),
        EngineError::Conflict { .. } => (Code::FailedPrecondition, "DOCKER_CONFLICT"),
        EngineError::Unavailable { .. } => (Code::Unavailable, "DOCKER_UNAVAILABLE"),
        EngineError::Timeout { .. } => (Code::DeadlineExceeded, "DOCKER_TIMEOUT"),
        EngineError::Api { status, .. } if *status < 500 => {
            (Code::FailedPrecondition, "DOCKER_REFUSED")
        }
        EngineError::Api { .. } => (Code::Unavailable, "DOCKER_ERROR"),
    }
}

fn devices(e: &DeviceError) -> (Code, &'static str, Vec<(&'static str, String)>) {
    match e {
        DeviceError::Insufficient {
            class,
            model,
            asked,
            free,
            ..
        } => (
            Code::ResourceExhausted,
            "INSUFFICIENT_DEVICES",
            vec![
                ("class", class.clone()),
                ("asked", asked.to_string()),
                ("free", free.to_string()),
                ("model", model.clone()),
            ],
        ),
        DeviceError::NotConfigured { class, .. } => (
            Code::FailedPrecondition,
            "DEVICES_NOT_CONFIGURED",
            vec![("class", class.clone())],
        ),
    }
}

fn host_path(e: &HostPathError) -> (Code, &'static str, Vec<(&'static str, String)>) {
    match e {
        HostPathError::Missing { path } => (
            Code::FailedPrecondition,
            "HOST_PATH_MISSING",
            vec![("path", path.clone())],
        ),
        HostPathError::NotVerified { path, target } => (
            Code::FailedPrecondition,
            "HOST_PATH_NOT_VERIFIED",
            vec![("path", path.clone()), ("target", target.clone())],
        ),
        HostPathError::Io { path, .. } => (
            Code::FailedPrecondition,
            "HOST_PATH_ERROR",
            vec![("path", path.clone())],
        ),
        HostPathError::Device { path, .. } => (
            Code::PermissionDenied,
            "POLICY_DENIED",
            vec![
                ("rule", "allowed_devices".to_owned()),
                ("path", path.clone()),
            ],
        ),
        HostPathError::NotUnderRoot { path }
        | HostPathError::Symlink { path, .. }
        | HostPathError::Escapes { path, .. }
        | HostPathError::Kind { path, .. } => (
            Code::PermissionDenied,
            "POLICY_DENIED",
            vec![
                ("rule", crate::hostpath::RULE.to_owned()),
                ("path", path.clone()),
            ],
        ),
        HostPathError::BindVolume { name, .. } => (
            Code::PermissionDenied,
            "POLICY_DENIED",
            vec![
                ("rule", crate::hostpath::RULE.to_owned()),
                ("volume", name.clone()),
            ],
        ),
    }
}

/// The code, reason and metadata of `e`. One flat table, one arm per error, kept whole (not
/// split) so that a new error variant has exactly one place to be classified.
fn classify(e: &Error) -> (Code, &'static str, Vec<(&'static str, String)>) {
    match e {
        Error::ImageMissing { image, node } => (
            Code::NotFound,
            "IMAGE_NOT_FOUND",
            vec![("image", image.clone()), ("node", node.clone())],
        ),
        Error::ImagePullFailed { image, cause, .. } => (
            Code::FailedPrecondition,
            "IMAGE_PULL_FAILED",
            vec![("image", image.clone()), ("cause", cause.code().to_owned())],
        ),
        Error::NotFound { .. } => (Code::NotFound, "SERVER_NOT_FOUND", vec![]),
        Error::AlreadyRunning { spawn_id, .. } => (
            Code::AlreadyExists,
            "ALREADY_RUNNING",
            vec![("spawn_id", spawn_id.clone())],
        ),
        Error::NameTaken { name } => (
            Code::AlreadyExists,
            "NAME_TAKEN",
            vec![("container_name", name.clone())],
        ),
        Error::ExitedDuringStart {
            exit_code, reason, ..
        } => (
            Code::FailedPrecondition,
            "EXITED_DURING_START",
            vec![
                ("exit_code", exit_code.to_string()),
                ("exit_reason", (*reason).to_owned()),
            ],
        ),
        Error::StartRefused { .. } => (Code::FailedPrecondition, "START_REFUSED", vec![]),
        Error::ReadyTimeout { after, .. } => (
            Code::DeadlineExceeded,
            "READY_TIMEOUT",
            vec![("after_seconds", after.as_secs().to_string())],
        ),
        Error::Cancelled { .. } => (Code::Aborted, "CANCELLED_BY_STOP", vec![]),
        Error::Engine(e) => {
            let (code, reason) = engine(e);
            (code, reason, vec![])
        }
        Error::Store(_) => (Code::Unavailable, "STATE_STORE_ERROR", vec![]),
        Error::Draining { node, reason } => (
            Code::FailedPrecondition,
            "NODE_DRAINING",
            vec![("node", node.clone()), ("drain_reason", reason.clone())],
        ),
        Error::Policy(v) => (
            Code::PermissionDenied,
            "POLICY_DENIED",
            vec![("rule", v.rule.to_owned())],
        ),
        Error::HostPath(e) => host_path(e),
        Error::Capacity(r) => {
            let reason = match r {
                Refusal::Memory { .. } => "INSUFFICIENT_MEMORY",
                Refusal::Cpu { .. } => "INSUFFICIENT_CPU",
                Refusal::Servers { .. } => "TOO_MANY_SERVERS",
            };
            (
                Code::ResourceExhausted,
                reason,
                vec![("resource", r.resource().to_owned())],
            )
        }
        Error::Devices(e) => devices(e),
        Error::QueueFull { waiting, limit } => (
            Code::ResourceExhausted,
            "SPAWN_QUEUE_FULL",
            vec![
                ("waiting", waiting.to_string()),
                ("limit", limit.to_string()),
            ],
        ),
        Error::QueueTimeout { after } => (
            Code::DeadlineExceeded,
            "SPAWN_QUEUE_TIMEOUT",
            vec![("after_seconds", after.as_secs().to_string())],
        ),
        Error::StateConflict {
            expected, current, ..
        } => (
            Code::Aborted,
            "STATE_CONFLICT",
            vec![
                ("expected", expected.to_string()),
                ("current", current.to_string()),
            ],
        ),
        Error::BlobTooLarge { max, .. } => (
            Code::InvalidArgument,
            "STATE_TOO_LARGE",
            vec![("max_bytes", max.to_string())],
        ),
        Error::VolumeNotFound { name } => (
            Code::NotFound,
            "VOLUME_NOT_FOUND",
            vec![("volume", name.clone())],
        ),
        Error::VolumeInUse {
            name, container, ..
        } => (
            Code::FailedPrecondition,
            "VOLUME_IN_USE",
            vec![("volume", name.clone()), ("container", container.clone())],
        ),
        Error::VolumeNotMovable { name, .. } => (
            Code::FailedPrecondition,
            "VOLUME_NOT_MOVABLE",
            vec![("volume", name.clone())],
        ),
        Error::VolumeExists { name } => (
            Code::AlreadyExists,
            "VOLUME_EXISTS",
            vec![("volume", name.clone())],
        ),
        Error::VolumeBusy { name } => {
            (Code::Aborted, "VOLUME_BUSY", vec![("volume", name.clone())])
        }
        Error::VolumeImporting { name } => (
            Code::FailedPrecondition,
            "VOLUME_IMPORTING",
            vec![("volume", name.clone())],
        ),
        Error::ChecksumMismatch { name, .. } => (
            Code::DataLoss,
            "CHECKSUM_MISMATCH",
            vec![("volume", name.clone())],
        ),
        Error::ImportIncomplete { name, .. } => (
            Code::Aborted,
            "IMPORT_INCOMPLETE",
            vec![("volume", name.clone())],
        ),
        Error::Archive { name, source } => match source {
            ArchiveError::Refused { path, .. } => (
                Code::InvalidArgument,
                "ARCHIVE_REFUSED",
                vec![("volume", name.clone()), ("path", path.clone())],
            ),
            ArchiveError::Io { path, .. } => (
                Code::Unavailable,
                "VOLUME_IO_ERROR",
                vec![("volume", name.clone()), ("path", path.clone())],
            ),
        },
        Error::Internal(_) => (Code::Internal, "INTERNAL", vec![]),
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        let (code, reason, meta) = classify(&e);
        with_reason(code, e.to_string(), reason, meta)
    }
}

/// Bad input: INVALID_ARGUMENT naming the field, reason `INVALID_ARGUMENT`.
pub fn invalid(e: SpecError) -> Status {
    let field = e.field.clone();
    with_reason(
        Code::InvalidArgument,
        e.to_string(),
        "INVALID_ARGUMENT",
        vec![("field", field)],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::ServerKey;

    #[test]
    fn codes() {
        let key = ServerKey::new("u", "").expect("valid");
        let cases: Vec<(Error, Code)> = vec![
            (
                Error::ImageMissing {
                    image: "i".into(),
                    node: "n".into(),
                },
                Code::NotFound,
            ),
            (
                Error::AlreadyRunning {
                    key: key.clone(),
                    spawn_id: "s".into(),
                },
                Code::AlreadyExists,
            ),
            (
                Error::ExitedDuringStart {
                    key: key.clone(),
                    exit_code: 3,
                    reason: "Error",
                    output: String::new(),
                },
                Code::FailedPrecondition,
            ),
            (
                Error::Engine(EngineError::Unavailable {
                    op: "x",
                    message: "down".into(),
                }),
                Code::Unavailable,
            ),
            (
                Error::VolumeInUse {
                    name: "v".into(),
                    container: "c".into(),
                    running: true,
                },
                Code::FailedPrecondition,
            ),
            (
                Error::ChecksumMismatch {
                    name: "v".into(),
                    expected: "a".into(),
                    expected_bytes: 1,
                    actual: "b".into(),
                    actual_bytes: 1,
                },
                Code::DataLoss,
            ),
            (
                Error::VolumeExists { name: "v".into() },
                Code::AlreadyExists,
            ),
            (Error::Internal("bug".into()), Code::Internal),
        ];
        for (e, code) in cases {
            let msg = e.to_string();
            let s = Status::from(e);
            assert_eq!(s.code(), code, "{msg}");
            assert_eq!(s.message(), msg);
            let info = s
                .get_details_error_info()
                .expect("every refusal has a reason");
            assert_eq!(info.domain, DOMAIN);
            assert!(
                !info.reason.is_empty()
                    && info
                        .reason
                        .bytes()
                        .all(|b| b.is_ascii_uppercase() || b == b'_'),
                "{}",
                info.reason
            );
        }
        let pull = Status::from(Error::ImagePullFailed {
            image: "r.example/x:1".into(),
            node: "n1".into(),
            cause: crate::runtime::images::pull::PullCause::Unauthorized,
            detail: "denied".into(),
        });
        assert_eq!(pull.code(), Code::FailedPrecondition);
        let info = pull.get_details_error_info().expect("reason");
        assert_eq!(info.reason, "IMAGE_PULL_FAILED");
        assert_eq!(
            info.metadata.get("cause").map(String::as_str),
            Some("unauthorized")
        );
        assert_eq!(
            info.metadata.get("image").map(String::as_str),
            Some("r.example/x:1")
        );
        let drain = Status::from(Error::Draining {
            node: "n1".into(),
            reason: "maintenance".into(),
        });
        let info = drain.get_details_error_info().expect("reason");
        assert_eq!(info.reason, "NODE_DRAINING");
        assert_eq!(info.metadata.get("node").map(String::as_str), Some("n1"));
        assert_eq!(
            invalid(SpecError::new("port", "bad")).message(),
            "port: bad"
        );
    }
}
