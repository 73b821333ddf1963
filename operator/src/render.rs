//! Pure functions from a `TracingPipeline` (plus its merged sampling policy) to the child
//! objects the operator applies. No I/O, so every desired object is unit-tested.
//!
//! The configuration file and the sampling policy are two keys of one ConfigMap mounted as a
//! directory (not with `subPath`, which never sees updates). Only the configuration's hash
//! goes into the pod template annotation: a configuration change rolls the pods, a sampling
//! change reaches them through the kubelet's ConfigMap refresh and the collector's live
//! reload, with no restart.

use std::collections::BTreeMap;

use datatracing_config::{
    AuthConfig, Backend, ClickHouseConfig, ClientAuth, CollectorConfig, Config, KubernetesPeers,
    LogConfig, LogFormat, PeerTlsConfig, QueryConfig, Scope, StorageConfig, TlsConfig, TokenConfig,
};
use datatracing_core::policy::SamplingPolicy;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::crd::{ClientAuthMode, PodOptions, TokenScope, TracingPipeline};
use crate::error::{Error, Result};

/// Where the ConfigMap is mounted in the pods.
pub const CONFIG_DIR: &str = "/etc/datatracing/config";
/// The configuration file's key in the ConfigMap (the query pods' too, unless they have
/// credentials of their own).
pub const CONFIG_KEY: &str = "datatracing.yaml";
/// The query pods' configuration file when collectors and query use different ClickHouse
/// credentials.
pub const QUERY_CONFIG_KEY: &str = "query.yaml";
/// The sampling policy's key in the ConfigMap.
pub const SAMPLING_KEY: &str = "sampling.yaml";
/// Where the password Secret is mounted.
pub const SECRET_DIR: &str = "/etc/datatracing/secret";
/// Where the TLS Secret (`tls.crt`, `tls.key`) is mounted.
pub const TLS_DIR: &str = "/etc/datatracing/tls";
/// Where the client CA of mutual TLS is mounted (as `ca.crt`).
pub const TLS_CLIENT_CA_DIR: &str = "/etc/datatracing/tls-client-ca";
/// Where routing collectors find the CA of their peers' certificates.
pub const TLS_PEER_CA_DIR: &str = "/etc/datatracing/tls-peer-ca";
/// Where the token Secrets are mounted, one file per token, named after it.
pub const TOKENS_DIR: &str = "/etc/datatracing/tokens";
/// Where the ClickHouse CA is mounted (as `ca.crt`).
pub const CLICKHOUSE_CA_DIR: &str = "/etc/datatracing/clickhouse-ca";
/// Where the collectors' durable queue (`spec.collector.durableQueue`) keeps its log: an
/// `emptyDir` volume of the pod.
pub const DURABLE_QUEUE_DIR: &str = "/var/lib/datatracing/durable-queue";
/// Pod template annotation carrying the configuration hash.
pub const CONFIG_HASH_ANNOTATION: &str = "datatracing.io/config-hash";
/// Pod template annotation carrying the password Secret's version: a rotated password
/// rolls the pods (they read the file once, at start).
pub const SECRET_VERSION_ANNOTATION: &str = "datatracing.io/secret-version";
/// ConfigMap annotation carrying the sampling policy hash.
pub const SAMPLING_HASH_ANNOTATION: &str = "datatracing.io/sampling-hash";
/// Collector OTLP/gRPC port.
pub const OTLP_GRPC_PORT: i32 = 4317;
/// Collector OTLP/HTTP (and native JSON, health, metrics) port.
pub const OTLP_HTTP_PORT: i32 = 4318;
/// Query API port.
pub const QUERY_PORT: i32 = 16686;
/// The Services' `metrics` port (to the pods' HTTP port, where `/metrics` is served).
pub const METRICS_SERVICE_PORT: i32 = 9464;
/// The ServiceMonitor API (Prometheus Operator).
pub const SERVICE_MONITOR_API_VERSION: &str = "monitoring.coreos.com/v1";
/// How often the collector pods check the mounted policy file for a change.
pub const SAMPLING_RELOAD_INTERVAL: datatracing_core::ConfigDuration =
    datatracing_core::ConfigDuration::from_secs(1);
/// Seconds a terminating pod keeps serving before SIGTERM, unless the spec says otherwise.
pub const DEFAULT_PRE_STOP_DELAY_SECONDS: i32 = 5;
/// Seconds between SIGTERM and SIGKILL, unless the spec says otherwise.
pub const DEFAULT_TERMINATION_GRACE_PERIOD_SECONDS: i64 = 30;
/// Seconds of the grace period left for the collector to exit after its drain deadline.
pub const DRAIN_EXIT_MARGIN_SECONDS: i64 = 2;

/// Names of a pipeline's children.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Names {
    /// The ConfigMap.
    pub config: String,
    /// Collector Deployment, Service and PodDisruptionBudget.
    pub collector: String,
    /// Query Deployment and Service.
    pub query: String,
    /// The pods' ServiceAccount.
    pub service_account: String,
    /// The ServiceMonitor (both Services).
    pub monitor: String,
    /// The collectors' headless Service, and the Role and RoleBinding that let the
    /// collector pods watch its EndpointSlices (routing between replicas).
    pub peers: String,
}

impl Names {
    /// Names for the pipeline called `pipeline`.
    pub fn of(pipeline: &str) -> Self {
        Self {
            config: format!("{pipeline}-config"),
            collector: format!("{pipeline}-collector"),
            query: format!("{pipeline}-query"),
            service_account: format!("{pipeline}-datatracing"),
            monitor: pipeline.to_string(),
            peers: format!("{pipeline}-collector-peers"),
        }
    }
}

/// Everything the operator applies for one pipeline.
#[derive(Clone, Debug)]
pub struct Desired {
    /// The children's names.
    pub names: Names,
    /// The configuration (and sampling policy) ConfigMap.
    pub config_map: ConfigMap,
    /// Hash of the configuration file (retention left out: see [`config_file`]): the
    /// collector pods' restart trigger (and `status.configHash`).
    pub config_hash: String,
    /// Hash of the sections the query server reads (log, storage, query): its pods' restart
    /// trigger, so collector-only changes leave them alone.
    pub query_config_hash: String,
    /// Collector Deployment.
    pub collector: Deployment,
    /// Collector Service.
    pub collector_service: Service,
    /// Query Deployment.
    pub query: Deployment,
    /// Query Service.
    pub query_service: Service,
    /// The pods' ServiceAccount.
    pub service_account: ServiceAccount,
    /// Collector PodDisruptionBudget, unless the spec turns it off.
    pub pdb: Option<PodDisruptionBudget>,
    /// Query PodDisruptionBudget, unless the spec turns it off.
    pub query_pdb: Option<PodDisruptionBudget>,
    /// Whether the collector's and the query's budget are the default (the spec has no
    /// `podDisruptionBudget`): one of the user's with that name then wins over ours.
    pub pdb_defaulted: [bool; 2],
    /// The ServiceMonitor for both Services, when the spec asks for one (applied only when
    /// the cluster serves the kind).
    pub service_monitor: Option<kube::api::DynamicObject>,
    /// Collector HorizontalPodAutoscaler, when the spec asks for one (the collector
    /// Deployment then has no replicas of ours).
    pub hpa: Option<HorizontalPodAutoscaler>,
    /// Routing between collector replicas ([`routes`]): the headless Service whose
    /// EndpointSlices are the members, and the Role + RoleBinding to read them.
    pub peers: Option<Peers>,
}

/// The objects routing between collector replicas needs.
#[derive(Clone, Debug)]
pub struct Peers {
    /// Headless Service selecting the collector pods (ready ones are members).
    pub service: Service,
    /// Read access to the namespace's EndpointSlices.
    pub role: Role,
    /// Grants `role` to the collector pods' ServiceAccount.
    pub role_binding: RoleBinding,
}

/// Whether the collectors route spans to the replica that owns their trace: with tail
/// sampling and more than one replica possible (ADR 0009). Without sampling every replica
/// writes what it receives and routing would only cost.
pub fn routes(p: &TracingPipeline, sampling: bool) -> bool {
    let c = &p.spec.collector;
    sampling && (c.autoscaling.is_some() || c.replicas > 1)
}

/// The ClickHouse settings a pipeline's pods (and the operator's retention calls) use.
pub fn clickhouse_config(p: &TracingPipeline) -> ClickHouseConfig {
    let s = &p.spec.storage;
    ClickHouseConfig {
        url: s.url.clone(),
        database: s.database.clone(),
        user: s.user.clone(),
        password_file: s
            .password_secret_ref
            .as_ref()
            .map(|_| format!("{SECRET_DIR}/password").into()),
        ca_file: s
            .ca_secret_ref
            .as_ref()
            .map(|_| format!("{CLICKHOUSE_CA_DIR}/ca.crt").into()),
        cluster: s.cluster.clone(),
        initial_retention_days: s.retention_days,
        ..ClickHouseConfig::default()
    }
}

/// The pods' `tls:` section: the mounted Secrets' files.
pub fn tls_config(p: &TracingPipeline) -> Option<TlsConfig> {
    let t = p.spec.tls.as_ref()?;
    let client_ca = t.client_ca_secret_ref.as_ref();
    Some(TlsConfig {
        client_ca_file: client_ca.map(|_| format!("{TLS_CLIENT_CA_DIR}/ca.crt").into()),
        client_auth: client_ca.map(|_| match t.client_auth.unwrap_or_default() {
            ClientAuthMode::Required => ClientAuth::Required,
            ClientAuthMode::Optional => ClientAuth::Optional,
        }),
        ..TlsConfig::new(format!("{TLS_DIR}/tls.crt"), format!("{TLS_DIR}/tls.key"))
    })
}

