//! The `berthd` binary: parse flags, load config, run the daemon until SIGTERM/SIGINT.

use std::io::Write;
use std::process::ExitCode;

use berthd::config::{Config, Overrides, ProcessEnv};
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "berthd",
    version,
    about = "berth node daemon: JupyterHub servers as Docker containers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the gRPC spawner API (with no flags: the embedded default configuration).
    Serve(Overrides),
    /// Check or print the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// The same as `config check` (kept for scripts).
    #[command(hide = true)]
    CheckConfig(Overrides),
    /// Attach the detached mount on stdin at a path inside a container (berthd runs this
    /// itself when a warm container is claimed; see `hostpath::graft`).
    #[command(hide = true)]
    GraftInto(berthd::hostpath::graft::GraftInto),
    /// Write man pages (berthd.1 and one per command) into a directory (for packaging).
    #[command(hide = true)]
    Man {
        /// The directory (made if missing).
        dir: std::path::PathBuf,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Load and validate the configuration and every file it names, exactly as `serve` would;
    /// print the effective configuration as TOML (secrets redacted). Exit 64 naming the key
    /// (and file) when it is unusable.
    Check(Overrides),
    /// Print the documented default configuration file (/etc/berth/config.toml).
    Default,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (args, check_only) = match cli.command {
        Command::Serve(a) => (a, false),
        Command::Config(ConfigCommand::Check(a)) | Command::CheckConfig(a) => (a, true),
        Command::Config(ConfigCommand::Default) => {
            return print(berthd::config::show::DEFAULT_FILE);
        }
        Command::Man { dir } => return man(<Cli as clap::CommandFactory>::command(), &dir),
        // Single-threaded here: no runtime has started.
        Command::GraftInto(g) => return g.run(),
    };
    for name in berthd::config::unknown_vars(&ProcessEnv) {
        eprintln!(
            "berthd: warning: {name} is not a berthd variable and is ignored (`berthd serve --help` lists each key's)"
        );
    }
    let cfg = match Config::load(&ProcessEnv, &args) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("berthd: configuration error: {e}");
            return ExitCode::from(64);
        }
    };
    if check_only {
        return print_config(&cfg);
    }
    // The log starts once its configuration is known; nothing logs before this.
    if let Err(e) = berthd::logging::init(&cfg.log) {
        eprintln!("berthd: configuration error: config key log.filter: {e}");
        return ExitCode::from(64);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("berthd: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(on_signal(shutdown.clone()));
        match serve(cfg, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %e, "berthd stopped");
                eprintln!("berthd: {e}");
                ExitCode::from(e.exit_code())
            }
        }
    })
}

/// Runs the daemon: on Docker, or (builds with the `sim` feature, when `BERTHD_SIM_IMAGES` is
/// set) on the simulated engine, its starts taking `BERTHD_SIM_START_MS`.
async fn serve(cfg: Config, shutdown: CancellationToken) -> Result<(), berthd::serve::ServeError> {
    #[cfg(feature = "sim")]
    if let Ok(images) = std::env::var("BERTHD_SIM_IMAGES") {
        let images: Vec<String> = images.split(',').map(str::to_owned).collect();
        let ms = std::env::var("BERTHD_SIM_START_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        tracing::warn!(
            ?images,
            start_ms = ms,
            "SIMULATED ENGINE: no container runs"
        );
        return berthd::serve::run_sim(
            cfg,
            &images,
            std::time::Duration::from_millis(ms),
            shutdown,
        )
        .await;
    }
    berthd::serve::run(cfg, shutdown).await
}

/// `config check`'s answer: the effective configuration as TOML on stdout (paths, never the
/// contents of token or key files; secrets redacted), the verdict on stderr.
fn print_config(cfg: &Config) -> ExitCode {
    let text = match cfg.to_toml_redacted() {
        Ok(text) => text,
        Err(e) => {
            eprintln!("berthd: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = print(&text);
    if code == ExitCode::SUCCESS {
        eprintln!("berthd: configuration is valid");
    }
    code
}

fn print(text: &str) -> ExitCode {
    if let Err(e) = std::io::stdout().lock().write_all(text.as_bytes()) {
        eprintln!("berthd: cannot print the configuration: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

async fn on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    shutdown.cancel();
}

/// Writes the man pages of `cmd` (and of each of its commands) into `dir`.
fn man(cmd: clap::Command, dir: &std::path::Path) -> ExitCode {
    let written = std::fs::create_dir_all(dir).and_then(|()| clap_mangen::generate_to(cmd, dir));
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berthd: writing man pages into {}: {e}", dir.display());
            ExitCode::FAILURE
        }
    }
}
