//! Kubernetes mode: the API server is the source of objects and the place status goes back to.
//!
//! What is held, and why:
//!
//! - Every object of the kinds the compiler reads ([`RESOURCES`]), mirrored into the [`Store`] by
//!   one list-then-watch loop per kind, or per kind and namespace when `--watch-namespaces` names
//!   some (the `watch` submodule). Objects are stored without `status`, `metadata.managedFields`,
//!   `metadata.resourceVersion` and the `kubectl` last-applied annotation: the compiler reads
//!   none of them, and leaving them out means that our own status writes, and no-op updates,
//!   do not cause a recompile. Services keep `status.loadBalancer`: with `--gateway-service`,
//!   the gateway's own Service's is what Gateways report in `status.addresses` (Services'
//!   status is not ours to write, so keeping it costs no recompile of our own).
//! - Secrets only of type `kubernetes.io/tls` (a field selector): the gateway needs certificates,
//!   not the cluster's other credentials.
//! - Namespaces as metadata only: their labels are what `allowedRoutes` selectors match.
//! - Beside the store, a [`StatusCache`] keeps the `status` and `resourceVersion` last seen on the
//!   objects whose status we write, so that the [`status_writer`] writes only what differs.
//!
//! The store is fed only once every watch has its initial list, and the data plane starts after
//! that, so the first compile sees the whole cluster and `/readyz` never turns ready on a
//! partial table. Losing the API server never stops traffic: the store simply stops changing,
//! so the last table keeps serving while the watches retry, and they resume from the last
//! `resourceVersion` they saw, or re-list when the server says that version is gone (410).
//!
//! The admin endpoint comes up before the initial lists: `/healthz` answers while they run (or
//! while the API server cannot be reached at startup), and `/readyz` turns ready only once the
//! first table compiled from the complete lists is live.
//!
//! Status is written by one replica only when `--leader-elect` is on ([`leader`]);
//! every replica serves traffic. Processes scoped with `--gateway` elect per Gateway (each has
//! its own Lease) and write, of a route attached to several Gateways, only their Gateway's
//! `parents` entry ([`status_writer::Owner`]).
//!
//! Permissions needed (RBAC): `list` and `watch` on `gatewayclasses`, `gateways`, `httproutes`,
//! `grpcroutes`, `tlsroutes`, `referencegrants` and `backendtlspolicies`
//! (`gateway.networking.k8s.io`), `services`, `namespaces`, `secrets` and `configmaps` (core)
//! and `endpointslices` (`discovery.k8s.io`); `get` on the six of those kinds whose status is
//! written (all but `referencegrants`: a status write refused as a conflict reads the object
//! again) and `patch` on their `/status`; `patch` on `gatewayclasses`, for the spec's
//! `gateway-exists-finalizer` on a class in use; with `--leader-elect` (the default), `create` on
//! `leases` (`coordination.k8s.io`) in the Lease's namespace, and `get` and `update` on the
//! Lease itself, which a Role can name in `resourceNames`: `portcullis`, or
//! `portcullis.NS.NAME` for a process scoped with `--gateway NS/NAME`, unless `--lease-name`
//! says otherwise (`create` cannot be limited by name); `create` and `patch` on `events`
//! (`events.k8s.io`) where the objects are (for GatewayClasses, `default`), to record the
//! Warning Events of [`events`](super::events). With `--watch-namespaces`, Roles in those
//! namespaces suffice for the namespaced kinds; GatewayClasses and Namespaces are still read
//! cluster-wide. `tests/support/rbac.rs` holds this as a table, to which the tests hold both
//! the manifests and every request the binary makes.

mod watch;

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::sync::{oneshot, watch as channel};
use tracing::Instrument;

use super::events::Events;
use super::leader::{self, LeaseConfig};
use super::status_writer::{self, StatusCache};
use super::{Kind, Object, Store};
use crate::dataplane::{self, RunOptions};
use crate::routing::{ReportedAddresses, StatusReport};

