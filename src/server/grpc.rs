//! The gRPC listener: the chat service (with `ReceiveUpdates` from shared
//! encoded bytes), the standard health service and reflection (v1 and
//! v1alpha).

use super::hub::Hub;
use super::service::ChatService;
use super::updates::ChatRoutes;
use crate::proto::chat_server_server::ChatServerServer;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;

/// The serving gRPC listener.
pub(crate) struct GrpcServer {
    /// The `grpc.health.v1` status of the chat service.
    health: tonic_health::server::HealthReporter,
    /// The serving task; ends when `stop` is cancelled and open RPCs end.
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl GrpcServer {
    /// Starts serving on `listener` until `stop` is cancelled; reports the
    /// chat service as serving in the health service.
    pub(crate) async fn start(
        listener: TcpListener,
        hub: Arc<Hub>,
        stop: CancellationToken,
    ) -> anyhow::Result<GrpcServer> {
        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<ChatServerServer<ChatService>>().await;
        let chat = ChatRoutes::new(ChatService::new(hub, stop.clone()));
        let task = tokio::spawn(
            tonic::transport::Server::builder()
                .tcp_nodelay(true)
                .http2_keepalive_interval(Some(Duration::from_secs(30)))
                .add_service(health_service)
                .add_service(super::reflection::v1()?)
                .add_service(super::reflection::v1alpha()?)
                .add_service(chat)
                .serve_with_incoming_shutdown(
                    TcpListenerStream::new(listener),
                    stop.cancelled_owned(),
                ),
        );
        Ok(GrpcServer { health, task })
    }

    /// Health checks answer NOT_SERVING from now on (shutdown began).
    pub(crate) async fn set_not_serving(&self) {
        self.health
            .set_not_serving::<ChatServerServer<ChatService>>()
            .await;
    }

    /// Waits (up to `grace`) for the listener to stop once its `stop` token
    /// was cancelled, logging how it ended.
    pub(crate) async fn join(self, grace: Duration) {
        match tokio::time::timeout(grace, self.task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "gRPC server ended with an error"),
            Ok(Err(e)) => tracing::warn!(error = %e, "gRPC server task failed"),
            Err(_) => tracing::warn!(?grace, "open RPCs did not finish within the grace period"),
        }
    }
}
