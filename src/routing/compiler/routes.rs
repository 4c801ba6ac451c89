//! Pass two: routes. Each route is translated once into resolved rules, then attached to the
//! listeners its parentRefs select, with a status entry per parentRef of ours.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use regex::Regex;
use serde_json::{json, Value};

use super::gateways::{Gateways, Problem};
use super::hostnames::{intersect, overlap};
use super::{parse_duration, CompileOptions};
use crate::controller::{Kind, Object, Snapshot, SourceError};
use crate::routing::api::{self, BackendRef, HttpFilter, HttpMatch, RouteSpec};
use crate::routing::status::{object, Conditions, ObjectStatus, StatusReport};
use crate::routing::table::{
    Backend, Conditions as MatchConditions, Cors, Entry, Filter, HeaderEdits, HostIndex, Mirror,
    PathIndex, PathPattern, PathReplace, Redirect, RetryPolicy, Rewrite, Rule, ServiceBackend,
    ValueCondition, ValueMatch, WeightedBackend,
};

const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

/// One match of one rule, before it is placed in a path index.
pub(super) struct CompiledMatch {
    path: PathKind,
    conditions: Arc<MatchConditions>,
    rule: Arc<Rule>,
    /// Precedence among entries of the same path, smaller first.
    rank: MatchRank,
}

/// The Gateway API's precedence between matches of one host and path, as a sort key (smaller
/// wins). HTTPRouteRule: after the path, a method match, then the most header matches, then the
/// most query parameter matches; then the older route and `namespace/name` (the route's position,
/// filled in when the listener's index is built); then rule and match order.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct MatchRank {
    /// Longer path values first (for prefixes `/a/` over `/a`; for regexes, longer patterns).
    path_chars: std::cmp::Reverse<usize>,
    /// Matches naming a method before those that do not.
    no_method: bool,
    headers: std::cmp::Reverse<usize>,
    query: std::cmp::Reverse<usize>,
    /// Position of the route, by age and name, among the routes serving the same host.
    route: usize,
    /// Rule index times 1000 plus match index.
    position: usize,
}

enum PathKind {
    Exact(String),
    Prefix(String),
    Regex(PathPattern),
    /// A GRPCRoute method without a service: tried after every longer prefix.
    GrpcMethod(PathPattern),
}

impl CompiledRoute {
    /// The spec's order of routes that tie on everything else: the oldest first, then the
    /// first in alphabetical order of `{namespace}/{name}`, as one string (`t-x/aa` comes
    /// before `t/zz`: `-` sorts before `/`, which comparing the namespaces alone would not
    /// give).
    fn precedes(&self, other: &CompiledRoute) -> std::cmp::Ordering {
        let (created, namespace, name) = &self.order;
        let (other_created, other_namespace, other_name) = &other.order;
        fn key<'a>(namespace: &'a str, name: &'a str) -> impl Iterator<Item = u8> + 'a {
            (namespace.bytes())
                .chain(std::iter::once(b'/'))
                .chain(name.bytes())
        }
        created
            .cmp(other_created)
            .then_with(|| key(namespace, name).cmp(key(other_namespace, other_name)))
    }
}

/// A route, translated, with what the table needs to order it among others.
pub(super) struct CompiledRoute {
    /// Creation time, then `namespace/name`: the spec's tie-breakers across routes.
    order: (String, String, String),
    pub rules: Vec<CompiledMatch>,
    /// The route's kind: HTTP and gRPC routes fill a listener's host index, TLS routes its
    /// passthrough table.
    pub kind: Kind,
    /// Rules dropped for unsupported values while others were kept.
    partially_invalid: Option<Problem>,
    /// Values served within the gateway's limits rather than as written, said in the
    /// `Accepted` message so that the route's author learns of it.
    limited: Vec<String>,
}

/// Translates every HTTPRoute, GRPCRoute and TLSRoute and attaches it; returns the ready
/// endpoint count of every backend referred to.
///
/// A route whose object is the one `cache` saw last time, in an unchanged world, is not
/// translated again: its [`RouteOutcome`] is replayed. Everything else is computed afresh and
/// recorded for the next compile.
pub(super) fn compile(
    snapshot: &Snapshot,
    gateways: &mut Gateways,
    options: &CompileOptions,
    report: &mut StatusReport,
    cache: &mut RouteCache,
) -> std::collections::BTreeMap<String, usize> {
    let mut backends = BackendCache::default();
    // Routes come in key order, and the outcomes were kept in the order they came last time:
    // one walk pairs each route with its previous outcome, passing those of deleted routes.
    let mut previous = std::mem::take(&mut cache.routes).into_iter().peekable();
    let routes = snapshot
        .arcs_of_kind(Kind::HttpRoute)
        .chain(snapshot.arcs_of_kind(Kind::GrpcRoute))
        .chain(snapshot.arcs_of_kind(Kind::TlsRoute));
    for route in routes {
        let mut reused = None;
        while let Some(old) = previous.peek() {
            if Arc::ptr_eq(&old.route, route) {
                reused = previous.next();
                break;
            }
            match old.route.key.cmp(&route.key) {
                std::cmp::Ordering::Less => drop(previous.next()),
                std::cmp::Ordering::Equal => {
                    drop(previous.next());
                    break;
                }
                std::cmp::Ordering::Greater => break,
            }
        }
        let outcome = reused
            .unwrap_or_else(|| translate_route(route, snapshot, gateways, options, &mut backends));
        outcome.apply(gateways, &mut backends, report);
        cache.routes.push(outcome);
    }
    keep_grpc_and_http_apart(gateways, report);
    policy_status(&backends.policies, options, report);
    backends
        .services
        .values()
        .filter_map(|b| match b.as_ref() {
            Backend::Service(s) => Some((s.name.to_string(), s.endpoints.len())),
            Backend::Invalid { .. } => None,
        })
        .collect()
}

/// Keeps GRPCRoutes and HTTPRoutes from being merged (spec, GRPCRoute: "Merging MUST not be
/// done between GRPCRoutes and HTTPRoutes"): where an HTTPRoute and a GRPCRoute meet on a
/// listener (hostnames that intersect), the older of the two (by creation time, then
/// namespace/name) is served there and the other is rejected there, as the spec's GRPCRoute
/// text asks. The judgement is per listener: the loser is taken off that listener only, not
/// counted in its `attachedRoutes`, and served on the Gateway's other listeners. A parent status
/// whose listeners all rejected the route says `Accepted=False Conflicted`, naming the route it
/// lost to. Routes are judged oldest first, so a route rejected on a listener rejects nothing
/// there.
fn keep_grpc_and_http_apart(gateways: &mut Gateways, report: &mut StatusReport) {
    // Per Gateway: each HTTP or gRPC route with its hostnames on each listener it is on.
    type Placed = (Arc<CompiledRoute>, Vec<(usize, Hostnames)>);
    for (gateway_key, gateway) in gateways.by_key.iter_mut() {
        // Most Gateways carry one kind only: nothing to keep apart, and nothing gathered.
        let kinds = || gateway.listeners.iter().flat_map(|l| &l.routes);
        if !(kinds().any(|(r, _)| r.kind == Kind::HttpRoute)
            && kinds().any(|(r, _)| r.kind == Kind::GrpcRoute))
        {
            continue;
        }
        // Each route once, by the address of its compiled form, which its listeners share.
        let mut at: HashMap<*const CompiledRoute, usize> = HashMap::new();
        let mut routes: Vec<Placed> = Vec::new();
        for (index, l) in gateway.listeners.iter().enumerate() {
            for (route, hosts) in &l.routes {
                if !matches!(route.kind, Kind::HttpRoute | Kind::GrpcRoute) {
                    continue;
                }
                let slot = *at.entry(Arc::as_ptr(route)).or_insert_with(|| {
                    routes.push((route.clone(), Vec::new()));
                    routes.len() - 1
                });
                routes[slot].1.push((index, hosts.clone()));
            }
        }
        routes.sort_by(|(a, _), (b, _)| a.precedes(b));
        // The routes kept so far on each listener, with their hostnames there.
        let mut kept: Vec<Vec<(&Arc<CompiledRoute>, &Hostnames)>> =
            vec![Vec::new(); gateway.listeners.len()];
        // Each route that lost somewhere: the listeners it lost, and what it first lost to.
        let mut lost: Vec<(&Placed, Vec<usize>, String)> = Vec::new();
        for placed in &routes {
            let (route, on) = placed;
            let mut lost_on = Vec::new();
            let mut first_winner = None;
            for (listener, hosts) in on {
                let winner = kept[*listener].iter().find(|(other, other_hosts)| {
                    other.kind != route.kind && hostnames_meet(hosts, other_hosts)
                });
                match winner {
                    Some((winner, _)) => {
                        lost_on.push(*listener);
                        first_winner.get_or_insert_with(|| {
                            let (created, namespace, name) = &winner.order;
                            let older = if *created == route.order.0 {
                                "as old, and first by namespace/name"
                            } else {
                                "older"
                            };
                            format!(
                                "{} {namespace}/{name} is served on the same hostname of \
                                 listener {} of Gateway {}/{}, and is {older}; an HTTPRoute \
                                 and a GRPCRoute are not merged: give this route hostnames of \
                                 its own, or route its requests in one route of one kind",
                                winner.kind,
                                gateway.listeners[*listener].name,
                                gateway_key.0,
                                gateway_key.1
                            )
                        });
                    }
                    None => kept[*listener].push((route, hosts)),
                }
            }
            if let Some(message) = first_winner {
                lost.push((placed, lost_on, message));
            }
        }
        // The parent status of each loser on this Gateway: rejected where every listener the
        // parentRef attached it to rejected it.
        for ((route, on), lost_on, message) in &lost {
            let (_, namespace, name) = &route.order;
            let Some(slot) = report
                .objects
                .iter_mut()
                .find(|o| o.kind == route.kind && o.namespace == *namespace && o.name == *name)
            else {
                continue;
            };
            let mut status = ObjectStatus::clone(slot);
            status.problems = Default::default();
            let parents = status.status["parents"]
                .as_array_mut()
                .into_iter()
                .flatten();
            for parent in parents {
                let reference = &parent["parentRef"];
                let names_this = reference["name"] == gateway_key.1.as_str()
                    && reference["namespace"] == gateway_key.0.as_str()
                    && reference["kind"] == "Gateway";
                if !names_this {
                    continue;
                }
                let selects = |listener: &usize| {
                    let l = &gateway.listeners[*listener];
                    reference["sectionName"]
                        .as_str()
                        .is_none_or(|section| section == l.name)
                        && reference["port"]
                            .as_i64()
                            .is_none_or(|port| port == i64::from(l.port))
                };
                // A parentRef that attached the route nowhere keeps the reason it has.
                let selected: Vec<&usize> =
                    on.iter().map(|(l, _)| l).filter(|l| selects(l)).collect();
                if selected.is_empty() || !selected.iter().all(|l| lost_on.contains(l)) {
                    continue;
                }
                let conditions = parent["conditions"].as_array_mut().into_iter().flatten();
                for c in conditions.filter(|c| c["type"] == "Accepted") {
                    c["status"] = Value::from("False");
                    c["reason"] = Value::from("Conflicted");
                    c["message"] = Value::from(message.as_str());
                }
            }
            *slot = Arc::new(status);
        }
        let taken_off: Vec<(Arc<CompiledRoute>, Vec<usize>)> = lost
            .into_iter()
            .map(|((route, _), lost_on, _)| (route.clone(), lost_on))
            .collect();
        for (index, l) in gateway.listeners.iter_mut().enumerate() {
            let before = l.routes.len();
            l.routes.retain(|(r, _)| {
                !taken_off
                    .iter()
                    .any(|(loser, on)| on.contains(&index) && Arc::ptr_eq(r, loser))
            });
            l.attached -= i64::try_from(before - l.routes.len()).unwrap_or(0);
        }
    }
}

