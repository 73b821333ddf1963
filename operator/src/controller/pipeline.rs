//! The TracingPipeline reconciler: merge the selected SamplingPolicies (keeping the last
//! good policy when one is invalid), render and server-side apply the children, apply
//! ClickHouse retention, and report all of it in conditions. A finalizer honours
//! `deletionPolicy`.

use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use kube::core::SelectorExt;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use serde_json::json;

use super::children::{self, ChildrenError};
use super::conditions::{self, ConditionType, EventReason, Reason, set_condition};
use super::context::{Context, apply_status, key, status_json};
use super::selection::policy_selector;
use super::storage;
use crate::crd::{
    DeletionPolicy, ManagementState, SamplingPolicy, TracingPipeline, TracingPipelineStatus,
};
use crate::error::{Error, Result};
use crate::metrics::{ConditionLabel, ControllerLabel};
use crate::policy;
use crate::render::{self, Names, SAMPLING_KEY};

/// Finalizer the operator puts on every TracingPipeline.
pub const FINALIZER: &str = "datatracing.io/storage-cleanup";

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

/// The sampling configuration for `p`. With an invalid selected policy the last good YAML is
/// kept: the one in the status, or (status from an operator that did not keep it there)
/// the one in the existing ConfigMap.
async fn sampling(
    p: &TracingPipeline,
    ctx: &Context,
    previous: &TracingPipelineStatus,
) -> Result<Sampling> {
    let Some(selector) = policy_selector(p)? else {
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
        .filter(|sp| selector.matches(sp.labels()))
        .collect();
    match policy::merge(selected, &p.spec.sampling.default_action) {
        Ok(m) => Ok(Sampling {
            yaml: Some(render::sampling_yaml(&m.policy, &m.sources)?),
            hash: Some(m.hash),
            sources: m.sources,
            problem: None,
        }),
        Err(invalid) => {
            let last_good = match &previous.sampling_configuration {
                Some(yaml) => Some(yaml.clone()),
                None => {
                    let cms: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ns);
                    cms.get_opt(&Names::of(&p.name_any()).config)
                        .await?
                        .and_then(|cm| cm.data?.get(SAMPLING_KEY).cloned())
                }
            };
            Ok(Sampling {
                yaml: last_good,
                hash: previous.sampling_hash.clone(),
                sources: previous.sampling_policies.clone(),
                problem: Some(invalid.to_string()),
            })
        }
    }
}

/// A configuration problem: the condition reason and the event reason that report it.
#[derive(Clone, Copy, Debug)]
struct Problem {
    reason: Reason,
    event: EventReason,
}

const INVALID_SAMPLING_POLICY: Problem = Problem {
    reason: Reason::InvalidSamplingPolicy,
    event: EventReason::InvalidSamplingPolicy,
};

const INVALID_CONFIGURATION: Problem = Problem {
    reason: Reason::InvalidConfiguration,
    event: EventReason::InvalidConfiguration,
};

/// A Warning event for a configuration problem, once per distinct problem rather than on
/// every reconcile (Deployment status changes and resyncs reconcile often).
async fn warn_on_change(
    ctx: &Context,
    p: &TracingPipeline,
    previous: &TracingPipelineStatus,
    problem: Problem,
    msg: &str,
) {
    let known = conditions::already(
        &previous.conditions,
        ConditionType::ConfigurationGenerated,
        false,
        problem.reason,
        msg,
    );
    if !known {
        ctx.event(p, EventType::Warning, problem.event, msg.to_string())
            .await;
    }
}

/// `(available, reason, message)` of a Deployment as the API server returned it.
fn availability(d: &Deployment, what: &str) -> (bool, Reason, String) {
    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    if want == 0 {
        return (true, Reason::ScaledToZero, format!("{what} is scaled to 0"));
    }
    let st = d.status.clone().unwrap_or_default();
    let current = st.observed_generation >= d.metadata.generation;
    let available = st.available_replicas.unwrap_or(0);
    let updated = st.updated_replicas.unwrap_or(0);
    if current && available >= want && updated >= want {
        (
            true,
            Reason::ReplicasAvailable,
            format!("{available}/{want} {what} replicas available"),
        )
    } else {
        (
            false,
            Reason::ReplicasUnavailable,
            format!("{available}/{want} {what} replicas available, {updated} up to date"),
        )
    }
}

