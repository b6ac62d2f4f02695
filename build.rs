//! Compiles `proto/chat.proto` without a system `protoc`: `protox` parses the
//! proto in pure Rust, `tonic-prost-build` generates the messages and the
//! service. The encoded descriptor set is kept for the reflection service.

use prost::Message;
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/chat.proto");
    let fds = protox::compile(["chat.proto"], ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("chat_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // The RPC `Connect` would clash with the generated `connect(dst)`
        // constructor; clients build their channel themselves.
        .build_transport(false)
        // Small per-call buffers (see src/codec.rs).
        .codec_path("crate::codec::ProstCodec")
        .compile_fds(fds)?;
    Ok(())
}