/// Whether two routes' hostnames on one listener (`None`: any) have a hostname in common.
fn hostnames_meet(a: &Hostnames, b: &Hostnames) -> bool {
    a.iter()
        .any(|x| b.iter().any(|y| overlap(x.as_deref(), y.as_deref())))
}

/// Route outcomes from the previous compile, in route key order. The compiler empties it whenever
/// anything but a route or an EndpointSlice changed (see [`super::CompileCache`]), since any
/// other object can change how a route resolves or attaches.
#[derive(Default)]
pub(super) struct RouteCache {
    routes: Vec<RouteOutcome>,
}

impl RouteCache {
    pub(super) fn clear(&mut self) {
        self.routes.clear();
    }

    /// Drops the outcomes of routes with a backendRef to one of `services` (namespace, name),
    /// whose endpoints changed.
    pub(super) fn forget_services(
        &mut self,
        services: &std::collections::HashSet<(String, String)>,
    ) {
        self.routes.retain(|outcome| {
            !outcome.backends.iter().any(|used| {
                services
                    .iter()
                    .any(|(namespace, name)| used.key.0 == *namespace && used.key.1 == *name)
            })
        });
    }
}

/// Everything one route contributes to a compile, so that it can be added again without
/// being computed again.
pub(super) struct RouteOutcome {
    /// The object this was computed from: reusable only while the store holds this very one.
    route: Arc<Object>,
    /// A report error, when not even the route's parentRefs could be read.
    error: Option<SourceError>,
    /// The route's status, when it names a Gateway of ours.
    status: Option<Arc<ObjectStatus>>,
    compiled: Arc<CompiledRoute>,
    /// Where it attaches: Gateway (namespace, name), listener index, effective hostnames.
    attachments: Vec<((String, String), usize, Hostnames)>,
    /// The Service ports its backendRefs resolved, in the order resolved.
    backends: Vec<UsedBackend>,
    /// The Gateways of ours it names, for the status of the policies it uses.
    parents: Vec<(String, String)>,
}

/// The hostnames a route serves on one listener (`None`: any), shared between compiles.
pub(super) type Hostnames = Arc<[Option<String>]>;

/// One Service port a route resolved, and the BackendTLSPolicies that target it.
struct UsedBackend {
    key: ServiceKey,
    backend: Arc<Backend>,
    /// The policies and their uses as first recorded (without ancestors): the one that
    /// applies first, then those it won over.
    policies: Vec<(crate::controller::ObjectKey, PolicyUse)>,
}

impl RouteOutcome {
    /// Adds the route to its listeners, its status to the report, its backends and policy uses
    /// to this compile's.
    fn apply(
        &self,
        gateways: &mut Gateways,
        backends: &mut BackendCache,
        report: &mut StatusReport,
    ) {
        if let Some(error) = &self.error {
            report.errors.push(error.clone());
        }
        if let Some(status) = &self.status {
            report.objects.push(status.clone());
        }
        for (gateway, listener, hosts) in &self.attachments {
            if let Some(l) = gateways
                .by_key
                .get_mut(gateway)
                .and_then(|g| g.listeners.get_mut(*listener))
            {
                l.attached += 1;
                l.routes.push((self.compiled.clone(), hosts.clone()));
            }
        }
        for used in &self.backends {
            if !backends.services.contains_key(&used.key) {
                backends
                    .services
                    .insert(used.key.clone(), used.backend.clone());
            }
            for (policy, first) in &used.policies {
                backends.note_policy(&used.key, policy, first, &self.parents);
            }
        }
    }
}

