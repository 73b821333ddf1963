//! OTLP/gRPC: `opentelemetry.proto.collector.trace.v1.TraceService/Export`.
//!
//! The service is written by hand rather than generated so that the request reaches us as
//! bytes: it is then decoded by the same bounded pool as OTLP/HTTP (shape first, budget,
//! blocking thread), and a request that does not decode is INVALID_ARGUMENT like on HTTP,
//! not the INTERNAL a generated codec answers.
//!
//! Sizes agree with OTLP/HTTP: a message sent uncompressed may be `max_body_bytes`, a gzip
//! message may inflate to `max_decompressed_bytes`. tonic checks its own message limit
//! (the larger one) on the frame and while inflating; its OUT_OF_RANGE and decompression
//! answers, which OTLP exporters would retry forever, are rewritten to RESOURCE_EXHAUSTED.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use datatracing_config::Scope;
use datatracing_core::Tenant;
use datatracing_http::Authenticator;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{BoxFuture, http};
use tonic::{Request, Response, Status};

use super::decode::{Compression, DecodePool, Encoded, Wire};
use super::{Outcome, export};
use datatracing_http::ApiError;

use crate::ingest::{Ingest, Protocol};

/// The gRPC method path.
pub(crate) const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

#[derive(Debug)]
pub(crate) struct Export {
    pub ingest: Ingest,
    pub pool: DecodePool,
}

impl Export {
    async fn export(
        &self,
        req: Request<Bytes>,
        gzip: bool,
        (protocol, tenant): (Protocol, Tenant),
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        // tonic inflated a gzip message already (bounded by max_decompressed_bytes); an
        // uncompressed one must fit max_body_bytes, like an uncompressed HTTP body.
        let encoded = Encoded {
            wire: Wire::Protobuf,
            body: req.into_inner(),
            compression: if gzip {
                Compression::Inflated
            } else {
                Compression::None
            },
        };
        match export(&self.ingest, &self.pool, protocol, &tenant, encoded).await {
            Outcome::Done(resp) => Ok(Response::new(resp)),
            Outcome::Refused(e) => Err(e.to_api().into()),
            Outcome::Throttled(e) => Err(ApiError::new(e.code(), e.otlp_message())
                .with_retry_after(1)
                .into()),
        }
    }
}

/// Passes request messages through as bytes and encodes responses with prost.
#[derive(Debug, Default, Clone, Copy)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = ExportTraceServiceResponse;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = ExportTraceServiceResponse;
    type Error = Status;

    fn encode(&mut self, item: Self::Item, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(buf)
            .map_err(|e| Status::internal(format!("encoding the response: {e}")))
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        let n = buf.remaining();
        Ok(Some(buf.copy_to_bytes(n)))
    }
}

/// The trace service as a tower service tonic's router can serve.
#[derive(Debug, Clone)]
pub(crate) struct TraceService {
    inner: Arc<Export>,
    max_message: usize,
    auth: Authenticator,
}

impl tonic::server::NamedService for TraceService {
    const NAME: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
}

struct Unary(Arc<Export>, bool, (Protocol, Tenant));

impl tonic::server::UnaryService<Bytes> for Unary {
    type Response = ExportTraceServiceResponse;
    type Future = BoxFuture<Response<Self::Response>, Status>;

    fn call(&mut self, req: Request<Bytes>) -> Self::Future {
        let inner = Arc::clone(&self.0);
        let (gzip, who) = (self.1, self.2.clone());
        Box::pin(async move { inner.export(req, gzip, who).await })
    }
}

impl<B> tonic::codegen::Service<http::Request<B>> for TraceService
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let inner = Arc::clone(&self.inner);
        let max = self.max_message;
        // The token is checked on the headers, before the message is read or decoded, so
        // an unauthenticated client cannot make the server decode anything. Spans a peer
        // forwarded need the `peer` scope.
        let forwarded = req.headers().contains_key(crate::route::FORWARDED_HEADER);
        let allowed = self
            .auth
            .authorize(
                req.headers()
                    .get("authorization")
                    .and_then(|v| v.to_str().ok()),
                Some(if forwarded {
                    Scope::Peer
                } else {
                    Scope::Ingest
                }),
            )
            .and_then(|p| {
                who(
                    forwarded,
                    self.auth.enabled(),
                    p.tenant,
                    req.headers().get(crate::route::TENANT_HEADER),
                )
            });
        Box::pin(async move {
            if req.uri().path() != EXPORT_PATH {
                return Ok(Status::unimplemented("no such method").into_http());
            }
            let who = match allowed {
                Ok(who) => who,
                Err(e) => return Ok(Status::from(e).into_http()),
            };
            let gzip = req
                .headers()
                .get("grpc-encoding")
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"));
            let mut grpc = tonic::server::Grpc::new(RawCodec)
                .accept_compressed(CompressionEncoding::Gzip)
                .send_compressed(CompressionEncoding::Gzip)
                .max_decoding_message_size(max);
            let resp = grpc.unary(Unary(inner, gzip, who), req).await;
            Ok(size_errors_are_resource_exhausted(resp))
        })
    }
}

