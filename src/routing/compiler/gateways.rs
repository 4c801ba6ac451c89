//! Pass one: GatewayClasses, Gateways, addresses and listeners.
//!
//! Each listener is judged on its own: an unsupported protocol, an invalid route kind or an
//! unresolvable certificate marks that listener, never its siblings. The Gateway's own
//! conditions summarize its listeners as the spec describes (`Accepted` stays true with reason
//! `ListenersNotValid` while at least one listener is valid; `ResolvedRefs` is false with reason
//! `ListenersNotResolved` while a listener's references do not resolve).
//!
//! A Gateway's address is the one its listeners bind, from `--address-pool`. What its
//! `status.addresses` report can differ: in a cluster, clients reach the gateway through its
//! Service, so when [`ReportedAddresses`] names one, the Service's addresses (or the pod's IP)
//! are reported instead.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use serde_json::{json, Value};

use super::routes::{CompiledRoute, Hostnames, IndexCache};
use super::{CompileOptions, ReportedAddresses};
use crate::controller::{Kind, Object, Snapshot};
use crate::routing::api::{self, GatewayClassSpec, GatewaySpec, LabelSelector};
use crate::routing::status::{Conditions, ObjectStatus, StatusReport};
use crate::routing::table::{Bind, HostIndex, ListenerRoutes, RoutingTable};

const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

