//! Prometheus metrics (`[metrics] listen`): the families, named like JupyterHub's own with a
//! `berthd_` prefix, a tower layer counting gRPC calls, and the plain-HTTP `/metrics` server.
//!
//! The registry is owned by the runtime (no global): the runtime records spawn and stop
//! durations, `serve` feeds Docker's health and the gRPC counts, and a scrape reads the gauges
//! that are cheap to compute (servers, capacity) at that moment, through [`Scraped`]: this
//! module never names the runtime.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::codegen::http;

use crate::capacity::Alloc;
use crate::netguard::ContainerNets;

/// What a scrape reads of the node at that moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct Gauges {
    /// berth's containers running now.
    pub running: usize,
    /// CPU and memory servers may have.
    pub allocatable: Alloc,
    /// CPU and memory servers hold.
    pub committed: Alloc,
}

/// The node the metrics server scrapes (the runtime implements it).
pub trait Scraped: Clone + Send + Sync + 'static {
    /// The node's registry.
    fn metrics(&self) -> &Metrics;
    /// The gauges, read now.
    fn gauges(&self) -> Gauges;
    /// The container networks whose connections are closed unread.
    fn container_nets(&self) -> &ContainerNets;
}

/// Spawn-duration buckets, JupyterHub's `SERVER_SPAWN_DURATION_SECONDS` (its +Inf is implied).
pub const SPAWN_BUCKETS: [f64; 12] = [
    0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 180.0, 300.0, 600.0,
];
/// Stop-duration buckets: a stop is a SIGTERM and at most the grace before SIGKILL.
pub const STOP_BUCKETS: [f64; 10] = [0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0, 60.0];
/// Image-pull-duration buckets: seconds for a cached layer set, up to the default pull timeout.
pub const PULL_BUCKETS: [f64; 10] = [
    1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];
/// Every RPC of berth's services (`berth/v1/*.proto`), whose `{method, code="OK"}` series of
/// `berthd_grpc_requests_total` exist from the start at zero; a test keeps it in step with
/// the proto files.
pub const RPCS: &[&str] = &[
    "Spawner/Version",
    "Spawner/Start",
    "Spawner/Stop",
    "Spawner/Poll",
    "Spawner/List",
    "Spawner/Capacity",
    "Spawner/Watch",
    "Spawner/Progress",
    "Spawner/Logs",
    "Spawner/Prepull",
    "Spawner/Stats",
    "Spawner/Warm",
    "Spawner/ListVolumes",
    "Spawner/ExportVolume",
    "Spawner/ImportVolume",
    "Spawner/RemoveVolume",
    "Spawner/GetState",
    "Spawner/PutState",
    "Spawner/DeleteForever",
    "Admin/Drain",
    "Admin/Undrain",
    "Admin/Reconcile",
];
/// The content type of the text `/metrics` serves.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Longest one scrape connection may stay open.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

/// `{status}` of a spawn or a stop.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: &'static str,
}

/// `{result}` of an activity report to the hub.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

/// `{method,code}` of a gRPC call.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GrpcLabels {
    method: String,
    code: &'static str,
}

type Timings = Family<StatusLabel, Histogram, fn() -> Histogram>;

fn spawn_histogram() -> Histogram {
    Histogram::new(SPAWN_BUCKETS)
}

fn stop_histogram() -> Histogram {
    Histogram::new(STOP_BUCKETS)
}

fn pull_histogram() -> Histogram {
    Histogram::new(PULL_BUCKETS)
}

/// berthd's metric families and their registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    spawn: Timings,
    stop: Timings,
    pull: Timings,
    pull_bytes: Counter,
    running: Gauge,
    docker_up: Gauge,
    activity: Family<ResultLabel, Counter>,
    activity_pending: Gauge,
    grpc: Family<GrpcLabels, Counter>,
    allocatable_cpu: Gauge<f64, AtomicU64>,
    committed_cpu: Gauge<f64, AtomicU64>,
    allocatable_memory: Gauge,
    committed_memory: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn status(ok: bool) -> StatusLabel {
    StatusLabel {
        status: if ok { "success" } else { "failure" },
    }
}

