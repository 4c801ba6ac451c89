//! The compiler: a pure function from a store [`Snapshot`] to a [`RoutingTable`] and the
//! [`StatusReport`] the Gateway API spec asks for.
//!
//! It does no I/O and reads no clock (the caller passes the time to stamp conditions with), so
//! the same snapshot always compiles to the same table, and tests need nothing but objects.
//! Compilation runs in three passes:
//!
//! 1. [`gateways`]: our GatewayClasses and their Gateways, addresses and listeners, each
//!    listener validated on its own so that one bad listener never takes its siblings down;
//! 2. [`routes`]: every route's rules are translated (matches, filters, backendRefs resolved to
//!    endpoints), then attached to the listeners its parentRefs select and allow;
//! 3. the table is assembled per bound socket from the attached rules, sorted by precedence.
//!
//! A [`CompileCache`] carried from one compile to the next makes the second pass incremental:
//! while nothing but routes (and EndpointSlices) changed, a route whose inputs are unchanged is
//! not translated again, and a change of one route among ten thousand costs little more than
//! that one route.
//! The cache never changes the result: [`compile`] is [`compile_with`] and an empty cache.
//!
//! Problems in user objects never stop compilation: they become conditions, and the part of the
//! configuration they touch answers as the spec says (500 for an unresolvable backendRef).

mod gateways;
mod hostnames;
mod routes;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use crate::controller::{Kind, Object, Snapshot};

use super::status::StatusReport;
use super::table::RoutingTable;

pub use hostnames::intersect as intersect_hostnames;

/// The largest weight a backendRef may have (the API's bound). Bounded so, the weights of a
/// rule cannot add up past what the weighted pick counts in (u64), however many it has.
pub const MAX_WEIGHT: i64 = 1_000_000;

/// Settings that are not in the objects.
#[derive(Debug, Clone, PartialEq)]
pub struct CompileOptions {
    /// GatewayClasses with this `controllerName` are ours.
    pub controller_name: String,
    /// Addresses handed to Gateways that do not ask for one, in order.
    pub address_pool: Vec<IpAddr>,
    /// Listener port to socket port: `port + offset`, unless `port_map` names the port.
    pub port_offset: i32,
    /// Explicit listener-port to socket-port mapping.
    pub port_map: BTreeMap<u16, u16>,
    /// Addresses already handed out, by `namespace/name` of the Gateway, so that a Gateway keeps
    /// its address when others come and go.
    pub assigned: BTreeMap<String, IpAddr>,
    /// Serve only this Gateway (`namespace/name`), leaving the others (and their status) to other
    /// processes: a Deployment per Gateway for full isolation.
    pub only_gateway: Option<String>,
    /// Where Gateway `status.addresses` come from when not from the bind address.
    pub reported_addresses: ReportedAddresses,
    /// RFC 3339 time to stamp new conditions with.
    pub now: String,
}

/// What a Gateway's `status.addresses` report in a cluster, where clients reach the gateway
/// through its Service rather than at the address its listeners bind (often `0.0.0.0`).
///
/// In order: the Service's `status.loadBalancer.ingress` (IPs and host names), else its
/// `spec.externalIPs`, else its cluster IPs; without the Service (or before it exists), the
/// pod's IP; with neither set, the address the Gateway's listeners bind.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReportedAddresses {
    /// The gateway's own Service: (namespace, name).
    pub service: Option<(String, String)>,
    /// The pod's IP (from the downward API).
    pub pod_ip: Option<IpAddr>,
}

impl Default for CompileOptions {
    fn default() -> Self {
        CompileOptions {
            controller_name: crate::DEFAULT_CONTROLLER_NAME.to_string(),
            address_pool: vec![IpAddr::from([127, 0, 0, 1])],
            port_offset: 0,
            port_map: BTreeMap::new(),
            assigned: BTreeMap::new(),
            only_gateway: None,
            reported_addresses: ReportedAddresses::default(),
            now: "1970-01-01T00:00:00Z".to_string(),
        }
    }
}

