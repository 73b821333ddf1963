//! The custom resources: `TracingPipeline` and `SamplingPolicy` (group `datatracing.io`,
//! version `v1alpha1`), their status types and condition vocabulary.
//!
//! Kubernetes-specific fields are camelCase, as every Kubernetes API is; product settings
//! embedded from the collector and the policy model (`limits`, `queue`, sampling rules) keep
//! their native snake_case names so a policy file and a `SamplingPolicy` spec are the same
//! text (ADR 0004). Invariants the API server can check are CEL rules in the schema; the
//! rest (regexes, nesting deeper than the schema spells out) is checked by the operator and
//! reported in status.

use std::collections::BTreeMap;

use datatracing_config::QueueConfig;
use datatracing_core::Limits;
use datatracing_core::policy::{Action, Rule, Verdict};
use k8s_openapi::api::autoscaling::v2::{HorizontalPodAutoscalerBehavior, MetricSpec};
use k8s_openapi::api::core::v1::{
    Affinity, EnvFromSource, EnvVar, LocalObjectReference, Probe, ResourceRequirements,
    SecretKeySelector, Toleration, TopologySpreadConstraint, Volume, VolumeMount,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use serde::{Deserialize, Serialize};

/// The API group.
pub const GROUP: &str = "datatracing.io";

/// A data-pipeline tracing installation: collectors, query servers, their ClickHouse store
/// and the sampling policies they apply.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "datatracing.io",
    version = "v1alpha1",
    kind = "TracingPipeline",
    namespaced,
    status = "TracingPipelineStatus",
    shortname = "tpl",
    category = "datatracing",
    doc = "A DataTracing installation: collectors, query servers, ClickHouse store, sampling.",
    printcolumn = r#"{"name": "Ready", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name": "Reason", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name": "Retention", "type": "integer", "description": "Retention in days applied to ClickHouse", "jsonPath": ".status.retentionDays"}"#,
    printcolumn = r#"{"name": "Collectors", "type": "integer", "jsonPath": ".status.collectorReplicas"}"#,
    scale(
        spec_replicas_path = ".spec.collector.replicas",
        status_replicas_path = ".status.collectorReplicas",
        label_selector_path = ".status.collectorSelector"
    ),
    printcolumn = r#"{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct TracingPipelineSpec {
    /// The collector (ingest) Deployment.
    #[serde(default)]
    pub collector: CollectorSpec,
    /// The query Deployment.
    #[serde(default)]
    pub query: QuerySpec,
    /// The ClickHouse store.
    pub storage: StorageSpec,
    /// Tail sampling.
    #[serde(default)]
    pub sampling: SamplingSpec,
    /// How Prometheus finds the collectors' and query servers' metrics.
    #[serde(default)]
    pub monitoring: MonitoringSpec,
    /// `Managed` (default): the operator reconciles the pipeline. `Unmanaged`: it pauses,
    /// leaving the children and ClickHouse as they are (hand edits during an incident are
    /// not reverted) and saying so in the `Managed` condition; deleting the pipeline still
    /// honours `storage.deletionPolicy`.
    #[serde(default)]
    pub management_state: ManagementState,
    /// TLS on the collectors' and query servers' listeners, from Secrets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
    /// Bearer tokens the collectors and query servers accept, from Secrets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthSpec>,
}

/// TLS on every listener of the pipeline's pods (OTLP/HTTP, OTLP/gRPC, query). The Secrets
/// are mounted as files the pods re-read, so a renewed certificate (cert-manager) is served
/// without a restart.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TlsSpec {
    /// A Secret in the pipeline's namespace with `tls.crt` and `tls.key` (type
    /// `kubernetes.io/tls`, as cert-manager writes it).
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,
    /// Mutual TLS: the key of a Secret holding the CAs that sign client certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca_secret_ref: Option<SecretKeySelector>,
    /// With `clientCaSecretRef`: `Required` (the default; the pods' probes then check the
    /// ports over TCP, since the kubelet has no client certificate) or `Optional`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_auth: Option<ClientAuthMode>,
    /// How routing collectors (tail sampling, several replicas) verify each other when they
    /// forward spans to a trace's owner over the TLS listener. With `clientCaSecretRef`
    /// they present the pods' own certificate (`secretName`), which then needs the
    /// `client auth` usage and an issuer among the client CAs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peers: Option<PeerTlsSpec>,
}

