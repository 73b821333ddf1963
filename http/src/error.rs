//! The error envelope.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::code::ErrorCode;

/// One item of `details`: which span (by index in the request) or field, and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ErrorDetail {
    /// Index of the span in the request's `spans` array.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    /// Field path, e.g. `trace_id` or `attributes.rows`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// What is wrong.
    pub message: String,
}

/// An error as a client sees it.
#[derive(Clone, Debug)]
pub struct ApiError {
    /// Machine-readable code (decides the status).
    pub code: ErrorCode,
    /// Human-readable message, safe to show (no internals).
    pub message: String,
    /// Per-item problems.
    pub details: Vec<ErrorDetail>,
    /// Seconds a client should wait before retrying (`Retry-After`).
    pub retry_after_secs: Option<u64>,
}

impl ApiError {
    /// An error with a code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            details: Vec::new(),
            retry_after_secs: None,
        }
    }

    /// 400 invalid_argument.
    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidArgument, message)
    }

    /// 404 not_found.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    /// 500 with a generic message; the real cause is logged here and never sent.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(ErrorCode::Internal, "internal error; see the server log")
    }

    /// Adds details.
    pub fn with_details(mut self, details: Vec<ErrorDetail>) -> Self {
        self.details = details;
        self
    }

    /// Adds a `Retry-After`.
    pub fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after_secs = Some(secs);
        self
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({
            "error": {
                "code": self.code,
                "message": self.message,
                "details": self.details,
            }
        })
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.code, self.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.code.http_status(), axum::Json(self.body())).into_response();
        if let Some(secs) = self.retry_after_secs
            && let Ok(v) = secs.to_string().parse()
        {
            resp.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, v);
        }
        resp
    }
}

/// The same error for a gRPC client: the code through [`ErrorCode::grpc_code`], the message
/// as is, and a retryable error's `Retry-After` as a `google.rpc.RetryInfo` detail. OTLP
/// exporters retry RESOURCE_EXHAUSTED only when it carries RetryInfo, so a throttled request
/// is retried and an oversized one (RESOURCE_EXHAUSTED without it) is not.
impl From<ApiError> for tonic::Status {
    fn from(e: ApiError) -> Self {
        let code = e.code.grpc_code();
        match e.retry_after_secs {
            Some(secs) if e.code.is_retryable() => {
                let details = rpc::Status {
                    code: code as i32,
                    message: e.message.clone(),
                    details: vec![rpc::Any {
                        type_url: "type.googleapis.com/google.rpc.RetryInfo".into(),
                        value: prost::Message::encode_to_vec(&rpc::RetryInfo {
                            retry_delay: Some(rpc::Duration {
                                seconds: i64::try_from(secs).unwrap_or(i64::MAX),
                                nanos: 0,
                            }),
                        }),
                    }],
                };
                tonic::Status::with_details(
                    code,
                    e.message,
                    prost::Message::encode_to_vec(&details).into(),
                )
            }
            _ => tonic::Status::new(code, e.message),
        }
    }
}

/// The few `google.rpc` messages a gRPC error detail needs.
pub mod rpc {
    /// `google.rpc.Status`, carried in `grpc-status-details-bin`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Status {
        /// The gRPC code.
        #[prost(int32, tag = "1")]
        pub code: i32,
        /// The message.
        #[prost(string, tag = "2")]
        pub message: String,
        /// Typed details.
        #[prost(message, repeated, tag = "3")]
        pub details: Vec<Any>,
    }

    /// `google.protobuf.Any`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Any {
        /// `type.googleapis.com/<message name>`.
        #[prost(string, tag = "1")]
        pub type_url: String,
        /// The encoded message.
        #[prost(bytes = "vec", tag = "2")]
        pub value: Vec<u8>,
    }

    /// `google.rpc.RetryInfo`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RetryInfo {
        /// How long to wait before retrying.
        #[prost(message, optional, tag = "1")]
        pub retry_delay: Option<Duration>,
    }

    /// `google.protobuf.Duration`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Duration {
        /// Whole seconds.
        #[prost(int64, tag = "1")]
        pub seconds: i64,
        /// Nanoseconds.
        #[prost(int32, tag = "2")]
        pub nanos: i32,
    }
}

impl From<datatracing_store::Error> for ApiError {
    fn from(e: datatracing_store::Error) -> Self {
        if e.is_transient() || matches!(e, datatracing_store::Error::Closed) {
            tracing::warn!(error = %e, "storage unavailable");
            ApiError::new(
                ErrorCode::Unavailable,
                "storage is temporarily unavailable; retry later",
            )
            .with_retry_after(1)
        } else {
            ApiError::internal(&e)
        }
    }
}

impl From<datatracing_core::Error> for ApiError {
    fn from(e: datatracing_core::Error) -> Self {
        ApiError::invalid_argument(e.to_string())
    }
}

impl From<axum::extract::rejection::BytesRejection> for ApiError {
    fn from(r: axum::extract::rejection::BytesRejection) -> Self {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                ErrorCode::PayloadTooLarge,
                "request body exceeds the configured limit",
            )
        } else {
            ApiError::invalid_argument(format!(
                "could not read the request body: {}",
                r.body_text()
            ))
        }
    }
}

impl From<axum::extract::rejection::QueryRejection> for ApiError {
    fn from(r: axum::extract::rejection::QueryRejection) -> Self {
        ApiError::invalid_argument(r.body_text())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn retryable_grpc_errors_carry_retry_info_and_others_do_not() {
        let throttled: tonic::Status = ApiError::new(ErrorCode::ResourceExhausted, "busy")
            .with_retry_after(2)
            .into();
        assert_eq!(throttled.code(), tonic::Code::ResourceExhausted);
        let status = rpc::Status::decode(throttled.details()).unwrap();
        assert_eq!(status.details.len(), 1);
        assert_eq!(
            status.details[0].type_url,
            "type.googleapis.com/google.rpc.RetryInfo"
        );
        let info = rpc::RetryInfo::decode(&status.details[0].value[..]).unwrap();
        assert_eq!(info.retry_delay.unwrap().seconds, 2);

        let too_large: tonic::Status =
            ApiError::new(ErrorCode::PayloadTooLarge, "too large").into();
        assert_eq!(too_large.code(), tonic::Code::ResourceExhausted);
        assert!(too_large.details().is_empty());
    }
}
