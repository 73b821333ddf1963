//! OTLP/HTTP: `POST /v1/traces`.

use std::io::Read;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

use super::{Outcome, export};
use datatracing_http::ErrorCode;

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
    max_spans: usize,
    max_decompressed: usize,
}

pub(crate) fn routes(
    ingest: Ingest,
    max_body: usize,
    max_decompressed: usize,
    max_spans: usize,
) -> Router {
    Router::new()
        .route("/v1/traces", post(handle))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(Arc::new(State_ {
            ingest,
            max_spans,
            max_decompressed,
        }))
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

/// Inflates gzip with a hard cap on the output, so a small bomb cannot take memory. Every
/// member of a multi-member body is inflated (the cap counts them together): a single-member
/// decoder dropped everything after the first member and still answered 200. Bytes after the
/// last member that are not another member are an error, not ignored.
fn gunzip_bounded(body: &[u8], max: usize) -> Result<Vec<u8>, GunzipError> {
    let mut out = Vec::with_capacity(body.len().saturating_mul(4).min(max));
    flate2::read::MultiGzDecoder::new(body)
        .take(max as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| GunzipError::Corrupt(e.to_string()))?;
    if out.len() > max {
        return Err(GunzipError::TooLarge);
    }
    Ok(out)
}

enum GunzipError {
    TooLarge,
    Corrupt(String),
}

async fn handle(
    State(s): State<Arc<State_>>,
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
    let raw: Bytes = match encoding.as_deref() {
        None | Some("identity") | Some("") => body,
        Some("gzip") => {
            let max = s.max_decompressed;
            // Inflating is CPU work: keep it off the async workers.
            match tokio::task::spawn_blocking(move || gunzip_bounded(&body, max)).await {
                Ok(Ok(v)) => v.into(),
                Ok(Err(GunzipError::TooLarge)) => {
                    return reject(
                        ErrorCode::PayloadTooLarge,
                        "too_large",
                        format!("decompressed body exceeds the limit of {max} bytes"),
                    );
                }
                Ok(Err(GunzipError::Corrupt(e))) => {
                    return reject(
                        ErrorCode::InvalidArgument,
                        "invalid",
                        format!("invalid gzip body: {e}"),
                    );
                }
                Err(e) => {
                    return reject(
                        ErrorCode::InvalidArgument,
                        "invalid",
                        format!("decompression failed: {e}"),
                    );
                }
            }
        }
        Some(other) => {
            return reject(
                ErrorCode::UnsupportedMediaType,
                "invalid",
                format!("unsupported Content-Encoding {other:?}; use gzip or none"),
            );
        }
    };
    let req = match enc {
        Encoding::Protobuf => ExportTraceServiceRequest::decode(raw).map_err(|e| e.to_string()),
        Encoding::Json => {
            serde_json::from_slice::<ExportTraceServiceRequest>(&raw).map_err(|e| e.to_string())
        }
    };
    let req = match req {
        Ok(r) => r,
        Err(e) => {
            return reject(
                ErrorCode::InvalidArgument,
                "invalid",
                format!("undecodable OTLP request: {e}"),
            );
        }
    };
    match export(&s.ingest, protocol, s.max_spans, req).await {
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
        Outcome::TooMany { limit, got } => status_response(
            enc,
            ErrorCode::PayloadTooLarge,
            format!("{got} spans in one request exceed the limit of {limit}; split the batch"),
        ),
        Outcome::Throttled(e) => status_response(enc, e.code(), e.otlp_message().into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn gunzip_is_bounded() {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(&vec![0u8; 10 * 1024 * 1024]).unwrap();
        let bomb = enc.finish().unwrap();
        assert!(
            bomb.len() < 64 * 1024,
            "10 MiB of zeros compress to {} bytes",
            bomb.len()
        );
        assert!(matches!(
            gunzip_bounded(&bomb, 1024 * 1024),
            Err(GunzipError::TooLarge)
        ));
        assert_eq!(
            gunzip_bounded(&bomb, 16 * 1024 * 1024)
                .ok()
                .map(|v| v.len()),
            Some(10 * 1024 * 1024)
        );
        assert!(matches!(
            gunzip_bounded(b"not gzip", 1024),
            Err(GunzipError::Corrupt(_))
        ));
    }

    #[test]
    fn every_gzip_member_is_inflated_within_one_bound() {
        let member = |data: &[u8]| {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            enc.write_all(data).unwrap();
            enc.finish().unwrap()
        };
        let mut two = member(b"first,");
        two.extend(member(b"second"));
        assert_eq!(
            gunzip_bounded(&two, 1024).ok().as_deref(),
            Some(&b"first,second"[..])
        );
        // The cap is for all members together.
        let mut big = member(&[0; 600]);
        big.extend(member(&[0; 600]));
        assert!(matches!(
            gunzip_bounded(&big, 1000),
            Err(GunzipError::TooLarge)
        ));
        // Trailing bytes that are not a member.
        let mut trailing = member(b"data");
        trailing.extend_from_slice(b"garbage");
        assert!(matches!(
            gunzip_bounded(&trailing, 1024),
            Err(GunzipError::Corrupt(_))
        ));
    }
}
