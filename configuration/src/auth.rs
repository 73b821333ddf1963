//! Bearer-token authentication (`auth:`), shared by every listener of a process.
//!
//! Tokens are never written in this file: each entry names a file (a mounted Kubernetes
//! Secret) or an environment variable that holds it, so `print-config`, logs and the
//! rendered ConfigMaps carry references only. With no entry, authentication is off and every
//! port is open to whoever reaches it (the servers log a warning).

use std::path::PathBuf;

use datatracing_core::ConfigDuration;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{ConfigError, Result};

/// What a token may do.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Send spans: native JSON, OTLP/HTTP and OTLP/gRPC.
    Ingest,
    /// Read traces: the v1 API, the Jaeger-compatible API, the UI's data.
    Query,
    /// The sampling admin endpoints (`/admin/sampling`, reload and status).
    Admin,
    /// What routed collector replicas send each other (`collector.peers`): forwarded spans,
    /// with the tenant they were sent for, and lineage messages. For the replicas' own
    /// token only: it can store spans for any tenant.
    Peer,
}

impl Scope {
    /// The name used in the file and in error messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Ingest => "ingest",
            Scope::Query => "query",
            Scope::Admin => "admin",
            Scope::Peer => "peer",
        }
    }
}

/// One accepted token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// A name for logs and metrics (never the token).
    pub name: String,
    /// What the token may do.
    pub scopes: Vec<Scope>,
    /// A file holding the token (surrounding whitespace ignored); re-read every
    /// `auth.reload_interval`, so a rotated Secret takes effect without a restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    /// An environment variable holding the token, read at start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    /// The tenant this token is bound to (`[a-z0-9-]{1,63}`): spans it sends are stored for
    /// that tenant and queries with it see only that tenant's traces. Absent: the default
    /// tenant, which is what every token had before tenants existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}

/// Authentication settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Accepted tokens. Empty: authentication is off.
    pub tokens: Vec<TokenConfig>,
    /// Also require a token (any scope) on `/metrics`, `/healthz` and `/readyz`. Off by
    /// default so kubelet probes and Prometheus need no credentials.
    pub protect_ops: bool,
    /// How often token files are re-read.
    pub reload_interval: ConfigDuration,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            tokens: Vec::new(),
            protect_ops: false,
            reload_interval: ConfigDuration::from_secs(10),
        }
    }
}

/// Shortest token accepted: shorter ones are guessable.
pub const MIN_TOKEN_LEN: usize = 16;

impl AuthConfig {
    /// Whether any token is configured.
    pub fn enabled(&self) -> bool {
        !self.tokens.is_empty()
    }

    /// Checks names, scopes and sources (not the tokens themselves, which are read when the
    /// servers start).
    pub fn validate(&self) -> Result<()> {
        let mut names = std::collections::HashSet::new();
        for (i, t) in self.tokens.iter().enumerate() {
            let at = format!("auth.tokens[{i}]");
            if t.name.trim().is_empty() {
                return Err(ConfigError::invalid(format!("{at}.name must not be empty")));
            }
            if !names.insert(t.name.as_str()) {
                return Err(ConfigError::invalid(format!(
                    "{at}.name {:?} is used twice",
                    t.name
                )));
            }
            if t.scopes.is_empty() {
                return Err(ConfigError::invalid(format!(
                    "{at}.scopes must name at least one of ingest, query, admin"
                )));
            }
            match (&t.file, &t.env) {
                (Some(_), None) | (None, Some(_)) => {}
                _ => {
                    return Err(ConfigError::invalid(format!(
                        "{at} needs exactly one of `file` or `env` (the token itself is never written in the configuration)"
                    )));
                }
            }
            if let Some(tenant) = &t.tenant {
                datatracing_core::Tenant::parse(tenant)
                    .map_err(|e| ConfigError::invalid(format!("{at}.tenant: {e}")))?;
            }
            if t.env.as_deref().is_some_and(|e| e.trim().is_empty()) {
                return Err(ConfigError::invalid(format!("{at}.env must not be empty")));
            }
        }
        if self.reload_interval.get().is_zero() {
            return Err(ConfigError::invalid(
                "auth.reload_interval must be positive",
            ));
        }
        Ok(())
    }
}