/// The collectors' peer link over TLS.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerTlsSpec {
    /// The key of a Secret holding the CAs that sign the collectors' certificates. Default:
    /// key `ca.crt` of `secretName` (where cert-manager's CA, self-signed and Vault issuers
    /// put the issuing CA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeySelector>,
    /// The name the collectors' certificate must be valid for (peers are dialed by pod
    /// IP). Default: `<pipeline>-collector.<namespace>.svc`, the collector Service's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub server_name: Option<String>,
}

/// Whether clients must present a certificate.
#[derive(
    schemars::JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize,
)]
#[schemars(transform = datatracing_core::schema::string_enum)]
pub enum ClientAuthMode {
    /// Refused in the handshake without one.
    #[default]
    Required,
    /// Accepted without one; one presented must verify.
    Optional,
}

/// Bearer tokens, each from a Secret key, mounted as files the pods re-read: a rotated
/// Secret takes effect without a restart.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[x_kube(validation = Rule::new("self.tokens.all(t, self.tokens.exists_one(u, u.name == t.name))").message("auth.tokens names must be unique").reason(Reason::FieldValueInvalid))]
#[serde(rename_all = "camelCase")]
pub struct AuthSpec {
    /// Accepted tokens.
    #[schemars(length(min = 1, max = 32))]
    pub tokens: Vec<TokenSpec>,
    /// Also require a token on `/metrics`, `/healthz` and `/readyz` (the pods' probes then
    /// check the ports over TCP, and Prometheus needs a token).
    #[serde(default)]
    pub protect_ops: bool,
}

/// One accepted token.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenSpec {
    /// A name for logs and the mounted file's name.
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')").message("auth.tokens[].name must be lowercase letters, digits and dashes").reason(Reason::FieldValueInvalid))]
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// What the token may do.
    #[schemars(length(min = 1, max = 4))]
    pub scopes: Vec<TokenScope>,
    /// The Secret key holding the token (at least 16 characters).
    pub secret_ref: SecretKeySelector,
    /// The tenant the token is bound to: it writes and reads only that tenant's traces
    /// (ADR 0010). Absent: the default tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9-]+$')").message("auth.tokens[].tenant must be 1 to 63 lowercase letters, digits and dashes").reason(Reason::FieldValueInvalid))]
    #[schemars(length(min = 1, max = 63))]
    pub tenant: Option<String>,
}

/// A token's scope.
#[derive(schemars::JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[schemars(transform = datatracing_core::schema::string_enum)]
#[serde(rename_all = "lowercase")]
pub enum TokenScope {
    /// Send spans.
    Ingest,
    /// Read traces.
    Query,
    /// The sampling admin endpoints.
    Admin,
    /// What routed collector replicas send each other: the collectors present the first
    /// token with this scope to their peers. Give it to no client: it may store spans for
    /// any tenant.
    Peer,
}

/// How Prometheus finds the pods' `/metrics` (served on the collector's OTLP/HTTP port and
/// the query port; each Service also has a `metrics` port).
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MonitoringSpec {
    /// `prometheus.io/scrape`, `port` and `path` annotations on the pods (default true).
    #[serde(default = "default_true")]
    pub prometheus_annotations: bool,
    /// A ServiceMonitor (Prometheus Operator) for both Services, rendered only when the
    /// cluster serves `monitoring.coreos.com/v1` ServiceMonitors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_monitor: Option<ServiceMonitorSpec>,
}

impl Default for MonitoringSpec {
    fn default() -> Self {
        Self {
            prometheus_annotations: true,
            service_monitor: None,
        }
    }
}

/// The ServiceMonitor.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceMonitorSpec {
    /// Render it (when the CRD exists).
    #[serde(default)]
    pub enabled: bool,
    /// Scrape interval, e.g. `30s`; absent: Prometheus' default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^[0-9]+(ms|s|m|h)$')").message("serviceMonitor.interval must be a duration such as 30s").reason(Reason::FieldValueInvalid))]
    #[schemars(length(max = 16))]
    pub interval: Option<String>,
    /// Labels on the ServiceMonitor (what your Prometheus' `serviceMonitorSelector` picks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    pub labels: Option<BTreeMap<String, String>>,
}

