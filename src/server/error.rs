//! Why the hub refused a request or ended a stream, in the hub's own terms.
//! The service layer turns it into a gRPC status (one `From` impl in
//! `service.rs`); the hub, like the engine, never speaks gRPC.

use crate::consistency::DropReason;
use crate::consistency::engine::{AckError, StreamError};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HubError {
    /// Shutdown began: no new clients or streams.
    #[error("server is shutting down")]
    ShuttingDown,
    /// No connected client has this id.
    #[error("unknown client id")]
    UnknownClient,
    /// The client has a stream open already.
    #[error("this client already has an update stream")]
    AlreadyStreaming,
    /// An acknowledgement the protocol does not allow (negative, or above
    /// the Updates sent).
    #[error("{0}")]
    BadAcknowledgement(AckError),
    /// The client's token does not allow writing to this thread (quoted).
    #[error("your token does not allow writing to thread {0}")]
    WriteForbidden(String),
    /// The server removed the client; its stream ends with this.
    #[error("{}", dropped_text(*.0))]
    Dropped(DropReason),
    /// A cluster node the other nodes do not count: no new streams.
    #[error("{UNREPORTED}")]
    Unreported,
}

/// Why a cluster node whose acknowledgement reports do not reach the other
/// nodes serves no stream.
const UNREPORTED: &str = "this node's acknowledgement reports do not reach the other chat nodes, \
     which do not count its clients: connect to another node";

/// What a dropped client is told.
fn dropped_text(reason: DropReason) -> &'static str {
    match reason {
        DropReason::AckTimeout => "acknowledgement timeout",
        DropReason::NeverStreamed => "ReceiveUpdates not started in time",
        DropReason::SlowConsumer => "outbound buffer full: the client stopped reading",
        DropReason::StreamClosed | DropReason::Shutdown => "server is shutting down",
        DropReason::Laggard => {
            "laggard: a thread's numerical bound of messages unacknowledged for longer than \
             the acknowledgement timeout (acknowledge every Update as it arrives)"
        }
        DropReason::Unreported => UNREPORTED,
    }
}

impl From<AckError> for HubError {
    fn from(e: AckError) -> Self {
        match e {
            AckError::NotFound => HubError::UnknownClient,
            other => HubError::BadAcknowledgement(other),
        }
    }
}

impl From<StreamError> for HubError {
    fn from(e: StreamError) -> Self {
        match e {
            StreamError::NotFound => HubError::UnknownClient,
            StreamError::AlreadyStreaming => HubError::AlreadyStreaming,
        }
    }
}