/// The protocol of an authorized export and the tenant its spans are stored for. A client's
/// spans are its token's tenant's. A peer's (authorized with the `peer` scope) are the
/// tenant its `x-datatracing-tenant` names, or, without it, they arrive stamped by the peer
/// and keep their stamps. With `auth` off there is one tenant, the default.
fn who(
    forwarded: bool,
    auth_on: bool,
    token_tenant: Tenant,
    tenant_header: Option<&http::HeaderValue>,
) -> Result<(Protocol, Tenant), ApiError> {
    if !forwarded {
        return Ok((Protocol::OtlpGrpc, token_tenant));
    }
    if !auth_on {
        return Ok((Protocol::Peer, Tenant::default_tenant()));
    }
    let bad = |m: String| ApiError::new(datatracing_http::ErrorCode::InvalidArgument, m);
    match tenant_header.map(|v| v.to_str()) {
        None => Ok((Protocol::PeerStamped, Tenant::default_tenant())),
        Some(Ok("")) => Ok((Protocol::Peer, Tenant::default_tenant())),
        Some(Ok(t)) => Tenant::parse(t)
            .map(|t| (Protocol::Peer, t))
            .map_err(|e| bad(format!("{}: {e}", crate::route::TENANT_HEADER))),
        Some(Err(_)) => Err(bad(format!("{} is not text", crate::route::TENANT_HEADER))),
    }
}

/// tonic answers a message over its limit with OUT_OF_RANGE (frame length) or
/// RESOURCE_EXHAUSTED (inflating), and a gzip message that does not inflate with INTERNAL
/// ("Error decompressing"). Our own handler never answers OUT_OF_RANGE, so every
/// OUT_OF_RANGE here is the size limit; OTLP exporters retry OUT_OF_RANGE and INTERNAL is
/// a server fault, while both are the client's request that can never succeed.
fn size_errors_are_resource_exhausted(
    mut resp: http::Response<tonic::body::Body>,
) -> http::Response<tonic::body::Body> {
    let code = |c: tonic::Code| (c as i32).to_string();
    let status = resp.headers().get(Status::GRPC_STATUS).cloned();
    let message = resp
        .headers()
        .get(Status::GRPC_MESSAGE)
        .map(|m| m.as_bytes().to_vec())
        .unwrap_or_default();
    let new = match status {
        Some(s) if s.as_bytes() == code(tonic::Code::OutOfRange).as_bytes() => {
            Some(tonic::Code::ResourceExhausted)
        }
        Some(s)
            if s.as_bytes() == code(tonic::Code::Internal).as_bytes()
                && (message.starts_with(b"Error%20decompressing")
                    || message.starts_with(b"Error decompressing")) =>
        {
            Some(tonic::Code::InvalidArgument)
        }
        _ => None,
    };
    if let Some(c) = new {
        resp.headers_mut()
            .insert(Status::GRPC_STATUS, http::HeaderValue::from(c as i32));
    }
    resp
}

/// What the gRPC server enforces besides the decode pool's bounds.
#[derive(Debug)]
pub(crate) struct Limits {
    /// tonic's message limit: the frame as sent and the message inflated.
    pub max_decompressed: usize,
    /// A call taking longer is cancelled (DEADLINE_EXCEEDED), as HTTP answers 504.
    pub request_timeout: Duration,
    /// The listener's connection limits; `max_requests_per_connection` bounds concurrent
    /// streams per connection.
    pub connections: datatracing_http::ConnectionLimits,
}

/// What the gRPC listener serves: OTLP trace export, and the peer service between routed
/// replicas when routing is on.
#[derive(Debug)]
pub(crate) struct Services {
    pub export: Export,
    pub peer: Option<crate::route::lineage::PeerService>,
}

/// Serves gRPC until `shutdown`, then lets in-flight calls finish for up to `drain`.
/// Message size limits apply after decompression, so a gzip bomb is refused.
pub(crate) async fn serve(
    listener: TcpListener,
    Services { export, peer }: Services,
    limits: Limits,
    auth: Authenticator,
    tls: Option<datatracing_http::TlsAcceptor>,
    shutdown: CancellationToken,
    drain: Duration,
) -> Result<(), tonic::transport::Error> {
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    let service = TraceService {
        inner: Arc::new(export),
        max_message: limits.max_decompressed,
        auth,
    };
    let streams = u32::try_from(limits.connections.max_requests_per_connection).unwrap_or(u32::MAX);
    let server = tonic::transport::Server::builder()
        .timeout(limits.request_timeout)
        .max_concurrent_streams(streams)
        .add_service(service)
        .add_optional_service(peer)
        .serve_with_incoming_shutdown(
            datatracing_http::conn::incoming(listener, &limits.connections, tls),
            shutdown.clone().cancelled_owned(),
        );
    tokio::select! {
        r = server => r?,
        _ = async { shutdown.cancelled().await; tokio::time::sleep(drain).await } => {
            tracing::warn!(?addr, ?drain, "gRPC calls did not finish in time; closing anyway");
        }
    }
    tracing::info!(?addr, "gRPC server stopped");
    Ok(())
}
