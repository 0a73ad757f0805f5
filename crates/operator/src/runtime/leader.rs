//! Leader election with a `coordination.k8s.io/v1` Lease, after client-go's protocol: the
//! leader renews the Lease every `duration / 3`; a candidate takes it over once it has seen it
//! unchanged (same `resourceVersion`) for a whole `duration`, so clock skew between replicas
//! does not matter. Updates are optimistic (`resourceVersion` preconditions), so two candidates
//! can never both win the same round.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::sync::watch;

pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
    /// The last version of the Lease we saw and when we first saw it.
    observed: Option<(String, Instant)>,
}

impl LeaderElector {
    pub fn new(
        client: kube::Client,
        namespace: &str,
        name: &str,
        identity: &str,
        duration: Duration,
    ) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.to_owned(),
            identity: identity.to_owned(),
            duration,
            observed: None,
        }
    }

    /// Runs forever, publishing on `leading` whether this replica leads. Losing the lease after
    /// holding it is reported as `false`; the caller decides what to do (the operator exits so
    /// that nothing it started keeps acting as leader).
    pub async fn run(mut self, leading: watch::Sender<bool>) {
        let period = self.duration / 3;
        loop {
            let leads = match self.try_acquire_or_renew().await {
                Ok(leads) => leads,
                Err(error) => {
                    tracing::warn!(%error, lease = %self.name, "leader election round failed");
                    // A leader that cannot renew must assume it lost once the lease could have
                    // expired.
                    *leading.borrow() && self.renewed_recently()
                }
            };
            leading.send_if_modified(|current| {
                let changed = *current != leads;
                *current = leads;
                changed
            });
            tokio::time::sleep(period).await;
        }
    }

    fn renewed_recently(&self) -> bool {
        self.observed
            .as_ref()
            .is_some_and(|(_, at)| at.elapsed() < self.duration * 2 / 3)
    }

    fn spec(&self, transitions: i32) -> LeaseSpec {
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.duration.as_secs() as i32),
            acquire_time: Some(now.clone()),
            renew_time: Some(now),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }

    async fn try_acquire_or_renew(&mut self) -> Result<bool, kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..Default::default()
                },
                spec: Some(self.spec(0)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(created) => {
                    self.observe(&created);
                    Ok(true)
                }
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(error) => Err(error),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.as_deref().unwrap_or_default();
        let version = lease.metadata.resource_version.clone().unwrap_or_default();
        let ours = holder == self.identity;
        if !ours {
            let unchanged_since = match &self.observed {
                Some((seen, since)) if *seen == version => *since,
                _ => {
                    self.observed = Some((version, Instant::now()));
                    Instant::now()
                }
            };
            let expired = holder.is_empty() || unchanged_since.elapsed() >= self.duration;
            if !expired {
                return Ok(false);
            }
        }
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!ours);
        let mut renewed = self.spec(transitions);
        if ours {
            renewed.acquire_time = spec.acquire_time;
        }
        lease.spec = Some(renewed);
        // replace() carries the resourceVersion we read: a concurrent change makes it fail.
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(updated) => {
                self.observe(&updated);
                if !ours {
                    tracing::info!(lease = %self.name, identity = %self.identity, "acquired leadership");
                }
                Ok(true)
            }
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(error) => Err(error),
        }
    }

    fn observe(&mut self, lease: &Lease) {
        let version = lease.metadata.resource_version.clone().unwrap_or_default();
        self.observed = Some((version, Instant::now()));
    }
}
