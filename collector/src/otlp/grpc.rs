//! OTLP/gRPC: `opentelemetry.proto.collector.trace.v1.TraceService/Export`.

use std::net::SocketAddr;
use std::time::Duration;

use datatracing_config::Scope;
use datatracing_http::Authenticator;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::codec::CompressionEncoding;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status};

use super::{Outcome, export};
use datatracing_http::{ApiError, ErrorCode};

use crate::ingest::{Ingest, Protocol};

#[derive(Debug)]
pub(crate) struct Export {
    pub ingest: Ingest,
    pub max_spans: usize,
}

#[tonic::async_trait]
impl TraceService for Export {
    async fn export(
        &self,
        req: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        match export(
            &self.ingest,
            Protocol::OtlpGrpc,
            self.max_spans,
            req.into_inner(),
        )
        .await
        {
            Outcome::Done(resp) => Ok(Response::new(resp)),
            Outcome::TooMany { limit, got } => Err(ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!("{got} spans in one request exceed the limit of {limit}; split the batch"),
            )
            .into()),
            Outcome::Throttled(e) => Err(ApiError::new(e.code(), e.otlp_message()).into()),
        }
    }
}

/// Serves gRPC until `shutdown`, then lets in-flight calls finish for up to `drain`.
/// Message size limits apply after decompression, so a gzip bomb is refused.
pub(crate) async fn serve(
    listener: TcpListener,
    export: Export,
    max_message: usize,
    auth: Authenticator,
    shutdown: CancellationToken,
    drain: Duration,
) -> Result<(), tonic::transport::Error> {
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    let server = TraceServiceServer::new(export)
        .accept_compressed(CompressionEncoding::Gzip)
        .send_compressed(CompressionEncoding::Gzip)
        .max_decoding_message_size(max_message);
    // The interceptor sees the metadata before the message is read and decoded, so an
    // unauthenticated client cannot make the server decode anything.
    let service = InterceptedService::new(server, move |req: Request<()>| {
        let value = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        auth.authorize(value, Some(Scope::Ingest))
            .map_err(Status::from)?;
        Ok(req)
    });
    let server = tonic::transport::Server::builder()
        .add_service(service)
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener),
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
