//! The storage contract suite: one definition, run against every backend.
//!
//! A backend's test file provides an async `make` function returning a [`Fixture`] (which
//! keeps whatever the store needs alive, e.g. a temporary directory or a test database, and
//! hands out the writer and the reader under test, which may be one value or two) and
//! invokes [`trace_store_contract!`](crate::trace_store_contract). Each check uses fresh
//! random ids, so checks can share a backend and run in parallel.
//!
//! This crate is test code: backends use it only as a dev-dependency, and no production
//! crate may depend on it (`cli/tests/architecture.rs` enforces that).

// Contract checks are test code: a failed expectation must fail the test loudly.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use datatracing_core::{
    AttributeFilter, AttributeValue, Attributes, DurationScope, Event, Link, LinkType, Operation,
    SearchPage, Span, SpanId, SpanKind, Status, StatusCode, Tenant, TimeWindow, Timestamp,
    TraceDag, TraceId, TraceQuery, TraceSummary,
};
use datatracing_store::{
    CrossLink, Direction, Lineage, LineageLimits, Result, TraceReader, TraceWriter,
};

/// What a backend's test harness hands to each contract check.
pub trait Fixture: Send + Sync {
    /// Where checks write.
    fn writer(&self) -> &dyn TraceWriter;
    /// Where checks read what they wrote. A reader separate from the writer must see
    /// every acknowledged write.
    fn reader(&self) -> &dyn TraceReader;
}

/// The writer and reader one check runs against.
#[derive(Clone, Copy, Debug)]
pub struct StoreUnderTest<'a> {
    /// Where spans are written.
    pub writer: &'a dyn TraceWriter,
    /// Where they are read back.
    pub reader: &'a dyn TraceReader,
}

impl<'a> StoreUnderTest<'a> {
    /// A fixture's writer and reader.
    pub fn new(fixture: &'a dyn Fixture) -> Self {
        Self {
            writer: fixture.writer(),
            reader: fixture.reader(),
        }
    }

    /// One value that is both writer and reader.
    pub fn of<S: TraceWriter + TraceReader>(store: &'a S) -> Self {
        Self {
            writer: store,
            reader: store,
        }
    }

    async fn write(&self, spans: Arc<[Span]>) -> Result<()> {
        self.writer.write(spans).await
    }

    async fn get_trace(&self, trace_id: TraceId) -> Result<Option<Vec<Span>>> {
        self.reader.get_trace(trace_id).await
    }

    async fn search(&self, query: &TraceQuery) -> Result<Vec<TraceSummary>> {
        Ok(self.reader.search(query).await?.traces)
    }

    async fn page_ids(&self, query: &TraceQuery) -> Vec<TraceId> {
        page_ids(self.reader, query).await
    }

    async fn search_page(&self, query: &TraceQuery) -> Result<SearchPage> {
        self.reader.search(query).await
    }
}

/// Instantiates every contract check as a `#[tokio::test]` for one backend.
///
/// `$make` is an async fn returning some `impl Fixture`.
#[macro_export]
macro_rules! trace_store_contract {
    ($make:path) => {
        $crate::trace_store_contract!(@tests $make;
            write_then_get_round_trips_every_field,
            unknown_trace_is_none,
            rewriting_a_span_does_not_duplicate_it,
            search_filters_match_one_span_each,
            search_orders_newest_first_and_limits,
            busy_trace_does_not_hide_others,
            search_summaries_are_complete,
            search_by_attributes,
            large_batch_and_concurrent_writers,
            dag_survives_storage,
            services_and_operations_over_a_window,
            search_by_kind_and_typed_attributes,
            duration_scope_span_or_trace,
            cursor_pages_are_complete_and_stable_under_concurrent_inserts,
            capped_trace_reads_are_bounded_and_marked,
            several_traces_read_at_once_share_one_budget,
            a_truncated_trace_is_paged_completely,
            lineage_walks_both_ways_through_cycles_and_dangling_links,
            lineage_depth_and_node_caps_mark_truncation,
            search_by_link_target_pages_with_cursors,
            datasets_in_search_and_lineage,
            tenants_are_isolated
        );
    };
    (@tests $make:path; $($name:ident),+) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let fixture = $make().await;
                $crate::$name($crate::StoreUnderTest::new(&fixture)).await;
            }
        )+
    };
}

/// The ids of the traces one search page finds, in the page's order; a failed search
/// fails the test.
pub async fn page_ids(reader: &dyn TraceReader, query: &TraceQuery) -> Vec<TraceId> {
    reader
        .search(query)
        .await
        .expect("search")
        .traces
        .into_iter()
        .map(|s| s.trace_id)
        .collect()
}

static NEXT: AtomicU64 = AtomicU64::new(1);

/// A fresh trace id, unique within this process and across processes in practice.
pub fn fresh_trace_id() -> TraceId {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let t = Timestamp::now().unix_nanos() as u64;
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&t.to_be_bytes());
    b[8..].copy_from_slice(&(n ^ u64::from(std::process::id()) << 40).to_be_bytes());
    b[15] |= 1;
    TraceId::from_bytes(b)
}

/// A span id derived from a small number (never zero).
pub fn span_id(n: u64) -> SpanId {
    SpanId::from_bytes((n + 1).to_be_bytes())
}

/// A base time an hour ago, so retention (days) never interferes, distinct per call.
fn base_time() -> Timestamp {
    let n = NEXT.fetch_add(1, Ordering::Relaxed) as i64;
    Timestamp::now().saturating_add_nanos(-3_600_000_000_000 + n * 1_000)
}

/// A unique service name, so searches in shared backends only see this check's data.
fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// A plain span; tests adjust fields.
pub fn simple_span(
    trace_id: TraceId,
    id: u64,
    parent: Option<u64>,
    service: &str,
    start: Timestamp,
    dur_ns: i64,
) -> Span {
    Span {
        trace_id,
        span_id: span_id(id),
        parent_id: parent.map(span_id),
        service: service.to_string(),
        operation: format!("op-{id}"),
        kind: SpanKind::Transform,
        start_time: start,
        end_time: start.saturating_add_nanos(dur_ns),
        status: Status::new(StatusCode::Ok),
        attributes: Attributes::new(),
        events: Vec::new(),
        links: Vec::new(),
    }
}

fn sorted(mut spans: Vec<Span>) -> Vec<Span> {
    spans.sort_by_key(|s| (s.start_time, s.span_id));
    spans
}

/// Every field survives a write and a read, with nanosecond times.
pub async fn write_then_get_round_trips_every_field(store: StoreUnderTest<'_>) {
    let t = fresh_trace_id();
    let t0 = base_time().saturating_add_nanos(123_456_789);
    let mut root = simple_span(t, 1, None, &unique("ingest"), t0, 5_000_000_001);
    root.kind = SpanKind::Ingest;
    root.attributes = Attributes::from([
        ("dataset".to_string(), AttributeValue::from("orders")),
        ("rows".to_string(), AttributeValue::Int(-42)),
        ("ratio".to_string(), AttributeValue::Float(0.25)),
        ("ok".to_string(), AttributeValue::Bool(true)),
        (
            "tags".to_string(),
            AttributeValue::StringArray(vec!["a".into(), "ü".into()]),
        ),
        (
            "ints".to_string(),
            AttributeValue::IntArray(vec![1, i64::MAX]),
        ),
        (
            "floats".to_string(),
            AttributeValue::FloatArray(vec![1.5, -2.0]),
        ),
        (
            "bools".to_string(),
            AttributeValue::BoolArray(vec![false, true]),
        ),
    ]);
    root.events = vec![Event {
        name: "checkpoint".into(),
        time: t0.saturating_add_nanos(7),
        attributes: Attributes::from([("offset".to_string(), AttributeValue::Int(99))]),
    }];
    let mut child = simple_span(t, 2, Some(1), "transform", t0.saturating_add_nanos(1), 10);
    child.status = Status::with_message(StatusCode::Error, "schema mismatch in column \"price\"");
    child.links = vec![Link {
        trace_id: fresh_trace_id(),
        span_id: span_id(77),
        link_type: LinkType::DataDependency,
        attributes: Attributes::from([("edge".to_string(), AttributeValue::from("lineage"))]),
    }];
    store
        .write(vec![child.clone(), root.clone()].into())
        .await
        .expect("write");
    let got = store
        .get_trace(t)
        .await
        .expect("get")
        .expect("trace exists");
    assert_eq!(
        got,
        vec![root, child],
        "spans must come back intact, ordered by start time"
    );
}

/// An id nobody wrote gives `None`, not an empty trace or an error.
pub async fn unknown_trace_is_none(store: StoreUnderTest<'_>) {
    assert!(
        store
            .get_trace(fresh_trace_id())
            .await
            .expect("get")
            .is_none()
    );
}

/// Writing the same span twice (a client or collector retry) keeps one copy visible.
pub async fn rewriting_a_span_does_not_duplicate_it(store: StoreUnderTest<'_>) {
    let t = fresh_trace_id();
    let svc = unique("retry");
    let spans = vec![
        simple_span(t, 1, None, &svc, base_time(), 100),
        simple_span(t, 2, Some(1), &svc, base_time(), 50),
    ];
    store
        .write(spans.clone().into())
        .await
        .expect("first write");
    store
        .write(spans.clone().into())
        .await
        .expect("retried write");
    let got = store.get_trace(t).await.expect("get").expect("exists");
    let dag = TraceDag::build(t, got).expect("dag");
    assert_eq!(dag.spans.len(), 2);
    let found = store
        .search(&TraceQuery {
            service: Some(svc),
            ..TraceQuery::with_limit(10)
        })
        .await
        .expect("search");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].span_count, 2, "summary must count distinct spans");
}

