//! `runbooks/disaster-recovery.md`, executed on a real API server and a real ClickHouse
//! engine: its shell blocks run as written (bash, with the runbook's variables set), so
//! the runbook cannot drift from what works.
//!
//! Everything is lost (pipeline, policies, Secret, operator, CRDs, the trace database) after a
//! backup, and restored in the runbook's order; every trace is read back and the pipeline is
//! Ready on its restored data. Then the operator is reinstalled over a healthy install: no
//! spec drift (`kubectl diff` empty), no data change (table checksums equal), and no child
//! rewritten.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Cluster, Operator, clickhouse_query, repo_root, wait_for};
use datatracing_core::{Timestamp, TraceId};
use datatracing_operator::crd::{SamplingPolicy, TracingPipeline};
use datatracing_store::{TraceReader, TraceWriter};
use datatracing_store_clickhouse::{ClickHouseConfig, ClickHouseMetrics, ClickHouseStore};
use datatracing_store_contract::{fresh_trace_id, simple_span};
use datatracing_testkit::clickhouse::{ChdbOptions, ClickHouse, unique_database};
use datatracing_testkit::kubernetes::tool;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::api::rbac::v1::RoleBinding;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use serde_json::json;

const OPERATOR_NS: &str = "datatracing-system";
const NS: &str = "team-dr";
const PIPELINE: &str = "orders";
const WAIT: Duration = Duration::from_secs(90);
const TRACES: usize = 40;

/// The ```sh block of the runbook whose first line is `# dr: <step>`.
fn block(step: &str) -> String {
    datatracing_testkit::runbook_block(&repo_root().join("runbooks/disaster-recovery.md"), step)
}

