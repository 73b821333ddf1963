//! The operator's settings (`operator:`), also set by the `datatracing operator` flags and
//! `DATATRACING_OPERATOR_*` variables (flags win over the file).

use std::net::SocketAddr;

use datatracing_core::ConfigDuration;
use serde::{Deserialize, Serialize};

use crate::{ConfigError, Result};

/// Leader election on a `coordination.k8s.io` Lease.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LeaderElectionConfig {
    /// Elect a leader; only the leader reconciles. Off only for a single replica.
    pub enabled: bool,
    /// Lease name.
    pub lease_name: String,
    /// Lease namespace; defaults to the pod's namespace (`POD_NAMESPACE`), else `default`.
    pub lease_namespace: Option<String>,
    /// This replica's identity; defaults to `POD_NAME`, else the host name.
    pub identity: Option<String>,
    /// A lease not renewed for this long may be taken over.
    pub lease_duration: ConfigDuration,
    /// How often the leader renews.
    pub renew_interval: ConfigDuration,
}

impl Default for LeaderElectionConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            lease_name: "datatracing-operator".into(),
            lease_namespace: None,
            identity: None,
            lease_duration: ConfigDuration::from_secs(15),
            renew_interval: ConfigDuration::from_secs(5),
        }
    }
}

/// The operator's settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OperatorConfig {
    /// Watch only this namespace; absent: every namespace.
    pub namespace: Option<String>,
    /// Address of `/healthz`, `/readyz` and `/metrics`.
    pub listen: SocketAddr,
    /// Image for collector and query pods unless a pipeline names one.
    pub image: String,
    /// Field manager for server-side apply.
    pub field_manager: String,
    /// Leader election.
    pub leader_election: LeaderElectionConfig,
    /// Longest a ClickHouse call (ping, migrate, retention) may take.
    pub clickhouse_timeout: ConfigDuration,
    /// First retry delay after a failed reconcile; doubles up to `max_retry_backoff`.
    pub retry_backoff: ConfigDuration,
    /// Longest retry delay.
    pub max_retry_backoff: ConfigDuration,
    /// Re-check every pipeline this often even without changes (drift repair).
    pub resync_interval: ConfigDuration,
    /// On shutdown, the longest wait for reconciles in flight.
    pub drain_timeout: ConfigDuration,
}

impl Default for OperatorConfig {
    fn default() -> Self {
        Self {
            namespace: None,
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            image: format!(
                "ghcr.io/datatracing/datatracing:{}",
                env!("CARGO_PKG_VERSION")
            ),
            field_manager: "datatracing-operator".into(),
            leader_election: LeaderElectionConfig::default(),
            clickhouse_timeout: ConfigDuration::from_secs(10),
            retry_backoff: ConfigDuration::from_secs(1),
            max_retry_backoff: ConfigDuration::from_secs(300),
            resync_interval: ConfigDuration::from_secs(300),
            drain_timeout: ConfigDuration::from_secs(10),
        }
    }
}

impl OperatorConfig {
    /// Checks values and relations.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(ConfigError::invalid(m));
        if self.image.trim().is_empty() {
            return bad("operator.image must not be empty");
        }
        if self.field_manager.trim().is_empty() {
            return bad("operator.field_manager must not be empty");
        }
        let le = &self.leader_election;
        if le.enabled && le.renew_interval.get() >= le.lease_duration.get() {
            return bad(
                "operator.leader_election.renew_interval must be shorter than lease_duration",
            );
        }
        if self.retry_backoff.get().is_zero()
            || self.retry_backoff.get() > self.max_retry_backoff.get()
        {
            return bad("operator.retry_backoff must be positive and at most max_retry_backoff");
        }
        if self.clickhouse_timeout.get().is_zero() {
            return bad("operator.clickhouse_timeout must be positive");
        }
        Ok(())
    }

    /// The lease namespace and this replica's identity, resolved from the environment.
    pub fn lease_identity(&self) -> (String, String) {
        let le = &self.leader_election;
        let ns = le
            .lease_namespace
            .clone()
            .or_else(|| self.namespace.clone())
            .or_else(|| std::env::var("POD_NAMESPACE").ok())
            .unwrap_or_else(|| "default".into());
        let id = le
            .identity
            .clone()
            .or_else(|| std::env::var("POD_NAME").ok())
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| format!("datatracing-operator-{}", std::process::id()));
        (ns, id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_relations_are_checked() {
        assert!(OperatorConfig::default().validate().is_ok());
        let mut c = OperatorConfig::default();
        c.leader_election.renew_interval = ConfigDuration::from_secs(30);
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("renew_interval")
        );
        let c: std::result::Result<OperatorConfig, _> =
            serde_saphyr::from_str("namespace: a\nimagee: x\n");
        assert!(c.is_err(), "unknown fields are refused");
    }
}