/// Whether the operator reconciles a pipeline.
#[derive(
    schemars::JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize,
)]
#[schemars(transform = datatracing_core::schema::string_enum)]
pub enum ManagementState {
    /// Reconciled (the default).
    #[default]
    Managed,
    /// Left alone until set back to `Managed`.
    Unmanaged,
}

/// Collector settings.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[x_kube(validation = Rule::new(
    "!has(self.podDisruptionBudget) || !has(self.podDisruptionBudget.minAvailable) || type(self.podDisruptionBudget.minAvailable) == string || self.podDisruptionBudget.minAvailable < self.replicas"
).message("collector.podDisruptionBudget.minAvailable must be below collector.replicas, or the budget blocks every voluntary eviction").reason(Reason::FieldValueInvalid))]
#[x_kube(validation = Rule::new(
    "(has(self.terminationGracePeriodSeconds) ? self.terminationGracePeriodSeconds : 30) > (has(self.preStopDelaySeconds) ? self.preStopDelaySeconds : 5)"
).message("terminationGracePeriodSeconds (default 30) must exceed preStopDelaySeconds (default 5), or the pod is killed before it drains").reason(Reason::FieldValueInvalid))]
#[serde(rename_all = "camelCase")]
pub struct CollectorSpec {
    /// Pods.
    #[serde(default = "default_collector_replicas")]
    #[schemars(range(min = 0, max = 100))]
    pub replicas: i32,
    /// Container image; defaults to the operator's `--image`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Container resources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Largest request body accepted, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1024, max = 1073741824))]
    pub max_body_bytes: Option<i64>,
    /// Most spans accepted in one request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub max_spans_per_request: Option<i64>,
    /// Per-span size limits (the collector's `limits` section).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Limits>,
    /// The in-memory queue and what happens when it is full (the collector's `queue` section).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<QueueConfig>,
    /// The durable queue: each collector acknowledges once spans are in a write-ahead log on
    /// the pod's disk (an `emptyDir` volume named `durable-queue`), not once the store has
    /// them. A crashed collector container restarts in the same pod and replays its log; a
    /// pod that stops gracefully (rollout, scale-down, eviction) drains it to the store first;
    /// a pod lost with its node loses what it had not written yet (runbooks/collector.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub durable_queue: Option<DurableQueue>,
    /// A HorizontalPodAutoscaler (autoscaling/v2) for the collector Deployment. While it is
    /// set the autoscaler owns the replica count: the operator stops setting the
    /// Deployment's replicas, and `replicas` applies only once it is removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<Autoscaling>,
    /// The collectors' PodDisruptionBudget. Absent: `maxUnavailable: 1`; `enabled: false`
    /// for none (when you manage your own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_disruption_budget: Option<DisruptionBudget>,
    /// Scheduling and pod settings.
    #[serde(flatten)]
    pub pod: PodOptions,
}

fn default_collector_replicas() -> i32 {
    2
}

impl Default for CollectorSpec {
    fn default() -> Self {
        Self {
            replicas: default_collector_replicas(),
            image: None,
            resources: None,
            max_body_bytes: None,
            max_spans_per_request: None,
            limits: None,
            queue: None,
            durable_queue: None,
            autoscaling: None,
            pod_disruption_budget: None,
            pod: PodOptions::default(),
        }
    }
}

/// The collectors' durable queue (the collector's `durable_queue` section).
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DurableQueue {
    /// On (the default once the section is present).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Most bytes of acknowledged spans not yet in the store, per pod (default 1 GiB); a full
    /// log refuses requests with 429. The volume's size limit is this plus two log
    /// segments, so the kubelet never evicts a pod whose log is within its bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 16777216, max = 1099511627776_i64))]
    pub max_bytes: Option<i64>,
}

