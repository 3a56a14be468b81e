//! Claimed warm containers, seen as the servers they became.
//!
//! A warm pool container is created before anyone asks for it, so it carries the pool's labels
//! and none of a server's (Docker never changes a container's labels). When a Start claims it,
//! berthd writes the labels a cold container of that spawn would have had into a claim file
//! (`<state_dir>/claims/<container id>.json`, durable before the container is renamed to the
//! server's name) and [`Claimed`] answers every inspect and event of that container with them.
//! The rest of berthd (reconcile, poll, stop, fencing, the monitor) therefore sees a claimed
//! container exactly as a cold one, and a restarted berthd finds it again from the claim file.
//!
//! A claim file holds labels and volume names only, never a secret.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};

use super::{
    ContainerEngine, ContainerInfo, ContainerSpec, EngineError, EngineEvent, EngineVersion,
    ImageInfo, ImageSummary, Limits, LogChunk, LogsWanted, NetworkInfo, NewFile, NewVolume,
    PullEvent, Usage, VolumeInfo,
};
use crate::state::StoreError;

/// Name of the folder of claim files in the state directory.
pub const CLAIMS_DIR: &str = "claims";

/// What a claimed container answers with.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    /// The labels of the server it became (they replace the pool's in every answer).
    pub labels: HashMap<String, String>,
    /// The named volumes grafted into it, which Docker does not know it uses.
    pub volumes: Vec<String>,
}

/// The durable claims, by container id.
#[derive(Debug)]
pub struct ClaimBook {
    dir: PathBuf,
    claims: Mutex<HashMap<String, Claim>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Whether `id` may name a claim file (a Docker container id: hex).
fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

impl ClaimBook {
    /// The claims kept under `state_dir` (the folder is made if missing). A claim file that
    /// cannot be read is moved aside with a warning: its container is then an unclaimed pool
    /// container under a server's name, which the pool removes.
    pub fn open(state_dir: &Path) -> Result<Self, StoreError> {
        let dir = state_dir.join(CLAIMS_DIR);
        let io = |op: &'static str, path: &Path| {
            let path = path.to_owned();
            move |source| StoreError::Io { op, path, source }
        };
        std::fs::create_dir_all(&dir).map_err(io("create", &dir))?;
        let mut claims = HashMap::new();
        for entry in std::fs::read_dir(&dir).map_err(io("read", &dir))? {
            let path = entry.map_err(io("read", &dir))?.path();
            let Some(id) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".json"))
                .filter(|id| valid_id(id))
            else {
                continue;
            };
            let read = std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<Claim>(&b).ok());
            match read {
                Some(c) => {
                    claims.insert(id.to_owned(), c);
                }
                None => {
                    tracing::warn!(path = %path.display(), "unreadable claim file; moved aside");
                    let _ = std::fs::rename(&path, path.with_extension("corrupt"));
                }
            }
        }
        Ok(Self {
            dir,
            claims: Mutex::new(claims),
        })
    }

    /// [`ClaimBook::open`], or an empty book over the same folder when it cannot be read
    /// (logged; writing a claim then fails, so no claim is made).
    pub fn open_or_empty(state_dir: &Path) -> Self {
        Self::open(state_dir).unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot read the claims of warm containers");
            Self {
                dir: state_dir.join(CLAIMS_DIR),
                claims: Mutex::default(),
            }
        })
    }

    /// Records durably that container `id` is claimed as `claim` says.
    pub fn put(&self, id: &str, claim: Claim) -> Result<(), StoreError> {
        if !valid_id(id) {
            return Err(StoreError::Io {
                op: "claim",
                path: self.dir.clone(),
                source: std::io::Error::other(format!("{id:?} is not a container id")),
            });
        }
        let path = self.dir.join(format!("{id}.json"));
        let tmp = self.dir.join(format!(".{id}.tmp-{}", std::process::id()));
        let bytes = serde_json::to_vec(&claim).expect("a claim serialises");
        crate::state::write_atomic(&tmp, &path, &bytes)?;
        lock(&self.claims).insert(id.to_owned(), claim);
        Ok(())
    }

    /// Forgets the claim of container `id` (it was removed, or its claim undone).
    pub fn forget(&self, id: &str) {
        if lock(&self.claims).remove(id).is_some() {
            let path = self.dir.join(format!("{id}.json"));
            if let Err(e) = std::fs::remove_file(&path)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove a claim file");
            }
        }
    }

    /// The claim of container `id`.
    pub fn get(&self, id: &str) -> Option<Claim> {
        lock(&self.claims).get(id).cloned()
    }

    /// Every claimed container id.
    pub fn ids(&self) -> Vec<String> {
        lock(&self.claims).keys().cloned().collect()
    }

    fn dress(&self, c: &mut ContainerInfo) {
        if let Some(claim) = lock(&self.claims).get(&c.id) {
            c.labels.extend(claim.labels.clone());
        }
    }
}

