//! Resume: a Start of a key whose kept container is stopped restarts that same container when
//! nothing that matters changed, so what the user installed into its writable layer survives
//! (DockerSpawner's `remove = False`); on drift it is recreated and the change is named.
//!
//! **The per-spawn env.** The hub mints a new API token (and OAuth client settings) for every
//! spawn, but Docker cannot change a container's env. A resumable container is therefore
//! created with a node-controlled entrypoint wrapper (`/bin/sh -c`, below) in front of the
//! image's own entrypoint and command, and without the per-spawn variables in its Docker env.
//! Before every start berthd writes them into `/.berth/spawn-env` in the container with
//! Docker's archive API (nothing on berthd's disk); the wrapper exports them, deletes the file
//! and `exec`s the real command, so the server runs as PID 1's child as before and the token
//! lives in the file only between the upload and the start. Docker's container config never
//! holds the token either. Why not a tmpfs: Docker's archive API writes beneath a tmpfs mount
//! of a stopped container, where the running container cannot see it. The cost: a resumable
//! container's image needs `/bin/sh` (every Jupyter image has one).
//!
//! **What matters** ([`Fingerprint`]): the image by id (a re-tagged image counts as changed),
//! the command, the env other than the per-spawn variables (by value), resources, mounts,
//! ports and container options. Each is kept as a digest in a label of the container, so a
//! drift is named by aspect ("image changed") without keeping any env value.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::docker::{
    ContainerEngine, ContainerInfo, LABEL_DEVICES, LABEL_FINGERPRINT, LABEL_RESUMABLE, NewFile,
    RunStatus,
};
use crate::runtime::progress::{Event, Phase, Reporter};
use crate::runtime::{Error, Runtime, Started};
use crate::spec::{Env, StartSpec};
use crate::state::RecordStatus;

/// The directory, relative to the container's root, that holds the per-spawn env file. Any
/// user may delete in it, so the wrapper deletes the file whatever user the server runs as.
pub const ENV_DIR: &str = ".berth";
/// The per-spawn env file, relative to the container's root.
pub const ENV_FILE: &str = ".berth/spawn-env";
/// The entrypoint wrapper: exports the per-spawn env, deletes it, runs the real command.
pub const WRAPPER: &str = r#"f=/.berth/spawn-env; if [ -r "$f" ]; then set -a; . "$f"; set +a; rm -f "$f"; fi; exec "$@""#;
/// `$0` of the wrapper, as `ps` shows it until the `exec`.
pub const WRAPPER_NAME: &str = "berth-spawn-env";

/// Env variables whose value the hub changes at every spawn of the same server (JupyterHub's
/// `Spawner.get_env`): the server's API token (and its deprecated alias) and the OAuth
/// client. They are refreshed on every resume; a change of any other variable is a drift.
pub fn is_per_spawn(key: &str) -> bool {
    matches!(
        key,
        "JUPYTERHUB_API_TOKEN" | "JPY_API_TOKEN" | "JUPYTERHUB_CLIENT_ID"
    ) || key.starts_with("JUPYTERHUB_OAUTH_")
}

/// The Docker entrypoint and command of a resumable container whose real argv is `argv`.
pub fn wrapped(argv: Vec<String>) -> (Vec<String>, Vec<String>) {
    let entrypoint = ["/bin/sh", "-c", WRAPPER, WRAPPER_NAME]
        .map(str::to_owned)
        .to_vec();
    (entrypoint, argv)
}

/// Where the internal_ssl files go in the container, relative to its root.
pub const CERT_DIR: &str = ".berth/certs";

/// The internal_ssl files of a spawn (new at every spawn, like the token; never a drift).
pub fn cert_files(c: &crate::spec::Certs) -> Vec<NewFile> {
    let file = |name: &str, bytes: &[u8]| NewFile {
        path: format!("{CERT_DIR}/{name}"),
        // Readable by the server whatever user it runs as (berthd does not know its uid).
        mode: 0o444,
        contents: Some(bytes.to_vec()),
    };
    vec![
        NewFile {
            path: ENV_DIR.to_owned(),
            mode: 0o777,
            contents: None,
        },
        NewFile {
            path: CERT_DIR.to_owned(),
            mode: 0o755,
            contents: None,
        },
        file("server.key", &c.key),
        file("server.crt", &c.cert),
        file("ca.crt", &c.ca),
    ]
}

/// The per-spawn variables of `env` as the file the wrapper sources: `KEY='value'` lines.
pub fn env_files(env: &Env) -> Vec<NewFile> {
    let mut text = String::new();
    for (k, v) in env.entries().filter(|(k, _)| is_per_spawn(k)) {
        text.push_str(k);
        text.push_str("='");
        text.push_str(&v.replace('\'', r"'\''"));
        text.push_str("'\n");
    }
    vec![
        NewFile {
            path: ENV_DIR.to_owned(),
            mode: 0o777,
            contents: None,
        },
        NewFile {
            path: ENV_FILE.to_owned(),
            mode: 0o444,
            contents: Some(text.into_bytes()),
        },
    ]
}

