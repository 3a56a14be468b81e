//! The activity reporter: tells the hub which servers are in use, from what berthd sees of
//! their containers (network bytes, CPU time), so the idle culler spares busy servers that do
//! not report their own activity and culls idle ones.
//!
//! One stats pass per interval over all running servers; per server only the newest activity
//! is kept (memory O(servers)); only changed values are sent, jittered, with bounded
//! concurrency, retried with capped exponential backoff. A hub outage loses nothing but
//! superseded timestamps and never touches a container.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use berth_hub_client::{Activity, HubApi, HubError};
use futures::StreamExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::docker::{ContainerEngine, Usage};
use crate::key::ServerKey;
use crate::runtime::Runtime;

/// Longest pause between retries of a failed send (and never more than one interval).
pub(crate) const MAX_RETRY_BACKOFF: Duration = Duration::from_secs(60);
/// Stats calls in flight during a pass.
pub(crate) const STATS_CONCURRENCY: usize = 32;
/// First pause after a failed send.
pub(crate) const FIRST_RETRY_BACKOFF: Duration = Duration::from_secs(1);

section! {
    /// `[activity]` in the configuration.
    pub struct ActivityConfig at "activity." {
        /// Report container activity (network bytes, CPU) to the hub.
        enabled: bool = false,
            env "BERTH_ACTIVITY_ENABLED", flag "activity-enabled";
        /// The hub's API as the node reaches it, e.g. `http://hub.example:8081/hub/api`.
        hub_api_url: String = String::new(),
            env "BERTH_ACTIVITY_HUB_API_URL", flag "activity-hub-api-url";
        /// File with a JupyterHub service token with scope `users:activity`.
        token_file: std::path::PathBuf = std::path::PathBuf::new(),
            env "BERTH_ACTIVITY_TOKEN_FILE", flag "activity-token-file";
        /// CA (PEM) of the hub's TLS certificate, if it uses one from a private CA.
        ca_file: std::path::PathBuf = std::path::PathBuf::new(),
            env "BERTH_ACTIVITY_CA_FILE", flag "activity-ca-file";
        /// Time between two stats passes.
        #[serde(deserialize_with = "crate::config::units::seconds")]
        interval_seconds: u64 = 60,
            env "BERTH_ACTIVITY_INTERVAL_SECONDS", flag "activity-interval-seconds";
        /// Which signals count as activity: "network", "cpu".
        signals: Vec<String> = vec!["network".to_owned(), "cpu".to_owned()],
            env "BERTH_ACTIVITY_SIGNALS", flag "activity-signals";
        /// Network bytes (received + sent) per interval that count as activity.
        #[serde(deserialize_with = "crate::config::units::bytes")]
        network_bytes_threshold: u64 = 4096,
            env "BERTH_ACTIVITY_NETWORK_BYTES_THRESHOLD", flag "activity-network-bytes-threshold";
        /// Average cores used over the interval that count as activity.
        cpu_threshold: f64 = 0.05,
            env "BERTH_ACTIVITY_CPU_THRESHOLD", flag "activity-cpu-threshold";
        /// Sends to the hub at once.
        max_concurrent_sends: usize = 4,
            env "BERTH_ACTIVITY_MAX_CONCURRENT_SENDS", flag "activity-max-concurrent-sends";
    }
}