impl CompileOptions {
    /// The socket port a listener port is served on, if it fits in a port number.
    pub fn socket_port(&self, port: u16) -> Option<u16> {
        if let Some(p) = self.port_map.get(&port) {
            return Some(*p);
        }
        u16::try_from(i32::from(port) + self.port_offset)
            .ok()
            .filter(|p| *p != 0)
    }
}

/// What one compile produces.
pub struct Compiled {
    /// The table to swap in.
    pub table: RoutingTable,
    /// Conditions for every object we own.
    pub report: StatusReport,
    /// Addresses now handed to Gateways; feed back as [`CompileOptions::assigned`].
    pub assigned: BTreeMap<String, IpAddr>,
    /// How many route rules made it into the table.
    pub rules: usize,
    /// Ready endpoints of every backend Service port a route refers to, by
    /// `namespace/name:port`.
    pub endpoints: BTreeMap<String, usize>,
}

/// Compiles a snapshot. Never fails: problems are in the report.
pub fn compile(snapshot: &Snapshot, options: &CompileOptions) -> Compiled {
    compile_with(snapshot, options, &mut CompileCache::default())
}

/// What one compile leaves for the next, so that it need not redo work whose inputs did not
/// change. Keep one per compile loop; its contents never change a compile's result.
#[derive(Default)]
pub struct CompileCache {
    /// Every object that is not a route, as the last compile saw it. Holding them keeps their
    /// addresses from being reused, so pointer equality means "the same object".
    world: Vec<Arc<Object>>,
    /// The options of the last compile, with `now` and `assigned` cleared.
    options: Option<CompileOptions>,
    routes: routes::RouteCache,
    /// Host entries of every served listener, by Gateway `namespace/name` and listener name.
    indexes: std::collections::HashMap<(String, String), routes::IndexCache>,
    /// The last usable certificate of each Secret; never dropped by `prepare`, as it is what
    /// stands in when a Secret changes for the worse.
    certificates: gateways::CertificateMemory,
}

impl CompileCache {
    /// Drops what cannot be reused for `snapshot`. Route outcomes depend on every Gateway,
    /// listener, Service, ReferenceGrant, policy, Secret and Namespace, so a change to one of
    /// those (or to the options) starts over. EndpointSlices are the exception, because they
    /// change all the time in a cluster (every pod that starts, stops or turns ready): when only
    /// they changed, only the routes whose backends are their Services are redone.
    fn prepare(&mut self, snapshot: &Snapshot, options: &CompileOptions) {
        let world: Vec<Arc<Object>> = Kind::ALL
            .into_iter()
            .filter(|k| !k.is_route())
            .flat_map(|k| snapshot.arcs_of_kind(k).cloned())
            .collect();
        // Neither the time stamp nor the addresses handed out matter to a route: it attaches to
        // listeners, whatever address their Gateway binds. (The compile loop feeds `assigned`
        // back after every compile, so comparing it would throw the cache away after the first.)
        let options = CompileOptions {
            now: String::new(),
            assigned: BTreeMap::new(),
            ..options.clone()
        };
        match endpoint_changes(&self.world, &world) {
            _ if self.options.as_ref() != Some(&options) => self.routes.clear(),
            None => self.routes.clear(),
            Some(services) if !services.is_empty() => self.routes.forget_services(&services),
            Some(_) => {}
        }
        self.world = world;
        self.options = Some(options);
    }
}

