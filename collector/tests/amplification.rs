//! OTLP decode amplification, measured: hostile requests that decode to far more memory
//! than their size are refused from their encoded shape, before they are decoded. The
//! collector is served on loopback and driven by real clients (reqwest, tonic); the peak
//! resident memory of this process (`VmHWM`, reset per request through
//! `/proc/self/clear_refs`) must grow by at most 4x the decompressed request.
//!
//! One test in its own binary: other tests running beside it would move the peak.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;

use common::{raw_grpc, serve};
use datatracing_collector::CollectorConfig;
use datatracing_collector::otlp::convert::to_otlp;
use datatracing_core::{Span, SpanId, SpanKind, Status, StatusCode, Timestamp, TraceId};
use datatracing_http::Authenticator;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use prost::Message;

/// A protobuf length-delimited field.
fn field(number: u32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 8);
    let varint = |mut v: u64, out: &mut Vec<u8>| {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    };
    varint(u64::from(number << 3 | 2), &mut out);
    varint(body.len() as u64, &mut out);
    out.extend_from_slice(body);
    out
}

/// A request of one resource (with `resource` as its encoded Resource) and one scope of
/// `spans` (each an encoded Span).
fn request(resource: &[u8], spans: &[u8]) -> Vec<u8> {
    let scope_spans = field(2, spans);
    let mut rs = field(1, resource);
    rs.extend(scope_spans);
    field(1, &rs)
}

