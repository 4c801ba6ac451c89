//! A window into the routing table: the whole table as JSON (`/debug/routes`), and which rule a
//! request would match and why the rules tried before it did not (`/debug/explain`,
//! `portcullis explain`).
//!
//! `explain` walks the table in exactly the order [`RoutingTable::lookup`] does (listener by
//! hostname, host buckets from exact to catch-all, then exact paths, regular expressions and
//! prefixes from longest to shortest), so what it reports is what the proxy does.

use serde::Serialize;
use serde_json::{json, Value};

use super::status::StatusReport;
use super::table::{
    host_matches, normalize_host, Backend, Entry, Failure, Filter, HostIndex, ListenerRoutes,
    PathIndex, RequestView, RoutingTable, ValueMatch,
};

/// The outcome of explaining one request.
#[derive(Debug, Serialize)]
pub struct Explanation {
    /// `namespace/route#rule` of the winning rule, if any.
    pub matched: Option<String>,
    /// The status the gateway answers itself: 404 when nothing matches, a RequestRedirect's
    /// status, 204 for a CORS preflight, 500 for a rule with no usable backend, 503 for one
    /// whose only Service has no ready endpoint. Absent when the request is forwarded (or may be, by weight).
    pub status: Option<u16>,
    /// For a gRPC call (a `content-type: application/grpc` header in the question), the
    /// `grpc-status` the gateway answers with in place of `status`, in the trailers of an
    /// HTTP 200.
    #[serde(rename = "grpcStatus", skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<u8>,
    /// `namespace/name:port` of the matched rule's backend Services.
    pub backends: Vec<String>,
    /// Every decision taken, in order.
    pub steps: Vec<String>,
    /// The question named a listener that is not served: there is no request to explain
    /// (`/debug/explain` answers 404 for it, with the steps that say why).
    #[serde(skip)]
    pub listener_unknown: bool,
}

/// How the first step begins when the question's listener is not in the table.
const NOT_SERVED: &str = "no served listener is named";

