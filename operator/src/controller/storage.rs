//! What the pipeline reconciler does in ClickHouse: read the password the pipeline
//! references, claim the database for the pipeline, create the schema and set the
//! retention, find drift (tables or views dropped, TTLs changed outside the operator), and
//! drop or release the database of a deleted pipeline; plus which condition reason each
//! failure reports.
//!
//! Ownership is recorded in the database itself (`datatracing_owner`: the pipeline's UID
//! and `namespace/name`), where every operator and every pipeline pointed at it sees it: a
//! second pipeline on the same database is refused rather than allowed to change the first
//! one's retention or drop its data.

use datatracing_store_clickhouse::{ClickHouseAdmin, Error as ChError, StorageOwner};
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::Api;

use super::conditions::{EventReason, Reason};
use super::context::{Context, key};
use crate::crd::TracingPipeline;
use crate::error::{Error, Result};
use crate::render;

/// Reads the password the pipeline references. `Ok(None)`: no password configured.
///
/// One `get` by name: the operator has no cluster-wide Secret access and lists or watches
/// no Secrets; each namespace grants it `get` (on named Secrets, if it likes), and a
/// namespace that has not is reported with the grant it needs (runbooks/operator.md).
async fn password(p: &TracingPipeline, ctx: &Context) -> Result<Option<String>> {
    match &p.spec.storage.password_secret_ref {
        Some(r) => secret_value(p, ctx, r).await.map(Some),
        None => Ok(None),
    }
}

/// The text of the Secret key `r` in the pipeline's namespace, trimmed.
async fn secret_value(
    p: &TracingPipeline,
    ctx: &Context,
    r: &k8s_openapi::api::core::v1::SecretKeySelector,
) -> Result<String> {
    let ns = p.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let missing = |what: String| Error::SecretNotFound(what);
    let secret = match secrets.get_opt(&r.name).await {
        Ok(s) => s,
        Err(kube::Error::Api(e)) if e.code == 403 => {
            return Err(Error::SecretForbidden(format!(
                "the operator may not read Secret {ns}/{}: grant it with a RoleBinding in {ns} \
                 to the operator's secret-reader ClusterRole, or list {ns} in the chart's \
                 secretAccess.namespaces (runbooks/operator.md, Secret access)",
                r.name
            )));
        }
        Err(e) => return Err(e.into()),
    };
    let secret = secret.ok_or_else(|| missing(format!("Secret {ns}/{} does not exist", r.name)))?;
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(&r.key))
        .map(|b| b.0.clone())
        .or_else(|| {
            secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(&r.key))
                .map(|s| s.clone().into_bytes())
        })
        .ok_or_else(|| missing(format!("Secret {ns}/{} has no key {:?}", r.name, r.key)))?;
    String::from_utf8(bytes)
        .map(|s| s.trim().to_string())
        .map_err(|_| {
            missing(format!(
                "Secret {ns}/{} key {:?} is not UTF-8",
                r.name, r.key
            ))
        })
}

/// The version of the password Secrets the pipeline references (the operator's and the
/// roles' own; see [`render::set_secret_version`]); `None` when there are none, or one cannot
/// be read now (missing, not granted: the retention step reports the operator's).
pub(super) async fn secret_version(p: &TracingPipeline, ctx: &Context) -> Option<String> {
    let s = &p.spec.storage;
    // The ClickHouse CA too: the pods read it once, at start.
    let mut names: Vec<&str> = [
        s.password_secret_ref.as_ref(),
        s.ca_secret_ref.as_ref(),
        s.collector_credentials
            .as_ref()
            .and_then(|c| c.password_secret_ref.as_ref()),
        s.query_credentials
            .as_ref()
            .and_then(|c| c.password_secret_ref.as_ref()),
    ]
    .into_iter()
    .flatten()
    .map(|r| r.name.as_str())
    .collect();
    names.sort_unstable();
    names.dedup();
    if names.is_empty() {
        return None;
    }
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &p.namespace()?);
    let mut versions = Vec::with_capacity(names.len());
    for name in names {
        let meta = secrets.get_metadata_opt(name).await.ok()??.metadata;
        versions.push(format!(
            "{}/{}",
            meta.uid.unwrap_or_default(),
            meta.resource_version.unwrap_or_default()
        ));
    }
    Some(render::hash(&versions.join(",")))
}

