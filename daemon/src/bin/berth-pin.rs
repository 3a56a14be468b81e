//! berth-pin: the privileged helper that pins host paths for a sandboxed berthd (see
//! `berthd::hostpath::helper`) and mounts them, or local Docker volumes, into claimed warm
//! containers. It reads the node policy from berthd's configuration file.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use berthd::hostpath::helper::{self, HelperConfig};
use clap::Parser;

/// Pins host paths in the host's mount namespace for a sandboxed berthd.
#[derive(Debug, Parser)]
#[command(name = "berth-pin", version)]
struct Args {
    /// berthd's configuration file ([policy] allowed_host_path_roots and the owner of new
    /// directories are read from it).
    #[arg(long, default_value = "/etc/berth/config.toml")]
    config: PathBuf,
    /// The socket to listen on; the staging mounts go under `<its directory>/mounts`.
    #[arg(long, default_value = "/run/berth-pin/pin.sock")]
    socket: PathBuf,
    /// A user besides root whose processes are served (berthd's, when it runs as its own
    /// user); repeatable.
    #[arg(long = "peer-user")]
    peer_users: Vec<String>,
    /// Docker's volume directory (`<data-root>/volumes`): a claimed warm server's local
    /// volumes are mounted from beneath it, by name.
    #[arg(long, default_value = "/var/lib/docker/volumes")]
    docker_volumes: PathBuf,
    /// Write the man page berth-pin.1 into this directory and exit (for packaging).
    #[arg(long, hide = true, value_name = "DIR")]
    man: Option<PathBuf>,
}

fn run(args: Args) -> anyhow::Result<()> {
    let cfg = berthd::config::Config::from_file(&args.config)
        .with_context(|| format!("reading {}", args.config.display()))?;
    let peers = args
        .peer_users
        .iter()
        .map(|u| helper::uid_of(u))
        .collect::<Result<Vec<_>, _>>()?;
    let mut helper_cfg = HelperConfig::from_config(&cfg, args.socket, peers);
    helper_cfg.docker_volumes = args.docker_volumes;
    let listener = helper::bind(&helper_cfg)?;
    tracing::info!(socket = %helper_cfg.socket.display(), roots = ?helper_cfg.roots, peers = ?helper_cfg.peer_uids, "serving");
    if let Ok(n) = berthd::notify::Notifier::from_env(&berthd::config::ProcessEnv) {
        n.ready("serving");
    }
    helper::serve(&listener, helper_cfg);
    anyhow::bail!("the listener failed")
}

/// `berth-pin graft-into …`: the child the helper runs to graft into a container (see
/// `berthd::hostpath::graft`).
#[derive(Debug, Parser)]
#[command(name = "berth-pin graft-into")]
struct GraftIntoCli {
    #[command(flatten)]
    graft: berthd::hostpath::graft::GraftInto,
}

fn main() -> ExitCode {
    if std::env::args_os().nth(1).as_deref() == Some(std::ffi::OsStr::new("graft-into")) {
        // Single-threaded here, as a change of mount namespace needs.
        return GraftIntoCli::parse_from(std::env::args_os().skip(1))
            .graft
            .run();
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let args = Args::parse();
    if let Some(dir) = &args.man {
        let cmd = <Args as clap::CommandFactory>::command();
        return match std::fs::create_dir_all(dir).and_then(|()| clap_mangen::generate_to(cmd, dir))
        {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!(
                    "berth-pin: writing the man page into {}: {e}",
                    dir.display()
                );
                ExitCode::FAILURE
            }
        };
    }
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            // A configuration or user that cannot be read will not fix itself
            // (RestartPreventExitStatus=64); a socket that cannot be bound might.
            let config = e.downcast_ref::<berthd::config::ConfigError>().is_some()
                || matches!(e.downcast_ref(), Some(helper::HelperError::NoUser { .. }));
            ExitCode::from(if config { 64 } else { 1 })
        }
    }
}
