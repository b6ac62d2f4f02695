//! Malformed request bytes over a real gRPC connection get the right code.

mod common;

use bytes::Bytes;
use common::*;
use dyconit_chat::codec::{Pair, PreEncoded, Prost};
use dyconit_chat::proto::MessageStatus;
use tonic::transport::Channel;

/// Sends `body` as an already-encoded SendMessage request.
async fn send_raw(url: &str, body: &'static [u8]) -> tonic::Status {
    let channel = Channel::from_shared(url.to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let codec: Pair<PreEncoded, Prost<MessageStatus>> = Pair::default();
    grpc.unary(
        tonic::Request::new(Bytes::from_static(body)),
        http::uri::PathAndQuery::from_static("/ChatServer/SendMessage"),
        codec,
    )
    .await
    .expect_err("refused")
}

#[tokio::test]
async fn contents_that_are_not_utf8_are_invalid_argument() {
    let server = TestServer::start(config(100, 256, 32)).await;
    // SentMessage.contents (field 2) = the bytes 0xC3 0x28: not UTF-8.
    let status = send_raw(&server.url, &[0x12, 0x02, 0xC3, 0x28]).await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("SentMessage.contents"),
        "{}",
        status.message()
    );
    assert!(status.message().contains("UTF-8"), "{}", status.message());
    // Thread.id inside SentMessage.thread (field 1): nested, named too.
    let status = send_raw(&server.url, &[0x0A, 0x03, 0x0A, 0x01, 0xFF]).await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("Thread.id"),
        "{}",
        status.message()
    );
}
