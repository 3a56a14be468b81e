//! The Spawner methods the Admin socket also serves, so `berthctl` run as root on the node needs
//! no token or certificate: reads (Stats too), logs, Stop, Prepull and RemoveVolume (whoever may open the
//! socket, mode 0660, can already drain the node, and as root pull images and remove volumes
//! with Docker itself; through berthd a volume in use is refused). What makes servers (Start,
//! state, volume moves) stays with the hub on the authenticated network listener.

use std::convert::Infallible;
use std::task::{Context, Poll};

use futures::future::{Either, Ready, ready};
use tonic::body::Body;
use tonic::codegen::{Service, http};
use tonic::server::NamedService;

/// The Spawner methods served on the Admin socket; every other is refused with `HUB_ONLY`.
pub const OPERATOR_METHODS: &[&str] = &[
    "Version",
    "Poll",
    "List",
    "Progress",
    "Logs",
    "Watch",
    "Capacity",
    "ListVolumes",
    "Stop",
    "Prepull",
    "RemoveVolume",
    "Stats",
    "Warm",
];

/// A Spawner server that answers only [`OPERATOR_METHODS`].
#[derive(Clone)]
pub struct OperatorOnly<S> {
    inner: S,
}

impl<S> OperatorOnly<S> {
    /// `inner` (a `SpawnerServer`) limited to the operator's methods.
    pub fn new(inner: S) -> Self {
        Self { inner }
    }
}

impl<S: NamedService> NamedService for OperatorOnly<S> {
    const NAME: &'static str = S::NAME;
}

/// Whether the request path `/berth.v1.Spawner/<Method>` names an operator method.
fn allowed(path: &str) -> bool {
    path.rsplit_once('/')
        .is_some_and(|(_, method)| OPERATOR_METHODS.contains(&method))
}

impl<S, B> Service<http::Request<B>> for OperatorOnly<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>, Error = Infallible>,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Either<S::Future, Ready<Result<Self::Response, Infallible>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let path = req.uri().path();
        if allowed(path) {
            return Either::Left(self.inner.call(req));
        }
        let method = path.rsplit('/').next().unwrap_or_default().to_owned();
        let status = super::status::with_reason(
            tonic::Code::PermissionDenied,
            format!(
                "{method} is served to the hub on the network listener only; the Admin socket serves {}",
                OPERATOR_METHODS.join(", ")
            ),
            "HUB_ONLY",
            vec![("method", method)],
        );
        Either::Right(ready(Ok(status.into_http())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_reads_logs_stop_prepull_and_volume_removal_pass() {
        for (path, want) in [
            ("/berth.v1.Spawner/List", true),
            ("/berth.v1.Spawner/Capacity", true),
            ("/berth.v1.Spawner/Stats", true),
            ("/berth.v1.Spawner/Stop", true),
            ("/berth.v1.Spawner/Prepull", true),
            ("/berth.v1.Spawner/RemoveVolume", true),
            ("/berth.v1.Spawner/Warm", true),
            ("/berth.v1.Spawner/Start", false),
            ("/berth.v1.Spawner/PutState", false),
            ("/berth.v1.Spawner/ImportVolume", false),
            ("/berth.v1.Spawner/ExportVolume", false),
            ("/berth.v1.Spawner/DeleteForever", false),
            ("", false),
        ] {
            assert_eq!(allowed(path), want, "{path}");
        }
    }
}
