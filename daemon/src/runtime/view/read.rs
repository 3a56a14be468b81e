//! Poll, List and Watch: answered from the view, no Docker call; and the one place a status
//! change is published.

use crate::docker::ContainerEngine;
use crate::key::ServerKey;
use crate::runtime::Runtime;
use crate::runtime::view::status::{self, State, Status};
use crate::runtime::view::{Entry, WatchKind};

impl<E: ContainerEngine> Runtime<E> {
    fn status_of(&self, key: &ServerKey, entry: Option<&Entry>) -> Status {
        let inner = &self.inner;
        status::derive(
            key,
            entry,
            inner.keys.current(key),
            inner.view.last_activity(key),
            &inner.cfg.advertise_host,
        )
    }

    /// The status of `key`, from memory.
    pub fn poll(&self, key: &ServerKey) -> Status {
        self.status_of(key, self.inner.view.get(key).as_ref())
    }

    /// Whether a lifecycle operation (Start, Stop, a clean-up) holds `key` or waits for it.
    pub fn busy(&self, key: &ServerKey) -> bool {
        self.inner.keys.in_use(key)
    }

    /// Every server with a container (or a vanished one), optionally of one user, from memory.
    pub fn list(&self, user: Option<&str>) -> Vec<Status> {
        let mut out: Vec<Status> = self
            .inner
            .view
            .entries(user)
            .iter()
            .map(|(k, e)| self.status_of(k, Some(e)))
            .filter(|s| s.state != State::Absent)
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out
    }

    /// Sends `key`'s current status to Watch subscribers.
    pub(in crate::runtime) fn publish(&self, key: &ServerKey, kind: WatchKind) {
        self.inner.view.publish(kind, || self.poll(key));
    }
}
