//! The fake engine's world: images, containers, volumes and the event log, behind one lock,
//! and the tiny HTTP server a "running" container is.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, watch};
use tokio::task::AbortHandle;

use super::Behaviour;
use crate::docker::{
    ContainerInfo, ContainerSpec, EngineError, EngineEvent, LogChunk, LogStream, PortBinding,
    RunStatus, Usage, VolumeInfo,
};

/// Buffered events a live subscriber may fall behind by; far more than any test produces.
pub(super) const EVENT_BUFFER: usize = 4096;

/// Exit code of a container killed with SIGKILL (128 + 9), as Docker reports it.
pub(super) const EXIT_SIGKILL: i64 = 137;
/// Exit code of a container that ended on SIGTERM (128 + 15).
pub(super) const EXIT_SIGTERM: i64 = 143;

/// The full reference Docker resolves a name to; the fake keys its images by it.
pub(super) fn normalise(reference: &str) -> String {
    // As dockerd does: `x` and `docker.io/library/x:latest` are one image.
    crate::spec::normalize_image(reference)
}

fn rfc3339_now() -> String {
    humantime::format_rfc3339_nanos(SystemTime::now()).to_string()
}

/// A 64-hex-digit id, like Docker's, unique within one fake.
fn container_id(name: &str, seq: u64) -> String {
    hex::encode(Sha256::digest(format!("{seq}/{name}").as_bytes()))
}

pub(super) struct Image {
    pub(super) id: String,
    pub(super) behaviour: Behaviour,
}

impl Image {
    pub(super) fn new(reference: &str, behaviour: Behaviour) -> Self {
        Self {
            id: format!(
                "sha256:{}",
                hex::encode(Sha256::digest(reference.as_bytes()))
            ),
            behaviour,
        }
    }
}

pub(super) struct Container {
    pub(super) info: ContainerInfo,
    pub(super) spec: ContainerSpec,
    /// Files put into it, by path, with the start they were present at (`run` then).
    pub(super) files: BTreeMap<String, Vec<u8>>,
    pub(super) behaviour: Behaviour,
    /// Creation order, so `list` answers in a stable order.
    seq: u64,
    /// Bumped on every start, so a delayed exit of an earlier run does not end a later one.
    pub(super) run: u64,
    pub(super) ignores_sigterm: bool,
    /// Whether the HTTP server answers; a silent one closes connections unanswered.
    pub(super) answering: Arc<AtomicBool>,
    server: Option<AbortHandle>,
    /// `None` while running, the exit code otherwise (0 for a never-started container, as
    /// Docker's `not-running` wait condition answers).
    pub(super) exit: watch::Sender<Option<i64>>,
    pub(super) logs: Vec<LogChunk>,
    pub(super) log_tx: broadcast::Sender<LogChunk>,
    pub(super) usage: Usage,
    /// What was written to its stdin.
    pub(super) stdin: Vec<u8>,
}

impl Container {
    pub(super) fn running(&self) -> bool {
        self.info.status == RunStatus::Running
    }
}

pub(super) struct World {
    pub(super) images: BTreeMap<String, Image>,
    pub(super) containers: HashMap<String, Container>,
    pub(super) volumes: BTreeMap<String, VolumeInfo>,
    /// Networks by name ("bridge" always).
    pub(super) networks: std::collections::BTreeMap<String, crate::docker::NetworkInfo>,
    pub(super) history: Vec<EngineEvent>,
    pub(super) calls: BTreeMap<&'static str, u64>,
    pub(super) inspect_delays: Vec<InspectDelay>,
    pub(super) root_dir: String,
    /// Where containers' servers and timers run (`None`: the caller's runtime), so a test
    /// may drop the runtime of a crashed berthd while its containers run on.
    pub(super) background: Option<tokio::runtime::Handle>,
    next_seq: u64,
    last_event_nano: i64,
    pub(super) events: broadcast::Sender<EngineEvent>,
}

