//! Trace-aware routing between collector replicas (`collector.peers:`): who the replicas
//! are, which one this is, and how spans owned by another replica are forwarded to it.
//!
//! Every replica hashes a trace id onto the same ring of peers (rendezvous hashing), so all
//! spans of a trace meet at one replica, which tail-samples the whole trace. See
//! `docs/adr/0009-trace-routing.md`.

use std::path::PathBuf;

use datatracing_core::ConfigDuration;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{ClientAuth, ConfigError, Result, TlsConfig};

/// Peer routing settings. Off by default: a lone collector owns every trace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct PeersConfig {
    /// Route spans to the replica that owns their trace.
    pub enabled: bool,
    /// This replica's peer address (`host:port` of its OTLP/gRPC listener as the other
    /// replicas reach it). It must be one of the members.
    #[serde(rename = "self")]
    pub self_addr: String,
    /// Every replica's peer address, this one included (static membership).
    #[serde(rename = "static")]
    pub static_peers: Vec<String>,
    /// A file listing the members, one address per line (`#` starts a comment). When set it
    /// replaces `static` and is re-read every `reload_interval`, so members can be added and
    /// removed without a restart.
    pub file: Option<PathBuf>,
    /// How often `file` is re-read.
    pub reload_interval: ConfigDuration,
    /// Members from the EndpointSlices of a (headless) Service, ready endpoints only,
    /// watched while running. Replaces `static`; not with `file`.
    pub kubernetes: Option<KubernetesPeers>,
    /// Forwarding to the owners.
    pub forward: ForwardConfig,
    /// A file holding the bearer token this replica presents to its peers (re-read every
    /// `reload_interval`), when `auth` is on: a token of `auth.tokens` with the `peer`
    /// scope. Not with `token_env`.
    pub token_file: Option<PathBuf>,
    /// An environment variable holding that token, read at start.
    pub token_env: Option<String>,
    /// TLS on the peer link (forwards, lineage and hand-off messages): required when the
    /// collector's OTLP/gRPC listener has TLS (`collector.tls` or `tls`), refused when it
    /// has none, as every replica dials the others' listener.
    pub tls: Option<PeerTlsConfig>,
}

/// How a replica verifies its peers' OTLP/gRPC listener and, for mutual TLS, which client
/// certificate it presents. Only paths, never key material; the files are read at start
/// (an error names the setting and file) and re-read every `reload_interval`, so rotated
/// Secrets take effect for the next connection without a restart.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PeerTlsConfig {
    /// PEM file with the CAs that sign the replicas' server certificates (the listener's
    /// `cert_file`). Only these are trusted, not the system's roots.
    pub ca_file: PathBuf,
    /// PEM file with the client certificate presented to peers, for a listener with
    /// `client_ca_file` (mutual TLS): signed by a CA of the listener's `client_ca_file`,
    /// with the `clientAuth` extended key usage. With `key_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// PEM file with that certificate's private key (PKCS#8, PKCS#1 or SEC1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// The name every peer's certificate must be valid for. Unset: each peer's own host
    /// (an IP address is checked against the certificate's IP SANs). Set it when peers are
    /// addressed by pod IP and the certificate names a Service
    /// (`<collector service>.<namespace>.svc`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// How often the files are re-read.
    #[serde(default = "default_tls_reload_interval")]
    pub reload_interval: ConfigDuration,
}

/// A DNS name (labels of letters, digits, `-`, `_`) or an IP address, as rustls takes.
fn is_server_name(n: &str) -> bool {
    n.parse::<std::net::IpAddr>().is_ok()
        || (n.len() <= 253
            && n.trim_end_matches('.').split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            }))
}

fn default_tls_reload_interval() -> ConfigDuration {
    ConfigDuration::from_secs(10)
}

impl PeerTlsConfig {
    /// A block trusting `ca_file`, with the defaults for the rest.
    pub fn new(ca_file: impl Into<PathBuf>) -> Self {
        Self {
            ca_file: ca_file.into(),
            cert_file: None,
            key_file: None,
            server_name: None,
            reload_interval: default_tls_reload_interval(),
        }
    }