impl ActivityConfig {
    /// Checks the section; the error names the key.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let bad = |k: &str, m: &str| Err((format!("activity.{k}"), m.to_owned()));
        if !(1..=3600).contains(&self.interval_seconds) {
            return bad("interval_seconds", "must be 1-3600");
        }
        if let Some(s) = self
            .signals
            .iter()
            .find(|s| !matches!(s.as_str(), "network" | "cpu"))
        {
            return Err((
                "activity.signals".to_owned(),
                format!("unknown signal {s:?}; use \"network\" and/or \"cpu\""),
            ));
        }
        if !self.cpu_threshold.is_finite() || self.cpu_threshold < 0.0 {
            return bad("cpu_threshold", "must be a number of cores, 0 or more");
        }
        if !(1..=256).contains(&self.max_concurrent_sends) {
            return bad("max_concurrent_sends", "must be 1-256");
        }
        if self.enabled {
            if !(self.hub_api_url.starts_with("http://")
                || self.hub_api_url.starts_with("https://"))
            {
                return bad(
                    "hub_api_url",
                    "must be an http:// or https:// URL of the hub API",
                );
            }
            if self.token_file.as_os_str().is_empty() {
                return bad("token_file", "is needed to report activity");
            }
        }
        Ok(())
    }
}

/// What counts as activity between two readings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Thresholds {
    /// Network bytes per interval; `None` = network does not count.
    pub net_bytes: Option<u64>,
    /// Cores on average; `None` = CPU does not count.
    pub cpu: Option<f64>,
}

/// Whether the change from `before` to `now` over `elapsed` is activity.
pub(crate) fn is_active(before: Usage, now: Usage, elapsed: Duration, t: Thresholds) -> bool {
    let net = now.net_bytes.saturating_sub(before.net_bytes);
    let cpu_ns = now.cpu_ns.saturating_sub(before.cpu_ns);
    #[allow(clippy::cast_precision_loss)]
    let cores = cpu_ns as f64 / elapsed.as_nanos().max(1) as f64;
    t.net_bytes.is_some_and(|b| net >= b.max(1)) || t.cpu.is_some_and(|c| cores >= c && cpu_ns > 0)
}

/// Counters for operators.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Metrics {
    /// Users' activity delivered.
    pub sent: u64,
    /// Sends that failed and will be retried.
    pub failed: u64,
    /// Sends the hub refused for good (deleted user or server), dropped.
    pub dropped: u64,
    /// Servers with activity not yet delivered.
    pub pending: usize,
}

/// The reporter's state: O(servers).
pub(crate) struct Reporter<H> {
    hub: Arc<H>,
    thresholds: Thresholds,
    max_concurrent: usize,
    /// Retries never wait longer than one interval, so the newest value reaches a hub that
    /// came back within an interval.
    max_backoff: Duration,
    last: HashMap<String, (Usage, Instant)>,
    newest: HashMap<ServerKey, SystemTime>,
    delivered: HashMap<ServerKey, SystemTime>,
    retry: HashMap<String, (u32, Instant)>,
    /// Metrics so far.
    pub metrics: Metrics,
}

impl<H: HubApi> Reporter<H> {
    /// A reporter sending to `hub`.
    pub(crate) fn new(hub: H, cfg: &ActivityConfig) -> Self {
        let has = |s: &str| cfg.signals.iter().any(|x| x == s);
        Self {
            hub: Arc::new(hub),
            thresholds: Thresholds {
                net_bytes: has("network").then_some(cfg.network_bytes_threshold),
                cpu: has("cpu").then_some(cfg.cpu_threshold),
            },
            max_concurrent: cfg.max_concurrent_sends,
            max_backoff: MAX_RETRY_BACKOFF.min(Duration::from_secs(cfg.interval_seconds)),
            last: HashMap::new(),
            newest: HashMap::new(),
            delivered: HashMap::new(),
            retry: HashMap::new(),
            metrics: Metrics::default(),
        }
    }

    /// Takes one reading of each running server; returns the keys found active.
    pub(crate) fn observe(
        &mut self,
        readings: &[(ServerKey, String, Usage)],
        at: Instant,
        wall: SystemTime,
    ) -> Vec<ServerKey> {
        let mut active = Vec::new();
        let mut seen_ids = HashSet::new();
        for (key, id, usage) in readings {
            seen_ids.insert(id.clone());
            if let Some((before, then)) = self.last.get(id)
                && is_active(
                    *before,
                    *usage,
                    at.saturating_duration_since(*then),
                    self.thresholds,
                )
            {
                self.newest.insert(key.clone(), wall);
                active.push(key.clone());
            }
            self.last.insert(id.clone(), (*usage, at));
        }
        // Forget what no longer runs, so memory follows the running servers.
        self.last.retain(|id, _| seen_ids.contains(id));
        active
    }

