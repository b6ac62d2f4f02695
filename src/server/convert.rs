//! Between the wire types (`crate::proto`) and the core's types.

use crate::consistency::{
    Batch, Decision, Entry, Micros, Rejection, Submission, SubmissionAck, Verdict,
};
use crate::proto::{self, message_status::StatusCode};

pub fn server_time(t: Micros) -> proto::ServerTime {
    proto::ServerTime { timestamp: t.0 }
}

/// A `SentMessage` as the core sees it.
pub fn submission(m: proto::SentMessage) -> Submission {
    Submission {
        ack: m.acknowledgement.map(|a| SubmissionAck {
            client: a.client.map(|c| c.id),
            updates_received: a.num_updates_received,
            messages_sent: a.num_messages_sent,
        }),
        thread: m.thread.map(|t| t.id).unwrap_or_default(),
        contents: m.contents,
        timestamp: m.timestamp.map(|t| Micros(t.timestamp)),
    }
}

/// The wire status of a decision.
pub fn message_status(d: &Decision) -> proto::MessageStatus {
    let (code, at) = match d.verdict {
        Verdict::Accepted { at, .. } => (StatusCode::Ok, at),
        Verdict::Rejected { reason, at } => (status_code(&reason), at),
    };
    proto::MessageStatus {
        status_code: code as i32,
        timestamp: Some(server_time(at)),
    }
}

pub fn status_code(r: &Rejection) -> StatusCode {
    match r {
        Rejection::Client(_) => StatusCode::ClientError,
        Rejection::Staleness { .. } => StatusCode::Staleness,
        Rejection::Order { .. } => StatusCode::OrderError,
        Rejection::Numerical { .. } => StatusCode::NumericalError,
        Rejection::Internal => StatusCode::InternalError,
    }
}

pub fn received(e: &Entry) -> proto::ReceivedMessage {
    proto::ReceivedMessage {
        thread: Some(proto::Thread {
            id: e.thread.to_string(),
        }),
        contents: e.contents.clone(),
        server_time: Some(server_time(e.commit_time)),
        sender: e.sender.to_string(),
    }
}

pub fn update(b: &Batch) -> proto::Update {
    proto::Update {
        current_time: Some(server_time(b.current_time)),
        expiration_time: Some(server_time(b.expiration)),
        message: b.entries.iter().map(|e| received(e)).collect(),
    }
}
