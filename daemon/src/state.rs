//! The durable record of each server: one checksummed file per key, written atomically
//! (temp file, fsync, rename, fsync of the directory), mode 0600, never holding the env.
//!
//! Why files and not an embedded database: a record is tiny, written a few times per spawn and
//! read once at start-up; one file per key keeps a torn write local to one server, is easy to
//! inspect and repair by hand, and needs no compaction. A crash leaves either the old or the new
//! file whole (rename is atomic); a file that does not match its checksum is quarantined and the
//! record is rebuilt from the container's labels.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::key::ServerKey;

/// Version of the record layout.
pub const SCHEMA_VERSION: u32 = 1;
/// First line of every record file, followed by a space and the checksum.
const MAGIC: &str = "berth-record";
/// Largest hub state blob accepted.
pub const MAX_BLOB_BYTES: usize = 64 * 1024;

/// What berthd last knew of a server's container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordStatus {
    /// The record is written; the container may not exist yet.
    Starting,
    /// Answered HTTP.
    Running,
    /// A stop is under way.
    Stopping,
    /// The container exited.
    Exited,
    /// No container (removed, or it vanished).
    Absent,
}

/// The durable record of one server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// [`SCHEMA_VERSION`].
    pub schema: u32,
    /// JupyterHub user.
    pub user: String,
    /// Server name.
    pub server: String,
    /// The spawn that made the current container.
    pub spawn_id: String,
    /// Hash of that spawn's spec, without secrets.
    pub spec_hash: String,
    /// Its container ("" before creation).
    pub container_id: String,
    /// Last known status.
    pub status: RecordStatus,
    /// Exit code, once exited.
    pub exit_code: Option<i64>,
    /// Image of the current spawn.
    pub image: String,
    /// Container port of the current spawn.
    pub port: u16,
    /// Volumes the node created for this key and removes on DeleteForever.
    pub owned_volumes: Vec<String>,
    /// Milliseconds since the epoch.
    pub created_ms: u64,
    /// Milliseconds since the epoch.
    pub updated_ms: u64,
    /// The hub's opaque blob, hex-encoded.
    pub blob_hex: String,
    /// 0 = no blob yet.
    pub blob_version: u64,
    /// The named volumes the current spawn mounts (records written before this field have
    /// none).
    #[serde(default)]
    pub volumes: Vec<String>,
    /// When the current spawn's container was created, milliseconds since the epoch (0 =
    /// never).
    #[serde(default)]
    pub started_ms: u64,
    /// Devices assigned to the current spawn, `class/id`; written before its container is
    /// created, so they stay held across a crash until reconcile settles them.
    #[serde(default)]
    pub devices: Vec<String>,
    /// When the node fences the current spawn ([`crate::spec::Fence::to_record`]): `None` =
    /// the node's `[fencing]` setting, `Some(0)` = never, else seconds without the hub.
    #[serde(default)]
    pub fence_after_seconds: Option<u64>,
    /// The node stopped this server because the hub was out of touch (Poll then says EXITED,
    /// reason Fenced); cleared by the next Start.
    #[serde(default)]
    pub fenced: bool,
}

/// Now in milliseconds since the epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl Record {
    /// A fresh record for `key`.
    pub fn new(key: &ServerKey) -> Self {
        let now = now_ms();
        Self {
            schema: SCHEMA_VERSION,
            user: key.user().to_owned(),
            server: key.server().to_owned(),
            spawn_id: String::new(),
            spec_hash: String::new(),
            container_id: String::new(),
            status: RecordStatus::Absent,
            exit_code: None,
            image: String::new(),
            port: crate::spec::DEFAULT_PORT,
            owned_volumes: Vec::new(),
            created_ms: now,
            updated_ms: now,
            blob_hex: String::new(),
            blob_version: 0,
            volumes: Vec::new(),
            started_ms: 0,
            devices: Vec::new(),
            fence_after_seconds: None,
            fenced: false,
        }
    }

    /// The key this record belongs to.
    pub fn key(&self) -> Option<ServerKey> {
        ServerKey::new(&self.user, &self.server).ok()
    }

    /// The hub blob.
    pub fn blob(&self) -> Vec<u8> {
        hex::decode(&self.blob_hex).unwrap_or_default()
    }
}

/// A state store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Reading or writing a file failed.
    #[error("state store: cannot {op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A record file is damaged: it does not match its checksum or does not parse.
    #[error("state store: record {path} is corrupt ({why})")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