/// An engine whose claimed containers answer with their claims' labels.
pub struct Claimed<E> {
    engine: E,
    book: Arc<ClaimBook>,
}

impl<E> Claimed<E> {
    /// `engine` seen through `book`.
    pub fn new(engine: E, book: Arc<ClaimBook>) -> Self {
        Self { engine, book }
    }

    /// The claims.
    pub fn book(&self) -> &Arc<ClaimBook> {
        &self.book
    }

    /// The engine underneath, whose answers carry the containers' own labels.
    pub fn bare(&self) -> &E {
        &self.engine
    }
}

impl<E: ContainerEngine> ContainerEngine for Claimed<E> {
    async fn version(&self) -> Result<EngineVersion, EngineError> {
        self.engine.version().await
    }
    async fn ping(&self) -> Result<(), EngineError> {
        self.engine.ping().await
    }
    async fn image(&self, reference: &str) -> Result<Option<ImageInfo>, EngineError> {
        self.engine.image(reference).await
    }
    fn pull(
        &self,
        reference: &str,
        auth: Option<&crate::registry::RegistryAuth>,
    ) -> BoxStream<'static, Result<PullEvent, EngineError>> {
        self.engine.pull(reference, auth)
    }
    async fn image_summaries(&self) -> Result<Vec<ImageSummary>, EngineError> {
        self.engine.image_summaries().await
    }
    async fn images_in_use(&self) -> Result<Vec<String>, EngineError> {
        self.engine.images_in_use().await
    }
    async fn remove_image(&self, reference: &str) -> Result<(), EngineError> {
        self.engine.remove_image(reference).await
    }
    async fn create(&self, spec: &ContainerSpec) -> Result<String, EngineError> {
        self.engine.create(spec).await
    }
    async fn start(&self, id: &str) -> Result<(), EngineError> {
        self.engine.start(id).await
    }
    async fn rename(&self, id: &str, name: &str) -> Result<(), EngineError> {
        self.engine.rename(id, name).await
    }
    async fn update_limits(&self, id: &str, limits: Limits) -> Result<(), EngineError> {
        self.engine.update_limits(id, limits).await
    }
    async fn send_stdin(&self, id: &str, data: Vec<u8>) -> Result<(), EngineError> {
        self.engine.send_stdin(id, data).await
    }
    async fn network(&self, name: &str) -> Result<Option<NetworkInfo>, EngineError> {
        self.engine.network(name).await
    }
    async fn create_network(
        &self,
        name: &str,
        labels: &HashMap<String, String>,
        icc: bool,
    ) -> Result<(), EngineError> {
        self.engine.create_network(name, labels, icc).await
    }
    async fn exec(&self, id: &str, argv: &[String]) -> Result<(i64, String), EngineError> {
        self.engine.exec(id, argv).await
    }
    async fn put_files(&self, id: &str, files: &[NewFile]) -> Result<(), EngineError> {
        self.engine.put_files(id, files).await
    }
    async fn inspect(&self, name_or_id: &str) -> Result<Option<ContainerInfo>, EngineError> {
        let mut c = self.engine.inspect(name_or_id).await?;
        if let Some(c) = &mut c {
            self.book.dress(c);
        }
        Ok(c)
    }
    async fn list(&self, labels: &[(&str, &str)]) -> Result<Vec<String>, EngineError> {
        self.engine.list(labels).await
    }
    async fn kill(&self, id: &str) -> Result<(), EngineError> {
        self.engine.kill(id).await
    }
    async fn stop(&self, id: &str, grace: Duration) -> Result<(), EngineError> {
        self.engine.stop(id, grace).await
    }
    async fn remove(&self, id: &str) -> Result<(), EngineError> {
        // The claim is kept by the full id, which callers nearly always pass; a name or a short
        // id is looked up first.
        let full = if id.len() == 64 && valid_id(id) {
            id.to_owned()
        } else {
            match self.engine.inspect(id).await? {
                Some(c) => c.id,
                None => id.to_owned(),
            }
        };
        self.engine.remove(id).await?;
        self.book.forget(&full);
        Ok(())
    }
    async fn wait_exit(&self, id: &str) -> Result<i64, EngineError> {
        self.engine.wait_exit(id).await
    }
    async fn root_dir(&self) -> Result<String, EngineError> {
        self.engine.root_dir().await
    }
    async fn usage(&self, id: &str) -> Result<Usage, EngineError> {
        self.engine.usage(id).await
    }
    async fn volume(&self, name: &str) -> Result<Option<VolumeInfo>, EngineError> {
        self.engine.volume(name).await
    }
    async fn create_volume(&self, v: &NewVolume) -> Result<(), EngineError> {
        self.engine.create_volume(v).await
    }
    async fn list_volumes(&self, labels: &[(&str, &str)]) -> Result<Vec<VolumeInfo>, EngineError> {
        self.engine.list_volumes(labels).await
    }
    async fn volume_users(&self, name: &str) -> Result<Vec<String>, EngineError> {
        let mut users = self.engine.volume_users(name).await?;
        let grafted: Vec<String> = lock(&self.book.claims)
            .iter()
            .filter(|(_, c)| c.volumes.iter().any(|v| v == name))
            .map(|(id, _)| id.clone())
            .collect();
        for id in grafted {
            // A claim outlives its container only when it was removed behind berthd's back.
            if !users.contains(&id) && self.engine.inspect(&id).await?.is_some() {
                users.push(id);
            }
        }
        Ok(users)
    }
    async fn remove_volume(&self, name: &str) -> Result<(), EngineError> {
        self.engine.remove_volume(name).await
    }
    fn events(
        &self,
        labels: &[(&str, &str)],
        since: Option<i64>,
    ) -> BoxStream<'static, Result<EngineEvent, EngineError>> {
        let book = self.book.clone();
        self.engine
            .events(labels, since)
            .map(move |ev| {
                ev.map(|mut ev| {
                    if let Some(claim) = book.get(&ev.container_id) {
                        ev.labels.extend(claim.labels);
                    }
                    ev
                })
            })
            .boxed()
    }
    fn logs(
        &self,
        id: &str,
        want: LogsWanted,
    ) -> BoxStream<'static, Result<LogChunk, EngineError>> {
        self.engine.logs(id, want)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_survive_a_reopen_and_forget_removes_the_file() {
        let dir = std::env::temp_dir().join(format!("berth-claims-{}", std::process::id()));
        let book = ClaimBook::open(&dir).expect("opens");
        let claim = Claim {
            labels: HashMap::from([("berth.user".to_owned(), "alice".to_owned())]),
            volumes: vec!["home-alice".to_owned()],
        };
        book.put("abc123", claim.clone()).expect("writes");
        assert!(book.put("../x", claim.clone()).is_err(), "not an id");
        let again = ClaimBook::open(&dir).expect("reopens");
        assert_eq!(again.get("abc123"), Some(claim));
        again.forget("abc123");
        assert!(ClaimBook::open(&dir).expect("reopens").ids().is_empty());
        std::fs::remove_dir_all(&dir).ok();
    }
}