    /// Checks the block's shape (the files are read when the collector starts).
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(ConfigError::invalid(m));
        let at = "collector.peers.tls";
        if self.ca_file.as_os_str().is_empty() {
            return bad(format!("{at}.ca_file must name a PEM file"));
        }
        match (&self.cert_file, &self.key_file) {
            (Some(_), None) | (None, Some(_)) => {
                return bad(format!(
                    "{at}: cert_file and key_file go together (the client certificate for mutual TLS and its key)"
                ));
            }
            (Some(c), Some(k)) if c.as_os_str().is_empty() || k.as_os_str().is_empty() => {
                return bad(format!("{at}.cert_file and key_file must name PEM files"));
            }
            _ => {}
        }
        if let Some(n) = &self.server_name
            && !is_server_name(n)
        {
            return bad(format!(
                "{at}.server_name must be a DNS name or an IP address (got `{n}`)"
            ));
        }
        if self.reload_interval.get().is_zero() {
            return bad(format!("{at}.reload_interval must be positive"));
        }
        Ok(())
    }
}

/// Membership from Kubernetes: the EndpointSlices labelled
/// `kubernetes.io/service-name: <service>` in `namespace`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KubernetesPeers {
    /// The Service whose endpoints are the collectors (headless, so every pod is listed).
    pub service: String,
    /// Its namespace (typically `${POD_NAMESPACE}` from the downward API).
    pub namespace: String,
    /// The name of the endpoint port peers forward to (the OTLP/gRPC port).
    #[serde(default = "default_port_name")]
    pub port_name: String,
    /// A kubeconfig to use instead of the in-cluster service account (tests, out of
    /// cluster).
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
}

fn default_port_name() -> String {
    "otlp-grpc".into()
}

/// How spans are forwarded to the replica that owns their trace (OTLP/gRPC, gzip).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ForwardConfig {
    /// Most spans in one forwarded request; requests waiting for the same peer are merged up
    /// to this.
    pub max_batch_spans: usize,
    /// Most spans waiting to be forwarded to one peer. A request that does not fit keeps
    /// its spans on this replica (counted as `queue_full` fallback), it is never dropped.
    pub max_queue_spans: usize,
    /// Forwarded requests in flight to one peer at once (calls share one HTTP/2
    /// connection; each client request's part for the peer is one call).
    pub max_in_flight: usize,
    /// How long a client request waits for the owner to accept its spans (retries
    /// included); after it, the spans are kept on this replica instead.
    pub timeout: ConfigDuration,
    /// First delay between attempts to reach a peer (doubles up to `timeout`).
    pub retry_backoff: ConfigDuration,
    /// Connection set-up limit per attempt.
    pub connect_timeout: ConfigDuration,
    /// Compression of forwarded requests: `none` (the default: replicas of one pipeline
    /// share a cluster network, and gzip cost more CPU per span than the hop it saved,
    /// `docs/benchmarks.md`) or `gzip` (less network, more CPU: replicas across zones
    /// billed per byte).
    pub compression: ForwardCompression,
}

/// How forwarded requests are compressed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ForwardCompression {
    /// gzip, as OTLP exporters send.
    Gzip,
    /// Uncompressed.
    #[default]
    None,
}

impl Default for PeersConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            self_addr: String::new(),
            static_peers: Vec::new(),
            file: None,
            reload_interval: ConfigDuration::from_secs(2),
            kubernetes: None,
            forward: ForwardConfig::default(),
            token_file: None,
            token_env: None,
            tls: None,
        }
    }
}

impl Default for ForwardConfig {
    fn default() -> Self {
        Self {
            max_batch_spans: 5_000,
            max_queue_spans: 100_000,
            max_in_flight: 16,
            timeout: ConfigDuration::from_secs(5),
            retry_backoff: ConfigDuration::from_millis(50),
            connect_timeout: ConfigDuration::from_secs(1),
            compression: ForwardCompression::None,
        }
    }
}

/// Whether `addr` looks like `host:port` with a port number.
fn is_host_port(addr: &str) -> bool {
    match addr.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty() && !addr.contains(char::is_whitespace) && port.parse::<u16>().is_ok()
        }
        None => false,
    }
}

/// Parses a members file: one address per line, blank lines and `#` comments ignored.
pub fn parse_members(text: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        if !is_host_port(line) {
            return Err(ConfigError::invalid(format!(
                "collector.peers.file line {}: `{line}` is not host:port",
                i + 1
            )));
        }
        out.push(line.to_string());
    }
    Ok(out)
}

