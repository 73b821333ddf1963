//! A pipeline's child objects (ServiceAccount, ConfigMap, Deployments, Services,
//! PodDisruptionBudget): refusing names that belong to someone else, and writing them all.
//!
//! Server-side apply with `force` would take over any object that happens to have a
//! child's name: a user's ConfigMap gains our key and our controller reference (so garbage
//! collection deletes it with the pipeline). So every name is checked first, and if any is
//! taken by an object this pipeline does not own, nothing is written.

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ObjectMeta, Patch, PatchParams,
};
use kube::{Client, Resource};

use super::context::apply;
use crate::error::Error;
use crate::render::{Desired, SERVICE_MONITOR_API_VERSION};

/// Why the children were not (all) written.
#[derive(Debug)]
pub(super) enum ChildrenError {
    /// Objects with children's names exist and are not this pipeline's; the message names
    /// them. Nothing was written.
    NameConflict(String),
    /// The API server refused a child (or could not be reached); the message names it.
    Failed(String, Error),
}

/// The Deployments as the API server returned them (their status says what is available).
#[derive(Debug)]
pub(super) struct Applied {
    /// The collector Deployment.
    pub collector: Deployment,
    /// The query Deployment.
    pub query: Deployment,
    /// What was asked for and left out (a ServiceMonitor without its CRD), for the status.
    pub skipped: Option<String>,
}

/// Whether `meta` names the pipeline with `uid` among its owners.
pub(super) fn owned_by(meta: &ObjectMeta, uid: &str) -> bool {
    meta.owner_references
        .as_deref()
        .unwrap_or_default()
        .iter()
        .any(|o| o.uid == uid)
}

/// `Kind namespace/name`, as messages name an object.
fn describe<K: Resource<DynamicType = ()>>(ns: &str, name: &str) -> String {
    format!("{} {ns}/{name}", K::kind(&()))
}

/// `Some(description)` when an object of kind `K` named `name` exists and is not owned by
/// the pipeline with `uid`.
async fn foreign<K>(
    client: &Client,
    ns: &str,
    name: &str,
    uid: &str,
) -> Result<Option<String>, ChildrenError>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    match api.get_metadata_opt(name).await {
        Ok(Some(o)) if !owned_by(&o.metadata, uid) => Ok(Some(describe::<K>(ns, name))),
        Ok(_) => Ok(None),
        Err(e) => Err(ChildrenError::Failed(
            format!("could not read {}", describe::<K>(ns, name)),
            e.into(),
        )),
    }
}

/// Applies `obj` as `manager`, naming it in the error.
async fn write<K>(client: &Client, ns: &str, obj: &K, manager: &str) -> Result<K, ChildrenError>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + serde::Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    apply(&Api::namespaced(client.clone(), ns), obj, manager)
        .await
        .map_err(|e| {
            ChildrenError::Failed(format!("could not apply {}", describe::<K>(ns, &name)), e)
        })
}

