//! The DataTracing trace model, shared by every other crate.
//!
//! This crate has no I/O: it defines spans and their native JSON form, validation with
//! precise, path-addressed errors, trace DAG reconstruction, and the types of the search API.
//! Stores, the collector, the query service, the SDK and the operator all speak these types
//! (and the pipeline attribute names in [`conventions`]), so a change here is a change to the product's contract.

mod dag;
pub(crate) mod duration;
mod error;
mod ids;
mod query;
mod retry;
mod span;
mod tenant;
mod timestamp;
mod validate;

pub mod conventions;
pub mod policy;
pub mod schema;

pub use dag::{CrossTraceLink, DagEdge, EdgeType, SelfTime, TraceDag, UnresolvedLink};
pub use duration::{ConfigDuration, exponential_backoff, format_duration_ns, parse_duration_ns};
pub use error::{Error, Result};
pub use ids::{SpanId, TraceId};
pub use query::{
    AttributeFilter, AttributeMatcher, AttributeOp, DurationScope, MAX_NAMES, NumericOp, Operation,
    SearchCursor, SearchPage, SpanCursor, SummaryBuilder, TimeWindow, TraceQuery, TraceSummary,
};
pub use retry::RetryPolicy;
pub use span::{
    AttributeValue, Attributes, Event, Link, LinkType, Span, SpanKind, Status, StatusCode,
};
pub use tenant::{MAX_TENANT_LEN, TENANT_ATTRIBUTE, Tenant};
pub use timestamp::Timestamp;
pub use validate::{FieldError, Limits};
