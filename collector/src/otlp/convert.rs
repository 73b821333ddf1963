//! Mapping between OTLP trace messages and the DataTracing model, both ways.
//!
//! - `service.name` (resource) becomes `service`; other resource attributes are kept on the
//!   span as `resource.<key>`; the instrumentation scope as `otel.scope.name` / `.version`.
//! - OTLP span kinds map to INTERNAL/SERVER/CLIENT/PRODUCER/CONSUMER; a pipeline step kind
//!   travels in the `datatracing.span.kind` attribute (INGEST, JOIN, ...) and wins.
//! - OTLP status OK/ERROR/UNSET map directly; TIMEOUT and CANCELLED travel as ERROR plus the
//!   `datatracing.status` attribute.
//! - Link types come from `datatracing.link.type` (`data_dependency`, `follows_from`,
//!   `child_of`) or OpenTracing's `opentracing.ref_type`; FOLLOWS_FROM by default.
//! - Attribute values: strings, booleans, ints, doubles and homogeneous arrays map exactly;
//!   key-value lists and mixed arrays become their JSON text, bytes their hex, non-finite
//!   doubles their name (`NaN`, `inf`), so nothing is silently dropped.

use std::collections::BTreeMap;

use datatracing_core::{
    AttributeValue, Attributes, Event, Link, LinkType, Span, SpanId, SpanKind, Status, StatusCode,
    Timestamp, TraceId,
};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    AnyValue, ArrayValue, InstrumentationScope, KeyValue, any_value,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1 as otlp;

/// Link attribute carrying our link type.
pub use datatracing_core::conventions::LINK_TYPE as LINK_TYPE_ATTR;
/// Attribute carrying a pipeline step kind through OTLP.
pub use datatracing_core::conventions::SPAN_KIND as SPAN_KIND_ATTR;
/// Attribute carrying TIMEOUT / CANCELLED through OTLP's three status codes.
pub use datatracing_core::conventions::STATUS as STATUS_ATTR;
/// OpenTracing's link (reference) type attribute.
pub const OPENTRACING_REF_ATTR: &str = "opentracing.ref_type";
const SERVICE_NAME: &str = "service.name";
const RESOURCE_PREFIX: &str = "resource.";
const SCOPE_NAME: &str = "otel.scope.name";
const SCOPE_VERSION: &str = "otel.scope.version";

/// One OTLP span that could not be mapped, with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// Position of the span in the request (resource, scope, span flattened).
    pub index: usize,
    /// Why.
    pub reason: String,
}

/// Number of spans in a request, counted before any work is done (for the per-request cap).
pub fn span_count(req: &ExportTraceServiceRequest) -> usize {
    req.resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .map(|s| s.spans.len())
        .sum()
}

fn any_to_value(v: AnyValue) -> Option<AttributeValue> {
    use any_value::Value as V;
    Some(match v.value? {
        V::StringValue(s) => AttributeValue::String(s),
        V::BoolValue(b) => AttributeValue::Bool(b),
        V::IntValue(i) => AttributeValue::Int(i),
        V::DoubleValue(d) if d.is_finite() => AttributeValue::Float(d),
        V::DoubleValue(d) => AttributeValue::String(d.to_string()),
        V::BytesValue(b) => AttributeValue::String(hex::encode(b)),
        // A string-table index only means something in OTLP profiles; keep the number.
        V::StringValueStrindex(i) => AttributeValue::Int(i64::from(i)),
        V::ArrayValue(a) => array_to_value(a),
        V::KvlistValue(kv) => {
            let map: BTreeMap<String, serde_json::Value> = kv
                .values
                .into_iter()
                .map(|kv| {
                    (
                        kv.key,
                        kv.value.map(any_to_json).unwrap_or(serde_json::Value::Null),
                    )
                })
                .collect();
            AttributeValue::String(serde_json::to_string(&map).unwrap_or_default())
        }
    })
}

