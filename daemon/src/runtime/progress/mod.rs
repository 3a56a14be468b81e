//! The progress of each spawn, kept for replay so a late subscriber sees every phase.
//!
//! The bar and the words move at different paces. JupyterHub adds a line to its Event log for
//! every event that carries words, so a pull reporting each half megabyte, or a boot clock
//! ticking twice a second, would fill it with hundreds of lines. Ticks (a pull's bytes, the
//! boot clock) therefore keep their words only when they say something new: the first of a
//! phase, or the first [`WORDS_EVERY`] after the last worded one; in between they move the
//! bar alone (an event with no message). The bar never moves backwards while a spawn runs.

pub mod boot_times;
pub mod pulling;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use futures::Stream;
use tokio::sync::watch;

use crate::key::ServerKey;

/// Spawns remembered at most; the oldest finished ones are forgotten first.
pub const MAX_SPAWNS: usize = 4096;
/// How long a finished spawn's progress stays available.
pub const KEEP_FINISHED: Duration = Duration::from_secs(15 * 60);
/// How long a subscriber waits for a spawn that has not begun before giving up.
pub const WAIT_FOR_BEGIN: Duration = Duration::from_secs(30);
/// A tick of the same phase carries words at most this often.
pub const WORDS_EVERY: Duration = Duration::from_secs(5);

/// A phase of a spawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Accepted, waiting for the key or a slot.
    Queued,
    /// Pulling the image.
    Pulling,
    /// Creating the container.
    Creating,
    /// Starting the container.
    Starting,
    /// Waiting for the server to answer HTTP.
    WaitingForHttp,
    /// Ready (terminal).
    Ready,
    /// Failed (terminal).
    Failed,
}

impl Phase {
    /// Ready and Failed end a spawn.
    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Ready | Phase::Failed)
    }
}

/// One progress event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Phase.
    pub phase: Phase,
    /// 0-100.
    pub percent: u8,
    /// For the user.
    pub message: String,
    /// The server URL, on Ready.
    pub url: Option<String>,
    /// The failure reason, on Failed.
    pub reason: Option<String>,
    /// When it happened.
    pub at: SystemTime,
    /// How far the pull is, while pulling.
    pub pull: Option<pulling::PullProgress>,
    /// A repeated report of the same phase (a pull's bytes, the boot clock): its words may be
    /// dropped, see the module docs.
    pub tick: bool,
}

impl Event {
    /// A non-terminal event.
    pub fn new(phase: Phase, percent: u8, message: impl Into<String>) -> Self {
        Self {
            phase,
            percent,
            message: message.into(),
            url: None,
            reason: None,
            at: SystemTime::now(),
            pull: None,
            tick: false,
        }
    }

    /// A tick: its words are kept only when they say something new.
    pub fn tick(phase: Phase, percent: u8, message: impl Into<String>) -> Self {
        Self {
            tick: true,
            ..Self::new(phase, percent, message)
        }
    }
}

/// What of `event` to append after `events`, or `None` when it would add nothing: a tick loses
/// its words within [`WORDS_EVERY`] of the last worded event of its phase, and a running
/// spawn's bar never goes back. Pure.
pub fn shape(events: &[Event], mut event: Event) -> Option<Event> {
    let bar = events.iter().map(|e| e.percent).max().unwrap_or(0);
    if !event.phase.is_terminal() {
        event.percent = event.percent.max(bar);
    }
    if event.tick {
        let worded = events.iter().rev().find(|e| !e.message.is_empty());
        let fresh = worded.is_some_and(|w| {
            w.phase == event.phase
                && event.at.duration_since(w.at).unwrap_or_default() < WORDS_EVERY
        });
        if fresh || worded.is_some_and(|w| w.message == event.message) {
            event.message.clear();
            if event.percent <= bar {
                return None;
            }
        }
    }
    Some(event)
}

struct Spawn {
    tx: watch::Sender<Vec<Event>>,
    created: Instant,
}

impl Spawn {
    fn finished(&self) -> bool {
        self.tx
            .borrow()
            .last()
            .is_some_and(|e| e.phase.is_terminal())
    }
}

#[derive(Default)]
struct Inner {
    spawns: HashMap<(ServerKey, String), Arc<Spawn>>,
    newest: HashMap<ServerKey, String>,
}

