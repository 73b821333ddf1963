//! DataTracing's SDK for instrumenting data pipelines, built on the OpenTelemetry crates.
//!
//! Everything it produces is plain OpenTelemetry: spans exported to any OTLP backend keep
//! their meaning there, and any OpenTelemetry-instrumented job shows up correctly in
//! DataTracing. What it adds is the pipeline layer:
//!
//! - [`conventions`]: the attribute names for pipeline work (step kind, job and run,
//!   datasets, record counts, offsets, watermarks, retries) shared with the collector and the
//!   query service; `docs/conventions.md` is their reference.
//! - [`step`]: a pipeline step span with kind, datasets and counts in one builder; fan-in as
//!   DATA_DEPENDENCY links, continuation from an upstream job as FOLLOWS_FROM, and the
//!   TIMEOUT and CANCELLED statuses the way the collector reads them.
//! - [`propagation`]: W3C trace context and baggage through HTTP headers, Kafka record
//!   headers, Temporal workflow headers and environment variables.
//! - [`export`]: an OTLP/HTTP export preset with a bounded queue, retries honouring
//!   `Retry-After`, counters of what was exported, failed and dropped, and a shutdown with
//!   a deadline.

pub mod export;
pub mod propagation;
pub mod step;

/// The pipeline semantic conventions (re-exported from `datatracing-core`, where the
/// collector and the query service read them).
pub use datatracing_core::conventions;

pub use export::{ExportConfig, ExportCounts, Pipeline};
pub use propagation::{EnvCarrier, HeaderCarrier, HeaderExtractor, KafkaHeaders, TemporalHeaders};
pub use step::{Counts, Dataset, Step, StepKind};

/// Errors of the SDK.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The export configuration cannot be used.
    #[error("export configuration: {0}")]
    Config(String),
    /// Flushing or shutting down the exporter failed or ran out of time.
    #[error("export: {0}")]
    Export(String),
    /// A carrier holds a trace context in a form that cannot be read.
    #[error("carrier: {0}")]
    Carrier(String),
}
