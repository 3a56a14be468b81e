//! [`ContainerEngine`] for [`FakeEngine`]: every call is counted and fails while the engine
//! is away; event and log streams end with it.

use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::sync::broadcast;

use super::model::{EXIT_SIGKILL, EXIT_SIGTERM, normalise};
use super::{Delayed, FakeEngine, matches};
use crate::docker::{
    ContainerEngine, ContainerInfo, ContainerSpec, EngineError, EngineEvent, EngineVersion,
    ImageInfo, Limits, LogChunk, Usage,
};
use crate::docker::{LogsWanted, NewFile, NewVolume, VolumeInfo};

impl ContainerEngine for FakeEngine {
    async fn version(&self) -> Result<EngineVersion, EngineError> {
        self.faulty("version", async {
            drop(self.enter("version")?);
            Ok(EngineVersion {
                version: "fake".to_owned(),
                api_version: "1.41".to_owned(),
            })
        })
        .await
    }

    async fn ping(&self) -> Result<(), EngineError> {
        self.faulty("ping", async { self.enter("ping").map(drop) })
            .await
    }

    async fn image(&self, reference: &str) -> Result<Option<ImageInfo>, EngineError> {
        self.faulty("image", async {
            let world = self.enter("image")?;
            Ok(world.images.get(&normalise(reference)).map(|i| ImageInfo {
                id: i.id.clone(),
                cmd: vec!["fake-server".to_owned()],
                entrypoint: Vec::new(),
            }))
        })
        .await
    }

