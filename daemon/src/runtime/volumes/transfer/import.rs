//! An import: the volume checked, marked unfinished and made, the stream unpacked as it
//! comes and verified, and the marker removed; or, on any failure, the volume removed.

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;

use futures::{Stream, StreamExt};
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;

use super::chunks::Unchunker;
use super::marker::{remove_marker, write_marker};
use super::{CHUNKS_IN_FLIGHT, Checksum, ImportPart, VolumeHeader, archive, local_dir};
use crate::docker::{ContainerEngine, NewVolume};
use crate::runtime::error::{blocking, detached};
use crate::runtime::{Error, Runtime};

impl<E: ContainerEngine> Runtime<E> {
    /// Makes user volume `header.name` from an export's stream and verifies it; on any
    /// failure the partial volume is removed. Runs to the end even if the caller goes away.
    pub async fn import_volume(
        &self,
        header: VolumeHeader,
        parts: impl Stream<Item = Result<ImportPart, Error>> + Send + Unpin + 'static,
    ) -> Result<Checksum, Error> {
        let rt = self.clone();
        detached("import volume", async move {
            let name = header.name.clone();
            let busy = rt.inner.transfers.claim(&name)?;
            let root = rt.begin_import(&header).await?;
            let r = rt.receive(&name, root, parts).await;
            match &r {
                Ok(sum) => {
                    remove_marker(&name, &rt.import_marker(&name)).await?;
                    tracing::info!(volume = %name, user = header.owner.user(), bytes = sum.bytes, sha256 = %sum.sha256, "volume imported");
                }
                Err(e) => {
                    tracing::warn!(volume = %name, error = %e, "volume import failed; removing it");
                    if let Err(e) = rt.inner.engine.remove_volume(&name).await {
                        tracing::warn!(volume = %name, error = %e, "partial import not removed; a retry will");
                    } else {
                        remove_marker(&name, &rt.import_marker(&name)).await?;
                    }
                }
            }
            drop(busy);
            r
        })
        .await
    }

    /// Checks that `header.name` may be imported (wiping an unfinished import of the same
    /// move), marks it unfinished and makes the volume; returns its directory.
    async fn begin_import(&self, header: &VolumeHeader) -> Result<PathBuf, Error> {
        let name = header.name.as_str();
        let marker = self.import_marker(name);
        let marked_by = {
            let m = marker.clone();
            blocking("read import marker", move || {
                std::fs::read_to_string(m).ok()
            })
            .await?
        };
        let engine = &self.inner.engine;
        if engine.volume(name).await?.is_some() {
            if marked_by.as_deref() != Some(header.source_node.as_str()) {
                return Err(Error::VolumeExists {
                    name: name.to_owned(),
                });
            }
            self.not_in_use(name, false).await?;
            tracing::info!(volume = name, "unfinished import of the same move wiped");
            engine.remove_volume(name).await?;
        }
        write_marker(name, &marker, &header.source_node).await?;
        match self.make_imported(header).await {
            Ok(root) => Ok(root),
            Err(e) => {
                remove_marker(name, &marker).await?;
                Err(e)
            }
        }
    }

    /// Makes the volume of an import, labelled as [`Runtime::prepare_volumes`] labels its
    /// own; returns its directory.
    async fn make_imported(&self, header: &VolumeHeader) -> Result<PathBuf, Error> {
        let name = header.name.as_str();
        let engine = &self.inner.engine;
        let labels = crate::runtime::volumes::owner_labels(
            &self.inner.cfg.node_id,
            &header.owner,
            header.per_server,
        );
        engine
            .create_volume(&NewVolume {
                name: name.to_owned(),
                driver: "local".to_owned(),
                options: HashMap::new(),
                labels,
            })
            .await?;
        let info = engine
            .volume(name)
            .await?
            .ok_or_else(|| Error::VolumeNotFound {
                name: name.to_owned(),
            })?;
        local_dir(&info)
    }

    /// Unpacks `parts` into `root` as they come and checks the trailer's checksum.
    async fn receive(
        &self,
        name: &str,
        root: PathBuf,
        mut parts: impl Stream<Item = Result<ImportPart, Error>> + Send + Unpin + 'static,
    ) -> Result<Checksum, Error> {
        let (tx, rx) = mpsc::channel::<Vec<u8>>(CHUNKS_IN_FLIGHT);
        let unpacker = tokio::task::spawn_blocking(move || {
            let mut input = Unchunker::new(rx);
            let r = archive::unpack(&root, &mut input);
            if r.is_ok() {
                // Past the archive's end: take the rest (padding), so it is hashed too.
                let _ = io::copy(&mut input, &mut io::sink());
            }
            r
        });
        let mut hash = Sha256::new();
        let mut bytes = 0u64;
        let mut trailer = None;
        let mut failed = None;
        while let Some(part) = parts.next().await {
            match part {
                Ok(ImportPart::Data(d)) => {
                    hash.update(&d);
                    bytes += d.len() as u64;
                    if tx.send(d).await.is_err() {
                        break; // the unpacker failed: its error says why
                    }
                }
                Ok(ImportPart::Trailer(sum)) => {
                    trailer = Some(sum);
                    break;
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        drop(tx);
        let unpacked = unpacker
            .await
            .map_err(|e| Error::Internal(format!("unpack task failed: {e}")))?;
        if let Some(e) = failed {
            return Err(e);
        }
        if let Err(source) = unpacked {
            return Err(Error::Archive {
                name: name.to_owned(),
                source,
            });
        }
        let Some(expected) = trailer else {
            return Err(Error::ImportIncomplete {
                name: name.to_owned(),
                why: "the stream ended without its checksum".to_owned(),
            });
        };
        let actual = hex::encode(hash.finalize());
        if actual != expected.sha256.to_ascii_lowercase() || bytes != expected.bytes {
            return Err(Error::ChecksumMismatch {
                name: name.to_owned(),
                expected: expected.sha256,
                expected_bytes: expected.bytes,
                actual,
                actual_bytes: bytes,
            });
        }
        Ok(Checksum {
            sha256: actual,
            bytes,
        })
    }
}
