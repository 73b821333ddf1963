//! Policy evaluation over one buffered trace.

use std::sync::Mutex;

use regex::Regex;

use super::{Action, NumberRange, RateUnit, SamplingPolicy, Scope, Verdict};
use crate::ids::TraceId;
use crate::span::{AttributeValue, Span, SpanKind, StatusCode};

#[derive(Debug)]
pub(crate) enum Matcher {
    Exact(String),
    Prefix(String),
    Regex(Regex),
}

impl Matcher {
    fn matches(&self, s: &str) -> bool {
        match self {
            Matcher::Exact(e) => s == e,
            Matcher::Prefix(p) => s.starts_with(p.as_str()),
            Matcher::Regex(r) => r.is_match(s),
        }
    }
}

#[derive(Debug)]
pub(crate) enum AttrTest {
    Exists(bool),
    Equals(String),
    NotEquals(String),
    In(Vec<String>),
    Regex(Regex),
    Number(NumberRange),
    Contains(String),
}

#[derive(Debug)]
pub(crate) enum Node {
    All(Vec<Node>),
    Any(Vec<Node>),
    Not(Box<Node>),
    TraceDuration {
        over: Option<i64>,
        under: Option<i64>,
    },
    SpanDuration {
        over: Option<i64>,
        under: Option<i64>,
    },
    Status(Vec<StatusCode>),
    Operation(Matcher),
    Service(Matcher),
    Kind(Vec<SpanKind>),
    Attr {
        key: String,
        test: AttrTest,
    },
    SpanCount {
        min: Option<u64>,
        max: Option<u64>,
    },
    RootPresent(bool),
    LinkedToKept(bool),
    Probability(f64),
}

/// The rule name stamped on traces kept because a linked trace was kept with `keep_linked`.
pub const LINEAGE_RULE: &str = "lineage";

/// What evaluation knows about a trace besides its spans.
#[derive(Debug, Clone, Copy)]
pub struct TraceFacts<'a> {
    /// The buffered spans of the trace.
    pub spans: &'a [Span],
    /// Whether a trace this one links to (or that links to it) was kept with `keep_linked`.
    pub linked_to_kept: bool,
}

/// The outcome for one trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Keep the trace.
    pub keep: bool,
    /// The rule that decided (`default` when none matched).
    pub rule: String,
    /// The sample rate applied (1 when every matching trace is kept).
    pub sample_rate: u32,
    /// Whether linked traces should be kept too.
    pub keep_linked: bool,
    /// Whether a rate limit turned a keep into a drop.
    pub rate_limited: bool,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last_ns: i64,
}

#[derive(Debug)]
pub(crate) struct CompiledRule {
    name: String,
    scope: Scope,
    node: Node,
    action: Action,
    bucket: Mutex<Option<Bucket>>,
}

impl CompiledRule {
    pub(crate) fn new(name: String, scope: Scope, node: Node, action: Action) -> Self {
        Self {
            name,
            scope,
            node,
            action,
            bucket: Mutex::new(None),
        }
    }
}

/// A validated policy ready to evaluate traces. Rate limit buckets live here, so share one
/// instance per collector.
#[derive(Debug)]
pub struct CompiledPolicy {
    rules: Vec<CompiledRule>,
    default: Action,
    default_bucket: Mutex<Option<Bucket>>,
    hash: String,
    source: SamplingPolicy,
}

/// A stable 64-bit hash of a trace id, for decisions every collector must agree on.
pub fn trace_hash(id: &TraceId, salt: u64) -> u64 {
    // splitmix64 over both halves: well mixed even for ids that are not random.
    let b = id.as_bytes();
    let hi = u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
    let lo = u64::from_be_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]);
    let mix = |mut z: u64| {
        z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    mix(mix(hi ^ salt) ^ lo)
}

fn in_range(v: i64, over: Option<i64>, under: Option<i64>) -> bool {
    over.is_none_or(|o| v > o) && under.is_none_or(|u| v < u)
}

fn number(v: &AttributeValue) -> Option<f64> {
    match v {
        AttributeValue::Int(i) => Some(*i as f64),
        AttributeValue::Float(f) => Some(*f),
        _ => None,
    }
}

fn attr_matches(span: &Span, key: &str, test: &AttrTest) -> bool {
    let v = span.attributes.get(key);
    match test {
        AttrTest::Exists(want) => v.is_some() == *want,
        AttrTest::Equals(s) => v.is_some_and(|v| v.to_search_text() == *s),
        AttrTest::NotEquals(s) => v.is_some_and(|v| v.to_search_text() != *s),
        AttrTest::In(set) => v.is_some_and(|v| set.contains(&v.to_search_text())),
        AttrTest::Regex(r) => v.is_some_and(|v| r.is_match(&v.to_search_text())),
        AttrTest::Contains(s) => v.is_some_and(|v| v.contains_text(s)),
        AttrTest::Number(n) => v.and_then(number).is_some_and(|x| {
            n.gt.is_none_or(|b| x > b)
                && n.gte.is_none_or(|b| x >= b)
                && n.lt.is_none_or(|b| x < b)
                && n.lte.is_none_or(|b| x <= b)
        }),
    }
}

/// `Some(result)` for conditions about one span, `None` for conditions about the trace.
fn span_leaf(node: &Node, s: &Span) -> Option<bool> {
    Some(match node {
        Node::SpanDuration { over, under } => in_range(s.duration_nanos(), *over, *under),
        Node::Status(set) => set.contains(&s.status.code),
        Node::Operation(m) => m.matches(&s.operation),
        Node::Service(m) => m.matches(&s.service),
        Node::Kind(set) => set.contains(&s.kind),
        Node::Attr { key, test } => attr_matches(s, key, test),
        _ => return None,
    })
}