/// Writes every child of the pipeline with `uid` in `ns`, unless a name is taken by an
/// object it does not own. A PodDisruptionBudget the spec turned off is deleted if it is
/// the pipeline's own.
pub(super) async fn apply_all(
    client: &Client,
    ns: &str,
    uid: &str,
    desired: &Desired,
    manager: &str,
) -> Result<Applied, ChildrenError> {
    let name = |m: &ObjectMeta| m.name.clone().unwrap_or_default();
    let mut budgets = [
        (name(&desired.collector.metadata), desired.pdb.as_ref()),
        (name(&desired.query.metadata), desired.query_pdb.as_ref()),
    ];
    let mut skipped = Vec::new();
    let checks = [
        foreign::<ServiceAccount>(client, ns, &name(&desired.service_account.metadata), uid)
            .await?,
        foreign::<ConfigMap>(client, ns, &name(&desired.config_map.metadata), uid).await?,
        foreign::<Deployment>(client, ns, &name(&desired.collector.metadata), uid).await?,
        foreign::<Service>(client, ns, &name(&desired.collector_service.metadata), uid).await?,
        foreign::<Deployment>(client, ns, &name(&desired.query.metadata), uid).await?,
        foreign::<Service>(client, ns, &name(&desired.query_service.metadata), uid).await?,
    ];
    let mut taken: Vec<String> = checks.into_iter().flatten().collect();
    if desired.peers.is_some() {
        let peers = &desired.names.peers;
        taken.extend(foreign::<Service>(client, ns, peers, uid).await?);
        taken.extend(foreign::<Role>(client, ns, peers, uid).await?);
        taken.extend(foreign::<RoleBinding>(client, ns, peers, uid).await?);
    }
    if desired.hpa.is_some() {
        taken.extend(
            foreign::<HorizontalPodAutoscaler>(client, ns, &name(&desired.collector.metadata), uid)
                .await?,
        );
    }
    // A budget that is not ours is a conflict only if ours would replace it: with the
    // budget turned off only our own is deleted (below), and a default budget yields to
    // one the user manages under that name (as before budgets were on by default).
    for ((pdb_name, pdb), defaulted) in budgets.iter_mut().zip(desired.pdb_defaulted) {
        if pdb.is_none() {
            continue;
        }
        if let Some(other) = foreign::<PodDisruptionBudget>(client, ns, pdb_name, uid).await? {
            if defaulted {
                skipped.push(format!(
                    "default budget not created: {other} exists and is not this pipeline's"
                ));
                *pdb = None;
            } else {
                taken.push(other);
            }
        }
    }
    if !taken.is_empty() {
        return Err(ChildrenError::NameConflict(format!(
            "{} already exist{} and {} not managed by this pipeline; nothing was applied. \
             Delete or rename {}, or rename the pipeline",
            taken.join(", "),
            if taken.len() == 1 { "s" } else { "" },
            if taken.len() == 1 { "is" } else { "are" },
            if taken.len() == 1 { "it" } else { "them" },
        )));
    }
    write(client, ns, &desired.service_account, manager).await?;
    write(client, ns, &desired.config_map, manager).await?;
    if desired
        .collector
        .spec
        .as_ref()
        .is_some_and(|s| s.replicas.is_none())
    {
        hand_over_replicas(client, ns, &name(&desired.collector.metadata), manager).await?;
    }
    let collector = write(client, ns, &desired.collector, manager).await?;
    write(client, ns, &desired.collector_service, manager).await?;
    let query = write(client, ns, &desired.query, manager).await?;
    write(client, ns, &desired.query_service, manager).await?;
    for (pdb_name, pdb) in &budgets {
        match pdb {
            Some(pdb) => {
                write(client, ns, *pdb, manager).await?;
            }
            // Turned off, or a user's stands under that name (never deleted: not ours).
            None => remove_own::<PodDisruptionBudget>(client, ns, pdb_name, uid).await?,
        }
    }
    // Routing between collectors: read access first, so the pods' watch starts permitted.
    let peers = &desired.names.peers;
    match &desired.peers {
        Some(p) => {
            write(client, ns, &p.role, manager).await?;
            write(client, ns, &p.role_binding, manager).await?;
            write(client, ns, &p.service, manager).await?;
        }
        None => {
            remove_own::<Service>(client, ns, peers, uid).await?;
            remove_own::<RoleBinding>(client, ns, peers, uid).await?;
            remove_own::<Role>(client, ns, peers, uid).await?;
        }
    }
    let hpa_name = name(&desired.collector.metadata);
    match &desired.hpa {
        Some(hpa) => {
            write(client, ns, hpa, manager).await?;
        }
        None => remove_own::<HorizontalPodAutoscaler>(client, ns, &hpa_name, uid).await?,
    }
    skipped.extend(service_monitor(client, ns, uid, desired, manager).await?);
    Ok(Applied {
        collector,
        query,
        skipped: (!skipped.is_empty()).then(|| skipped.join("; ")),
    })
}

/// Deletes the object of kind `K` named `name` if it is the pipeline's own (one the spec no
/// longer asks for); leaves anyone else's alone.
async fn remove_own<K>(
    client: &Client,
    ns: &str,
    name: &str,
    uid: &str,
) -> Result<(), ChildrenError>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let failed = |e: kube::Error| {
        ChildrenError::Failed(
            format!("could not remove {}", describe::<K>(ns, name)),
            e.into(),
        )
    };
    let existing = api.get_metadata_opt(name).await.map_err(failed)?;
    if existing.is_some_and(|e| owned_by(&e.metadata, uid)) {
        api.delete(name, &DeleteParams::default())
            .await
            .map_err(failed)?;
    }
    Ok(())
}

