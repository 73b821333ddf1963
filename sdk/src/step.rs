//! Pipeline step spans: one builder that sets the step kind, job and run, datasets, counts
//! and typed links (DATA_DEPENDENCY, FOLLOWS_FROM) with the attribute names of
//! [`crate::conventions`], and the status helpers for TIMEOUT and CANCELLED.
//!
//! Everything here produces plain OpenTelemetry spans: any OTLP backend receives them as
//! ordinary spans with attributes and links; the DataTracing collector reads the attributes
//! as step kind, status and link type.

use std::borrow::Cow;
use std::sync::Arc;

use opentelemetry::trace::{Link, SpanContext, SpanKind as OtelKind, Status, Tracer};
use opentelemetry::{Array, Context, KeyValue, StringValue, Value};

use crate::conventions as c;

pub use datatracing_core::SpanKind as StepKind;

/// A dataset, named as OpenLineage names it: a namespace (where it lives, such as
/// `kafka://broker:9092` or `postgres://db:5432`) and a name within it.
///
/// The qualified name written in attributes is built once, here: a dataset is typically
/// made once per job and named on many spans. Each span gets its own copy of the name
/// rather than a shared reference: spans are dropped on the exporter's thread, and a shared
/// reference count bouncing between the two threads cost more than the copy (measured with
/// `benches/overhead.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dataset {
    namespace: Arc<str>,
    name: Arc<str>,
    qualified: Box<str>,
}

impl Dataset {
    /// A dataset from its OpenLineage namespace and name.
    pub fn new(namespace: impl AsRef<str>, name: impl AsRef<str>) -> Self {
        let (namespace, name) = (namespace.as_ref(), name.as_ref());
        Dataset {
            qualified: c::dataset_name(namespace, name).into_boxed_str(),
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// Where the dataset lives.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The dataset's name in its namespace (a topic, `db.schema.table`, a path).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The qualified name written in attributes ([`crate::conventions::dataset_name`]).
    pub fn qualified_name(&self) -> &str {
        &self.qualified
    }

    fn value(&self) -> StringValue {
        StringValue::from(String::from(&*self.qualified))
    }
}

/// Record and byte counts of a step, written as the `datatracing.records.*` and
/// `datatracing.bytes.*` attributes. `None` leaves an attribute out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Records read.
    pub records_in: Option<i64>,
    /// Records written.
    pub records_out: Option<i64>,
    /// Records read but rejected.
    pub records_rejected: Option<i64>,
    /// Bytes read.
    pub bytes_in: Option<i64>,
    /// Bytes written.
    pub bytes_out: Option<i64>,
}

impl Counts {
    /// The counts as attributes, leaving out those not set.
    pub fn attributes(&self) -> Vec<KeyValue> {
        self.iter().collect()
    }

    /// The counts as attributes without collecting them first.
    fn iter(&self) -> impl Iterator<Item = KeyValue> + use<> {
        [
            (c::RECORDS_IN, self.records_in),
            (c::RECORDS_OUT, self.records_out),
            (c::RECORDS_REJECTED, self.records_rejected),
            (c::BYTES_IN, self.bytes_in),
            (c::BYTES_OUT, self.bytes_out),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| KeyValue::new(k, v)))
    }
}

/// A builder for one pipeline step span.
///
/// ```
/// use datatracing_sdk::step::{Dataset, Step, StepKind};
/// let tracer = opentelemetry::global::tracer("example");
/// let upstream = opentelemetry::trace::SpanContext::empty_context();
/// let span = Step::new("join orders with customers", StepKind::Join)
///     .job("orders-daily", "run-42")
///     .input(&Dataset::new("kafka://broker:9092", "orders"))
///     .output(&Dataset::new("postgres://db:5432", "shop.public.orders_enriched"))
///     .data_dependency(upstream, Some(&Dataset::new("kafka://broker:9092", "orders")))
///     .start(&tracer);
/// # drop(span);
/// ```
#[derive(Debug, Clone)]
pub struct Step {
    name: Cow<'static, str>,
    kind: StepKind,
    otel_kind: Option<OtelKind>,
    attributes: Vec<KeyValue>,
    inputs: Vec<StringValue>,
    outputs: Vec<StringValue>,
    links: Vec<Link>,
}

impl Step {
    /// A step named `name` (the operation) of pipeline kind `kind`.
    pub fn new(name: impl Into<Cow<'static, str>>, kind: StepKind) -> Self {
        Step {
            name: name.into(),
            kind,
            otel_kind: None,
            // Room for the conventions a step usually sets (job, run, three counts, kind,
            // inputs, outputs), so pushes do not reallocate. A larger vector cost more than
            // the reallocation it saved: the list travels into the span and is freed on the
            // exporter thread (benches/overhead.rs measured 1.16x plain opentelemetry with
            // room for 12 against 1.09x with 8). `start_with_context` grows a larger step
            // once, to its exact size.
            attributes: Vec::with_capacity(8),
            inputs: Vec::new(),
            outputs: Vec::new(),
            links: Vec::new(),
        }
    }

