//! The `datatracing` configuration file: YAML, `${VAR}` / `${VAR:-default}` interpolation,
//! then overrides from flags and `DATATRACING_*` variables (flags win over the file).

use std::collections::HashMap;
use std::path::Path;

use datatracing_collector::CollectorConfig;
use datatracing_query::QueryConfig;
use datatracing_store_clickhouse::ClickHouseConfig;
use datatracing_store_sqlite::EmbeddedConfig;
use serde::{Deserialize, Serialize};

/// Errors loading configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The path given.
        path: String,
        /// Why it could not be read.
        source: std::io::Error,
    },
    /// `${VAR}` without a default, and VAR is not set.
    #[error("config references ${{{0}}}, which is not set (use ${{{0}:-default}} for a default)")]
    MissingVar(String),
    /// `${` without a closing brace.
    #[error("unterminated ${{...}} in config at byte {0}")]
    Unterminated(usize),
    /// The YAML does not match the schema (unknown key, wrong type).
    #[error("invalid config: {0}")]
    Parse(#[from] serde_yaml::Error),
    /// A value is out of range or settings conflict.
    #[error("{0}")]
    Invalid(String),
}

/// Log output.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
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
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
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
}

impl Config {
    /// Parses YAML text after interpolating variables from `env`.
    pub fn from_yaml(text: &str, env: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let text = interpolate(text, env)?;
        if text.trim().is_empty() {
            return Ok(Config::default());
        }
        Ok(serde_yaml::from_str(&text)?)
    }

    /// Reads and parses a file.
    pub fn from_file(path: &Path, env: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_yaml(&text, env)
    }

    /// Checks every section.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |e: &dyn std::fmt::Display| ConfigError::Invalid(e.to_string());
        tracing_subscriber::EnvFilter::try_new(&self.log.level)
            .map_err(|e| invalid(&format!("log.level: {e}")))?;
        match self.storage.backend {
            Backend::Embedded => self.storage.embedded.validate().map_err(|e| invalid(&e))?,
            Backend::Clickhouse => self
                .storage
                .clickhouse
                .validate()
                .map_err(|e| invalid(&e))?,
        }
        self.collector.validate().map_err(|e| invalid(&e))?;
        self.query.validate().map_err(|e| invalid(&e))?;
        Ok(())
    }
}

/// Replaces `${VAR}` and `${VAR:-default}`; `$$` is a literal `$`. Whole-line comments are
/// left alone, so documentation may mention `${VAR}` freely.
pub fn interpolate(text: &str, env: &HashMap<String, String>) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(text.len());
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        if line.trim_start().starts_with('#') {
            out.push_str(line);
        } else {
            out.push_str(&interpolate_line(line, env, offset)?);
        }
        offset += line.len();
    }
    Ok(out)
}

fn interpolate_line(
    text: &str,
    env: &HashMap<String, String>,
    mut offset: usize,
) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            offset += i + 2;
            rest = stripped;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body
                .find('}')
                .ok_or(ConfigError::Unterminated(offset + i))?;
            let expr = &body[..end];
            let (name, default) = match expr.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (expr, None),
            };
            match (env.get(name), default) {
                (Some(v), _) => out.push_str(v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => return Err(ConfigError::MissingVar(name.to_string())),
            }
            offset += i + 2 + end + 1;
            rest = &body[end + 1..];
        } else {
            out.push('$');
            offset += i + 1;
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

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
    fn interpolation() {
        let e = env(&[("PORT", "9000")]);
        assert_eq!(interpolate("a: ${PORT}", &e).unwrap(), "a: 9000");
        assert_eq!(interpolate("a: ${NOPE:-7}", &e).unwrap(), "a: 7");
        assert_eq!(
            interpolate("price: $$5 and $x", &e).unwrap(),
            "price: $5 and $x"
        );
        assert!(
            matches!(interpolate("a: ${NOPE}", &e), Err(ConfigError::MissingVar(v)) if v == "NOPE")
        );
        assert!(matches!(
            interpolate("a: ${OPEN", &e),
            Err(ConfigError::Unterminated(3))
        ));
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
        assert!(Config::from_yaml("", &env(&[])).unwrap() == Config::default());
        let bad = Config::from_yaml("log:\n  level: \"[[[\"\n", &env(&[])).unwrap();
        assert!(bad.validate().is_err());
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
            serde_yaml::to_string(&Config::default()).unwrap(),
            "regenerate with: datatracing print-config"
        );
    }
}