/// Before the collector Deployment is applied without replicas (an autoscaler owns them):
/// if the operator's field manager still owns `spec.replicas`, the current count is applied
/// under a second manager first. Otherwise dropping the field would remove it, and the
/// Deployment would fall back to one replica until the autoscaler acts.
async fn hand_over_replicas(
    client: &Client,
    ns: &str,
    name: &str,
    manager: &str,
) -> Result<(), ChildrenError> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let failed = |e: kube::Error| {
        ChildrenError::Failed(
            format!(
                "could not hand the replicas of {} to the autoscaler",
                describe::<Deployment>(ns, name)
            ),
            e.into(),
        )
    };
    let Some(live) = api.get_opt(name).await.map_err(failed)? else {
        return Ok(());
    };
    let ours = live
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|m| m.manager.as_deref() == Some(manager))
        .any(|m| {
            m.fields_v1
                .as_ref()
                .is_some_and(|f| f.0.pointer("/f:spec/f:replicas").is_some())
        });
    let Some(replicas) = live.spec.and_then(|s| s.replicas) else {
        return Ok(());
    };
    if ours {
        let body = serde_json::json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name},
            "spec": {"replicas": replicas},
        });
        api.patch(
            name,
            &PatchParams::apply(&format!("{manager}-replicas")).force(),
            &Patch::Apply(&body),
        )
        .await
        .map_err(failed)?;
    }
    Ok(())
}

/// The ServiceMonitor API in `ns`, or `None` when the cluster does not serve the kind (no
/// Prometheus Operator CRD): asked on every reconcile, so installing the CRD later needs no
/// operator restart.
async fn service_monitors(
    client: &Client,
    ns: &str,
) -> Result<Option<Api<DynamicObject>>, ChildrenError> {
    match client
        .list_api_group_resources(SERVICE_MONITOR_API_VERSION)
        .await
    {
        Ok(list) if list.resources.iter().any(|r| r.name == "servicemonitors") => {
            let gvk = GroupVersionKind::gvk("monitoring.coreos.com", "v1", "ServiceMonitor");
            let ar = ApiResource::from_gvk_with_plural(&gvk, "servicemonitors");
            Ok(Some(Api::namespaced_with(client.clone(), ns, &ar)))
        }
        Ok(_) => Ok(None),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(None),
        Err(e) => Err(ChildrenError::Failed(
            format!("could not discover {SERVICE_MONITOR_API_VERSION}"),
            e.into(),
        )),
    }
}

/// Applies the ServiceMonitor the spec asks for, or removes ours when it no longer does.
/// `Some(note)` when one was asked for and the cluster has no ServiceMonitor CRD.
async fn service_monitor(
    client: &Client,
    ns: &str,
    uid: &str,
    desired: &Desired,
    manager: &str,
) -> Result<Option<String>, ChildrenError> {
    let Some(api) = service_monitors(client, ns).await? else {
        return Ok(desired.service_monitor.as_ref().map(|_| {
            format!(
                "ServiceMonitor not created: the cluster does not serve {SERVICE_MONITOR_API_VERSION} ServiceMonitors (install the Prometheus Operator CRDs)"
            )
        }));
    };
    let sm_name = &desired.names.monitor;
    match &desired.service_monitor {
        Some(sm) => {
            api.patch(
                sm_name,
                &PatchParams::apply(manager).force(),
                &Patch::Apply(sm),
            )
            .await
            .map_err(|e| {
                ChildrenError::Failed(
                    format!("could not apply ServiceMonitor {ns}/{sm_name}"),
                    e.into(),
                )
            })?;
        }
        None => {
            let failed = |e: kube::Error| {
                ChildrenError::Failed(
                    format!("could not remove ServiceMonitor {ns}/{sm_name}"),
                    e.into(),
                )
            };
            let existing = api.get_metadata_opt(sm_name).await.map_err(failed)?;
            if existing.is_some_and(|e| owned_by(&e.metadata, uid)) {
                api.delete(sm_name, &DeleteParams::default())
                    .await
                    .map_err(failed)?;
            }
        }
    }
    Ok(None)
}
