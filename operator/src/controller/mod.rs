//! The two reconcilers and their wiring into kube-runtime controllers.
//!
//! - [`pipeline`]: TracingPipeline: sampling, children, retention, conditions, finalizer.
//! - [`children`]: a pipeline's child objects: names taken by others are refused, the rest applied.
//! - [`policy`]: SamplingPolicy: validation, and which pipelines use it.
//! - [`conditions`]: typed condition types and reasons, and how conditions are set.
//! - [`context`]: what the reconcilers share (client, settings, metrics, events, backoff).
//! - [`selection`]: which policies a pipeline selects.
//! - [`storage`]: the pipeline's ClickHouse (password, retention, dropping the database).
//!
//! SamplingPolicy changes requeue the pipelines they affect; errors back off exponentially
//! per object. Secrets are not watched: that would need list and watch on every Secret in
//! the cluster, and the operator reads only the one Secret a pipeline references, by name,
//! on each reconcile (a missing or rotated password is picked up by the retry backoff or the
//! resync). Only changes a reconcile acts on trigger one: the operator's
//! own status writes do not, or every failed attempt would retry at once and the backoff
//! would never hold.

mod children;
pub mod conditions;
mod context;
mod pipeline;
mod policy;
mod selection;
mod storage;

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::api::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Client, Resource, ResourceExt};
use tokio_util::sync::CancellationToken;

pub use conditions::{ConditionType, EventReason, Reason, set_condition};
pub use context::Context;
use context::key;
pub use pipeline::FINALIZER;
use selection::selects;

use crate::crd::{SamplingPolicy, TracingPipeline};
use crate::error::{Error, Result};
use crate::metrics::ErrorLabel;

/// What of a TracingPipeline its reconcile acts on: the spec (generation; deletion sets a
/// new one too), the finalizers and deletion. Status, which the reconcile writes itself,
/// and other metadata are left out.
fn pipeline_trigger(p: &TracingPipeline) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    p.metadata.generation.hash(&mut h);
    p.metadata.finalizers.hash(&mut h);
    p.metadata.deletion_timestamp.is_some().hash(&mut h);
    Some(h.finish())
}

/// What of a SamplingPolicy the pipelines that select it depend on: its spec and its
/// labels (selection), not its status.
fn policy_trigger(sp: &SamplingPolicy) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    sp.metadata.generation.hash(&mut h);
    sp.metadata.labels.hash(&mut h);
    Some(h.finish())
}

/// What a failed reconcile does: count it, log it, and retry after a per-object backoff.
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

    let (store, writer) = reflector::store();
    let trigger = watcher(
        api::<TracingPipeline>(&client, ns),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(writer)
    .applied_objects()
    .predicate_filter(pipeline_trigger, Default::default());
    let pipelines = Controller::for_stream(trigger, store.clone());
    let policy_store = store.clone();
    let pipelines = pipelines
        .owns(api::<Deployment>(&client, ns), owned.clone())
        .owns(api::<ConfigMap>(&client, ns), owned.clone())
        .owns(api::<Service>(&client, ns), owned.clone())
        .watches_stream(
            watcher(
                api::<SamplingPolicy>(&client, ns),
                watcher::Config::default(),
            )
            .default_backoff()
            .applied_objects()
            .predicate_filter(policy_trigger, Default::default()),
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
        .graceful_shutdown_on(shutdown.clone().cancelled_owned())
        .run(
            pipeline::reconcile,
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
            policy::reconcile,
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
