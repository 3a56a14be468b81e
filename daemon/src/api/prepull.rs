//! The Prepull RPC: images pulled one after another, each pull's progress streamed as Start's
//! PULLING events; a client that goes away stops following (and the pull stops unless a spawn
//! follows it).

use berth_proto::v1 as pb;
use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::sync::mpsc;
use tonic::Status;

use super::status::invalid;
use crate::docker::ContainerEngine;
use crate::runtime::progress::{Event, Phase};
use crate::runtime::{Runtime, RuntimeConfig};
use crate::spec::{self, SpecError};

/// Most images one Prepull may name.
pub(super) const MAX_IMAGES: usize = 64;

/// The request's images, checked and normalised, each allowed by the node policy.
pub(super) fn images(r: &pb::PrepullRequest, cfg: &RuntimeConfig) -> Result<Vec<String>, Status> {
    if r.images.is_empty() || r.images.len() > MAX_IMAGES {
        return Err(invalid(SpecError::new(
            "images",
            format!("name 1 to {MAX_IMAGES} images"),
        )));
    }
    r.images
        .iter()
        .enumerate()
        .map(|(i, image)| {
            spec::check_image(image)
                .map_err(|e| invalid(SpecError::new(format!("images[{i}]"), e.to_string())))?;
            let full = spec::normalize_image(image);
            cfg.policy
                .check_image(&full)
                .map_err(|v| Status::from(crate::runtime::Error::Policy(v)))?;
            Ok(full)
        })
        .collect()
}

fn event(image: &str, progress: Option<pb::ProgressEvent>) -> pb::PrepullEvent {
    pb::PrepullEvent {
        image: image.to_owned(),
        progress,
        ..Default::default()
    }
}

/// Pulls `images` in order, streaming their progress.
pub(super) fn run<E: ContainerEngine>(
    rt: Runtime<E>,
    images: Vec<String>,
) -> BoxStream<'static, Result<pb::PrepullEvent, Status>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        for image in images {
            let relay = tx.clone();
            let name = image.clone();
            let pulled = rt.prepull(&image, move |p| {
                let mut ev = Event::new(Phase::Pulling, p.percent(), p.message());
                ev.pull = Some(p.clone());
                // A slow client misses intermediate steps, never the outcome.
                let _ = relay.try_send(Ok(event(&name, Some(ev.into()))));
            });
            let outcome = tokio::select! {
                r = pulled => r,
                () = tx.closed() => return,
            };
            let mut last = event(&image, None);
            match outcome {
                Ok(()) => last.done = true,
                Err(e) => {
                    let status = Status::from(e);
                    last.error = status.message().to_owned();
                    last.reason = tonic_types::StatusExt::get_details_error_info(&status)
                        .map(|i| i.reason)
                        .unwrap_or_default();
                }
            }
            if tx.send(Ok(last)).await.is_err() {
                return;
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx).boxed()
}
