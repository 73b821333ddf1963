//! The ClickHouse store's settings (`storage.clickhouse:`).

use std::path::PathBuf;

use datatracing_core::ConfigDuration;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{ConfigError, Result};

/// How insert bodies are compressed on the wire.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// ClickHouse's LZ4 block framing (the default).
    #[default]
    Lz4,
    /// No compression.
    None,
}

/// ClickHouse store settings.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ClickHouseConfig {
    /// HTTP URL of a ClickHouse server (or load balancer), e.g. `http://clickhouse:8123`,
    /// or `https://clickhouse:8443` for TLS.
    pub url: String,
    /// With an `https://` URL: a PEM file with the CAs the server's certificate must chain
    /// to (a private CA, a mounted Secret). Absent: the system's trust store.
    pub ca_file: Option<PathBuf>,
    /// Database holding the trace tables.
    pub database: String,
    /// User name.
    pub user: String,
    /// Password. Prefer `password_file` or the `DATATRACING_CLICKHOUSE_PASSWORD` variable;
    /// never printed or logged.
    #[serde(skip_serializing)]
    pub password: String,
    /// File whose content (trimmed) is the password, e.g. a mounted Kubernetes Secret.
    pub password_file: Option<PathBuf>,
    /// Cluster name for clustered installs: DDL runs `ON CLUSTER`, tables are Replicated*
    /// with Distributed tables in front. Absent for a single node.
    pub cluster: Option<String>,
    /// Insert compression.
    pub compression: Compression,
    /// Apply schema migrations at start-up (processes that write; a query process opens a
    /// reader, which never migrates).
    pub migrate_on_start: bool,
    /// Retention given to tables when they are first created, in days.
    pub initial_retention_days: u32,
    /// Maintain the `span_attributes` table for fast attribute equality search. Off by
    /// default: it roughly doubles storage per span (docs/clickhouse.md). Decide before the
    /// first migration; turning it on later creates the table for new data only.
    pub attribute_index: bool,
    /// Write batching.
    pub batch: ClickHouseBatchConfig,
    /// Attempts per insert on transient errors before giving up (every attempt carries the
    /// insert's deduplication token). The collector does not retry on top of this.
    pub max_attempts: u32,
    /// First retry delay; doubles per attempt (plus up to 100% jitter) up to
    /// `max_retry_backoff`.
    pub retry_backoff: ConfigDuration,
    /// Longest retry delay.
    pub max_retry_backoff: ConfigDuration,
    /// At start-up, how long to wait for the server to answer before failing.
    pub connect_timeout: ConfigDuration,
    /// Longest a query may run (sent as `max_execution_time` and enforced client-side).
    pub query_timeout: ConfigDuration,
    /// Longest an insert may take.
    pub insert_timeout: ConfigDuration,
}

/// Insert grouping. A write is inserted as soon as an insert slot is free (after
/// `flush_interval`, when set); writes that arrive while all `max_concurrent_inserts` slots
/// are busy are merged into the next insert, up to `max_rows` and `max_bytes`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ClickHouseBatchConfig {
    /// Rows per insert at most.
    pub max_rows: usize,
    /// Approximate bytes per insert at most.
    pub max_bytes: usize,
    /// How long a write waits for more writes to join its insert before it is sent. Zero
    /// (the default) sends at once: the collector groups spans already, so a second wait
    /// would only add latency. Set it for callers that write many tiny batches.
    pub flush_interval: ConfigDuration,
    /// Inserts in flight at once.
    pub max_concurrent_inserts: usize,
}

impl Default for ClickHouseConfig {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:8123".into(),
            ca_file: None,
            database: "datatracing".into(),
            user: "default".into(),
            password: String::new(),
            password_file: None,
            cluster: None,
            compression: Compression::Lz4,
            migrate_on_start: true,
            initial_retention_days: 7,
            attribute_index: false,
            batch: ClickHouseBatchConfig::default(),
            max_attempts: 5,
            retry_backoff: ConfigDuration::from_millis(200),
            max_retry_backoff: ConfigDuration::from_secs(10),
            connect_timeout: ConfigDuration::from_secs(30),
            query_timeout: ConfigDuration::from_secs(30),
            insert_timeout: ConfigDuration::from_secs(60),
        }
    }
}

impl Default for ClickHouseBatchConfig {
    fn default() -> Self {
        Self {
            max_rows: 100_000,
            max_bytes: 64 * 1024 * 1024,
            flush_interval: ConfigDuration::from_millis(0),
            max_concurrent_inserts: 2,
        }
    }
}

impl std::fmt::Debug for ClickHouseConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClickHouseConfig")
            .field("url", &self.url)
            .field("ca_file", &self.ca_file)
            .field("database", &self.database)
            .field("user", &self.user)
            .field(
                "password",
                &if self.password.is_empty() {
                    ""
                } else {
                    "<redacted>"
                },
            )
            .field("password_file", &self.password_file)
            .field("cluster", &self.cluster)
            .finish_non_exhaustive()
    }
}

/// Whether a URL's authority (between `scheme://` and the path) has a `user[:password]@`
/// part. Without a scheme, the text before the first `/` is taken as the authority.
fn url_has_userinfo(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    authority.contains('@')
}

