//! systemd's notification protocol (`sd_notify`), written out: one datagram per message to the
//! Unix socket named by `$NOTIFY_SOCKET` (a path, or `@name` in the abstract namespace).
//!
//! berthd tells systemd READY=1 once Docker answered, its records are reconciled and its
//! listeners are bound; a one-line STATUS= (servers, Docker, draining) kept fresh; STOPPING=1
//! when a shutdown begins; and WATCHDOG=1 at half of `$WATCHDOG_USEC`, sent by the monitor's
//! event loop (see [`Watchdog`]). With no `$NOTIFY_SOCKET` every call does nothing, so a berthd
//! run by hand or in a container behaves the same. Sends never block and a failed send is
//! logged once: systemd's bookkeeping must never stop the daemon.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::config::EnvSource;

/// The variable naming the notification socket.
pub const NOTIFY_SOCKET_ENV: &str = "NOTIFY_SOCKET";
/// The watchdog period in microseconds, set by systemd when the unit has `WatchdogSec=`.
pub const WATCHDOG_USEC_ENV: &str = "WATCHDOG_USEC";
/// The process the watchdog is meant for; another process's value is ignored.
pub const WATCHDOG_PID_ENV: &str = "WATCHDOG_PID";
/// Test builds only: the monitor loop wedges itself this many milliseconds after it starts, so
/// a test can see the watchdog pings stop.
#[cfg(feature = "test-util")]
pub const TEST_WEDGE_ENV: &str = "BERTH_TEST_WEDGE_MONITOR_AFTER_MS";

/// Sends notifications to systemd; cheap to clone; a no-op without `$NOTIFY_SOCKET`.
#[derive(Clone, Default)]
pub struct Notifier {
    target: Option<Arc<Target>>,
}

struct Target {
    socket: UnixDatagram,
    addr: SocketAddr,
    /// A failed send was logged already (the next ones are not, to keep the log readable).
    failed: AtomicBool,
}

/// Why `$NOTIFY_SOCKET` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// The value is neither an absolute path nor `@name`.
    #[error("{NOTIFY_SOCKET_ENV}={value:?} is neither an absolute path nor @abstract-name")]
    BadAddress {
        /// The value.
        value: String,
    },
    /// The socket could not be made or addressed.
    #[error("{NOTIFY_SOCKET_ENV}={value:?}: {source}")]
    Io {
        /// The value.
        value: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl Notifier {
    /// A notifier that sends nothing.
    pub fn disabled() -> Self {
        Self::default()
    }

    /// The notifier `$NOTIFY_SOCKET` asks for, or a disabled one when it is unset or empty.
    pub fn from_env(env: &dyn EnvSource) -> Result<Self, NotifyError> {
        match env.var(NOTIFY_SOCKET_ENV) {
            Some(v) if !v.is_empty() => Self::to(&v),
            _ => Ok(Self::disabled()),
        }
    }

    /// A notifier sending to `value`: an absolute path, or `@name` for the abstract namespace.
    pub fn to(value: &str) -> Result<Self, NotifyError> {
        let io = |source| NotifyError::Io {
            value: value.to_owned(),
            source,
        };
        let addr = if let Some(name) = value.strip_prefix('@') {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name.as_bytes()).map_err(io)?
        } else if value.starts_with('/') {
            SocketAddr::from_pathname(value).map_err(io)?
        } else {
            return Err(NotifyError::BadAddress {
                value: value.to_owned(),
            });
        };
        let socket = UnixDatagram::unbound().map_err(io)?;
        socket.set_nonblocking(true).map_err(io)?;
        Ok(Self {
            target: Some(Arc::new(Target {
                socket,
                addr,
                failed: AtomicBool::new(false),
            })),
        })
    }

    /// Whether messages go anywhere.
    pub fn enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Start-up is complete (with the status line that goes with it).
    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={}", one_line(status)));
    }

    /// The one-line status `systemctl status` shows.
    pub fn status(&self, status: &str) {
        self.send(&format!("STATUS={}", one_line(status)));
    }

    /// A shutdown has begun.
    pub fn stopping(&self) {
        self.send("STOPPING=1\nSTATUS=stopping; containers keep running");
    }

    /// The watchdog's keep-alive.
    pub fn watchdog(&self) {
        self.send("WATCHDOG=1");
    }

    fn send(&self, message: &str) {
        let Some(t) = &self.target else {
            return;
        };
        if let Err(e) = t.socket.send_to_addr(message.as_bytes(), &t.addr)
            && !t.failed.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(error = %e, "cannot notify systemd (NOTIFY_SOCKET)");
        }
    }
}

/// A status text kept to one line (systemd shows only the first).
fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