/// The pods' `auth:` section: one token file per token, in the mounted directory.
pub fn auth_config(p: &TracingPipeline) -> AuthConfig {
    let Some(a) = &p.spec.auth else {
        return AuthConfig::default();
    };
    AuthConfig {
        tokens: a
            .tokens
            .iter()
            .map(|t| TokenConfig {
                name: t.name.clone(),
                scopes: t
                    .scopes
                    .iter()
                    .map(|s| match s {
                        TokenScope::Ingest => Scope::Ingest,
                        TokenScope::Query => Scope::Query,
                        TokenScope::Admin => Scope::Admin,
                        TokenScope::Peer => Scope::Peer,
                    })
                    .collect(),
                file: Some(format!("{TOKENS_DIR}/{}", t.name).into()),
                env: None,
                tenant: t.tenant.clone(),
            })
            .collect(),
        protect_ops: a.protect_ops,
        ..AuthConfig::default()
    }
}

/// Whether collectors or query have ClickHouse credentials of their own (then each gets
/// its own file).
pub fn separate_credentials(p: &TracingPipeline) -> bool {
    let s = &p.spec.storage;
    s.collector_credentials.is_some() || s.query_credentials.is_some()
}

/// The user and password Secret the collector (`collector: true`) or query pods use.
pub fn role_credentials(
    p: &TracingPipeline,
    collector: bool,
) -> (&str, Option<&k8s_openapi::api::core::v1::SecretKeySelector>) {
    let s = &p.spec.storage;
    let own = if collector {
        s.collector_credentials.as_ref()
    } else {
        s.query_credentials.as_ref()
    };
    match own {
        Some(c) => (c.user.as_str(), c.password_secret_ref.as_ref()),
        None => (s.user.as_str(), s.password_secret_ref.as_ref()),
    }
}

/// The ClickHouse settings of the collector (`collector: true`) or query pods: the
/// operator's, with the role's credentials. Collectors with credentials of their own do not
/// migrate: an INSERT-only user could not, and the operator owns the schema.
pub fn pod_clickhouse_config(p: &TracingPipeline, collector: bool) -> ClickHouseConfig {
    let (user, secret) = role_credentials(p, collector);
    let mut c = clickhouse_config(p);
    c.user = user.to_string();
    c.password_file = secret.map(|_| format!("{SECRET_DIR}/password").into());
    if collector && p.spec.storage.collector_credentials.is_some() {
        c.migrate_on_start = false;
    }
    c
}

/// The collector settings rendered from the spec.
pub fn collector_config(p: &TracingPipeline, sampling: bool) -> CollectorConfig {
    let c = &p.spec.collector;
    let mut cfg = CollectorConfig::default();
    if let Some(v) = c.max_body_bytes.and_then(|v| usize::try_from(v).ok()) {
        cfg.max_body_bytes = v;
        cfg.max_decompressed_bytes = cfg.max_decompressed_bytes.max(v);
        // The decode budgets must hold at least one such request (validated relations).
        cfg.max_request_memory_bytes = cfg.max_request_memory_bytes.max(v);
        cfg.max_decode_memory_bytes = cfg
            .max_decode_memory_bytes
            .max(cfg.max_request_memory_bytes)
            .max(cfg.max_decompressed_bytes);
    }
    if let Some(v) = c
        .max_spans_per_request
        .and_then(|v| usize::try_from(v).ok())
    {
        cfg.max_spans_per_request = v;
    }
    if let Some(l) = &c.limits {
        cfg.limits = l.clone();
    }
    if let Some(q) = &c.queue {
        cfg.queue = q.clone();
    }
    if let Some(d) = c.durable_queue.as_ref().filter(|d| d.enabled) {
        let q = &mut cfg.durable_queue;
        q.enabled = true;
        q.dir = DURABLE_QUEUE_DIR.into();
        if let Some(v) = d.max_bytes.and_then(|v| u64::try_from(v).ok()) {
            q.max_bytes = v;
        }
        // Stored segments are deleted whole: smaller segments keep a small log's disk use
        // near its bound.
        q.segment_bytes = q.segment_bytes.min(q.max_bytes / 4);
    }
    // SIGTERM comes after the preStop delay; the drain (requests in flight, the queue, the
    // durable queue's log) must end before the grace period's SIGKILL, with a margin for
    // the process to exit.
    let grace = c
        .pod
        .termination_grace_period_seconds
        .unwrap_or(DEFAULT_TERMINATION_GRACE_PERIOD_SECONDS);
    let pre_stop = i64::from(
        c.pod
            .pre_stop_delay_seconds
            .unwrap_or(DEFAULT_PRE_STOP_DELAY_SECONDS),
    );
    let drain = u64::try_from(grace - pre_stop - DRAIN_EXIT_MARGIN_SECONDS).unwrap_or(0);
    cfg.drain_timeout = datatracing_core::ConfigDuration::from_secs(drain.max(1));
    cfg.sampling.enabled = sampling;
    cfg.sampling.policy_file = sampling.then(|| format!("{CONFIG_DIR}/{SAMPLING_KEY}").into());
    // A policy change reaches the pods when the kubelet refreshes the mounted ConfigMap;
    // checking the small file every second keeps the collectors' own share of the
    // propagation under a second (the 5s default was half of the 10s goal, measured in
    // e2e/tests/cluster/policy_live.rs).
    cfg.sampling.reload_interval = SAMPLING_RELOAD_INTERVAL;
    if routes(p, sampling) {
        cfg.peers.enabled = true;
        // Interpolated by the binary from the downward API (POD_IP, set on the pods).
        cfg.peers.self_addr = format!("${{POD_IP}}:{OTLP_GRPC_PORT}");
        cfg.peers.kubernetes = Some(KubernetesPeers {
            service: Names::of(&p.name_any()).peers,
            namespace: p.namespace().unwrap_or_else(|| "default".into()),
            port_name: "otlp-grpc".into(),
            kubeconfig: None,
        });
        // With auth on, replicas forward with the pipeline's `peer` token (mounted with the
        // others); without one, peers refuse forwards and each replica keeps what it
        // receives (split traces, logged by the collectors).
        cfg.peers.token_file = p
            .spec
            .auth
            .as_ref()
            .and_then(|a| {
                a.tokens
                    .iter()
                    .find(|t| t.scopes.contains(&TokenScope::Peer))
            })
            .map(|t| format!("{TOKENS_DIR}/{}", t.name).into());
        cfg.peers.tls = peer_tls_config(p);
    }
    cfg
}

/// Routing collectors' `collector.peers.tls` when the listeners have TLS: the peer CA
/// (mounted by [`peer_ca_volume`]), the name the certificate holds (peers are pod IPs),
/// and with a client CA the pods' own certificate as their client identity.
pub fn peer_tls_config(p: &TracingPipeline) -> Option<PeerTlsConfig> {
    let t = p.spec.tls.as_ref()?;
    let server_name = t
        .peers
        .as_ref()
        .and_then(|s| s.server_name.clone())
        .unwrap_or_else(|| {
            format!(
                "{}.{}.svc",
                Names::of(&p.name_any()).collector,
                p.namespace().unwrap_or_else(|| "default".into())
            )
        });
    let mtls = t.client_ca_secret_ref.is_some();
    Some(PeerTlsConfig {
        cert_file: mtls.then(|| format!("{TLS_DIR}/tls.crt").into()),
        key_file: mtls.then(|| format!("{TLS_DIR}/tls.key").into()),
        server_name: Some(server_name),
        ..PeerTlsConfig::new(format!("{TLS_PEER_CA_DIR}/ca.crt"))
    })
}

/// The volume with the peer CA for routing collectors with TLS: `tls.peers.caSecretRef`,
/// else key `ca.crt` of the TLS Secret.
fn peer_ca_volume(p: &TracingPipeline) -> Option<serde_json::Value> {
    let t = p.spec.tls.as_ref()?;
    let (secret, key) = match t.peers.as_ref().and_then(|s| s.ca_secret_ref.as_ref()) {
        Some(r) => (r.name.clone(), r.key.clone()),
        None => (t.secret_name.clone(), "ca.crt".to_string()),
    };
    Some(
        json!({"name": "tls-peer-ca", "secret": {"secretName": secret, "defaultMode": 0o440,
            "items": [{"key": key, "path": "ca.crt"}]}}),
    )
}

/// The whole configuration a pipeline's collector pods (and query pods, unless they have
/// credentials of their own) run: the binary's own [`Config`], so the rendered file cannot
/// drift from what the binary parses.
pub fn pod_config(p: &TracingPipeline, sampling: bool) -> Config {
    role_config(p, sampling, true)
}

/// [`pod_config`] with the ClickHouse credentials of the collector or query pods.
fn role_config(p: &TracingPipeline, sampling: bool, collector: bool) -> Config {
    Config {
        log: LogConfig {
            format: LogFormat::Json,
            level: "info".into(),
        },
        storage: StorageConfig {
            backend: Backend::Clickhouse,
            clickhouse: pod_clickhouse_config(p, collector),
            ..StorageConfig::default()
        },
        collector: collector_config(p, sampling),
        query: QueryConfig::default(),
        tls: tls_config(p),
        auth: auth_config(p),
        // The pods do not run the operator; its section stays at the defaults.
        ..Config::default()
    }
}

/// The rendered configuration file and the hashes that restart pods when they change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigFile {
    /// The file as it goes into the ConfigMap.
    pub text: String,
    /// The collector pods' restart trigger (and `status.configHash`).
    pub hash: String,
    /// The query pods' restart trigger: the sections the query server reads.
    pub query_hash: String,
    /// The query pods' own file ([`QUERY_CONFIG_KEY`]), when their credentials differ.
    pub query_text: Option<String>,
}

