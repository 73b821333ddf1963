//! The collector's settings (`collector:`): listeners, request limits, the queue, the
//! durable queue, write batching. Tail sampling's section is in [`crate::sampling`].

use std::net::SocketAddr;
use std::path::PathBuf;

use datatracing_core::{ConfigDuration, Limits};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{ConfigError, ConnectionLimits, PeersConfig, Result, SamplingConfig, TlsConfig};

/// Collector settings. Unknown keys are errors; every key has a default.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct CollectorConfig {
    /// Address of the ingest HTTP server (native JSON and OTLP/HTTP).
    pub listen: SocketAddr,
    /// Address of the OTLP/gRPC server; absent to disable gRPC.
    pub grpc_listen: Option<SocketAddr>,
    /// Largest request body accepted, in bytes, as sent (larger: 413).
    pub max_body_bytes: usize,
    /// Largest request body after decompression (gzip), in bytes (larger: 413). Also the gRPC
    /// message limit.
    pub max_decompressed_bytes: usize,
    /// Most spans accepted in one request (more: 413). Counted on the encoded request,
    /// before it is decoded.
    pub max_spans_per_request: usize,
    /// Most memory one OTLP request may take while it is decoded and converted, in bytes,
    /// estimated from its encoded shape before decoding (more: 413 / RESOURCE_EXHAUSTED).
    /// A request of many tiny spans or attributes decodes to far more memory than its size.
    pub max_request_memory_bytes: usize,
    /// Most memory all OTLP requests being decoded at once (HTTP and gRPC together) may
    /// take, in bytes, by the same estimate; a request that does not fit is refused at once
    /// with 429 / RESOURCE_EXHAUSTED and a retry delay.
    pub max_decode_memory_bytes: usize,
    /// OTLP requests decoded at once, each on a blocking thread so decoding never holds up
    /// the async workers (probes, other listeners); more wait for a thread.
    pub decode_workers: usize,
    /// Per-span size limits.
    pub limits: Limits,
    /// The queue between receiving and writing.
    pub queue: QueueConfig,
    /// The optional durable (on-disk) queue: acknowledge after the log, write later.
    pub durable_queue: DurableQueueConfig,
    /// Tail sampling with a policy.
    pub sampling: SamplingConfig,
    /// Write batching.
    pub batch: BatchConfig,
    /// A request taking longer than this is answered with 504.
    pub request_timeout: ConfigDuration,
    /// On shutdown, the longest wait for in-flight requests and then for the queue to drain.
    pub drain_timeout: ConfigDuration,
    /// Connection limits of the HTTP and of the gRPC listener (each its own count).
    pub connections: ConnectionLimits,
    /// TLS on the HTTP and gRPC listeners; absent: the file's top-level `tls`, if any.
    pub tls: Option<TlsConfig>,
    /// Trace-aware routing between replicas (off by default).
    pub peers: PeersConfig,
}

/// The bounded queue. When full, requests are refused with 429 and `Retry-After` (the
/// client keeps the data and retries); nothing accepted is dropped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// Most spans waiting to be written.
    pub max_spans: usize,
    /// Most bytes (approximate in-memory size) waiting to be written.
    pub max_bytes: usize,
    /// What a request does when the queue is full.
    pub mode: QueueMode,
    /// With `mode: block`, the longest a request waits for room before it is refused.
    pub block_timeout: ConfigDuration,
}

/// Backpressure behaviour when the queue is full.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum QueueMode {
    /// Refuse at once with 429 / RESOURCE_EXHAUSTED and `Retry-After`.
    #[default]
    Reject,
    /// Wait up to `block_timeout` for room, then refuse.
    Block,
}

/// How the writer groups queued spans into store writes.
///
/// Store writes are not retried here: each backend retries its transient failures itself
/// (ClickHouse under one deduplication token per insert); a write that still fails is
/// answered 503 and the client retries. With the durable queue, writes of acknowledged
/// spans are retried until the store takes them (`durable_queue.retry_backoff`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    /// Most spans in one store write. The writer never waits to fill a batch: it takes what
    /// is queued, so latency stays low when idle and batches grow under load.
    pub max_spans: usize,
    /// Store writes running at once. While they run the next batch is already taken and
    /// sampled, so the store is never idle waiting for the collector (and the other way
    /// round). 1 writes one batch at a time.
    pub max_in_flight: usize,
}

/// Durable queue settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct DurableQueueConfig {
    /// Acknowledge after the local log, not after the store.
    pub enabled: bool,
    /// Directory of the log.
    pub dir: PathBuf,
    /// Most bytes of not-yet-written spans kept; when full, requests are refused (429).
    pub max_bytes: u64,
    /// Segment size at which a new file starts.
    pub segment_bytes: u64,
    /// Delay between store write attempts while the store is down (doubles up to 30s).
    pub retry_backoff: ConfigDuration,
}

impl Default for DurableQueueConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            dir: PathBuf::from("./data/collector-wal"),
            max_bytes: 1024 * 1024 * 1024,
            segment_bytes: 64 * 1024 * 1024,
            retry_backoff: ConfigDuration::from_millis(200),
        }
    }
}

