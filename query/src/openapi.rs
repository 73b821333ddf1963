//! The OpenAPI 3.1 document of the v1 API, generated from the code: the operations
//! (paths, parameters, status codes) from the `#[utoipa::path]` attributes on the handlers
//! in `api`, and every body schema from the `schemars` derives on the types the handlers
//! really serialize and parse (these response types, `SearchBody`, and the core and store
//! types inside them), so the document cannot describe a field the code does not have.
//! utoipa refers to each body by name; the schemas themselves come from schemars (JSON
//! Schema 2020-12, which OpenAPI 3.1 uses as is) under `components.schemas`.
//!
//! Served at `GET /api/v1/openapi.json` and committed as `docs/openapi.json`; the test
//! `query/tests/openapi.rs` fails when the two differ and says how to regenerate.

use std::sync::OnceLock;

use datatracing_core::{Operation, Span, TraceDag, TraceId, TraceSummary};
use datatracing_store::Lineage;
use schemars::JsonSchema;
use serde::Serialize;
use utoipa::OpenApi;

/// `GET /api/v1/traces/{id}`: the DAG and the truncation marker.
#[derive(Debug, Serialize, JsonSchema)]
pub(crate) struct TraceResponse {
    /// The reconstructed DAG.
    #[serde(flatten)]
    pub(crate) dag: TraceDag,
    /// Whether the trace has more spans than this body (cut at `query.max_trace_spans`).
    pub(crate) truncated: bool,
    /// The cap that cut it, when `truncated`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) max_spans: Option<usize>,
    /// When `truncated`: the URL of the spans after the last one here
    /// (`/api/v1/traces/{id}/spans?cursor=...`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) next_spans: Option<String>,
}

/// `GET /api/v1/traces/{id}/spans`: one page of a trace's spans.
#[derive(Debug, Serialize, JsonSchema)]
pub(crate) struct SpanPage {
    /// The trace.
    pub(crate) trace_id: TraceId,
    /// Spans by start time, then span id.
    pub(crate) spans: Vec<Span>,
    /// The page size used.
    pub(crate) limit: usize,
    /// Pass back as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) next_cursor: Option<String>,
}

/// A page of search results.
#[derive(Debug, Serialize, JsonSchema)]
pub(crate) struct SearchResponse {
    /// Matching traces, newest first (by their latest matching span).
    pub(crate) traces: Vec<TraceSummary>,
    /// The page size used.
    pub(crate) limit: usize,
    /// Whether duration filters applied to spans (`span`) or whole traces (`trace`).
    pub(crate) duration_scope: String,
    /// Pass back as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) next_cursor: Option<String>,
}

/// `GET /api/v1/services`.
#[derive(Debug, Serialize, JsonSchema)]
pub(crate) struct ServicesResponse {
    /// Service names, sorted.
    pub(crate) services: Vec<String>,
    /// Whether `limit` cut the list.
    pub(crate) truncated: bool,
}

/// `GET /api/v1/services/{service}/operations`.
#[derive(Debug, Serialize, JsonSchema)]
pub(crate) struct OperationsResponse {
    /// The service asked about.
    pub(crate) service: String,
    /// Its operations with their span kinds, sorted by name then kind.
    pub(crate) operations: Vec<Operation>,
    /// Whether `limit` cut the list.
    pub(crate) truncated: bool,
}

/// `GET /api/v1/traces/{id}/lineage`.
#[derive(Debug, Serialize, JsonSchema)]
pub(crate) struct LineageResponse {
    /// The graph.
    #[serde(flatten)]
    pub(crate) lineage: Lineage,
    /// `query.lineage.max_nodes`, the node bound in force.
    pub(crate) max_nodes: usize,
}

/// `GET /api/v1/dependencies`: the pipeline map and the window it covers.
#[derive(Debug, Serialize, JsonSchema)]
pub(crate) struct DependenciesResponse {
    /// Services, edges and how much was read.
    #[serde(flatten)]
    pub(crate) map: crate::dependencies::Dependencies,
    /// Window start, RFC 3339.
    pub(crate) start: String,
    /// Window end, RFC 3339.
    pub(crate) end: String,
    /// Most traces one map reads; more leaves it `truncated`.
    pub(crate) max_traces: usize,
}

/// Every error of the v1 API (the shape `datatracing_http::ApiError` answers).
#[derive(Debug, JsonSchema)]
#[allow(dead_code)] // A schema only: `ApiError` builds the body.
pub(crate) struct ErrorEnvelope {
    /// The error.
    error: ErrorBody,
}

/// The inside of [`ErrorEnvelope`].
#[derive(Debug, JsonSchema)]
#[allow(dead_code)]
struct ErrorBody {
    /// Stable machine-readable code; clients switch on it, never on the message.
    code: ErrorCodeSchema,
    /// What went wrong, for people.
    message: String,
    /// Per-field details, when there are any.
    details: Vec<ErrorDetailSchema>,
}

