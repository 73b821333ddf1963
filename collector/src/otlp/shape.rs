//! The shape of an encoded OTLP trace request, read before it is decoded: how many spans it
//! holds and an estimate of the memory decoding and converting it will take.
//!
//! A decoded message can be far larger than its encoding: an empty span is two bytes of
//! protobuf (or three of JSON) but a few hundred bytes of structs, and every resource
//! attribute is copied into every span of its resource. Measured before this check, a 24 KB
//! gzip body of empty spans raised peak RSS by 3.6 GB. So the span limit and the memory
//! budgets are enforced on this shape, and only a request that fits is decoded.
//!
//! The estimate is an upper bound by construction, not a measurement: every repeated element
//! is charged twice its struct size (a `Vec` may hold up to twice the capacity it needs),
//! every string its length plus an allocation's overhead, and the conversion to our spans
//! (one struct per span, one map entry per attribute, resource attributes and the scope
//! copied per span) on top. The scan itself allocates nothing that grows with the request.

use std::marker::PhantomData;
use std::mem::size_of;

use datatracing_core::AttributeValue;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1 as resource;
use opentelemetry_proto::tonic::trace::v1 as otlp;
use serde::de::{self, Deserializer, IgnoredAny, SeqAccess, Visitor};

/// What an encoded request holds, by estimate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Shape {
    /// Spans in the request (exact).
    pub spans: usize,
    /// Upper estimate of the bytes decoding and converting the request takes, the encoded
    /// request itself included.
    pub memory: usize,
}

/// Nested messages deeper than this are refused; prost refuses them at 100 as well.
const MAX_DEPTH: usize = 100;
/// Charged per string or bytes value besides its length: the allocation's header and
/// rounding.
const ALLOC_OVERHEAD: usize = 16;

/// One entry of an attribute map after conversion (`BTreeMap<String, AttributeValue>`):
/// key and value, twice for the map's partly filled nodes.
const fn converted_attr() -> usize {
    2 * (size_of::<String>() + size_of::<AttributeValue>())
}

/// A value inside an array or key-value list after conversion (a JSON value or an array
/// element).
const fn converted_nested() -> usize {
    2 * size_of::<serde_json::Value>()
}

/// The running estimate of one message and its children.
#[derive(Clone, Copy, Debug, Default)]
struct Tally {
    spans: usize,
    /// Decoded structs and strings, plus the conversion's own allocations.
    memory: usize,
    /// What converting copies into every span that shares this message (resource
    /// attributes, scope name and version).
    per_span_copy: usize,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.spans = self.spans.saturating_add(other.spans);
        self.memory = self.memory.saturating_add(other.memory);
        self.per_span_copy = self.per_span_copy.saturating_add(other.per_span_copy);
    }

    fn charge(&mut self, bytes: usize) {
        self.memory = self.memory.saturating_add(bytes);
    }
}

/// A string or bytes value of `len` bytes.
fn text(len: usize) -> usize {
    if len == 0 { 0 } else { len + ALLOC_OVERHEAD }
}

/// The message types of the trace request that allocate when decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Request,
    ResourceSpans,
    Resource,
    EntityRef,
    ScopeSpans,
    Scope,
    Span,
    Event,
    Link,
    Status,
    /// A span, event, link or scope attribute: converted to a map entry.
    Attribute,
    /// A resource attribute: converted once, then copied into each span.
    ResourceAttribute,
    /// A key-value inside a key-value list value.
    NestedKeyValue,
    /// The value of an attribute.
    Value,
    /// A value inside an array value.
    NestedValue,
    ArrayValue,
    KeyValueList,
    /// An element of a repeated string (charged as text).
    RepeatedText,
}

/// How a field of a message is decoded.
enum Field {
    /// A nested message, one struct inline in its parent (optional or oneof).
    One(Kind),
    /// A repeated message: one struct per occurrence.
    Many(Kind),
    /// A string value (UTF-8).
    Text,
    /// A bytes value.
    Bytes,
    /// A repeated string.
    ManyText,
    /// A known scalar field, with the wire type the decoder requires of it.
    Scalar(u64),
    /// An unknown field, skipped by the decoder without allocating.
    Skip,
}

