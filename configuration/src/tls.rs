//! TLS on the listeners (`tls:` for every listener of the process, `collector.tls` /
//! `query.tls` for one section's).
//!
//! Only file paths are written here, never certificate or key material, so `print-config`,
//! logs and the ConfigMaps the operator renders carry references only. The files are read
//! (and the key checked against the certificate) when a server starts, and re-read every
//! `reload_interval`, so a renewed certificate (a rotated Kubernetes Secret) is served
//! without a restart. Without any block, listeners speak plain HTTP.

use std::path::PathBuf;

use datatracing_core::ConfigDuration;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{ConfigError, Result};

/// Whether clients must present a certificate signed by `client_ca_file`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// A client without a valid certificate is refused during the handshake (mTLS).
    #[default]
    Required,
    /// A client may connect without a certificate; one it presents must be valid.
    Optional,
}

/// One TLS server identity and its client-certificate policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file with the server certificate, followed by any intermediates.
    pub cert_file: PathBuf,
    /// PEM file with the certificate's private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// PEM file with the CAs that sign client certificates. Set: clients are asked for a
    /// certificate (mutual TLS, see `client_auth`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca_file: Option<PathBuf>,
    /// With `client_ca_file`: `required` (the default) or `optional`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_auth: Option<ClientAuth>,
    /// How often the files are re-read; a changed set that loads cleanly replaces the
    /// served one, a broken one is logged and counted and the previous one kept.
    #[serde(default = "default_reload_interval")]
    pub reload_interval: ConfigDuration,
}

fn default_reload_interval() -> ConfigDuration {
    ConfigDuration::from_secs(10)
}

impl TlsConfig {
    /// A block with a certificate and key and the defaults for the rest.
    pub fn new(cert_file: impl Into<PathBuf>, key_file: impl Into<PathBuf>) -> Self {
        Self {
            cert_file: cert_file.into(),
            key_file: key_file.into(),
            client_ca_file: None,
            client_auth: None,
            reload_interval: default_reload_interval(),
        }
    }

    /// The client-certificate policy: `None` without `client_ca_file`.
    pub fn client_auth(&self) -> Option<ClientAuth> {
        self.client_ca_file
            .as_ref()
            .map(|_| self.client_auth.unwrap_or_default())
    }

    /// Checks the block's shape; `at` names it in messages (`tls`, `collector.tls`). The
    /// files themselves are read and checked when a server starts: the operator renders
    /// configuration for pods whose Secrets are mounted only there.
    pub fn validate(&self, at: &str) -> Result<()> {
        let bad = |m: String| Err(ConfigError::invalid(m));
        for (key, path) in [("cert_file", &self.cert_file), ("key_file", &self.key_file)] {
            if path.as_os_str().is_empty() {
                return bad(format!("{at}.{key} must name a PEM file"));
            }
        }
        if self
            .client_ca_file
            .as_ref()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            return bad(format!("{at}.client_ca_file must name a PEM file"));
        }
        if self.client_auth.is_some() && self.client_ca_file.is_none() {
            return bad(format!(
                "{at}.client_auth needs {at}.client_ca_file (the CAs client certificates are checked against)"
            ));
        }
        if self.reload_interval.get().is_zero() {
            return bad(format!("{at}.reload_interval must be positive"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_is_checked_and_client_auth_defaults_to_required() {
        let t = TlsConfig::new("/tls/tls.crt", "/tls/tls.key");
        t.validate("tls").unwrap();
        assert_eq!(t.client_auth(), None);
        let mtls = TlsConfig {
            client_ca_file: Some("/tls/ca.crt".into()),
            ..t.clone()
        };
        assert_eq!(mtls.client_auth(), Some(ClientAuth::Required));
        let e = TlsConfig {
            client_auth: Some(ClientAuth::Optional),
            ..t.clone()
        }
        .validate("query.tls")
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("query.tls.client_auth needs query.tls.client_ca_file"),
            "{e}"
        );
        let e = TlsConfig::new("", "/k")
            .validate("tls")
            .unwrap_err()
            .to_string();
        assert!(e.contains("tls.cert_file"), "{e}");
        let e = TlsConfig {
            reload_interval: ConfigDuration::from_secs(0),
            ..t
        }
        .validate("tls")
        .unwrap_err()
        .to_string();
        assert!(e.contains("tls.reload_interval"), "{e}");
    }
}