/// Each filter works, and a trace matches only when one span satisfies all filters at once.
pub async fn search_filters_match_one_span_each(store: StoreUnderTest<'_>) {
    let svc_a = unique("svc-a");
    let svc_b = unique("svc-b");
    let t0 = base_time();
    // Trace 1: svc_a/op-1 fast OK, svc_b/op-2 slow ERROR.
    let t1 = fresh_trace_id();
    let mut s12 = simple_span(
        t1,
        2,
        Some(1),
        &svc_b,
        t0.saturating_add_nanos(1_000),
        2_000_000_000,
    );
    s12.status = Status::new(StatusCode::Error);
    let trace1 = vec![simple_span(t1, 1, None, &svc_a, t0, 1_000_000), s12];
    // Trace 2: svc_a/op-2 medium OK, a minute later.
    let t2 = fresh_trace_id();
    let trace2 = vec![simple_span(
        t2,
        2,
        None,
        &svc_a,
        t0.saturating_add_nanos(60_000_000_000),
        500_000_000,
    )];
    store.write(trace1.into()).await.expect("write 1");
    store.write(trace2.into()).await.expect("write 2");

    let ids = |q: TraceQuery| async move {
        let mut v: Vec<TraceId> = store.page_ids(&q).await;
        v.sort();
        v
    };
    let both = {
        let mut v = vec![t1, t2];
        v.sort();
        v
    };
    let q = |svc: &str| TraceQuery {
        service: Some(svc.to_string()),
        ..TraceQuery::with_limit(100)
    };
    assert_eq!(ids(q(&svc_a)).await, both, "service");
    assert_eq!(ids(q(&svc_b)).await, vec![t1], "service b");
    assert_eq!(
        ids(TraceQuery {
            operation: Some("op-2".into()),
            ..q(&svc_a)
        })
        .await,
        vec![t2],
        "svc_a with op-2 is only in trace 2 (trace 1's op-2 belongs to svc_b)"
    );
    assert_eq!(
        ids(TraceQuery {
            status: Some(StatusCode::Error),
            ..q(&svc_b)
        })
        .await,
        vec![t1],
        "status"
    );
    assert!(
        ids(TraceQuery {
            status: Some(StatusCode::Error),
            ..q(&svc_a)
        })
        .await
        .is_empty(),
        "svc_a never errored: the error span is svc_b's"
    );
    assert_eq!(
        ids(TraceQuery {
            min_duration_nanos: Some(100_000_000),
            ..q(&svc_a)
        })
        .await,
        vec![t2],
        "min duration"
    );
    assert_eq!(
        ids(TraceQuery {
            max_duration_nanos: Some(100_000_000),
            ..q(&svc_a)
        })
        .await,
        vec![t1],
        "max duration"
    );
    assert_eq!(
        ids(TraceQuery {
            min_duration_nanos: Some(400_000_000),
            max_duration_nanos: Some(600_000_000),
            ..q(&svc_a)
        })
        .await,
        vec![t2],
        "duration range"
    );
    assert_eq!(
        ids(TraceQuery {
            start: Some(t0.saturating_add_nanos(30_000_000_000)),
            ..q(&svc_a)
        })
        .await,
        vec![t2],
        "start bound"
    );
    assert_eq!(
        ids(TraceQuery {
            end: Some(t0.saturating_add_nanos(30_000_000_000)),
            ..q(&svc_a)
        })
        .await,
        vec![t1],
        "end bound"
    );
    assert_eq!(
        ids(TraceQuery {
            start: Some(t0),
            end: Some(t0),
            operation: Some("op-1".into()),
            status: Some(StatusCode::Ok),
            max_duration_nanos: Some(1_000_000),
            min_duration_nanos: Some(1_000_000),
            ..q(&svc_a)
        })
        .await,
        vec![t1],
        "all filters, inclusive bounds"
    );
    assert!(
        ids(q(&unique("nobody"))).await.is_empty(),
        "unknown service"
    );
}

/// Newest matching trace first; `limit` cuts.
pub async fn search_orders_newest_first_and_limits(store: StoreUnderTest<'_>) {
    let svc = unique("order");
    let t0 = base_time();
    let mut traces = Vec::new();
    for i in 0..5i64 {
        let t = fresh_trace_id();
        traces.push(t);
        store
            .write(
                vec![simple_span(
                    t,
                    1,
                    None,
                    &svc,
                    t0.saturating_add_nanos(i * 1_000_000),
                    10,
                )]
                .into(),
            )
            .await
            .expect("write");
    }
    let q = TraceQuery {
        service: Some(svc),
        ..TraceQuery::with_limit(3)
    };
    let got: Vec<TraceId> = store.page_ids(&q).await;
    assert_eq!(got, vec![traces[4], traces[3], traces[2]]);
}

/// A trace with many matching spans does not crowd the others out of the result.
pub async fn busy_trace_does_not_hide_others(store: StoreUnderTest<'_>) {
    let svc = unique("busy");
    let t0 = base_time();
    let quiet = fresh_trace_id();
    let busy = fresh_trace_id();
    store
        .write(vec![simple_span(quiet, 1, None, &svc, t0, 10)].into())
        .await
        .expect("write quiet");
    let spans: Vec<Span> = (0..300u64)
        .map(|i| {
            simple_span(
                busy,
                i,
                None,
                &svc,
                t0.saturating_add_nanos(1_000 + i as i64),
                10,
            )
        })
        .collect();
    store.write(spans.into()).await.expect("write busy");
    let q = TraceQuery {
        service: Some(svc),
        ..TraceQuery::with_limit(2)
    };
    let got: Vec<TraceId> = store.page_ids(&q).await;
    assert_eq!(got, vec![busy, quiet]);
}

/// Summary figures are computed over the whole trace, not only the matching span.
pub async fn search_summaries_are_complete(store: StoreUnderTest<'_>) {
    let t = fresh_trace_id();
    let edge = unique("edge");
    let t0 = base_time();
    let mut api = simple_span(t, 1, None, "api", t0, 1_000);
    api.operation = "POST /orders".into();
    let mut enrich = simple_span(t, 2, Some(1), &edge, t0.saturating_add_nanos(100), 300);
    enrich.status = Status::new(StatusCode::Timeout);
    let mut publish = simple_span(
        t,
        3,
        Some(1),
        "publish",
        t0.saturating_add_nanos(500),
        2_000,
    );
    publish.status = Status::new(StatusCode::Error);
    store
        .write(vec![enrich, publish, api].into())
        .await
        .expect("write");
    let found = store
        .search(&TraceQuery {
            service: Some(edge.clone()),
            ..TraceQuery::with_limit(5)
        })
        .await
        .expect("search");
    assert_eq!(found.len(), 1);
    let s = &found[0];
    assert_eq!(s.trace_id, t);
    assert_eq!(s.root_service, "api");
    assert_eq!(s.root_operation, "POST /orders");
    assert_eq!(s.start_time, t0);
    assert_eq!(s.duration_nanos, 2_500);
    assert_eq!(s.span_count, 3);
    assert_eq!(s.error_count, 2, "ERROR and TIMEOUT both count");
    let mut services = vec!["api".to_string(), edge, "publish".to_string()];
    services.sort();
    assert_eq!(s.services, services);
}

/// Attribute filters: equality on typed values (as search text), existence, conjunction on
/// one span.
pub async fn search_by_attributes(store: StoreUnderTest<'_>) {
    let svc = unique("attrs");
    let t0 = base_time();
    let t1 = fresh_trace_id();
    let t2 = fresh_trace_id();
    let mut a = simple_span(t1, 1, None, &svc, t0, 10);
    a.attributes = Attributes::from([
        ("dataset".to_string(), AttributeValue::from("orders")),
        ("rows".to_string(), AttributeValue::Int(42)),
        ("late".to_string(), AttributeValue::Bool(true)),
        ("ratio".to_string(), AttributeValue::Float(0.5)),
    ]);
    let mut b = simple_span(t1, 2, Some(1), &svc, t0.saturating_add_nanos(5), 10);
    b.attributes = Attributes::from([(
        "partition".to_string(),
        AttributeValue::from("dt=2026-11-28"),
    )]);
    let mut c = simple_span(t2, 1, None, &svc, t0.saturating_add_nanos(10), 10);
    c.attributes = Attributes::from([("dataset".to_string(), AttributeValue::from("customers"))]);
    store.write(vec![a, b, c].into()).await.expect("write");

    let ids = |filters: &[&str]| {
        let q = TraceQuery {
            service: Some(svc.clone()),
            attributes: filters
                .iter()
                .map(|f| datatracing_core::AttributeFilter::parse(f).expect("filter"))
                .collect(),
            ..TraceQuery::with_limit(10)
        };
        async move {
            let mut v: Vec<TraceId> = store.page_ids(&q).await;
            v.sort();
            v
        }
    };
    let mut both = vec![t1, t2];
    both.sort();
    assert_eq!(ids(&["dataset=orders"]).await, vec![t1]);
    assert_eq!(ids(&["dataset"]).await, both, "key exists");
    assert_eq!(
        ids(&["rows=42"]).await,
        vec![t1],
        "integers compare as text"
    );
    assert_eq!(
        ids(&["late=true"]).await,
        vec![t1],
        "booleans compare as text"
    );
    assert_eq!(
        ids(&["ratio=0.5"]).await,
        vec![t1],
        "floats compare as text"
    );
    assert_eq!(
        ids(&["partition=dt=2026-11-28"]).await,
        vec![t1],
        "values may contain '='"
    );
    assert_eq!(
        ids(&["dataset=orders", "rows=42"]).await,
        vec![t1],
        "conjunction on one span"
    );
    assert!(
        ids(&["dataset=orders", "partition"]).await.is_empty(),
        "the two attributes are on different spans"
    );
    assert!(ids(&["dataset=nothing"]).await.is_empty());
    assert!(ids(&["absent"]).await.is_empty());
}

