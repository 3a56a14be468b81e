//! The pin helper's protocol: one JSON object per line each way over a Unix stream socket,
//! parsed and validated here before the helper acts on it.
//!
//! A connection is one spawn's set of pins: berthd sends `pin` for each host path (the helper
//! resolves it beneath the allowed roots of *its own* configuration, so a request can never
//! widen the policy), then `verify` for each once the container runs; closing the connection
//! releases every pin it made. A claimed warm container instead gets each pin, or a local
//! Docker volume (found beneath the helper's own volume directory, by name), mounted into it
//! while it runs (`graft`). Nothing else can be asked.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::HostPathError;

/// Longest request line the helper reads; a longer one ends the connection.
pub const MAX_LINE: usize = 16 * 1024;
/// Most pins one connection may hold (a Start mounts far fewer host paths).
pub const MAX_PINS: u32 = 256;
/// Longest path (host path or container target) a request may name, in bytes.
pub const MAX_PATH: usize = 4096;
/// Longest container name (Docker's names are shorter still).
pub const MAX_CONTAINER: usize = 255;

/// A request as it arrives, before validation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    /// Resolve `path` beneath an allowed root (making it first when `make`, for a templated
    /// host path) and pin it for mount `index` of `container`.
    Pin(PinRequest),
    /// Whether process `pid` sees pin `index` of this connection at `target` in its root.
    Verify(VerifyRequest),
    /// Mount a pin of this connection, or a local Docker volume, at `target` in the running
    /// container whose first process is `pid`.
    Graft(GraftRequest),
}

/// See [`Request::Graft`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GraftRequest {
    /// What to mount.
    pub source: GraftSource,
    /// The container's first process.
    pub pid: u32,
    /// Where inside the container.
    pub target: String,
    /// Mount it read-only.
    pub read_only: bool,
}

/// What a [`GraftRequest`] mounts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GraftSource {
    /// Pin `index` of this connection.
    Pin(u32),
    /// The local Docker volume of this name (its `_data` directory beneath the helper's
    /// volume directory).
    Volume(String),
}

/// See [`Request::Pin`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PinRequest {
    /// The host path as the Start named it.
    pub path: String,
    /// The container's name (the staging directory's name).
    pub container: String,
    /// The mount's index in the Start.
    pub index: u32,
    /// Make the missing directories first (templated host paths).
    pub make: bool,
}

/// See [`Request::Verify`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    /// Index of a pin made on this connection.
    pub index: u32,
    /// The container's init process.
    pub pid: u32,
    /// The mount's target inside the container.
    pub target: String,
}

/// The helper's answer to one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    /// The pin exists: hand Docker `staging`; it names inode (`dev`, `ino`).
    Pinned {
        /// Staging path.
        staging: PathBuf,
        /// Device of the pinned inode.
        dev: u64,
        /// Inode number.
        ino: u64,
    },
    /// The answer to a `verify`.
    Verified {
        /// The container sees the pinned inode at the target.
        ok: bool,
    },
    /// The source is mounted at the target, and the container sees it there.
    Grafted,
    /// The request was refused or failed; nothing was pinned.
    Refused(WireError),
}

/// A [`HostPathError`] as it crosses the socket (the policy refusals keep their kind, so
/// berthd maps them to the same status as when it pins itself).
// The fields are those of the HostPathError variant each mirrors.
#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WireError {
    /// [`HostPathError::NotUnderRoot`].
    NotUnderRoot { path: String },
    /// [`HostPathError::Symlink`].
    Symlink { path: String, root: String },
    /// [`HostPathError::Escapes`].
    Escapes { path: String, root: String },
    /// [`HostPathError::Kind`].
    Kind { path: String, kind: String },
    /// [`HostPathError::Missing`].
    Missing { path: String },
    /// A system call failed (or any other error of the helper).
    Failed { path: String, message: String },
    /// The request itself is malformed; `field` names what is wrong.
    BadRequest { field: String, message: String },
}

/// Why a request line is refused before anything is done.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad request: {field}: {message}")]
pub struct BadRequest {
    /// The field that is wrong ("request" for the whole line).
    pub field: &'static str,
    /// What is wrong with it.
    pub message: String,
}

fn bad(field: &'static str, message: impl Into<String>) -> BadRequest {
    BadRequest {
        field,
        message: message.into(),
    }
}

