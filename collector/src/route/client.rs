//! The gRPC client peers talk through: a message encoded once (bytes), sent as often as
//! retries need without re-encoding, with gzip; the reply decoded with prost. With
//! `collector.peers.tls` each connection is dialed by [`TlsConnect`], which runs the TLS
//! handshake with the current CA and client certificate and reports failures per peer.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use datatracing_http::{ClientTls, ClientTlsStream, TlsServerName};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::Uri;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint};

use super::metrics::{PeerLabels, RouteMetrics};
use super::token::PeerToken;

/// The peer link's TLS (`collector.peers.tls`) and where its failures are counted.
#[derive(Clone, Debug)]
pub(crate) struct PeerTls {
    pub(crate) client: ClientTls,
    pub(crate) metrics: RouteMetrics,
}

/// Whether the last handshake with one peer failed: a failure is logged as a warning when
/// it starts (then at debug level) and the recovery once, so a peer with the wrong
/// certificate is named in the log without a line per retry.
#[derive(Debug, Default)]
struct TlsHealth {
    failing: AtomicBool,
}

/// Dials one peer: TCP, then the TLS handshake verifying the peer's certificate for
/// `name`. (The channel's URI stays `http://`: the handshake is done here, and tonic, when
/// built with its own TLS, refuses an `https://` URI it has no TLS settings for.)
#[derive(Clone)]
struct TlsConnect {
    peer: Arc<str>,
    name: TlsServerName<'static>,
    tls: PeerTls,
    health: Arc<TlsHealth>,
}

impl tonic::codegen::Service<Uri> for TlsConnect {
    type Response = TokioIo<ClientTlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let tcp = TcpStream::connect(&*this.peer).await?;
            tcp.set_nodelay(true)?;
            match this.tls.client.connect(tcp, this.name.clone()).await {
                Ok(s) => {
                    if this.health.failing.swap(false, Ordering::Relaxed) {
                        tracing::info!(peer = %this.peer, "TLS handshake with peer succeeds again");
                    }
                    Ok(TokioIo::new(s))
                }
                Err(e) => {
                    this.tls
                        .metrics
                        .tls_failures
                        .get_or_create(&PeerLabels {
                            peer: this.peer.to_string(),
                        })
                        .inc();
                    let name = this.name.to_str();
                    if this.health.failing.swap(true, Ordering::Relaxed) {
                        tracing::debug!(peer = %this.peer, error = %e, "TLS handshake with peer failed");
                    } else {
                        tracing::warn!(
                            peer = %this.peer,
                            server_name = %name,
                            error = %e,
                            "TLS handshake with peer failed (check collector.peers.tls: ca_file must hold the CA of the peer's certificate, valid for server_name); its spans are kept on this replica until it succeeds"
                        );
                    }
                    Err(std::io::Error::new(
                        e.kind(),
                        format!("TLS handshake with peer {} failed: {e}", this.peer),
                    ))
                }
            }
        })
    }
}

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
    tls: Option<Arc<TlsHealth>>,
}

impl PeerClient {
    /// `None` when the address cannot form a URI, or with TLS, a name to verify (logged).
    pub(crate) fn new(
        peer: &str,
        connect_timeout: Duration,
        gzip: bool,
        token: PeerToken,
        tls: Option<&PeerTls>,
    ) -> Option<Self> {
        let endpoint = Endpoint::from_shared(format!("http://{peer}"))
            .ok()?
            .connect_timeout(connect_timeout)
            .tcp_nodelay(true);
        let (channel, tls) = match tls {
            None => (endpoint.connect_lazy(), None),
            Some(tls) => {
                let name = match tls.client.server_name(peer) {
                    Ok(n) => n,
                    Err(e) => {
                        tracing::error!(peer, error = %e, "no TLS server name for this peer (set collector.peers.tls.server_name); its spans are kept on this replica");
                        return None;
                    }
                };
                let health = Arc::new(TlsHealth::default());
                let connect = TlsConnect {
                    peer: peer.into(),
                    name,
                    tls: tls.clone(),
                    health: Arc::clone(&health),
                };
                (endpoint.connect_with_connector_lazy(connect), Some(health))
            }
        };
        Some(Self {
            channel,
            gzip,
            token,
            tls,
        })
    }

    /// Whether the last TLS handshake with this peer failed.
    pub(crate) fn tls_failing(&self) -> bool {
        self.tls
            .as_ref()
            .is_some_and(|h| h.failing.load(Ordering::Relaxed))
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
