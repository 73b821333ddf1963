//! The core crate's error type.

/// Errors from parsing and checking model values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// An id had the wrong number of hex characters.
    #[error("{what} must be {expected} hex characters, got {actual}")]
    IdLength {
        /// Which id (`trace_id`, `span_id`, ...).
        what: &'static str,
        /// The length it must have.
        expected: usize,
        /// The length it had.
        actual: usize,
    },
    /// An id contained a character that is not hex.
    #[error("{what} must contain only hex characters [0-9a-f]")]
    IdNotHex {
        /// Which id.
        what: &'static str,
    },
    /// A timestamp was not RFC 3339 or out of range.
    #[error("invalid RFC 3339 timestamp {input:?}: {reason}")]
    Timestamp {
        /// The text given.
        input: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A duration string could not be parsed.
    #[error("invalid duration {input:?}: {reason}")]
    Duration {
        /// The text given.
        input: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An enum value (kind, status, link type) was not one of the known names.
    #[error("unknown {what} {input:?}; expected one of {expected}")]
    UnknownVariant {
        /// Which enum (`span kind`, `status code`, `link type`).
        what: &'static str,
        /// The name given (cut to 64 characters).
        input: String,
        /// The accepted names, space-separated.
        expected: &'static str,
    },
    /// A query was internally inconsistent (for example `min_duration > max_duration`).
    #[error("invalid query: {0}")]
    Query(String),
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
