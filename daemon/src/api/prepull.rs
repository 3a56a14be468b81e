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

/// One image of a request: its full reference, or why the node policy refuses it.
pub(super) type Wanted = (String, Result<(), Status>);

/// The request's images, checked and normalised; a malformed name refuses the request, an
/// image the node policy does not allow only its own pull (reported as that image's event).
pub(super) fn images(r: &pb::PrepullRequest, cfg: &RuntimeConfig) -> Result<Vec<Wanted>, Status> {
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
            let allowed = cfg
                .policy
                .check_image(&full)
                .map_err(|v| Status::from(crate::runtime::Error::Policy(v)));
            Ok((full, allowed))
        })
        .collect()
}

/// The last event of an image that could not be had.
fn failed(image: &str, status: &Status) -> pb::PrepullEvent {
    let mut last = event(image, None);
    last.error = status.message().to_owned();
    last.reason = tonic_types::StatusExt::get_details_error_info(status)
        .map(|i| i.reason)
        .unwrap_or_default();
    last
}

fn event(image: &str, progress: Option<pb::ProgressEvent>) -> pb::PrepullEvent {
    pb::PrepullEvent {
        image: image.to_owned(),
        progress,
        ..Default::default()
    }
}

/// Pulls `images` in order, streaming their progress; a refused image gets its error event
/// and the others still pull.
pub(super) fn run<E: ContainerEngine>(
    rt: Runtime<E>,
    images: Vec<Wanted>,
) -> BoxStream<'static, Result<pb::PrepullEvent, Status>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        for (image, allowed) in images {
            if let Err(status) = allowed {
                if tx.send(Ok(failed(&image, &status))).await.is_err() {
                    return;
                }
                continue;
            }
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
            let last = match outcome {
                Ok(()) => {
                    rt.note_pulled(&image).await;
                    pb::PrepullEvent {
                        done: true,
                        ..event(&image, None)
                    }
                }
                Err(e) => failed(&image, &Status::from(e)),
            };
            if tx.send(Ok(last)).await.is_err() {
                return;
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx).boxed()
}
