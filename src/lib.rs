//! Dyconit Chat: a gRPC chat server that scales by bounded inconsistency.
//!
//! - [`consistency`]: the pure dyconit logic (bounds, admission, flushing).
//! - [`node`]: a running server: gRPC, admin port and storage together.
//! - [`server`]: the gRPC service, client registry and flush scheduler.
//! - [`log`]: the ordered message log behind one trait.
//! - [`admin`]: the admin HTTP port (started by [`node::run`]).
//! - [`auth`]: JWT authentication of `Connect`.
//! - [`access`]: per-thread read and write permissions from a token.
//! - [`client`]: the client library.
//! - [`clock`]: the wall clock, read in one place; the server's is injectable.
//! - [`config`]: command-line flags and the TOML config file.
//! - [`chat`]: the terminal chat client (`dyconit-chat chat`).
//! - [`bench`](mod@bench): the load generator (`dyconit-chat bench`).
//! - [`check`]: the history checker of recorded runs (`dyconit-chat check`).
//! - [`net`]: connection caps, accept backoff and deadlines of both ports.
//! - [`sys`]: file-descriptor limit and /proc figures.

pub mod access;
pub mod admin;
pub mod auth;
pub mod bench;
pub mod chat;
pub mod check;
pub mod client;
pub mod clock;
pub mod codec;
pub mod config;
pub mod consistency;
pub mod log;
pub mod net;
pub mod node;
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

    /// The metadata key of the display name a client may choose on
    /// `Connect` (see docs/protocol.md).
    pub const NAME_HEADER: &str = "x-chat-name";
    /// Longest display name, in characters.
    pub const MAX_NAME_CHARS: usize = 64;
    /// The HTTP/2 path of `ReceiveUpdates`: the proto has no `package`
    /// line, so the service is plain `ChatServer`.
    pub const RECEIVE_UPDATES_PATH: &str = "/ChatServer/ReceiveUpdates";
}