    /// The job this step belongs to and the id of this run of it.
    pub fn job(mut self, job: impl Into<StringValue>, run_id: impl Into<StringValue>) -> Self {
        self.attributes.push(KeyValue::new(c::JOB_NAME, job.into()));
        self.attributes
            .push(KeyValue::new(c::RUN_ID, run_id.into()));
        self
    }

    /// A dataset the step reads.
    pub fn input(mut self, dataset: &Dataset) -> Self {
        push(&mut self.inputs, dataset.value());
        self
    }

    /// A dataset the step writes.
    pub fn output(mut self, dataset: &Dataset) -> Self {
        push(&mut self.outputs, dataset.value());
        self
    }

    /// Counts known when the step starts (more can be recorded with [`record_counts`]).
    pub fn counts(mut self, counts: Counts) -> Self {
        self.attributes.extend(counts.iter());
        self
    }

    /// Any other attribute.
    pub fn attribute(mut self, kv: KeyValue) -> Self {
        self.attributes.push(kv);
        self
    }

    /// The OpenTelemetry span kind other backends see (INTERNAL unless set; for example
    /// CONSUMER for a step that reads a topic). DataTracing reads the step kind instead.
    pub fn otel_kind(mut self, kind: OtelKind) -> Self {
        self.otel_kind = Some(kind);
        self
    }

    /// Fan-in: this step consumed data that the span `upstream` produced, optionally naming
    /// the input dataset. Recorded as a link of type DATA_DEPENDENCY. An invalid context
    /// (nothing was extracted from a carrier) is skipped.
    pub fn data_dependency(mut self, upstream: SpanContext, dataset: Option<&Dataset>) -> Self {
        if upstream.is_valid() {
            let mut attrs = Vec::with_capacity(2);
            attrs.push(KeyValue::new(c::LINK_TYPE, c::link_type::DATA_DEPENDENCY));
            if let Some(d) = dataset {
                attrs.push(KeyValue::new(c::LINK_DATASET, d.value()));
            }
            push(&mut self.links, Link::new(upstream, attrs, 0));
        }
        self
    }

    /// Continuation: this step carries on from `previous` (an upstream job in another trace,
    /// an earlier attempt). Recorded as a link of type FOLLOWS_FROM. An invalid context is
    /// skipped.
    pub fn follows_from(mut self, previous: SpanContext) -> Self {
        if previous.is_valid() {
            push(
                &mut self.links,
                Link::new(
                    previous,
                    vec![KeyValue::new(c::LINK_TYPE, c::link_type::FOLLOWS_FROM)],
                    0,
                ),
            );
        }
        self
    }

    /// Starts the span as a child of the current context's span (or a root).
    pub fn start<T: Tracer>(self, tracer: &T) -> T::Span {
        self.start_with_context(tracer, &Context::current())
    }

    /// Starts the span as a child of `parent`'s span (or a root when it has none).
    pub fn start_with_context<T: Tracer>(self, tracer: &T, parent: &Context) -> T::Span {
        let mut attributes = self.attributes;
        attributes.reserve_exact(
            1 + usize::from(!self.inputs.is_empty()) + usize::from(!self.outputs.is_empty()),
        );
        attributes.push(KeyValue::new(c::SPAN_KIND, self.kind.as_str()));
        if !self.inputs.is_empty() {
            attributes.push(KeyValue::new(
                c::DATASET_INPUTS,
                Value::Array(Array::String(self.inputs)),
            ));
        }
        if !self.outputs.is_empty() {
            attributes.push(KeyValue::new(
                c::DATASET_OUTPUTS,
                Value::Array(Array::String(self.outputs)),
            ));
        }
        let builder = tracer
            .span_builder(self.name)
            .with_kind(self.otel_kind.unwrap_or(OtelKind::Internal))
            .with_attributes(attributes)
            .with_links(self.links);
        tracer.build_with_context(builder, parent)
    }
}

/// Appends to a builder's list. Most lists hold one item (one input, one upstream span), and
/// allocating the first item directly costs less than growing an empty vector, which
/// showed in the per-span profile (`benches/overhead.rs`).
fn push<T>(list: &mut Vec<T>, item: T) {
    if list.capacity() == 0 {
        *list = vec![item];
    } else {
        list.push(item);
    }
}

/// Records counts on a running span (for counts known only at the end).
pub fn record_counts<S: opentelemetry::trace::Span>(span: &mut S, counts: Counts) {
    span.set_attributes(counts.attributes());
}

