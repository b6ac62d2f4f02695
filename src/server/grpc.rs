//! The gRPC listener: the chat service (with `ReceiveUpdates` from shared
//! encoded bytes), the standard health service and reflection (v1 and
//! v1alpha).

use super::Config;
use super::hub::Hub;
use super::service::ChatService;
use super::updates::ChatRoutes;
use crate::net::Acceptor;
use crate::proto::chat_server_server::ChatServerServer;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
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
        acceptor: Acceptor,
        config: &Config,
        hub: Arc<Hub>,
        stop: CancellationToken,
    ) -> anyhow::Result<GrpcServer> {
        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<ChatServerServer<ChatService>>().await;
        let mut service = ChatService::new(hub.clone(), stop.clone())
            .with_connect_rate(config.max_connects_per_second);
        match &config.auth {
            Some(v) => {
                tracing::info!(keys = %v.source, "authentication on: Connect needs a JWT, names come from it");
                let m = crate::auth::AuthMetrics::new(&hub.metrics().registry);
                service = service.with_auth(v.clone(), m);
            }
            None => tracing::warn!(
                "authentication is OFF: anyone who reaches the gRPC port may connect, and names are self-asserted (x-chat-name); use --auth-jwt-secret-file or --auth-jwks-file"
            ),
        }
        let chat = ChatRoutes::new(service);
        let task = tokio::spawn(
            tonic::transport::Server::builder()
                .tcp_nodelay(true)
                .http2_keepalive_interval(Some(Duration::from_secs(30)))
                .max_concurrent_streams(config.max_streams_per_connection)
                .add_service(health_service)
                .add_service(super::reflection::v1()?)
                .add_service(super::reflection::v1alpha()?)
                .add_service(chat)
                .serve_with_incoming_shutdown(
                    super::listener::incoming(acceptor, config.tls.clone()),
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
