//! Export to the DataTracing collector (or any OTLP/HTTP endpoint): a preset over
//! opentelemetry-otlp's HTTP exporter and the SDK's batch span processor, plus counters of
//! what happened to every span that ended.
//!
//! What opentelemetry-otlp already does is used as is: batching, a bounded queue, a
//! per-export deadline, and retries with exponential backoff on 429/502/503/504 and on
//! connection failures, honouring `Retry-After`. What it lacks is added here: counters of
//! spans ended, exported, failed after retries and dropped because the queue was full (the
//! SDK only logs the last), and a shutdown that flushes within a deadline and reports them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use opentelemetry::Context;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SdkTracer, SdkTracerProvider, Span, SpanData,
    SpanExporter, SpanProcessor,
};

use crate::Error;

/// Where and how to export. [`ExportConfig::new`] gives the preset; every field can be
/// changed before [`ExportConfig::install`].
#[derive(Debug, Clone)]
pub struct ExportConfig {
    /// Base URL of the collector's OTLP/HTTP listener (`http://collector:4318`);
    /// `/v1/traces` is appended.
    pub endpoint: String,
    /// `service.name` of the resource.
    pub service_name: String,
    /// Spans waiting for export at most; more are dropped and counted.
    pub max_queue_size: usize,
    /// Spans per export request at most.
    pub max_export_batch_size: usize,
    /// How long a batch waits to fill before it is sent.
    pub scheduled_delay: Duration,
    /// Deadline of one export, retries included (opentelemetry-otlp uses the request
    /// timeout as the retry deadline).
    pub export_timeout: Duration,
    /// Retries after the first attempt of one export.
    pub max_retries: usize,
    /// Delay before the first retry; doubled each time up to [`Self::max_backoff`].
    pub initial_backoff: Duration,
    /// Longest delay between retries (a longer `Retry-After` from the server wins).
    pub max_backoff: Duration,
}

impl ExportConfig {
    /// The preset for the DataTracing collector: a queue of 8192 spans, batches of 512 sent
    /// every second, 30 s per export with up to 10 retries backing off from 100 ms to 5 s.
    /// A collector that is down for up to about 25 s loses nothing while the queue holds.
    pub fn new(endpoint: impl Into<String>, service_name: impl Into<String>) -> Self {
        ExportConfig {
            endpoint: endpoint.into(),
            service_name: service_name.into(),
            max_queue_size: 8192,
            max_export_batch_size: 512,
            scheduled_delay: Duration::from_secs(1),
            export_timeout: Duration::from_secs(30),
            max_retries: 10,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        }
    }

    /// Builds the OTLP/HTTP exporter and the pipeline around it. The exporter's blocking HTTP
    /// client runs on the batch processor's own thread, so spans may be ended on any thread,
    /// inside a Tokio runtime or not; [`Pipeline::flush`] and [`Pipeline::shutdown`] block.
    pub fn install(self) -> Result<Pipeline, Error> {
        let retry = opentelemetry_otlp::RetryPolicy::recommended()
            .with_max_retries(self.max_retries)
            .with_initial_delay(self.initial_backoff)
            .with_max_delay(self.max_backoff)
            .with_max_jitter(Duration::from_millis(50));
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(format!("{}/v1/traces", self.endpoint.trim_end_matches('/')))
            .with_timeout(self.export_timeout)
            .with_retry_policy(retry)
            .build()
            .map_err(|e| Error::Config(format!("OTLP exporter: {e}")))?;
        self.install_with(exporter)
    }