fn trace_leaf(node: &Node, f: &TraceFacts<'_>) -> bool {
    match node {
        Node::TraceDuration { over, under } => {
            let start = f.spans.iter().map(|s| s.start_time).min();
            let end = f.spans.iter().map(|s| s.end_time).max();
            match (start, end) {
                (Some(s), Some(e)) => in_range(e.saturating_nanos_since(s), *over, *under),
                _ => false,
            }
        }
        Node::SpanCount { min, max } => {
            let n = f.spans.len() as u64;
            min.is_none_or(|m| n >= m) && max.is_none_or(|m| n <= m)
        }
        Node::RootPresent(want) => f.spans.iter().any(|s| s.parent_id.is_none()) == *want,
        Node::LinkedToKept(want) => f.linked_to_kept == *want,
        Node::Probability(p) => match f.spans.first() {
            Some(s) => (trace_hash(&s.trace_id, 0x5eed_0001) as f64 / u64::MAX as f64) < *p,
            None => false,
        },
        _ => false,
    }
}

fn eval_trace(node: &Node, f: &TraceFacts<'_>) -> bool {
    match node {
        Node::All(v) => v.iter().all(|n| eval_trace(n, f)),
        Node::Any(v) => v.iter().any(|n| eval_trace(n, f)),
        Node::Not(n) => !eval_trace(n, f),
        leaf => match f.spans.first().and_then(|s| span_leaf(leaf, s)) {
            // A condition about spans holds for the trace when some span satisfies it.
            Some(_) => f.spans.iter().any(|s| span_leaf(leaf, s) == Some(true)),
            None => trace_leaf(leaf, f),
        },
    }
}

fn eval_span(node: &Node, s: &Span, f: &TraceFacts<'_>) -> bool {
    match node {
        Node::All(v) => v.iter().all(|n| eval_span(n, s, f)),
        Node::Any(v) => v.iter().any(|n| eval_span(n, s, f)),
        Node::Not(n) => !eval_span(n, s, f),
        leaf => span_leaf(leaf, s).unwrap_or_else(|| trace_leaf(leaf, f)),
    }
}

fn take_token(bucket: &Mutex<Option<Bucket>>, action: &Action, cost: f64, now_ns: i64) -> bool {
    let Some(limit) = &action.rate_limit else {
        return true;
    };
    let Ok(mut guard) = bucket.lock() else {
        return true;
    };
    let burst = limit.burst.unwrap_or(limit.per_second).max(1.0);
    let b = guard.get_or_insert(Bucket {
        tokens: burst,
        last_ns: now_ns,
    });
    let elapsed = (now_ns - b.last_ns).max(0) as f64 / 1e9;
    b.tokens = (b.tokens + elapsed * limit.per_second).min(burst);
    b.last_ns = now_ns.max(b.last_ns);
    if b.tokens >= cost {
        b.tokens -= cost;
        true
    } else {
        false
    }
}

impl CompiledPolicy {
    pub(crate) fn new(rules: Vec<CompiledRule>, default: Action, source: &SamplingPolicy) -> Self {
        let canonical = serde_json::to_vec(source).unwrap_or_default();
        // FNV-1a: stable across builds and platforms, enough to tell policies apart.
        let hash = canonical.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
        });
        Self {
            rules,
            default,
            default_bucket: Mutex::new(None),
            hash: format!("{hash:016x}"),
            source: source.clone(),
        }
    }

    /// A short stable hash of the policy, for status endpoints and stamping.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// The policy this was compiled from.
    pub fn source(&self) -> &SamplingPolicy {
        &self.source
    }

    /// Decides one trace. `now_ns` drives rate limits, so tests control time.
    pub fn evaluate(&self, f: &TraceFacts<'_>, now_ns: i64) -> Decision {
        let matched = self.rules.iter().find(|r| match r.scope {
            Scope::Trace => eval_trace(&r.node, f),
            Scope::Span => f.spans.iter().any(|s| eval_span(&r.node, s, f)),
        });
        let (name, action, bucket) = match matched {
            Some(r) => (r.name.as_str(), &r.action, &r.bucket),
            None => ("default", &self.default, &self.default_bucket),
        };
        let rate = action.sample_rate.unwrap_or(1).max(1);
        let mut keep = action.decision == Verdict::Keep;
        if keep && rate > 1 {
            keep = match f.spans.first() {
                Some(s) => trace_hash(&s.trace_id, 0x5eed_0002).is_multiple_of(u64::from(rate)),
                None => false,
            };
        }
        let mut rate_limited = false;
        if keep {
            let cost = match action.rate_limit.as_ref().map(|l| l.unit) {
                Some(RateUnit::Spans) => f.spans.len() as f64,
                _ => 1.0,
            };
            if !take_token(bucket, action, cost, now_ns) {
                keep = false;
                rate_limited = true;
            }
        }
        if !keep && f.linked_to_kept {
            // A kept trace asked for its lineage (`keep_linked`): that outranks this trace's
            // own drop, and the lineage continues from here.
            return Decision {
                keep: true,
                rule: LINEAGE_RULE.to_string(),
                sample_rate: 1,
                keep_linked: true,
                rate_limited: false,
            };
        }
        Decision {
            keep,
            rule: name.to_string(),
            sample_rate: rate,
            keep_linked: keep && action.keep_linked,
            rate_limited,
        }
    }
}
