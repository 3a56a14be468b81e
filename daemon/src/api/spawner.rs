//! The `berth.v1.Spawner` service: thin handlers that convert, call the runtime, convert back.

use berth_proto::v1 as pb;
use berth_proto::v1::spawner_server::Spawner;
use futures::StreamExt;
use futures::stream::BoxStream;
use tonic::{Code, Request, Response, Status, Streaming};

use super::convert;
use super::status::{invalid, with_reason};
use crate::docker::ContainerEngine;
use crate::runtime::Runtime;
use crate::runtime::volumes::transfer::VolumeHeader;
use crate::spec::{SpecError, StartSpec};

/// Features this daemon announces in `Version`.
pub const FEATURES: &[&str] = &[
    "start-idempotent",
    "progress",
    "logs",
    "watch",
    "watch-capacity",
    "state",
    "capacity",
    "admission",
    "volume-move",
    "pull",
    "prepull",
    "fencing",
];

/// The Spawner service over a runtime.
pub struct SpawnerService<E> {
    rt: Runtime<E>,
    /// Serving the hub (the gRPC listener): its open Watch streams count as the hub's
    /// contact for fencing. Not for the Admin socket's reads.
    hub_facing: bool,
}

impl<E: ContainerEngine> SpawnerService<E> {
    /// A service answering from `rt`, for an operator on the node (the Admin socket).
    pub fn new(rt: Runtime<E>) -> Self {
        Self {
            rt,
            hub_facing: false,
        }
    }

    /// A service answering the hub from `rt` (the gRPC listener).
    pub fn for_hub(rt: Runtime<E>) -> Self {
        Self {
            rt,
            hub_facing: true,
        }
    }

    fn node_id(&self) -> String {
        self.rt.config().node_id.clone()
    }

    fn with_node(&self, s: crate::runtime::Status) -> pb::ServerStatus {
        let mut p = pb::ServerStatus::from(s);
        p.node_id = self.node_id();
        p
    }
}

#[tonic::async_trait]
impl<E: ContainerEngine> Spawner for SpawnerService<E> {
    async fn version(
        &self,
        _request: Request<pb::VersionRequest>,
    ) -> Result<Response<pb::VersionResponse>, Status> {
        let engine = self
            .rt
            .engine()
            .version()
            .await
            .map_err(crate::runtime::Error::from)?;
        Ok(Response::new(pb::VersionResponse {
            api_version: "v1".to_owned(),
            daemon_version: env!("CARGO_PKG_VERSION").to_owned(),
            node_id: self.node_id(),
            docker_api_version: engine.api_version,
            docker_version: engine.version,
            features: FEATURES.iter().map(|f| (*f).to_owned()).collect(),
            fence_after_seconds: crate::runtime::lifecycle::fence::reported_seconds(
                self.rt.config().fence_after,
            ),
        }))
    }

