//! Warm pools: servers booted before anyone asks, claimed by a Start in about a second.
//!
//! | file | what |
//! |---|---|
//! | `mod.rs` | the `[[warm.pools]]` config, the ready members, the identity a claim sends |
//! | `fit.rs` | whether a Start may claim (only what can be given after create) |
//! | `keeper.rs` | filling the pools in the background, and finding them again after a restart |
//! | `claim.rs` | a Start taking a member: record, claim, name, volumes, resources, identity |
//!
//! The `[[warm.pools]]` entries and the launchers members run are `crate::warm`'s.
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

mod claim;
pub mod fit;
mod keeper;

pub use crate::warm::{Launcher, PoolConfig, READY_LINE, WARM_PREFIX};

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

/// The pools (the config's, with the sizes a hub set by `Warm`), their ready members, and how
/// many each is making. A pool is never removed (size 0 = none), so an index names one pool
/// for the whole run.
#[derive(Debug, Default)]
pub struct Pool {
    configs: Mutex<Vec<PoolConfig>>,
    /// Where the sizes a hub set are kept across restarts ("" = not kept: tests).
    file: std::path::PathBuf,
    ready: Mutex<Vec<Member>>,
    making: Mutex<Vec<u32>>,
    /// Woken when a member is taken or a spawn ends, so the keeper refills at once.
    pub(in crate::runtime) wake: tokio::sync::Notify,
    /// Since when the keeper has held refills back for users' spawns under way.
    deferred: Mutex<Option<std::time::Instant>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Name of the file in the state directory holding the pools a hub set with `Warm`.
pub const WARM_FILE: &str = "warm-pools.json";

impl Pool {
    /// The pools of `configured` (`[[warm.pools]]`), with what a hub set by `Warm` in an
    /// earlier run (kept in `<state_dir>/warm-pools.json`) over them.
    pub fn new(configured: &[PoolConfig], state_dir: &std::path::Path) -> Self {
        let file = state_dir.join(WARM_FILE);
        let mut configs = configured.to_vec();
        let kept: Vec<PoolConfig> = std::fs::read(&file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        for k in kept {
            upsert(&mut configs, k);
        }
        Self {
            configs: Mutex::new(configs),
            file,
            ..Self::default()
        }
    }

    /// Every pool, by index.
    pub fn configs(&self) -> Vec<PoolConfig> {
        lock(&self.configs).clone()
    }

    /// Sets pool `p` (same image and port: its size and memory; otherwise a new pool), keeps
    /// what hubs set on disk, and returns its index.
    pub fn set(&self, p: PoolConfig) -> Result<usize, crate::state::StoreError> {
        let mut configs = lock(&self.configs);
        let i = upsert(&mut configs, p.clone());
        if !self.file.as_os_str().is_empty() {
            let mut kept: Vec<PoolConfig> = std::fs::read(&self.file)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_default();
            upsert(&mut kept, p);
            let tmp = self
                .file
                .with_extension(format!("tmp-{}", std::process::id()));
            let bytes = serde_json::to_vec(&kept).expect("pools serialise");
            crate::state::write_atomic(&tmp, &self.file, &bytes)?;
        }
        drop(configs);
        self.wake.notify_one();
        Ok(i)
    }

    /// Whether to hold a refill back now: users' spawns are under way (`starting`), for at
    /// most `limit` in a row, so a steady stream of spawns cannot starve the pool.
    pub fn defer(&self, starting: usize, limit: std::time::Duration) -> bool {
        let mut since = lock(&self.deferred);
        if starting == 0 {
            *since = None;
            return false;
        }
        let first = *since.get_or_insert_with(std::time::Instant::now);
        first.elapsed() < limit
    }

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

/// Puts `p` into `pools` (over the entry of its image and port if there is one); its index.
fn upsert(pools: &mut Vec<PoolConfig>, p: PoolConfig) -> usize {
    let same = |q: &PoolConfig| {
        crate::spec::normalize_image(&q.image) == crate::spec::normalize_image(&p.image)
            && q.port == p.port
    };
    if let Some(i) = pools.iter().position(same) {
        pools[i] = p;
        i
    } else {
        pools.push(p);
        pools.len() - 1
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
    fn refills_wait_for_spawns_but_not_forever() {
        let pool = Pool::default();
        let limit = std::time::Duration::from_millis(50);
        assert!(!pool.defer(0, limit), "nothing under way");
        assert!(pool.defer(2, limit), "spawns under way");
        std::thread::sleep(limit * 2);
        assert!(!pool.defer(1, limit), "held back long enough");
        assert!(!pool.defer(0, limit));
        assert!(pool.defer(1, limit), "a new wait begins");
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
}
