//! Policy validation and compilation, with errors addressed by path
//! (`rules[2].when.any[0].operation.regex: invalid regex ...`).

use std::collections::HashSet;
use std::fmt;

use regex::{Regex, RegexBuilder};

use super::eval::{AttrTest, CompiledPolicy, CompiledRule, Matcher, Node};
use super::{
    Action, AttributeCondition, Condition, DurationOf, SamplingPolicy, StringMatch, Verdict,
};

/// Deepest nesting of `all` / `any` / `not` accepted; bounds recursion on hostile input.
pub const MAX_DEPTH: usize = 32;
/// Compiled size limit of one regular expression, in bytes.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// One problem in a policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyError {
    /// Where, e.g. `rules[2].when.any[0].regex`.
    pub path: String,
    /// What.
    pub message: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

struct Ctx {
    errors: Vec<PolicyError>,
}

impl Ctx {
    fn err(&mut self, path: &str, message: impl Into<String>) {
        self.errors.push(PolicyError {
            path: path.to_string(),
            message: message.into(),
        });
    }

    fn regex(&mut self, path: &str, pattern: &str) -> Option<Regex> {
        match RegexBuilder::new(pattern)
            .size_limit(REGEX_SIZE_LIMIT)
            .build()
        {
            Ok(r) => Some(r),
            Err(e) => {
                self.err(
                    path,
                    format!(
                        "invalid regex: {}",
                        e.to_string().lines().last().unwrap_or_default()
                    ),
                );
                None
            }
        }
    }
}

fn glob_to_regex(glob: &str) -> String {
    let mut re = String::from("^");
    for c in glob.chars() {
        match c {
            '*' => re.push_str(".*"),
            '?' => re.push('.'),
            other => re.push_str(&regex::escape(&other.to_string())),
        }
    }
    re.push('$');
    re
}

fn matcher(ctx: &mut Ctx, path: &str, m: &StringMatch) -> Option<Matcher> {
    let set = chosen(&[
        ("exact", m.exact.is_some()),
        ("prefix", m.prefix.is_some()),
        ("glob", m.glob.is_some()),
        ("regex", m.regex.is_some()),
    ]);
    if set.len() != 1 {
        ctx.err(
            path,
            format!(
                "set exactly one of exact, prefix, glob, regex (found {})",
                describe(&set)
            ),
        );
        return None;
    }
    if let Some(e) = &m.exact {
        return Some(Matcher::Exact(e.clone()));
    }
    if let Some(p) = &m.prefix {
        return Some(Matcher::Prefix(p.clone()));
    }
    if let Some(g) = &m.glob {
        return ctx
            .regex(&format!("{path}.glob"), &glob_to_regex(g))
            .map(Matcher::Regex);
    }
    let r = m.regex.as_deref().unwrap_or_default();
    ctx.regex(&format!("{path}.regex"), r).map(Matcher::Regex)
}

