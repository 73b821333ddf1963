//! Connection limits of a listener (`collector.connections`, `query.connections`): how
//! many connections it holds and how long a slow or silent client may keep one.

use datatracing_core::ConfigDuration;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{ConfigError, Result};

/// Per-listener connection limits. Every listener of a section (the collector's HTTP and
/// gRPC listeners each) has its own count.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectionLimits {
    /// Most open connections on one listener. Further clients wait in the kernel's accept
    /// queue until a connection closes; keep the sum over listeners below the process's
    /// file descriptor limit.
    pub max_connections: usize,
    /// Time an HTTP/1 client has to send a request's complete headers, counted from when
    /// the server starts waiting for them (so it also closes a keep-alive connection idle
    /// between requests). Closes slow-header (slowloris) connections.
    pub header_read_timeout: ConfigDuration,
    /// A connection on which nothing is received or sent for this long is closed: before
    /// its first request, between gRPC calls, or a client that stops reading. Must exceed
    /// the section's `request_timeout`, so a request still being handled is never cut.
    pub idle_timeout: ConfigDuration,
    /// Requests one HTTP/1 connection serves before the server closes it
    /// (`Connection: close`), and concurrent calls (streams) on one gRPC connection.
    pub max_requests_per_connection: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_connections: 512,
            header_read_timeout: ConfigDuration::from_secs(10),
            idle_timeout: ConfigDuration::from_secs(60),
            max_requests_per_connection: 1000,
        }
    }
}

impl ConnectionLimits {
    /// Largest `max_connections` accepted.
    pub const MAX_CONNECTIONS_LIMIT: usize = 1_000_000;

    /// Checks the settings; `section` names them in messages, `request_timeout` is the
    /// section's.
    pub fn validate(&self, section: &str, request_timeout: ConfigDuration) -> Result<()> {
        let bad = |m: String| Err(ConfigError::invalid(m));
        if self.max_connections == 0 || self.max_connections > Self::MAX_CONNECTIONS_LIMIT {
            return bad(format!(
                "{section}.connections.max_connections must be between 1 and {}",
                Self::MAX_CONNECTIONS_LIMIT
            ));
        }
        if self.header_read_timeout.get().is_zero() {
            return bad(format!(
                "{section}.connections.header_read_timeout must be positive"
            ));
        }
        if self.idle_timeout.get() <= request_timeout.get() {
            return bad(format!(
                "{section}.connections.idle_timeout must exceed {section}.request_timeout"
            ));
        }
        if self.max_requests_per_connection == 0
            || u32::try_from(self.max_requests_per_connection).is_err()
        {
            return bad(format!(
                "{section}.connections.max_requests_per_connection must be between 1 and {}",
                u32::MAX
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_each_bound_is_named() {
        let t = ConfigDuration::from_secs(30);
        assert!(ConnectionLimits::default().validate("query", t).is_ok());
        for (c, needle) in [
            (
                ConnectionLimits {
                    max_connections: 0,
                    ..Default::default()
                },
                "query.connections.max_connections",
            ),
            (
                ConnectionLimits {
                    header_read_timeout: ConfigDuration::from_secs(0),
                    ..Default::default()
                },
                "header_read_timeout",
            ),
            (
                ConnectionLimits {
                    idle_timeout: ConfigDuration::from_secs(30),
                    ..Default::default()
                },
                "idle_timeout must exceed query.request_timeout",
            ),
            (
                ConnectionLimits {
                    max_requests_per_connection: 0,
                    ..Default::default()
                },
                "max_requests_per_connection",
            ),
        ] {
            let e = c.validate("query", t).unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
        }
    }
}
