//! Leader election on a `coordination.k8s.io/v1` Lease, so two operator replicas never
//! reconcile at once.
//!
//! Like client-go's elector, expiry is judged by the local clock from when this replica last
//! saw the lease record change, never by comparing its clock with the writer's timestamps;
//! writes use the lease's `resourceVersion`, so of two replicas racing for an expired lease
//! exactly one wins. A leader that cannot renew within the renew deadline stops its work and
//! reports the loss (the process exits and is restarted as a follower); on shutdown it
//! releases the lease (deletes it) so a follower takes over without waiting for expiry.
//!
//! The holder also names its pod as the lease's owner ([`LeaderElector::owned_by`]): when
//! that pod object is deleted (a rollout, a drain, `helm uninstall`) the garbage collector
//! deletes the lease even where the holder could not (an uninstall deletes the operator's
//! RBAC and ServiceAccount while its pods are still stopping, so their own release is
//! refused). Found by the e2e cluster's uninstall scenario.

use std::future::Future;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{DeleteParams, PostParams, Preconditions};
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::metrics::Metrics;

/// One replica's view of a lease.
#[derive(Debug)]
pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    identity: String,
    lease_duration: Duration,
    renew_interval: Duration,
    observed: Option<(Record, Instant)>,
    owner: Option<OwnerReference>,
}

/// The parts of a lease whose change proves its holder is alive.
type Record = (Option<String>, Option<MicroTime>, Option<i32>);

fn record(l: &Lease) -> Record {
    let s = l.spec.clone().unwrap_or_default();
    (s.holder_identity, s.renew_time, s.lease_transitions)
}

