//! Which SamplingPolicies a TracingPipeline selects (through `spec.sampling.selector`).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::ResourceExt;

use crate::crd::{SamplingPolicy, TracingPipeline};

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
pub(crate) fn selects(p: &TracingPipeline, sp: &SamplingPolicy) -> bool {
    p.spec
        .sampling
        .selector
        .as_ref()
        .is_some_and(|s| selector_matches(s, sp.labels()))
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
}
