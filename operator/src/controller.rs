//! The two reconcilers and their wiring into kube-runtime controllers.
//!
//! `TracingPipeline`: merge the selected SamplingPolicies (keeping the last good policy when
//! one is invalid), render and server-side apply the children, apply ClickHouse retention,
//! and report all of it in conditions. A finalizer honours `deletionPolicy`.
//! `SamplingPolicy`: validate, and report which pipelines use it.
//! SamplingPolicy and Secret changes requeue the pipelines they affect; errors back off
//! exponentially per object.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use datatracing_core::policy::PolicyError;
use datatracing_store_clickhouse::{ClickHouseAdmin, Error as ChError};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, PartialObjectMeta, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::config::OperatorConfig;
use crate::crd::{
    DeletionPolicy, SamplingPolicy, SamplingPolicyStatus, TracingPipeline, TracingPipelineStatus,
    reason,
};
use crate::error::{Error, Result};
use crate::metrics::{ControllerLabel, ErrorLabel, Metrics};
use crate::policy;
use crate::render::{self, Names, SAMPLING_KEY};

/// Longest condition message kept (the API allows 32 KiB; `kubectl describe` wants less).
const CONDITION_MESSAGE_MAX: usize = 4096;

/// Objects whose consecutive failures are counted for backoff, at most.
const MAX_TRACKED_FAILURES: usize = 10_000;

/// Finalizer the operator puts on every TracingPipeline.
pub const FINALIZER: &str = "datatracing.io/storage-cleanup";

/// Shared state of the reconcilers.
pub struct Context {
    /// API client.
    pub client: Client,
    /// Settings.
    pub config: OperatorConfig,
    /// Metrics.
    pub metrics: Metrics,
    recorder: Recorder,
    failures: Mutex<HashMap<String, u32>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").finish_non_exhaustive()
    }
}

impl Context {
    /// A context for `client`.
    pub fn new(client: Client, config: OperatorConfig, metrics: Metrics) -> Self {
        let reporter = Reporter {
            controller: config.field_manager.clone(),
            instance: Some(config.lease_identity().1),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            config,
            metrics,
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn backoff(&self, key: &str) -> Duration {
        let attempt = {
            let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
            // Objects deleted while failing leave entries behind; bound the map (a reset
            // only shortens some retry delays).
            if f.len() >= MAX_TRACKED_FAILURES && !f.contains_key(key) {
                f.clear();
            }
            let n = f.entry(key.to_string()).or_insert(0);
            *n = n.saturating_add(1);
            *n
        };
        datatracing_core::exponential_backoff(
            self.config.retry_backoff.get(),
            attempt,
            self.config.max_retry_backoff.get(),
        )
    }

    fn succeeded(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }

    async fn event<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        let ev = Event {
            type_,
            reason: reason.into(),
            note: Some(truncate(note, 1024)),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &obj.object_ref(&())).await {
            tracing::warn!(error = %e, reason, "could not publish an event");
        }
    }
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

fn key<K: ResourceExt>(o: &K) -> String {
    format!("{}/{}", o.namespace().unwrap_or_default(), o.name_any())
}

/// Whether `labels` satisfy `selector` (matchLabels and matchExpressions).
pub fn selector_matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let labels_ok = selector
        .match_labels
        .as_ref()
        .is_none_or(|m| m.iter().all(|(k, v)| labels.get(k) == Some(v)));
    let exprs_ok = selector.match_expressions.as_ref().is_none_or(|es| {
        es.iter().all(|e| {
            let values = e.values.as_deref().unwrap_or_default();
            let v = labels.get(&e.key);
            match e.operator.as_str() {
                "In" => v.is_some_and(|v| values.contains(v)),
                "NotIn" => v.is_none_or(|v| !values.contains(v)),
                "Exists" => v.is_some(),
                "DoesNotExist" => v.is_none(),
                _ => false,
            }
        })
    });
    labels_ok && exprs_ok
}

/// Whether pipeline `p` applies SamplingPolicy `sp` (same namespace assumed).
fn selects(p: &TracingPipeline, sp: &SamplingPolicy) -> bool {
    p.spec
        .sampling
        .selector
        .as_ref()
        .is_some_and(|s| selector_matches(s, sp.labels()))
}

/// Sets a condition, keeping `lastTransitionTime` when the status did not change.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    ok: bool,
    why: &str,
    message: impl Into<String>,
    generation: Option<i64>,
) {
    let status = if ok { "True" } else { "False" };
    let message = truncate(message.into(), CONDITION_MESSAGE_MAX);
    let previous = conditions.iter().find(|c| c.type_ == type_);
    let last_transition_time = match previous {
        Some(p) if p.status == status => p.last_transition_time.clone(),
        _ => Time(Timestamp::now()),
    };
    let c = Condition {
        type_: type_.into(),
        status: status.into(),
        reason: why.into(),
        message,
        observed_generation: generation,
        last_transition_time,
    };
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(slot) => *slot = c,
        None => conditions.push(c),
    }
}

