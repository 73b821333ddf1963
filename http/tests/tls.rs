//! TLS on a served listener (`serve_with` + `TlsAcceptor`) with a rustls client on
//! loopback: requests go through, clients that never finish a handshake are cut at
//! `header_read_timeout` without holding up anyone else's handshake (handshakes run on
//! their own tasks, not in the accept loop), and failed handshakes are counted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use datatracing_config::TlsConfig;
use datatracing_core::ConfigDuration;
use datatracing_http::{Alpn, ConnectionLimits, TlsAcceptor, TlsMetrics};
use datatracing_testkit::tls::Pki;
use prometheus_client::registry::Registry;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

async fn start(pki: &Pki, limits: ConnectionLimits) -> (SocketAddr, Registry, CancellationToken) {
    let mut registry = Registry::default();
    let tls_metrics = TlsMetrics::register(&mut registry);
    let server = pki.server("server", "test");
    let tls = TlsAcceptor::load(
        &TlsConfig::new(&server.cert, &server.key),
        "test",
        Alpn::Http1,
        tls_metrics,
    )
    .unwrap();
    let (addr, shutdown) = common::start(&mut registry, limits, Some(tls)).await;
    (addr, registry, shutdown)
}

/// `GET /ok` over TLS trusting `pki`'s CA; the response text.
async fn get_ok(addr: SocketAddr, pki: &Pki) -> String {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(&pki.ca.cert).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    tls.write_all(b"GET /ok HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut resp = String::new();
    tls.read_to_string(&mut resp).await.unwrap();
    resp
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_handshakes_are_cut_and_do_not_block_other_clients() {
    let pki = Pki::new("http-tls");
    let limits = ConnectionLimits {
        header_read_timeout: ConfigDuration::from_secs(1),
        ..ConnectionLimits::default()
    };
    let (addr, registry, shutdown) = start(&pki, limits).await;
    let resp = get_ok(addr, &pki).await;
    assert!(
        resp.starts_with("HTTP/1.1 200") && resp.ends_with("ok"),
        "{resp}"
    );

    // Silent clients and one that sends half a ClientHello: while they stall, a real
    // client's handshake completes at once; then they are cut at the timeout.
    let mut stalled = Vec::new();
    for i in 0..5 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        if i == 0 {
            s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
                .await
                .unwrap();
        }
        stalled.push(s);
    }
    let started = Instant::now();
    assert!(get_ok(addr, &pki).await.starts_with("HTTP/1.1 200"));
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    for mut s in stalled {
        let mut buf = [0u8; 64];
        let cut = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(cut.is_ok(), "a stalled handshake was never cut");
    }
    // Plain HTTP on the TLS port: a failed handshake, counted.
    let mut plain = TcpStream::connect(addr).await.unwrap();
    plain
        .write_all(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut buf)).await;
    assert!(!String::from_utf8_lossy(&buf).contains("200"));
    // The server counts a failed handshake after it closes the connection, so the client
    // can see the close first: wait (bounded) for the count.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let failures: u64 = text
            .lines()
            .find_map(|l| {
                l.strip_prefix(r#"datatracing_tls_handshake_failures_total{listener="test"} "#)
            })
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0);
        if failures >= 6 {
            break;
        }
        assert!(Instant::now() < deadline, "{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
}
