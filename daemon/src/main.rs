//! The `berthd` binary: parse flags, load config, run the daemon until SIGTERM/SIGINT.

use std::path::PathBuf;
use std::process::ExitCode;

use berthd::config::{Config, Overrides, ProcessEnv};
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

/// Libraries whose debug output could carry secrets (request bodies, headers).
const LIBRARIES_CAPPED_AT_INFO: &[&str] = &[
    "bollard",
    "hyper",
    "hyper_util",
    "h2",
    "tonic",
    "tower",
    "rustls",
    "reqwest",
    "http",
];

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
    Serve(ServeArgs),
    /// Load and validate the configuration, print it, and exit.
    CheckConfig(ServeArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// TOML configuration file (also BERTH_CONFIG).
    #[arg(long)]
    config: Option<PathBuf>,
    /// gRPC listen address, e.g. 127.0.0.1:50051 (also BERTH_LISTEN).
    #[arg(long)]
    listen: Option<String>,
    /// State directory (also BERTH_STATE_DIR).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// This node's id (also BERTH_NODE_ID).
    #[arg(long)]
    node_id: Option<String>,
    /// Docker engine address, unix:///path or tcp://host:port (also BERTH_DOCKER_HOST).
    #[arg(long)]
    docker_host: Option<String>,
    /// Host address container ports are published on (also BERTH_PUBLISH_HOST_IP).
    #[arg(long)]
    publish_host_ip: Option<String>,
    /// Host name put in server URLs (also BERTH_ADVERTISE_HOST).
    #[arg(long)]
    advertise_host: Option<String>,
    /// Unix socket of the Admin service (also BERTH_ADMIN_SOCKET); default <state-dir>/admin.sock.
    #[arg(long)]
    admin_socket: Option<PathBuf>,
    /// File with the bearer token the hub must present (also BERTH_TOKEN_FILE).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// TLS server certificate, PEM.
    #[arg(long)]
    tls_cert_file: Option<PathBuf>,
    /// TLS server key, PEM.
    #[arg(long)]
    tls_key_file: Option<PathBuf>,
    /// CA of accepted client certificates (mutual TLS), PEM.
    #[arg(long)]
    client_ca_file: Option<PathBuf>,
}

impl From<ServeArgs> for Overrides {
    fn from(a: ServeArgs) -> Self {
        Overrides {
            config: a.config,
            listen: a.listen,
            state_dir: a.state_dir,
            node_id: a.node_id,
            docker_host: a.docker_host,
            publish_host_ip: a.publish_host_ip,
            advertise_host: a.advertise_host,
            admin_socket: a.admin_socket,
            token_file: a.token_file,
            tls_cert_file: a.tls_cert_file,
            tls_key_file: a.tls_key_file,
            client_ca_file: a.client_ca_file,
        }
    }
}

fn main() -> ExitCode {
    let mut filter = tracing_subscriber::EnvFilter::try_from_env("BERTH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Whatever BERTH_LOG says, libraries that log request bodies or headers at debug/trace
    // (bollard logs the create payload, which holds the hub's token) stay at info.
    for quiet in LIBRARIES_CAPPED_AT_INFO {
        if let Ok(d) = format!("{quiet}=info").parse() {
            filter = filter.add_directive(d);
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    let cli = Cli::parse();
    let (args, check_only) = match cli.command {
        Command::Serve(a) => (a, false),
        Command::CheckConfig(a) => (a, true),
    };
    let cfg = match Config::load(&ProcessEnv, &args.into()) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("berthd: configuration error: {e}");
            return ExitCode::from(64);
        }
    };
    if check_only {
        eprintln!("berthd: configuration is valid:\n{cfg:#?}");
        return ExitCode::SUCCESS;
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
        match berthd::serve::run(cfg, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %e, "berthd stopped");
                eprintln!("berthd: {e}");
                ExitCode::from(e.exit_code())
            }
        }
    })
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
