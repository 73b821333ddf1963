//! What the reconcilers share: the API client, the settings, metrics, the events they
//! publish and per-object failure counts for exponential backoff; plus the small helpers
//! every reconciler uses (object keys, server-side apply of an object, message truncation).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use datatracing_config::OperatorConfig;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::events::EventType;
use kube::{Client, Resource, ResourceExt};
use serde_json::{Value, json};

use super::conditions::EventReason;
use crate::error::{Error, Result};
use crate::metrics::Metrics;

/// Objects whose consecutive failures are counted for backoff, at most.
const MAX_TRACKED_FAILURES: usize = 10_000;

/// Recently published events remembered for series, at most.
const MAX_TRACKED_EVENTS: usize = 10_000;

/// A repeat of an event within this window counts in the first one's series (what
/// `kubectl describe` shows as `(x3 over 2m)`); later, it is a new event.
const EVENT_SERIES_WINDOW: Duration = Duration::from_secs(6 * 60);

/// What makes two events the same: the object (by UID), type, reason and message. The
/// message is part of it: kube's recorder leaves it out and folds distinct messages into
/// one series that keeps the first (a configuration hash from minutes ago).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct EventKey {
    object: String,
    warning: bool,
    reason: EventReason,
    note: String,
}

/// A published event: its name, series count and when it was last seen.
#[derive(Clone, Debug)]
struct Published {
    name: String,
    count: i32,
    last: Timestamp,
}

/// Shared state of the reconcilers.
pub struct Context {
    /// API client.
    pub client: Client,
    /// Settings.
    pub config: OperatorConfig,
    /// Metrics.
    pub metrics: Metrics,
    failures: Mutex<HashMap<String, u32>>,
    published: Mutex<HashMap<EventKey, Published>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").finish_non_exhaustive()
    }
}

impl Context {
    /// A context for `client`.
    pub fn new(client: Client, config: OperatorConfig, metrics: Metrics) -> Self {
        Self {
            client,
            config,
            metrics,
            failures: Mutex::new(HashMap::new()),
            published: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one more consecutive failure for `key` and returns how long to wait before
    /// the next attempt.
    pub(crate) fn backoff(&self, key: &str) -> Duration {
        let attempt = {
            let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
            // Objects deleted while failing leave entries behind; bound the map (a reset
            // only shortens some retry delays).
            if f.len() >= MAX_TRACKED_FAILURES && !f.contains_key(key) {
                f.clear();
            }
            let n = f.entry(key.to_string()).or_insert(0);
            *n = n.saturating_add(1);
            *n
        };
        datatracing_core::exponential_backoff(
            self.config.retry_backoff.get(),
            attempt,
            self.config.max_retry_backoff.get(),
        )
    }

    /// Forgets the failures counted for `key`.
    pub(crate) fn succeeded(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }

    /// The periodic requeue of an object that reconciled.
    pub(crate) fn resync(&self) -> kube::runtime::controller::Action {
        kube::runtime::controller::Action::requeue(self.config.resync_interval.get())
    }

    /// Publishes an event about `obj`; a failure is logged, never fatal. The same message
    /// again within [`EVENT_SERIES_WINDOW`] counts in the first event's series; a different
    /// message is a new event.
    pub(crate) async fn event<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        type_: EventType,
        reason: EventReason,
        note: String,
    ) {
        let note = truncate(note, 1024);
        let regarding = obj.object_ref(&());
        let namespace = regarding
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let key = EventKey {
            object: regarding.uid.clone().unwrap_or_default(),
            warning: type_ == EventType::Warning,
            reason,
            note: note.clone(),
        };
        let now = Timestamp::now();
        let window = k8s_openapi::jiff::SignedDuration::try_from(EVENT_SERIES_WINDOW)
            .unwrap_or(k8s_openapi::jiff::SignedDuration::ZERO);
        let repeat = {
            let mut published = self.published.lock().unwrap_or_else(|p| p.into_inner());
            published.retain(|_, p| p.last.saturating_add(window).is_ok_and(|t| t > now));
            published.get(&key).cloned()
        };
        let events: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        let result = match repeat {
            Some(p) => {
                let series = json!({"series": {
                    "count": p.count + 1,
                    "lastObservedTime": MicroTime(now),
                }});
                events
                    .patch(&p.name, &PatchParams::default(), &Patch::Merge(&series))
                    .await
                    .map(|_| (p.name, p.count + 1))
            }
            None => {
                let (controller, instance) = (
                    self.config.field_manager.clone(),
                    self.config.lease_identity().1,
                );
                let ev = Event {
                    metadata: ObjectMeta {
                        name: Some(format!(
                            "{}.{:x}",
                            regarding.name.clone().unwrap_or_else(|| controller.clone()),
                            now.as_nanosecond()
                        )),
                        namespace: Some(namespace.clone()),
                        ..ObjectMeta::default()
                    },
                    event_time: Some(MicroTime(now)),
                    type_: Some(if key.warning { "Warning" } else { "Normal" }.into()),
                    reason: Some(reason.as_str().into()),
                    action: Some("Reconcile".into()),
                    note: Some(note),
                    regarding: Some(regarding),
                    reporting_controller: Some(controller),
                    reporting_instance: Some(instance),
                    ..Event::default()
                };
                events
                    .create(&PostParams::default(), &ev)
                    .await
                    .map(|e| (e.name_any(), 1))
            }
        };
        let mut published = self.published.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok((name, count)) => {
                if published.len() >= MAX_TRACKED_EVENTS && !published.contains_key(&key) {
                    published.clear();
                }
                published.insert(
                    key,
                    Published {
                        name,
                        count,
                        last: now,
                    },
                );
            }
            Err(e) => {
                // Perhaps the event expired: the next one starts afresh.
                published.remove(&key);
                tracing::warn!(error = %e, %reason, "could not publish an event");
            }
        }
    }
}

