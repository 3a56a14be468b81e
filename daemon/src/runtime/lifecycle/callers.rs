//! Who still waits for each spawn: a Start whose every caller has gone (the hub's deadline
//! passed, its connection dropped) is cancelled once [`Callers::grace`] passes without a retry
//! of the same spawn id, so nobody gets a server that nobody asked for any more.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::key::ServerKey;

/// How long a spawn whose callers have all gone waits for a retry before it is cancelled.
pub const DEFAULT_ABANDON_GRACE: Duration = Duration::from_secs(10);

type SpawnRef = (ServerKey, String);

struct Spawn {
    /// Callers waiting for the spawn's answer now.
    waiting: usize,
    /// Bumped whenever a caller arrives, so a timer started before it knows it is stale.
    epoch: u64,
    /// Cancelled when the spawn is abandoned.
    abandoned: CancellationToken,
}

/// The table of spawns with callers, by key and spawn id.
pub struct Callers {
    spawns: Mutex<HashMap<SpawnRef, Spawn>>,
    grace: Duration,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Callers {
    /// A table whose spawns are cancelled `grace` after their last caller left.
    pub fn new(grace: Duration) -> Arc<Self> {
        Arc::new(Self {
            spawns: Mutex::new(HashMap::new()),
            grace,
        })
    }

    /// The wait for a retry after the last caller left.
    pub fn grace(&self) -> Duration {
        self.grace
    }

    /// A caller of the spawn `spawn_id` of `key` arrives; the token is cancelled when the spawn
    /// is abandoned. Hold the guard while waiting for the answer; [`CallerGuard::answered`]
    /// once it came.
    pub fn arrive(self: &Arc<Self>, key: &ServerKey, spawn_id: &str) -> CallerGuard {
        let id = (key.clone(), spawn_id.to_owned());
        let mut spawns = lock(&self.spawns);
        let s = spawns.entry(id.clone()).or_insert_with(|| Spawn {
            waiting: 0,
            epoch: 0,
            abandoned: CancellationToken::new(),
        });
        s.waiting += 1;
        s.epoch += 1;
        CallerGuard {
            table: self.clone(),
            id,
            abandoned: s.abandoned.clone(),
            answered: false,
        }
    }

    fn leave(self: &Arc<Self>, id: &SpawnRef, answered: bool) {
        let mut spawns = lock(&self.spawns);
        let Some(s) = spawns.get_mut(id) else {
            return;
        };
        s.waiting = s.waiting.saturating_sub(1);
        if s.waiting > 0 {
            return;
        }
        if answered {
            // The spawn came to an end for this caller: nothing is left to cancel.
            spawns.remove(id);
            return;
        }
        let epoch = s.epoch;
        let table = self.clone();
        let id = id.clone();
        let grace = self.grace;
        drop(spawns);
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            let mut spawns = lock(&table.spawns);
            if let Some(s) = spawns.get(&id)
                && s.waiting == 0
                && s.epoch == epoch
            {
                tracing::warn!(user = id.0.user(), server = id.0.server(), spawn_id = %id.1, grace = ?grace, "the hub gave up on this start and no retry came: cancelling it");
                s.abandoned.cancel();
                spawns.remove(&id);
            }
        });
    }

    /// Whether the table knows the spawn (callers wait, or left less than the grace ago).
    pub fn tracks(&self, key: &ServerKey, spawn_id: &str) -> bool {
        lock(&self.spawns).contains_key(&(key.clone(), spawn_id.to_owned()))
    }

    /// Whether any caller waits for the spawn (for tests and invariants).
    pub fn waiting(&self, key: &ServerKey, spawn_id: &str) -> usize {
        lock(&self.spawns)
            .get(&(key.clone(), spawn_id.to_owned()))
            .map_or(0, |s| s.waiting)
    }
}

/// One caller's wait for a spawn. Dropped before [`CallerGuard::answered`], it counts as the
/// caller giving up.
pub struct CallerGuard {
    table: Arc<Callers>,
    id: SpawnRef,
    abandoned: CancellationToken,
    answered: bool,
}

impl CallerGuard {
    /// Cancelled when every caller of the spawn has gone and no retry came in time.
    pub fn abandoned(&self) -> CancellationToken {
        self.abandoned.clone()
    }

    /// The caller got its answer.
    pub fn answered(mut self) {
        self.answered = true;
    }
}

impl Drop for CallerGuard {
    fn drop(&mut self) {
        self.table.leave(&self.id, self.answered);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ServerKey {
        ServerKey::new("u", "").expect("valid")
    }

    #[tokio::test(start_paused = true)]
    async fn abandoned_after_the_grace_without_a_retry() {
        let t = Callers::new(Duration::from_secs(10));
        let g = t.arrive(&key(), "s1");
        let token = g.abandoned();
        drop(g);
        tokio::time::sleep(Duration::from_secs(9)).await;
        assert!(!token.is_cancelled(), "cancelled before the grace passed");
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(token.is_cancelled(), "not cancelled after the grace");
        assert_eq!(t.waiting(&key(), "s1"), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_within_the_grace_keeps_the_spawn() {
        let t = Callers::new(Duration::from_secs(10));
        let g = t.arrive(&key(), "s1");
        let token = g.abandoned();
        drop(g);
        tokio::time::sleep(Duration::from_secs(5)).await;
        let retry = t.arrive(&key(), "s1");
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(!token.is_cancelled(), "a joined spawn was cancelled");
        retry.answered();
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(!token.is_cancelled(), "an answered spawn was cancelled");
        assert_eq!(t.waiting(&key(), "s1"), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn one_caller_leaving_is_not_abandonment_while_another_waits() {
        let t = Callers::new(Duration::from_secs(1));
        let a = t.arrive(&key(), "s1");
        let b = t.arrive(&key(), "s1");
        let token = a.abandoned();
        drop(a);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!token.is_cancelled());
        drop(b);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(token.is_cancelled());
        // Another spawn id of the key is another spawn.
        let other = t.arrive(&key(), "s2");
        assert!(!other.abandoned().is_cancelled());
    }
}
