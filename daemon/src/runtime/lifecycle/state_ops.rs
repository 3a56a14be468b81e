//! The hub's per-server state blob (versioned compare-and-swap) and DeleteForever.

use crate::docker::ContainerEngine;
use crate::key::ServerKey;
use crate::runtime::view::WatchKind;
use crate::runtime::view::keys::Op;
use crate::runtime::{Error, Runtime};
use crate::state::MAX_BLOB_BYTES;

/// The hub's blob and its version (0 = none stored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    /// Opaque bytes.
    pub data: Vec<u8>,
    /// Version.
    pub version: u64,
}

/// What DeleteForever removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Deleted {
    /// The container was removed.
    pub container: bool,
    /// The record was removed.
    pub record: bool,
    /// Volumes removed.
    pub volumes: Vec<String>,
}

impl<E: ContainerEngine> Runtime<E> {
    /// The blob of `key`, from memory.
    pub fn get_state(&self, key: &ServerKey) -> Blob {
        self.inner.view.get(key).map_or(
            Blob {
                data: Vec::new(),
                version: 0,
            },
            |e| Blob {
                data: e.record.blob(),
                version: e.record.blob_version,
            },
        )
    }

    /// Replaces the blob if its version is still `expected`; the new version is returned.
    pub async fn put_state(
        &self,
        key: &ServerKey,
        data: Vec<u8>,
        expected: u64,
    ) -> Result<Blob, Error> {
        if data.len() > MAX_BLOB_BYTES {
            return Err(Error::BlobTooLarge {
                size: data.len(),
                max: MAX_BLOB_BYTES,
            });
        }
        let hexed = hex::encode(&data);
        let r = self
            .inner
            .records
            .try_save(key, |r| {
                if r.blob_version != expected {
                    return Err(Error::StateConflict {
                        key: key.clone(),
                        expected,
                        current: r.blob_version,
                    });
                }
                r.blob_hex = hexed;
                r.blob_version += 1;
                Ok(())
            })
            .await?;
        Ok(Blob {
            data,
            version: r.blob_version,
        })
    }

    /// Removes `key`'s container, its owned volumes and its record. Idempotent.
    pub async fn delete_forever(&self, key: &ServerKey) -> Result<Deleted, Error> {
        self.inner.keys.cancel_start(key);
        let guard = self.inner.keys.acquire(key, Op::Stopping).await;
        let engine = &self.inner.engine;
        let mut deleted = Deleted::default();
        if let Some(c) = self.container_of(key).await? {
            engine.remove(&c.id).await?;
            self.inner.view.removed(key, &c.id);
            deleted.container = true;
        }
        let owned = self
            .inner
            .view
            .get(key)
            .map(|e| e.record.owned_volumes)
            .unwrap_or_default();
        for v in owned {
            match engine.remove_volume(&v).await {
                Ok(()) => deleted.volumes.push(v),
                // In use by another of the user's containers, most likely: keep the data.
                Err(e) => tracing::warn!(volume = %v, error = %e, "volume not removed"),
            }
        }
        deleted.record = self.inner.records.delete(key).await?;
        drop(guard);
        self.publish(key, WatchKind::Removed);
        tracing::info!(user = key.user(), server = key.server(), container = deleted.container, volumes = ?deleted.volumes, "server deleted forever");
        Ok(deleted)
    }
}