/// A run that ends by itself: run number `run` of the container exits with `code` after
/// `after`.
pub(super) struct ExitPlan {
    pub(super) run: u64,
    pub(super) code: i64,
    pub(super) after: Duration,
}

/// A slow inspect armed by [`super::FakeEngine::delay_inspects`].
pub(super) struct InspectDelay {
    pub(super) target: Option<String>,
    pub(super) delay: Duration,
    pub(super) remaining: usize,
}

impl World {
    pub(super) fn new() -> Self {
        Self {
            images: BTreeMap::new(),
            containers: HashMap::new(),
            volumes: BTreeMap::new(),
            networks: [(
                "bridge".to_owned(),
                crate::docker::NetworkInfo {
                    subnets: vec!["172.17.0.0/16".to_owned()],
                    icc: true,
                },
            )]
            .into(),
            history: Vec::new(),
            calls: BTreeMap::new(),
            inspect_delays: Vec::new(),
            root_dir: std::env::temp_dir().display().to_string(),
            background: None,
            next_seq: 0,
            last_event_nano: 0,
            events: broadcast::channel(EVENT_BUFFER).0,
        }
    }

    /// The id of the container called `name_or_id` (its full id or its name).
    pub(super) fn resolve(&self, name_or_id: &str) -> Option<String> {
        let name = name_or_id.trim_start_matches('/');
        if self.containers.contains_key(name) {
            return Some(name.to_owned());
        }
        self.containers
            .values()
            .find(|c| c.info.name == name)
            .map(|c| c.info.id.clone())
    }

    pub(super) fn get(&self, name_or_id: &str) -> Option<&Container> {
        self.containers.get(&self.resolve(name_or_id)?)
    }

    pub(super) fn get_mut(&mut self, name_or_id: &str) -> Option<&mut Container> {
        let id = self.resolve(name_or_id)?;
        self.containers.get_mut(&id)
    }

    /// Ids of every container, oldest first.
    pub(super) fn ids(&self) -> Vec<String> {
        let mut all: Vec<(&u64, &String)> = self
            .containers
            .values()
            .map(|c| (&c.seq, &c.info.id))
            .collect();
        all.sort();
        all.into_iter().map(|(_, id)| id.clone()).collect()
    }

    /// Records and broadcasts one event of container `id`, with its labels as attributes.
    pub(super) fn emit(&mut self, id: &str, action: &str, extra: &[(&str, String)]) {
        let Some(c) = self.containers.get(id) else {
            return;
        };
        let mut labels = c.info.labels.clone();
        labels.insert("name".to_owned(), c.info.name.clone());
        labels.insert("image".to_owned(), c.info.image.clone());
        for (k, v) in extra {
            labels.insert((*k).to_owned(), v.clone());
        }
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
        // Strictly increasing, so "events since t" never depends on two events sharing a tick.
        self.last_event_nano = now.max(self.last_event_nano + 1);
        let ev = EngineEvent {
            container_id: id.to_owned(),
            action: action.to_owned(),
            labels,
            time_nano: self.last_event_nano,
        };
        self.history.push(ev.clone());
        // No live subscriber is not an error: the history replays it.
        let _ = self.events.send(ev);
    }

