//! The one mapping from domain errors to gRPC status codes. INTERNAL is only for bugs.

use tonic::{Code, Status};

use crate::docker::EngineError;
use crate::runtime::Error;
use crate::spec::SpecError;

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        let code = match &e {
            Error::ImageMissing { .. } | Error::NotFound { .. } => Code::NotFound,
            Error::AlreadyRunning { .. } | Error::NameTaken { .. } => Code::AlreadyExists,
            Error::ExitedDuringStart { .. } | Error::StartRefused { .. } => {
                Code::FailedPrecondition
            }
            Error::ReadyTimeout { .. } => Code::DeadlineExceeded,
            Error::Cancelled { .. } => Code::Aborted,
            Error::Engine(engine) => match engine {
                EngineError::NotFound { .. } => Code::NotFound,
                EngineError::Conflict { .. } => Code::FailedPrecondition,
                EngineError::Unavailable { .. } => Code::Unavailable,
                EngineError::Timeout { .. } => Code::DeadlineExceeded,
                EngineError::Api { status, .. } if *status < 500 => Code::FailedPrecondition,
                EngineError::Api { .. } => Code::Unavailable,
            },
            Error::Store(_) => Code::Unavailable,
            Error::Draining { .. } => Code::FailedPrecondition,
            Error::Policy(_) => Code::PermissionDenied,
            Error::HostPath(e) if e.is_policy() => Code::PermissionDenied,
            Error::HostPath(_) => Code::FailedPrecondition,
            Error::Capacity(_) | Error::QueueFull { .. } => Code::ResourceExhausted,
            Error::QueueTimeout { .. } => Code::DeadlineExceeded,
            Error::StateConflict { .. } => Code::Aborted,
            Error::BlobTooLarge { .. } => Code::InvalidArgument,
            Error::Internal(_) => Code::Internal,
        };
        Status::new(code, e.to_string())
    }
}

/// Bad input: INVALID_ARGUMENT naming the field.
pub fn invalid(e: SpecError) -> Status {
    Status::invalid_argument(e.to_string())
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
            (Error::Internal("bug".into()), Code::Internal),
        ];
        for (e, code) in cases {
            let msg = e.to_string();
            let s = Status::from(e);
            assert_eq!(s.code(), code, "{msg}");
            assert_eq!(s.message(), msg);
        }
        assert_eq!(
            invalid(SpecError::new("port", "bad")).message(),
            "port: bad"
        );
    }
}