fn valid_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !s.starts_with(|c: char| c.is_ascii_digit())
}

impl ClickHouseConfig {
    /// Checks the settings. Database and cluster names go into DDL, so they must be plain
    /// identifiers.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        self.validate_url_credentials()?;
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return bad(format!(
                "storage.clickhouse.url must be an http(s) URL, got {:?}",
                self.url
            ));
        }
        if self.ca_file.is_some() && !self.url.starts_with("https://") {
            return bad(format!(
                "storage.clickhouse.ca_file is set but the URL {:?} is not https://",
                self.url
            ));
        }
        if !valid_identifier(&self.database) {
            return bad(format!(
                "storage.clickhouse.database must be letters, digits and _ (got {:?})",
                self.database
            ));
        }
        if let Some(c) = &self.cluster
            && !valid_identifier(c)
        {
            return bad(format!(
                "storage.clickhouse.cluster must be letters, digits and _ (got {c:?})"
            ));
        }
        if self.initial_retention_days == 0 || self.initial_retention_days > 36_500 {
            return bad("storage.clickhouse.initial_retention_days must be 1..=36500".into());
        }
        if self.batch.max_rows == 0
            || self.batch.max_bytes == 0
            || self.batch.max_concurrent_inserts == 0
        {
            return bad("storage.clickhouse.batch limits must be positive".into());
        }
        if self.max_attempts == 0 {
            return bad("storage.clickhouse.max_attempts must be positive".into());
        }
        if self.query_timeout.get().is_zero() || self.insert_timeout.get().is_zero() {
            return bad("storage.clickhouse timeouts must be positive".into());
        }
        Ok(())
    }

    /// Refuses a URL with `user:password@`, without echoing it: a password in the URL would
    /// otherwise end up in print-config output, errors and logs. Checked for every backend
    /// (the section is printed even when ClickHouse is not used) and before anything that
    /// prints the URL.
    pub fn validate_url_credentials(&self) -> Result<()> {
        if url_has_userinfo(&self.url) {
            return Err(ConfigError::Invalid(
                "storage.clickhouse.url must not carry credentials (user:password@host): \
                 set storage.clickhouse.user, and the password with storage.clickhouse.password_file \
                 (a mounted Secret) or the DATATRACING_CLICKHOUSE_PASSWORD variable"
                    .into(),
            ));
        }
        Ok(())
    }

    /// How inserts are retried.
    pub fn retry_policy(&self) -> datatracing_core::RetryPolicy {
        datatracing_core::RetryPolicy::attempts(
            self.max_attempts,
            self.retry_backoff.get(),
            self.max_retry_backoff.get(),
        )
    }

    /// The password, read from `password_file` when set.
    pub fn resolve_password(&self) -> Result<String> {
        match &self.password_file {
            Some(path) => std::fs::read_to_string(path)
                .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
                .map_err(|source| ConfigError::ReadReferenced {
                    what: "password_file",
                    path: path.display().to_string(),
                    source,
                }),
            None => Ok(self.password.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_and_secrets() {
        assert!(ClickHouseConfig::default().validate().is_ok());
        let bad_db = ClickHouseConfig {
            database: "x; DROP".into(),
            ..ClickHouseConfig::default()
        };
        assert!(bad_db.validate().is_err());
        let ca_without_tls = ClickHouseConfig {
            ca_file: Some("/etc/ca.crt".into()),
            ..ClickHouseConfig::default()
        };
        let e = ca_without_tls.validate().unwrap_err().to_string();
        assert!(e.contains("ca_file is set but the URL"), "{e}");
        assert!(
            ClickHouseConfig {
                url: "https://clickhouse:8443".into(),
                ..ca_without_tls
            }
            .validate()
            .is_ok()
        );
        for url in [
            "http://default:hunter2@clickhouse:8123",
            "https://user@clickhouse",
            "ftp://u:hunter2@host/x",
            "u:hunter2@host:8123",
        ] {
            let c = ClickHouseConfig {
                url: url.into(),
                ..ClickHouseConfig::default()
            };
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains("must not carry credentials"), "{url}: {e}");
            assert!(e.contains("password_file"), "{e}");
            assert!(
                !e.contains("hunter2"),
                "the error repeats the password: {e}"
            );
        }
        for url in [
            "http://clickhouse:8123",
            "https://clickhouse:8443/?x=a@b",
            "http://h/path@x",
        ] {
            assert!(!url_has_userinfo(url), "{url}");
        }
        let c = ClickHouseConfig {
            password: "hunter2".into(),
            ..ClickHouseConfig::default()
        };
        assert!(!format!("{c:?}").contains("hunter2"));
        assert!(!serde_json::to_string(&c).unwrap().contains("hunter2"));
        let dir = std::env::temp_dir().join(format!("dt-pw-{}", std::process::id()));
        std::fs::write(&dir, "s3cret\n").unwrap();
        let c = ClickHouseConfig {
            password_file: Some(dir.clone()),
            ..ClickHouseConfig::default()
        };
        assert_eq!(c.resolve_password().unwrap(), "s3cret");
        let _ = std::fs::remove_file(dir);
    }
}
