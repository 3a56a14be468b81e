//! `berthctl`: the operator's view of one berthd node — its servers, capacity, drain, logs.
//!
//! - `main.rs`: the command line (clap), dispatch and exit codes.
//! - [`endpoint`]: which berthd to talk to (flag, env, berthd's config file, the Admin socket)
//!   and how (Unix socket, or TCP with TLS and a token).
//! - [`commands`]: one function per command, calling the RPCs and printing.
//! - [`view`]: the stable JSON documents of `-o json` and the human tables.
//! - [`docs`]: shell completions and man pages, generated from the clap definitions.

mod commands;
mod docs;
mod endpoint;
mod view;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

/// How results are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Output {
    /// Tables and sentences for people.
    Table,
    /// One JSON document on stdout, stable for scripts (see README "berthctl").
    Json,
}

/// Operate one berth node: list, inspect and stop its servers, read their logs, see capacity,
/// drain and undrain. As root on the node it needs no credentials: it uses berthd's Admin socket.
#[derive(Parser, Debug)]
#[command(name = "berthctl", version, about, long_about = None)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) conn: endpoint::ConnArgs,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table, global = true)]
    pub(crate) output: Output,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    /// List the servers the node runs (starting, running, stopping); --all for every one it
    /// knows, exited included.
    Ps {
        /// Only this user's servers.
        #[arg(long)]
        user: Option<String>,
        /// Every server the node knows, exited ones included.
        #[arg(short, long, conflicts_with = "state")]
        all: bool,
        /// Only servers in these states (repeatable or comma-separated).
        #[arg(long, value_enum, value_delimiter = ',')]
        state: Vec<StateArg>,
    },
    /// Show one server in full.
    Inspect {
        /// The JupyterHub user name.
        user: String,
        /// The named server; omitted = the user's default server.
        #[arg(default_value = "")]
        server: String,
    },
    /// Print a server's output (stdout to stdout, stderr to stderr).
    Logs {
        /// The JupyterHub user name.
        user: String,
        /// The named server; omitted = the user's default server.
        #[arg(default_value = "")]
        server: String,
        /// Keep following new output.
        #[arg(short, long)]
        follow: bool,
        /// Only the last N lines.
        #[arg(long, value_name = "N")]
        tail: Option<u32>,
        /// Only output since then: a duration back from now ("10m") or an RFC 3339 time.
        #[arg(long, value_parser = parse_since, value_name = "WHEN")]
        since: Option<std::time::SystemTime>,
        /// Begin each line with the time Docker received it (RFC 3339, UTC).
        #[arg(short, long)]
        timestamps: bool,
    },
    /// Stop a server: SIGTERM, then SIGKILL after the grace period.
    Stop {
        /// The JupyterHub user name.
        user: String,
        /// The named server; omitted = the user's default server.
        #[arg(default_value = "")]
        server: String,
        /// Kill at once (SIGKILL).
        #[arg(long)]
        now: bool,
        /// Remove the container once stopped.
        #[arg(long)]
        remove: bool,
        /// Time between SIGTERM and SIGKILL, e.g. "30s" (default: the node's).
        #[arg(long, value_parser = parse_grace)]
        grace: Option<u32>,
    },
    /// What the node has, what its servers hold, and its conditions.
    Capacity,
    /// Refuse new servers on this node (running ones keep running). Needs the Admin socket.
    Drain {
        /// Why, for the log and the Draining condition.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Accept new servers again. Needs the Admin socket.
    Undrain,
    /// Relist Docker and repair berthd's records now. Needs the Admin socket.
    Reconcile,
    /// The user volumes the node holds.
    Volumes {
        /// Only this user's volumes.
        #[arg(long)]
        user: Option<String>,
        /// Measure sizes (Docker walks the volumes: slow on big nodes).
        #[arg(long)]
        sizes: bool,
    },
    /// Remove a user volume the node holds (refused while a container uses it). Its files are
    /// gone for good.
    RmVolume {
        /// The volume's name, as `volumes` lists it.
        name: String,
    },
    /// The node in full: versions, capacity, conditions, labels, devices, fencing.
    Describe,
    /// Follow the node's server events (started, ready, exited, ...) as they happen.
    Events {
        /// First the current status of every server.
        #[arg(long)]
        snapshot: bool,
        /// Only this user's events.
        #[arg(long)]
        user: Option<String>,
        /// Stop after this many events.
        #[arg(long, value_name = "N")]
        count: Option<u64>,
    },
    /// Follow a spawn's progress (phases, a pull's bytes) until it is ready or has failed.
    Progress {
        /// The JupyterHub user name.
        user: String,
        /// The named server; omitted = the user's default server.
        #[arg(default_value = "")]
        server: String,
        /// The spawn to follow; omitted = the server's newest.
        #[arg(long)]
        spawn_id: Option<String>,
    },
    /// The images on the node and the servers using each.
    Images,
    /// What each running server uses: CPU (over the interval), memory and its limit, network.
    Top {
        /// Only this user's servers.
        #[arg(long)]
        user: Option<String>,
        /// The time the CPU rate is measured over, e.g. "2s".
        #[arg(long, default_value = "1s", value_parser = parse_interval)]
        interval: Duration,
    },
    /// Pull images onto the node ahead of the users, showing each pull's progress.
    Prepull {
        /// Image references, e.g. quay.io/jupyter/base-notebook:2025-01-06.
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Keep SIZE servers of IMAGE booted ahead on the node (a warm pool; 0 = none), e.g.
    /// before a class; kept across berthd's restarts.
    Warm {
        /// The image reference.
        image: String,
        /// Servers to keep ready (at most 256).
        size: u32,
        /// The port the servers listen on.
        #[arg(long, default_value_t = 8888)]
        port: u32,
        /// What each waiting server holds of the node's memory, in bytes.
        #[arg(long, default_value_t = 0)]
        memory_bytes: u64,
    },
    /// berthctl's version and the node's (berthd, API, Docker).
    Version,
    /// Print a shell completion script, e.g. `berthctl completions bash > /etc/bash_completion.d/berthctl`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Write man pages (berthctl.1 and one per command) into a directory.
    Man {
        /// Where to write them.
        dir: PathBuf,
    },
}

/// A server state, as `ps --state` takes it.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StateArg {
    Starting,
    Running,
    Stopping,
    Exited,
    Absent,
}

impl StateArg {
    /// The state's name as berthctl prints it.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Starting => "STARTING",
            Self::Running => "RUNNING",
            Self::Stopping => "STOPPING",
            Self::Exited => "EXITED",
            Self::Absent => "ABSENT",
        }
    }
}

fn parse_since(text: &str) -> Result<std::time::SystemTime, String> {
    if let Ok(t) = humantime::parse_rfc3339_weak(text) {
        return Ok(t);
    }
    let back = humantime::parse_duration(text)
        .map_err(|_| format!("{text:?}: a duration (\"10m\") or an RFC 3339 time"))?;
    std::time::SystemTime::now()
        .checked_sub(back)
        .ok_or_else(|| format!("{text:?} is too far back"))
}

fn parse_interval(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text).map_err(|e| format!("{text:?}: {e}"))?;
    if d.is_zero() || d > Duration::from_secs(60) {
        return Err(format!("{text:?}: between 1ms and 60s"));
    }
    Ok(d)
}

fn parse_grace(text: &str) -> Result<u32, String> {
    let secs = berthd::config::units::parse_seconds(text)?;
    u32::try_from(secs).map_err(|_| format!("{text:?} is too long"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("berthctl: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(commands::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berthctl: {}", commands::describe(&e));
            ExitCode::from(commands::exit_code(&e))
        }
    }
}