/// Wire types.
const VARINT: u64 = 0;
const FIXED64: u64 = 1;
const LEN: u64 = 2;
const FIXED32: u64 = 5;

fn field(kind: Kind, number: u64) -> Field {
    use Field::*;
    use Kind::*;
    match (kind, number) {
        (Request, 1) => Many(ResourceSpans),
        (ResourceSpans, 1) => One(Resource),
        (ResourceSpans, 2) => Many(ScopeSpans),
        (ResourceSpans, 3) => Text,
        (Resource, 1) => Many(ResourceAttribute),
        (Resource, 2) => Scalar(VARINT),
        (Resource, 3) => Many(EntityRef),
        (EntityRef, 1 | 2) => Text,
        (EntityRef, 3 | 4) => ManyText,
        (ScopeSpans, 1) => One(Scope),
        (ScopeSpans, 2) => Many(Span),
        (ScopeSpans, 3) => Text,
        (Scope, 1 | 2) => Text,
        (Scope, 3) => Many(Attribute),
        (Scope, 4) => Scalar(VARINT),
        (Span, 1 | 2 | 4) => Bytes,
        (Span, 3 | 5) => Text,
        (Span, 6 | 10 | 12 | 14) => Scalar(VARINT),
        (Span, 7 | 8) => Scalar(FIXED64),
        (Span, 9) => Many(Attribute),
        (Span, 11) => Many(Event),
        (Span, 13) => Many(Link),
        (Span, 15) => One(Status),
        (Span, 16) => Scalar(FIXED32),
        (Event, 1) => Scalar(FIXED64),
        (Event, 2) => Text,
        (Event, 3) => Many(Attribute),
        (Event, 4) => Scalar(VARINT),
        (Link, 1 | 2) => Bytes,
        (Link, 3) => Text,
        (Link, 4) => Many(Attribute),
        (Link, 5) => Scalar(VARINT),
        (Link, 6) => Scalar(FIXED32),
        (Status, 2) => Text,
        (Status, 3) => Scalar(VARINT),
        (Attribute | ResourceAttribute | NestedKeyValue, 1) => Text,
        (Attribute | ResourceAttribute, 2) => One(Value),
        (NestedKeyValue, 2) => One(NestedValue),
        (Attribute | ResourceAttribute | NestedKeyValue, 3) => Scalar(VARINT),
        (Value | NestedValue, 1) => Text,
        (Value | NestedValue, 7) => Bytes,
        (Value | NestedValue, 2 | 3 | 8) => Scalar(VARINT),
        (Value | NestedValue, 4) => Scalar(FIXED64),
        (Value | NestedValue, 5) => One(ArrayValue),
        (Value | NestedValue, 6) => One(KeyValueList),
        (ArrayValue, 1) => Many(NestedValue),
        (KeyValueList, 1) => Many(NestedKeyValue),
        _ => Skip,
    }
}

/// What one occurrence of a repeated `kind` costs before its fields: the decoded struct
/// (twice, for the `Vec`) and what the conversion builds for it.
fn element_cost(kind: Kind) -> usize {
    use Kind::*;
    let decoded = match kind {
        Request => {
            size_of::<opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest>()
        }
        ResourceSpans => size_of::<otlp::ResourceSpans>(),
        Resource => size_of::<resource::Resource>(),
        EntityRef => size_of::<opentelemetry_proto::tonic::common::v1::EntityRef>(),
        ScopeSpans => size_of::<otlp::ScopeSpans>(),
        Scope => size_of::<InstrumentationScope>(),
        Span => size_of::<otlp::Span>(),
        Event => size_of::<otlp::span::Event>(),
        Link => size_of::<otlp::span::Link>(),
        Status => size_of::<otlp::Status>(),
        Attribute | ResourceAttribute | NestedKeyValue => size_of::<KeyValue>(),
        Value | NestedValue => size_of::<AnyValue>(),
        ArrayValue => size_of::<opentelemetry_proto::tonic::common::v1::ArrayValue>(),
        KeyValueList => size_of::<opentelemetry_proto::tonic::common::v1::KeyValueList>(),
        RepeatedText => 0,
    };
    let converted = match kind {
        Span => 2 * size_of::<datatracing_core::Span>(),
        Event => 2 * size_of::<datatracing_core::Event>(),
        Link => 2 * size_of::<datatracing_core::Link>(),
        Attribute | ResourceAttribute => converted_attr(),
        NestedKeyValue | NestedValue => converted_nested(),
        _ => 0,
    };
    2 * decoded + converted
}

