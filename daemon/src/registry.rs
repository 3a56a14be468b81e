//! Images from registries: the pull policy, and the node's registry credentials read from a
//! file in Docker's `config.json` format and chosen by the registry host of an image.
//!
//! Credentials are secrets: their `Debug` is redacted, no error quotes them, and they live only
//! in memory for the length of one pull (the file is read again for every pull, so an operator
//! can rotate a password without restarting berthd).

use std::collections::BTreeMap;
use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// Docker Hub's registry as a normalised reference names it.
const DOCKER_HUB: &str = "docker.io";
/// The keys Docker itself uses for Docker Hub in `config.json`.
const DOCKER_HUB_KEYS: [&str; 4] = [
    "https://index.docker.io/v1/",
    "index.docker.io",
    "registry-1.docker.io",
    "docker.io",
];
/// Largest credentials file read; a real one is a few KiB.
const MAX_AUTH_FILE_BYTES: u64 = 1 << 20;

/// When to pull an image from its registry (DockerSpawner's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PullPolicy {
    /// Pull only when the image is not on the node.
    #[default]
    IfNotPresent,
    /// Pull before every start; layers already on the node are not downloaded again.
    Always,
    /// Never pull.
    Never,
}

impl PullPolicy {
    /// The policy named by `s` as DockerSpawner spells it (any case).
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "ifnotpresent" => Some(Self::IfNotPresent),
            "always" => Some(Self::Always),
            "never" => Some(Self::Never),
            _ => None,
        }
    }
}

impl fmt::Display for PullPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::IfNotPresent => "ifnotpresent",
            Self::Always => "always",
            Self::Never => "never",
        })
    }
}

/// A user name and password for one registry. Secret.
#[derive(Clone, PartialEq, Eq)]
pub struct RegistryAuth {
    /// User name.
    pub username: String,
    /// Password or token.
    pub password: String,
}

impl fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryAuth")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// The registry host of a normalised image reference (`docker.io`, `127.0.0.1:5000`).
pub fn registry_host(normalised: &str) -> &str {
    normalised.split('/').next().unwrap_or(DOCKER_HUB)
}

/// The credentials of a Docker `config.json`, by registry host.
#[derive(Default, Clone)]
pub struct AuthFile {
    by_host: BTreeMap<String, RegistryAuth>,
}

impl fmt::Debug for AuthFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthFile")
            .field("hosts", &self.by_host.keys().collect::<Vec<_>>())
            .finish()
    }
}

#[derive(Deserialize)]
struct ConfigJson {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
}

#[derive(Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: String,
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
}

/// The host of a `config.json` key: `https://host:port/v1/` → `host:port`.
fn key_host(key: &str) -> String {
    let rest = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = rest.split('/').next().unwrap_or_default();
    if DOCKER_HUB_KEYS
        .iter()
        .any(|k| k.trim_start_matches("https://").trim_end_matches("/v1/") == host)
    {
        DOCKER_HUB.to_owned()
    } else {
        host.to_ascii_lowercase()
    }
}

impl AuthFile {
    /// Parses the text of a Docker `config.json`; the error never quotes the file.
    pub fn parse(text: &str) -> Result<Self, String> {
        let cfg: ConfigJson = serde_json::from_str(text).map_err(|e| {
            format!(
                "is not a Docker config.json (line {}, column {})",
                e.line(),
                e.column()
            )
        })?;
        let mut by_host = BTreeMap::new();
        for (key, entry) in cfg.auths {
            let auth = if entry.auth.is_empty() {
                RegistryAuth {
                    username: entry.username,
                    password: entry.password,
                }
            } else {
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(entry.auth.trim())
                    .map_err(|_| format!("auths.{key:?}.auth is not base64"))?;
                let text = String::from_utf8(raw)
                    .map_err(|_| format!("auths.{key:?}.auth is not UTF-8"))?;
                let (u, p) = text
                    .split_once(':')
                    .ok_or_else(|| format!("auths.{key:?}.auth is not base64 of user:password"))?;
                RegistryAuth {
                    username: u.to_owned(),
                    password: p.to_owned(),
                }
            };
            if auth.username.is_empty() {
                return Err(format!(
                    "auths.{key:?} has no user name (auth, or username and password)"
                ));
            }
            by_host.insert(key_host(&key), auth);
        }
        Ok(Self { by_host })
    }