/// What a resume compares, by aspect: the image id, and a digest of each other aspect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint(BTreeMap<String, String>);

/// The aspects, in the order a drift names them.
pub const ASPECTS: [&str; 7] = [
    "image",
    "command",
    "env",
    "resources",
    "mounts",
    "ports",
    "options",
];

fn digest(parts: &[String]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    hex::encode(&h.finalize()[..8])
}

impl Fingerprint {
    /// The fingerprint of `spec` run from the image with id `image_id`, published on
    /// `host_ip`.
    pub fn of(spec: &StartSpec, image_id: &str, host_ip: &str) -> Self {
        let command: Vec<String> = spec
            .cmd
            .iter()
            .map(|c| format!("cmd {c}"))
            .chain(spec.args.iter().map(|a| format!("arg {a}")))
            .collect();
        let env: Vec<String> = spec
            .env
            .entries()
            .filter(|(k, _)| !is_per_spawn(k))
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let mounts: Vec<String> = spec
            .volumes
            .iter()
            .map(|v| format!("{}:{}:{}:{}", v.host_path, v.name, v.target, v.read_only))
            .collect();
        let mut options: Vec<String> = spec
            .labels
            .iter()
            .map(|(k, v)| format!("label {k}={v}"))
            .collect();
        options.push(format!("{:?}", spec.host));
        options.push(format!("{:?}", spec.options));
        let parts = [
            ("image", image_id.to_owned()),
            ("command", digest(&command)),
            ("env", digest(&env)),
            ("resources", digest(&[format!("{:?}", spec.resources)])),
            ("mounts", digest(&mounts)),
            (
                "ports",
                digest(&[spec.port.to_string(), host_ip.to_owned()]),
            ),
            ("options", digest(&options)),
        ];
        Self(parts.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
    }

    /// The label value: `aspect=value` pairs separated by `;`.
    pub fn to_label(&self) -> String {
        self.0
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(";")
    }

    /// Parses a label value; `None` when it is not one.
    pub fn parse(label: &str) -> Option<Self> {
        let map: BTreeMap<String, String> = label
            .split(';')
            .map(|p| p.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
            .collect::<Option<_>>()?;
        ASPECTS
            .iter()
            .all(|a| map.contains_key(*a))
            .then_some(Self(map))
    }

    /// The aspects in which `self` (the container's) differs from `now` (the Start's).
    pub fn changes(&self, now: &Self) -> Vec<&'static str> {
        ASPECTS
            .into_iter()
            .filter(|a| self.0.get(*a) != now.0.get(*a))
            .collect()
    }
}

/// Why a stopped container cannot be resumed: what changed, or why it cannot be compared.
fn drift(spec: &StartSpec, c: &ContainerInfo, now: &Fingerprint) -> Vec<String> {
    if !spec.resumable {
        return vec!["the server is not kept between spawns (remove)".to_owned()];
    }
    if c.status != RunStatus::Exited {
        return vec![format!("the container is {:?}", c.status).to_lowercase()];
    }
    // Devices are assigned afresh at every start (the ones this container was made with may
    // be another server's now), and a container's devices cannot be changed: never resume one.
    if spec.gpus.count > 0 || c.label(LABEL_DEVICES).is_some_and(|d| !d.is_empty()) {
        return vec!["devices are assigned afresh at each start".to_owned()];
    }
    let then = c
        .label(LABEL_FINGERPRINT)
        .filter(|_| c.label(LABEL_RESUMABLE) == Some("true"))
        .and_then(Fingerprint::parse);
    match then {
        None => vec!["the container was not made to be resumed".to_owned()],
        // The label says what berthd asked for; the container's own config says what it is:
        // a `docker update` by hand changes the one and not the other.
        Some(then) => then
            .changes(now)
            .into_iter()
            .map(|a| format!("{a} changed"))
            .chain(Limits::on(c).changed(Limits::of(spec)))
            .collect(),
    }
}

/// The per-spawn files of a kept container, overwritten empty: what stays of a spawn's
/// secrets in its writable layer once the spawn failed.
pub fn scrubbed() -> Vec<NewFile> {
    let empty = |path: &str| NewFile {
        path: path.to_owned(),
        mode: 0o444,
        contents: Some(Vec::new()),
    };
    vec![
        NewFile {
            path: ENV_DIR.to_owned(),
            mode: 0o777,
            contents: None,
        },
        empty(ENV_FILE),
        NewFile {
            path: CERT_DIR.to_owned(),
            mode: 0o755,
            contents: None,
        },
        empty(&format!("{CERT_DIR}/server.key")),
    ]
}

impl<E: ContainerEngine> Runtime<E> {
    /// The key's stopped container `c` of an earlier spawn: resumed when the Start asks for a
    /// resumable server and nothing that matters changed; else removed (named volumes stay)
    /// and `None`: go on and create, with `note` saying why it was not resumed.
    pub(in crate::runtime) async fn resume_or_clear(
        &self,
        spec: &StartSpec,
        c: &ContainerInfo,
        progress: &Reporter,
        cancel: &CancellationToken,
        note: &mut String,
    ) -> Option<Result<Started, Error>> {
        let (user, server) = (spec.key.user(), spec.key.server());
        if spec.resumable {
            let image = match self.inner.engine.image(&spec.image).await {
                Ok(Some(i)) => Some(i),
                // The reference no longer names an image here (re-tagged away, or never
                // pulled): the image changed; recreating pulls it by the node's pull policy.
                Ok(None) => None,
                Err(e) => return Some(Err(e.into())),
            };
            let host_ip = self.inner.cfg.publish_host_ip.to_string();
            let changes = match image {
                Some(image) => drift(spec, c, &Fingerprint::of(spec, &image.id, &host_ip)),
                None => vec!["image changed".to_owned()],
            };
            if changes.is_empty() {
                return Some(self.resume(spec, c, progress, cancel).await);
            }
            let why = changes.join(", ");
            *note = format!("recreated the stopped container: {why}");
            tracing::info!(user, server, container = %c.id, changes = %why, "recreating the stopped container");
            progress.emit(Event::new(
                Phase::Creating,
                10,
                format!("Recreating your server: {why}"),
            ));
        } else {
            tracing::info!(user, server, container = %c.id, "removing the stopped container of an earlier spawn");
        }
        if let Err(e) = self.inner.engine.remove(&c.id).await {
            return Some(Err(e.into()));
        }
        self.inner.view.removed(&spec.key, &c.id);
        None
    }

