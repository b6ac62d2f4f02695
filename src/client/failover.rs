//! A client of a cluster: several chat nodes' URLs, one connection at a
//! time, and on a lost connection a new client on the next node.
//!
//! A chat node's clients are its own (ids, leases, acknowledgements), so a
//! failover is a new `Connect` on another node: a new id, message numbers
//! from 1 again, and the history from the stream as its first Update. What
//! the application sees stays one client:
//!
//! - a send whose answer was lost with the node is sent again through the
//!   next node unchanged (same name, thread, contents and timestamp), which a
//!   cluster on one NATS stream commits at most once (the stream's duplicate
//!   window), so an OK is never for a second copy;
//! - the subscription goes on on the next node, and the messages of the
//!   history it replays that were already delivered are left out (they come
//!   in commit order, and commit times are the stream's, the same on every
//!   node).

use super::session::{
    ChatClient, ClientError, ConnectOptions, Received, RetryPolicy, SendOutcome, Subscription,
};
use crate::proto::message_status::StatusCode;
use crate::proto::{ReceivedMessage, ServerTime};
use std::collections::HashSet;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::{Code, Status};

/// Splits `URL,URL,...` into its URLs (blanks around commas ignored).
pub fn server_list(list: &str) -> Result<Vec<String>, ClientError> {
    let urls: Vec<String> = list
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_owned)
        .collect();
    if urls.is_empty() {
        return Err(ClientError::Address(format!(
            "no server URL in {list:?} (give URL or URL,URL,...)"
        )));
    }
    Ok(urls)
}

/// Whether an error means the node (or the way to it) is gone, so that the
/// next node may answer: a transport failure, or the status tonic gives a
/// call whose connection broke or was refused. A node shutting down answers
/// `UNAVAILABLE` too, and one restarted at the same address (the channel
/// reconnects by itself) no longer knows the client: `NOT_FOUND`.
pub fn is_connection_loss(e: &ClientError) -> bool {
    match e {
        ClientError::Transport(_) => true,
        ClientError::Rpc(s) => status_is_connection_loss(s),
        ClientError::Address(_) | ClientError::Name(_) => false,
    }
}

/// [`is_connection_loss`] for a status.
pub fn status_is_connection_loss(s: &Status) -> bool {
    matches!(
        s.code(),
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::NotFound
    )
}

/// How long a failover keeps trying the nodes before it gives up.
#[derive(Debug, Clone, Copy)]
pub struct FailoverPolicy {
    /// Give up when no node took a `Connect` for this long.
    pub give_up_after: Duration,
    /// Wait after a round in which no node answered (doubling up to 1 s).
    pub first_backoff: Duration,
}

impl Default for FailoverPolicy {
    fn default() -> Self {
        FailoverPolicy {
            give_up_after: Duration::from_secs(30),
            first_backoff: Duration::from_millis(50),
        }
    }
}

/// The node a [`FailoverClient`] uses now.
#[derive(Clone)]
struct Current {
    client: ChatClient,
    /// Index into the URLs.
    node: usize,
    /// Bumped on every failover, so that a send and the subscription that
    /// both saw the same node die fail over once, not twice.
    generation: u64,
}

struct Inner {
    urls: Vec<String>,
    name: Option<String>,
    options: ConnectOptions,
    policy: FailoverPolicy,
    retry: RetryPolicy,
    /// Lock rule: held only to read or replace the value, never across an
    /// `.await`.
    current: Mutex<Current>,
    /// Serialises failovers (held across the reconnect's awaits).
    failing_over: tokio::sync::Mutex<()>,
    failovers: AtomicU64,
}

/// A client of several chat nodes that fails over between them. Cheap to
/// clone; all clones are the same client.
#[derive(Clone)]
pub struct FailoverClient {
    inner: Arc<Inner>,
}

impl FailoverClient {
    /// Connects to the first of `urls` that takes a `Connect`, trying them
    /// in order (for as long as the default [`FailoverPolicy`] allows).
    pub async fn connect(
        urls: &[String],
        name: Option<&str>,
        options: &ConnectOptions,
    ) -> Result<Self, ClientError> {
        Self::connect_with(urls, name, options, FailoverPolicy::default()).await
    }

    /// [`FailoverClient::connect`] with a policy.
    pub async fn connect_with(
        urls: &[String],
        name: Option<&str>,
        options: &ConnectOptions,
        policy: FailoverPolicy,
    ) -> Result<Self, ClientError> {
        if urls.is_empty() {
            return Err(ClientError::Address("no server URL given".into()));
        }
        let (client, node) = connect_any(urls, urls.len() - 1, name, options, &policy).await?;
        Ok(FailoverClient {
            inner: Arc::new(Inner {
                urls: urls.to_vec(),
                name: name.map(str::to_owned),
                options: options.clone(),
                policy,
                retry: RetryPolicy::default(),
                current: Mutex::new(Current {
                    client,
                    node,
                    generation: 0,
                }),
                failing_over: tokio::sync::Mutex::new(()),
                failovers: AtomicU64::new(0),
            }),
        })
    }

