//! The DataTracing operator: reconciles `TracingPipeline` and `SamplingPolicy` custom
//! resources into collector and query Deployments, their configuration, and ClickHouse
//! retention.
//!
//! - [`crd`]: the resource types and the CRDs generated from them (`crdgen`).
//! - [`schema`]: structural schemas for the recursive policy model.
//! - [`render`]: pure functions from a pipeline to its children.
//! - [`policy`]: merging and validating SamplingPolicies.
//! - [`controller`]: the reconcilers, their conditions and their wiring.
//! - [`leader`]: Lease-based leader election.
//! - [`run`]: the process: ops endpoints, leader election, controllers, shutdown.

pub mod controller;
pub mod crd;
pub mod error;
pub mod leader;
pub mod metrics;
pub mod policy;
pub mod render;
pub mod schema;

use std::sync::Arc;

use datatracing_http::{HttpMetrics, Readiness, finish_router, ops_routes, serve};
use kube::Api;
use kube::api::ListParams;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

// The settings `run` takes; they live in `datatracing-config`.
pub use datatracing_config::{LeaderElectionConfig, OperatorConfig};
pub use error::{Error, Result};

/// Runs the operator until `shutdown` fires: serves `/healthz`, `/readyz` and `/metrics`,
/// waits for leadership (when enabled), and reconciles. Returns an error when the CRDs are
/// not installed, the ops port cannot be bound, or leadership is lost.
pub async fn run(
    config: OperatorConfig,
    client: kube::Client,
    shutdown: CancellationToken,
) -> Result<()> {
    config.validate()?;
    let mut registry = Registry::default();
    let metrics = metrics::Metrics::register(&mut registry);
    let http_metrics = HttpMetrics::register(&mut registry);
    let readiness = Readiness::flag_only();
    let router = finish_router(
        ops_routes(readiness.clone(), Arc::new(registry)),
        "operator",
        std::time::Duration::from_secs(10),
        http_metrics,
    );
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| Error::Serve(format!("cannot listen on {}: {e}", config.listen)))?;
    tracing::info!(addr = %listener.local_addr().map_err(|e| Error::Serve(e.to_string()))?, "ops endpoints listening");
    let ops_shutdown = CancellationToken::new();
    let ops = tokio::spawn(serve(
        listener,
        router,
        ops_shutdown.clone(),
        std::time::Duration::from_secs(2),
    ));

    // Fail early and clearly when the CRDs are missing or RBAC forbids reading them.
    let probe: Api<crd::TracingPipeline> = match &config.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    if let Err(e) = probe.list(&ListParams::default().limit(1)).await {
        ops_shutdown.cancel();
        return Err(Error::Config(format!(
            "cannot list TracingPipelines ({e}); are the CRDs installed (kubectl apply -f crds/) and the RBAC rules bound?"
        )));
    }
    readiness.set_ready(true);

    let ctx = Arc::new(controller::Context::new(
        client.clone(),
        config.clone(),
        metrics.clone(),
    ));
    let result = if config.leader_election.enabled {
        let (lease_ns, identity) = config.lease_identity();
        let mut elector = leader::LeaderElector::new(
            client,
            &lease_ns,
            &config.leader_election.lease_name,
            &identity,
            config.leader_election.lease_duration.get(),
            config.leader_election.renew_interval.get(),
        );
        // The pod (from the downward API) owns the lease it holds, when both live in one
        // namespace: deleting the pod then deletes the lease (leader.rs).
        if let (Ok(pod), Ok(uid), Ok(pod_ns)) = (
            std::env::var("POD_NAME"),
            std::env::var("POD_UID"),
            std::env::var("POD_NAMESPACE"),
        ) && pod_ns == lease_ns
            && !uid.is_empty()
        {
            elector = elector.owned_by(&pod, &uid);
        }
        elector
            .lead(shutdown.clone(), metrics, move |token| {
                controller::run_controllers(ctx, token)
            })
            .await
    } else {
        controller::run_controllers(ctx, shutdown.clone()).await
    };
    readiness.set_ready(false);
    ops_shutdown.cancel();
    // The reconcile outcome comes first; a failed ops server is reported when that was fine.
    let ops_outcome = match ops.await {
        Ok(served) => served.map_err(|e| Error::Serve(e.to_string())),
        Err(source) => Err(Error::Join {
            task: "ops server",
            source,
        }),
    };
    result.and(ops_outcome)
}
