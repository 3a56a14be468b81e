use std::collections::HashMap;

use super::*;
use crate::docker::PortBinding;

fn key() -> ServerKey {
    ServerKey::new("ann", "").expect("valid")
}

fn record(status: RecordStatus, container: &str) -> Record {
    let mut r = Record::new(&key());
    r.status = status;
    r.container_id = container.to_owned();
    r.spawn_id = "s1".to_owned();
    r.port = 8888;
    r
}

fn container(status: RunStatus, exit_code: Option<i64>, oom: bool) -> ContainerInfo {
    ContainerInfo {
        id: "c2".to_owned(),
        name: key().container_name(),
        image: "img".to_owned(),
        labels: HashMap::from([(LABEL_SPAWN_ID.to_owned(), "s2".to_owned())]),
        status,
        exit_code,
        oom_killed: oom,
        error: String::new(),
        started_at: Some("2026-11-23T00:00:00Z".to_owned()),
        finished_at: None,
        ports: vec![PortBinding {
            container_port: 8888,
            host_ip: "127.0.0.1".to_owned(),
            host_port: 40000,
        }],
        memory: 0,
        nano_cpus: 0,
        memory_reservation: 0,
        cpu_shares: 0,
        pids_limit: 0,
        health: String::new(),
        restart_count: 0,
        pid: None,
    }
}

fn entry(r: Record, live: Option<ContainerInfo>) -> Entry {
    let mut e = Entry::new(r);
    e.live = live;
    e
}

/// One row of the table: the entry (None: never seen), the operation under way, and the
/// state, reason, exit code and container id the hub must be told.
type Row = (
    Option<Entry>,
    Option<Op>,
    State,
    &'static str,
    Option<i64>,
    &'static str,
);

#[test]
fn the_status_table() {
    use RunStatus as R;
    use State as S;
    let run = |s| Some(container(s, None, false));
    let exited = |code, oom| Some(container(R::Exited, Some(code), oom));
    let rec = |s| record(s, "c1");
    let rows: Vec<Row> = vec![
        (None, None, S::Absent, "", None, ""),
        (None, Some(Op::Starting), S::Starting, "", None, ""),
        // A new spawn of a key whose record names an earlier container: none yet.
        (
            Some(entry(rec(RecordStatus::Exited), None)),
            Some(Op::Starting),
            S::Starting,
            "",
            None,
            "",
        ),
        // This spawn's record, its container created but not yet seen by the monitor.
        (
            Some(entry(rec(RecordStatus::Starting), None)),
            Some(Op::Starting),
            S::Starting,
            "",
            None,
            "c1",
        ),
        (
            Some(entry(rec(RecordStatus::Running), None)),
            None,
            S::Exited,
            "Vanished",
            None,
            "c1",
        ),
        (
            Some(entry(rec(RecordStatus::Absent), None)),
            None,
            S::Absent,
            "",
            None,
            "c1",
        ),
        (
            Some(entry(rec(RecordStatus::Running), run(R::Running))),
            None,
            S::Running,
            "",
            None,
            "c2",
        ),
        (
            Some(entry(rec(RecordStatus::Running), run(R::Paused))),
            None,
            S::Running,
            "",
            None,
            "c2",
        ),
        (
            Some(entry(rec(RecordStatus::Running), run(R::Running))),
            Some(Op::Starting),
            S::Starting,
            "",
            None,
            "c2",
        ),
        (
            Some(entry(rec(RecordStatus::Running), run(R::Running))),
            Some(Op::Stopping),
            S::Stopping,
            "",
            None,
            "c2",
        ),
        (
            Some(entry(rec(RecordStatus::Running), run(R::Removing))),
            None,
            S::Stopping,
            "",
            None,
            "c2",
        ),
        (
            Some(entry(rec(RecordStatus::Running), run(R::Created))),
            None,
            S::Exited,
            "NeverStarted",
            None,
            "c2",
        ),
        (
            Some(entry(rec(RecordStatus::Exited), exited(0, false))),
            None,
            S::Exited,
            "Completed",
            Some(0),
            "c2",
        ),
        (
            Some(entry(rec(RecordStatus::Exited), exited(1, false))),
            None,
            S::Exited,
            "Error",
            Some(1),
            "c2",
        ),
        (
            Some(entry(rec(RecordStatus::Exited), exited(137, false))),
            None,
            S::Exited,
            "Killed",
            Some(137),
            "c2",
        ),
        (
            Some(entry(rec(RecordStatus::Exited), exited(143, false))),
            None,
            S::Exited,
            "Terminated",
            Some(143),
            "c2",
        ),
        (
            Some(entry(rec(RecordStatus::Exited), exited(137, true))),
            None,
            S::Exited,
            "OOMKilled",
            Some(137),
            "c2",
        ),
        // An exit wins over an operation under way: the container is gone whatever is asked.
        (
            Some(entry(rec(RecordStatus::Running), exited(1, false))),
            Some(Op::Stopping),
            S::Exited,
            "Error",
            Some(1),
            "c2",
        ),
    ];
    for (i, (e, op, state, reason, code, id)) in rows.into_iter().enumerate() {
        let s = derive(&key(), e.as_ref(), op, None, "node-1.example");
        assert_eq!(
            (
                s.state,
                s.reason.as_str(),
                s.exit_code,
                s.container_id.as_str()
            ),
            (state, reason, code, id),
            "row {i}"
        );
        let has_url = s.url.is_some();
        let running = matches!(state, S::Running | S::Starting | S::Stopping)
            && e.as_ref().is_some_and(|e| e.live.is_some());
        assert_eq!(has_url, running, "row {i}: url {:?}", s.url);
    }
}

#[test]
fn the_spawn_and_url_come_from_the_container() {
    let e = entry(
        record(RecordStatus::Running, "c1"),
        Some(container(RunStatus::Running, None, false)),
    );
    let s = derive(&key(), Some(&e), None, None, "fd00::1");
    assert_eq!(s.spawn_id, "s2");
    assert_eq!(s.url.as_deref(), Some("http://[fd00::1]:40000"));
    assert_eq!(url_for("node-1", 5), "http://node-1:5");
}

#[test]
fn exit_reasons() {
    assert_eq!(exit_reason(0, false), "Completed");
    assert_eq!(exit_reason(137, true), "OOMKilled");
    assert_eq!(exit_reason(137, false), "Killed");
    assert_eq!(exit_reason(3, false), "Error");
}
