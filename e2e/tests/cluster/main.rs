//! End-to-end scenarios on a real one-node Kubernetes cluster (`datatracing_e2e::cluster`):
//! the operator installed with its Helm chart, the pods it renders running the product
//! image built from the tests' own build of the binary, ClickHouse and every client inside the cluster's
//! private network namespace.
//!
//! One test binary, so the cluster boots once for all scenarios. Each scenario is a module
//! and works in a Kubernetes namespace of its own, holding `Cluster::shared_lock`, so they
//! run in parallel; a scenario that changes what the others rely on (the operator's release,
//! the node) holds `Cluster::exclusive` instead. See e2e/README.md.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod apply_and_ingest;
mod collector_kill;
mod operator_failover;
mod policy_live;
mod retention;
mod routing;
mod support;
mod uninstall;
mod upgrade;
