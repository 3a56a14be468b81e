//! The container options that need the engine beyond create: the Docker network a server
//! joins (the Start's, or berth's isolated one), and the command run in it once it answers.

use std::collections::HashMap;

use crate::docker::{ContainerEngine, LABEL_MANAGED, LABEL_NODE};
use crate::policy::Violation;
use crate::runtime::progress::{Event, Phase, Reporter};
use crate::runtime::{Error, Runtime};
use crate::spec::StartSpec;
use crate::spec::options::ContainerOptions;

impl<E: ContainerEngine> Runtime<E> {
    /// The network a server joins: the one its Start names, else berth's isolated network
    /// (`network.isolate_users`), else none (Docker's default bridge); none on the host's.
    fn network_of<'a>(&'a self, spec: &'a StartSpec) -> Option<&'a str> {
        if spec.host.host_network {
            return None;
        }
        spec.options
            .network_name
            .as_deref()
            .or(self.inner.cfg.isolated_network.as_deref())
    }

    /// The spec's container options with the network it joins filled in.
    pub(in crate::runtime) fn options_with_network(&self, spec: &StartSpec) -> ContainerOptions {
        let mut options = spec.options.clone();
        if options.network_name.is_none() && !spec.host.host_network {
            options.network_name = self.inner.cfg.isolated_network.clone();
        }
        options
    }

    /// Learns the subnets of Docker's default bridge and of berth's isolated network
    /// (created if missing), so berthd's listeners refuse containers from the start. A
    /// failure (Docker not up yet) is only logged: each Start learns its network again.
    pub async fn prepare_default_networks(&self) {
        let engine = &self.inner.engine;
        match engine.network("bridge").await {
            Ok(Some(n)) => self.learn(&n),
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "cannot inspect Docker's default bridge yet"),
        }
        if let Some(name) = &self.inner.cfg.isolated_network
            && let Err(e) = self.ensure_isolated(name).await
        {
            tracing::warn!(network = %name, error = %e, "cannot prepare the isolated network yet; the first Start tries again");
        }
    }

    fn learn(&self, n: &crate::docker::NetworkInfo) {
        self.inner.nets.learn(n.subnets.iter().map(String::as_str));
    }

    fn managed_labels(&self) -> HashMap<String, String> {
        HashMap::from([
            (LABEL_MANAGED.to_owned(), "true".to_owned()),
            (LABEL_NODE.to_owned(), self.inner.cfg.node_id.clone()),
        ])
    }

    /// Makes berth's isolated network exist, inter-container traffic off; one of that name
    /// with it on is refused rather than used, so isolation is never silently lost.
    pub(in crate::runtime) async fn ensure_isolated(&self, name: &str) -> Result<(), Error> {
        let engine = &self.inner.engine;
        let info = match engine.network(name).await? {
            Some(info) => info,
            None => {
                engine
                    .create_network(name, &self.managed_labels(), false)
                    .await?;
                tracing::info!(network = %name, "isolated network created (enable_icc=false)");
                engine.network(name).await?.unwrap_or_default()
            }
        };
        if info.icc {
            return Err(Violation {
                rule: "network.isolate_users",
                detail: format!(
                    "network {name:?} (network.name) exists and lets containers reach each other; remove it (berthd makes it again with enable_icc=false) or name another"
                ),
            }
            .into());
        }
        self.learn(&info);
        Ok(())
    }

    /// Makes sure the network the server joins exists: berth's isolated one is made when
    /// missing; one the Start names is created (a bridge labelled as berthd's) when absent and
    /// the policy allows, else refused before anything is created. Its subnets are learned,
    /// so its containers cannot reach berthd's listeners.
    pub(in crate::runtime) async fn prepare_network(&self, spec: &StartSpec) -> Result<(), Error> {
        let Some(name) = self.network_of(spec) else {
            return Ok(());
        };
        if spec.options.network_name.is_none() {
            return self.ensure_isolated(name).await;
        }
        let engine = &self.inner.engine;
        if let Some(info) = engine.network(name).await? {
            self.learn(&info);
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
        engine
            .create_network(name, &self.managed_labels(), true)
            .await?;
        tracing::info!(network = %name, "network created");
        if let Some(info) = engine.network(name).await? {
            self.learn(&info);
        }
        Ok(())
    }

    /// Runs the spec's post-start command in the container, which answers HTTP. A failure is
    /// logged and shown on the progress stream; the server keeps running.
    pub(in crate::runtime) async fn post_start(
        &self,
        spec: &StartSpec,
        id: &str,
        progress: &Reporter,
    ) {
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