fn condition_true(conditions: &[Condition], type_: &str) -> bool {
    conditions
        .iter()
        .any(|c| c.type_ == type_ && c.status == "True")
}

fn describe(errors: &[PolicyError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// `(available, reason, message)` of a Deployment as the API server returned it.
fn availability(d: &Deployment, what: &str) -> (bool, &'static str, String) {
    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    if want == 0 {
        return (
            true,
            reason::SCALED_TO_ZERO,
            format!("{what} is scaled to 0"),
        );
    }
    let st = d.status.clone().unwrap_or_default();
    let current = st.observed_generation >= d.metadata.generation;
    let available = st.available_replicas.unwrap_or(0);
    let updated = st.updated_replicas.unwrap_or(0);
    if current && available >= want && updated >= want {
        (
            true,
            reason::REPLICAS_AVAILABLE,
            format!("{available}/{want} {what} replicas available"),
        )
    } else {
        (
            false,
            reason::REPLICAS_UNAVAILABLE,
            format!("{available}/{want} {what} replicas available, {updated} up to date"),
        )
    }
}

async fn apply<K>(api: &Api<K>, obj: &K, manager: &str) -> Result<K>
where
    K: Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    Ok(api
        .patch(
            &name,
            &PatchParams::apply(manager).force(),
            &Patch::Apply(obj),
        )
        .await?)
}

async fn apply_in<K>(client: &Client, ns: &str, obj: &K, manager: &str) -> Result<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    apply(&Api::namespaced(client.clone(), ns), obj, manager).await
}

fn owned_by(meta: &kube::api::ObjectMeta, uid: &str) -> bool {
    meta.owner_references
        .as_deref()
        .unwrap_or_default()
        .iter()
        .any(|o| o.uid == uid)
}

/// Reads the password the pipeline references. `Ok(None)`: no password configured.
async fn password(p: &TracingPipeline, ctx: &Context) -> Result<Option<String>> {
    let Some(r) = &p.spec.storage.password_secret_ref else {
        return Ok(None);
    };
    let ns = p.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let missing = |what: String| Error::SecretNotFound(what);
    let secret = secrets
        .get_opt(&r.name)
        .await?
        .ok_or_else(|| missing(format!("Secret {ns}/{} does not exist", r.name)))?;
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(&r.key))
        .map(|b| b.0.clone())
        .or_else(|| {
            secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(&r.key))
                .map(|s| s.clone().into_bytes())
        })
        .ok_or_else(|| missing(format!("Secret {ns}/{} has no key {:?}", r.name, r.key)))?;
    String::from_utf8(bytes)
        .map(|s| Some(s.trim().to_string()))
        .map_err(|_| {
            missing(format!(
                "Secret {ns}/{} key {:?} is not UTF-8",
                r.name, r.key
            ))
        })
}

async fn clickhouse_admin(p: &TracingPipeline, ctx: &Context) -> Result<ClickHouseAdmin> {
    let mut cfg = render::clickhouse_config(p);
    cfg.password_file = None;
    cfg.password = password(p, ctx).await?.unwrap_or_default();
    cfg.max_attempts = 1;
    cfg.connect_timeout = ctx.config.clickhouse_timeout;
    cfg.query_timeout = ctx.config.clickhouse_timeout;
    Ok(ClickHouseAdmin::new(&cfg)?)
}