    fn current(&self) -> Current {
        self.inner.current.lock().expect("poisoned").clone()
    }

    /// The client on the node in use now.
    pub fn client(&self) -> ChatClient {
        self.current().client
    }

    /// The URL of the node in use now.
    pub fn server(&self) -> String {
        self.inner.urls[self.current().node].clone()
    }

    /// Failovers so far.
    pub fn failovers(&self) -> u64 {
        self.inner.failovers.load(Ordering::SeqCst)
    }

    /// Moves to the next node that takes a `Connect`, unless someone else
    /// already moved on from the node of `generation`.
    async fn fail_over(&self, generation: u64) -> Result<Current, ClientError> {
        let _one_at_a_time = self.inner.failing_over.lock().await;
        let now = self.current();
        if now.generation != generation {
            return Ok(now);
        }
        let inner = &self.inner;
        let (client, node) = connect_any(
            &inner.urls,
            now.node,
            inner.name.as_deref(),
            &inner.options,
            &inner.policy,
        )
        .await?;
        tracing::info!(
            from = %inner.urls[now.node],
            to = %inner.urls[node],
            "lost the chat node; connected to the next one"
        );
        let next = Current {
            client,
            node,
            generation: generation + 1,
        };
        *inner.current.lock().expect("poisoned") = next.clone();
        inner.failovers.fetch_add(1, Ordering::SeqCst);
        Ok(next)
    }

    /// Sends one message, retrying retryable rejections (per
    /// [`RetryPolicy::default`]) on the node, and failing over when the
    /// node is lost; a message whose answer was lost goes to the next node
    /// unchanged, so it is committed at most once.
    pub async fn send(&self, thread: &str, contents: &str) -> Result<SendOutcome, ClientError> {
        // The timestamp of a send whose answer was lost: the resend keeps it.
        let mut unanswered: Option<i64> = None;
        let mut now = self.current();
        // Nodes that take a Connect and then lose every send (flapping) are
        // tried a few rounds, not forever.
        let mut moves_left = 3 * self.inner.urls.len();
        loop {
            match self
                .send_on(&now.client, thread, contents, &mut unanswered)
                .await
            {
                Err(e) if is_connection_loss(&e) && moves_left > 0 => {
                    moves_left -= 1;
                    now = self.fail_over(now.generation).await?;
                }
                other => return other,
            }
        }
    }

    /// Sends on one node, retrying retryable rejections there. Leaves the
    /// timestamp of the attempt in flight in `unanswered` if it fails.
    async fn send_on(
        &self,
        client: &ChatClient,
        thread: &str,
        contents: &str,
        unanswered: &mut Option<i64>,
    ) -> Result<SendOutcome, ClientError> {
        let retry = self.inner.retry;
        let number = client.next_number();
        let mut backoff = retry.initial;
        for (rejections, attempt) in (1..=retry.attempts.max(1)).enumerate() {
            let mut message = client.message(thread, contents, number);
            if let Some(timestamp) = unanswered.take() {
                message.timestamp = Some(ServerTime { timestamp });
            }
            let timestamp = message.timestamp.as_ref().map_or(0, |t| t.timestamp);
            let status = match client.rpc().send_message(message).await {
                Ok(r) => r.into_inner(),
                Err(status) => {
                    *unanswered = Some(timestamp);
                    return Err(status.into());
                }
            };
            let code =
                StatusCode::try_from(status.status_code).unwrap_or(StatusCode::InternalError);
            let retryable = matches!(
                code,
                StatusCode::OrderError | StatusCode::NumericalError | StatusCode::Staleness
            );
            if !retryable || attempt == retry.attempts.max(1) {
                return Ok(SendOutcome {
                    status: code,
                    timestamp: status.timestamp.map_or(0, |t| t.timestamp),
                    attempts: attempt,
                    number,
                    rejections: rejections as u32,
                });
            }
            let _ = client.ack_now().await;
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(retry.max);
        }
        unreachable!("the last attempt returns")
    }