/// Command-line settings of Kubernetes mode.
#[derive(Debug, Clone, clap::Args)]
pub struct KubernetesArgs {
    /// Namespaces to watch, comma separated; all when empty. GatewayClasses and Namespaces are
    /// cluster scoped and always watched whole.
    #[arg(long, value_delimiter = ',', env = "PORTCULLIS_WATCH_NAMESPACES")]
    pub watch_namespaces: Vec<String>,
    /// Namespace of the leader-election Lease and of `--gateway-service`; defaults to the
    /// namespace of the client configuration (the pod's own namespace in a cluster).
    #[arg(long, env = "POD_NAMESPACE")]
    pub namespace: Option<String>,
    /// The Service in front of the gateway pods: Gateways report its load balancer ingress
    /// (else its external IPs, else its cluster IPs) as their `status.addresses`, since that is
    /// what clients reach. It is read through the Service watch, so with `--watch-namespaces`
    /// its namespace must be among them.
    #[arg(long, env = "PORTCULLIS_GATEWAY_SERVICE")]
    pub gateway_service: Option<String>,
    /// The pod's IP (downward API `status.podIP`): reported as the Gateways' address while
    /// `--gateway-service` does not exist or has no address. Without either flag, Gateways
    /// report the address their listeners bind.
    #[arg(long, env = "POD_IP")]
    pub pod_ip: Option<std::net::IpAddr>,
    /// Elect one replica to write status (every replica serves traffic), through the Lease
    /// `--lease-name`. With `false`, this replica always writes status.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,
    /// Name of the leader-election Lease; defaults to `portcullis`, or with `--gateway NS/NAME`
    /// to `portcullis.NS.NAME`, so that the processes serving different Gateways each elect
    /// their own status writer instead of one of them writing for all.
    #[arg(long)]
    pub lease_name: Option<String>,
    /// How long a leader holds the Lease without renewing it before another replica takes over.
    #[arg(long, default_value = "15s", value_parser = parse_lease_duration)]
    pub lease_duration: Duration,
    /// Identity written into the Lease and into Events as `reportingInstance`; defaults to the
    /// pod name (or host name) and a random suffix.
    #[arg(long, env = "POD_NAME")]
    pub leader_identity: Option<String>,
}

fn parse_lease_duration(text: &str) -> Result<Duration, String> {
    match crate::routing::parse_duration(text)? {
        Some(d) if d >= Duration::from_secs(1) => Ok(d),
        _ => Err(format!("{text}: a lease lasts at least 1s")),
    }
}

/// Why Kubernetes mode could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No kubeconfig and no in-cluster service account.
    #[error("no Kubernetes client configuration (KUBECONFIG, ~/.kube/config or in-cluster): {0}")]
    Config(#[from] kube::config::InferConfigError),
    /// The configuration is there but no client can be built from it.
    #[error("cannot build a Kubernetes client: {0}")]
    Client(#[from] kube::Error),
    /// A watch task ended before delivering its initial list.
    #[error("the watch of {0} stopped before its initial list")]
    WatchStopped(Kind),
}

/// One kind the gateway watches: where it lives in the API and how to select it.
#[derive(Debug)]
pub struct Resource {
    /// The store kind.
    pub kind: Kind,
    /// The plural name in URLs.
    pub plural: &'static str,
    /// Versions to try, newest first: the first one the server serves is watched.
    pub versions: &'static [&'static str],
    /// A field selector, for kinds where only some objects are ours to read.
    pub fields: Option<&'static str>,
}

/// The kinds read from the API server.
pub const RESOURCES: &[Resource] = &[
    Resource {
        kind: Kind::GatewayClass,
        plural: "gatewayclasses",
        versions: &["v1"],
        fields: None,
    },
    Resource {
        kind: Kind::Gateway,
        plural: "gateways",
        versions: &["v1"],
        fields: None,
    },
    Resource {
        kind: Kind::HttpRoute,
        plural: "httproutes",
        versions: &["v1"],
        fields: None,
    },
    Resource {
        kind: Kind::GrpcRoute,
        plural: "grpcroutes",
        versions: &["v1"],
        fields: None,
    },
    // TLSRoute graduates through alpha versions; clusters serve whichever their CRDs carry.
    Resource {
        kind: Kind::TlsRoute,
        plural: "tlsroutes",
        versions: &["v1", "v1alpha3", "v1alpha2"],
        fields: None,
    },
    Resource {
        kind: Kind::ReferenceGrant,
        plural: "referencegrants",
        versions: &["v1", "v1beta1"],
        fields: None,
    },
    Resource {
        kind: Kind::Service,
        plural: "services",
        versions: &["v1"],
        fields: None,
    },
    Resource {
        kind: Kind::EndpointSlice,
        plural: "endpointslices",
        versions: &["v1"],
        fields: None,
    },
    Resource {
        kind: Kind::Namespace,
        plural: "namespaces",
        versions: &["v1"],
        fields: None,
    },
    Resource {
        kind: Kind::Secret,
        plural: "secrets",
        versions: &["v1"],
        fields: Some("type=kubernetes.io/tls"),
    },
    Resource {
        kind: Kind::BackendTlsPolicy,
        plural: "backendtlspolicies",
        versions: &["v1", "v1alpha3"],
        fields: None,
    },
    // CA bundles of BackendTLSPolicies. Known cost: every ConfigMap in the watched namespaces is
    // held, since the API offers no selector for "referenced by a policy".
    Resource {
        kind: Kind::ConfigMap,
        plural: "configmaps",
        versions: &["v1"],
        fields: None,
    },
];