/// Folds a finished child message into its parent's tally.
fn fold(parent_kind: Kind, parent: &mut Tally, child_kind: Kind, child: Tally, text_len: usize) {
    match (parent_kind, child_kind) {
        // A resource's attributes are copied into each of its spans (`resource.<key>`),
        // and the scope's name and version into each span of the scope.
        (Kind::Resource, Kind::ResourceAttribute) => {
            parent.add(child);
            parent.per_span_copy = parent
                .per_span_copy
                .saturating_add(converted_attr() + text_len.saturating_mul(2));
        }
        (Kind::ResourceSpans, Kind::Resource) | (Kind::ScopeSpans, Kind::Scope) => {
            parent.spans = parent.spans.saturating_add(child.spans);
            parent.charge(child.memory);
            parent.per_span_copy = parent.per_span_copy.saturating_add(child.per_span_copy);
        }
        _ => parent.add(Tally {
            per_span_copy: 0,
            ..child
        }),
    }
}

/// Applies the per-span copies once a resource or scope and its spans are all read.
fn finish(kind: Kind, t: &mut Tally, scope_text: usize) {
    match kind {
        Kind::Scope => {
            // Name and version become two attributes of every span.
            t.per_span_copy = t
                .per_span_copy
                .saturating_add(2 * converted_attr() + scope_text);
        }
        Kind::ScopeSpans | Kind::ResourceSpans => {
            let copies = t.spans.saturating_mul(t.per_span_copy);
            t.charge(copies);
            t.per_span_copy = 0;
        }
        _ => {}
    }
}

/// Why a request's shape could not be read; the decoder would refuse it too.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ShapeError {
    /// Not a protobuf encoding.
    #[error("malformed protobuf: {0}")]
    Protobuf(&'static str),
    /// Not JSON of the request's shape.
    #[error("{0}")]
    Json(String),
}

/// A varint as the decoder reads it: at most 10 bytes, the last holding one bit. Also the
/// split's reader (`route::split`).
#[inline(always)]
pub(crate) fn varint(buf: &mut &[u8]) -> Result<u64, ShapeError> {
    // Most varints of a request (keys, short lengths) are one byte.
    if let Some((&b, rest)) = buf.split_first()
        && b < 0x80
    {
        *buf = rest;
        return Ok(u64::from(b));
    }
    varint_long(buf)
}

fn varint_long(buf: &mut &[u8]) -> Result<u64, ShapeError> {
    let mut v = 0u64;
    for i in 0..10 {
        let (&b, rest) = buf
            .split_first()
            .ok_or(ShapeError::Protobuf("truncated varint"))?;
        *buf = rest;
        if i == 9 && b > 1 {
            return Err(ShapeError::Protobuf("invalid varint"));
        }
        v |= u64::from(b & 0x7f) << (7 * i);
        if b < 0x80 {
            return Ok(v);
        }
    }
    Err(ShapeError::Protobuf("varint longer than 10 bytes"))
}

fn take<'a>(buf: &mut &'a [u8], n: usize) -> Result<&'a [u8], ShapeError> {
    if buf.len() < n {
        return Err(ShapeError::Protobuf(
            "field runs past the end of its message",
        ));
    }
    let (head, rest) = buf.split_at(n);
    *buf = rest;
    Ok(head)
}

