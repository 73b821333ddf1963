//! What every server gets from `finish_router` and `ops_routes`, driven in-process through
//! `tower::ServiceExt::oneshot`: the one error envelope for handler errors, unknown routes,
//! wrong methods, timeouts and panics; `/healthz`, `/readyz`, `/metrics`; request metrics.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use axum::response::Response;
use axum::routing::get;
use datatracing_http::{
    ApiError, ErrorCode, ErrorDetail, HttpMetrics, Readiness, finish_router, ops_routes,
};
use datatracing_store::Health;
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use tower::ServiceExt;

const TIMEOUT: Duration = Duration::from_millis(200);

/// A router with one handler per interesting outcome, finished like every server's.
fn app() -> (Router, Readiness, Arc<Registry>) {
    let mut registry = Registry::default();
    let metrics = HttpMetrics::register(&mut registry);
    let registry = Arc::new(registry);
    let readiness = Readiness::flag_only();
    let api = Router::new()
        .route("/ok", get(|| async { "fine" }))
        .route(
            "/items/{id}",
            get(|| async {
                Err::<(), _>(
                    ApiError::invalid_argument("2 items are invalid").with_details(vec![
                        ErrorDetail {
                            index: Some(1),
                            field: Some("trace_id".into()),
                            message: "must be 32 hex digits".into(),
                        },
                    ]),
                )
            }),
        )
        .route(
            "/busy",
            get(|| async {
                Err::<(), _>(
                    ApiError::new(ErrorCode::ResourceExhausted, "queue full").with_retry_after(3),
                )
            }),
        )
        .route(
            "/internal",
            get(|| async {
                Err::<(), _>(ApiError::internal(&"the disk at /secret/path is on fire"))
            }),
        )
        .route(
            "/store/busy",
            get(|| async {
                Err::<(), _>(ApiError::from(datatracing_store::Error::Unavailable(
                    "connection refused to 10.0.0.7".into(),
                )))
            }),
        )
        .route(
            "/store/rejected",
            get(|| async {
                Err::<(), _>(ApiError::from(datatracing_store::Error::Rejected(
                    "table spans_v2 has no column x".into(),
                )))
            }),
        )
        .route("/hang", get(std::future::pending::<&'static str>))
        .route(
            "/panic",
            get(|| async {
                if std::hint::black_box(true) {
                    panic!("handler bug at /secret/path");
                }
                "unreachable"
            }),
        )
        .merge(ops_routes(readiness.clone(), registry.clone()));
    (
        finish_router(api, "test", TIMEOUT, metrics),
        readiness,
        registry,
    )
}

async fn call(app: &Router, method: Method, uri: &str) -> Response {
    app.clone()
        .oneshot(
            Request::builder()
                .method(method)
                .uri(uri)
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap()
}

async fn body(resp: Response) -> Vec<u8> {
    axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap()
        .to_vec()
}

/// Status, JSON body, and asserts the body is the envelope with this code.
async fn envelope(resp: Response, code: &str) -> (StatusCode, Value) {
    let status = resp.status();
    assert_eq!(
        resp.headers()[header::CONTENT_TYPE],
        "application/json",
        "{status}"
    );
    let v: Value = serde_json::from_slice(&body(resp).await).unwrap();
    assert_eq!(v["error"]["code"], code, "{v}");
    assert!(v["error"]["message"].is_string(), "{v}");
    assert!(v["error"]["details"].is_array(), "{v}");
    assert_eq!(
        v.as_object().unwrap().len(),
        1,
        "only `error` at the top: {v}"
    );
    (status, v)
}

#[tokio::test]
async fn handler_errors_are_the_envelope_with_details_and_retry_after() {
    let (app, _, _) = app();
    let (status, v) = envelope(
        call(&app, Method::GET, "/items/7").await,
        "invalid_argument",
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        v["error"]["details"],
        json!([{"index": 1, "field": "trace_id", "message": "must be 32 hex digits"}])
    );

    let resp = call(&app, Method::GET, "/busy").await;
    assert_eq!(resp.headers()[header::RETRY_AFTER], "3");
    let (status, _) = envelope(resp, "resource_exhausted").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);

    // Internal causes are logged, never sent.
    let (status, v) = envelope(call(&app, Method::GET, "/internal").await, "internal").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(!v.to_string().contains("/secret/path"), "{v}");
}

#[tokio::test]
async fn store_errors_are_503_when_transient_and_500_otherwise_without_internals() {
    let (app, _, _) = app();
    let resp = call(&app, Method::GET, "/store/busy").await;
    assert_eq!(resp.headers()[header::RETRY_AFTER], "1");
    let (status, v) = envelope(resp, "unavailable").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(!v.to_string().contains("10.0.0.7"), "{v}");

    let (status, v) = envelope(call(&app, Method::GET, "/store/rejected").await, "internal").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(!v.to_string().contains("spans_v2"), "{v}");
}

#[tokio::test]
async fn unknown_routes_are_404_and_wrong_methods_405() {
    let (app, _, _) = app();
    let (status, _) = envelope(call(&app, Method::GET, "/nope").await, "not_found").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = envelope(
        call(&app, Method::DELETE, "/ok").await,
        "method_not_allowed",
    )
    .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    // The route still answers its own method.
    let resp = call(&app, Method::GET, "/ok").await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(body(resp).await, b"fine");
}

#[tokio::test]
async fn a_request_that_never_finishes_times_out_with_504() {
    let (app, _, _) = app();
    let (status, v) = envelope(call(&app, Method::GET, "/hang").await, "timeout").await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert!(
        v["error"]["message"].as_str().unwrap().contains("200ms"),
        "{v}"
    );
}

#[tokio::test]
async fn a_panicking_handler_is_a_500_envelope_and_the_server_keeps_serving() {
    let (app, _, _) = app();
    let (status, v) = envelope(call(&app, Method::GET, "/panic").await, "internal").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(!v.to_string().contains("/secret/path"), "{v}");
    assert_eq!(
        call(&app, Method::GET, "/ok").await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn healthz_is_always_ok_and_readyz_follows_the_flag() {
    let (app, readiness, _) = app();
    let resp = call(&app, Method::GET, "/healthz").await;
    assert_eq!(resp.status(), StatusCode::OK);
    let v: Value = serde_json::from_slice(&body(resp).await).unwrap();
    assert_eq!(v, json!({"status": "ok"}));

    let (status, _) = envelope(call(&app, Method::GET, "/readyz").await, "unavailable").await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "not ready at start"
    );

    readiness.set_ready(true);
    let resp = call(&app, Method::GET, "/readyz").await;
    assert_eq!(resp.status(), StatusCode::OK);
    let v: Value = serde_json::from_slice(&body(resp).await).unwrap();
    assert_eq!(v, json!({"status": "ready"}));

    // Shutdown flips it back, while the process stays healthy.
    readiness.set_ready(false);
    assert_eq!(
        call(&app, Method::GET, "/readyz").await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        call(&app, Method::GET, "/healthz").await.status(),
        StatusCode::OK
    );
}

/// A store whose health is switched by the test: what `/readyz` does with the answer is
/// the subject here, not the store.
#[derive(Debug, Default)]
struct Switch(AtomicBool);

#[async_trait::async_trait]
impl Health for Switch {
    fn backend(&self) -> &'static str {
        "switch"
    }

    async fn health(&self) -> datatracing_store::Result<()> {
        if self.0.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err(datatracing_store::Error::Unavailable("down".into()))
        }
    }
}

#[tokio::test]
async fn readyz_needs_the_flag_and_an_answering_store() {
    let store = Arc::new(Switch::default());
    let readiness = Readiness::new(store.clone());
    let app = ops_routes(readiness.clone(), Arc::new(Registry::default()));
    readiness.set_ready(true);
    let (status, v) = envelope(call(&app, Method::GET, "/readyz").await, "unavailable").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("store not ready"),
        "{v}"
    );
    store.0.store(true, Ordering::SeqCst);
    assert_eq!(
        call(&app, Method::GET, "/readyz").await.status(),
        StatusCode::OK
    );
    readiness.set_ready(false);
    assert_eq!(
        call(&app, Method::GET, "/readyz").await.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "the flag wins over a healthy store"
    );
}