/// A 5,000-span batch and eight concurrent writers all land completely.
pub async fn large_batch_and_concurrent_writers(store: StoreUnderTest<'_>) {
    let svc = unique("bulk");
    let t0 = base_time();
    let big = fresh_trace_id();
    let spans: Vec<Span> = (0..5_000u64)
        .map(|i| {
            simple_span(
                big,
                i,
                (i > 0).then_some(0),
                &svc,
                t0.saturating_add_nanos(i as i64),
                10,
            )
        })
        .collect();
    store.write(spans.into()).await.expect("big write");
    assert_eq!(
        store
            .get_trace(big)
            .await
            .expect("get")
            .expect("exists")
            .len(),
        5_000
    );

    let mut tasks = Vec::new();
    let mut ids = Vec::new();
    for w in 0..8u64 {
        let batch: Vec<Span> = (0..50)
            .map(|i| {
                let t = fresh_trace_id();
                ids.push(t);
                simple_span(
                    t,
                    w * 100 + i,
                    None,
                    &svc,
                    t0.saturating_add_nanos(10_000 + i as i64),
                    10,
                )
            })
            .collect();
        tasks.push(store.write(batch.into()));
    }
    for r in futures_join_all(tasks).await {
        r.expect("concurrent write");
    }
    for t in ids {
        assert!(
            store.get_trace(t).await.expect("get").is_some(),
            "trace {t} lost"
        );
    }
}

/// A fan-in pipeline with a cross-trace link reconstructs the same from storage as in memory.
pub async fn dag_survives_storage(store: StoreUnderTest<'_>) {
    let t = fresh_trace_id();
    let other = fresh_trace_id();
    let t0 = base_time();
    let ingest_a = simple_span(t, 1, None, "ingest-a", t0, 100);
    let ingest_b = simple_span(t, 2, None, "ingest-b", t0.saturating_add_nanos(5), 100);
    let mut join = simple_span(t, 3, Some(1), "join", t0.saturating_add_nanos(200), 100);
    join.kind = SpanKind::Join;
    join.links = [1, 2]
        .into_iter()
        .map(|n| Link {
            trace_id: t,
            span_id: span_id(n),
            link_type: LinkType::DataDependency,
            attributes: Attributes::new(),
        })
        .collect();
    let mut publish = simple_span(t, 4, Some(3), "publish", t0.saturating_add_nanos(400), 100);
    publish.links = vec![Link {
        trace_id: other,
        span_id: span_id(9),
        link_type: LinkType::FollowsFrom,
        attributes: Attributes::new(),
    }];
    let spans = vec![ingest_a, ingest_b, join, publish];
    store.write(spans.clone().into()).await.expect("write");
    let stored = store.get_trace(t).await.expect("get").expect("exists");
    assert_eq!(stored, sorted(spans.clone()));
    let from_store = TraceDag::build(t, stored).expect("dag");
    let in_memory = TraceDag::build(t, spans).expect("dag");
    assert_eq!(from_store, in_memory);
    assert_eq!(from_store.roots.len(), 2);
    assert_eq!(from_store.cross_trace_links.len(), 1);
    assert_eq!(from_store.cross_trace_links[0].target_trace_id, other);
}

const HOUR_NS: i64 = 3_600_000_000_000;

/// Services and operations (with kinds) come from the name index, filtered by time window.
pub async fn services_and_operations_over_a_window(store: StoreUnderTest<'_>) {
    let prefix = unique("names");
    let recent_svc = format!("{prefix}-recent");
    let old_svc = format!("{prefix}-old");
    let now = Timestamp::now();
    let recent = now.saturating_add_nanos(-HOUR_NS);
    let old = now.saturating_add_nanos(-72 * HOUR_NS);
    let t = fresh_trace_id();
    let mut spans = Vec::new();
    for (i, (svc, at, op, kind)) in [
        (&recent_svc, recent, "load", SpanKind::Ingest),
        (&recent_svc, recent, "load", SpanKind::Ingest),
        (&recent_svc, recent, "load", SpanKind::Client),
        (&recent_svc, recent, "clean", SpanKind::Transform),
        (&old_svc, old, "archive", SpanKind::Materialize),
        (&recent_svc, old, "backfill", SpanKind::Ingest),
    ]
    .into_iter()
    .enumerate()
    {
        let mut s = simple_span(t, i as u64, None, svc, at, 10);
        s.operation = op.to_string();
        s.kind = kind;
        spans.push(s);
    }
    store.write(spans.into()).await.expect("write");

    let ours = |v: Vec<String>| -> Vec<String> {
        v.into_iter().filter(|s| s.starts_with(&prefix)).collect()
    };
    let all = TimeWindow::default();
    assert_eq!(
        ours(store.reader.services(&all, 10_000).await.expect("services")),
        vec![old_svc.clone(), recent_svc.clone()],
        "sorted, each once"
    );
    let last_day = TimeWindow {
        start: Some(now.saturating_add_nanos(-24 * HOUR_NS)),
        end: Some(now),
    };
    assert_eq!(
        ours(
            store
                .reader
                .services(&last_day, 10_000)
                .await
                .expect("services")
        ),
        vec![recent_svc.clone()],
        "the old service is outside the window"
    );
    let days_ago = TimeWindow {
        start: Some(now.saturating_add_nanos(-96 * HOUR_NS)),
        end: Some(now.saturating_add_nanos(-48 * HOUR_NS)),
    };
    assert_eq!(
        ours(
            store
                .reader
                .services(&days_ago, 10_000)
                .await
                .expect("services")
        ),
        vec![old_svc.clone(), recent_svc.clone()]
    );
    let op = |name: &str, span_kind| Operation {
        name: name.to_string(),
        span_kind,
    };
    assert_eq!(
        store
            .reader
            .operations(&recent_svc, &all, 10_000)
            .await
            .expect("operations"),
        vec![
            op("backfill", SpanKind::Ingest),
            op("clean", SpanKind::Transform),
            op("load", SpanKind::Ingest),
            op("load", SpanKind::Client),
        ],
        "by name, then kind in declaration order; one entry per (name, kind)"
    );
    assert_eq!(
        store
            .reader
            .operations(&recent_svc, &last_day, 10_000)
            .await
            .expect("operations"),
        vec![
            op("clean", SpanKind::Transform),
            op("load", SpanKind::Ingest),
            op("load", SpanKind::Client),
        ]
    );
    assert_eq!(
        store
            .reader
            .operations(&recent_svc, &all, 2)
            .await
            .expect("operations")
            .len(),
        2,
        "limit cuts"
    );
    assert!(
        store
            .reader
            .operations(&unique("nobody"), &all, 10)
            .await
            .expect("operations")
            .is_empty()
    );
    let future = TimeWindow {
        start: Some(now.saturating_add_nanos(HOUR_NS)),
        end: None,
    };
    assert!(
        ours(
            store
                .reader
                .services(&future, 10_000)
                .await
                .expect("services")
        )
        .is_empty()
    );
}

fn typed(key: &str, op: &str, v: serde_json::Value) -> AttributeFilter {
    let v = (!v.is_null()).then_some(v);
    AttributeFilter::from_parts(key.to_string(), op, v.as_ref()).expect("valid filter")
}

