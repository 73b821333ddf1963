//! Collector membership from Kubernetes: watches the EndpointSlices of the collectors'
//! headless Service and hands the ready endpoints to the collector's routing ring.
//!
//! Only endpoints whose `ready` condition is not false count (a terminating or failing pod
//! leaves the ring before it goes away); each is `<address>:<port>` with the slice's port of
//! the configured name, so the members are the addresses peers forward to.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Context;
use datatracing_collector::route::Membership;
use datatracing_config::KubernetesPeers;
use futures::StreamExt;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};
use tokio_util::sync::CancellationToken;

/// The members an EndpointSlice contributes: ready endpoints with the named port.
pub fn slice_members(slice: &EndpointSlice, port_name: &str) -> Vec<String> {
    let Some(port) = slice
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some(port_name))
        .and_then(|p| p.port)
    else {
        return Vec::new();
    };
    slice
        .endpoints
        .iter()
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
        .flat_map(|e| e.addresses.iter())
        .map(|a| {
            if a.contains(':') {
                format!("[{a}]:{port}")
            } else {
                format!("{a}:{port}")
            }
        })
        .collect()
}

/// A client from the kubeconfig when one is given, else in-cluster / `KUBECONFIG`.
pub async fn kube_client(
    kubeconfig: Option<&std::path::Path>,
    insecure_skip_tls_verify: bool,
) -> anyhow::Result<kube::Client> {
    let mut config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?
        }
        None => kube::Config::infer().await.context(
            "no Kubernetes configuration: run in a pod, or set KUBECONFIG / --kubeconfig",
        )?,
    };
    if insecure_skip_tls_verify {
        config.accept_invalid_certs = true;
    }
    Ok(kube::Client::try_from(config)?)
}

/// Watches the Service's EndpointSlices until `shutdown`, publishing the members on every
/// change. Client and watch errors are retried with backoff (the members in force stay
/// meanwhile).
pub async fn watch_endpoint_slices(
    k: KubernetesPeers,
    membership: Membership,
    shutdown: CancellationToken,
) {
    let client = loop {
        match kube_client(k.kubeconfig.as_deref(), false).await {
            Ok(c) => break c,
            Err(e) => {
                tracing::error!(error = %e, "collector.peers.kubernetes: no Kubernetes client; every trace stays local; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(std::time::Duration::from_secs(10)) => {}
                    _ = shutdown.cancelled() => return,
                }
            }
        }
    };
    let api: Api<EndpointSlice> = Api::namespaced(client, &k.namespace);
    let labels = format!("kubernetes.io/service-name={}", k.service);
    let mut events = watcher(api, watcher::Config::default().labels(&labels))
        .default_backoff()
        .boxed();
    let mut slices: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut fresh: Option<BTreeMap<String, Vec<String>>> = None;
    loop {
        let event = tokio::select! {
            e = events.next() => e,
            _ = shutdown.cancelled() => return,
        };
        let Some(event) = event else { return };
        let name = |s: &EndpointSlice| s.metadata.name.clone().unwrap_or_default();
        match event {
            Ok(watcher::Event::Apply(s)) => {
                slices.insert(name(&s), slice_members(&s, &k.port_name));
            }
            Ok(watcher::Event::Delete(s)) => {
                slices.remove(&name(&s));
            }
            Ok(watcher::Event::Init) => fresh = Some(BTreeMap::new()),
            Ok(watcher::Event::InitApply(s)) => {
                if let Some(f) = fresh.as_mut() {
                    f.insert(name(&s), slice_members(&s, &k.port_name));
                }
                continue;
            }
            Ok(watcher::Event::InitDone) => {
                if let Some(f) = fresh.take() {
                    slices = f;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, service = %k.service, "EndpointSlice watch failed; retrying");
                continue;
            }
        }
        let members: BTreeSet<String> = slices.values().flatten().cloned().collect();
        membership.set(members.into_iter().collect());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_endpoints_with_the_named_port() {
        let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "s"},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 4318}, {"name": "otlp-grpc", "port": 4317}],
            "endpoints": [
                {"addresses": ["10.0.0.1"], "conditions": {"ready": true}},
                {"addresses": ["10.0.0.2"], "conditions": {"ready": false, "terminating": true}},
                {"addresses": ["10.0.0.3"]}
            ]
        }))
        .unwrap();
        assert_eq!(
            slice_members(&slice, "otlp-grpc"),
            vec!["10.0.0.1:4317".to_string(), "10.0.0.3:4317".to_string()]
        );
        assert!(slice_members(&slice, "nope").is_empty());
    }
}
