//! The thread permissions of clients whose token restricts them (a
//! `threads` claim, see [`crate::access`]). Clients without such a token
//! have no entry: they may read and write every thread, and their Updates
//! are the shared bytes every reader at the same cursor gets.
//!
//! Writes are checked before a message reaches admission; reads are
//! enforced when an Update is encoded (history on join and every flush), so
//! the engine still counts a filtered-out message as delivered to the
//! client: the client acknowledges the Update it got, and a writer is not
//! held back by a reader who will never see the thread.

use crate::access::ThreadAccess;
use crate::consistency::{Batch, ClientId};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};

/// Permissions by client.
///
/// **Lock rule.** No lock is taken while holding `map`, except by a flush,
/// which reads it while pushing to outboxes (order: hub `delivery` → `map`
/// → an outbox's lock); pruning takes it inside the hub's `inner`. It is a
/// read-write lock because every message checks it and every flush reads
/// it; only `Connect` and a client's end write it.
pub(crate) struct Grants {
    map: RwLock<HashMap<ClientId, Arc<ThreadAccess>>>,
    /// Size at which the map is next pruned of clients the engine forgot
    /// (twice what remained after the last pruning, so that pruning costs
    /// O(1) per `Connect` on average).
    prune_at: AtomicUsize,
}

impl Default for Grants {
    fn default() -> Self {
        Grants {
            map: RwLock::default(),
            prune_at: AtomicUsize::new(PRUNE_FLOOR),
        }
    }
}

/// Entries below which the map is never pruned.
const PRUNE_FLOOR: usize = 64;

impl Grants {
    pub(crate) fn read(&self) -> RwLockReadGuard<'_, HashMap<ClientId, Arc<ThreadAccess>>> {
        // Poisoning is ignored: a map insert or remove cannot leave it
        // half-updated.
        self.map.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Records `id`'s permissions; returns true when the map is due for
    /// pruning ([`Grants::retain`]).
    pub(crate) fn insert(&self, id: ClientId, access: Arc<ThreadAccess>) -> bool {
        let mut m = self.map.write().unwrap_or_else(|e| e.into_inner());
        m.insert(id, access);
        m.len() > self.prune_at.load(Ordering::Relaxed)
    }

    /// Keeps the entries of the clients `known` still knows.
    pub(crate) fn retain(&self, known: impl Fn(ClientId) -> bool) {
        let mut m = self.map.write().unwrap_or_else(|e| e.into_inner());
        m.retain(|id, _| known(*id));
        self.prune_at
            .store((2 * m.len()).max(PRUNE_FLOOR), Ordering::Relaxed);
    }

    pub(crate) fn get(&self, id: ClientId) -> Option<Arc<ThreadAccess>> {
        self.read().get(&id).cloned()
    }

    pub(crate) fn remove(&self, id: ClientId) {
        if self.read().contains_key(&id) {
            let mut m = self.map.write().unwrap_or_else(|e| e.into_inner());
            m.remove(&id);
        }
    }
}

/// `batch` with only the messages `access` may read; `None` if it may
/// read them all (send the shared batch).
pub(crate) fn readable(batch: &Batch, access: &ThreadAccess) -> Option<Batch> {
    if access.reads_all() || batch.entries.iter().all(|e| access.may_read(&e.thread)) {
        return None;
    }
    let entries: Vec<_> = batch
        .entries
        .iter()
        .filter(|e| access.may_read(&e.thread))
        .cloned()
        .collect();
    let mut out = batch.clone();
    out.entries = entries.into();
    Some(out)
}

/// A thread id as a refusal quotes it: at most 64 characters.
pub(crate) fn quoted(thread: &str) -> String {
    let mut s: String = thread.chars().take(64).collect();
    if s.len() < thread.len() {
        s.push('…');
    }
    format!("{s:?}")
}