/// All spawns' progress.
#[derive(Default)]
pub struct ProgressRegistry {
    inner: Mutex<Inner>,
}

fn lock(m: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The writing end of one spawn's progress.
#[derive(Clone)]
pub struct Reporter {
    spawn: Arc<Spawn>,
}

impl Reporter {
    /// Appends an event unless the spawn already ended, shaped by [`shape`].
    pub fn emit(&self, event: Event) {
        self.spawn.tx.send_if_modified(|events| {
            if events.last().is_some_and(|e| e.phase.is_terminal()) {
                return false;
            }
            match shape(events, event) {
                Some(e) => {
                    events.push(e);
                    true
                }
                None => false,
            }
        });
    }

    /// Ends the spawn as ready at `url`.
    pub fn ready(&self, url: &str) {
        let mut e = Event::new(Phase::Ready, 100, "Your server is ready.");
        e.url = Some(url.to_owned());
        self.emit(e);
    }

    /// Ends the spawn as failed: first the technical `detail` as an event of its own (it lands
    /// in the event log under JupyterHub's progress bar, for whoever looks into it), then the
    /// last message, which tells the user what to do about `reason`.
    pub fn failed(&self, reason: &str, detail: &str) {
        let (phase, percent) = self
            .spawn
            .tx
            .borrow()
            .last()
            .map_or((Phase::Queued, 0), |e| (e.phase, e.percent));
        self.emit(Event::new(
            phase,
            percent,
            format!("What went wrong, for an administrator: {detail}"),
        ));
        let mut e = Event::new(Phase::Failed, 100, advice(reason));
        e.reason = Some(reason.to_owned());
        self.emit(e);
    }
}

/// What a user whose spawn failed for `reason` (an `Error::reason` code) can do about it.
pub fn advice(reason: &str) -> &'static str {
    match reason {
        "Capacity" | "Draining" => {
            "There is no room for your server right now. Please try again in a few minutes."
        }
        "ReadyTimeout" => {
            "Your server took too long to start. Please try again; if it keeps happening, \
             ask an administrator to look at its logs."
        }
        "OOMKilled" => {
            "Your server ran out of memory while starting. Choose a larger size if you can, \
             or ask an administrator for more memory."
        }
        "PolicyViolation" | "HostPath" | "ImageMissing" | "StartRefused" => {
            "Your server's settings could not be used on this machine. Please ask an \
             administrator; the hub's log has the details."
        }
        "Conflict" => "Your server is already starting or running. Reload the page in a moment.",
        "Cancelled" => "The start was cancelled. You can start your server again.",
        _ => {
            "Your server could not start. Please try again; if it keeps happening, ask an \
             administrator (the hub's log has the details)."
        }
    }
}

impl ProgressRegistry {
    fn entry(&self, key: &ServerKey, spawn_id: &str) -> Arc<Spawn> {
        let mut inner = lock(&self.inner);
        let id = (key.clone(), spawn_id.to_owned());
        if let Some(s) = inner.spawns.get(&id) {
            return s.clone();
        }
        prune(&mut inner);
        let spawn = Arc::new(Spawn {
            tx: watch::channel(Vec::new()).0,
            created: Instant::now(),
        });
        inner.spawns.insert(id, spawn.clone());
        spawn
    }

    /// Begins (or rejoins) a spawn: marks it the newest of its key and reports it queued.
    pub fn begin(&self, key: &ServerKey, spawn_id: &str) -> Reporter {
        let spawn = self.entry(key, spawn_id);
        lock(&self.inner)
            .newest
            .insert(key.clone(), spawn_id.to_owned());
        spawn.tx.send_if_modified(|events| {
            if !events.is_empty() {
                return false;
            }
            events.push(Event::new(Phase::Queued, 0, "Getting your server ready."));
            true
        });
        Reporter { spawn }
    }

    /// The spawn id of the newest spawn of `key`.
    pub fn newest(&self, key: &ServerKey) -> Option<String> {
        lock(&self.inner).newest.get(key).cloned()
    }