impl Resource {
    /// The kube description of this resource at `version`.
    pub fn api_resource(&self, version: &str) -> kube::core::ApiResource {
        let group = self.kind.group();
        kube::core::ApiResource {
            group: group.to_string(),
            version: version.to_string(),
            api_version: if group.is_empty() {
                version.to_string()
            } else {
                format!("{group}/{version}")
            },
            kind: self.kind.as_str().to_string(),
            plural: self.plural.to_string(),
        }
    }
}

/// Runs the gateway from the Kubernetes API until SIGTERM or SIGINT: watches, leader election,
/// the status writer and the data plane.
pub async fn run(args: KubernetesArgs, mut options: RunOptions) -> anyhow::Result<()> {
    // Without --config-dir the gateway reads the Kubernetes API; someone trying it on a laptop
    // most often meant standalone mode, so the error says both.
    let config = kube::Config::infer().await.map_err(|err| {
        anyhow::anyhow!(
            "no --config-dir given, so reading from the Kubernetes API, but no cluster was \
             found ({err}); run in a pod, set KUBECONFIG, or give --config-dir DIR to serve a \
             directory of manifests"
        )
    })?;
    let namespace = args
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    options.compile.reported_addresses = ReportedAddresses {
        service: args
            .gateway_service
            .clone()
            .map(|name| (namespace.clone(), name)),
        pod_ip: args.pod_ip,
    };
    tracing::info!(server = %config.cluster_url, "reading Gateway API objects from the Kubernetes API");
    let client = kube::Client::try_from(config).map_err(Error::from)?;

    let store = Store::new();
    let statuses = StatusCache::new();
    // The initial lists run while the admin endpoint already answers liveness probes; the
    // data plane compiles nothing before they are complete.
    options.initial_sync = Some({
        let (client, namespaces) = (client.clone(), args.watch_namespaces.clone());
        let (store, statuses) = (store.clone(), statuses.clone());
        Box::pin(async move {
            sync(&client, &namespaces, &store, &statuses).await?;
            Ok(())
        })
    });

    let (reports, report_rx) = channel::channel(Arc::new(StatusReport::default()));
    options.status_reports = Some(reports);
    let owner = status_writer::Owner {
        controller_name: options.compile.controller_name.clone(),
        gateway: options.compile.only_gateway.clone(),
        sees_every_gateway: args.watch_namespaces.is_empty(),
    };
    let identity = args.leader_identity.unwrap_or_else(default_identity);
    let events = Events::start(
        client.clone(),
        owner.controller_name.clone(),
        identity.clone(),
    );
    let (always, mut leading) = channel::channel(true);
    let mut election = None;
    if args.leader_elect {
        let lease = LeaseConfig::new(
            namespace,
            args.lease_name
                .unwrap_or_else(|| default_lease_name(options.compile.only_gateway.as_deref())),
            identity,
            args.lease_duration,
        );
        let elector = leader::start(client.clone(), lease);
        leading = elector.subscribe();
        election = Some(elector);
    }
    tokio::spawn(
        status_writer::run(client, statuses, report_rx, leading, owner, events)
            .instrument(tracing::info_span!("status_writer")),
    );
    // The Lease goes as soon as the drain starts (or the data plane ends for any other
    // reason): the replica taking over writes status while this one drains.
    let (stopping, stopped) = tokio::sync::oneshot::channel();
    options.stopping = Some(stopping);
    let release = election.map(|elector| {
        tokio::spawn(async move {
            let _ = stopped.await;
            elector.release().await;
        })
    });
    let served = dataplane::run(store, options).await;
    if let Some(release) = release {
        let _ = release.await;
    }
    drop(always);
    served
}

/// Starts every watch, waits until each has listed its objects, then puts all of them into the
/// store as one revision and lets the watches go on.
async fn sync(
    client: &kube::Client,
    namespaces: &[String],
    store: &Store,
    statuses: &StatusCache,
) -> Result<(), Error> {
    let started = std::time::Instant::now();
    let (synced, synced_rx) = channel::channel(false);
    let mut initial = Vec::new();
    for resource in RESOURCES {
        let scopes: Vec<Option<String>> = if !resource.kind.namespaced() || namespaces.is_empty() {
            vec![None]
        } else {
            namespaces.iter().cloned().map(Some).collect()
        };
        for namespace in scopes {
            let (tx, rx) = oneshot::channel();
            let span = tracing::info_span!(
                "watch",
                kind = %resource.kind,
                namespace = namespace.as_deref().unwrap_or("*")
            );
            let watch = watch::Watch::new(
                client.clone(),
                resource,
                namespace,
                store.clone(),
                statuses.clone(),
            );
            tokio::spawn(watch.run(tx, synced_rx.clone()).instrument(span));
            initial.push((resource.kind, rx));
        }
    }
    let mut objects: Vec<Object> = Vec::new();
    for (kind, rx) in initial {
        objects.extend(rx.await.map_err(|_| Error::WatchStopped(kind))?);
    }
    tracing::info!(
        objects = objects.len(),
        ms = started.elapsed().as_millis() as u64,
        "initial lists complete"
    );
    store.apply(&[], objects);
    synced.send_replace(true);
    // The watches hold receivers; the sender may go, the value stays.
    Ok(())
}

