//! A server's status, derived by one pure function from its durable record, its container as
//! Docker last reported it, and the lifecycle operation under way. No lock, no Docker call:
//! the table of states is tested on its own.

use std::time::SystemTime;

use crate::docker::{ContainerInfo, LABEL_PORT, LABEL_SPAWN_ID, RunStatus};
use crate::key::ServerKey;
use crate::runtime::view::Entry;
use crate::runtime::view::keys::Op;
use crate::state::{Record, RecordStatus};

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

/// The URL of a server published on `host_port` of `advertise_host`.
pub fn url_for(advertise_host: &str, host_port: u16) -> String {
    if advertise_host.contains(':') && !advertise_host.starts_with('[') {
        format!("http://[{advertise_host}]:{host_port}")
    } else {
        format!("http://{advertise_host}:{host_port}")
    }
}

/// The status of `key` from its `entry` (none: never seen), the operation under way on it,
/// its newest activity, and the host its URLs name.
pub fn derive(
    key: &ServerKey,
    entry: Option<&Entry>,
    op: Option<Op>,
    last_activity: Option<SystemTime>,
    advertise_host: &str,
) -> Status {
    let mut s = Status {
        key: key.clone(),
        state: State::Absent,
        exit_code: None,
        reason: String::new(),
        message: String::new(),
        started_at: None,
        finished_at: None,
        url: None,
        container_id: String::new(),
        spawn_id: String::new(),
        image: String::new(),
        health: String::new(),
        last_activity,
    };
    let Some(entry) = entry else {
        if op == Some(Op::Starting) {
            s.state = State::Starting;
        }
        return s;
    };
    let r = &entry.record;
    s.spawn_id.clone_from(&r.spawn_id);
    s.image.clone_from(&r.image);
    s.container_id.clone_from(&r.container_id);
    match &entry.live {
        None => without_container(&mut s, r, op),
        Some(c) => with_container(&mut s, r, c, op, advertise_host),
    }
    s
}

/// The record alone: starting, absent, or a container that vanished behind berthd's back.
fn without_container(s: &mut Status, r: &Record, op: Option<Op>) {
    if op == Some(Op::Starting) && r.status != RecordStatus::Starting {
        // The record still names an earlier spawn's container; this spawn has none yet.
        s.container_id.clear();
    }
    (s.state, s.reason, s.message) = match (op, r.status) {
        (Some(Op::Starting), _) => (State::Starting, String::new(), String::new()),
        (_, RecordStatus::Running | RecordStatus::Starting | RecordStatus::Stopping)
            if !r.container_id.is_empty() =>
        {
            (
                State::Exited,
                "Vanished".to_owned(),
                "the container disappeared outside berthd's control".to_owned(),
            )
        }
        _ => (State::Absent, String::new(), String::new()),
    };
    s.exit_code = if s.state == State::Absent {
        r.exit_code
    } else {
        None
    };
}

/// The state a container's Docker status means, given the operation under way.
fn state_of(c: &ContainerInfo, op: Option<Op>) -> (State, Option<i64>, &'static str, String) {
    match (c.status, op) {
        (RunStatus::Exited | RunStatus::Dead, _) => {
            let code = c.exit_code.unwrap_or(-1);
            let message = if c.error.is_empty() {
                format!("exited with code {code}")
            } else {
                format!("exited with code {code}: {}", c.error)
            };
            (
                State::Exited,
                Some(code),
                exit_reason(code, c.oom_killed),
                message,
            )
        }
        (_, Some(Op::Stopping)) | (RunStatus::Removing, _) => {
            (State::Stopping, None, "", String::new())
        }
        (
            RunStatus::Created | RunStatus::Restarting | RunStatus::Running | RunStatus::Paused,
            Some(Op::Starting),
        ) => (State::Starting, None, "", String::new()),
        // It never ran, so it has no exit code to report.
        (RunStatus::Created, _) => (
            State::Exited,
            None,
            "NeverStarted",
            "created but never started".to_owned(),
        ),
        (RunStatus::Paused, _) => (State::Running, None, "", "paused".to_owned()),
        (RunStatus::Running | RunStatus::Restarting, _) => {
            (State::Running, None, "", String::new())
        }
    }
}

fn with_container(
    s: &mut Status,
    r: &Record,
    c: &ContainerInfo,
    op: Option<Op>,
    advertise_host: &str,
) {
    let port = c
        .label(LABEL_PORT)
        .and_then(|p| p.parse().ok())
        .unwrap_or(r.port);
    let (state, exit_code, reason, message) = state_of(c, op);
    s.state = state;
    s.exit_code = exit_code;
    s.reason = reason.to_owned();
    s.message = message;
    if state == State::Exited && r.fenced && r.container_id == c.id {
        s.reason = "Fenced".to_owned();
        s.message = format!(
            "stopped by its node, which had lost touch with the hub (fencing; {})",
            s.message
        );
    }
    s.started_at.clone_from(&c.started_at);
    s.finished_at.clone_from(&c.finished_at);
    s.url = (state != State::Exited)
        .then(|| c.host_port(port).map(|p| url_for(advertise_host, p)))
        .flatten();
    s.container_id.clone_from(&c.id);
    s.health.clone_from(&c.health);
    s.image.clone_from(&c.image);
    // A resumed container keeps the label of the spawn that made it; the record knows the
    // spawn that runs it now.
    if r.container_id != c.id
        && let Some(id) = c.label(LABEL_SPAWN_ID)
    {
        s.spawn_id = id.to_owned();
    }
}

#[cfg(test)]
mod tests;