/// Horizontal autoscaling of the collectors.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[x_kube(validation = Rule::new("self.minReplicas <= self.maxReplicas").message("autoscaling.minReplicas must not exceed autoscaling.maxReplicas").reason(Reason::FieldValueInvalid))]
#[serde(rename_all = "camelCase")]
pub struct Autoscaling {
    /// Fewest collector pods.
    #[serde(default = "default_min_replicas")]
    #[schemars(range(min = 1, max = 100))]
    pub min_replicas: i32,
    /// Most collector pods.
    #[schemars(range(min = 1, max = 100))]
    pub max_replicas: i32,
    /// Average CPU utilisation (percent of requests) to aim for; the default metric when
    /// neither this, memory nor `metrics` is set is 80.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub target_cpu_utilization_percentage: Option<i32>,
    /// Average memory utilisation (percent of requests) to aim for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub target_memory_utilization_percentage: Option<i32>,
    /// Further metrics, as the HorizontalPodAutoscaler takes them (custom or external ones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    pub metrics: Option<Vec<MetricSpec>>,
    /// Scale-up and scale-down behaviour (stabilisation windows, rate policies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub behavior: Option<HorizontalPodAutoscalerBehavior>,
}

fn default_min_replicas() -> i32 {
    2
}

/// A PodDisruptionBudget: at most one of `minAvailable` and `maxUnavailable`, each an
/// integer or a percentage (`"50%"`); neither means `maxUnavailable: 1`.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[x_kube(validation = Rule::new("!(has(self.minAvailable) && has(self.maxUnavailable))").message("podDisruptionBudget takes minAvailable or maxUnavailable, not both").reason(Reason::FieldValueInvalid))]
#[serde(rename_all = "camelCase")]
pub struct DisruptionBudget {
    /// Create the budget (default true); false when you manage your own.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Pods that must stay available during voluntary disruptions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("type(self) == int ? self >= 0 : self.matches('^[0-9]{1,3}%$')").message("minAvailable must be a non-negative integer or a percentage such as 50%").reason(Reason::FieldValueInvalid))]
    pub min_available: Option<IntOrString>,
    /// Pods that may be unavailable at once during voluntary disruptions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("type(self) == int ? self >= 1 : self.matches('^[0-9]{1,3}%$')").message("maxUnavailable must be a positive integer or a percentage such as 25%").reason(Reason::FieldValueInvalid))]
    pub max_unavailable: Option<IntOrString>,
}

fn default_true() -> bool {
    true
}

impl Default for DisruptionBudget {
    fn default() -> Self {
        Self {
            enabled: true,
            min_available: None,
            max_unavailable: None,
        }
    }
}

/// Query settings.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[x_kube(validation = Rule::new(
    "(has(self.terminationGracePeriodSeconds) ? self.terminationGracePeriodSeconds : 30) > (has(self.preStopDelaySeconds) ? self.preStopDelaySeconds : 5)"
).message("terminationGracePeriodSeconds (default 30) must exceed preStopDelaySeconds (default 5), or the pod is killed before it drains").reason(Reason::FieldValueInvalid))]
#[serde(rename_all = "camelCase")]
pub struct QuerySpec {
    /// Pods.
    #[serde(default = "default_query_replicas")]
    #[schemars(range(min = 0, max = 100))]
    pub replicas: i32,
    /// Container image; defaults to the operator's `--image`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Container resources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// The query pods' PodDisruptionBudget. Absent: `maxUnavailable: 1`; `enabled: false`
    /// for none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_disruption_budget: Option<DisruptionBudget>,
    /// Scheduling and pod settings.
    #[serde(flatten)]
    pub pod: PodOptions,
}

fn default_query_replicas() -> i32 {
    1
}

impl Default for QuerySpec {
    fn default() -> Self {
        Self {
            replicas: default_query_replicas(),
            image: None,
            resources: None,
            pod_disruption_budget: None,
            pod: PodOptions::default(),
        }
    }
}

