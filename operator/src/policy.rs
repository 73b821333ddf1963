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

/// The policy a pipeline's collectors run.
#[derive(Clone, Debug, PartialEq)]
pub struct Merged {
    /// The merged policy.
    pub policy: PolicyModel,
    /// The SamplingPolicies it came from, in evaluation order.
    pub sources: Vec<String>,
    /// Its hash, as the collector reports it at `GET /admin/sampling`.
    pub hash: String,
}

/// Merges `policies` (any order) with the pipeline's default action.
pub fn merge(policies: Vec<SamplingPolicy>, default: &Action) -> Result<Merged, InvalidPolicy> {
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
    let compiled = merged.compile().map_err(|errors| InvalidPolicy {
        name: "(pipeline spec.sampling.defaultAction)".into(),
        errors,
    })?;
    Ok(Merged {
        hash: compiled.hash().to_string(),
        policy: merged,
        sources,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::SamplingPolicySpec;
    use datatracing_core::policy::Verdict;

    fn sp(name: &str, priority: i32, rules: serde_json::Value) -> SamplingPolicy {
        let spec: SamplingPolicySpec =
            serde_json::from_value(serde_json::json!({"priority": priority, "rules": rules}))
                .unwrap();
        SamplingPolicy::new(name, spec)
    }

    fn keep() -> Action {
        Action {
            decision: Verdict::Keep,
            sample_rate: None,
            rate_limit: None,
            keep_linked: false,
        }
    }

    #[test]
    fn policies_merge_by_priority_then_name_with_prefixed_rules() {
        let r = |n: &str| serde_json::json!([{"name": n, "when": {"root_present": true}, "action": {"decision": "keep"}}]);
        let Merged {
            policy: m,
            sources,
            hash,
        } = merge(
            vec![sp("b", 0, r("x")), sp("c", 5, r("x")), sp("a", 0, r("x"))],
            &keep(),
        )
        .unwrap();
        assert_eq!(sources, ["c", "a", "b"]);
        let names: Vec<&str> = m.rules.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["c/x", "a/x", "b/x"]);
        assert_eq!(hash, m.compile().unwrap().hash());
    }

    #[test]
    fn an_invalid_policy_is_named_with_its_spec_path() {
        let bad = sp(
            "bad",
            0,
            serde_json::json!([{"name": "r", "when": {"service": {"regex": "("}}, "action": {"decision": "keep"}}]),
        );
        let e = merge(vec![bad], &keep()).unwrap_err();
        assert_eq!(e.name, "bad");
        assert_eq!(e.errors[0].path, "spec.rules[0].when.service.regex");
        assert!(
            e.to_string()
                .starts_with("SamplingPolicy bad: spec.rules[0]")
        );
    }

    #[test]
    fn an_invalid_default_action_is_blamed_on_the_pipeline() {
        let bad_default = Action {
            sample_rate: Some(0),
            ..keep()
        };
        let e = merge(Vec::new(), &bad_default).unwrap_err();
        assert!(e.name.contains("defaultAction"), "{e}");
    }
}
