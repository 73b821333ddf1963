//! The query server's settings (`query:`).

use std::net::SocketAddr;

use datatracing_core::ConfigDuration;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{ConfigError, ConnectionLimits, Result, TlsConfig};

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
    /// Bounds of `GET /api/v1/traces/{id}/lineage`.
    pub lineage: LineageConfig,
    /// Most expensive reads (trace fetches, span pages, searches, lineage, and Jaeger's
    /// trace and search endpoints) running at once; listings, probes and metrics are not
    /// counted. Bounds the memory and store load a burst of large reads can take.
    pub max_concurrent_reads: usize,
    /// Most expensive reads waiting for a slot; one more is answered at once with 429
    /// (`resource_exhausted`, `Retry-After`). A wait is bounded by `request_timeout`.
    pub max_queued_reads: usize,
    /// Connection limits of the query listener.
    pub connections: ConnectionLimits,
    /// TLS on the query listener; absent: the file's top-level `tls`, if any.
    pub tls: Option<TlsConfig>,
}

/// Bounds of lineage queries (`query.lineage`): how far and how wide a walk across linked
/// traces may go. A graph cut by either bound is marked `truncated`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LineageConfig {
    /// Link hops walked when the request gives no `depth`.
    pub default_depth: usize,
    /// Largest `depth` a request may ask for.
    pub max_depth: usize,
    /// Most traces in one lineage graph, the root included.
    pub max_nodes: usize,
}

impl Default for LineageConfig {
    fn default() -> Self {
        Self {
            default_depth: 3,
            max_depth: 10,
            max_nodes: 1000,
        }
    }
}

impl LineageConfig {
    /// Largest `max_depth` accepted.
    pub const MAX_DEPTH_LIMIT: usize = 100;
    /// Largest `max_nodes` accepted (each level reads the links of up to this many traces).
    pub const MAX_NODES_LIMIT: usize = 100_000;

    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        if self.max_depth == 0 || self.max_depth > Self::MAX_DEPTH_LIMIT {
            return Err(ConfigError::invalid(format!(
                "query.lineage.max_depth must be between 1 and {}",
                Self::MAX_DEPTH_LIMIT
            )));
        }
        if self.default_depth == 0 || self.default_depth > self.max_depth {
            return Err(ConfigError::invalid(
                "query.lineage.default_depth must be between 1 and query.lineage.max_depth",
            ));
        }
        if self.max_nodes == 0 || self.max_nodes > Self::MAX_NODES_LIMIT {
            return Err(ConfigError::invalid(format!(
                "query.lineage.max_nodes must be between 1 and {}",
                Self::MAX_NODES_LIMIT
            )));
        }
        Ok(())
    }
}

impl Default for QueryConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 16686)),
            request_timeout: ConfigDuration::from_secs(30),
            drain_timeout: ConfigDuration::from_secs(10),
            max_trace_spans: Self::DEFAULT_MAX_TRACE_SPANS,
            lineage: LineageConfig::default(),
            max_concurrent_reads: Self::DEFAULT_MAX_CONCURRENT_READS,
            max_queued_reads: Self::DEFAULT_MAX_QUEUED_READS,
            connections: ConnectionLimits::default(),
            tls: None,
        }
    }
}

impl QueryConfig {
    /// Default of `max_trace_spans`.
    pub const DEFAULT_MAX_TRACE_SPANS: usize = 50_000;
    /// Largest `max_trace_spans` accepted (a response of that many spans is already large).
    pub const MAX_TRACE_SPANS_LIMIT: usize = 1_000_000;

    /// Default of `max_concurrent_reads`: a fixed number, not one per core, since the
    /// store (often a separate ClickHouse) does most of the work.
    pub const DEFAULT_MAX_CONCURRENT_READS: usize = 8;
    /// Default of `max_queued_reads`.
    pub const DEFAULT_MAX_QUEUED_READS: usize = 32;
    /// Largest `max_concurrent_reads` and `max_queued_reads` accepted.
    pub const MAX_READS_LIMIT: usize = 4096;

    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        if self.max_concurrent_reads == 0 || self.max_concurrent_reads > Self::MAX_READS_LIMIT {
            return Err(ConfigError::invalid(format!(
                "query.max_concurrent_reads must be between 1 and {}",
                Self::MAX_READS_LIMIT
            )));
        }
        if self.max_queued_reads > Self::MAX_READS_LIMIT {
            return Err(ConfigError::invalid(format!(
                "query.max_queued_reads must be at most {}",
                Self::MAX_READS_LIMIT
            )));
        }
        if self.max_trace_spans == 0 || self.max_trace_spans > Self::MAX_TRACE_SPANS_LIMIT {
            return Err(ConfigError::invalid(format!(
                "query.max_trace_spans must be between 1 and {}",
                Self::MAX_TRACE_SPANS_LIMIT
            )));
        }
        self.lineage.validate()?;
        if self.request_timeout.get().is_zero() {
            return Err(ConfigError::invalid(
                "query.request_timeout must be positive",
            ));
        }
        self.connections.validate("query", self.request_timeout)?;
        if let Some(t) = &self.tls {
            t.validate("query.tls")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lineage_bounds_are_checked() {
        for (bad, needle) in [
            (
                LineageConfig {
                    max_depth: 0,
                    ..LineageConfig::default()
                },
                "max_depth",
            ),
            (
                LineageConfig {
                    default_depth: 11,
                    ..LineageConfig::default()
                },
                "default_depth",
            ),
            (
                LineageConfig {
                    max_nodes: 0,
                    ..LineageConfig::default()
                },
                "max_nodes",
            ),
        ] {
            let c = QueryConfig {
                lineage: bad,
                ..QueryConfig::default()
            };
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
        }
    }

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

    #[test]
    fn read_concurrency_is_bounded() {
        for (c, needle) in [
            (
                QueryConfig {
                    max_concurrent_reads: 0,
                    ..QueryConfig::default()
                },
                "max_concurrent_reads",
            ),
            (
                QueryConfig {
                    max_concurrent_reads: QueryConfig::MAX_READS_LIMIT + 1,
                    ..QueryConfig::default()
                },
                "max_concurrent_reads",
            ),
            (
                QueryConfig {
                    max_queued_reads: QueryConfig::MAX_READS_LIMIT + 1,
                    ..QueryConfig::default()
                },
                "max_queued_reads",
            ),
        ] {
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
        }
        let no_queue = QueryConfig {
            max_queued_reads: 0,
            ..QueryConfig::default()
        };
        assert!(no_queue.validate().is_ok(), "no waiting at all is allowed");
    }
}