/// Translates one route and works out where it attaches, without changing anything but
/// `backends` (which only caches what any route would resolve the same way).
fn translate_route(
    route: &Arc<Object>,
    snapshot: &Snapshot,
    gateways: &Gateways,
    options: &CompileOptions,
    backends: &mut BackendCache,
) -> RouteOutcome {
    let mut outcome = RouteOutcome {
        route: route.clone(),
        error: None,
        status: None,
        compiled: Arc::new(CompiledRoute {
            order: Default::default(),
            rules: Vec::new(),
            kind: route.key.kind,
            partially_invalid: None,
            limited: Vec::new(),
        }),
        attachments: Vec::new(),
        backends: Vec::new(),
        parents: Vec::new(),
    };
    let spec: Result<RouteSpec, String> = match route.key.kind {
        Kind::GrpcRoute => api::read::<api::GrpcRouteSpec>(route.spec()).map(Into::into),
        Kind::TlsRoute => api::read::<api::TlsRouteSpec>(route.spec()).map(Into::into),
        _ => api::read(route.spec()),
    };
    // A spec that does not decode still names its parents, most of the time: read them on
    // their own, so that the route is reported on the Gateways it meant (Accepted=False)
    // rather than silently dropped.
    let parent_refs: Vec<api::ParentRef> = match &spec {
        Ok(s) => s.parent_refs.clone(),
        Err(e) => match api::read::<Vec<api::ParentRef>>(&route.spec()["parentRefs"]) {
            Ok(refs) => refs,
            Err(_) => {
                outcome.error = Some(SourceError {
                    source: format!(
                        "{} {}/{}",
                        route.key.kind, route.key.namespace, route.key.name
                    ),
                    message: format!(
                        "spec does not parse, nor do its parentRefs, so no status can be \
                         written: {e}"
                    ),
                });
                return outcome;
            }
        },
    };
    let ours: Vec<&api::ParentRef> = parent_refs
        .iter()
        .filter(|p| parent_is_ours(p, &route.key.namespace, gateways))
        .collect();
    if ours.is_empty() {
        return outcome;
    }
    outcome.parents = ours
        .iter()
        .map(|p| {
            let ns = p
                .namespace
                .clone()
                .unwrap_or_else(|| route.key.namespace.clone());
            (ns, p.name.clone())
        })
        .collect();
    let (accepted_problem, resolved_problem) = match spec.as_ref() {
        Ok(spec) => {
            let (compiled, accepted, resolved) =
                translate(route, spec, snapshot, backends, &outcome.parents);
            outcome.compiled = Arc::new(compiled);
            // The API's pattern lets an IPv4 address through, its text does not ("IPs are not
            // allowed"): served, it would match a Host header naming the address.
            let address = spec.hostnames.iter().enumerate().find(|(_, h)| is_ipv4(h));
            match address {
                Some((i, h)) => (
                    Some((
                        "UnsupportedValue",
                        format!(
                            "spec.hostnames[{i}] {h:?} is an IP address, which the API does not \
                             allow as a hostname: write DNS names, or leave hostnames out to \
                             match every name"
                        ),
                    )),
                    resolved,
                ),
                None => (accepted, resolved),
            }
        }
        Err(e) => (
            Some(("UnsupportedValue", format!("spec does not parse: {e}"))),
            None,
        ),
    };
    outcome.backends = backends.take_used();
    let hostnames = spec
        .as_ref()
        .map(|s| s.hostnames.as_slice())
        .unwrap_or_default();
    let mut parents = Vec::new();
    for parent in ours {
        let attach = match &accepted_problem {
            Some(problem) => Some(problem.clone()),
            None => attach(
                route,
                parent,
                hostnames,
                snapshot,
                gateways,
                &mut outcome.attachments,
            ),
        };
        let mut c = Conditions::new(route.generation, &options.now);
        match attach {
            Some((reason, msg)) => c.set("Accepted", false, reason, msg),
            None if outcome.compiled.limited.is_empty() => {
                c.set("Accepted", true, "Accepted", "route is attached")
            }
            None => c.set(
                "Accepted",
                true,
                "Accepted",
                format!("route is attached; {}", outcome.compiled.limited.join("; ")),
            ),
        }
        c.set_resolved_refs(resolved_problem.as_ref().map(|(r, m)| (*r, m.as_str())));
        if let Some((reason, msg)) = &outcome.compiled.partially_invalid {
            c.set(
                "PartiallyInvalid",
                true,
                reason,
                // The spec: the message starts with "Dropped Rule" when invalid rules are
                // dropped and the others served.
                format!("Dropped Rule: {msg}; the other rules are served"),
            );
        }
        let mut parent_ref = parent.clone();
        parent_ref
            .group
            .get_or_insert_with(|| GATEWAY_GROUP.to_string());
        parent_ref.kind.get_or_insert_with(|| "Gateway".to_string());
        parent_ref
            .namespace
            .get_or_insert_with(|| route.key.namespace.clone());
        parents.push(object([
            ("parentRef", json!(parent_ref)),
            (
                "controllerName",
                Value::from(options.controller_name.as_str()),
            ),
            ("conditions", c.into_json()),
        ]));
    }
    outcome.status = Some(Arc::new(ObjectStatus {
        api_version: route.body["apiVersion"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        kind: route.key.kind,
        namespace: route.key.namespace.clone(),
        name: route.key.name.clone(),
        generation: route.generation,
        status: object([("parents", Value::Array(parents))]),
        problems: Default::default(),
    }));
    outcome
}

/// Whether a listener or route hostname is an IPv4 address in one of its spellings
/// (`1.2.3.4`, `127.1`, `0x7f.0.0.1`, `2130706433`, all of which resolvers and clients take for
/// an address): its last label is all digits, which no DNS name's top-level label is (RFC
/// 1123, section 2.1). An IPv6 address fails the API's pattern already.
pub(super) fn is_ipv4(hostname: &str) -> bool {
    hostname
        .rsplit('.')
        .next()
        .is_some_and(|last| !last.is_empty() && last.bytes().all(|b| b.is_ascii_digit()))
}

fn parent_is_ours(parent: &api::ParentRef, route_namespace: &str, gateways: &Gateways) -> bool {
    parent.group.as_deref().unwrap_or(GATEWAY_GROUP) == GATEWAY_GROUP
        && parent.kind.as_deref().unwrap_or("Gateway") == "Gateway"
        && gateways.by_key.contains_key(&(
            parent
                .namespace
                .clone()
                .unwrap_or_else(|| route_namespace.to_string()),
            parent.name.clone(),
        ))
}

/// Works out which listeners one parentRef attaches a route to, adding them to
/// `attachments`. Returns the `Accepted=False` reason when it attaches nowhere.
fn attach(
    route: &Object,
    parent: &api::ParentRef,
    hostnames: &[String],
    snapshot: &Snapshot,
    gateways: &Gateways,
    attachments: &mut Vec<((String, String), usize, Hostnames)>,
) -> Option<Problem> {
    let namespace = parent
        .namespace
        .clone()
        .unwrap_or_else(|| route.key.namespace.clone());
    let gateway = gateways.get(&namespace, &parent.name)?;
    if let Some((_, why)) = gateway.rejection() {
        return Some((
            "NoMatchingParent",
            format!(
                "Gateway {namespace}/{} is not accepted ({why}); routes attach to it once it is",
                parent.name
            ),
        ));
    }
    let mut selected = 0;
    let mut kind_taken = false;
    let mut allowed = 0;
    let mut attached = 0;
    for (index, l) in gateway.listeners.iter().enumerate() {
        if parent.section_name.as_ref().is_some_and(|s| *s != l.name)
            || parent.port.is_some_and(|p| p != i64::from(l.port))
        {
            continue;
        }
        selected += 1;
        kind_taken |= l.supported_kinds.contains(&route.key.kind.as_str());
        if !l.allows(
            route.key.kind.as_str(),
            &route.key.namespace,
            &gateway.namespace,
            snapshot,
        ) {
            continue;
        }
        allowed += 1;
        let hosts = intersect(l.hostname.as_deref(), hostnames);
        if hosts.is_empty() {
            continue;
        }
        attached += 1;
        // Two parentRefs can name one Gateway alike (one with the route's namespace written
        // out, one without): the route attaches to a listener once, and counts once in its
        // attachedRoutes.
        let gateway_key = (namespace.clone(), parent.name.clone());
        if !attachments
            .iter()
            .any(|(g, i, _)| *g == gateway_key && *i == index)
        {
            attachments.push((gateway_key, index, hosts.into()));
        }
    }
    if attached > 0 {
        None
    } else if selected == 0 {
        Some((
            "NoMatchingParent",
            format!(
                "Gateway {namespace}/{} has no listener matching this parentRef's sectionName/port",
                parent.name
            ),
        ))
    } else if !kind_taken {
        Some((
            "NotAllowedByListeners",
            format!(
                "no listener of Gateway {namespace}/{} that this parentRef selects takes {} \
                 routes (see each listener's supportedKinds)",
                parent.name, route.key.kind
            ),
        ))
    } else if allowed == 0 {
        Some((
            "NotAllowedByListeners",
            format!(
                "no listener of Gateway {namespace}/{} allows {} routes from namespace {}",
                parent.name, route.key.kind, route.key.namespace
            ),
        ))
    } else {
        Some((
            "NoMatchingListenerHostname",
            "no hostname of this route intersects a listener's hostname".to_string(),
        ))
    }
}

/// Translates the rules of one route. Rules with an unsupported value are dropped and named in
/// the returned `Accepted` problem only when no rule survives; unresolved references are
/// reported as `ResolvedRefs=False` and answer 500.
fn translate(
    route: &Object,
    spec: &RouteSpec,
    snapshot: &Snapshot,
    backends: &mut BackendCache,
    parents: &[(String, String)],
) -> (CompiledRoute, Option<Problem>, Option<Problem>) {
    let route_id: Arc<str> =
        Arc::from(format!("{}/{}", route.key.namespace, route.key.name).as_str());
    let mut out = CompiledRoute {
        order: (
            route.creation_timestamp.clone(),
            route.key.namespace.clone(),
            route.key.name.clone(),
        ),
        rules: Vec::new(),
        kind: route.key.kind,
        partially_invalid: None,
        limited: Vec::new(),
    };
    let mut unsupported: Option<Problem> = None;
    let mut unresolved: Option<Problem> = None;
    let mut valid_rules = 0;
    // The API server fills in an HTTPRoute without `rules` with one rule matching every path
    // (and so, without backendRefs, answered 500); standalone mode does the same here, so
    // that a manifest is served alike in both modes.
    let defaulted = [api::HttpRule::default()];
    let rules = if route.key.kind == Kind::HttpRoute && route.spec()["rules"].is_null() {
        &defaulted[..]
    } else {
        &spec.rules[..]
    };
    for (index, rule) in rules.iter().enumerate() {
        let ctx = RefContext {
            snapshot,
            route,
            kind: route.key.kind.as_str(),
            h2c: route.key.kind == Kind::GrpcRoute,
            parents: parents.to_vec(),
        };
        match translate_rule(&ctx, &route_id, index, rule, backends, &mut unresolved) {
            Ok(matches) => {
                valid_rules += 1;
                out.rules.extend(matches);
                let attempts = rule.retry.as_ref().and_then(|r| r.attempts);
                if let Some(n) = attempts.filter(|&n| n > i64::from(RetryPolicy::MAX_ATTEMPTS)) {
                    out.limited.push(format!(
                        "rule {index}: retry attempts {n} served as {}, the most one request \
                         gets",
                        RetryPolicy::MAX_ATTEMPTS
                    ));
                }
                if rule.session_persistence.is_some() {
                    out.limited.push(format!(
                        "rule {index}: sessionPersistence is not supported, and is ignored: \
                         requests are balanced over the endpoints as without it"
                    ));
                }
            }
            // Every dropped rule is named, so that one pass fixes them all.
            Err(msg) => match &mut unsupported {
                Some((_, message)) => message.push_str(&format!("; rule {index}: {msg}")),
                None => unsupported = Some(("UnsupportedValue", format!("rule {index}: {msg}"))),
            },
        }
    }
    out.partially_invalid = unsupported.clone().filter(|_| valid_rules > 0);
    let accepted = if valid_rules == 0 && !rules.is_empty() {
        unsupported
    } else {
        None
    };
    (out, accepted, unresolved)
}

struct RefContext<'a> {
    snapshot: &'a Snapshot,
    route: &'a Object,
    kind: &'static str,
    /// Speak HTTP/2 cleartext to every backend (GRPCRoute), whatever the Service port says.
    h2c: bool,
    /// The Gateways of ours the route attaches to, for the status of policies it uses.
    parents: Vec<(String, String)>,
}

fn translate_rule(
    ctx: &RefContext<'_>,
    route_id: &Arc<str>,
    index: usize,
    rule: &api::HttpRule,
    backends: &mut BackendCache,
    unresolved: &mut Option<Problem>,
) -> Result<Vec<CompiledMatch>, String> {
    // As the API's validation has it: a path prefix can only be replaced where the rule
    // matches exactly one path prefix (none given is `PathPrefix /`); on an Exact or regular
    // expression match there is no prefix to replace. A backendRef's filters are held to the
    // rule's matches as the rule's own are.
    let backend_filters = rule.backend_refs.iter().flat_map(|b| &b.filters);
    let replaces_prefix = rule.filters.iter().chain(backend_filters).any(|f| {
        let path = match f.type_.as_str() {
            "URLRewrite" => f.url_rewrite.as_ref().and_then(|r| r.path.as_ref()),
            "RequestRedirect" => f.request_redirect.as_ref().and_then(|r| r.path.as_ref()),
            _ => None,
        };
        path.is_some_and(|p| p.type_ == "ReplacePrefixMatch")
    });
    let one_prefix = match rule.matches.as_slice() {
        [] => true,
        [m] => m
            .path
            .as_ref()
            .and_then(|p| p.type_.as_deref())
            .is_none_or(|t| t == "PathPrefix"),
        _ => false,
    };
    if replaces_prefix && !one_prefix {
        return Err(
            "a ReplacePrefixMatch path modifier needs exactly one PathPrefix match in its rule"
                .to_string(),
        );
    }
    // ExtensionRef filters are not applied but answered (see `unresolved_extension`).
    let applied = |f: &&HttpFilter| f.type_ != "ExtensionRef";
    let mut filters = rule
        .filters
        .iter()
        .filter(applied)
        .map(|f| translate_filter(ctx, f, backends, unresolved))
        .collect::<Result<Vec<_>, _>>()?;
    let mut weighted = Vec::new();
    for b in &rule.backend_refs {
        let weight = match b.weight.unwrap_or(1) {
            w @ 0..=super::MAX_WEIGHT => w as u64,
            w => {
                return Err(format!(
                    "backendRef weight {w} is outside 0 to {}",
                    super::MAX_WEIGHT
                ))
            }
        };
        let mut target = resolve_backend(ctx, b, backends, unresolved);
        let mut filters = b
            .filters
            .iter()
            .filter(applied)
            .map(|f| translate_filter(ctx, f, backends, unresolved))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(reason) = unresolved_extension(index, &b.filters, unresolved) {
            target = Arc::new(Backend::Invalid { reason });
            filters.clear();
        }
        if weight > 0 {
            weighted.push(WeightedBackend {
                weight,
                target,
                filters,
            });
        }
    }
    let (request_timeout, backend_timeout) = match &rule.timeouts {
        Some(t) => (
            t.request
                .as_deref()
                .map(parse_duration)
                .transpose()?
                .flatten(),
            t.backend_request
                .as_deref()
                .map(parse_duration)
                .transpose()?
                .flatten(),
        ),
        None => (None, None),
    };
    let retry = rule.retry.as_ref().map(translate_retry).transpose()?;
    if let Some(reason) = unresolved_extension(index, &rule.filters, unresolved) {
        filters.clear();
        weighted = vec![WeightedBackend {
            weight: 1,
            target: Arc::new(Backend::Invalid { reason }),
            filters: Vec::new(),
        }];
    }
    let compiled_rule = Arc::new(Rule {
        route: route_id.clone(),
        index,
        name: rule.name.clone(),
        filters,
        total_weight: weighted.iter().map(|w| w.weight).sum(),
        backends: weighted,
        request_timeout,
        backend_timeout,
        retry,
    });
    let default_match = [HttpMatch::default()];
    let matches = if rule.matches.is_empty() {
        &default_match[..]
    } else {
        &rule.matches[..]
    };
    matches
        .iter()
        .enumerate()
        .map(|(i, m)| translate_match(m, compiled_rule.clone(), index * 1000 + i))
        .collect()
}

