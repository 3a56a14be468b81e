//! Keeping the warm pools full: members made in the background, one Docker slot at a time and
//! only while no user's spawn waits for one; found again after a restart.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::{Member, PoolConfig, READY_LINE, WARM_PREFIX};
use crate::docker::{
    ContainerEngine, ContainerSpec, LABEL_MANAGED, LABEL_NODE, LABEL_POOL, LogsWanted, RunStatus,
};
use crate::runtime::{Error, Runtime};

/// How often the keeper looks at the pools when nothing wakes it.
const TICK: Duration = Duration::from_secs(5);
/// The longest refills wait for users' spawns under way.
const DEFER_LIMIT: Duration = Duration::from_secs(30);
/// How often the keeper looks while it holds refills back.
const DEFER_TICK: Duration = Duration::from_millis(500);
/// How long a new member may take to import its modules.
const BOOT_LIMIT: Duration = Duration::from_secs(180);

impl<E: ContainerEngine> Runtime<E> {
    /// Keeps `[[warm.pools]]` full until `stop`; first takes in the members an earlier run left.
    pub async fn keep_warm(&self, stop: CancellationToken) {
        if !self.inner.pool.configs().is_empty() && !self.inner.cfg.graft {
            tracing::warn!(
                "warm pools: this berthd cannot mount volumes into a running container (it is not root and has no pin helper, [hostpaths] pin_helper_socket); only starts without volumes take a warm server"
            );
        }
        if let Err(e) = self.adopt_warm().await {
            tracing::warn!(error = %e, "cannot list the warm containers of an earlier run yet");
        }
        loop {
            self.fill_warm().await;
            let tick = if self.inner.keys.starting() > 0 {
                DEFER_TICK
            } else {
                TICK
            };
            tokio::select! {
                () = stop.cancelled() => return,
                () = self.inner.pool.wake.notified() => {}
                () = tokio::time::sleep(tick) => {}
            }
        }
    }

    /// Keeps `size` servers of `image` (port `port`) warm from now on, each holding
    /// `memory_bytes` (a hub's `Warm`, e.g. before a class; 0 = none): over the configured
    /// pool of that image and port, kept across restarts. The image must be one the policy
    /// allows; `size` at most [`crate::warm::MAX_POOL_SIZE`] (checked by the caller).
    pub fn warm(
        &self,
        image: &str,
        size: u32,
        port: u16,
        memory_bytes: u64,
    ) -> Result<crate::capacity::WarmPool, Error> {
        let image = crate::spec::normalize_image(image);
        self.inner.cfg.policy.check_image(&image)?;
        let launcher = self
            .inner
            .pool
            .configs()
            .into_iter()
            .find(|p| crate::spec::normalize_image(&p.image) == image && p.port == port)
            .map_or_else(Default::default, |p| p.launcher);
        let i = self.inner.pool.set(PoolConfig {
            image: image.clone(),
            size,
            memory_bytes,
            launcher,
            port,
        })?;
        tracing::info!(image = %image, size, port, "warm pool set by the hub");
        self.inner.view.capacity_changed();
        Ok(crate::capacity::WarmPool {
            image,
            port,
            ready: u32::try_from(self.inner.pool.ready_in(i).len()).unwrap_or(u32::MAX),
            size,
            memory_bytes,
        })
    }

