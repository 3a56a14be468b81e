//! Moving a user volume between nodes through the operator's client: this node exports one
//! of its user volumes as a checksummed tar stream, imports one into a new volume labelled
//! like those it makes, or removes one. No node talks to another.
//!
//! An import is marked unfinished by a file `<state_dir>/imports/<name>` (holding the source
//! node), written before the volume is made and removed once the stream's SHA-256 matched.
//! While the marker is there the volume is not listed as the user's, no server may mount it,
//! and an import of the same volume from the same source node wipes it and starts again, so
//! a retry after a dropped stream or a crash of berthd is safe.
//!
//! Here: the types, export and removal; the import in `import.rs`, the tar stream in
//! `archive.rs`, its chunking in `chunks.rs`, the markers in `marker.rs`.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::sync::mpsc;

use self::archive::ArchiveError;
use self::chunks::Chunker;
use self::marker::remove_marker;
use crate::docker::{
    ContainerEngine, LABEL_MANAGED, LABEL_NODE, LABEL_SERVER, LABEL_USER, LABEL_VOLUME_SCOPE,
    RunStatus, VolumeInfo,
};
use crate::key::ServerKey;
use crate::runtime::{Error, Runtime, StopSpec};

pub mod archive;
mod chunks;
mod import;
mod marker;

/// Bytes of tar stream per message.
pub const CHUNK_BYTES: usize = 1024 * 1024;
/// Chunks buffered between the file work and the network, each way.
const CHUNKS_IN_FLIGHT: usize = 4;

/// What a moved volume is: sent first by an export, required first by an import.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeHeader {
    /// Docker's name, the same on both nodes.
    pub name: String,
    /// The user's (server "") or one server's.
    pub owner: ServerKey,
    /// Whether it belongs to one server (`{server}` in its template) rather than the user.
    pub per_server: bool,
    /// The node it comes from: a retry from the same node may replace an unfinished import.
    pub source_node: String,
}

/// The SHA-256 (lowercase hex) and length of a whole tar stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checksum {
    /// Hex SHA-256.
    pub sha256: String,
    /// Bytes.
    pub bytes: u64,
}

/// One message of an export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExportPart {
    /// First.
    Header(VolumeHeader),
    /// The tar stream, in order, at most [`CHUNK_BYTES`] each.
    Data(Vec<u8>),
    /// Last.
    Trailer(Checksum),
}

/// One message of an import after its header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImportPart {
    /// The tar stream, in order.
    Data(Vec<u8>),
    /// The sender's checksum of the whole stream; ends the import.
    Trailer(Checksum),
}

/// Names of the volumes being exported, imported or removed: one such call per volume.
#[derive(Default)]
pub(in crate::runtime) struct Busy(Arc<Mutex<HashSet<String>>>);

struct BusyGuard(Arc<Mutex<HashSet<String>>>, String);

impl Busy {
    fn claim(&self, name: &str) -> Result<BusyGuard, Error> {
        let mut set = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !set.insert(name.to_owned()) {
            return Err(Error::VolumeBusy {
                name: name.to_owned(),
            });
        }
        Ok(BusyGuard(self.0.clone(), name.to_owned()))
    }
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&self.1);
    }
}

impl<E: ContainerEngine> Runtime<E> {
    /// Where the unfinished-import marker of `name` lives.
    fn import_marker(&self, name: &str) -> PathBuf {
        self.inner.cfg.state_dir.join("imports").join(name)
    }

    /// Whether `name` is an import not yet verified.
    pub(in crate::runtime) fn is_unfinished_import(&self, name: &str) -> bool {
        self.import_marker(name).exists()
    }

    /// The volume `name` if it is a user volume this node made (or imported), with its
    /// owner; an unfinished import is refused.
    async fn user_volume(&self, name: &str) -> Result<(VolumeInfo, VolumeHeader), Error> {
        let not_found = || Error::VolumeNotFound {
            name: name.to_owned(),
        };
        let info = self
            .inner
            .engine
            .volume(name)
            .await?
            .ok_or_else(not_found)?;
        let label = |k| info.labels.get(k).map(String::as_str);
        if label(LABEL_MANAGED) != Some("true")
            || label(LABEL_NODE) != Some(self.inner.cfg.node_id.as_str())
        {
            return Err(not_found());
        }
        let per_server = match label(LABEL_VOLUME_SCOPE) {
            Some("server") => true,
            Some("user") => false,
            _ => return Err(not_found()),
        };
        let user = label(LABEL_USER).ok_or_else(not_found)?;
        let server = if per_server {
            label(LABEL_SERVER).unwrap_or_default()
        } else {
            ""
        };
        let owner = ServerKey::new(user, server).map_err(|_| not_found())?;
        let header = VolumeHeader {
            name: name.to_owned(),
            owner,
            per_server,
            source_node: self.inner.cfg.node_id.clone(),
        };
        Ok((info, header))
    }