/// Reads one message of `kind`, returning its tally and the length of its text fields.
///
/// `STRICT` also checks every field as the protobuf decoder does (keys, the wire type of
/// each known field, UTF-8 of strings), so a request it accepts decodes.
fn scan_message<const STRICT: bool>(
    mut buf: &[u8],
    kind: Kind,
    depth: usize,
) -> Result<(Tally, usize), ShapeError> {
    if depth > MAX_DEPTH {
        return Err(ShapeError::Protobuf("messages nested too deeply"));
    }
    let mut t = Tally::default();
    let mut text_len = 0usize;
    if kind == Kind::Span {
        t.spans = 1;
    }
    while !buf.is_empty() {
        let key = varint(&mut buf)?;
        let number = key >> 3;
        let wire = key & 7;
        if STRICT {
            if key > u64::from(u32::MAX) {
                return Err(ShapeError::Protobuf("invalid key"));
            }
            if number == 0 {
                return Err(ShapeError::Protobuf("invalid tag 0"));
            }
        }
        match wire {
            VARINT | FIXED64 | FIXED32 => {
                if STRICT && !matches!(field(kind, number), Field::Scalar(w) if w == wire) {
                    known_scalar_or_skip(kind, number)?;
                }
                match wire {
                    VARINT => {
                        varint(&mut buf)?;
                    }
                    FIXED64 => {
                        take(&mut buf, 8)?;
                    }
                    _ => {
                        take(&mut buf, 4)?;
                    }
                }
            }
            LEN => {
                let len = usize::try_from(varint(&mut buf)?)
                    .map_err(|_| ShapeError::Protobuf("length out of range"))?;
                let body = take(&mut buf, len)?;
                match field(kind, number) {
                    f @ (Field::One(child) | Field::Many(child)) => {
                        let repeated = matches!(f, Field::Many(_));
                        let (mut ct, child_text) = scan_message::<STRICT>(body, child, depth + 1)?;
                        if repeated {
                            ct.charge(element_cost(child));
                        }
                        // What a resource attribute copies per span: its key and value
                        // (nested values as JSON text, about as long as their memory).
                        let copied = child_text.saturating_add(if child == Kind::Value {
                            ct.memory
                        } else {
                            0
                        });
                        if matches!(
                            kind,
                            Kind::ResourceAttribute | Kind::Attribute | Kind::NestedKeyValue
                        ) {
                            text_len = text_len.saturating_add(copied);
                        }
                        fold(kind, &mut t, child, ct, copied);
                    }
                    Field::Text => {
                        if STRICT {
                            utf8(body)?;
                        }
                        t.charge(text(len));
                        text_len = text_len.saturating_add(len);
                    }
                    Field::Bytes => {
                        t.charge(text(len));
                        text_len = text_len.saturating_add(len);
                    }
                    Field::ManyText => {
                        if STRICT {
                            utf8(body)?;
                        }
                        t.charge(2 * size_of::<String>() + text(len));
                    }
                    Field::Scalar(_) => {
                        if STRICT {
                            return Err(WRONG_WIRE);
                        }
                    }
                    Field::Skip => {}
                }
            }
            // Groups are obsolete and never part of OTLP.
            _ => return Err(ShapeError::Protobuf("unsupported wire type")),
        }
    }
    finish(kind, &mut t, text_len);
    Ok((t, text_len))
}

const WRONG_WIRE: ShapeError = ShapeError::Protobuf("invalid wire type for a known field");

/// A scalar wire type on a field that is not a scalar of that type: refused when the field
/// is known (the decoder refuses it), skipped when it is not.
#[cold]
fn known_scalar_or_skip(kind: Kind, number: u64) -> Result<(), ShapeError> {
    match field(kind, number) {
        Field::Skip => Ok(()),
        _ => Err(WRONG_WIRE),
    }
}

fn utf8(body: &[u8]) -> Result<(), ShapeError> {
    std::str::from_utf8(body)
        .map(|_| ())
        .map_err(|_| ShapeError::Protobuf("string is not UTF-8"))
}

/// The shape of a protobuf `ExportTraceServiceRequest`.
pub(crate) fn protobuf(buf: &[u8]) -> Result<Shape, ShapeError> {
    let (t, _) = scan_message::<false>(buf, Kind::Request, 0)?;
    Ok(Shape {
        spans: t.spans,
        memory: t.memory.saturating_add(buf.len()),
    })
}

