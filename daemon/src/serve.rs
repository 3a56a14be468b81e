//! The wiring: the only place that names concrete types (bollard engine, tonic server).

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_proto::v1::admin_server::AdminServer;
use berth_proto::v1::spawner_server::SpawnerServer;
use tokio::net::{TcpListener, UnixListener};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic_health::ServingStatus;

use crate::api::auth::BearerAuth;
use crate::api::operator::OperatorOnly;
use crate::api::{AdminService, SpawnerService};
use crate::config::{self, Config, ConfigError, ProcessEnv};
use crate::docker::{BollardEngine, ContainerEngine, EngineError};
use crate::notify::{Notifier, Watchdog};
use crate::runtime::Runtime;
use crate::runtime::lifecycle::fence;
use crate::state::FileStore;
use crate::tls::ReloadableTls;
use berth_hub_client::HubClient;
use tonic::service::interceptor::InterceptedService;

/// How often the Docker engine is pinged for the health service.
pub const HEALTH_INTERVAL: Duration = Duration::from_secs(5);
/// How long in-flight RPCs may run on after a shutdown signal.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Why the daemon could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The state directory is unusable.
    #[error("state directory {path}: {source}")]
    StateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The listen address cannot be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The Docker client could not be set up.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The state store is unusable.
    #[error(transparent)]
    Store(#[from] crate::state::StoreError),
    /// The runtime could not load its records.
    #[error(transparent)]
    Runtime(#[from] crate::runtime::Error),
    /// The Admin socket cannot be bound.
    #[error("admin socket {path}: {source}")]
    AdminSocket {
        /// The socket path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

impl ServeError {
    /// Process exit status: 64 (EX_USAGE) for configuration errors, so systemd does not
    /// restart-loop on them; 73 (EX_CANTCREAT) for an unusable state directory; 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            ServeError::Config(_) => 64,
            ServeError::StateDir { .. } | ServeError::Store(_) => 73,
            _ => 1,
        }
    }
}

/// Creates the state directory (mode 0700) and checks it is writable.
pub fn prepare_state_dir(dir: &Path) -> Result<(), ServeError> {
    let err = |source| ServeError::StateDir {
        path: dir.to_owned(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err)?;
    let probe = dir.join(".write-check");
    std::fs::write(&probe, b"").map_err(err)?;
    std::fs::remove_file(&probe).map_err(err)?;
    Ok(())
}

/// Largest request accepted, in bytes (a Start with its env is far smaller).
pub const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;

/// The listener's TLS, if configured: server identity and, for mutual TLS, the client CA, read
/// by the same checks as `Config::validate`, so `config check` agrees with this.
fn tls_config(cfg: &Config) -> Result<Option<ReloadableTls>, ServeError> {
    if !cfg.security.tls() {
        return Ok(None);
    }
    Ok(Some(ReloadableTls::load(&cfg.security)?))
}

/// Binds the Admin socket with mode 0660, replacing a stale socket file of an earlier run.
fn bind_admin_socket(path: &Path) -> Result<UnixListener, ServeError> {
    let err = |source| ServeError::AdminSocket {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path).map_err(err)?,
        Ok(_) => {
            return Err(err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "exists and is not a socket",
            )));
        }
        Err(_) => {}
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(err)?;
    Ok(listener)
}

/// Runs the daemon until `shutdown` is cancelled. Containers keep running after it returns.
pub async fn run(cfg: Config, shutdown: CancellationToken) -> Result<(), ServeError> {
    let timeout = Duration::from_secs(cfg.docker.timeout_seconds);
    let host = cfg.docker.host.clone();
    run_on(cfg, BollardEngine::connect(&host, timeout), shutdown).await
}

/// Runs the daemon on a simulated engine (the in-memory fake: every image in `images` serves
/// HTTP on 127.0.0.1 from the moment it runs, each start taking `start_delay`), for benchmarks
/// of many nodes on one machine. Only in builds with the `sim` feature.
#[cfg(feature = "sim")]
pub async fn run_sim(
    cfg: Config,
    images: &[String],
    start_delay: Duration,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let engine = crate::docker::fake::FakeEngine::new();
    for image in images {
        engine.add_image(image, crate::docker::fake::Behaviour::Serve);
    }
    engine.set_start_delay(start_delay);
    run_on(cfg, async { Ok(engine) }, shutdown).await
}

