//! The user volumes of this node: made (labelled with their owner) before a container that
//! mounts them, and listed with owner, size and last use so the hub can place a user where
//! their files are. A volume's owner is in its Docker labels and its last use in the records,
//! so the inventory survives a restart of berthd.

pub mod transfer;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::docker::{
    ContainerEngine, LABEL_MANAGED, LABEL_NODE, LABEL_SERVER, LABEL_USER, LABEL_VOLUME_SCOPE,
    NewVolume,
};
use crate::hostpath::HostPathError;
use crate::key::ServerKey;
use crate::runtime::Runtime;
use crate::runtime::error::{Error, blocking};
use crate::spec::StartSpec;

/// One user volume on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserVolume {
    /// Docker's name.
    pub name: String,
    /// The server it belongs to (server "" for a volume of the user).
    pub owner: ServerKey,
    /// Driver.
    pub driver: String,
    /// Bytes on disk, when asked and known.
    pub size: Option<u64>,
    /// When a server of the owner last started with it.
    pub last_used: Option<SystemTime>,
}

impl<E: ContainerEngine> Runtime<E> {
    /// Makes the templated named volumes of `spec` that do not exist yet, labelled with their
    /// owner; refuses a named volume that is a bind mount of a host path (which would bypass
    /// the host-path checks).
    pub(in crate::runtime) async fn prepare_volumes(&self, spec: &StartSpec) -> Result<(), Error> {
        let engine = &self.inner.engine;
        for v in spec.volumes.iter().filter(|v| !v.host_path) {
            let asked = crate::docker::VolumeInfo {
                driver: if v.driver.is_empty() {
                    "local"
                } else {
                    &v.driver
                }
                .to_owned(),
                options: v.driver_opts.clone().into_iter().collect(),
                ..Default::default()
            };
            if let Some(device) = asked.bind_source() {
                return Err(HostPathError::BindVolume {
                    name: v.name.clone(),
                    device: device.to_owned(),
                }
                .into());
            }
            if self.is_unfinished_import(&v.name) {
                return Err(Error::VolumeImporting {
                    name: v.name.clone(),
                });
            }
            if let Some(info) = engine.volume(&v.name).await? {
                if let Some(device) = info.bind_source() {
                    return Err(HostPathError::BindVolume {
                        name: v.name.clone(),
                        device: device.to_owned(),
                    }
                    .into());
                }
                continue;
            }
            if !(v.per_user || v.per_server) {
                // A shared volume: Docker makes it on create, as it always did.
                continue;
            }
            let labels = owner_labels(&self.inner.cfg.node_id, &spec.key, v.per_server);
            engine
                .create_volume(&NewVolume {
                    name: v.name.clone(),
                    driver: v.driver.clone(),
                    options: v.driver_opts.clone().into_iter().collect(),
                    labels,
                })
                .await?;
            tracing::info!(user = spec.key.user(), server = spec.key.server(), volume = %v.name, driver = %v.driver, "volume created");
        }
        Ok(())
    }

    /// The user volumes this node holds, of one user or all; with sizes when asked.
    pub async fn list_volumes(
        &self,
        user: Option<&str>,
        sizes: bool,
    ) -> Result<Vec<UserVolume>, Error> {
        let node = self.inner.cfg.node_id.clone();
        let mut labels = vec![(LABEL_MANAGED, "true"), (LABEL_NODE, node.as_str())];
        if let Some(u) = user {
            labels.push((LABEL_USER, u));
        }
        let listed = self.inner.engine.list_volumes(&labels).await?;
        let last_used = self.volume_last_use();
        let mut out = Vec::new();
        for v in listed {
            let (Some(u), scope) = (v.labels.get(LABEL_USER), v.labels.get(LABEL_VOLUME_SCOPE))
            else {
                continue;
            };
            let server = match scope.map(String::as_str) {
                Some("server") => v.labels.get(LABEL_SERVER).cloned().unwrap_or_default(),
                _ => String::new(),
            };
            let Ok(owner) = ServerKey::new(u, &server) else {
                continue;
            };
            if self.is_unfinished_import(&v.name) {
                continue;
            }
            let size = if sizes && v.driver == "local" && !v.mountpoint.is_empty() {
                let at = v.mountpoint.clone();
                blocking("volume size", move || dir_size(Path::new(&at))).await?
            } else {
                None
            };
            out.push(UserVolume {
                last_used: last_used.get(&v.name).copied(),
                name: v.name,
                owner,
                driver: v.driver,
                size,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// For each volume a record names, the newest start of a server that mounted it.
    fn volume_last_use(&self) -> HashMap<String, SystemTime> {
        let mut out: HashMap<String, SystemTime> = HashMap::new();
        for (_, e) in self.inner.view.entries(None) {
            if e.record.started_ms == 0 {
                continue;
            }
            let at = SystemTime::UNIX_EPOCH + Duration::from_millis(e.record.started_ms);
            for v in e.record.volumes {
                let slot = out.entry(v).or_insert(at);
                *slot = (*slot).max(at);
            }
        }
        out
    }
}

/// The labels of a user volume of `owner` made by node `node`: the owner's user, and the server
/// too when the volume is per server (`{server}`), which is its scope.
pub(in crate::runtime) fn owner_labels(
    node: &str,
    owner: &ServerKey,
    per_server: bool,
) -> HashMap<String, String> {
    let mut labels = HashMap::from([
        (LABEL_MANAGED.to_owned(), "true".to_owned()),
        (LABEL_NODE.to_owned(), node.to_owned()),
        (LABEL_USER.to_owned(), owner.user().to_owned()),
    ]);
    let scope = if per_server {
        labels.insert(LABEL_SERVER.to_owned(), owner.server().to_owned());
        "server"
    } else {
        "user"
    };
    labels.insert(LABEL_VOLUME_SCOPE.to_owned(), scope.to_owned());
    labels
}

/// Bytes of regular files under `dir`, without following links or leaving its filesystem;
/// `None` when it cannot be read.
fn dir_size(dir: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let root_dev = std::fs::symlink_metadata(dir).ok()?.dev();
    let mut total = 0u64;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(m) = entry.metadata() else { continue };
            if m.is_dir() && m.dev() == root_dev {
                stack.push(entry.path());
            } else if m.is_file() {
                total = total.saturating_add(m.len());
            }
        }
    }
    Some(total)
}