fn gauge_value(v: impl TryInto<i64>) -> i64 {
    v.try_into().unwrap_or(i64::MAX)
}

impl Metrics {
    /// Every family registered, the `{status}` series of spawns and stops present from the
    /// start (so dashboards and alerts see zeros, not gaps).
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("berthd");
        let spawn = Timings::new_with_constructor(spawn_histogram as fn() -> Histogram);
        let stop = Timings::new_with_constructor(stop_histogram as fn() -> Histogram);
        let pull = Timings::new_with_constructor(pull_histogram as fn() -> Histogram);
        for ok in [true, false] {
            drop(spawn.get_or_create(&status(ok)));
            drop(stop.get_or_create(&status(ok)));
            drop(pull.get_or_create(&status(ok)));
        }
        let activity = Family::<ResultLabel, Counter>::default();
        for result in ["sent", "failed", "dropped"] {
            drop(activity.get_or_create(&ResultLabel { result }));
        }
        let grpc = Family::<GrpcLabels, Counter>::default();
        for method in RPCS {
            drop(grpc.get_or_create(&GrpcLabels {
                method: format!("berth.v1.{method}"),
                code: "OK",
            }));
        }
        let m = Self {
            spawn,
            stop,
            pull,
            pull_bytes: Counter::default(),
            running: Gauge::default(),
            docker_up: Gauge::default(),
            activity,
            activity_pending: Gauge::default(),
            grpc,
            allocatable_cpu: Gauge::default(),
            committed_cpu: Gauge::default(),
            allocatable_memory: Gauge::default(),
            committed_memory: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "server_spawn_duration_seconds",
            "Time from a Start to its server answering HTTP (or failing)",
            m.spawn.clone(),
        );
        registry.register(
            "server_stop_duration_seconds",
            "Time a Stop took",
            m.stop.clone(),
        );
        registry.register(
            "image_pull_duration_seconds",
            "Time an image pull took (one per pull, however many spawns wait on it)",
            m.pull.clone(),
        );
        registry.register(
            "image_pull_bytes",
            "Compressed layer bytes downloaded by finished pulls",
            m.pull_bytes.clone(),
        );
        registry.register(
            "running_servers",
            "Servers whose container runs",
            m.running.clone(),
        );
        registry.register(
            "docker_up",
            "1 if the Docker engine answered the last ping, else 0",
            m.docker_up.clone(),
        );
        registry.register(
            "grpc_requests",
            "gRPC calls by method and status code (a stream counts when its headers go out)",
            m.grpc.clone(),
        );
        registry.register(
            "activity_reports",
            "Users' activity reports to the hub: sent, failed (retried) or dropped (refused for good)",
            m.activity.clone(),
        );
        registry.register(
            "activity_pending_servers",
            "Servers with activity not yet delivered to the hub",
            m.activity_pending.clone(),
        );
        registry.register(
            "allocatable_cpu_cores",
            "Cores servers may hold: the host's minus the reservation",
            m.allocatable_cpu.clone(),
        );
        registry.register(
            "committed_cpu_cores",
            "Cores held by running and admitted servers",
            m.committed_cpu.clone(),
        );
        registry.register(
            "allocatable_memory_bytes",
            "Memory servers may hold: the host's minus the reservation",
            m.allocatable_memory.clone(),
        );
        registry.register(
            "committed_memory_bytes",
            "Memory held by running and admitted servers",
            m.committed_memory.clone(),
        );
        Self { registry, ..m }
    }

    /// A spawn ended after `took`.
    pub fn spawn_done(&self, took: Duration, ok: bool) {
        self.spawn
            .get_or_create(&status(ok))
            .observe(took.as_secs_f64());
    }

    /// A stop ended after `took`.
    pub fn stop_done(&self, took: Duration, ok: bool) {
        self.stop
            .get_or_create(&status(ok))
            .observe(took.as_secs_f64());
    }

    /// A pull ended after `took`, having downloaded `bytes`.
    pub fn pull_done(&self, took: Duration, ok: bool, bytes: u64) {
        self.pull
            .get_or_create(&status(ok))
            .observe(took.as_secs_f64());
        self.pull_bytes.inc_by(bytes);
    }

    /// The activity reporter's counts grew by these; `pending` servers wait for delivery.
    pub fn activity_reported(&self, sent: u64, failed: u64, dropped: u64, pending: usize) {
        for (result, n) in [("sent", sent), ("failed", failed), ("dropped", dropped)] {
            self.activity
                .get_or_create(&ResultLabel { result })
                .inc_by(n);
        }
        self.activity_pending.set(gauge_value(pending));
    }

    /// Whether Docker answered the last health ping.
    pub fn set_docker_up(&self, up: bool) {
        self.docker_up.set(i64::from(up));
    }

    /// One gRPC call to `path` (`/package.Service/Method`) ended with `code`.
    fn grpc_call(&self, path: &str, code: tonic::Code) {
        // The path comes from the client: only our services' methods become label values.
        let method = if path.starts_with("/berth.v1.") || path.starts_with("/grpc.health.v1.") {
            path.trim_start_matches('/').to_owned()
        } else {
            "other".to_owned()
        };
        self.grpc
            .get_or_create(&GrpcLabels {
                method,
                code: code_name(code),
            })
            .inc();
    }

    /// The gauges read now, then every family as OpenMetrics text.
    pub fn render(&self, now: &Gauges) -> String {
        self.running.set(gauge_value(now.running));
        let (allocatable, committed) = (now.allocatable, now.committed);
        self.allocatable_cpu.set(allocatable.cpu);
        self.committed_cpu.set(committed.cpu);
        self.allocatable_memory.set(gauge_value(allocatable.memory));
        self.committed_memory.set(gauge_value(committed.memory));
        self.encode()
    }

    /// Every family as OpenMetrics text, as it stands.
    fn encode(&self) -> String {
        let mut text = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        text
    }
}