/// Renders the configuration file and checks it the way the binary will.
///
/// Neither hash covers `storage.clickhouse.initial_retention_days`: retention belongs to the
/// operator, which sets TTLs on existing tables itself; the pods read the value only when
/// they create a table, so a retention change must not roll them (a pod started later reads
/// the current value from the file).
pub fn config_file(p: &TracingPipeline, sampling: bool) -> Result<ConfigFile> {
    let config = pod_config(p, sampling);
    config
        .validate()
        .map_err(|e| Error::InvalidConfiguration(e.to_string()))?;
    let render = |config: &Config| -> Result<(String, String)> {
        let body = serde_saphyr::to_string(config).map_err(|e| Error::Render(e.to_string()))?;
        // The binary interpolates `${VAR}` and reads `$$` as `$`: a `$` in a spec value (a
        // URL, a user name) must reach the pod as written.
        let body = body.replace('$', "$$");
        // ...except the one variable the operator means: the pod's IP as its peer address.
        let body = body.replace(
            &format!("$${{POD_IP}}:{OTLP_GRPC_PORT}"),
            &format!("${{POD_IP}}:{OTLP_GRPC_PORT}"),
        );
        let query_view = serde_saphyr::to_string(&(
            &config.log,
            &config.storage,
            &config.query,
            &config.tls,
            &config.auth,
        ))
        .map_err(|e| Error::Render(e.to_string()))?;
        let text = format!(
            "# Rendered by the DataTracing operator from TracingPipeline {}/{}; edits are overwritten.\n{body}",
            p.namespace().unwrap_or_default(),
            p.name_any()
        );
        Ok((text, query_view))
    };
    let (text, _) = render(&config)?;
    let rolling = |mut c: Config| {
        c.storage.clickhouse.initial_retention_days =
            ClickHouseConfig::default().initial_retention_days;
        c
    };
    let (rolling_text, mut query_view) = render(&rolling(config))?;
    let mut query_text = None;
    if separate_credentials(p) {
        let query = role_config(p, sampling, false);
        query_text = Some(render(&query)?.0);
        query_view = render(&rolling(query))?.1;
    }
    Ok(ConfigFile {
        text,
        hash: hash(&rolling_text),
        query_hash: hash(&query_view),
        query_text,
    })
}

/// The TLS, client CA, token and ClickHouse CA Secrets as volumes, with the directory each
/// is mounted at. Whole Secret volumes (no `subPath`), so the kubelet's updates reach the
/// files the pods re-read.
fn security_volumes(p: &TracingPipeline) -> Vec<(serde_json::Value, &'static str)> {
    let mut out = Vec::new();
    if let Some(t) = &p.spec.tls {
        out.push((
            json!({"name": "tls", "secret": {"secretName": t.secret_name, "defaultMode": 0o440,
                "items": [{"key": "tls.crt", "path": "tls.crt"}, {"key": "tls.key", "path": "tls.key"}]}}),
            TLS_DIR,
        ));
        if let Some(ca) = &t.client_ca_secret_ref {
            out.push((
                json!({"name": "tls-client-ca", "secret": {"secretName": ca.name, "defaultMode": 0o440,
                    "items": [{"key": ca.key, "path": "ca.crt"}]}}),
                TLS_CLIENT_CA_DIR,
            ));
        }
    }
    if let Some(a) = &p.spec.auth {
        let sources: Vec<_> = a
            .tokens
            .iter()
            .map(|t| {
                json!({"secret": {"name": t.secret_ref.name,
                    "items": [{"key": t.secret_ref.key, "path": t.name}]}})
            })
            .collect();
        out.push((
            json!({"name": "tokens", "projected": {"defaultMode": 0o440, "sources": sources}}),
            TOKENS_DIR,
        ));
    }
    if let Some(ca) = &p.spec.storage.ca_secret_ref {
        out.push((
            json!({"name": "clickhouse-ca", "secret": {"secretName": ca.name, "defaultMode": 0o440,
                "items": [{"key": ca.key, "path": "ca.crt"}]}}),
            CLICKHOUSE_CA_DIR,
        ));
    }
    out
}

