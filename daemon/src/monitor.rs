//! The monitor: one Docker events subscription (filtered by this node's labels) keeps the view
//! current; when the stream ends (dockerd restart) it reconnects with `since` and relists; a
//! slow periodic relist is the safety net. One relister, never a poller per container.

use std::time::Duration;

use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::docker::{ContainerEngine, EngineEvent, LABEL_MANAGED, LABEL_NODE};
use crate::notify::Watchdog;
use crate::runtime::Runtime;

/// Relist interval of the safety net.
pub const RELIST_INTERVAL: Duration = Duration::from_secs(60);
/// First pause before reconnecting to a lost event stream.
pub const FIRST_RECONNECT: Duration = Duration::from_millis(100);
/// Longest pause between reconnection attempts.
pub const MAX_RECONNECT: Duration = Duration::from_secs(1);

/// Seconds since the epoch.
pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Runs until `shutdown`. `since` is the time of the last full reconcile, so events after it
/// are replayed by Docker and nothing between the relist and the subscription is missed.
pub async fn run<E: ContainerEngine>(rt: Runtime<E>, since: i64, shutdown: CancellationToken) {
    run_with_watchdog(rt, since, shutdown, None).await;
}

/// [`run`], pinging systemd's watchdog from this loop (see [`Watchdog`] for why here): between
/// events, while the stream is down and while it waits to reconnect. A wedged loop stops the
/// pings and systemd restarts berthd.
pub async fn run_with_watchdog<E: ContainerEngine>(
    rt: Runtime<E>,
    since: i64,
    shutdown: CancellationToken,
    watchdog: Option<Watchdog>,
) {
    let mut beat = Beat::new(watchdog);
    let node = rt.config().node_id.clone();
    let mut since = since;
    let mut backoff = FIRST_RECONNECT;
    let mut reconnecting = false;
    loop {
        let mut events = rt
            .engine()
            .events(&[(LABEL_MANAGED, "true"), (LABEL_NODE, &node)], Some(since));
        if reconnecting {
            // dockerd may have restarted and lost its event log: relist to catch up.
            match rt.reconcile().await {
                Ok(report) => tracing::info!(?report, "event stream re-established; relisted"),
                Err(e) => tracing::warn!(error = %e, "relist after reconnect failed"),
            }
        }
        let mut relist = tokio::time::interval(RELIST_INTERVAL);
        relist.tick().await;
        let ended = loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                ev = events.next() => match ev {
                    Some(Ok(ev)) => {
                        since = since.max(ev.time_nano / 1_000_000_000);
                        backoff = FIRST_RECONNECT;
                        handle(&rt, ev).await;
                    }
                    Some(Err(e)) => break e.to_string(),
                    None => break "the stream ended".to_owned(),
                },
                _ = relist.tick() => {
                    if let Err(e) = rt.reconcile().await {
                        tracing::warn!(error = %e, "periodic relist failed");
                    }
                }
                () = beat.due() => beat.ping(&shutdown).await,
            }
        };
        tracing::warn!(reason = %ended, "Docker event stream lost; reconnecting");
        reconnecting = true;
        let pause = tokio::time::sleep(backoff);
        tokio::pin!(pause);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = &mut pause => break,
                () = beat.due() => beat.ping(&shutdown).await,
            }
        }
        backoff = (backoff * 2).min(MAX_RECONNECT);
    }
}

/// The watchdog's schedule inside the loop; never due without a watchdog.
struct Beat {
    watchdog: Option<Watchdog>,
    next: tokio::time::Instant,
    #[cfg(feature = "test-util")]
    wedge_at: Option<tokio::time::Instant>,
}

impl Beat {
    fn new(watchdog: Option<Watchdog>) -> Self {
        let now = tokio::time::Instant::now();
        if let Some(w) = &watchdog {
            w.ping();
        }
        Self {
            next: now + watchdog.as_ref().map_or(Duration::ZERO, |w| w.interval),
            #[cfg(feature = "test-util")]
            wedge_at: watchdog
                .as_ref()
                .and_then(|w| w.wedge_after)
                .map(|d| now + d),
            watchdog,
        }
    }

    async fn due(&self) {
        if self.watchdog.is_none() {
            return std::future::pending().await;
        }
        tokio::time::sleep_until(self.next).await;
    }

    async fn ping(&mut self, shutdown: &CancellationToken) {
        #[cfg(feature = "test-util")]
        if self
            .wedge_at
            .is_some_and(|at| tokio::time::Instant::now() >= at)
        {
            // The test hook: this loop stops here as a deadlocked one would (it still leaves on
            // shutdown, so the test can stop berthd cleanly).
            tracing::warn!("test hook: the monitor loop is wedged");
            shutdown.cancelled().await;
            return;
        }
        #[cfg(not(feature = "test-util"))]
        let _ = shutdown;
        if let Some(w) = &self.watchdog {
            w.ping();
            self.next = tokio::time::Instant::now() + w.interval;
        }
    }
}

async fn handle<E: ContainerEngine>(rt: &Runtime<E>, ev: EngineEvent) {
    tracing::debug!(container = %ev.container_id, action = %ev.action, "docker event");
    rt.observe_event(&ev).await;
}
