//! Judging: one HTTP reply against a case's `expect`, and one `/status` report against a status
//! expectation, each the way the README says upstream compares them.
//!
//! HTTP: the status must be one of the accepted ones (408 and 504 interchangeable); a redirect
//! is judged only by its Location; any status other than 200/204 only by the status; a 200/204
//! by the echoed request, the answering backend and the reply headers. Every failure message says
//! what was wanted and what came back.

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

use crate::cases::{Condition, Expect, Redirect, StatusExpectation};
use crate::client::HttpReply;
use crate::gateway::{StatusObject, StatusReport};
use crate::manifests::{self, CONTROLLER_NAME, USABLE_ADDRESS};

/// The group every route parentRef must spell out.
const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

/// What an echo backend reported about the request it received.
#[derive(Debug, Clone)]
pub(crate) struct Echoed {
    pub(crate) service: String,
    pub(crate) namespace: String,
    path: String,
    host: String,
    method: String,
    /// Lowercase header name -> every value, in order.
    headers: BTreeMap<String, Vec<String>>,
}

impl Echoed {
    /// Reads an echo's JSON reply; `None` if the body is not one.
    pub(crate) fn parse(body: &[u8]) -> Option<Echoed> {
        let v: Value = serde_json::from_slice(body).ok()?;
        let text = |k: &str| v[k].as_str().map(str::to_string);
        let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (name, values) in v["headers"].as_object().into_iter().flatten() {
            let entry = headers.entry(name.to_ascii_lowercase()).or_default();
            for value in values.as_array().into_iter().flatten() {
                entry.push(value.as_str().unwrap_or_default().to_string());
            }
        }
        Some(Echoed {
            service: text("service")?,
            namespace: text("namespace").unwrap_or_default(),
            path: text("path").unwrap_or_default(),
            host: text("host").unwrap_or_default(),
            method: text("method").unwrap_or_default(),
            headers,
        })
    }

    /// A header's values joined with `,` (no space), as upstream compares them.
    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(|v| v.join(","))
    }
}

/// The statuses that pass for `expect`.
pub(crate) fn accepted_statuses(expect: &Expect) -> Vec<u16> {
    let mut want = if expect.accept_statuses.is_empty() {
        vec![expect.status.unwrap_or(200)]
    } else {
        expect.accept_statuses.clone()
    };
    if want.contains(&408) || want.contains(&504) {
        want.extend([408, 504]);
    }
    want.sort_unstable();
    want.dedup();
    want
}