/// Step kind and typed attribute filters (numbers, `!=`, regex, keys with `=`), all
/// evaluated on one span.
pub async fn search_by_kind_and_typed_attributes(store: StoreUnderTest<'_>) {
    use serde_json::json;
    let svc = unique("typed");
    let t0 = base_time();
    let (t1, t2, t3) = (fresh_trace_id(), fresh_trace_id(), fresh_trace_id());
    let mut a = simple_span(t1, 1, None, &svc, t0, 10);
    a.kind = SpanKind::Ingest;
    a.attributes = Attributes::from([
        ("rows".to_string(), AttributeValue::Int(1500)),
        ("ratio".to_string(), AttributeValue::Float(0.25)),
        ("a=b".to_string(), AttributeValue::from("x=y")),
        (
            "path".to_string(),
            AttributeValue::from("s3://lake/orders/dt=1"),
        ),
    ]);
    let mut b = simple_span(t2, 1, None, &svc, t0.saturating_add_nanos(10), 10);
    b.kind = SpanKind::Join;
    b.attributes = Attributes::from([
        ("rows".to_string(), AttributeValue::Int(20)),
        ("ratio".to_string(), AttributeValue::Float(2.5)),
        (
            "path".to_string(),
            AttributeValue::from("gs://lake/customers"),
        ),
        ("flag".to_string(), AttributeValue::Bool(true)),
    ]);
    let mut c = simple_span(t3, 1, None, &svc, t0.saturating_add_nanos(20), 10);
    c.kind = SpanKind::Join;
    c.attributes = Attributes::from([("rows".to_string(), AttributeValue::from("many"))]);
    store.write(vec![a, b, c].into()).await.expect("write");

    let ids = |kind: Option<SpanKind>, filters: Vec<AttributeFilter>| {
        let q = TraceQuery {
            service: Some(svc.clone()),
            kind,
            attributes: filters,
            ..TraceQuery::with_limit(10)
        };
        async move {
            let mut v: Vec<TraceId> = store.page_ids(&q).await;
            v.sort();
            v
        }
    };
    let sorted_ids = |mut v: Vec<TraceId>| {
        v.sort();
        v
    };
    assert_eq!(ids(Some(SpanKind::Ingest), vec![]).await, vec![t1], "kind");
    assert_eq!(
        ids(Some(SpanKind::Join), vec![]).await,
        sorted_ids(vec![t2, t3])
    );
    assert!(ids(Some(SpanKind::Publish), vec![]).await.is_empty());
    let one = |k: &str, op: &str, v: serde_json::Value| vec![typed(k, op, v)];
    assert_eq!(
        ids(None, one("rows", ">", json!(100))).await,
        vec![t1],
        "numbers compare as numbers, not text"
    );
    assert_eq!(
        ids(None, one("rows", ">=", json!(20))).await,
        sorted_ids(vec![t1, t2])
    );
    assert_eq!(ids(None, one("rows", "<", json!(1500))).await, vec![t2]);
    assert_eq!(
        ids(None, one("rows", "<=", json!(1500))).await,
        sorted_ids(vec![t1, t2])
    );
    assert_eq!(ids(None, one("rows", "=", json!(20))).await, vec![t2]);
    assert_eq!(
        ids(None, one("rows", "!=", json!(20))).await,
        vec![t1],
        "a non-number value never satisfies a numeric comparison"
    );
    assert_eq!(ids(None, one("ratio", "<", json!(1))).await, vec![t1]);
    assert_eq!(ids(None, one("ratio", ">", json!(0.3))).await, vec![t2]);
    assert_eq!(
        ids(None, one("a=b", "=", json!("x=y"))).await,
        vec![t1],
        "key with '='"
    );
    assert_eq!(ids(None, one("a=b", "exists", json!(null))).await, vec![t1]);
    assert!(
        ids(None, one("a", "exists", json!(null))).await.is_empty(),
        "no prefix match on keys"
    );
    assert_eq!(
        ids(None, one("rows", "!=", json!("many"))).await,
        sorted_ids(vec![t1, t2]),
        "!= as text needs the key: all three have rows"
    );
    assert!(ids(None, one("flag", "!=", json!("false"))).await == vec![t2]);
    assert_eq!(
        ids(None, one("path", "regex", json!("^s3://lake/"))).await,
        vec![t1]
    );
    assert_eq!(
        ids(
            None,
            one("path", "regex", json!("(?i)LAKE/(orders|customers)"))
        )
        .await,
        sorted_ids(vec![t1, t2])
    );
    assert_eq!(
        ids(None, one("path", "regex", json!("dt=\\d$"))).await,
        vec![t1]
    );
    assert!(
        ids(None, one("path", "regex", json!("^lake")))
            .await
            .is_empty(),
        "unanchored but ^ anchors"
    );
    assert_eq!(
        ids(
            Some(SpanKind::Join),
            vec![
                typed("rows", ">", json!(1)),
                typed("path", "regex", json!("customers"))
            ]
        )
        .await,
        vec![t2],
        "conjunction with kind"
    );
    assert!(
        ids(Some(SpanKind::Ingest), vec![typed("rows", "<", json!(100))])
            .await
            .is_empty(),
        "kind and attribute must hold on the same span"
    );
}

/// Duration bounds on each span (default) or on the whole trace.
pub async fn duration_scope_span_or_trace(store: StoreUnderTest<'_>) {
    let svc = unique("scope");
    let t0 = base_time();
    // Long trace made of short spans: 2 spans of 1 ms, 10 s apart.
    let long = fresh_trace_id();
    let short = fresh_trace_id();
    store
        .write(
            vec![
                simple_span(long, 1, None, &svc, t0, 1_000_000),
                simple_span(
                    long,
                    2,
                    Some(1),
                    &svc,
                    t0.saturating_add_nanos(10_000_000_000),
                    1_000_000,
                ),
                simple_span(short, 1, None, &svc, t0.saturating_add_nanos(5), 3_000_000),
            ]
            .into(),
        )
        .await
        .expect("write");
    let ids = |scope: DurationScope, min: Option<i64>, max: Option<i64>| {
        let q = TraceQuery {
            service: Some(svc.clone()),
            min_duration_nanos: min,
            max_duration_nanos: max,
            duration_scope: scope,
            ..TraceQuery::with_limit(10)
        };
        async move {
            let ids = store.page_ids(&q).await;
            // Jaeger's search takes only the ids, which backends may find without
            // summaries; a trace-duration filter still needs each trace's extent.
            assert_eq!(
                store.reader.search_ids(&q).await.expect("search ids"),
                ids,
                "search_ids answers the ids of the search's page ({q:?})"
            );
            ids
        }
    };
    assert!(
        ids(DurationScope::Span, Some(1_000_000_000), None)
            .await
            .is_empty(),
        "no single span lasts a second"
    );
    assert_eq!(
        ids(DurationScope::Trace, Some(1_000_000_000), None).await,
        vec![long],
        "the trace lasts ten seconds"
    );
    assert_eq!(
        ids(DurationScope::Trace, None, Some(5_000_000)).await,
        vec![short]
    );
    assert_eq!(
        ids(DurationScope::Span, Some(2_000_000), Some(5_000_000)).await,
        vec![short]
    );
    assert_eq!(
        ids(
            DurationScope::Trace,
            Some(10_001_000_000),
            Some(10_001_000_000)
        )
        .await,
        vec![long],
        "trace bounds are inclusive"
    );
}

/// Pages through results with cursors while spans keep arriving: every trace stored before
/// the first page appears exactly once, in order, and nothing stored later does; the last
/// page has no cursor.
pub async fn cursor_pages_are_complete_and_stable_under_concurrent_inserts(
    store: StoreUnderTest<'_>,
) {
    let svc = unique("pages");
    let t0 = base_time();
    let mut traces = Vec::new();
    let mut spans = Vec::new();
    // 24 traces; pairs share their latest start time so ties cross page boundaries.
    for i in 0..24i64 {
        let t = fresh_trace_id();
        traces.push(t);
        let at = t0.saturating_add_nanos((i / 2) * 1_000_000);
        spans.push(simple_span(t, 1, None, &svc, at, 10));
        // An older second span per trace: a trace has several matching rows.
        spans.push(simple_span(
            t,
            2,
            Some(1),
            &svc,
            at.saturating_add_nanos(-500_000),
            10,
        ));
    }
    store.write(spans.into()).await.expect("write");
    let base = TraceQuery {
        service: Some(svc.clone()),
        ..TraceQuery::with_limit(4)
    };
    let everything: Vec<TraceId> = store
        .page_ids(&TraceQuery {
            limit: 100,
            ..base.clone()
        })
        .await;
    assert_eq!(everything.len(), 24);

    let mut seen: Vec<TraceId> = Vec::new();
    let mut cursor = None;
    let mut pages = 0;
    let mut late = 100u64;
    loop {
        let q = TraceQuery {
            cursor,
            ..base.clone()
        };
        // Insert while the page is read, and again after it.
        let insert = |n: u64| {
            let idx = (pages * 5 + 3) % 24;
            let existing = traces[idx];
            vec![
                // A new trace newer than everything and one older than everything.
                simple_span(
                    fresh_trace_id(),
                    n,
                    None,
                    &svc,
                    t0.saturating_add_nanos(60_000_000_000),
                    10,
                ),
                simple_span(
                    fresh_trace_id(),
                    n + 1,
                    None,
                    &svc,
                    t0.saturating_add_nanos(-60_000_000_000),
                    10,
                ),
                // A new newest span for a stored trace, maybe one not listed yet: it must not
                // move that trace to a page already read.
                simple_span(
                    existing,
                    n + 2,
                    Some(1),
                    &svc,
                    t0.saturating_add_nanos(30_000_000_000 + n as i64),
                    10,
                ),
            ]
        };
        let page = if cursor.is_none() {
            store.search_page(&q).await
        } else {
            // From the second page on, read while a write is in flight: whichever finishes
            // first, the page reads the first page's snapshot.
            let (page, written) =
                join_both(store.search_page(&q), store.write(insert(late).into())).await;
            written.expect("concurrent write");
            late += 3;
            page
        };
        store
            .write(insert(late).into())
            .await
            .expect("write between pages");
        late += 3;
        let page = page.expect("page");
        pages += 1;
        assert!(page.traces.len() <= 4, "a page holds at most limit traces");
        seen.extend(page.traces.iter().map(|s| s.trace_id));
        match page.next_cursor {
            Some(c) => {
                assert_eq!(page.traces.len(), 4, "only the last page may be short");
                cursor = Some(c);
            }
            None => break,
        }
        assert!(pages < 20, "paging must end");
    }
    assert_eq!(
        seen, everything,
        "every stored trace, in order, exactly once"
    );
    assert_eq!(
        pages, 6,
        "24 traces in pages of 4, and no empty seventh page"
    );
}