/// The Lease elected through when `--lease-name` is not given: `portcullis`, or
/// `portcullis.NS.NAME` for a process scoped to Gateway `NS/NAME`. A namespace has no dots, so
/// two Gateways never share a name. Manifests that grant the Lease by name use this.
pub fn default_lease_name(gateway: Option<&str>) -> String {
    match gateway.and_then(|g| g.split_once('/')) {
        Some((namespace, name)) => format!("portcullis.{namespace}.{name}"),
        None => "portcullis".to_string(),
    }
}

/// The pod name (the host name inside a pod) with a random suffix, so that two processes on one
/// host, or a restarted pod under the same name, never pass for each other.
fn default_identity() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "portcullis".to_string());
    format!("{host}_{:08x}", rand::rng().random::<u32>())
}

/// Retry delays for talking to the API server: short, because a gateway wants its configuration
/// back within a second or two of the server returning (kube's default backoff starts at 0.8 s,
/// doubles to 30 s and resets only after 2 minutes of calm, which can hold a recovery back for
/// 15 s or more), with jitter so that replicas do not retry in step.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    next: Duration,
}

impl Backoff {
    const MIN: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(2);

    pub(crate) fn new() -> Self {
        Backoff { next: Self::MIN }
    }

    /// The delay before the next attempt.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        base.mul_f64(rand::rng().random_range(0.8..1.2))
    }

    /// Back to the shortest delay, after a success.
    pub(crate) fn reset(&mut self) {
        self.next = Self::MIN;
    }
}

/// How long one request to the API server (the opening of a watch, a status write, a Lease
/// update, an Event) may take, its answer included. kube's client sets no read
/// timeout, so a connection that stalls (a black-holed network, a wedged API server) would
/// otherwise hold its caller forever: one stuck status write would stop every status write
/// after it, and a leader whose Lease update hung would go on leading without renewing, beside
/// the replica that took the Lease over. A watch's stream is bounded on its own (the server
/// closes it at its timeout, and one silent past that is dropped).
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How long one page of a list may take: the API server's own limit for a request (its
/// `--request-timeout`, 60 s by default), as a page of 500 Secrets or ConfigMaps from a busy
/// server can take more than [`REQUEST_TIMEOUT`], and a list that never finishes would keep
/// the gateway from ever being ready.
pub(crate) const LIST_TIMEOUT: Duration = Duration::from_secs(60);

/// `request`, abandoned with an error once `limit` has passed.
pub(crate) async fn bounded<T>(
    limit: Duration,
    request: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Result<T, kube::Error> {
    tokio::time::timeout(limit, request)
        .await
        .unwrap_or_else(|_| {
            Err(kube::Error::Service(
                format!(
                    "the API server did not answer within {:.1}s",
                    limit.as_secs_f64()
                )
                .into(),
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_and_resets() {
        let mut b = Backoff::new();
        let first = b.next_delay();
        assert!(first <= Duration::from_millis(120));
        for _ in 0..10 {
            assert!(b.next_delay() <= Duration::from_millis(2400));
        }
        assert!(b.next_delay() >= Duration::from_millis(1600));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(120));
    }

    #[test]
    fn scoped_processes_elect_per_gateway() {
        assert_eq!(default_lease_name(None), "portcullis");
        assert_eq!(
            default_lease_name(Some("infra/public")),
            "portcullis.infra.public"
        );
    }

    #[test]
    fn every_watched_kind_is_a_store_kind_with_its_group() {
        for r in RESOURCES {
            let ar = r.api_resource(r.versions[0]);
            assert_eq!(ar.kind, r.kind.as_str());
            assert_eq!(ar.group, r.kind.group());
        }
        assert_eq!(
            RESOURCES[0].api_resource("v1").api_version,
            "gateway.networking.k8s.io/v1"
        );
        let service = RESOURCES.iter().find(|r| r.kind == Kind::Service).unwrap();
        assert_eq!(service.api_resource("v1").api_version, "v1");
    }
}