fn clickhouse_reason(e: &Error) -> &'static str {
    match e {
        Error::ClickHouse(ChError::Unreachable(_) | ChError::Timeout(_)) => {
            reason::CLICKHOUSE_UNREACHABLE
        }
        Error::ClickHouse(ChError::Auth(_)) => reason::CLICKHOUSE_AUTH_FAILED,
        Error::SecretNotFound(_) => reason::SECRET_NOT_FOUND,
        _ => reason::CLICKHOUSE_ERROR,
    }
}

/// Creates the schema if needed and sets the retention.
async fn apply_retention(p: &TracingPipeline, ctx: &Context) -> Result<String> {
    let admin = clickhouse_admin(p, ctx).await?;
    admin.ping().await?;
    let migration = admin.migrate().await?;
    let report = admin.set_retention(p.spec.storage.retention_days).await?;
    Ok(format!(
        "retention {} days on database {} (schema v{}; {} tables changed, {} already set)",
        report.days,
        p.spec.storage.database,
        migration.version,
        report.changed.len(),
        report.unchanged.len()
    ))
}

/// The sampling configuration a pipeline deploys.
#[derive(Debug, Default)]
struct Sampling {
    /// `sampling.yaml` for the ConfigMap; `None`: sampling is off, or no valid policy yet.
    yaml: Option<String>,
    /// Its hash (what collectors report).
    hash: Option<String>,
    /// The SamplingPolicies it came from, in order.
    sources: Vec<String>,
    /// Why the selected policies cannot be used; the previous configuration stays.
    problem: Option<String>,
}

/// The sampling configuration for `p`. With an invalid selected policy the last good YAML
/// from the existing ConfigMap is kept.
async fn sampling(
    p: &TracingPipeline,
    ctx: &Context,
    previous: &TracingPipelineStatus,
) -> Result<Sampling> {
    let Some(selector) = &p.spec.sampling.selector else {
        return Ok(Sampling::default());
    };
    let ns = p.namespace().unwrap_or_default();
    // A list from the API server, not a cache: the trigger may come from a different watch
    // than a cache would, and a stale read would deploy an old policy until the next resync.
    let policies: Api<SamplingPolicy> = Api::namespaced(ctx.client.clone(), &ns);
    let selected: Vec<SamplingPolicy> = policies
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|sp| selector_matches(selector, sp.labels()))
        .collect();
    match policy::merge(selected, &p.spec.sampling.default_action) {
        Ok(m) => Ok(Sampling {
            yaml: Some(render::sampling_yaml(&m.policy, &m.sources)?),
            hash: Some(m.hash),
            sources: m.sources,
            problem: None,
        }),
        Err(invalid) => {
            let cms: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ns);
            let last_good = cms
                .get_opt(&Names::of(&p.name_any()).config)
                .await?
                .and_then(|cm| cm.data?.get(SAMPLING_KEY).cloned());
            Ok(Sampling {
                yaml: last_good,
                hash: previous.sampling_hash.clone(),
                sources: previous.sampling_policies.clone(),
                problem: Some(invalid.to_string()),
            })
        }
    }
}

/// A Warning event for a configuration problem, once per distinct problem rather than on
/// every reconcile (Deployment status changes and resyncs reconcile often).
async fn warn_on_change(
    ctx: &Context,
    p: &TracingPipeline,
    previous: &TracingPipelineStatus,
    why: &str,
    msg: &str,
) {
    let known = previous
        .conditions
        .iter()
        .any(|c| c.type_ == reason::CONFIGURATION_GENERATED && c.reason == why && c.message == msg);
    if !known {
        ctx.event(p, EventType::Warning, why, msg.to_string()).await;
    }
}

async fn patch_pipeline_status(
    api: &Api<TracingPipeline>,
    name: &str,
    status: &TracingPipelineStatus,
) -> Result<()> {
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": status })),
    )
    .await?;
    Ok(())
}

