//! Turning the SamplingPolicies a pipeline selects into the one policy its collectors run.
//!
//! Policies are ordered by descending `priority`, then by name, and their rules concatenated
//! in that order under the names `<policy>/<rule>` (which is what kept spans are stamped
//! with); the pipeline's default action closes the list. Each policy is validated on its
//! own first so an error names the policy and the path inside its spec.

use datatracing_core::policy::{Action, PolicyError, Rule, SamplingPolicy as PolicyModel};
use kube::ResourceExt;

use crate::crd::SamplingPolicy;

/// Problems found in one SamplingPolicy, addressed by path in its spec.
pub fn validate(policy: &SamplingPolicy) -> Result<(), Vec<PolicyError>> {
    let model = PolicyModel {
        rules: policy.spec.rules.clone(),
        default: Action {
            decision: datatracing_core::policy::Verdict::Keep,
            sample_rate: None,
            rate_limit: None,
            keep_linked: false,
        },
    };
    model.compile().map(|_| ()).map_err(|errors| {
        errors
            .into_iter()
            .map(|e| PolicyError {
                path: format!("spec.{}", e.path),
                message: e.message,
            })
            .collect()
    })
}

/// The policies in evaluation order.
pub fn ordered(mut policies: Vec<SamplingPolicy>) -> Vec<SamplingPolicy> {
    policies.sort_by(|a, b| {
        b.spec
            .priority
            .cmp(&a.spec.priority)
            .then_with(|| a.name_any().cmp(&b.name_any()))
    });
    policies
}

/// A merge that failed because of one policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidPolicy {
    /// The SamplingPolicy's name.
    pub name: String,
    /// Its problems.
    pub errors: Vec<PolicyError>,
}

impl std::fmt::Display for InvalidPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list: Vec<String> = self.errors.iter().map(ToString::to_string).collect();
        write!(f, "SamplingPolicy {}: {}", self.name, list.join("; "))
    }
}

/// Merges `policies` (any order) with the pipeline's default action. Returns the policy and
/// the names of its sources in order.
pub fn merge(
    policies: Vec<SamplingPolicy>,
    default: &Action,
) -> Result<(PolicyModel, Vec<String>), InvalidPolicy> {
    let mut rules = Vec::new();
    let mut sources = Vec::new();
    for p in ordered(policies) {
        let name = p.name_any();
        validate(&p).map_err(|errors| InvalidPolicy {
            name: name.clone(),
            errors,
        })?;
        rules.extend(p.spec.rules.iter().map(|r| Rule {
            name: format!("{name}/{}", r.name),
            ..r.clone()
        }));
        sources.push(name);
    }
    let merged = PolicyModel {
        rules,
        default: default.clone(),
    };
    // The parts were valid; the default action is the only new piece.
    merged.compile().map_err(|errors| InvalidPolicy {
        name: "(pipeline spec.sampling.defaultAction)".into(),
        errors,
    })?;
    Ok((merged, sources))
}

/// The hash the collector reports for `policy` (`GET /admin/sampling`).
pub fn policy_hash(policy: &PolicyModel) -> Option<String> {
    policy.compile().ok().map(|c| c.hash().to_string())
}
