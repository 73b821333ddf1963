//! The harness's own check: a real kube-apiserver + etcd serves the built-in API, accepts a
//! CustomResourceDefinition, marks it Established, stores custom objects and rejects ones
//! that break the schema.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use datatracing_testkit::kubernetes::ApiServer;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, PostParams};
use kube::discovery::ApiResource;
use serde_json::json;

fn client(server: &ApiServer) -> kube::Client {
    let mut config = kube::Config::new(server.url().parse().unwrap());
    config.accept_invalid_certs = true;
    config.auth_info.token = Some(server.token().to_string().into());
    kube::Client::try_from(config).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_api_server_serves_crds_and_custom_objects() {
    let server = ApiServer::start();
    let client = client(&server);
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let list = namespaces.list(&Default::default()).await.unwrap();
    assert!(
        list.items
            .iter()
            .any(|n| n.metadata.name.as_deref() == Some("default"))
    );

    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "probes.test.datatracing.io"},
        "spec": {
            "group": "test.datatracing.io",
            "names": {"kind": "Probe", "plural": "probes", "singular": "probe"},
            "scope": "Namespaced",
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": {
                    "type": "object",
                    "properties": {"replicas": {"type": "integer", "minimum": 1}},
                    "x-kubernetes-validations": [{"rule": "self.replicas <= 10", "message": "at most 10 replicas"}]
                }}}}
            }]
        }
    }))
    .unwrap();
    crds.create(&PostParams::default(), &crd).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = crds.get("probes.test.datatracing.io").await.unwrap();
        let established = got.status.and_then(|s| s.conditions).is_some_and(|cs| {
            cs.iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
        });
        if established {
            break;
        }
        assert!(Instant::now() < deadline, "CRD never became Established");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let ar = ApiResource {
        group: "test.datatracing.io".into(),
        version: "v1".into(),
        api_version: "test.datatracing.io/v1".into(),
        kind: "Probe".into(),
        plural: "probes".into(),
    };
    let probes: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &ar);
    let ok: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "test.datatracing.io/v1", "kind": "Probe",
        "metadata": {"name": "ok"}, "spec": {"replicas": 3}
    }))
    .unwrap();
    probes.create(&PostParams::default(), &ok).await.unwrap();
    // The discovery of a new CRD can lag its Established condition by a moment.
    let bad: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "test.datatracing.io/v1", "kind": "Probe",
        "metadata": {"name": "bad"}, "spec": {"replicas": 20}
    }))
    .unwrap();
    let err = probes
        .create(&PostParams::default(), &bad)
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("at most 10 replicas"),
        "the CEL rule's message comes back: {text}"
    );
}