    #[tracing::instrument(skip_all, fields(user, server, spawn_id))]
    async fn start(
        &self,
        request: Request<pb::StartRequest>,
    ) -> Result<Response<pb::StartResponse>, Status> {
        let spec = StartSpec::try_from(request.into_inner()).map_err(invalid)?;
        let span = tracing::Span::current();
        span.record("user", spec.key.user());
        span.record("server", spec.key.server());
        span.record("spawn_id", spec.spawn_id.as_str());
        let started = self.rt.start(spec).await?;
        Ok(Response::new(pb::StartResponse {
            url: started.url,
            container_id: started.container_id,
            node_id: self.node_id(),
            spawn_id: started.spawn_id,
            note: started.note,
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn stop(
        &self,
        request: Request<pb::StopRequest>,
    ) -> Result<Response<pb::StopResponse>, Status> {
        let r = request.into_inner();
        let key = convert::key(r.key.as_ref()).map_err(invalid)?;
        let status = self.rt.stop(&key, convert::stop_spec(&r)).await?;
        Ok(Response::new(pb::StopResponse {
            status: Some(self.with_node(status)),
        }))
    }

    async fn poll(
        &self,
        request: Request<pb::PollRequest>,
    ) -> Result<Response<pb::ServerStatus>, Status> {
        let key = convert::key(request.get_ref().key.as_ref()).map_err(invalid)?;
        let status = self.rt.poll(&key);
        Ok(Response::new(self.with_node(status)))
    }

    async fn list(
        &self,
        request: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        let user = &request.get_ref().user;
        let user = (!user.is_empty()).then_some(user.as_str());
        let servers = self.rt.list(user);
        Ok(Response::new(pb::ListResponse {
            servers: servers.into_iter().map(|s| self.with_node(s)).collect(),
        }))
    }

    type ProgressStream = BoxStream<'static, Result<pb::ProgressEvent, Status>>;

    async fn progress(
        &self,
        request: Request<pb::ProgressRequest>,
    ) -> Result<Response<Self::ProgressStream>, Status> {
        let r = request.into_inner();
        let key = convert::key(r.key.as_ref()).map_err(invalid)?;
        let spawn_id = if r.spawn_id.is_empty() {
            self.rt.progress().newest(&key).ok_or_else(|| {
                with_reason(
                    Code::NotFound,
                    format!("no spawn of server {key} is known to this node"),
                    "SPAWN_NOT_FOUND",
                    vec![],
                )
            })?
        } else {
            crate::spec::check_spawn_id(&r.spawn_id).map_err(invalid)?;
            r.spawn_id
        };
        let stream = self.rt.progress().subscribe(&key, &spawn_id).map(move |e| {
            e.map(pb::ProgressEvent::from).ok_or_else(|| {
                with_reason(
                    Code::NotFound,
                    format!("spawn {spawn_id:?} of server {key} did not begin on this node"),
                    "SPAWN_NOT_FOUND",
                    vec![],
                )
            })
        });
        Ok(Response::new(stream.boxed()))
    }

    type PrepullStream = BoxStream<'static, Result<pb::PrepullEvent, Status>>;

    async fn prepull(
        &self,
        request: Request<pb::PrepullRequest>,
    ) -> Result<Response<Self::PrepullStream>, Status> {
        let images = super::prepull::images(&request.into_inner(), self.rt.config())?;
        Ok(Response::new(super::prepull::run(self.rt.clone(), images)))
    }

    type LogsStream = BoxStream<'static, Result<pb::LogLine, Status>>;

    async fn logs(
        &self,
        request: Request<pb::LogsRequest>,
    ) -> Result<Response<Self::LogsStream>, Status> {
        let r = request.into_inner();
        let key = convert::key(r.key.as_ref()).map_err(invalid)?;
        let want = crate::docker::LogsWanted {
            tail: (r.tail > 0).then_some(r.tail),
            follow: r.follow,
            // Docker counts `since` in whole seconds: rounded up, so no older line comes back.
            since: r.since.map(|t| t.seconds + i64::from(t.nanos > 0)),
            timestamps: r.timestamps,
        };
        let lines = self.rt.logs(&key, want).await?;
        Ok(Response::new(
            lines
                .map(|l| l.map(pb::LogLine::from).map_err(Status::from))
                .boxed(),
        ))
    }

    type WatchStream = BoxStream<'static, Result<pb::WatchEvent, Status>>;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        // One point of the event sequence: no change is lost between the snapshot and the
        // live events, and numbers only increase.
        let r = request.into_inner();
        let w = self.rt.watch(r.snapshot, r.capacity);
        let node = self.node_id();
        let n1 = node.clone();
        let n2 = node.clone();
        let live = tokio_stream::wrappers::BroadcastStream::new(w.live).map(move |ev| match ev {
            Ok(ev) => Ok(ev),
            Err(tokio_stream::wrappers::errors::BroadcastStreamRecvError::Lagged(n)) => {
                Err(with_reason(
                    Code::DataLoss,
                    format!(
                        "this Watch fell {n} events behind; subscribe again with snapshot=true"
                    ),
                    "WATCH_LAGGED",
                    vec![("missed", n.to_string())],
                ))
            }
        });
        // A lagging subscriber gets the error and then the stream ends.
        let live = live.scan(false, |failed, item| {
            let out = if *failed { None } else { Some(item) };
            if out.as_ref().is_some_and(Result::is_err) {
                *failed = true;
            }
            futures::future::ready(out)
        });
        let head = futures::stream::iter(w.snapshot.into_iter().map(Ok));
        let (first, feed) = match w.capacity {
            Some((seq, feed)) => {
                let rt = self.rt.clone();
                let first = futures::stream::once(async move { Ok(rt.first_capacity(seq).await) });
                (first.boxed(), Some(feed))
            }
            None => (futures::stream::empty().boxed(), None),
        };
        let wants_capacity = feed.is_some();
        // Capacity reports go only to those who asked, and only when they differ from the
        // last one this stream sent; the subscription keeps the feed computing while the
        // stream lives.
        let mut sent: Option<pb::NodeCapacity> = None;
        // While the hub's stream is open the hub counts as present (fencing).
        let contact = self.hub_facing.then(|| self.rt.hub_contact().watching());
        let events = head.chain(first).chain(live).filter_map(move |ev| {
            let _feed = &feed;
            let _contact = &contact;
            let out = match ev {
                Ok(ev) if ev.kind == crate::runtime::view::WatchKind::Capacity => {
                    if wants_capacity {
                        let ev = convert::watch_event(ev, &n1);
                        let key = ev.capacity.as_ref().map(convert::capacity_change_key);
                        if key.is_some() && key == sent {
                            None
                        } else {
                            sent = key;
                            Some(Ok(ev))
                        }
                    } else {
                        None
                    }
                }
                Ok(ev) => Some(Ok(convert::watch_event(ev, &n2))),
                Err(e) => Some(Err(e)),
            };
            futures::future::ready(out)
        });
        Ok(Response::new(events.boxed()))
    }

    async fn get_state(
        &self,
        request: Request<pb::GetStateRequest>,
    ) -> Result<Response<pb::StateRecord>, Status> {
        let key = convert::key(request.get_ref().key.as_ref()).map_err(invalid)?;
        let blob = self.rt.get_state(&key);
        Ok(Response::new(pb::StateRecord {
            key: request.into_inner().key,
            blob: blob.data,
            version: blob.version,
        }))
    }

    async fn put_state(
        &self,
        request: Request<pb::PutStateRequest>,
    ) -> Result<Response<pb::StateRecord>, Status> {
        let r = request.into_inner();
        let key = convert::key(r.key.as_ref()).map_err(invalid)?;
        let blob = self.rt.put_state(&key, r.blob, r.expected_version).await?;
        Ok(Response::new(pb::StateRecord {
            key: r.key,
            blob: blob.data,
            version: blob.version,
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn delete_forever(
        &self,
        request: Request<pb::DeleteForeverRequest>,
    ) -> Result<Response<pb::DeleteForeverResponse>, Status> {
        let key = convert::key(request.get_ref().key.as_ref()).map_err(invalid)?;
        let d = self.rt.delete_forever(&key).await?;
        Ok(Response::new(pb::DeleteForeverResponse {
            container_removed: d.container,
            record_removed: d.record,
            volumes_removed: d.volumes,
        }))
    }

    async fn capacity(
        &self,
        _request: Request<pb::CapacityRequest>,
    ) -> Result<Response<pb::NodeCapacity>, Status> {
        let c = self.rt.capacity().await;
        Ok(Response::new(convert::node_capacity(c, self.node_id())))
    }

    async fn list_volumes(
        &self,
        request: Request<pb::ListVolumesRequest>,
    ) -> Result<Response<pb::ListVolumesResponse>, Status> {
        let r = request.into_inner();
        let user = (!r.user.is_empty()).then_some(r.user.as_str());
        let volumes = self.rt.list_volumes(user, r.sizes).await?;
        Ok(Response::new(pb::ListVolumesResponse {
            node_id: self.node_id(),
            volumes: volumes.into_iter().map(pb::UserVolume::from).collect(),
        }))
    }

    type ExportVolumeStream = BoxStream<'static, Result<pb::VolumeChunk, Status>>;

    #[tracing::instrument(skip_all, fields(volume))]
    async fn export_volume(
        &self,
        request: Request<pb::ExportVolumeRequest>,
    ) -> Result<Response<Self::ExportVolumeStream>, Status> {
        let name = convert::volume_name("name", &request.get_ref().name).map_err(invalid)?;
        tracing::Span::current().record("volume", name.as_str());
        let parts = self.rt.export_volume(&name).await?;
        Ok(Response::new(
            parts
                .map(|p| p.map(pb::VolumeChunk::from).map_err(Status::from))
                .boxed(),
        ))
    }

    #[tracing::instrument(skip_all, fields(volume))]
    async fn import_volume(
        &self,
        request: Request<Streaming<pb::VolumeChunk>>,
    ) -> Result<Response<pb::ImportVolumeResponse>, Status> {
        let mut stream = request.into_inner();
        let first = stream.message().await?.and_then(|c| c.part);
        let Some(pb::volume_chunk::Part::Header(header)) = first else {
            return Err(invalid(SpecError::new(
                "header",
                "the first message of an import must be its header",
            )));
        };
        let header = VolumeHeader::try_from(header).map_err(invalid)?;
        let name = header.name.clone();
        tracing::Span::current().record("volume", name.as_str());
        let n = name.clone();
        let parts = stream
            .map(move |m| match m {
                Ok(chunk) => convert::import_part(&n, chunk),
                Err(s) => Err(crate::runtime::Error::ImportIncomplete {
                    name: n.clone(),
                    why: format!("the stream failed: {}", s.message()),
                }),
            })
            .boxed();
        let sum = self.rt.import_volume(header, parts).await?;
        Ok(Response::new(pb::ImportVolumeResponse {
            node_id: self.node_id(),
            name,
            sha256: sum.sha256,
            bytes: sum.bytes,
        }))
    }

    #[tracing::instrument(skip_all, fields(volume))]
    async fn stats(
        &self,
        request: Request<pb::StatsRequest>,
    ) -> Result<Response<pb::StatsResponse>, Status> {
        let user = request.into_inner().user;
        let servers = self
            .rt
            .stats((!user.is_empty()).then_some(user.as_str()))
            .await
            .into_iter()
            .map(convert::server_stats)
            .collect();
        Ok(Response::new(pb::StatsResponse { servers }))
    }

    async fn warm(
        &self,
        request: Request<pb::WarmRequest>,
    ) -> Result<Response<pb::WarmPool>, Status> {
        let r = request.into_inner();
        if r.image.trim().is_empty() {
            return Err(Status::invalid_argument("image: must name an image"));
        }
        if r.size > crate::warm::MAX_POOL_SIZE {
            return Err(Status::invalid_argument(format!(
                "size: {} is more than {}",
                r.size,
                crate::warm::MAX_POOL_SIZE
            )));
        }
        let port = match r.port {
            0 => 8888,
            p => u16::try_from(p)
                .map_err(|_| Status::invalid_argument(format!("port: {p} is not a port")))?,
        };
        let w = self.rt.warm(&r.image, r.size, port, r.memory_bytes)?;
        Ok(Response::new(convert::warm_pool(&w)))
    }

    async fn remove_volume(
        &self,
        request: Request<pb::RemoveVolumeRequest>,
    ) -> Result<Response<pb::RemoveVolumeResponse>, Status> {
        let name = convert::volume_name("name", &request.get_ref().name).map_err(invalid)?;
        tracing::Span::current().record("volume", name.as_str());
        let removed = self.rt.remove_user_volume(&name).await?;
        Ok(Response::new(pb::RemoveVolumeResponse { removed }))
    }
}