    /// Sorts the containers an earlier run left: an unclaimed member that still runs waits
    /// again; a member claimed (claim file) but not renamed, a container renamed without a
    /// claim file, and a stopped member are removed; a claim whose container is gone is
    /// forgotten. A claimed, renamed container is the server of its key: reconcile's.
    pub(in crate::runtime) async fn adopt_warm(&self) -> Result<(), Error> {
        let engine = &self.inner.engine;
        let book = engine.book().clone();
        let node = self.inner.cfg.node_id.clone();
        // Every container made for a pool (Docker keeps the label after a claim): no other.
        let ids = engine
            .list(&[
                (LABEL_MANAGED, "true"),
                (LABEL_NODE, &node),
                (LABEL_POOL, crate::docker::ANY_VALUE),
            ])
            .await?;
        for id in book.ids() {
            if !ids.contains(&id) && engine.bare().inspect(&id).await?.is_none() {
                book.forget(&id);
            }
        }
        for id in ids {
            let Some(c) = engine.bare().inspect(&id).await? else {
                continue;
            };
            let Some(image) = c.label(LABEL_POOL) else {
                continue;
            };
            let warm_name = c.name.starts_with(WARM_PREFIX);
            let claimed = book.get(&c.id).is_some();
            let configs = self.inner.pool.configs();
            let pool = configs
                .iter()
                .position(|p| p.image == image && c.host_port(p.port).is_some());
            let keep = match (warm_name, claimed, pool) {
                (true, false, Some(pool)) if c.status == RunStatus::Running => Some(pool),
                (false, true, _) => continue,
                _ => None,
            };
            let Some(pool) = keep else {
                tracing::info!(container = %c.id, name = %c.name, "removing a warm container an earlier run left unfinished");
                engine.remove(&c.id).await?;
                continue;
            };
            let p = &configs[pool];
            let Some(info) = engine.image(&p.image).await? else {
                engine.remove(&c.id).await?;
                continue;
            };
            if self
                .inner
                .admission
                .admit_warm(&self.inner.view, &c.id, demand_of(p))
                .is_err()
            {
                engine.remove(&c.id).await?;
                continue;
            }
            tracing::info!(container = %c.id, image = %p.image, "warm container of an earlier run waits again");
            self.inner.pool.add(Member {
                id: c.id.clone(),
                pool,
                image_id: info.id,
                port: p.port,
            });
        }
        self.inner.view.capacity_changed();
        Ok(())
    }

    /// Starts making the members each pool lacks, while no user's spawn waits for a Docker
    /// slot; removes members beyond a pool's size.
    async fn fill_warm(&self) {
        // A member boots on the CPU a user's spawn needs now: refills wait for the spawns
        // under way (for at most DEFER_LIMIT in a row).
        if self
            .inner
            .pool
            .defer(self.inner.keys.starting(), DEFER_LIMIT)
        {
            return;
        }
        // A draining node makes no new member (its waiting ones stay until the size says).
        let draining = self.inner.admission.draining().is_some();
        let pools = self.inner.pool.configs();
        for (i, p) in pools.iter().enumerate() {
            let ready = self.inner.pool.ready_in(i);
            let size = p.size as usize;
            for extra in ready.iter().skip(size) {
                if self.inner.pool.remove(&extra.id) {
                    self.inner.admission.release_warm(&extra.id);
                    if let Err(e) = self.inner.engine.remove(&extra.id).await {
                        tracing::warn!(container = %extra.id, error = %e, "cannot remove a warm container beyond its pool's size");
                    }
                }
            }
            let have = ready.len().min(size) + self.inner.pool.making_in(i) as usize;
            if draining {
                continue;
            }
            for _ in have..size {
                if self.inner.admission.queued() > 0 {
                    return;
                }
                let Some(slot) = self.inner.admission.slot_now() else {
                    return;
                };
                match self.make_member(i, p).await {
                    Ok(Some(id)) => {
                        drop(slot);
                        let rt = self.clone();
                        let p = p.clone();
                        self.inner.pool.making(i, 1);
                        tokio::spawn(async move {
                            rt.await_member(i, &p, id).await;
                            rt.inner.pool.making(i, -1);
                        });
                    }
                    Ok(None) => return,
                    Err(e) => {
                        tracing::warn!(image = %p.image, error = %e, "cannot make a warm container");
                        return;
                    }
                }
            }
        }
    }

