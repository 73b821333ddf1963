//! The gRPC client peers talk through: a message encoded once (bytes), sent as often as
//! retries need without re-encoding, with gzip; the reply decoded with prost.

use std::marker::PhantomData;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint};

use super::token::PeerToken;

/// Sends pre-encoded bytes; decodes the reply as `R`.
struct BytesCodec<R>(PhantomData<R>);

impl<R> Default for BytesCodec<R> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<R: prost::Message + Default + Send + 'static> Codec for BytesCodec<R> {
    type Encode = Bytes;
    type Decode = R;
    type Encoder = BytesEncoder;
    type Decoder = BytesCodec<R>;

    fn encoder(&mut self) -> Self::Encoder {
        BytesEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        BytesCodec(PhantomData)
    }
}

struct BytesEncoder;

impl Encoder for BytesEncoder {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, buf: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        // At once: growing a large buffer by doubling faults in fresh pages at every step.
        buf.reserve(item.len());
        buf.put(item);
        Ok(())
    }
}

impl<R: prost::Message + Default> Decoder for BytesCodec<R> {
    type Item = R;
    type Error = tonic::Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<R>, tonic::Status> {
        let n = buf.remaining();
        R::decode(buf.copy_to_bytes(n))
            .map(Some)
            .map_err(|e| tonic::Status::internal(format!("undecodable reply: {e}")))
    }
}

/// A lazily connected channel to one peer.
#[derive(Clone, Debug)]
pub(crate) struct PeerClient {
    channel: Channel,
    gzip: bool,
    token: PeerToken,
}

impl PeerClient {
    /// `None` when the address cannot form a URI.
    pub(crate) fn new(
        peer: &str,
        connect_timeout: Duration,
        gzip: bool,
        token: PeerToken,
    ) -> Option<Self> {
        let endpoint = Endpoint::from_shared(format!("http://{peer}"))
            .ok()?
            .connect_timeout(connect_timeout)
            .tcp_nodelay(true);
        Some(Self {
            channel: endpoint.connect_lazy(),
            gzip,
            token,
        })
    }

    /// One unary call of `path` with `body` (already encoded), the given metadata and the
    /// peer token.
    pub(crate) async fn call<R: prost::Message + Default + Send + 'static>(
        &self,
        path: &'static str,
        body: Bytes,
        metadata: &[(&'static str, &str)],
        timeout: Duration,
    ) -> Result<R, tonic::Status> {
        let mut grpc = tonic::client::Grpc::new(self.channel.clone())
            .accept_compressed(CompressionEncoding::Gzip)
            .max_decoding_message_size(1 << 20);
        if self.gzip {
            grpc = grpc.send_compressed(CompressionEncoding::Gzip);
        }
        grpc.ready()
            .await
            .map_err(|e| tonic::Status::unavailable(format!("peer not ready: {e}")))?;
        let mut req = tonic::Request::new(body);
        for (k, v) in metadata {
            if let Ok(v) = v.parse() {
                req.metadata_mut().insert(*k, v);
            }
        }
        if let Some(t) = self.token.authorization()
            && let Ok(v) = t.parse()
        {
            req.metadata_mut().insert("authorization", v);
        }
        req.set_timeout(timeout.max(Duration::from_millis(1)));
        grpc.unary(
            req,
            PathAndQuery::from_static(path),
            BytesCodec::<R>::default(),
        )
        .await
        .map(tonic::Response::into_inner)
    }
}