fn check_abs(field: &'static str, p: &str) -> Result<(), BadRequest> {
    if p.is_empty() || !p.starts_with('/') {
        return Err(bad(field, "must be an absolute path"));
    }
    if p.len() > MAX_PATH {
        return Err(bad(field, format!("longer than {MAX_PATH} bytes")));
    }
    if p.contains('\0') {
        return Err(bad(field, "contains a NUL byte"));
    }
    Ok(())
}

/// A container or volume name becomes one directory name under the staging or volume
/// directory: Docker's own characters only, so it can neither climb (`..`) nor nest (`/`).
fn check_docker_name(field: &'static str, name: &str) -> Result<(), BadRequest> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
    if name.is_empty() || name.len() > MAX_CONTAINER {
        return Err(bad(field, format!("must be 1 to {MAX_CONTAINER} bytes")));
    }
    if !name.chars().all(ok_char) || !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(bad(
            field,
            "must be [A-Za-z0-9][A-Za-z0-9_.-]* (a Docker name)",
        ));
    }
    Ok(())
}

fn check_pid(pid: u32) -> Result<(), BadRequest> {
    if pid == 0 {
        return Err(bad("pid", "must be a process id (not 0)"));
    }
    Ok(())
}

fn check_index(index: u32) -> Result<(), BadRequest> {
    if index >= MAX_PINS {
        return Err(bad("index", format!("must be below {MAX_PINS}")));
    }
    Ok(())
}

impl Request {
    /// Parses and validates one line (without its newline).
    pub fn parse(line: &[u8]) -> Result<Self, BadRequest> {
        if line.len() > MAX_LINE {
            return Err(bad("request", format!("longer than {MAX_LINE} bytes")));
        }
        let req: Request =
            serde_json::from_slice(line).map_err(|e| bad("request", e.to_string()))?;
        match &req {
            Request::Pin(p) => {
                check_abs("path", &p.path)?;
                check_docker_name("container", &p.container)?;
                check_index(p.index)?;
            }
            Request::Verify(v) => {
                check_index(v.index)?;
                check_pid(v.pid)?;
                check_abs("target", &v.target)?;
            }
            Request::Graft(g) => {
                match &g.source {
                    GraftSource::Pin(index) => check_index(*index)?,
                    GraftSource::Volume(name) => check_docker_name("volume", name)?,
                }
                check_pid(g.pid)?;
                check_abs("target", &g.target)?;
            }
        }
        Ok(req)
    }

    /// The request as one line, newline included.
    pub fn to_line(&self) -> Vec<u8> {
        line(self)
    }
}

impl Reply {
    /// The reply as one line, newline included.
    pub fn to_line(&self) -> Vec<u8> {
        line(self)
    }
}

fn line<T: Serialize>(v: &T) -> Vec<u8> {
    // Serialising these plain structs cannot fail: no maps with non-string keys, no floats.
    let mut out = serde_json::to_vec(v).unwrap_or_default();
    out.push(b'\n');
    out
}

impl From<BadRequest> for WireError {
    fn from(e: BadRequest) -> Self {
        WireError::BadRequest {
            field: e.field.to_owned(),
            message: e.message,
        }
    }
}

impl From<&HostPathError> for WireError {
    fn from(e: &HostPathError) -> Self {
        match e {
            HostPathError::NotUnderRoot { path } => Self::NotUnderRoot { path: path.clone() },
            HostPathError::Symlink { path, root } => Self::Symlink {
                path: path.clone(),
                root: root.clone(),
            },
            HostPathError::Escapes { path, root } => Self::Escapes {
                path: path.clone(),
                root: root.clone(),
            },
            HostPathError::Kind { path, kind } => Self::Kind {
                path: path.clone(),
                kind: (*kind).to_owned(),
            },
            HostPathError::Missing { path } => Self::Missing { path: path.clone() },
            HostPathError::Io { path, .. }
            | HostPathError::Device { path, .. }
            | HostPathError::NotVerified { path, .. } => Self::Failed {
                path: path.clone(),
                message: e.to_string(),
            },
            HostPathError::BindVolume { name, .. } => Self::Failed {
                path: name.clone(),
                message: e.to_string(),
            },
        }
    }
}

