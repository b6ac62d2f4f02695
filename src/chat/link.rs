//! A chat connection that comes back after a server restart: connect,
//! subscribe, and when the stream ends, do both again (the server forgets a
//! client whose stream ended, so a reconnect is a new client).

use crate::client::{ChatClient, ClientError, ConnectOptions, Subscription};
use std::time::Duration;

/// A connected, subscribed client.
pub struct Link {
    /// The client (send, acknowledge, clock estimate).
    pub client: ChatClient,
    /// Its update stream.
    pub sub: Subscription,
    /// The server it is connected to (one of the `--server` list).
    pub url: String,
}

/// Connects and subscribes once to the first server of `servers`
/// (`URL,URL,...`) that answers, starting after `after` if it is one of
/// them (over TLS for an `https://` URL; see [`ConnectOptions`]). A lost
/// node refuses connections at once, so trying it costs little; one that
/// does not answer at all costs the 5 s connect timeout.
pub async fn open(
    servers: &str,
    after: Option<&str>,
    name: Option<&str>,
    options: &ConnectOptions,
) -> Result<Link, ClientError> {
    let urls = crate::client::server_list(servers)?;
    let start = after
        .and_then(|a| urls.iter().position(|u| u == a))
        .map_or(0, |i| i + 1);
    let mut last = None;
    for k in 0..urls.len() {
        let url = &urls[(start + k) % urls.len()];
        match open_one(url, name, options).await {
            Ok(link) => return Ok(link),
            Err(e) if is_permanent(&e) => return Err(e),
            Err(e) => last = Some(e),
        }
    }
    Err(last.expect("server_list gives at least one URL"))
}

async fn open_one(
    url: &str,
    name: Option<&str>,
    options: &ConnectOptions,
) -> Result<Link, ClientError> {
    let client = ChatClient::connect_with(url, name, options).await?;
    let sub = client.subscribe().await?;
    Ok(Link {
        client,
        sub,
        url: url.to_owned(),
    })
}

/// First wait between reconnection attempts.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Connects and subscribes, retrying with backoff until it works or fails
/// for a reason retrying cannot fix (see [`is_permanent`]). `note` is told
/// each failure and the wait before the next attempt.
pub async fn open_retrying(
    servers: &str,
    after: Option<&str>,
    name: Option<&str>,
    options: &ConnectOptions,
    mut note: impl FnMut(&ClientError, Duration),
) -> Result<Link, ClientError> {
    let mut wait = FIRST_BACKOFF;
    loop {
        match open(servers, after, name, options).await {
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
/// twice.
pub use crate::client::failover::Seen;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{ReceivedMessage, ServerTime, Thread};

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