impl PeersConfig {
    /// Checks the peer link's TLS against the OTLP/gRPC listener's (`listener`: the
    /// collector's TLS block in force, its own or the shared one). Replicas dial each
    /// other's listener, so the two must agree; a mismatch would make every forward fail
    /// and every replica keep what it receives, so it is refused here rather than found in
    /// the fallback counters.
    pub fn validate_with_listener(&self, listener: Option<&TlsConfig>) -> Result<()> {
        if !self.enabled {
            return Ok(());
        }
        let bad = |m: &str| Err(ConfigError::invalid(m));
        match (listener, &self.tls) {
            (Some(_), None) => bad(
                "collector.peers.tls is required: the OTLP/gRPC listener has TLS (collector.tls or tls) and replicas forward to each other's listener; set collector.peers.tls.ca_file to the CA of the replicas' certificates (and server_name when peers are addressed by pod IP)",
            ),
            (None, Some(_)) => bad(
                "collector.peers.tls is set but the OTLP/gRPC listener has no TLS (collector.tls or tls): peers would dial a plain listener with TLS; remove collector.peers.tls or turn TLS on",
            ),
            (Some(l), Some(p))
                if l.client_auth() == Some(ClientAuth::Required) && p.cert_file.is_none() =>
            {
                bad(
                    "collector.peers.tls needs cert_file and key_file: the OTLP/gRPC listener requires client certificates (client_ca_file with client_auth: required), so a replica must present one to its peers",
                )
            }
            _ => Ok(()),
        }
    }