/// The kinds [`HostPathError::Kind`] names, back from their text.
fn kind_from(text: &str) -> &'static str {
    const KINDS: [&str; 8] = [
        "regular file",
        "directory",
        "symbolic link",
        "FIFO",
        "socket",
        "character device",
        "block device",
        "file of unknown type",
    ];
    KINDS
        .iter()
        .find(|k| **k == text)
        .copied()
        .unwrap_or("file of unknown type")
}

impl WireError {
    /// The error berthd reports for this refusal of the helper at `socket`.
    pub fn into_error(self, socket: &Path) -> HostPathError {
        match self {
            Self::NotUnderRoot { path } => HostPathError::NotUnderRoot { path },
            Self::Symlink { path, root } => HostPathError::Symlink { path, root },
            Self::Escapes { path, root } => HostPathError::Escapes { path, root },
            Self::Kind { path, kind } => HostPathError::Kind {
                path,
                kind: kind_from(&kind),
            },
            Self::Missing { path } => HostPathError::Missing { path },
            Self::Failed { path, message } => HostPathError::Io {
                op: "pin (in the pin helper)",
                path,
                source: std::io::Error::other(message),
            },
            Self::BadRequest { field, message } => HostPathError::Io {
                op: "ask the pin helper to pin",
                path: socket.display().to_string(),
                source: std::io::Error::other(format!("bad request: {field}: {message}")),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn good_requests_parse() {
        let pin = br#"{"pin":{"path":"/srv/homes/alice","container":"berth-alice-","index":0,"make":true}}"#;
        assert_eq!(
            Request::parse(pin).unwrap(),
            Request::Pin(PinRequest {
                path: "/srv/homes/alice".into(),
                container: "berth-alice-".into(),
                index: 0,
                make: true,
            })
        );
        let verify = br#"{"verify":{"index":3,"pid":4242,"target":"/home/jovyan/work"}}"#;
        assert_eq!(
            Request::parse(verify).unwrap(),
            Request::Verify(VerifyRequest {
                index: 3,
                pid: 4242,
                target: "/home/jovyan/work".into(),
            })
        );
        let graft = br#"{"graft":{"source":{"volume":"jupyterhub-user-a"},"pid":7,"target":"/home/jovyan","read_only":false}}"#;
        assert_eq!(
            Request::parse(graft).unwrap(),
            Request::Graft(GraftRequest {
                source: GraftSource::Volume("jupyterhub-user-a".into()),
                pid: 7,
                target: "/home/jovyan".into(),
                read_only: false,
            })
        );
        let graft = br#"{"graft":{"source":{"pin":2},"pid":7,"target":"/data","read_only":true}}"#;
        assert!(matches!(
            Request::parse(graft).unwrap(),
            Request::Graft(GraftRequest {
                source: GraftSource::Pin(2),
                read_only: true,
                ..
            })
        ));
    }

    #[test]
    fn bad_requests_name_the_field() {
        let long_path = format!("/{}", "a".repeat(MAX_PATH));
        let long_line = format!(
            r#"{{"pin":{{"path":"/x","container":"c","index":0,"make":false,"pad":"{}"}}}}"#,
            "a".repeat(MAX_LINE)
        );
        let cases: Vec<(String, &str)> = vec![
            ("not json".into(), "request"),
            (r#"{"unmount":{"path":"/x"}}"#.into(), "request"),
            (
                r#"{"pin":{"path":"/x","container":"c","index":0}}"#.into(),
                "request",
            ),
            (
                r#"{"pin":{"path":"/x","container":"c","index":0,"make":false,"root":"/"}}"#.into(),
                "request",
            ),
            (
                r#"{"pin":{"path":"/x","container":"c","index":-1,"make":false}}"#.into(),
                "request",
            ),
            (long_line, "request"),
            (
                r#"{"pin":{"path":"x","container":"c","index":0,"make":false}}"#.into(),
                "path",
            ),
            (
                r#"{"pin":{"path":"","container":"c","index":0,"make":false}}"#.into(),
                "path",
            ),
            (
                format!(
                    r#"{{"pin":{{"path":"{long_path}","container":"c","index":0,"make":false}}}}"#
                ),
                "path",
            ),
            (
                r#"{"pin":{"path":"/a\u0000b","container":"c","index":0,"make":false}}"#.into(),
                "path",
            ),
            (
                r#"{"pin":{"path":"/x","container":"","index":0,"make":false}}"#.into(),
                "container",
            ),
            (
                r#"{"pin":{"path":"/x","container":"..","index":0,"make":false}}"#.into(),
                "container",
            ),
            (
                r#"{"pin":{"path":"/x","container":"a/b","index":0,"make":false}}"#.into(),
                "container",
            ),
            (
                r#"{"pin":{"path":"/x","container":".a","index":0,"make":false}}"#.into(),
                "container",
            ),
            (
                r#"{"pin":{"path":"/x","container":"-a","index":0,"make":false}}"#.into(),
                "container",
            ),
            (
                r#"{"pin":{"path":"/x","container":"c","index":256,"make":false}}"#.into(),
                "index",
            ),
            (
                r#"{"verify":{"index":0,"pid":0,"target":"/data"}}"#.into(),
                "pid",
            ),
            (
                r#"{"verify":{"index":0,"pid":7,"target":"data"}}"#.into(),
                "target",
            ),
            (
                r#"{"verify":{"index":900,"pid":7,"target":"/data"}}"#.into(),
                "index",
            ),
            (
                r#"{"graft":{"source":{"volume":"../etc"},"pid":7,"target":"/d","read_only":false}}"#.into(),
                "volume",
            ),
            (
                r#"{"graft":{"source":{"volume":"a/b"},"pid":7,"target":"/d","read_only":false}}"#.into(),
                "volume",
            ),
            (
                r#"{"graft":{"source":{"pin":999},"pid":7,"target":"/d","read_only":false}}"#.into(),
                "index",
            ),
            (
                r#"{"graft":{"source":{"pin":0},"pid":0,"target":"/d","read_only":false}}"#.into(),
                "pid",
            ),
            (
                r#"{"graft":{"source":{"pin":0},"pid":7,"target":"d","read_only":false}}"#.into(),
                "target",
            ),
            (
                r#"{"graft":{"source":{"path":"/etc"},"pid":7,"target":"/d","read_only":false}}"#.into(),
                "request",
            ),
        ];
        for (line, field) in cases {
            let e = Request::parse(line.as_bytes()).expect_err(&line);
            assert_eq!(e.field, field, "{line}: {e}");
        }
    }

    #[test]
    fn requests_and_replies_round_trip_as_one_line() {
        let req = Request::Pin(PinRequest {
            path: "/srv/x y".into(),
            container: "berth-a".into(),
            index: 2,
            make: false,
        });
        let line = req.to_line();
        assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1);
        assert_eq!(Request::parse(&line[..line.len() - 1]).unwrap(), req);
        for reply in [
            Reply::Pinned {
                staging: "/run/berth-pin/mounts/c/0".into(),
                dev: 1,
                ino: u64::MAX,
            },
            Reply::Verified { ok: false },
            Reply::Grafted,
            Reply::Refused(WireError::Symlink {
                path: "/r/x".into(),
                root: "/r".into(),
            }),
        ] {
            let line = reply.to_line();
            assert_eq!(line.last(), Some(&b'\n'));
            let back: Reply = serde_json::from_slice(&line).unwrap();
            assert_eq!(back, reply);
        }
    }

    #[test]
    fn policy_refusals_keep_their_kind_across_the_socket() {
        let sock = Path::new("/run/berth-pin/pin.sock");
        let errors = [
            HostPathError::NotUnderRoot {
                path: "/etc".into(),
            },
            HostPathError::Symlink {
                path: "/r/x".into(),
                root: "/r".into(),
            },
            HostPathError::Escapes {
                path: "/r/../etc".into(),
                root: "/r".into(),
            },
            HostPathError::Kind {
                path: "/r/s".into(),
                kind: "socket",
            },
            HostPathError::Missing {
                path: "/r/no".into(),
            },
        ];
        for e in errors {
            let back = WireError::from(&e).into_error(sock);
            assert_eq!(back.to_string(), e.to_string());
            assert_eq!(back.is_policy(), e.is_policy(), "{e}");
        }
        let io = HostPathError::Io {
            op: "bind-mount",
            path: "/r/x".into(),
            source: std::io::Error::other("EPERM"),
        };
        let back = WireError::from(&io).into_error(sock);
        assert!(matches!(back, HostPathError::Io { .. }), "{back:?}");
        assert!(back.to_string().contains("EPERM"), "{back}");
    }
}
