//! `ReceiveUpdates` with pre-encoded Updates.
//!
//! The generated `ChatServerServer` encodes every streamed `Update` with
//! prost, once per client. The hub instead encodes a batch once and shares the
//! bytes among every client that gets it, so this module serves the
//! `/ChatServer/ReceiveUpdates` path itself with a codec whose encoder writes
//! those bytes as they are, and passes every other path to the generated
//! server. The wire format is unchanged: the bytes are a prost-encoded
//! `Update`.

use super::service::ChatService;
use crate::codec::{Pair, PreEncoded, Prost};
use crate::proto::chat_server_server::ChatServerServer;
use crate::proto::{Client, RECEIVE_UPDATES_PATH};
use bytes::Bytes;
use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::codegen::{Body, BoxFuture, Service, StdError, http};
use tonic::server::{NamedService, ServerStreamingService};
use tonic::{Request, Response, Status};

/// Writes the shared Update bytes as they are; reads the `Client` request.
type UpdatesCodec = Pair<PreEncoded, Prost<Client>>;

/// The `ReceiveUpdates` handler as a tonic streaming service.
struct ReceiveUpdatesSvc(Arc<ChatService>);

impl ServerStreamingService<Client> for ReceiveUpdatesSvc {
    type Response = Bytes;
    type ResponseStream = super::outbox::UpdateStream;
    type Future = BoxFuture<Response<Self::ResponseStream>, Status>;

    fn call(&mut self, request: Request<Client>) -> Self::Future {
        let service = self.0.clone();
        Box::pin(async move { service.open_stream(request) })
    }
}

/// The `ChatServer` service as served: `ReceiveUpdates` from pre-encoded
/// bytes, every other method by the generated server.
#[derive(Clone)]
pub struct ChatRoutes {
    /// The service that answers `ReceiveUpdates` here.
    service: Arc<ChatService>,
    /// The generated server for the other methods (same service inside).
    generated: ChatServerServer<ChatService>,
}

impl ChatRoutes {
    pub fn new(service: ChatService) -> Self {
        let service = Arc::new(service);
        ChatRoutes {
            generated: ChatServerServer::from_arc(service.clone()),
            service,
        }
    }
}

impl NamedService for ChatRoutes {
    const NAME: &'static str = <ChatServerServer<ChatService> as NamedService>::NAME;
}

impl<B> Service<http::Request<B>> for ChatRoutes
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != RECEIVE_UPDATES_PATH {
            return self.generated.call(req);
        }
        let svc = ReceiveUpdatesSvc(self.service.clone());
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(UpdatesCodec::default());
            Ok(grpc.server_streaming(svc, req).await)
        })
    }
}
