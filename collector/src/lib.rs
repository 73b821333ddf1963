//! The collector: receive spans, validate them, queue them with a bound, sample, and write
//! them to a [`TraceWriter`](datatracing_store::TraceWriter).
//!
//! The stages are separate modules with narrow seams so later work can fill them without
//! touching the others:
//!
//! ```text
//! receive (HTTP, per protocol) -> queue (bounded: spans + bytes) -> sample -> write (batches,
//!                                   or durable log                    up to max_in_flight)
//! ```
//!
//! Acknowledgement: a `202` is sent only after the spans are committed to the store (the
//! writer batches concurrent requests into one write), so an acknowledged span survives
//! `kill -9`; with the durable queue, after they are appended to its log. See
//! `docs/adr/0002-ack-after-commit.md`.

mod error;
#[doc(hidden)]
pub mod fuzzing;
mod ingest;
mod metrics;
pub mod otlp;
mod queue;
mod receive;
pub mod route;
mod sample;
pub mod tail;
mod wal;
mod writer;

use std::sync::Arc;

use axum::Router;
use datatracing_config::Scope;
use datatracing_core::RetryPolicy;
use datatracing_http::{
    Authenticator, HttpMetrics, Readiness, TlsAcceptor, finish_router, ops_routes, serve_with,
};
use datatracing_store::TraceWriter;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

// The configuration types appear in this crate's API (`Collector::new`, `Collector::config`),
// so they are re-exported for callers; they live in `datatracing-config`.
pub use datatracing_config::{
    BatchConfig, CollectorConfig, DurableQueueConfig, QueueConfig, QueueMode, SamplingConfig,
    ShutdownRule,
};
pub use error::{Error, Result};
pub use metrics::CollectorMetrics;
pub use queue::{EnqueueError, SpanQueue};
pub use sample::{PassThrough, Sampler};
pub use writer::{WriterHandle, WriterStats};

/// The durable queue's record codec, exposed for its benchmark (`benches/wal.rs`) only.
#[doc(hidden)]
pub mod wal_record {
    pub use crate::wal::record::{DecodeError, decode, encode};
}

/// What [`Collector::start`] returns: the HTTP routes, the writer to stop, and the gRPC
/// service to serve.
#[derive(Debug)]
pub struct Started {
    /// Native JSON and OTLP/HTTP routes plus ops routes.
    pub router: Router,
    /// Stops the writer after draining the queue.
    pub writer: writer::WriterHandle,
    grpc: otlp::grpc::Export,
    peer: Option<route::lineage::PeerService>,
}

/// A collector wired to a store; call [`Collector::run`] to serve.
#[derive(Debug)]
pub struct Collector {
    config: CollectorConfig,
    store: Arc<dyn TraceWriter>,
    metrics: CollectorMetrics,
    http_metrics: HttpMetrics,
    wal: Option<(wal::Wal, wal::Pos)>,
    sampling: Option<(Arc<tail::PolicyHolder>, tail::SamplingMetrics)>,
    auth: Authenticator,
    routing: Option<(route::Router, tokio::sync::watch::Sender<Arc<route::Ring>>)>,
    tls: Option<Tls>,
}

/// The TLS acceptors of the two listeners (they announce different protocols).
#[derive(Debug)]
struct Tls {
    http: TlsAcceptor,
    grpc: TlsAcceptor,
}

