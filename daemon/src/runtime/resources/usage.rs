//! The resource use of running servers (Docker's stats), for the Stats RPC (`berthctl top`).

use std::time::SystemTime;

use futures::StreamExt;

use crate::docker::{ContainerEngine, Usage};
use crate::key::ServerKey;
use crate::runtime::Runtime;

/// Docker stats read at once (each is one short call).
const AT_ONCE: usize = 8;

/// One running server's counters.
#[derive(Debug, Clone)]
pub struct ServerUse {
    /// The server.
    pub key: ServerKey,
    /// Its container.
    pub container_id: String,
    /// Docker's counters.
    pub usage: Usage,
    /// When they were read.
    pub at: SystemTime,
}

impl<E: ContainerEngine> Runtime<E> {
    /// The counters of every running server (of `user` only, when given); a server Docker
    /// gives no stats for (it just exited) is left out.
    pub async fn stats(&self, user: Option<&str>) -> Vec<ServerUse> {
        let running: Vec<(ServerKey, String)> = self
            .view()
            .running_containers()
            .into_iter()
            .filter(|(k, _)| user.is_none_or(|u| k.user() == u))
            .collect();
        let engine = &self.inner.engine;
        futures::stream::iter(running)
            .map(|(key, container_id)| async move {
                let usage = engine.usage(&container_id).await.ok()?;
                Some(ServerUse {
                    key,
                    container_id,
                    usage,
                    at: SystemTime::now(),
                })
            })
            .buffer_unordered(AT_ONCE)
            .filter_map(futures::future::ready)
            .collect()
            .await
    }
}
