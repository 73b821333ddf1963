//! Scenario 5, upgrade: the operator upgraded to a new image tag (rebuilt locally) by
//! following runbooks/operator.md "Upgrade" as written, under a bounded load on a pipeline
//! whose collectors run the durable queue: the new operator rolls the pipeline's pods onto
//! the new image, the old collectors drain as they stop, and no acknowledged span is lost.
//! It changes the operator's release, so it runs alone (`Cluster::exclusive`).

use std::time::{Duration, Instant};

use datatracing_e2e::cluster::{Cluster, OPERATOR_NAMESPACE, OPERATOR_RELEASE};

use crate::support::{self, Load};

const NS: &str = "e2e-upgrade";
const DATABASE: &str = "e2e_upgrade";

#[test]
fn an_upgrade_by_the_runbook_rolls_every_pod_and_loses_no_acknowledged_span() {
    let cluster = Cluster::shared();
    let _alone = cluster.exclusive();
    cluster.block_on(async {
        let (ns, client, collector) =
            support::durable_pipeline(cluster, NS, "upgrade", DATABASE).await;
        let wait = Duration::from_secs(180);
        let load = Load::start(
            &format!("http://{collector}:4318/api/v1/spans"),
            5,
            2,
            20,
            20_000,
        );
        load.wait_acked(cluster, &ns, 20, "before the upgrade").await;

        // The new release: the same code under a new tag, as a user's new version is.
        let built = Instant::now();
        let next = cluster.build_image("next");
        let build = built.elapsed();
        let (_, tag) = next.rsplit_once(':').expect("a tagged image");

        // runbooks/operator.md "Upgrade", steps 1 and 2, as written.
        let upgraded = Instant::now();
        let root = datatracing_e2e::workspace_root();
        cluster.kubectl_ok(&[
            "apply",
            "--server-side",
            "-f",
            root.join("crds").to_str().unwrap(),
        ]);
        let out = cluster
            .helm()
            .args(["upgrade", OPERATOR_RELEASE])
            .arg(root.join("charts/datatracing-operator"))
            .args([
                "-n",
                OPERATOR_NAMESPACE,
                "--reuse-values",
                "--set",
                &format!("image.tag={tag}"),
            ])
            .output()
            .expect("run helm");
        assert!(
            out.status.success(),
            "helm upgrade failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );

        // Step 3: the new operator replicas lead, and the pipeline's pods roll onto the
        // new image (the workloads' image is the operator's).
        support::wait_rolled(
            cluster,
            &client,
            OPERATOR_NAMESPACE,
            "app.kubernetes.io/name=datatracing-operator",
            &next,
            2,
            wait,
        )
        .await;
        let operator_rolled = upgraded.elapsed();
        let collectors = "app.kubernetes.io/instance=upgrade,app.kubernetes.io/component=collector";
        support::wait_rolled(cluster, &client, &ns, collectors, &next, 2, wait).await;
        let queries = "app.kubernetes.io/instance=upgrade,app.kubernetes.io/component=query";
        support::wait_rolled(cluster, &client, &ns, queries, &next, 1, wait).await;
        support::wait_available(cluster, &client, &ns, "upgrade-collector", 2, wait).await;
        let rolled = upgraded.elapsed();
        load.wait_acked(cluster, &ns, 20, "on the new image").await;

        let sent = load.stop().await;
        assert!(sent.acked.len() >= 40, "{sent:?}");
        let stored = support::wait_all_stored(cluster, &ns, DATABASE, &sent).await;
        let p = support::wait_condition(cluster, &client, &ns, "upgrade", "Ready", wait).await;
        assert_eq!(p.status.unwrap().collector_replicas, Some(2));
        support::delete_namespace(cluster, &ns);
        eprintln!(
            "scenario 5: image {next} built and imported in {:.1}s; operator on it {:.1}s after the \
             runbook's commands, every pipeline pod after {:.1}s; {} requests acknowledged ({} spans), \
             {} refused, {} unanswered during the roll; all acknowledged stored ({stored} traces in all)",
            build.as_secs_f64(),
            operator_rolled.as_secs_f64(),
            rolled.as_secs_f64(),
            sent.acked.len(),
            sent.acked.values().sum::<u64>(),
            sent.refused,
            sent.failed,
        );
    });
}