    fn pull(
        &self,
        reference: &str,
        auth: Option<&crate::registry::RegistryAuth>,
    ) -> BoxStream<'static, Result<crate::docker::PullEvent, EngineError>> {
        self.faulty_stream("pull", || self.pull_stream(reference, auth))
    }

    async fn image_summaries(&self) -> Result<Vec<crate::docker::ImageSummary>, EngineError> {
        self.faulty("image_summaries", async {
            let world = self.enter("image summaries")?;
            Ok(world
                .images
                .iter()
                .map(|(reference, i)| crate::docker::ImageSummary {
                    id: i.id.clone(),
                    refs: vec![reference.clone()],
                    size: 1,
                    created: 0,
                })
                .collect())
        })
        .await
    }

    async fn images_in_use(&self) -> Result<Vec<String>, EngineError> {
        self.faulty("images_in_use", async {
            let world = self.enter("images in use")?;
            Ok(world
                .containers
                .values()
                .filter_map(|c| world.images.get(&normalise(&c.spec.image)))
                .map(|i| i.id.clone())
                .collect())
        })
        .await
    }

    async fn remove_image(&self, reference: &str) -> Result<(), EngineError> {
        self.faulty("remove_image", async {
            let mut world = self.enter("remove image")?;
            let reference = normalise(reference);
            let used = world
                .containers
                .values()
                .any(|c| normalise(&c.spec.image) == reference);
            if used {
                return Err(EngineError::Conflict {
                    message: format!("image {reference} is being used by a container"),
                });
            }
            world.images.remove(&reference);
            Ok(())
        })
        .await
    }

    async fn rename(&self, id: &str, name: &str) -> Result<(), EngineError> {
        self.faulty("rename", async {
            let mut world = self.enter("rename")?;
            if world.resolve(name).is_some() {
                return Err(EngineError::Conflict {
                    message: format!("the container name \"/{name}\" is already in use"),
                });
            }
            let c = world.get_mut(id).ok_or_else(|| Self::not_found(id))?;
            name.clone_into(&mut c.info.name);
            Ok(())
        })
        .await
    }

    async fn update_limits(&self, id: &str, limits: Limits) -> Result<(), EngineError> {
        self.faulty("update_limits", async {
            let mut world = self.enter("update limits")?;
            let c = world.get_mut(id).ok_or_else(|| Self::not_found(id))?;
            let set = |to: &mut i64, v: Option<i64>| {
                if let Some(v) = v {
                    *to = v;
                }
            };
            set(&mut c.info.memory, limits.memory);
            set(&mut c.info.memory_reservation, limits.memory_reservation);
            set(&mut c.info.nano_cpus, limits.nano_cpus);
            set(&mut c.info.cpu_shares, limits.cpu_shares);
            Ok(())
        })
        .await
    }

    async fn send_stdin(&self, id: &str, data: Vec<u8>) -> Result<(), EngineError> {
        self.faulty("send_stdin", async {
            let mut world = self.enter("send stdin")?;
            let c = world.get_mut(id).ok_or_else(|| Self::not_found(id))?;
            if !c.spec.stdin || !c.running() {
                return Err(EngineError::Conflict {
                    message: format!("container {id} takes no stdin"),
                });
            }
            c.stdin.extend_from_slice(&data);
            Ok(())
        })
        .await
    }

    async fn create(&self, spec: &ContainerSpec) -> Result<String, EngineError> {
        self.faulty("create", async { self.enter("create")?.create(spec) })
            .await
    }

    async fn start(&self, id: &str) -> Result<(), EngineError> {
        self.faulty("start", async {
            let delay = *self
                .shared
                .start_delay
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let (id, plan) = {
                let mut world = self.enter("start")?;
                let id = world.resolve(id).ok_or_else(|| Self::not_found(id))?;
                let plan = world.start(&id)?;
                (id, plan)
            };
            let Some(plan) = plan else {
                return Ok(());
            };
            if plan.after.is_zero() {
                self.world().terminate(&id, plan.code, false);
                return Ok(());
            }
            let fake = self.clone();
            self.spawn_bg(async move {
                tokio::time::sleep(plan.after).await;
                let mut world = fake.world();
                // A later run of the same container (restarted meanwhile) is not this one.
                if world.containers.get(&id).is_some_and(|c| c.run == plan.run) {
                    world.terminate(&id, plan.code, false);
                }
            });
            Ok(())
        })
        .await
    }

    async fn network(&self, name: &str) -> Result<Option<super::super::NetworkInfo>, EngineError> {
        self.faulty("network", async {
            Ok(self.enter("network")?.networks.get(name).cloned())
        })
        .await
    }

    async fn create_network(
        &self,
        name: &str,
        _labels: &std::collections::HashMap<String, String>,
        icc: bool,
    ) -> Result<(), EngineError> {
        self.faulty("create_network", async {
            let mut world = self.enter("create_network")?;
            let n = world.networks.len();
            world
                .networks
                .entry(name.to_owned())
                .or_insert_with(|| super::super::NetworkInfo {
                    subnets: vec![format!("172.{}.0.0/16", 18 + n % 200)],
                    icc,
                });
            Ok(())
        })
        .await
    }

    /// `false` fails with exit 1, anything else succeeds.
    async fn exec(&self, id: &str, argv: &[String]) -> Result<(i64, String), EngineError> {
        self.faulty("exec", async {
            let world = self.enter("exec")?;
            let c = world.get(id).ok_or_else(|| Self::not_found(id))?;
            if !c.running() {
                return Err(EngineError::Conflict {
                    message: format!("container {id} is not running"),
                });
            }
            Ok(match argv.first().map(String::as_str) {
                Some("false") => (1, "fake failure".to_owned()),
                _ => (0, String::new()),
            })
        })
        .await
    }

    async fn put_files(&self, id: &str, files: &[NewFile]) -> Result<(), EngineError> {
        self.faulty("put_files", async {
            let mut world = self.enter("put_files")?;
            let c = world
                .containers
                .values_mut()
                .find(|c| c.info.id == id || c.info.name == id)
                .ok_or_else(|| Self::not_found(id))?;
            for f in files {
                if let Some(bytes) = &f.contents {
                    c.files.insert(f.path.clone(), bytes.clone());
                }
            }
            Ok(())
        })
        .await
    }

    async fn inspect(&self, name_or_id: &str) -> Result<Option<ContainerInfo>, EngineError> {
        self.faulty("inspect", async {
            let (snapshot, delay) = {
                let mut world = self.enter("inspect")?;
                let snapshot = world.get(name_or_id).map(|c| c.info.clone());
                (snapshot, world.take_inspect_delay(name_or_id))
            };
            if let Some(delay) = delay {
                self.shared.delayed.send_modify(|d| *d += 1);
                let _counted = Delayed(&self.shared.delayed);
                tokio::time::sleep(delay).await;
            }
            Ok(snapshot)
        })
        .await
    }

    async fn list(&self, labels: &[(&str, &str)]) -> Result<Vec<String>, EngineError> {
        self.faulty("list", async {
            let world = self.enter("list")?;
            Ok(world
                .ids()
                .into_iter()
                .filter(|id| {
                    world.containers.get(id).is_some_and(|c| {
                        labels.iter().all(|(k, v)| {
                            c.info
                                .label(k)
                                .is_some_and(|got| *v == crate::docker::ANY_VALUE || got == *v)
                        })
                    })
                })
                .collect())
        })
        .await
    }

    async fn kill(&self, id: &str) -> Result<(), EngineError> {
        self.faulty("kill", async {
            let mut world = self.enter("kill")?;
            let id = world.resolve(id).ok_or_else(|| Self::not_found(id))?;
            world.kill(&id);
            Ok(())
        })
        .await
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<(), EngineError> {
        self.faulty("stop", async {
            let (mut exit, id) = {
                let mut world = self.enter("stop")?;
                let id = world.resolve(id).ok_or_else(|| Self::not_found(id))?;
                let Some(c) = world.containers.get(&id) else {
                    return Err(Self::not_found(&id));
                };
                if !c.running() {
                    return Ok(());
                }
                let ignores = c.ignores_sigterm;
                let exit = c.exit.subscribe();
                world.emit(&id, "kill", &[("signal", "15".to_owned())]);
                if !ignores {
                    world.terminate(&id, EXIT_SIGTERM, false);
                    world.emit(&id, "stop", &[]);
                    return Ok(());
                }
                (exit, id)
            };
            // It ignores SIGTERM: dockerd waits out the grace (or an exit), then kills.
            let ended = tokio::select! {
                r = exit.wait_for(Option::is_some) => r.is_ok(),
                () = tokio::time::sleep(grace) => false,
            };
            let mut world = self.world();
            if !ended {
                world.kill(&id);
            }
            world.emit(&id, "stop", &[]);
            Ok(())
        })
        .await
    }

    async fn remove(&self, id: &str) -> Result<(), EngineError> {
        self.faulty("remove", async {
            let mut world = self.enter("remove")?;
            if let Some(id) = world.resolve(id) {
                world.remove(&id);
            }
            Ok(())
        })
        .await
    }

    async fn wait_exit(&self, id: &str) -> Result<i64, EngineError> {
        self.faulty("wait_exit", async {
            let mut exit = {
                let world = self.enter("wait_exit")?;
                world
                    .get(id)
                    .ok_or_else(|| Self::not_found(id))?
                    .exit
                    .subscribe()
            };
            tokio::select! {
                r = exit.wait_for(Option::is_some) => match r {
                    Ok(code) => Ok((*code).unwrap_or(0)),
                    // Removed while waiting: it was killed first, so this is a race we lost.
                    Err(_) => Ok(EXIT_SIGKILL),
                },
                e = self.outage("wait") => Err(e),
            }
        })
        .await
    }

    async fn root_dir(&self) -> Result<String, EngineError> {
        self.faulty("root_dir", async {
            Ok(self.enter("root_dir")?.root_dir.clone())
        })
        .await
    }

    async fn usage(&self, id: &str) -> Result<Usage, EngineError> {
        self.faulty("usage", async {
            let world = self.enter("usage")?;
            Ok(world.get(id).ok_or_else(|| Self::not_found(id))?.usage)
        })
        .await
    }

    async fn volume(&self, name: &str) -> Result<Option<VolumeInfo>, EngineError> {
        self.faulty("volume", async {
            let world = self.enter("volume")?;
            Ok(world.volumes.get(name).cloned())
        })
        .await
    }

    async fn create_volume(&self, v: &NewVolume) -> Result<(), EngineError> {
        self.faulty("create_volume", async {
            let mut world = self.enter("create_volume")?;
            world
                .volumes
                .entry(v.name.clone())
                .or_insert_with(|| VolumeInfo {
                    name: v.name.clone(),
                    driver: if v.driver.is_empty() {
                        "local".to_owned()
                    } else {
                        v.driver.clone()
                    },
                    options: v.options.clone(),
                    labels: v.labels.clone(),
                    mountpoint: String::new(),
                });
            Ok(())
        })
        .await
    }

    async fn list_volumes(&self, labels: &[(&str, &str)]) -> Result<Vec<VolumeInfo>, EngineError> {
        self.faulty("list_volumes", async {
            let world = self.enter("list_volumes")?;
            Ok(world
                .volumes
                .values()
                .filter(|v| {
                    labels
                        .iter()
                        .all(|(k, want)| v.labels.get(*k).is_some_and(|got| got == want))
                })
                .cloned()
                .collect())
        })
        .await
    }

    async fn volume_users(&self, name: &str) -> Result<Vec<String>, EngineError> {
        self.faulty("volume_users", async {
            let world = self.enter("volume_users")?;
            let mut ids: Vec<String> = world
                .containers
                .values()
                .filter(|c| c.spec.mounts.iter().any(|m| !m.bind && m.volume == name))
                .map(|c| c.info.id.clone())
                .collect();
            ids.sort();
            Ok(ids)
        })
        .await
    }

    async fn remove_volume(&self, name: &str) -> Result<(), EngineError> {
        self.faulty("remove_volume", async {
            let mut world = self.enter("remove_volume")?;
            if let Some(user) = world.volume_in_use(name) {
                return Err(EngineError::Conflict {
                    message: format!("remove {name}: volume is in use - [{user}]"),
                });
            }
            world.volumes.remove(name);
            Ok(())
        })
        .await
    }

    fn events(
        &self,
        labels: &[(&str, &str)],
        since: Option<i64>,
    ) -> BoxStream<'static, Result<EngineEvent, EngineError>> {
        self.faulty_stream("events", || self.events_stream(labels, since))
    }

    /// The fake keeps no times: `since` and `timestamps` are not modelled.
    fn logs(
        &self,
        id: &str,
        want: LogsWanted,
    ) -> BoxStream<'static, Result<LogChunk, EngineError>> {
        self.faulty_stream("logs", || self.logs_stream(id, want.tail, want.follow))
    }
}

