//! gRPC codecs: how messages become the bytes of a gRPC stream and back.
//!
//! Every codec here is a [`Pair`] of an encoder and a decoder:
//!
//! - [`ProstCodec`]`<T, U>`: prost both ways. The generated client and server
//!   use it (`build.rs` names it as their codec). It differs from
//!   `tonic_prost::ProstCodec` only in its buffers: tonic's default is 8 KiB
//!   per call and direction, an allocation too large for the allocator's
//!   fast path, made and freed for every acknowledgement. Chat messages are a
//!   few hundred bytes; the buffers still grow for larger ones.
//! - `Pair<`[`PreEncoded`]`, Prost<Client>>`: the server's `ReceiveUpdates`,
//!   whose Updates are encoded once per batch and shared among clients
//!   (`crate::server::updates`).
//! - `Pair<Prost<Client>, `[`crate::bench::wire::SummaryDecoder`]`>`: the load
//!   generator's `ReceiveUpdates`, which reads only what it measures.

use bytes::{BufMut, Bytes};
use prost::Message;
use std::marker::PhantomData;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

/// Initial size of a call's encode and decode buffers.
const BUFFER_BYTES: usize = 512;
/// Encoded bytes a stream gathers before handing them to the transport
/// (tonic's default).
const YIELD_BYTES: usize = 32 * 1024;

fn buffer_settings() -> BufferSettings {
    BufferSettings::new(BUFFER_BYTES, YIELD_BYTES)
}

/// A codec made of encoder `E` and decoder `D`.
pub struct Pair<E, D>(PhantomData<fn() -> (E, D)>);

impl<E, D> Default for Pair<E, D> {
    fn default() -> Self {
        Pair(PhantomData)
    }
}

impl<E, D> Codec for Pair<E, D>
where
    E: Encoder<Error = Status> + Default + Send + 'static,
    E::Item: Send + 'static,
    D: Decoder<Error = Status> + Default + Send + 'static,
    D::Item: Send + 'static,
{
    type Encode = E::Item;
    type Decode = D::Item;
    type Encoder = E;
    type Decoder = D;

    fn encoder(&mut self) -> E {
        E::default()
    }

    fn decoder(&mut self) -> D {
        D::default()
    }
}

/// Encodes or decodes `M` with prost, with small buffers.
pub struct Prost<M>(PhantomData<fn() -> M>);

impl<M> Default for Prost<M> {
    fn default() -> Self {
        Prost(PhantomData)
    }
}

impl<M: Message> Encoder for Prost<M> {
    type Item = M;
    type Error = Status;

    fn encode(&mut self, item: M, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst)
            .map_err(|e| Status::internal(format!("encoding a message: {e}")))
    }

    fn buffer_settings(&self) -> BufferSettings {
        buffer_settings()
    }
}

impl<M: Message + Default> Decoder for Prost<M> {
    type Item = M;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<M>, Status> {
        M::decode(src).map(Some).map_err(decode_status)
    }

    fn buffer_settings(&self) -> BufferSettings {
        buffer_settings()
    }
}

/// The status for a message that does not decode. A string field that is
/// not UTF-8 is the sender's mistake in a well-framed message: it gets
/// INVALID_ARGUMENT, naming the field. Anything else that does not parse is
/// INTERNAL, as in tonic-prost and other gRPC implementations. (prost's
/// error has no kind to match on, only its text, which the tests pin.)
fn decode_status(e: prost::DecodeError) -> Status {
    let text = e.to_string();
    if text.contains("UTF-8") {
        let field = text
            .split(": ")
            .find(|part| part.contains('.') && !part.contains(' '))
            .unwrap_or("a string field");
        Status::invalid_argument(format!(
            "{field} is not valid UTF-8 (protobuf strings must be UTF-8; send bytes as text)"
        ))
    } else {
        Status::internal(format!("cannot decode the message: {text}"))
    }
}

/// The codec of the generated client and server: prost both ways.
pub type ProstCodec<T, U> = Pair<Prost<T>, Prost<U>>;

/// Writes a message that is already encoded, as it is.
#[derive(Debug, Clone, Copy, Default)]
pub struct PreEncoded;

impl Encoder for PreEncoded {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }

    fn buffer_settings(&self) -> BufferSettings {
        buffer_settings()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Client, ServerTime};

    #[test]
    fn invalid_utf8_is_invalid_argument_naming_the_field() {
        use crate::proto::SentMessage;
        // Field 2 (contents), length 2: a lone continuation byte and 0xFF.
        let bytes: &[u8] = &[0x12, 0x02, 0x80, 0xFF];
        let e = decode_status(SentMessage::decode(bytes).unwrap_err());
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
        assert!(
            e.message().contains("SentMessage.contents"),
            "{}",
            e.message()
        );
        assert!(e.message().contains("UTF-8"));
        // A truncated message stays INTERNAL.
        let e = decode_status(SentMessage::decode(&[0x12, 0x05, b'a'][..]).unwrap_err());
        assert_eq!(e.code(), tonic::Code::Internal);
    }

    /// The generated code builds its codec with `ProstCodec::default()` and
    /// lets the call infer the message types: this must keep compiling.
    #[test]
    fn the_alias_infers_its_types_like_the_generated_code_needs() {
        fn takes<C: Codec<Encode = ServerTime, Decode = Client>>(_: C) {}
        let codec = ProstCodec::default();
        takes(codec);
    }
}