/// Judges one HTTP reply. `seen_path` is the path+query the echo must have received (the
/// case's `request_seen.path` after uuid and request-id substitution). Returns what the echo
/// reported when a backend answered with 200/204.
pub(crate) fn judge_http(
    expect: &Expect,
    seen_path: Option<&str>,
    reply: &HttpReply,
) -> Result<Option<Echoed>, String> {
    let want = accepted_statuses(expect);
    if !want.contains(&reply.status) {
        return Err(format!(
            "status {}, want {}; body: {:?}",
            reply.status,
            join(&want),
            reply.body_excerpt()
        ));
    }
    if (300..400).contains(&reply.status) {
        if let Some(redirect) = &expect.redirect {
            judge_redirect(redirect, reply)?;
            return Ok(None);
        }
    }
    if reply.status != 200 && reply.status != 204 {
        return Ok(None);
    }
    judge_response_headers(expect, reply)?;
    let echoed = Echoed::parse(&reply.body);
    if expect.answered_by_gateway {
        if let Some(e) = echoed {
            return Err(format!(
                "the request reached backend {} (path {:?}); the gateway must answer it itself",
                e.service, e.path
            ));
        }
        return Ok(None);
    }
    let Some(echoed) = echoed else {
        return Err(format!(
            "status {} but the reply is not from an echo backend: {:?}",
            reply.status,
            reply.body_excerpt()
        ));
    };
    if let Some(backend) = &expect.backend {
        if &echoed.service != backend {
            return Err(format!("answered by {}, want {backend}", echoed.service));
        }
    }
    if !expect.backend_any_of.is_empty() && !expect.backend_any_of.contains(&echoed.service) {
        return Err(format!(
            "answered by {}, want one of {}",
            echoed.service,
            expect.backend_any_of.join(", ")
        ));
    }
    if let Some(ns) = &expect.namespace {
        if &echoed.namespace != ns {
            return Err(format!(
                "answered from namespace {}, want {ns}",
                echoed.namespace
            ));
        }
    }
    if let Some(seen) = &expect.request_seen {
        if let Some(path) = seen_path.or(seen.path.as_deref()) {
            if echoed.path != path {
                return Err(format!("backend saw path {:?}, want {path:?}", echoed.path));
            }
        }
        if let Some(method) = &seen.method {
            if &echoed.method != method {
                return Err(format!(
                    "backend saw method {}, want {method}",
                    echoed.method
                ));
            }
        }
        if let Some(host) = &seen.host {
            if &echoed.host != host {
                return Err(format!("backend saw host {:?}, want {host:?}", echoed.host));
            }
        }
        for (name, value) in &seen.headers {
            match echoed.header(name) {
                Some(got) if &got == value => {}
                Some(got) => {
                    return Err(format!(
                        "backend saw header {name}: {got:?}, want {value:?}"
                    ))
                }
                None => return Err(format!("backend did not see header {name}, want {value:?}")),
            }
        }
        for name in &seen.absent_headers {
            if let Some(got) = echoed.header(name) {
                return Err(format!(
                    "backend saw header {name}: {got:?}, which must have been removed"
                ));
            }
        }
    }
    if let Some(name) = &expect.seen_header_single_value {
        let values = echoed
            .headers
            .get(&name.to_ascii_lowercase())
            .cloned()
            .unwrap_or_default();
        if values.len() != 1 {
            return Err(format!(
                "backend saw header {name} {} times ({values:?}), want exactly once",
                values.len()
            ));
        }
    }
    if let Some(name) = &expect.backend_matches_seen_header {
        let got = echoed.header(name).unwrap_or_default();
        if got != echoed.service {
            return Err(format!(
                "backend {} saw header {name}: {got:?}, want its own name",
                echoed.service
            ));
        }
    }
    Ok(Some(echoed))
}

fn judge_response_headers(expect: &Expect, reply: &HttpReply) -> Result<(), String> {
    let strip = |s: &str| {
        if expect.ignore_whitespace_in_response_headers {
            s.replace(' ', "")
        } else {
            s.to_string()
        }
    };
    let got = |name: &str| {
        let values = reply.header_values(name);
        (!values.is_empty()).then(|| strip(&values.join(",")))
    };
    for (name, want) in &expect.response_headers {
        match got(name) {
            Some(v) if v == strip(want) => {}
            other => return Err(format!("reply header {name}: {other:?}, want {want:?}")),
        }
    }
    for (name, options) in &expect.response_header_one_of {
        let value = got(name);
        if !options
            .iter()
            .any(|o| value.as_deref() == Some(strip(o).as_str()))
        {
            return Err(format!(
                "reply header {name}: {value:?}, want one of {options:?}"
            ));
        }
    }
    for name in &expect.absent_response_headers {
        if let Some(v) = got(name) {
            return Err(format!("reply header {name}: {v:?}, want it absent"));
        }
    }
    Ok(())
}

/// A Location header split the way Go's url package splits it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Location {
    pub(crate) scheme: String,
    pub(crate) host: String,
    pub(crate) port: Option<u16>,
    pub(crate) path: String,
}

