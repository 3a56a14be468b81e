//! Fault injection as a property (issue 23): random sequences of Start, Stop, resume, retry,
//! prepull and volume removal over the fake engine, with injected engine faults (errors,
//! timeouts, lost replies, hangs), callers that give up mid-way, and berthd crashes between
//! two engine calls. After every step, once the node is quiet, five invariants must hold:
//!
//! - (a) every held device, server slot or pull is owned by a container that runs: once no
//!   operation is under way, the capacity report's committed devices and servers equal what
//!   the running containers hold (a container left "created" by a failed start can no longer
//!   run), and no pull goes on that nobody follows;
//! - (b) no per-spawn secret is in a resumable container's config, in a file put into a
//!   container that does not run, or in any file of the state directory;
//! - (c) every container berthd made is tracked by a live record (or was removed);
//! - (d) a Start whose caller went away leaves no container of its spawn and no server running
//!   for it, unless a retry with the same spawn id joined it;
//! - (e) no status claims an exit code for a container that never ran.
//!
//! Each invariant has a mutation check below: a one-line break in the runtime (see
//! `berthd::mutation`) that the property run must notice. A crash is modelled faithfully:
//! each berthd runs on a tokio runtime of its own that is dropped, tasks and all, while the
//! fake's containers run on another. A failure names the seed and the steps; rerun one seed
//! with `BERTH_FAULT_SEED=<seed>` (`BERTH_FAULT_ALL=1` lists every violation). The faults and
//! choices follow the seed, but the interleaving of berthd's tasks and real sockets does not
//! always, so a rare violation may need a few reruns.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_proto::v1 as pb;
use berthd::docker::fake::{Behaviour, FakeEngine, FaultPlan};
use berthd::docker::{
    ContainerEngine, LABEL_DEVICES, LABEL_RESUMABLE, LABEL_SPAWN_ID, LABEL_USER, RunStatus,
};
use berthd::key::ServerKey;
use berthd::runtime::{Runtime, StopSpec};
use berthd::spec::StartSpec;
use berthd::state::{FileStore, RecordStatus};
use common::fake_node::{SERVE, engine, state_dir};
use tokio_util::sync::CancellationToken;

/// Random sequences per property run.
const SEQUENCES: u64 = 1000;
/// Steps per sequence.
const STEPS: usize = 8;
/// Longest a caller waits for one step before it gives up.
const STEP_LIMIT: Duration = Duration::from_millis(300);
/// Longest the node may take to become quiet after a step; still busy then, it is crashed.
const SETTLE: Duration = Duration::from_millis(100);
/// How long an abandoned Start waits for a retry.
const ABANDON_GRACE: Duration = Duration::from_millis(20);
const USERS: [&str; 2] = ["ann", "bob"];

/// Docker refuses to start it (as a device driver that is missing).
const REFUSED: &str = "fake/refused:1";
/// Exits at once with 127 (as an image without `/bin/sh` under the resume wrapper).
const CRASHES: &str = "fake/crashes:1";
/// Only in the fake registry: a Start pulls it.
const PULLED: &str = "fake/pulled:1";
const IMAGES: [&str; 5] = [SERVE, SERVE, REFUSED, CRASHES, PULLED];

fn faults(seed: u64) -> FaultPlan {
    FaultPlan {
        seed,
        errors: 60,
        hangs: 8,
        crashes: 12,
    }
}

fn gpus() -> berthd::devices::Inventory {
    use berthd::devices::{Class, Device, Inventory, Pass};
    let gpu = |i: usize| Device {
        id: i.to_string(),
        paths: vec![],
        model: "FakeGPU".into(),
        memory_bytes: 0,
        uuid: format!("GPU-{i}"),
    };
    Inventory {
        classes: vec![Class {
            name: "gpu".into(),
            shares: 1,
            pass: Pass::Nvidia,
            common_paths: vec![],
            devices: vec![gpu(0), gpu(1), gpu(2)],
            discovery_error: None,
        }],
    }
}

/// SplitMix64, for the sequence's choices.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[usize::try_from(self.below(xs.len() as u64)).unwrap()]
    }
}

/// One berthd: its own tokio runtime (dropped whole on a crash) and the runtime over it.
struct Node {
    tokio: tokio::runtime::Runtime,
    rt: Runtime<FakeEngine>,
    shutdown: CancellationToken,
}

