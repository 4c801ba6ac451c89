//! Leader election on a `coordination.k8s.io/v1` Lease: which replica writes status.
//!
//! Every replica serves traffic; only status writes need one writer, or two replicas would keep
//! overwriting each other's condition times. The protocol is client-go's `leaderelection`: the
//! holder renews `spec.renewTime` every retry period; another replica takes the Lease over
//! (an update guarded by `resourceVersion`, so that only one of several contenders wins) once it
//! has seen the same holder and renew time for longer than `leaseDurationSeconds`. Expiry is
//! judged by when *we* last saw the record change, on our own monotonic clock, so clock skew
//! between nodes does not matter.
//!
//! A leader that cannot renew for the renew deadline (two thirds of the lease) steps down before
//! anyone else can take over, so two writers never overlap. The deadline counts from when the
//! last successful renewal was sent, not from when its answer came: the other replicas count
//! from the record it wrote, which a slow answer does not make any younger. A leader that
//! stops on SIGTERM releases the Lease, so that the next one takes over at once instead of
//! after the lease duration.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use kube::Client;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use tracing::Instrument;

use super::kubernetes::{bounded, REQUEST_TIMEOUT};

/// Where the Lease is and who we are.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// Our `holderIdentity`.
    pub identity: String,
    /// `leaseDurationSeconds`: how long a silent holder keeps the Lease.
    pub lease_duration: Duration,
    /// How long a leader goes without a successful renewal before it steps down.
    pub renew_deadline: Duration,
    /// How often the Lease is renewed or contended for.
    pub retry_period: Duration,
}

impl LeaseConfig {
    /// Client-go's proportions (15 s / 10 s / 2 s by default), scaled to `lease_duration`.
    pub fn new(
        namespace: String,
        name: String,
        identity: String,
        lease_duration: Duration,
    ) -> Self {
        LeaseConfig {
            namespace,
            name,
            identity,
            lease_duration,
            renew_deadline: lease_duration.mul_f64(2.0 / 3.0),
            retry_period: lease_duration.mul_f64(2.0 / 15.0),
        }
    }
}

/// A running election.
pub struct Election {
    leading: watch::Receiver<bool>,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Election {
    /// Whether this replica leads now, and every change of it.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.leading.clone()
    }

    /// Stops contending and, if leading, releases the Lease so that another replica takes over
    /// at once. Bounded: a release the API server does not answer is abandoned after 2 s.
    pub async fn release(self) {
        let _ = self.stop.send(());
        let _ = tokio::time::timeout(Duration::from_secs(2), self.task).await;
    }
}

/// Starts contending for the Lease.
pub fn start(client: Client, config: LeaseConfig) -> Election {
    let (leading_tx, leading) = watch::channel(false);
    let (stop, stopped) = oneshot::channel();
    let span = tracing::info_span!("leader_election", lease = %format_args!("{}/{}", config.namespace, config.name), identity = %config.identity);
    let elector = Elector {
        api: Api::namespaced(client, &config.namespace),
        config,
        observed: None,
        leading: leading_tx,
        last_renewal: None,
        last_error: None,
    };
    let task = tokio::spawn(elector.run(stopped).instrument(span));
    Election {
        leading,
        stop,
        task,
    }
}

/// What the Lease said last time it changed, and when we saw that change.
#[derive(Debug, Clone, PartialEq)]
struct Observed {
    holder: String,
    renew_time: Option<String>,
    at: Instant,
}

/// What to do with the Lease as it stands.
#[derive(Debug, PartialEq, Eq)]
enum Decision {
    /// Another replica holds it and renews it: wait.
    Wait,
    /// Ours: renew it.
    Renew,
    /// Free, released or expired: take it.
    Take,
}

/// Decides from the Lease's holder and duration, and when we first saw its current record.
fn decide(holder: &str, duration: Duration, me: &str, seen_at: Instant, now: Instant) -> Decision {
    if holder == me {
        Decision::Renew
    } else if holder.is_empty() || now.saturating_duration_since(seen_at) > duration {
        Decision::Take
    } else {
        Decision::Wait
    }
}

