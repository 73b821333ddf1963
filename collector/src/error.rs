//! The collector crate's error type.

/// Errors that stop the collector (request-level problems become HTTP responses instead).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is unusable.
    #[error("invalid collector configuration: {0}")]
    Config(String),
    /// Listening or serving failed.
    #[error(transparent)]
    Serve(#[from] datatracing_http::ServeError),
    /// Socket trouble.
    #[error("collector I/O: {0}")]
    Io(#[from] std::io::Error),
}

impl From<datatracing_config::ConfigError> for Error {
    fn from(e: datatracing_config::ConfigError) -> Self {
        Error::Config(e.to_string())
    }
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
