//! The core crate's error type.

/// Errors from parsing and checking model values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// An id had the wrong number of hex characters.
    #[error("{what} must be {expected} hex characters, got {actual}")]
    IdLength {
        what: &'static str,
        expected: usize,
        actual: usize,
    },
    /// An id contained a character that is not hex.
    #[error("{what} must contain only hex characters [0-9a-f]")]
    IdNotHex { what: &'static str },
    /// A timestamp was not RFC 3339 or out of range.
    #[error("invalid RFC 3339 timestamp {input:?}: {reason}")]
    Timestamp { input: String, reason: String },
    /// A duration string could not be parsed.
    #[error("invalid duration {input:?}: {reason}")]
    Duration { input: String, reason: String },
    /// An enum value (kind, status, link type) was not one of the known names.
    #[error("unknown {what} {input:?}; expected one of {expected}")]
    UnknownVariant {
        what: &'static str,
        input: String,
        expected: &'static str,
    },
    /// A query was internally inconsistent (for example `min_duration > max_duration`).
    #[error("invalid query: {0}")]
    Query(String),
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