/// An admin client for the pipeline's ClickHouse: one attempt per call, the operator's
/// timeout (the reconciler retries with its own backoff).
pub(super) async fn clickhouse_admin(
    p: &TracingPipeline,
    ctx: &Context,
) -> Result<ClickHouseAdmin> {
    let mut cfg = render::clickhouse_config(p);
    cfg.password_file = None;
    cfg.password = password(p, ctx).await?.unwrap_or_default();
    cfg.max_attempts = 1;
    cfg.connect_timeout = ctx.config.clickhouse_timeout;
    cfg.query_timeout = ctx.config.clickhouse_timeout;
    // The pods' CA path exists in the pods only; the operator reads the Secret itself.
    cfg.ca_file = None;
    Ok(match &p.spec.storage.ca_secret_ref {
        Some(r) => ClickHouseAdmin::with_ca_pem(&cfg, secret_value(p, ctx, r).await?.as_bytes())?,
        None => ClickHouseAdmin::new(&cfg)?,
    })
}

/// The `RetentionApplied` reason (and the event) for a failure to apply retention.
pub(super) fn retention_failure(e: &Error) -> (Reason, EventReason) {
    match e {
        Error::ClickHouse(ChError::Unreachable(_) | ChError::Timeout(_)) => (
            Reason::ClickHouseUnreachable,
            EventReason::ClickHouseUnreachable,
        ),
        Error::ClickHouse(ChError::Auth(_)) => (
            Reason::ClickHouseAuthFailed,
            EventReason::ClickHouseAuthFailed,
        ),
        Error::SecretNotFound(_) => (Reason::SecretNotFound, EventReason::SecretNotFound),
        Error::SecretForbidden(_) => (Reason::SecretForbidden, EventReason::SecretForbidden),
        Error::StorageConflict(_) => (Reason::StorageConflict, EventReason::StorageConflict),
        _ => (Reason::ClickHouseError, EventReason::ClickHouseError),
    }
}

/// The owner `p` records in its database.
fn owner_of(p: &TracingPipeline) -> StorageOwner {
    StorageOwner {
        uid: p.uid().unwrap_or_default(),
        name: key(p),
    }
}

/// The refusal for `p` when `owner` holds its database.
fn conflict(p: &TracingPipeline, owner: &StorageOwner) -> Error {
    Error::StorageConflict(format!(
        "ClickHouse database {} at {} belongs to TracingPipeline {} (uid {}); this pipeline \
         leaves it alone: give it its own storage.database",
        p.spec.storage.database, p.spec.storage.url, owner.name, owner.uid
    ))
}

/// Claims the database, creates the schema (and any table dropped since) and sets the
/// retention; returns what was done. A database another pipeline owns is
/// [`Error::StorageConflict`], and nothing in it changes.
#[tracing::instrument(skip_all, fields(database = %p.spec.storage.database, days = p.spec.storage.retention_days))]
pub(super) async fn apply_retention(p: &TracingPipeline, ctx: &Context) -> Result<String> {
    let admin = clickhouse_admin(p, ctx).await?;
    admin.ping().await?;
    let me = owner_of(p);
    let owner = admin.claim(&me).await?;
    if owner.uid != me.uid {
        return Err(conflict(p, &owner));
    }
    let migration = admin.migrate().await?;
    let recreated = admin.recreate_missing().await?;
    let report = admin.set_retention(p.spec.storage.retention_days).await?;
    let recreated = if recreated.is_empty() {
        String::new()
    } else {
        format!("; recreated {}", recreated.join(", "))
    };
    Ok(format!(
        "retention {} days on database {} (schema v{}; {} tables changed, {} already set{recreated})",
        report.days,
        p.spec.storage.database,
        migration.version,
        report.changed.len(),
        report.unchanged.len()
    ))
}