/// Why listener `namespace/gateway/listener` is not in the table, from the conditions of the
/// compile that made it: no such Gateway served here, no such listener in it, or the false
/// conditions that kept it out (most often an address `--address-pool` cannot give: explain
/// places Gateways as the run it stands for would only when given the same flags).
fn why_not_served(report: &StatusReport, listener: &str) -> String {
    // The listeners there are, to choose from.
    let mut known: Vec<String> = (report.objects.iter())
        .filter(|o| o.kind == crate::controller::Kind::Gateway)
        .flat_map(|o| {
            let listeners = o.status["listeners"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            listeners
                .into_iter()
                .filter_map(|l| l["name"].as_str().map(str::to_string))
                .map(move |l| format!("{}/{}/{l}", o.namespace, o.name))
        })
        .collect();
    known.sort();
    let more = known.len().saturating_sub(RULES_NAMED);
    known.truncate(RULES_NAMED);
    let mut listeners = match known.is_empty() {
        true => "there is no Gateway listener".to_string(),
        false => format!("listeners: {}", known.join(", ")),
    };
    if more > 0 {
        listeners.push_str(&format!(" and {more} more"));
    }
    let mut parts = listener.splitn(3, '/');
    let (Some(namespace), Some(gateway), Some(name)) = (parts.next(), parts.next(), parts.next())
    else {
        return format!("name it as namespace/gateway/listener ({listeners})");
    };
    let Some(status) = report.get(crate::controller::Kind::Gateway, namespace, gateway) else {
        return format!(
            "no Gateway {namespace}/{gateway} is served here ({listeners}): is it in the \
             configuration, with a GatewayClass of this controller?"
        );
    };
    let listeners = status.status["listeners"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let Some(entry) = listeners.iter().find(|l| l["name"] == name) else {
        let names: Vec<&str> = listeners
            .iter()
            .filter_map(|l| l["name"].as_str())
            .collect();
        return format!(
            "Gateway {namespace}/{gateway} has no listener named {name:?}; it has: {}",
            names.join(", ")
        );
    };
    let not_true = |conditions: &Value| -> Vec<String> {
        (conditions.as_array().into_iter().flatten())
            // Every condition is good when true, except `Conflicted`.
            .filter(|c| (c["type"] == "Conflicted") == (c["status"] == "True"))
            .map(|c| {
                format!(
                    "{}={} {}: {}",
                    c["type"].as_str().unwrap_or_default(),
                    c["status"].as_str().unwrap_or_default(),
                    c["reason"].as_str().unwrap_or_default(),
                    c["message"].as_str().unwrap_or_default()
                )
            })
            .collect()
    };
    let mut why = not_true(&entry["conditions"]);
    // Of the Gateway's own conditions, those that keep every listener out; its ResolvedRefs
    // may be about another listener.
    why.extend(
        not_true(&status.status["conditions"])
            .into_iter()
            .filter(|c| c.starts_with("Accepted=") || c.starts_with("Programmed="))
            .map(|c| format!("Gateway {c}")),
    );
    let mut said = format!("listener {listener} is not served: {}", why.join("; "));
    if why.iter().any(|c| c.contains("AddressNot")) {
        said.push_str(
            "; explain places Gateways on addresses as the run does only when given the same \
             --address-pool",
        );
    }
    said
}

/// Explains a request arriving on the socket of listener `gateway_ns/gateway_name/listener`.
pub fn explain(table: &RoutingTable, listener: &str, req: &RequestView<'_>) -> Explanation {
    let mut steps = Vec::new();
    let miss = |steps| Explanation {
        matched: None,
        status: Some(404),
        grpc_status: None,
        backends: Vec::new(),
        steps,
        listener_unknown: false,
    };
    let Some(bind) = table.binds.values().find(|b| {
        b.listeners
            .iter()
            .any(|l| format!("{}/{}", l.gateway, l.name) == listener)
    }) else {
        let form = if listener.splitn(3, '/').count() == 3 {
            ""
        } else {
            " (expected namespace/gateway/listener)"
        };
        steps.push(format!("{NOT_SERVED} {listener:?}{form}"));
        return Explanation {
            listener_unknown: true,
            ..miss(steps)
        };
    };
    let host = normalize_host(req.host);
    let mut chosen = None;
    for l in &bind.listeners {
        let id = format!("{}/{}", l.gateway, l.name);
        match &l.hostname {
            Some(h) if !host_matches(h, &host) => {
                steps.push(format!(
                    "listener {id}: hostname {h} does not match host {host:?}"
                ));
            }
            _ => {
                steps.push(format!(
                    "listener {id} takes host {host:?} (hostname {})",
                    l.hostname.as_deref().unwrap_or("any")
                ));
                chosen = Some(l);
                break;
            }
        }
    }
    let Some(listener) = chosen else {
        steps.push("no listener on this socket serves the host: 404".to_string());
        return miss(steps);
    };
    if listener.scheme == "tls" {
        // A TLS listener routes whole connections by the ClientHello's SNI (TLSRoute), not
        // requests: the host stands for the SNI.
        let id = format!("{}/{}", listener.gateway, listener.name);
        let sni = (!host.is_empty()).then_some(&*host);
        let Some((_, rule)) = (listener.passthrough.iter())
            .find(|(h, _)| super::table::takes_server_name(h.as_deref(), sni))
        else {
            steps.push(format!(
                "listener {id} routes TLS connections by SNI, and no TLSRoute takes SNI \
                 {host:?}: the connection is refused"
            ));
            return miss(steps);
        };
        let matched = format!("{}#{}", rule.route, rule.index);
        steps.push(format!(
            "listener {id} routes TLS connections by SNI: TLSRoute rule {matched} takes SNI \
             {host:?}, and the connection goes to its backends"
        ));
        let backends = (rule.backends.iter())
            .filter_map(|b| match b.target.as_ref() {
                Backend::Service(s) => Some(s.name.to_string()),
                Backend::Invalid { .. } => None,
            })
            .collect();
        return Explanation {
            matched: Some(matched),
            status: None,
            grpc_status: None,
            backends,
            steps,
            listener_unknown: false,
        };
    }
    if let Some(entry) = explain_hosts(&listener.hosts, &host, req, &mut steps) {
        let id = format!("{}#{}", entry.rule.route, entry.rule.index);
        steps.push(format!("rule {id} matches"));
        let backends = entry
            .rule
            .backends
            .iter()
            .filter_map(|b| match b.target.as_ref() {
                Backend::Service(s) => Some(s.name.to_string()),
                Backend::Invalid { .. } => None,
            })
            .collect();
        let status = answered_by_gateway(&entry.rule, req, &mut steps);
        return Explanation {
            matched: Some(id),
            status,
            grpc_status: None,
            backends,
            steps,
            listener_unknown: false,
        };
    }
    steps.push("no rule matches: 404".to_string());
    miss(steps)
}

/// What the proxy does with a request the rule matched, when the gateway answers it itself (as
/// `request_filter` decides): the filters in order, where a RequestRedirect answers and a CORS
/// filter answers a preflight (OPTIONS with `Origin` and `Access-Control-Request-Method`,
/// 204), whichever comes first; then a rule without backends
/// answers 500. Otherwise each backendRef takes its share of the weight: one that failed to
/// resolve answers 500, a Service without ready endpoints 503, and each such share is named as
/// a step. The status is given when no share forwards: the one answer, or of two, the one with
/// the larger share.
fn answered_by_gateway(
    rule: &super::table::Rule,
    req: &RequestView<'_>,
    steps: &mut Vec<String>,
) -> Option<u16> {
    let preflight = req.method == "OPTIONS"
        && !(req.header)("origin").is_empty()
        && !(req.header)("access-control-request-method").is_empty();
    for filter in &rule.filters {
        match filter {
            Filter::Redirect(r) => {
                steps.push(format!(
                    "the rule's RequestRedirect filter answers {}",
                    r.status
                ));
                return Some(r.status);
            }
            Filter::Cors(_) if preflight => {
                steps.push(
                    "the rule's CORS filter answers this preflight itself (OPTIONS with Origin \
                     and Access-Control-Request-Method): 204"
                        .to_string(),
                );
                return Some(204);
            }
            _ => {}
        }
    }
    if rule.backends.is_empty() {
        steps.push("the rule has no backendRef with weight above 0: 500".to_string());
        return Some(500);
    }
    let (mut unresolved, mut empty) = (0, 0);
    for b in &rule.backends {
        let share = format!(
            "a backendRef of weight {} of {}",
            b.weight, rule.total_weight
        );
        match b.target.as_ref() {
            Backend::Invalid { reason } => {
                unresolved += b.weight;
                steps.push(format!("{share} answers 500: {reason}"));
            }
            Backend::Service(service) if service.endpoints.is_empty() => {
                empty += b.weight;
                steps.push(format!(
                    "{share} answers 503: {} has no ready endpoint",
                    service.name
                ));
            }
            Backend::Service(_) => {}
        }
    }
    if unresolved + empty < rule.total_weight {
        None
    } else if unresolved >= empty {
        Some(500)
    } else {
        Some(503)
    }
}

fn explain_hosts<'t>(
    hosts: &'t HostIndex,
    host: &str,
    req: &RequestView<'_>,
    steps: &mut Vec<String>,
) -> Option<&'t Entry> {
    let mut buckets: Vec<(String, &PathIndex)> = Vec::new();
    if let Some(p) = hosts.exact.get(host) {
        buckets.push((format!("routes for host {host}"), p));
    }
    let mut at = 0;
    while let Some(dot) = host[at..].find('.') {
        let suffix = &host[at + dot..];
        if let Some(p) = hosts.wildcard.get(suffix) {
            buckets.push((format!("routes for *{suffix}"), p));
        }
        at += dot + 1;
    }
    if let Some(p) = &hosts.any {
        buckets.push(("routes without hostnames".to_string(), p));
    }
    if buckets.is_empty() {
        steps.push(format!("no route on this listener serves host {host:?}"));
    }
    for (name, paths) in buckets {
        steps.push(format!("trying {name}"));
        if let Some(hit) = explain_paths(paths, req, steps) {
            return Some(hit);
        }
        let missed = paths_not_matching(paths, req.path);
        if !missed.is_empty() {
            steps.push(format!(
                "the path {:?} does not match the path of: {}",
                req.path, missed
            ));
        }
    }
    None
}