/// Checks `rules[].retry` as the API server's schema would, and fills in its defaults.
fn translate_retry(retry: &api::Retry) -> Result<RetryPolicy, String> {
    let codes = retry
        .codes
        .iter()
        .map(|&code| match u16::try_from(code) {
            Ok(code @ 400..=599) => Ok(code),
            _ => Err(format!(
                "retry code {code} is not an error status: codes must be within 400-599"
            )),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let attempts = match retry.attempts {
        None => RetryPolicy::DEFAULT_ATTEMPTS,
        Some(n) if n < 0 => {
            return Err(format!("retry attempts must not be negative, got {n}"));
        }
        Some(n) => u32::try_from(n)
            .unwrap_or(u32::MAX)
            .min(RetryPolicy::MAX_ATTEMPTS),
    };
    let backoff = match retry.backoff.as_deref() {
        None => RetryPolicy::DEFAULT_BACKOFF,
        Some(text) => parse_duration(text)
            .map_err(|e| format!("retry backoff: {e}"))?
            .unwrap_or_default(),
    };
    Ok(RetryPolicy {
        codes,
        attempts,
        backoff,
    })
}

fn translate_match(
    m: &HttpMatch,
    rule: Arc<Rule>,
    position: usize,
) -> Result<CompiledMatch, String> {
    let path_type = m
        .path
        .as_ref()
        .and_then(|p| p.type_.as_deref())
        .unwrap_or("PathPrefix");
    let value = m
        .path
        .as_ref()
        .and_then(|p| p.value.clone())
        .unwrap_or_else(|| "/".to_string());
    // Matched as request paths are, whose percent-encodings have upper-case hex digits. In a
    // regular expression `%2c` is as literal as in a path (neither `%` nor a hex digit means
    // anything there), so it is taken the same way; an encoding of an unreserved character
    // (`%41`, which requests arrive with decoded) is read as the character, below.
    let value = crate::routing::table::upper_case_percent_encodings(&value).unwrap_or(value);
    if path_type != "RegularExpression" {
        matched_path(&value)?;
    }
    let path = match path_type {
        "Exact" => PathKind::Exact(value.clone()),
        "PathPrefix" => {
            let trimmed = value.trim_end_matches('/');
            PathKind::Prefix(if trimmed.is_empty() { "/".to_string() } else { trimmed.to_string() })
        }
        "RegularExpression" if m.grpc_method_only => {
            PathKind::GrpcMethod(PathPattern::Path(anchored(&value)?))
        }
        "RegularExpression" => PathKind::Regex(match &m.grpc_patterns {
            Some((service, method)) => {
                // An absent part is any name; an error names the part's field.
                let part = |field: &str, pattern: &Option<String>| {
                    anchored(pattern.as_deref().unwrap_or("[^/]+"))
                        .map_err(|e| format!("method.{field}: {e}"))
                };
                let service = part("service", service)?;
                let method = part("method", method)?;
                PathPattern::Grpc {
                    text: format!("service {} and method {}", service.as_str(), method.as_str()),
                    service,
                    method,
                }
            }
            None => {
                let read = regex_reading_unreserved(&value);
                // An error quotes the pattern as the user wrote it, not as read.
                PathPattern::Path(anchored(&read).map_err(|e| {
                    e.replacen(&format!("{read:?}"), &format!("{value:?}"), 1)
                })?)
            }
        }),
        other => return Err(format!("path match type {other:?} is not supported; use Exact, PathPrefix or RegularExpression")),
    };
    let value_condition = |v: &api::ValueMatch, lower: bool| -> Result<ValueCondition, String> {
        header_name(&v.name)?;
        let name = if lower {
            v.name.to_ascii_lowercase()
        } else {
            v.name.clone()
        };
        let value = match v.type_.as_deref().unwrap_or("Exact") {
            "Exact" => ValueMatch::Exact(v.value.clone()),
            "RegularExpression" => ValueMatch::Regex(anchored(&v.value)?),
            other => {
                return Err(format!(
                    "match type {other:?} for {:?} is not supported",
                    v.name
                ))
            }
        };
        Ok(ValueCondition { name, value })
    };
    let mut headers = Vec::new();
    for h in &m.headers {
        // The spec: only the first match for a repeated header name counts.
        if !headers
            .iter()
            .any(|c: &ValueCondition| c.name.eq_ignore_ascii_case(&h.name))
        {
            headers.push(value_condition(h, true)?);
        }
    }
    let mut query = Vec::new();
    for q in &m.query_params {
        if !query.iter().any(|c: &ValueCondition| c.name == q.name) {
            query.push(value_condition(q, false)?);
        }
    }
    let method = m.method.as_ref().map(|s| s.to_ascii_uppercase());
    let path_len = match &path {
        PathKind::Exact(p) | PathKind::Prefix(p) => p.len(),
        PathKind::Regex(r) | PathKind::GrpcMethod(r) => r.as_str().len(),
    };
    let prefix_chars = m
        .path
        .as_ref()
        .and_then(|p| p.value.as_ref())
        .map_or(1, |v| v.len());
    // A GRPCRoute's matches rank by what of the method they name, not by how long the path
    // built from it is (see `GrpcNames`).
    let path_chars = match m.grpc_names {
        Some(names) => names as usize,
        None => prefix_chars.max(path_len),
    };
    let rank = MatchRank {
        path_chars: std::cmp::Reverse(path_chars),
        no_method: method.is_none(),
        headers: std::cmp::Reverse(headers.len()),
        query: std::cmp::Reverse(query.len()),
        route: 0,
        position,
    };
    Ok(CompiledMatch {
        path,
        conditions: Arc::new(MatchConditions {
            method,
            headers,
            query,
        }),
        rule,
        rank,
    })
}

/// Compiles a pattern that must match the whole value (the spec's regex matches are full).
/// A path pattern with each percent-encoding of an unreserved character (`%7E`, `%41`) read
/// as that character: requests arrive with those decoded, and the encoding as written could
/// never match. The character is written `\x{7E}`, which stands for itself anywhere in a
/// pattern, in a character class too (`[%41-%5A]` is `A` to `Z`). A `%` escaped by a
/// backslash is left as written.
fn regex_reading_unreserved(pattern: &str) -> String {
    let bytes = pattern.as_bytes();
    let mut out = String::with_capacity(pattern.len());
    let mut backslashes = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        let unreserved = (bytes[i] == b'%' && backslashes.is_multiple_of(2))
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .filter(|hex| hex.bytes().all(|b| b.is_ascii_hexdigit()))
            .and_then(|hex| u8::from_str_radix(hex, 16).ok())
            .filter(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'));
        if let Some(byte) = unreserved {
            out.push_str(&format!("\\x{{{byte:02X}}}"));
            backslashes = 0;
            i += 3;
            continue;
        }
        let c = pattern[i..]
            .chars()
            .next()
            .expect("i is on a character boundary");
        backslashes = if c == '\\' { backslashes + 1 } else { 0 };
        out.push(c);
        i += c.len_utf8();
    }
    out
}

fn anchored(pattern: &str) -> Result<Regex, String> {
    // The pattern must stand on its own: inside the anchors, `x)|(?:.*` would close their group
    // and match every path.
    Regex::new(pattern)
        .and_then(|_| Regex::new(&format!("^(?:{pattern})$")))
        .map_err(|e| {
            // The regex crate draws the pattern and a caret over several lines; a condition
            // message is one line, and the caret would point into the anchored copy anyway.
            let text = e.to_string();
            let problem = text
                .lines()
                .rev()
                .find_map(|line| line.strip_prefix("error: "))
                .map_or_else(|| text.replace('\n', " "), str::to_string);
            format!("invalid regular expression {pattern:?}: {problem}")
        })
}

/// The first `ExtensionRef` among `filters`, noted as a reference that does not resolve.
/// This controller defines no custom filter, and the spec forbids skipping one that cannot be
/// resolved: the requests it would have processed (all of the rule's, or one backendRef's
/// share) are answered 500, as for a backendRef that does not resolve, rather than served
/// without it (an authentication filter, say).
fn unresolved_extension(
    rule: usize,
    filters: &[HttpFilter],
    unresolved: &mut Option<Problem>,
) -> Option<String> {
    let r = filters
        .iter()
        .find(|f| f.type_ == "ExtensionRef")?
        .extension_ref
        .clone()
        .unwrap_or_default();
    let msg = format!(
        "rule {rule}: ExtensionRef filter {}/{} {:?}: this controller has no custom filters; \
         requests it would process are answered 500",
        r.group, r.kind, r.name
    );
    note_unresolved(unresolved, "InvalidKind", &msg);
    Some(msg)
}

fn translate_filter(
    ctx: &RefContext<'_>,
    f: &HttpFilter,
    backends: &mut BackendCache,
    unresolved: &mut Option<Problem>,
) -> Result<Filter, String> {
    let missing = |field: &str| format!("filter type {} needs field {field}", f.type_);
    // A GRPCRoute has the header modifiers, mirrors and extensions of an HTTPRoute, not its
    // redirects, rewrites or CORS: a gRPC method is not a path to redirect or rewrite.
    const GRPC_FILTERS: [&str; 4] = [
        "RequestHeaderModifier",
        "ResponseHeaderModifier",
        "RequestMirror",
        "ExtensionRef",
    ];
    if ctx.route.key.kind == Kind::GrpcRoute && !GRPC_FILTERS.contains(&f.type_.as_str()) {
        return Err(format!(
            "filter type {:?} is not one a GRPCRoute has ({})",
            f.type_,
            GRPC_FILTERS.join(", ")
        ));
    }
    Ok(match f.type_.as_str() {
        "RequestHeaderModifier" => Filter::RequestHeaders(Arc::new(header_edits(
            f.request_header_modifier
                .as_ref()
                .ok_or_else(|| missing("requestHeaderModifier"))?,
        )?)),
        "ResponseHeaderModifier" => Filter::ResponseHeaders(Arc::new(header_edits(
            f.response_header_modifier
                .as_ref()
                .ok_or_else(|| missing("responseHeaderModifier"))?,
        )?)),
        "RequestRedirect" => {
            let r = f
                .request_redirect
                .as_ref()
                .ok_or_else(|| missing("requestRedirect"))?;
            let status = u16::try_from(r.status_code.unwrap_or(302)).unwrap_or(0);
            if ![301, 302, 303, 307, 308].contains(&status) {
                return Err(format!(
                    "redirect status code {status} is not supported; use 301, 302, 303, 307 or 308"
                ));
            }
            if let Some(s) = &r.scheme {
                if s != "http" && s != "https" {
                    return Err(format!(
                        "redirect scheme {s:?} is not supported; use http or https"
                    ));
                }
            }
            Filter::Redirect(Arc::new(Redirect {
                scheme: r.scheme.clone(),
                hostname: written_hostname(&r.hostname)?,
                path: r.path.as_ref().map(path_replace).transpose()?,
                port: r
                    .port
                    .map(|p| match u16::try_from(p) {
                        Ok(port) if port > 0 => Ok(port),
                        _ => Err(format!("redirect port {p} is not a port: give 1 to 65535")),
                    })
                    .transpose()?,
                status,
            }))
        }
        "URLRewrite" => {
            let r = f
                .url_rewrite
                .as_ref()
                .ok_or_else(|| missing("urlRewrite"))?;
            Filter::Rewrite(Arc::new(Rewrite {
                hostname: written_hostname(&r.hostname)?,
                path: r.path.as_ref().map(path_replace).transpose()?,
            }))
        }
        "RequestMirror" => {
            let m = f
                .request_mirror
                .as_ref()
                .ok_or_else(|| missing("requestMirror"))?;
            let per_million = match (&m.fraction, m.percent) {
                (Some(fr), _) => {
                    let den = fr.denominator.unwrap_or(100);
                    if den <= 0 {
                        return Err(format!(
                            "mirror fraction denominator {den} must be 1 or more"
                        ));
                    }
                    if fr.numerator < 0 || fr.numerator > den {
                        return Err(format!(
                            "mirror fraction numerator {} must be from 0 to the denominator, {den}",
                            fr.numerator
                        ));
                    }
                    (fr.numerator * 1_000_000 / den) as u32
                }
                (None, Some(p)) if (0..=100).contains(&p) => (p * 10_000) as u32,
                (None, Some(p)) => return Err(format!("mirror percent {p} is outside 0..=100")),
                (None, None) => 1_000_000,
            };
            Filter::Mirror(Arc::new(Mirror {
                backend: resolve_backend(ctx, &m.backend_ref, backends, unresolved),
                per_million,
            }))
        }
        "CORS" => {
            let c = f.cors.as_ref().ok_or_else(|| missing("cors"))?;
            let star = |list: &[String]| list.iter().any(|v| v == "*");
            Filter::Cors(Arc::new(Cors {
                origins: c.allow_origins.clone(),
                methods: (!star(&c.allow_methods)).then(|| c.allow_methods.clone()),
                headers: (!star(&c.allow_headers)).then(|| c.allow_headers.clone()),
                expose: (!c.expose_headers.is_empty()).then(|| c.expose_headers.join(", ")),
                credentials: c.allow_credentials.unwrap_or(false),
                max_age: match c.max_age {
                    Some(age) if age < 0 => {
                        return Err(format!(
                            "CORS maxAge {age} is negative; give seconds, 0 or more"
                        ))
                    }
                    age => age.unwrap_or(5),
                },
            }))
        }
        other => return Err(format!("filter type {other:?} is not supported")),
    })
}

/// Headers that frame a message or manage its connection. The gateway sets them for each hop
/// itself; a filter that changed them would make the message say a length it does not have
/// (`content-length: 1` on a longer body) or the connection do what the proxy does not expect.
const HOP_HEADERS: [&str; 8] = [
    "connection",
    "content-length",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn header_edits(m: &api::HeaderModifier) -> Result<HeaderEdits, String> {
    let check = |name: &str| {
        let lower = name.to_ascii_lowercase();
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
            Err(format!("header name {name:?} is not valid"))
        } else if HOP_HEADERS.contains(&lower.as_str()) {
            Err(format!(
                "header {name:?} frames the message or manages the connection, and is set by \
                 the gateway for each hop; a filter may not change it"
            ))
        } else {
            Ok(lower)
        }
    };
    // A value with a control character (CR and LF above all) could not be sent: every request
    // through the rule would fail. It is refused here, where it can be reported.
    let pair = |h: &api::HeaderValue| {
        if h.value
            .bytes()
            .any(|b| (b < 0x20 && b != b'\t') || b == 0x7f)
        {
            return Err(format!(
                "the value of header {:?} holds a control character (such as CR or LF)",
                h.name
            ));
        }
        Ok((check(&h.name)?, h.value.clone()))
    };
    // A request has one host: a second Host field is refused by every backend (and by the
    // proxy, as a 500 for each request), and an empty one names no host at all.
    let not_host = |name: &str, what: &str| {
        if name.eq_ignore_ascii_case("host") {
            Err(format!(
                "header \"Host\" holds the request's one host: a filter may set it, not {what}"
            ))
        } else {
            Ok(())
        }
    };
    // Of entries that name one header (names are compared without regard to case), the first
    // counts and the others are ignored, as the spec's HTTPHeader says.
    let first_of_each = |pairs: Vec<(String, String)>| {
        let mut seen = std::collections::HashSet::new();
        (pairs.into_iter())
            .filter(|(name, _)| seen.insert(name.clone()))
            .collect::<Vec<_>>()
    };
    Ok(HeaderEdits {
        set: first_of_each(m.set.iter().map(pair).collect::<Result<_, String>>()?),
        add: first_of_each(
            m.add
                .iter()
                .map(|h| not_host(&h.name, "add a second one").and_then(|()| pair(h)))
                .collect::<Result<_, String>>()?,
        ),
        remove: m
            .remove
            .iter()
            .map(|h| not_host(h, "remove it").and_then(|()| check(h)))
            .collect::<Result<_, _>>()?,
    })
}

fn path_replace(p: &api::PathModifier) -> Result<PathReplace, String> {
    match p.type_.as_str() {
        "ReplaceFullPath" => Ok(PathReplace::Full(written_path(
            p.replace_full_path
                .as_deref()
                .ok_or("ReplaceFullPath needs replaceFullPath")?,
        )?)),
        // An empty replacement takes the prefix away (`/foo/bar` becomes `/bar`, `/foo`
        // becomes `/`), as the API's HTTPPathModifier documents.
        "ReplacePrefixMatch" => match p
            .replace_prefix_match
            .as_deref()
            .ok_or("ReplacePrefixMatch needs replacePrefixMatch")?
        {
            "" => Ok(PathReplace::Prefix(String::new())),
            replacement => Ok(PathReplace::Prefix(written_path(replacement)?)),
        },
        other => Err(format!("path modifier type {other:?} is not supported")),
    }
}

/// A path a filter writes into a request line or a `Location` header, checked as the API's
/// validation of paths does: absolute, and made only of the characters a path may hold
/// (RFC 3986 `pchar`, percent-encodings whole). Anything else (no leading `/`, a space, CR or
/// LF) would put a broken request line or header on the wire for every request the rule takes.
fn written_path(path: &str) -> Result<String, String> {
    let bytes = path.as_bytes();
    let mut i = 0;
    let ok = path.starts_with('/')
        && path.len() <= 1024
        && loop {
            let Some(&b) = bytes.get(i) else {
                break true;
            };
            let fine = match b {
                b'%' => bytes
                    .get(i + 1..i + 3)
                    .is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit)),
                _ => b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/".contains(&b),
            };
            if !fine {
                break false;
            }
            i += if b == b'%' { 3 } else { 1 };
        };
    if ok {
        Ok(path.to_string())
    } else {
        Err(format!(
            "path {path:?} is not an absolute path: it must start with / and hold only letters, \
             digits, -._~!$&'()*+,;=:@/ and %XX escapes"
        ))
    }
}