    /// Opens the update stream; it fails over with the client.
    pub async fn subscribe(&self) -> Result<FailoverSubscription, ClientError> {
        let mut now = self.current();
        loop {
            match now.client.subscribe().await {
                Ok(sub) => {
                    return Ok(FailoverSubscription {
                        client: self.clone(),
                        sub,
                        generation: now.generation,
                        seen: Seen::default(),
                    });
                }
                Err(e) if is_connection_loss(&e) => {
                    now = self.fail_over(now.generation).await?;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// Connects to the first node after `after` (cyclically) that takes a
/// `Connect`, going round the list until `policy.give_up_after`.
async fn connect_any(
    urls: &[String],
    after: usize,
    name: Option<&str>,
    options: &ConnectOptions,
    policy: &FailoverPolicy,
) -> Result<(ChatClient, usize), ClientError> {
    let deadline = tokio::time::Instant::now() + policy.give_up_after;
    let mut backoff = policy.first_backoff;
    loop {
        let mut last = None;
        for k in 1..=urls.len() {
            let node = (after + k) % urls.len();
            match ChatClient::connect_with(&urls[node], name, options).await {
                Ok(client) => return Ok((client, node)),
                Err(e) if is_connection_loss(&e) => {
                    tracing::debug!(url = %urls[node], error = %e, "chat node not answering");
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        if tokio::time::Instant::now() + backoff > deadline {
            return Err(last.expect("at least one URL was tried"));
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

/// The update stream of a [`FailoverClient`]. After a failover the next
/// Update is the new node's first (its history), without the messages
/// already delivered; `Received::index` then counts on the new node.
pub struct FailoverSubscription {
    client: FailoverClient,
    sub: Subscription,
    generation: u64,
    seen: Seen,
}

impl FailoverSubscription {
    /// The next Update, failing over when the node is lost; `Some(Err)`
    /// when the stream ended for another reason or no node answered.
    pub async fn next(&mut self) -> Option<Result<Received, Status>> {
        loop {
            match self.sub.next().await {
                Some(Ok(mut r)) => {
                    r.update.message.retain(|m| self.seen.fresh(m));
                    return Some(Ok(r));
                }
                Some(Err(s)) if !status_is_connection_loss(&s) => return Some(Err(s)),
                // Lost, or ended (a node shutting down ends its streams).
                _ => {}
            }
            if let Err(e) = self.move_on().await {
                return Some(Err(match e {
                    ClientError::Rpc(s) => s,
                    e => Status::unavailable(e.to_string()),
                }));
            }
        }
    }

    /// Like [`FailoverSubscription::next`], but gives up after `timeout`.
    pub async fn next_within(&mut self, timeout: Duration) -> Option<Result<Received, Status>> {
        tokio::time::timeout(timeout, self.next())
            .await
            .ok()
            .flatten()
    }

    /// Subscribes on the next node.
    async fn move_on(&mut self) -> Result<(), ClientError> {
        loop {
            let now = self.client.fail_over(self.generation).await?;
            self.generation = now.generation;
            match now.client.subscribe().await {
                Ok(sub) => {
                    self.sub = sub;
                    return Ok(());
                }
                Err(e) if is_connection_loss(&e) => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

/// Remembers which messages were delivered, so that the history a new
/// connection replays is not delivered twice. Messages come in commit order
/// and commit times never go back, so it is enough to remember the latest
/// commit time and the messages that had it.
#[derive(Debug, Default)]
pub struct Seen {
    /// The latest commit time delivered.
    last_time: i64,
    /// Fingerprints of the messages delivered with commit time `last_time`.
    at_last: HashSet<u64>,
}

impl Seen {
    /// True the first time a message is offered, false for a replay.
    pub fn fresh(&mut self, m: &ReceivedMessage) -> bool {
        let t = m.server_time.as_ref().map_or(0, |t| t.timestamp);
        if t < self.last_time {
            return false;
        }
        let mut h = DefaultHasher::new();
        (&m.sender, &m.contents, m.thread.as_ref().map(|t| &t.id)).hash(&mut h);
        let fp = h.finish();
        if t > self.last_time {
            self.last_time = t;
            self.at_last.clear();
        }
        self.at_last.insert(fp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_list_is_split_on_commas() {
        let urls = server_list("http://a:1, http://b:2,,http://c:3").unwrap();
        assert_eq!(urls, ["http://a:1", "http://b:2", "http://c:3"]);
        assert!(server_list(" , ").is_err());
    }

    #[test]
    fn only_a_lost_node_fails_over() {
        assert!(is_connection_loss(&Status::unavailable("gone").into()));
        assert!(is_connection_loss(
            &Status::unknown("transport error").into()
        ));
        assert!(!is_connection_loss(&Status::invalid_argument("bad").into()));
        assert!(is_connection_loss(
            &Status::not_found("unknown client").into()
        ));
        assert!(!is_connection_loss(
            &Status::already_exists("streaming").into()
        ));
        assert!(!is_connection_loss(&ClientError::Name("x".into())));
    }
}
