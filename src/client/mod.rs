//! The client library: connect (with a name), estimate the server clock,
//! receive Updates with coalesced acknowledgements, and send messages with
//! correct timestamps and acknowledgements, retrying the retryable statuses.
//!
//! - [`clock`]: the server-clock offset estimate.
//! - [`session`]: a connected client ([`ChatClient`]) and its update stream.
//! - [`failover`]: a client of several chat nodes ([`FailoverClient`]) that
//!   moves to the next node when its node is lost.

pub mod clock;
pub mod failover;
pub mod session;

pub use failover::{FailoverClient, FailoverPolicy, FailoverSubscription, server_list};
pub use session::{
    ChatClient, ClientError, ConnectOptions, Received, RetryPolicy, SendOutcome, Subscription,
    UPDATE_QUEUE, endpoint,
};
