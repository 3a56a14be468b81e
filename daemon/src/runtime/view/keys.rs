//! Per-key serialisation: one lifecycle operation per server at a time, and what is under way.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::OwnedMutexGuard;
use tokio_util::sync::CancellationToken;

use crate::key::ServerKey;

/// A lifecycle operation under way on a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// A Start holds the key.
    Starting,
    /// A Stop holds the key.
    Stopping,
}

#[derive(Default)]
struct Slot {
    lock: Arc<tokio::sync::Mutex<()>>,
    op: Mutex<Option<(Op, CancellationToken)>>,
}

/// The table of keys with an operation waiting or under way. Entries vanish when unused, so
/// memory is bounded by the keys being worked on.
#[derive(Default)]
pub struct KeyTable {
    slots: Mutex<HashMap<ServerKey, Arc<Slot>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned table only means another task panicked mid-update of plain data; keep going.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl KeyTable {
    fn slot(&self, key: &ServerKey) -> Arc<Slot> {
        lock(&self.slots).entry(key.clone()).or_default().clone()
    }

    /// Waits for the key to be free, then holds it for `op` until the guard drops. The guard's
    /// token is cancelled when a Stop asks the holder to give up.
    pub async fn acquire(self: &Arc<Self>, key: &ServerKey, op: Op) -> KeyGuard {
        let slot = self.slot(key);
        let held = slot.lock.clone().lock_owned().await;
        let token = CancellationToken::new();
        *lock(&slot.op) = Some((op, token.clone()));
        KeyGuard {
            table: self.clone(),
            key: key.clone(),
            slot,
            token,
            held: Some(held),
        }
    }

    /// Asks a Start under way on `key` to give up (a Stop is coming).
    pub fn cancel_start(&self, key: &ServerKey) {
        if let Some(slot) = lock(&self.slots).get(key)
            && let Some((Op::Starting, token)) = &*lock(&slot.op)
        {
            token.cancel();
        }
    }

    /// Whether an operation holds `key` or waits for it.
    pub fn in_use(&self, key: &ServerKey) -> bool {
        lock(&self.slots).contains_key(key)
    }

    /// How many Starts hold their key now.
    pub fn starting(&self) -> usize {
        lock(&self.slots)
            .values()
            .filter(|slot| matches!(&*lock(&slot.op), Some((Op::Starting, _))))
            .count()
    }

    /// The operation under way on `key`, if any.
    pub fn current(&self, key: &ServerKey) -> Option<Op> {
        let slots = lock(&self.slots);
        let slot = slots.get(key)?;
        lock(&slot.op).as_ref().map(|(op, _)| *op)
    }
}

/// Holds a key for one operation.
pub struct KeyGuard {
    table: Arc<KeyTable>,
    key: ServerKey,
    slot: Arc<Slot>,
    token: CancellationToken,
    held: Option<OwnedMutexGuard<()>>,
}

impl KeyGuard {
    /// Cancelled when the operation should give up.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }
}

impl Drop for KeyGuard {
    fn drop(&mut self) {
        *lock(&self.slot.op) = None;
        self.held = None;
        let mut slots = lock(&self.table.slots);
        // Two owners left (the table and this guard): nobody waits on the key, drop it.
        if Arc::strong_count(&self.slot) == 2 {
            slots.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn one_holder_per_key_and_the_table_empties() {
        let table = Arc::new(KeyTable::default());
        let key = ServerKey::new("u", "").expect("valid");
        let g = table.acquire(&key, Op::Starting).await;
        assert_eq!(table.current(&key), Some(Op::Starting));
        let t2 = table.clone();
        let k2 = key.clone();
        let waiter = tokio::spawn(async move {
            let g = t2.acquire(&k2, Op::Stopping).await;
            assert_eq!(t2.current(&k2), Some(Op::Stopping));
            drop(g);
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "second holder must wait");
        table.cancel_start(&key);
        assert!(g.token().is_cancelled());
        drop(g);
        waiter.await.expect("waiter ran");
        assert_eq!(table.current(&key), None);
        assert!(lock(&table.slots).is_empty());
    }
}
