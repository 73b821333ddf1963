//! The configuration file as a whole: its sections, loading (YAML after `${VAR}`
//! interpolation) and the whole-file validation.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::interpolate::interpolate;
use crate::{
    AuthConfig, ClickHouseConfig, CollectorConfig, ConfigError, EmbeddedConfig, OperatorConfig,
    QueryConfig, TlsConfig,
};

/// Log output.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Logging settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Output format.
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `info,datatracing_store=debug`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

/// Which store backs the services.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// The embedded store on local disk.
    #[default]
    Embedded,
    /// A ClickHouse server.
    Clickhouse,
}

/// Storage settings. Only the section of the chosen backend is used.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// The backend.
    pub backend: Backend,
    /// Embedded store settings.
    pub embedded: EmbeddedConfig,
    /// ClickHouse settings.
    pub clickhouse: ClickHouseConfig,
}

/// The whole configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Logging.
    pub log: LogConfig,
    /// Storage.
    pub storage: StorageConfig,
    /// The collector (ingest) server.
    pub collector: CollectorConfig,
    /// The query server.
    pub query: QueryConfig,
    /// The Kubernetes operator (`datatracing operator`).
    pub operator: OperatorConfig,
    /// Bearer tokens for every listener of the process (off when none is configured).
    pub auth: AuthConfig,
    /// TLS for every listener of the process (`collector.tls` and `query.tls` take
    /// precedence for their section); absent: plain HTTP.
    pub tls: Option<TlsConfig>,
}

impl Config {
    /// Parses YAML text after interpolating variables from `env`.
    pub fn from_yaml(text: &str, env: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let text = interpolate(text, env)?;
        if text.trim().is_empty() {
            return Ok(Config::default());
        }
        Ok(serde_saphyr::from_str(&text)?)
    }

    /// Reads and parses a file.
    pub fn from_file(path: &Path, env: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_yaml(&text, env)
    }

    /// Checks the chosen storage backend's section and every other section, so a mistake
    /// anywhere in the file is reported whichever command reads it. `log.level`'s filter
    /// syntax is checked where the filter is built (the command's logging set-up owns
    /// `tracing-subscriber`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.log.level.trim().is_empty() {
            return Err(ConfigError::invalid("log.level must not be empty"));
        }
        // Whatever the backend: print-config would show the section anyway.
        self.storage.clickhouse.validate_url_credentials()?;
        match self.storage.backend {
            Backend::Embedded => self.storage.embedded.validate()?,
            Backend::Clickhouse => self.storage.clickhouse.validate()?,
        }
        self.collector.validate()?;
        self.collector
            .peers
            .validate_with_listener(self.collector_tls())?;
        self.query.validate()?;
        self.operator.validate()?;
        self.auth.validate()?;
        if let Some(t) = &self.tls {
            t.validate("tls")?;
        }
        Ok(())
    }

    /// The TLS settings of the collector's listeners (HTTP and gRPC): its own block, else
    /// the shared one.
    pub fn collector_tls(&self) -> Option<&TlsConfig> {
        self.collector.tls.as_ref().or(self.tls.as_ref())
    }

    /// The TLS settings of the query listener: its own block, else the shared one.
    pub fn query_tls(&self) -> Option<&TlsConfig> {
        self.query.tls.as_ref().or(self.tls.as_ref())
    }
}

/// Parses the lowercase names the file uses, so flags and variables take the same words.
macro_rules! named_enum {
    ($t:ty, $what:literal, $($name:literal => $v:expr),+) => {
        impl FromStr for $t {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($name => Ok($v),)+
                    other => Err(format!(
                        concat!("unknown ", $what, " {:?} (expected one of: {})"),
                        other,
                        [$($name),+].join(", ")
                    )),
                }
            }
        }

        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                $(if *self == $v {
                    return f.write_str($name);
                })+
                Ok(())
            }
        }
    };
}

