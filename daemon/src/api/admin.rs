//! The `berth.v1.Admin` service (Unix socket only): drain, undrain, reconcile now.

use berth_proto::v1 as pb;
use berth_proto::v1::admin_server::Admin;
use tonic::{Request, Response, Status};

use crate::docker::ContainerEngine;
use crate::runtime::Runtime;

/// The Admin service over a runtime.
pub struct AdminService<E> {
    rt: Runtime<E>,
}

impl<E: ContainerEngine> AdminService<E> {
    /// A service acting on `rt`.
    pub fn new(rt: Runtime<E>) -> Self {
        Self { rt }
    }
}

#[tonic::async_trait]
impl<E: ContainerEngine> Admin for AdminService<E> {
    async fn drain(
        &self,
        request: Request<pb::DrainRequest>,
    ) -> Result<Response<pb::DrainResponse>, Status> {
        let reason = &request.get_ref().reason;
        if reason.len() > 1024 || reason.chars().any(char::is_control) {
            return Err(super::status::invalid(crate::spec::SpecError::new(
                "reason",
                "at most 1024 bytes without control characters",
            )));
        }
        self.rt.drain(reason)?;
        Ok(Response::new(pb::DrainResponse { draining: true }))
    }

    async fn undrain(
        &self,
        _request: Request<pb::DrainRequest>,
    ) -> Result<Response<pb::DrainResponse>, Status> {
        self.rt.undrain()?;
        Ok(Response::new(pb::DrainResponse { draining: false }))
    }

    async fn reconcile(
        &self,
        _request: Request<pb::ReconcileRequest>,
    ) -> Result<Response<pb::ReconcileResponse>, Status> {
        let r = self.rt.reconcile().await?;
        Ok(Response::new(pb::ReconcileResponse {
            adopted: r.adopted,
            rebuilt: r.rebuilt,
            vanished: r.vanished,
        }))
    }
}
