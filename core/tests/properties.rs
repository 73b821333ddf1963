//! Property tests: native JSON round-trips losslessly, and DAG reconstruction terminates,
//! keeps every distinct span, and does not depend on input order, whatever the parent/link
//! structure (including cycles, orphans and duplicates).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use datatracing_core::{
    AttributeValue, Attributes, Event, Limits, Link, LinkType, Span, SpanId, SpanKind, Status,
    StatusCode, Timestamp, TraceDag, TraceId,
};
use proptest::prelude::*;

fn attr_value() -> impl Strategy<Value = AttributeValue> {
    prop_oneof![
        ".{0,12}".prop_map(AttributeValue::String),
        any::<i64>().prop_map(AttributeValue::Int),
        (-1e12f64..1e12).prop_map(AttributeValue::Float),
        any::<bool>().prop_map(AttributeValue::Bool),
        prop::collection::vec("[a-z]{0,5}", 0..4).prop_map(AttributeValue::StringArray),
        prop::collection::vec(any::<i64>(), 1..4).prop_map(AttributeValue::IntArray),
        prop::collection::vec(any::<bool>(), 1..4).prop_map(AttributeValue::BoolArray),
    ]
}

fn attrs() -> impl Strategy<Value = Attributes> {
    prop::collection::btree_map("[a-z.]{1,8}", attr_value(), 0..5)
}

fn small_id(n: u8) -> SpanId {
    SpanId::from_bytes([0, 0, 0, 0, 0, 0, 1, n])
}

const TRACE: TraceId = TraceId::from_bytes([7; 16]);

fn span_strategy() -> impl Strategy<Value = Span> {
    (
        0u8..12,
        prop::option::of(0u8..14),
        0i64..1_000_000_000_000,
        0i64..10_000_000_000,
        attrs(),
        prop::collection::vec((0u8..14, 0usize..3, any::<bool>()), 0..3),
        prop::option::of(".{0,20}"),
        0u8..5,
        0u8..14,
    )
        .prop_map(
            |(id, parent, start, dur, attributes, links, message, status, kind)| Span {
                trace_id: TRACE,
                span_id: small_id(id),
                parent_id: parent.map(small_id),
                service: format!("svc-{}", id % 3),
                operation: format!("op-{id}"),
                kind: SpanKind::from_code(kind).unwrap(),
                start_time: Timestamp::from_unix_nanos(start),
                end_time: Timestamp::from_unix_nanos(start + dur),
                status: Status {
                    code: StatusCode::from_code(status).unwrap(),
                    message,
                },
                attributes: attributes.clone(),
                events: vec![Event {
                    name: "e".into(),
                    time: Timestamp::from_unix_nanos(start),
                    attributes,
                }],
                links: links
                    .into_iter()
                    .map(|(target, t, foreign)| Link {
                        trace_id: if foreign {
                            TraceId::from_bytes([9; 16])
                        } else {
                            TRACE
                        },
                        span_id: small_id(target),
                        link_type: LinkType::from_code(t as u8).unwrap(),
                        attributes: Attributes::new(),
                    })
                    .collect(),
            },
        )
}

proptest! {
    #[test]
    fn native_json_round_trips(span in span_strategy()) {
        let text = serde_json::to_string(&span).unwrap();
        let back: Span = serde_json::from_str(&text).unwrap();
        prop_assert_eq!(&back, &span);
        // Validation never panics, and spans built from valid parts pass it.
        let _ = span.validate(&Limits::default());
    }

    #[test]
    fn dag_is_total_and_order_independent(spans in prop::collection::vec(span_strategy(), 1..30)) {
        let dag = TraceDag::build(TRACE, spans.clone()).unwrap();
        let mut distinct: Vec<SpanId> = spans.iter().map(|s| s.span_id).collect();
        distinct.sort();
        distinct.dedup();
        prop_assert_eq!(dag.spans.len(), distinct.len());
        prop_assert_eq!(dag.duplicate_spans, spans.len() - distinct.len());
        // Every span is accounted for as a root, an orphan, a child (edge target) or in a cycle.
        for s in &dag.spans {
            let is_child = dag.edges.iter().any(|e| e.to == s.span_id);
            prop_assert!(dag.roots.contains(&s.span_id) || dag.orphans.contains(&s.span_id) || is_child);
        }
        // With duplicates, which copy is kept depends on order; compare only duplicate-free inputs.
        if dag.duplicate_spans == 0 {
            let mut reversed = spans;
            reversed.reverse();
            let again = TraceDag::build(TRACE, reversed).unwrap();
            prop_assert_eq!(dag, again);
        }
    }
}
