//! Connection limits (`serve_with` + `ConnectionLimits`) against hostile clients on
//! loopback: slow headers (slowloris) and silent connections are cut, the open-connection
//! cap holds, and a legitimate client (reqwest) is still served; a keep-alive connection
//! is closed after its request limit.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use datatracing_core::ConfigDuration;
use datatracing_http::ConnectionLimits;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

async fn start(limits: ConnectionLimits) -> (SocketAddr, CancellationToken) {
    common::start(&mut Registry::default(), limits, None).await
}

/// Reads until the server closes the connection (EOF or reset); `None` if it is still open
/// after `within`.
async fn closed_after(stream: &mut TcpStream, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout_at(
            tokio::time::Instant::from_std(started + within),
            stream.read(&mut buf),
        )
        .await
        {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            // A 408 or similar before closing is fine; keep reading to the close.
            Ok(Ok(_)) => {}
        }
    }
}

async fn legit(addr: SocketAddr) -> reqwest::Response {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
        .get(format!("http://{addr}/ok"))
        .send()
        .await
        .unwrap()
}

/// Clients that trickle header bytes forever are cut at header_read_timeout even though
/// they keep sending, and a legitimate request queued behind them (all slots taken) is
/// then served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_on_headers_is_cut_and_a_legitimate_request_is_served() {
    let (addr, shutdown) = start(ConnectionLimits {
        max_connections: 4,
        header_read_timeout: ConfigDuration::from_millis(500),
        idle_timeout: ConfigDuration::from_secs(30),
        ..ConnectionLimits::default()
    })
    .await;
    let mut slow = Vec::new();
    for _ in 0..4 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /ok HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        slow.push(s);
    }
    // Keep trickling a header byte every 100 ms on every slow connection.
    let trickle = tokio::spawn(async move {
        let mut closed = Vec::new();
        for mut s in slow {
            closed.push(tokio::spawn(async move {
                let started = Instant::now();
                while started.elapsed() < Duration::from_secs(5) {
                    if s.write_all(b"X").await.is_err() {
                        return Some(started.elapsed());
                    }
                    let mut buf = [0u8; 256];
                    match tokio::time::timeout(Duration::from_millis(100), s.read(&mut buf)).await {
                        Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
                        _ => {}
                    }
                }
                None
            }));
        }
        let mut out = Vec::new();
        for c in closed {
            out.push(c.await.unwrap());
        }
        out
    });
    let started = Instant::now();
    let resp = legit(addr).await;
    assert_eq!(resp.status().as_u16(), 200);
    let waited = started.elapsed();
    let closed = trickle.await.unwrap();
    for c in &closed {
        let c = c.expect("a slowloris connection was never closed");
        assert!(c < Duration::from_secs(3), "closed only after {c:?}");
    }
    assert!(
        waited < Duration::from_secs(5),
        "legitimate request waited {waited:?}"
    );
    shutdown.cancel();
}

/// A flood of silent connections: at most max_connections are held at once, each is
/// closed after idle_timeout, and a legitimate request made during the flood is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_flood_is_capped_and_closed() {
    let (addr, shutdown) = start(ConnectionLimits {
        max_connections: 8,
        header_read_timeout: ConfigDuration::from_secs(30),
        idle_timeout: ConfigDuration::from_millis(700),
        ..ConnectionLimits::default()
    })
    .await;
    let mut idle = Vec::new();
    for _ in 0..24 {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    // In the first idle period only the accepted connections (the cap) can be closed.
    let mut first = Vec::new();
    for s in &mut idle {
        first.push(closed_after(s, Duration::from_millis(1200)).await.is_some());
        if first.len() == 8 {
            break;
        }
    }
    assert!(
        first.iter().all(|c| *c),
        "the first 8 were held and closed: {first:?}"
    );
    let started = Instant::now();
    let resp = legit(addr).await;
    assert_eq!(resp.status().as_u16(), 200);
    println!(
        "legitimate request during the flood took {:?}",
        started.elapsed()
    );
    // Every flooding connection is closed in the end.
    for (i, s) in idle.iter_mut().enumerate().skip(8) {
        assert!(
            closed_after(s, Duration::from_secs(10)).await.is_some(),
            "idle connection {i} never closed"
        );
    }
    shutdown.cancel();
}

/// The cap is a cap: with 2 slots held by silent clients, a third client is not accepted
/// (its request is not answered) until one of them is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_wait() {
    let (addr, shutdown) = start(ConnectionLimits {
        max_connections: 2,
        header_read_timeout: ConfigDuration::from_secs(30),
        idle_timeout: ConfigDuration::from_secs(30),
        ..ConnectionLimits::default()
    })
    .await;
    let a = TcpStream::connect(addr).await.unwrap();
    let _b = TcpStream::connect(addr).await.unwrap();
    let mut third = TcpStream::connect(addr).await.unwrap();
    third
        .write_all(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    assert!(
        tokio::time::timeout(Duration::from_millis(500), third.read(&mut buf))
            .await
            .is_err(),
        "a third connection was served while two were held"
    );
    drop(a);
    let n = tokio::time::timeout(Duration::from_secs(5), third.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    shutdown.cancel();
}

/// After max_requests_per_connection requests the response says `Connection: close` and
/// the server closes the connection.
#[tokio::test]
async fn keep_alive_is_limited_per_connection() {
    let (addr, shutdown) = start(ConnectionLimits {
        max_requests_per_connection: 3,
        ..ConnectionLimits::default()
    })
    .await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut last = String::new();
    for _ in 0..3 {
        s.write_all(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        last = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
        assert!(last.starts_with("http/1.1 200"), "{last}");
    }
    assert!(last.contains("connection: close"), "{last}");
    assert!(closed_after(&mut s, Duration::from_secs(5)).await.is_some());
    shutdown.cancel();
}
