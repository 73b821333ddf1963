//! The query server's settings (`query:`).

use std::net::SocketAddr;

use datatracing_core::ConfigDuration;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{ConfigError, Result};

/// Query service settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct QueryConfig {
    /// Address of the query HTTP server.
    pub listen: SocketAddr,
    /// A request taking longer than this is answered with 504.
    pub request_timeout: ConfigDuration,
    /// On shutdown, the longest wait for in-flight requests.
    pub drain_timeout: ConfigDuration,
    /// Most spans `GET /api/v1/traces/{id}` reads and returns; a larger trace comes back
    /// cut to its first spans by start time, marked `truncated`.
    pub max_trace_spans: usize,
}

impl Default for QueryConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 16686)),
            request_timeout: ConfigDuration::from_secs(30),
            drain_timeout: ConfigDuration::from_secs(10),
            max_trace_spans: Self::DEFAULT_MAX_TRACE_SPANS,
        }
    }
}

impl QueryConfig {
    /// Default of `max_trace_spans`.
    pub const DEFAULT_MAX_TRACE_SPANS: usize = 50_000;
    /// Largest `max_trace_spans` accepted (a response of that many spans is already large).
    pub const MAX_TRACE_SPANS_LIMIT: usize = 1_000_000;

    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        if self.max_trace_spans == 0 || self.max_trace_spans > Self::MAX_TRACE_SPANS_LIMIT {
            return Err(ConfigError::invalid(format!(
                "query.max_trace_spans must be between 1 and {}",
                Self::MAX_TRACE_SPANS_LIMIT
            )));
        }
        if self.request_timeout.get().is_zero() {
            return Err(ConfigError::invalid(
                "query.request_timeout must be positive",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_trace_spans_is_bounded() {
        assert!(QueryConfig::default().validate().is_ok());
        for bad in [0, QueryConfig::MAX_TRACE_SPANS_LIMIT + 1] {
            let c = QueryConfig {
                max_trace_spans: bad,
                ..QueryConfig::default()
            };
            assert!(
                c.validate()
                    .unwrap_err()
                    .to_string()
                    .contains("max_trace_spans"),
                "{bad}"
            );
        }
    }
}