/// Marks a span as given up after a time limit: OTLP status ERROR with `message`, and
/// `datatracing.status = TIMEOUT`, which the collector reads as TIMEOUT (a failure).
pub fn set_timeout<S: opentelemetry::trace::Span>(span: &mut S, message: impl Into<String>) {
    span.set_attribute(KeyValue::new(
        c::STATUS,
        datatracing_core::StatusCode::Timeout.as_str(),
    ));
    span.set_status(Status::error(message.into()));
}

/// Marks a span as stopped on request: OTLP status ERROR with `message` (OTLP has no better
/// code; other backends show an error) and `datatracing.status = CANCELLED`, which the
/// collector reads as CANCELLED (not a failure).
pub fn set_cancelled<S: opentelemetry::trace::Span>(span: &mut S, message: impl Into<String>) {
    span.set_attribute(KeyValue::new(
        c::STATUS,
        datatracing_core::StatusCode::Cancelled.as_str(),
    ));
    span.set_status(Status::error(message.into()));
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use opentelemetry::trace::{Span as _, TracerProvider as _};
    use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};

    fn attr<'a>(kvs: &'a [KeyValue], key: &str) -> Option<&'a Value> {
        kvs.iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| &kv.value)
    }

    #[test]
    fn a_step_carries_kind_datasets_counts_and_typed_links() {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let tracer = provider.tracer("test");
        let upstream = tracer.start("produce").span_context().clone();
        let previous = tracer.start("previous run").span_context().clone();
        let orders = Dataset::new("kafka://b:9092", "orders");
        let mut span = Step::new("join", StepKind::Join)
            .job("daily", "run-1")
            .input(&orders)
            .output(&Dataset::new("file://", "/out/joined.parquet"))
            .counts(Counts {
                records_in: Some(10),
                ..Counts::default()
            })
            .data_dependency(upstream.clone(), Some(&orders))
            .follows_from(previous.clone())
            .follows_from(SpanContext::empty_context())
            .start(&tracer);
        record_counts(
            &mut span,
            Counts {
                records_out: Some(7),
                records_rejected: Some(3),
                ..Counts::default()
            },
        );
        set_timeout(&mut span, "took longer than 5m");
        span.end();
        let spans = exporter.get_finished_spans().unwrap();
        let s = spans.iter().find(|s| s.name == "join").unwrap();
        let a = &s.attributes;
        assert_eq!(attr(a, c::SPAN_KIND), Some(&Value::from("JOIN")));
        assert_eq!(attr(a, c::JOB_NAME), Some(&Value::from("daily")));
        assert_eq!(attr(a, c::RUN_ID), Some(&Value::from("run-1")));
        assert_eq!(attr(a, c::RECORDS_IN), Some(&Value::I64(10)));
        assert_eq!(attr(a, c::RECORDS_OUT), Some(&Value::I64(7)));
        assert_eq!(attr(a, c::RECORDS_REJECTED), Some(&Value::I64(3)));
        assert_eq!(attr(a, c::STATUS), Some(&Value::from("TIMEOUT")));
        assert_eq!(
            attr(a, c::DATASET_INPUTS),
            Some(&Value::Array(Array::String(vec![
                "kafka://b:9092/orders".into()
            ])))
        );
        assert_eq!(
            attr(a, c::DATASET_OUTPUTS),
            Some(&Value::Array(Array::String(vec![
                "file:///out/joined.parquet".into()
            ])))
        );
        assert_eq!(s.status, Status::error("took longer than 5m"));
        let links: Vec<_> = s.links.iter().collect();
        assert_eq!(links.len(), 2, "the empty context is skipped");
        assert_eq!(links[0].span_context, upstream);
        assert_eq!(
            attr(&links[0].attributes, c::LINK_TYPE),
            Some(&Value::from("data_dependency"))
        );
        assert_eq!(
            attr(&links[0].attributes, c::LINK_DATASET),
            Some(&Value::from("kafka://b:9092/orders"))
        );
        assert_eq!(links[1].span_context, previous);
        assert_eq!(
            attr(&links[1].attributes, c::LINK_TYPE),
            Some(&Value::from("follows_from"))
        );
    }

    #[test]
    fn cancelled_is_an_error_status_with_the_detail_attribute() {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let tracer = provider.tracer("test");
        let mut span = Step::new("load", StepKind::Materialize).start(&tracer);
        set_cancelled(&mut span, "operator stopped the run");
        span.end();
        let spans = exporter.get_finished_spans().unwrap();
        assert_eq!(
            attr(&spans[0].attributes, c::STATUS),
            Some(&Value::from("CANCELLED"))
        );
        assert_eq!(spans[0].status, Status::error("operator stopped the run"));
    }
}