    /// Refuses while a running container mounts `name`; with `remove_stopped`, stopped
    /// servers of this node that mount it are removed (Docker keeps a volume a container
    /// references), and a stopped container berthd does not manage is refused.
    async fn not_in_use(&self, name: &str, remove_stopped: bool) -> Result<(), Error> {
        let engine = &self.inner.engine;
        for id in engine.volume_users(name).await? {
            let Some(c) = engine.inspect(&id).await? else {
                continue;
            };
            let running = !matches!(
                c.status,
                RunStatus::Exited | RunStatus::Dead | RunStatus::Created
            );
            let in_use = |running| Error::VolumeInUse {
                name: name.to_owned(),
                container: c.name.clone(),
                running,
            };
            if running {
                return Err(in_use(true));
            }
            if !remove_stopped {
                continue;
            }
            let ours = c.label(LABEL_MANAGED) == Some("true")
                && c.label(LABEL_NODE) == Some(self.inner.cfg.node_id.as_str());
            let key = ServerKey::new(
                c.label(LABEL_USER).unwrap_or_default(),
                c.label(LABEL_SERVER).unwrap_or_default(),
            );
            match key {
                // A key with an operation under way may be starting: leave it be.
                Ok(key) if ours && self.inner.keys.current(&key).is_none() => {
                    let spec = StopSpec {
                        now: true,
                        grace: None,
                        remove: true,
                    };
                    self.stop(&key, spec).await?;
                }
                _ => return Err(in_use(false)),
            }
        }
        Ok(())
    }

    /// Streams user volume `name` as a tar stream: its header, chunks, then the SHA-256 of
    /// the whole stream. Refused while a running container mounts it. Only plain `local`
    /// volumes are exported: berthd reads their directory on the host.
    pub async fn export_volume(
        &self,
        name: &str,
    ) -> Result<BoxStream<'static, Result<ExportPart, Error>>, Error> {
        let busy = self.inner.transfers.claim(name)?;
        let (info, header) = self.user_volume(name).await?;
        if self.is_unfinished_import(name) {
            return Err(Error::VolumeImporting {
                name: name.to_owned(),
            });
        }
        let root = local_dir(&info)?;
        self.not_in_use(name, false).await?;
        let (tx, rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
        let vol = name.to_owned();
        tracing::info!(
            volume = name,
            user = header.owner.user(),
            "volume export begins"
        );
        tokio::task::spawn_blocking(move || {
            let _busy = busy;
            let mut out = Chunker::new(tx.clone());
            let last = match archive::pack(&root, &mut out).and_then(|()| out.finish()) {
                Ok(sum) => {
                    tracing::info!(volume = %vol, bytes = sum.bytes, sha256 = %sum.sha256, "volume exported");
                    Ok(ExportPart::Trailer(sum))
                }
                Err(ArchiveError::Refused { path, why }) => Err(Error::VolumeNotMovable {
                    name: vol.clone(),
                    why: format!("{path}: {why}"),
                }),
                Err(source) => Err(Error::Archive { name: vol, source }),
            };
            // The client may have gone; nobody is left to tell.
            let _ = tx.blocking_send(last);
        });
        let head = futures::stream::once(async move { Ok(ExportPart::Header(header)) });
        Ok(head
            .chain(tokio_stream::wrappers::ReceiverStream::new(rx))
            .boxed())
    }

    /// Removes user volume `name` (and any unfinished-import marker): refused while a running
    /// container mounts it; stopped servers of this node that mount it are removed first.
    /// Returns whether it existed.
    pub async fn remove_user_volume(&self, name: &str) -> Result<bool, Error> {
        let _busy = self.inner.transfers.claim(name)?;
        if self.inner.engine.volume(name).await?.is_none() {
            remove_marker(name, &self.import_marker(name)).await?;
            return Ok(false);
        }
        self.user_volume(name).await?;
        self.not_in_use(name, true).await?;
        self.inner.engine.remove_volume(name).await?;
        remove_marker(name, &self.import_marker(name)).await?;
        tracing::info!(volume = name, "user volume removed");
        Ok(true)
    }
}

/// The host directory of a plain `local` volume.
fn local_dir(info: &VolumeInfo) -> Result<PathBuf, Error> {
    let refuse = |why: &str| Error::VolumeNotMovable {
        name: info.name.clone(),
        why: why.to_owned(),
    };
    if info.driver != "local" {
        return Err(refuse("only volumes of the local driver can be moved"));
    }
    if !info.options.is_empty() {
        return Err(refuse(
            "a local volume with driver options (tmpfs, NFS, ...) has no data of its own here",
        ));
    }
    if info.mountpoint.is_empty() {
        return Err(refuse("Docker reports no mountpoint"));
    }
    Ok(PathBuf::from(&info.mountpoint))
}