/// [`protobuf`], refusing every request the decoder would refuse (every field checked as
/// the decoder checks it). What a routed replica runs before it splits a request, so that
/// a request is refused whole or not at all, in the same pass that reads its shape.
pub(crate) fn protobuf_checked(buf: &[u8]) -> Result<Shape, ShapeError> {
    let (t, _) = scan_message::<true>(buf, Kind::Request, 0)?;
    Ok(Shape {
        spans: t.spans,
        memory: t.memory.saturating_add(buf.len()),
    })
}

/// The shape of an OTLP/JSON `ExportTraceServiceRequest`, read with serde into types that
/// keep only counts (field names as the decoder reads them: lowerCamelCase).
pub(crate) fn json(buf: &[u8]) -> Result<Shape, ShapeError> {
    let r: json_shape::Request =
        serde_json::from_slice(buf).map_err(|e| ShapeError::Json(e.to_string()))?;
    let t = r.tally();
    Ok(Shape {
        spans: t.spans,
        memory: t.memory.saturating_add(buf.len()),
    })
}

/// A JSON message type that knows its tally.
trait Counted {
    const KIND: Kind;
    fn tally(&self) -> Tally;
    /// Length of its own text fields (for attribute copies).
    fn text_len(&self) -> usize {
        0
    }
}

/// A JSON array of `T`, read element by element and summed, never stored.
struct Many<T> {
    tally: Tally,
    _t: PhantomData<T>,
}

impl<'de, T: de::Deserialize<'de> + Counted> de::Deserialize<'de> for Many<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: de::Deserialize<'de> + Counted> Visitor<'de> for V<T> {
            type Value = Many<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an array")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Many<T>, A::Error> {
                let mut tally = Tally::default();
                let mut copy = 0usize;
                while let Some(e) = seq.next_element::<T>()? {
                    let mut et = e.tally();
                    et.charge(element_cost(T::KIND));
                    if T::KIND == Kind::ResourceAttribute {
                        copy = copy.saturating_add(converted_attr() + e.text_len() * 2);
                    }
                    tally.add(Tally {
                        per_span_copy: 0,
                        ..et
                    });
                }
                tally.per_span_copy = copy;
                Ok(Many {
                    tally,
                    _t: PhantomData,
                })
            }
        }
        d.deserialize_seq(V(PhantomData))
    }
}

fn many<T>(m: &Option<Many<T>>) -> Tally {
    m.as_ref().map(|m| m.tally).unwrap_or_default()
}

/// A JSON string, counted by length (not kept).
#[derive(Default)]
struct Len(usize);

impl<'de> de::Deserialize<'de> for Len {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Len;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Len, E> {
                Ok(Len(v.len()))
            }
            // Numbers and booleans where the decoder expects text are its error to report.
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Len, E> {
                Ok(Len(0))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Len, E> {
                Ok(Len(0))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Len, E> {
                Ok(Len(0))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Len, E> {
                Ok(Len(0))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Len, E> {
                Ok(Len(0))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Len, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Len(0))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Len, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Len(0))
            }
        }
        d.deserialize_any(V)
    }
}

fn len(l: &Option<Len>) -> usize {
    l.as_ref().map_or(0, |l| l.0)
}

mod json_shape {
    //! Serde mirrors of the OTLP/JSON request that keep only what [`super::Tally`] needs.
    #![allow(non_snake_case)]

    use serde::Deserialize;

    use super::{Counted, Kind, Len, Many, Tally, finish, len, many, text};

    #[derive(Deserialize)]
    pub(super) struct Request {
        resourceSpans: Option<Many<ResourceSpans>>,
    }

    impl Request {
        pub(super) fn tally(&self) -> Tally {
            many(&self.resourceSpans)
        }
    }

    #[derive(Deserialize)]
    struct ResourceSpans {
        resource: Option<Resource>,
        scopeSpans: Option<Many<ScopeSpans>>,
        schemaUrl: Option<Len>,
    }

    impl Counted for ResourceSpans {
        const KIND: Kind = Kind::ResourceSpans;
        fn tally(&self) -> Tally {
            let mut t = many(&self.scopeSpans);
            t.charge(text(len(&self.schemaUrl)));
            if let Some(r) = &self.resource {
                let rt = r.tally();
                t.charge(rt.memory);
                t.per_span_copy = rt.per_span_copy;
            }
            finish(Kind::ResourceSpans, &mut t, 0);
            t
        }
    }

