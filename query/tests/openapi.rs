//! The OpenAPI document: generated from the code, committed as `docs/openapi.json` (drift
//! fails here), served at `/api/v1/openapi.json`, and covering every v1 route with its
//! parameters, bodies and error statuses, whose schemas all resolve.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;

use axum::http::StatusCode;
use datatracing_query::{QueryConfig, openapi_document};
use serde_json::Value;

use common::{embedded, fetch};

const REGENERATE: &str = "UPDATE_OPENAPI=1 cargo test -p datatracing-query --test openapi";

fn committed_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json")
}

#[test]
fn the_committed_document_is_the_generated_one() {
    let generated = openapi_document();
    let path = committed_path();
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, generated).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "docs/openapi.json differs from the document the code generates; regenerate with: {REGENERATE}"
    );
}

/// Every `$ref` in `v`.
fn refs(v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(o) => {
            if let Some(Value::String(r)) = o.get("$ref") {
                out.insert(r.clone());
            }
            o.values().for_each(|x| refs(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
        _ => {}
    }
}

#[test]
fn every_v1_route_is_described_with_its_errors_and_every_schema_resolves() {
    let doc: Value = serde_json::from_str(openapi_document()).unwrap();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    let paths = doc["paths"].as_object().unwrap();
    let described: BTreeSet<(String, String)> = paths
        .iter()
        .flat_map(|(p, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .map(move |m| (m.clone(), p.clone()))
        })
        .collect();
    let routes: BTreeSet<(String, String)> = [
        ("get", "/api/v1/traces"),
        ("post", "/api/v1/traces/search"),
        ("get", "/api/v1/traces/{trace_id}"),
        ("get", "/api/v1/traces/{trace_id}/spans"),
        ("get", "/api/v1/traces/{trace_id}/lineage"),
        ("get", "/api/v1/services"),
        ("get", "/api/v1/services/{service}/operations"),
        ("get", "/api/v1/dependencies"),
        ("get", "/api/v1/openapi.json"),
    ]
    .into_iter()
    .map(|(m, p)| (m.to_string(), p.to_string()))
    .collect();
    assert_eq!(described, routes);

    for (method, path) in &routes {
        let op = &paths[path][method];
        let statuses: BTreeSet<&str> = op["responses"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert!(statuses.contains("200"), "{method} {path}");
        if path != "/api/v1/openapi.json" {
            assert!(statuses.contains("400"), "{method} {path}: {statuses:?}");
            assert!(statuses.contains("503"), "{method} {path}: {statuses:?}");
            for (status, resp) in op["responses"].as_object().unwrap() {
                let schema = &resp["content"]["application/json"]["schema"]["$ref"];
                if status == "200" {
                    assert!(schema.is_string(), "{method} {path} 200 has a body schema");
                } else {
                    assert_eq!(
                        schema, "#/components/schemas/ErrorEnvelope",
                        "{method} {path} {status}: errors are the envelope"
                    );
                }
            }
        }
        if path.contains("/traces") || path.contains("/dependencies") {
            assert!(statuses.contains("429"), "capped read {method} {path}");
        }
        for s in ["429", "503"] {
            if statuses.contains(s) {
                assert!(
                    op["responses"][s]["headers"]["Retry-After"].is_object(),
                    "{method} {path} {s} names Retry-After"
                );
            }
        }
        if path.contains("{trace_id}") {
            assert!(statuses.contains("404"), "{method} {path}");
        }
    }
    let search = &paths["/api/v1/traces/search"]["post"];
    assert_eq!(
        search["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/SearchBody"
    );
    for s in ["413", "415"] {
        assert!(search["responses"][s].is_object(), "POST search {s}");
    }
    let params: Vec<&str> = paths["/api/v1/traces"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for p in [
        "service",
        "attribute",
        "linked_trace",
        "cursor",
        "limit",
        "duration_scope",
    ] {
        assert!(params.contains(&p), "search parameter {p}: {params:?}");
    }

    // Every reference resolves, and the schemas are the code's: the DAG, the search page,
    // the lineage graph and the span carry the fields the handlers serialize.
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    let mut all = BTreeSet::new();
    refs(&doc, &mut all);
    for r in &all {
        let name = r
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("{r} points outside components.schemas"));
        let schema = schemas
            .get(name)
            .unwrap_or_else(|| panic!("{r} does not resolve"));
        assert!(
            schema.get("$ref") != Some(&Value::String(r.clone())),
            "{r} refers to itself"
        );
    }
    let props = |name: &str| -> BTreeSet<String> {
        let s = &schemas[name];
        let mut out: BTreeSet<String> = s["properties"]
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default();
        // Flattened parts come as allOf.
        for part in s["allOf"].as_array().into_iter().flatten() {
            if let Some(o) = part["properties"].as_object() {
                out.extend(o.keys().cloned());
            }
        }
        out
    };
    let trace = props("TraceResponse");
    for f in [
        "spans",
        "edges",
        "critical_path",
        "self_times",
        "truncated",
        "next_spans",
        "summary",
    ] {
        assert!(trace.contains(f), "TraceResponse.{f}: {trace:?}");
    }
    let page = props("SearchResponse");
    for f in ["traces", "limit", "duration_scope", "next_cursor"] {
        assert!(page.contains(f), "SearchResponse.{f}");
    }
    let lineage = props("LineageResponse");
    for f in [
        "root",
        "direction",
        "nodes",
        "edges",
        "truncated",
        "max_nodes",
    ] {
        assert!(lineage.contains(f), "LineageResponse.{f}: {lineage:?}");
    }
    let deps = props("DependenciesResponse");
    for f in [
        "services",
        "edges",
        "truncated",
        "start",
        "end",
        "max_traces",
    ] {
        assert!(deps.contains(f), "DependenciesResponse.{f}: {deps:?}");
    }
    let error = &schemas["ErrorEnvelope"];
    assert_eq!(error["required"], serde_json::json!(["error"]));
    // The envelope's code list is the server's.
    let codes: BTreeSet<String> = schemas["ErrorCodeSchema"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    let served: BTreeSet<String> = datatracing_http::ErrorCode::ALL
        .iter()
        .map(|c| {
            serde_json::to_value(c)
                .unwrap()
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        codes, served,
        "ErrorCodeSchema in query/src/openapi.rs drifted from ErrorCode"
    );
    assert!(schemas.contains_key("Span") && schemas.contains_key("TraceSummary"));
}

#[tokio::test]
async fn the_document_is_served() {
    let (_dir, _store, router) = embedded(QueryConfig::default()).await;
    let reply = fetch(&router, "/api/v1/openapi.json").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.headers["content-type"], "application/json");
    assert_eq!(
        std::str::from_utf8(&reply.body).unwrap(),
        openapi_document()
    );
}
