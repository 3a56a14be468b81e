//! Moving a user volume between nodes through the operator's client: this node exports one
//! of its user volumes as a checksummed tar stream, imports one into a new volume labelled
//! like those it makes, or removes one. No node talks to another.
//!
//! An import is marked unfinished by a file `<state_dir>/imports/<name>` (holding the source
//! node), written before the volume is made and removed once the stream's SHA-256 matched.
//! While the marker is there the volume is not listed as the user's, no server may mount it,
//! and an import of the same volume from the same source node wipes it and starts again, so
//! a retry after a dropped stream or a crash of berthd is safe.

use std::collections::{HashMap, HashSet};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;

use super::archive::{self, ArchiveError};
use super::error::{blocking, detached};
use super::{Error, Runtime, StopSpec};
use crate::docker::{
    ContainerEngine, LABEL_MANAGED, LABEL_NODE, LABEL_SERVER, LABEL_USER, LABEL_VOLUME_SCOPE,
    NewVolume, RunStatus, VolumeInfo,
};
use crate::key::ServerKey;

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
pub(super) struct Busy(Arc<Mutex<HashSet<String>>>);

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
    pub(super) fn is_unfinished_import(&self, name: &str) -> bool {
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
            let mut out = Chunker {
                tx: tx.clone(),
                buf: Vec::with_capacity(CHUNK_BYTES),
                hash: Sha256::new(),
                bytes: 0,
            };
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
        let mut labels = HashMap::from([
            (LABEL_MANAGED.to_owned(), "true".to_owned()),
            (LABEL_NODE.to_owned(), self.inner.cfg.node_id.clone()),
            (LABEL_USER.to_owned(), header.owner.user().to_owned()),
        ]);
        let scope = if header.per_server {
            labels.insert(LABEL_SERVER.to_owned(), header.owner.server().to_owned());
            "server"
        } else {
            "user"
        };
        labels.insert(LABEL_VOLUME_SCOPE.to_owned(), scope.to_owned());
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
            let mut input = Unchunker {
                rx,
                buf: Vec::new(),
                at: 0,
            };
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

async fn write_marker(name: &str, path: &Path, source_node: &str) -> Result<(), Error> {
    let (path, text) = (path.to_owned(), source_node.to_owned());
    blocking("write import marker", move || {
        let io = |source| ArchiveError::Io {
            path: path.display().to_string(),
            source,
        };
        let dir = path.parent().unwrap_or(Path::new("/"));
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut f = std::fs::File::create(&path).map_err(io)?;
        f.write_all(text.as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io)
    })
    .await?
    .map_err(|source| Error::Archive {
        name: name.to_owned(),
        source,
    })
}

async fn remove_marker(name: &str, path: &Path) -> Result<(), Error> {
    let path = path.to_owned();
    blocking("remove import marker", move || {
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
        .map_err(|source| ArchiveError::Io {
            path: path.display().to_string(),
            source,
        })
    })
    .await?
    .map_err(|source| Error::Archive {
        name: name.to_owned(),
        source,
    })
}

/// The tar stream cut into chunks for the network, hashed on the way.
struct Chunker {
    tx: mpsc::Sender<Result<ExportPart, Error>>,
    buf: Vec<u8>,
    hash: Sha256,
    bytes: u64,
}

impl Chunker {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK_BYTES));
        self.tx
            .blocking_send(Ok(ExportPart::Data(chunk)))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the client went away"))
    }

    fn finish(&mut self) -> Result<Checksum, ArchiveError> {
        self.send().map_err(|source| ArchiveError::Io {
            path: String::new(),
            source,
        })?;
        Ok(Checksum {
            sha256: hex::encode(std::mem::take(&mut self.hash).finalize()),
            bytes: self.bytes,
        })
    }
}

impl Write for Chunker {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(CHUNK_BYTES - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        self.hash.update(&data[..n]);
        self.bytes += n as u64;
        if self.buf.len() == CHUNK_BYTES {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The chunks of an import as one byte stream for the unpacker.
struct Unchunker {
    rx: mpsc::Receiver<Vec<u8>>,
    buf: Vec<u8>,
    at: usize,
}

impl Read for Unchunker {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.at == self.buf.len() {
            match self.rx.blocking_recv() {
                Some(chunk) => {
                    self.buf = chunk;
                    self.at = 0;
                }
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.buf.len() - self.at);
        out[..n].copy_from_slice(&self.buf[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}