    pub(super) fn create(&mut self, spec: &ContainerSpec) -> Result<String, EngineError> {
        let Some(image) = self.images.get(&normalise(&spec.image)) else {
            // What dockerd answers (HTTP 404), classified as the bollard engine does.
            return Err(EngineError::NotFound {
                what: format!("No such image: {}", spec.image),
            });
        };
        if let Some(other) = self.resolve(&spec.name) {
            return Err(EngineError::Conflict {
                message: format!(
                    "Conflict. The container name \"/{}\" is already in use by container \"{other}\". You have to remove (or rename) that container to be able to reuse that name.",
                    spec.name
                ),
            });
        }
        self.next_seq += 1;
        let id = container_id(&spec.name, self.next_seq);
        for m in spec.mounts.iter().filter(|m| !m.bind) {
            // Docker makes a missing volume on create: local, unlabelled.
            self.volumes
                .entry(m.volume.clone())
                .or_insert_with(|| VolumeInfo {
                    name: m.volume.clone(),
                    driver: "local".to_owned(),
                    ..VolumeInfo::default()
                });
        }
        let info = ContainerInfo {
            id: id.clone(),
            name: spec.name.clone(),
            image: spec.image.clone(),
            labels: spec.labels.clone(),
            status: RunStatus::Created,
            exit_code: None,
            oom_killed: false,
            error: String::new(),
            started_at: None,
            finished_at: None,
            ports: Vec::new(),
            memory: spec.memory.unwrap_or(0),
            nano_cpus: spec.nano_cpus.unwrap_or(0),
            memory_reservation: spec.memory_reservation.unwrap_or(0),
            cpu_shares: spec.cpu_shares.unwrap_or(0),
            pids_limit: spec.options.pids_limit.unwrap_or(0),
            health: String::new(),
            restart_count: 0,
            // No process: host-path pins are never verified against a fake container.
            pid: None,
        };
        let container = Container {
            info,
            spec: spec.clone(),
            files: BTreeMap::new(),
            stdin: Vec::new(),
            behaviour: image.behaviour.clone(),
            seq: self.next_seq,
            run: 0,
            ignores_sigterm: false,
            answering: Arc::new(AtomicBool::new(false)),
            server: None,
            exit: watch::channel(Some(0)).0,
            logs: Vec::new(),
            log_tx: broadcast::channel(EVENT_BUFFER).0,
            usage: Usage::default(),
        };
        self.containers.insert(id.clone(), container);
        self.emit(&id, "create", &[]);
        Ok(id)
    }

    /// Makes created (or exited) container `id` run: binds its HTTP server and publishes it.
    /// Returns how the run ends by itself, if it does.
    // Long: every way a fake start can go (refused, exits, serves) in one place.
    pub(super) fn start(&mut self, id: &str) -> Result<Option<ExitPlan>, EngineError> {
        let Some(c) = self.containers.get_mut(id) else {
            return Err(EngineError::NotFound {
                what: format!("No such container: {id}"),
            });
        };
        if c.running() {
            return Ok(None);
        }
        if let Behaviour::RefuseStart { message } = &c.behaviour {
            // dockerd leaves the container created, with the runtime's error recorded.
            c.info.error.clone_from(message);
            return Err(EngineError::Api {
                op: "start",
                status: 400,
                message: message.clone(),
            });
        }
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .and_then(|l| {
                let port = l.local_addr()?.port();
                Ok((l, port))
            });
        let (listener, host_port) = listener.map_err(|e| EngineError::Api {
            op: "start",
            status: 500,
            message: format!("the fake engine cannot bind a port: {e}"),
        })?;
        c.run += 1;
        c.answering
            .store(c.behaviour == Behaviour::Serve, Ordering::SeqCst);
        // Registered with the reactor of the runtime it runs on, inside the task.
        let server = serve_http(listener, c.answering.clone());
        c.server = Some(match &self.background {
            Some(h) => h.spawn(server).abort_handle(),
            None => tokio::spawn(server).abort_handle(),
        });
        c.info.status = RunStatus::Running;
        c.info.exit_code = None;
        c.info.oom_killed = false;
        c.info.error.clear();
        c.info.started_at = Some(rfc3339_now());
        c.info.finished_at = None;
        c.info.ports = vec![PortBinding {
            container_port: c.spec.port,
            host_ip: c.spec.host_ip.clone(),
            host_port,
        }];
        c.exit.send_replace(None);
        // The resume wrapper reads the per-spawn env file and deletes it, unless the image has
        // no `/bin/sh` to run it: the fake takes an image whose containers exit with 127 at
        // once for one without (tini's "cannot exec").
        let wrapped = c.spec.entrypoint.as_ref().and_then(|e| e.last())
            == Some(&crate::runtime::lifecycle::resume::WRAPPER_NAME.to_owned());
        let no_shell =
            matches!(c.behaviour, Behaviour::Exit { code: 127, after, .. } if after.is_zero());
        if wrapped && !no_shell {
            c.files
                .retain(|path, _| !path.trim_start_matches('/').starts_with(".berth/spawn-env"));
        }
        let exits = match &c.behaviour {
            Behaviour::Exit {
                code,
                output,
                after,
            } => {
                for line in output.lines() {
                    let chunk = LogChunk {
                        stream: LogStream::Stderr,
                        data: format!("{line}\n").into_bytes(),
                    };
                    c.logs.push(chunk.clone());
                    let _ = c.log_tx.send(chunk);
                }
                Some(ExitPlan {
                    run: c.run,
                    code: *code,
                    after: *after,
                })
            }
            _ => None,
        };
        self.emit(id, "start", &[]);
        Ok(exits)
    }