/// Splits a Location value; a relative one has an empty scheme and host.
pub(crate) fn parse_location(location: &str) -> Result<Location, String> {
    let before_fragment = location.split('#').next().unwrap_or_default();
    let (scheme, rest) = match before_fragment.split_once("://") {
        Some((s, r)) if !s.contains('/') => (s.to_ascii_lowercase(), r),
        _ => (String::new(), before_fragment),
    };
    let (authority, path_and_query) = if scheme.is_empty() {
        ("", rest)
    } else {
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        (&rest[..end], &rest[end..])
    };
    let path = path_and_query
        .split('?')
        .next()
        .unwrap_or_default()
        .to_string();
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (h, after) = bracketed
            .split_once(']')
            .ok_or_else(|| format!("bad Location {location:?}"))?;
        (h.to_string(), after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (authority.to_string(), None),
        }
    };
    let port = match port {
        Some("") | None => None,
        Some(p) => Some(
            p.parse::<u16>()
                .map_err(|_| format!("bad port in Location {location:?}"))?,
        ),
    };
    Ok(Location {
        scheme,
        host,
        port,
        path,
    })
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    }
}

fn judge_redirect(want: &Redirect, reply: &HttpReply) -> Result<(), String> {
    let values = reply.header_values("location");
    let Some(location) = values.first() else {
        return Err(format!("redirect {} without a Location", reply.status));
    };
    let got = parse_location(location)?;
    if let Some(status) = want.status {
        if reply.status != status {
            return Err(format!("redirect status {}, want {status}", reply.status));
        }
    }
    if let Some(scheme) = &want.scheme {
        if &got.scheme != scheme {
            return Err(format!(
                "redirect scheme {:?} in Location {location:?}, want {scheme:?}",
                got.scheme
            ));
        }
    }
    if let Some(host) = &want.host {
        if !got.host.eq_ignore_ascii_case(host) {
            return Err(format!(
                "redirect host {:?} in Location {location:?}, want {host:?}",
                got.host
            ));
        }
    }
    let default = default_port(&got.scheme);
    match &want.port {
        // Absent: the Location carries no port, or its scheme's default one.
        None => {
            if got.port.is_some() && got.port != default {
                return Err(format!(
                    "redirect port {:?} in Location {location:?}, want none",
                    got.port
                ));
            }
        }
        Some(port) => {
            let want_port = match port {
                Value::String(s) => s.parse::<u16>().ok(),
                Value::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
                _ => None,
            }
            .ok_or_else(|| format!("cannot read the expected redirect port {port}"))?;
            if got.port.or(default) != Some(want_port) {
                return Err(format!(
                    "redirect port {:?} in Location {location:?}, want {want_port}",
                    got.port
                ));
            }
        }
    }
    if let Some(path) = &want.path {
        if &got.path != path {
            return Err(format!(
                "redirect path {:?} in Location {location:?}, want {path:?}",
                got.path
            ));
        }
    }
    Ok(())
}

fn join(statuses: &[u16]) -> String {
    statuses
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(" or ")
}

// ---------------------------------------------------------------------------------------------
// Status

/// `(kind, namespace, name)` -> `metadata.generation`, taken before a step.
pub(crate) type Generations = HashMap<(String, String, String), i64>;

/// The generation of every object in a report.
pub(crate) fn generations(report: &StatusReport) -> Generations {
    report
        .objects
        .iter()
        .map(|o| {
            (
                (o.kind.clone(), o.namespace.clone(), o.name.clone()),
                o.generation,
            )
        })
        .collect()
}

