//! The SamplingPolicy reconciler: validate the rules, and report which pipelines use the
//! policy.

use std::sync::Arc;
use std::time::Instant;

use datatracing_core::policy::PolicyError;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use serde_json::json;

use super::conditions::{self, ConditionType, EventReason, Reason, set_condition};
use super::context::{Context, apply_status, key, status_json};
use super::selection::selects;
use crate::crd::{SamplingPolicy, SamplingPolicyStatus, TracingPipeline};
use crate::error::Result;
use crate::metrics::ControllerLabel;

fn describe(errors: &[PolicyError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Reconciles one SamplingPolicy.
#[tracing::instrument(skip_all, fields(
    namespace = %sp.namespace().unwrap_or_default(),
    policy = %sp.name_any(),
    generation = sp.metadata.generation,
))]
pub(super) async fn reconcile(sp: Arc<SamplingPolicy>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    let label = ControllerLabel {
        controller: "samplingpolicy",
    };
    ctx.metrics.reconciles.get_or_create(&label).inc();
    let ns = sp.namespace().unwrap_or_default();
    let generation = sp.metadata.generation;
    let previous = sp.status.clone().unwrap_or_default();
    let mut status = SamplingPolicyStatus {
        observed_generation: generation,
        conditions: previous.conditions.clone(),
        rule_count: Some(sp.spec.rules.len() as i32),
        used_by: Vec::new(),
    };
    match crate::policy::validate(&sp) {
        Ok(()) => set_condition(
            &mut status.conditions,
            ConditionType::Accepted,
            true,
            Reason::Valid,
            format!(
                "{} rules, priority {}",
                sp.spec.rules.len(),
                sp.spec.priority
            ),
            generation,
        ),
        Err(errors) => {
            let msg = describe(&errors);
            let known = conditions::already(
                &previous.conditions,
                ConditionType::Accepted,
                false,
                Reason::Invalid,
                &msg,
            );
            if !known {
                ctx.event(
                    &*sp,
                    EventType::Warning,
                    EventReason::InvalidSamplingPolicy,
                    msg.clone(),
                )
                .await;
            }
            set_condition(
                &mut status.conditions,
                ConditionType::Accepted,
                false,
                Reason::Invalid,
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
    let mut v = status_json(&status)?;
    v["usedBy"] = json!(status.used_by);
    apply_status(&ctx, &*sp, v).await?;
    ctx.metrics
        .duration
        .get_or_create(&label)
        .observe(started.elapsed().as_secs_f64());
    ctx.succeeded(&format!("policy/{}", key(&*sp)));
    Ok(ctx.resync())
}
