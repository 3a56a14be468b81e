//! Warm pools: servers booted before anyone asks, claimed by a Start in about a second.
//!
//! | file | what |
//! |---|---|
//! | `mod.rs` | the `[[warm.pools]]` config, the ready members, the identity a claim sends |
//! | `fit.rs` | whether a Start may claim (only what can be given after create) |
//! | `keeper.rs` | filling the pools in the background, and finding them again after a restart |
//! | `claim.rs` | a Start taking a member: record, claim, name, volumes, resources, identity |
//! | `launcher.py`, `launcher.sh` | what a member runs until its claim |
//!
//! A member is created from its pool's image with no user mount, no per-spawn env and no
//! user-specific option, on the servers' network, its port published, its stdin open. It runs
//! a launcher berth passes on the command line (so any image with the single-user server works
//! unchanged) that imports the server's modules and waits for its identity on stdin, a channel
//! no other container reaches and nothing writes to disk.
//!
//! **Safety.** A member is claimed at most once: it is taken out of the ready list under a lock,
//! and Docker's rename to the server's name is the claim's commit point (one name, one
//! container). Before the rename its claim file (`docker::claimed`) is durable, so a berthd
//! killed at any step finds, after a restart, either an unclaimed member (back in the pool only
//! if it never had a claim file; otherwise removed) or a server of the key it was renamed to,
//! which reconcile treats as any other; a container that says it was claimed without a claim
//! file is removed. A failed claim removes the member. Members count against the node's
//! capacity as servers holding `memory_bytes` (`resources::admission`), and the capacity
//! report gives each pool's ready members.

use std::sync::Mutex;

use serde::{Deserialize, Serialize};

mod claim;
pub mod fit;
mod keeper;

/// Name prefix of warm members; never a server's (those begin `berth-`).
pub const WARM_PREFIX: &str = "berthwarm-";

/// One `[[warm.pools]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// The image, as a Start names it.
    pub image: String,
    /// Members kept ready.
    #[serde(default)]
    pub size: u32,
    /// What a member holds before its claim, counted by the capacity ("512M"; 0 = nothing but
    /// a server's place).
    #[serde(default, deserialize_with = "crate::config::units::bytes")]
    pub memory_bytes: u64,
    /// What members run until claimed.
    #[serde(default)]
    pub launcher: Launcher,
    /// The port the server listens on.
    #[serde(default = "default_port")]
    pub port: u16,
}

fn default_port() -> u16 {
    8888
}

/// Most members one pool may keep.
pub const MAX_POOL_SIZE: u32 = 256;

/// What a member runs until it is claimed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Launcher {
    /// `python3 -c launcher.py`: imports the single-user server's modules ahead of the claim.
    #[default]
    Python,
    /// `sh -c launcher.sh`: only waits (images without Python).
    Shell,
}

impl Launcher {
    /// The entrypoint of a member.
    pub fn argv(self) -> Vec<String> {
        match self {
            Self::Python => vec![
                "python3".to_owned(),
                "-c".to_owned(),
                include_str!("launcher.py").to_owned(),
            ],
            Self::Shell => vec![
                "/bin/sh".to_owned(),
                "-c".to_owned(),
                include_str!("launcher.sh").to_owned(),
                "berth-launcher".to_owned(),
            ],
        }
    }
}

/// The line a launcher prints once it waits for its identity.
pub const READY_LINE: &str = "berth-launcher: ready";

/// Checks the `[[warm.pools]]` entries; the error names the key.
pub fn validate(pools: &[PoolConfig]) -> Result<(), (String, String)> {
    for (i, p) in pools.iter().enumerate() {
        let key = |k: &str| format!("warm.pools[{i}].{k}");
        if p.image.trim().is_empty() {
            return Err((key("image"), "must name an image".to_owned()));
        }
        if p.size > MAX_POOL_SIZE {
            return Err((key("size"), format!("must be at most {MAX_POOL_SIZE}")));
        }
        if p.port == 0 {
            return Err((key("port"), "must be a port (1-65535)".to_owned()));
        }
        if pools[..i]
            .iter()
            .any(|q| q.image == p.image && q.port == p.port)
        {
            return Err((
                key("image"),
                format!("{:?} with port {} has a pool already", p.image, p.port),
            ));
        }
    }
    Ok(())
}

/// A member ready to be claimed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its container.
    pub id: String,
    /// Its pool (index into the config).
    pub pool: usize,
    /// The id of its image.
    pub image_id: String,
    /// The port its server will listen on.
    pub port: u16,
}