/// Everything that does not hold yet for one status expectation (empty when it holds).
/// `docs` are the objects the gateway was given (for namespace readiness); `before` the
/// generations before the current step.
pub(crate) fn status_problems(
    report: &StatusReport,
    e: &StatusExpectation,
    docs: &[Value],
    before: Option<&Generations>,
) -> Vec<String> {
    let ns = e.namespace.as_deref();
    let what = format!("{} {}/{}", e.kind, ns.unwrap_or(""), e.name);
    let mut out = Vec::new();
    if !e.extra.is_empty() {
        let keys: Vec<&String> = e.extra.keys().collect();
        out.push(format!("{what}: this runner cannot check {keys:?}"));
        return out;
    }
    if e.kind == "Namespace" {
        if e.namespace_ready {
            out.extend(namespace_not_ready(report, &e.name, docs));
        }
        return out;
    }
    let Some(o) = report.find(&e.kind, ns, &e.name) else {
        // A route the gateway writes no status for has no accepted parents either.
        if !e.no_accepted_parents {
            out.push(format!("{what} is not in the status report"));
        }
        return out;
    };
    let st = &o.status;
    if let Some(parent) = &e.parent {
        out.extend(parent_problems(o, parent, &e.conditions, &what));
    } else if e.listeners.is_none() {
        if let Some(p) = missing_conditions(&st["conditions"], &e.conditions) {
            out.push(format!("{what}: {p}"));
        }
    }
    let listeners: Vec<&Value> = st["listeners"].as_array().into_iter().flatten().collect();
    let listener = |name: &str| {
        listeners
            .iter()
            .find(|l| l["name"].as_str() == Some(name))
            .copied()
    };
    if e.listeners.as_deref() == Some("*") {
        for l in &listeners {
            if let Some(p) = missing_conditions(&l["conditions"], &e.conditions) {
                out.push(format!("{what} listener {}: {p}", l["name"]));
            }
        }
    }
    if let Some(name) = &e.listener {
        match listener(name) {
            None => out.push(format!("{what}: no listener {name} in status")),
            Some(l) => {
                if let Some(p) = missing_conditions(&l["conditions"], &e.listener_conditions) {
                    out.push(format!("{what} listener {name}: {p}"));
                }
            }
        }
    }
    if let Some(count) = e.exact_listener_count {
        if listeners.len() != count {
            out.push(format!(
                "{what}: {} listeners in status, want {count}",
                listeners.len()
            ));
        }
    }
    for want in &e.listener_status {
        let Some(l) = listener(&want.name) else {
            out.push(format!("{what}: no listener {} in status", want.name));
            continue;
        };
        if let Some(n) = want.attached_routes {
            if l["attachedRoutes"].as_i64() != Some(n) {
                out.push(format!(
                    "{what} listener {}: attachedRoutes {}, want {n}",
                    want.name, l["attachedRoutes"]
                ));
            }
        }
        if let Some(p) = missing_conditions(&l["conditions"], &want.conditions) {
            out.push(format!("{what} listener {}: {p}", want.name));
        }
        if let Some(kinds) = &want.supported_kinds {
            let got: Vec<&str> = l["supportedKinds"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|k| k["kind"].as_str())
                .collect();
            if kinds.is_empty() && !got.is_empty() {
                out.push(format!(
                    "{what} listener {}: supportedKinds {got:?}, want none",
                    want.name
                ));
            }
            for k in kinds {
                if !got.contains(&k.as_str()) {
                    out.push(format!(
                        "{what} listener {}: supportedKinds {got:?} lacks {k}",
                        want.name
                    ));
                }
            }
        }
    }
    let addresses: Vec<&Value> = st["addresses"].as_array().into_iter().flatten().collect();
    if e.requires_address
        && !addresses
            .iter()
            .any(|a| a["type"].as_str().is_some_and(|t| !t.is_empty()))
    {
        out.push(format!("{what}: no status.addresses entry with a type"));
    }
    if e.status_addresses.is_some() {
        let only_usable = addresses.len() == 1
            && addresses[0]["type"] == "IPAddress"
            && addresses[0]["value"] == USABLE_ADDRESS;
        if !only_usable {
            out.push(format!(
                "{what}: status.addresses {}, want exactly [IPAddress {USABLE_ADDRESS}]",
                st["addresses"]
            ));
        }
    }
    if e.no_accepted_parents {
        let parents: Vec<&Value> = st["parents"].as_array().into_iter().flatten().collect();
        let ok = parents.is_empty()
            || (parents.len() == 1
                && has_condition(&parents[0]["conditions"], "Accepted", "False"));
        if !ok {
            out.push(format!(
                "{what}: has accepted parents {}",
                summarize_parents(&parents, "parentRef")
            ));
        }
    }
    if e.zero_attached_routes {
        let ok = listeners.is_empty()
            || (listeners.len() == 1 && listeners[0]["attachedRoutes"].as_i64() == Some(0));
        if !ok {
            let counts: Vec<String> = listeners
                .iter()
                .map(|l| format!("{}={}", l["name"], l["attachedRoutes"]))
                .collect();
            out.push(format!(
                "{what}: attachedRoutes {}, want zero routes",
                counts.join(" ")
            ));
        }
    }
    if e.conditions_have_latest_observed_generation {
        let mut lists = vec![&st["conditions"]];
        let parents = st["parents"].as_array().into_iter().flatten();
        for p in parents.chain(st["ancestors"].as_array().into_iter().flatten()) {
            lists.push(&p["conditions"]);
        }
        for list in lists {
            for c in list.as_array().into_iter().flatten() {
                if c["observedGeneration"].as_i64() != Some(o.generation) {
                    out.push(format!(
                        "{what}: condition {} has observedGeneration {}, generation is {}",
                        c["type"], c["observedGeneration"], o.generation
                    ));
                }
            }
        }
    }
    if e.generation_changed {
        let key = (o.kind.clone(), o.namespace.clone(), o.name.clone());
        match before.and_then(|b| b.get(&key)) {
            None => out.push(format!("{what}: its generation before the step is unknown")),
            Some(g) if *g == o.generation => {
                out.push(format!("{what}: generation is still {g} after the step"))
            }
            Some(_) => {}
        }
    }
    if e.namespace_ready {
        out.extend(namespace_not_ready(report, ns.unwrap_or("default"), docs));
    }
    out
}