/// Scheduling and pod settings of the collector or query Deployment, as the Kubernetes
/// types (what OpenTelemetry Operator users look for). Names the operator uses itself
/// (the selector labels, its environment prefix, its volumes and mount directory) are
/// refused by the API server.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodOptions {
    /// Node labels the pods must run on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub node_selector: Option<BTreeMap<String, String>>,
    /// Taints the pods tolerate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub tolerations: Option<Vec<Toleration>>,
    /// Node and pod (anti-)affinity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// How the pods spread. Absent: across nodes (`kubernetes.io/hostname`, `maxSkew: 1`,
    /// `whenUnsatisfiable: ScheduleAnyway`); `[]`: no spread constraint. A constraint
    /// without `labelSelector` selects this Deployment's pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    pub topology_spread_constraints: Option<Vec<TopologySpreadConstraint>>,
    /// PriorityClass of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub priority_class_name: Option<String>,
    /// Extra environment variables. `DATATRACING_*` is the operator's: the rendered
    /// configuration would no longer be what runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    #[x_kube(validation = Rule::new("self.all(e, !e.name.startsWith('DATATRACING_'))").message("env names starting with DATATRACING_ are reserved: they would override the configuration the operator renders").reason(Reason::FieldValueForbidden))]
    pub env: Option<Vec<EnvVar>>,
    /// Extra environment from ConfigMaps or Secrets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("self.all(e, !has(e.prefix) || !e.prefix.startsWith('DATATRACING_'))").message("envFrom prefixes starting with DATATRACING_ are reserved").reason(Reason::FieldValueForbidden))]
    pub env_from: Option<Vec<EnvFromSource>>,
    /// Extra volumes; `config`, `clickhouse-password`, `clickhouse-ca`, `tls`,
    /// `tls-client-ca`, `tls-peer-ca`, `tokens` and `durable-queue` are the operator's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new("self.all(v, !(v.name in ['config', 'clickhouse-password', 'clickhouse-ca', 'tls', 'tls-client-ca', 'tls-peer-ca', 'tokens', 'durable-queue']))").message("volume names config, clickhouse-password, clickhouse-ca, tls, tls-client-ca, tls-peer-ca, tokens and durable-queue are reserved").reason(Reason::FieldValueForbidden))]
    pub volumes: Option<Vec<Volume>>,
    /// Extra mounts in the container; `/etc/datatracing` and `/var/lib/datatracing` are the
    /// operator's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new("self.all(m, m.mountPath != '/etc/datatracing' && !m.mountPath.startsWith('/etc/datatracing/') && m.mountPath != '/var/lib/datatracing' && !m.mountPath.startsWith('/var/lib/datatracing/'))").message("mount paths under /etc/datatracing and /var/lib/datatracing are reserved").reason(Reason::FieldValueForbidden))]
    pub volume_mounts: Option<Vec<VolumeMount>>,
    /// Extra pod annotations; `datatracing.io/` keys are the operator's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new("self.all(k, !k.startsWith('datatracing.io/'))").message("pod annotations under datatracing.io/ are reserved").reason(Reason::FieldValueForbidden))]
    pub pod_annotations: Option<BTreeMap<String, String>>,
    /// Extra pod labels; `app.kubernetes.io/` keys are the operator's (the selector).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new("self.all(k, !k.startsWith('app.kubernetes.io/'))").message("pod labels under app.kubernetes.io/ are reserved: the Deployment selects its pods with them").reason(Reason::FieldValueForbidden))]
    pub pod_labels: Option<BTreeMap<String, String>>,
    /// Secrets for pulling the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    pub image_pull_secrets: Option<Vec<LocalObjectReference>>,
    /// An existing ServiceAccount for the pods (workload identity, image pull rights).
    /// Absent: the pipeline's own, `<pipeline>-datatracing`, without API rights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub service_account_name: Option<String>,
    /// The startup probe. Absent: `/healthz` every 2 s, up to 60 s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup_probe: Option<Probe>,
    /// Seconds a terminating pod keeps serving before it is sent SIGTERM (a preStop
    /// sleep), so Services and load balancers stop sending to it first. Default 5; 0: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 120))]
    pub pre_stop_delay_seconds: Option<i32>,
    /// Seconds between SIGTERM and SIGKILL. Default 30; must exceed the preStop delay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3600))]
    pub termination_grace_period_seconds: Option<i64>,
}

/// What happens to the ClickHouse data when the pipeline is deleted.
#[derive(
    schemars::JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize,
)]
#[schemars(transform = datatracing_core::schema::string_enum)]
pub enum DeletionPolicy {
    /// Keep the database and its data (the default).
    #[default]
    Retain,
    /// Drop the database.
    Delete,
}

