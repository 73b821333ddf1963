//! The error codes clients see, and the one table that maps each to an HTTP status and a gRPC
//! status code. Every protocol (the JSON API, OTLP/HTTP, OTLP/gRPC) answers through this table,
//! so the same failure gets the same meaning everywhere.

use axum::http::StatusCode;
use serde::Serialize;

/// Stable, machine-readable error codes. Clients switch on these, never on messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
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
    /// No valid credentials: the bearer token is missing, malformed or unknown.
    Unauthenticated,
    /// The token is valid but lacks the scope this route needs.
    PermissionDenied,
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
    /// Every code, for tables and tests.
    pub const ALL: [ErrorCode; 13] = [
        ErrorCode::InvalidArgument,
        ErrorCode::InvalidJson,
        ErrorCode::InvalidSpans,
        ErrorCode::NotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::Unauthenticated,
        ErrorCode::PermissionDenied,
        ErrorCode::PayloadTooLarge,
        ErrorCode::UnsupportedMediaType,
        ErrorCode::ResourceExhausted,
        ErrorCode::Unavailable,
        ErrorCode::Timeout,
        ErrorCode::Internal,
    ];

    /// The HTTP status for this code.
    pub fn http_status(self) -> StatusCode {
        match self {
            ErrorCode::InvalidArgument | ErrorCode::InvalidJson | ErrorCode::InvalidSpans => {
                StatusCode::BAD_REQUEST
            }
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::Unauthenticated => StatusCode::UNAUTHORIZED,
            ErrorCode::PermissionDenied => StatusCode::FORBIDDEN,
            ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The gRPC status code for this code; OTLP/HTTP puts the same code in its
    /// `google.rpc.Status` bodies.
    ///
    /// OTLP exporters retry `UNAVAILABLE` and `DEADLINE_EXCEEDED`, `RESOURCE_EXHAUSTED` when
    /// it carries a RetryInfo detail, and drop everything else, so a request that can never
    /// succeed (malformed: INVALID_ARGUMENT; too large: RESOURCE_EXHAUSTED without RetryInfo)
    /// must not look retryable.
    pub fn grpc_code(self) -> tonic::Code {
        match self {
            ErrorCode::InvalidArgument
            | ErrorCode::InvalidJson
            | ErrorCode::InvalidSpans
            | ErrorCode::UnsupportedMediaType => tonic::Code::InvalidArgument,
            // Not retried: RESOURCE_EXHAUSTED is retryable for OTLP only with a RetryInfo
            // detail, which only the retryable codes carry (see `From<ApiError> for Status`).
            ErrorCode::PayloadTooLarge => tonic::Code::ResourceExhausted,
            ErrorCode::NotFound => tonic::Code::NotFound,
            ErrorCode::MethodNotAllowed => tonic::Code::Unimplemented,
            ErrorCode::Unauthenticated => tonic::Code::Unauthenticated,
            ErrorCode::PermissionDenied => tonic::Code::PermissionDenied,
            ErrorCode::ResourceExhausted => tonic::Code::ResourceExhausted,
            ErrorCode::Unavailable => tonic::Code::Unavailable,
            ErrorCode::Timeout => tonic::Code::DeadlineExceeded,
            ErrorCode::Internal => tonic::Code::Internal,
        }
    }

    /// Whether a client may retry the same request later (the transport statuses agree).
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::ResourceExhausted | ErrorCode::Unavailable | ErrorCode::Timeout
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_lists_every_code_once() {
        let set: std::collections::HashSet<_> = ErrorCode::ALL.into_iter().collect();
        assert_eq!(set.len(), ErrorCode::ALL.len());
        // A new variant must be added to ALL: this match stops compiling otherwise.
        for code in ErrorCode::ALL {
            match code {
                ErrorCode::InvalidArgument
                | ErrorCode::InvalidJson
                | ErrorCode::InvalidSpans
                | ErrorCode::NotFound
                | ErrorCode::MethodNotAllowed
                | ErrorCode::Unauthenticated
                | ErrorCode::PermissionDenied
                | ErrorCode::PayloadTooLarge
                | ErrorCode::UnsupportedMediaType
                | ErrorCode::ResourceExhausted
                | ErrorCode::Unavailable
                | ErrorCode::Timeout
                | ErrorCode::Internal => {}
            }
        }
    }

    #[test]
    fn http_and_grpc_agree_on_what_is_retryable() {
        for code in ErrorCode::ALL {
            let http = code.http_status();
            let grpc = code.grpc_code();
            // RESOURCE_EXHAUSTED is retryable only with RetryInfo, which the gRPC status of
            // an error carries exactly when its code is retryable (tested in error.rs).
            let grpc_retryable = matches!(
                grpc,
                tonic::Code::ResourceExhausted
                    | tonic::Code::Unavailable
                    | tonic::Code::DeadlineExceeded
            ) && (grpc != tonic::Code::ResourceExhausted
                || code.is_retryable());
            assert_eq!(code.is_retryable(), grpc_retryable, "{code:?}");
            let http_retryable = matches!(http.as_u16(), 429 | 503 | 504);
            assert_eq!(code.is_retryable(), http_retryable, "{code:?}");
            assert!(http.is_client_error() || http.is_server_error(), "{code:?}");
        }
    }

    #[test]
    fn the_table() {
        let table: Vec<_> = ErrorCode::ALL
            .into_iter()
            .map(|c| (c, c.http_status().as_u16(), c.grpc_code()))
            .collect();
        use tonic::Code as G;
        assert_eq!(
            table,
            vec![
                (ErrorCode::InvalidArgument, 400, G::InvalidArgument),
                (ErrorCode::InvalidJson, 400, G::InvalidArgument),
                (ErrorCode::InvalidSpans, 400, G::InvalidArgument),
                (ErrorCode::NotFound, 404, G::NotFound),
                (ErrorCode::MethodNotAllowed, 405, G::Unimplemented),
                (ErrorCode::Unauthenticated, 401, G::Unauthenticated),
                (ErrorCode::PermissionDenied, 403, G::PermissionDenied),
                (ErrorCode::PayloadTooLarge, 413, G::ResourceExhausted),
                (ErrorCode::UnsupportedMediaType, 415, G::InvalidArgument),
                (ErrorCode::ResourceExhausted, 429, G::ResourceExhausted),
                (ErrorCode::Unavailable, 503, G::Unavailable),
                (ErrorCode::Timeout, 504, G::DeadlineExceeded),
                (ErrorCode::Internal, 500, G::Internal),
            ]
        );
    }
}