named_enum!(LogFormat, "log format", "text" => LogFormat::Text, "json" => LogFormat::Json);
named_enum!(Backend, "storage backend", "embedded" => Backend::Embedded, "clickhouse" => Backend::Clickhouse);

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn enum_names_are_the_file_words() {
        assert_eq!("json".parse::<LogFormat>(), Ok(LogFormat::Json));
        assert_eq!("clickhouse".parse::<Backend>(), Ok(Backend::Clickhouse));
        assert_eq!(Backend::Embedded.to_string(), "embedded");
        assert_eq!(LogFormat::Text.to_string(), "text");
        let e = "xml".parse::<LogFormat>().unwrap_err();
        assert!(e.contains("\"xml\"") && e.contains("text, json"), "{e}");
    }

    /// The peer link's TLS is checked against the collector's listener in force: the
    /// shared `tls:` block counts, `collector.tls` overrides it.
    #[test]
    fn the_whole_file_check_ties_peer_tls_to_the_listener() {
        let peers = "collector:\n  grpc_listen: 127.0.0.1:4317\n  peers:\n    enabled: true\n    self: ${POD_IP}:4317\n    static: [\"${POD_IP}:4317\"]\n";
        let tls = "tls:\n  cert_file: /tls/tls.crt\n  key_file: /tls/tls.key\n";
        let e = env(&[("POD_IP", "10.0.0.1")]);
        Config::from_yaml(peers, &e).unwrap().validate().unwrap();
        let err = Config::from_yaml(&format!("{peers}{tls}"), &e)
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("collector.peers.tls is required"), "{err}");
        let with_peer_tls = format!(
            "{peers}    tls:\n      ca_file: /tls/ca.crt\n      server_name: dt-collector.tracing.svc\n{tls}"
        );
        let c = Config::from_yaml(&with_peer_tls, &e).unwrap();
        c.validate().unwrap();
        let t = c.collector.peers.tls.as_ref().unwrap();
        assert_eq!(t.server_name.as_deref(), Some("dt-collector.tracing.svc"));
        // collector.tls with a required client CA takes precedence over the shared block.
        let mtls = format!(
            "{peers}    tls:\n      ca_file: /tls/ca.crt\n  tls:\n    cert_file: /c/tls.crt\n    key_file: /c/tls.key\n    client_ca_file: /c/ca.crt\n"
        );
        let err = Config::from_yaml(&mtls, &e)
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("needs cert_file and key_file"), "{err}");
    }

    #[test]
    fn yaml_with_defaults_and_unknown_keys() {
        let yaml = "storage:\n  embedded:\n    data_dir: ${DIR:-/tmp/x}\n    retention: 24h\ncollector:\n  listen: 127.0.0.1:${PORT}\n";
        let c = Config::from_yaml(yaml, &env(&[("PORT", "4400")])).unwrap();
        assert_eq!(
            c.storage.embedded.data_dir,
            std::path::PathBuf::from("/tmp/x")
        );
        assert_eq!(c.collector.listen.port(), 4400);
        assert_eq!(
            c.query.listen.port(),
            16686,
            "untouched sections keep defaults"
        );
        c.validate().unwrap();
        let err = Config::from_yaml("collector:\n  lisen: x\n", &env(&[])).unwrap_err();
        assert!(err.to_string().contains("lisen"), "{err}");
        let err = Config::from_yaml("operator:\n  imagee: x\n", &env(&[])).unwrap_err();
        assert!(err.to_string().contains("imagee"), "{err}");
        assert!(Config::from_yaml("", &env(&[])).unwrap() == Config::default());
        let bad = Config::from_yaml("log:\n  level: \"\"\n", &env(&[])).unwrap();
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("log.level")
        );
    }

    /// Every operator setting comes from the file's `operator:` section, with `${VAR}`
    /// interpolation like the rest, and the whole-file check covers the section.
    #[test]
    fn the_operator_section_sets_every_operator_setting() {
        let yaml = "\
operator:
  namespace: team-a
  listen: 127.0.0.1:${OPS_PORT}
  image: registry.local/datatracing:dev
  field_manager: dt-test
  clickhouse_timeout: 3s
  retry_backoff: 2s
  max_retry_backoff: 1m
  resync_interval: 10m
  drain_timeout: 20s
  leader_election:
    enabled: false
    lease_name: dt-lease
    lease_namespace: ops
    identity: replica-1
    lease_duration: 30s
    renew_interval: 10s
";
        let c = Config::from_yaml(yaml, &env(&[("OPS_PORT", "9090")])).unwrap();
        c.validate().unwrap();
        let o = &c.operator;
        let secs = |d: datatracing_core::ConfigDuration| d.get().as_secs();
        assert_eq!(o.namespace.as_deref(), Some("team-a"));
        assert_eq!(o.listen.to_string(), "127.0.0.1:9090");
        assert_eq!(o.image, "registry.local/datatracing:dev");
        assert_eq!(o.field_manager, "dt-test");
        assert_eq!(
            [
                secs(o.clickhouse_timeout),
                secs(o.retry_backoff),
                secs(o.max_retry_backoff),
                secs(o.resync_interval),
                secs(o.drain_timeout),
            ],
            [3, 2, 60, 600, 20]
        );
        let le = &o.leader_election;
        assert!(!le.enabled);
        assert_eq!(le.lease_name, "dt-lease");
        assert_eq!(le.lease_namespace.as_deref(), Some("ops"));
        assert_eq!(le.identity.as_deref(), Some("replica-1"));
        assert_eq!((secs(le.lease_duration), secs(le.renew_interval)), (30, 10));
        assert_eq!(
            c.collector,
            CollectorConfig::default(),
            "other sections untouched"
        );

        let bad = Config::from_yaml(
            "operator:\n  leader_election:\n    lease_duration: 5s\n    renew_interval: 5s\n",
            &env(&[]),
        )
        .unwrap();
        let e = bad.validate().unwrap_err().to_string();
        assert!(e.contains("operator.leader_election.renew_interval"), "{e}");
    }
}

#[cfg(test)]
mod reference_file {
    use super::*;

    /// `config/datatracing.yaml` documents every key with its default; it must stay exact.
    #[test]
    fn reference_config_matches_defaults() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/datatracing.yaml");
        let text = std::fs::read_to_string(path).unwrap();
        let parsed = Config::from_yaml(&text, &HashMap::new()).unwrap();
        assert_eq!(
            parsed,
            Config::default(),
            "config/datatracing.yaml drifted from the defaults"
        );
        let body: String = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(
            body,
            serde_saphyr::to_string(&Config::default()).unwrap(),
            "regenerate with: datatracing print-config"
        );
    }
}