/// Checks an Exact or PathPrefix match value as the API's validation does: a path a filter
/// could write (see [`written_path`]), in normal form (no `//`, no dot segments) and without
/// `%2F` or `#`. A request path never takes such a form once it is normalized, so a rule
/// matching on one would wait for requests that cannot come.
fn matched_path(path: &str) -> Result<(), String> {
    written_path(path)?;
    let lower = path.to_ascii_lowercase();
    let flaw = ["//", "/./", "/../", "%2f"]
        .into_iter()
        .find(|part| lower.contains(part))
        .or(["/.", "/.."].into_iter().find(|end| path.ends_with(end)));
    if let Some(flaw) = flaw {
        return Err(format!(
            "path {path:?} must not hold {flaw:?}: write the path in its normal form"
        ));
    }
    // Requests are matched in normal form (`/%61dmin` is `/admin`, `%2e%2e` a dot segment):
    // a value in any other form matches nothing.
    match crate::routing::table::normalize_path(path) {
        Some(normal) if normal != path => Err(format!(
            "path {path:?} is matched against request paths in normal form, where it reads \
             {normal:?}: write that"
        )),
        _ => Ok(()),
    }
}

/// Checks a header or query parameter name of a match against the API's `HTTPHeaderName`: 1 to
/// 256 of the characters RFC 9110 allows in a field name (a token). Any other name could never
/// be sent, so its match would never hold.
fn header_name(name: &str) -> Result<(), String> {
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if !name.is_empty() && name.len() <= 256 && name.bytes().all(token) {
        return Ok(());
    }
    Err(format!(
        "{name:?} is not a header or query parameter name: 1 to 256 letters, digits and \
         !#$%&'*+-.^_`|~"
    ))
}

