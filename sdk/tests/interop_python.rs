//! Interop with the official Python OpenTelemetry SDK's propagators (the test virtualenv's
//! `opentelemetry-sdk`), both ways, over HTTP headers and the environment-variable carrier:
//! a context injected by this SDK is continued by Python's, and one injected by Python's is
//! extracted here with the same trace, parent, flags, trace state and baggage.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};

use datatracing_sdk::propagation::{self, EnvCarrier, HeaderCarrier, HeaderExtractor};
use datatracing_sdk::{Step, StepKind};
use opentelemetry::baggage::BaggageExt;
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde_json::Value;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/propagation.py");

fn python(mode: &str, stdin: &str, env: &BTreeMap<String, String>) -> Value {
    let py = datatracing_testkit::python::python(&[
        "opentelemetry.sdk.trace",
        "opentelemetry.propagators._envcarrier",
    ]);
    let mut child = Command::new(py)
        .args([SCRIPT, mode])
        .env_remove("TRACEPARENT")
        .env_remove("TRACESTATE")
        .env_remove("BAGGAGE")
        .envs(env)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "python {mode}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A step span of a real SDK tracer, under a remote parent that carries trace state, with
/// baggage: what a pipeline job hands downstream.
fn rust_context() -> (Context, SdkTracerProvider) {
    let provider = SdkTracerProvider::builder().build();
    let tracer = provider.tracer("interop");
    let upstream = SpanContext::new(
        TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").unwrap(),
        SpanId::from_hex("b7ad6b7169203331").unwrap(),
        TraceFlags::SAMPLED,
        true,
        TraceState::from_key_value([("dt", "step1")]).unwrap(),
    );
    let parent = Context::new()
        .with_remote_span_context(upstream)
        .with_baggage([KeyValue::new("run", "rs-42")]);
    let span = Step::new("rust step", StepKind::Transform).start_with_context(&tracer, &parent);
    (parent.with_span(span), provider)
}

fn assert_continued(cx: &Context, py: &Value) {
    let sc = cx.span().span_context().clone();
    assert_eq!(py["trace_id"], sc.trace_id().to_string(), "{py}");
    assert_eq!(py["parent_span_id"], sc.span_id().to_string(), "{py}");
    assert_ne!(
        py["span_id"],
        sc.span_id().to_string(),
        "a new span, not ours"
    );
    assert_eq!(py["parent_remote"], true);
    assert_eq!(py["sampled"], true);
    assert_eq!(py["tracestate"], "dt=step1");
    assert_eq!(py["baggage"], serde_json::json!({"run": "rs-42"}));
}

fn assert_extracted(cx: &Context, py: &Value) {
    let sc = cx.span().span_context().clone();
    assert!(sc.is_valid() && sc.is_remote(), "{py}");
    assert_eq!(sc.trace_id().to_string(), py["trace_id"].as_str().unwrap());
    assert_eq!(sc.span_id().to_string(), py["span_id"].as_str().unwrap());
    assert!(sc.is_sampled());
    assert_eq!(
        cx.baggage().get("run").map(|v| v.as_str().to_string()),
        Some("py-7".to_string())
    );
    // A step started from it is a child in the same trace.
    let provider = SdkTracerProvider::builder().build();
    let child = Step::new("rust child", StepKind::Aggregate)
        .start_with_context(&provider.tracer("interop"), cx);
    assert_eq!(child.span_context().trace_id(), sc.trace_id());
}

#[test]
fn http_headers_injected_here_are_continued_by_python() {
    let (cx, _provider) = rust_context();
    let mut headers = http::HeaderMap::new();
    propagation::inject(&cx, &mut HeaderCarrier(&mut headers));
    let json: BTreeMap<&str, &str> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.to_str().unwrap()))
        .collect();
    let py = python(
        "extract-http",
        &serde_json::to_string(&json).unwrap(),
        &BTreeMap::new(),
    );
    assert_continued(&cx, &py);
}

#[test]
fn http_headers_injected_by_python_are_extracted_here() {
    let py = python("inject-http", "", &BTreeMap::new());
    let mut headers = http::HeaderMap::new();
    for (k, v) in py["carrier"].as_object().unwrap() {
        headers.insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            http::HeaderValue::from_str(v.as_str().unwrap()).unwrap(),
        );
    }
    assert_extracted(&propagation::extract(&HeaderExtractor(&headers)), &py);
}

#[test]
fn environment_injected_here_is_continued_by_a_python_child_process() {
    let (cx, _provider) = rust_context();
    let mut env = EnvCarrier::new();
    propagation::inject(&cx, &mut env);
    assert!(env.vars().contains_key("TRACEPARENT"));
    let py = python("extract-env", "", env.vars());
    assert_continued(&cx, &py);
}

#[test]
fn environment_written_by_python_is_extracted_here() {
    let py = python("inject-env", "", &BTreeMap::new());
    let vars: BTreeMap<String, String> = py["carrier"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect();
    assert!(vars.contains_key("TRACEPARENT"), "{vars:?}");
    assert_extracted(&propagation::extract(&EnvCarrier::from_vars(vars)), &py);
}