    /// Starts the kept container `c` again for the spawn of `spec`.
    async fn resume(
        &self,
        spec: &StartSpec,
        c: &ContainerInfo,
        progress: &Reporter,
        cancel: &CancellationToken,
    ) -> Result<Started, Error> {
        self.inner.admission.admit(&self.inner.view, spec)?;
        self.inner.view.capacity_changed();
        self.inner
            .records
            .save(&spec.key, |r| {
                r.spawn_id.clone_from(&spec.spawn_id);
                r.spec_hash = spec.spec_hash();
                r.container_id.clone_from(&c.id);
                r.status = RecordStatus::Starting;
                r.exit_code = None;
                r.started_ms = crate::state::now_ms();
                r.fence_after_seconds = spec.fence.to_record();
                r.fenced = false;
            })
            .await?;
        tracing::info!(user = spec.key.user(), server = spec.key.server(), container = %c.id, "resuming the stopped container");
        progress.emit(Event::new(
            Phase::Starting,
            30,
            "Resuming your stopped server",
        ));
        let pins = self.pin_host_paths(spec).await?;
        let started = self
            .launch(spec, &c.id, progress, cancel, None, pins)
            .await?;
        Ok(Started {
            note: "resumed the stopped container".to_owned(),
            ..started
        })
    }
}

/// The resource limits Docker holds for a container of `spec`, as inspect reports them
/// (0 = none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::runtime) struct Limits {
    pub(in crate::runtime) memory: i64,
    pub(in crate::runtime) memory_reservation: i64,
    pub(in crate::runtime) nano_cpus: i64,
    pub(in crate::runtime) cpu_shares: i64,
    pub(in crate::runtime) pids_limit: i64,
}

impl Limits {
    pub(in crate::runtime) fn of(spec: &StartSpec) -> Self {
        let r = spec.resources;
        let to_i64 = |b: Option<u64>| b.map_or(0, |b| i64::try_from(b).unwrap_or(i64::MAX));
        #[allow(clippy::cast_possible_truncation)]
        let cores = |c: f64, unit: f64| (c * unit).round() as i64;
        Self {
            memory: to_i64(r.mem_limit),
            memory_reservation: to_i64(r.mem_guarantee),
            nano_cpus: r.cpu_limit.map_or(0, |c| cores(c, 1e9)),
            cpu_shares: r.cpu_guarantee.map_or(0, |c| cores(c, 1024.0).max(2)),
            pids_limit: spec.options.pids_limit.unwrap_or(0),
        }
    }

    /// The limits container `c` has now.
    pub(in crate::runtime) fn on(c: &ContainerInfo) -> Self {
        Self {
            memory: c.memory,
            memory_reservation: c.memory_reservation,
            nano_cpus: c.nano_cpus,
            cpu_shares: c.cpu_shares,
            pids_limit: c.pids_limit,
        }
    }

    /// What differs between `self` (the container's) and `want`, as drift reasons.
    pub(in crate::runtime) fn changed(self, want: Self) -> Vec<String> {
        [
            ("memory limit", self.memory, want.memory),
            (
                "memory guarantee",
                self.memory_reservation,
                want.memory_reservation,
            ),
            ("cpu limit", self.nano_cpus, want.nano_cpus),
            ("cpu guarantee", self.cpu_shares, want.cpu_shares),
            ("pids_limit", self.pids_limit, want.pids_limit),
        ]
        .into_iter()
        .filter(|(_, have, want)| have != want)
        .map(|(what, have, want)| {
            format!(
                "{what} changed outside berth (the container has {have}, the start asks {want})"
            )
        })
        .collect()
    }
}

#[cfg(test)]
mod tests;
