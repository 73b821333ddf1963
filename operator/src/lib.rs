//! The DataTracing operator: reconciles `TracingPipeline` and `SamplingPolicy` custom
//! resources into collector and query Deployments, their configuration, and ClickHouse
//! retention.

pub mod crd;
pub mod schema;