async fn apply_pipeline(p: Arc<TracingPipeline>, ctx: &Context) -> Result<Action> {
    let name = p.name_any();
    let ns = p.namespace().unwrap_or_default();
    let generation = p.metadata.generation;
    let api: Api<TracingPipeline> = Api::namespaced(ctx.client.clone(), &ns);
    let previous = p.status.clone().unwrap_or_default();
    let mut status = TracingPipelineStatus {
        observed_generation: generation,
        conditions: previous.conditions.clone(),
        retention_days: previous.retention_days,
        ..TracingPipelineStatus::default()
    };
    let cond = |s: &mut TracingPipelineStatus, t: &str, ok: bool, why: &str, msg: String| {
        set_condition(&mut s.conditions, t, ok, why, msg, generation);
    };

    // 1. Sampling and configuration. When nothing can be deployed, say why and stop; the
    // spec or a SamplingPolicy must change first (both requeue this pipeline).
    let sampling = sampling(&p, ctx, &previous).await?;
    status.sampling_hash = sampling.hash.clone();
    status.sampling_policies = sampling.sources.clone();
    let rendered = match (&sampling.problem, &sampling.yaml) {
        (Some(problem), None) => Err((
            reason::INVALID_SAMPLING_POLICY,
            format!("{problem}; no previous configuration to keep, so nothing was deployed"),
        )),
        _ => match render::desired(&p, &ctx.config.image, sampling.yaml.as_deref()) {
            Err(Error::InvalidConfiguration(msg)) => Err((reason::INVALID_CONFIGURATION, msg)),
            other => Ok(other?),
        },
    };
    let desired = match rendered {
        Ok(d) => d,
        Err((why, msg)) => {
            warn_on_change(ctx, &p, &previous, why, &msg).await;
            cond(
                &mut status,
                reason::CONFIGURATION_GENERATED,
                false,
                why,
                msg.clone(),
            );
            cond(&mut status, reason::READY, false, why, msg);
            patch_pipeline_status(&api, &name, &status).await?;
            return Ok(Action::requeue(ctx.config.resync_interval.get()));
        }
    };
    status.config_hash = Some(desired.config_hash.clone());
    match &sampling.problem {
        Some(problem) => {
            let msg = format!("{problem}; the previous sampling configuration stays active");
            warn_on_change(ctx, &p, &previous, reason::INVALID_SAMPLING_POLICY, &msg).await;
            cond(
                &mut status,
                reason::CONFIGURATION_GENERATED,
                false,
                reason::INVALID_SAMPLING_POLICY,
                msg,
            );
        }
        None => cond(
            &mut status,
            reason::CONFIGURATION_GENERATED,
            true,
            reason::RECONCILED,
            format!(
                "configuration {}{}",
                desired.config_hash,
                sampling
                    .hash
                    .as_deref()
                    .map(|h| format!(", sampling policy {h} from {}", sampling.sources.join(", ")))
                    .unwrap_or_else(|| ", no tail sampling".into())
            ),
        ),
    }

    // 2. Children, all under one field manager.
    let fm = &ctx.config.field_manager;
    let c = ctx.client.clone();
    apply_in(&c, &ns, &desired.service_account, fm).await?;
    apply_in(&c, &ns, &desired.config_map, fm).await?;
    let collector = apply_in(&c, &ns, &desired.collector, fm).await?;
    apply_in(&c, &ns, &desired.collector_service, fm).await?;
    let query = apply_in(&c, &ns, &desired.query, fm).await?;
    apply_in(&c, &ns, &desired.query_service, fm).await?;
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(c.clone(), &ns);
    let names = Names::of(&name);
    let uid = p.uid().unwrap_or_default();
    let existing_pdb = pdbs.get_opt(&names.collector).await?;
    match (&desired.pdb, existing_pdb) {
        (Some(_), Some(e)) if !owned_by(&e.metadata, &uid) => {
            let msg = format!(
                "PodDisruptionBudget {ns}/{} exists and is not managed by this pipeline; it is left alone",
                names.collector
            );
            ctx.event(&*p, EventType::Warning, reason::APPLY_FAILED, msg.clone())
                .await;
            return Err(Error::Conflict(msg));
        }
        (Some(pdb), _) => {
            apply(&pdbs, pdb, fm).await?;
        }
        (None, Some(e)) if owned_by(&e.metadata, &uid) => {
            pdbs.delete(&names.collector, &DeleteParams::default())
                .await?;
        }
        (None, _) => {}
    }
    if previous
        .config_hash
        .as_deref()
        .is_some_and(|h| h != desired.config_hash)
    {
        ctx.event(
            &*p,
            EventType::Normal,
            "ConfigurationChanged",
            format!(
                "configuration {} rolls the collector and query pods",
                desired.config_hash
            ),
        )
        .await;
    }
    if sampling.problem.is_none() && previous.sampling_hash != sampling.hash {
        ctx.event(
            &*p,
            EventType::Normal,
            "SamplingPolicyApplied",
            format!(
                "sampling policy {} from [{}]; collectors reload it without a restart",
                sampling.hash.as_deref().unwrap_or("none"),
                sampling.sources.join(", ")
            ),
        )
        .await;
    }

    let (ok, why, msg) = availability(&collector, "collector");
    cond(&mut status, reason::COLLECTOR_AVAILABLE, ok, why, msg);
    let (ok, why, msg) = availability(&query, "query");
    cond(&mut status, reason::QUERY_AVAILABLE, ok, why, msg);

    // 3. Retention, when it is not known to be in place for this generation.
    let days = p.spec.storage.retention_days;
    let retention_current = previous.retention_days == Some(days)
        && previous.observed_generation == generation
        && condition_true(&previous.conditions, reason::RETENTION_APPLIED);
    let mut retry_after = None;
    if !retention_current {
        match apply_retention(&p, ctx).await {
            Ok(msg) => {
                ctx.metrics.retention_applied.inc();
                status.retention_days = Some(days);
                cond(
                    &mut status,
                    reason::RETENTION_APPLIED,
                    true,
                    reason::RETENTION_SET,
                    msg.clone(),
                );
                ctx.event(&*p, EventType::Normal, reason::RETENTION_APPLIED, msg)
                    .await;
            }
            Err(e) => {
                ctx.metrics.retention_errors.inc();
                let why = clickhouse_reason(&e);
                let wait = ctx.backoff(&format!("retention/{}", key(&*p)));
                let msg = format!("{e}; retrying in {}s", wait.as_secs().max(1));
                tracing::warn!(pipeline = %key(&*p), error = %e, ?wait, "retention not applied");
                cond(
                    &mut status,
                    reason::RETENTION_APPLIED,
                    false,
                    why,
                    msg.clone(),
                );
                ctx.event(&*p, EventType::Warning, why, msg).await;
                retry_after = Some(wait);
            }
        }
    }
    if retry_after.is_none() {
        ctx.succeeded(&format!("retention/{}", key(&*p)));
    }

    // 4. Ready sums up the others.
    let blocking = [
        reason::CONFIGURATION_GENERATED,
        reason::COLLECTOR_AVAILABLE,
        reason::QUERY_AVAILABLE,
        reason::RETENTION_APPLIED,
    ]
    .into_iter()
    .find_map(|t| {
        status
            .conditions
            .iter()
            .find(|c| c.type_ == t && c.status != "True")
            .map(|c| (c.reason.clone(), format!("{}: {}", c.type_, c.message)))
    });
    match blocking {
        None => cond(
            &mut status,
            reason::READY,
            true,
            reason::RECONCILED,
            "all components available, configuration and retention applied".into(),
        ),
        Some((why, msg)) => cond(&mut status, reason::READY, false, &why, msg),
    }
    patch_pipeline_status(&api, &name, &status).await?;
    Ok(Action::requeue(
        retry_after.unwrap_or(ctx.config.resync_interval.get()),
    ))
}