/// How many rules a step names at most.
const RULES_NAMED: usize = 10;

/// The rules of `paths` whose path match does not take `path`, by name with their path match,
/// in name order, at most [`RULES_NAMED`] and a count of the rest. Those whose path matched but
/// whose other conditions failed have a step of their own already.
fn paths_not_matching(paths: &PathIndex, path: &str) -> String {
    let name = |kind: &str, value: &str, e: &Entry| {
        format!("{}#{} ({kind} {value})", e.rule.route, e.rule.index)
    };
    let prefix_takes = |prefix: &str| {
        prefix == "/"
            || path
                .strip_prefix(prefix)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    };
    let mut missed: Vec<String> = paths
        .exact
        .iter()
        .filter(|(p, _)| p.as_str() != path)
        .flat_map(|(p, v)| v.iter().map(move |e| name("Exact", p, e)))
        .chain(
            (paths.regex.iter().chain(&paths.grpc_methods))
                .filter(|(re, _)| !re.is_match(path))
                .map(|(re, e)| name("RegularExpression", re.as_str(), e)),
        )
        .chain(
            paths
                .prefix
                .iter()
                .filter(|(p, _)| !prefix_takes(p))
                .flat_map(|(p, v)| v.iter().map(move |e| name("PathPrefix", p, e))),
        )
        .collect();
    missed.sort();
    let more = missed.len().saturating_sub(RULES_NAMED);
    missed.truncate(RULES_NAMED);
    let mut said = missed.join(", ");
    if more > 0 {
        said.push_str(&format!(" and {more} more"));
    }
    said
}

