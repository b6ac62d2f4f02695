//! What a write asks for and what the admission decision answers.
//!
//! The checks run in the order of DESIGN.md §4: well-formed and known client
//! (`CLIENT_ERROR`), then `STALENESS`, `ORDER_ERROR`, `NUMERICAL_ERROR`, then
//! commit; a resource limit is checked before `STALENESS` (the message
//! rate) and before the commit (the thread caps). The logic is in [`super::Engine::submit`]; the types live here.

use super::Seq;
use super::limits::Limit;
use super::time::Micros;

/// A `SentMessage`, reduced to what the decision needs.
#[derive(Debug, Clone, Default)]
pub struct Submission {
    /// The acknowledgement inside the message; `None` if it was missing.
    pub ack: Option<SubmissionAck>,
    /// Thread id; "" is the main room.
    pub thread: String,
    pub contents: String,
    /// `SentMessage.timestamp`; `None` if it was missing.
    pub timestamp: Option<Micros>,
}

/// `SentMessage.acknowledgement`.
#[derive(Debug, Clone, Copy, Default)]
pub struct SubmissionAck {
    /// `acknowledgement.client.id`; `None` if the client was missing.
    pub client: Option<i64>,
    pub updates_received: i64,
    /// The sender's number for this message: it is its n-th message.
    pub messages_sent: i64,
}

/// Why a message is not well-formed, or its sender unknown (`CLIENT_ERROR`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientFault {
    MissingAcknowledgement,
    UnknownClient,
    EmptyContents,
    OversizedContents,
    OversizedThreadId,
    NegativeCount,
    AckAboveSent,
    MissingTimestamp,
    FutureTimestamp,
}

impl ClientFault {
    /// A short, stable description for logs and span attributes.
    pub fn as_str(self) -> &'static str {
        match self {
            ClientFault::MissingAcknowledgement => "missing acknowledgement",
            ClientFault::UnknownClient => "unknown client id",
            ClientFault::EmptyContents => "empty contents",
            ClientFault::OversizedContents => "contents above max_message_bytes",
            ClientFault::OversizedThreadId => "thread id above 128 bytes",
            ClientFault::NegativeCount => "negative numUpdatesReceived or numMessagesSent",
            ClientFault::AckAboveSent => "numUpdatesReceived above the Updates sent",
            ClientFault::MissingTimestamp => "missing timestamp",
            ClientFault::FutureTimestamp => "timestamp more than max_clock_skew in the future",
        }
    }
}

/// Why a well-formed write was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    Client(ClientFault),
    /// The message was `age` old on arrival, beyond the conit's staleness.
    Staleness {
        age_micros: i64,
    },
    /// `error` = commits unseen by the writer + its own earlier messages not
    /// yet arrived, above `bound`.
    Order {
        error: u64,
        bound: u64,
    },
    /// `error` unacknowledged commits in the conit, at or above `bound`.
    Numerical {
        error: u64,
        bound: u64,
    },
    /// A server fault (the log could not store an accepted message).
    Internal,
    /// A resource limit (message rate, thread caps): answered with a gRPC
    /// status and the reason rather than a `MessageStatus`.
    Limited(Limit),
}

impl Rejection {
    /// Every [`Rejection::reason`] label, in the order metrics list them.
    pub const REASONS: [&'static str; 5] =
        ["order", "numerical", "staleness", "client", "internal"];

    /// The reason label used in metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::Client(_) => "client",
            Rejection::Staleness { .. } => "staleness",
            Rejection::Order { .. } => "order",
            Rejection::Numerical { .. } => "numerical",
            Rejection::Internal => "internal",
            Rejection::Limited(_) => "limit",
        }
    }
}

/// The answer to a [`Submission`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Committed as `seq` at `at`; `retry` if this was a retry of a message
    /// accepted before (nothing new was committed).
    Accepted { seq: Seq, at: Micros, retry: bool },
    /// Refused; `at` is the server time of the decision.
    Rejected { reason: Rejection, at: Micros },
}

/// The verdict with the error values measured on the way, for traces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub verdict: Verdict,
    /// The order error measured, if the check was reached.
    pub order_error: Option<u64>,
    /// The numerical error measured, if the check was reached.
    pub numerical_error: Option<u64>,
    /// What the acknowledgement inside the message told, if it advanced.
    pub ack: Option<AckInfo>,
    /// How old the write was on arrival, if the staleness check was reached.
    pub arrival: Option<Arrival>,
}

impl Decision {
    /// The start of a decision at `now`: refused until the checks pass
    /// (the verdict is overwritten by the first check that decides).
    pub fn undecided(now: Micros) -> Self {
        Decision {
            verdict: Verdict::Rejected {
                reason: Rejection::Client(ClientFault::MissingAcknowledgement),
                at: now,
            },
            order_error: None,
            numerical_error: None,
            ack: None,
            arrival: None,
        }
    }
}

/// A write's age on arrival against its thread's staleness bound: the load
/// policy's second signal (writes that queue before the server decides
/// them show here before they are refused as stale).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arrival {
    /// The decision's time less the write's timestamp (0 for a timestamp
    /// ahead of the server's clock).
    pub age_micros: i64,
    /// The staleness bound in force for its thread.
    pub staleness_micros: i64,
}

impl Arrival {
    /// A write stamped `timestamp`, decided at `now` under `staleness`.
    pub fn of(now: Micros, timestamp: Micros, staleness: std::time::Duration) -> Self {
        Arrival {
            age_micros: now.0.saturating_sub(timestamp.0).max(0),
            staleness_micros: staleness.as_micros().min(i64::MAX as u128) as i64,
        }
    }

    /// The share of its staleness bound the write had used: 1 or more is
    /// refused `STALENESS`.
    pub fn share(&self) -> f64 {
        self.age_micros as f64 / self.staleness_micros.max(1) as f64
    }
}

/// What an acknowledgement that advanced tells about the client's lag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckInfo {
    /// Messages sent to the client and still unacknowledged after it.
    pub lag_messages: u64,
    /// From sending the newest acknowledged Update to its acknowledgement.
    pub round_trip_micros: i64,
}
