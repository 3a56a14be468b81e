//! Image pulls: the pull policy of a Start, one pull per image however many spawns need it
//! (each follows it; it is cancelled only when none follows any more), its per-layer bytes
//! tallied into progress, and its failure classified by cause.
//!
//! A flight is keyed by the image's full reference (and, for a Start's own pull secret, a
//! digest of it, so a spawn never rides on credentials it was not given). Its state is a
//! `watch` channel: the pull task writes the tally, followers read the newest and relay it to
//! their spawn's progress at most every [`EMIT_EVERY`].

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::docker::{ContainerEngine, EngineError, ImageInfo, PullEvent};
use crate::registry::{AuthFile, PullPolicy, RegistryAuth};
use crate::runtime::progress::pulling::PullProgress;
use crate::runtime::progress::{Event, Phase, Reporter};
use crate::runtime::{Error, Runtime};
use crate::spec::StartSpec;

/// Followers relay a pull's progress at most this often.
pub const EMIT_EVERY: Duration = Duration::from_millis(250);

/// How this node pulls; filled from `[images]`.
#[derive(Debug, Clone, Default)]
pub struct PullConfig {
    /// The policy of a Start that names none.
    pub default_policy: PullPolicy,
    /// Docker `config.json` with the node's registry credentials.
    pub auth_file: Option<PathBuf>,
    /// Longest one pull may take.
    pub timeout: Duration,
}

/// Why a pull failed, as far as Docker's answer tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullCause {
    /// No such repository or tag.
    NotFound,
    /// The registry wants credentials, or refused the ones given.
    Unauthorized,
    /// The registry could not be reached.
    RegistryUnreachable,
    /// The node's disk is full.
    DiskFull,
    /// The pull took longer than `images.pull_timeout_seconds`.
    Timeout,
    /// Anything else.
    Other,
}

impl PullCause {
    /// The `cause` metadata of IMAGE_PULL_FAILED.
    pub fn code(self) -> &'static str {
        match self {
            Self::NotFound => "not_found",
            Self::Unauthorized => "unauthorized",
            Self::RegistryUnreachable => "registry_unreachable",
            Self::DiskFull => "disk_full",
            Self::Timeout => "timeout",
            Self::Other => "other",
        }
    }

    /// Docker tells why a pull failed only in English; this is the one place that reads it.
    fn of(message: &str) -> Self {
        let m = message.to_ascii_lowercase();
        let has = |words: &[&str]| words.iter().any(|w| m.contains(w));
        if has(&["no space left on device"]) {
            Self::DiskFull
        } else if has(&[
            "unauthorized",
            "authentication required",
            "denied",
            "no basic auth credentials",
            "incorrect username or password",
        ]) {
            Self::Unauthorized
        } else if has(&["manifest unknown", "not found", "name unknown"]) {
            Self::NotFound
        } else if has(&[
            "connection refused",
            "no such host",
            "dial tcp",
            "i/o timeout",
            "tls handshake",
            "server gave http response",
            "connection reset",
            "no route to host",
        ]) {
            Self::RegistryUnreachable
        } else {
            Self::Other
        }
    }
}

impl fmt::Display for PullCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NotFound => "the registry has no such repository or tag",
            Self::Unauthorized => "the registry refused access (authentication required or denied)",
            Self::RegistryUnreachable => "the registry cannot be reached",
            Self::DiskFull => "the node's disk is full",
            Self::Timeout => "the pull took too long",
            Self::Other => "the pull failed",
        })
    }
}

/// A failed pull, shared by every spawn that followed it.
#[derive(Debug, Clone)]
pub struct PullFailure {
    /// Why.
    pub cause: PullCause,
    /// Docker's words.
    pub detail: String,
    /// Docker itself was unreachable (not the registry): the node's problem, not the image's.
    engine_down: bool,
}

#[derive(Debug, Default, Clone)]
struct Layer {
    downloaded: u64,
    size: Option<u64>,
    download_done: bool,
    extracted: f64,
    done: bool,
    /// Already on the node: no bytes to download.
    present: bool,
}

