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
}

impl Default for QueryConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 16686)),
            request_timeout: ConfigDuration::from_secs(30),
            drain_timeout: ConfigDuration::from_secs(10),
        }
    }
}

impl QueryConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        if self.request_timeout.get().is_zero() {
            return Err(ConfigError::invalid(
                "query.request_timeout must be positive",
            ));
        }
        Ok(())
    }
}