    /// Creates and starts one member of pool `i`; `None` when the image is missing or the
    /// node has no room (both logged).
    async fn make_member(&self, i: usize, p: &PoolConfig) -> Result<Option<String>, Error> {
        let engine = &self.inner.engine;
        if engine.image(&p.image).await?.is_none() {
            tracing::warn!(image = %p.image, "a warm pool's image is not on this node; prepull it (berthctl prepull)");
            return Ok(None);
        }
        let cfg = &self.inner.cfg;
        let mut options = crate::spec::options::ContainerOptions::default();
        if let Some(net) = &cfg.isolated_network {
            self.ensure_isolated(net).await?;
            options.network_name = Some(net.clone());
        }
        let name = member_name();
        let spec = ContainerSpec {
            name,
            image: p.image.clone(),
            entrypoint: Some(p.launcher.argv()),
            cmd: None,
            env: Vec::new(),
            labels: HashMap::from([
                (LABEL_MANAGED.to_owned(), "true".to_owned()),
                (LABEL_NODE.to_owned(), cfg.node_id.clone()),
                (LABEL_POOL.to_owned(), p.image.clone()),
            ]),
            port: p.port,
            host_ip: cfg.publish_host_ip.to_string(),
            memory: None,
            // Counted by admission alone (Docker cannot take a reservation back at the claim).
            memory_reservation: None,
            nano_cpus: None,
            cpu_shares: None,
            mounts: Vec::new(),
            host: crate::spec::HostAccess::default(),
            options,
            device_requests: Vec::new(),
            stdin: true,
        };
        let id = engine.create(&spec).await?;
        if let Err(e) = self
            .inner
            .admission
            .admit_warm(&self.inner.view, &id, demand_of(p))
        {
            tracing::info!(image = %p.image, reason = %e, "no room for another warm container now");
            engine.remove(&id).await?;
            return Ok(None);
        }
        if let Err(e) = engine.start(&id).await {
            self.inner.admission.release_warm(&id);
            engine.remove(&id).await?;
            return Err(e.into());
        }
        tracing::debug!(container = %id, image = %p.image, pool = i, "warm container started");
        Ok(Some(id))
    }

    /// Waits until member `id` of pool `i` says it is ready, then offers it; removes it if it
    /// exits or takes too long.
    async fn await_member(&self, i: usize, p: &PoolConfig, id: String) {
        let engine = &self.inner.engine;
        let mut logs = engine.logs(
            &id,
            LogsWanted {
                follow: true,
                ..LogsWanted::default()
            },
        );
        let ready = tokio::time::timeout(BOOT_LIMIT, async {
            let mut seen = String::new();
            while let Some(Ok(chunk)) = logs.next().await {
                seen.push_str(&String::from_utf8_lossy(&chunk.data));
                if seen.contains(READY_LINE) {
                    return true;
                }
                if seen.len() > 64 * 1024 {
                    seen.drain(..seen.len() - 1024);
                }
            }
            false
        })
        .await
        .unwrap_or(false);
        drop(logs);
        let image_id = match engine.image(&p.image).await {
            Ok(Some(info)) => info.id,
            _ => String::new(),
        };
        let running =
            matches!(engine.inspect(&id).await, Ok(Some(c)) if c.status == RunStatus::Running);
        if ready && running && !image_id.is_empty() {
            tracing::info!(container = %id, image = %p.image, "warm container ready");
            self.inner.pool.add(Member {
                id,
                pool: i,
                image_id,
                port: p.port,
            });
            self.inner.view.capacity_changed();
            return;
        }
        tracing::warn!(container = %id, image = %p.image, "a warm container did not get ready (its launcher exited or took too long); removed");
        self.inner.admission.release_warm(&id);
        if let Err(e) = engine.remove(&id).await {
            tracing::warn!(container = %id, error = %e, "cannot remove a warm container that failed");
        }
        // Not at once again: the next tick tries anew.
    }
}

/// A new member's name: unique on this engine (the time in nanoseconds, and a counter).
fn member_name() -> String {
    static MADE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{WARM_PREFIX}{nanos:x}-{n}")
}

/// What a member of `p` holds.
fn demand_of(p: &PoolConfig) -> crate::capacity::Alloc {
    crate::capacity::demand(
        (p.memory_bytes > 0).then_some(p.memory_bytes),
        None,
        None,
        None,
    )
}