/// The per-layer tally of one pull.
#[derive(Debug, Default)]
pub struct Tally {
    image: String,
    layers: BTreeMap<String, Layer>,
    fraction: f64,
}

impl Tally {
    /// A tally of nothing yet.
    pub fn new(image: &str) -> Self {
        Self {
            image: image.to_owned(),
            ..Self::default()
        }
    }

    /// Takes one report into account; false when it changed nothing.
    pub fn apply(&mut self, ev: &PullEvent) -> bool {
        let status = ev.status.as_str();
        let known = [
            "Pulling fs layer",
            "Waiting",
            "Downloading",
            "Verifying Checksum",
            "Download complete",
            "Extracting",
            "Pull complete",
            "Already exists",
        ];
        if ev.layer.is_empty() || !known.contains(&status) {
            // "Pulling from ...", "Digest: ...", "Status: ...", "Retrying in ...".
            return false;
        }
        let l = self.layers.entry(ev.layer.clone()).or_default();
        match status {
            "Downloading" => {
                if let Some(t) = ev.total.filter(|t| *t > 0) {
                    l.size = Some(t);
                }
                let cur = ev.current.unwrap_or(0);
                l.downloaded = l.downloaded.max(cur.min(l.size.unwrap_or(cur)));
            }
            "Verifying Checksum" | "Download complete" => l.finish_download(),
            "Extracting" => {
                l.finish_download();
                if let (Some(c), Some(t)) = (ev.current, ev.total.filter(|t| *t > 0)) {
                    #[allow(clippy::cast_precision_loss)]
                    let f = (c as f64 / t as f64).clamp(0.0, 1.0);
                    l.extracted = l.extracted.max(f);
                }
            }
            "Pull complete" => {
                l.finish_download();
                l.extracted = 1.0;
                l.done = true;
            }
            "Already exists" => {
                l.present = true;
                l.done = true;
            }
            _ => {}
        }
        self.refresh_fraction();
        true
    }

    /// The share of the fresh layers' bytes fetched (80 %) and unpacked (20 %). Layers already
    /// on the node count for nothing: they take no time, and counting them made a pull whose
    /// first report was "Already exists" look done before its first byte.
    fn refresh_fraction(&mut self) {
        let fresh: Vec<&Layer> = self.layers.values().filter(|l| !l.present).collect();
        let sizes: Vec<u64> = fresh.iter().filter_map(|l| l.size).collect();
        #[allow(clippy::cast_precision_loss)]
        let mean = if sizes.is_empty() {
            1.0
        } else {
            sizes.iter().sum::<u64>() as f64 / sizes.len() as f64
        };
        let (mut done, mut all) = (0.0, 0.0);
        for l in fresh {
            #[allow(clippy::cast_precision_loss)]
            let weight = l.size.map_or(mean, |s| s as f64);
            #[allow(clippy::cast_precision_loss)]
            let got = if l.done {
                1.0
            } else {
                let dl = match l.size {
                    Some(s) if s > 0 => (l.downloaded as f64 / s as f64).min(1.0),
                    _ if l.download_done => 1.0,
                    _ => 0.0,
                };
                0.8 * dl + 0.2 * l.extracted
            };
            done += weight * got;
            all += weight;
        }
        if all > 0.0 {
            // Never backwards, and never full before the pull ends.
            self.fraction = self.fraction.max((done / all).min(0.999));
        }
    }