    /// Forgets servers that no longer exist on the node.
    pub(crate) fn retain(&mut self, known: &HashSet<ServerKey>) {
        self.newest.retain(|k, _| known.contains(k));
        self.delivered.retain(|k, _| known.contains(k));
    }

    /// Per user, the activity not yet delivered.
    fn pending(&self) -> BTreeMap<String, Activity> {
        let mut out: BTreeMap<String, Activity> = BTreeMap::new();
        for (key, t) in &self.newest {
            if self.delivered.get(key).is_some_and(|d| d >= t) {
                continue;
            }
            let a = out
                .entry(key.user().to_owned())
                .or_insert_with(|| Activity {
                    last_activity: *t,
                    servers: BTreeMap::new(),
                });
            a.last_activity = a.last_activity.max(*t);
            a.servers.insert(key.server().to_owned(), *t);
        }
        out
    }

    /// When the next retry is due, if any.
    pub(crate) fn next_retry(&self) -> Option<Instant> {
        self.retry.values().map(|(_, at)| *at).min()
    }

    /// Sends what is pending and due; `jitter` spreads the sends.
    pub(crate) async fn flush(&mut self, now: Instant, jitter: Duration) {
        let due: Vec<(String, Activity)> = self
            .pending()
            .into_iter()
            .filter(|(user, _)| self.retry.get(user).is_none_or(|(_, at)| *at <= now))
            .collect();
        let sem = Arc::new(tokio::sync::Semaphore::new(self.max_concurrent));
        let n = due.len().max(1);
        let sends = due.into_iter().enumerate().map(|(i, (user, activity))| {
            let hub = self.hub.clone();
            let sem = sem.clone();
            // Spread evenly over the jitter window, so a thousand users are not one burst.
            let delay = jitter * u32::try_from(i).unwrap_or(u32::MAX)
                / u32::try_from(n).unwrap_or(u32::MAX);
            async move {
                tokio::time::sleep(delay).await;
                let _permit = sem.acquire().await;
                let r = hub.post_activity(&user, &activity).await;
                (user, activity, r)
            }
        });
        for (user, activity, result) in futures::future::join_all(sends).await {
            match result {
                Ok(()) => {
                    self.metrics.sent += 1;
                    self.retry.remove(&user);
                    self.mark_delivered(&user, &activity);
                }
                Err(e) if e.is_retryable() => {
                    self.metrics.failed += 1;
                    let attempts = self.retry.get(&user).map_or(0, |(a, _)| *a) + 1;
                    let backoff = FIRST_RETRY_BACKOFF
                        .saturating_mul(1 << attempts.min(6))
                        .min(self.max_backoff);
                    if attempts == 1 {
                        tracing::warn!(user = %user, error = %e, "cannot report activity to the hub; retrying with backoff");
                    }
                    self.retry
                        .insert(user, (attempts, Instant::now() + backoff));
                }
                Err(e) => {
                    self.metrics.dropped += 1;
                    self.retry.remove(&user);
                    log_rejected(&user, &e);
                    // Dropped, not retried: the hub will refuse the same again.
                    self.mark_delivered(&user, &activity);
                }
            }
        }
        self.metrics.pending = self.pending().values().map(|a| a.servers.len()).sum();
    }

    fn mark_delivered(&mut self, user: &str, activity: &Activity) {
        for (server, t) in &activity.servers {
            if let Ok(key) = ServerKey::new(user, server) {
                self.delivered.insert(key, *t);
            }
        }
    }
}