async fn cleanup_pipeline(p: Arc<TracingPipeline>, ctx: &Context) -> Result<Action> {
    if p.spec.storage.deletion_policy == DeletionPolicy::Delete {
        let db = &p.spec.storage.database;
        let admin = clickhouse_admin(&p, ctx).await?;
        if let Err(e) = admin.drop_database().await {
            let msg = format!(
                "could not drop ClickHouse database {db}: {e}; the pipeline stays until this succeeds (see runbooks/operator.md)"
            );
            ctx.event(&*p, EventType::Warning, "DeleteStorageFailed", msg)
                .await;
            return Err(e.into());
        }
        tracing::info!(pipeline = %key(&*p), database = %db, "dropped the ClickHouse database (deletionPolicy: Delete)");
    } else {
        tracing::info!(pipeline = %key(&*p), "pipeline deleted; ClickHouse data retained (deletionPolicy: Retain)");
    }
    ctx.succeeded(&format!("retention/{}", key(&*p)));
    Ok(Action::await_change())
}

async fn reconcile_pipeline(p: Arc<TracingPipeline>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    let label = ControllerLabel {
        controller: "tracingpipeline",
    };
    ctx.metrics.reconciles.get_or_create(&label).inc();
    let ns = p.namespace().unwrap_or_default();
    let api: Api<TracingPipeline> = Api::namespaced(ctx.client.clone(), &ns);
    let k = key(&*p);
    let result = finalizer(&api, FINALIZER, p, |event| async {
        match event {
            Finalizer::Apply(p) => apply_pipeline(p, &ctx).await,
            Finalizer::Cleanup(p) => cleanup_pipeline(p, &ctx).await,
        }
    })
    .await
    .map_err(|e| match e {
        kube::runtime::finalizer::Error::ApplyFailed(e)
        | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
        other => Error::Render(format!("finalizer: {other}")),
    });
    ctx.metrics
        .duration
        .get_or_create(&label)
        .observe(started.elapsed().as_secs_f64());
    if result.is_ok() {
        ctx.succeeded(&k);
    }
    result
}

