//! Which SamplingPolicies a TracingPipeline selects (through `spec.sampling.selector`),
//! with kube's [`Selector`] so matching follows the API server's label-selector rules.

use kube::ResourceExt;
use kube::core::{Selector, SelectorExt};

use crate::crd::{SamplingPolicy, TracingPipeline};
use crate::error::{Error, Result};

/// The pipeline's policy selector. `Ok(None)`: no selector, so no tail sampling. A
/// selector the API server accepted but that cannot be evaluated (an unknown operator, `In`
/// without values) is an invalid configuration.
pub(crate) fn policy_selector(p: &TracingPipeline) -> Result<Option<Selector>> {
    p.spec
        .sampling
        .selector
        .clone()
        .map(|s| {
            Selector::try_from(s)
                .map_err(|e| Error::InvalidConfiguration(format!("spec.sampling.selector: {e}")))
        })
        .transpose()
}

/// Whether pipeline `p` applies SamplingPolicy `sp` (same namespace assumed). A pipeline
/// with an invalid selector selects nothing (it reports why in its own status).
pub(crate) fn selects(p: &TracingPipeline, sp: &SamplingPolicy) -> bool {
    policy_selector(p).is_ok_and(|s| s.is_some_and(|s| s.matches(sp.labels())))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expr(key: &str, op: &str, values: Option<&[&str]>) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: values.map(|vs| vs.iter().map(|s| s.to_string()).collect()),
        }
    }

    fn sel(ml: &[(&str, &str)], exprs: Vec<LabelSelectorRequirement>) -> LabelSelector {
        LabelSelector {
            match_labels: (!ml.is_empty()).then(|| labels(ml)),
            match_expressions: (!exprs.is_empty()).then_some(exprs),
        }
    }

    /// `Ok(matches)`, or `Err` when the selector cannot be evaluated.
    fn matches(s: LabelSelector, on: &BTreeMap<String, String>) -> Result<bool, String> {
        Selector::try_from(s)
            .map(|s| s.matches(on))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn selectors_match_like_the_api_server() {
        let data = labels(&[("team", "data")]);
        let none = labels(&[]);
        let cases: Vec<(&str, LabelSelector, &BTreeMap<String, String>, bool)> = vec![
            ("empty selects all", LabelSelector::default(), &data, true),
            (
                "empty selects the unlabelled",
                LabelSelector::default(),
                &none,
                true,
            ),
            (
                "matchLabels equal",
                sel(&[("team", "data")], vec![]),
                &data,
                true,
            ),
            (
                "matchLabels differ",
                sel(&[("team", "web")], vec![]),
                &data,
                false,
            ),
            (
                "matchLabels absent",
                sel(&[("team", "data")], vec![]),
                &none,
                false,
            ),
            (
                "In",
                sel(&[], vec![expr("team", "In", Some(&["data", "x"]))]),
                &data,
                true,
            ),
            (
                "In, other value",
                sel(&[], vec![expr("team", "In", Some(&["web"]))]),
                &data,
                false,
            ),
            (
                "In, label absent",
                sel(&[], vec![expr("team", "In", Some(&["data"]))]),
                &none,
                false,
            ),
            (
                "NotIn",
                sel(&[], vec![expr("team", "NotIn", Some(&["data"]))]),
                &data,
                false,
            ),
            (
                "NotIn, other value",
                sel(&[], vec![expr("team", "NotIn", Some(&["web"]))]),
                &data,
                true,
            ),
            (
                "NotIn, label absent",
                sel(&[], vec![expr("team", "NotIn", Some(&["data"]))]),
                &none,
                true,
            ),
            (
                "Exists",
                sel(&[], vec![expr("team", "Exists", None)]),
                &data,
                true,
            ),
            (
                "Exists, absent",
                sel(&[], vec![expr("tier", "Exists", Some(&[]))]),
                &data,
                false,
            ),
            (
                "DoesNotExist",
                sel(&[], vec![expr("tier", "DoesNotExist", Some(&[]))]),
                &data,
                true,
            ),
            (
                "DoesNotExist, present",
                sel(&[], vec![expr("team", "DoesNotExist", None)]),
                &data,
                false,
            ),
            (
                "labels and expressions are ANDed",
                sel(&[("team", "data")], vec![expr("tier", "Exists", None)]),
                &data,
                false,
            ),
            (
                "expressions are ANDed",
                sel(
                    &[],
                    vec![
                        expr("team", "In", Some(&["data"])),
                        expr("tier", "DoesNotExist", None),
                    ],
                ),
                &data,
                true,
            ),
        ];
        for (what, s, on, want) in cases {
            assert_eq!(matches(s, on), Ok(want), "{what}");
        }
    }

    #[test]
    fn selectors_that_cannot_be_evaluated_are_errors() {
        let data = labels(&[("team", "data")]);
        for s in [
            sel(&[], vec![expr("team", "Bogus", Some(&[]))]),
            sel(&[], vec![expr("team", "In", None)]),
        ] {
            assert!(matches(s, &data).is_err());
        }
    }

    #[test]
    fn a_pipeline_with_an_invalid_selector_selects_nothing_and_says_why() {
        let mut p = TracingPipeline::new(
            "orders",
            serde_json::from_value(serde_json::json!({
                "storage": {"url": "http://127.0.0.1:1", "database": "orders"}
            }))
            .unwrap(),
        );
        let sp = SamplingPolicy::new(
            "errors",
            serde_json::from_value(serde_json::json!({"rules": []})).unwrap(),
        );
        assert!(matches!(policy_selector(&p), Ok(None)), "no selector");
        assert!(!selects(&p, &sp), "no selector selects nothing");
        p.spec.sampling.selector = Some(LabelSelector::default());
        assert!(selects(&p, &sp), "an empty selector selects every policy");
        p.spec.sampling.selector = Some(sel(&[], vec![expr("team", "Bogus", None)]));
        assert!(!selects(&p, &sp));
        let err = policy_selector(&p).unwrap_err().to_string();
        assert!(err.contains("spec.sampling.selector"), "{err}");
    }
}
