//! The store crate's error type.

/// Errors from a trace store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The backend cannot take the request now; retrying later may succeed.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// The embedded engine failed.
    #[error("embedded store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// Filesystem trouble (data directory missing, not writable, disk full).
    #[error("storage I/O: {0}")]
    Io(#[from] std::io::Error),
    /// A stored value had an unexpected type.
    #[error("corrupt stored data: {0}")]
    Decode(#[from] rusqlite::types::FromSqlError),
    /// A stored row could not be decoded.
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
    /// The store was closed.
    #[error("store is closed")]
    Closed,
    /// The store was opened read-only and was asked to write.
    #[error("store is read-only")]
    ReadOnly,
    /// The configuration is unusable.
    #[error("invalid storage configuration: {0}")]
    Config(String),
    /// The backend refused the request and retrying it unchanged will not help (a schema
    /// mismatch, bad credentials, a rejected insert).
    #[error("storage rejected the request: {0}")]
    Rejected(String),
}

impl Error {
    /// Whether retrying the same operation later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Unavailable(_) => true,
            Error::Sqlite(e) => matches!(
                e.sqlite_error_code(),
                Some(
                    rusqlite::ErrorCode::DatabaseBusy
                        | rusqlite::ErrorCode::DatabaseLocked
                        | rusqlite::ErrorCode::DiskFull
                )
            ),
            Error::Io(_) => true,
            _ => false,
        }
    }
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
