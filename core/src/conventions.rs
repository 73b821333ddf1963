//! Pipeline semantic conventions: the attribute names DataTracing reads from and writes on
//! spans and links, as constants.
//!
//! `docs/conventions.md` is the reference (requirement level, type, unit and the mapping to
//! OpenTelemetry's messaging and database conventions for each name). The constants live here,
//! in the crate without I/O, so the collector and the query service use exactly the names the
//! SDK (`datatracing-sdk`, which re-exports this module) writes, without depending on
//! OpenTelemetry themselves. A test in the SDK checks that the document and this module list
//! the same names.

/// Pipeline step kind of a span (`INGEST`, `TRANSFORM`, ..., see [`crate::SpanKind`]).
/// String, required on pipeline steps. Wins over the OTLP span kind.
pub const SPAN_KIND: &str = "datatracing.span.kind";
/// `TIMEOUT` or `CANCELLED`, set together with OTLP status ERROR (OTLP has only three codes).
/// String, conditionally required.
pub const STATUS: &str = "datatracing.status";
/// Link attribute: `data_dependency`, `follows_from` or `child_of` (case-insensitive).
/// String, required on DataTracing links; absent means FOLLOWS_FROM.
pub const LINK_TYPE: &str = "datatracing.link.type";
/// Link attribute: the qualified name (see [`dataset_name`]) of the input dataset a
/// DATA_DEPENDENCY link is about. String, recommended on DATA_DEPENDENCY links.
pub const LINK_DATASET: &str = "datatracing.link.dataset";

/// Name of the job (the scheduled unit, stable across runs), e.g. `orders-daily`.
/// String, recommended.
pub const JOB_NAME: &str = "datatracing.job.name";
/// Identifier of one run of the job (OpenLineage's run id when there is one). String,
/// recommended.
pub const RUN_ID: &str = "datatracing.run.id";
/// Qualified names of the datasets the step read. String array, recommended.
pub const DATASET_INPUTS: &str = "datatracing.dataset.inputs";
/// Qualified names of the datasets the step wrote. String array, recommended.
pub const DATASET_OUTPUTS: &str = "datatracing.dataset.outputs";
/// Records read. Int, unit `{record}`, recommended.
pub const RECORDS_IN: &str = "datatracing.records.in";
/// Records written. Int, unit `{record}`, recommended.
pub const RECORDS_OUT: &str = "datatracing.records.out";
/// Records read but neither written nor passed on (failed validation, dead-lettered).
/// Int, unit `{record}`, recommended.
pub const RECORDS_REJECTED: &str = "datatracing.records.rejected";
/// Bytes read. Int, unit `By`, optional.
pub const BYTES_IN: &str = "datatracing.bytes.in";
/// Bytes written. Int, unit `By`, optional.
pub const BYTES_OUT: &str = "datatracing.bytes.out";
/// Partition of the input the step worked on (a Kafka partition, a table partition).
/// String, optional. For Kafka also set `messaging.destination.partition.id`.
pub const PARTITION: &str = "datatracing.partition";
/// First offset (inclusive) of the input range. Int, optional.
pub const OFFSET_START: &str = "datatracing.offset.start";
/// Last offset (inclusive) of the input range. Int, optional.
pub const OFFSET_END: &str = "datatracing.offset.end";
/// Event-time watermark when the step ended, Unix nanoseconds. Int, unit `ns`, optional.
pub const WATERMARK: &str = "datatracing.watermark";
/// How far event time lagged wall-clock time when the step ended. Double, unit `s`,
/// optional.
pub const EVENT_TIME_LAG: &str = "datatracing.event_time.lag";
/// Name of the schema of the data written. String, optional.
pub const SCHEMA_NAME: &str = "datatracing.schema.name";
/// Version of that schema. String, optional.
pub const SCHEMA_VERSION: &str = "datatracing.schema.version";
/// Attempt number of this execution of the step: 0 for the first try. Int, recommended when
/// the step is retried.
pub const RETRY_ATTEMPT: &str = "datatracing.retry.attempt";

/// Every span attribute name above (not the link attributes), in document order.
pub const SPAN_ATTRIBUTES: &[&str] = &[
    SPAN_KIND,
    STATUS,
    JOB_NAME,
    RUN_ID,
    DATASET_INPUTS,
    DATASET_OUTPUTS,
    RECORDS_IN,
    RECORDS_OUT,
    RECORDS_REJECTED,
    BYTES_IN,
    BYTES_OUT,
    PARTITION,
    OFFSET_START,
    OFFSET_END,
    WATERMARK,
    EVENT_TIME_LAG,
    SCHEMA_NAME,
    SCHEMA_VERSION,
    RETRY_ATTEMPT,
];

/// Every link attribute name above, in document order.
pub const LINK_ATTRIBUTES: &[&str] = &[LINK_TYPE, LINK_DATASET];

/// Values of [`LINK_TYPE`] as written (the reader accepts any case).
pub mod link_type {
    /// The linked span produced data this span consumed.
    pub const DATA_DEPENDENCY: &str = "data_dependency";
    /// This span continues the linked one (an upstream job, a retry).
    pub const FOLLOWS_FROM: &str = "follows_from";
    /// The linked span is an extra parent.
    pub const CHILD_OF: &str = "child_of";
}

/// The qualified name of a dataset: OpenLineage's `namespace` and `name` joined by `/`
/// (`kafka://broker:9092` + `orders` gives `kafka://broker:9092/orders`), with exactly one
/// `/` between them when either side already has one (`s3://bucket/` + `/a.parquet` gives
/// `s3://bucket/a.parquet`); a bare scheme keeps its slashes (`file://` + `/data/a.parquet`
/// gives `file:///data/a.parquet`).
pub fn dataset_name(namespace: &str, name: &str) -> String {
    // A namespace ending in `://` is a bare scheme: its slashes belong to it, not between.
    let slash = namespace.ends_with('/') && !namespace.ends_with("://");
    match (slash, name.strip_prefix('/')) {
        (true, Some(rest)) => format!("{namespace}{rest}"),
        (true, None) | (false, Some(_)) => format!("{namespace}{name}"),
        (false, None) => format!("{namespace}/{name}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_namespaced() {
        let mut all: Vec<&str> = SPAN_ATTRIBUTES
            .iter()
            .chain(LINK_ATTRIBUTES)
            .copied()
            .collect();
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n, "a name is listed twice");
        assert!(all.iter().all(|a| a.starts_with("datatracing.")));
    }

    #[test]
    fn dataset_names_join_namespace_and_name() {
        assert_eq!(
            dataset_name("kafka://b:9092", "orders"),
            "kafka://b:9092/orders"
        );
        assert_eq!(
            dataset_name("s3://bucket/", "/a/b.parquet"),
            "s3://bucket/a/b.parquet"
        );
        assert_eq!(dataset_name("file://", "/out/x"), "file:///out/x");
        assert_eq!(
            dataset_name("postgres://db:5432", "shop.public.orders"),
            "postgres://db:5432/shop.public.orders"
        );
    }

    #[test]
    fn link_type_values_parse_as_link_types() {
        use crate::LinkType;
        assert_eq!(
            link_type::DATA_DEPENDENCY.parse::<LinkType>().ok(),
            Some(LinkType::DataDependency)
        );
        assert_eq!(
            link_type::FOLLOWS_FROM.parse::<LinkType>().ok(),
            Some(LinkType::FollowsFrom)
        );
        assert_eq!(
            link_type::CHILD_OF.parse::<LinkType>().ok(),
            Some(LinkType::ChildOf)
        );
    }
}