async fn reconcile_policy(sp: Arc<SamplingPolicy>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    let label = ControllerLabel {
        controller: "samplingpolicy",
    };
    ctx.metrics.reconciles.get_or_create(&label).inc();
    let ns = sp.namespace().unwrap_or_default();
    let name = sp.name_any();
    let generation = sp.metadata.generation;
    let previous = sp.status.clone().unwrap_or_default();
    let mut status = SamplingPolicyStatus {
        observed_generation: generation,
        conditions: previous.conditions.clone(),
        rule_count: Some(sp.spec.rules.len() as i32),
        used_by: Vec::new(),
    };
    match policy::validate(&sp) {
        Ok(()) => set_condition(
            &mut status.conditions,
            reason::ACCEPTED,
            true,
            reason::VALID,
            format!(
                "{} rules, priority {}",
                sp.spec.rules.len(),
                sp.spec.priority
            ),
            generation,
        ),
        Err(errors) => {
            let msg = describe(&errors);
            let was_invalid = previous
                .conditions
                .iter()
                .any(|c| c.type_ == reason::ACCEPTED && c.status == "False" && c.message == msg);
            if !was_invalid {
                ctx.event(
                    &*sp,
                    EventType::Warning,
                    reason::INVALID_SAMPLING_POLICY,
                    msg.clone(),
                )
                .await;
            }
            set_condition(
                &mut status.conditions,
                reason::ACCEPTED,
                false,
                reason::INVALID,
                msg,
                generation,
            );
        }
    }
    let pipelines: Api<TracingPipeline> = Api::namespaced(ctx.client.clone(), &ns);
    let mut used_by: Vec<String> = pipelines
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .filter(|p| selects(p, &sp))
        .map(|p| p.name_any())
        .collect();
    used_by.sort();
    status.used_by = used_by;
    let api: Api<SamplingPolicy> = Api::namespaced(ctx.client.clone(), &ns);
    api.patch_status(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": status })),
    )
    .await?;
    ctx.metrics
        .duration
        .get_or_create(&label)
        .observe(started.elapsed().as_secs_f64());
    ctx.succeeded(&format!("policy/{}", key(&*sp)));
    Ok(Action::requeue(ctx.config.resync_interval.get()))
}