    /// The progress so far.
    pub fn progress(&self) -> PullProgress {
        let fresh = self.layers.values().filter(|l| !l.present);
        PullProgress {
            image: self.image.clone(),
            bytes_done: fresh.clone().map(|l| l.downloaded).sum(),
            bytes_total: fresh.filter_map(|l| l.size).sum(),
            layers_done: count(self.layers.values().filter(|l| l.done).count()),
            layers_total: count(self.layers.len()),
            fraction: self.fraction,
        }
    }
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl Layer {
    fn finish_download(&mut self) {
        self.download_done = true;
        if let Some(s) = self.size {
            self.downloaded = s;
        }
    }
}

/// What followers see of a flight.
#[derive(Debug, Clone, Default)]
struct FlightState {
    progress: PullProgress,
    /// Set once, when the pull ends.
    outcome: Option<Result<(), PullFailure>>,
}

struct Flight {
    state: watch::Sender<FlightState>,
    cancel: CancellationToken,
    /// Guarded by the registry's lock.
    followers: std::sync::atomic::AtomicUsize,
}

/// The pulls under way, one flight per image (and pull secret).
#[derive(Default)]
pub struct Pulls {
    flights: Mutex<HashMap<String, Arc<Flight>>>,
}

impl Pulls {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<Flight>>> {
        self.flights
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Follows the flight of `key`, making it when there is none (`true`: the caller starts
    /// the pull with the flight's token).
    fn join(self: &Arc<Self>, key: &str, image: &str) -> (Follower, bool) {
        use std::sync::atomic::Ordering::SeqCst;
        let mut flights = self.lock();
        let (flight, new) = match flights.get(key) {
            Some(f) => (f.clone(), false),
            None => {
                let state = FlightState {
                    progress: PullProgress {
                        image: image.to_owned(),
                        ..PullProgress::default()
                    },
                    outcome: None,
                };
                let f = Arc::new(Flight {
                    state: watch::channel(state).0,
                    cancel: CancellationToken::new(),
                    followers: 0.into(),
                });
                flights.insert(key.to_owned(), f.clone());
                (f, true)
            }
        };
        flight.followers.fetch_add(1, SeqCst);
        let rx = flight.state.subscribe();
        let follower = Follower {
            pulls: self.clone(),
            key: key.to_owned(),
            flight,
            rx,
        };
        (follower, new)
    }

    /// Forgets `flight` once its pull ended (a later spawn starts a new one).
    fn finished(&self, key: &str, flight: &Arc<Flight>) {
        let mut flights = self.lock();
        if flights.get(key).is_some_and(|f| Arc::ptr_eq(f, flight)) {
            flights.remove(key);
        }
    }

    /// Images being pulled now.
    pub fn images(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .lock()
            .values()
            .map(|f| f.state.borrow().progress.image.clone())
            .collect();
        v.sort();
        v.dedup();
        v
    }
}

/// One spawn following a flight; dropping the last follower cancels the pull.
struct Follower {
    pulls: Arc<Pulls>,
    key: String,
    flight: Arc<Flight>,
    rx: watch::Receiver<FlightState>,
}

impl Drop for Follower {
    fn drop(&mut self) {
        use std::sync::atomic::Ordering::SeqCst;
        let mut flights = self.pulls.lock();
        if self.flight.followers.fetch_sub(1, SeqCst) == 1 {
            // Under the lock: no one can join this flight between the count and the removal.
            if flights
                .get(&self.key)
                .is_some_and(|f| Arc::ptr_eq(f, &self.flight))
            {
                flights.remove(&self.key);
            }
            self.flight.cancel.cancel();
        }
    }
}

fn flight_key(image: &str, secret: Option<&RegistryAuth>) -> String {
    match secret {
        None => image.to_owned(),
        Some(a) => {
            let mut h = Sha256::new();
            h.update(a.username.as_bytes());
            h.update([0]);
            h.update(a.password.as_bytes());
            format!("{image}\0{}", hex::encode(h.finalize()))
        }
    }
}

impl<E: ContainerEngine> Runtime<E> {
    /// The image of `spec`, pulled first as its pull policy says. A failed pull creates
    /// nothing; the caller has only admitted the spawn.
    pub(in crate::runtime) async fn ensure_image(
        &self,
        spec: &StartSpec,
        progress: &Reporter,
        cancel: &CancellationToken,
    ) -> Result<ImageInfo, Error> {
        let policy = spec
            .pull_policy
            .unwrap_or(self.inner.cfg.pulls.default_policy);
        let engine = &self.inner.engine;
        if policy != PullPolicy::Always
            && let Some(image) = engine.image(&spec.image).await?
        {
            return Ok(image);
        }
        if policy == PullPolicy::Never {
            return Err(Error::ImageMissing {
                image: spec.image.clone(),
                node: self.inner.cfg.node_id.clone(),
            });
        }
        let auth = match &spec.pull_secret {
            Some(secret) => Some(secret.clone()),
            None => self.node_auth(&spec.image)?,
        };
        let key = flight_key(&spec.image, spec.pull_secret.as_ref());
        let mut follower = self.follow_pull(&spec.image, &key, auth);
        let emit = |p: &PullProgress| {
            let mut ev = Event::tick(Phase::Pulling, p.percent(), p.message());
            ev.pull = Some(p.clone());
            progress.emit(ev);
        };
        follow(&mut follower, cancel, emit)
            .await
            .map_err(|e| match e {
                Relay::Cancelled => Error::Cancelled {
                    key: spec.key.clone(),
                },
                Relay::Failed(f) => self.pull_error(&spec.image, f),
            })?;
        engine.image(&spec.image).await?.ok_or_else(|| {
            self.pull_error(
                &spec.image,
                PullFailure {
                    cause: PullCause::Other,
                    detail: "the pull ended but the image is not on the node".to_owned(),
                    engine_down: false,
                },
            )
        })
    }

