//! TLS and tokens through the operator, on a real API server (issue 13): a
//! `TracingPipeline` referencing a TLS Secret, a client CA, token Secrets and a ClickHouse
//! CA is admitted; the Deployments the API server stores mount each Secret; the ConfigMap's
//! file points at the mounted files and is what the binary loads; probes use HTTPS. A token
//! name that is not a file name is refused at admission. No ClickHouse: retention stays
//! unapplied, which does not stop the children being written.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{Cluster, Operator, free_port, wait_for};
use datatracing_config::{ClientAuth, Config, Scope};
use datatracing_operator::crd::TracingPipeline;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};

const OPERATOR_NS: &str = "datatracing-system";
const NS: &str = "team-s";
const WAIT: Duration = Duration::from_secs(60);

fn pipeline(name: &str, clickhouse: &str, token_name: &str) -> Value {
    json!({
        "apiVersion": "datatracing.io/v1alpha1", "kind": "TracingPipeline",
        "metadata": {"name": name},
        "spec": {
            "storage": {"url": clickhouse, "database": name,
                        "caSecretRef": {"name": "clickhouse-ca", "key": "ca.crt"}},
            "tls": {"secretName": "orders-tls",
                    "clientCaSecretRef": {"name": "client-ca", "key": "ca.crt"},
                    "clientAuth": "Optional"},
            "auth": {"tokens": [
                {"name": token_name, "scopes": ["ingest"],
                 "secretRef": {"name": "ingest-token", "key": "token"}},
                {"name": "grafana", "scopes": ["query", "admin"],
                 "secretRef": {"name": "grafana-token", "key": "token"}}
            ]}
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn secrets_for_tls_tokens_and_the_clickhouse_ca_are_mounted_and_configured() {
    let cluster = Cluster::start().await;
    cluster.namespace(OPERATOR_NS).await;
    cluster.namespace(NS).await;
    let token = cluster.operator_token(OPERATOR_NS, &[]).await;
    let op = Operator::start(&cluster, &token, "op-s", OPERATOR_NS);
    let admin = cluster.admin.clone();
    let pipelines: Api<TracingPipeline> = Api::namespaced(admin.clone(), NS);
    let clickhouse = format!("https://127.0.0.1:{}", free_port());
    let apply = |body: Value| {
        let pipelines = pipelines.clone();
        async move {
            let name = body["metadata"]["name"].as_str().unwrap().to_string();
            pipelines
                .patch(
                    &name,
                    &PatchParams::apply("tests").force(),
                    &Patch::Apply(&body),
                )
                .await
        }
    };

    // A token name that cannot be a file name is refused by the API server.
    let e = apply(pipeline("bad", &clickhouse, "../etc"))
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("lowercase letters, digits and dashes"),
        "{e}"
    );

    apply(pipeline("orders", &clickhouse, "pipelines"))
        .await
        .unwrap();
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), NS);
    for name in ["orders-collector", "orders-query"] {
        let d = wait_for(name, WAIT, || async {
            deployments.get_opt(name).await.ok()?
        })
        .await;
        let pod = serde_json::to_value(d.spec.unwrap().template.spec.unwrap()).unwrap();
        let volume = |n: &str| {
            pod["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|v| v["name"] == n)
                .cloned()
                .unwrap_or_else(|| panic!("{name}: no volume {n}: {pod}"))
        };
        assert_eq!(volume("tls")["secret"]["secretName"], "orders-tls");
        assert_eq!(volume("tls-client-ca")["secret"]["secretName"], "client-ca");
        assert_eq!(
            volume("clickhouse-ca")["secret"]["secretName"],
            "clickhouse-ca"
        );
        let sources = volume("tokens")["projected"]["sources"].clone();
        assert_eq!(
            sources[0]["secret"],
            json!({"name": "ingest-token", "items": [{"key": "token", "path": "pipelines"}]})
        );
        let container = &pod["containers"][0];
        let mounts: HashMap<String, String> = container["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["name"].as_str().unwrap().to_string(),
                    m["mountPath"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        for (v, dir) in [
            ("tls", "/etc/datatracing/tls"),
            ("tls-client-ca", "/etc/datatracing/tls-client-ca"),
            ("tokens", "/etc/datatracing/tokens"),
            ("clickhouse-ca", "/etc/datatracing/clickhouse-ca"),
        ] {
            assert_eq!(
                mounts.get(v).map(String::as_str),
                Some(dir),
                "{name}: {mounts:?}"
            );
        }
        // Client certificates are optional here, so the kubelet's HTTPS probes still work.
        assert_eq!(
            container["readinessProbe"]["httpGet"]["scheme"], "HTTPS",
            "{name}"
        );
    }

    // The file the pods load names the mounted files, and only them.
    let maps: Api<ConfigMap> = Api::namespaced(admin.clone(), NS);
    let cm = wait_for("orders-config", WAIT, || async {
        maps.get_opt("orders-config").await.ok()?
    })
    .await;
    let text = cm.data.unwrap()["datatracing.yaml"].clone();
    let config = Config::from_yaml(&text, &HashMap::new()).unwrap();
    config.validate().unwrap();
    let tls = config.tls.unwrap();
    assert_eq!(tls.cert_file.to_str(), Some("/etc/datatracing/tls/tls.crt"));
    assert_eq!(tls.key_file.to_str(), Some("/etc/datatracing/tls/tls.key"));
    assert_eq!(
        tls.client_ca_file.as_deref().and_then(|p| p.to_str()),
        Some("/etc/datatracing/tls-client-ca/ca.crt")
    );
    assert_eq!(tls.client_auth(), Some(ClientAuth::Optional));
    let tokens: Vec<_> = config
        .auth
        .tokens
        .iter()
        .map(|t| (t.name.as_str(), t.file.clone().unwrap(), t.scopes.clone()))
        .collect();
    assert_eq!(
        tokens,
        [
            (
                "pipelines",
                "/etc/datatracing/tokens/pipelines".into(),
                vec![Scope::Ingest]
            ),
            (
                "grafana",
                "/etc/datatracing/tokens/grafana".into(),
                vec![Scope::Query, Scope::Admin]
            ),
        ]
    );
    assert_eq!(
        config
            .storage
            .clickhouse
            .ca_file
            .as_deref()
            .and_then(|p| p.to_str()),
        Some("/etc/datatracing/clickhouse-ca/ca.crt")
    );
    op.stop().await.unwrap();
}