fn error_policy<K: ResourceExt>(
    controller: &'static str,
    prefix: &'static str,
) -> impl Fn(Arc<K>, &Error, Arc<Context>) -> Action {
    move |obj, err, ctx| {
        ctx.metrics
            .errors
            .get_or_create(&ErrorLabel {
                controller,
                reason: err.metric_reason(),
            })
            .inc();
        let wait = ctx.backoff(&format!("{prefix}{}", key(&*obj)));
        tracing::warn!(controller, object = %key(&*obj), error = %err, ?wait, "reconcile failed; retrying");
        Action::requeue(wait)
    }
}

/// References to the cached objects in `near`'s namespace that satisfy `keep` (what a change
/// to `near` should requeue).
fn refs_in<K, N>(
    cache: &kube::runtime::reflector::Store<K>,
    near: &N,
    keep: impl Fn(&K) -> bool,
) -> Vec<ObjectRef<K>>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
    N: ResourceExt,
{
    cache
        .state()
        .into_iter()
        .filter(|o| o.namespace() == near.namespace() && keep(o))
        .map(|o| ObjectRef::from_obj(&*o))
        .collect()
}

/// Reconcile outcomes are counted and logged by the reconcilers and the error policy; what
/// reaches here is watch errors, which kube-runtime retries.
fn log_outcome<T>(
    controller: &'static str,
) -> impl FnMut(
    std::result::Result<T, kube::runtime::controller::Error<Error, watcher::Error>>,
) -> futures::future::Ready<()> {
    use kube::runtime::controller::Error as E;
    move |r| {
        match r {
            Ok(_) | Err(E::ReconcilerFailed(..)) => {}
            // A watch failing (RBAC, API server away) is retried, but an operator blind to
            // changes must be visible.
            Err(e) => tracing::warn!(controller, error = %e, "watch or queue error; retrying"),
        }
        futures::future::ready(())
    }
}

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Runs both controllers until `shutdown` fires.
pub async fn run_controllers(ctx: Arc<Context>, shutdown: CancellationToken) -> Result<()> {
    let client = ctx.client.clone();
    let ns = ctx.config.namespace.as_deref();
    let owned =
        watcher::Config::default().labels("app.kubernetes.io/managed-by=datatracing-operator");

    let pipelines = Controller::new(
        api::<TracingPipeline>(&client, ns),
        watcher::Config::default(),
    );
    let store = pipelines.store();
    let policy_store = store.clone();
    let secret_store = store.clone();
    let pipelines = pipelines
        .owns(api::<Deployment>(&client, ns), owned.clone())
        .owns(api::<ConfigMap>(&client, ns), owned.clone())
        .owns(api::<Service>(&client, ns), owned.clone())
        .watches(
            api::<SamplingPolicy>(&client, ns),
            watcher::Config::default(),
            move |sp: SamplingPolicy| {
                // Pipelines that select it now, or used it until a label changed.
                let name = sp.name_any();
                refs_in(&policy_store, &sp, |p| {
                    selects(p, &sp)
                        || p.status
                            .as_ref()
                            .is_some_and(|s| s.sampling_policies.contains(&name))
                })
            },
        )
        .watches(
            api::<PartialObjectMeta<Secret>>(&client, ns),
            watcher::Config::default(),
            move |secret: PartialObjectMeta<Secret>| {
                refs_in(&secret_store, &secret, |p| {
                    p.spec
                        .storage
                        .password_secret_ref
                        .as_ref()
                        .is_some_and(|r| r.name == secret.name_any())
                })
            },
        )
        .graceful_shutdown_on(shutdown.clone().cancelled_owned())
        .run(
            reconcile_pipeline,
            error_policy::<TracingPipeline>("tracingpipeline", ""),
            ctx.clone(),
        )
        .for_each(log_outcome("tracingpipeline"));

    let policies = Controller::new(
        api::<SamplingPolicy>(&client, ns),
        watcher::Config::default(),
    );
    let pstore = policies.store();
    let policy_reader = pstore.clone();
    let policies = policies
        .watches(
            api::<TracingPipeline>(&client, ns),
            watcher::Config::default(),
            move |p: TracingPipeline| refs_in(&pstore, &p, |_| true),
        )
        .graceful_shutdown_on(shutdown.clone().cancelled_owned())
        .run(
            reconcile_policy,
            error_policy::<SamplingPolicy>("samplingpolicy", "policy/"),
            ctx.clone(),
        )
        .for_each(log_outcome("samplingpolicy"));
    tracing::info!(namespace = ns.unwrap_or("(all)"), "controllers started");
    // kube-runtime holds its reconcile runner until the first list of the main resource
    // completes; a shutdown before that would wait forever. So: before the caches are
    // synced nothing is in flight and shutdown is immediate; after, in-flight reconciles get
    // at most `drain_timeout`.
    let synced = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sync_flag = synced.clone();
    let sync = tokio::spawn(async move {
        if store.wait_until_ready().await.is_ok() && policy_reader.wait_until_ready().await.is_ok()
        {
            sync_flag.store(true, std::sync::atomic::Ordering::SeqCst);
            tracing::info!("caches synced");
        }
    });
    let drain = ctx.config.drain_timeout.get();
    tokio::select! {
        _ = async { futures::join!(pipelines, policies) } => {}
        _ = async {
            shutdown.cancelled().await;
            if synced.load(std::sync::atomic::Ordering::SeqCst) {
                tokio::time::sleep(drain).await;
                tracing::warn!(?drain, "reconciles still running at the end of the drain; abandoning them");
            }
        } => {}
    }
    sync.abort();
    tracing::info!("controllers stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    #[test]
    fn selectors_match_like_the_api_server() {
        let labels = BTreeMap::from([("team".to_string(), "data".to_string())]);
        let sel = |ml: Option<(&str, &str)>, expr: Option<(&str, &str, &[&str])>| LabelSelector {
            match_labels: ml.map(|(k, v)| BTreeMap::from([(k.to_string(), v.to_string())])),
            match_expressions: expr.map(|(k, op, vs)| {
                vec![LabelSelectorRequirement {
                    key: k.into(),
                    operator: op.into(),
                    values: Some(vs.iter().map(|s| s.to_string()).collect()),
                }]
            }),
        };
        assert!(
            selector_matches(&sel(None, None), &labels),
            "empty selects all"
        );
        assert!(selector_matches(
            &sel(Some(("team", "data")), None),
            &labels
        ));
        assert!(!selector_matches(
            &sel(Some(("team", "web")), None),
            &labels
        ));
        assert!(selector_matches(
            &sel(None, Some(("team", "In", &["data", "x"]))),
            &labels
        ));
        assert!(!selector_matches(
            &sel(None, Some(("team", "NotIn", &["data"]))),
            &labels
        ));
        assert!(selector_matches(
            &sel(None, Some(("tier", "DoesNotExist", &[]))),
            &labels
        ));
        assert!(!selector_matches(
            &sel(None, Some(("tier", "Exists", &[]))),
            &labels
        ));
        assert!(!selector_matches(
            &sel(None, Some(("team", "Bogus", &[]))),
            &labels
        ));
    }

    #[test]
    fn conditions_keep_transition_time_until_status_changes() {
        let mut cs = Vec::new();
        set_condition(&mut cs, "Ready", false, "X", "m", Some(1));
        let epoch = Time(Timestamp::UNIX_EPOCH);
        cs[0].last_transition_time = epoch.clone();
        set_condition(&mut cs, "Ready", false, "Y", "m2", Some(2));
        assert_eq!(cs.len(), 1);
        assert_eq!(
            cs[0].last_transition_time, epoch,
            "same status keeps the time"
        );
        assert_eq!(cs[0].reason, "Y");
        set_condition(&mut cs, "Ready", true, "Z", "ok", Some(2));
        assert_ne!(
            cs[0].last_transition_time, epoch,
            "a new status is a transition"
        );
    }

    #[test]
    fn long_messages_are_cut_on_a_char_boundary() {
        let s = truncate("é".repeat(10), 5);
        assert!(s.starts_with("éé") && s.ends_with('…'));
    }
}