    /// Checks the settings. Off, nothing is checked.
    pub fn validate(&self) -> Result<()> {
        if !self.enabled {
            return Ok(());
        }
        let bad = |m: String| Err(ConfigError::invalid(m));
        if !is_host_port(&self.self_addr) {
            return bad(format!(
                "collector.peers.self must be host:port (got `{}`)",
                self.self_addr
            ));
        }
        for p in &self.static_peers {
            if !is_host_port(p) {
                return bad(format!("collector.peers.static: `{p}` is not host:port"));
            }
        }
        if let Some(k) = &self.kubernetes {
            if self.file.is_some() {
                return bad("collector.peers: set one of file and kubernetes".into());
            }
            if k.service.is_empty() || k.namespace.is_empty() || k.port_name.is_empty() {
                return bad(
                    "collector.peers.kubernetes needs service, namespace and port_name".into(),
                );
            }
        } else if self.file.is_none() && !self.static_peers.contains(&self.self_addr) {
            return bad(format!(
                "collector.peers.static must list this replica (collector.peers.self = `{}`)",
                self.self_addr
            ));
        }
        if self.token_file.is_some() && self.token_env.is_some() {
            return bad("collector.peers: set one of token_file and token_env".into());
        }
        if self.reload_interval.get().is_zero() {
            return bad("collector.peers.reload_interval must be positive".into());
        }
        if let Some(t) = &self.tls {
            t.validate()?;
        }
        let f = &self.forward;
        if f.max_batch_spans == 0 || f.max_queue_spans < f.max_batch_spans {
            return bad(
                "collector.peers.forward.max_batch_spans must be positive and at most max_queue_spans"
                    .into(),
            );
        }
        if u32::try_from(f.max_queue_spans).is_err() {
            return bad("collector.peers.forward.max_queue_spans must be below 4Gi".into());
        }
        if f.max_in_flight == 0 || f.max_in_flight > 64 {
            return bad("collector.peers.forward.max_in_flight must be 1..=64".into());
        }
        if f.timeout.get().is_zero() || f.connect_timeout.get().is_zero() {
            return bad(
                "collector.peers.forward.timeout and connect_timeout must be positive".into(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_by_default_and_checked_when_on() {
        assert!(PeersConfig::default().validate().is_ok());
        let on: PeersConfig = serde_json::from_value(serde_json::json!({
            "enabled": true, "self": "10.0.0.1:4317",
            "static": ["10.0.0.1:4317", "10.0.0.2:4317"],
            "forward": {"timeout": "2s"}
        }))
        .unwrap();
        assert!(on.validate().is_ok());
        assert_eq!(on.forward.max_batch_spans, 5_000, "defaults fill the rest");
        let mut not_member = on.clone();
        not_member.self_addr = "10.0.0.3:4317".into();
        let e = not_member.validate().unwrap_err().to_string();
        assert!(e.contains("must list this replica"), "{e}");
        let mut bad_peer = on.clone();
        bad_peer.static_peers.push("nohost".into());
        assert!(
            bad_peer
                .validate()
                .unwrap_err()
                .to_string()
                .contains("nohost")
        );
        assert!(
            serde_json::from_value::<PeersConfig>(serde_json::json!({"statik": []})).is_err(),
            "unknown keys are refused"
        );
        let k8s: PeersConfig = serde_json::from_value(serde_json::json!({
            "enabled": true, "self": "10.0.0.1:4317",
            "kubernetes": {"service": "collectors", "namespace": "tracing"}
        }))
        .unwrap();
        assert!(k8s.validate().is_ok(), "no static list needed");
        assert_eq!(k8s.kubernetes.as_ref().unwrap().port_name, "otlp-grpc");
        let mut both = k8s.clone();
        both.file = Some("/m".into());
        assert!(both.validate().unwrap_err().to_string().contains("one of"));
    }

    #[test]
    fn peer_tls_must_match_the_listener() {
        let mut on: PeersConfig = serde_json::from_value(serde_json::json!({
            "enabled": true, "self": "10.0.0.1:4317", "static": ["10.0.0.1:4317"]
        }))
        .unwrap();
        let listener = TlsConfig::new("/tls/tls.crt", "/tls/tls.key");
        let mtls = TlsConfig {
            client_ca_file: Some("/tls/ca.crt".into()),
            ..listener.clone()
        };
        on.validate_with_listener(None).unwrap();
        let e = on
            .validate_with_listener(Some(&listener))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("collector.peers.tls is required") && e.contains("ca_file"),
            "{e}"
        );
        on.tls = Some(PeerTlsConfig::new("/tls/ca.crt"));
        on.validate().unwrap();
        on.validate_with_listener(Some(&listener)).unwrap();
        let e = on.validate_with_listener(None).unwrap_err().to_string();
        assert!(e.contains("no TLS"), "{e}");
        let e = on
            .validate_with_listener(Some(&mtls))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("needs cert_file and key_file") && e.contains("required"),
            "{e}"
        );
        let optional = TlsConfig {
            client_auth: Some(ClientAuth::Optional),
            ..mtls.clone()
        };
        on.validate_with_listener(Some(&optional)).unwrap();
        let client = PeerTlsConfig {
            cert_file: Some("/peer/tls.crt".into()),
            key_file: Some("/peer/tls.key".into()),
            server_name: Some("dt-collector.tracing.svc".into()),
            ..PeerTlsConfig::new("/tls/ca.crt")
        };
        on.tls = Some(client.clone());
        on.validate().unwrap();
        on.validate_with_listener(Some(&mtls)).unwrap();
        // Off: nothing to agree on.
        let off = PeersConfig {
            enabled: false,
            ..on.clone()
        };
        off.validate_with_listener(None).unwrap();
    }

    #[test]
    fn peer_tls_shape_is_checked() {
        let ok = PeerTlsConfig::new("/ca.crt");
        let check = |t: PeerTlsConfig| {
            PeersConfig {
                enabled: true,
                self_addr: "10.0.0.1:4317".into(),
                static_peers: vec!["10.0.0.1:4317".into()],
                tls: Some(t),
                ..PeersConfig::default()
            }
            .validate()
            .map_err(|e| e.to_string())
        };
        check(ok.clone()).unwrap();
        let e = check(PeerTlsConfig::new("")).unwrap_err();
        assert!(e.contains("collector.peers.tls.ca_file"), "{e}");
        let e = check(PeerTlsConfig {
            cert_file: Some("/c.crt".into()),
            ..ok.clone()
        })
        .unwrap_err();
        assert!(e.contains("cert_file and key_file go together"), "{e}");
        let e = check(PeerTlsConfig {
            key_file: Some("/c.key".into()),
            ..ok.clone()
        })
        .unwrap_err();
        assert!(e.contains("go together"), "{e}");
        for name in ["10.0.0.7", "::1", "dt-collector.tracing.svc", "localhost"] {
            check(PeerTlsConfig {
                server_name: Some(name.into()),
                ..ok.clone()
            })
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        for name in ["", "a b", "10.0.0.7:4317", "bad..name", "https://x"] {
            let e = check(PeerTlsConfig {
                server_name: Some(name.into()),
                ..ok.clone()
            })
            .unwrap_err();
            assert!(e.contains("server_name"), "{name}: {e}");
        }
        let e = check(PeerTlsConfig {
            reload_interval: ConfigDuration::from_secs(0),
            ..ok.clone()
        })
        .unwrap_err();
        assert!(e.contains("reload_interval"), "{e}");
        assert!(
            serde_json::from_value::<PeerTlsConfig>(serde_json::json!({"ca": "/x"})).is_err(),
            "unknown keys are refused"
        );
        let parsed: PeerTlsConfig =
            serde_json::from_value(serde_json::json!({"ca_file": "/x"})).unwrap();
        assert_eq!(parsed, PeerTlsConfig::new("/x"), "defaults fill the rest");
    }

    #[test]
    fn members_file_lines() {
        let m = parse_members("# replicas\na:4317\n\n  b:4317  # second\n").unwrap();
        assert_eq!(m, vec!["a:4317".to_string(), "b:4317".to_string()]);
        let e = parse_members("a:4317\nb\n").unwrap_err().to_string();
        assert!(e.contains("line 2"), "{e}");
    }
}
