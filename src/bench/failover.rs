//! A bench client whose chat node is lost moves to the next node of
//! `--server URL,URL,...`, as the client library does.
//!
//! A chat node's clients are its own, so a failover is a new client there:
//! a new connection, a new `Connect` (a new id, message numbers from 1
//! again) and a new update stream, whose first Update is the history. The
//! bench keeps counting it as the same client: the history's messages it
//! had already received are left out (they come in commit order, and
//! commit times are the stream's, the same on every node). A send whose
//! answer was lost with the node goes again through the next node
//! unchanged (same name, thread, contents and timestamp), so the stream's
//! duplicate window commits it at most once.
//!
//! In a recording, each node's client is a client of its own: the old one
//! ends (lost), a `Failover` event says which one continues it, and a
//! resend is a send of the new one.

use super::conn::{self, Connection};
use super::wire::Delivered;
use crate::proto::chat_server_client::ChatServerClient;
use crate::proto::{Acknowledgement, Client, ConnectionStarter, SentMessage};
use anyhow::Context;
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};
use std::time::{Duration, Instant};
use tokio_rustls::TlsConnector;

/// Rounds over the nodes a failover makes before it gives up.
const ROUNDS: u32 = 4;

/// The longest a node may take to accept a connection and answer its
/// `Connect` before the next one is tried.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// The pause after a round in which no node took a `Connect` (doubling).
const FIRST_BACKOFF: Duration = Duration::from_millis(50);

/// Times a send whose answer was lost with its node goes again.
pub(super) const RESENDS: u32 = 3;

/// How long a send whose node was lost waits for its client to reach the
/// next node before it counts as failed.
pub(super) const RESEND_WAIT: Duration = Duration::from_secs(10);

/// One client's life on one node: the connection, and what its messages
/// carry there.
pub(super) struct Incarnation {
    pub conn: Connection,
    /// Index of the node in the URL list.
    pub node: usize,
    /// Its capability id on the node (0 until connected).
    pub id: AtomicI64,
    /// Updates received on this node, the first included.
    pub updates: AtomicI64,
    /// Messages numbered on this node (`numMessagesSent` of the last one).
    pub sent: AtomicI64,
    /// Its client number in the recording.
    pub recorded: u32,
    /// 0 on the first node, one more after each failover.
    pub generation: u64,
}

impl Incarnation {
    /// Client `index` on its first node.
    pub fn first(conn: Connection, node: usize, index: usize) -> Incarnation {
        Incarnation {
            conn,
            node,
            id: AtomicI64::new(0),
            updates: AtomicI64::new(0),
            sent: AtomicI64::new(0),
            recorded: index as u32,
            generation: 0,
        }
    }
}

/// The nodes a client may move to, and the recording's next client number.
pub(super) struct Nodes {
    pub urls: Vec<String>,
    pub tls: Option<TlsConnector>,
    /// The next client number for a recording (after the first nodes'
    /// clients, which are numbered by their index).
    pub next_recorded: AtomicU32,
}

/// Whether a client's error means its node (or the way to it) is lost:
/// a transport error, a connection refused, a stream the node ended, or
/// the statuses the client library fails over on.
pub(super) fn is_loss(e: &anyhow::Error) -> bool {
    match e.downcast_ref::<tonic::Status>() {
        Some(s) => crate::client::failover::status_is_connection_loss(s),
        None => true,
    }
}

/// Connects client `index` on `conn` (`x-chat-name: bench-<index>`, the
/// same on every node); returns its id.
pub(super) async fn connect_rpc(index: usize, conn: Connection) -> anyhow::Result<i64> {
    let mut request = tonic::Request::new(ConnectionStarter {});
    request
        .metadata_mut()
        .insert(crate::proto::NAME_HEADER, format!("bench-{index}").parse()?);
    let info = ChatServerClient::new(conn)
        .connect(request)
        .await?
        .into_inner();
    info.client
        .map(|c| c.id)
        .context("ServerInfo without client")
}