/// A hostname a filter writes into a `Host` or `Location` header: an RFC 1123 name, without
/// a wildcard, as the API's `PreciseHostname` allows.
fn written_hostname(host: &Option<String>) -> Result<Option<String>, String> {
    match host {
        Some(h) if h.starts_with("*.") || !crate::routing::api::valid_hostname(h) => Err(format!(
            "hostname {h:?} is not a hostname: write lower-case letters, digits, - and dots, \
             without a wildcard or port"
        )),
        _ => Ok(host.clone()),
    }
}

/// A Service port as a backendRef names it: namespace, name, port, and whether it is spoken
/// to over HTTP/2 cleartext whatever the port says (GRPCRoute).
type ServiceKey = (String, String, i64, bool);

/// Backends shared between rules, so that one Service port is resolved once per compile.
#[derive(Default)]
struct BackendCache {
    services: HashMap<ServiceKey, Arc<Backend>>,
    policies: HashMap<crate::controller::ObjectKey, PolicyUse>,
    /// The policies that target a cached Service port: the one that applies first.
    service_policy: HashMap<ServiceKey, Vec<crate::controller::ObjectKey>>,
    /// The Service ports resolved since [`BackendCache::take_used`] was last called.
    used: Vec<ServiceKey>,
}

impl BackendCache {
    /// The Service ports resolved by the route just translated, with what they resolved to.
    fn take_used(&mut self) -> Vec<UsedBackend> {
        let mut out: Vec<UsedBackend> = Vec::new();
        for key in std::mem::take(&mut self.used) {
            if out.iter().any(|u| u.key == key) {
                continue;
            }
            let Some(backend) = self.services.get(&key) else {
                continue;
            };
            let policies = (self.service_policy.get(&key).into_iter().flatten())
                .filter_map(|p| {
                    let used = self.policies.get(p)?;
                    Some((
                        p.clone(),
                        PolicyUse {
                            ancestors: Vec::new(),
                            ..used.clone()
                        },
                    ))
                })
                .collect();
            out.push(UsedBackend {
                backend: backend.clone(),
                key,
                policies,
            });
        }
        out
    }

    /// Records that routes of the Gateways `parents` send traffic to Service port `service`,
    /// which `policy` targets, as `found` says (applied, refused for a problem, or won over).
    fn note_policy(
        &mut self,
        service: &ServiceKey,
        policy: &crate::controller::ObjectKey,
        found: &PolicyUse,
        parents: &[(String, String)],
    ) {
        let targeting = self.service_policy.entry(service.clone()).or_default();
        if !targeting.contains(policy) {
            targeting.push(policy.clone());
        }
        let entry = self
            .policies
            .entry(policy.clone())
            .or_insert_with(|| found.clone());
        // Where a policy applies, that is its status, though another wins on a second port.
        let conflicted = |p: &Option<Problem>| matches!(p, Some(("Conflicted", _)));
        if conflicted(&entry.problem) && !conflicted(&found.problem) {
            entry.problem = found.problem.clone();
        }
        for parent in parents {
            if !entry.ancestors.contains(parent) {
                entry.ancestors.push(parent.clone());
            }
        }
    }
}

fn resolve_backend(
    ctx: &RefContext<'_>,
    b: &BackendRef,
    cache: &mut BackendCache,
    unresolved: &mut Option<Problem>,
) -> Arc<Backend> {
    match try_resolve(ctx, b, cache) {
        Ok(backend) => backend,
        Err((reason, msg)) => {
            note_unresolved(unresolved, reason, &msg);
            Arc::new(Backend::Invalid { reason: msg })
        }
    }
}

/// Adds a reference that does not resolve to the route's `ResolvedRefs` problem. The condition
/// has one reason, the first reference's; its message names every distinct one, so that one
/// pass fixes them all, up to [`UNRESOLVED_NAMED`] (a condition message has a size limit).
fn note_unresolved(unresolved: &mut Option<Problem>, reason: &'static str, msg: &str) {
    match unresolved {
        None => *unresolved = Some((reason, msg.to_string())),
        Some((_, message)) => {
            let named = message.split("; ").count();
            if named > UNRESOLVED_NAMED || message.split("; ").any(|m| m == msg) {
                return;
            }
            if named == UNRESOLVED_NAMED {
                message.push_str("; and more");
            } else {
                message.push_str("; ");
                message.push_str(msg);
            }
        }
    }
}

/// How many references that do not resolve a route's `ResolvedRefs` message names.
const UNRESOLVED_NAMED: usize = 8;

fn try_resolve(
    ctx: &RefContext<'_>,
    b: &BackendRef,
    cache: &mut BackendCache,
) -> Result<Arc<Backend>, Problem> {
    let group = b.group.as_deref().unwrap_or("");
    let kind = b.kind.as_deref().unwrap_or("Service");
    if !(group.is_empty() || group == "core") || kind != "Service" {
        return Err((
            "InvalidKind",
            format!("backendRef {group}/{kind} {} is not a Service", b.name),
        ));
    }
    let route_ns = &ctx.route.key.namespace;
    let namespace = b.namespace.clone().unwrap_or_else(|| route_ns.clone());
    if namespace != *route_ns
        && !grant_allows(
            ctx.snapshot,
            GATEWAY_GROUP,
            ctx.kind,
            route_ns,
            "",
            "Service",
            &namespace,
            &b.name,
        )
    {
        return Err(("RefNotPermitted", format!("Service {namespace}/{}: no ReferenceGrant in {namespace} allows {}s from {route_ns}", b.name, ctx.kind)));
    }
    let Some(port) = b.port else {
        return Err((
            "BackendNotFound",
            format!("backendRef to Service {namespace}/{} needs a port", b.name),
        ));
    };
    let key = (namespace.clone(), b.name.clone(), port, ctx.h2c);
    cache.used.push(key.clone());
    if let Some(hit) = cache.services.get(&key) {
        for policy in cache.service_policy.get(&key).into_iter().flatten() {
            if let Some(used) = cache.policies.get_mut(policy) {
                for parent in &ctx.parents {
                    if !used.ancestors.contains(parent) {
                        used.ancestors.push(parent.clone());
                    }
                }
            }
        }
        return Ok(hit.clone());
    }
    let Some(service) = ctx.snapshot.get(Kind::Service, &namespace, &b.name) else {
        return Err((
            "BackendNotFound",
            format!("Service {namespace}/{} does not exist", b.name),
        ));
    };
    let spec: api::ServiceSpec = api::read(service.spec()).map_err(|e| {
        (
            "BackendNotFound",
            format!("Service {namespace}/{}: {e}", b.name),
        )
    })?;
    // A Service may have a TCP and a UDP port of the same number (DNS does): only TCP carries
    // what the gateway forwards.
    let ports = || spec.ports.iter().filter(|p| p.port == port);
    let Some(service_port) = ports().find(|p| api::is_tcp(p.protocol.as_deref())) else {
        let other = ports().find_map(|p| p.protocol.as_deref());
        return Err((
            "BackendNotFound",
            match other {
                Some(protocol) => format!(
                    "Service {namespace}/{} port {port} is {protocol}, not TCP",
                    b.name
                ),
                None => format!("Service {namespace}/{} has no port {port}", b.name),
            },
        ));
    };
    let endpoints = ready_endpoints(
        ctx.snapshot,
        &namespace,
        &b.name,
        service_port.name.as_deref().unwrap_or(""),
    );
    let (h2c, needs_tls) = match speaks(service_port.app_protocol.as_deref()) {
        Some(AppProtocol::Http1) => (ctx.h2c, false),
        Some(AppProtocol::H2c) => (true, false),
        Some(AppProtocol::Tls) => (ctx.h2c, true),
        None => {
            return Err((
                "UnsupportedProtocol",
                format!(
                    "Service {namespace}/{} port {port} has appProtocol {:?}, which the gateway \
                     does not speak to backends; it speaks http, kubernetes.io/h2c (or grpc), \
                     kubernetes.io/ws, and https or kubernetes.io/wss with a BackendTLSPolicy",
                    b.name,
                    service_port.app_protocol.as_deref().unwrap_or_default()
                ),
            ))
        }
    };
    let mut service = ServiceBackend::new(
        Arc::from(format!("{namespace}/{}:{port}", b.name).as_str()),
        endpoints,
        h2c,
    );
    let backend = match backend_tls(ctx, &key, &b.name, service_port.name.as_deref(), cache) {
        Ok(None) if needs_tls => {
            return Err((
                "UnsupportedProtocol",
                format!(
                    "Service {namespace}/{} port {port} has appProtocol {:?}, which needs TLS to \
                     the backend: add a BackendTLSPolicy for it, or change the appProtocol",
                    b.name,
                    service_port.app_protocol.as_deref().unwrap_or_default()
                ),
            ))
        }
        Ok(tls) => {
            service.tls = tls;
            Backend::Service(service)
        }
        // BackendTLSPolicy: never fall back to cleartext when the policy cannot be honoured.
        Err(reason) => Backend::Invalid { reason },
    };
    let backend = Arc::new(backend);
    cache.services.insert(key, backend.clone());
    Ok(backend)
}

/// How the gateway speaks to a Service port, by its `appProtocol`.
enum AppProtocol {
    /// HTTP/1.1 (HTTP/2 for GRPCRoutes), WebSocket upgrades included.
    Http1,
    /// HTTP/2 over cleartext.
    H2c,
    /// TLS to the backend, which only a BackendTLSPolicy configures.
    Tls,
}