fn explain_paths<'t>(
    paths: &'t PathIndex,
    req: &RequestView<'_>,
    steps: &mut Vec<String>,
) -> Option<&'t Entry> {
    let try_entries = |what: String,
                       entries: &mut dyn Iterator<Item = &'t Entry>,
                       steps: &mut Vec<String>| {
        for e in entries {
            let id = format!("{}#{}", e.rule.route, e.rule.index);
            match e.conditions.first_failure(req) {
                None => return Some(e),
                Some(f) => steps.push(format!("rule {id} ({what}): {}", describe_failure(e, f))),
            }
        }
        None
    };
    if paths.grpc {
        // As the table does for GRPCRoutes: every entry whose path matches, in precedence.
        let mut candidates: Vec<(String, &'t Entry)> = Vec::new();
        for e in paths.exact.get(req.path).into_iter().flatten() {
            candidates.push((format!("Exact {}", req.path), e));
        }
        for (re, e) in paths.regex.iter().chain(&paths.grpc_methods) {
            if re.is_match(req.path) {
                candidates.push((format!("RegularExpression {}", re.as_str()), e));
            }
        }
        for probe in super::table::prefix_probes(req.path) {
            for e in paths.prefix.get(probe).into_iter().flatten() {
                candidates.push((format!("PathPrefix {probe}"), e));
            }
        }
        candidates.sort_by_key(|(_, e)| e.order);
        for (what, e) in candidates {
            if let Some(hit) = try_entries(what, &mut std::iter::once(e), steps) {
                return Some(hit);
            }
        }
        return None;
    }
    if let Some(v) = paths.exact.get(req.path) {
        if let Some(hit) = try_entries(format!("Exact {}", req.path), &mut v.iter(), steps) {
            return Some(hit);
        }
    }
    for (re, e) in &paths.regex {
        if re.is_match(req.path) {
            if let Some(hit) = try_entries(
                format!("RegularExpression {}", re.as_str()),
                &mut std::iter::once(e),
                steps,
            ) {
                return Some(hit);
            }
        }
    }
    for probe in super::table::prefix_probes(req.path) {
        if let Some(v) = paths.prefix.get(probe) {
            if let Some(hit) = try_entries(format!("PathPrefix {probe}"), &mut v.iter(), steps) {
                return Some(hit);
            }
        }
    }
    None
}

fn describe_failure(e: &Entry, f: Failure) -> String {
    match f {
        Failure::Method => format!(
            "method is not {}",
            e.conditions.method.as_deref().unwrap_or("")
        ),
        Failure::Header(i) => {
            let h = &e.conditions.headers[i];
            format!(
                "header {} is missing or not {}",
                h.name,
                describe_value(&h.value)
            )
        }
        Failure::Query(i) => {
            let q = &e.conditions.query[i];
            format!(
                "query parameter {} is missing or not {}",
                q.name,
                describe_value(&q.value)
            )
        }
    }
}

fn describe_value(v: &ValueMatch) -> String {
    match v {
        ValueMatch::Exact(s) => format!("{s:?}"),
        ValueMatch::Regex(r) => format!("matching /{}/", r.as_str()),
    }
}

