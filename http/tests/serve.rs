//! `serve` on a real loopback listener with a real HTTP client: requests are answered, and on
//! shutdown the listener closes, in-flight requests finish, and draining is bounded.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use datatracing_http::{HttpMetrics, finish_router, serve};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// A `/slow` handler that reports when it starts and answers once released.
struct Slow {
    router: Router,
    started: mpsc::UnboundedReceiver<()>,
    release: oneshot::Sender<()>,
}

fn slow_router() -> Slow {
    let (started_tx, started) = mpsc::unbounded_channel();
    let (release, release_rx) = oneshot::channel::<()>();
    let release_rx = Arc::new(Mutex::new(Some(release_rx)));
    let router = Router::new()
        .route("/fast", get(|| async { "fast" }))
        .route(
            "/slow",
            get(move || {
                let started_tx = started_tx.clone();
                let release_rx = release_rx.lock().unwrap().take();
                async move {
                    started_tx.send(()).unwrap();
                    match release_rx {
                        Some(rx) => {
                            // A dropped sender means "never release".
                            if rx.await.is_err() {
                                std::future::pending::<()>().await;
                            }
                            "released"
                        }
                        None => "no second slow request expected",
                    }
                }
            }),
        );
    let metrics = HttpMetrics::register(&mut Registry::default());
    Slow {
        router: finish_router(router, "test", Duration::from_secs(60), metrics),
        started,
        release,
    }
}

async fn start(
    router: Router,
    drain: Duration,
) -> (
    SocketAddr,
    CancellationToken,
    tokio::task::JoinHandle<Result<(), datatracing_http::ServeError>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(serve(listener, router, shutdown.clone(), drain));
    (addr, shutdown, task)
}

/// Waits (bounded) until nothing accepts connections on `addr` any more.
async fn await_closed(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "{addr} still accepts connections"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_requests_finish_after_shutdown_and_new_ones_are_refused() {
    let mut slow = slow_router();
    let (addr, shutdown, task) = start(slow.router.clone(), Duration::from_secs(30)).await;
    // A fresh connection per request, so a kept-alive one cannot hide the closed listener.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();

    let fast = client
        .get(format!("http://{addr}/fast"))
        .send()
        .await
        .unwrap();
    assert_eq!(fast.status(), 200);
    assert_eq!(fast.text().await.unwrap(), "fast");

    let in_flight = tokio::spawn({
        let client = client.clone();
        async move {
            let r = client
                .get(format!("http://{addr}/slow"))
                .send()
                .await
                .unwrap();
            (r.status(), r.text().await.unwrap())
        }
    });
    slow.started.recv().await.unwrap();

    shutdown.cancel();
    await_closed(addr).await;
    assert!(
        !task.is_finished(),
        "serve returned with a request in flight"
    );

    slow.release.send(()).unwrap();
    let (status, text) = tokio::time::timeout(Duration::from_secs(10), in_flight)
        .await
        .expect("the in-flight request finished")
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(text, "released");
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("serve returned after draining")
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_is_bounded_when_a_request_never_finishes() {
    let mut slow = slow_router();
    let (addr, shutdown, task) = start(slow.router.clone(), Duration::from_millis(100)).await;
    let in_flight = tokio::spawn(async move {
        reqwest::get(format!("http://{addr}/slow"))
            .await
            .map(|_| ())
    });
    slow.started.recv().await.unwrap();
    drop(slow.release); // never released

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("serve gave up on the stuck request after the drain bound")
        .unwrap()
        .unwrap();
    // The stuck request's connection goes away with the server task's runtime resources.
    await_closed(addr).await;
    in_flight.abort();
}