/// A short stable content hash.
pub fn hash(text: &str) -> String {
    let d = Sha256::digest(text.as_bytes());
    d.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// Labels every child carries; `component` narrows them to one Deployment's pods.
pub fn labels(p: &TracingPipeline, component: Option<&str>) -> BTreeMap<String, String> {
    let mut l = BTreeMap::from([
        (
            "app.kubernetes.io/name".to_string(),
            "datatracing".to_string(),
        ),
        ("app.kubernetes.io/instance".to_string(), p.name_any()),
        (
            "app.kubernetes.io/managed-by".to_string(),
            "datatracing-operator".to_string(),
        ),
    ]);
    if let Some(c) = component {
        l.insert("app.kubernetes.io/component".into(), c.into());
    }
    l
}

/// The labels that select one Deployment's pods.
pub fn selector(p: &TracingPipeline, component: &str) -> BTreeMap<String, String> {
    let mut l = labels(p, Some(component));
    l.remove("app.kubernetes.io/managed-by");
    l
}

fn owner(p: &TracingPipeline) -> Result<OwnerReference> {
    p.controller_owner_ref(&())
        .ok_or_else(|| Error::Render("the pipeline has no uid yet".into()))
}

fn meta(p: &TracingPipeline, name: &str, component: Option<&str>) -> Result<ObjectMeta> {
    Ok(ObjectMeta {
        name: Some(name.to_string()),
        namespace: p.namespace(),
        labels: Some(labels(p, component)),
        owner_references: Some(vec![owner(p)?]),
        ..ObjectMeta::default()
    })
}

fn to_json<T: serde::Serialize + ?Sized>(v: &T) -> Result<serde_json::Value> {
    serde_json::to_value(v).map_err(|e| Error::Render(e.to_string()))
}

fn typed<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Result<T> {
    serde_json::from_value(v).map_err(|e| Error::Render(e.to_string()))
}

/// Everything for `p`. `sampling` is the merged, validated policy (or none: keep all);
/// `sampling_yaml` its text as it goes into the ConfigMap.
pub fn desired(p: &TracingPipeline, image: &str, sampling_yaml: Option<&str>) -> Result<Desired> {
    let names = Names::of(&p.name_any());
    let ConfigFile {
        text: config,
        hash: config_hash,
        query_hash: query_config_hash,
        query_text,
    } = config_file(p, sampling_yaml.is_some())?;

    let query_key = if query_text.is_some() {
        QUERY_CONFIG_KEY
    } else {
        CONFIG_KEY
    };
    let mut data = BTreeMap::from([(CONFIG_KEY.to_string(), config)]);
    if let Some(q) = query_text {
        data.insert(QUERY_CONFIG_KEY.to_string(), q);
    }
    let mut cm_meta = meta(p, &names.config, None)?;
    if let Some(s) = sampling_yaml {
        data.insert(SAMPLING_KEY.to_string(), s.to_string());
        cm_meta.annotations = Some(BTreeMap::from([(
            SAMPLING_HASH_ANNOTATION.to_string(),
            hash(s),
        )]));
    }
    let config_map = ConfigMap {
        metadata: cm_meta,
        data: Some(data),
        ..ConfigMap::default()
    };

    let routed = routes(p, sampling_yaml.is_some());
    // Each Deployment mounts its role's password Secret at the same path.
    let secret_volume = |collector: bool| {
        role_credentials(p, collector).1.map(|s| {
            json!({"name": "clickhouse-password", "secret": {
                "secretName": s.name, "defaultMode": 0o440,
                "items": [{"key": s.key, "path": "password"}]}})
        })
    };
    let security_volumes = security_volumes(p);
    let durable = collector_config(p, sampling_yaml.is_some()).durable_queue;
    // The kubelet's probes speak HTTPS without checking the certificate, but they have no
    // client certificate and no token: then they only check that the port accepts.
    let tls_on = p.spec.tls.is_some();
    let tcp_probes = p.spec.tls.as_ref().is_some_and(|t| {
        t.client_ca_secret_ref.is_some()
            && t.client_auth.unwrap_or_default() == ClientAuthMode::Required
    }) || p.spec.auth.as_ref().is_some_and(|a| a.protect_ops);
    let probe = |path: &str, port: i32| {
        if tcp_probes {
            json!({"tcpSocket": {"port": port}})
        } else if tls_on {
            json!({"httpGet": {"path": path, "port": port, "scheme": "HTTPS"}})
        } else {
            json!({"httpGet": {"path": path, "port": port}})
        }
    };
    let pod = |component: &str,
               image: &str,
               resources: Option<&k8s_openapi::api::core::v1::ResourceRequirements>,
               ports: serde_json::Value,
               probe_port: i32,
               restart_hash: &str,
               opts: &PodOptions|
     -> Result<serde_json::Value> {
        let mut container_resources = match resources {
            Some(r) => to_json(r)?,
            None => serde_json::Value::Null,
        };
        let mut volumes = vec![json!({"name": "config", "configMap": {"name": names.config}})];
        let mut mounts = vec![json!({"name": "config", "mountPath": CONFIG_DIR, "readOnly": true})];
        let config_key = if component == "query" {
            query_key
        } else {
            CONFIG_KEY
        };
        if let Some(v) = secret_volume(component == "collector") {
            volumes.push(v);
            mounts.push(
                json!({"name": "clickhouse-password", "mountPath": SECRET_DIR, "readOnly": true}),
            );
        }
        if component == "collector" && durable.enabled {
            // The log outlives a crashed container (same pod), not the pod. The size limit
            // leaves room for the segment being written and the one being deleted, so a
            // log within its bound never gets the pod evicted.
            let limit = durable.max_bytes + 2 * durable.segment_bytes;
            // The scheduler reserves the node disk the log may fill.
            if !container_resources["requests"].is_object() {
                container_resources["requests"] = json!({});
            }
            if container_resources["requests"]
                .get("ephemeral-storage")
                .is_none()
            {
                container_resources["requests"]["ephemeral-storage"] = json!(limit.to_string());
            }
            volumes.push(
                json!({"name": "durable-queue", "emptyDir": {"sizeLimit": limit.to_string()}}),
            );
            mounts.push(json!({"name": "durable-queue", "mountPath": DURABLE_QUEUE_DIR}));
        }
        for (volume, dir) in &security_volumes {
            volumes.push(volume.clone());
            let name = volume["name"].clone();
            mounts.push(json!({"name": name, "mountPath": dir, "readOnly": true}));
        }
        if component == "collector"
            && routed
            && let Some(v) = peer_ca_volume(p)
        {
            volumes.push(v);
            mounts.push(
                json!({"name": "tls-peer-ca", "mountPath": TLS_PEER_CA_DIR, "readOnly": true}),
            );
        }
        for v in opts.volumes.iter().flatten() {
            volumes.push(to_json(v)?);
        }
        for m in opts.volume_mounts.iter().flatten() {
            mounts.push(to_json(m)?);
        }
        // The operator's labels and annotation win (CEL refuses the reserved keys anyway).
        let mut pod_labels = opts.pod_labels.clone().unwrap_or_default();
        pod_labels.extend(selector(p, component));
        // Prometheus annotations yield to the user's; the restart hash yields to nobody.
        let mut annotations = BTreeMap::new();
        if p.spec.monitoring.prometheus_annotations {
            annotations.extend([
                ("prometheus.io/scrape".to_string(), "true".to_string()),
                ("prometheus.io/port".to_string(), probe_port.to_string()),
                ("prometheus.io/path".to_string(), "/metrics".to_string()),
            ]);
            if tls_on {
                annotations.insert("prometheus.io/scheme".to_string(), "https".to_string());
            }
        }
        annotations.extend(opts.pod_annotations.clone().unwrap_or_default());
        annotations.insert(CONFIG_HASH_ANNOTATION.into(), restart_hash.into());
        let spread = match &opts.topology_spread_constraints {
            None => json!([{
                "maxSkew": 1,
                "topologyKey": "kubernetes.io/hostname",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": selector(p, component)},
            }]),
            Some(list) => {
                let mut out = Vec::with_capacity(list.len());
                for c in list {
                    let mut v = to_json(c)?;
                    if c.label_selector.is_none() {
                        v["labelSelector"] = json!({"matchLabels": selector(p, component)});
                    }
                    out.push(v);
                }
                serde_json::Value::Array(out)
            }
        };
        let pre_stop = opts
            .pre_stop_delay_seconds
            .unwrap_or(DEFAULT_PRE_STOP_DELAY_SECONDS);
        let startup = match &opts.startup_probe {
            Some(probe) => to_json(probe)?,
            None => {
                let mut s = probe("/healthz", probe_port);
                s["periodSeconds"] = json!(2);
                s["failureThreshold"] = json!(30);
                s
            }
        };
        let mut readiness = probe("/readyz", probe_port);
        readiness["periodSeconds"] = json!(5);
        readiness["failureThreshold"] = json!(3);
        let mut liveness = probe("/healthz", probe_port);
        liveness["periodSeconds"] = json!(10);
        liveness["failureThreshold"] = json!(6);
        let mut container = json!({
            "name": component,
            "image": image,
            "args": [component, "--config", format!("{CONFIG_DIR}/{config_key}")],
            "ports": ports,
            "resources": container_resources,
            "startupProbe": startup,
            "readinessProbe": readiness,
            "livenessProbe": liveness,
            "securityContext": {"allowPrivilegeEscalation": false,
                                "readOnlyRootFilesystem": true,
                                "capabilities": {"drop": ["ALL"]}},
            "volumeMounts": mounts,
        });
        if pre_stop > 0 {
            // A sleep, not a command: the image has no shell.
            container["lifecycle"] = json!({"preStop": {"sleep": {"seconds": pre_stop}}});
        }
        let mut env = match &opts.env {
            Some(env) => to_json(env)?,
            None => json!([]),
        };
        if routed {
            // The peer address (collector.peers.self) is the pod's IP. The query pods read
            // the same file (unless their credentials differ), so they get the variable too.
            if let Some(list) = env.as_array_mut() {
                list.push(json!({"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}));
            }
        }
        if env.as_array().is_some_and(|l| !l.is_empty()) {
            container["env"] = env;
        }
        if let Some(env_from) = &opts.env_from {
            container["envFrom"] = to_json(env_from)?;
        }
        let mut spec = json!({
            "serviceAccountName": opts.service_account_name.as_deref().unwrap_or(&names.service_account),
            // Routing collectors read their peers' EndpointSlices with the pod's token.
            "automountServiceAccountToken": component == "collector" && routed,
            "securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532,
                                "fsGroup": 65532, "seccompProfile": {"type": "RuntimeDefault"}},
            "terminationGracePeriodSeconds": opts
                .termination_grace_period_seconds
                .unwrap_or(DEFAULT_TERMINATION_GRACE_PERIOD_SECONDS),
            "topologySpreadConstraints": spread,
            "containers": [container],
            "volumes": volumes,
        });
        if let Some(v) = &opts.node_selector {
            spec["nodeSelector"] = to_json(v)?;
        }
        if let Some(v) = &opts.tolerations {
            spec["tolerations"] = to_json(v)?;
        }
        if let Some(v) = &opts.affinity {
            spec["affinity"] = to_json(v)?;
        }
        if let Some(v) = &opts.priority_class_name {
            spec["priorityClassName"] = json!(v);
        }
        if let Some(v) = &opts.image_pull_secrets {
            spec["imagePullSecrets"] = to_json(v)?;
        }
        Ok(json!({
            "metadata": {"labels": pod_labels, "annotations": annotations},
            "spec": spec,
        }))
    };
    let deployment = |name: &str,
                      component: &str,
                      replicas: Option<i32>,
                      template: serde_json::Value|
     -> Result<Deployment> {
        let mut spec = json!({
            "selector": {"matchLabels": selector(p, component)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": template,
        });
        // Without replicas of ours, an autoscaler's count stands.
        if let Some(r) = replicas {
            spec["replicas"] = json!(r);
        }
        typed(json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": meta(p, name, Some(component))?,
            "spec": spec,
        }))
    };
    let c = &p.spec.collector;
    let collector = deployment(
        &names.collector,
        "collector",
        c.autoscaling.is_none().then_some(c.replicas),
        pod(
            "collector",
            c.image.as_deref().unwrap_or(image),
            c.resources.as_ref(),
            json!([
                {"name": "otlp-grpc", "containerPort": OTLP_GRPC_PORT, "protocol": "TCP"},
                {"name": "otlp-http", "containerPort": OTLP_HTTP_PORT, "protocol": "TCP"},
            ]),
            OTLP_HTTP_PORT,
            &config_hash,
            &c.pod,
        )?,
    )?;
    let q = &p.spec.query;
    let query = deployment(
        &names.query,
        "query",
        Some(q.replicas),
        pod(
            "query",
            q.image.as_deref().unwrap_or(image),
            q.resources.as_ref(),
            json!([{"name": "http", "containerPort": QUERY_PORT, "protocol": "TCP"}]),
            QUERY_PORT,
            &query_config_hash,
            &q.pod,
        )?,
    )?;
    let service = |name: &str, component: &str, ports: serde_json::Value| -> Result<Service> {
        typed(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": meta(p, name, Some(component))?,
            "spec": {"type": "ClusterIP", "selector": selector(p, component), "ports": ports}
        }))
    };
    let collector_service = service(
        &names.collector,
        "collector",
        json!([
            {"name": "otlp-grpc", "port": OTLP_GRPC_PORT, "targetPort": "otlp-grpc", "protocol": "TCP", "appProtocol": "grpc"},
            {"name": "otlp-http", "port": OTLP_HTTP_PORT, "targetPort": "otlp-http", "protocol": "TCP", "appProtocol": "http"},
            {"name": "metrics", "port": METRICS_SERVICE_PORT, "targetPort": "otlp-http", "protocol": "TCP", "appProtocol": "http"},
        ]),
    )?;
    let query_service = service(
        &names.query,
        "query",
        json!([
            {"name": "http", "port": QUERY_PORT, "targetPort": "http", "protocol": "TCP", "appProtocol": "http"},
            {"name": "metrics", "port": METRICS_SERVICE_PORT, "targetPort": "http", "protocol": "TCP", "appProtocol": "http"},
        ]),
    )?;
    let service_monitor = p
        .spec
        .monitoring
        .service_monitor
        .as_ref()
        .filter(|m| m.enabled)
        .map(|m| {
            let mut metadata = meta(p, &names.monitor, None)?;
            if let Some(extra) = &m.labels {
                let mut l = extra.clone();
                l.extend(metadata.labels.take().unwrap_or_default());
                metadata.labels = Some(l);
            }
            let scheme = if p.spec.tls.is_some() {
                "https"
            } else {
                "http"
            };
            let mut endpoint = json!({"port": "metrics", "path": "/metrics", "scheme": scheme});
            if let Some(i) = &m.interval {
                endpoint["interval"] = json!(i);
            }
            let mut selector_labels = labels(p, None);
            selector_labels.remove("app.kubernetes.io/name");
            typed::<kube::api::DynamicObject>(json!({
                "apiVersion": SERVICE_MONITOR_API_VERSION, "kind": "ServiceMonitor",
                "metadata": metadata,
                "spec": {
                    "selector": {"matchLabels": selector_labels},
                    "namespaceSelector": {"matchNames": [p.namespace()]},
                    "endpoints": [endpoint],
                }
            }))
        })
        .transpose()?;
    let service_account = typed(json!({
        "apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": meta(p, &names.service_account, None)?,
        "automountServiceAccountToken": false,
    }))?;
    let budget = |name: &str,
                  component: &str,
                  spec: Option<&crate::crd::DisruptionBudget>|
     -> Result<Option<PodDisruptionBudget>> {
        let b = spec.cloned().unwrap_or_default();
        if !b.enabled {
            return Ok(None);
        }
        let mut pdb_spec = json!({"selector": {"matchLabels": selector(p, component)}});
        match (&b.min_available, &b.max_unavailable) {
            (Some(min), _) => pdb_spec["minAvailable"] = to_json(min)?,
            (None, Some(max)) => pdb_spec["maxUnavailable"] = to_json(max)?,
            (None, None) => pdb_spec["maxUnavailable"] = json!(1),
        }
        typed(json!({
            "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": meta(p, name, Some(component))?,
            "spec": pdb_spec,
        }))
        .map(Some)
    };
    let pdb = budget(
        &names.collector,
        "collector",
        c.pod_disruption_budget.as_ref(),
    )?;
    let query_pdb = budget(&names.query, "query", q.pod_disruption_budget.as_ref())?;
    let hpa = c
        .autoscaling
        .as_ref()
        .map(|a| {
            let resource = |name: &str, percent: i32| {
                json!({"type": "Resource", "resource": {"name": name,
                       "target": {"type": "Utilization", "averageUtilization": percent}}})
            };
            let mut metrics = Vec::new();
            if let Some(cpu) = a.target_cpu_utilization_percentage {
                metrics.push(resource("cpu", cpu));
            }
            if let Some(memory) = a.target_memory_utilization_percentage {
                metrics.push(resource("memory", memory));
            }
            for m in a.metrics.iter().flatten() {
                metrics.push(to_json(m)?);
            }
            if metrics.is_empty() {
                metrics.push(resource("cpu", 80));
            }
            let mut spec = json!({
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": names.collector},
                "minReplicas": a.min_replicas,
                "maxReplicas": a.max_replicas,
                "metrics": metrics,
            });
            if let Some(b) = &a.behavior {
                spec["behavior"] = to_json(b)?;
            }
            typed(json!({
                "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
                "metadata": meta(p, &names.collector, Some("collector"))?,
                "spec": spec,
            }))
        })
        .transpose()?;
    let peers = if routed {
        let account = c
            .pod
            .service_account_name
            .clone()
            .unwrap_or_else(|| names.service_account.clone());
        Some(Peers {
            service: typed(json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": meta(p, &names.peers, Some("collector"))?,
                "spec": {
                    "clusterIP": "None",
                    // Only ready collectors are members: a terminating one leaves first.
                    "publishNotReadyAddresses": false,
                    "selector": selector(p, "collector"),
                    "ports": [{"name": "otlp-grpc", "port": OTLP_GRPC_PORT, "targetPort": "otlp-grpc",
                               "protocol": "TCP", "appProtocol": "grpc"}],
                }
            }))?,
            role: typed(json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                "metadata": meta(p, &names.peers, Some("collector"))?,
                "rules": [{"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
                           "verbs": ["get", "list", "watch"]}],
            }))?,
            role_binding: typed(json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": meta(p, &names.peers, Some("collector"))?,
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": names.peers},
                "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": p.namespace()}],
            }))?,
        })
    } else {
        None
    };
    Ok(Desired {
        names,
        config_map,
        config_hash,
        query_config_hash,
        collector,
        collector_service,
        query,
        query_service,
        service_account,
        pdb,
        query_pdb,
        pdb_defaulted: [
            c.pod_disruption_budget.is_none(),
            q.pod_disruption_budget.is_none(),
        ],
        service_monitor,
        hpa,
        peers,
    })
}