/// Runs the daemon on the engine `connect` yields (awaited after the configuration checks).
async fn run_on<E: ContainerEngine>(
    cfg: Config,
    connect: impl std::future::Future<Output = Result<E, EngineError>>,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    // SIGHUP's default action ends the process: take it over before anything else.
    let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let auth = if cfg.security.token() {
        BearerAuth::with_token(&config::read_token(
            "security.token_file",
            &cfg.security.token_file,
            crate::api::auth::MIN_TOKEN_BYTES,
        )?)
    } else {
        BearerAuth::open()
    };
    let tls = tls_config(&cfg)?;
    let notifier = Notifier::from_env(&ProcessEnv).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "not notifying systemd");
        Notifier::disabled()
    });
    let (rt, since, reconciled) = runtime(&cfg, connect).await?;
    if reconciled {
        rt.prepare_default_networks().await;
    }
    let nets = rt.container_nets().clone();
    let listener = TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: cfg.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| ServeError::Bind {
        addr: cfg.listen,
        source,
    })?;
    let (health, health_service) = tonic_health::server::health_reporter();
    let tasks = TaskTracker::new();
    if let Some(hangups) = hangups {
        tasks.spawn(reload_on_hangup(
            hangups,
            cfg.security.clone(),
            auth.clone(),
            tls.clone(),
            shutdown.clone(),
        ));
    }
    tasks.spawn(watch_docker(
        rt.clone(),
        health,
        notifier.clone(),
        shutdown.clone(),
    ));
    let watchdog = Watchdog::from_env(&ProcessEnv, &notifier);
    tasks.spawn(crate::monitor::run_with_watchdog(
        rt.clone(),
        since,
        shutdown.clone(),
        watchdog,
    ));
    spawn_reporter(&cfg, &rt, &tasks, &shutdown)?;
    tasks.spawn(crate::runtime::images::image_gc::run(
        rt.clone(),
        rt.config().image_gc.clone(),
        shutdown.clone(),
    ));
    // Always: a Start may ask for fencing on a node that does not fence by default.
    tasks.spawn(fence::run(rt.clone(), shutdown.clone()));
    tasks.spawn({
        let (rt, shutdown) = (rt.clone(), shutdown.clone());
        async move { rt.keep_warm(shutdown).await }
    });
    spawn_metrics(&cfg, &rt, &tasks, &shutdown).await?;
    let admin_path = cfg.admin_socket();
    spawn_admin(&admin_path, &rt, &tasks, &shutdown)?;
    tracing::info!(%addr, version = env!("CARGO_PKG_VERSION"), publish_host_ip = %cfg.docker.publish_host_ip, advertise_host = %cfg.advertise_host(), node_id = %cfg.node_id, state_dir = %cfg.state_dir.display(), admin_socket = %admin_path.display(), docker = %cfg.docker.host, tls = cfg.security.tls(), mutual_tls = cfg.security.mutual_tls(), token = cfg.security.token(), "berthd listening");
    if let Some(warning) = crate::logging::publish_warning(addr, cfg.docker.publish_host_ip) {
        tracing::warn!("{warning}");
    }
    if !addr.ip().is_loopback() && !cfg.security.tls() {
        tracing::warn!(%addr, "SERVING PLAINTEXT gRPC ON THE NETWORK (security.insecure_plaintext_on_network): anyone who reaches this port controls Docker on this node");
    }
    // Both listeners are bound (connections queue until the server polls them): systemd may
    // call berthd started once Docker answered a reconcile.
    tasks.spawn(announce_ready(
        rt.clone(),
        notifier.clone(),
        reconciled,
        shutdown.clone(),
    ));
    // HTTP/2 keepalive closes a connection whose peer stopped answering (a hub cut off by
    // the network), ending its Watch streams: fencing counts the hub as gone from then on.
    let mut builder = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(fence::KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(fence::KEEPALIVE_TIMEOUT))
        .layer(crate::metrics::GrpcLayer::new(rt.metrics().clone()));
    let calls = HubCalls {
        auth,
        contact: rt.hub_contact().clone(),
    };
    let spawner = SpawnerServer::new(SpawnerService::for_hub(rt))
        .max_decoding_message_size(MAX_REQUEST_BYTES);
    let router = builder
        .add_service(health_service)
        .add_service(InterceptedService::new(spawner, calls));
    // STOPPING=1 goes out before the server winds down: were it sent beside the server's
    // future, a server with nothing in flight would finish first and it would never be sent.
    let stop = {
        let shutdown = shutdown.clone();
        let notifier = notifier.clone();
        async move {
            shutdown.cancelled().await;
            notifier.stopping();
            tracing::info!("shutting down; containers keep running");
        }
    };
    let server: std::pin::Pin<Box<dyn std::future::Future<Output = _> + Send>> = match tls {
        Some(tls) => Box::pin(router.serve_with_incoming_shutdown(
            crate::tls::incoming(listener, tls, nets, shutdown.clone()),
            stop,
        )),
        None => {
            // A refused connection is dropped, which closes it.
            let incoming = TcpListenerStream::new(listener).filter(move |conn| match conn {
                Ok(tcp) => tcp
                    .peer_addr()
                    .is_ok_and(|peer| !crate::tls::refused(&nets, peer)),
                Err(_) => true,
            });
            Box::pin(router.serve_with_incoming_shutdown(incoming, stop))
        }
    };
    let grace = async {
        shutdown.cancelled().await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        r = server => r?,
        () = grace => tracing::warn!("in-flight calls did not finish within {SHUTDOWN_GRACE:?}; leaving them"),
    }
    tasks.close();
    tasks.wait().await;
    Ok(())
}