/// The ClickHouse store.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// HTTP URL of the ClickHouse server, e.g. `http://clickhouse.db:8123`.
    #[x_kube(validation = Rule::new("self.startsWith('http://') || self.startsWith('https://')").message("storage.url must be an http:// or https:// URL").reason(Reason::FieldValueInvalid))]
    #[x_kube(validation = Rule::new("!self.matches('^https?://[^/?#]*@')").message("storage.url must not carry credentials (user:password@host): set storage.user and storage.passwordSecretRef").reason(Reason::FieldValueInvalid))]
    #[schemars(length(min = 8, max = 2048))]
    pub url: String,
    /// Database holding the trace tables. Immutable: moving data is a new pipeline.
    #[serde(default = "default_database")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("storage.database is immutable; create a new TracingPipeline to use another database"))]
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z_][A-Za-z0-9_]*$')").message("storage.database must be a plain identifier (letters, digits, underscore)").reason(Reason::FieldValueInvalid))]
    #[schemars(length(min = 1, max = 128))]
    pub database: String,
    /// Cluster name for clustered ClickHouse installs (DDL `ON CLUSTER`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub cluster: Option<String>,
    /// User name.
    #[serde(default = "default_user")]
    pub user: String,
    /// The password, from a Secret in the pipeline's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret_ref: Option<SecretKeySelector>,
    /// For an `https://` URL: the key of a Secret holding the CAs the server's certificate
    /// must chain to. Absent: the system's trust store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeySelector>,
    /// Days of data kept (ClickHouse TTL).
    #[serde(default = "default_retention_days")]
    #[schemars(range(min = 1, max = 3650))]
    pub retention_days: u32,
    /// `Retain` (default) keeps the database when the pipeline is deleted; `Delete` drops it.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
    /// The collector pods' own credentials (they need only `INSERT`). Absent: `user` and
    /// `passwordSecretRef`. When set, collectors do not migrate the schema at start (the
    /// operator creates it, with `user`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collector_credentials: Option<Credentials>,
    /// The query pods' own credentials (they need only `SELECT`). Absent: `user` and
    /// `passwordSecretRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_credentials: Option<Credentials>,
}

/// A ClickHouse user and its password Secret (in the pipeline's namespace).
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Credentials {
    /// User name.
    #[schemars(length(min = 1, max = 256))]
    pub user: String,
    /// The password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret_ref: Option<SecretKeySelector>,
}

fn default_database() -> String {
    "datatracing".into()
}

fn default_user() -> String {
    "default".into()
}

fn default_retention_days() -> u32 {
    7
}

/// Tail sampling: which SamplingPolicies apply, and what happens to traces none matches.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SamplingSpec {
    /// SamplingPolicies in this namespace to apply, merged by descending priority. Absent:
    /// no tail sampling (every trace is kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    /// What happens to a trace no rule matched.
    #[serde(default = "default_action")]
    #[schemars(schema_with = "crate::schema::action_schema")]
    pub default_action: Action,
}

fn default_action() -> Action {
    Action {
        decision: Verdict::Keep,
        sample_rate: None,
        rate_limit: None,
        keep_linked: false,
    }
}

impl Default for SamplingSpec {
    fn default() -> Self {
        Self {
            selector: None,
            default_action: default_action(),
        }
    }
}

/// Observed state of a TracingPipeline.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TracingPipelineStatus {
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `ConfigurationGenerated`, `ResourcesApplied`, `CollectorAvailable`,
    /// `QueryAvailable`, `RetentionApplied`, `Managed`.
    #[serde(default)]
    #[schemars(schema_with = "crate::schema::conditions_schema")]
    pub conditions: Vec<Condition>,
    /// Retention in days last applied to ClickHouse.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_days: Option<u32>,
    /// Hash of the active sampling configuration (as the collector reports it at
    /// `/admin/sampling`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling_hash: Option<String>,
    /// SamplingPolicies in the active configuration, in evaluation order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sampling_policies: Vec<String>,
    /// Collector pods that exist (the Deployment's `status.replicas`; the scale
    /// subresource's replicas).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collector_replicas: Option<i32>,
    /// Collectors routing spans between them (ready endpoints of the pipeline's headless
    /// peers Service) when they route by trace id; absent when they do not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collector_ring_size: Option<i32>,
    /// The collector pods' label selector (the scale subresource's, for autoscalers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collector_selector: Option<String>,
    /// Version of the password Secret the pods were rolled for (a hash of its UID and
    /// resourceVersion, never of its content).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret_version: Option<String>,
    /// Hash of the configuration whose change restarts the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_hash: Option<String>,
    /// The active sampling configuration (`sampling.yaml`), last generated from valid
    /// policies: what the operator deploys again while a selected policy is invalid, even
    /// if the ConfigMap was lost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling_configuration: Option<String>,
}

