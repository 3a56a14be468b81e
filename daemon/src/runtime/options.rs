//! The container options that need the engine beyond create: the Docker network a server
//! joins, and the command run in it once it answers.

use std::collections::HashMap;

use super::progress::{Event, Phase, Reporter};
use super::{Error, Runtime};
use crate::docker::{ContainerEngine, LABEL_MANAGED, LABEL_NODE};
use crate::policy::Violation;
use crate::spec::StartSpec;

impl<E: ContainerEngine> Runtime<E> {
    /// Makes sure the network the spec names exists: created (a bridge labelled as berthd's)
    /// when absent and the policy allows, else refused before anything is created.
    pub(super) async fn prepare_network(&self, spec: &StartSpec) -> Result<(), Error> {
        let Some(name) = &spec.options.network_name else {
            return Ok(());
        };
        let engine = &self.inner.engine;
        if engine.network_exists(name).await? {
            return Ok(());
        }
        if !self.inner.cfg.policy.container_options.allow_network_create {
            return Err(Violation {
                rule: "container_options.allow_network_create",
                detail: format!(
                    "network {name:?} does not exist on this node and may not be created"
                ),
            }
            .into());
        }
        let labels = HashMap::from([
            (LABEL_MANAGED.to_owned(), "true".to_owned()),
            (LABEL_NODE.to_owned(), self.inner.cfg.node_id.clone()),
        ]);
        engine.create_network(name, &labels).await?;
        tracing::info!(network = %name, "network created");
        Ok(())
    }

    /// Runs the spec's post-start command in the container, which answers HTTP. A failure is
    /// logged and shown on the progress stream; the server keeps running.
    pub(super) async fn post_start(&self, spec: &StartSpec, id: &str, progress: &Reporter) {
        let argv = &spec.options.post_start_cmd;
        if argv.is_empty() {
            return;
        }
        let (user, server) = (spec.key.user(), spec.key.server());
        let failed = match self.inner.engine.exec(id, argv).await {
            Ok((0, _)) => {
                tracing::info!(user, server, container = %id, "post_start_cmd succeeded");
                return;
            }
            Ok((code, output)) => {
                tracing::warn!(user, server, container = %id, exit_code = code, output = %output, "post_start_cmd failed");
                format!("exited with {code}")
            }
            Err(e) => {
                tracing::warn!(user, server, container = %id, error = %e, "post_start_cmd could not run");
                e.to_string()
            }
        };
        progress.emit(Event::new(
            Phase::WaitingForHttp,
            90,
            format!("post_start_cmd failed ({failed}); your server is running"),
        ));
    }
}