/// The whole table as JSON: sockets, listeners, hosts, and each host's entries in the order
/// they are tried.
pub fn describe(table: &RoutingTable) -> Value {
    let mut binds: Vec<_> = table.binds.iter().collect();
    binds.sort_by_key(|(addr, _)| **addr);
    json!({
        "generation": table.generation,
        "sockets": binds.into_iter().map(|(addr, b)| json!({
            "address": addr.to_string(),
            "tls": b.tls,
            "listeners": b.listeners.iter().map(describe_listener).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

fn describe_listener(l: &ListenerRoutes) -> Value {
    let mut hosts: Vec<(String, &PathIndex)> = l
        .hosts
        .exact
        .iter()
        .map(|(h, p)| (h.clone(), &**p))
        .collect();
    hosts.extend(
        l.hosts
            .wildcard
            .iter()
            .map(|(s, p)| (format!("*{s}"), &**p)),
    );
    hosts.sort_by(|a, b| a.0.cmp(&b.0));
    if let Some(p) = &l.hosts.any {
        hosts.push(("*".to_string(), p));
    }
    let mut out = json!({
        "gateway": &*l.gateway,
        "listener": &*l.name,
        "hostname": l.hostname,
        "port": l.port,
        "scheme": l.scheme,
        "hosts": hosts.into_iter().map(|(h, p)| json!({"host": h, "rules": describe_paths(p)})).collect::<Vec<_>>(),
    });
    // A TLS passthrough listener routes by SNI, in the order tried: most specific first.
    if !l.passthrough.is_empty() {
        out["passthrough"] = l
            .passthrough
            .iter()
            .map(|(sni, rule)| {
                json!({
                    "sni": sni.as_deref().unwrap_or("*"),
                    "route": &*rule.route,
                    "rule": rule.index,
                    "backends": describe_backends(rule),
                })
            })
            .collect();
    }
    out
}

fn describe_paths(p: &PathIndex) -> Vec<Value> {
    if p.grpc {
        // A GRPCRoute's entries are tried in precedence, whatever their kind of path match.
        let mut listed: Vec<(u32, Value)> = Vec::new();
        for (path, entries) in &p.exact {
            listed.extend((entries.iter()).map(|e| (e.order, describe_entry("Exact", path, e))));
        }
        for (path, entries) in &p.prefix {
            listed
                .extend((entries.iter()).map(|e| (e.order, describe_entry("PathPrefix", path, e))));
        }
        for (re, e) in p.regex.iter().chain(&p.grpc_methods) {
            listed.push((e.order, describe_entry("RegularExpression", re.as_str(), e)));
        }
        listed.sort_by_key(|(order, _)| *order);
        return listed.into_iter().map(|(_, v)| v).collect();
    }
    let mut out = Vec::new();
    let mut exact: Vec<_> = p.exact.iter().collect();
    exact.sort_by(|a, b| a.0.cmp(b.0));
    for (path, entries) in exact {
        out.extend(entries.iter().map(|e| describe_entry("Exact", path, e)));
    }
    out.extend(
        p.regex
            .iter()
            .map(|(re, e)| describe_entry("RegularExpression", re.as_str(), e)),
    );
    let mut prefixes: Vec<_> = p.prefix.iter().collect();
    prefixes.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(b.0)));
    for (path, entries) in prefixes {
        out.extend(
            entries
                .iter()
                .map(|e| describe_entry("PathPrefix", path, e)),
        );
    }
    out
}

/// A header or query condition as the route writes it: name, match type and value, the value
/// unquoted (a regular expression as the route wrote it, without the anchors it is run with).
fn value_json(name: &str, value: &ValueMatch) -> Value {
    match value {
        ValueMatch::Exact(v) => json!({"name": name, "type": "Exact", "value": v}),
        ValueMatch::Regex(r) => {
            let written = r.as_str();
            let written = written
                .strip_prefix("^(?:")
                .and_then(|w| w.strip_suffix(")$"))
                .unwrap_or(written);
            json!({"name": name, "type": "RegularExpression", "value": written})
        }
    }
}

fn describe_entry(kind: &str, path: &str, e: &Entry) -> Value {
    let c = &e.conditions;
    json!({
        "route": &*e.rule.route,
        "rule": e.rule.index,
        "name": e.rule.name,
        "path": {"type": kind, "value": path},
        "method": c.method,
        "headers": c.headers.iter().map(|h| value_json(&h.name, &h.value)).collect::<Vec<_>>(),
        "queryParams": c.query.iter().map(|q| value_json(&q.name, &q.value)).collect::<Vec<_>>(),
        "filters": e.rule.filters.iter().map(filter_name).collect::<Vec<_>>(),
        "backends": describe_backends(&e.rule),
    })
}

fn describe_backends(rule: &super::table::Rule) -> Vec<Value> {
    rule.backends
        .iter()
        .map(|b| match b.target.as_ref() {
            Backend::Service(s) => json!({
                "service": &*s.name,
                "weight": b.weight,
                "endpoints": s.endpoints.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            }),
            Backend::Invalid { reason } => json!({"invalid": reason, "weight": b.weight}),
        })
        .collect()
}

fn filter_name(f: &Filter) -> &'static str {
    match f {
        Filter::RequestHeaders(_) => "RequestHeaderModifier",
        Filter::ResponseHeaders(_) => "ResponseHeaderModifier",
        Filter::Redirect(_) => "RequestRedirect",
        Filter::Rewrite(_) => "URLRewrite",
        Filter::Mirror(_) => "RequestMirror",
        Filter::Cors(_) => "CORS",
    }
}

/// A request to explain, as the admin endpoint and the CLI take it.
#[derive(Debug, Default, Clone)]
pub struct Question {
    /// `namespace/gateway/listener`.
    pub listener: String,
    /// Host header.
    pub host: String,
    /// Path, optionally with `?query`.
    pub path: String,
    /// Method; GET when empty.
    pub method: String,
    /// Headers as (name, value).
    pub headers: Vec<(String, String)>,
}

impl Question {
    /// Reads `listener`, `host`, `path`, `method` and repeated `header=name:value` from a URL
    /// query string; an error says which parameter is malformed.
    pub fn from_query(query: &str) -> Result<Question, String> {
        let mut q = Question::default();
        let mut given = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let decode = |s| crate::routing::table::form_decode(s).into_owned();
            let (k, v) = (decode(k), decode(v));
            // Of two values for one field, either could be the question meant.
            if k != "header" && given.contains(&k) {
                return Err(format!(
                    "parameter {k:?} is given twice: ask one question at a time"
                ));
            }
            given.push(k.clone());
            match k.as_str() {
                "listener" => q.listener = v,
                "host" => q.host = v,
                "path" => q.path = v,
                "method" => q.method = v,
                "header" => q.headers.push(parse_header(&v)?),
                // A misspelt parameter would otherwise be a question about something else.
                other => {
                    return Err(format!(
                        "unknown parameter {other:?}: ask with listener, host, path, method \
                         and header"
                    ))
                }
            }
        }
        q.check()?;
        if q.listener.is_empty() {
            return Err(
                "name the listener: listener=namespace/gateway/listener (see /debug/routes)"
                    .to_string(),
            );
        }
        Ok(q)
    }

    /// Refuses what no request could carry: a path that does not start with `/`.
    pub fn check(&self) -> Result<(), String> {
        if !self.path.is_empty() && !self.path.starts_with('/') {
            return Err(format!(
                "path {:?} must start with / (as in /api/users?id=1)",
                self.path
            ));
        }
        // What the proxy answers 400 before any route is looked at is no question of routing.
        if !super::table::valid_host(&self.host) {
            return Err(format!(
                "host {:?} is no host name or address with a port: the gateway answers such a \
                 request 400",
                self.host
            ));
        }
        if http::Method::from_bytes(self.method.as_bytes()).is_err() && !self.method.is_empty() {
            return Err(format!("method {:?} is not an HTTP method", self.method));
        }
        if self.method == "CONNECT" {
            return Err(
                "the gateway answers CONNECT 405 before routing: it tunnels no connections"
                    .to_string(),
            );
        }
        if super::table::refused_method(&self.method) {
            return Err(format!(
                "method {:?} has a lower-case letter: the gateway answers such a request 400 \
                 (methods are case-sensitive; ask with {:?})",
                self.method,
                self.method.to_ascii_uppercase()
            ));
        }
        for (name, value) in &self.headers {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err()
                || http::HeaderValue::from_str(value).is_err()
            {
                return Err(format!(
                    "header {name:?}: {value:?} is not one a request can carry"
                ));
            }
        }
        Ok(())
    }

    /// Explains the question against `table`.
    /// The answer from `table`; when the listener is not in it, `report` (the same compile's
    /// conditions) says why.
    pub fn answer(&self, table: &RoutingTable, report: &StatusReport) -> Explanation {
        let (path, query) = match self.path.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (self.path.as_str(), None),
        };
        let path = if path.is_empty() { "/" } else { path };
        // As the proxy does: the path is put in its normal form before anything is matched.
        let resolved = super::table::normalize_path(path);
        let path = resolved.as_deref().unwrap_or(path);
        // As written: methods are case-sensitive, and the proxy matches them exactly (and
        // refuses one with a lower-case letter: see `check`).
        let method = if self.method.is_empty() {
            "GET".to_string()
        } else {
            self.method.clone()
        };
        let header = |name: &str| -> Vec<&str> {
            self.headers
                .iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
                .collect()
        };
        let view = RequestView {
            host: &self.host,
            path,
            query,
            method: &method,
            header: &header,
        };
        let mut answer = explain(table, &self.listener, &view);
        if answer.listener_unknown {
            answer.steps.push(why_not_served(report, &self.listener));
        }
        // As the proxy answers a gRPC call: its own errors as gRPC statuses (a redirect or
        // preflight, which a GRPCRoute has none of, stays as it is).
        let grpc = (header("content-type").first())
            .is_some_and(|v| super::table::is_grpc_content_type(v.as_bytes()));
        if let Some(status) = answer.status.filter(|&s| grpc && s >= 400) {
            let (code, message) = super::table::gateway_grpc_status(status);
            answer.grpc_status = code.parse().ok();
            answer.steps.push(format!(
                "a gRPC call: answered as HTTP 200 with grpc-status {code} ({message}) in place \
                 of {status}"
            ));
        }
        if resolved.is_some() {
            answer.steps.insert(
                0,
                format!(
                    "path normalized to {path} (encoded letters decoded, dot segments removed)"
                ),
            );
        }
        answer
    }
}

/// A `name:value` header as the question gives it, the name lower-cased.
pub fn parse_header(text: &str) -> Result<(String, String), String> {
    match text.split_once(':') {
        Some((name, value)) if !name.trim().is_empty() => {
            Ok((name.trim().to_ascii_lowercase(), value.trim().to_string()))
        }
        _ => Err(format!("header {text:?} must be name:value")),
    }
}

#[cfg(test)]
mod tests {
    use super::Question;

    #[test]
    fn malformed_questions_are_refused_with_the_parameter_named() {
        let q = Question::from_query("listener=a/b/c&path=%2Fx&header=X-A:%201").unwrap();
        assert_eq!(q.path, "/x");
        assert_eq!(q.headers, [("x-a".to_string(), "1".to_string())]);
        let err = Question::from_query("header=x-canary").unwrap_err();
        assert!(err.contains("\"x-canary\" must be name:value"), "{err}");
        let err = Question::from_query("path=api").unwrap_err();
        assert!(err.contains("must start with /"), "{err}");
        // No listener, no question; a parameter's name is decoded as its value is.
        let err = Question::from_query("host=a").unwrap_err();
        assert!(err.contains("name the listener"), "{err}");
        let err = Question::from_query("listener=a/b/c&path=/x&path=/y").unwrap_err();
        assert!(err.contains("\"path\" is given twice"), "{err}");
        let q = Question::from_query("listener=a/b/c&header=a:1&header=b:2").unwrap();
        assert_eq!(q.headers.len(), 2);
        let q = Question::from_query("%6Cistener=a/b/c").unwrap();
        assert_eq!(q.listener, "a/b/c");
        // What the proxy answers 400 before routing is said so, not explained as routed.
        for (query, says) in [
            (
                "host=a.example:99999",
                "the gateway answers such a request 400",
            ),
            ("host=[.]", "the gateway answers such a request 400"),
            ("method=G%20E%20T", "is not an HTTP method"),
            ("method=delete", "ask with \"DELETE\""),
            ("method=CONNECT", "405 before routing"),
            ("header=bad%20header:1", "is not one a request can carry"),
        ] {
            let err = Question::from_query(&format!("listener=a/b/c&{query}")).unwrap_err();
            assert!(err.contains(says), "{query}: {err}");
        }
    }
}
