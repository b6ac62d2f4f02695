//! Runtime bound changes shared by every node of a cluster through a
//! JetStream key-value bucket, `<stream>_bounds`.
//!
//! An operator's change on any node's admin port is applied there (the
//! hub's one bounds path) and put into the bucket: one key per target
//! (`default`, `thread.t<hex of the thread id>`), holding the operator's
//! bounds for it after the change. Every node watches the bucket and applies
//! each new value through the same path, with `who` naming the caller and
//! the node. A node that starts later gets the latest value of every key
//! first, so runtime changes outlive the node that made them.
//!
//! Values are states, not deltas, so applying one twice changes nothing;
//! every node applies the keys' values in the bucket's order, so when two
//! operators change one target at once every node ends with the later one.

use crate::consistency::BoundsOverride;
use crate::consistency::policy::BoundsControl;
use crate::log::nats;
use crate::server::hub::{BoundsChange, BoundsTarget, Hub};
use async_nats::jetstream::{self, kv};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;

/// A bucket value.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Stored {
    /// The node whose admin port was called.
    node: String,
    /// That node process's random id and its count of changes: tells a
    /// node its own latest change apart from everything else.
    instance: u64,
    serial: u64,
    /// Who asked, as that node's audit log says.
    who: String,
    /// The operator's bounds for the target (for the defaults: the fields
    /// operators set, and the order bound); `None`: the thread's own bounds
    /// were removed.
    bounds: Option<BoundsOverride>,
}

/// The bucket holding the bounds of the cluster on stream `stream`.
pub(crate) fn bucket_name(stream: &str) -> String {
    format!("{stream}_bounds")
}

fn key_of(target: &BoundsTarget) -> String {
    match target {
        BoundsTarget::Default => "default".into(),
        BoundsTarget::Thread { thread } => {
            let hex: String = thread.bytes().map(|b| format!("{b:02x}")).collect();
            format!("thread.t{hex}")
        }
    }
}

/// The change a bucket value asks for at `key`; `None` if the key or value
/// is not one of ours.
fn change_of(key: &str, bounds: Option<BoundsOverride>) -> Option<BoundsChange> {
    if key == "default" {
        return bounds.map(BoundsChange::SetDefault);
    }
    let thread = crate::log::nats::thread_of(key.strip_prefix("thread.")?)?;
    Some(match bounds {
        Some(o) => BoundsChange::SetThread(thread, o),
        None => BoundsChange::RemoveThread(thread),
    })
}

/// The operator's bounds for `target` in `control`.
fn bounds_of(target: &BoundsTarget, control: &BoundsControl) -> Option<BoundsOverride> {
    match target {
        BoundsTarget::Default => {
            let d = control.base().default_bounds();
            let pinned = control.pins().default;
            Some(BoundsOverride {
                staleness: pinned.staleness.then_some(d.staleness),
                numerical: pinned.numerical.then_some(d.numerical),
                order: pinned.order.then_some(d.order),
            })
        }
        BoundsTarget::Thread { thread } => control
            .base()
            .overrides()
            .find(|(t, _, _)| t == thread)
            .map(|(_, o, _)| *o),
    }
}