    /// Ends container `id`'s run with `code`; false when it was not running.
    pub(super) fn terminate(&mut self, id: &str, code: i64, oom: bool) -> bool {
        let Some(c) = self.containers.get_mut(id) else {
            return false;
        };
        if !c.running() {
            return false;
        }
        if let Some(server) = c.server.take() {
            server.abort();
        }
        c.answering.store(false, Ordering::SeqCst);
        c.info.status = RunStatus::Exited;
        c.info.exit_code = Some(code);
        c.info.oom_killed = oom;
        c.info.finished_at = Some(rfc3339_now());
        // dockerd drops the port bindings of a stopped container.
        c.info.ports.clear();
        c.exit.send_replace(Some(code));
        if oom {
            self.emit(id, "oom", &[]);
        }
        self.emit(id, "die", &[("exitCode", code.to_string())]);
        true
    }

    /// SIGKILL: the container ends with 137 if it runs.
    pub(super) fn kill(&mut self, id: &str) {
        if self.containers.get(id).is_some_and(Container::running) {
            self.emit(id, "kill", &[("signal", "9".to_owned())]);
            self.terminate(id, EXIT_SIGKILL, false);
        }
    }

    pub(super) fn remove(&mut self, id: &str) {
        if !self.containers.contains_key(id) {
            return;
        }
        self.kill(id);
        self.emit(id, "destroy", &[]);
        self.containers.remove(id);
    }

    pub(super) fn volume_in_use(&self, name: &str) -> Option<&str> {
        self.containers
            .values()
            .find(|c| c.spec.mounts.iter().any(|m| !m.bind && m.volume == name))
            .map(|c| c.info.id.as_str())
    }

    /// Takes one armed slow inspect matching `query` (or the container it names).
    pub(super) fn take_inspect_delay(&mut self, query: &str) -> Option<Duration> {
        let id = self.resolve(query);
        let name = id
            .as_ref()
            .and_then(|id| self.containers.get(id))
            .map(|c| c.info.name.clone());
        let rule = self.inspect_delays.iter_mut().find(|d| {
            d.remaining > 0
                && d.target.as_ref().is_none_or(|t| {
                    t == query || Some(t) == id.as_ref() || Some(t) == name.as_ref()
                })
        })?;
        rule.remaining -= 1;
        let delay = rule.delay;
        self.inspect_delays.retain(|d| d.remaining > 0);
        Some(delay)
    }
}

/// The container's "server": answers `HTTP/1.1 200 OK` while `answering`, and otherwise
/// closes each connection unanswered (as Docker's port proxy does before the server listens).
async fn serve_http(listener: std::net::TcpListener, answering: Arc<AtomicBool>) {
    let Ok(listener) = TcpListener::from_std(listener) else {
        return;
    };
    while let Ok((mut conn, _)) = listener.accept().await {
        if !answering.load(Ordering::SeqCst) {
            drop(conn);
            continue;
        }
        tokio::spawn(async move {
            // Read the whole request head first: closing with unread input would reset the
            // connection and could lose the answer.
            let mut head = Vec::new();
            let mut buf = [0u8; 512];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";
            if conn.write_all(answer).await.is_ok() {
                let _ = conn.shutdown().await;
            }
        });
    }
}