/// The directory of record files.
pub struct FileStore {
    dir: PathBuf,
    tmp_counter: AtomicU64,
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.to_owned();
    move |source| StoreError::Io { op, path, source }
}

/// The file name of a key's record: a hash, since escaped names can exceed 255 bytes.
fn file_name(key: &ServerKey) -> String {
    let mut h = Sha256::new();
    h.update(key.user().as_bytes());
    h.update([0]);
    h.update(key.server().as_bytes());
    format!("{}.rec", hex::encode(&h.finalize()[..20]))
}

/// Encodes a record as its file content: magic, checksum, newline, JSON body.
pub fn encode(record: &Record) -> Vec<u8> {
    let body = serde_json::to_vec(record).unwrap_or_default();
    let sum = hex::encode(Sha256::digest(&body));
    let mut out = format!("{MAGIC} {sum}\n").into_bytes();
    out.extend_from_slice(&body);
    out
}

/// Decodes file content; any mismatch is reported, never trusted.
pub fn decode(bytes: &[u8]) -> Result<Record, String> {
    let nl = bytes
        .iter()
        .position(|&b| b == b'\n')
        .ok_or("no header line")?;
    let header = std::str::from_utf8(&bytes[..nl]).map_err(|_| "header is not UTF-8")?;
    let sum = header
        .strip_prefix(MAGIC)
        .and_then(|s| s.strip_prefix(' '))
        .ok_or("bad header")?;
    let body = &bytes[nl + 1..];
    if hex::encode(Sha256::digest(body)) != sum {
        return Err("checksum mismatch".to_owned());
    }
    let record: Record = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    if record.schema != SCHEMA_VERSION {
        return Err(format!("unknown schema version {}", record.schema));
    }
    if record.key().is_none() {
        return Err("invalid key".to_owned());
    }
    Ok(record)
}

/// Writes `bytes` to `path` through `tmp` (same directory, created new, mode 0600): fsync,
/// rename, fsync of the directory. A crash leaves the old file or the new one, whole.
pub fn write_atomic(tmp: &Path, path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(tmp)
            .map_err(io("create", tmp))?;
        f.write_all(bytes).map_err(io("write", tmp))?;
        f.sync_all().map_err(io("fsync", tmp))?;
        fs::rename(tmp, path).map_err(io("rename into", path))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("fsync", dir))
    })();
    if result.is_err() {
        let _ = fs::remove_file(tmp);
    }
    result
}

