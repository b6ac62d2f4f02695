//! Server reflection as tools use it: both protocol versions (v1, and
//! v1alpha for grpcurl 1.8 and other tools that speak only that one) list
//! the chat service and the health service, over a real server.

mod common;

use common::TestServer;
use dyconit_chat::server::Config;
use tonic_reflection::pb::{v1, v1alpha};

async fn channel(url: &str) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(url.to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// The services `v1alpha` lists.
async fn list_v1alpha(url: &str) -> Vec<String> {
    use v1alpha::server_reflection_client::ServerReflectionClient;
    use v1alpha::server_reflection_request::MessageRequest;
    use v1alpha::server_reflection_response::MessageResponse;
    let mut client = ServerReflectionClient::new(channel(url).await);
    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("v1alpha reflection is served")
        .into_inner();
    let answer = answers.message().await.unwrap().expect("an answer");
    match answer.message_response {
        Some(MessageResponse::ListServicesResponse(l)) => {
            l.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("not a service list: {other:?}"),
    }
}

/// The services `v1` lists.
async fn list_v1(url: &str) -> Vec<String> {
    use v1::server_reflection_client::ServerReflectionClient;
    use v1::server_reflection_request::MessageRequest;
    use v1::server_reflection_response::MessageResponse;
    let mut client = ServerReflectionClient::new(channel(url).await);
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("v1 reflection is served")
        .into_inner();
    let answer = answers.message().await.unwrap().expect("an answer");
    match answer.message_response {
        Some(MessageResponse::ListServicesResponse(l)) => {
            l.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("not a service list: {other:?}"),
    }
}

#[tokio::test]
async fn both_reflection_versions_list_the_chat_and_health_services() {
    let server = TestServer::start(Config::default()).await;
    for (version, services) in [
        ("v1alpha", list_v1alpha(&server.url).await),
        ("v1", list_v1(&server.url).await),
    ] {
        for want in ["ChatServer", "grpc.health.v1.Health"] {
            assert!(
                services.iter().any(|s| s == want),
                "{version} lists {services:?}, not {want}"
            );
        }
    }
}
