//! Dyconit Chat: a gRPC chat server that scales by bounded inconsistency.
//!
//! - [`consistency`]: the pure dyconit logic (bounds, admission, flushing).
//! - [`server`]: the gRPC service, client registry and flush scheduler.
//! - [`log`]: the ordered message log behind one trait.
//! - [`admin`]: the admin HTTP port.
//! - [`auth`]: JWT authentication of `Connect`.
//! - [`client`]: the client library.
//! - [`config`]: command-line flags and the TOML config file.
//! - [`chat`]: the terminal chat client (`dyconit-chat chat`).
//! - [`bench`]: the load generator (`dyconit-chat bench`).
//! - [`check`]: the history checker of recorded runs (`dyconit-chat check`).
//! - [`net`]: connection caps, accept backoff and deadlines of both ports.
//! - [`sys`]: file-descriptor limit and /proc figures.

pub mod admin;
pub mod auth;
pub mod bench;
pub mod chat;
pub mod check;
pub mod client;
pub mod codec;
pub mod config;
pub mod consistency;
pub mod log;
pub mod net;
pub mod server;
pub mod sys;
pub mod telemetry;

/// The wire types and service stubs generated from `proto/chat.proto`.
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/_.rs"));

    /// The encoded descriptor set, for the reflection service.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/chat_descriptor.bin"));
}