/// Writes the pipeline's status (server-side apply: see [`apply_status`]).
async fn write_status(
    ctx: &Context,
    p: &TracingPipeline,
    status: &TracingPipelineStatus,
) -> Result<()> {
    let mut v = status_json(status)?;
    v["samplingPolicies"] = json!(status.sampling_policies);
    apply_status(ctx, p, v).await?;
    for c in &status.conditions {
        if let Some(t) = ConditionType::parse(&c.type_) {
            ctx.metrics
                .pipeline_condition
                .get_or_create(&condition_label(p, t))
                .set(i64::from(c.status == "True"));
        }
    }
    Ok(())
}

fn condition_label(p: &TracingPipeline, t: ConditionType) -> ConditionLabel {
    ConditionLabel {
        namespace: p.namespace().unwrap_or_default(),
        pipeline: p.name_any(),
        condition: t.as_str(),
    }
}

/// Reports a pipeline for which nothing can be deployed: its children stay as they are, and
/// so does what the status says about them. The spec or a SamplingPolicy must change first
/// (both requeue the pipeline).
async fn undeployable(
    ctx: &Context,
    p: &TracingPipeline,
    previous: &TracingPipelineStatus,
    mut status: TracingPipelineStatus,
    problem: Problem,
    msg: String,
) -> Result<Action> {
    warn_on_change(ctx, p, previous, problem, &msg).await;
    let generation = status.observed_generation;
    status.config_hash = previous.config_hash.clone();
    status.sampling_hash = previous.sampling_hash.clone();
    status.sampling_policies = previous.sampling_policies.clone();
    status.sampling_configuration = previous.sampling_configuration.clone();
    set_condition(
        &mut status.conditions,
        ConditionType::ConfigurationGenerated,
        false,
        problem.reason,
        msg.clone(),
        generation,
    );
    set_condition(
        &mut status.conditions,
        ConditionType::Ready,
        false,
        problem.reason,
        msg,
        generation,
    );
    write_status(ctx, p, &status).await?;
    Ok(ctx.resync())
}

/// Reports children that could not be written (a name taken by an object this pipeline
/// does not own, or an apply the API server refused) in `ResourcesApplied` and `Ready` and
/// in a Warning event, then fails the reconcile so it is retried with backoff (a freed
/// name or a fixed admission problem triggers nothing the operator watches). What was
/// deployed before, and what the status says about it, stays.
async fn children_failed(
    ctx: &Context,
    p: &TracingPipeline,
    previous: &TracingPipelineStatus,
    mut status: TracingPipelineStatus,
    failure: ChildrenError,
) -> Result<Action> {
    let (reason, event, msg, err) = match failure {
        ChildrenError::NameConflict(msg) => (
            Reason::NameConflict,
            EventReason::NameConflict,
            msg.clone(),
            Error::Conflict(msg),
        ),
        ChildrenError::Failed(what, e) => (
            Reason::ApplyFailed,
            EventReason::ApplyFailed,
            format!("{what}: {e}"),
            e,
        ),
    };
    let known = conditions::already(
        &previous.conditions,
        ConditionType::ResourcesApplied,
        false,
        reason,
        &msg,
    );
    if !known {
        ctx.event(p, EventType::Warning, event, msg.clone()).await;
    }
    let generation = status.observed_generation;
    status.config_hash = previous.config_hash.clone();
    status.sampling_hash = previous.sampling_hash.clone();
    status.sampling_policies = previous.sampling_policies.clone();
    status.sampling_configuration = previous.sampling_configuration.clone();
    for t in [ConditionType::ResourcesApplied, ConditionType::Ready] {
        set_condition(
            &mut status.conditions,
            t,
            false,
            reason,
            msg.clone(),
            generation,
        );
    }
    write_status(ctx, p, &status).await?;
    Err(err)
}