impl Collector {
    /// Validates the configuration and registers metrics.
    /// `http_metrics` is registered once per process and shared by all servers in it.
    pub fn new(
        config: CollectorConfig,
        store: Arc<dyn TraceWriter>,
        registry: &mut Registry,
        http_metrics: HttpMetrics,
    ) -> Result<Self> {
        config.validate()?;
        let metrics = CollectorMetrics::register(registry, &config);
        let wal = if config.durable_queue.enabled {
            let (wal, recovered) = wal::Wal::open(&config.durable_queue).map_err(|e| {
                Error::Config(format!(
                    "cannot open the durable queue in {}: {e}",
                    config.durable_queue.dir.display()
                ))
            })?;
            if recovered.pending_bytes > 0 {
                tracing::info!(
                    pending_bytes = recovered.pending_bytes,
                    "durable queue holds acknowledged spans from a previous run; replaying"
                );
            }
            metrics
                .wal_bytes
                .set(i64::try_from(recovered.pending_bytes).unwrap_or(i64::MAX));
            Some((wal, recovered.checkpoint))
        } else {
            None
        };
        let sampling = if config.sampling.enabled {
            let m = tail::SamplingMetrics::register(registry);
            let holder = tail::PolicyHolder::load(&config.sampling, m.clone())
                .map_err(|e| Error::Config(format!("sampling policy: {e}")))?;
            Some((holder, m))
        } else {
            None
        };
        let routing = if config.peers.enabled {
            let members = route::initial_members(&config.peers).map_err(Error::Config)?;
            let m = route::RouteMetrics::register(registry);
            let token = route::PeerToken::load(&config.peers).map_err(Error::Config)?;
            // Read now: a missing file or a key that does not match fails start-up.
            let tls = match &config.peers.tls {
                Some(t) => {
                    let client = datatracing_http::ClientTls::load(t)
                        .map_err(|e| Error::Config(format!("collector.peers.tls: {e}")))?;
                    tracing::info!(
                        ca_file = %t.ca_file.display(),
                        client_certificate = t.cert_file.is_some(),
                        server_name = t.server_name.as_deref().unwrap_or("(each peer's host)"),
                        "peer link: TLS on"
                    );
                    Some(client)
                }
                None => None,
            };
            Some(route::Router::new(&config.peers, members, m, token, tls))
        } else {
            None
        };
        Ok(Self {
            config,
            store,
            metrics,
            http_metrics,
            wal,
            sampling,
            auth: Authenticator::disabled(),
            tls: None,
            routing,
        })
    }

    /// Requires bearer tokens: `ingest` on the ingest routes and OTLP/gRPC, `admin` on the
    /// sampling admin routes, any token on the ops routes when `auth.protect_ops` is set.
    pub fn with_auth(mut self, auth: Authenticator) -> Self {
        self.auth = auth;
        self
    }

    /// Serves TLS: `http` on the HTTP listener (ALPN `http/1.1`), `grpc` on the OTLP/gRPC
    /// one (ALPN `h2`).
    pub fn with_tls(mut self, http: TlsAcceptor, grpc: TlsAcceptor) -> Self {
        self.tls = Some(Tls { http, grpc });
        self
    }

    /// The handle that sets routing members, when `collector.peers` is on.
    pub fn membership(&self) -> Option<route::Membership> {
        self.routing
            .as_ref()
            .map(|(router, tx)| route::Membership::new(router.clone(), tx.clone()))
    }

    /// The configuration in force.
    pub fn config(&self) -> &CollectorConfig {
        &self.config
    }

