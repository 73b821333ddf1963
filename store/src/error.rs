//! The backend-neutral storage error: what went wrong, and whether retrying may help.

/// Errors from a trace store, whatever the backend.
///
/// Exactly one variant is transient ([`Error::Unavailable`]); every other variant is
/// permanent: the same request will fail the same way until something outside the request
/// changes. Backends classify their own errors into these (a busy SQLite database is
/// `Unavailable`, a constraint violation `Rejected`). Messages are for logs, not clients.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The backend cannot take the request now (busy, unreachable, out of disk, timed
    /// out); retrying later may succeed.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// The backend refused the request and retrying it unchanged will not help (a schema
    /// mismatch, a constraint violation, bad credentials, a rejected insert).
    #[error("storage rejected the request: {0}")]
    Rejected(String),
    /// Stored data could not be decoded, or the database itself is damaged.
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
}

impl Error {
    /// Whether retrying the same operation later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Unavailable(_))
    }

    /// Whether retrying the same operation unchanged is pointless.
    pub fn is_permanent(&self) -> bool {
        !self.is_transient()
    }
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::Error;

    #[test]
    fn only_unavailable_is_transient() {
        assert!(Error::Unavailable("busy".into()).is_transient());
        for permanent in [
            Error::Rejected("constraint".into()),
            Error::Corrupt("bad row".into()),
            Error::Closed,
            Error::ReadOnly,
            Error::Config("bad".into()),
        ] {
            assert!(permanent.is_permanent(), "{permanent:?}");
            assert!(!permanent.is_transient(), "{permanent:?}");
        }
    }
}