    /// Pulls `image` for an operator or the hub's prepull, with the node's credentials,
    /// reporting each change of progress on `progress`; dropping the future stops following
    /// (and cancels the pull if no spawn follows it).
    pub async fn prepull(
        &self,
        image: &str,
        progress: impl Fn(&PullProgress) + Send,
    ) -> Result<(), Error> {
        let auth = self.node_auth(image)?;
        let mut follower = self.follow_pull(image, &flight_key(image, None), auth);
        // Never cancelled: the caller stops following by dropping this future.
        let cancel = CancellationToken::new();
        follow(&mut follower, &cancel, progress)
            .await
            .map_err(|e| match e {
                Relay::Cancelled => {
                    Error::Internal("an uncancellable prepull was cancelled".into())
                }
                Relay::Failed(f) => self.pull_error(image, f),
            })
    }

    /// Images being pulled on this node now.
    pub fn pulling(&self) -> Vec<String> {
        self.inner.pulls.images()
    }

    fn pull_error(&self, image: &str, f: PullFailure) -> Error {
        if f.engine_down {
            return Error::Engine(EngineError::Unavailable {
                op: "pull",
                message: f.detail,
            });
        }
        Error::ImagePullFailed {
            image: image.to_owned(),
            node: self.inner.cfg.node_id.clone(),
            cause: f.cause,
            detail: f.detail,
        }
    }

    /// The node's credentials for the registry of `image`, read afresh.
    fn node_auth(&self, image: &str) -> Result<Option<RegistryAuth>, Error> {
        let Some(path) = &self.inner.cfg.pulls.auth_file else {
            return Ok(None);
        };
        let file = AuthFile::read(path).map_err(|why| Error::ImagePullFailed {
            image: image.to_owned(),
            node: self.inner.cfg.node_id.clone(),
            cause: PullCause::Other,
            detail: format!(
                "the node's registry credentials (images.registry_auth_file {}) {why}",
                path.display()
            ),
        })?;
        Ok(file.for_image(image).cloned())
    }

    /// Follows the flight of `key`, starting the pull when none is under way.
    fn follow_pull(&self, image: &str, key: &str, auth: Option<RegistryAuth>) -> Follower {
        let (follower, new) = self.inner.pulls.join(key, image);
        if new {
            let rt = self.clone();
            let flight = follower.flight.clone();
            let (image, key) = (image.to_owned(), key.to_owned());
            tokio::spawn(async move {
                rt.run_pull(&image, &key, auth.as_ref(), &flight).await;
            });
        }
        follower
    }

