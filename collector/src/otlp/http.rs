//! OTLP/HTTP: `POST /v1/traces`.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Extension, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use prost::Message;

use super::decode::{Compression, DecodePool, Encoded, Wire};
use super::{Outcome, export};
use datatracing_core::Tenant;
use datatracing_http::{ErrorCode, Principal};

use crate::ingest::{Ingest, Protocol};

/// `google.rpc.Status`, the body of OTLP/HTTP error responses.
#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Protobuf,
    Json,
}

#[derive(Debug)]
struct State_ {
    ingest: Ingest,
    pool: DecodePool,
}

pub(crate) fn routes(ingest: Ingest, pool: DecodePool, max_body: usize) -> Router {
    Router::new()
        .route("/v1/traces", post(handle))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(Arc::new(State_ { ingest, pool }))
}

/// An OTLP/HTTP error: the HTTP status and the `google.rpc.Status` code both come from
/// `code` (one table for every protocol); retryable codes carry a retry delay.
fn status_response(enc: Encoding, code: ErrorCode, message: String) -> Response {
    let status = RpcStatus {
        code: code.grpc_code() as i32,
        message,
    };
    let (ct, body) = match enc {
        Encoding::Protobuf => ("application/x-protobuf", status.encode_to_vec()),
        Encoding::Json => (
            "application/json",
            serde_json::to_vec(&status).unwrap_or_default(),
        ),
    };
    let mut resp = (code.http_status(), [(header::CONTENT_TYPE, ct)], body).into_response();
    if code.is_retryable() {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    resp
}

async fn handle(
    State(s): State<Arc<State_>>,
    principal: Option<Extension<Principal>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let media = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase());
    let (enc, protocol) = match media.as_deref() {
        Some("application/x-protobuf") => (Encoding::Protobuf, Protocol::OtlpHttpProtobuf),
        Some("application/json") => (Encoding::Json, Protocol::OtlpHttpJson),
        _ => {
            return status_response(
                Encoding::Json,
                ErrorCode::UnsupportedMediaType,
                "Content-Type must be application/x-protobuf or application/json".into(),
            );
        }
    };
    let p = protocol.label();
    let reject = |code: ErrorCode, reason: &'static str, message: String| {
        s.ingest.metrics.reject(p, reason, 1);
        s.ingest.logs.client_error(p, reason, &message);
        status_response(enc, code, message)
    };
    let body = match body {
        Ok(b) => b,
        Err(r) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return reject(
                ErrorCode::PayloadTooLarge,
                "too_large",
                "request body exceeds the configured limit".into(),
            );
        }
        Err(r) => {
            return reject(
                ErrorCode::InvalidArgument,
                "invalid",
                format!("could not read the body: {}", r.body_text()),
            );
        }
    };
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_ascii_lowercase());
    let compression = match encoding.as_deref() {
        None | Some("identity") | Some("") => Compression::None,
        Some("gzip") => Compression::Gzip,
        Some(other) => {
            return reject(
                ErrorCode::UnsupportedMediaType,
                "invalid",
                format!("unsupported Content-Encoding {other:?}; use gzip or none"),
            );
        }
    };
    let wire = match enc {
        Encoding::Protobuf => Wire::Protobuf,
        Encoding::Json => Wire::Json,
    };
    let req = Encoded {
        wire,
        body,
        compression,
    };
    match export(
        &s.ingest,
        &s.pool,
        protocol,
        &principal.map_or_else(Tenant::default_tenant, |p| p.0.tenant),
        req,
    )
    .await
    {
        Outcome::Done(resp) => {
            let (ct, body) = match enc {
                Encoding::Protobuf => ("application/x-protobuf", resp.encode_to_vec()),
                Encoding::Json => (
                    "application/json",
                    serde_json::to_vec(&resp).unwrap_or_default(),
                ),
            };
            (StatusCode::OK, [(header::CONTENT_TYPE, ct)], body).into_response()
        }
        Outcome::Refused(e) => {
            let e = e.to_api();
            status_response(enc, e.code, e.message)
        }
        Outcome::Throttled(e) => status_response(enc, e.code(), e.otlp_message().into()),
    }
}