/// The streams as they answer without faults.
impl FakeEngine {
    fn events_stream(
        &self,
        labels: &[(&str, &str)],
        since: Option<i64>,
    ) -> BoxStream<'static, Result<EngineEvent, EngineError>> {
        let labels: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        // Replay and subscription under one lock: nothing is missed or seen twice.
        let (replay, rx) = match self.enter("events") {
            Err(e) => return futures::stream::once(async move { Err(e) }).boxed(),
            Ok(world) => {
                let replay: Vec<EngineEvent> = since.map_or_else(Vec::new, |s| {
                    let from = s.saturating_mul(1_000_000_000);
                    world
                        .history
                        .iter()
                        .filter(|e| e.time_nano >= from && matches(e, &labels))
                        .cloned()
                        .collect()
                });
                (replay, world.events.subscribe())
            }
        };
        let fake = self.clone();
        let live =
            futures::stream::unfold((rx, fake, labels), |(mut rx, fake, labels)| async move {
                loop {
                    let next = tokio::select! {
                        // Events sent before the outage still arrive, then the stream ends.
                        biased;
                        r = rx.recv() => r,
                        // The stream ends when the engine goes away, as dockerd's does.
                        _ = fake.outage("events") => return None,
                    };
                    match next {
                        Ok(ev) if matches(&ev, &labels) => {
                            return Some((Ok(ev), (rx, fake, labels)));
                        }
                        Ok(_) => {}
                        Err(broadcast::error::RecvError::Lagged(_)) => {
                            let e = EngineError::Unavailable {
                                op: "events",
                                message: "the subscriber fell behind".to_owned(),
                            };
                            return Some((Err(e), (rx, fake, labels)));
                        }
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                }
            });
        futures::stream::iter(replay.into_iter().map(Ok))
            .chain(live)
            .boxed()
    }