fn any_to_json(v: AnyValue) -> serde_json::Value {
    use any_value::Value as V;
    match v.value {
        None => serde_json::Value::Null,
        Some(V::StringValue(s)) => s.into(),
        Some(V::BoolValue(b)) => b.into(),
        Some(V::IntValue(i)) => i.into(),
        Some(V::DoubleValue(d)) => {
            serde_json::Number::from_f64(d).map_or_else(|| d.to_string().into(), Into::into)
        }
        Some(V::BytesValue(b)) => hex::encode(b).into(),
        Some(V::StringValueStrindex(i)) => i.into(),
        Some(V::ArrayValue(a)) => a.values.into_iter().map(any_to_json).collect(),
        Some(V::KvlistValue(kv)) => kv
            .values
            .into_iter()
            .map(|kv| {
                (
                    kv.key,
                    kv.value.map(any_to_json).unwrap_or(serde_json::Value::Null),
                )
            })
            .collect::<serde_json::Map<_, _>>()
            .into(),
    }
}

fn array_to_value(a: ArrayValue) -> AttributeValue {
    use any_value::Value as V;
    let vals: Vec<Option<V>> = a.values.into_iter().map(|v| v.value).collect();
    if vals.iter().all(|v| matches!(v, Some(V::StringValue(_)))) {
        return AttributeValue::StringArray(
            vals.into_iter()
                .filter_map(|v| match v {
                    Some(V::StringValue(s)) => Some(s),
                    _ => None,
                })
                .collect(),
        );
    }
    if vals.iter().all(|v| matches!(v, Some(V::BoolValue(_)))) {
        return AttributeValue::BoolArray(
            vals.iter()
                .filter_map(|v| {
                    if let Some(V::BoolValue(b)) = v {
                        Some(*b)
                    } else {
                        None
                    }
                })
                .collect(),
        );
    }
    if vals.iter().all(|v| matches!(v, Some(V::IntValue(_)))) {
        return AttributeValue::IntArray(
            vals.iter()
                .filter_map(|v| {
                    if let Some(V::IntValue(i)) = v {
                        Some(*i)
                    } else {
                        None
                    }
                })
                .collect(),
        );
    }
    if vals.iter().all(|v| {
        matches!(v, Some(V::IntValue(_))) || matches!(v, Some(V::DoubleValue(d)) if d.is_finite())
    }) {
        return AttributeValue::FloatArray(
            vals.iter()
                .filter_map(|v| match v {
                    Some(V::IntValue(i)) => Some(*i as f64),
                    Some(V::DoubleValue(d)) => Some(*d),
                    _ => None,
                })
                .collect(),
        );
    }
    let json: Vec<serde_json::Value> = vals
        .into_iter()
        .map(|value| any_to_json(AnyValue { value }))
        .collect();
    AttributeValue::String(serde_json::to_string(&json).unwrap_or_default())
}

fn attributes(kvs: Vec<KeyValue>) -> Attributes {
    kvs.into_iter()
        .filter_map(|kv| Some((kv.key, any_to_value(kv.value?)?)))
        .collect()
}

fn take_string(attrs: &mut Attributes, key: &str) -> Option<String> {
    match attrs.remove(key) {
        Some(AttributeValue::String(s)) => Some(s),
        Some(other) => {
            // Not ours to interpret: put it back untouched.
            attrs.insert(key.to_string(), other);
            None
        }
        None => None,
    }
}

fn nanos(v: u64, what: &str) -> Result<Timestamp, String> {
    i64::try_from(v)
        .map(Timestamp::from_unix_nanos)
        .map_err(|_| format!("{what} {v} is beyond the year 2262"))
}

fn link_type(attrs: &mut Attributes) -> LinkType {
    let ours = take_string(attrs, LINK_TYPE_ATTR);
    let opentracing = take_string(attrs, OPENTRACING_REF_ATTR);
    for raw in [ours.as_deref(), opentracing.as_deref()]
        .into_iter()
        .flatten()
    {
        if let Ok(t) = raw.parse::<LinkType>() {
            return t;
        }
    }
    LinkType::FollowsFrom
}