/// A capped read returns the first spans by start time then span id, says whether more
/// exist, and counts a rewritten span once.
pub async fn capped_trace_reads_are_bounded_and_marked(store: StoreUnderTest<'_>) {
    let t = fresh_trace_id();
    let svc = unique("capped");
    let t0 = base_time();
    // Two spans per start time, so the span id breaks ties at the cut.
    let spans: Vec<Span> = (0..30u64)
        .map(|i| {
            simple_span(
                t,
                i,
                (i > 0).then_some(0),
                &svc,
                t0.saturating_add_nanos((i / 2) as i64),
                10,
            )
        })
        .collect();
    store.write(spans.clone().into()).await.expect("write");
    store
        .write(spans[..5].to_vec().into())
        .await
        .expect("rewrite");
    let expected = sorted(spans);
    let capped = |max: usize| async move {
        store
            .reader
            .get_trace_capped(t, max)
            .await
            .expect("capped read")
            .expect("trace exists")
    };
    let c = capped(11).await;
    assert!(c.truncated);
    assert_eq!(
        c.spans,
        expected[..11].to_vec(),
        "the first 11 by (start, span id)"
    );
    let c = capped(30).await;
    assert!(!c.truncated, "exactly the cap is not truncated");
    assert_eq!(c.spans, expected);
    assert!(!capped(1000).await.truncated);
    assert!(capped(1).await.truncated);
    assert!(
        store
            .reader
            .get_trace_capped(fresh_trace_id(), 10)
            .await
            .expect("read")
            .is_none()
    );
}

/// `get_traces_capped` answers like its definition, a loop of capped reads sharing one
/// budget: traces in the order asked, unknown and repeated ids dropped, the trace where the
/// budget ends cut and marked, none after it; rewritten spans count once.
pub async fn several_traces_read_at_once_share_one_budget(store: StoreUnderTest<'_>) {
    let svc = unique("batch");
    let t0 = base_time();
    let sizes = [5u64, 3, 4];
    let ids: Vec<TraceId> = sizes.iter().map(|_| fresh_trace_id()).collect();
    let mut all = Vec::new();
    for (t, n) in ids.iter().zip(sizes) {
        all.extend((0..n).map(|i| {
            simple_span(
                *t,
                i,
                (i > 0).then_some(0),
                &svc,
                t0.saturating_add_nanos(i as i64),
                10,
            )
        }));
    }
    store.write(all.clone().into()).await.expect("write");
    store
        .write(all[..4].to_vec().into())
        .await
        .expect("rewrite");
    let whole = |t: TraceId| sorted(all.iter().filter(|s| s.trace_id == t).cloned().collect());
    let [a, b, c] = [ids[0], ids[1], ids[2]];
    let unknown = fresh_trace_id();
    let read = |asked: Vec<TraceId>, max: usize| async move {
        let batched = store
            .reader
            .get_traces_capped(&asked, max)
            .await
            .expect("batched read");
        let looped = datatracing_store::read_traces_one_by_one(store.reader, &asked, max)
            .await
            .expect("looped read");
        assert_eq!(
            batched, looped,
            "{max} spans over {asked:?}: batched = loop"
        );
        batched
    };

    let got = read(vec![b, unknown, a, c, b], 100).await;
    let order: Vec<TraceId> = got.iter().map(|(t, _)| *t).collect();
    assert_eq!(
        order,
        vec![b, a, c],
        "asked order, unknown and repeated dropped"
    );
    for (t, capped) in &got {
        assert!(!capped.truncated);
        assert_eq!(capped.spans, whole(*t), "every span once, in order");
    }
    assert_eq!(
        read(vec![a, b, c], 12).await.len(),
        3,
        "exactly the budget fits"
    );

    let got = read(vec![a, b, c], 6).await;
    assert_eq!(got.len(), 2, "nothing after the budget ends: {got:?}");
    assert!(!got[0].1.truncated);
    assert_eq!(got[1].0, b);
    assert!(
        got[1].1.truncated,
        "the trace where the budget ends is marked"
    );
    assert_eq!(got[1].1.spans, whole(b)[..1].to_vec());

    let got = read(vec![a, b], 5).await;
    assert_eq!(got.len(), 1, "a spent budget reads no more");
    assert!(read(vec![unknown], 10).await.is_empty());
    assert!(read(vec![a], 0).await.is_empty());
    assert!(read(Vec::new(), 10).await.is_empty());
}

/// A trace larger than any page is read whole through span pages: every span exactly
/// once, in (start, span id) order, whatever the page size, ties on start time included;
/// a span rewritten in between is not read twice; the page after the last span is empty.
pub async fn a_truncated_trace_is_paged_completely(store: StoreUnderTest<'_>) {
    let t = fresh_trace_id();
    let svc = unique("paged");
    let t0 = base_time();
    // Three spans per start time, so page boundaries fall inside ties.
    let spans: Vec<Span> = (0..250u64)
        .map(|i| {
            simple_span(
                t,
                i,
                (i > 0).then_some(0),
                &svc,
                t0.saturating_add_nanos((i / 3) as i64),
                10,
            )
        })
        .collect();
    // Written in two batches out of order.
    store
        .write(spans[100..].to_vec().into())
        .await
        .expect("write");
    store
        .write(spans[..100].to_vec().into())
        .await
        .expect("write");
    let expected = sorted(spans.clone());
    let capped = store
        .reader
        .get_trace_capped(t, 40)
        .await
        .expect("capped")
        .expect("exists");
    assert!(capped.truncated);
    for page_size in [1usize, 7, 40, 249, 250, 1000] {
        let mut got: Vec<Span> = Vec::new();
        let mut after = None;
        let mut pages = 0;
        loop {
            let page = store
                .reader
                .trace_spans(t, after, page_size)
                .await
                .expect("page");
            assert!(page.len() <= page_size, "a page holds at most the limit");
            pages += 1;
            assert!(pages <= 251, "paging terminates");
            let Some(last) = page.last() else { break };
            after = Some(datatracing_core::SpanCursor::after(last));
            if pages == 2 {
                // A rewrite of spans already read does not bring them back.
                store
                    .write(spans[..3].to_vec().into())
                    .await
                    .expect("rewrite");
            }
            got.extend(page);
        }
        assert_eq!(
            got.len(),
            expected.len(),
            "page size {page_size}: no gap, no duplicate"
        );
        assert_eq!(
            got, expected,
            "page size {page_size}: the order of get_trace"
        );
    }
    // Continuing the capped read from its last span gives the rest.
    let rest = store
        .reader
        .trace_spans(
            t,
            capped.spans.last().map(datatracing_core::SpanCursor::after),
            1000,
        )
        .await
        .expect("rest");
    assert_eq!(rest, expected[40..].to_vec());
    assert!(
        store
            .reader
            .trace_spans(fresh_trace_id(), None, 10)
            .await
            .expect("unknown")
            .is_empty()
    );
    assert!(
        store
            .reader
            .trace_spans(t, None, 0)
            .await
            .expect("zero")
            .is_empty()
    );
}