    /// Reads and parses `path`, which only its owner may read (like an SSH key).
    pub fn read(path: &Path) -> Result<Self, String> {
        let meta = std::fs::metadata(path).map_err(|e| format!("cannot read: {e}"))?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(format!(
                "is readable or writable by group or others (mode {:o}); it holds registry passwords: chmod 600 it",
                meta.permissions().mode() & 0o777
            ));
        }
        if meta.len() > MAX_AUTH_FILE_BYTES {
            return Err(format!("is larger than {MAX_AUTH_FILE_BYTES} bytes"));
        }
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))?;
        Self::parse(&text)
    }

    /// The credentials for the registry of the normalised reference `image`, if any.
    pub fn for_image(&self, image: &str) -> Option<&RegistryAuth> {
        self.by_host.get(&registry_host(image).to_ascii_lowercase())
    }

    /// The registry hosts the file has credentials for.
    pub fn hosts(&self) -> impl Iterator<Item = &str> {
        self.by_host.keys().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn credentials_are_chosen_by_registry_host() {
        let text = format!(
            r#"{{"auths": {{
                "https://index.docker.io/v1/": {{"auth": "{}"}},
                "127.0.0.1:5000": {{"auth": "{}"}},
                "https://Quay.io": {{"username": "q", "password": "p:w"}}
            }}, "credsStore": "desktop"}}"#,
            b64("hub:secret"),
            b64("ann:pa:ss")
        );
        let f = AuthFile::parse(&text).expect("parses");
        let get = |image: &str| {
            f.for_image(image)
                .map(|a| (a.username.as_str(), a.password.as_str()))
        };
        assert_eq!(
            get("docker.io/library/ubuntu:latest"),
            Some(("hub", "secret"))
        );
        assert_eq!(get("127.0.0.1:5000/x/y:1"), Some(("ann", "pa:ss")));
        assert_eq!(get("quay.io/jupyter/base:1"), Some(("q", "p:w")));
        assert_eq!(get("127.0.0.1:5001/x:1"), None);
        assert_eq!(get("ghcr.io/x:1"), None);
    }

    #[test]
    fn errors_and_debug_never_quote_a_password() {
        let text = format!(
            r#"{{"auths": {{"r.example": {{"auth": "{}"}}}}}}"#,
            b64("nocolon-hunter2")
        );
        let e = AuthFile::parse(&text).expect_err("no user:password");
        assert!(!e.contains("hunter2"), "{e}");
        let e = AuthFile::parse(r#"{"auths": {"r": {"auth": "hunter2!!"}}}"#).expect_err("bad");
        assert!(!e.contains("hunter2"), "{e}");
        let e = AuthFile::parse("{\"auths\": hunter2").expect_err("not json");
        assert!(!e.contains("hunter2"), "{e}");
        let f = AuthFile::parse(&format!(
            r#"{{"auths": {{"r": {{"auth": "{}"}}}}}}"#,
            b64("u:hunter2")
        ))
        .expect("parses");
        let shown = format!("{f:?} {:?}", f.for_image("r/x:1"));
        assert!(!shown.contains("hunter2") && shown.contains('u'), "{shown}");
    }

    #[test]
    fn a_file_others_can_read_is_refused() {
        let dir = std::env::temp_dir().join(format!("berth-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("config.json");
        std::fs::write(&path, r#"{"auths": {}}"#).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        assert!(
            AuthFile::read(&path)
                .expect_err("0644")
                .contains("chmod 600")
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert!(AuthFile::read(&path).is_ok());
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    #[test]
    fn policies_parse_as_dockerspawner_spells_them() {
        assert_eq!(
            PullPolicy::parse("IfNotPresent"),
            Some(PullPolicy::IfNotPresent)
        );
        assert_eq!(PullPolicy::parse("always"), Some(PullPolicy::Always));
        assert_eq!(PullPolicy::parse("NEVER"), Some(PullPolicy::Never));
        assert_eq!(PullPolicy::parse("sometimes"), None);
        assert_eq!(PullPolicy::default().to_string(), "ifnotpresent");
    }
}