    /// Builds the pipeline (queue, batching, counters) around another exporter than OTLP/HTTP:
    /// another protocol, or an in-memory one in tests and benchmarks. The retry and endpoint
    /// fields are then the exporter's business and unused here.
    pub fn install_with<E: SpanExporter + 'static>(self, exporter: E) -> Result<Pipeline, Error> {
        if self.max_queue_size == 0 || self.max_export_batch_size == 0 {
            return Err(Error::Config(
                "max_queue_size and max_export_batch_size must be at least 1".into(),
            ));
        }
        let counts = Arc::new(Counters::default());
        let processor = BatchSpanProcessor::builder(CountingExporter {
            inner: exporter,
            counts: counts.clone(),
        })
        .with_batch_config(
            BatchConfigBuilder::default()
                .with_max_queue_size(self.max_queue_size)
                .with_max_export_batch_size(self.max_export_batch_size.min(self.max_queue_size))
                .with_scheduled_delay(self.scheduled_delay)
                .build(),
        )
        .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(CountingProcessor {
                inner: processor,
                counts: counts.clone(),
            })
            .with_resource(
                Resource::builder_empty()
                    .with_service_name(self.service_name)
                    .build(),
            )
            .build();
        Ok(Pipeline { provider, counts })
    }
}

/// What happened to the spans of a [`Pipeline`] so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExportCounts {
    /// Spans ended (sampled), that is handed to the batch processor.
    pub ended: u64,
    /// Spans the collector accepted.
    pub exported: u64,
    /// Spans whose export failed after every retry (or was refused for good).
    pub failed: u64,
    /// Spans dropped because the queue was full, exact once the pipeline is flushed or shut
    /// down (before that, spans still queued count here too).
    pub dropped: u64,
}

#[derive(Debug, Default)]
struct Counters {
    ended: AtomicU64,
    handed: AtomicU64,
    exported: AtomicU64,
    failed: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> ExportCounts {
        // Read the later stages first so a concurrent export never makes `dropped` negative.
        let exported = self.exported.load(Ordering::Acquire);
        let failed = self.failed.load(Ordering::Acquire);
        let handed = self.handed.load(Ordering::Acquire);
        let ended = self.ended.load(Ordering::Acquire);
        ExportCounts {
            ended,
            exported,
            failed,
            dropped: ended.saturating_sub(handed),
        }
    }
}

#[derive(Debug)]
struct CountingProcessor<P> {
    inner: P,
    counts: Arc<Counters>,
}

impl<P: SpanProcessor> SpanProcessor for CountingProcessor<P> {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        self.counts.ended.fetch_add(1, Ordering::AcqRel);
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

#[derive(Debug)]
struct CountingExporter<E> {
    inner: E,
    counts: Arc<Counters>,
}

impl<E: SpanExporter> SpanExporter for CountingExporter<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len() as u64;
        self.counts.handed.fetch_add(n, Ordering::AcqRel);
        let result = self.inner.export(batch).await;
        match &result {
            Ok(()) => self.counts.exported.fetch_add(n, Ordering::AcqRel),
            Err(_) => self.counts.failed.fetch_add(n, Ordering::AcqRel),
        };
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// An installed export pipeline: a tracer provider exporting to the collector, and its
/// counters.
#[derive(Debug)]
pub struct Pipeline {
    provider: SdkTracerProvider,
    counts: Arc<Counters>,
}

impl Pipeline {
    /// A tracer named after the instrumented library or job.
    pub fn tracer(&self, name: &'static str) -> SdkTracer {
        self.provider.tracer(name)
    }

    /// The tracer provider (to install globally with
    /// `opentelemetry::global::set_tracer_provider`).
    pub fn provider(&self) -> &SdkTracerProvider {
        &self.provider
    }

    /// What happened to the spans so far.
    pub fn counts(&self) -> ExportCounts {
        self.counts.snapshot()
    }

    /// Exports every queued span now (blocking until done or failed).
    pub fn flush(&self) -> Result<ExportCounts, Error> {
        self.provider
            .force_flush()
            .map_err(|e| Error::Export(e.to_string()))?;
        Ok(self.counts())
    }

    /// Flushes what is queued and stops, giving up after `deadline`. Returns the final
    /// counts, in which `dropped` is exact; an error says the deadline passed or the
    /// pipeline was already shut down (the counts are then in [`Self::counts`]).
    pub fn shutdown(&self, deadline: Duration) -> Result<ExportCounts, Error> {
        self.provider
            .shutdown_with_timeout(deadline)
            .map_err(|e| Error::Export(e.to_string()))?;
        Ok(self.counts())
    }
}
