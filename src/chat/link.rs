//! A chat connection that comes back after a server restart: connect,
//! subscribe, and when the stream ends, do both again (the server forgets a
//! client whose stream ended, so a reconnect is a new client).

use crate::client::{ChatClient, ClientError, ConnectOptions, Subscription};
use crate::proto::ReceivedMessage;
use std::collections::HashSet;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::Duration;

/// A connected, subscribed client.
pub struct Link {
    /// The client (send, acknowledge, clock estimate).
    pub client: ChatClient,
    /// Its update stream.
    pub sub: Subscription,
}

/// Connects and subscribes once (over TLS for an `https://` URL; see
/// [`ConnectOptions`]).
pub async fn open(
    url: &str,
    name: Option<&str>,
    options: &ConnectOptions,
) -> Result<Link, ClientError> {
    let client = ChatClient::connect_with(url, name, options).await?;
    let sub = client.subscribe().await?;
    Ok(Link { client, sub })
}

/// First wait between reconnection attempts.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Connects and subscribes, retrying with backoff until it works or fails
/// for a reason retrying cannot fix (see [`is_permanent`]). `note` is told
/// each failure and the wait before the next attempt.
pub async fn open_retrying(
    url: &str,
    name: Option<&str>,
    options: &ConnectOptions,
    mut note: impl FnMut(&ClientError, Duration),
) -> Result<Link, ClientError> {
    let mut wait = FIRST_BACKOFF;
    loop {
        match open(url, name, options).await {
            Ok(link) => return Ok(link),
            Err(e) if is_permanent(&e) => return Err(e),
            Err(e) => {
                note(&e, wait);
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Whether an error means the address or name is wrong (retrying cannot
/// help), rather than the server being away.
pub fn is_permanent(e: &ClientError) -> bool {
    match e {
        ClientError::Address(_) | ClientError::Name(_) => true,
        ClientError::Rpc(_) => e.is_invalid_argument(),
        ClientError::Transport(_) => false,
    }
}

/// Remembers which messages were shown, so that the history a reconnect
/// replays (a durable server sends its recent messages again) is not shown
/// twice. Messages come in commit order, so it is enough to remember the
/// latest commit time and the messages that had it.
#[derive(Debug, Default)]
pub struct Seen {
    /// The latest commit time shown.
    last_time: i64,
    /// Fingerprints of the messages shown with commit time `last_time`.
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
    use crate::proto::{ServerTime, Thread};

    fn msg(t: i64, text: &str) -> ReceivedMessage {
        ReceivedMessage {
            thread: Some(Thread { id: String::new() }),
            contents: text.into(),
            server_time: Some(ServerTime { timestamp: t }),
            sender: "a".into(),
        }
    }

    #[test]
    fn replays_are_recognised_and_new_messages_are_not() {
        let mut s = Seen::default();
        assert!(s.fresh(&msg(10, "x")));
        assert!(s.fresh(&msg(20, "y")));
        assert!(s.fresh(&msg(20, "z")), "same time, other message");
        assert!(!s.fresh(&msg(10, "x")), "older: a replay");
        assert!(!s.fresh(&msg(20, "y")), "same time, same message: a replay");
        assert!(s.fresh(&msg(30, "x")), "same text later is new");
    }
}