/// The watchdog keep-alive: its period and where it goes.
///
/// The pings come from the monitor's event loop (`monitor::run`), not from a timer task of its
/// own: a timer task proves only that tokio still schedules tasks, while the monitor loop is
/// what keeps the view (Poll, List, Watch, capacity) in step with Docker. If it wedges — a
/// deadlock on the view, a Docker call that never returns despite its deadline, every worker
/// thread blocked — the hub is served a frozen picture of the node, and a restart (which
/// adopts every container, never restarts one) is the cure. The loop keeps pinging while Docker
/// is down (berthd is healthy then; systemd must not restart it for Docker's sake), and a relist
/// inside it is bounded by `docker.timeout_seconds` per call, so `WatchdogSec=` must be well
/// above that (the unit says 2 min against the default 30 s).
#[derive(Clone)]
pub struct Watchdog {
    notifier: Notifier,
    /// How often to ping: half the period systemd gave.
    pub interval: Duration,
    /// Test builds: when the loop wedges itself.
    #[cfg(feature = "test-util")]
    pub wedge_after: Option<Duration>,
}

impl Watchdog {
    /// The watchdog `$WATCHDOG_USEC` asks for (and `$WATCHDOG_PID`, when set, names this
    /// process); `None` when there is none or nowhere to send.
    pub fn from_env(env: &dyn EnvSource, notifier: &Notifier) -> Option<Self> {
        if !notifier.enabled() {
            return None;
        }
        if let Some(pid) = env.var(WATCHDOG_PID_ENV)
            && pid.trim().parse::<u32>().ok() != Some(std::process::id())
        {
            return None;
        }
        let usec: u64 = env.var(WATCHDOG_USEC_ENV)?.trim().parse().ok()?;
        if usec == 0 {
            return None;
        }
        Some(Self {
            notifier: notifier.clone(),
            interval: Duration::from_micros(usec / 2),
            #[cfg(feature = "test-util")]
            wedge_after: env
                .var(TEST_WEDGE_ENV)
                .and_then(|v| v.parse().ok())
                .map(Duration::from_millis),
        })
    }

    /// Tells systemd the loop is alive.
    pub fn ping(&self) {
        self.notifier.watchdog();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn recv(sock: &UnixDatagram) -> String {
        let mut buf = [0u8; 512];
        let n = sock.recv(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn messages_reach_a_path_socket() {
        let dir = std::env::temp_dir().join(format!("berth-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let sock = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::to(path.to_str().unwrap()).unwrap();
        n.ready("2 servers\nDocker up");
        assert_eq!(recv(&sock), "READY=1\nSTATUS=2 servers Docker up");
        n.stopping();
        assert!(recv(&sock).starts_with("STOPPING=1\n"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn messages_reach_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("berth-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let sock = UnixDatagram::bind_addr(&addr).unwrap();
        let n = Notifier::to(&format!("@{name}")).unwrap();
        n.watchdog();
        assert_eq!(recv(&sock), "WATCHDOG=1");
    }

    #[test]
    fn unset_or_bad_addresses() {
        assert!(!Notifier::from_env(&[("X", "y")]).unwrap().enabled());
        assert!(
            !Notifier::from_env(&[(NOTIFY_SOCKET_ENV, "")])
                .unwrap()
                .enabled()
        );
        assert!(matches!(
            Notifier::to("relative/path"),
            Err(NotifyError::BadAddress { .. })
        ));
        // Sending to nobody is logged, never an error.
        Notifier::to("/nonexistent/berth/notify.sock")
            .unwrap()
            .ready("x");
    }

    #[test]
    fn the_watchdog_pings_at_half_the_period_for_this_process_only() {
        let n = Notifier::to("@berth-unused").unwrap();
        let pid = std::process::id().to_string();
        let wd = Watchdog::from_env(&[(WATCHDOG_USEC_ENV, "3000000")], &n).unwrap();
        assert_eq!(wd.interval, Duration::from_millis(1500));
        let env = [
            (WATCHDOG_USEC_ENV, "3000000"),
            (WATCHDOG_PID_ENV, pid.as_str()),
        ];
        assert!(Watchdog::from_env(&env, &n).is_some());
        let other = [(WATCHDOG_USEC_ENV, "3000000"), (WATCHDOG_PID_ENV, "1")];
        assert!(Watchdog::from_env(&other, &n).is_none());
        assert!(Watchdog::from_env(&[(WATCHDOG_USEC_ENV, "0")], &n).is_none());
        assert!(
            Watchdog::from_env(&[(WATCHDOG_USEC_ENV, "3000000")], &Notifier::disabled()).is_none()
        );
    }
}
