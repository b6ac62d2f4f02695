//! The client library: connect (with a name), estimate the server clock,
//! receive Updates with coalesced acknowledgements, and send messages with
//! correct timestamps and acknowledgements, retrying the retryable statuses.
//!
//! - [`clock`]: the server-clock offset estimate.
//! - [`session`]: a connected client ([`ChatClient`]) and its update stream.

pub mod clock;
pub mod session;

pub use session::{
    ChatClient, ClientError, ConnectOptions, Received, RetryPolicy, SendOutcome, Subscription,
    UPDATE_QUEUE, endpoint,
};