    /// Starts the writer and returns the HTTP routes plus the handle that stops the writer.
    /// Used by [`Collector::run`] and by tests that drive the router directly.
    pub fn start(&self, readiness: Readiness, registry: Arc<Registry>) -> Result<Started> {
        let (queue, rx) = SpanQueue::new(&self.config.queue, self.metrics.clone());
        if let Some((wal, _)) = &self.wal {
            readiness.set_buffer(Arc::new(wal::Room {
                wal: wal.clone(),
                max_bytes: self.config.durable_queue.max_bytes,
                // Ready while one more large request fits (a tenth of the queue at most).
                reserve: (self.config.max_body_bytes as u64)
                    .min(self.config.durable_queue.max_bytes / 10),
            }));
        }
        let sampler: Box<dyn Sampler> = match &self.sampling {
            Some((holder, m)) => {
                tokio::spawn(tail::watch_policy(
                    Arc::downgrade(holder),
                    self.config.sampling.reload_interval.get(),
                ));
                let mut t = tail::TailSampler::new(
                    self.config.sampling.clone(),
                    Arc::clone(holder),
                    m.clone(),
                );
                if let Some((router, _)) = &self.routing {
                    t = t.with_peers(route::lineage::start(
                        router.subscribe(),
                        router.metrics.clone(),
                        self.config.peers.forward.connect_timeout.get(),
                        router.token().clone(),
                        router.tls().cloned(),
                    ));
                }
                Box::new(t)
            }
            None => Box::new(PassThrough),
        };
        // Lineage messages from peers reach the sampler through the writer's task.
        let (peer_service, peer_inbox, handoff) = match &self.routing {
            Some((router, _)) => {
                let (tx, rx) = tokio::sync::mpsc::channel(1024);
                let handoff = route::Handoff::new(router.clone(), tx.clone());
                handoff.watch_ring();
                let svc = route::lineage::PeerService {
                    inbox: tx,
                    metrics: router.metrics.clone(),
                    auth: self.auth.clone(),
                };
                (Some(svc), Some(rx), Some(handoff))
            }
            None => (None, None, None),
        };
        let closing = CancellationToken::new();
        let stop_routing = closing.clone();
        let source = match &self.wal {
            Some((wal, from)) => {
                drop(rx);
                wal::Drain::start(
                    wal.clone(),
                    *from,
                    self.config.batch.max_spans,
                    self.metrics.clone(),
                    closing.clone(),
                )
                .map(writer::Source::Log)
                .map_err(|e| Error::Config(format!("cannot start the durable queue drain: {e}")))?
            }
            None => writer::Source::Queue { rx, closed: false },
        };
        // Acknowledged spans are retried until the store takes them, at most 30s apart.
        let retry = RetryPolicy::forever(
            self.config.durable_queue.retry_backoff.get(),
            std::time::Duration::from_secs(30),
        );
        let handle = writer::spawn(
            source,
            Arc::clone(&self.store),
            writer::Sampling {
                sampler,
                peers: peer_inbox,
                handoff,
            },
            self.config.batch.clone(),
            retry,
            self.metrics.clone(),
            closing,
        );
        let ingest = ingest::Ingest {
            queue,
            metrics: self.metrics.clone(),
            limits: self.config.limits.clone(),
            wal: self.wal.as_ref().map(|(w, _)| w.clone()),
            logs: Default::default(),
            retention: Some(Arc::clone(&self.store)),
            router: self.routing.as_ref().map(|(r, _)| r.clone()),
        };
        if let Some((router, _)) = &self.routing
            && self.auth.enabled()
            && router.token().authorization().is_none()
        {
            tracing::warn!(
                "auth is on but collector.peers has no token (token_file or token_env with a \
                 `peer` token): peers will refuse what this replica forwards, and it will keep \
                 those spans itself (split traces)"
            );
        }
        if let Some((router, _)) = &self.routing
            && self.tls.is_some() != router.tls().is_some()
        {
            // `Config::validate` refuses this; a collector built another way says it loudly.
            tracing::error!(
                listener_tls = self.tls.is_some(),
                peer_tls = router.tls().is_some(),
                "the OTLP/gRPC listener's TLS and collector.peers.tls disagree: forwards will fail and every replica will keep what it receives (split traces)"
            );
        }
        if let Some(tls) = self.routing.as_ref().and_then(|(r, _)| r.tls()) {
            let metrics = tls.metrics.clone();
            tls.client.spawn_reloader(stop_routing.clone(), move |r| {
                let result = match r {
                    Ok(false) => return,
                    Ok(true) => "ok",
                    Err(_) => "error",
                };
                metrics
                    .tls_reloads
                    .get_or_create(&route::ResultLabels { result })
                    .inc();
            });
        }
        if let (Some((router, _)), Some(path)) = (&self.routing, &self.config.peers.token_file) {
            tokio::spawn(router.token().clone().watch(
                path.clone(),
                self.config.peers.reload_interval.get(),
                stop_routing.clone(),
            ));
        }
        if let Some((router, tx)) = &self.routing
            && self.config.peers.file.is_some()
        {
            tokio::spawn(route::watch_file(
                self.config.peers.clone(),
                router.clone(),
                tx.clone(),
                stop_routing,
            ));
        }
        // One pool and budget for OTLP over HTTP and gRPC.
        let pool = otlp::decode::DecodePool::new(&self.config, self.metrics.decode_memory.clone());
        let otlp = otlp::http::routes(ingest.clone(), pool.clone(), self.config.max_body_bytes);
        let native = receive::ReceiveState::new(&self.config, ingest.clone(), pool.clone());
        let grpc = otlp::grpc::Export {
            ingest: ingest.clone(),
            pool,
        };
        let admin = tail::admin_routes(self.sampling.as_ref().map(|(h, _)| Arc::clone(h)));
        let ingest_routes = receive::routes(native).merge(otlp);
        let api = self
            .auth
            .protect(ingest_routes, Some(Scope::Ingest))
            .merge(self.auth.protect(admin, Some(Scope::Admin)));
        let ops = self.auth.ops(ops_routes(readiness, registry));
        let router = finish_router(
            api.merge(ops),
            "collector",
            self.config.request_timeout.get(),
            self.http_metrics.clone(),
        );
        Ok(Started {
            router,
            writer: handle,
            grpc,
            peer: peer_service,
        })
    }