impl Node {
    /// Starts berthd as `serve` does: load records, reconcile (without faults), monitor.
    fn boot(fake: &FakeEngine, dir: &Path) -> Self {
        fake.clear_crash();
        fake.pause_faults(true);
        let tokio = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut cfg = berthd::config::Config {
            node_id: "fake-node".to_owned(),
            state_dir: dir.to_path_buf(),
            ..Default::default()
        }
        .runtime();
        cfg.publish_host_ip = [127, 0, 0, 1].into();
        cfg.advertise_host = "127.0.0.1".to_owned();
        cfg.devices = gpus();
        // Shorter than `SETTLE`: an abandoned Start is cancelled before the node must be quiet.
        cfg.abandon_grace = ABANDON_GRACE;
        berthd::serve::prepare_state_dir(dir).unwrap();
        let rt = Runtime::new(fake.clone(), cfg, FileStore::open(dir).unwrap());
        let shutdown = CancellationToken::new();
        tokio.block_on(async {
            rt.load_records().await.unwrap();
            let since = berthd::monitor::now_secs();
            rt.reconcile().await.unwrap();
            tokio::spawn(berthd::monitor::run(rt.clone(), since, shutdown.clone()));
        });
        fake.pause_faults(false);
        Node {
            tokio,
            rt,
            shutdown,
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A broken invariant, with the sequence that broke it.
#[derive(Debug, Clone)]
struct Violation {
    invariant: char,
    seed: u64,
    what: String,
    steps: Vec<String>,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "({}) seed {}: {}\n    steps: {}",
            self.invariant,
            self.seed,
            self.what,
            self.steps.join(" → ")
        )
    }
}

/// One random sequence over one fake engine and state directory.
struct Sequence {
    seed: u64,
    rng: Rng,
    fake: FakeEngine,
    dir: PathBuf,
    node: Option<Node>,
    /// Per user: the newest Start request made, for a retry.
    last: HashMap<&'static str, pb::StartRequest>,
    /// Spawns whose caller went away and that no retry joined.
    /// With the containers that existed when its Start began (a retry of a spawn whose
    /// container a Stop kept does not own that container).
    abandoned: Vec<(&'static str, String, Vec<String>)>,
    /// Spawns answered with a server (until the user's next Stop).
    answered: Vec<(&'static str, String)>,
    secrets: Vec<String>,
    spawns: u32,
    steps: Vec<String>,
    /// How many of the fake's injected faults the steps name already.
    faults_noted: usize,
    found: Vec<Violation>,
}

enum Outcome<T> {
    Done(T),
    /// The caller gave up after `STEP_LIMIT`.
    GaveUp,
    /// berthd crashed at an engine call.
    Crashed,
}

impl Sequence {
    fn new(seed: u64, background: &tokio::runtime::Handle) -> Self {
        let fake = engine();
        fake.add_image(
            REFUSED,
            Behaviour::RefuseStart {
                message: "could not select device driver \"nvidia\" with capabilities: [[gpu]]"
                    .to_owned(),
            },
        );
        fake.add_image(
            CRASHES,
            Behaviour::Exit {
                code: 127,
                output: "/bin/sh: not found".to_owned(),
                after: Duration::ZERO,
            },
        );
        fake.publish_image(PULLED, Behaviour::Serve, &[1000, 2000], None);
        fake.run_containers_on(background.clone());
        let dir = quick_state_dir();
        // The capacity report measures Docker's root: keep it small.
        fake.set_root_dir(&dir.display().to_string());
        let node = Node::boot(&fake, &dir);
        fake.set_faults(Some(faults(seed)));
        Sequence {
            seed,
            rng: Rng(seed ^ 0x5EED),
            fake,
            dir,
            node: Some(node),
            last: HashMap::new(),
            abandoned: Vec::new(),
            answered: Vec::new(),
            secrets: Vec::new(),
            spawns: 0,
            steps: Vec::new(),
            faults_noted: 0,
            found: Vec::new(),
        }
    }

    fn node(&self) -> &Node {
        self.node.as_ref().unwrap()
    }

    fn rt(&self) -> Runtime<FakeEngine> {
        self.node().rt.clone()
    }

    /// Drops berthd, tasks and all, and starts a new one on the same engine and state dir.
    fn crash(&mut self) {
        self.node = None;
        // A spawn whose record already said RUNNING had its answer on the way when berthd
        // died: the hub's call failed with the crash, and the hub stops such a server (its
        // stop() after a failed start), so it is not the restart's to undo. One still
        // STARTING must be undone by the restart.
        let records = FileStore::open(&self.dir).unwrap().load_all().unwrap().0;
        self.abandoned.retain(|(user, spawn, _)| {
            !records.iter().any(|r| {
                r.user == *user && r.spawn_id == *spawn && r.status == RecordStatus::Running
            })
        });
        self.node = Some(Node::boot(&self.fake, &self.dir));
    }

    /// Runs `fut` as a caller would: until done, `STEP_LIMIT`, or a crash.
    fn call<T>(&mut self, fut: impl Future<Output = T>) -> Outcome<T> {
        let fake = self.fake.clone();
        let outcome = self.node().tokio.block_on(async {
            tokio::select! {
                // An answer berthd gave before the crash was noticed is the caller's: the
                // crash then came after it (settle() still crashes the node).
                biased;
                r = fut => Outcome::Done(r),
                () = fake.wait_crashed() => Outcome::Crashed,
                // A caller's deadline passes while an engine call hangs; no need to wait it out.
                () = fake.wait_hung() => Outcome::GaveUp,
                () = tokio::time::sleep(STEP_LIMIT) => Outcome::GaveUp,
            }
        });
        if matches!(outcome, Outcome::Crashed) {
            self.crash();
        }
        outcome
    }

    fn start_request(&mut self, user: &'static str) -> pb::StartRequest {
        self.spawns += 1;
        let token = format!("tok{}x{}secret", self.seed, self.spawns);
        self.secrets.push(token.clone());
        let gpus = u32::try_from(self.rng.below(2)).unwrap();
        pb::StartRequest {
            key: common::key(user, ""),
            spawn_id: format!("s{}", self.spawns),
            image: self.rng.pick(&IMAGES).to_owned(),
            env: [
                ("JUPYTERHUB_API_TOKEN".to_owned(), token.clone()),
                ("JUPYTERHUB_OAUTH_CLIENT_SECRET".to_owned(), token),
                ("PLAIN".to_owned(), "not secret".to_owned()),
            ]
            .into(),
            resources: Some(pb::Resources {
                gpus,
                gpu_class: "gpu".to_owned(),
                ..Default::default()
            }),
            volumes: vec![pb::Volume {
                source: "home-{user}".to_owned(),
                target: "/home/jovyan".to_owned(),
                ..Default::default()
            }],
            resumable: self.rng.below(2) == 0,
            ready_timeout_seconds: 2,
            ..Default::default()
        }
    }

    /// A Start whose caller gives up after `patience` (`None`: waits up to `STEP_LIMIT`).
    fn start(&mut self, user: &'static str, req: pb::StartRequest, patience: Option<Duration>) {
        let spawn = req.spawn_id.clone();
        // A retry with the same spawn id joins an abandoned one.
        self.abandoned
            .retain(|(u, s, _)| !(*u == user && *s == spawn));
        let existed = self.fake.container_ids();
        self.last.insert(user, req.clone());
        let spec = StartSpec::try_from(req).unwrap();
        let rt = self.rt();
        let patience = patience.unwrap_or(STEP_LIMIT);
        // The caller's own future, polled first: an answer berthd handed over is received,
        // and a caller that gives up drops it (as a gRPC handler is dropped).
        let outcome = self.call(async move {
            tokio::select! {
                biased;
                r = rt.start(spec) => Some(r),
                () = tokio::time::sleep(patience) => None,
            }
        });
        // A spawn already answered with a server keeps it when a retry of it goes away.
        let answered = self.answered.contains(&(user, spawn.clone()));
        let result = match outcome {
            Outcome::Done(Some(r)) => {
                if r.is_ok() {
                    self.answered.push((user, spawn.clone()));
                }
                format!("{:?}", r.map(|s| s.container_id.len()))
            }
            Outcome::Done(None) | Outcome::GaveUp => {
                if !answered {
                    self.abandoned.push((user, spawn.clone(), existed.clone()));
                }
                "caller gone".to_owned()
            }
            Outcome::Crashed => {
                // As in crash(): RUNNING in the record means the answer was on its way.
                let records = FileStore::open(&self.dir).unwrap().load_all().unwrap().0;
                let on_its_way = records.iter().any(|r| {
                    r.user == user && r.spawn_id == spawn && r.status == RecordStatus::Running
                });
                if !answered && !on_its_way {
                    self.abandoned.push((user, spawn.clone(), existed.clone()));
                }
                "crash".to_owned()
            }
        };
        self.note(format!("start {user} {spawn}: {}", shorten(&result)));
    }

    fn stop(&mut self, user: &'static str) {
        let spec = StopSpec {
            now: self.rng.below(2) == 0,
            grace: Some(Duration::from_millis(50)),
            remove: self.rng.below(2) == 0,
        };
        let rt = self.rt();
        let key = ServerKey::new(user, "").unwrap();
        // After a Stop, a retry of an answered spawn is a new start (abandoned if its caller goes).
        self.answered.retain(|(u, _)| *u != user);
        let outcome = self.call(async move { rt.stop(&key, spec).await });
        let result = match outcome {
            Outcome::Done(Ok(status)) => {
                self.check_exit_code(
                    user,
                    &status.container_id,
                    status.exit_code,
                    "Stop's answer",
                );
                format!("{:?} {:?}", status.state, status.exit_code)
            }
            Outcome::Done(Err(e)) => format!("{e}"),
            Outcome::GaveUp => "caller gone".to_owned(),
            Outcome::Crashed => "crash".to_owned(),
        };
        self.note(format!(
            "stop {user} remove={}: {}",
            spec.remove,
            shorten(&result)
        ));
    }

    fn prepull(&mut self) {
        let rt = self.rt();
        let patience = Duration::from_millis(self.rng.below(3));
        let outcome = self
            .call(async move { tokio::time::timeout(patience, rt.prepull(PULLED, |_| {})).await });
        let result = match outcome {
            Outcome::Done(Ok(r)) => format!("{r:?}"),
            Outcome::Done(Err(_)) | Outcome::GaveUp => "caller gone".to_owned(),
            Outcome::Crashed => "crash".to_owned(),
        };
        self.note(format!("prepull: {}", shorten(&result)));
    }

    fn remove_volume(&mut self, user: &str) {
        let rt = self.rt();
        let name = format!("home-{user}");
        let outcome = self.call(async move { rt.remove_user_volume(&name).await });
        let result = match outcome {
            Outcome::Done(r) => format!("{:?}", r.map_err(|e| e.to_string())),
            Outcome::GaveUp => "caller gone".to_owned(),
            Outcome::Crashed => "crash".to_owned(),
        };
        self.note(format!("remove volume home-{user}: {}", shorten(&result)));
    }

    /// Records a step, with the faults injected since the previous one.
    fn note(&mut self, step: String) {
        let injected = self.fake.injected();
        let new: Vec<String> = injected
            .iter()
            .skip(self.faults_noted)
            .map(|(call, fault)| format!("{call}:{fault:?}"))
            .collect();
        self.faults_noted = injected.len();
        if new.is_empty() {
            self.steps.push(step);
        } else {
            self.steps.push(format!("{step} [{}]", new.join(", ")));
        }
    }

    fn step(&mut self) {
        self.act();
        if !self.settle() {
            self.note("still busy: crash".to_owned());
            self.crash();
            self.settle();
        }
        self.check();
    }

    fn act(&mut self) {
        let user = self.rng.pick(&USERS);
        match self.rng.below(12) {
            0..=3 => {
                let req = self.start_request(user);
                self.start(user, req, None);
            }
            4 => {
                // The caller gives up mid-way.
                let req = self.start_request(user);
                let patience = Duration::from_micros(self.rng.below(3000));
                self.start(user, req, Some(patience));
            }
            5 => match self.last.get(user).cloned() {
                Some(req) => self.start(user, req, None),
                None => self.prepull(),
            },
            6..=8 => self.stop(user),
            9 => self.prepull(),
            10 => self.remove_volume(user),
            _ => {
                self.note("crash".to_owned());
                self.crash();
            }
        }
    }

    /// Waits until no operation is under way on any key; false if that takes `SETTLE`.
    fn settle(&mut self) -> bool {
        let rt = self.rt();
        let fake = self.fake.clone();
        let quiet = self.node().tokio.block_on(async move {
            let deadline = Instant::now() + SETTLE;
            loop {
                let busy = USERS
                    .iter()
                    .any(|u| rt.busy(&ServerKey::new(u, "").unwrap()));
                if !busy {
                    return true;
                }
                if fake.crashed() || fake.hung_calls() > 0 || Instant::now() > deadline {
                    return false;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
        if self.fake.crashed() {
            self.crash();
            return false;
        }
        quiet
    }

    fn violation(&mut self, invariant: char, what: String) {
        self.found.push(Violation {
            invariant,
            seed: self.seed,
            what,
            steps: self.steps.clone(),
        });
    }

    fn check_exit_code(
        &mut self,
        user: &str,
        container_id: &str,
        exit_code: Option<i64>,
        whose: &str,
    ) {
        let Some(code) = exit_code else {
            return;
        };
        // A status without a container id speaks of the key's last container, removed since:
        // then some container of the key must have run.
        let ran = self.fake.history().iter().any(|e| {
            e.action == "start"
                && (e.container_id == container_id
                    || (container_id.is_empty()
                        && e.labels.get(LABEL_USER).map(String::as_str) == Some(user)))
        });
        if !ran {
            self.violation(
                'e',
                format!("{whose} claims exit code {code} for container {container_id:.12}, which never ran"),
            );
        }
    }

    /// Checks the five invariants against the engine, the state directory and the runtime.
    // Long: one block per invariant, in order, so each reads beside the others.
    fn check(&mut self) {
        self.fake.pause_faults(true);
        let rt = self.rt();
        let (capacity, pulling, statuses) = self.node().tokio.block_on(async {
            // Pulls nobody follows any more end at once; give them a moment to.
            let deadline = Instant::now() + Duration::from_millis(50);
            while !rt.pulling().is_empty() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let statuses: Vec<_> = USERS
                .iter()
                .map(|u| rt.poll(&ServerKey::new(u, "").unwrap()))
                .collect();
            (rt.capacity().await, rt.pulling(), statuses)
        });
        let containers: Vec<_> = self
            .fake
            .container_ids()
            .into_iter()
            .filter_map(|id| {
                Some((
                    self.fake.container(&id)?,
                    self.fake.spec_of(&id)?,
                    self.fake.files_of(&id),
                ))
            })
            .collect();

        // (a) Devices, slots and pulls.
        let running: Vec<_> = containers
            .iter()
            .filter(|(c, _, _)| c.status == RunStatus::Running)
            .collect();
        let mut held: BTreeMap<String, u32> = BTreeMap::new();
        for (c, _, _) in &running {
            for d in c
                .label(LABEL_DEVICES)
                .unwrap_or("")
                .split(',')
                .filter(|d| !d.is_empty())
            {
                *held
                    .entry(d.split('/').next().unwrap().to_owned())
                    .or_default() += 1;
            }
        }
        for class in &capacity.devices {
            let by_running = held.get(&class.class).copied().unwrap_or(0);
            if class.committed != by_running {
                self.violation(
                    'a',
                    format!(
                        "class {}: {} device(s) committed, running containers hold {by_running}",
                        class.class, class.committed
                    ),
                );
            }
        }
        if capacity.running as usize != running.len() {
            self.violation(
                'a',
                format!(
                    "{} server slot(s) held, {} container(s) run",
                    capacity.running,
                    running.len()
                ),
            );
        }
        if !pulling.is_empty() {
            self.violation('a', format!("pulls nobody follows go on: {pulling:?}"));
        }

        // (b) Secrets.
        for (c, spec, files) in &containers {
            for secret in self.secrets.clone() {
                if c.label(LABEL_RESUMABLE) == Some("true")
                    && spec.env.iter().any(|e| e.contains(&secret))
                {
                    self.violation('b', format!("resumable container {:.12} ({:?}) has a per-spawn secret in its config", c.id, c.status));
                }
                if c.labels.values().any(|v| v.contains(&secret)) {
                    self.violation(
                        'b',
                        format!("container {:.12} has a per-spawn secret in a label", c.id),
                    );
                }
                for (path, bytes) in files {
                    let holds = String::from_utf8_lossy(bytes).contains(&secret);
                    if holds && c.status != RunStatus::Running {
                        self.violation('b', format!(
                            "container {:.12} ({:?}, not running the wrapper) keeps a per-spawn secret in {path}",
                            c.id, c.status
                        ));
                    }
                }
            }
        }
        for file in files_under(&self.dir) {
            let text =
                String::from_utf8_lossy(&std::fs::read(&file).unwrap_or_default()).into_owned();
            if self.secrets.iter().any(|s| text.contains(s.as_str())) {
                self.violation('b', format!("{} holds a per-spawn secret", file.display()));
            }
        }

        // (c) Tracking.
        let records = FileStore::open(&self.dir).unwrap().load_all().unwrap().0;
        for (c, _, _) in &containers {
            let user = c.label(LABEL_USER).unwrap_or("");
            let spawn = c.label(LABEL_SPAWN_ID).unwrap_or("");
            let tracked = records.iter().any(|r| {
                r.user == user
                    && r.status != RecordStatus::Absent
                    && (r.container_id == c.id
                        || (r.container_id.is_empty() && r.spawn_id == spawn))
            });
            if !tracked {
                let r = records.iter().find(|r| r.user == user);
                self.violation('c', format!(
                    "container {:.12} of {user} ({:?}) is tracked by no live record (record: {:?})",
                    c.id,
                    c.status,
                    r.map(|r| (r.status, r.container_id.get(..12).unwrap_or(""), r.spawn_id.clone()))
                ));
            }
        }

        // (d) Abandoned Starts.
        for (user, spawn, existed) in self.abandoned.clone() {
            for (c, _, _) in &containers {
                if c.label(LABEL_USER) == Some(user)
                    && !existed.contains(&c.id)
                    && c.label(LABEL_SPAWN_ID) == Some(spawn.as_str())
                {
                    let r = records.iter().find(|r| r.user == user);
                    self.violation('d', format!(
                        "spawn {spawn} of {user}, whose caller went away, left container {:.12} ({:?}; record {:?})",
                        c.id, c.status,
                        r.map(|r| (r.status, r.container_id.get(..12).unwrap_or(""), r.spawn_id.clone()))
                    ));
                }
            }
            let runs_for_it = records.iter().any(|r| {
                r.user == user
                    && r.spawn_id == spawn
                    && running.iter().any(|(c, _, _)| c.id == r.container_id)
            });
            if runs_for_it {
                self.violation(
                    'd',
                    format!("a server runs for spawn {spawn} of {user}, whose caller went away"),
                );
            }
        }

        // (e) Exit codes.
        for s in statuses {
            let whose = format!("the status of {}", s.key.user());
            self.check_exit_code(s.key.user(), &s.container_id, s.exit_code, &whose);
        }
        self.fake.pause_faults(false);
    }

    /// Removes every container (their servers run on the shared background runtime).
    fn clean_up(mut self) {
        let fake = self.fake.clone();
        fake.set_faults(None);
        fake.clear_crash();
        self.node = None;
        let tokio = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        tokio.block_on(async {
            for id in fake.container_ids() {
                fake.remove(&id).await.unwrap();
            }
        });
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A state directory in memory where the host has one: a run writes thousands of records,
/// each fsynced, and a disk would make the property run take minutes.
fn quick_state_dir() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.join(common::unique("berth-faults"))
    } else {
        state_dir()
    }
}

fn shorten(s: &str) -> String {
    s.chars().take(120).collect()
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// The seeds to run: 1 to `sequences` (`BERTH_FAULT_SEQUENCES` overrides it), or the one of
/// `BERTH_FAULT_SEED`.
fn seeds(sequences: u64) -> Vec<u64> {
    let sequences = match std::env::var("BERTH_FAULT_SEQUENCES") {
        Ok(n) => n.parse().expect("BERTH_FAULT_SEQUENCES is a number"),
        Err(_) => sequences,
    };
    match std::env::var("BERTH_FAULT_SEED") {
        Ok(s) => vec![s.parse().expect("BERTH_FAULT_SEED is a number")],
        Err(_) => (1..=sequences).collect(),
    }
}

/// Runs `work` over `seeds` on a few threads, each with its own share of the seeds and its own
/// runtime for the fake's containers; the results of every thread.
fn on_threads<T: Send>(
    seeds: &[u64],
    work: impl Fn(&[u64], &tokio::runtime::Handle) -> T + Sync,
) -> Vec<T> {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 4));
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let mine: Vec<u64> = seeds.iter().copied().skip(t).step_by(threads).collect();
                let work = &work;
                scope.spawn(move || {
                    let background = tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(1)
                        .enable_all()
                        .build()
                        .unwrap();
                    work(&mine, background.handle())
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    })
}

thread_local! {
    /// berthd's log lines of the sequence running on this thread (its runtime is this
    /// thread's), with `BERTH_FAULT_LOG`.
    static LOG: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Writes log lines to this thread's [`LOG`].
struct SequenceLog;

impl std::io::Write for SequenceLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOG.with(|l| l.borrow_mut().extend_from_slice(buf));
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// One sequence of `seed`, with `mutation` switched on if given; the violations it found.
fn run_one(
    seed: u64,
    background: &tokio::runtime::Handle,
    mutation: Option<&'static str>,
) -> Vec<Violation> {
    let _on = mutation.map(berthd::mutation::enable);
    let mut seq = Sequence::new(seed, background);
    for _ in 0..STEPS {
        seq.step();
    }
    let found = std::mem::take(&mut seq.found);
    seq.clean_up();
    let log = LOG.with(|l| std::mem::take(&mut *l.borrow_mut()));
    if !found.is_empty() && !log.is_empty() {
        eprintln!(
            "---- seed {seed}: berthd's log\n{}---- seed {seed}: steps\n    {}",
            String::from_utf8_lossy(&log),
            found[0].steps.join("\n    ")
        );
    }
    found
}

#[test]
fn random_faults_crashes_and_cancellations_keep_every_invariant() {
    if std::env::var_os("BERTH_FAULT_LOG").is_some() {
        // berthd's log of each sequence that breaks an invariant, printed after it.
        tracing_subscriber::fmt()
            .with_env_filter("berthd=debug")
            .with_ansi(false)
            .with_writer(|| SequenceLog)
            .init();
    }
    let began = Instant::now();
    let seeds = seeds(SEQUENCES);
    let found: Vec<Violation> = on_threads(&seeds, |mine, bg| {
        mine.iter()
            .flat_map(|&seed| run_one(seed, bg, None))
            .collect::<Vec<_>>()
    })
    .into_iter()
    .flatten()
    .collect();
    let elapsed = began.elapsed();
    eprintln!("{} sequences of {STEPS} steps in {elapsed:?}", seeds.len());
    let mut first: BTreeMap<char, (usize, &Violation)> = BTreeMap::new();
    for v in &found {
        first.entry(v.invariant).or_insert((0, v)).0 += 1;
    }
    let report: Vec<String> = first
        .values()
        .map(|(n, v)| format!("{n} violation(s), first: {v}"))
        .collect();
    if std::env::var_os("BERTH_FAULT_ALL").is_some() {
        for v in &found {
            eprintln!("{v}");
        }
    }
    assert!(found.is_empty(), "{}", report.join("\n"));
    assert!(
        elapsed < Duration::from_secs(60),
        "{} sequences took {elapsed:?}",
        seeds.len()
    );
}

/// Turns `mutation` on and asserts the property run catches it: some sequence breaks
/// `invariant` with the mutation and keeps it when the same seed runs without.
fn caught(mutation: &'static str, invariant: char) {
    let breaks = |v: &[Violation]| v.iter().any(|v| v.invariant == invariant);
    let seeds = seeds(SEQUENCES);
    let witnesses: Vec<Option<u64>> = on_threads(&seeds, |mine, bg| {
        mine.iter().copied().find(|&seed| {
            breaks(&run_one(seed, bg, Some(mutation))) && !breaks(&run_one(seed, bg, None))
        })
    });
    assert!(
        witnesses.iter().any(Option::is_some),
        "with {mutation} on, no sequence of {} broke ({invariant}) that kept it without",
        seeds.len()
    );
}

#[test]
fn mutation_a_stopped_container_keeping_its_devices_is_caught() {
    caught("devices.held_by_stopped", 'a');
}

#[test]
fn mutation_b_the_token_in_a_resumable_containers_config_is_caught() {
    caught("resume.secret_in_config", 'b');
}

#[test]
fn mutation_c_a_stop_that_leaves_the_removed_container_is_caught() {
    caught("stop.skip_remove", 'c');
}

#[test]
fn mutation_d_a_start_carrying_on_when_its_callers_are_gone_is_caught() {
    caught("start.ignore_abandon", 'd');
}

#[test]
fn mutation_e_an_exit_code_for_a_container_that_never_ran_is_caught() {
    caught("start.exit_code_of_unstarted", 'e');
}