/// The protocol a Service port's `appProtocol` asks for, or `None` for one the gateway cannot
/// speak (spec, BackendRef: the backend is then invalid, `ResolvedRefs=False
/// UnsupportedProtocol`, rather than spoken to in another protocol). IANA service names are
/// compared without case, domain-prefixed names as written.
fn speaks(app_protocol: Option<&str>) -> Option<AppProtocol> {
    let Some(name) = app_protocol else {
        return Some(AppProtocol::Http1);
    };
    match name {
        "kubernetes.io/ws" => Some(AppProtocol::Http1),
        "kubernetes.io/h2c" => Some(AppProtocol::H2c),
        "kubernetes.io/wss" => Some(AppProtocol::Tls),
        _ if name.eq_ignore_ascii_case("http") => Some(AppProtocol::Http1),
        _ if name.eq_ignore_ascii_case("h2c") || name.eq_ignore_ascii_case("grpc") => {
            Some(AppProtocol::H2c)
        }
        _ if name.eq_ignore_ascii_case("https") => Some(AppProtocol::Tls),
        _ => None,
    }
}

/// The BackendTLSPolicy of a Service port, if one targets it, recording the policy's status
/// (with the Gateways of the routing route as ancestors) in `cache`.
fn backend_tls(
    ctx: &RefContext<'_>,
    service_key: &ServiceKey,
    service: &str,
    port_name: Option<&str>,
    cache: &mut BackendCache,
) -> Result<Option<Arc<crate::tls::BackendTls>>, String> {
    let namespace = service_key.0.as_str();
    // Of the policies that target this port, the one that names it by sectionName wins over one
    // for the whole Service, then the oldest, then the first by name: the API's precedence.
    let mut targeting: Vec<_> = ctx
        .snapshot
        .of_kind(Kind::BackendTlsPolicy)
        .filter(|p| p.key.namespace == namespace)
        .filter_map(|p| {
            let spec = api::read::<api::BackendTlsPolicySpec>(p.spec()).ok()?;
            let names_port = spec
                .target_refs
                .iter()
                .filter(|t| t.kind == "Service" && t.group.is_empty() && t.name == service)
                .filter_map(|t| match t.section_name.as_deref() {
                    None => Some(false),
                    Some(s) => (Some(s) == port_name).then_some(true),
                })
                .max()?;
            let created = p.body["metadata"]["creationTimestamp"]
                .as_str()
                .unwrap_or_default();
            Some(((std::cmp::Reverse(names_port), created, &p.key.name), p))
        })
        .collect();
    targeting.sort_by(|a, b| a.0.cmp(&b.0));
    let Some(&(_, policy)) = targeting.first() else {
        return dangling_policy(ctx, service_key, service, cache);
    };
    let result = read_backend_tls(ctx.snapshot, namespace, policy);
    record_policy_use(
        ctx,
        cache,
        service_key,
        policy,
        result.as_ref().err().cloned(),
    );
    // The others are not applied to this port, and say which is (`Accepted=False Conflicted`).
    for &(_, lost) in &targeting[1..] {
        let port = port_name.map_or_else(String::new, |p| format!(" port {p:?} of"));
        let message = format!(
            "BackendTLSPolicy {namespace}/{} applies to{port} Service {namespace}/{service} \
             instead: a policy that names the port by sectionName wins over one for the whole \
             Service, then the oldest, then the first by name",
            policy.key.name
        );
        record_policy_use(ctx, cache, service_key, lost, Some(("Conflicted", message)));
    }
    result.map(Some).map_err(|(_, msg)| msg)
}

/// Records that routes of `ctx`'s Gateways send traffic through `policy`, for its status,
/// with the problem that keeps it from being honoured, if any.
fn record_policy_use(
    ctx: &RefContext<'_>,
    cache: &mut BackendCache,
    service_key: &ServiceKey,
    policy: &Object,
    problem: Option<Problem>,
) {
    let found = PolicyUse {
        generation: policy.generation,
        api_version: policy.body["apiVersion"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        ancestors: Vec::new(),
        problem,
    };
    cache.note_policy(service_key, &policy.key, &found, &ctx.parents);
}

/// A BackendTLSPolicy for `service` whose every targetRef of it names a `sectionName` that no
/// port of the Service has: most likely a misspelt port name. Its traffic is refused (500),
/// not sent in clear text as if the Service had no policy, and the policy says why
/// (`Accepted=False TargetNotFound`).
fn dangling_policy(
    ctx: &RefContext<'_>,
    service_key: &ServiceKey,
    service: &str,
    cache: &mut BackendCache,
) -> Result<Option<Arc<crate::tls::BackendTls>>, String> {
    let namespace = service_key.0.as_str();
    let ports: Vec<String> = ctx
        .snapshot
        .get(Kind::Service, namespace, service)
        .and_then(|s| s.body["spec"]["ports"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|p| p["name"].as_str().map(str::to_string))
        .collect();
    let misnamed = |spec: &api::BackendTlsPolicySpec| {
        spec.target_refs
            .iter()
            .filter(|t| t.kind == "Service" && t.group.is_empty() && t.name == service)
            .find_map(|t| {
                t.section_name
                    .as_deref()
                    .filter(|s| !ports.iter().any(|p| p == s))
                    .map(str::to_string)
            })
    };
    let Some((policy, section)) = ctx.snapshot.of_kind(Kind::BackendTlsPolicy).find_map(|p| {
        if p.key.namespace != namespace {
            return None;
        }
        let spec = api::read::<api::BackendTlsPolicySpec>(p.spec()).ok()?;
        misnamed(&spec).map(|section| (p, section))
    }) else {
        return Ok(None);
    };
    let message = format!(
        "targetRef sectionName {section:?} names no port of Service {namespace}/{service} (its \
         ports: {}); name one of them, or leave sectionName out to cover every port",
        ports.join(", ")
    );
    // As for a policy that applies: an incremental compile replays its use from here.
    record_policy_use(
        ctx,
        cache,
        service_key,
        policy,
        Some(("TargetNotFound", message.clone())),
    );
    Err(format!(
        "BackendTLSPolicy {namespace}/{}: {message}",
        policy.key.name
    ))
}

fn read_backend_tls(
    snapshot: &Snapshot,
    namespace: &str,
    policy: &Object,
) -> Result<Arc<crate::tls::BackendTls>, Problem> {
    let spec: api::BackendTlsPolicySpec =
        api::read(policy.spec()).map_err(|e| ("Invalid", format!("spec does not parse: {e}")))?;
    let v = &spec.validation;
    if v.hostname.is_empty() {
        return Err(("Invalid", "validation.hostname is required".to_string()));
    }
    // The API allows DNS names only: an address is never sent as SNI, so no certificate could
    // be verified against it and every request would fail.
    if v.hostname.parse::<std::net::IpAddr>().is_ok() {
        return Err((
            "Invalid",
            format!(
                "validation.hostname {} is an IP address; name the DNS name the backend's \
                 certificate holds",
                v.hostname
            ),
        ));
    }
    // Pingora verifies a backend's certificate against the SNI only. Serving the policy
    // without its subjectAltNames would verify less than it asks; refusing it fails closed.
    if !v.subject_alt_names.is_empty() {
        return Err((
            "Invalid",
            "validation.subjectAltNames is not supported: the backend's certificate is verified \
             against validation.hostname only; remove subjectAltNames, or name in hostname the \
             name the certificate must hold"
                .to_string(),
        ));
    }
    let (ca, trust) = match (
        v.ca_certificate_refs.first(),
        v.well_known_ca_certificates.as_deref(),
    ) {
        (Some(r), _) => {
            let kind = r.kind.as_deref().unwrap_or("");
            if kind != "ConfigMap" || !r.group.as_deref().unwrap_or("").is_empty() {
                return Err((
                    "InvalidKind",
                    format!(
                        "caCertificateRef {kind} {}: only ConfigMaps hold CA certificates",
                        r.name
                    ),
                ));
            }
            let cm = snapshot
                .get(Kind::ConfigMap, namespace, &r.name)
                .ok_or_else(|| {
                    (
                        "InvalidCACertificateRef",
                        format!("ConfigMap {namespace}/{} does not exist", r.name),
                    )
                })?;
            let (ca, trust) = crate::tls::backend_ca(&cm.body).map_err(|e| {
                (
                    "InvalidCACertificateRef",
                    format!("ConfigMap {namespace}/{}: {e}", r.name),
                )
            })?;
            (Some(ca), trust)
        }
        (None, Some("System")) => (None, 0),
        (None, _) => {
            return Err((
                "Invalid",
                "validation needs caCertificateRefs or wellKnownCACertificates: System".to_string(),
            ))
        }
    };
    Ok(Arc::new(crate::tls::BackendTls {
        hostname: v.hostname.clone(),
        ca,
        trust,
    }))
}

/// Writes the status of every BackendTLSPolicy a route used: one ancestor entry per Gateway.
fn policy_status(
    policies: &HashMap<crate::controller::ObjectKey, PolicyUse>,
    options: &CompileOptions,
    report: &mut StatusReport,
) {
    for (key, used) in policies {
        let ancestors: Vec<serde_json::Value> = used
            .ancestors
            .iter()
            .map(|(ns, name)| {
                // The spec's reasons: a CA certificate reference that does not resolve makes
                // ResolvedRefs false and the policy not accepted for want of a valid CA
                // (NoValidCACertificate); any other problem makes it not accepted (Invalid).
                // Either way the Service's traffic is refused (500), never sent in cleartext.
                let mut c = Conditions::new(used.generation, &options.now);
                let refused = |msg: &str| format!("{msg}; requests to the Service are refused");
                match &used.problem {
                    None => {
                        c.set("Accepted", true, "Accepted", "policy is applied to its Service");
                        c.set_resolved_refs(None);
                    }
                    Some((reason @ ("InvalidCACertificateRef" | "InvalidKind"), msg)) => {
                        c.set("Accepted", false, "NoValidCACertificate", refused(msg));
                        c.set_resolved_refs(Some((reason, msg)));
                    }
                    Some(("TargetNotFound", msg)) => {
                        c.set("Accepted", false, "TargetNotFound", refused(msg));
                        c.set_resolved_refs(None);
                    }
                    // Another policy is in force for the port; its traffic is not refused.
                    Some(("Conflicted", msg)) => {
                        c.set("Accepted", false, "Conflicted", msg.as_str());
                        c.set_resolved_refs(None);
                    }
                    Some((_, msg)) => {
                        c.set("Accepted", false, "Invalid", refused(msg));
                        c.set_resolved_refs(None);
                    }
                }
                object([
                    ("ancestorRef", json!({"group": GATEWAY_GROUP, "kind": "Gateway", "namespace": ns, "name": name})),
                    ("controllerName", Value::from(options.controller_name.as_str())),
                    ("conditions", c.into_json()),
                ])
            })
            .collect();
        report.objects.push(Arc::new(ObjectStatus {
            api_version: used.api_version.clone(),
            kind: key.kind,
            namespace: key.namespace.clone(),
            name: key.name.clone(),
            generation: used.generation,
            status: object([("ancestors", Value::Array(ancestors))]),
            problems: Default::default(),
        }));
    }
}

/// A BackendTLSPolicy in use, for its status.
#[derive(Clone)]
struct PolicyUse {
    generation: i64,
    api_version: String,
    /// Gateways (namespace, name) whose routes send traffic through the policy.
    ancestors: Vec<(String, String)>,
    problem: Option<Problem>,
}

/// Ready addresses of the EndpointSlices of a Service, on the port named like the Service port.
fn ready_endpoints(
    snapshot: &Snapshot,
    namespace: &str,
    service: &str,
    port_name: &str,
) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for slice in snapshot.of_kind(Kind::EndpointSlice) {
        if slice.key.namespace != namespace
            || slice
                .labels
                .get("kubernetes.io/service-name")
                .map(String::as_str)
                != Some(service)
        {
            continue;
        }
        let Ok(slice) = api::read::<api::EndpointSlice>(&slice.body) else {
            continue;
        };
        let Some(port) = slice
            .ports
            .unwrap_or_default()
            .iter()
            .find(|p| {
                p.name.as_deref().unwrap_or("") == port_name && api::is_tcp(p.protocol.as_deref())
            })
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok())
        else {
            continue;
        };
        for endpoint in slice.endpoints.unwrap_or_default() {
            if endpoint.conditions.ready == Some(false) {
                continue;
            }
            for address in &endpoint.addresses {
                if let Ok(ip) = address.parse::<IpAddr>() {
                    let addr = SocketAddr::new(ip, port);
                    if !out.contains(&addr) {
                        out.push(addr);
                    }
                }
            }
        }
    }
    out.sort();
    out
}