/// Checks a route's `status.parents` entry for the Gateway `parent` (`namespace/name`); for a
/// policy (BackendTLSPolicy), which reports `status.ancestors` with `ancestorRef`, that entry.
fn parent_problems(o: &StatusObject, parent: &str, want: &[Condition], what: &str) -> Vec<String> {
    let mut out = Vec::new();
    let (pns, pname) = parent.split_once('/').unwrap_or(("default", parent));
    let (entries, ref_key) = match o.status["parents"].as_array() {
        Some(parents) => (parents.iter().collect::<Vec<_>>(), "parentRef"),
        None => (
            o.status["ancestors"]
                .as_array()
                .into_iter()
                .flatten()
                .collect(),
            "ancestorRef",
        ),
    };
    let parents = entries;
    let matching: Vec<&Value> = parents
        .iter()
        .filter(|p| {
            let r = &p[ref_key];
            r["name"].as_str() == Some(pname)
                && r["namespace"].as_str().unwrap_or(&o.namespace) == pns
        })
        .copied()
        .collect();
    if matching.is_empty() {
        out.push(format!(
            "{what}: no status entry for Gateway {parent}; parents: {}",
            summarize_parents(&parents, ref_key)
        ));
        return out;
    }
    for p in &matching {
        let r = &p[ref_key];
        if r["group"].as_str() != Some(GATEWAY_GROUP) || r["kind"].as_str() != Some("Gateway") {
            out.push(format!(
                "{what}: {ref_key} for {parent} must spell out group {GATEWAY_GROUP} and kind \
                 Gateway, got group {} kind {}",
                r["group"], r["kind"]
            ));
        }
        if r["namespace"].is_null() && o.namespace != pns {
            out.push(format!(
                "{what}: {ref_key} for {parent} omits the namespace of a Gateway in another namespace"
            ));
        }
        if p["controllerName"].as_str() != Some(CONTROLLER_NAME) {
            out.push(format!(
                "{what}: parent {parent} has controllerName {}, want {CONTROLLER_NAME}",
                p["controllerName"]
            ));
        }
        for c in p["conditions"].as_array().into_iter().flatten() {
            if c["observedGeneration"].as_i64() != Some(o.generation) {
                out.push(format!(
                    "{what}: parent {parent} condition {} has observedGeneration {}, route \
                     generation is {}",
                    c["type"], c["observedGeneration"], o.generation
                ));
            }
        }
    }
    for w in want {
        if !matching
            .iter()
            .any(|p| missing_conditions(&p["conditions"], std::slice::from_ref(w)).is_none())
        {
            let got = matching
                .iter()
                .map(|p| summarize_conditions(&p["conditions"]))
                .collect::<Vec<_>>()
                .join("; ");
            out.push(format!(
                "{what} parent {parent}: want {}, got {got}",
                describe_condition(w)
            ));
        }
    }
    out
}