impl FileStore {
    /// Opens (creating) `<state_dir>/servers`.
    pub fn open(state_dir: &Path) -> Result<Self, StoreError> {
        let dir = state_dir.join("servers");
        fs::create_dir_all(&dir).map_err(io("create", &dir))?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).map_err(io("chmod", &dir))?;
        Ok(Self {
            dir,
            tmp_counter: AtomicU64::new(0),
        })
    }

    /// The directory holding the records.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of `key`'s record.
    pub fn path(&self, key: &ServerKey) -> PathBuf {
        self.dir.join(file_name(key))
    }

    /// Writes `record` atomically: a crash leaves the old record or the new one, whole.
    pub fn put(&self, record: &Record) -> Result<(), StoreError> {
        let key = record.key().ok_or_else(|| StoreError::Corrupt {
            path: self.dir.clone(),
            why: "record with an invalid key".to_owned(),
        })?;
        let path = self.path(&key);
        let n = self.tmp_counter.fetch_add(1, Ordering::Relaxed);
        let tmp = self.dir.join(format!(
            ".{}.tmp-{}-{n}",
            file_name(&key),
            std::process::id()
        ));
        write_atomic(&tmp, &path, &encode(record))
    }

    /// Deletes `key`'s record; deleting an absent record succeeds.
    pub fn delete(&self, key: &ServerKey) -> Result<bool, StoreError> {
        let path = self.path(key);
        match fs::remove_file(&path) {
            Ok(()) => {
                self.sync_dir()?;
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io("remove", &path)(e)),
        }
    }

    fn sync_dir(&self) -> Result<(), StoreError> {
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io("fsync", &self.dir))
    }

    /// Every readable record, and the problems met: corrupt files are moved aside (renamed
    /// `*.corrupt-<ms>`) so they are reported once and never trusted; stray temp files from an
    /// interrupted write are removed.
    pub fn load_all(&self) -> Result<(Vec<Record>, Vec<StoreError>), StoreError> {
        let mut records = Vec::new();
        let mut problems = Vec::new();
        let entries = fs::read_dir(&self.dir).map_err(io("list", &self.dir))?;
        for entry in entries {
            let entry = entry.map_err(io("list", &self.dir))?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') && name.contains(".tmp-") {
                let _ = fs::remove_file(&path);
                continue;
            }
            if !name.ends_with(".rec") {
                continue;
            }
            let decoded = fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| decode(&b));
            match decoded {
                Ok(r) if r.key().is_some_and(|k| file_name(&k) == name) => records.push(r),
                Ok(_) => problems.push(self.quarantine(&path, "file name does not match its key")),
                Err(why) => problems.push(self.quarantine(&path, &why)),
            }
        }
        Ok((records, problems))
    }

    fn quarantine(&self, path: &Path, why: &str) -> StoreError {
        let aside = path.with_extension(format!("corrupt-{}", now_ms()));
        if let Err(e) = fs::rename(path, &aside) {
            tracing::error!(path = %path.display(), error = %e, "cannot move a corrupt record aside");
        }
        StoreError::Corrupt {
            path: path.to_owned(),
            why: why.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn temp_store() -> (FileStore, PathBuf) {
        let dir = std::env::temp_dir().join(format!(
            "berth-store-{}-{}",
            std::process::id(),
            now_ms() % 1_000_000 + u64::from(rand_u32())
        ));
        (FileStore::open(&dir).expect("open store"), dir)
    }

    fn rand_u32() -> u32 {
        static N: AtomicU64 = AtomicU64::new(0);
        u32::try_from(N.fetch_add(1, Ordering::SeqCst) % 100_000).unwrap_or(0)
    }

    #[test]
    fn put_load_delete_round_trip_with_mode_0600() {
        let (store, dir) = temp_store();
        let key = ServerKey::new("jörg", "lab").expect("valid");
        let mut r = Record::new(&key);
        r.spawn_id = "s1".into();
        r.blob_hex = hex::encode(b"{\"node\":\"a\"}");
        r.blob_version = 3;
        store.put(&r).expect("put");
        let mode = fs::metadata(store.path(&key))
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let (all, problems) = store.load_all().expect("load");
        assert!(problems.is_empty());
        assert_eq!(all, vec![r.clone()]);
        assert_eq!(all[0].blob(), b"{\"node\":\"a\"}");
        assert!(store.delete(&key).expect("delete"));
        assert!(!store.delete(&key).expect("delete again"));
        assert!(store.load_all().expect("load").0.is_empty());
        fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn corrupt_and_torn_records_are_reported_and_moved_aside() {
        let (store, dir) = temp_store();
        let key = ServerKey::new("a", "").expect("valid");
        store.put(&Record::new(&key)).expect("put");
        let path = store.path(&key);
        let mut bytes = fs::read(&path).expect("read");
        let last = bytes.len() - 2;
        bytes[last] ^= 0x01;
        fs::write(&path, &bytes).expect("flip a bit");
        let torn_key = ServerKey::new("b", "").expect("valid");
        store.put(&Record::new(&torn_key)).expect("put");
        let torn = store.path(&torn_key);
        let full = fs::read(&torn).expect("read");
        fs::write(&torn, &full[..full.len() / 2]).expect("tear");
        fs::write(store.dir().join(".x.rec.tmp-1-1"), b"partial").expect("stray tmp");

        let (all, problems) = store.load_all().expect("load");
        assert!(all.is_empty());
        assert_eq!(problems.len(), 2);
        assert!(
            problems
                .iter()
                .all(|p| matches!(p, StoreError::Corrupt { .. }))
        );
        assert!(!path.exists() && !torn.exists());
        let left: Vec<_> = fs::read_dir(store.dir())
            .expect("ls")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(
            left.len(),
            2,
            "two quarantined files, stray temp removed: {left:?}"
        );
        // Reported once: the next load is clean.
        assert!(store.load_all().expect("load").1.is_empty());
        fs::remove_dir_all(dir).ok();
    }

    proptest! {
        #[test]
        fn decode_never_panics_and_rejects_any_single_bit_flip(user in "\\PC{1,20}", flip in 0usize..400) {
            let key = ServerKey::new(&user, "").expect("valid");
            let bytes = encode(&Record::new(&key));
            prop_assert!(decode(&bytes).is_ok());
            let mut damaged = bytes.clone();
            let i = flip % damaged.len();
            damaged[i] ^= 0x20;
            prop_assert!(decode(&damaged).is_err());
            let _ = decode(&damaged[..i]);
        }
    }
}
