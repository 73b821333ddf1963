//! Every DataTracing process's configuration in one place: the `datatracing` configuration
//! file ([`Config`]) and each section's serde struct with its defaults and `validate()`.
//!
//! Servers (collector, query), stores (embedded, ClickHouse) and the operator take their
//! section from here, and the operator renders a typed [`Config`] for the pods it runs, so a
//! rendered file and the parser cannot drift apart. This crate is a leaf: it depends on serde
//! and the trace model's value types only, never on a runtime, a server or a storage driver,
//! so anything (the operator, tools) can depend on it cheaply.
//!
//! Every struct refuses unknown keys and gives every key a default; `validate()` checks
//! ranges and relations and names the offending key in its message.

mod auth;
mod clickhouse;
mod collector;
mod connections;
mod embedded;
mod error;
mod file;
mod interpolate;
mod operator;
mod peers;
mod query;
mod sampling;
mod tls;

pub use auth::{AuthConfig, MIN_TOKEN_LEN, Scope, TokenConfig};
pub use clickhouse::{ClickHouseBatchConfig, ClickHouseConfig, Compression};
pub use collector::{BatchConfig, CollectorConfig, DurableQueueConfig, QueueConfig, QueueMode};
pub use connections::ConnectionLimits;
pub use embedded::{EmbeddedConfig, Synchronous};
pub use error::{ConfigError, Result};
pub use file::{Backend, Config, LogConfig, LogFormat, StorageConfig};
pub use interpolate::interpolate;
pub use operator::{LeaderElectionConfig, OperatorConfig};
pub use peers::{
    ForwardCompression, ForwardConfig, KubernetesPeers, PeerTlsConfig, PeersConfig, parse_members,
};
pub use query::{LineageConfig, QueryConfig};
pub use sampling::{SamplingConfig, ShutdownRule};
pub use tls::{ClientAuth, TlsConfig};