/// The hub's calls on the gRPC listener: the bearer token checked, then the hub's contact
/// noted (fencing counts from the last one).
#[derive(Clone)]
struct HubCalls {
    auth: BearerAuth,
    contact: std::sync::Arc<fence::HubContact>,
}

impl tonic::service::Interceptor for HubCalls {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let request = self.auth.call(request)?;
        self.contact.touch();
        Ok(request)
    }
}

/// The runtime over Docker, its records loaded and reconciled with what runs (a restart never
/// stops or recreates a container), and the time the monitor's events start from.
/// The boolean says whether that first reconcile succeeded (Docker answered).
async fn runtime<E: ContainerEngine>(
    cfg: &Config,
    connect: impl std::future::Future<Output = Result<E, EngineError>>,
) -> Result<(Runtime<E>, i64, bool), ServeError> {
    prepare_state_dir(&cfg.state_dir)?;
    // Pins live only while a container starts; any found now were left by a crash.
    crate::hostpath::clear_staging(&cfg.state_dir);
    let store = FileStore::open(&cfg.state_dir)?;
    let engine = connect.await?;
    let rt = Runtime::new(engine, cfg.runtime(), store);
    let corrupt = rt.load_records().await?;
    let since = crate::monitor::now_secs();
    let reconciled = match rt.reconcile().await {
        Ok(report) => {
            tracing::info!(?report, corrupt, "reconciled with Docker");
            true
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot reconcile with Docker yet; the monitor retries");
            false
        }
    };
    Ok((rt, since, reconciled))
}

/// The `/metrics` server, when `[metrics] listen` is set.
async fn spawn_metrics<E: ContainerEngine>(
    cfg: &Config,
    rt: &Runtime<E>,
    tasks: &TaskTracker,
    shutdown: &CancellationToken,
) -> Result<(), ServeError> {
    let Some(want) = cfg.metrics.addr() else {
        return Ok(());
    };
    let bind_err = |source| ServeError::Bind { addr: want, source };
    let listener = TcpListener::bind(want).await.map_err(bind_err)?;
    let addr = listener.local_addr().map_err(bind_err)?;
    tracing::info!(%addr, "serving Prometheus metrics on http://{addr}/metrics");
    tasks.spawn(crate::metrics::serve(
        listener,
        rt.clone(),
        shutdown.clone(),
    ));
    Ok(())
}

/// The activity reporter, when `[activity]` is enabled.
fn spawn_reporter<E: ContainerEngine>(
    cfg: &Config,
    rt: &Runtime<E>,
    tasks: &TaskTracker,
    shutdown: &CancellationToken,
) -> Result<(), ServeError> {
    if !cfg.activity.enabled {
        return Ok(());
    }
    let a = &cfg.activity;
    let ca = (!a.ca_file.as_os_str().is_empty()).then_some(a.ca_file.as_path());
    let hub = HubClient::new(
        &a.hub_api_url,
        &a.token_file,
        ca,
        berth_hub_client::DEFAULT_TIMEOUT,
    )
    .map_err(|e| {
        ServeError::Config(ConfigError::Invalid {
            key: "activity".to_owned(),
            message: e.to_string(),
        })
    })?;
    tasks.spawn(crate::reporter::run(
        rt.clone(),
        hub,
        a.clone(),
        shutdown.clone(),
    ));
    Ok(())
}

/// The Admin service on its Unix socket, with the Spawner's operator methods.
fn spawn_admin<E: ContainerEngine>(
    path: &Path,
    rt: &Runtime<E>,
    tasks: &TaskTracker,
    shutdown: &CancellationToken,
) -> Result<(), ServeError> {
    let listener = bind_admin_socket(path)?;
    // berthctl on the node reads and stops through the same socket, with no credentials.
    let reads = OperatorOnly::new(SpawnerServer::new(SpawnerService::new(rt.clone())));
    let admin = tonic::transport::Server::builder()
        .layer(crate::metrics::GrpcLayer::new(rt.metrics().clone()))
        .add_service(AdminServer::new(AdminService::new(rt.clone())))
        .add_service(reads)
        .serve_with_incoming_shutdown(
            UnixListenerStream::new(listener),
            shutdown.clone().cancelled_owned(),
        );
    tasks.spawn(async move {
        if let Err(e) = admin.await {
            tracing::error!(error = %e, "Admin service failed");
        }
    });
    Ok(())
}

