//! The embedded store's error type, and which SQLite failures are worth retrying.

use std::time::Duration;

use rusqlite::ErrorCode;

/// Errors from the embedded store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// SQLite failed; [`Error::is_transient`] says whether it may succeed later.
    #[error("embedded store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A stored value had an unexpected type.
    #[error("corrupt stored data: {0}")]
    Decode(#[from] rusqlite::types::FromSqlError),
    /// Filesystem trouble (data directory missing, not writable, disk full).
    #[error("storage I/O: {0}")]
    Io(#[from] std::io::Error),
    /// A stored row could not be decoded, or a span could not be encoded.
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
    /// A query ran longer than `query_timeout` and was interrupted.
    #[error("query exceeded {0:?}")]
    QueryTimeout(Duration),
    /// A blocking task running SQLite work failed to finish (it panicked or the runtime is
    /// shutting down).
    #[error("embedded store task failed: {0}")]
    Task(String),
    /// The store was closed.
    #[error("store is closed")]
    Closed,
    /// The store was opened read-only and was asked to write.
    #[error("store is read-only")]
    ReadOnly,
    /// The configuration is unusable.
    #[error("invalid storage configuration: {0}")]
    Config(String),
    /// Another process has the data directory open for writing.
    #[error(
        "the data directory {} is in use by a running collector or all-in-one (stop it first)",
        .0.display()
    )]
    InUse(std::path::PathBuf),
}

impl From<datatracing_config::ConfigError> for Error {
    fn from(e: datatracing_config::ConfigError) -> Self {
        Error::Config(e.to_string())
    }
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// SQLite result codes after which the same statement may succeed later: another
/// connection holds a lock, the disk is full or failing, memory ran out.
fn transient_code(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::DatabaseBusy
            | ErrorCode::DatabaseLocked
            | ErrorCode::DiskFull
            | ErrorCode::SystemIoFailure
            | ErrorCode::OutOfMemory
            | ErrorCode::FileLockingProtocolFailed
            | ErrorCode::OperationInterrupted
    )
}

/// I/O error kinds that retrying cannot fix: the path or its permissions are wrong.
fn permanent_io(kind: std::io::ErrorKind) -> bool {
    use std::io::ErrorKind as K;
    matches!(
        kind,
        K::PermissionDenied
            | K::ReadOnlyFilesystem
            | K::NotADirectory
            | K::IsADirectory
            | K::InvalidInput
            | K::InvalidData
            | K::Unsupported
    )
}

impl Error {
    /// Whether retrying the same operation later may succeed. Everything not known to be
    /// transient is permanent (constraint violations, a corrupt or read-only database,
    /// API misuse, a changed schema): retrying those would only repeat the failure.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Sqlite(e) => e.sqlite_error_code().is_some_and(transient_code),
            Error::Io(e) => !permanent_io(e.kind()),
            Error::QueryTimeout(_) | Error::Task(_) => true,
            Error::Decode(_)
            | Error::Corrupt(_)
            | Error::Closed
            | Error::ReadOnly
            | Error::Config(_)
            | Error::InUse(_) => false,
        }
    }
}

impl From<Error> for datatracing_store::Error {
    fn from(e: Error) -> Self {
        use datatracing_store::Error as E;
        if e.is_transient() {
            return E::Unavailable(e.to_string());
        }
        match e {
            Error::Closed => E::Closed,
            Error::ReadOnly => E::ReadOnly,
            Error::Config(m) => E::Config(m),
            Error::InUse(_) => E::Config(e.to_string()),
            Error::Decode(_) | Error::Corrupt(_) => E::Corrupt(e.to_string()),
            Error::Sqlite(ref s)
                if matches!(
                    s.sqlite_error_code(),
                    Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase)
                ) =>
            {
                E::Corrupt(e.to_string())
            }
            other => E::Rejected(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sqlite(code: i32) -> Error {
        Error::Sqlite(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(code),
            None,
        ))
    }

    #[test]
    fn sqlite_codes_are_classified() {
        use rusqlite::ffi;
        for code in [
            ffi::SQLITE_BUSY,
            ffi::SQLITE_LOCKED,
            ffi::SQLITE_FULL,
            ffi::SQLITE_IOERR,
            ffi::SQLITE_IOERR_FSYNC,
            ffi::SQLITE_NOMEM,
        ] {
            let e = sqlite(code);
            assert!(e.is_transient(), "{code}: {e}");
            assert!(matches!(
                datatracing_store::Error::from(e),
                datatracing_store::Error::Unavailable(_)
            ));
        }
        for code in [
            ffi::SQLITE_CONSTRAINT,
            ffi::SQLITE_CONSTRAINT_UNIQUE,
            ffi::SQLITE_READONLY,
            ffi::SQLITE_MISUSE,
            ffi::SQLITE_SCHEMA,
            ffi::SQLITE_ERROR,
        ] {
            let e = sqlite(code);
            assert!(!e.is_transient(), "{code}: {e}");
            assert!(matches!(
                datatracing_store::Error::from(e),
                datatracing_store::Error::Rejected(_)
            ));
        }
        for code in [ffi::SQLITE_CORRUPT, ffi::SQLITE_NOTADB] {
            let e = sqlite(code);
            assert!(!e.is_transient(), "{code}: {e}");
            assert!(matches!(
                datatracing_store::Error::from(e),
                datatracing_store::Error::Corrupt(_)
            ));
        }
    }

    #[test]
    fn other_errors_are_classified() {
        let full = Error::Io(std::io::Error::from(std::io::ErrorKind::StorageFull));
        assert!(full.is_transient());
        let denied = Error::Io(std::io::Error::from(std::io::ErrorKind::PermissionDenied));
        assert!(!denied.is_transient());
        assert!(Error::QueryTimeout(Duration::from_secs(1)).is_transient());
        assert_eq!(
            datatracing_store::Error::from(Error::ReadOnly),
            datatracing_store::Error::ReadOnly
        );
        assert_eq!(
            datatracing_store::Error::from(Error::Closed),
            datatracing_store::Error::Closed
        );
        assert!(matches!(
            datatracing_store::Error::from(Error::Config("x".into())),
            datatracing_store::Error::Config(_)
        ));
        let type_mismatch = Error::Sqlite(rusqlite::Error::InvalidColumnType(
            0,
            "id".into(),
            rusqlite::types::Type::Null,
        ));
        assert!(!type_mismatch.is_transient());
    }
}