/// Whether a ReferenceGrant in `to_namespace` lets `from_kind` objects in `from_namespace`
/// refer to the named object.
#[allow(clippy::too_many_arguments)]
pub(super) fn grant_allows(
    snapshot: &Snapshot,
    from_group: &str,
    from_kind: &str,
    from_namespace: &str,
    to_group: &str,
    to_kind: &str,
    to_namespace: &str,
    to_name: &str,
) -> bool {
    snapshot
        .of_kind(Kind::ReferenceGrant)
        .filter(|g| g.key.namespace == to_namespace)
        .any(|g| {
            let Ok(spec) = api::read::<api::ReferenceGrantSpec>(g.spec()) else {
                return false;
            };
            spec.from.iter().any(|f| {
                f.group == from_group && f.kind == from_kind && f.namespace == from_namespace
            }) && spec.to.iter().any(|t| {
                (t.group == to_group || (to_group.is_empty() && t.group == "core"))
                    && t.kind == to_kind
                    && t.name
                        .as_deref()
                        .is_none_or(|n| n.is_empty() || n == to_name)
            })
        })
}

/// One host's entries while a listener's index is built.
#[derive(Default)]
struct Bucket {
    exact: HashMap<String, Vec<(MatchRank, Entry)>>,
    prefix: HashMap<String, Vec<(MatchRank, Entry)>>,
    regex: Vec<(MatchRank, PathPattern, Entry)>,
    grpc_methods: Vec<(MatchRank, PathPattern, Entry)>,
}

/// A listener's host index as last built: for each host, the routes its entries came from
/// (in precedence order) and the entries. A host whose routes are the very same ones, in the
/// same order, keeps its entries. Holding the routes keeps their addresses from being reused.
#[derive(Default)]
pub(super) struct IndexCache {
    hosts: HashMap<Option<String>, HostEntries>,
}

/// The routes serving one host, in precedence order, and the entries built from them.
type HostEntries = (Vec<Arc<CompiledRoute>>, Arc<PathIndex>);

impl HostIndex {
    /// Builds the index of one listener from the routes attached to it and their effective
    /// hostnames there, reusing from `cache` the entries of hosts whose routes did not change
    /// and leaving this build's in it.
    pub(super) fn build(
        routes: &[(Arc<CompiledRoute>, Hostnames)],
        cache: &mut IndexCache,
    ) -> HostIndex {
        // Routes in precedence order across routes: oldest first, then namespace/name.
        let mut ordered: Vec<&(Arc<CompiledRoute>, Hostnames)> = routes
            .iter()
            .filter(|(route, _)| route.kind != Kind::TlsRoute)
            .collect();
        ordered.sort_by(|a, b| a.0.precedes(&b.0));
        let mut by_host: HashMap<&Option<String>, Vec<Arc<CompiledRoute>>> = HashMap::new();
        for (route, hosts) in ordered {
            for host in hosts.iter() {
                by_host.entry(host).or_default().push(route.clone());
            }
        }
        let mut previous = std::mem::take(&mut cache.hosts);
        let mut index = HostIndex::default();
        for (host, routes) in by_host {
            let reused = previous.remove_entry(host).filter(|(_, (before, _))| {
                before.len() == routes.len()
                    && before.iter().zip(&routes).all(|(a, b)| Arc::ptr_eq(a, b))
            });
            let (host, paths) = match reused {
                Some((host, (_, paths))) => (host, paths),
                None => (host.clone(), Arc::new(path_index(&routes))),
            };
            match host.as_deref() {
                None => index.any = Some(paths.clone()),
                Some(h) => match h.strip_prefix('*') {
                    Some(suffix) => {
                        index.wildcard.insert(suffix.to_string(), paths.clone());
                    }
                    None => {
                        index.exact.insert(h.to_string(), paths.clone());
                    }
                },
            }
            cache.hosts.insert(host, (routes, paths));
        }
        index
    }
}

/// The entries of one host, from the routes that serve it in precedence order.
fn path_index(routes: &[Arc<CompiledRoute>]) -> PathIndex {
    let mut bucket = Bucket::default();
    for (route_order, route) in routes.iter().enumerate() {
        for m in &route.rules {
            let prefix = match &m.path {
                PathKind::Prefix(p) => Some(Arc::from(p.as_str())),
                _ => None,
            };
            // Only the order of routes within this host matters to precedence.
            let rank = MatchRank {
                route: route_order,
                ..m.rank
            };
            let entry = Entry {
                conditions: m.conditions.clone(),
                rule: m.rule.clone(),
                prefix,
                order: 0,
            };
            match &m.path {
                PathKind::Exact(p) => bucket
                    .exact
                    .entry(p.clone())
                    .or_default()
                    .push((rank, entry)),
                PathKind::Prefix(p) => bucket
                    .prefix
                    .entry(p.clone())
                    .or_default()
                    .push((rank, entry)),
                PathKind::Regex(r) => bucket.regex.push((rank, r.clone(), entry)),
                PathKind::GrpcMethod(r) => bucket.grpc_methods.push((rank, r.clone(), entry)),
            }
        }
    }
    // Each entry's place among all of the host's: a GRPCRoute's lookup takes the first in
    // that order of the entries that match, wherever they are kept.
    let mut ranks: Vec<MatchRank> = (bucket.exact.values().chain(bucket.prefix.values()))
        .flatten()
        .map(|(rank, _)| *rank)
        .chain(bucket.regex.iter().map(|(rank, _, _)| *rank))
        .chain(bucket.grpc_methods.iter().map(|(rank, _, _)| *rank))
        .collect();
    ranks.sort();
    let order = |rank: &MatchRank, entry: &mut Entry| {
        let place = ranks.binary_search(rank).unwrap_or_default();
        entry.order = u32::try_from(place).unwrap_or(u32::MAX);
    };
    for (rank, entry) in (bucket.exact.values_mut().chain(bucket.prefix.values_mut())).flatten() {
        order(rank, entry);
    }
    for (rank, _, entry) in bucket.regex.iter_mut().chain(&mut bucket.grpc_methods) {
        order(rank, entry);
    }
    let finish = |mut v: Vec<(MatchRank, Entry)>| -> Vec<Entry> {
        v.sort_by_key(|(rank, _)| *rank);
        v.into_iter().map(|(_, e)| e).collect()
    };
    bucket.regex.sort_by_key(|(rank, _, _)| *rank);
    bucket.grpc_methods.sort_by_key(|(rank, _, _)| *rank);
    PathIndex {
        grpc: routes.iter().any(|r| r.kind == Kind::GrpcRoute),
        exact: bucket
            .exact
            .into_iter()
            .map(|(k, v)| (k, finish(v)))
            .collect(),
        prefix: bucket
            .prefix
            .into_iter()
            .map(|(k, v)| (k, finish(v)))
            .collect(),
        regex: bucket.regex.into_iter().map(|(_, r, e)| (r, e)).collect(),
        grpc_methods: (bucket.grpc_methods.into_iter())
            .map(|(_, r, e)| (r, e))
            .collect(),
    }
}

/// The SNI table of a passthrough listener: (hostname, first rule of the route), most specific
/// hostname first (exact, then longer wildcards, then routes without hostnames), ties by route
/// age and name.
pub(super) fn passthrough_table(
    routes: &[(Arc<CompiledRoute>, Hostnames)],
) -> Vec<(Option<String>, Arc<Rule>)> {
    let mut out: Vec<(Option<String>, &CompiledRoute, Arc<Rule>)> = Vec::new();
    for (route, hosts) in routes {
        if route.kind != Kind::TlsRoute {
            continue;
        }
        let Some(first) = route.rules.first() else {
            continue;
        };
        for host in hosts.iter() {
            out.push((host.clone(), route, first.rule.clone()));
        }
    }
    out.sort_by(|a, b| {
        let specificity = |h: &Option<String>| match h {
            Some(h) if !h.starts_with('*') => (0, std::cmp::Reverse(h.len())),
            Some(h) => (1, std::cmp::Reverse(h.len())),
            None => (2, std::cmp::Reverse(0)),
        };
        specificity(&a.0)
            .cmp(&specificity(&b.0))
            .then_with(|| a.1.order.cmp(&b.1.order))
    });
    out.into_iter().map(|(h, _, r)| (h, r)).collect()
}