impl Default for CollectorConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 4318)),
            grpc_listen: Some(SocketAddr::from(([0, 0, 0, 0], 4317))),
            max_body_bytes: 16 * 1024 * 1024,
            max_decompressed_bytes: 64 * 1024 * 1024,
            max_spans_per_request: 20_000,
            max_request_memory_bytes: 128 * 1024 * 1024,
            max_decode_memory_bytes: 256 * 1024 * 1024,
            decode_workers: 4,
            limits: Limits::default(),
            queue: QueueConfig::default(),
            durable_queue: DurableQueueConfig::default(),
            sampling: SamplingConfig::default(),
            batch: BatchConfig::default(),
            request_timeout: ConfigDuration::from_secs(30),
            drain_timeout: ConfigDuration::from_secs(15),
            connections: ConnectionLimits::default(),
            tls: None,
            peers: PeersConfig::default(),
        }
    }
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            max_spans: 200_000,
            max_bytes: 256 * 1024 * 1024,
            mode: QueueMode::Reject,
            block_timeout: ConfigDuration::from_secs(5),
        }
    }
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_spans: 20_000,
            max_in_flight: 4,
        }
    }
}

impl CollectorConfig {
    /// Checks the settings and their relations.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(ConfigError::invalid(m));
        self.limits.validate().map_err(ConfigError::Invalid)?;
        self.sampling.validate()?;
        if self.max_body_bytes < 1024 {
            return bad("collector.max_body_bytes must be at least 1024");
        }
        if self.max_decompressed_bytes < self.max_body_bytes {
            return bad(
                "collector.max_decompressed_bytes must be at least collector.max_body_bytes",
            );
        }
        if self.max_spans_per_request == 0 {
            return bad("collector.max_spans_per_request must be positive");
        }
        if self.max_request_memory_bytes < self.max_body_bytes {
            return bad(
                "collector.max_request_memory_bytes must be at least collector.max_body_bytes",
            );
        }
        // A gzip request reserves its largest inflated size before inflating.
        if self.max_decode_memory_bytes
            < self
                .max_request_memory_bytes
                .max(self.max_decompressed_bytes)
        {
            return bad(
                "collector.max_decode_memory_bytes must be at least collector.max_request_memory_bytes and collector.max_decompressed_bytes",
            );
        }
        // The decode budget is kept in KiB permits of a semaphore, whose count is a u32.
        if self.max_decode_memory_bytes / 1024 > u32::MAX as usize {
            return bad("collector.max_decode_memory_bytes must be below 4 TiB");
        }
        if self.decode_workers == 0 || self.decode_workers > 256 {
            return bad("collector.decode_workers must be 1..=256");
        }
        if self.queue.max_spans < self.max_spans_per_request {
            return bad(
                "collector.queue.max_spans must be at least collector.max_spans_per_request",
            );
        }
        if self.queue.max_bytes < self.max_body_bytes {
            return bad("collector.queue.max_bytes must be at least collector.max_body_bytes");
        }
        if u32::try_from(self.queue.max_spans).is_err()
            || u32::try_from(self.queue.max_bytes).is_err()
        {
            return bad("collector.queue limits must be below 4Gi");
        }
        if self.batch.max_spans == 0 {
            return bad("collector.batch.max_spans must be positive");
        }
        if self.batch.max_in_flight == 0 || self.batch.max_in_flight > 64 {
            return bad("collector.batch.max_in_flight must be 1..=64");
        }
        if self.request_timeout.get().is_zero() {
            return bad("collector.request_timeout must be positive");
        }
        self.connections
            .validate("collector", self.request_timeout)?;
        if let Some(t) = &self.tls {
            t.validate("collector.tls")?;
        }
        self.peers.validate()?;
        if self.peers.enabled && self.grpc_listen.is_none() {
            return bad(
                "collector.peers needs collector.grpc_listen: peers forward over OTLP/gRPC",
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_relations_are_checked() {
        assert!(CollectorConfig::default().validate().is_ok());
        let c = CollectorConfig {
            queue: QueueConfig {
                max_spans: 10,
                ..QueueConfig::default()
            },
            ..CollectorConfig::default()
        };
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("queue.max_spans")
        );
        let c: CollectorConfig = serde_json::from_value(serde_json::json!({
            "listen": "127.0.0.1:9999", "batch": {"max_spans": 5}
        }))
        .unwrap();
        assert_eq!(c.batch.max_spans, 5);
        assert_eq!(c.batch.max_in_flight, 4);
        let c = CollectorConfig {
            batch: BatchConfig {
                max_in_flight: 0,
                ..BatchConfig::default()
            },
            ..CollectorConfig::default()
        };
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("max_in_flight")
        );
        assert!(
            serde_json::from_value::<CollectorConfig>(serde_json::json!({"lisen": "x"})).is_err()
        );
        for (c, needle) in [
            (
                CollectorConfig {
                    max_request_memory_bytes: 1024,
                    ..CollectorConfig::default()
                },
                "max_request_memory_bytes must be at least",
            ),
            (
                CollectorConfig {
                    max_decode_memory_bytes: 64 * 1024 * 1024,
                    ..CollectorConfig::default()
                },
                "max_decode_memory_bytes must be at least",
            ),
            (
                CollectorConfig {
                    decode_workers: 0,
                    ..CollectorConfig::default()
                },
                "decode_workers",
            ),
        ] {
            assert!(
                c.validate().unwrap_err().to_string().contains(needle),
                "{needle}"
            );
        }
    }
}
