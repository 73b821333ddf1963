//! OTLP/gRPC over TLS with a real tonic client against the served collector: the server
//! certificate verified against the test CA, mutual TLS (a client without a certificate,
//! or with one from another CA, is refused in the handshake), bearer tokens on top, and a
//! rotated certificate served to new connections without a restart. Certificates come
//! from the `openssl` command (`testkit::tls`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use datatracing_collector::CollectorConfig;
use datatracing_collector::otlp::convert::to_otlp;
use datatracing_config::{AuthConfig, ClientAuth, Scope, TlsConfig, TokenConfig};
use datatracing_core::{ConfigDuration, Span, SpanId, SpanKind, Timestamp, TraceId};
use datatracing_http::{Alpn, Authenticator, TlsAcceptor, TlsMetrics};
use datatracing_store::TraceReader;
use datatracing_testkit::tls::{Pair, Pki};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

const TOKEN: &str = "ingest-token-tls-0123456789";

fn span(trace: u8) -> Span {
    let t = Timestamp::now().unix_nanos() - 60_000_000_000;
    Span {
        trace_id: TraceId::from_bytes([trace; 16]),
        span_id: SpanId::from_bytes(1u64.to_be_bytes()),
        parent_id: None,
        service: "tls-etl".into(),
        operation: "load".into(),
        kind: SpanKind::Ingest,
        start_time: Timestamp::from_unix_nanos(t),
        end_time: Timestamp::from_unix_nanos(t + 1_000_000),
        status: Default::default(),
        attributes: Default::default(),
        events: Vec::new(),
        links: Vec::new(),
    }
}

fn acceptors(tls: &TlsConfig) -> (TlsAcceptor, TlsAcceptor) {
    let m = TlsMetrics::default();
    (
        TlsAcceptor::load(tls, "collector", Alpn::Http1, m.clone()).unwrap(),
        TlsAcceptor::load(tls, "collector-grpc", Alpn::H2, m).unwrap(),
    )
}

fn auth() -> Authenticator {
    let config = AuthConfig {
        tokens: vec![TokenConfig {
            name: "pipelines".into(),
            scopes: vec![Scope::Ingest],
            file: None,
            env: Some("TOKEN".into()),
            tenant: None,
        }],
        ..AuthConfig::default()
    };
    Authenticator::load(&config, &HashMap::from([("TOKEN".into(), TOKEN.into())])).unwrap()
}

/// A channel to `addr` trusting `ca`, presenting `identity` if given.
async fn channel(
    addr: std::net::SocketAddr,
    ca: &Pair,
    identity: Option<&Pair>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(&ca.cert).unwrap()))
        .domain_name("localhost");
    if let Some(id) = identity {
        tls = tls.identity(Identity::from_pem(
            std::fs::read(&id.cert).unwrap(),
            std::fs::read(&id.key).unwrap(),
        ));
    }
    Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
}

async fn export(channel: Channel, trace: u8, token: Option<&str>) -> Result<(), tonic::Status> {
    let mut req = tonic::Request::new(to_otlp(&[span(trace)]));
    if let Some(t) = token {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    TraceServiceClient::new(channel)
        .export(req)
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tonic_exports_over_mutual_tls_with_a_token() {
    let pki = Pki::new("dt");
    let server = pki.server("server", "collector");
    let client = pki.client("client", "pipeline-job");
    let other = Pki::new("other");
    let stranger = other.client("stranger", "not-ours");
    let tls = TlsConfig {
        client_ca_file: Some(pki.ca.cert.clone()),
        ..TlsConfig::new(&server.cert, &server.key)
    };
    let served = common::serve_tls(CollectorConfig::default(), auth(), Some(acceptors(&tls))).await;

    // The right CA, a client certificate and the token: accepted and stored.
    let ch = channel(served.grpc, &pki.ca, Some(&client)).await.unwrap();
    export(ch.clone(), 1, Some(TOKEN)).await.unwrap();
    let stored = served.store.get_trace(TraceId::from_bytes([1; 16])).await;
    assert_eq!(stored.unwrap().unwrap().len(), 1);
    // TLS does not replace the token: without it, UNAUTHENTICATED.
    let e = export(ch, 2, None).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");

    // Mutual TLS is required: no client certificate, or one from another CA, is refused.
    for identity in [None, Some(&stranger)] {
        let refused = match channel(served.grpc, &pki.ca, identity).await {
            Err(_) => true,
            // TLS 1.3 finishes the client's side of the handshake before the server checks
            // the certificate: the first call then fails.
            Ok(ch) => export(ch, 3, Some(TOKEN)).await.is_err(),
        };
        assert!(refused, "a client with {identity:?} was let in");
    }
    // A client that does not trust our CA refuses the server.
    let distrust = match channel(served.grpc, &other.ca, Some(&client)).await {
        Err(_) => true,
        Ok(ch) => export(ch, 4, Some(TOKEN)).await.is_err(),
    };
    assert!(distrust);
    for t in [3, 4] {
        let none = served.store.get_trace(TraceId::from_bytes([t; 16])).await;
        assert!(none.unwrap().is_none(), "refused calls stored nothing");
    }
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_is_served_without_a_restart_and_a_broken_one_is_not() {
    let old_ca = Pki::new("old");
    let new_ca = Pki::new("new");
    let first = old_ca.server("first", "collector-1");
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::copy(&first.cert, &cert).unwrap();
    std::fs::copy(&first.key, &key).unwrap();
    let tls = TlsConfig {
        client_auth: None,
        reload_interval: ConfigDuration::from_millis(100),
        ..TlsConfig::new(&cert, &key)
    };
    assert_eq!(tls.client_auth(), None::<ClientAuth>);
    let (http, grpc) = acceptors(&tls);
    for a in [&http, &grpc] {
        a.spawn_reloader(tokio_util::sync::CancellationToken::new());
    }
    let served = common::serve_tls(
        CollectorConfig::default(),
        Authenticator::disabled(),
        Some((http, grpc.clone())),
    )
    .await;
    export(
        channel(served.grpc, &old_ca.ca, None).await.unwrap(),
        5,
        None,
    )
    .await
    .unwrap();

    // A half-done rotation (a new certificate with the old key) is refused and counted; the
    // old certificate keeps being served.
    let second = new_ca.server("second", "collector-2");
    std::fs::copy(&second.cert, &cert).unwrap();
    let e = grpc.reload().unwrap_err().to_string();
    assert!(e.contains("does not match the certificate"), "{e}");
    assert!(
        !e.contains("PRIVATE KEY-----"),
        "key material in an error: {e}"
    );
    export(
        channel(served.grpc, &old_ca.ca, None).await.unwrap(),
        6,
        None,
    )
    .await
    .unwrap();

    // The key follows: within the reload interval new connections get the new certificate.
    std::fs::copy(&second.key, &key).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(ch) = channel(served.grpc, &new_ca.ca, None).await
            && export(ch, 7, None).await.is_ok()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the rotated certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let old = match channel(served.grpc, &old_ca.ca, None).await {
        Err(_) => true,
        Ok(ch) => export(ch, 8, None).await.is_err(),
    };
    assert!(old, "the old certificate is still served");
    served.stop().await;
}
