//! A berthd node without Docker: the real runtime, monitor and Spawner service over a
//! [`FakeEngine`], served to a real generated client over an in-memory transport (no socket,
//! so tokio's paused clock can drive it).

use std::path::PathBuf;

use berth_proto::v1 as pb;
use berth_proto::v1::spawner_client::SpawnerClient;
use berth_proto::v1::spawner_server::SpawnerServer;
use berthd::api::SpawnerService;
use berthd::docker::fake::{Behaviour, FakeEngine};
use berthd::runtime::{Runtime, RuntimeConfig};
use berthd::state::FileStore;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

/// An image whose containers answer HTTP at once.
pub const SERVE: &str = "fake/serve:1";
/// An image whose containers run but answer nothing until `FakeEngine::set_answering`.
pub const SILENT: &str = "fake/silent:1";

/// A state directory no other node uses (removed when the node that ends with it drops).
pub fn state_dir() -> PathBuf {
    std::env::temp_dir().join(super::unique("berth-fake"))
}

/// The fake engine every node of a test starts from: [`SERVE`] and [`SILENT`] present.
pub fn engine() -> FakeEngine {
    let fake = FakeEngine::new();
    fake.add_image(SERVE, Behaviour::Serve);
    fake.add_image(SILENT, Behaviour::Silent);
    fake
}

pub struct FakeNode {
    pub fake: FakeEngine,
    pub rt: Runtime<FakeEngine>,
    pub client: SpawnerClient<Channel>,
    pub state_dir: PathBuf,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl FakeNode {
    /// A node over a fresh [`engine`] and state directory, with the default configuration.
    pub async fn start() -> Self {
        Self::start_on(engine(), state_dir(), |_| {}).await
    }

    /// A node over `fake` keeping its records in `state_dir`, started as `serve` does:
    /// load records, reconcile, then the monitor and the service.
    pub async fn start_on(
        fake: FakeEngine,
        state_dir: PathBuf,
        tune: impl FnOnce(&mut RuntimeConfig),
    ) -> Self {
        let mut cfg = berthd::config::Config {
            node_id: "fake-node".to_owned(),
            state_dir: state_dir.clone(),
            ..Default::default()
        }
        .runtime();
        cfg.publish_host_ip = [127, 0, 0, 1].into();
        cfg.advertise_host = "127.0.0.1".to_owned();
        tune(&mut cfg);
        berthd::serve::prepare_state_dir(&state_dir).unwrap();
        let store = FileStore::open(&state_dir).unwrap();
        let rt = Runtime::new(fake.clone(), cfg, store);
        rt.load_records().await.unwrap();
        let since = berthd::monitor::now_secs();
        rt.reconcile().await.unwrap();
        let shutdown = CancellationToken::new();
        let monitor = tokio::spawn(berthd::monitor::run(rt.clone(), since, shutdown.clone()));
        let (server, client) = serve_in_memory(rt.clone(), shutdown.clone()).await;
        FakeNode {
            fake,
            rt,
            client,
            state_dir,
            shutdown,
            tasks: vec![monitor, server],
        }
    }

    /// Stops this berthd (its monitor and service; containers keep running) and starts a new
    /// one over the same engine and state directory, as a daemon restart does.
    pub async fn restart(self) -> Self {
        let (fake, dir) = self.shut_down().await;
        Self::start_on(fake, dir, |_| {}).await
    }

    /// Stops this berthd and hands back its engine and state directory (kept on disk).
    pub async fn shut_down(mut self) -> (FakeEngine, PathBuf) {
        self.shutdown.cancel();
        for t in self.tasks.drain(..) {
            t.abort();
            let _ = t.await;
        }
        (self.fake.clone(), std::mem::take(&mut self.state_dir))
    }

    /// A clone of the client, for calls made from spawned tasks.
    pub fn client(&self) -> SpawnerClient<Channel> {
        self.client.clone()
    }

    /// The container name of `user`'s default server.
    pub fn container_name(user: &str) -> String {
        berthd::key::ServerKey::new(user, "")
            .unwrap()
            .container_name()
    }
}

impl Drop for FakeNode {
    fn drop(&mut self) {
        self.shutdown.cancel();
        for t in &self.tasks {
            t.abort();
        }
        if self.state_dir.as_os_str().is_empty() {
            return;
        }
        // A record write already handed to a blocking thread may land in the directory while
        // it is being removed; no new one can start, as the node's tasks no longer run.
        for _ in 0..100 {
            match std::fs::remove_dir_all(&self.state_dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                _ => return,
            }
        }
    }
}

/// The Spawner service on an in-memory transport: each client connection is a fresh duplex
/// pipe handed to the server.
async fn serve_in_memory(
    rt: Runtime<FakeEngine>,
    shutdown: CancellationToken,
) -> (JoinHandle<()>, SpawnerClient<Channel>) {
    let (tx, rx) = mpsc::channel::<tokio::io::DuplexStream>(16);
    let incoming = tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok::<_, std::io::Error>);
    let server = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(SpawnerServer::new(SpawnerService::new(rt)))
            .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
            .await
            .unwrap();
    });
    let channel = Endpoint::from_static("http://fake-node.invalid")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let tx = tx.clone();
            async move {
                let (client, server) = tokio::io::duplex(64 * 1024);
                tx.send(server)
                    .await
                    .map_err(|_| std::io::Error::other("the fake node is gone"))?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(client))
            }
        }))
        .await
        .unwrap();
    (server, SpawnerClient::new(channel))
}

/// A Start of `image` for `user`'s default server.
pub fn start_req(user: &str, spawn_id: &str, image: &str) -> pb::StartRequest {
    pb::StartRequest {
        key: super::key(user, ""),
        spawn_id: spawn_id.to_owned(),
        image: image.to_owned(),
        ready_timeout_seconds: 30,
        ..Default::default()
    }
}

/// A Start of `user`'s server on `node`, run in the background, for tests that act while it is
/// under way.
pub fn start_in_background(
    node: &FakeNode,
    user: &str,
    spawn_id: &str,
    image: &str,
) -> JoinHandle<Result<tonic::Response<pb::StartResponse>, tonic::Status>> {
    let mut c = node.client();
    let req = start_req(user, spawn_id, image);
    tokio::spawn(async move { c.start(req).await })
}

/// Starts `user`'s server on `node`; the answer (a refusal fails the test).
pub async fn started(
    node: &FakeNode,
    user: &str,
    spawn_id: &str,
    image: &str,
) -> pb::StartResponse {
    node.client()
        .start(start_req(user, spawn_id, image))
        .await
        .unwrap()
        .into_inner()
}
