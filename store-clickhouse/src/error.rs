//! The ClickHouse crate's error type, and how client errors are classified.

/// Errors from ClickHouse operations.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is unusable.
    #[error("invalid ClickHouse configuration: {0}")]
    Config(String),
    /// The server could not be reached (connection refused, reset, DNS).
    #[error("ClickHouse unreachable: {0}")]
    Unreachable(String),
    /// The server rejected the credentials.
    #[error("ClickHouse authentication failed: {0}")]
    Auth(String),
    /// A query or insert took longer than allowed.
    #[error("ClickHouse timed out: {0}")]
    Timeout(String),
    /// The table does not match what we write or read.
    #[error("ClickHouse schema mismatch: {0}")]
    Schema(String),
    /// The server answered with an exception.
    #[error("ClickHouse error{}: {message}", code.map(|c| format!(" {c}")).unwrap_or_default())]
    Server {
        /// ClickHouse's error code, when it sent one.
        code: Option<u32>,
        /// Its message.
        message: String,
    },
    /// TLS to the server failed: its certificate does not verify against the configured
    /// CAs, or the CA file is unusable. Not retried: the same certificate fails again.
    #[error("ClickHouse TLS: {0} (check storage.clickhouse.ca_file and the server's certificate)")]
    Tls(String),
    /// Anything else the client reported.
    #[error("ClickHouse client: {0}")]
    Client(String),
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Error codes after which the same request may succeed later.
const TRANSIENT_CODES: &[u32] = &[
    3,   // UNEXPECTED_END_OF_FILE
    159, // TIMEOUT_EXCEEDED
    164, // READONLY (a replica catching up)
    202, // TOO_MANY_SIMULTANEOUS_QUERIES
    209, // SOCKET_TIMEOUT
    210, // NETWORK_ERROR
    241, // MEMORY_LIMIT_EXCEEDED
    242, // TABLE_IS_READ_ONLY
    252, // TOO_MANY_PARTS
    285, // TOO_FEW_LIVE_REPLICAS
    319, // UNKNOWN_STATUS_OF_INSERT
    425, // SYSTEM_ERROR
    999, // KEEPER_EXCEPTION
];
const AUTH_CODES: &[u32] = &[192, 193, 194, 516];

fn parse_code(message: &str) -> Option<u32> {
    let rest = &message[message.find("Code: ")? + 6..];
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

impl From<datatracing_config::ConfigError> for Error {
    fn from(e: datatracing_config::ConfigError) -> Self {
        Error::Config(e.to_string())
    }
}

impl Error {
    /// Whether retrying the same request later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Unreachable(_) | Error::Timeout(_) => true,
            Error::Server { code: Some(c), .. } => TRANSIENT_CODES.contains(c),
            Error::Server {
                code: None,
                message,
            } => ["502", "503", "504"].iter().any(|s| message.contains(s)),
            _ => false,
        }
    }

    /// A short, bounded label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Config(_) => "config",
            Error::Unreachable(_) => "unreachable",
            Error::Auth(_) => "auth",
            Error::Timeout(_) => "timeout",
            Error::Schema(_) => "schema",
            Error::Server { .. } if self.is_transient() => "server_transient",
            Error::Server { .. } => "server_rejected",
            Error::Tls(_) => "tls",
            Error::Client(_) => "client",
        }
    }
}

impl From<clickhouse::error::Error> for Error {
    fn from(e: clickhouse::error::Error) -> Self {
        use clickhouse::error::Error as C;
        match e {
            C::Network(inner) => match crate::client::tls_cause(&*inner) {
                Some(tls) => Error::Tls(tls),
                None => Error::Unreachable(crate::client::chain(&*inner)),
            },
            C::TimedOut => Error::Timeout("the server did not answer in time".into()),
            C::SchemaMismatch(m) => Error::Schema(m),
            C::BadResponse(message) => {
                let code = parse_code(&message);
                if code.is_some_and(|c| AUTH_CODES.contains(&c)) {
                    Error::Auth(message)
                } else if code == Some(159) {
                    Error::Timeout(message)
                } else {
                    Error::Server { code, message }
                }
            }
            other => Error::Client(other.to_string()),
        }
    }
}

impl From<Error> for datatracing_store::Error {
    fn from(e: Error) -> Self {
        if e.is_transient() {
            datatracing_store::Error::Unavailable(e.to_string())
        } else {
            datatracing_store::Error::Rejected(e.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_server_errors() {
        let e: Error = clickhouse::error::Error::BadResponse(
            "Code: 516. DB::Exception: default: Authentication failed".into(),
        )
        .into();
        assert!(matches!(e, Error::Auth(_)));
        assert!(!e.is_transient());
        let e: Error = clickhouse::error::Error::BadResponse(
            "Code: 252. DB::Exception: Too many parts".into(),
        )
        .into();
        assert!(e.is_transient());
        assert_eq!(e.reason(), "server_transient");
        let e: Error =
            clickhouse::error::Error::BadResponse("Code: 53. DB::Exception: Type mismatch".into())
                .into();
        assert!(!e.is_transient());
        assert_eq!(e.reason(), "server_rejected");
        let e: Error = clickhouse::error::Error::TimedOut.into();
        assert!(e.is_transient());
        assert_eq!(parse_code("no code"), None);
    }
}