/// The Services (namespace, name) whose EndpointSlices differ between two worlds (both sorted
/// by key, as snapshots list them), when nothing but EndpointSlices does; `None` otherwise.
fn endpoint_changes(
    old: &[Arc<Object>],
    new: &[Arc<Object>],
) -> Option<std::collections::HashSet<(String, String)>> {
    let mut services = std::collections::HashSet::new();
    let mut note = |o: &Object| -> Option<()> {
        if o.key.kind != Kind::EndpointSlice {
            return None;
        }
        if let Some(service) = o.labels.get("kubernetes.io/service-name") {
            services.insert((o.key.namespace.clone(), service.clone()));
        }
        Some(())
    };
    let (mut a, mut b) = (old.iter().peekable(), new.iter().peekable());
    loop {
        match (a.peek(), b.peek()) {
            (None, None) => return Some(services),
            (Some(x), Some(y)) if Arc::ptr_eq(x, y) => {
                a.next();
                b.next();
            }
            (Some(x), Some(y)) => match x.key.cmp(&y.key) {
                std::cmp::Ordering::Less => note(a.next()?)?,
                std::cmp::Ordering::Greater => note(b.next()?)?,
                std::cmp::Ordering::Equal => {
                    note(a.next()?)?;
                    note(b.next()?)?;
                }
            },
            (Some(_), None) => note(a.next()?)?,
            (None, Some(_)) => note(b.next()?)?,
        }
    }
}

/// Compiles a snapshot, reusing what `cache` holds from the previous compile where its inputs
/// are unchanged, and leaving in it what the next compile can reuse.
pub fn compile_with(
    snapshot: &Snapshot,
    options: &CompileOptions,
    cache: &mut CompileCache,
) -> Compiled {
    cache.prepare(snapshot, options);
    let mut report = StatusReport {
        objects: Vec::new(),
        errors: snapshot.errors.clone(),
        classes_in_use: Default::default(),
    };
    let mut gateways = gateways::compile(snapshot, options, &mut report);
    gateways.keep_last_good_certificates(&mut cache.certificates);
    let endpoints = routes::compile(
        snapshot,
        &mut gateways,
        options,
        &mut report,
        &mut cache.routes,
    );
    let assigned = gateways.assigned();
    let (table, rules) = gateways.into_table(options, &mut report, &mut cache.indexes);
    report
        .objects
        .sort_by(|a, b| (a.kind, &a.namespace, &a.name).cmp(&(b.kind, &b.namespace, &b.name)));
    Compiled {
        table,
        report,
        assigned,
        rules,
        endpoints,
    }
}

/// Parses a Gateway API duration (`1h`, `500ms`, `1m30s`); `0s` means "no timeout".
pub fn parse_duration(text: &str) -> Result<Option<std::time::Duration>, String> {
    use std::time::Duration;
    let err = || format!("invalid duration {text:?}: expected e.g. 10s, 500ms or 1m30s");
    if text.is_empty() {
        return Err(err());
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(err());
        }
        // The API's pattern allows five digits a number.
        if digits > 5 {
            return Err(format!(
                "invalid duration {text:?}: at most five digits a number (99999s); write larger \
                 ones in bigger units (1h30m)"
            ));
        }
        let n: u64 = rest[..digits].parse().map_err(|_| err())?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (Duration::from_millis(n), 2)
        } else if rest.starts_with('h') {
            (Duration::from_secs(n * 3600), 1)
        } else if rest.starts_with('m') {
            (Duration::from_secs(n * 60), 1)
        } else if rest.starts_with('s') {
            (Duration::from_secs(n), 1)
        } else {
            return Err(err());
        };
        total += unit;
        rest = &rest[len..];
    }
    Ok((!total.is_zero()).then_some(total))
}

