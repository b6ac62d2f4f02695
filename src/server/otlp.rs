//! The OTLP/gRPC trace exporter. Built here, beside the other gRPC code, and
//! handed to [`crate::telemetry::tracing_setup::init`], which only wires it
//! into the subscriber.

use crate::telemetry::tracing_setup::TraceExport;
use anyhow::Context;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::time::Duration;

/// An OTLP/gRPC trace pipeline to `endpoint` with a batch processor. Must
/// be called inside a Tokio runtime (the exporter's channel lives there).
pub fn trace_export(endpoint: &str) -> anyhow::Result<TraceExport> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .with_timeout(Duration::from_secs(3))
        .build()
        .context("building the OTLP exporter")?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            Resource::builder()
                .with_service_name("dyconit-chat")
                .build(),
        )
        .build();
    Ok(TraceExport {
        provider,
        endpoint: endpoint.to_owned(),
    })
}
