//! The fake engine's registry: images a test publishes with their layer sizes, pulled with
//! Docker's per-layer reports; a test may hold pulls at their first download to make them
//! overlap, and reads how many pulls began.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::sync::{mpsc, watch};

use super::model::{Image, normalise};
use super::{Behaviour, FakeEngine};
use crate::docker::{EngineError, PullEvent};
use crate::registry::RegistryAuth;

/// An image a fake registry serves.
#[derive(Clone)]
pub(super) struct Published {
    behaviour: Behaviour,
    layers: Vec<u64>,
    auth: Option<RegistryAuth>,
}

/// The fake registry and its pull gate.
pub(super) struct Registry {
    images: Mutex<BTreeMap<String, Published>>,
    /// False while pulls are held before their first download.
    open: watch::Sender<bool>,
}

impl Default for Registry {
    fn default() -> Self {
        Self {
            images: Mutex::default(),
            open: watch::channel(true).0,
        }
    }
}

impl Registry {
    fn images(&self) -> MutexGuard<'_, BTreeMap<String, Published>> {
        self.images
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl FakeEngine {
    /// Publishes `reference` in the fake registry with layers of these sizes (bytes); pulling
    /// it needs `auth` when given.
    pub fn publish_image(
        &self,
        reference: &str,
        behaviour: Behaviour,
        layers: &[u64],
        auth: Option<RegistryAuth>,
    ) {
        self.shared.registry.images().insert(
            normalise(reference),
            Published {
                behaviour,
                layers: layers.to_vec(),
                auth,
            },
        );
    }

    /// Holds every pull before its first download (`true`) or lets them go on.
    pub fn hold_pulls(&self, hold: bool) {
        self.shared.registry.open.send_replace(!hold);
    }

    pub(super) fn pull_stream(
        &self,
        reference: &str,
        auth: Option<&RegistryAuth>,
    ) -> BoxStream<'static, Result<PullEvent, EngineError>> {
        let reference = normalise(reference);
        let found = match self.enter("pull") {
            Err(e) => Err(e),
            Ok(_) => {
                let published = self.shared.registry.images().get(&reference).cloned();
                match published {
                    None => Err(EngineError::NotFound {
                        what: format!("manifest for {reference} not found: manifest unknown"),
                    }),
                    Some(p) if p.auth.is_some() && p.auth.as_ref() != auth => {
                        Err(EngineError::Api {
                            op: "pull",
                            status: 500,
                            message: format!(
                                "Head \"https://{reference}\": unauthorized: authentication required"
                            ),
                        })
                    }
                    Some(p) => Ok(p),
                }
            }
        };
        let published = match found {
            Ok(p) => p,
            Err(e) => return futures::stream::once(async move { Err(e) }).boxed(),
        };
        let (tx, rx) = mpsc::channel(16);
        let fake = self.clone();
        tokio::spawn(async move {
            // A send fails once the puller dropped the stream: the pull stops there.
            let ev = |layer: usize, status: &str, progress: Option<(u64, u64)>| {
                Ok(PullEvent {
                    layer: format!("layer{layer}"),
                    status: status.to_owned(),
                    current: progress.map(|p| p.0),
                    total: progress.map(|p| p.1),
                })
            };
            for i in 0..published.layers.len() {
                if tx.send(ev(i, "Pulling fs layer", None)).await.is_err() {
                    return;
                }
            }
            let mut open = fake.shared.registry.open.subscribe();
            tokio::select! {
                _ = open.wait_for(|o| *o) => {}
                () = tx.closed() => return,
            }
            for (i, &size) in published.layers.iter().enumerate() {
                for step in [
                    ev(i, "Downloading", Some((size / 2, size))),
                    ev(i, "Downloading", Some((size, size))),
                    ev(i, "Download complete", None),
                    ev(i, "Extracting", Some((size, size))),
                    ev(i, "Pull complete", None),
                ] {
                    if tx.send(step).await.is_err() {
                        return;
                    }
                }
            }
            let image = Image::new(&reference, published.behaviour.clone());
            fake.world().images.insert(reference.clone(), image);
            let done = PullEvent {
                status: format!("Status: Downloaded newer image for {reference}"),
                ..PullEvent::default()
            };
            let _ = tx.send(Ok(done)).await;
        });
        tokio_stream::wrappers::ReceiverStream::new(rx).boxed()
    }
}