/// Marks both Deployments' pod templates with the password Secret's `version`, so a
/// rotated password rolls them. The version is a hash of the Secret's UID and
/// resourceVersion rather than of the password: a pod template is readable by many more
/// people than the Secret, and a short hash of a weak password can be brute-forced. (Any
/// write to the Secret rolls the pods; Secrets rarely change otherwise.)
pub fn set_secret_version(d: &mut Desired, version: &str) {
    for deployment in [&mut d.collector, &mut d.query] {
        if let Some(meta) = deployment
            .spec
            .as_mut()
            .and_then(|s| s.template.metadata.as_mut())
        {
            meta.annotations
                .get_or_insert_with(BTreeMap::new)
                .insert(SECRET_VERSION_ANNOTATION.into(), version.into());
        }
    }
}

/// The sampling policy as it is written to the ConfigMap (the format the collector reads).
pub fn sampling_yaml(policy: &SamplingPolicy, sources: &[String]) -> Result<String> {
    let body = serde_saphyr::to_string(policy).map_err(|e| Error::Render(e.to_string()))?;
    Ok(format!(
        "# Merged by the DataTracing operator from SamplingPolicies: {}\n{body}",
        sources.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{SamplingPolicy, TracingPipeline};
    use crate::policy;

    fn sample<T: serde::de::DeserializeOwned>(name: &str) -> T {
        let path = format!("{}/../config/samples/{name}", env!("CARGO_MANIFEST_DIR"));
        serde_saphyr::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    fn pipeline() -> TracingPipeline {
        let mut p: TracingPipeline = sample("tracingpipeline.yaml");
        p.metadata.namespace = Some("team-a".into());
        p.metadata.uid = Some("uid-1".into());
        p
    }

    fn sampling() -> String {
        let policies: Vec<SamplingPolicy> = vec![
            sample("samplingpolicy-errors.yaml"),
            sample("samplingpolicy-baseline.yaml"),
        ];
        let m = policy::merge(policies, &pipeline().spec.sampling.default_action).unwrap();
        sampling_yaml(&m.policy, &m.sources).unwrap()
    }

    #[test]
    fn the_sample_renders_every_child_owned_and_labelled() {
        let p = pipeline();
        let d = desired(&p, "img:1", Some(&sampling())).unwrap();
        let metas = [
            &d.config_map.metadata,
            &d.collector.metadata,
            &d.collector_service.metadata,
            &d.query.metadata,
            &d.query_service.metadata,
            &d.service_account.metadata,
            &d.pdb.as_ref().unwrap().metadata,
        ];
        for m in metas {
            let owner = &m.owner_references.as_ref().unwrap()[0];
            assert_eq!(
                (owner.uid.as_str(), owner.controller),
                ("uid-1", Some(true))
            );
            assert_eq!(m.namespace.as_deref(), Some("team-a"));
            assert_eq!(
                m.labels.as_ref().unwrap()["app.kubernetes.io/managed-by"],
                "datatracing-operator"
            );
        }
        let spec = d.collector.spec.as_ref().unwrap();
        assert_eq!(spec.replicas, Some(3));
        let pod = spec.template.spec.as_ref().unwrap();
        let c = &pod.containers[0];
        assert_eq!(c.image.as_deref(), Some("img:1"));
        let ports: Vec<i32> = c
            .ports
            .as_ref()
            .unwrap()
            .iter()
            .map(|p| p.container_port)
            .collect();
        assert_eq!(ports, [OTLP_GRPC_PORT, OTLP_HTTP_PORT]);
        assert!(
            pod.volumes
                .as_ref()
                .unwrap()
                .iter()
                .any(|v| v.secret.is_some()),
            "password Secret mounted"
        );
        assert_eq!(
            spec.template
                .metadata
                .as_ref()
                .unwrap()
                .annotations
                .as_ref()
                .unwrap()[CONFIG_HASH_ANNOTATION],
            d.config_hash
        );
        let config = &d.config_map.data.as_ref().unwrap()[CONFIG_KEY];
        assert!(config.contains("backend: clickhouse"));
        assert!(config.contains("password_file: /etc/datatracing/secret/password"));
        assert!(config.contains("policy_file: /etc/datatracing/config/sampling.yaml"));
        assert!(config.contains("mode: block"));
        assert!(
            d.config_map
                .data
                .as_ref()
                .unwrap()
                .contains_key(SAMPLING_KEY)
        );
    }

    /// With auth on, routed collectors present the pipeline's `peer` token to each other:
    /// the config names its mounted file, and the token is accepted with the `peer` scope.
    #[test]
    fn routed_collectors_with_auth_forward_with_the_peer_token() {
        let mut p = pipeline();
        p.spec.auth = Some(
            serde_json::from_value(json!({"tokens": [
                {"name": "pipelines", "scopes": ["ingest"], "secretRef": {"name": "tokens", "key": "ingest"}},
                {"name": "collectors", "scopes": ["peer"], "secretRef": {"name": "tokens", "key": "peer"}}
            ]}))
            .unwrap(),
        );
        let d = desired(&p, "img:1", Some(&sampling())).unwrap();
        assert!(d.peers.is_some(), "routed");
        let config = Config::from_yaml(
            &d.config_map.data.as_ref().unwrap()[CONFIG_KEY],
            &[("POD_IP".to_string(), "10.1.2.3".to_string())].into(),
        )
        .unwrap();
        config.validate().unwrap();
        assert_eq!(
            config.collector.peers.token_file.as_deref(),
            Some(std::path::Path::new("/etc/datatracing/tokens/collectors"))
        );
        assert_eq!(config.auth.tokens[1].scopes, [Scope::Peer]);
        // Without a peer token there is nothing to present.
        p.spec.auth = Some(
            serde_json::from_value(json!({"tokens": [
                {"name": "pipelines", "scopes": ["ingest"], "secretRef": {"name": "tokens", "key": "ingest"}}
            ]}))
            .unwrap(),
        );
        let d = desired(&p, "img:1", Some(&sampling())).unwrap();
        let text = &d.config_map.data.as_ref().unwrap()[CONFIG_KEY];
        assert!(text.contains("token_file: null"), "{text}");
    }

    /// Routed collectors with TLS on their listeners get `collector.peers.tls`: the peer CA
    /// (key `ca.crt` of the TLS Secret unless `tls.peers.caSecretRef` names another)
    /// mounted in the collector pods only, the collector Service's name as the server name
    /// (peers are dialed by pod IP), and with mutual TLS the pods' own certificate as their
    /// client identity. The rendered file passes the binary's whole-file check.
    #[test]
    fn routed_collectors_with_tls_verify_each_other() {
        let mut p = pipeline();
        p.spec.tls = Some(
            serde_json::from_value(json!({"secretName": "dt-tls",
                "clientCaSecretRef": {"name": "clients", "key": "ca.crt"}}))
            .unwrap(),
        );
        let render = |p: &TracingPipeline, sampling: Option<&str>| {
            let d = desired(p, "img:1", sampling).unwrap();
            let config = Config::from_yaml(
                &d.config_map.data.as_ref().unwrap()[CONFIG_KEY],
                &[("POD_IP".to_string(), "10.1.2.3".to_string())].into(),
            )
            .unwrap();
            config.validate().unwrap();
            let volumes = |dep: &Deployment| {
                let pod = serde_json::to_value(dep.spec.clone().unwrap().template.spec).unwrap();
                let v: Vec<_> = pod["volumes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|v| v["name"] == "tls-peer-ca")
                    .cloned()
                    .collect();
                let m: Vec<_> = pod["containers"][0]["volumeMounts"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|m| m["name"] == "tls-peer-ca")
                    .map(|m| m["mountPath"].clone())
                    .collect();
                (v, m)
            };
            let collector = volumes(&d.collector);
            let query = volumes(&d.query);
            (d, config, collector, query)
        };
        let (d, config, (volumes, mounts), query) = render(&p, Some(&sampling()));
        assert!(d.peers.is_some(), "routed");
        let t = config
            .collector
            .peers
            .tls
            .clone()
            .expect("peer TLS rendered");
        assert_eq!(
            t.ca_file.to_str(),
            Some("/etc/datatracing/tls-peer-ca/ca.crt")
        );
        assert_eq!(
            t.cert_file.unwrap().to_str(),
            Some("/etc/datatracing/tls/tls.crt")
        );
        assert_eq!(
            t.key_file.unwrap().to_str(),
            Some("/etc/datatracing/tls/tls.key")
        );
        assert_eq!(
            t.server_name.as_deref(),
            Some(format!("{}.team-a.svc", d.names.collector).as_str())
        );
        assert_eq!(volumes.len(), 1, "{volumes:?}");
        assert_eq!(volumes[0]["secret"]["secretName"], "dt-tls");
        assert_eq!(volumes[0]["secret"]["items"][0]["key"], "ca.crt");
        assert_eq!(mounts, [json!("/etc/datatracing/tls-peer-ca")]);
        assert!(
            query.0.is_empty() && query.1.is_empty(),
            "query pods do not route"
        );

        // Another CA Secret and name; server-authenticated TLS only: no client identity.
        p.spec.tls = Some(
            serde_json::from_value(json!({"secretName": "dt-tls", "peers": {
                "caSecretRef": {"name": "issuer-ca", "key": "root.pem"},
                "serverName": "collectors.tracing.example"}}))
            .unwrap(),
        );
        let (_, config, (volumes, _), _) = render(&p, Some(&sampling()));
        let t = config.collector.peers.tls.clone().unwrap();
        assert_eq!(t.server_name.as_deref(), Some("collectors.tracing.example"));
        assert_eq!((t.cert_file, t.key_file), (None, None));
        assert_eq!(volumes[0]["secret"]["secretName"], "issuer-ca");
        assert_eq!(volumes[0]["secret"]["items"][0]["key"], "root.pem");

        // Not routed (no sampling): no peer TLS, no peer CA volume.
        let (d, config, (volumes, _), _) = render(&p, None);
        assert!(d.peers.is_none());
        assert_eq!(config.collector.peers.tls, None);
        assert!(volumes.is_empty());
        // Routed without TLS: none either.
        p.spec.tls = None;
        let (_, config, (volumes, _), _) = render(&p, Some(&sampling()));
        assert_eq!(config.collector.peers.tls, None);
        assert!(volumes.is_empty());
    }

    #[test]
    fn the_sample_routes_between_its_three_collectors() {
        let p = pipeline();
        let d = desired(&p, "img:1", Some(&sampling())).unwrap();
        let peers = d.peers.as_ref().expect("3 replicas with sampling route");
        let svc = peers.service.spec.as_ref().unwrap();
        assert_eq!(svc.cluster_ip.as_deref(), Some("None"), "headless");
        assert_eq!(svc.publish_not_ready_addresses, Some(false));
        assert_eq!(
            peers.role.rules.as_ref().unwrap()[0].resources.as_deref(),
            Some(&["endpointslices".to_string()][..])
        );
        let subject = &peers.role_binding.subjects.as_ref().unwrap()[0];
        assert_eq!(
            (subject.name.as_str(), subject.namespace.as_deref()),
            (d.names.service_account.as_str(), Some("team-a"))
        );
        // The binary interpolates the pod's IP; nothing else of the file is a variable.
        let text = &d.config_map.data.as_ref().unwrap()[CONFIG_KEY];
        assert!(text.contains("self: ${POD_IP}:4317"), "{text}");
        assert!(
            text.contains(&format!("service: {}", d.names.peers)),
            "{text}"
        );
        let mut env = std::collections::HashMap::new();
        env.insert("POD_IP".to_string(), "10.1.2.3".to_string());
        let parsed = Config::from_yaml(text, &env).unwrap();
        assert_eq!(parsed.collector.peers.self_addr, "10.1.2.3:4317");
        parsed.validate().unwrap();
        let pod = d
            .collector
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .clone()
            .unwrap();
        assert_eq!(pod.automount_service_account_token, Some(true));
        let env = pod.containers[0].env.clone().unwrap();
        assert!(env.iter().any(|e| e.name == "POD_IP"));
        let query_pod = d
            .query
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .clone()
            .unwrap();
        assert_eq!(query_pod.automount_service_account_token, Some(false));

        // One replica, or no sampling: nothing to route.
        let mut one = pipeline();
        one.spec.collector.replicas = 1;
        assert!(
            desired(&one, "img", Some(&sampling()))
                .unwrap()
                .peers
                .is_none()
        );
        let d = desired(&p, "img", None).unwrap();
        assert!(d.peers.is_none());
        assert!(!d.config_map.data.as_ref().unwrap()[CONFIG_KEY].contains("POD_IP"));
    }

    #[test]
    fn only_configuration_changes_move_the_restart_hash() {
        let p = pipeline();
        let a = desired(&p, "img", Some(&sampling())).unwrap();
        let other_policy = sampling().replace("sample_rate: 20", "sample_rate: 40");
        let b = desired(&p, "img", Some(&other_policy)).unwrap();
        assert_eq!(
            a.config_hash, b.config_hash,
            "sampling changes do not restart pods"
        );
        assert_eq!(a.collector.spec, b.collector.spec);
        assert_ne!(a.config_map.data, b.config_map.data);
        let mut q = p.clone();
        q.spec.collector.max_spans_per_request = Some(1000);
        let c = desired(&q, "img", Some(&sampling())).unwrap();
        assert_ne!(
            a.config_hash, c.config_hash,
            "collector settings restart pods"
        );
        assert_ne!(a.collector.spec, c.collector.spec);
    }

    #[test]
    fn retention_changes_move_no_restart_hash() {
        let p = pipeline();
        let a = desired(&p, "img", Some(&sampling())).unwrap();
        let mut q = p.clone();
        q.spec.storage.retention_days = p.spec.storage.retention_days + 5;
        let b = desired(&q, "img", Some(&sampling())).unwrap();
        assert_eq!(
            (&a.config_hash, &a.query_config_hash),
            (&b.config_hash, &b.query_config_hash)
        );
        assert_eq!(a.collector.spec, b.collector.spec);
        assert_eq!(a.query.spec, b.query.spec);
        let days = format!("initial_retention_days: {}", q.spec.storage.retention_days);
        assert!(
            b.config_map.data.as_ref().unwrap()[CONFIG_KEY].contains(&days),
            "the file carries the current retention for tables created later"
        );
    }

    #[test]
    fn without_selector_or_budget_or_secret_those_parts_are_absent() {
        let mut p = pipeline();
        let off = crate::crd::DisruptionBudget {
            enabled: false,
            ..Default::default()
        };
        p.spec.collector.pod_disruption_budget = Some(off.clone());
        p.spec.query.pod_disruption_budget = Some(off);
        p.spec.storage.password_secret_ref = None;
        let d = desired(&p, "img", None).unwrap();
        assert!(d.pdb.is_none() && d.query_pdb.is_none());
        assert!(
            !d.config_map
                .data
                .as_ref()
                .unwrap()
                .contains_key(SAMPLING_KEY)
        );
        let config = &d.config_map.data.as_ref().unwrap()[CONFIG_KEY];
        assert!(config.contains("enabled: false") && config.contains("password_file: null"));
        let pod = d.collector.spec.unwrap().template.spec.unwrap();
        assert!(pod.volumes.unwrap().iter().all(|v| v.secret.is_none()));
    }

    #[test]
    fn settings_the_collector_would_refuse_are_reported_not_deployed() {
        let mut p = pipeline();
        p.spec.collector.queue = Some(datatracing_config::QueueConfig {
            max_spans: 10,
            ..Default::default()
        });
        let e = desired(&p, "img", None).unwrap_err();
        assert!(
            matches!(e, Error::InvalidConfiguration(ref m) if m.contains("queue.max_spans")),
            "{e}"
        );
    }

    /// The rendered file is read back by the binary's own loader: it parses (unknown keys
    /// would fail), validates, and is exactly the typed configuration, `$` included.
    #[test]
    fn the_rendered_file_is_what_the_binary_loads() {
        let mut p = pipeline();
        p.spec.storage.user = "svc$user".into();
        for sampling in [None, Some(sampling())] {
            let d = desired(&p, "img", sampling.as_deref()).unwrap();
            let text = &d.config_map.data.as_ref().unwrap()[CONFIG_KEY];
            // The one variable (the sample routes with sampling on), given its own name back
            // so the loaded value compares with the typed one.
            let env =
                std::collections::HashMap::from([("POD_IP".to_string(), "${POD_IP}".to_string())]);
            let loaded = Config::from_yaml(text, &env).unwrap();
            loaded.validate().unwrap();
            assert_eq!(loaded, pod_config(&p, sampling.is_some()));
            assert_eq!(loaded.storage.clickhouse.user, "svc$user");
            assert_eq!(loaded.storage.backend, Backend::Clickhouse);
            assert_eq!(loaded.collector.sampling.enabled, sampling.is_some());
        }
    }

    #[test]
    fn a_durable_queue_gets_a_bounded_volume_on_the_collectors_only() {
        let mut p = pipeline();
        let without = desired(&p, "img", Some(&sampling())).unwrap();
        p.spec.collector.durable_queue = Some(crate::crd::DurableQueue {
            enabled: true,
            max_bytes: Some(64 << 20),
        });
        let d = desired(&p, "img", Some(&sampling())).unwrap();
        assert_ne!(
            d.config_hash, without.config_hash,
            "the pods roll onto the log"
        );
        let loaded = Config::from_yaml(
            &d.config_map.data.as_ref().unwrap()[CONFIG_KEY],
            &std::collections::HashMap::from([("POD_IP".into(), "10.0.0.1".into())]),
        )
        .unwrap();
        loaded.validate().unwrap();
        let q = &loaded.collector.durable_queue;
        assert!(q.enabled);
        assert_eq!(q.dir, std::path::Path::new(DURABLE_QUEUE_DIR));
        assert_eq!((q.max_bytes, q.segment_bytes), (64 << 20, 16 << 20));
        // The drain ends before SIGKILL: 30 s grace, 5 s preStop, 2 s to exit.
        assert_eq!(
            loaded.collector.drain_timeout.get(),
            std::time::Duration::from_secs(23)
        );

        let pod = d.collector.spec.unwrap().template.spec.unwrap();
        let volume = pod
            .volumes
            .unwrap()
            .into_iter()
            .find(|v| v.name == "durable-queue")
            .expect("the log's volume");
        let empty_dir = volume.empty_dir.expect("an emptyDir");
        assert_eq!(
            empty_dir.size_limit.unwrap().0,
            ((64u64 << 20) + 2 * (16 << 20)).to_string()
        );
        let mount = pod.containers[0]
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.name == "durable-queue")
            .expect("mounted")
            .clone();
        assert_eq!(mount.mount_path, DURABLE_QUEUE_DIR);
        assert_ne!(mount.read_only, Some(true));
        let requests = pod.containers[0]
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .expect("requests");
        assert_eq!(
            requests["ephemeral-storage"].0,
            ((64u64 << 20) + 2 * (16 << 20)).to_string(),
            "the scheduler reserves the log's disk"
        );
        assert!(requests.contains_key("cpu"), "the sample's requests stay");
        let query = d.query.spec.unwrap().template.spec.unwrap();
        assert!(
            query
                .volumes
                .unwrap()
                .iter()
                .all(|v| v.name != "durable-queue"),
            "the query pods keep no log"
        );

        // Switched off, it is as if absent.
        p.spec.collector.durable_queue.as_mut().unwrap().enabled = false;
        let off = desired(&p, "img", Some(&sampling())).unwrap();
        assert_eq!(off.config_hash, without.config_hash);
    }

    #[test]
    fn pod_options_reach_the_pod_and_defaults_spread_and_drain() {
        let mut p = pipeline();
        let d = desired(&p, "img", None).unwrap();
        let pod = d.collector.spec.unwrap().template.spec.unwrap();
        let spread = pod.topology_spread_constraints.unwrap();
        assert_eq!(spread.len(), 1);
        assert_eq!(spread[0].topology_key, "kubernetes.io/hostname");
        assert_eq!(spread[0].when_unsatisfiable, "ScheduleAnyway");
        assert_eq!(
            spread[0].label_selector.as_ref().unwrap().match_labels,
            Some(selector(&p, "collector"))
        );
        let c = &pod.containers[0];
        assert_eq!(
            c.lifecycle
                .as_ref()
                .unwrap()
                .pre_stop
                .as_ref()
                .unwrap()
                .sleep
                .as_ref()
                .unwrap()
                .seconds,
            i64::from(DEFAULT_PRE_STOP_DELAY_SECONDS)
        );
        assert!(c.startup_probe.as_ref().unwrap().http_get.is_some());
        assert_eq!(
            pod.service_account_name.as_deref(),
            Some("orders-datatracing")
        );

        let opts: PodOptions = serde_json::from_value(json!({
            "nodeSelector": {"pool": "tracing"},
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "tracing", "effect": "NoSchedule"}],
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}]}}},
            "topologySpreadConstraints": [{"maxSkew": 2, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule"}],
            "priorityClassName": "tracing-high",
            "env": [{"name": "RUST_BACKTRACE", "value": "1"}],
            "envFrom": [{"configMapRef": {"name": "proxy"}}],
            "volumes": [{"name": "ca", "configMap": {"name": "ca-bundle"}}],
            "volumeMounts": [{"name": "ca", "mountPath": "/etc/ssl/extra"}],
            "podAnnotations": {"example.com/team": "data"},
            "podLabels": {"team": "data"},
            "imagePullSecrets": [{"name": "pull"}],
            "serviceAccountName": "tracing-wi",
            "startupProbe": {"tcpSocket": {"port": 4318}, "failureThreshold": 5},
            "preStopDelaySeconds": 0,
            "terminationGracePeriodSeconds": 60
        }))
        .unwrap();
        p.spec.query.pod = opts;
        let d = desired(&p, "img", None).unwrap();
        let t = d.query.spec.unwrap().template;
        let meta = t.metadata.unwrap();
        let labels = meta.labels.unwrap();
        assert_eq!(labels["team"], "data");
        assert_eq!(labels["app.kubernetes.io/component"], "query");
        let annotations = meta.annotations.unwrap();
        assert_eq!(annotations["example.com/team"], "data");
        assert!(annotations.contains_key(CONFIG_HASH_ANNOTATION));
        let pod = t.spec.unwrap();
        assert_eq!(pod.node_selector.unwrap()["pool"], "tracing");
        assert_eq!(
            pod.tolerations.unwrap()[0].key.as_deref(),
            Some("dedicated")
        );
        assert!(pod.affinity.unwrap().node_affinity.is_some());
        let spread = pod.topology_spread_constraints.unwrap();
        assert_eq!(spread[0].max_skew, 2);
        assert_eq!(
            spread[0].label_selector.as_ref().unwrap().match_labels,
            Some(selector(&p, "query")),
            "a constraint without selector selects the Deployment's pods"
        );
        assert_eq!(pod.priority_class_name.as_deref(), Some("tracing-high"));
        assert_eq!(pod.image_pull_secrets.unwrap()[0].name, "pull");
        assert_eq!(pod.service_account_name.as_deref(), Some("tracing-wi"));
        assert_eq!(pod.termination_grace_period_seconds, Some(60));
        let volumes: Vec<String> = pod.volumes.unwrap().into_iter().map(|v| v.name).collect();
        assert_eq!(volumes, ["config", "clickhouse-password", "ca"]);
        let c = &pod.containers[0];
        assert_eq!(c.env.as_ref().unwrap()[0].name, "RUST_BACKTRACE");
        assert!(c.env_from.as_ref().unwrap()[0].config_map_ref.is_some());
        let mounts: Vec<&str> = c
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .map(|m| m.mount_path.as_str())
            .collect();
        assert_eq!(mounts, [CONFIG_DIR, SECRET_DIR, "/etc/ssl/extra"]);
        assert!(c.startup_probe.as_ref().unwrap().tcp_socket.is_some());
        assert!(
            c.lifecycle.is_none(),
            "preStopDelaySeconds: 0 means no hook"
        );
        // The collector keeps its defaults: the options are per Deployment.
        let collector = d.collector.spec.unwrap().template.spec.unwrap();
        assert!(collector.node_selector.is_none());
    }

    #[test]
    fn budgets_default_to_one_unavailable_and_take_percentages() {
        use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
        let mut p = pipeline();
        p.spec.collector.pod_disruption_budget = None;
        let d = desired(&p, "img", None).unwrap();
        for (pdb, component) in [(&d.pdb, "collector"), (&d.query_pdb, "query")] {
            let spec = pdb.as_ref().unwrap().spec.clone().unwrap();
            assert_eq!(spec.max_unavailable, Some(IntOrString::Int(1)));
            assert_eq!(spec.min_available, None);
            assert_eq!(
                spec.selector.unwrap().match_labels,
                Some(selector(&p, component))
            );
        }
        p.spec.query.pod_disruption_budget = Some(crate::crd::DisruptionBudget {
            max_unavailable: Some(IntOrString::String("25%".into())),
            ..Default::default()
        });
        let d = desired(&p, "img", None).unwrap();
        let spec = d.query_pdb.unwrap().spec.unwrap();
        assert_eq!(
            spec.max_unavailable,
            Some(IntOrString::String("25%".into()))
        );
    }

    #[test]
    fn autoscaling_renders_an_hpa_and_leaves_replicas_to_it() {
        let mut p = pipeline();
        let d = desired(&p, "img", None).unwrap();
        assert!(d.hpa.is_none());
        assert_eq!(d.collector.spec.unwrap().replicas, Some(3));
        p.spec.collector.autoscaling = Some(
            serde_json::from_value(
                json!({"maxReplicas": 10, "targetMemoryUtilizationPercentage": 70,
                "behavior": {"scaleDown": {"stabilizationWindowSeconds": 600}}}),
            )
            .unwrap(),
        );
        let d = desired(&p, "img", None).unwrap();
        assert_eq!(
            d.collector.spec.unwrap().replicas,
            None,
            "the HPA's count stands"
        );
        assert_eq!(
            d.query.spec.unwrap().replicas,
            Some(2),
            "query keeps its own"
        );
        let hpa = d.hpa.unwrap().spec.unwrap();
        assert_eq!(hpa.scale_target_ref.name, "orders-collector");
        assert_eq!((hpa.min_replicas, hpa.max_replicas), (Some(2), 10));
        let metrics = hpa.metrics.unwrap();
        assert_eq!(metrics.len(), 1, "memory only: no default CPU metric");
        assert_eq!(metrics[0].resource.as_ref().unwrap().name, "memory");
        assert_eq!(
            hpa.behavior
                .unwrap()
                .scale_down
                .unwrap()
                .stabilization_window_seconds,
            Some(600)
        );
    }

    #[test]
    fn metrics_are_findable_by_annotations_ports_and_a_service_monitor() {
        let mut p = pipeline();
        let d = desired(&p, "img", None).unwrap();
        assert!(d.service_monitor.is_none());
        for (svc, port) in [
            (&d.collector_service, "otlp-http"),
            (&d.query_service, "http"),
        ] {
            let ports = svc.spec.clone().unwrap().ports.unwrap();
            let m = ports
                .iter()
                .find(|p| p.name.as_deref() == Some("metrics"))
                .unwrap();
            assert_eq!(m.port, METRICS_SERVICE_PORT);
            assert_eq!(
                m.target_port,
                Some(
                    k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(port.into())
                )
            );
        }
        let a = d
            .collector
            .spec
            .unwrap()
            .template
            .metadata
            .unwrap()
            .annotations
            .unwrap();
        assert_eq!(a["prometheus.io/scrape"], "true");
        assert_eq!(a["prometheus.io/port"], OTLP_HTTP_PORT.to_string());
        p.spec.monitoring = serde_json::from_value(json!({
            "prometheusAnnotations": false,
            "serviceMonitor": {"enabled": true, "interval": "15s", "labels": {"release": "prom"}}
        }))
        .unwrap();
        let d = desired(&p, "img", None).unwrap();
        let a = d
            .query
            .spec
            .unwrap()
            .template
            .metadata
            .unwrap()
            .annotations
            .unwrap();
        assert!(!a.contains_key("prometheus.io/scrape"));
        let sm = d.service_monitor.unwrap();
        assert_eq!(sm.metadata.labels.unwrap()["release"], "prom");
        assert_eq!(sm.data["spec"]["endpoints"][0]["interval"], "15s");
        assert_eq!(
            sm.data["spec"]["selector"]["matchLabels"]["app.kubernetes.io/instance"],
            "orders"
        );
    }

    #[test]
    fn the_secret_version_marks_both_pod_templates_only() {
        let p = pipeline();
        let mut d = desired(&p, "img", None).unwrap();
        let before = d.collector.spec.clone();
        set_secret_version(&mut d, "v1");
        for dep in [&d.collector, &d.query] {
            let t = dep
                .spec
                .as_ref()
                .unwrap()
                .template
                .metadata
                .clone()
                .unwrap();
            assert_eq!(t.annotations.unwrap()[SECRET_VERSION_ANNOTATION], "v1");
        }
        let mut after = d.collector.spec.clone().unwrap();
        after
            .template
            .metadata
            .as_mut()
            .unwrap()
            .annotations
            .as_mut()
            .unwrap()
            .remove(SECRET_VERSION_ANNOTATION);
        assert_eq!(Some(after), before, "nothing else changes");
    }

    #[test]
    fn each_role_runs_with_its_own_credentials() {
        let mut p = pipeline();
        let shared = desired(&p, "img", None).unwrap();
        assert!(
            !shared
                .config_map
                .data
                .as_ref()
                .unwrap()
                .contains_key(QUERY_CONFIG_KEY)
        );
        p.spec.storage.collector_credentials = Some(
            serde_json::from_value(json!({"user": "ingest",
                "passwordSecretRef": {"name": "ingest-pw", "key": "password"}}))
            .unwrap(),
        );
        p.spec.storage.query_credentials =
            Some(serde_json::from_value(json!({"user": "reader"})).unwrap());
        let d = desired(&p, "img", None).unwrap();
        let data = d.config_map.data.as_ref().unwrap();
        let load = |key: &str| {
            let c = Config::from_yaml(&data[key], &std::collections::HashMap::new()).unwrap();
            c.validate().unwrap();
            c.storage.clickhouse
        };
        let collector = load(CONFIG_KEY);
        assert_eq!(collector.user, "ingest");
        assert!(!collector.migrate_on_start, "the operator owns the schema");
        assert!(collector.password_file.is_some());
        let query = load(QUERY_CONFIG_KEY);
        assert_eq!(query.user, "reader");
        assert!(query.password_file.is_none());
        assert_eq!(
            clickhouse_config(&p).user,
            p.spec.storage.user,
            "DDL as storage.user"
        );
        let secret_of = |dep: &Deployment| {
            let pod = dep.spec.clone().unwrap().template.spec.unwrap();
            let args = pod.containers[0].args.clone().unwrap();
            let secret = pod
                .volumes
                .unwrap()
                .into_iter()
                .find_map(|v| v.secret)
                .and_then(|s| s.secret_name);
            (args[2].clone(), secret)
        };
        assert_eq!(
            secret_of(&d.collector),
            (
                format!("{CONFIG_DIR}/{CONFIG_KEY}"),
                Some("ingest-pw".into())
            )
        );
        assert_eq!(
            secret_of(&d.query),
            (format!("{CONFIG_DIR}/{QUERY_CONFIG_KEY}"), None)
        );
        assert_ne!(shared.query_config_hash, d.query_config_hash);
    }

    /// TLS, client CA, token and ClickHouse CA Secrets are mounted in both Deployments,
    /// the rendered file names the mounted files (what the binary loads), and the probes
    /// follow: HTTPS with TLS, TCP when the kubelet could not pass mutual TLS.
    #[test]
    fn tls_and_token_secrets_are_mounted_and_the_config_points_at_them() {
        let mut p = pipeline();
        p.spec.storage.url = "https://clickhouse.db:8443".into();
        p.spec.storage.ca_secret_ref =
            Some(serde_json::from_value(json!({"name": "ch-ca", "key": "ca.crt"})).unwrap());
        p.spec.tls = Some(serde_json::from_value(json!({"secretName": "dt-tls"})).unwrap());
        p.spec.auth = Some(
            serde_json::from_value(json!({"tokens": [
                {"name": "pipelines", "scopes": ["ingest"], "secretRef": {"name": "tokens", "key": "ingest"}},
                {"name": "grafana", "scopes": ["query"], "secretRef": {"name": "grafana-token", "key": "token"}, "tenant": "team-a"}
            ]}))
            .unwrap(),
        );
        let d = desired(&p, "img", None).unwrap();
        let config = Config::from_yaml(
            &d.config_map.data.as_ref().unwrap()[CONFIG_KEY],
            &std::collections::HashMap::new(),
        )
        .unwrap();
        config.validate().unwrap();
        let tls = config.tls.clone().unwrap();
        assert_eq!(tls.cert_file.to_str(), Some("/etc/datatracing/tls/tls.crt"));
        assert_eq!(tls.key_file.to_str(), Some("/etc/datatracing/tls/tls.key"));
        assert_eq!(tls.client_ca_file, None);
        let files: Vec<_> = config
            .auth
            .tokens
            .iter()
            .map(|t| t.file.clone().unwrap())
            .collect();
        assert_eq!(
            files,
            [
                std::path::PathBuf::from("/etc/datatracing/tokens/pipelines"),
                "/etc/datatracing/tokens/grafana".into()
            ]
        );
        assert_eq!(config.auth.tokens[1].scopes, [Scope::Query]);
        assert_eq!(config.auth.tokens[0].tenant, None);
        assert_eq!(config.auth.tokens[1].tenant.as_deref(), Some("team-a"));
        assert_eq!(
            config.storage.clickhouse.ca_file.unwrap().to_str(),
            Some("/etc/datatracing/clickhouse-ca/ca.crt")
        );
        for dep in [&d.collector, &d.query] {
            let pod = serde_json::to_value(dep.spec.clone().unwrap().template.spec).unwrap();
            let volumes: Vec<_> = pod["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v["name"].clone())
                .collect();
            for want in ["tls", "tokens", "clickhouse-ca"] {
                assert!(volumes.contains(&json!(want)), "{want}: {volumes:?}");
            }
            let c = &pod["containers"][0];
            let mounts: Vec<_> = c["volumeMounts"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| (m["name"].clone(), m["mountPath"].clone()))
                .collect();
            assert!(
                mounts.contains(&(json!("tls"), json!(TLS_DIR))),
                "{mounts:?}"
            );
            assert!(
                mounts.contains(&(json!("tokens"), json!(TOKENS_DIR))),
                "{mounts:?}"
            );
            assert_eq!(c["readinessProbe"]["httpGet"]["scheme"], "HTTPS");
            let tokens = pod["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|v| v["name"] == "tokens")
                .unwrap();
            assert_eq!(
                tokens["projected"]["sources"][1],
                json!({"secret": {"name": "grafana-token", "items": [{"key": "token", "path": "grafana"}]}})
            );
        }

        // Mutual TLS, required: the probes only open the port.
        p.spec.tls = Some(
            serde_json::from_value(json!({"secretName": "dt-tls",
                "clientCaSecretRef": {"name": "clients", "key": "ca.crt"}}))
            .unwrap(),
        );
        let d = desired(&p, "img", None).unwrap();
        let config = pod_config(&p, false);
        assert_eq!(
            config.tls.unwrap().client_auth(),
            Some(ClientAuth::Required)
        );
        let pod = serde_json::to_value(d.collector.spec.unwrap().template.spec).unwrap();
        assert_eq!(
            pod["containers"][0]["livenessProbe"]["tcpSocket"]["port"],
            OTLP_HTTP_PORT
        );
        assert!(
            pod["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|v| v["name"] == "tls-client-ca")
        );
    }

    #[test]
    fn a_pipeline_without_uid_cannot_own_children() {
        let mut p = pipeline();
        p.metadata.uid = None;
        assert!(matches!(desired(&p, "img", None), Err(Error::Render(_))));
    }
}