/// How ClickHouse differs from what `p` wants, changing nothing (except recording `p` as
/// the owner of a database from before ownership was recorded): `Ok(None)` when the tables
/// exist with the spec's TTL. A database another pipeline owns is
/// [`Error::StorageConflict`].
#[tracing::instrument(skip_all, fields(database = %p.spec.storage.database))]
pub(super) async fn drift(p: &TracingPipeline, ctx: &Context) -> Result<Option<String>> {
    let admin = clickhouse_admin(p, ctx).await?;
    admin.ping().await?;
    let me = owner_of(p);
    let db = &p.spec.storage.database;
    // A database or table dropped while this check runs shows as an unknown-database or
    // unknown-table error halfway through: that is drift too.
    let vanished = |e: ChError| match e {
        ChError::Server {
            code: Some(60 | 81),
            ..
        } => Ok(format!(
            "database {db} or one of its tables disappeared: {e}"
        )),
        other => Err(Error::from(other)),
    };
    let owner = match admin.owner().await {
        Ok(o) => o,
        Err(e) => return vanished(e).map(Some),
    };
    if let Some(o) = &owner
        && o.uid != me.uid
        && o.name != me.name
    {
        return Err(conflict(p, o));
    }
    let want = p.spec.storage.retention_days;
    // One read of `system.tables` answers both: retention and lost tables or views.
    let state = match admin.schema_state().await {
        Ok(s) => s,
        Err(e) => return vanished(e).map(Some),
    };
    let present = state.retention;
    let differences: Vec<String> = if present.is_empty() {
        vec![format!("database {db} has none of the trace tables")]
    } else {
        let ttl_tables = admin.ttl_storage_tables();
        // A lost view is drift too: its table silently stops receiving new spans.
        let lost_others = state
            .missing
            .into_iter()
            .filter(|m| !ttl_tables.contains(m))
            .map(|m| format!("{db}.{m} is missing"));
        ttl_tables
            .iter()
            .filter_map(|table| match present.iter().find(|r| r.table == *table) {
                None => Some(format!("table {db}.{table} is missing")),
                Some(r) if r.days != Some(want) => Some(format!(
                    "table {db}.{table} keeps {} (spec: {want} days)",
                    r.days
                        .map_or_else(|| "data forever".to_string(), |d| format!("{d} days"))
                )),
                Some(_) => None,
            })
            .chain(lost_others)
            .collect()
    };
    if differences.is_empty() && owner.as_ref().is_none_or(|o| o.uid != me.uid) {
        let o = admin.claim(&me).await?;
        if o.uid != me.uid {
            return Err(conflict(p, &o));
        }
    }
    Ok((!differences.is_empty()).then(|| differences.join("; ")))
}

/// What deleting `p` does in ClickHouse. `Delete`: drops the database if `p` owns it (or no
/// owner is recorded); `Ok(Some(owner))` when another pipeline owns it and it was left
/// alone. `Retain`: releases `p`'s claim so a later pipeline may use the data.
pub(super) async fn on_delete(
    p: &TracingPipeline,
    ctx: &Context,
    drop: bool,
) -> Result<Option<String>> {
    let admin = clickhouse_admin(p, ctx).await?;
    let me = owner_of(p);
    match admin.owner().await? {
        Some(o) if o.uid != me.uid => Ok(Some(format!("{} (uid {})", o.name, o.uid))),
        _ if drop => {
            admin.drop_database().await?;
            Ok(None)
        }
        _ => {
            admin.release(&me.uid).await?;
            Ok(None)
        }
    }
}