/// The first wanted condition missing from `conditions`, described with what is there.
fn missing_conditions(conditions: &Value, want: &[Condition]) -> Option<String> {
    let list: Vec<&Value> = conditions.as_array().into_iter().flatten().collect();
    for w in want {
        let found = list.iter().any(|c| {
            c["type"].as_str() == Some(w.type_.as_str())
                && matches_if_set(&c["status"], w.status.as_deref())
                && matches_if_set(&c["reason"], w.reason.as_deref())
        });
        if !found {
            return Some(format!(
                "want {}, got {}",
                describe_condition(w),
                summarize_conditions(conditions)
            ));
        }
    }
    None
}

fn matches_if_set(got: &Value, want: Option<&str>) -> bool {
    match want {
        None | Some("") => true,
        Some(w) => got.as_str() == Some(w),
    }
}

fn has_condition(conditions: &Value, type_: &str, status: &str) -> bool {
    conditions
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == type_ && c["status"] == status)
}

fn describe_condition(c: &Condition) -> String {
    format!(
        "{}={}{}",
        c.type_,
        c.status.as_deref().filter(|s| !s.is_empty()).unwrap_or("*"),
        c.reason
            .as_deref()
            .filter(|s| !s.is_empty())
            .map(|r| format!(" ({r})"))
            .unwrap_or_default()
    )
}

fn summarize_conditions(conditions: &Value) -> String {
    let parts: Vec<String> = conditions
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            format!(
                "{}={} ({})",
                c["type"].as_str().unwrap_or("?"),
                c["status"].as_str().unwrap_or("?"),
                c["reason"].as_str().unwrap_or("")
            )
        })
        .collect();
    if parts.is_empty() {
        "no conditions".to_string()
    } else {
        parts.join(", ")
    }
}