/// The codes of `datatracing_http::ErrorCode`.
#[derive(Debug, JsonSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
enum ErrorCodeSchema {
    InvalidArgument,
    InvalidJson,
    InvalidSpans,
    NotFound,
    MethodNotAllowed,
    Unauthenticated,
    PermissionDenied,
    PayloadTooLarge,
    UnsupportedMediaType,
    ResourceExhausted,
    Unavailable,
    Timeout,
    Internal,
}

/// One detail of an error (`datatracing_http::ErrorDetail`).
#[derive(Debug, JsonSchema)]
#[allow(dead_code)]
struct ErrorDetailSchema {
    /// The field, as a path.
    field: String,
    /// What is wrong with it.
    message: String,
}

/// Lets a `#[utoipa::path]` name a body whose schema schemars generates: utoipa writes a
/// `$ref` to `components.schemas.<name>`, and [`document`] puts the schema there.
macro_rules! schemars_body {
    ($($t:ty => $name:literal),+ $(,)?) => {$(
        impl utoipa::PartialSchema for $t {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::Ref::from_schema_name($name).into()
            }
        }
        impl utoipa::ToSchema for $t {
            fn name() -> std::borrow::Cow<'static, str> {
                $name.into()
            }
        }
    )+};
}

schemars_body!(
    TraceResponse => "TraceResponse",
    SpanPage => "SpanPage",
    SearchResponse => "SearchResponse",
    ServicesResponse => "ServicesResponse",
    OperationsResponse => "OperationsResponse",
    LineageResponse => "LineageResponse",
    DependenciesResponse => "DependenciesResponse",
    ErrorEnvelope => "ErrorEnvelope",
    crate::api::SearchBody => "SearchBody",
);

#[derive(OpenApi)]
#[openapi(
    info(
        title = "DataTracing query API",
        description = "Trace DAGs, span pages, lineage across linked traces, search, the \
                       pipeline map and the service/operation listings. Every error is the one envelope \
                       (ErrorEnvelope); 429 and 503 carry Retry-After.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(
        crate::api::get_trace,
        crate::api::get_trace_spans,
        crate::api::get_lineage,
        crate::api::search,
        crate::api::search_body,
        crate::api::services,
        crate::api::operations,
        crate::dependencies::get_dependencies,
        openapi_json,
    )
)]
struct ApiDoc;

/// This document.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "meta",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API", content_type = "application/json")))]
#[allow(dead_code)] // Documents the route `lib.rs` serves.
fn openapi_json() {}

/// Adds the schemars schemas of every body (and the types inside them) to `doc`.
/// Declares the bearer token every route takes when `auth.tokens` is configured (scope
/// `query`); without tokens the server accepts requests without one, which OpenAPI
/// expresses with the empty alternative `{}`.
fn with_bearer_auth(mut doc: serde_json::Value) -> serde_json::Value {
    if let Some(o) = doc.as_object_mut() {
        if let Some(c) = o
            .entry("components")
            .or_insert_with(|| serde_json::json!({}))
            .as_object_mut()
        {
            c.insert(
                "securitySchemes".into(),
                serde_json::json!({"bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A token with the `query` scope (auth.tokens); 401 unauthenticated without a valid one, 403 permission_denied without the scope."
                }}),
            );
        }
        o.insert(
            "security".into(),
            serde_json::json!([{"bearerAuth": []}, {}]),
        );
    }
    doc
}

fn with_schemas(mut doc: serde_json::Value) -> serde_json::Value {
    let mut settings = schemars::generate::SchemaSettings::draft2020_12();
    settings.definitions_path = "/components/schemas".into();
    let mut generator = settings.into_generator();
    generator.subschema_for::<TraceResponse>();
    generator.subschema_for::<SpanPage>();
    generator.subschema_for::<SearchResponse>();
    generator.subschema_for::<ServicesResponse>();
    generator.subschema_for::<OperationsResponse>();
    generator.subschema_for::<LineageResponse>();
    generator.subschema_for::<DependenciesResponse>();
    generator.subschema_for::<ErrorEnvelope>();
    generator.subschema_for::<crate::api::SearchBody>();
    let schemas = generator.take_definitions(true);
    let components = doc
        .as_object_mut()
        .map(|o| {
            o.entry("components")
                .or_insert_with(|| serde_json::json!({}))
        })
        .and_then(|c| c.as_object_mut())
        .map(|c| c.entry("schemas").or_insert_with(|| serde_json::json!({})))
        .and_then(|s| s.as_object_mut());
    if let Some(out) = components {
        // utoipa registered each body as a reference to itself; the real schema replaces it.
        for (name, schema) in schemas {
            out.insert(name, schema);
        }
    }
    doc
}

/// The OpenAPI document, pretty-printed with a final newline (as committed).
pub fn document() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut doc = ApiDoc::openapi();
        doc.info.version = env!("CARGO_PKG_VERSION").to_string();
        let value = serde_json::to_value(&doc)
            .map(with_schemas)
            .map(with_bearer_auth)
            .unwrap_or_else(|e| serde_json::json!({"error": e.to_string()}));
        let mut text = serde_json::to_string_pretty(&value)
            .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
        text.push('\n');
        text
    })
}
