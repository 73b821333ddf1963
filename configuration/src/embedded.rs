//! The embedded (SQLite) store's settings (`storage.embedded:`).

use std::path::PathBuf;
use std::time::Duration;

use datatracing_core::ConfigDuration;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{ConfigError, Result};

/// How hard commits are flushed to disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    /// fsync the write-ahead log on every commit: acknowledged spans survive power loss.
    #[default]
    Full,
    /// No fsync on commit: acknowledged spans survive a process crash (`kill -9`) but not
    /// power loss. Faster on slow disks.
    Normal,
}

/// Configuration of the embedded store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct EmbeddedConfig {
    /// Directory holding the database files; created if missing.
    pub data_dir: PathBuf,
    /// Spans that started longer ago than this are deleted in the background; `0` keeps
    /// everything.
    pub retention: ConfigDuration,
    /// How often retention runs.
    pub retention_interval: ConfigDuration,
    /// Flush policy for commits.
    pub synchronous: Synchronous,
    /// Read connections (concurrent queries).
    pub read_connections: usize,
    /// A query running longer than this is interrupted and fails.
    pub query_timeout: ConfigDuration,
    /// Page cache per connection, in MiB.
    pub cache_mib: u32,
}

impl Default for EmbeddedConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./data"),
            retention: ConfigDuration::from_secs(7 * 24 * 3600),
            retention_interval: ConfigDuration::from_secs(300),
            synchronous: Synchronous::Full,
            read_connections: 4,
            query_timeout: ConfigDuration::from_secs(10),
            cache_mib: 16,
        }
    }
}

impl EmbeddedConfig {
    /// A configuration for the given directory, other settings default.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            ..Self::default()
        }
    }

    /// Checks the configuration.
    pub fn validate(&self) -> Result<()> {
        if self.data_dir.as_os_str().is_empty() {
            return Err(ConfigError::invalid(
                "storage.embedded.data_dir must not be empty",
            ));
        }
        if self.read_connections == 0 || self.read_connections > 64 {
            return Err(ConfigError::invalid(
                "storage.embedded.read_connections must be 1..=64",
            ));
        }
        if !self.retention.get().is_zero() && self.retention_interval.get() < Duration::from_secs(1)
        {
            return Err(ConfigError::invalid(
                "storage.embedded.retention_interval must be at least 1s",
            ));
        }
        if self.query_timeout.get().is_zero() {
            return Err(ConfigError::invalid(
                "storage.embedded.query_timeout must be positive",
            ));
        }
        Ok(())
    }
}