/// A set of sampling rules, selected by TracingPipelines through labels.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "datatracing.io",
    version = "v1alpha1",
    kind = "SamplingPolicy",
    namespaced,
    status = "SamplingPolicyStatus",
    shortname = "spol",
    category = "datatracing",
    doc = "Tail-sampling rules applied by the TracingPipelines whose selector matches.",
    printcolumn = r#"{"name": "Accepted", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Accepted\")].status"}"#,
    printcolumn = r#"{"name": "Priority", "type": "integer", "jsonPath": ".spec.priority"}"#,
    printcolumn = r#"{"name": "Rules", "type": "integer", "jsonPath": ".status.ruleCount"}"#,
    printcolumn = r#"{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct SamplingPolicySpec {
    /// Higher first when a pipeline selects several policies; ties go by name.
    #[serde(default)]
    #[schemars(range(min = -1000, max = 1000))]
    pub priority: i32,
    /// Rules in order (the sampling policy model); the first match decides. Names are
    /// unique within the policy.
    #[schemars(schema_with = "crate::schema::rules_schema")]
    pub rules: Vec<Rule>,
}

/// Observed state of a SamplingPolicy.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SamplingPolicyStatus {
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Accepted`.
    #[serde(default)]
    #[schemars(schema_with = "crate::schema::conditions_schema")]
    pub conditions: Vec<Condition>,
    /// Rules in the policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule_count: Option<i32>,
    /// TracingPipelines whose selector matches this policy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub used_by: Vec<String>,
}

/// Both CRDs, in a stable order.
pub fn crds() -> Vec<CustomResourceDefinition> {
    [TracingPipeline::crd(), SamplingPolicy::crd()]
        .into_iter()
        .map(|crd| {
            let mut v = serde_json::to_value(&crd).unwrap_or_default();
            crate::schema::drop_unknown_formats(&mut v);
            serde_json::from_value(v).unwrap_or(crd)
        })
        .collect()
}

/// Where the CRD files are committed, relative to the repository root.
pub const CRD_DIRS: [&str; 3] = [
    "crds",
    "config/crd/bases",
    "charts/datatracing-operator/crds",
];

/// Each CRD as YAML, keyed by the file name it is committed under in `crds/`.
pub fn crd_files() -> BTreeMap<String, String> {
    crds()
        .into_iter()
        .map(|crd| {
            let name = format!("{}.yaml", crd.spec.names.plural);
            let body = serde_saphyr::to_string(&crd).unwrap_or_default();
            let text = format!(
                "# Generated by `cargo run -p datatracing-operator --bin crdgen`; do not edit.\n---\n{body}"
            );
            (name, text)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_crds_match_the_code() {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
        for dir in CRD_DIRS {
            for (name, text) in crd_files() {
                let path = format!("{root}/{dir}/{name}");
                let committed = std::fs::read_to_string(&path).unwrap_or_default();
                assert!(
                    committed == text,
                    "{path} is stale; regenerate with: cargo run -p datatracing-operator --bin crdgen"
                );
            }
        }
    }

    #[test]
    fn every_crd_has_status_and_printer_columns() {
        for crd in crds() {
            let v = &crd.spec.versions[0];
            assert!(
                v.subresources
                    .as_ref()
                    .and_then(|s| s.status.as_ref())
                    .is_some()
            );
            let cols = v.additional_printer_columns.as_deref().unwrap_or_default();
            assert!(cols.iter().any(|c| c.name == "Age"));
            assert!(cols.len() >= 3, "Ready/Accepted, a key figure and Age");
        }
    }
}
