//! The `ChatServer` gRPC service: decodes requests, asks the hub, encodes
//! answers. No consistency logic lives here.

use super::convert;
use super::hub::{Hub, Submitted};
use super::outbox::UpdateStream;
use crate::proto::chat_server_server::ChatServer;
use crate::proto::{
    Acknowledgement, Client, ConnectionStarter, MessageStatus, SentMessage, ServerInfo, ServerTime,
};
use std::pin::Pin;
use std::sync::Arc;
use tokio_stream::{Stream, StreamExt, wrappers::ReceiverStream};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

/// The metadata key that carries a client's chosen display name.
pub const NAME_HEADER: &str = "x-chat-name";
/// Longest display name, in characters.
pub const MAX_NAME_CHARS: usize = 64;
/// Messages of one `SendMessages` stream decided but not yet answered (their
/// batch is being stored). Lets one stream fill a group commit instead of
/// waiting an fsync per message; bounds the memory one stream can hold.
pub const PIPELINE_DEPTH: usize = 128;

/// The final status of a submitted message: an accepted one waits until it
/// is durable; if storing it failed, `INTERNAL_ERROR` (never a false OK).
async fn settle(s: Submitted) -> MessageStatus {
    let stored = match s.durable {
        None => true,
        Some(outcome) => outcome.await.unwrap_or(false),
    };
    if stored {
        convert::message_status(&s.decision)
    } else {
        convert::internal_error(super::clock::now())
    }
}

pub struct ChatService {
    hub: Arc<Hub>,
    /// Cancelled at shutdown: ends open `SendMessages` streams.
    shutdown: CancellationToken,
}

impl ChatService {
    pub fn new(hub: Arc<Hub>, shutdown: CancellationToken) -> Self {
        ChatService { hub, shutdown }
    }
}

/// The display name from `x-chat-name`, if given: 1–64 printable characters.
fn chosen_name(meta: &tonic::metadata::MetadataMap) -> Result<Option<String>, Status> {
    let Some(value) = meta.get(NAME_HEADER) else {
        return Ok(None);
    };
    let invalid = || Status::invalid_argument("x-chat-name must be 1 to 64 printable characters");
    let name = value.to_str().map_err(|_| invalid())?;
    let chars = name.chars().count();
    if chars == 0 || chars > MAX_NAME_CHARS || name.chars().any(|c| c.is_control()) {
        return Err(invalid());
    }
    Ok(Some(name.to_owned()))
}

#[tonic::async_trait]
impl ChatServer for ChatService {
    async fn connect(
        &self,
        request: Request<ConnectionStarter>,
    ) -> Result<Response<ServerInfo>, Status> {
        let name = chosen_name(request.metadata())?;
        let (id, _name, now) = self.hub.connect(name)?;
        Ok(Response::new(ServerInfo {
            current_time: Some(convert::server_time(now)),
            client: Some(Client { id }),
        }))
    }

    type ReceiveUpdatesStream = UpdateStream;

    async fn receive_updates(
        &self,
        request: Request<Client>,
    ) -> Result<Response<UpdateStream>, Status> {
        let id = request.into_inner().id;
        Ok(Response::new(self.hub.start_stream(id)?))
    }

    async fn acknowlegde(
        &self,
        request: Request<Acknowledgement>,
    ) -> Result<Response<ServerTime>, Status> {
        let ack = request.into_inner();
        let Some(client) = ack.client else {
            return Err(Status::invalid_argument(
                "acknowledgement.client is required",
            ));
        };
        let now = self.hub.acknowledge(client.id, ack.num_updates_received)?;
        Ok(Response::new(convert::server_time(now)))
    }

    async fn send_message(
        &self,
        request: Request<SentMessage>,
    ) -> Result<Response<MessageStatus>, Status> {
        let submitted = self.hub.submit(convert::submission(request.into_inner()));
        Ok(Response::new(settle(submitted).await))
    }

    type SendMessagesStream = Pin<Box<dyn Stream<Item = Result<MessageStatus, Status>> + Send>>;

    async fn send_messages(
        &self,
        request: Request<Streaming<SentMessage>>,
    ) -> Result<Response<Self::SendMessagesStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Submitted, Status>>(PIPELINE_DEPTH);
        let hub = self.hub.clone();
        let shutdown = self.shutdown.clone();
        // Decided one at a time, in input order, so the accepted ones commit
        // in input order. Up to PIPELINE_DEPTH decided messages wait for
        // their batch at once; the statuses go out in input order as each
        // becomes final.
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    next = inbound.message() => next,
                    _ = shutdown.cancelled() => break,
                };
                let item = match next {
                    Ok(Some(m)) => Ok(hub.submit(convert::submission(m))),
                    Ok(None) => break,
                    Err(status) => Err(status),
                };
                let failed = item.is_err();
                if tx.send(item).await.is_err() || failed {
                    break;
                }
            }
        });
        let statuses = ReceiverStream::new(rx).then(|item| async move {
            match item {
                Ok(submitted) => Ok(settle(submitted).await),
                Err(status) => Err(status),
            }
        });
        Ok(Response::new(Box::pin(statuses)))
    }
}
