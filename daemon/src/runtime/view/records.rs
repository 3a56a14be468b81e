//! The durable half of the view: each server's record, written to the state store first and
//! to the view after, one read-modify-write at a time (the save lock), so a monitor update and
//! a lifecycle update never overwrite each other's fields and memory never holds a record the
//! disk does not.

use std::sync::Arc;

use crate::key::ServerKey;
use crate::runtime::error::{Error, blocking};
use crate::runtime::view::{Entry, View};
use crate::state::{FileStore, Record, now_ms};

/// The records store, its save lock and the view it keeps in step.
pub struct Records {
    store: Arc<FileStore>,
    view: Arc<View>,
    /// Held across the write of one record (an await), so it is a tokio mutex and is never
    /// taken while a std lock is held.
    save_lock: tokio::sync::Mutex<()>,
}

impl Records {
    /// Records in `store`, mirrored into `view`.
    pub fn new(store: FileStore, view: Arc<View>) -> Self {
        Self {
            store: Arc::new(store),
            view,
            save_lock: tokio::sync::Mutex::new(()),
        }
    }

    /// Loads every readable record into the view; corrupt ones are moved aside and logged.
    /// Returns how many were corrupt.
    pub async fn load(&self) -> Result<usize, Error> {
        let store = self.store.clone();
        let (records, problems) = blocking("state load", move || store.load_all()).await??;
        for p in &problems {
            tracing::error!(error = %p, "corrupt state record moved aside; it will be rebuilt from the container's labels if one exists");
        }
        let mut view = self.view.lock();
        for r in records {
            if let Some(key) = r.key() {
                view.insert(key, Entry::new(r));
            }
        }
        Ok(problems.len())
    }

    /// Changes `key`'s record with `change`, persists it, then puts it in the view. When the
    /// write fails nothing changes in memory either.
    pub async fn save(
        &self,
        key: &ServerKey,
        change: impl FnOnce(&mut Record),
    ) -> Result<Record, Error> {
        self.try_save(key, |r| {
            change(r);
            Ok(())
        })
        .await
    }

    /// Like [`Records::save`], but `change` may refuse (and then nothing is written).
    pub async fn try_save(
        &self,
        key: &ServerKey,
        change: impl FnOnce(&mut Record) -> Result<(), Error>,
    ) -> Result<Record, Error> {
        let _serial = self.save_lock.lock().await;
        let mut record = self
            .view
            .get(key)
            .map_or_else(|| Record::new(key), |e| e.record);
        change(&mut record)?;
        record.updated_ms = now_ms();
        let (store, to_write) = (self.store.clone(), record.clone());
        blocking("state write", move || store.put(&to_write)).await??;
        self.view.put_record(key, record.clone());
        Ok(record)
    }

    /// Deletes `key`'s record and forgets it in the view; returns whether a record existed.
    pub async fn delete(&self, key: &ServerKey) -> Result<bool, Error> {
        let _serial = self.save_lock.lock().await;
        let (store, k) = (self.store.clone(), key.clone());
        let existed = blocking("state delete", move || store.delete(&k)).await??;
        self.view.forget(key);
        Ok(existed)
    }
}