/// Polls two futures together (a tiny `join`, to keep dependencies lean).
async fn join_both<A: std::future::Future, B: std::future::Future>(
    a: A,
    b: B,
) -> (A::Output, B::Output) {
    let mut a = Box::pin(a);
    let mut b = Box::pin(b);
    let (mut ra, mut rb) = (None, None);
    std::future::poll_fn(|cx| {
        if ra.is_none()
            && let std::task::Poll::Ready(v) = a.as_mut().poll(cx)
        {
            ra = Some(v);
        }
        if rb.is_none()
            && let std::task::Poll::Ready(v) = b.as_mut().poll(cx)
        {
            rb = Some(v);
        }
        if ra.is_some() && rb.is_some() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    match (ra, rb) {
        (Some(a), Some(b)) => (a, b),
        _ => unreachable!("both completed"),
    }
}

/// Awaits every future concurrently (a tiny `join_all`, to keep dependencies lean).
async fn futures_join_all<F: std::future::Future>(futs: Vec<F>) -> Vec<F::Output> {
    use std::task::Poll;
    let mut futs: Vec<std::pin::Pin<Box<F>>> = futs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, slot) in futs.iter_mut().zip(out.iter_mut()) {
            if slot.is_none() {
                match f.as_mut().poll(cx) {
                    Poll::Ready(v) => *slot = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    out.into_iter().flatten().collect()
}

/// A link from a span to a span of another trace.
fn link_to(trace_id: TraceId, id: u64, link_type: LinkType) -> Link {
    Link {
        trace_id,
        span_id: span_id(id),
        link_type,
        attributes: Attributes::new(),
    }
}

fn edge(from: TraceId, from_span: u64, to: TraceId, to_span: u64, t: LinkType) -> CrossLink {
    CrossLink {
        from_trace: from,
        from_span: span_id(from_span),
        to_trace: to,
        to_span: span_id(to_span),
        link_type: t,
        dataset: None,
    }
}

async fn walk(
    store: &StoreUnderTest<'_>,
    root: TraceId,
    direction: Direction,
    max_depth: usize,
    max_nodes: usize,
) -> Lineage {
    datatracing_store::lineage(
        store.reader,
        root,
        direction,
        LineageLimits {
            max_depth,
            max_nodes,
        },
        None,
    )
    .await
    .expect("lineage")
    .expect("the root is stored")
}

fn node_depths(l: &Lineage) -> Vec<(TraceId, usize, bool)> {
    l.nodes
        .iter()
        .map(|n| (n.trace_id, n.depth, n.stored))
        .collect()
}

/// Four traces: B follows from A, C depends on B and on a trace that is not stored (X),
/// A follows from C (a cycle across traces), D has A as an extra parent (CHILD_OF, not
/// lineage), and A links within itself (not lineage either).
struct LineageFixture {
    a: TraceId,
    b: TraceId,
    c: TraceId,
    d: TraceId,
    x: TraceId,
}

async fn write_lineage_fixture(store: &StoreUnderTest<'_>) -> LineageFixture {
    let f = LineageFixture {
        a: fresh_trace_id(),
        b: fresh_trace_id(),
        c: fresh_trace_id(),
        d: fresh_trace_id(),
        x: fresh_trace_id(),
    };
    let svc = unique("lineage");
    let t0 = base_time();
    let mut a1 = simple_span(f.a, 1, None, &svc, t0, 10);
    a1.links = vec![link_to(f.c, 1, LinkType::FollowsFrom)];
    let mut a2 = simple_span(f.a, 2, Some(1), &svc, t0, 5);
    a2.links = vec![link_to(f.a, 1, LinkType::FollowsFrom)];
    let mut b1 = simple_span(f.b, 1, None, &svc, t0.saturating_add_nanos(100), 10);
    b1.links = vec![link_to(f.a, 1, LinkType::FollowsFrom)];
    let mut c1 = simple_span(f.c, 1, None, &svc, t0.saturating_add_nanos(200), 10);
    c1.links = vec![
        link_to(f.b, 1, LinkType::DataDependency),
        link_to(f.x, 7, LinkType::DataDependency),
    ];
    let mut d1 = simple_span(f.d, 1, None, &svc, t0.saturating_add_nanos(300), 10);
    d1.links = vec![link_to(f.a, 1, LinkType::ChildOf)];
    // Separate batches: the reverse index must join links across writes.
    store.write(vec![a1, a2].into()).await.expect("write a");
    store.write(vec![b1].into()).await.expect("write b");
    store.write(vec![c1, d1].into()).await.expect("write c, d");
    f
}

/// Upstream follows declared links, downstream the reverse index; the edge closing a cycle
/// is reported once and the walk ends; a dangling target is a node that is not stored;
/// CHILD_OF and same-trace links are not lineage; an unknown root is `None`.
pub async fn lineage_walks_both_ways_through_cycles_and_dangling_links(store: StoreUnderTest<'_>) {
    use LinkType::{DataDependency as Dd, FollowsFrom as Ff};
    let f = write_lineage_fixture(&store).await;

    let raw = store.reader.links_to(&[f.a], 100).await.expect("links_to");
    assert_eq!(
        raw.len(),
        2,
        "the reverse index holds B's FOLLOWS_FROM and D's CHILD_OF, not A's own link: {raw:?}"
    );
    let from_c = store
        .reader
        .links_from(&[f.c], 100)
        .await
        .expect("links_from");
    assert_eq!(from_c, {
        let mut v = vec![edge(f.c, 1, f.b, 1, Dd), edge(f.c, 1, f.x, 7, Dd)];
        v.sort();
        v
    });

    let down = walk(&store, f.a, Direction::Downstream, 5, 100).await;
    assert_eq!(
        node_depths(&down),
        vec![(f.a, 0, true), (f.b, 1, true), (f.c, 2, true)],
        "D's CHILD_OF link is not lineage"
    );
    let mut want = vec![
        edge(f.b, 1, f.a, 1, Ff),
        edge(f.c, 1, f.b, 1, Dd),
        edge(f.a, 1, f.c, 1, Ff),
    ];
    want.sort();
    assert_eq!(
        down.edges, want,
        "the cycle's closing edge is reported once"
    );
    assert!(!down.truncated, "the cycle ended the walk, no bound did");
    assert_eq!(
        down.nodes[0].summary.as_ref().map(|s| s.span_count),
        Some(2)
    );

    let up = walk(&store, f.a, Direction::Upstream, 5, 100).await;
    let mut nodes = node_depths(&up);
    nodes.sort_by_key(|n| (n.1, n.0));
    let mut want_nodes = vec![
        (f.a, 0, true),
        (f.c, 1, true),
        (f.b, 2, true),
        (f.x, 2, false),
    ];
    want_nodes.sort_by_key(|n| (n.1, n.0));
    assert_eq!(nodes, want_nodes, "X is dangling: linked, not stored");
    assert!(up.nodes.iter().all(|n| n.stored == n.summary.is_some()));
    let mut want = vec![
        edge(f.a, 1, f.c, 1, Ff),
        edge(f.c, 1, f.b, 1, Dd),
        edge(f.c, 1, f.x, 7, Dd),
        edge(f.b, 1, f.a, 1, Ff),
    ];
    want.sort();
    assert_eq!(up.edges, want);
    assert!(!up.truncated);

    // Both ways from B: A upstream, C downstream, each one hop away.
    let both = walk(&store, f.b, Direction::Both, 1, 100).await;
    let mut nodes = node_depths(&both);
    nodes.sort();
    let mut want_nodes = vec![(f.b, 0, true), (f.a, 1, true), (f.c, 1, true)];
    want_nodes.sort();
    assert_eq!(nodes, want_nodes);
    assert!(
        both.edges.contains(&edge(f.a, 1, f.c, 1, Ff)),
        "an edge between two nodes of the graph found at the depth bound is kept: {:?}",
        both.edges
    );

    let none = datatracing_store::lineage(
        store.reader,
        fresh_trace_id(),
        Direction::Both,
        LineageLimits {
            max_depth: 3,
            max_nodes: 10,
        },
        None,
    )
    .await
    .expect("lineage of an unknown trace");
    assert!(none.is_none(), "an unknown root is not an empty graph");
    let _ = f.d;
}

/// A depth or node bound that leaves links unexplored says so; one that cuts nothing does not.
pub async fn lineage_depth_and_node_caps_mark_truncation(store: StoreUnderTest<'_>) {
    let f = write_lineage_fixture(&store).await;
    let shallow = walk(&store, f.a, Direction::Downstream, 1, 100).await;
    assert_eq!(node_depths(&shallow), vec![(f.a, 0, true), (f.b, 1, true)]);
    assert_eq!(
        shallow.edges,
        vec![edge(f.b, 1, f.a, 1, LinkType::FollowsFrom)],
        "no edge to a trace beyond the bound"
    );
    assert!(shallow.truncated, "C is one hop beyond the depth bound");

    let exact = walk(&store, f.a, Direction::Downstream, 2, 100).await;
    assert_eq!(exact.nodes.len(), 3);
    assert!(
        !exact.truncated,
        "at depth 2 the only link past the bound returns to A, already in the graph"
    );

    let narrow = walk(&store, f.a, Direction::Upstream, 5, 2).await;
    assert_eq!(node_depths(&narrow), vec![(f.a, 0, true), (f.c, 1, true)]);
    assert!(narrow.truncated, "B and X did not fit in two nodes");
    assert!(
        narrow
            .edges
            .iter()
            .all(|e| [f.a, f.c].contains(&e.from_trace) && [f.a, f.c].contains(&e.to_trace)),
        "edges stay within the graph: {:?}",
        narrow.edges
    );
    let single = walk(&store, f.d, Direction::Both, 3, 100).await;
    assert_eq!(node_depths(&single), vec![(f.d, 0, true)], "CHILD_OF only");
    assert!(!single.truncated);
}

/// The pipeline conventions' datasets (docs/conventions.md): the `dataset` search filter
/// finds the traces that read or wrote a dataset, the `contains` attribute operator matches
/// an element of an array attribute, and lineage carries the dataset each link names in
/// both directions (downstream reads it from the reverse-link index), groups its edges by
/// dataset, and can follow one dataset only.
pub async fn datasets_in_search_and_lineage(store: StoreUnderTest<'_>) {
    use datatracing_core::conventions::{DATASET_INPUTS, DATASET_OUTPUTS, LINK_DATASET};
    let svc = unique("datasets");
    let orders = unique("lake.orders");
    let customers = unique("lake.customers");
    let t0 = base_time();
    let list =
        |names: &[&str]| AttributeValue::StringArray(names.iter().map(|n| n.to_string()).collect());
    let (p, q, r, c) = (
        fresh_trace_id(),
        fresh_trace_id(),
        fresh_trace_id(),
        fresh_trace_id(),
    );
    let mut sp = simple_span(p, 1, None, &svc, t0, 10);
    sp.attributes
        .insert(DATASET_OUTPUTS.into(), list(&[&orders]));
    let mut sq = simple_span(q, 1, None, &svc, t0.saturating_add_nanos(1), 10);
    // A producer that wrote the name as a single string, not a list.
    sq.attributes.insert(
        DATASET_OUTPUTS.into(),
        AttributeValue::String(customers.clone()),
    );
    let sr = simple_span(r, 1, None, &svc, t0.saturating_add_nanos(2), 10);
    let mut sc = simple_span(c, 1, None, &svc, t0.saturating_add_nanos(3), 10);
    sc.attributes
        .insert(DATASET_INPUTS.into(), list(&[&orders, &customers]));
    sc.attributes
        .insert("partitions".into(), AttributeValue::IntArray(vec![3, 17]));
    let named = |trace, ds: &str| {
        let mut l = link_to(trace, 1, LinkType::DataDependency);
        l.attributes
            .insert(LINK_DATASET.into(), AttributeValue::String(ds.to_string()));
        l
    };
    sc.links = vec![
        named(p, &orders),
        named(q, &customers),
        link_to(r, 1, LinkType::FollowsFrom),
    ];
    store
        .write(vec![sp, sq, sr, sc].into())
        .await
        .expect("write");

    let found = |query: TraceQuery| async move {
        let mut v: Vec<TraceId> = store.page_ids(&query).await;
        v.sort();
        v
    };
    let sorted = |mut v: Vec<TraceId>| {
        v.sort();
        v
    };
    let by_dataset = |d: &str| TraceQuery {
        dataset: Some(d.to_string()),
        ..TraceQuery::with_limit(10)
    };
    assert_eq!(found(by_dataset(&orders)).await, sorted(vec![p, c]));
    assert_eq!(
        found(by_dataset(&customers)).await,
        sorted(vec![q, c]),
        "a single-string dataset attribute counts"
    );
    assert!(found(by_dataset(&unique("lake.none"))).await.is_empty());
    let contains = |key: &str, v: &str| TraceQuery {
        service: Some(svc.clone()),
        attributes: vec![
            AttributeFilter::from_parts(
                key.to_string(),
                "contains",
                Some(&serde_json::Value::String(v.to_string())),
            )
            .expect("a contains filter"),
        ],
        ..TraceQuery::with_limit(10)
    };
    assert_eq!(found(contains(DATASET_INPUTS, &customers)).await, vec![c]);
    assert_eq!(
        found(contains(DATASET_OUTPUTS, &customers)).await,
        vec![q],
        "a scalar contains itself"
    );
    assert_eq!(found(contains("partitions", "17")).await, vec![c]);
    assert!(
        found(contains("partitions", "1")).await.is_empty(),
        "whole elements only"
    );
    assert!(
        found(contains(DATASET_INPUTS, &orders[..orders.len() - 1]))
            .await
            .is_empty(),
        "no substring match"
    );

    let upstream = walk(&store, c, Direction::Upstream, 2, 10).await;
    let mut datasets: Vec<(TraceId, Option<String>)> = upstream
        .edges
        .iter()
        .map(|e| (e.to_trace, e.dataset.clone()))
        .collect();
    datasets.sort();
    let mut want = vec![
        (p, Some(orders.clone())),
        (q, Some(customers.clone())),
        (r, None),
    ];
    want.sort();
    assert_eq!(datasets, want, "upstream edges carry their datasets");
    let groups: Vec<(String, Vec<TraceId>, Vec<TraceId>)> = upstream
        .datasets
        .iter()
        .map(|g| (g.name.clone(), g.producers.clone(), g.consumers.clone()))
        .collect();
    let mut want = vec![
        (orders.clone(), vec![p], vec![c]),
        (customers.clone(), vec![q], vec![c]),
    ];
    want.sort();
    assert_eq!(groups, want, "edges grouped by dataset");
    let down = walk(&store, p, Direction::Downstream, 2, 10).await;
    assert_eq!(
        down.edges
            .iter()
            .map(|e| (e.from_trace, e.dataset.clone()))
            .collect::<Vec<_>>(),
        vec![(c, Some(orders.clone()))],
        "downstream edges carry the dataset from the reverse-link index"
    );
    let only_orders = datatracing_store::lineage(
        store.reader,
        c,
        Direction::Upstream,
        LineageLimits {
            max_depth: 2,
            max_nodes: 10,
        },
        Some(&orders),
    )
    .await
    .expect("lineage")
    .expect("stored");
    assert_eq!(
        node_depths(&only_orders),
        sorted_depths(vec![(c, 0, true), (p, 1, true)]),
        "one dataset's lineage"
    );
    assert_eq!(only_orders.dataset.as_deref(), Some(orders.as_str()));
}

fn sorted_depths(mut v: Vec<(TraceId, usize, bool)>) -> Vec<(TraceId, usize, bool)> {
    v.sort_by_key(|(t, d, _)| (*d, *t));
    v
}

/// `linked_trace` / `linked_service` select traces with a span linking to that trace / to a
/// stored span of that service in another trace; they combine with the other filters on
/// the same span, and page with cursors without duplicates or gaps.
pub async fn search_by_link_target_pages_with_cursors(store: StoreUnderTest<'_>) {
    let producer_svc = unique("producer");
    let consumer_svc = unique("consumer");
    let other_svc = unique("side");
    let t0 = base_time();
    let target = fresh_trace_id();
    let other = fresh_trace_id();
    let dangling = fresh_trace_id();
    let mut spans = vec![
        simple_span(target, 1, None, &producer_svc, t0, 10),
        simple_span(other, 1, None, &other_svc, t0, 10),
    ];
    // Seven consumers of the target, newest last; the first two link from an ERROR span.
    let mut consumers = Vec::new();
    for i in 0..7i64 {
        let t = fresh_trace_id();
        consumers.push(t);
        let at = t0.saturating_add_nanos(1_000_000 * (i + 1));
        let mut s = simple_span(t, 1, None, &consumer_svc, at, 10);
        s.links = vec![link_to(target, 1, LinkType::DataDependency)];
        if i < 2 {
            s.status = Status::new(StatusCode::Error);
        }
        spans.push(s);
    }
    // Links to the other trace, to a trace not stored, and within its own trace only.
    let to_other = fresh_trace_id();
    let mut s = simple_span(
        to_other,
        1,
        None,
        &consumer_svc,
        t0.saturating_add_nanos(50),
        10,
    );
    s.links = vec![link_to(other, 1, LinkType::FollowsFrom)];
    spans.push(s);
    let to_dangling = fresh_trace_id();
    let mut s = simple_span(
        to_dangling,
        1,
        None,
        &consumer_svc,
        t0.saturating_add_nanos(60),
        10,
    );
    s.links = vec![link_to(dangling, 1, LinkType::FollowsFrom)];
    spans.push(s);
    let self_linked = fresh_trace_id();
    let mut s = simple_span(
        self_linked,
        2,
        None,
        &producer_svc,
        t0.saturating_add_nanos(70),
        10,
    );
    s.links = vec![link_to(self_linked, 1, LinkType::FollowsFrom)];
    spans.push(s);
    spans.push(simple_span(self_linked, 1, None, &producer_svc, t0, 10));
    // The link and the ERROR status on different spans: no single span matches both.
    let split = fresh_trace_id();
    let mut s = simple_span(
        split,
        1,
        None,
        &consumer_svc,
        t0.saturating_add_nanos(80),
        10,
    );
    s.links = vec![link_to(target, 1, LinkType::FollowsFrom)];
    let mut e = simple_span(
        split,
        2,
        Some(1),
        &consumer_svc,
        t0.saturating_add_nanos(90),
        10,
    );
    e.status = Status::new(StatusCode::Error);
    spans.extend([s, e]);
    store.write(spans.into()).await.expect("write");

    let ids = |v: Vec<TraceSummary>| v.into_iter().map(|s| s.trace_id).collect::<Vec<_>>();
    let newest_first = |v: &[TraceId]| v.iter().rev().copied().collect::<Vec<_>>();
    let mut all_target = consumers.clone();
    all_target.insert(0, split);
    let by_trace = TraceQuery {
        linked_trace: Some(target),
        ..TraceQuery::with_limit(3)
    };
    // Page through with concurrent inserts of new consumers between pages.
    let mut seen = Vec::new();
    let mut cursor = None;
    for page_no in 0.. {
        assert!(page_no < 10, "paging must end");
        let page = store
            .search_page(&TraceQuery {
                cursor,
                ..by_trace.clone()
            })
            .await
            .expect("page");
        let mut late = simple_span(
            fresh_trace_id(),
            1,
            None,
            &consumer_svc,
            // Older than every consumer, so the windowed query below excludes it too.
            t0.saturating_add_nanos(-10_000_000 - page_no),
            10,
        );
        late.links = vec![link_to(target, 1, LinkType::FollowsFrom)];
        store.write(vec![late].into()).await.expect("late write");
        seen.extend(page.traces.iter().map(|s| s.trace_id));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(
        seen,
        newest_first(&all_target),
        "every trace linking to the target, newest first, once, none inserted after page one"
    );

    let by_service = TraceQuery {
        linked_service: Some(producer_svc.clone()),
        start: Some(t0.saturating_add_nanos(-1)),
        end: Some(t0.saturating_add_nanos(100_000_000)),
        ..TraceQuery::with_limit(100)
    };
    assert_eq!(
        ids(store.search(&by_service).await.expect("by service")),
        newest_first(&all_target),
        "a link within the trace does not count, so self_linked is not listed"
    );
    assert_eq!(
        ids(store
            .search(&TraceQuery {
                linked_service: Some(other_svc.clone()),
                ..TraceQuery::with_limit(10)
            })
            .await
            .expect("other service")),
        vec![to_other]
    );
    assert_eq!(
        ids(store
            .search(&TraceQuery {
                linked_trace: Some(dangling),
                ..TraceQuery::with_limit(10)
            })
            .await
            .expect("dangling target")),
        vec![to_dangling],
        "a link to a trace that is not stored still matches linked_trace"
    );
    assert_eq!(
        ids(store
            .search(&TraceQuery {
                status: Some(StatusCode::Error),
                ..by_trace.clone()
            })
            .await
            .expect("combined")),
        newest_first(&consumers[..2]),
        "the link and the status must be on one span: split is not listed"
    );
    assert!(
        store
            .search(&TraceQuery {
                linked_trace: Some(target),
                service: Some(producer_svc.clone()),
                ..TraceQuery::with_limit(10)
            })
            .await
            .expect("no match")
            .is_empty()
    );
    assert!(
        store
            .search(&TraceQuery {
                linked_service: Some(unique("nobody")),
                ..TraceQuery::with_limit(10)
            })
            .await
            .expect("unknown service")
            .is_empty()
    );
}

/// Tenants (ADR 0010): the same trace and span ids written for two tenants are two traces,
/// and every reader method of one tenant's handle answers from that tenant's spans only:
/// a trace held only by another tenant is answered as unknown, lineage does not walk into
/// it, and the default tenant (the handle a backend opens) sees neither.
pub async fn tenants_are_isolated(store: StoreUnderTest<'_>) {
    let alpha = Tenant::parse("contract-alpha").unwrap();
    let beta = Tenant::parse("contract-beta").unwrap();
    let (t, d, e, only_a) = (
        fresh_trace_id(),
        fresh_trace_id(),
        fresh_trace_id(),
        fresh_trace_id(),
    );
    let (sa, sb) = (unique("tenant-a"), unique("tenant-b"));
    let t0 = base_time();
    let stamped = |tenant: &Tenant, mut s: Span| {
        tenant.stamp(&mut s);
        s
    };
    // Alpha: T, D following from T, and a trace only alpha has.
    let mut d1 = simple_span(d, 1, None, &sa, t0.saturating_add_nanos(100), 10);
    d1.links = vec![link_to(t, 1, LinkType::FollowsFrom)];
    let alpha_spans: Vec<Span> = vec![
        simple_span(t, 1, None, &sa, t0, 10),
        simple_span(t, 2, Some(1), &sa, t0, 5),
        d1,
        simple_span(only_a, 1, None, &sa, t0, 10),
    ]
    .into_iter()
    .map(|s| stamped(&alpha, s))
    .collect();
    // Beta: the same ids for T (one span, another service), E following from T and
    // depending on alpha's trace.
    let mut e1 = simple_span(e, 1, None, &sb, t0.saturating_add_nanos(200), 10);
    e1.links = vec![
        link_to(t, 1, LinkType::FollowsFrom),
        link_to(only_a, 1, LinkType::DataDependency),
    ];
    let beta_spans: Vec<Span> = vec![simple_span(t, 1, None, &sb, t0, 20), e1]
        .into_iter()
        .map(|s| stamped(&beta, s))
        .collect();
    store.write(alpha_spans.into()).await.expect("write alpha");
    store
        .write(beta_spans.clone().into())
        .await
        .expect("write beta");
    // A retry of beta's batch stays beta's, and does not touch alpha's copy.
    store.write(beta_spans.into()).await.expect("rewrite beta");

    let a = store.reader.for_tenant(&alpha);
    let b = store.reader.for_tenant(&beta);
    let services_of = |spans: &[Span]| {
        let mut s: Vec<String> = spans.iter().map(|s| s.service.clone()).collect();
        s.dedup();
        s
    };

    // Traces, whole, capped, several at once and paged.
    let ta = a.get_trace(t).await.unwrap().expect("alpha's T");
    assert_eq!((ta.len(), services_of(&ta)), (2, vec![sa.clone()]));
    let tb = b.get_trace(t).await.unwrap().expect("beta's T");
    assert_eq!((tb.len(), services_of(&tb)), (1, vec![sb.clone()]));
    assert_eq!(
        Tenant::of_span(&tb[0]),
        "contract-beta",
        "the tenant is kept with the span"
    );
    assert!(a.get_trace(e).await.unwrap().is_none(), "beta's E");
    assert!(
        b.get_trace(only_a).await.unwrap().is_none(),
        "alpha's trace"
    );
    assert!(b.get_trace_capped(only_a, 10).await.unwrap().is_none());
    assert_eq!(a.get_trace_capped(t, 10).await.unwrap().unwrap().spans, ta);
    let several = b.get_traces_capped(&[only_a, t, d, e], 100).await.unwrap();
    assert_eq!(
        several.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        vec![t, e]
    );
    assert_eq!(several[0].1.spans, tb);
    assert_eq!(a.trace_spans(t, None, 10).await.unwrap(), ta);
    assert!(a.trace_spans(e, None, 10).await.unwrap().is_empty());

    // Search, by service, by link target, and the ids-only variant.
    let by_service = |svc: &str| TraceQuery {
        service: Some(svc.to_string()),
        ..TraceQuery::with_limit(10)
    };
    let ids = |p: SearchPage| p.traces.iter().map(|s| s.trace_id).collect::<Vec<_>>();
    assert!(ids(a.search(&by_service(&sb)).await.unwrap()).is_empty());
    assert!(ids(b.search(&by_service(&sa)).await.unwrap()).is_empty());
    let mut found = ids(a.search(&by_service(&sa)).await.unwrap());
    found.sort();
    let mut expected = vec![t, d, only_a];
    expected.sort();
    assert_eq!(found, expected);
    let page = b.search(&by_service(&sb)).await.unwrap();
    let t_summary = page.traces.iter().find(|s| s.trace_id == t).expect("T");
    assert_eq!(
        (t_summary.span_count, t_summary.services.clone()),
        (1, vec![sb.clone()]),
        "the summary counts beta's spans only"
    );
    assert!(b.search_ids(&by_service(&sa)).await.unwrap().is_empty());
    let linked = |target: TraceId| TraceQuery {
        linked_trace: Some(target),
        ..TraceQuery::with_limit(10)
    };
    assert_eq!(ids(a.search(&linked(t)).await.unwrap()), vec![d]);
    assert_eq!(ids(b.search(&linked(t)).await.unwrap()), vec![e]);
    let linked_service = |svc: &str| TraceQuery {
        linked_service: Some(svc.to_string()),
        ..TraceQuery::with_limit(10)
    };
    assert!(
        ids(b.search(&linked_service(&sa)).await.unwrap()).is_empty(),
        "beta's link into alpha's trace does not match alpha's service"
    );

    // Names.
    let all = TimeWindow::default();
    let a_services = a.services(&all, 10_000).await.unwrap();
    assert!(a_services.contains(&sa) && !a_services.contains(&sb));
    let b_services = b.services(&all, 10_000).await.unwrap();
    assert!(b_services.contains(&sb) && !b_services.contains(&sa));
    assert!(a.operations(&sb, &all, 100).await.unwrap().is_empty());
    assert!(!a.operations(&sa, &all, 100).await.unwrap().is_empty());

    // Summaries and links.
    let summaries = a.summaries(&[t, e, only_a]).await.unwrap();
    let mut got: Vec<(TraceId, u64)> = summaries
        .iter()
        .map(|s| (s.trace_id, s.span_count))
        .collect();
    got.sort();
    let mut want = vec![(t, 2), (only_a, 1)];
    want.sort();
    assert_eq!(got, want);
    assert_eq!(
        a.links_from(&[d, e], 100).await.unwrap(),
        vec![edge(d, 1, t, 1, LinkType::FollowsFrom)]
    );
    assert_eq!(
        a.links_to(&[t], 100).await.unwrap(),
        vec![edge(d, 1, t, 1, LinkType::FollowsFrom)]
    );
    assert!(
        a.links_to(&[only_a], 100).await.unwrap().is_empty(),
        "beta's link to alpha's trace is not alpha's"
    );

    // Lineage: each tenant walks its own graph; beta's link into alpha's trace is a
    // dangling edge, with no summary.
    let limits = LineageLimits {
        max_depth: 5,
        max_nodes: 50,
    };
    let la = datatracing_store::lineage(a.as_ref(), t, Direction::Both, limits, None)
        .await
        .unwrap()
        .expect("alpha's T");
    let mut nodes: Vec<TraceId> = la.nodes.iter().map(|n| n.trace_id).collect();
    nodes.sort();
    let mut want = vec![t, d];
    want.sort();
    assert_eq!(nodes, want, "alpha's lineage");
    let lb = datatracing_store::lineage(b.as_ref(), e, Direction::Upstream, limits, None)
        .await
        .unwrap()
        .expect("beta's E");
    let foreign = lb
        .nodes
        .iter()
        .find(|n| n.trace_id == only_a)
        .expect("the edge is beta's own");
    assert!(
        !foreign.stored && foreign.summary.is_none(),
        "alpha's trace is not read: {foreign:?}"
    );
    let beta_t = lb.nodes.iter().find(|n| n.trace_id == t).expect("T");
    assert_eq!(
        beta_t.summary.as_ref().map(|s| s.services.clone()),
        Some(vec![sb.clone()])
    );
    assert!(
        datatracing_store::lineage(a.as_ref(), e, Direction::Both, limits, None)
            .await
            .unwrap()
            .is_none(),
        "another tenant's root is unknown"
    );

    // The default tenant (the handle the backend opened) sees none of it.
    for id in [t, d, e, only_a] {
        assert!(store.get_trace(id).await.unwrap().is_none());
    }
    assert!(store.search(&by_service(&sa)).await.unwrap().is_empty());
    let default_services = store.reader.services(&all, 100_000).await.unwrap();
    assert!(!default_services.contains(&sa) && !default_services.contains(&sb));
    assert!(store.reader.links_to(&[t], 100).await.unwrap().is_empty());
}