    /// Every event of the spawn, past and future; ends after a terminal event, or yields
    /// `None` once if the spawn does not begin within [`WAIT_FOR_BEGIN`].
    pub fn subscribe(
        &self,
        key: &ServerKey,
        spawn_id: &str,
    ) -> impl Stream<Item = Option<Event>> + Send + use<> {
        let rx = self.entry(key, spawn_id).tx.subscribe();
        futures::stream::unfold((rx, 0usize, false), |(mut rx, mut seen, done)| async move {
            if done {
                return None;
            }
            loop {
                let next = rx.borrow_and_update().get(seen).cloned();
                if let Some(e) = next {
                    seen += 1;
                    let end = e.phase.is_terminal();
                    return Some((Some(e), (rx, seen, end)));
                }
                let changed = if seen == 0 {
                    match tokio::time::timeout(WAIT_FOR_BEGIN, rx.changed()).await {
                        Ok(r) => r,
                        Err(_) => return Some((None, (rx, seen, true))),
                    }
                } else {
                    rx.changed().await
                };
                if changed.is_err() {
                    return None;
                }
            }
        })
    }
}

fn prune(inner: &mut Inner) {
    inner
        .spawns
        .retain(|_, s| !(s.finished() && s.created.elapsed() > KEEP_FINISHED));
    while inner.spawns.len() >= MAX_SPAWNS {
        let oldest = inner
            .spawns
            .iter()
            .min_by_key(|(_, s)| (!s.finished(), s.created))
            .map(|(k, _)| k.clone());
        match oldest {
            Some(k) => inner.spawns.remove(&k),
            None => break,
        };
    }
    let live: std::collections::HashSet<&ServerKey> = inner.spawns.keys().map(|(k, _)| k).collect();
    let keep: HashMap<ServerKey, String> = inner
        .newest
        .iter()
        .filter(|(k, _)| live.contains(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    inner.newest = keep;
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    #[tokio::test]
    async fn late_subscriber_sees_every_phase_and_the_stream_ends() {
        let reg = ProgressRegistry::default();
        let key = ServerKey::new("u", "").expect("valid");
        let r = reg.begin(&key, "s1");
        r.emit(Event::new(Phase::Creating, 20, "creating"));
        r.ready("http://x");
        r.emit(Event::new(Phase::Starting, 40, "after the end: dropped"));
        let events: Vec<_> = reg.subscribe(&key, "s1").collect().await;
        let phases: Vec<_> = events.iter().flatten().map(|e| e.phase).collect();
        assert_eq!(phases, [Phase::Queued, Phase::Creating, Phase::Ready]);
        assert_eq!(reg.newest(&key).as_deref(), Some("s1"));
    }

    #[tokio::test]
    async fn early_subscriber_follows_and_unknown_spawns_time_out() {
        let reg = Arc::new(ProgressRegistry::default());
        let key = ServerKey::new("u", "").expect("valid");
        let sub = reg.subscribe(&key, "s2");
        let r = reg.begin(&key, "s2");
        r.failed("ReadyTimeout", "no answer within 300 s");
        let events: Vec<_> = sub.collect().await;
        assert_eq!(events.len(), 3, "{events:?}");
        let detail = events[1].as_ref().expect("an event");
        assert_eq!(detail.phase, Phase::Queued, "the detail is not the end");
        assert!(detail.message.ends_with("no answer within 300 s"));
        assert_eq!(events[2].as_ref().map(|e| e.phase), Some(Phase::Failed));
        assert_eq!(
            events[2].as_ref().map(|e| e.message.as_str()),
            Some(advice("ReadyTimeout"))
        );

        tokio::time::pause();
        let events: Vec<_> = reg.subscribe(&key, "never").collect().await;
        assert_eq!(events, vec![None]);
    }
}

#[cfg(test)]
mod shape_tests;

#[cfg(test)]
mod advice_tests {
    use super::advice;

    #[test]
    fn every_failure_tells_the_user_what_to_do_in_a_sentence() {
        for reason in [
            "Capacity",
            "Draining",
            "ReadyTimeout",
            "OOMKilled",
            "PolicyViolation",
            "HostPath",
            "ImageMissing",
            "StartRefused",
            "Conflict",
            "Cancelled",
            "DockerError",
            "Internal",
            "Error",
        ] {
            let m = advice(reason);
            assert!(
                m.starts_with(char::is_uppercase) && m.ends_with('.'),
                "{reason}: {m}"
            );
            assert!(
                !m.contains("http") && !m.contains("127.0.0.1"),
                "{reason}: {m}"
            );
        }
        assert_ne!(advice("Capacity"), advice("ReadyTimeout"));
    }
}