/// The names of the fields that are set, from (name, is set) pairs.
fn chosen(fields: &[(&'static str, bool)]) -> Vec<&'static str> {
    fields
        .iter()
        .filter(|(_, set)| *set)
        .map(|(name, _)| *name)
        .collect()
}

fn describe(set: &[&str]) -> String {
    if set.is_empty() {
        "none".into()
    } else {
        format!("{}: {}", set.len(), set.join(", "))
    }
}

fn attribute(ctx: &mut Ctx, path: &str, a: &AttributeCondition) -> Option<Node> {
    if a.key.is_empty() {
        ctx.err(&format!("{path}.key"), "must not be empty");
    }
    let set = chosen(&[
        ("exists", a.exists.is_some()),
        ("equals", a.equals.is_some()),
        ("not_equals", a.not_equals.is_some()),
        ("in", a.in_set.is_some()),
        ("regex", a.regex.is_some()),
        ("number", a.number.is_some()),
        ("contains", a.contains.is_some()),
    ]);
    if set.len() != 1 {
        ctx.err(
            path,
            format!(
                "set exactly one of exists, equals, not_equals, in, regex, number, contains (found {})",
                describe(&set)
            ),
        );
        return None;
    }
    let test = if let Some(e) = a.exists {
        AttrTest::Exists(e)
    } else if let Some(v) = &a.equals {
        AttrTest::Equals(v.clone())
    } else if let Some(v) = &a.not_equals {
        AttrTest::NotEquals(v.clone())
    } else if let Some(v) = &a.in_set {
        if v.is_empty() {
            ctx.err(&format!("{path}.in"), "must not be empty");
        }
        AttrTest::In(v.clone())
    } else if let Some(r) = &a.regex {
        AttrTest::Regex(ctx.regex(&format!("{path}.regex"), r)?)
    } else if let Some(v) = &a.contains {
        AttrTest::Contains(v.clone())
    } else {
        let n = a.number.clone().unwrap_or_default();
        let bounds = [n.gt, n.gte, n.lt, n.lte];
        if bounds.iter().all(Option::is_none) {
            ctx.err(
                &format!("{path}.number"),
                "set at least one of gt, gte, lt, lte",
            );
        }
        if bounds.iter().flatten().any(|b| !b.is_finite()) {
            ctx.err(&format!("{path}.number"), "bounds must be finite numbers");
        }
        AttrTest::Number(n)
    };
    Some(Node::Attr {
        key: a.key.clone(),
        test,
    })
}

fn condition(ctx: &mut Ctx, path: &str, c: &Condition, depth: usize) -> Option<Node> {
    if depth > MAX_DEPTH {
        ctx.err(
            path,
            format!("conditions nest deeper than {MAX_DEPTH} levels"),
        );
        return None;
    }
    let set = chosen(&[
        ("all", c.all.is_some()),
        ("any", c.any.is_some()),
        ("not", c.not.is_some()),
        ("duration", c.duration.is_some()),
        ("status", c.status.is_some()),
        ("operation", c.operation.is_some()),
        ("service", c.service.is_some()),
        ("kind", c.kind.is_some()),
        ("attribute", c.attribute.is_some()),
        ("span_count", c.span_count.is_some()),
        ("root_present", c.root_present.is_some()),
        ("linked_to_kept", c.linked_to_kept.is_some()),
        ("probability", c.probability.is_some()),
    ]);
    if set.len() != 1 {
        ctx.err(
            path,
            format!(
                "set exactly one condition per node (found {})",
                describe(&set)
            ),
        );
        return None;
    }
    let list = |ctx: &mut Ctx, name: &str, items: &[Condition]| -> Option<Vec<Node>> {
        if items.is_empty() {
            ctx.err(
                &format!("{path}.{name}"),
                "must list at least one condition",
            );
            return None;
        }
        let nodes: Vec<Option<Node>> = items
            .iter()
            .enumerate()
            .map(|(i, c)| condition(ctx, &format!("{path}.{name}[{i}]"), c, depth + 1))
            .collect();
        nodes.into_iter().collect()
    };
    if let Some(items) = &c.all {
        return list(ctx, "all", items).map(Node::All);
    }
    if let Some(items) = &c.any {
        return list(ctx, "any", items).map(Node::Any);
    }
    if let Some(inner) = &c.not {
        return condition(ctx, &format!("{path}.not"), inner, depth + 1)
            .map(|n| Node::Not(Box::new(n)));
    }
    if let Some(d) = &c.duration {
        let p = format!("{path}.duration");
        let over = d
            .over
            .map(|v| i64::try_from(v.get().as_nanos()).unwrap_or(i64::MAX));
        let under = d
            .under
            .map(|v| i64::try_from(v.get().as_nanos()).unwrap_or(i64::MAX));
        if over.is_none() && under.is_none() {
            ctx.err(&p, "set over, under, or both");
        }
        if let (Some(o), Some(u)) = (over, under)
            && o >= u
        {
            ctx.err(&p, "over must be shorter than under, or nothing can match");
        }
        return Some(match d.of {
            DurationOf::Trace => Node::TraceDuration { over, under },
            DurationOf::Span => Node::SpanDuration { over, under },
        });
    }
    if let Some(s) = &c.status {
        if s.is_empty() {
            ctx.err(&format!("{path}.status"), "must list at least one status");
        }
        return Some(Node::Status(s.clone()));
    }
    if let Some(m) = &c.operation {
        return matcher(ctx, &format!("{path}.operation"), m).map(Node::Operation);
    }
    if let Some(m) = &c.service {
        return matcher(ctx, &format!("{path}.service"), m).map(Node::Service);
    }
    if let Some(k) = &c.kind {
        if k.is_empty() {
            ctx.err(&format!("{path}.kind"), "must list at least one kind");
        }
        return Some(Node::Kind(k.clone()));
    }
    if let Some(a) = &c.attribute {
        return attribute(ctx, &format!("{path}.attribute"), a);
    }
    if let Some(r) = &c.span_count {
        if r.min.is_none() && r.max.is_none() {
            ctx.err(&format!("{path}.span_count"), "set min, max, or both");
        }
        if let (Some(a), Some(b)) = (r.min, r.max)
            && a > b
        {
            ctx.err(&format!("{path}.span_count"), "min must not exceed max");
        }
        return Some(Node::SpanCount {
            min: r.min,
            max: r.max,
        });
    }
    if let Some(b) = c.root_present {
        return Some(Node::RootPresent(b));
    }
    if let Some(b) = c.linked_to_kept {
        return Some(Node::LinkedToKept(b));
    }
    let p = c.probability.unwrap_or_default();
    if !(0.0..=1.0).contains(&p) {
        ctx.err(&format!("{path}.probability"), "must be between 0 and 1");
    }
    Some(Node::Probability(p))
}

fn action(ctx: &mut Ctx, path: &str, a: &Action) {
    let keep_only = [
        ("sample_rate", a.sample_rate.is_some()),
        ("rate_limit", a.rate_limit.is_some()),
        ("keep_linked", a.keep_linked),
    ];
    if a.decision == Verdict::Drop {
        for (name, set) in keep_only {
            if set {
                ctx.err(&format!("{path}.{name}"), "only applies to decision: keep");
            }
        }
    }
    if a.sample_rate == Some(0) {
        ctx.err(
            &format!("{path}.sample_rate"),
            "must be at least 1 (keep 1 in N)",
        );
    }
    if let Some(r) = &a.rate_limit {
        if !(r.per_second.is_finite() && r.per_second > 0.0) {
            ctx.err(
                &format!("{path}.rate_limit.per_second"),
                "must be a positive number",
            );
        }
        if r.burst.is_some_and(|b| !(b.is_finite() && b >= 1.0)) {
            ctx.err(&format!("{path}.rate_limit.burst"), "must be at least 1");
        }
    }
}

impl SamplingPolicy {
    /// Validates the whole policy and compiles it; returns every problem found.
    pub fn compile(&self) -> Result<CompiledPolicy, Vec<PolicyError>> {
        let mut ctx = Ctx { errors: Vec::new() };
        let mut names = HashSet::new();
        let mut rules = Vec::with_capacity(self.rules.len());
        for (i, r) in self.rules.iter().enumerate() {
            let p = format!("rules[{i}]");
            if r.name.trim().is_empty() {
                ctx.err(&format!("{p}.name"), "must not be empty");
            } else if r.name == "default" {
                ctx.err(
                    &format!("{p}.name"),
                    "\"default\" is reserved for the default action",
                );
            } else if !names.insert(r.name.as_str()) {
                ctx.err(
                    &format!("{p}.name"),
                    format!("duplicate rule name {:?}", r.name),
                );
            }
            action(&mut ctx, &format!("{p}.action"), &r.action);
            if let Some(node) = condition(&mut ctx, &format!("{p}.when"), &r.when, 0) {
                rules.push(CompiledRule::new(
                    r.name.clone(),
                    r.scope,
                    node,
                    r.action.clone(),
                ));
            }
        }
        action(&mut ctx, "default", &self.default);
        if !ctx.errors.is_empty() {
            return Err(ctx.errors);
        }
        Ok(CompiledPolicy::new(rules, self.default.clone(), self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml_like_json: &str) -> SamplingPolicy {
        serde_json::from_str(yaml_like_json).unwrap()
    }

    #[test]
    fn errors_are_addressed_by_path() {
        let p = parse(
            r#"{"rules":[
                {"name":"a","when":{"status":["ERROR"]},"action":{"decision":"keep"}},
                {"name":"a","when":{"any":[{"operation":{"regex":"(unclosed"}}]},"action":{"decision":"drop","sample_rate":3}},
                {"name":"c","when":{"service":{"exact":"x"},"kind":["JOIN"]},"action":{"decision":"keep","sample_rate":0}},
                {"name":"d","when":{"all":[]},"action":{"decision":"keep"}},
                {"name":"e","when":{"attribute":{"key":"k","equals":"v","regex":"x"}},"action":{"decision":"keep"}},
                {"name":"f","when":{"duration":{"over":"2s","under":"1s"}},"action":{"decision":"keep"}},
                {"name":"g","when":{"probability":1.5},"action":{"decision":"keep","rate_limit":{"per_second":0}}}
            ],"default":{"decision":"drop","keep_linked":true}}"#,
        );
        let errs: Vec<String> = p
            .compile()
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect();
        let expect = [
            "rules[1].name: duplicate rule name \"a\"",
            "rules[1].action.sample_rate: only applies to decision: keep",
            "rules[1].when.any[0].operation.regex: invalid regex",
            "rules[2].action.sample_rate: must be at least 1",
            "rules[2].when: set exactly one condition per node (found 2: service, kind)",
            "rules[3].when.all: must list at least one condition",
            "rules[4].when.attribute: set exactly one of exists, equals, not_equals, in, regex, number, contains (found 2: equals, regex)",
            "rules[5].when.duration: over must be shorter than under",
            "rules[6].action.rate_limit.per_second: must be a positive number",
            "rules[6].when.probability: must be between 0 and 1",
            "default.keep_linked: only applies to decision: keep",
        ];
        for e in expect {
            assert!(
                errs.iter().any(|x| x.starts_with(e)),
                "missing {e:?} in {errs:#?}"
            );
        }
        assert_eq!(errs.len(), expect.len(), "{errs:#?}");
    }

    #[test]
    fn depth_is_bounded() {
        let mut c = Condition {
            root_present: Some(true),
            ..Condition::default()
        };
        for _ in 0..40 {
            c = Condition {
                not: Some(Box::new(c)),
                ..Condition::default()
            };
        }
        let p = SamplingPolicy {
            rules: vec![super::super::Rule {
                name: "deep".into(),
                scope: Default::default(),
                when: c,
                action: Action {
                    decision: Verdict::Keep,
                    sample_rate: None,
                    rate_limit: None,
                    keep_linked: false,
                },
            }],
            default: Action {
                decision: Verdict::Drop,
                sample_rate: None,
                rate_limit: None,
                keep_linked: false,
            },
        };
        let errs = p.compile().unwrap_err();
        assert!(errs[0].message.contains("deeper than 32"), "{errs:?}");
    }

    #[test]
    fn globs_are_anchored_and_escaped() {
        let r = Regex::new(&glob_to_regex("load.*-v?")).unwrap();
        assert!(r.is_match("load.orders-v2"));
        assert!(!r.is_match("loadXorders-v2"), "the dot is literal");
        assert!(!r.is_match("preload.x-v1"), "anchored");
    }
}