/// SIGHUP: reads the token file and the TLS files (certificate, key, client CA) again, as at
/// start-up, and swaps each in without dropping a connection or a server: new requests check
/// the new token, new TLS handshakes use the new files, open connections keep their session.
/// A file that no longer passes keeps what is in force (and the error names the file).
async fn reload_on_hangup(
    mut hangups: tokio::signal::unix::Signal,
    sec: config::SecurityConfig,
    auth: BearerAuth,
    tls: Option<ReloadableTls>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            got = hangups.recv() => if got.is_none() { return },
        }
        if !sec.token() && tls.is_none() {
            tracing::info!("SIGHUP: no token or TLS files configured; nothing to reload");
            continue;
        }
        if sec.token() {
            match config::read_token(
                "security.token_file",
                &sec.token_file,
                crate::api::auth::MIN_TOKEN_BYTES,
            ) {
                Ok(token) => {
                    auth.replace(&token);
                    tracing::info!(token_file = %sec.token_file.display(), "SIGHUP: token reloaded");
                }
                Err(e) => {
                    tracing::error!(error = %e, "SIGHUP: token not reloaded; the old one stays");
                }
            }
        }
        if let Some(tls) = &tls {
            match tls.reload(&sec) {
                Ok(()) => tracing::info!(
                    tls_cert_file = %sec.tls_cert_file.display(),
                    tls_key_file = %sec.tls_key_file.display(),
                    client_ca_file = %sec.client_ca_file.display(),
                    "SIGHUP: TLS reloaded; new connections use the new files"
                ),
                Err(e) => tracing::error!(
                    error = %e,
                    "SIGHUP: TLS not reloaded; the old certificate, key and client CA stay"
                ),
            }
        }
    }
}

/// How often a start-up reconcile that failed (Docker not answering) is tried again before
/// berthd tells systemd it is ready.
pub const READY_RETRY: Duration = Duration::from_secs(1);

/// READY=1 once a reconcile has succeeded (at start-up, or retried until Docker answers).
async fn announce_ready<E: ContainerEngine>(
    rt: Runtime<E>,
    notifier: Notifier,
    mut reconciled: bool,
    shutdown: CancellationToken,
) {
    while !reconciled {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(READY_RETRY) => {}
        }
        match rt.reconcile().await {
            Ok(report) => {
                tracing::info!(?report, "Docker answers; reconciled");
                reconciled = true;
            }
            Err(e) => tracing::debug!(error = %e, "still cannot reconcile with Docker"),
        }
    }
    notifier.ready(&status_line(&rt, true));
}

/// The one-line summary systemd shows: servers, Docker, drain.
fn status_line<E: ContainerEngine>(rt: &Runtime<E>, docker_up: bool) -> String {
    let servers = rt.view().keys().len();
    let running = rt.view().running_containers().len();
    let docker = if docker_up { "up" } else { "DOWN" };
    let drain = match rt.draining() {
        Some(reason) if reason.is_empty() => "DRAINING".to_owned(),
        Some(reason) => format!("DRAINING ({reason})"),
        None => "accepting servers".to_owned(),
    };
    format!("{servers} servers ({running} running), Docker {docker}, {drain}")
}

async fn watch_docker<E: ContainerEngine>(
    rt: Runtime<E>,
    health: tonic_health::server::HealthReporter,
    notifier: Notifier,
    shutdown: CancellationToken,
) {
    let mut was_up = None;
    let mut last_status = String::new();
    loop {
        let up = match rt.engine().ping().await {
            Ok(()) => true,
            Err(e) => {
                if was_up != Some(false) {
                    tracing::error!(error = %e, "Docker engine is unreachable; reporting NOT_SERVING");
                }
                false
            }
        };
        if was_up != Some(up) {
            let status = if up {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            health.set_service_status("", status).await;
            health.set_service_status("berth.v1.Spawner", status).await;
            rt.metrics().set_docker_up(up);
            rt.capacity_changed();
            if up && was_up.is_some() {
                tracing::info!("Docker engine is reachable again");
            }
            was_up = Some(up);
        }
        let status = status_line(&rt, up);
        if status != last_status {
            notifier.status(&status);
            last_status = status;
        }
        tokio::select! {
            () = shutdown.cancelled() => {
                health.set_service_status("", ServingStatus::NotServing).await;
                health.set_service_status("berth.v1.Spawner", ServingStatus::NotServing).await;
                return;
            }
            () = tokio::time::sleep(HEALTH_INTERVAL) => {}
        }
    }
}