fn summarize_parents(parents: &[&Value], ref_key: &str) -> String {
    if parents.is_empty() {
        return "none".to_string();
    }
    parents
        .iter()
        .map(|p| {
            format!(
                "{}/{}: {}",
                p[ref_key]["namespace"].as_str().unwrap_or("-"),
                p[ref_key]["name"].as_str().unwrap_or("?"),
                summarize_conditions(&p["conditions"])
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Gateways of `namespace` (as configured) that are not Accepted and Programmed at their
/// current generation, skipping those annotated `gateway-api/skip-this-for-readiness: "true"`.
fn namespace_not_ready(report: &StatusReport, namespace: &str, docs: &[Value]) -> Vec<String> {
    let mut out = Vec::new();
    for d in docs.iter().filter(|d| {
        manifests::kind(d) == "Gateway" && manifests::namespace(d).unwrap_or("default") == namespace
    }) {
        if d["metadata"]["annotations"]["gateway-api/skip-this-for-readiness"] == "true" {
            continue;
        }
        let name = d["metadata"]["name"].as_str().unwrap_or_default();
        let Some(g) = report.find("Gateway", Some(namespace), name) else {
            out.push(format!(
                "namespace {namespace}: Gateway {name} has no status"
            ));
            continue;
        };
        for t in ["Accepted", "Programmed"] {
            let ok = g.status["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| {
                    c["type"] == t
                        && c["status"] == "True"
                        && c["observedGeneration"].as_i64() == Some(g.generation)
                });
            if !ok {
                out.push(format!(
                    "namespace {namespace} not ready: Gateway {name} is not {t}=True at generation \
                     {}: {}",
                    g.generation,
                    summarize_conditions(&g.status["conditions"])
                ));
            }
        }
    }
    out
}

/// Self-checks run by `selfcheck`.
pub(crate) fn self_check() -> Result<(), String> {
    let l = parse_location("https://example.org:8443/path?x=1")?;
    let want = Location {
        scheme: "https".into(),
        host: "example.org".into(),
        port: Some(8443),
        path: "/path".into(),
    };
    if l != want {
        return Err(format!("parse_location: {l:?}"));
    }
    let l = parse_location("/relative?q")?;
    if !l.scheme.is_empty() || !l.host.is_empty() || l.port.is_some() || l.path != "/relative" {
        return Err(format!("parse_location relative: {l:?}"));
    }
    let l = parse_location("http://[::1]:8080")?;
    if l.host != "::1" || l.port != Some(8080) || !l.path.is_empty() {
        return Err(format!("parse_location IPv6: {l:?}"));
    }
    let expect = Expect {
        status: Some(504),
        ..Expect::default()
    };
    if accepted_statuses(&expect) != vec![408, 504] {
        return Err("408 and 504 must be interchangeable".into());
    }
    let reply = |status: u16, headers: &[(&str, &str)], body: &str| HttpReply {
        status,
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        body: bytes::Bytes::from(body.to_string()),
    };
    // Any status other than 200/204 and redirects: only the status counts.
    let expect = Expect {
        status: Some(404),
        backend: Some("infra-backend-v1".into()),
        ..Expect::default()
    };
    judge_http(&expect, None, &reply(404, &[], "not found"))?;
    if judge_http(&expect, None, &reply(200, &[], "{}")).is_ok() {
        return Err("a 200 passed where 404 was wanted".into());
    }
    // A redirect with no port wanted may carry the scheme's default one.
    let expect: Expect = serde_json::from_value(serde_json::json!({
        "status": 302,
        "redirect": {"status": 302, "scheme": "http", "host": "example.org", "path": "/p"}
    }))
    .map_err(|e| e.to_string())?;
    judge_http(
        &expect,
        None,
        &reply(302, &[("location", "http://example.org:80/p")], ""),
    )?;
    if judge_http(
        &expect,
        None,
        &reply(302, &[("location", "http://example.org:8080/p")], ""),
    )
    .is_ok()
    {
        return Err("a redirect with an unwanted port passed".into());
    }
    // A 200 judged on the echo: header values joined with ',' and names case-insensitive.
    let expect: Expect = serde_json::from_value(serde_json::json!({
        "status": 200, "backend": "b", "namespace": "n",
        "request_seen": {"path": "/x?y=1", "method": "GET",
                          "headers": {"x-multi": "a,b"}, "absent_headers": ["X-Gone"]},
        "response_headers": {"X-Reply": "1,2"}
    }))
    .map_err(|e| e.to_string())?;
    let body = r#"{"path":"/x?y=1","host":"h","method":"GET","proto":"HTTP/1.1",
        "headers":{"X-Multi":["a","b"]},"namespace":"n","service":"b","pod":"b-0"}"#;
    judge_http(
        &expect,
        None,
        &reply(200, &[("x-reply", "1"), ("X-Reply", "2")], body),
    )?;
    if judge_http(
        &expect,
        Some("/other"),
        &reply(200, &[("x-reply", "1,2")], body),
    )
    .is_ok()
    {
        return Err("a wrong seen path passed".into());
    }
    Ok(())
}