fn map_span(
    s: otlp::Span,
    service: &str,
    resource_attrs: &Attributes,
    scope: Option<&InstrumentationScope>,
) -> Result<Span, String> {
    let trace_id = TraceId::from_slice(&s.trace_id).map_err(|e| format!("trace_id: {e}"))?;
    let span_id = SpanId::from_slice(&s.span_id).map_err(|e| format!("span_id: {e}"))?;
    let parent_id = if s.parent_span_id.is_empty() {
        None
    } else {
        Some(SpanId::from_slice(&s.parent_span_id).map_err(|e| format!("parent_span_id: {e}"))?)
    };
    let mut attrs = attributes(s.attributes);
    let otlp_kind = match otlp::span::SpanKind::try_from(s.kind)
        .unwrap_or(otlp::span::SpanKind::Unspecified)
    {
        otlp::span::SpanKind::Server => SpanKind::Server,
        otlp::span::SpanKind::Client => SpanKind::Client,
        otlp::span::SpanKind::Producer => SpanKind::Producer,
        otlp::span::SpanKind::Consumer => SpanKind::Consumer,
        otlp::span::SpanKind::Internal | otlp::span::SpanKind::Unspecified => SpanKind::Internal,
    };
    let kind = take_string(&mut attrs, SPAN_KIND_ATTR)
        .and_then(|k| k.parse::<SpanKind>().ok())
        .unwrap_or(otlp_kind);
    let detailed_status =
        take_string(&mut attrs, STATUS_ATTR).and_then(|st| st.parse::<StatusCode>().ok());
    let status = match s.status {
        None => Status::default(),
        Some(st) => {
            let code = match otlp::status::StatusCode::try_from(st.code)
                .unwrap_or(otlp::status::StatusCode::Unset)
            {
                otlp::status::StatusCode::Ok => StatusCode::Ok,
                otlp::status::StatusCode::Error => detailed_status.unwrap_or(StatusCode::Error),
                otlp::status::StatusCode::Unset => StatusCode::Unset,
            };
            Status {
                code,
                message: (!st.message.is_empty()).then_some(st.message),
            }
        }
    };
    for (k, v) in resource_attrs {
        attrs
            .entry(format!("{RESOURCE_PREFIX}{k}"))
            .or_insert_with(|| v.clone());
    }
    if let Some(scope) = scope {
        if !scope.name.is_empty() {
            attrs
                .entry(SCOPE_NAME.into())
                .or_insert_with(|| AttributeValue::String(scope.name.clone()));
        }
        if !scope.version.is_empty() {
            attrs
                .entry(SCOPE_VERSION.into())
                .or_insert_with(|| AttributeValue::String(scope.version.clone()));
        }
    }
    let events = s
        .events
        .into_iter()
        .map(|e| {
            Ok(Event {
                name: e.name,
                time: nanos(e.time_unix_nano, "event time")?,
                attributes: attributes(e.attributes),
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    let links = s
        .links
        .into_iter()
        .enumerate()
        .map(|(i, l)| {
            let mut la = attributes(l.attributes);
            Ok(Link {
                trace_id: TraceId::from_slice(&l.trace_id)
                    .map_err(|e| format!("links[{i}].trace_id: {e}"))?,
                span_id: SpanId::from_slice(&l.span_id)
                    .map_err(|e| format!("links[{i}].span_id: {e}"))?,
                link_type: link_type(&mut la),
                attributes: la,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(Span {
        trace_id,
        span_id,
        parent_id,
        service: service.to_string(),
        operation: s.name,
        kind,
        start_time: nanos(s.start_time_unix_nano, "start time")?,
        end_time: nanos(s.end_time_unix_nano, "end time")?,
        status,
        attributes: attrs,
        events,
        links,
    })
}

/// Maps a request to spans. Spans that cannot be mapped are returned as [`Rejected`] with
/// their flattened index; the rest map independently.
pub fn from_otlp(req: ExportTraceServiceRequest) -> (Vec<Span>, Vec<Rejected>) {
    let mut spans = Vec::with_capacity(span_count(&req));
    let mut rejected = Vec::new();
    let mut index = 0;
    for rs in req.resource_spans {
        let mut resource_attrs = attributes(rs.resource.map(|r| r.attributes).unwrap_or_default());
        let service = match resource_attrs.remove(SERVICE_NAME) {
            Some(AttributeValue::String(s)) if !s.is_empty() => s,
            // The OpenTelemetry SDKs' own fallback, so every span has a service.
            _ => "unknown_service".to_string(),
        };
        for ss in rs.scope_spans {
            for s in ss.spans {
                match map_span(s, &service, &resource_attrs, ss.scope.as_ref()) {
                    Ok(span) => spans.push(span),
                    Err(reason) => rejected.push(Rejected { index, reason }),
                }
                index += 1;
            }
        }
    }
    (spans, rejected)
}

fn value_to_any(v: &AttributeValue) -> AnyValue {
    use any_value::Value as V;
    let arr = |values: Vec<AnyValue>| V::ArrayValue(ArrayValue { values });
    let value = match v {
        AttributeValue::String(s) => V::StringValue(s.clone()),
        AttributeValue::Int(i) => V::IntValue(*i),
        AttributeValue::Float(f) => V::DoubleValue(*f),
        AttributeValue::Bool(b) => V::BoolValue(*b),
        AttributeValue::StringArray(a) => arr(a
            .iter()
            .map(|s| AnyValue {
                value: Some(V::StringValue(s.clone())),
            })
            .collect()),
        AttributeValue::IntArray(a) => arr(a
            .iter()
            .map(|i| AnyValue {
                value: Some(V::IntValue(*i)),
            })
            .collect()),
        AttributeValue::FloatArray(a) => arr(a
            .iter()
            .map(|f| AnyValue {
                value: Some(V::DoubleValue(*f)),
            })
            .collect()),
        AttributeValue::BoolArray(a) => arr(a
            .iter()
            .map(|b| AnyValue {
                value: Some(V::BoolValue(*b)),
            })
            .collect()),
    };
    AnyValue { value: Some(value) }
}

fn key_values(attrs: &Attributes) -> Vec<KeyValue> {
    attrs
        .iter()
        .map(|(k, v)| KeyValue {
            key: k.clone(),
            value: Some(value_to_any(v)),
            ..Default::default()
        })
        .collect()
}

fn kv_str(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_string())),
        }),
        ..Default::default()
    }
}

/// Maps spans to an OTLP request (one resource per service and set of resource
/// attributes), the inverse of [`from_otlp`]: `from_otlp(to_otlp(spans)) == spans`, which
/// forwarding between replicas relies on.
pub fn to_otlp(spans: &[Span]) -> ExportTraceServiceRequest {
    type ResourceKey<'a> = Vec<(&'a str, &'a AttributeValue)>;
    let mut by_service: BTreeMap<&str, Vec<(ResourceKey<'_>, Vec<&Span>)>> = BTreeMap::new();
    for s in spans {
        let res: ResourceKey<'_> = s
            .attributes
            .iter()
            .filter_map(|(k, v)| k.strip_prefix(RESOURCE_PREFIX).map(|rk| (rk, v)))
            .collect();
        let groups = by_service.entry(&s.service).or_default();
        match groups.iter_mut().find(|(r, _)| *r == res) {
            Some((_, v)) => v.push(s),
            None => groups.push((res, vec![s])),
        }
    }
    let resource_spans = by_service
        .into_iter()
        .flat_map(|(service, groups)| {
            groups.into_iter().map(move |(res, spans)| {
                let mut resource_attrs = vec![kv_str(SERVICE_NAME, service)];
                resource_attrs.extend(res.into_iter().map(|(k, v)| KeyValue {
                    key: k.to_string(),
                    value: Some(value_to_any(v)),
                    ..Default::default()
                }));
                let otlp_spans = spans.iter().map(|s| span_to_otlp(s)).collect();
                otlp::ResourceSpans {
                    resource: Some(Resource {
                        attributes: resource_attrs,
                        ..Default::default()
                    }),
                    scope_spans: vec![otlp::ScopeSpans {
                        spans: otlp_spans,
                        ..Default::default()
                    }],
                    ..Default::default()
                }
            })
        })
        .collect();
    ExportTraceServiceRequest { resource_spans }
}

fn span_to_otlp(s: &Span) -> otlp::Span {
    let mut attrs: Attributes = s
        .attributes
        .iter()
        .filter(|(k, _)| !k.starts_with(RESOURCE_PREFIX))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let kind = match s.kind {
        SpanKind::Server => otlp::span::SpanKind::Server,
        SpanKind::Client => otlp::span::SpanKind::Client,
        SpanKind::Producer => otlp::span::SpanKind::Producer,
        SpanKind::Consumer => otlp::span::SpanKind::Consumer,
        SpanKind::Internal => otlp::span::SpanKind::Internal,
        pipeline => {
            attrs.insert(
                SPAN_KIND_ATTR.into(),
                AttributeValue::String(pipeline.as_str().into()),
            );
            otlp::span::SpanKind::Internal
        }
    };
    let code = match s.status.code {
        StatusCode::Unset => otlp::status::StatusCode::Unset,
        StatusCode::Ok => otlp::status::StatusCode::Ok,
        StatusCode::Error => otlp::status::StatusCode::Error,
        detailed @ (StatusCode::Timeout | StatusCode::Cancelled) => {
            attrs.insert(
                STATUS_ATTR.into(),
                AttributeValue::String(detailed.as_str().into()),
            );
            otlp::status::StatusCode::Error
        }
    };
    otlp::Span {
        trace_id: s.trace_id.as_bytes().to_vec(),
        span_id: s.span_id.as_bytes().to_vec(),
        parent_span_id: s
            .parent_id
            .map(|p| p.as_bytes().to_vec())
            .unwrap_or_default(),
        name: s.operation.clone(),
        kind: kind as i32,
        start_time_unix_nano: s.start_time.unix_nanos().max(0).unsigned_abs(),
        end_time_unix_nano: s.end_time.unix_nanos().max(0).unsigned_abs(),
        attributes: key_values(&attrs),
        events: s
            .events
            .iter()
            .map(|e| otlp::span::Event {
                time_unix_nano: e.time.unix_nanos().max(0).unsigned_abs(),
                name: e.name.clone(),
                attributes: key_values(&e.attributes),
                ..Default::default()
            })
            .collect(),
        links: s
            .links
            .iter()
            .map(|l| {
                let mut la = key_values(&l.attributes);
                la.push(kv_str(
                    LINK_TYPE_ATTR,
                    &l.link_type.as_str().to_ascii_lowercase(),
                ));
                otlp::span::Link {
                    trace_id: l.trace_id.as_bytes().to_vec(),
                    span_id: l.span_id.as_bytes().to_vec(),
                    attributes: la,
                    ..Default::default()
                }
            })
            .collect(),
        status: Some(otlp::Status {
            code: code as i32,
            message: s.status.message.clone().unwrap_or_default(),
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Span> {
        let t = TraceId::from_bytes([7; 16]);
        let mut a = Span {
            trace_id: t,
            span_id: SpanId::from_bytes([1; 8]),
            parent_id: None,
            service: "orders-etl".into(),
            operation: "join".into(),
            kind: SpanKind::Join,
            start_time: Timestamp::from_unix_nanos(1_700_000_000_000_000_001),
            end_time: Timestamp::from_unix_nanos(1_700_000_001_000_000_000),
            status: Status::with_message(StatusCode::Timeout, "late partition"),
            attributes: Attributes::from([
                ("rows".to_string(), AttributeValue::Int(5)),
                ("ratio".to_string(), AttributeValue::Float(0.25)),
                (
                    "tags".to_string(),
                    AttributeValue::StringArray(vec!["a".into()]),
                ),
                (
                    "flags".to_string(),
                    AttributeValue::BoolArray(vec![true, false]),
                ),
                (
                    "resource.host.name".to_string(),
                    AttributeValue::from("node-1"),
                ),
            ]),
            events: vec![Event {
                name: "retry".into(),
                time: Timestamp::from_unix_nanos(1_700_000_000_500_000_000),
                attributes: Attributes::from([("attempt".to_string(), AttributeValue::Int(2))]),
            }],
            links: vec![Link {
                trace_id: TraceId::from_bytes([8; 16]),
                span_id: SpanId::from_bytes([9; 8]),
                link_type: LinkType::DataDependency,
                attributes: Attributes::from([(
                    "edge".to_string(),
                    AttributeValue::from("lineage"),
                )]),
            }],
        };
        let mut b = a.clone();
        b.span_id = SpanId::from_bytes([2; 8]);
        b.parent_id = Some(a.span_id);
        b.kind = SpanKind::Client;
        b.status = Status::new(StatusCode::Ok);
        b.links.clear();
        a.events.push(Event {
            name: "done".into(),
            time: a.end_time,
            attributes: Attributes::new(),
        });
        vec![a, b]
    }

    #[test]
    fn model_to_otlp_and_back_is_lossless() {
        let spans = sample();
        let (back, rejected) = from_otlp(to_otlp(&spans));
        assert!(rejected.is_empty());
        assert_eq!(back, spans);
    }

    #[test]
    fn spans_of_one_service_with_different_resources_round_trip() {
        let mut spans = sample();
        spans[0]
            .attributes
            .insert(format!("{RESOURCE_PREFIX}host.name"), "a".into());
        spans[1]
            .attributes
            .insert(format!("{RESOURCE_PREFIX}host.name"), "b".into());
        let mut third = spans[1].clone();
        third.span_id = SpanId::from_bytes([3; 8]);
        third
            .attributes
            .retain(|k, _| !k.starts_with(RESOURCE_PREFIX));
        spans.push(third);
        let req = to_otlp(&spans);
        assert_eq!(req.resource_spans.len(), 3);
        let (mut back, rejected) = from_otlp(req);
        assert!(rejected.is_empty());
        back.sort_by_key(|s| s.span_id);
        assert_eq!(back, spans);
    }

    #[test]
    fn otlp_to_model_and_back_is_lossless() {
        let req = to_otlp(&sample());
        let (spans, _) = from_otlp(req.clone());
        assert_eq!(to_otlp(&spans), req);
    }

    #[test]
    fn opentracing_ref_type_and_defaults() {
        let mut req = to_otlp(&sample());
        let link = &mut req.resource_spans[0].scope_spans[0].spans[0].links[0];
        link.attributes.retain(|kv| kv.key != LINK_TYPE_ATTR);
        link.attributes
            .push(kv_str(OPENTRACING_REF_ATTR, "child_of"));
        let (spans, _) = from_otlp(req.clone());
        assert_eq!(spans[0].links[0].link_type, LinkType::ChildOf);
        assert!(
            !spans[0].links[0]
                .attributes
                .contains_key(OPENTRACING_REF_ATTR)
        );
        let link = &mut req.resource_spans[0].scope_spans[0].spans[0].links[0];
        link.attributes.retain(|kv| kv.key != OPENTRACING_REF_ATTR);
        let (spans, _) = from_otlp(req);
        assert_eq!(spans[0].links[0].link_type, LinkType::FollowsFrom);
    }

    #[test]
    fn bad_ids_reject_only_their_span_and_odd_values_survive() {
        let mut req = to_otlp(&sample());
        let spans = &mut req.resource_spans[0].scope_spans[0].spans;
        spans[0].trace_id = vec![1, 2, 3];
        spans[1].attributes.push(KeyValue {
            key: "mixed".into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::ArrayValue(ArrayValue {
                    values: vec![
                        AnyValue {
                            value: Some(any_value::Value::IntValue(1)),
                        },
                        AnyValue {
                            value: Some(any_value::Value::StringValue("x".into())),
                        },
                    ],
                })),
            }),
            ..Default::default()
        });
        spans[1].attributes.push(KeyValue {
            key: "nan".into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::DoubleValue(f64::NAN)),
            }),
            ..Default::default()
        });
        req.resource_spans[0].resource = None;
        let (ok, rejected) = from_otlp(req);
        assert_eq!(
            rejected,
            vec![Rejected {
                index: 0,
                reason: "trace_id: trace_id must be 32 hex characters, got 6".into()
            }]
        );
        assert_eq!(ok.len(), 1);
        assert_eq!(ok[0].service, "unknown_service");
        assert_eq!(
            ok[0].attributes["mixed"],
            AttributeValue::String("[1,\"x\"]".into())
        );
        assert_eq!(
            ok[0].attributes["nan"],
            AttributeValue::String("NaN".into())
        );
    }
}