fn log_rejected(user: &str, e: &HubError) {
    tracing::warn!(user = %user, error = %e, "hub refused activity (user or server deleted?); dropped");
}

/// Runs the reporter until `shutdown`.
// Long: the reporter's one loop (stats pass, delivery, metrics) reads best whole.
pub(crate) async fn run<E: ContainerEngine, H: HubApi>(
    rt: Runtime<E>,
    hub: H,
    cfg: ActivityConfig,
    shutdown: CancellationToken,
) {
    let interval = Duration::from_secs(cfg.interval_seconds);
    let jitter = (interval / 4).min(Duration::from_secs(2));
    let mut reporter = Reporter::new(hub, &cfg);
    let mut next_pass = Instant::now();
    let mut last_logged = Metrics::default();
    tracing::info!(hub = %cfg.hub_api_url, interval = ?interval, signals = ?cfg.signals, "activity reporter on");
    loop {
        let wake = reporter
            .next_retry()
            .map_or(next_pass, |r| r.min(next_pass));
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep_until(wake) => {}
        }
        let now = Instant::now();
        if now >= next_pass {
            next_pass = now + interval;
            // Docker 20.10 answers a one-shot stats call only at its next 1 s collection
            // tick, so the pass asks for many containers at once (bounded).
            let readings: Vec<(ServerKey, String, Usage)> = futures::stream::iter(
                rt.view().running_containers(),
            )
            .map(|(key, id)| {
                let rt = rt.clone();
                async move {
                    match rt.engine().usage(&id).await {
                        Ok(u) => Some((key, id, u)),
                        Err(e) => {
                            tracing::debug!(container = %id, error = %e, "no stats this pass");
                            None
                        }
                    }
                }
            })
            .buffer_unordered(STATS_CONCURRENCY)
            .filter_map(|r| async move { r })
            .collect()
            .await;
            tracing::debug!(servers = readings.len(), took = ?now.elapsed(), "stats pass");
            let wall = SystemTime::now();
            for key in reporter.observe(&readings, now, wall) {
                rt.view().note_activity(&key, wall);
            }
            reporter.retain(&rt.view().keys().into_iter().collect());
        }
        reporter.flush(Instant::now(), jitter).await;
        if reporter.metrics != last_logged {
            let m = reporter.metrics;
            rt.metrics().activity_reported(
                m.sent.saturating_sub(last_logged.sent),
                m.failed.saturating_sub(last_logged.failed),
                m.dropped.saturating_sub(last_logged.dropped),
                m.pending,
            );
            tracing::info!(
                sent = m.sent,
                failed = m.failed,
                dropped = m.dropped,
                pending = m.pending,
                "activity reporter"
            );
            last_logged = m;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_hub_client::fake::RecordingHub;

    fn key(u: &str, s: &str) -> ServerKey {
        ServerKey::new(u, s).expect("valid")
    }

    fn usage(cpu_ns: u64, net_bytes: u64) -> Usage {
        Usage {
            cpu_ns,
            net_bytes,
            ..Usage::default()
        }
    }

    #[test]
    fn thresholds_decide_activity() {
        let t = Thresholds {
            net_bytes: Some(1000),
            cpu: Some(0.1),
        };
        let sec = Duration::from_secs(1);
        assert!(is_active(usage(0, 0), usage(0, 1000), sec, t));
        assert!(!is_active(usage(0, 0), usage(0, 999), sec, t));
        assert!(is_active(usage(0, 0), usage(100_000_000, 0), sec, t));
        assert!(!is_active(usage(0, 0), usage(99_000_000, 0), sec, t));
        let net_only = Thresholds { cpu: None, ..t };
        assert!(!is_active(
            usage(0, 0),
            usage(900_000_000, 0),
            sec,
            net_only
        ));
        // A restarted counter (lower than before) is not activity.
        assert!(!is_active(usage(5, 5000), usage(1, 10), sec, t));
    }

    #[tokio::test]
    async fn only_changes_are_sent_and_a_deleted_user_is_dropped_once() {
        tokio::time::pause();
        let hub = RecordingHub::default();
        let cfg = ActivityConfig {
            network_bytes_threshold: 100,
            ..ActivityConfig::default()
        };
        let mut r = Reporter::new(hub.clone(), &cfg);
        let (a, b) = (key("ann", ""), key("bob", "lab"));
        let t0 = Instant::now();
        let w0 = SystemTime::now();
        r.observe(
            &[
                (a.clone(), "ca".into(), usage(0, 0)),
                (b.clone(), "cb".into(), usage(0, 0)),
            ],
            t0,
            w0,
        );
        r.flush(t0, Duration::ZERO).await;
        assert!(hub.calls().is_empty(), "first reading is only a baseline");

        let t1 = t0 + Duration::from_secs(60);
        let w1 = w0 + Duration::from_secs(60);
        let active = r.observe(
            &[
                (a.clone(), "ca".into(), usage(0, 5000)),
                (b.clone(), "cb".into(), usage(0, 50)),
            ],
            t1,
            w1,
        );
        assert_eq!(active, vec![a.clone()]);
        r.flush(t1, Duration::ZERO).await;
        let calls = hub.calls();
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].0, "ann");
        assert_eq!(calls[0].1.servers.get(""), Some(&w1));

        // Nothing new: nothing sent.
        r.flush(t1, Duration::ZERO).await;
        assert_eq!(hub.calls().len(), 1);

        // The hub refuses for good: logged, dropped, not retried.
        hub.script([Err(HubError::Rejected {
            status: 404,
            message: "no such user".into(),
        })]);
        let t2 = t1 + Duration::from_secs(60);
        let w2 = w1 + Duration::from_secs(60);
        r.observe(&[(a.clone(), "ca".into(), usage(0, 9000))], t2, w2);
        r.flush(t2, Duration::ZERO).await;
        r.flush(t2 + Duration::from_secs(120), Duration::ZERO).await;
        assert_eq!(hub.calls().len(), 2);
        assert_eq!(r.metrics.dropped, 1);
        assert_eq!(r.next_retry(), None);
    }

    #[tokio::test]
    async fn an_outage_keeps_only_the_newest_and_delivers_it_when_the_hub_returns() {
        tokio::time::pause();
        let hub = RecordingHub::default();
        let mut r = Reporter::new(
            hub.clone(),
            &ActivityConfig {
                network_bytes_threshold: 1,
                ..ActivityConfig::default()
            },
        );
        let k = key("cat", "");
        let t0 = Instant::now();
        let w0 = SystemTime::now();
        r.observe(&[(k.clone(), "c".into(), usage(0, 0))], t0, w0);
        let down = || Err(HubError::Transport("connection refused".into()));
        hub.script((0..10).map(|_| down()));
        let mut t = t0;
        let mut w = w0;
        for i in 1..=10u64 {
            t += Duration::from_secs(60);
            w += Duration::from_secs(60);
            r.observe(&[(k.clone(), "c".into(), usage(0, i * 100))], t, w);
            r.flush(t, Duration::ZERO).await;
        }
        assert_eq!(r.metrics.failed, 10);
        assert_eq!(
            r.metrics.pending, 1,
            "one server pending, however long the outage"
        );
        assert!(
            r.newest.len() == 1 && r.last.len() == 1,
            "memory is O(servers)"
        );
        // The hub is back: the retry delivers the newest timestamp only.
        let due = r.next_retry().expect("a retry is scheduled");
        assert!(due <= t + MAX_RETRY_BACKOFF);
        r.flush(due, Duration::ZERO).await;
        let calls = hub.calls();
        assert_eq!(calls.last().map(|c| c.1.last_activity), Some(w));
        assert_eq!(r.metrics.pending, 0);
        assert_eq!(r.metrics.sent, 1);
    }
}