struct Elector {
    api: Api<Lease>,
    config: LeaseConfig,
    observed: Option<Observed>,
    leading: watch::Sender<bool>,
    /// When the `renewTime` of our last successful renewal was stamped.
    last_renewal: Option<Instant>,
    /// What the last failed attempt said, for the step-down's warning.
    last_error: Option<String>,
}

/// Whether an attempt left us holding the Lease.
enum Attempt {
    /// Renewed (or taken) with a `renewTime` stamped at this instant, before the write went:
    /// the other replicas count the lease from the record they see, which may be as old as
    /// that, however late its answer came back to us.
    Held(Instant),
    HeldByOther,
    /// The API server could not be asked, or another replica wrote at the same time: we do not
    /// know.
    Unknown(String),
}

impl Elector {
    async fn run(mut self, mut stop: oneshot::Receiver<()>) {
        loop {
            // An attempt that the API server does not answer is abandoned in time for a leader
            // to step down by its renew deadline, however the request hangs: the other
            // replicas take the Lease over only after the (longer) lease duration, so two
            // writers never overlap.
            let budget = self.attempt_budget();
            let attempt = if budget < Duration::from_millis(10) {
                // A leader at its renew deadline steps down now, on the last error it had.
                Attempt::Unknown(
                    self.last_error
                        .clone()
                        .unwrap_or_else(|| "no renewal within the renew deadline".to_string()),
                )
            } else {
                tokio::time::timeout(budget, self.attempt())
                    .await
                    .unwrap_or_else(|_| {
                        Attempt::Unknown(format!(
                            "the API server did not answer within {:.1}s",
                            budget.as_secs_f64()
                        ))
                    })
            };
            self.settle(attempt);
            let jitter = self
                .config
                .retry_period
                .mul_f64(rand::random_range(0.0..0.2));
            // A leader tries again by its renew deadline at the latest, so that it steps down
            // on time when its attempts fail fast.
            let mut pause = self.config.retry_period + jitter;
            if *self.leading.borrow() {
                pause = pause.min(self.attempt_budget());
            }
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = &mut stop => break,
            }
        }
        if *self.leading.borrow() {
            self.leading.send_replace(false);
            self.give_up().await;
        }
    }

    /// How long the next attempt may take: a leader's ends at its renew deadline, counted from
    /// its last renewal; anyone else's may take a whole renew deadline.
    fn attempt_budget(&self) -> Duration {
        match self.last_renewal {
            Some(renewed) if *self.leading.borrow() => {
                (renewed + self.config.renew_deadline).saturating_duration_since(Instant::now())
            }
            _ => self.config.renew_deadline,
        }
    }

    /// Updates `leading` from the outcome of one attempt.
    fn settle(&mut self, attempt: Attempt) {
        let was = *self.leading.borrow();
        let now = match attempt {
            Attempt::Held(stamped) => {
                self.last_renewal = Some(stamped);
                self.last_error = None;
                // An answer that came back past the renew deadline is a lease others may
                // already be counting out.
                let within = stamped.elapsed() < self.config.renew_deadline;
                if !within {
                    tracing::warn!("the lease was renewed, but the answer came after the renew deadline; not leading");
                }
                within
            }
            Attempt::HeldByOther => {
                self.last_error = None;
                false
            }
            Attempt::Unknown(err) => {
                self.last_error = Some(err.clone());
                let within = self
                    .last_renewal
                    .is_some_and(|t| t.elapsed() < self.config.renew_deadline);
                if was && !within {
                    tracing::warn!(error = %err, "cannot renew the lease within the renew deadline; stepping down");
                } else {
                    tracing::debug!(error = %err, "lease attempt failed");
                }
                was && within
            }
        };
        if now != was {
            if now {
                tracing::info!("became leader: this replica writes status");
            } else {
                tracing::info!("no longer leader: this replica stops writing status");
            }
            self.leading.send_replace(now);
        }
    }

    async fn attempt(&mut self) -> Attempt {
        let lease = match self.api.get_opt(&self.config.name).await {
            Ok(lease) => lease,
            Err(err) => return Attempt::Unknown(err.to_string()),
        };
        let now = Instant::now();
        let Some(mut lease) = lease else {
            return self.create().await;
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let record = Observed {
            holder: holder.clone(),
            renew_time: spec.renew_time.as_ref().map(|t| t.0.to_string()),
            at: now,
        };
        let seen_at = match &self.observed {
            Some(o) if o.holder == record.holder && o.renew_time == record.renew_time => o.at,
            _ => {
                self.observed = Some(record);
                now
            }
        };
        let duration = spec
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map_or(self.config.lease_duration, Duration::from_secs);
        let decision = decide(&holder, duration, &self.config.identity, seen_at, now);
        if decision == Decision::Wait {
            return Attempt::HeldByOther;
        }
        if decision == Decision::Take {
            tracing::info!(previous = %holder, "taking the lease over");
        }
        let stamped = Instant::now();
        let stamp = MicroTime(k8s_openapi::jiff::Timestamp::now());
        let mut spec = spec;
        if decision == Decision::Take {
            spec.acquire_time = Some(stamp.clone());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.holder_identity = Some(self.config.identity.clone());
        spec.lease_duration_seconds = Some(self.duration_seconds());
        spec.renew_time = Some(stamp);
        lease.spec = Some(spec);
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Attempt::Held(stamped),
            Err(kube::Error::Api(s)) if s.code == 409 => {
                Attempt::Unknown("another replica updated the lease first".to_string())
            }
            Err(err) => Attempt::Unknown(err.to_string()),
        }
    }

    async fn create(&mut self) -> Attempt {
        let stamped = Instant::now();
        let stamp = MicroTime(k8s_openapi::jiff::Timestamp::now());
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(self.config.name.clone()),
                namespace: Some(self.config.namespace.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(self.config.identity.clone()),
                lease_duration_seconds: Some(self.duration_seconds()),
                acquire_time: Some(stamp.clone()),
                renew_time: Some(stamp),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        match self.api.create(&PostParams::default(), &lease).await {
            Ok(_) => Attempt::Held(stamped),
            Err(kube::Error::Api(s)) if s.code == 409 => {
                Attempt::Unknown("another replica created the lease first".to_string())
            }
            Err(err) => Attempt::Unknown(err.to_string()),
        }
    }

    /// Empties the holder so that the next replica need not wait for the lease to expire.
    async fn give_up(&mut self) {
        let Ok(Some(mut lease)) =
            bounded(REQUEST_TIMEOUT, self.api.get_opt(&self.config.name)).await
        else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(k8s_openapi::jiff::Timestamp::now()));
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => tracing::info!("lease released"),
            Err(err) => {
                tracing::warn!(error = %err, "cannot release the lease; another replica takes over when it expires")
            }
        }
    }

    fn duration_seconds(&self) -> i32 {
        i32::try_from(self.config.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(15);

    #[test]
    fn our_own_lease_is_renewed() {
        let now = Instant::now();
        assert_eq!(decide("me", LEASE, "me", now, now), Decision::Renew);
    }

    #[test]
    fn a_free_or_released_lease_is_taken_at_once() {
        let now = Instant::now();
        assert_eq!(decide("", LEASE, "me", now, now), Decision::Take);
    }

    #[test]
    fn another_holder_is_waited_for_until_its_record_is_older_than_the_lease() {
        let seen = Instant::now();
        assert_eq!(
            decide("other", LEASE, "me", seen, seen + LEASE),
            Decision::Wait
        );
        assert_eq!(
            decide(
                "other",
                LEASE,
                "me",
                seen,
                seen + LEASE + Duration::from_millis(1)
            ),
            Decision::Take
        );
    }

    #[test]
    fn proportions_follow_client_go() {
        let c = LeaseConfig::new("ns".into(), "l".into(), "me".into(), LEASE);
        assert_eq!(c.renew_deadline, Duration::from_secs(10));
        assert_eq!(c.retry_period, Duration::from_secs(2));
    }
}