/// A condition that is false, with its reason and message.
pub(super) type Problem = (&'static str, String);

/// Which namespaces may attach routes to a listener.
pub(super) enum NamespacePolicy {
    Same,
    All,
    Selector(LabelSelector),
}

/// A listener after validation, collecting the routes that attach to it.
pub(super) struct ListenerState {
    pub name: String,
    pub hostname: Option<String>,
    pub port: u16,
    pub protocol: String,
    /// `Accepted=False` reason, if any.
    pub accepted: Option<Problem>,
    /// `ResolvedRefs=False` reason, if any.
    pub resolved: Option<Problem>,
    /// `Conflicted=True` reason, if any.
    pub conflicted: Option<Problem>,
    /// `OverlappingTLSConfig=True` message, if any (a condition set only when true).
    pub overlapping_tls: Option<String>,
    /// Why the listener is not served although accepted.
    pub not_programmed: Option<Problem>,
    pub supported_kinds: Vec<&'static str>,
    pub namespaces: NamespacePolicy,
    pub routes: Vec<(Arc<CompiledRoute>, Hostnames)>,
    pub attached: i64,
    /// The first certificateRef's key, for HTTPS listeners.
    pub certificate: Option<Arc<rustls::sign::CertifiedKey>>,
    /// The keys of the certificateRefs that hold a usable certificate, in order (with the
    /// stand-ins of broken Secrets, once [`Gateways::keep_last_good_certificates`] ran).
    pub certificates: Vec<Arc<rustls::sign::CertifiedKey>>,
    /// The index of the certificateRef each of `certificates` came from.
    pub certificates_from: Vec<usize>,
    /// A TLS listener in Passthrough mode: connections are routed by SNI, not terminated.
    pub passthrough: bool,
    /// Client certificate validation of the listener's port.
    pub client_auth: Option<Arc<crate::tls::ClientAuth>>,
    /// The validation accepts connections whatever certificate comes (`AllowInsecureFallback`).
    pub insecure_frontend: bool,
    /// Secrets whose certificate was read, by `(namespace, name)`, for [`CertificateMemory`].
    pub certificates_read: Vec<((String, String), Arc<rustls::sign::CertifiedKey>)>,
    /// The first Secret whose content is not a usable certificate, with why.
    pub broken_secret: Option<((String, String), String)>,
    /// Every certificateRef whose Secret is not a usable certificate: its index and Secret.
    pub broken_refs: Vec<(usize, (String, String))>,
    /// Served with the last usable certificate of a Secret that has since gone bad.
    pub stale_certificate: bool,
    /// A Secret is broken but other certificateRefs are valid: the listener serves those.
    pub serves_others: bool,
}

/// The last usable certificate of each Secret a listener reads, kept across compiles. A Secret
/// whose content turns bad (a cut-off PEM, a key that does not match) would otherwise take its
/// listeners down at once; with the memory they go on serving the certificate they had, while
/// their `ResolvedRefs` condition says what is wrong. A Secret that is deleted, or bad from the
/// start, has nothing to fall back on: its listeners are not served.
#[derive(Default)]
pub(super) struct CertificateMemory(HashMap<(String, String), Arc<rustls::sign::CertifiedKey>>);

impl ListenerState {
    /// Whether routes may attach at all (an invalid listener still counts attached routes).
    pub(super) fn allows(
        &self,
        kind: &str,
        route_namespace: &str,
        gateway_namespace: &str,
        snapshot: &Snapshot,
    ) -> bool {
        self.supported_kinds.contains(&kind)
            && match &self.namespaces {
                NamespacePolicy::Same => route_namespace == gateway_namespace,
                NamespacePolicy::All => true,
                NamespacePolicy::Selector(sel) => {
                    sel.matches(&namespace_labels(snapshot, route_namespace))
                }
            }
    }

    fn served(&self) -> bool {
        self.accepted.is_none()
            && self.conflicted.is_none()
            && self.not_programmed.is_none()
            && self.resolved_ok_for_serving()
    }

    fn resolved_ok_for_serving(&self) -> bool {
        // An invalid route kind leaves the listener usable for the kinds it does support; a
        // certificate problem does not, unless the last good certificate stands in or other
        // certificateRefs are valid.
        self.stale_certificate
            || self.serves_others
            || !matches!(&self.resolved, Some((reason, _)) if *reason != "InvalidRouteKinds")
    }
}

/// The labels of a namespace, with `kubernetes.io/metadata.name`, which the API server sets on
/// every namespace to its name, whatever a manifest says: filled in for namespaces standalone
/// mode never saw declared, and overwritten where a manifest gave another value, so that a
/// selector on the name cannot be answered by a namespace posing as another.
pub(super) fn namespace_labels(snapshot: &Snapshot, namespace: &str) -> BTreeMap<String, String> {
    let mut labels = snapshot
        .get(Kind::Namespace, "", namespace)
        .map(|n| n.labels.clone())
        .unwrap_or_default();
    labels.insert(
        "kubernetes.io/metadata.name".to_string(),
        namespace.to_string(),
    );
    labels
}

/// A Gateway of ours.
pub(super) struct GatewayState {
    pub namespace: String,
    pub name: String,
    generation: i64,
    /// `metadata.creationTimestamp`: of two Gateways asking for one address, the older keeps it.
    created: String,
    problem: Option<Problem>,
    address: Option<IpAddr>,
    address_problem: Option<Problem>,
    /// `spec.tls.backend.clientCertificateRef`, resolved.
    backend_client_cert: Option<Arc<pingora_core::utils::tls::CertKey>>,
    /// Why the backend client certificate could not be used.
    backend_cert_problem: Option<Problem>,
    pub listeners: Vec<ListenerState>,
}

impl GatewayState {
    fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Why the Gateway as a whole is not accepted (`Accepted=False`), if it is not: its spec,
    /// its class, its parameters or an address of a type it cannot have. No route attaches
    /// to such a Gateway.
    pub(super) fn rejection(&self) -> Option<&Problem> {
        self.problem.as_ref().or_else(|| {
            self.address_problem
                .as_ref()
                .filter(|p| p.0 == "UnsupportedAddress")
        })
    }

    /// Not accepted, as a whole or in every listener: nothing of it could be served.
    fn serves_nothing(&self) -> bool {
        self.problem.is_some()
            || (!self.listeners.is_empty() && self.listeners.iter().all(|l| l.accepted.is_some()))
    }
}

/// All Gateways of ours, by `namespace/name`.
pub(super) struct Gateways {
    pub by_key: BTreeMap<(String, String), GatewayState>,
    /// `status.addresses` of every Gateway, when they come from the gateway's Service or pod
    /// rather than from each Gateway's bind address.
    reported: Option<Vec<Value>>,
}

impl Gateways {
    /// Lets listeners whose Secrets went bad serve the last certificate each held (see
    /// [`CertificateMemory`]), in the place of its certificateRef, and remembers the
    /// certificates read this time. Every certificateRef has its stand-in: a broken second
    /// Secret would otherwise leave the names only it covers served another certificate.
    pub(super) fn keep_last_good_certificates(&mut self, memory: &mut CertificateMemory) {
        let mut kept = HashMap::new();
        for listener in self
            .by_key
            .values_mut()
            .flat_map(|g| g.listeners.iter_mut())
        {
            for (key, certificate) in listener.certificates_read.drain(..) {
                kept.insert(key, certificate);
            }
            if listener.accepted.is_some() {
                continue;
            }
            for (index, key) in std::mem::take(&mut listener.broken_refs) {
                let Some(last) = memory.0.get(&key) else {
                    continue;
                };
                let at = listener
                    .certificates_from
                    .iter()
                    .filter(|from| **from < index)
                    .count();
                listener.certificates.insert(at, last.clone());
                listener.certificates_from.insert(at, index);
                listener.stale_certificate = true;
                kept.insert(key.clone(), last.clone());
                // The condition names the first problem in the order written: when that is
                // this Secret, it says so stood in for (an earlier reference's problem, such
                // as a missing ReferenceGrant, stays as it is).
                if let Some((first, message)) = &listener.broken_secret {
                    let said = listener
                        .resolved
                        .as_ref()
                        .is_some_and(|(_, m)| m.starts_with(message.as_str()));
                    if *first == key && said {
                        listener.resolved = Some((
                            "InvalidCertificateRef",
                            format!(
                                "{message}; the last valid certificate it held is served until \
                                 it is fixed"
                            ),
                        ));
                    }
                }
            }
            listener.certificate = listener.certificates.first().cloned();
        }
        memory.0 = kept;
    }
}

pub(super) fn compile(
    snapshot: &Snapshot,
    options: &CompileOptions,
    report: &mut StatusReport,
) -> Gateways {
    let mut our_classes = HashMap::new();
    for class in snapshot.of_kind(Kind::GatewayClass) {
        let spec: GatewayClassSpec = api::read(class.spec()).unwrap_or_default();
        if spec.controller_name != options.controller_name {
            continue;
        }
        let mut conditions = Conditions::new(class.generation, &options.now);
        if spec.parameters_ref.is_some() {
            conditions.set(
                "Accepted",
                false,
                "InvalidParameters",
                "this controller defines no parameters; remove spec.parametersRef",
            );
        } else {
            conditions.set("Accepted", true, "Accepted", "GatewayClass is accepted");
        }
        conditions.set(
            "SupportedVersion",
            true,
            "SupportedVersion",
            "Gateway API v1 is supported",
        );
        let accepted = conditions.is_true("Accepted");
        our_classes.insert(class.key.name.clone(), accepted);
        report.objects.push(status_of(
            class,
            json!({ "conditions": conditions.into_json() }),
        ));
    }

    let mut pending = Vec::new();
    for gateway in snapshot.of_kind(Kind::Gateway) {
        let class = gateway.spec()["gatewayClassName"]
            .as_str()
            .unwrap_or_default();
        let Some(class_accepted) = our_classes.get(class) else {
            continue; // another controller's Gateway
        };
        report.classes_in_use.insert(class.to_string());
        if let Some(only) = &options.only_gateway {
            if *only != format!("{}/{}", gateway.key.namespace, gateway.key.name) {
                continue; // served, and reported, by the process scoped to it
            }
        }
        pending.push(gateway_state(gateway, *class_accepted, snapshot, options));
    }
    assign_addresses(&mut pending, options);
    let by_key = pending
        .into_iter()
        .map(|state| ((state.namespace.clone(), state.name.clone()), state))
        .collect();
    Gateways {
        by_key,
        reported: reported_addresses(snapshot, &options.reported_addresses),
    }
}

/// Gives each Gateway its address, in three rounds: addresses requested in `spec.addresses`
/// first; then each Gateway keeps the address it had (`options.assigned`), so that others
/// coming and going do not move it; then the rest take free pool addresses, in name order.
///
/// Of two requests for one address, the Gateway already serving on it keeps it, else the
/// older one (then the first by namespace and name) gets it: a Gateway added later never takes
/// the address, and with it the clients, of one that is serving. The other is refused, naming
/// the holder. A Gateway that is not accepted takes no address: it would serve nothing on it.
fn assign_addresses(gateways: &mut [GatewayState], options: &CompileOptions) {
    let mut taken: Vec<(IpAddr, String)> = Vec::new();
    for state in gateways.iter_mut().filter(|s| s.serves_nothing()) {
        state.address = None;
    }
    let mut requests: Vec<&mut GatewayState> = gateways
        .iter_mut()
        .filter(|s| s.address.is_some())
        .collect();
    requests.sort_by_cached_key(|s| {
        let holds = options.assigned.get(&s.key()) == s.address.as_ref();
        (!holds, s.created.clone(), s.key())
    });
    for state in requests {
        let Some(addr) = state.address else { continue };
        match taken.iter().find(|(a, _)| *a == addr) {
            Some((_, holder)) => {
                state.address = None;
                state.address_problem = Some((
                    "AddressNotUsable",
                    format!(
                        "address {addr} is requested by Gateway {holder} too; request another \
                         address of --address-pool"
                    ),
                ));
            }
            None => taken.push((addr, state.key())),
        }
    }
    for state in gateways.iter_mut() {
        if state.address.is_some() || state.address_problem.is_some() || state.serves_nothing() {
            continue;
        }
        if let Some(prev) = options.assigned.get(&state.key()) {
            if !taken.iter().any(|(a, _)| a == prev) {
                state.address = Some(*prev);
                taken.push((*prev, state.key()));
            }
        }
    }
    for state in gateways.iter_mut() {
        if state.address.is_some() || state.address_problem.is_some() || state.serves_nothing() {
            continue;
        }
        match options
            .address_pool
            .iter()
            .find(|a| !taken.iter().any(|(t, _)| t == *a))
        {
            Some(addr) => {
                state.address = Some(*addr);
                taken.push((*addr, state.key()));
            }
            None => {
                state.address_problem = Some((
                    "AddressNotAssigned",
                    "the address pool is exhausted; widen --address-pool".to_string(),
                ))
            }
        }
    }
}

/// The addresses clients reach the gateway at, as [`ReportedAddresses`] orders them; `None`
/// when neither a Service nor a pod IP is configured (or the Service yields none and there is
/// no pod IP), leaving each Gateway its bind address.
fn reported_addresses(snapshot: &Snapshot, from: &ReportedAddresses) -> Option<Vec<Value>> {
    let from_service = from
        .service
        .as_ref()
        .and_then(|(namespace, name)| snapshot.get(Kind::Service, namespace, name))
        .map(|service| service_addresses(&service.body))
        .filter(|addresses| !addresses.is_empty());
    from_service.or_else(|| {
        from.pod_ip
            .map(|ip| vec![json!({"type": "IPAddress", "value": ip.to_string()})])
    })
}

/// A Service's addresses: load balancer ingress, else external IPs, else cluster IPs.
fn service_addresses(service: &Value) -> Vec<Value> {
    let strings = |value: &Value| -> Vec<String> {
        value
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            // A headless Service's clusterIP is "None".
            .filter(|s| !s.is_empty() && *s != "None")
            .map(str::to_string)
            .collect()
    };
    let ip = |value: &String| json!({"type": "IPAddress", "value": value});
    let mut out: Vec<Value> = Vec::new();
    for ingress in service["status"]["loadBalancer"]["ingress"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let address = match (ingress["ip"].as_str(), ingress["hostname"].as_str()) {
            (Some(v), _) if !v.is_empty() => json!({"type": "IPAddress", "value": v}),
            (_, Some(h)) if !h.is_empty() => json!({"type": "Hostname", "value": h}),
            _ => continue,
        };
        if !out.contains(&address) {
            out.push(address);
        }
    }
    if out.is_empty() {
        out = strings(&service["spec"]["externalIPs"])
            .iter()
            .map(ip)
            .collect();
    }
    if out.is_empty() {
        let mut cluster = strings(&service["spec"]["clusterIPs"]);
        if cluster.is_empty() {
            cluster = strings(&Value::Array(vec![service["spec"]["clusterIP"].clone()]));
        }
        out = cluster.iter().map(ip).collect();
    }
    out
}

fn gateway_state(
    gateway: &Object,
    class_accepted: bool,
    snapshot: &Snapshot,
    options: &CompileOptions,
) -> GatewayState {
    let (spec, parse_problem) = match api::read::<GatewaySpec>(gateway.spec()) {
        Ok(spec) => (spec, None),
        Err(e) => (
            GatewaySpec::default(),
            Some(("Invalid", format!("spec does not parse: {e}"))),
        ),
    };
    let mut problem = parse_problem;
    if !class_accepted {
        problem.get_or_insert(("Invalid", "the GatewayClass is not accepted".to_string()));
    }
    if spec
        .infrastructure
        .as_ref()
        .and_then(|i| i.parameters_ref.as_ref())
        .is_some()
    {
        problem.get_or_insert((
            "InvalidParameters",
            "spec.infrastructure.parametersRef: this controller defines no parameters".to_string(),
        ));
    }
    let (address, address_problem) = requested_address(&spec, options);
    let client_ref = spec
        .tls
        .as_ref()
        .and_then(|t| t.backend.as_ref())
        .and_then(|b| b.client_certificate_ref.as_ref());
    let (backend_client_cert, backend_cert_problem) = match client_ref {
        None => (None, None),
        Some(r) => match backend_client_certificate(r, &gateway.key.namespace, snapshot) {
            Ok(cert) => (Some(cert), None),
            Err(problem) => (None, Some(problem)),
        },
    };
    let listeners = spec
        .listeners
        .iter()
        .map(|l| {
            let frontend = spec.tls.as_ref().and_then(|t| t.frontend.as_ref());
            listener_state(l, &gateway.key.namespace, frontend, snapshot)
        })
        .collect::<Vec<_>>();
    let mut state = GatewayState {
        namespace: gateway.key.namespace.clone(),
        name: gateway.key.name.clone(),
        generation: gateway.generation,
        created: gateway.creation_timestamp.clone(),
        problem,
        address,
        address_problem,
        backend_client_cert,
        backend_cert_problem,
        listeners,
    };
    mark_conflicts(&mut state.listeners, options);
    mark_overlapping_tls(&mut state.listeners, options);
    state
}

/// Honours `spec.addresses`: an `IPAddress` from the pool is used as asked and an empty value
/// asks us to choose. An address type other than `IPAddress` makes the Gateway unaccepted
/// (`UnsupportedAddress`); an IP address outside the pool, or a second one, is valid but cannot
/// be served here, so the Gateway is accepted and not programmed (`AddressNotUsable`).
fn requested_address(
    spec: &GatewaySpec,
    options: &CompileOptions,
) -> (Option<IpAddr>, Option<Problem>) {
    let mut chosen = None;
    let mut unusable = None;
    for a in &spec.addresses {
        let type_ = a.type_.as_deref().unwrap_or("IPAddress");
        let value = a.value.as_deref().unwrap_or("");
        if type_ != "IPAddress" {
            let msg = format!("address type {type_:?} is not supported; use IPAddress");
            return (None, Some(("UnsupportedAddress", msg)));
        }
        if value.is_empty() {
            continue;
        }
        match value.parse::<IpAddr>() {
            Ok(ip) if options.address_pool.contains(&ip) => match chosen {
                None => chosen = Some(ip),
                Some(first) if first == ip => {}
                // The spec asks for every listener on every address assigned; this gateway
                // serves a Gateway on one. Serving the first alone would leave the second
                // unserved with nothing said.
                Some(first) => {
                    let msg = format!(
                        "address {ip} cannot be served beside {first}: this gateway serves a \
                         Gateway on one address; ask for one"
                    );
                    unusable.get_or_insert(("AddressNotUsable", msg));
                }
            },
            Ok(ip) => {
                let msg = format!("address {ip} is not in this gateway's --address-pool");
                unusable.get_or_insert(("AddressNotUsable", msg));
            }
            Err(_) => {
                let msg = format!("address {value:?} is not an IP address");
                return (None, Some(("UnsupportedAddress", msg)));
            }
        }
    }
    match unusable {
        Some(problem) => (None, Some(problem)),
        None => (chosen, None),
    }
}

/// Resolves the certificate a Gateway presents to TLS backends.
fn backend_client_certificate(
    r: &api::ObjectRef,
    gateway_namespace: &str,
    snapshot: &Snapshot,
) -> Result<Arc<pingora_core::utils::tls::CertKey>, Problem> {
    let group = r.group.as_deref().unwrap_or("");
    let kind = r.kind.as_deref().unwrap_or("Secret");
    let namespace = r.namespace.as_deref().unwrap_or(gateway_namespace);
    let invalid = |msg: String| ("InvalidClientCertificateRef", msg);
    if !(group.is_empty() || group == "core") || kind != "Secret" {
        return Err(invalid(format!(
            "clientCertificateRef {group}/{kind} {}: only core Secrets hold certificates",
            r.name
        )));
    }
    if namespace != gateway_namespace
        && !super::routes::grant_allows(
            snapshot,
            GATEWAY_GROUP,
            "Gateway",
            gateway_namespace,
            "",
            "Secret",
            namespace,
            &r.name,
        )
    {
        return Err(("RefNotPermitted", format!("Secret {namespace}/{}: no ReferenceGrant in {namespace} allows Gateways from {gateway_namespace}", r.name)));
    }
    let secret = snapshot
        .get(Kind::Secret, namespace, &r.name)
        .ok_or_else(|| invalid(missing_secret(namespace, &r.name)))?;
    crate::tls::client_cert_key(&secret.body)
        .map_err(|e| invalid(format!("Secret {namespace}/{}: {e}", r.name)))
}

fn listener_state(
    l: &api::Listener,
    gateway_namespace: &str,
    frontend: Option<&api::FrontendTls>,
    snapshot: &Snapshot,
) -> ListenerState {
    let protocol = l.protocol.clone();
    let mut state = ListenerState {
        name: l.name.clone(),
        hostname: l.hostname.as_ref().map(|h| h.to_ascii_lowercase()),
        port: u16::try_from(l.port).unwrap_or(0),
        protocol: protocol.clone(),
        accepted: None,
        resolved: None,
        conflicted: None,
        overlapping_tls: None,
        not_programmed: None,
        supported_kinds: Vec::new(),
        namespaces: NamespacePolicy::Same,
        routes: Vec::new(),
        attached: 0,
        certificate: None,
        certificates: Vec::new(),
        certificates_from: Vec::new(),
        passthrough: false,
        client_auth: None,
        insecure_frontend: false,
        certificates_read: Vec::new(),
        broken_secret: None,
        stale_certificate: false,
        broken_refs: Vec::new(),
        serves_others: false,
    };
    let defaults: &[&'static str] = match protocol.as_str() {
        "HTTP" | "HTTPS" => &["HTTPRoute", "GRPCRoute"],
        "TLS" => &["TLSRoute"],
        _ => {
            state.accepted = Some((
                "UnsupportedProtocol",
                format!("protocol {protocol:?} is not supported; use HTTP, HTTPS or TLS"),
            ));
            &[]
        }
    };
    if state.port == 0 {
        state.accepted.get_or_insert((
            "PortUnavailable",
            format!("port {} is not a valid port", l.port),
        ));
    }
    let allowed = l.allowed_routes.clone().unwrap_or_default();
    if allowed.kinds.is_empty() {
        state.supported_kinds = defaults.to_vec();
    } else {
        for k in &allowed.kinds {
            let group = k.group.as_deref().unwrap_or(GATEWAY_GROUP);
            match defaults.iter().find(|d| **d == k.kind) {
                // A kind named twice is supported once.
                Some(d) if group == GATEWAY_GROUP => {
                    if !state.supported_kinds.contains(d) {
                        state.supported_kinds.push(d);
                    }
                }
                _ => {
                    state.resolved = Some((
                        "InvalidRouteKinds",
                        format!(
                            "route kind {group}/{} is not supported on a {protocol} listener",
                            k.kind
                        ),
                    ));
                }
            }
        }
    }
    state.namespaces = match allowed
        .namespaces
        .as_ref()
        .and_then(|n| n.from.as_deref())
        .unwrap_or("Same")
    {
        "All" => NamespacePolicy::All,
        "Selector" => {
            let selector = allowed.namespaces.and_then(|n| n.selector);
            // Without a selector, or with one that cannot be evaluated, no namespace is
            // selected and the listener says why: guessing "every namespace" would open it to
            // routes its owner never meant to allow.
            let problem = match &selector {
                None => Some(
                    "allowedRoutes.namespaces.from is Selector but no selector is given; add \
                     one (`selector: {}` selects every namespace)"
                        .to_string(),
                ),
                Some(selector) => selector.problem(),
            };
            if let Some(problem) = problem {
                state.accepted.get_or_insert(("Invalid", problem));
            }
            NamespacePolicy::Selector(selector.unwrap_or_else(api::LabelSelector::nothing))
        }
        _ => NamespacePolicy::Same,
    };
    if let Some(h) = &state.hostname {
        if !api::valid_hostname(h) || super::routes::is_ipv4(h) {
            state.accepted.get_or_insert((
                "Invalid",
                format!(
                    "hostname {h:?} is not a valid DNS name or *. wildcard (nor may it be an IP \
                     address)"
                ),
            ));
        }
    }
    if protocol == "HTTPS" || protocol == "TLS" {
        check_tls(l, gateway_namespace, snapshot, &mut state);
        // With a broken Secret, the last good certificate may still be served: its client
        // validation must be in force all the same.
        if state.certificate.is_some() || state.broken_secret.is_some() {
            check_client_validation(l, gateway_namespace, frontend, snapshot, &mut state);
        }
    }
    state
}

/// Client certificate validation for an HTTPS listener: the port's `perPort` entry, else the
/// `default`. A listener whose validation names no usable CA is not accepted
/// (`NoValidCACertificate`): serving it without the validation asked for would be unsafe.
fn check_client_validation(
    l: &api::Listener,
    gateway_namespace: &str,
    frontend: Option<&api::FrontendTls>,
    snapshot: &Snapshot,
    state: &mut ListenerState,
) {
    let Some(frontend) = frontend else { return };
    let config = frontend
        .per_port
        .iter()
        .find(|p| p.port == l.port)
        .map(|p| &p.tls)
        .or(frontend.default.as_ref());
    let Some(validation) = config.and_then(|c| c.validation.as_ref()) else {
        return;
    };
    let insecure = validation.mode.as_deref() == Some("AllowInsecureFallback");
    let mut cas = Vec::new();
    for r in &validation.ca_certificate_refs {
        let group = r.group.as_deref().unwrap_or("");
        let kind = r.kind.as_deref().unwrap_or("ConfigMap");
        let namespace = r.namespace.as_deref().unwrap_or(gateway_namespace);
        let problem = if !group.is_empty() || kind != "ConfigMap" {
            Some((
                "InvalidCACertificateKind",
                format!(
                    "caCertificateRef {group}/{kind} {}: only ConfigMaps hold CA certificates",
                    r.name
                ),
            ))
        } else if namespace != gateway_namespace
            && !super::routes::grant_allows(
                snapshot,
                GATEWAY_GROUP,
                "Gateway",
                gateway_namespace,
                "",
                "ConfigMap",
                namespace,
                &r.name,
            )
        {
            Some(("RefNotPermitted", format!("ConfigMap {namespace}/{}: no ReferenceGrant in {namespace} allows Gateways from {gateway_namespace}", r.name)))
        } else {
            match snapshot
                .get(Kind::ConfigMap, namespace, &r.name)
                .map(|cm| crate::tls::config_map_cas(&cm.body))
            {
                Some(Ok(found)) => {
                    cas.extend(found);
                    None
                }
                Some(Err(e)) => Some((
                    "InvalidCACertificateRef",
                    format!("ConfigMap {namespace}/{}: {e}", r.name),
                )),
                None => Some((
                    "InvalidCACertificateRef",
                    format!("ConfigMap {namespace}/{} does not exist", r.name),
                )),
            }
        };
        if let Some(p) = problem {
            state.resolved.get_or_insert(p);
        }
    }
    match crate::tls::client_auth(&cas, insecure) {
        Ok(auth) if !cas.is_empty() => {
            state.client_auth = Some(auth);
            state.insecure_frontend = insecure;
        }
        Ok(_) | Err(_) => {
            state.accepted = Some((
                "NoValidCACertificate",
                "client certificate validation names no usable CA certificate".to_string(),
            ));
            state.resolved.get_or_insert((
                "InvalidCACertificateRef",
                "no usable CA certificate".to_string(),
            ));
        }
    }
}

fn check_tls(
    l: &api::Listener,
    gateway_namespace: &str,
    snapshot: &Snapshot,
    state: &mut ListenerState,
) {
    let tls = l.tls.clone().unwrap_or_default();
    let mode = tls.mode.as_deref().unwrap_or("Terminate");
    if state.protocol == "TLS" {
        if mode == "Passthrough" {
            state.passthrough = true;
            return;
        }
        // Terminate mode: the certificate is read below like an HTTPS listener's, and the
        // listener's TLSRoutes get the decrypted stream.
    } else if mode != "Terminate" {
        state.accepted = Some((
            "UnsupportedValue",
            format!("tls.mode {mode:?} is not valid on an HTTPS listener; use Terminate"),
        ));
        return;
    }
    if tls.certificate_refs.is_empty() {
        state.resolved = Some((
            "InvalidCertificateRef",
            "a Terminate listener needs at least one certificateRef".to_string(),
        ));
        return;
    }
    // A reference that cannot be followed (another kind, no ReferenceGrant, no such Secret)
    // is said, and the listener's other certificateRefs are still read: those that are valid
    // are served.
    let mut unfollowed: Option<(usize, Problem)> = None;
    let mut broken_at = None;
    for (index, r) in tls.certificate_refs.iter().enumerate() {
        let group = r.group.as_deref().unwrap_or("");
        let kind = r.kind.as_deref().unwrap_or("Secret");
        let namespace = r.namespace.as_deref().unwrap_or(gateway_namespace);
        if !(group.is_empty() || group == "core") || kind != "Secret" {
            unfollowed.get_or_insert((
                index,
                (
                    "InvalidCertificateRef",
                    format!(
                        "certificateRef {group}/{kind} {}: only core Secrets hold certificates",
                        r.name
                    ),
                ),
            ));
            continue;
        }
        if namespace != gateway_namespace
            && !super::routes::grant_allows(
                snapshot,
                GATEWAY_GROUP,
                "Gateway",
                gateway_namespace,
                "",
                "Secret",
                namespace,
                &r.name,
            )
        {
            unfollowed.get_or_insert((index, ("RefNotPermitted", format!("Secret {namespace}/{}: no ReferenceGrant in {namespace} allows Gateways from {gateway_namespace}", r.name))));
            continue;
        }
        let Some(secret) = snapshot.get(Kind::Secret, namespace, &r.name) else {
            unfollowed.get_or_insert((
                index,
                ("InvalidCertificateRef", missing_secret(namespace, &r.name)),
            ));
            continue;
        };
        match crate::tls::certified_key(&secret.body) {
            Ok(key) => {
                state
                    .certificates_read
                    .push(((namespace.to_string(), r.name.clone()), key.clone()));
                state.certificate.get_or_insert(key.clone());
                state.certificates.push(key);
                state.certificates_from.push(index);
            }
            Err(e) => {
                // The other certificateRefs are still read: those that are valid are served.
                state
                    .broken_refs
                    .push((index, (namespace.to_string(), r.name.clone())));
                if state.broken_secret.is_none() {
                    broken_at = Some(index);
                    let message = format!("Secret {namespace}/{}: {e}", r.name);
                    state.resolved = Some(("InvalidCertificateRef", message.clone()));
                    state.broken_secret = Some(((namespace.to_string(), r.name.clone()), message));
                }
            }
        }
    }
    // Only a certificateRef's problem makes the others "the other certificates": a route kind
    // the listener does not take has nothing to do with them.
    let certificate_problem = broken_at.is_some() || unfollowed.is_some();
    if let Some((index, problem)) = unfollowed {
        // The first problem in the order written is the one said.
        if broken_at.is_none_or(|broken| index < broken) {
            state.resolved = Some(problem);
        }
    }
    if certificate_problem && state.certificate.is_some() {
        state.serves_others = true;
        if let Some((_, message)) = &mut state.resolved {
            message.push_str("; the listener's other certificates are served");
        }
    }
}

/// Listeners sharing a port must agree on protocol and differ in hostname (spec: Listener
/// "Conflicted"). The spec leaves no winner: every listener of a conflicting set is marked
/// `Conflicted=True` and not accepted, and only the distinct listeners are served ("The
/// implementation MUST NOT pick one conflicting Listener as the winner. ALL indistinct
/// Listeners must not be accepted for processing"). A listener not accepted for another reason
/// (an unsupported protocol, say) is on no port and conflicts with nothing.
fn mark_conflicts(listeners: &mut [ListenerState], options: &CompileOptions) {
    let mut marks = Vec::new();
    for (i, l) in listeners.iter().enumerate() {
        // Listeners meet on the socket they are served on: with `--port-map`, two listener
        // ports can be one socket.
        let Some(socket) = options.socket_port(l.port) else {
            continue;
        };
        if l.accepted.is_some() {
            continue;
        }
        let others = (listeners.iter().enumerate()).filter(|(j, o)| {
            *j != i && o.accepted.is_none() && options.socket_port(o.port) == Some(socket)
        });
        let names = |pick: &dyn Fn(&ListenerState) -> bool| -> Vec<String> {
            (others.clone())
                .filter(|(_, o)| pick(o))
                .map(|(_, o)| match o.port == l.port {
                    true => format!("{:?} ({})", o.name, o.protocol),
                    false => format!("{:?} ({}, port {})", o.name, o.protocol, o.port),
                })
                .collect()
        };
        // Listener ports that differ meet on one socket only by the process's flags: said, as
        // the manifest alone shows no conflict.
        let moved = others.clone().any(|(_, o)| o.port != l.port).then(|| {
            format!(
                " (listener ports that --port-offset {} and --port-map {} both serve on socket \
                 port {socket}: give each its own socket port)",
                options.port_offset,
                options
                    .port_map
                    .iter()
                    .map(|(from, to)| format!("{from}={to}"))
                    .collect::<Vec<_>>()
                    .join(",")
            )
        });
        // Only protocols on one side of the TLS line can share a port.
        let protocol = names(&|o| tls_family(&o.protocol) != tls_family(&l.protocol));
        let hostname = names(&|o| o.hostname == l.hostname);
        let mark = if !protocol.is_empty() {
            (
                "ProtocolConflict",
                format!(
                    "port {} is also asked for by listener {} with a protocol that cannot share \
                     it; none of them is served: move this {} listener, or those, to another \
                     port",
                    l.port,
                    protocol.join(", "),
                    l.protocol
                ),
            )
        } else if !hostname.is_empty() {
            let what = l
                .hostname
                .as_deref()
                .map_or("no hostname".to_string(), |h| format!("hostname {h:?}"));
            (
                "HostnameConflict",
                format!(
                    "listener {} on port {} has {what} too; none of them is served: give \
                     each listener its own hostname or port",
                    hostname.join(", "),
                    l.port
                ),
            )
        } else {
            continue;
        };
        let mark = (mark.0, mark.1 + moved.as_deref().unwrap_or_default());
        marks.push((i, mark));
    }
    for (i, (reason, message)) in marks {
        listeners[i].accepted = Some((reason, format!("in conflict: {message}")));
        listeners[i].conflicted = Some((reason, message));
    }
}

/// Terminating listeners on one port whose hostnames overlap (one is a wildcard that covers
/// the other's, or one has no hostname) are marked `OverlappingTLSConfig` (spec: "Controllers
/// MUST detect the presence of overlapping hostnames"), both of them. Nothing is refused: an
/// HTTP/2 client may reuse a connection made for one listener's hostname for the other's, and
/// such a request gets 421 (Misdirected Request) so that it opens its own, but an operator
/// should know that clients can meet it. Passthrough listeners terminate nothing and are left
/// out, as are listeners not on the port (not accepted, or conflicted).
fn mark_overlapping_tls(listeners: &mut [ListenerState], options: &CompileOptions) {
    let terminating = |l: &ListenerState| {
        (l.protocol == "HTTPS" || (l.protocol == "TLS" && !l.passthrough))
            && l.accepted.is_none()
            && l.conflicted.is_none()
            && options.socket_port(l.port).is_some()
    };
    let mut marks = Vec::new();
    for (i, a) in listeners.iter().enumerate() {
        if !terminating(a) {
            continue;
        }
        let overlapping: Vec<&str> = (listeners.iter().enumerate())
            .filter(|(j, b)| {
                *j != i
                    && terminating(b)
                    && options.socket_port(b.port) == options.socket_port(a.port)
                    && super::hostnames::overlap(a.hostname.as_deref(), b.hostname.as_deref())
            })
            .map(|(_, b)| b.name.as_str())
            .collect();
        if !overlapping.is_empty() {
            let names: Vec<String> = overlapping.iter().map(|n| format!("{n:?}")).collect();
            marks.push((
                i,
                format!(
                    "the hostname overlaps that of listener {} on port {}: an HTTP/2 client may \
                     send a request for one on a connection made for the other, and gets 421 \
                     (Misdirected Request) to open its own; give the listeners hostnames that \
                     do not overlap, or ports of their own, to avoid it",
                    names.join(", "),
                    a.port
                ),
            ));
        }
    }
    for (i, message) in marks {
        listeners[i].overlapping_tls = Some(message);
    }
}

/// Whether a protocol starts with a TLS handshake; only protocols on the same side of that
/// line can share a port.
fn tls_family(protocol: &str) -> bool {
    protocol == "HTTPS" || protocol == "TLS"
}

fn status_of(object: &Object, status: Value) -> Arc<ObjectStatus> {
    Arc::new(ObjectStatus {
        api_version: object.body["apiVersion"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        kind: object.key.kind,
        namespace: object.key.namespace.clone(),
        name: object.key.name.clone(),
        generation: object.generation,
        status,
        problems: Default::default(),
    })
}

impl Gateways {
    pub(super) fn get(&self, namespace: &str, name: &str) -> Option<&GatewayState> {
        self.by_key.get(&(namespace.to_string(), name.to_string()))
    }

    pub(super) fn assigned(&self) -> BTreeMap<String, IpAddr> {
        self.by_key
            .values()
            .filter_map(|g| Some((g.key(), g.address?)))
            .collect()
    }

    /// Writes every Gateway's status and builds the table from the attached routes, reusing
    /// the host entries in `indexes` (by Gateway and listener) that are still valid.
    pub(super) fn into_table(
        self,
        options: &CompileOptions,
        report: &mut StatusReport,
        indexes: &mut HashMap<(String, String), IndexCache>,
    ) -> (RoutingTable, usize) {
        let mut previous = std::mem::take(indexes);
        let mut table = RoutingTable::default();
        let mut rules = 0;
        for gateway in self.by_key.into_values() {
            let now = &options.now;
            let mut listener_status = Vec::new();
            let mut any_valid = false;
            let mut any_served = false;
            for l in &gateway.listeners {
                let mut c = Conditions::new(gateway.generation, now);
                match &l.accepted {
                    Some((reason, msg)) => c.set("Accepted", false, reason, msg.clone()),
                    None => {
                        any_valid = true;
                        c.set("Accepted", true, "Accepted", "listener is accepted")
                    }
                }
                c.set_resolved_refs(l.resolved.as_ref().map(|(r, m)| (*r, m.as_str())));
                match &l.conflicted {
                    Some((reason, msg)) => c.set("Conflicted", true, reason, msg.clone()),
                    None => c.set("Conflicted", false, "NoConflicts", "no conflicts"),
                }
                if let Some(msg) = &l.overlapping_tls {
                    c.set(
                        "OverlappingTLSConfig",
                        true,
                        "OverlappingHostnames",
                        msg.clone(),
                    );
                }
                let socket = options.socket_port(l.port);
                let served = l.served()
                    && gateway.problem.is_none()
                    && gateway.address.is_some()
                    && socket.is_some();
                any_served |= served;
                if served {
                    c.set("Programmed", true, "Programmed", "listener is served");
                } else {
                    // (A port that is not a port at all, 0 here, is said by `Accepted`.)
                    let off_range = || {
                        (socket.is_none() && l.port != 0).then(|| {
                            (
                                "Invalid",
                                format!(
                                    "port {} moved by --port-offset {} is not a port (1-65535); \
                                     change the offset or map the port with --port-map",
                                    l.port, options.port_offset
                                ),
                            )
                        })
                    };
                    let (reason, msg) = l
                        .not_programmed
                        .clone()
                        .or_else(|| gateway.address_problem.clone())
                        .or_else(off_range)
                        .or_else(|| {
                            gateway.problem.as_ref().map(|_| {
                                (
                                    "Invalid",
                                    "the Gateway is not accepted; see its conditions".to_string(),
                                )
                            })
                        })
                        .unwrap_or((
                            "Invalid",
                            "listener is not valid; see its other conditions".to_string(),
                        ));
                    c.set("Programmed", false, reason, msg);
                }
                listener_status.push(json!({
                    "name": l.name,
                    "attachedRoutes": l.attached,
                    "supportedKinds": l.supported_kinds.iter().map(|k| json!({"group": GATEWAY_GROUP, "kind": k})).collect::<Vec<_>>(),
                    "conditions": c.into_json(),
                }));
                if let (true, Some(ip), Some(port)) = (
                    served && matches!(l.protocol.as_str(), "HTTP" | "HTTPS" | "TLS"),
                    gateway.address,
                    socket,
                ) {
                    rules += l.routes.iter().map(|(r, _)| r.rules.len()).sum::<usize>();
                    let bind = table
                        .binds
                        .entry(SocketAddr::new(ip, port))
                        .or_insert_with(Bind::default);
                    bind.tls = l.protocol != "HTTP";
                    if bind.client_auth.is_none() {
                        bind.client_auth = l.client_auth.clone();
                    }
                    bind.listeners.push(ListenerRoutes {
                        gateway: Arc::from(gateway.key().as_str()),
                        name: Arc::from(l.name.as_str()),
                        hostname: l.hostname.clone(),
                        port: l.port,
                        scheme: match l.protocol.as_str() {
                            "HTTPS" => "https",
                            "TLS" => "tls",
                            _ => "http",
                        },
                        certificate: l.certificate.clone(),
                        // With several, each in the place of its certificateRef, stand-ins for
                        // broken Secrets included.
                        certificates: if l.certificates.len() > 1 {
                            l.certificates
                                .iter()
                                .cloned()
                                .map(crate::tls::Choice::new)
                                .collect()
                        } else {
                            Vec::new()
                        },
                        backend_client_cert: gateway.backend_client_cert.clone(),
                        hosts: {
                            let key = (gateway.key(), l.name.clone());
                            let mut cache = previous.remove(&key).unwrap_or_default();
                            let hosts = HostIndex::build(&l.routes, &mut cache);
                            indexes.insert(key, cache);
                            hosts
                        },
                        passthrough: super::routes::passthrough_table(&l.routes),
                    });
                }
            }
            let mut c = Conditions::new(gateway.generation, &options.now);
            if let Some((reason, msg)) = gateway.rejection().cloned() {
                c.set("Accepted", false, reason, msg);
            } else if gateway.listeners.iter().any(|l| l.accepted.is_some()) {
                c.set(
                    "Accepted",
                    any_valid,
                    "ListenersNotValid",
                    if any_valid {
                        "some listeners are not valid; see their conditions"
                    } else {
                        "no listener is valid; see their conditions"
                    },
                );
            } else {
                c.set("Accepted", true, "Accepted", "Gateway is accepted");
            }
            if !c.is_true("Accepted") {
                c.set(
                    "Programmed",
                    false,
                    "Invalid",
                    "the Gateway is not accepted",
                );
            } else if let Some((reason, msg)) = &gateway.address_problem {
                c.set("Programmed", false, reason, msg.clone());
            } else if !any_served && !gateway.listeners.is_empty() {
                // Accepted for its valid listeners, yet none of them can be served (each says
                // why): nothing of it reaches a client.
                c.set(
                    "Programmed",
                    false,
                    "Invalid",
                    "no listener is served; see the listeners' Programmed conditions",
                );
            } else {
                c.set("Programmed", true, "Programmed", "Gateway is served");
            }
            if gateway.listeners.iter().any(|l| l.insecure_frontend) {
                c.set(
                    "InsecureFrontendValidationMode",
                    true,
                    "ConfigurationChanged",
                    "a port accepts clients whose certificate is missing or invalid (AllowInsecureFallback)",
                );
            }
            // The spec's Gateway ResolvedRefs covers the Gateway's own references (the client
            // certificate for TLS backends) and summarizes its listeners' ResolvedRefs, so a
            // listener whose references do not resolve makes it false too.
            let unresolved: Vec<String> = gateway
                .listeners
                .iter()
                .filter_map(|l| {
                    let (reason, _) = l.resolved.as_ref()?;
                    Some(format!("{:?} ({reason})", l.name))
                })
                .collect();
            let listeners_problem = match unresolved.as_slice() {
                [] => None,
                [one] => Some(format!(
                    "listener {one} is not resolved; see its ResolvedRefs condition"
                )),
                many => Some(format!(
                    "listeners {} are not resolved; see their ResolvedRefs conditions",
                    many.join(", ")
                )),
            };
            match (&gateway.backend_cert_problem, listeners_problem) {
                (Some((reason, msg)), None) => c.set("ResolvedRefs", false, reason, msg.clone()),
                (Some((reason, msg)), Some(listeners)) => {
                    c.set("ResolvedRefs", false, reason, format!("{msg}; {listeners}"))
                }
                (None, Some(listeners)) => {
                    c.set("ResolvedRefs", false, "ListenersNotResolved", listeners)
                }
                (None, None) => c.set_resolved_refs(None),
            }
            // What clients reach: the gateway's Service or pod when configured, else the
            // address the listeners bind. A Gateway that is not served reports none.
            let addresses: Vec<Value> = match (&self.reported, gateway.address) {
                _ if gateway.problem.is_some() => Vec::new(),
                (Some(reported), Some(_)) => reported.clone(),
                (_, bound) => bound
                    .map(|a| json!({"type": "IPAddress", "value": a.to_string()}))
                    .into_iter()
                    .collect(),
            };
            report.objects.push(Arc::new(ObjectStatus {
                api_version: format!("{GATEWAY_GROUP}/v1"),
                kind: Kind::Gateway,
                namespace: gateway.namespace.clone(),
                name: gateway.name.clone(),
                generation: gateway.generation,
                status: json!({
                    "addresses": addresses,
                    "conditions": c.into_json(),
                    "listeners": listener_status,
                }),
                problems: Default::default(),
            }));
        }
        for bind in table.binds.values_mut() {
            // Most specific listener hostname first: exact, then longer wildcards, then none.
            bind.listeners.sort_by_key(|l| match &l.hostname {
                Some(h) if !h.starts_with('*') => (0, std::cmp::Reverse(h.len())),
                Some(h) => (1, std::cmp::Reverse(h.len())),
                None => (2, std::cmp::Reverse(0)),
            });
        }
        (table, rules)
    }
}

/// What to say of a Secret a reference names and the snapshot lacks. Kubernetes mode reads
/// only `kubernetes.io/tls` Secrets, so there it may well exist, with another type.
fn missing_secret(namespace: &str, name: &str) -> String {
    format!(
        "Secret {namespace}/{name} does not exist (or, in Kubernetes mode, is not of type \
         kubernetes.io/tls: no other Secrets are read, and certificates must be in one)"
    )
}