/// `spec.managementState: Unmanaged`: nothing is written but the status, which keeps what
/// it said about the children (and `observedGeneration`, the last generation reconciled)
/// and says, in `Managed`, that reconciliation is paused. A change to the spec, including
/// setting it back to `Managed`, triggers the next reconcile; nothing periodic is needed.
async fn paused(
    ctx: &Context,
    p: &TracingPipeline,
    mut status: TracingPipelineStatus,
) -> Result<Action> {
    let was_paused = conditions::find(&status.conditions, ConditionType::Managed)
        .is_some_and(|c| c.status != "True");
    if !was_paused {
        ctx.event(
            p,
            EventType::Normal,
            EventReason::ReconciliationPaused,
            "spec.managementState is Unmanaged: children and ClickHouse are left as they are"
                .into(),
        )
        .await;
    }
    set_condition(
        &mut status.conditions,
        ConditionType::Managed,
        false,
        Reason::Unmanaged,
        "reconciliation paused (spec.managementState: Unmanaged); changes to the children \
         and ClickHouse are not reverted until it is Managed again",
        p.metadata.generation,
    );
    write_status(ctx, p, &status).await?;
    ctx.succeeded(&format!("retention/{}", key(p)));
    Ok(Action::await_change())
}

async fn apply_pipeline(p: Arc<TracingPipeline>, ctx: &Context) -> Result<Action> {
    let ns = p.namespace().unwrap_or_default();
    let generation = p.metadata.generation;
    let previous = p.status.clone().unwrap_or_default();
    if p.spec.management_state == ManagementState::Unmanaged {
        return paused(ctx, &p, previous).await;
    }
    if conditions::find(&previous.conditions, ConditionType::Managed)
        .is_some_and(|c| c.status != "True")
    {
        ctx.event(
            &*p,
            EventType::Normal,
            EventReason::ReconciliationResumed,
            "spec.managementState is Managed again: reconciling".into(),
        )
        .await;
    }
    let mut status = TracingPipelineStatus {
        observed_generation: generation,
        conditions: previous.conditions.clone(),
        retention_days: previous.retention_days,
        collector_replicas: previous.collector_replicas,
        password_secret_version: previous.password_secret_version.clone(),
        collector_selector: previous.collector_selector.clone(),
        ..TracingPipelineStatus::default()
    };
    let cond = |s: &mut TracingPipelineStatus, t, ok, reason, msg: String| {
        set_condition(&mut s.conditions, t, ok, reason, msg, generation);
    };
    cond(
        &mut status,
        ConditionType::Managed,
        true,
        Reason::Reconciled,
        "the operator reconciles this pipeline (spec.managementState: Managed)".into(),
    );

    // 1. Sampling and configuration. When nothing can be deployed, say why and stop.
    let sampling = match sampling(&p, ctx, &previous).await {
        Ok(s) => s,
        Err(Error::InvalidConfiguration(msg)) => {
            return undeployable(ctx, &p, &previous, status, INVALID_CONFIGURATION, msg).await;
        }
        Err(e) => return Err(e),
    };
    status.sampling_hash = sampling.hash.clone();
    status.sampling_policies = sampling.sources.clone();
    status.sampling_configuration = sampling.yaml.clone();
    let rendered = match (&sampling.problem, &sampling.yaml) {
        (Some(problem), None) => Err((
            INVALID_SAMPLING_POLICY,
            format!("{problem}; no previous configuration to keep, so nothing was deployed"),
        )),
        _ => match render::desired(&p, &ctx.config.image, sampling.yaml.as_deref()) {
            Err(Error::InvalidConfiguration(msg)) => Err((INVALID_CONFIGURATION, msg)),
            other => Ok(other?),
        },
    };
    let mut desired = match rendered {
        Ok(d) => d,
        Err((problem, msg)) => {
            return undeployable(ctx, &p, &previous, status, problem, msg).await;
        }
    };
    // A rotated password rolls the pods. No Secret is watched (see the module docs of
    // `controller`): the change is seen on the next reconcile (retry or resync). When the
    // Secret cannot be read now, the pods keep the version they were rolled for.
    status.password_secret_version = match storage::secret_version(&p, ctx).await {
        Some(v) => Some(v),
        // Unreadable now: keep what the pods were rolled for (None if nothing is referenced).
        None => previous.password_secret_version.clone().filter(|_| {
            let s = &p.spec.storage;
            s.password_secret_ref.is_some()
                || s.collector_credentials
                    .as_ref()
                    .is_some_and(|c| c.password_secret_ref.is_some())
                || s.query_credentials
                    .as_ref()
                    .is_some_and(|c| c.password_secret_ref.is_some())
        }),
    };
    if let Some(v) = &status.password_secret_version {
        render::set_secret_version(&mut desired, v);
    }
    status.config_hash = Some(desired.config_hash.clone());
    match &sampling.problem {
        Some(problem) => {
            let msg = format!("{problem}; the previous sampling configuration stays active");
            warn_on_change(ctx, &p, &previous, INVALID_SAMPLING_POLICY, &msg).await;
            cond(
                &mut status,
                ConditionType::ConfigurationGenerated,
                false,
                Reason::InvalidSamplingPolicy,
                msg,
            );
        }
        None => cond(
            &mut status,
            ConditionType::ConfigurationGenerated,
            true,
            Reason::Reconciled,
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

    // 2. Children, all under one field manager; none whose name belongs to someone else.
    let uid = p.uid().unwrap_or_default();
    let applied = match children::apply_all(
        &ctx.client,
        &ns,
        &uid,
        &desired,
        &ctx.config.field_manager,
    )
    .await
    {
        Ok(a) => {
            cond(
                &mut status,
                ConditionType::ResourcesApplied,
                true,
                Reason::Reconciled,
                match &a.skipped {
                    None => format!("children of configuration {} applied", desired.config_hash),
                    Some(note) => format!(
                        "children of configuration {} applied; {note}",
                        desired.config_hash
                    ),
                },
            );
            a
        }
        Err(e) => return children_failed(ctx, &p, &previous, status, e).await,
    };
    let (collector, query) = (applied.collector, applied.query);
    if desired.peers.is_some() {
        status.collector_ring_size = ring_size(&ctx.client, &ns, &desired.names.peers).await;
    }
    // The scale subresource reads these: `kubectl scale` and autoscalers see the pods.
    status.collector_replicas = Some(
        collector
            .status
            .as_ref()
            .and_then(|s| s.replicas)
            .unwrap_or(0),
    );
    status.collector_selector = Some(
        render::selector(&p, "collector")
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(","),
    );
    if previous
        .config_hash
        .as_deref()
        .is_some_and(|h| h != desired.config_hash)
    {
        ctx.event(
            &*p,
            EventType::Normal,
            EventReason::ConfigurationChanged,
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
            EventReason::SamplingPolicyApplied,
            format!(
                "sampling policy {} from [{}]; collectors reload it without a restart",
                sampling.hash.as_deref().unwrap_or("none"),
                sampling.sources.join(", ")
            ),
        )
        .await;
    }

    let (ok, reason, msg) = availability(&collector, "collector");
    cond(
        &mut status,
        ConditionType::CollectorAvailable,
        ok,
        reason,
        msg,
    );
    let (ok, reason, msg) = availability(&query, "query");
    cond(&mut status, ConditionType::QueryAvailable, ok, reason, msg);

    // 3. Retention: applied when it is not known to be in place for this generation;
    //    otherwise checked for drift (dropped tables, TTLs changed by hand), which is
    //    reported and then repaired by the next reconcile.
    let days = p.spec.storage.retention_days;
    let retention_current = previous.retention_days == Some(days)
        && previous.observed_generation == generation
        && conditions::is_true(&previous.conditions, ConditionType::RetentionApplied);
    let outcome = if retention_current {
        storage::drift(&p, ctx).await.map(|d| d.map(Err))
    } else {
        storage::apply_retention(&p, ctx).await.map(|m| Some(Ok(m)))
    };
    let mut retry_after = None;
    match outcome {
        Ok(None) => {}
        Ok(Some(Ok(msg))) => {
            ctx.metrics.retention_applied.inc();
            status.retention_days = Some(days);
            cond(
                &mut status,
                ConditionType::RetentionApplied,
                true,
                Reason::RetentionSet,
                msg.clone(),
            );
            ctx.event(&*p, EventType::Normal, EventReason::RetentionApplied, msg)
                .await;
        }
        Ok(Some(Err(drift))) => {
            let msg = format!("{drift}; repairing");
            tracing::warn!(pipeline = %key(&*p), %drift, "ClickHouse differs from the spec");
            cond(
                &mut status,
                ConditionType::RetentionApplied,
                false,
                Reason::StorageDrift,
                msg.clone(),
            );
            ctx.event(&*p, EventType::Warning, EventReason::StorageDrift, msg)
                .await;
            retry_after = Some(ctx.config.retry_backoff.get());
        }
        Err(e) => {
            ctx.metrics.retention_errors.inc();
            let (reason, event) = storage::retention_failure(&e);
            let wait = ctx.backoff(&format!("retention/{}", key(&*p)));
            // The wait stays out of the message: it changes on every attempt, and so
            // would the condition and the event.
            let msg = format!("{e}; retried with backoff");
            tracing::warn!(pipeline = %key(&*p), error = %e, ?wait, "retention not applied");
            cond(
                &mut status,
                ConditionType::RetentionApplied,
                false,
                reason,
                msg.clone(),
            );
            ctx.event(&*p, EventType::Warning, event, msg).await;
            retry_after = Some(wait);
        }
    }
    if retry_after.is_none() {
        ctx.succeeded(&format!("retention/{}", key(&*p)));
    }

    // 4. Ready sums up the others.
    let (ok, reason, msg) = conditions::ready(&status.conditions);
    cond(&mut status, ConditionType::Ready, ok, reason, msg);
    write_status(ctx, &p, &status).await?;
    Ok(retry_after.map_or_else(|| ctx.resync(), Action::requeue))
}

async fn cleanup_pipeline(p: Arc<TracingPipeline>, ctx: &Context) -> Result<Action> {
    let db = &p.spec.storage.database;
    let drop = p.spec.storage.deletion_policy == DeletionPolicy::Delete;
    match storage::on_delete(&p, ctx, drop).await {
        Ok(Some(owner)) => {
            // Another pipeline's data: never dropped, and the deletion is not held up.
            let msg = format!(
                "ClickHouse database {db} belongs to TracingPipeline {owner}; it was not dropped"
            );
            tracing::warn!(pipeline = %key(&*p), database = %db, %owner, "not dropping another pipeline's database");
            ctx.event(&*p, EventType::Warning, EventReason::StorageConflict, msg)
                .await;
        }
        Ok(None) if drop => {
            tracing::info!(pipeline = %key(&*p), database = %db, "dropped the ClickHouse database (deletionPolicy: Delete)");
        }
        Ok(None) => {
            tracing::info!(pipeline = %key(&*p), database = %db, "pipeline deleted; ClickHouse data retained and released (deletionPolicy: Retain)");
        }
        Err(e) if drop => {
            let msg = format!(
                "could not drop ClickHouse database {db}: {e}; the pipeline stays until this succeeds (see runbooks/operator.md)"
            );
            ctx.event(
                &*p,
                EventType::Warning,
                EventReason::DeleteStorageFailed,
                msg,
            )
            .await;
            return Err(e);
        }
        Err(e) => {
            // Retain keeps the data either way; only the claim stays (runbook: releasing it).
            tracing::warn!(pipeline = %key(&*p), database = %db, error = %e, "pipeline deleted; ClickHouse data retained, but its ownership could not be released");
        }
    }
    ctx.succeeded(&format!("retention/{}", key(&*p)));
    for t in ConditionType::ALL {
        ctx.metrics
            .pipeline_condition
            .remove(&condition_label(&p, *t));
    }
    Ok(Action::await_change())
}

/// Reconciles one TracingPipeline (through the finalizer).
#[tracing::instrument(skip_all, fields(
    namespace = %p.namespace().unwrap_or_default(),
    pipeline = %p.name_any(),
    generation = p.metadata.generation,
    deleting = p.metadata.deletion_timestamp.is_some(),
))]
pub(super) async fn reconcile(p: Arc<TracingPipeline>, ctx: Arc<Context>) -> Result<Action> {
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
    .map_err(Error::from);
    ctx.metrics
        .duration
        .get_or_create(&label)
        .observe(started.elapsed().as_secs_f64());
    if result.is_ok() {
        ctx.succeeded(&k);
    }
    result
}

/// Ready endpoints of the peers Service: the members every routing collector sees. `None`
/// when the slices cannot be read (logged; the status then omits the size).
async fn ring_size(client: &kube::Client, ns: &str, service: &str) -> Option<i32> {
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    let api: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
    let lp = ListParams::default().labels(&format!("kubernetes.io/service-name={service}"));
    match api.list(&lp).await {
        Ok(list) => {
            let ready = list
                .items
                .iter()
                .flat_map(|s| s.endpoints.iter())
                .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
                .count();
            Some(i32::try_from(ready).unwrap_or(i32::MAX))
        }
        Err(e) => {
            tracing::warn!(error = %e, %service, "cannot read the collectors' EndpointSlices for the ring size");
            None
        }
    }
}