    /// Serves until `shutdown` fires, then drains: stops accepting, lets in-flight requests
    /// finish, writes what is queued (the durable queue's log included), and returns, all
    /// within `drain_timeout` of the signal: one deadline, so a supervisor's grace period
    /// (Kubernetes' `terminationGracePeriodSeconds`) can be sized against one setting.
    /// `grpc` serves OTLP/gRPC when given.
    pub async fn run(
        self,
        listener: TcpListener,
        grpc: Option<TcpListener>,
        readiness: Readiness,
        registry: Arc<Registry>,
        shutdown: CancellationToken,
    ) -> Result<()> {
        let started = self.start(readiness, registry)?;
        let drain = self.config.drain_timeout.get();
        let signalled = {
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                shutdown.cancelled().await;
                std::time::Instant::now()
            })
        };
        let tls = self.tls.is_some();
        tracing::info!(addr = %listener.local_addr()?, tls, "collector listening");
        let grpc_task = match grpc {
            Some(l) => {
                tracing::info!(addr = %l.local_addr()?, tls, "collector grpc listening");
                Some(tokio::spawn(otlp::grpc::serve(
                    l,
                    otlp::grpc::Services {
                        export: started.grpc,
                        peer: started.peer,
                    },
                    otlp::grpc::Limits {
                        max_decompressed: self.config.max_decompressed_bytes,
                        request_timeout: self.config.request_timeout.get(),
                        connections: self.config.connections.clone(),
                    },
                    self.auth.clone(),
                    self.tls.as_ref().map(|t| t.grpc.clone()),
                    shutdown.clone(),
                    drain,
                )))
            }
            None => None,
        };
        serve_with(
            listener,
            started.router,
            shutdown.clone(),
            drain,
            &self.config.connections,
            self.tls.as_ref().map(|t| &t.http),
        )
        .await?;
        if let Some(t) = grpc_task {
            match t.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "gRPC server failed"),
                Err(e) => tracing::error!(error = %e, "gRPC task failed"),
            }
        }
        let writer = started.writer;
        let since = signalled
            .await
            .map_or(std::time::Duration::ZERO, |at: std::time::Instant| {
                at.elapsed()
            });
        let stats = writer.finish(drain.saturating_sub(since)).await;
        tracing::info!(
            written_spans = stats.written,
            failed_spans = stats.failed,
            "collector drained"
        );
        Ok(())
    }
}