    #[derive(Deserialize)]
    struct Resource {
        attributes: Option<Many<ResourceAttribute>>,
        entityRefs: Option<Many<EntityRef>>,
    }

    impl Resource {
        fn tally(&self) -> Tally {
            let mut t = many(&self.attributes);
            let copy = t.per_span_copy;
            t.add(many(&self.entityRefs));
            t.per_span_copy = copy;
            t
        }
    }

    #[derive(Deserialize)]
    struct EntityRef {
        schemaUrl: Option<Len>,
        r#type: Option<Len>,
        idKeys: Option<Many<Text>>,
        descriptionKeys: Option<Many<Text>>,
    }

    impl Counted for EntityRef {
        const KIND: Kind = Kind::EntityRef;
        fn tally(&self) -> Tally {
            let mut t = many(&self.idKeys);
            t.add(many(&self.descriptionKeys));
            t.charge(text(len(&self.schemaUrl)) + text(len(&self.r#type)));
            t
        }
    }

    /// An element of a repeated string.
    #[derive(Deserialize)]
    #[serde(transparent)]
    struct Text(Len);

    impl Counted for Text {
        const KIND: Kind = Kind::RepeatedText;
        fn tally(&self) -> Tally {
            let mut t = Tally::default();
            t.charge(2 * std::mem::size_of::<String>() + text(self.0.0));
            t
        }
    }

    #[derive(Deserialize)]
    struct ScopeSpans {
        scope: Option<Scope>,
        spans: Option<Many<Span>>,
        schemaUrl: Option<Len>,
    }

    impl Counted for ScopeSpans {
        const KIND: Kind = Kind::ScopeSpans;
        fn tally(&self) -> Tally {
            let mut t = many(&self.spans);
            t.charge(text(len(&self.schemaUrl)));
            if let Some(s) = &self.scope {
                let mut st = many(&s.attributes);
                st.per_span_copy = 0;
                let name = len(&s.name);
                let version = len(&s.version);
                st.charge(text(name) + text(version));
                finish(Kind::Scope, &mut st, name + version);
                t.charge(st.memory);
                t.per_span_copy = st.per_span_copy;
            }
            finish(Kind::ScopeSpans, &mut t, 0);
            t
        }
    }

    #[derive(Deserialize)]
    struct Scope {
        name: Option<Len>,
        version: Option<Len>,
        attributes: Option<Many<Attribute>>,
    }

    #[derive(Deserialize)]
    struct Span {
        traceId: Option<Len>,
        spanId: Option<Len>,
        traceState: Option<Len>,
        parentSpanId: Option<Len>,
        name: Option<Len>,
        attributes: Option<Many<Attribute>>,
        events: Option<Many<Event>>,
        links: Option<Many<Link>>,
        status: Option<Status>,
    }

    impl Counted for Span {
        const KIND: Kind = Kind::Span;
        fn tally(&self) -> Tally {
            let mut t = many(&self.attributes);
            t.add(many(&self.events));
            t.add(many(&self.links));
            for l in [
                &self.traceId,
                &self.spanId,
                &self.traceState,
                &self.parentSpanId,
                &self.name,
            ] {
                t.charge(text(len(l)));
            }
            if let Some(s) = &self.status {
                t.charge(text(len(&s.message)));
            }
            t.spans = t.spans.saturating_add(1);
            t.per_span_copy = 0;
            t
        }
    }

    #[derive(Deserialize)]
    struct Status {
        message: Option<Len>,
    }

    #[derive(Deserialize)]
    struct Event {
        name: Option<Len>,
        attributes: Option<Many<Attribute>>,
    }

    impl Counted for Event {
        const KIND: Kind = Kind::Event;
        fn tally(&self) -> Tally {
            let mut t = many(&self.attributes);
            t.charge(text(len(&self.name)));
            t
        }
    }

    #[derive(Deserialize)]
    struct Link {
        traceId: Option<Len>,
        spanId: Option<Len>,
        traceState: Option<Len>,
        attributes: Option<Many<Attribute>>,
    }

    impl Counted for Link {
        const KIND: Kind = Kind::Link;
        fn tally(&self) -> Tally {
            let mut t = many(&self.attributes);
            for l in [&self.traceId, &self.spanId, &self.traceState] {
                t.charge(text(len(l)));
            }
            t
        }
    }

    /// A key-value; `K` says which kind it is counted as.
    #[derive(Deserialize)]
    pub(super) struct KeyValueOf<const K: u8> {
        key: Option<Len>,
        value: Option<Value>,
    }

    type Attribute = KeyValueOf<0>;
    type ResourceAttribute = KeyValueOf<1>;
    type NestedKeyValue = KeyValueOf<2>;

    impl<const K: u8> Counted for KeyValueOf<K> {
        const KIND: Kind = match K {
            0 => Kind::Attribute,
            1 => Kind::ResourceAttribute,
            _ => Kind::NestedKeyValue,
        };
        fn tally(&self) -> Tally {
            let mut t = self.value.as_ref().map(Value::tally).unwrap_or_default();
            t.charge(text(len(&self.key)));
            t
        }
        fn text_len(&self) -> usize {
            len(&self.key) + self.value.as_ref().map_or(0, Value::text_len)
        }
    }

    #[derive(Deserialize)]
    pub(super) struct Value {
        stringValue: Option<Len>,
        bytesValue: Option<Len>,
        arrayValue: Option<ArrayValue>,
        kvlistValue: Option<KeyValueList>,
    }

    impl Value {
        fn tally(&self) -> Tally {
            let mut t = Tally::default();
            t.charge(text(len(&self.stringValue)) + text(len(&self.bytesValue)));
            if let Some(a) = &self.arrayValue {
                t.add(many(&a.values));
            }
            if let Some(kv) = &self.kvlistValue {
                t.add(many(&kv.values));
            }
            t.per_span_copy = 0;
            t
        }

        fn text_len(&self) -> usize {
            // Nested values are copied as JSON text, about as long as their memory.
            len(&self.stringValue) + len(&self.bytesValue) + self.tally().memory
        }
    }

    /// A value inside an array.
    #[derive(Deserialize)]
    #[serde(transparent)]
    struct NestedValue(Value);

    impl Counted for NestedValue {
        const KIND: Kind = Kind::NestedValue;
        fn tally(&self) -> Tally {
            self.0.tally()
        }
    }

    #[derive(Deserialize)]
    struct ArrayValue {
        values: Option<Many<NestedValue>>,
    }

    #[derive(Deserialize)]
    struct KeyValueList {
        values: Option<Many<NestedKeyValue>>,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::otlp::convert::{span_count, to_otlp};
    use datatracing_core::{Attributes, Span, SpanId, SpanKind, Status, Timestamp, TraceId};
    use prost::Message;

    fn spans(n: usize, attrs: usize) -> Vec<Span> {
        (0..n)
            .map(|i| Span {
                trace_id: TraceId::from_bytes([1; 16]),
                span_id: SpanId::from_bytes((i as u64 + 1).to_be_bytes()),
                parent_id: None,
                service: format!("svc-{}", i % 3),
                operation: "op".into(),
                kind: SpanKind::Transform,
                start_time: Timestamp::from_unix_nanos(1),
                end_time: Timestamp::from_unix_nanos(2),
                status: Status::default(),
                attributes: (0..attrs)
                    .map(|a| {
                        (
                            format!("attribute.{a}"),
                            AttributeValue::String(format!("value {a}")),
                        )
                    })
                    .collect::<Attributes>(),
                events: vec![],
                links: vec![],
            })
            .collect()
    }

    #[test]
    fn protobuf_and_json_count_the_spans_the_decoder_finds() {
        for (n, attrs) in [(0, 0), (1, 0), (7, 3), (500, 20)] {
            let req = to_otlp(&spans(n, attrs));
            let pb = protobuf(&req.encode_to_vec()).unwrap();
            let json = json(&serde_json::to_vec(&req).unwrap()).unwrap();
            assert_eq!(pb.spans, span_count(&req));
            assert_eq!(json.spans, span_count(&req));
            assert!(pb.memory >= req.encoded_len());
        }
    }

    #[test]
    fn ordinary_requests_are_estimated_near_their_size_and_bombs_far_above() {
        // 1000 spans of 20 short attributes: what an instrumented job sends. Small
        // attributes are the costliest ordinary content (a map entry and a decoded struct
        // for ~25 encoded bytes); a real request of this shape grew RSS by ~6x in
        // tests/amplification.rs, so the estimate stays an upper bound but near it.
        let req = to_otlp(&spans(1000, 20)).encode_to_vec();
        let ratio = protobuf(&req).unwrap().memory as f64 / req.len() as f64;
        assert!(
            (4.0..16.0).contains(&ratio),
            "ordinary request at {ratio:.1}x"
        );
        // Empty spans: 2 bytes each, hundreds of bytes decoded.
        let mut scope = Vec::new();
        for _ in 0..1000 {
            scope.extend([0x12, 0x00]);
        }
        let mut ss = vec![0x12];
        ss.extend(varint_bytes(scope.len()));
        ss.extend(scope);
        let mut req = vec![0x0a];
        req.extend(varint_bytes(ss.len()));
        req.extend(ss);
        let s = protobuf(&req).unwrap();
        assert_eq!(s.spans, 1000);
        assert!(s.memory > 100 * req.len(), "{} for {}", s.memory, req.len());
    }

    #[test]
    fn resource_attributes_are_charged_once_per_span() {
        let mut one = to_otlp(&spans(1, 0));
        let mut many = to_otlp(&spans(100, 0));
        for r in one
            .resource_spans
            .iter_mut()
            .chain(many.resource_spans.iter_mut())
        {
            r.resource
                .get_or_insert_default()
                .attributes
                .push(KeyValue {
                    key: "big".into(),
                    value: Some(AnyValue {
                        value: Some(
                            opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(
                                "x".repeat(10_000),
                            ),
                        ),
                    }),
                    ..Default::default()
                });
        }
        let resources = many.resource_spans.len();
        let one = protobuf(&one.encode_to_vec()).unwrap().memory;
        let many_pb = protobuf(&many.encode_to_vec()).unwrap().memory;
        let many_json = json(&serde_json::to_vec(&many).unwrap()).unwrap().memory;
        // 100 spans each get a 10 KB copy.
        assert!(many_pb > one + 100 * 10_000, "{many_pb} vs {one}");
        assert!(many_json > 100 * 10_000, "{many_json}");
        assert!(resources >= 1);
    }

    #[test]
    fn malformed_and_deep_input_is_refused_not_panicking() {
        assert!(protobuf(&[0x0a, 0x05, 0x00]).is_err(), "runs past the end");
        assert!(protobuf(&[0x0b]).is_err(), "group wire type");
        assert!(protobuf(&[0xff; 11]).is_err(), "endless varint");
        // Arrays nested past the decoder's limit.
        let mut v: Vec<u8> = Vec::new();
        for _ in 0..150 {
            // AnyValue{array_value: ArrayValue{values: [v]}}
            let mut inner = vec![0x0a];
            inner.extend(varint_bytes(v.len()));
            inner.extend(&v);
            let mut any = vec![0x2a];
            any.extend(varint_bytes(inner.len()));
            any.extend(inner);
            v = any;
        }
        let mut kv = vec![0x12];
        kv.extend(varint_bytes(v.len()));
        kv.extend(v);
        let mut res = vec![0x0a];
        res.extend(varint_bytes(kv.len()));
        res.extend(kv);
        let mut rs = vec![0x0a];
        rs.extend(varint_bytes(res.len()));
        rs.extend(res);
        let mut req = vec![0x0a];
        req.extend(varint_bytes(rs.len()));
        req.extend(rs);
        assert!(protobuf(&req).is_err());
        assert!(json(b"{\"resourceSpans\": 5}").is_err());
        assert!(json(b"not json").is_err());
        // Unknown fields are the decoder's business, not an error here.
        assert_eq!(json(b"{\"other\": [1,2,{}]}").unwrap().spans, 0);
    }

    fn varint_bytes(mut v: usize) -> Vec<u8> {
        let mut out = Vec::new();
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
        out
    }
}