/// The ready members, and how many each pool is making.
#[derive(Debug, Default)]
pub struct Pool {
    ready: Mutex<Vec<Member>>,
    making: Mutex<Vec<u32>>,
    /// Woken when a member is taken or fails, so the keeper refills at once.
    pub(in crate::runtime) wake: tokio::sync::Notify,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Pool {
    /// Takes a ready member of pool `pool`: it is the caller's alone.
    pub fn take(&self, pool: usize) -> Option<Member> {
        let mut ready = lock(&self.ready);
        let i = ready.iter().position(|m| m.pool == pool)?;
        Some(ready.remove(i))
    }

    /// Adds a member that waits for its claim.
    pub fn add(&self, m: Member) {
        lock(&self.ready).push(m);
    }

    /// Removes member `id` from the ready list; whether it was there.
    pub fn remove(&self, id: &str) -> bool {
        let mut ready = lock(&self.ready);
        let before = ready.len();
        ready.retain(|m| m.id != id);
        ready.len() != before
    }

    /// Ready members of pool `pool`.
    pub fn ready_in(&self, pool: usize) -> Vec<Member> {
        lock(&self.ready)
            .iter()
            .filter(|m| m.pool == pool)
            .cloned()
            .collect()
    }

    /// Members pool `pool` is making now.
    pub fn making_in(&self, pool: usize) -> u32 {
        lock(&self.making).get(pool).copied().unwrap_or(0)
    }

    fn making(&self, pool: usize, delta: i32) {
        let mut making = lock(&self.making);
        if making.len() <= pool {
            making.resize(pool + 1, 0);
        }
        making[pool] = making[pool].saturating_add_signed(delta);
    }
}

/// What a claim sends a launcher: the environment and the command line, base64 per value,
/// then `go`. Secret: never logged, never written to disk.
pub fn identity<'a>(env: impl Iterator<Item = (&'a str, &'a str)>, argv: &[String]) -> Vec<u8> {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut out = Vec::new();
    for (k, v) in env {
        out.extend_from_slice(format!("e {k} {}\n", b64.encode(v)).as_bytes());
    }
    for a in argv {
        out.extend_from_slice(format!("a {}\n", b64.encode(a)).as_bytes());
    }
    out.extend_from_slice(b"go\n");
    out
}

/// Where a test may have berthd killed (SIGKILL) in the middle of a claim: the step named by
/// `BERTHD_TEST_CRASH_AT`. Debug builds only; a release build has no such variable.
fn crash_point(step: &str) {
    #[cfg(debug_assertions)]
    if std::env::var_os("BERTHD_TEST_CRASH_AT").is_some_and(|v| v == step) {
        tracing::error!(
            step,
            "killed here, as BERTHD_TEST_CRASH_AT asks (debug build)"
        );
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
    }
    #[cfg(not(debug_assertions))]
    let _ = step;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_is_taken_once() {
        let pool = Pool::default();
        let m = Member {
            id: "a".into(),
            pool: 0,
            image_id: "sha256:1".into(),
            port: 8888,
        };
        pool.add(m.clone());
        assert_eq!(pool.take(1), None, "another pool");
        assert_eq!(pool.take(0), Some(m));
        assert_eq!(pool.take(0), None, "taken already");
    }

    #[test]
    fn the_identity_survives_any_value() {
        let env = [("K", "a b\nc=d"), ("E", "")];
        let msg = identity(env.into_iter(), &["jupyterhub-singleuser".to_owned()]);
        let text = String::from_utf8(msg).expect("ascii");
        assert!(text.ends_with("go\n"));
        assert_eq!(text.lines().count(), 4, "one line per value: {text}");
        assert!(!text.contains("a b"), "values are encoded");
    }

    #[test]
    fn pools_are_checked() {
        let p = |image: &str, size, port| PoolConfig {
            image: image.into(),
            size,
            memory_bytes: 0,
            launcher: Launcher::Python,
            port,
        };
        assert!(validate(&[p("i", 2, 8888)]).is_ok());
        assert_eq!(
            validate(&[p(" ", 2, 8888)]).expect_err("refused").0,
            "warm.pools[0].image"
        );
        assert_eq!(
            validate(&[p("i", 999, 8888)]).expect_err("refused").0,
            "warm.pools[0].size"
        );
        assert_eq!(
            validate(&[p("i", 1, 0)]).expect_err("refused").0,
            "warm.pools[0].port"
        );
        assert!(validate(&[p("i", 1, 8888), p("i", 1, 8888)]).is_err());
    }
}