/// Runs a runbook block with bash (`-euo pipefail`), `kubectl` on the PATH and the
/// runbook's variables in the environment; returns stdout.
fn run_block(step: &str, vars: &[(&str, String)], kubeconfig: &Path) -> String {
    let script = block(step);
    let kubectl_dir = tool("kubectl").parent().unwrap().to_path_buf();
    let path = format!(
        "{}:{}",
        kubectl_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = std::process::Command::new("bash");
    cmd.args(["-euo", "pipefail", "-c", &script])
        .env("PATH", path)
        .env("KUBECONFIG", kubeconfig);
    for (k, v) in vars {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("bash");
    assert!(
        out.status.success(),
        "runbook step `{step}` failed:\n{script}\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn sql(ch: &ClickHouse, q: &str) -> String {
    clickhouse_query(ch.url(), ch.user(), ch.password(), q).await
}

/// Distinct rows and an order-independent checksum of them, per trace table, to compare
/// data. Distinct: a restore may bring a table's parts back unmerged (span_names' rows
/// arrive as identical copies until the next merge), which is the same data.
async fn fingerprint(ch: &ClickHouse, db: &str) -> String {
    let mut out = String::new();
    for table in ["spans", "span_index", "span_links", "span_names"] {
        let row = sql(
            ch,
            &format!(
                "SELECT count(), groupBitXor(h) FROM (SELECT DISTINCT cityHash64(*) AS h FROM {db}.{table})"
            ),
        )
        .await;
        out.push_str(&format!("{table}: {row}"));
    }
    out
}

/// The pipeline's configuration, children and retention are in place for the generation
/// its status describes (`Ready` also needs running pods, which this API server has not).
async fn ready(api: &Api<TracingPipeline>) -> Option<()> {
    let p = api.get(PIPELINE).await.ok()?;
    let s = p.status?;
    (s.observed_generation == p.metadata.generation
        && [
            "ConfigurationGenerated",
            "ResourcesApplied",
            "RetentionApplied",
        ]
        .iter()
        .all(|t| {
            s.conditions
                .iter()
                .any(|c| c.type_ == *t && c.status == "True")
        }))
    .then_some(())
}

/// What Kubernetes' garbage collector does when an owner is deleted (this API server runs
/// without kube-controller-manager): deletes the objects whose owner was `uid`.
async fn collect_garbage(admin: &kube::Client, uid: &str) {
    async fn sweep<K>(admin: &kube::Client, uid: &str)
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
        K::DynamicType: Default,
    {
        let api: Api<K> = Api::namespaced(admin.clone(), NS);
        for o in api.list(&ListParams::default()).await.unwrap().items {
            let meta = o.meta();
            if meta.owner_references.iter().flatten().any(|r| r.uid == uid) {
                let name = meta.name.clone().unwrap();
                api.delete(&name, &DeleteParams::default()).await.unwrap();
            }
        }
    }
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::{Service, ServiceAccount};
    use k8s_openapi::api::policy::v1::PodDisruptionBudget;
    use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
    sweep::<Deployment>(admin, uid).await;
    sweep::<Service>(admin, uid).await;
    sweep::<ServiceAccount>(admin, uid).await;
    sweep::<ConfigMap>(admin, uid).await;
    sweep::<PodDisruptionBudget>(admin, uid).await;
    // The routing collectors' EndpointSlice access.
    sweep::<Role>(admin, uid).await;
    sweep::<RoleBinding>(admin, uid).await;
}

async fn write_traces(ch: &ClickHouse, db: &str) -> Vec<TraceId> {
    let store = ClickHouseStore::open(
        ClickHouseConfig {
            url: ch.url().into(),
            database: db.into(),
            user: ch.user().into(),
            password: ch.password().into(),
            ..ClickHouseConfig::default()
        },
        ClickHouseMetrics::unregistered(),
    )
    .await
    .unwrap();
    let start = Timestamp::now().saturating_add_nanos(-600_000_000_000);
    let ids: Vec<TraceId> = (0..TRACES).map(|_| fresh_trace_id()).collect();
    let spans: Vec<_> = ids
        .iter()
        .flat_map(|id| {
            (0..5u64).map(move |i| simple_span(*id, i, i.checked_sub(1), "dr-svc", start, 1_000))
        })
        .collect();
    store.write(spans.into()).await.unwrap();
    store.close().await.unwrap();
    ids
}

async fn read_back(ch: &ClickHouse, db: &str, ids: &[TraceId]) {
    let reader = datatracing_store_clickhouse::ClickHouseReader::open(
        ClickHouseConfig {
            url: ch.url().into(),
            database: db.into(),
            user: ch.user().into(),
            password: ch.password().into(),
            ..ClickHouseConfig::default()
        },
        ClickHouseMetrics::unregistered(),
    )
    .await
    .unwrap();
    for id in ids {
        let spans = reader.get_trace(*id).await.unwrap();
        assert_eq!(spans.map(|s| s.len()), Some(5), "trace {id} after restore");
    }
}

async fn apply_resources(cluster: &Cluster, ch: &ClickHouse, db: &str) {
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "clickhouse-credentials", "namespace": NS,
                     "labels": {"datatracing.io/backup": "true"}},
        "stringData": {"password": ch.password()}
    }))
    .unwrap();
    let pp = PatchParams::apply("gitops").force();
    Api::<Secret>::namespaced(cluster.admin.clone(), NS)
        .patch("clickhouse-credentials", &pp, &Patch::Apply(&secret))
        .await
        .unwrap();
    let policy = json!({
        "apiVersion": "datatracing.io/v1alpha1", "kind": "SamplingPolicy",
        "metadata": {"name": "keep-errors", "labels": {"datatracing.io/pipeline": PIPELINE}},
        "spec": {"rules": [{"name": "errors", "when": {"status": ["ERROR"]},
                            "action": {"decision": "keep"}}]}
    });
    Api::<SamplingPolicy>::namespaced(cluster.admin.clone(), NS)
        .patch("keep-errors", &pp, &Patch::Apply(&policy))
        .await
        .unwrap();
    let pipeline = json!({
        "apiVersion": "datatracing.io/v1alpha1", "kind": "TracingPipeline",
        "metadata": {"name": PIPELINE},
        "spec": {
            "storage": {"url": ch.url(), "database": db, "user": ch.user(),
                        "passwordSecretRef": {"name": "clickhouse-credentials", "key": "password"},
                        "retentionDays": 30, "deletionPolicy": "Retain"},
            "sampling": {"selector": {"matchLabels": {"datatracing.io/pipeline": PIPELINE}}}
        }
    });
    Api::<TracingPipeline>::namespaced(cluster.admin.clone(), NS)
        .patch(PIPELINE, &pp, &Patch::Apply(&pipeline))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_runbook_restores_pipelines_and_every_trace_after_losing_everything() {
    let cluster = Cluster::start().await;
    let work = tempfile::tempdir().unwrap();
    let backups = work.path().join("clickhouse-backups");
    let ch = {
        let backups = backups.clone();
        tokio::task::spawn_blocking(move || {
            ClickHouse::start_chdb(ChdbOptions {
                user: Some("datatracing".into()),
                password: Some("dr-s3cret".into()),
                backups_path: Some(backups),
                ..ChdbOptions::default()
            })
        })
        .await
        .unwrap()
    };
    let db = unique_database("dr");
    cluster.namespace(OPERATOR_NS).await;
    cluster.namespace(NS).await;
    let kubeconfig = cluster.kubeconfig(work.path(), cluster.server.token());
    let token = cluster.operator_token(OPERATOR_NS, &[]).await;
    let op = Operator::start(&cluster, &token, "op-dr", OPERATOR_NS);
    let pipelines: Api<TracingPipeline> = Api::namespaced(cluster.admin.clone(), NS);
    // The namespace lets the operator read its Secrets (operator.md, Secret access).
    let bindings: Api<RoleBinding> = Api::namespaced(cluster.admin.clone(), NS);
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "datatracing-operator-secrets"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                    "name": "dt-datatracing-operator-secret-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "dt-datatracing-operator",
                      "namespace": OPERATOR_NS}]
    }))
    .unwrap();
    bindings
        .create(&kube::api::PostParams::default(), &binding)
        .await
        .unwrap();

    apply_resources(&cluster, &ch, &db).await;
    wait_for("pipeline reconciled", WAIT, || ready(&pipelines)).await;
    let ids = write_traces(&ch, &db).await;
    let before = fingerprint(&ch, &db).await;

    let vars = vec![
        ("NS", NS.to_string()),
        ("PIPELINE", PIPELINE.to_string()),
        ("DB", db.clone()),
        ("CLICKHOUSE_URL", ch.url().to_string()),
        ("CLICKHOUSE_USER", ch.user().to_string()),
        ("CLICKHOUSE_PASSWORD", ch.password().to_string()),
        (
            "BACKUP_TARGET",
            format!("File('{}/{db}-1')", backups.display()),
        ),
        (
            "BACKUP_DIR",
            work.path().join("export").display().to_string(),
        ),
        (
            "SECRET_READER_ROLE",
            "dt-datatracing-operator-secret-reader".to_string(),
        ),
        (
            "OPERATOR_SA",
            format!("{OPERATOR_NS}:dt-datatracing-operator"),
        ),
    ];
    let out = run_block("back up the trace database", &vars, &kubeconfig);
    assert!(out.contains("BACKUP_CREATED"), "{out}");
    run_block("export the resources", &vars, &kubeconfig);
    let export =
        std::fs::read_to_string(work.path().join("export/datatracing-resources.json")).unwrap();
    assert!(
        export.contains("\"keep-errors\"") && export.contains(&db),
        "{export}"
    );
    assert!(
        !export.contains("resourceVersion"),
        "server fields are dropped: {export}"
    );

    // Lose everything: the pipeline (Retain: the operator releases the database) and its
    // children, the policy, the Secret, the operator, the CRDs, and the database.
    let uid = pipelines.get(PIPELINE).await.unwrap().metadata.uid.unwrap();
    pipelines
        .delete(PIPELINE, &DeleteParams::default())
        .await
        .unwrap();
    wait_for("pipeline gone", WAIT, || async {
        matches!(pipelines.get_opt(PIPELINE).await, Ok(None)).then_some(())
    })
    .await;
    Api::<SamplingPolicy>::namespaced(cluster.admin.clone(), NS)
        .delete("keep-errors", &DeleteParams::default())
        .await
        .unwrap();
    Api::<Secret>::namespaced(cluster.admin.clone(), NS)
        .delete("clickhouse-credentials", &DeleteParams::default())
        .await
        .unwrap();
    bindings
        .delete("datatracing-operator-secrets", &DeleteParams::default())
        .await
        .unwrap();
    op.stop().await.unwrap();
    collect_garbage(&cluster.admin, &uid).await;
    let crds: Api<CustomResourceDefinition> = Api::all(cluster.admin.clone());
    for name in [
        "tracingpipelines.datatracing.io",
        "samplingpolicies.datatracing.io",
    ] {
        crds.delete(name, &DeleteParams::default()).await.unwrap();
    }
    wait_for("CRDs gone", WAIT, || async {
        let left = crds.list(&ListParams::default()).await.ok()?;
        (!left.items.iter().any(|c| {
            c.metadata
                .name
                .as_deref()
                .unwrap_or("")
                .ends_with("datatracing.io")
        }))
        .then_some(())
    })
    .await;
    sql(&ch, &format!("DROP DATABASE {db} SYNC")).await;

    // Restore in the runbook's order: data, CRDs, operator, Secrets + pipelines + policies.
    let out = run_block("restore the trace database", &vars, &kubeconfig);
    assert!(out.contains("RESTORED"), "{out}");
    let crd_out = common::run(
        cluster
            .kubectl(work.path())
            .args(["apply", "--server-side", "-f"])
            .arg(repo_root().join("crds")),
    );
    assert!(
        crd_out.contains("tracingpipelines.datatracing.io"),
        "{crd_out}"
    );
    wait_for("CRDs served again", WAIT, || async {
        pipelines
            .list(&ListParams::default())
            .await
            .ok()
            .map(|_| ())
    })
    .await;
    let op = Operator::start(&cluster, &token, "op-dr-2", OPERATOR_NS);
    let out = run_block("restore the resources", &vars, &kubeconfig);
    assert!(out.contains("condition met"), "{out}");
    wait_for("restored pipeline reconciled", WAIT, || ready(&pipelines)).await;
    read_back(&ch, &db, &ids).await;
    assert_eq!(
        fingerprint(&ch, &db).await,
        before,
        "the restored data equals the backup's"
    );
    let owner = sql(&ch, &format!("SELECT owner FROM {db}.datatracing_owner")).await;
    assert_eq!(
        owner.trim(),
        format!("{NS}/{PIPELINE}"),
        "the pipeline owns its database again"
    );

    // Reinstall the operator over a healthy install: no drift, no data change, no rewrite.
    let configmaps: Api<ConfigMap> = Api::namespaced(cluster.admin.clone(), NS);
    let rendered_before = configmaps
        .get(&format!("{PIPELINE}-config"))
        .await
        .unwrap()
        .metadata
        .resource_version;
    op.stop().await.unwrap();
    common::run(
        cluster
            .kubectl(work.path())
            .args(["apply", "--server-side", "-f"])
            .arg(repo_root().join("crds")),
    );
    let op = Operator::start(&cluster, &token, "op-dr-3", OPERATOR_NS);
    let readyz = format!("http://{}/readyz", op.ops);
    wait_for("operator ready after reinstall", WAIT, || async {
        // Connection refused until its listener is up.
        let r = reqwest::get(&readyz).await.ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
    wait_for("pipeline reconciled after reinstall", WAIT, || {
        ready(&pipelines)
    })
    .await;
    let diff = std::process::Command::new(tool("kubectl"))
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["diff", "-f"])
        .arg(work.path().join("export/datatracing-resources.json"))
        .output()
        .unwrap();
    assert_eq!(
        diff.status.code(),
        Some(0),
        "kubectl diff is empty after the reinstall:\n{}{}",
        String::from_utf8_lossy(&diff.stdout),
        String::from_utf8_lossy(&diff.stderr)
    );
    assert_eq!(fingerprint(&ch, &db).await, before, "no data change");
    let rendered_after = configmaps
        .get(&format!("{PIPELINE}-config"))
        .await
        .unwrap()
        .metadata
        .resource_version;
    assert_eq!(
        rendered_before, rendered_after,
        "children are not rewritten"
    );
    op.stop().await.unwrap();
}
