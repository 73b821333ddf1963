//! The crate's one error type: loading and checking configuration.

/// Errors loading or checking configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// `${VAR}` without a default, and VAR is not set.
    #[error("config references ${{{0}}}, which is not set (use ${{{0}:-default}} for a default)")]
    MissingVar(String),
    /// `${` without a closing brace.
    #[error("unterminated ${{...}} in config at byte {0}")]
    Unterminated(usize),
    /// The YAML does not match the schema (unknown key, wrong type).
    #[error("invalid config: {0}")]
    Parse(#[from] serde_saphyr::Error),
    /// A value is out of range or settings conflict. The message names the key.
    #[error("{0}")]
    Invalid(String),
    /// A file named by the configuration (such as a password file) could not be read.
    #[error("cannot read {what} {path}: {source}")]
    ReadReferenced {
        /// Which setting named the file.
        what: &'static str,
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

impl ConfigError {
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        ConfigError::Invalid(message.into())
    }
}

/// `Result` with [`ConfigError`].
pub type Result<T, E = ConfigError> = std::result::Result<T, E>;
