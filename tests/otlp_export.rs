//! Traces: with an OTLP endpoint configured, every RPC becomes a span with
//! the OpenTelemetry RPC attributes and the admission decision, exported to
//! a real OTLP/gRPC receiver started here, parented by the caller's
//! `traceparent`. (Its own test binary: the subscriber is process-wide.)

mod common;

use common::otlp::{Receiver, attr, hex, int_attr, str_attr};
use common::*;
use dyconit_chat::proto::ConnectionStarter;
use dyconit_chat::proto::message_status::StatusCode;
use dyconit_chat::server::otlp::trace_export;
use dyconit_chat::telemetry::tracing_setup;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_spans_reach_an_otlp_receiver_with_attributes_and_parent() {
    let (receiver, endpoint) = Receiver::start().await;
    let telemetry = tracing_setup::init("warn", Some(trace_export(&endpoint).unwrap())).unwrap();

    let server = TestServer::start(config(100, 256, 0)).await;
    let mut raw = server.raw().await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent_span = "00f067aa0ba902b7";
    let mut req = tonic::Request::new(ConnectionStarter {});
    req.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-{parent_span}-01").parse().unwrap(),
    );
    let id = raw
        .connect(req)
        .await
        .unwrap()
        .into_inner()
        .client
        .unwrap()
        .id;
    let other = server.client(None).await;
    assert_eq!(
        other.send("t", "first").await.unwrap().status,
        StatusCode::Ok
    );
    // Order bound 0 and one unseen commit: ORDER_ERROR, with its error value.
    let mut req = tonic::Request::new(sent(id, "t", "second", 0, 1));
    req.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-{parent_span}-01").parse().unwrap(),
    );
    let status = raw.send_message(req).await.unwrap().into_inner();
    assert_eq!(status.status_code, StatusCode::OrderError as i32);
    let err = raw.acknowlegde(ack(12345, 0, 0)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);

    // Shutting the pipeline down flushes every span to the receiver.
    telemetry.shutdown().await;
    let named = |name: &str| receiver.named(name);

    let connect = named("ChatServer/Connect");
    let traced = connect
        .iter()
        .find(|s| hex(&s.trace_id) == trace_id)
        .expect("the Connect span with the caller's trace id");
    assert_eq!(hex(&traced.parent_span_id), parent_span);
    assert_eq!(str_attr(traced, "rpc.system"), Some("grpc"));
    assert_eq!(str_attr(traced, "rpc.service"), Some("ChatServer"));
    assert_eq!(str_attr(traced, "rpc.method"), Some("Connect"));
    assert_eq!(int_attr(traced, "rpc.grpc.status_code"), Some(0));
    assert_eq!(traced.kind, 2, "SPAN_KIND_SERVER");
    assert_eq!(connect.len(), 2, "one span per Connect");

    let sends = named("ChatServer/SendMessage");
    let rejected = sends
        .iter()
        .find(|s| str_attr(s, "chat.status") == Some("ORDER_ERROR"))
        .expect("the rejected SendMessage span");
    assert_eq!(hex(&rejected.trace_id), trace_id);
    assert_eq!(int_attr(rejected, "chat.order_error"), Some(1));
    assert_eq!(str_attr(rejected, "chat.thread"), Some("t"));
    assert!(attr(rejected, "chat.message_age_ms").is_some());
    let accepted = sends
        .iter()
        .find(|s| str_attr(s, "chat.status") == Some("OK"))
        .unwrap();
    assert_eq!(int_attr(accepted, "chat.numerical_error"), Some(0));

    let acks = named("ChatServer/Acknowlegde");
    assert_eq!(acks.len(), 1);
    assert_eq!(
        int_attr(&acks[0], "rpc.grpc.status_code"),
        Some(tonic::Code::NotFound as i64)
    );
    assert_eq!(
        acks[0].status.as_ref().map(|s| s.code),
        Some(2),
        "STATUS_CODE_ERROR"
    );
}