    async fn run_pull(&self, image: &str, key: &str, auth: Option<&RegistryAuth>, f: &Arc<Flight>) {
        let started = tokio::time::Instant::now();
        tracing::info!(image, credentials = auth.is_some(), "pulling image");
        let timeout = self.inner.cfg.pulls.timeout;
        let outcome = tokio::select! {
            r = self.drive_pull(image, auth, f) => r,
            () = tokio::time::sleep(timeout) => Err(PullFailure {
                cause: PullCause::Timeout,
                detail: format!("no end after {timeout:?} (images.pull_timeout_seconds)"),
                engine_down: false,
            }),
            () = f.cancel.cancelled() => {
                tracing::info!(image, "pull cancelled: no spawn follows it any more");
                Err(PullFailure { cause: PullCause::Other, detail: "cancelled".into(), engine_down: false })
            }
        };
        let p = f.state.borrow().progress.clone();
        self.inner
            .metrics
            .pull_done(started.elapsed(), outcome.is_ok(), p.bytes_done);
        match &outcome {
            Ok(()) => tracing::info!(
                image,
                bytes = p.bytes_done,
                layers = p.layers_total,
                seconds = started.elapsed().as_secs_f64(),
                "image pulled"
            ),
            Err(e) => {
                tracing::warn!(image, cause = e.cause.code(), detail = %e.detail, "pull failed")
            }
        }
        f.state.send_modify(|s| s.outcome = Some(outcome));
        self.inner.pulls.finished(key, f);
    }

    async fn drive_pull(
        &self,
        image: &str,
        auth: Option<&RegistryAuth>,
        f: &Flight,
    ) -> Result<(), PullFailure> {
        let mut stream = self.inner.engine.pull(image, auth);
        let mut tally = Tally::new(image);
        while let Some(item) = stream.next().await {
            let ev = item.map_err(|e| failure(&e))?;
            if tally.apply(&ev) {
                let p = tally.progress();
                f.state.send_modify(|s| s.progress = p);
            }
        }
        let mut p = tally.progress();
        p.fraction = 1.0;
        f.state.send_modify(|s| s.progress = p);
        Ok(())
    }
}

fn failure(e: &EngineError) -> PullFailure {
    let (detail, engine_down) = match e {
        EngineError::NotFound { what } => {
            return PullFailure {
                cause: PullCause::NotFound,
                detail: what.clone(),
                engine_down: false,
            };
        }
        EngineError::Api { message, .. } | EngineError::Conflict { message } => {
            (message.clone(), false)
        }
        EngineError::Unavailable { message, .. } => (message.clone(), true),
        EngineError::Timeout { .. } => (e.to_string(), true),
    };
    PullFailure {
        cause: PullCause::of(&detail),
        detail,
        engine_down,
    }
}

enum Relay {
    Cancelled,
    Failed(PullFailure),
}

/// Hands each new state of the flight's progress to `emit` (at most every [`EMIT_EVERY`], and
/// the final one of a pull that succeeded) until the pull ends or `cancel` fires.
async fn follow(
    follower: &mut Follower,
    cancel: &CancellationToken,
    emit: impl Fn(&PullProgress),
) -> Result<(), Relay> {
    let mut shown = None;
    loop {
        let state = follower.rx.borrow_and_update().clone();
        let failed = matches!(state.outcome, Some(Err(_)));
        if !failed && shown.as_ref() != Some(&state.progress) {
            emit(&state.progress);
            shown = Some(state.progress);
        }
        if let Some(outcome) = state.outcome {
            return outcome.map_err(Relay::Failed);
        }
        tokio::select! {
            changed = follower.rx.changed() => {
                if changed.is_err() {
                    return Err(Relay::Failed(PullFailure { cause: PullCause::Other, detail: "the pull task ended without an outcome".into(), engine_down: false }));
                }
            }
            () = cancel.cancelled() => return Err(Relay::Cancelled),
        }
        // Coalesce bursts of layer reports into one event; the end is relayed at once.
        tokio::select! {
            () = tokio::time::sleep(EMIT_EVERY) => {}
            _ = follower.rx.wait_for(|s| s.outcome.is_some()) => {}
            () = cancel.cancelled() => return Err(Relay::Cancelled),
        }
    }
}

#[cfg(test)]
mod tests;