/// The canonical name of a gRPC status code, as in the gRPC spec (`OK`, `NOT_FOUND`, ...).
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code as C;
    match code {
        C::Ok => "OK",
        C::Cancelled => "CANCELLED",
        C::Unknown => "UNKNOWN",
        C::InvalidArgument => "INVALID_ARGUMENT",
        C::DeadlineExceeded => "DEADLINE_EXCEEDED",
        C::NotFound => "NOT_FOUND",
        C::AlreadyExists => "ALREADY_EXISTS",
        C::PermissionDenied => "PERMISSION_DENIED",
        C::ResourceExhausted => "RESOURCE_EXHAUSTED",
        C::FailedPrecondition => "FAILED_PRECONDITION",
        C::Aborted => "ABORTED",
        C::OutOfRange => "OUT_OF_RANGE",
        C::Unimplemented => "UNIMPLEMENTED",
        C::Internal => "INTERNAL",
        C::Unavailable => "UNAVAILABLE",
        C::DataLoss => "DATA_LOSS",
        C::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The code a response carries in its headers: a failed call's `grpc-status` (tonic sends
/// errors as trailers-only responses); none means the call went on to its body, counted `OK`.
fn response_code<B>(res: &http::Response<B>) -> tonic::Code {
    res.headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map_or(tonic::Code::Ok, tonic::Code::from_i32)
}

/// A tower layer counting every gRPC call into `berthd_grpc_requests_total`.
#[derive(Debug, Clone)]
pub struct GrpcLayer {
    metrics: Arc<Metrics>,
}

impl GrpcLayer {
    /// Counts into `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

impl<S> tower::Layer<S> for GrpcLayer {
    type Service = GrpcCount<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcCount {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// The service [`GrpcLayer`] wraps around the gRPC routes.
#[derive(Debug, Clone)]
pub struct GrpcCount<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, B, RB> tower::Service<http::Request<B>> for GrpcCount<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let path = req.uri().path().to_owned();
        let metrics = self.metrics.clone();
        let call = self.inner.call(req);
        Box::pin(async move {
            let res = call.await;
            let code = match &res {
                Ok(r) => response_code(r),
                Err(_) => tonic::Code::Unknown,
            };
            metrics.grpc_call(&path, code);
            res
        })
    }
}

fn respond<N: Scraped, B>(rt: &N, req: &http::Request<B>) -> http::Response<Full<Bytes>> {
    let reply = |status: http::StatusCode, ctype: &str, body: String| {
        let mut res = http::Response::new(Full::new(Bytes::from(body)));
        *res.status_mut() = status;
        if let Ok(v) = http::HeaderValue::from_str(ctype) {
            res.headers_mut().insert(http::header::CONTENT_TYPE, v);
        }
        res
    };
    match (req.method(), req.uri().path()) {
        (&http::Method::GET, "/metrics") => reply(
            http::StatusCode::OK,
            CONTENT_TYPE,
            rt.metrics().render(&rt.gauges()),
        ),
        (_, "/metrics") => reply(
            http::StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".to_owned(),
        ),
        _ => reply(
            http::StatusCode::NOT_FOUND,
            "text/plain",
            "see /metrics\n".to_owned(),
        ),
    }
}

/// Serves `GET /metrics` over plain HTTP/1 on `listener` until `shutdown`; connections from a
/// container network are closed unread.
pub async fn serve<N: Scraped>(listener: TcpListener, rt: N, shutdown: CancellationToken) {
    loop {
        let stream = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((_, peer)) if crate::tls::refused(rt.container_nets(), peer) => continue,
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics: cannot accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let rt = rt.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let res = respond(&rt, &req);
                async move { Ok::<_, Infallible>(res) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::select! {
                () = shutdown.cancelled() => {}
                _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn) => {}
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activity_counts_add_up_and_pending_is_a_level() {
        let m = Metrics::new();
        m.activity_reported(3, 1, 0, 2);
        m.activity_reported(2, 0, 1, 0);
        let text = m.encode();
        for line in [
            "berthd_activity_reports_total{result=\"sent\"} 5",
            "berthd_activity_reports_total{result=\"failed\"} 1",
            "berthd_activity_reports_total{result=\"dropped\"} 1",
            "berthd_activity_pending_servers 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in {text}");
        }
    }

    #[test]
    fn every_rpc_and_activity_result_is_present_at_zero_from_the_start() {
        let protos = [
            (
                "Spawner",
                include_str!("../../proto/berth/v1/spawner.proto"),
            ),
            ("Admin", include_str!("../../proto/berth/v1/admin.proto")),
        ];
        let mut declared: Vec<String> = protos
            .iter()
            .flat_map(|(service, text)| {
                text.lines()
                    .filter_map(|l| l.trim_start().strip_prefix("rpc "))
                    .map(move |l| format!("{service}/{}", l.split('(').next().unwrap_or(l).trim()))
            })
            .collect();
        let mut listed: Vec<String> = RPCS.iter().map(|m| (*m).to_owned()).collect();
        declared.sort();
        listed.sort();
        assert_eq!(
            listed, declared,
            "RPCS must list every rpc of the proto files"
        );
        let text = Metrics::new().encode();
        for m in RPCS {
            let line =
                format!("berthd_grpc_requests_total{{method=\"berth.v1.{m}\",code=\"OK\"}} 0");
            assert!(text.lines().any(|l| l == line), "{line} in {text}");
        }
        for r in ["sent", "failed", "dropped"] {
            let line = format!("berthd_activity_reports_total{{result=\"{r}\"}} 0");
            assert!(text.lines().any(|l| l == line), "{line} in {text}");
        }
    }

    #[test]
    fn grpc_methods_outside_our_services_share_one_label() {
        let m = Metrics::new();
        m.grpc_call("/berth.v1.Spawner/Poll", tonic::Code::NotFound);
        m.grpc_call("/evil/xyz", tonic::Code::Unimplemented);
        m.grpc_call("/evil/abc", tonic::Code::Unimplemented);
        let text = m.encode();
        assert!(
            text.contains(
                "berthd_grpc_requests_total{method=\"berth.v1.Spawner/Poll\",code=\"NOT_FOUND\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("berthd_grpc_requests_total{method=\"other\",code=\"UNIMPLEMENTED\"} 2"),
            "{text}"
        );
        assert!(!text.contains("evil"), "{text}");
    }
}
