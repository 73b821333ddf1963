//! The error envelope.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// Stable, machine-readable error codes. Clients switch on these, never on messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// A parameter or field is invalid.
    InvalidArgument,
    /// The body is not valid JSON or does not have the expected shape.
    InvalidJson,
    /// Every span of a batch was rejected.
    InvalidSpans,
    /// No such resource (trace, route).
    NotFound,
    /// The route exists, the method does not.
    MethodNotAllowed,
    /// The body exceeds the configured limit.
    PayloadTooLarge,
    /// The content type is not accepted here.
    UnsupportedMediaType,
    /// The server is overloaded; retry after the indicated delay.
    ResourceExhausted,
    /// A dependency (the store) is down, or the server is shutting down.
    Unavailable,
    /// The request took too long.
    Timeout,
    /// A bug or an unexpected failure; details are in the server log.
    Internal,
}

impl ErrorCode {
    /// The HTTP status for this code.
    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::InvalidArgument | ErrorCode::InvalidJson | ErrorCode::InvalidSpans => {
                StatusCode::BAD_REQUEST
            }
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

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
        let mut resp = (self.code.status(), axum::Json(self.body())).into_response();
        if let Some(secs) = self.retry_after_secs
            && let Ok(v) = secs.to_string().parse()
        {
            resp.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, v);
        }
        resp
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