/// A valid span: ids, name and times.
fn valid_span(i: u64) -> Vec<u8> {
    let now = Timestamp::now().unix_nanos() as u64;
    let mut s = field(1, &[7; 16]);
    s.extend(field(2, &(i + 1).to_be_bytes()));
    s.extend(field(5, b"op"));
    s.push(7 << 3 | 1);
    s.extend((now - 1_000_000).to_le_bytes());
    s.push(8 << 3 | 1);
    s.extend(now.to_le_bytes());
    s
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

/// Peak resident set of this process, in bytes.
fn peak_rss() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: usize = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// Resets the peak to the current resident set, so the next reading is this request's.
fn reset_peak() -> usize {
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
    peak_rss()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_are_refused_before_they_are_decoded() {
    let served = serve(CollectorConfig::default(), Authenticator::disabled()).await;
    let (http_addr, grpc_addr) = (served.http, served.grpc);
    let client = reqwest::Client::new();
    let url = format!("http://{http_addr}/v1/traces");
    let mut grpc = TraceServiceClient::connect(format!("http://{grpc_addr}"))
        .await
        .unwrap()
        .max_encoding_message_size(usize::MAX);

    // (name, decompressed size, what the client sends)
    let empty_spans = request(&[], &[0x12, 0x00].repeat(2 << 20));
    let attribute_bomb = {
        let mut span = valid_span(0);
        span.extend([0x4a, 0x00].repeat(1 << 20));
        request(&[], &field(2, &span))
    };
    let resource_copies = {
        // 100 resource attributes of 100 bytes, copied into each of 20,000 spans.
        let mut resource = Vec::new();
        for i in 0..100 {
            let value = field(2, &field(1, &[b'v'; 100]));
            let mut kv = field(1, format!("k{i}").as_bytes());
            kv.extend(value);
            resource.extend(field(1, &kv));
        }
        let spans: Vec<u8> = (0..20_000).flat_map(|i| field(2, &valid_span(i))).collect();
        request(&resource, &spans)
    };
    let json_empty_spans = {
        let spans = vec!["{}"; 1 << 20].join(",");
        format!(r#"{{"resourceSpans":[{{"scopeSpans":[{{"spans":[{spans}]}}]}}]}}"#).into_bytes()
    };

    let native_empty_spans = {
        let spans = vec!["{}"; 1 << 20].join(",");
        format!(r#"{{"spans":[{spans}]}}"#).into_bytes()
    };
    let native_url = format!("http://{http_addr}/api/v1/spans");

    for (name, body, ct, gz) in [
        (
            "protobuf empty spans, gzip",
            &empty_spans,
            "application/x-protobuf",
            true,
        ),
        (
            "protobuf attribute bomb",
            &attribute_bomb,
            "application/x-protobuf",
            false,
        ),
        (
            "protobuf resource copies",
            &resource_copies,
            "application/x-protobuf",
            false,
        ),
        (
            "json empty spans",
            &json_empty_spans,
            "application/json",
            false,
        ),
        (
            "native json empty spans",
            &native_empty_spans,
            "application/json",
            false,
        ),
    ] {
        let sent = if gz { gzip(body) } else { body.clone() };
        let target = if name.starts_with("native") {
            &native_url
        } else {
            &url
        };
        let mut req = client.post(target).header("content-type", ct).body(sent);
        if gz {
            req = req.header("content-encoding", "gzip");
        }
        let before = reset_peak();
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let growth = peak_rss().saturating_sub(before);
        let text = String::from_utf8_lossy(&resp.bytes().await.unwrap()).into_owned();
        println!(
            "HTTP {name}: {} bytes decompressed, status {status}, peak RSS +{} bytes ({:.2}x)",
            body.len(),
            growth,
            growth as f64 / body.len() as f64
        );
        assert_eq!(status.as_u16(), 413, "{name}: {text}");
        assert!(
            growth <= 4 * body.len(),
            "{name}: peak RSS grew by {growth} bytes for a {} byte request",
            body.len()
        );
    }

    for (name, body) in [
        ("empty spans", &empty_spans),
        ("attribute bomb", &attribute_bomb),
    ] {
        let before = reset_peak();
        let err = raw_grpc::export(grpc_addr, body.clone(), false)
            .await
            .unwrap_err();
        let growth = peak_rss().saturating_sub(before);
        println!(
            "gRPC {name}: {} bytes, {:?}, peak RSS +{} bytes ({:.2}x)",
            body.len(),
            err.code(),
            growth,
            growth as f64 / body.len() as f64
        );
        assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{name}: {err}");
        assert!(
            growth <= 4 * body.len(),
            "gRPC {name}: peak RSS grew by {growth} bytes for a {} byte request",
            body.len()
        );
    }

    // An ordinary dense request (20 short attributes per span, about 8 MiB) is accepted;
    // its real growth is what a legitimate request costs.
    let dense = {
        let spans: Vec<Span> = (0..12_000u64)
            .map(|i| Span {
                trace_id: TraceId::from_bytes([8; 16]),
                span_id: SpanId::from_bytes((i + 1).to_be_bytes()),
                parent_id: None,
                service: "svc".into(),
                operation: format!("step-{i}"),
                kind: SpanKind::Transform,
                start_time: Timestamp::from_unix_nanos(Timestamp::now().unix_nanos() - 1_000_000),
                end_time: Timestamp::now(),
                status: Status::new(StatusCode::Ok),
                attributes: (0..20)
                    .map(|a| {
                        (
                            format!("pipeline.attribute.{a}"),
                            datatracing_core::AttributeValue::String(format!(
                                "value number {a} of {i}"
                            )),
                        )
                    })
                    .collect(),
                events: vec![],
                links: vec![],
            })
            .collect();
        to_otlp(&spans).encode_to_vec()
    };
    let before = reset_peak();
    let resp = client
        .post(&url)
        .header("content-type", "application/x-protobuf")
        .body(dense.clone())
        .send()
        .await
        .unwrap();
    let growth = peak_rss().saturating_sub(before);
    println!(
        "HTTP ordinary dense request: {} bytes, status {}, peak RSS +{} bytes ({:.2}x)",
        dense.len(),
        resp.status(),
        growth,
        growth as f64 / dense.len() as f64
    );
    assert_eq!(resp.status().as_u16(), 200);

    // Legitimate requests still pass on both protocols.
    let ok = to_otlp(&[Span {
        trace_id: TraceId::from_bytes([9; 16]),
        span_id: SpanId::from_bytes([1; 8]),
        parent_id: None,
        service: "svc".into(),
        operation: "op".into(),
        kind: SpanKind::Ingest,
        start_time: Timestamp::from_unix_nanos(Timestamp::now().unix_nanos() - 1_000_000),
        end_time: Timestamp::now(),
        status: Status::new(StatusCode::Ok),
        attributes: Default::default(),
        events: vec![],
        links: vec![],
    }]);
    let resp = client
        .post(&url)
        .header("content-type", "application/x-protobuf")
        .body(ok.encode_to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    grpc.export(ok).await.unwrap();

    served.stop().await;
}