/// Objects of the snapshot that this gateway neither serves nor writes a status for, each with
/// the reason in words: a GatewayClass of another controller, a Gateway whose class is not one
/// of ours, a route none of whose parentRefs names a Gateway served here. In a cluster these are
/// normal (they belong to other controllers); in a directory of one's own, they are most often
/// a misspelt name, and nothing else would say so. A process scoped to one Gateway leaves the
/// others out of this list, as it leaves them out of everything.
pub fn unserved(
    snapshot: &Snapshot,
    report: &StatusReport,
    options: &CompileOptions,
) -> Vec<String> {
    let text = |o: &Object, pointer: &str| {
        o.body
            .pointer(pointer)
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_string()
    };
    let id = |o: &Object| {
        if o.key.namespace.is_empty() {
            o.key.name.clone()
        } else {
            format!("{}/{}", o.key.namespace, o.key.name)
        }
    };
    let reported: std::collections::HashSet<(Kind, &str, &str)> = report
        .objects
        .iter()
        .map(|o| (o.kind, o.namespace.as_str(), o.name.as_str()))
        .collect();
    let is_reported = |kind: Kind, o: &Object| {
        reported.contains(&(kind, o.key.namespace.as_str(), o.key.name.as_str()))
    };
    let mut out = Vec::new();
    let ours = &options.controller_name;
    for class in snapshot.of_kind(Kind::GatewayClass) {
        let controller = text(class, "/spec/controllerName");
        if controller != *ours {
            out.push(format!(
                "GatewayClass {}: its controllerName {controller:?} is not {ours:?}, so its \
                 Gateways are left to that controller",
                id(class)
            ));
        }
    }
    for gateway in snapshot.of_kind(Kind::Gateway) {
        let name = format!("{}/{}", gateway.key.namespace, gateway.key.name);
        let in_scope = options
            .only_gateway
            .as_ref()
            .is_none_or(|only| *only == name);
        if !in_scope || is_reported(Kind::Gateway, gateway) {
            continue;
        }
        let class = text(gateway, "/spec/gatewayClassName");
        let why = match snapshot.get(Kind::GatewayClass, "", &class) {
            None => "names no GatewayClass there is".to_string(),
            Some(c) => format!("is of controller {:?}", text(c, "/spec/controllerName")),
        };
        out.push(format!(
            "Gateway {name}: its gatewayClassName {class:?} {why}; it is not served"
        ));
    }
    if let Some(only) = &options.only_gateway {
        let there = |g: &&Object| format!("{}/{}", g.key.namespace, g.key.name) == *only;
        if !snapshot.of_kind(Kind::Gateway).any(|g| there(&g)) {
            let names: Vec<String> = (snapshot.of_kind(Kind::Gateway))
                .map(|g| format!("{}/{}", g.key.namespace, g.key.name))
                .collect();
            let names = match names.is_empty() {
                true => "there is none".to_string(),
                false => format!("there are {}", some_names(names)),
            };
            out.push(format!(
                "Gateway {only}, the one --gateway names, is not in the configuration ({names}); \
                 nothing is served"
            ));
        }
        return out;
    }
    // The Gateways that are served, to name beside a parentRef that names none of them: most
    // often one of these, misspelt or in another namespace.
    let served: Vec<String> = (report.objects.iter())
        .filter(|o| o.kind == Kind::Gateway)
        .map(|o| format!("{}/{}", o.namespace, o.name))
        .collect();
    let served = match served.is_empty() {
        true => "no Gateway is served".to_string(),
        false => format!("served: {}", some_names(served)),
    };
    for kind in [Kind::HttpRoute, Kind::GrpcRoute, Kind::TlsRoute] {
        for route in snapshot.of_kind(kind) {
            if is_reported(kind, route) {
                continue;
            }
            let namespace = &route.key.namespace;
            let parents: Vec<String> = route
                .body
                .pointer("/spec/parentRefs")
                .and_then(|v| v.as_array())
                .into_iter()
                .flatten()
                .map(|p| {
                    let ns = p["namespace"].as_str().unwrap_or(namespace);
                    format!("{ns}/{}", p["name"].as_str().unwrap_or(""))
                })
                .collect();
            out.push(format!(
                "{kind} {}: none of its parentRefs ({}) names a Gateway served here ({served}); \
                 it is not served",
                id(route),
                if parents.is_empty() {
                    "none".to_string()
                } else {
                    parents.join(", ")
                }
            ));
        }
    }
    out
}

/// `names` sorted and joined, the first eight of them and how many more: enough to spot a
/// misspelt one against, in a message that stays one line.
fn some_names(mut names: Vec<String>) -> String {
    names.sort();
    match names.len() {
        0..=8 => names.join(", "),
        n => format!("{} and {} more", names[..8].join(", "), n - 8),
    }
}

#[cfg(test)]
mod tests;