impl LeaderElector {
    /// An elector for lease `namespace/name` as `identity`.
    pub fn new(
        client: kube::Client,
        namespace: &str,
        name: &str,
        identity: &str,
        lease_duration: Duration,
        renew_interval: Duration,
    ) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.into(),
            identity: identity.into(),
            lease_duration,
            renew_interval,
            observed: None,
            owner: None,
        }
    }

    /// Names pod `name` (UID `uid`), in the lease's namespace, as the lease's owner while
    /// this replica holds it (see the module documentation). Only a pod of the lease's own
    /// namespace may own it: the garbage collector deletes an object whose owner it cannot
    /// find there.
    pub fn owned_by(mut self, name: &str, uid: &str) -> Self {
        self.owner = Some(OwnerReference {
            api_version: "v1".into(),
            kind: "Pod".into(),
            name: name.into(),
            uid: uid.into(),
            controller: None,
            block_owner_deletion: None,
        });
        self
    }

    fn owners(&self) -> Option<Vec<OwnerReference>> {
        self.owner.clone().map(|o| vec![o])
    }

    fn spec(&self, acquire: Option<MicroTime>, transitions: i32) -> LeaseSpec {
        let now = MicroTime(Timestamp::now());
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.lease_duration.as_secs().max(1) as i32),
            acquire_time: Some(acquire.unwrap_or_else(|| now.clone())),
            renew_time: Some(now),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    /// Takes or renews the lease; `Ok(true)` while this replica holds it.
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool> {
        let current = match self.api.get_opt(&self.name).await? {
            Some(l) => l,
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        owner_references: self.owners(),
                        ..ObjectMeta::default()
                    },
                    spec: Some(self.spec(None, 0)),
                };
                return match self.api.create(&PostParams::default(), &lease).await {
                    Ok(l) => {
                        self.observed = Some((record(&l), Instant::now()));
                        Ok(true)
                    }
                    Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                    Err(e) => Err(e.into()),
                };
            }
        };
        let rec = record(&current);
        if self.observed.as_ref().is_none_or(|(r, _)| *r != rec) {
            self.observed = Some((rec, Instant::now()));
        }
        let spec = current.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let held_by_me = holder == self.identity;
        let duration = spec
            .lease_duration_seconds
            .map_or(
                self.lease_duration,
                |s| Duration::from_secs(s.max(0) as u64),
            );
        let expired = holder.is_empty()
            || self
                .observed
                .as_ref()
                .is_some_and(|(_, seen)| seen.elapsed() > duration);
        if !held_by_me && !expired {
            return Ok(false);
        }
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!held_by_me);
        let acquire = if held_by_me { spec.acquire_time } else { None };
        let mut next = current.clone();
        next.spec = Some(self.spec(acquire, transitions));
        if self.owner.is_some() {
            next.metadata.owner_references = self.owners();
        }
        match self
            .api
            .replace(&self.name, &PostParams::default(), &next)
            .await
        {
            Ok(l) => {
                self.observed = Some((record(&l), Instant::now()));
                Ok(true)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Gives the lease up if this replica holds it (best effort) by deleting it: a follower
    /// finds none at its next attempt and creates it, and after the last replica stops (an
    /// uninstall) none is left behind. The delete is conditional on the version read, so a
    /// lease another replica took meanwhile stays.
    pub async fn release(&mut self) {
        let Ok(Some(l)) = self.api.get_opt(&self.name).await else {
            return;
        };
        let holder = l.spec.as_ref().and_then(|s| s.holder_identity.as_deref());
        if holder != Some(self.identity.as_str()) {
            return;
        }
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                resource_version: l.metadata.resource_version.clone(),
                uid: l.metadata.uid.clone(),
            }),
            ..DeleteParams::default()
        };
        match self.api.delete(&self.name, &params).await {
            Ok(_) => tracing::info!(lease = %self.name, "released the leader lease"),
            Err(e) => {
                tracing::warn!(error = %e, lease = %self.name, "could not release the leader lease")
            }
        }
    }

    /// Waits for leadership, runs `work` while leading, and returns when `shutdown` fires
    /// (after `work` finished and the lease was released) or with [`Error::LostLease`] when
    /// renewal failed for longer than the renew deadline.
    pub async fn lead<F, Fut>(
        mut self,
        shutdown: CancellationToken,
        metrics: Metrics,
        work: F,
    ) -> Result<()>
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = Result<()>> + Send + 'static,
    {
        tracing::info!(lease = %self.name, identity = %self.identity, "waiting for the leader lease");
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "leader election: lease not readable"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(self.renew_interval) => {}
            }
        }
        tracing::info!(lease = %self.name, identity = %self.identity, "became the leader");
        metrics.leader.set(1);
        let leading = shutdown.child_token();
        let mut task = tokio::spawn(work(leading.clone()));
        let deadline = self.lease_duration.mul_f64(2.0 / 3.0);
        let mut last_renew = Instant::now();
        let outcome = loop {
            tokio::select! {
                r = &mut task => {
                    break r.unwrap_or_else(|source| Err(Error::Join { task: "controllers", source }));
                }
                _ = shutdown.cancelled() => {
                    break (&mut task).await.unwrap_or_else(|source| Err(Error::Join { task: "controllers", source }));
                }
                _ = tokio::time::sleep(self.renew_interval) => {
                    match self.try_acquire_or_renew().await {
                        Ok(true) => last_renew = Instant::now(),
                        Ok(false) => {
                            leading.cancel();
                            let _ = (&mut task).await;
                            metrics.leader.set(0);
                            return Err(Error::LostLease(format!("{} (taken by another replica)", self.name)));
                        }
                        Err(e) if last_renew.elapsed() > deadline => {
                            leading.cancel();
                            let _ = (&mut task).await;
                            metrics.leader.set(0);
                            return Err(Error::LostLease(format!("{} (renewal failing: {e})", self.name)));
                        }
                        Err(e) => tracing::warn!(error = %e, "leader lease renewal failed; retrying"),
                    }
                }
            }
        };
        metrics.leader.set(0);
        self.release().await;
        outcome
    }
}