/// This node's side of the sharing.
struct Sharing {
    node: String,
    instance: u64,
    serial: AtomicU64,
    /// Per key, the `(instance, serial)` of the value this node applied
    /// last. Locked inside the hub lock (by the change hook) or alone.
    last: Mutex<HashMap<String, (u64, u64)>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Opens (or creates) the bucket, shares this node's changes into it and
/// applies every other node's; returns the two tasks.
pub(crate) async fn open(
    js: &jetstream::Context,
    stream: &str,
    node: &str,
    replicas: usize,
    hub: &Arc<Hub>,
) -> anyhow::Result<Vec<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>>> {
    let name = bucket_name(stream);
    let store = nats::ensure_bucket(
        js,
        kv::Config {
            bucket: name.clone(),
            history: 1,
            storage: jetstream::stream::StorageType::File,
            num_replicas: replicas,
            ..Default::default()
        },
    )
    .await?;
    let sharing = Arc::new(Sharing {
        node: node.to_owned(),
        instance: rand::random(),
        serial: AtomicU64::new(0),
        last: Mutex::new(HashMap::new()),
    });
    let (tx, rx) = mpsc::unbounded_channel();
    let hook = sharing.clone();
    hub.share_bound_changes(Box::new(move |target, who, control| {
        let serial = hook.serial.fetch_add(1, Ordering::Relaxed) + 1;
        let key = key_of(target);
        lock(&hook.last).insert(key.clone(), (hook.instance, serial));
        let value = Stored {
            node: hook.node.clone(),
            instance: hook.instance,
            serial,
            who: who.to_owned(),
            bounds: bounds_of(target, control),
        };
        let _ = tx.send((key, value));
    }));
    Ok(vec![
        Box::pin(put_loop(store.clone(), rx)),
        Box::pin(watch_loop(store, sharing, hub.clone())),
    ])
}

/// Puts this node's changes into the bucket, in the order they were made.
async fn put_loop(store: kv::Store, mut rx: mpsc::UnboundedReceiver<(String, Stored)>) {
    while let Some((key, value)) = rx.recv().await {
        let json = match serde_json::to_vec(&value) {
            Ok(j) => j,
            Err(e) => {
                tracing::error!(error = %e, "encoding a bound change");
                continue;
            }
        };
        let mut tries = 0;
        while let Err(e) = store.put(&key, json.clone().into()).await {
            tries += 1;
            if tries == 5 {
                tracing::error!(error = %e, key, "sharing a bound change with the other nodes failed: it applies to this node only");
                break;
            }
            tracing::warn!(error = %e, key, "sharing a bound change: trying again");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// Applies every value of the bucket (the latest of each key first, then
/// each new one) that is not this node's own latest change.
async fn watch_loop(store: kv::Store, sharing: Arc<Sharing>, hub: Arc<Hub>) {
    loop {
        match store.watch_with_history(">").await {
            Ok(mut watch) => {
                while let Some(entry) = watch.next().await {
                    match entry {
                        Ok(e) => apply(&sharing, &hub, &e),
                        Err(e) => tracing::warn!(error = %e, "watching the bounds bucket"),
                    }
                }
                tracing::warn!("the bounds bucket watch ended: watching again");
            }
            Err(e) => tracing::warn!(error = %e, "watching the bounds bucket"),
        }
        // Watching again re-reads the latest values; those already applied
        // change nothing.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn apply(sharing: &Sharing, hub: &Hub, entry: &kv::Entry) {
    if entry.operation != kv::Operation::Put {
        return;
    }
    let stored: Stored = match serde_json::from_slice(&entry.value) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(key = entry.key, error = %e, "a bounds bucket value that is not ours: ignored");
            return;
        }
    };
    let id = (stored.instance, stored.serial);
    if lock(&sharing.last).get(&entry.key) == Some(&id) {
        return;
    }
    let Some(change) = change_of(&entry.key, stored.bounds) else {
        tracing::warn!(
            key = entry.key,
            "a bounds bucket key that is not ours: ignored"
        );
        return;
    };
    let who = format!("{} on node {}", stored.who, stored.node);
    match hub.change_bounds_from_peer(change, &who) {
        Ok(_) => {}
        // Removing bounds this node does not have: nothing to do.
        Err(crate::server::hub::ChangeError::NoOverride(_)) => {}
        Err(e) => {
            tracing::warn!(key = entry.key, who, error = %e, "a shared bound change this node refuses")
        }
    }
    lock(&sharing.last).insert(entry.key.clone(), id);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consistency::policy::Pinned;
    use crate::consistency::{Bounds, BoundsTable};

    #[test]
    fn keys_name_their_target_and_values_round_trip() {
        let t = BoundsTarget::Thread {
            thread: "a.b c".into(),
        };
        let o = BoundsOverride {
            order: Some(3),
            ..Default::default()
        };
        assert!(matches!(
            change_of(&key_of(&t), Some(o)),
            Some(BoundsChange::SetThread(th, x)) if th == "a.b c" && x == o
        ));
        assert!(matches!(
            change_of(&key_of(&t), None),
            Some(BoundsChange::RemoveThread(th)) if th == "a.b c"
        ));
        assert!(matches!(
            change_of("default", Some(o)),
            Some(BoundsChange::SetDefault(x)) if x == o
        ));
        assert!(change_of("default", None).is_none());
        assert!(change_of("junk", Some(o)).is_none());
        let v = Stored {
            node: "a".into(),
            instance: 1,
            serial: 2,
            who: "127.0.0.1:1".into(),
            bounds: Some(o),
        };
        let back: Stored = serde_json::from_slice(&serde_json::to_vec(&v).unwrap()).unwrap();
        assert_eq!(back, v);
    }

    #[test]
    fn the_defaults_share_only_the_fields_operators_set() {
        let mut control = BoundsControl::new(BoundsTable::new(Bounds::default()).unwrap());
        let mut table = control.base().clone();
        let numerical = Bounds::default().numerical + 1;
        table
            .set_default(
                BoundsOverride {
                    numerical: Some(numerical),
                    ..Default::default()
                }
                .apply(table.default_bounds()),
            )
            .unwrap();
        let pinned = Pinned {
            numerical: true,
            staleness: false,
            order: false,
        };
        control.set_base(table, None, pinned);
        let shared = bounds_of(&BoundsTarget::Default, &control).unwrap();
        assert_eq!(shared.numerical, Some(numerical));
        assert_eq!(shared.staleness, None);
        // Policies scale the order bound too: an operator's change that did
        // not set it must not pin it on the other nodes.
        assert_eq!(shared.order, None);
    }
}