#[tokio::test]
async fn metrics_count_requests_by_matched_route_and_status() {
    let (app, _, _) = app();
    call(&app, Method::GET, "/ok").await;
    call(&app, Method::GET, "/items/1").await;
    call(&app, Method::GET, "/items/2").await;
    call(&app, Method::GET, "/no/such/thing").await;
    call(&app, Method::GET, "/hang").await;

    let resp = call(&app, Method::GET, "/metrics").await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text"),
        "{:?}",
        resp.headers()
    );
    let text = String::from_utf8(body(resp).await).unwrap();
    let count = |labels: &str| {
        let prefix = format!("datatracing_http_requests_total{{{labels}}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
            .parse::<u64>()
            .unwrap()
    };
    assert_eq!(
        count(r#"server="test",route="/ok",method="GET",status="200""#),
        1
    );
    // The route pattern, not the raw path: bounded cardinality.
    assert_eq!(
        count(r#"server="test",route="/items/{id}",method="GET",status="400""#),
        2
    );
    assert_eq!(
        count(r#"server="test",route="unmatched",method="GET",status="404""#),
        1
    );
    assert_eq!(
        count(r#"server="test",route="/hang",method="GET",status="504""#),
        1
    );
    assert!(
        text.contains("datatracing_http_request_duration_seconds_bucket"),
        "{text}"
    );
    assert!(text.trim_end().ends_with("# EOF"), "{text}");
}

/// Issue 13: labels took the raw method token, so invented methods (and paths) grew
/// `/metrics` and memory for good. After one round of hostile requests has created the
/// bounded label sets, more rounds with new methods and paths add nothing.
#[tokio::test]
async fn hostile_methods_and_paths_do_not_grow_metrics() {
    let (app, _, _) = app();
    let mut sizes = Vec::new();
    for round in 0..3 {
        for i in 0..200 {
            let method = Method::from_bytes(format!("M{round}X{i}").as_bytes()).unwrap();
            call(&app, method, &format!("/nope/{round}/{i}")).await;
            call(&app, Method::GET, &format!("/items/{round}{i}")).await;
        }
        let text =
            String::from_utf8(body(call(&app, Method::GET, "/metrics").await).await).unwrap();
        assert!(
            text.contains(r#"route="unmatched",method="other""#),
            "invented methods are counted as other:\n{text}"
        );
        // The counters' values change; the set of lines must not.
        let series = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.rsplit_once(' ').map_or(l, |(k, _)| k).to_string())
            .collect::<std::collections::BTreeSet<_>>();
        sizes.push(series);
    }
    assert_eq!(
        sizes[1], sizes[2],
        "new series appeared for new methods or paths"
    );
    assert!(
        sizes[2].len() < 200,
        "{} series after 1,200 hostile requests",
        sizes[2].len()
    );
}