/// `s` cut to at most `max` bytes (on a char boundary), marked with `…` when cut.
pub(crate) fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

/// `namespace/name` of an object, for logs and failure counts.
pub(crate) fn key<K: ResourceExt>(o: &K) -> String {
    format!("{}/{}", o.namespace().unwrap_or_default(), o.name_any())
}

/// Server-side applies `obj` (forcing ownership of its fields) as `manager`.
pub(crate) async fn apply<K>(api: &Api<K>, obj: &K, manager: &str) -> Result<K>
where
    K: Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    Ok(api
        .patch(
            &name,
            &PatchParams::apply(manager).force(),
            &Patch::Apply(obj),
        )
        .await?)
}

/// Server-side applies `status` (a serialized status with every list present, empty or not)
/// to the status subresource of `obj`, as the operator's field manager.
///
/// Apply rather than merge: a field the operator stops sending (a list that became empty,
/// an option that became unset) is removed, because the field manager owns it. A field
/// another manager also owns stays, though: an operator from before server-side apply
/// wrote status with merge patches, so its fields belong to an `Update` manager as well.
/// Lists are therefore sent even when empty (forcing takes them over), and top-level fields
/// left over after the apply are removed with a merge patch (status is the operator's
/// alone; this happens once per object, as the leftovers then have no owner).
pub(crate) async fn apply_status<K>(ctx: &Context, obj: &K, status: Value) -> Result<()>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(
        ctx.client.clone(),
        obj.meta().namespace.as_deref().unwrap_or_default(),
    );
    let name = obj.meta().name.clone().unwrap_or_default();
    let body = json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": &status,
    });
    let applied = api
        .patch_status(
            &name,
            &PatchParams::apply(&ctx.config.field_manager).force(),
            &Patch::Apply(&body),
        )
        .await?;
    let leftovers = leftover_fields(&status_json(&applied)?["status"], &status);
    if !leftovers.is_empty() {
        tracing::info!(object = %key(obj), fields = ?leftovers.keys().collect::<Vec<_>>(), "removing status fields an earlier writer left");
        let params = PatchParams {
            field_manager: Some(ctx.config.field_manager.clone()),
            ..PatchParams::default()
        };
        api.patch_status(
            &name,
            &params,
            &Patch::Merge(json!({ "status": leftovers })),
        )
        .await?;
    }
    Ok(())
}

/// Top-level fields of `live` that `sent` does not have, each mapped to `null` (what a
/// merge patch needs to remove them).
fn leftover_fields(live: &Value, sent: &Value) -> serde_json::Map<String, Value> {
    let sent = sent.as_object();
    live.as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| sent.is_none_or(|s| !s.contains_key(*k)))
        .map(|(k, _)| (k.clone(), Value::Null))
        .collect()
}

/// `status` as JSON, for [`apply_status`].
pub(crate) fn status_json<S: serde::Serialize>(status: &S) -> Result<Value> {
    serde_json::to_value(status).map_err(|e| Error::Render(format!("status: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leftovers_are_the_live_fields_not_sent() {
        let live = json!({"samplingHash": "x", "conditions": [], "configHash": "y"});
        let sent = json!({"conditions": [], "configHash": "z"});
        let got = leftover_fields(&live, &sent);
        assert_eq!(Value::Object(got), json!({"samplingHash": null}));
        assert!(
            leftover_fields(&Value::Null, &sent).is_empty(),
            "no status yet"
        );
    }

    #[test]
    fn long_messages_are_cut_on_a_char_boundary() {
        let s = truncate("é".repeat(10), 5);
        assert!(s.starts_with("éé") && s.ends_with('…'));
    }
}