/// Connects client `index` to the first node after `from`'s (cyclically)
/// that takes a connection and a `Connect`, going round the list up to
/// [`ROUNDS`] times with a short backoff between rounds.
pub(super) async fn move_on(
    index: usize,
    nodes: &Nodes,
    from: &Incarnation,
) -> anyhow::Result<Incarnation> {
    let n = nodes.urls.len();
    let mut backoff = FIRST_BACKOFF;
    let mut last = None;
    for round in 0..ROUNDS {
        if round > 0 {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
        for k in 1..=n {
            let node = (from.node + k) % n;
            let url = &nodes.urls[node];
            let attempt = async {
                let conn = conn::connect(url, nodes.tls.clone()).await?;
                let id = connect_rpc(index, conn.clone()).await?;
                anyhow::Ok((conn, id))
            };
            let attempt = tokio::time::timeout(ATTEMPT_TIMEOUT, attempt).await;
            match attempt.unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within 5 s"))) {
                Ok((conn, id)) => {
                    return Ok(Incarnation {
                        conn,
                        node,
                        id: AtomicI64::new(id),
                        updates: AtomicI64::new(0),
                        sent: AtomicI64::new(0),
                        recorded: nodes.next_recorded.fetch_add(1, Ordering::Relaxed),
                        generation: from.generation + 1,
                    });
                }
                Err(e) if is_loss(&e) => last = Some(e.context(format!("connecting to {url}"))),
                Err(e) => return Err(e),
            }
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no server URL")))
        .context("no node took the client after its node was lost")
}

/// `m`, sent again through `next`: the same thread, contents and
/// timestamp (so a cluster commits it at most once), numbered and
/// acknowledged as `next`'s.
pub(super) fn resent(m: &SentMessage, next: &Incarnation) -> SentMessage {
    let number = next.sent.fetch_add(1, Ordering::Relaxed) + 1;
    SentMessage {
        acknowledgement: Some(Acknowledgement {
            client: Some(Client {
                id: next.id.load(Ordering::Relaxed),
            }),
            num_updates_received: next.updates.load(Ordering::Relaxed),
            num_messages_sent: number,
        }),
        ..m.clone()
    }
}

/// Waits until the client of `slot` is streaming on a node after the one
/// of `generation`; `None` if it failed for good or `by` passed first.
pub(super) async fn next_incarnation(
    slot: &super::Slot,
    generation: u64,
    by: Instant,
) -> Option<Arc<Incarnation>> {
    loop {
        let moved = slot.moved.notified();
        tokio::pin!(moved);
        moved.as_mut().enable();
        match slot.state.load(Ordering::Relaxed) {
            super::FAILED => return None,
            super::READY => {
                let now = slot.incarnation()?;
                if now.generation > generation {
                    return Some(now);
                }
            }
            _ => {}
        }
        tokio::time::timeout_at(by.into(), moved).await.ok()?;
    }
}

/// The bench messages a client has received, enough to leave out of a new
/// node's history those it already had: the latest commit time, and the
/// ids delivered with it (messages come in commit order).
#[derive(Debug, Default)]
pub(super) struct Seen {
    last_time: i64,
    at_last: HashSet<u64>,
}

impl Seen {
    /// Notes an Update's messages (only its last commit time matters).
    pub fn note(&mut self, messages: &[Delivered]) {
        let Some(last) = messages.last() else {
            return;
        };
        if last.server_time > self.last_time {
            self.last_time = last.server_time;
            self.at_last.clear();
        }
        let at_last = messages
            .iter()
            .rev()
            .take_while(|m| m.server_time == self.last_time);
        self.at_last.extend(at_last.filter_map(|m| m.id));
    }

    /// True for a message of a history that was not received before.
    pub fn fresh(&self, m: &Delivered) -> bool {
        m.server_time > self.last_time
            || (m.server_time == self.last_time
                && m.id.is_some_and(|id| !self.at_last.contains(&id)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(server_time: i64, id: u64) -> Delivered {
        Delivered {
            server_time,
            id: Some(id),
        }
    }

    #[test]
    fn a_history_is_fresh_only_after_what_was_received() {
        let mut seen = Seen::default();
        seen.note(&[d(1, 10), d(2, 11), d(2, 12)]);
        assert!(!seen.fresh(&d(1, 10)));
        assert!(!seen.fresh(&d(2, 12)));
        assert!(seen.fresh(&d(2, 13)));
        assert!(seen.fresh(&d(3, 14)));
        seen.note(&[]);
        seen.note(&[d(3, 14)]);
        assert!(!seen.fresh(&d(2, 13)));
        assert!(!seen.fresh(&d(3, 14)));
    }

    #[test]
    fn only_a_lost_node_is_a_loss() {
        assert!(is_loss(&tonic::Status::unavailable("gone").into()));
        assert!(is_loss(&anyhow::anyhow!("connection refused")));
        assert!(!is_loss(&tonic::Status::invalid_argument("bad").into()));
        assert!(!is_loss(
            &tonic::Status::internal("malformed Update").into()
        ));
    }
}