    fn logs_stream(
        &self,
        id: &str,
        tail: Option<u32>,
        follow: bool,
    ) -> BoxStream<'static, Result<LogChunk, EngineError>> {
        let found = self.enter("logs").and_then(|world| {
            let c = world.get(id).ok_or_else(|| Self::not_found(id))?;
            let skip = tail.map_or(0, |n| c.logs.len().saturating_sub(n as usize));
            let past: Vec<LogChunk> = c.logs[skip..].to_vec();
            let live = (follow && c.running()).then(|| (c.log_tx.subscribe(), c.exit.subscribe()));
            Ok((past, live))
        });
        let (past, live) = match found {
            Ok(v) => v,
            Err(e) => return futures::stream::once(async move { Err(e) }).boxed(),
        };
        let past = futures::stream::iter(past.into_iter().map(Ok));
        let Some((rx, exit)) = live else {
            return past.boxed();
        };
        let fake = self.clone();
        let live = futures::stream::unfold(Some((rx, exit, fake)), |state| async move {
            let (mut rx, mut exit, fake) = state?;
            // Ok(None): the follow ends; Err: the engine went away.
            let next: Result<Option<LogChunk>, EngineError> = tokio::select! {
                biased;
                r = rx.recv() => Ok(r.ok()),
                // Following ends when the container stops, as with dockerd.
                _ = exit.wait_for(Option::is_some) => Ok(None),
                e = fake.outage("logs") => Err(e),
            };
            match next {
                Ok(Some(chunk)) => Some((Ok(chunk), Some((rx, exit, fake)))),
                Ok(None) => None,
                Err(e) => Some((Err(e), None)),
            }
        });
        past.chain(live).boxed()
    }
}
