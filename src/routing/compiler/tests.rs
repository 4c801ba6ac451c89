//! Compiler tests: objects in, table and conditions out.

use super::*;
use crate::controller::{directory::parse_manifests, Kind, Snapshot};
use crate::routing::table::{Backend, RequestView, RetryPolicy};

fn snapshot(yaml: &str) -> Snapshot {
    let (objects, errors) = parse_manifests(yaml).expect("test YAML parses");
    assert!(errors.is_empty(), "{errors:?}");
    Snapshot::from_objects(objects)
}

const BASE: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: portcullis}
spec: {controllerName: portcullis.dev/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: infra}
spec:
  gatewayClassName: portcullis
  listeners:
  - {name: http, port: 80, protocol: HTTP}
---
apiVersion: v1
kind: Service
metadata: {name: svc, namespace: infra}
spec: {ports: [{name: http, port: 8080}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: svc-1, namespace: infra, labels: {kubernetes.io/service-name: svc}}
addressType: IPv4
endpoints: [{addresses: [127.0.0.9]}]
ports: [{name: http, port: 9999}]
"#;

fn lookup_route(c: &Compiled, host: &str, path: &str, headers: &[(&str, &str)]) -> Option<String> {
    let header = |name: &str| -> Vec<&str> {
        headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
            .collect()
    };
    let (path, query) = path
        .split_once('?')
        .map_or((path, None), |(p, q)| (p, Some(q)));
    let view = RequestView {
        host,
        path,
        query,
        method: "GET",
        header: &header,
    };
    let bind = "127.0.0.1:80".parse().unwrap();
    c.table
        .lookup(&bind, &view)
        .ok()
        .map(|m| format!("{}#{}", m.entry.rule.route, m.entry.rule.index))
}

/// The condition of `type_` in a `conditions` list.
fn condition<'a>(conditions: &'a serde_json::Value, type_: &str) -> &'a serde_json::Value {
    conditions
        .as_array()
        .expect("a conditions list")
        .iter()
        .find(|c| c["type"] == type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {conditions}"))
}

/// What `explain` says of a GET for `path` on host a.example through BASE's listener.
fn explain_get(c: &Compiled, path: &str) -> crate::routing::explain::Explanation {
    crate::routing::explain::Question {
        listener: "infra/gw/http".to_string(),
        host: "a.example".to_string(),
        path: path.to_string(),
        method: "GET".to_string(),
        headers: Vec::new(),
    }
    .answer(&c.table, &c.report)
}

fn route(name: &str, body: &str) -> String {
    format!(
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: infra}}\nspec:\n  parentRefs: [{{name: gw}}]\n{body}"
    )
}

#[test]
fn longest_path_prefix_wins_and_exact_beats_prefix() {
    let yaml = format!(
        "{BASE}{}{}",
        route("a", "  rules:\n  - matches: [{path: {type: PathPrefix, value: /}}]\n    backendRefs: [{name: svc, port: 8080}]\n"),
        route("b", "  rules:\n  - matches: [{path: {type: PathPrefix, value: /v1/}}]\n    backendRefs: [{name: svc, port: 8080}]\n  - matches: [{path: {type: Exact, value: /v1/x}}]\n    backendRefs: [{name: svc, port: 8080}]\n"),
    );
    let c = compile(&snapshot(&yaml), &CompileOptions::default());
    assert_eq!(
        lookup_route(&c, "any", "/v1/y", &[]).as_deref(),
        Some("infra/b#0")
    );
    assert_eq!(
        lookup_route(&c, "any", "/v1", &[]).as_deref(),
        Some("infra/b#0")
    );
    assert_eq!(
        lookup_route(&c, "any", "/v1x", &[]).as_deref(),
        Some("infra/a#0")
    );
    assert_eq!(
        lookup_route(&c, "any", "/v1/x", &[]).as_deref(),
        Some("infra/b#1")
    );
}

#[test]
fn header_matches_outrank_plain_prefix_and_fall_through() {
    let yaml = format!(
        "{BASE}{}",
        route("a", "  rules:\n  - matches: [{path: {value: /}}]\n    backendRefs: [{name: svc, port: 8080}]\n  - matches: [{path: {value: /}, headers: [{name: X-Env, value: canary}]}]\n    backendRefs: [{name: svc, port: 8080}]\n"),
    );
    let c = compile(&snapshot(&yaml), &CompileOptions::default());
    assert_eq!(
        lookup_route(&c, "h", "/", &[("x-env", "canary")]).as_deref(),
        Some("infra/a#1")
    );
    assert_eq!(
        lookup_route(&c, "h", "/", &[("x-env", "prod")]).as_deref(),
        Some("infra/a#0")
    );
}

#[test]
fn missing_backend_reports_backend_not_found_and_still_attaches() {
    let yaml = format!(
        "{BASE}{}",
        route("a", "  rules:\n  - backendRefs: [{name: nope, port: 80}]\n")
    );
    let c = compile(&snapshot(&yaml), &CompileOptions::default());
    let status = &c.report.get(Kind::HttpRoute, "infra", "a").unwrap().status;
    let conds = status["parents"][0]["conditions"].as_array().unwrap();
    let resolved = conds.iter().find(|c| c["type"] == "ResolvedRefs").unwrap();
    assert_eq!(resolved["reason"], "BackendNotFound");
    let accepted = conds.iter().find(|c| c["type"] == "Accepted").unwrap();
    assert_eq!(accepted["status"], "True");
    assert_eq!(
        lookup_route(&c, "h", "/", &[]).as_deref(),
        Some("infra/a#0")
    );
}

#[test]
fn a_route_whose_spec_does_not_decode_is_reported_not_dropped() {
    let yaml = format!(
        "{BASE}{}",
        route(
            "a",
            "  rules:\n  - backendRefs: [{name: svc, port: eighty}]\n"
        )
    );
    let c = compile(&snapshot(&yaml), &CompileOptions::default());
    let status = &c.report.get(Kind::HttpRoute, "infra", "a").unwrap().status;
    let accepted = &status["parents"][0]["conditions"][0];
    assert_eq!(accepted["type"], "Accepted");
    assert_eq!(accepted["status"], "False");
    assert_eq!(accepted["reason"], "UnsupportedValue");
    assert!(accepted["message"]
        .as_str()
        .unwrap()
        .contains("does not parse"));
    assert!(!c.report.problems().is_empty(), "counted as a problem");
    assert!(lookup_route(&c, "h", "/", &[]).is_none());

    // Without readable parentRefs nothing can carry a condition: the report says so instead.
    let yaml = format!(
        "{BASE}---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: b, namespace: infra}}\nspec:\n  parentRefs: gw\n"
    );
    let c = compile(&snapshot(&yaml), &CompileOptions::default());
    assert!(c.report.get(Kind::HttpRoute, "infra", "b").is_none());
    assert!(
        c.report
            .errors
            .iter()
            .any(|e| e.source == "HTTPRoute infra/b"),
        "{:?}",
        c.report.errors
    );
}

#[test]
fn invalid_regex_drops_the_rule_with_unsupported_value() {
    let yaml = format!(
        "{BASE}{}",
        route(
            "a",
            "  rules:\n  - matches: [{path: {type: RegularExpression, value: '(['}}]\n"
        )
    );
    let c = compile(&snapshot(&yaml), &CompileOptions::default());
    let status = &c.report.get(Kind::HttpRoute, "infra", "a").unwrap().status;
    assert_eq!(
        status["parents"][0]["conditions"][0]["reason"],
        "UnsupportedValue"
    );
    assert!(lookup_route(&c, "h", "/", &[]).is_none());
}

#[test]
fn duplicate_listener_is_conflicted_and_unknown_protocol_not_accepted() {
    let yaml = BASE.replace(
        "  - {name: http, port: 80, protocol: HTTP}",
        "  - {name: http, port: 80, protocol: HTTP}\n  - {name: dup, port: 80, protocol: HTTP}\n  - {name: odd, port: 81, protocol: SCTP}",
    );
    let c = compile(&snapshot(&yaml), &CompileOptions::default());
    let gw = &c.report.get(Kind::Gateway, "infra", "gw").unwrap().status;
    let listener = |n: usize, t: &str| {
        gw["listeners"][n]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == t)
            .unwrap()
            .clone()
    };
    // Both listeners of the conflict, neither a winner.
    assert_eq!(listener(0, "Conflicted")["reason"], "HostnameConflict");
    assert_eq!(listener(1, "Conflicted")["reason"], "HostnameConflict");
    assert_eq!(listener(2, "Accepted")["reason"], "UnsupportedProtocol");
    // No distinct listener is left: the Gateway is not accepted.
    assert_eq!(gw["conditions"][0]["reason"], "ListenersNotValid");
    assert_eq!(gw["conditions"][0]["status"], "False");
    assert_eq!(
        gw["conditions"][0]["message"],
        "no listener is valid; see their conditions"
    );
    // All are problems of the configuration (`check` fails on them), each named.
    let problems = c.report.problems();
    for want in [
        "Gateway infra/gw listener http: in conflict (HostnameConflict)",
        "Gateway infra/gw listener dup: in conflict (HostnameConflict)",
        "Gateway infra/gw listener odd: not accepted (UnsupportedProtocol)",
    ] {
        assert!(problems.iter().any(|p| p.starts_with(want)), "{problems:?}");
    }
}

/// The spec leaves no winner among conflicting listeners: each of them is Conflicted, not
/// accepted and not served, and the distinct ones are served; each names the others.
#[test]
fn conflicting_listeners_are_all_refused_and_distinct_ones_served() {
    let yaml = BASE.replace(
        "  - {name: http, port: 80, protocol: HTTP}",
        "  - {name: a, port: 80, protocol: HTTP, hostname: a.example}\n  \
         - {name: b, port: 80, protocol: HTTP, hostname: a.example}\n  \
         - {name: d, port: 80, protocol: HTTP, hostname: d.example}\n  \
         - {name: e, port: 443, protocol: HTTPS}\n  \
         - {name: f, port: 443, protocol: HTTP}\n  \
         - {name: g, port: 8443, protocol: HTTPS, hostname: g.example}\n  \
         - {name: h, port: 8443, protocol: TLS, hostname: h.example, tls: {mode: Passthrough}}\n  \
         - {name: odd, port: 80, protocol: SCTP}",
    );
    let c = compile(&snapshot(&yaml), &CompileOptions::default());
    let gw = &c.report.get(Kind::Gateway, "infra", "gw").unwrap().status;
    let condition = |name: &str, t: &str| {
        let listener = (gw["listeners"].as_array().unwrap().iter())
            .find(|l| l["name"] == name)
            .unwrap();
        (listener["conditions"].as_array().unwrap().iter())
            .find(|c| c["type"] == t)
            .unwrap()
            .clone()
    };
    for (name, reason, others) in [
        ("a", "HostnameConflict", "\"b\" (HTTP)"),
        ("b", "HostnameConflict", "\"a\" (HTTP)"),
        ("e", "ProtocolConflict", "\"f\" (HTTP)"),
        ("f", "ProtocolConflict", "\"e\" (HTTPS)"),
    ] {
        let conflicted = condition(name, "Conflicted");
        assert_eq!(conflicted["status"], "True", "{name}");
        assert_eq!(conflicted["reason"], reason, "{name}");
        let message = conflicted["message"].as_str().unwrap();
        assert!(message.contains(others), "{name}: {message}");
        assert!(
            message.contains("none of them is served"),
            "{name}: {message}"
        );
        assert_eq!(condition(name, "Accepted")["status"], "False", "{name}");
        assert_eq!(condition(name, "Programmed")["status"], "False", "{name}");
    }
    // Distinct: another hostname on the port (d), HTTPS and TLS sharing one (g, h). A
    // listener not accepted for its protocol (odd) is on no port and conflicts with nothing.
    for name in ["d", "g", "h", "odd"] {
        assert_eq!(condition(name, "Conflicted")["status"], "False", "{name}");
    }
    assert_eq!(condition("d", "Programmed")["status"], "True");
    // The Gateway says that some listeners are not valid, and is accepted for the others.
    let accepted = (gw["conditions"].as_array().unwrap().iter())
        .find(|c| c["type"] == "Accepted")
        .unwrap();
    assert_eq!(accepted["reason"], "ListenersNotValid");
    assert_eq!(accepted["status"], "True");
    // Each conflicted listener is one problem for `check`, not two.
    let problems = c.report.problems();
    let about_a: Vec<_> = problems
        .iter()
        .filter(|p| p.contains("listener a:"))
        .collect();
    assert_eq!(about_a.len(), 1, "{problems:?}");
    assert!(
        about_a[0].contains("in conflict (HostnameConflict)"),
        "{problems:?}"
    );
}

#[test]
fn gateway_resolved_refs_summarizes_its_listeners() {
    let gateway_condition = |yaml: &str| {
        let c = compile(&snapshot(yaml), &CompileOptions::default());
        let gw = &c.report.get(Kind::Gateway, "infra", "gw").unwrap().status;
        gw["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "ResolvedRefs")
            .unwrap()
            .clone()
    };
    assert_eq!(gateway_condition(BASE)["status"], "True");
    let yaml = BASE.replace(
        "  - {name: http, port: 80, protocol: HTTP}",
        "  - {name: http, port: 80, protocol: HTTP}\n  \
         - {name: https, port: 443, protocol: HTTPS, \
         tls: {certificateRefs: [{name: missing}]}}",
    );
    let resolved = gateway_condition(&yaml);
    assert_eq!(resolved["status"], "False");
    assert_eq!(resolved["reason"], "ListenersNotResolved");
    let message = resolved["message"].as_str().unwrap();
    assert!(
        message.contains("\"https\" (InvalidCertificateRef)"),
        "{message}"
    );
    assert!(!message.contains("\"http\""), "{message}");
}

#[test]
fn durations_parse_as_the_spec_writes_them() {
    assert_eq!(
        parse_duration("1m30s").unwrap(),
        Some(std::time::Duration::from_secs(90))
    );
    assert_eq!(
        parse_duration("500ms").unwrap(),
        Some(std::time::Duration::from_millis(500))
    );
    assert_eq!(parse_duration("0s").unwrap(), None);
    assert!(parse_duration("1.5s").is_err());
    // A number too long for the API says so, and how to write it.
    let err = parse_duration("1000000s").unwrap_err();
    assert!(err.contains("at most five digits"), "{err}");
}

#[test]
fn a_process_scoped_to_one_gateway_serves_and_reports_only_that_one() {
    let yaml = format!(
        "{BASE}---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\n\
         metadata: {{name: other, namespace: infra}}\n\
         spec: {{gatewayClassName: portcullis, listeners: [{{name: http, port: 80, protocol: HTTP}}]}}\n"
    );
    let options = CompileOptions {
        only_gateway: Some("infra/other".to_string()),
        ..CompileOptions::default()
    };
    let c = compile(&snapshot(&yaml), &options);
    assert!(c.report.get(Kind::Gateway, "infra", "other").is_some());
    assert!(c.report.get(Kind::Gateway, "infra", "gw").is_none());
    assert_eq!(c.table.binds.len(), 1);
}

#[test]
fn a_scoped_process_reports_only_the_parent_entry_of_its_gateway() {
    let yaml = format!(
        "{BASE}---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\n\
         metadata: {{name: other, namespace: infra}}\n\
         spec: {{gatewayClassName: portcullis, listeners: [{{name: http, port: 80, protocol: HTTP}}]}}\n\
         ---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
         metadata: {{name: both, namespace: infra}}\n\
         spec: {{parentRefs: [{{name: gw}}, {{name: other}}], rules: [{{backendRefs: [{{name: svc, port: 8080}}]}}]}}\n"
    );
    let options = CompileOptions {
        only_gateway: Some("infra/other".to_string()),
        ..CompileOptions::default()
    };
    let c = compile(&snapshot(&yaml), &options);
    let route = c.report.get(Kind::HttpRoute, "infra", "both").unwrap();
    let parents = route.status["parents"].as_array().unwrap();
    assert_eq!(parents.len(), 1, "{parents:?}");
    assert_eq!(parents[0]["parentRef"]["name"], "other");
    assert_eq!(parents[0]["parentRef"]["namespace"], "infra");
}

fn reported(yaml: &str, pod_ip: Option<&str>) -> serde_json::Value {
    let options = CompileOptions {
        reported_addresses: ReportedAddresses {
            service: Some(("portcullis-system".to_string(), "portcullis".to_string())),
            pod_ip: pod_ip.map(|ip| ip.parse().unwrap()),
        },
        ..CompileOptions::default()
    };
    let c = compile(&snapshot(&format!("{BASE}{yaml}")), &options);
    c.report.get(Kind::Gateway, "infra", "gw").unwrap().status["addresses"].clone()
}

#[test]
fn gateways_report_their_services_addresses_in_the_order_clients_reach_them() {
    let service = |spec: &str, status: &str| {
        format!(
            "---\napiVersion: v1\nkind: Service\n\
             metadata: {{name: portcullis, namespace: portcullis-system}}\n\
             spec: {spec}\nstatus: {status}\n"
        )
    };
    let all = service(
        "{clusterIP: 10.0.0.5, clusterIPs: [10.0.0.5, 'fd00::5'], externalIPs: [198.51.100.4]}",
        "{loadBalancer: {ingress: [{ip: 203.0.113.9}, {hostname: lb.example.com}]}}",
    );
    assert_eq!(
        reported(&all, Some("192.0.2.1")),
        serde_json::json!([
            {"type": "IPAddress", "value": "203.0.113.9"},
            {"type": "Hostname", "value": "lb.example.com"},
        ])
    );
    let external = service(
        "{clusterIP: 10.0.0.5, externalIPs: [198.51.100.4]}",
        "{loadBalancer: {}}",
    );
    assert_eq!(
        reported(&external, None),
        serde_json::json!([{"type": "IPAddress", "value": "198.51.100.4"}])
    );
    let cluster = service("{clusterIPs: [10.0.0.5, 'fd00::5']}", "{}");
    assert_eq!(
        reported(&cluster, None),
        serde_json::json!([
            {"type": "IPAddress", "value": "10.0.0.5"},
            {"type": "IPAddress", "value": "fd00::5"},
        ])
    );
    // Headless: no address of its own, so the pod's.
    let headless = service("{clusterIP: None}", "{}");
    assert_eq!(
        reported(&headless, Some("192.0.2.1")),
        serde_json::json!([{"type": "IPAddress", "value": "192.0.2.1"}])
    );
    // No Service yet, no pod IP: the bind address, as without either setting.
    assert_eq!(
        reported("", None),
        serde_json::json!([{"type": "IPAddress", "value": "127.0.0.1"}])
    );
}

/// Objects for the incremental tests: a second Gateway in another namespace, a policy-backed
/// Service and a spread of routes over exact, wildcard and shared hosts.
const INCREMENTAL_BASE: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge, namespace: web}
spec:
  gatewayClassName: portcullis
  listeners:
  - {name: web, port: 81, protocol: HTTP, allowedRoutes: {namespaces: {from: All}}}
---
apiVersion: v1
kind: Service
metadata: {name: secure, namespace: infra}
spec: {ports: [{name: https, port: 443}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: BackendTLSPolicy
metadata: {name: secure-tls, namespace: infra}
spec:
  targetRefs: [{group: "", kind: Service, name: secure}]
  validation: {hostname: secure.example, wellKnownCACertificates: System}
---
apiVersion: gateway.networking.k8s.io/v1
kind: BackendTLSPolicy
metadata: {name: secure-tls-later, namespace: infra, creationTimestamp: "2024-01-01T00:00:00Z"}
spec:
  targetRefs: [{group: "", kind: Service, name: secure}]
  validation: {hostname: later.example, wellKnownCACertificates: System}
"#;

fn incremental_route(name: &str, host: &str, path: &str, backend: &str, port: u16) -> String {
    format!(
        r#"
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}, namespace: infra}}
spec:
  parentRefs: [{{name: gw}}, {{name: edge, namespace: web}}]
  hostnames: ["{host}"]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: {path}}}}}]
    backendRefs: [{{name: {backend}, port: {port}}}]
"#
    )
}

/// The table, the report and the counts of a compile, as comparable JSON.
fn outcome(c: &Compiled) -> serde_json::Value {
    serde_json::json!({
        "table": crate::routing::explain::describe(&c.table),
        "report": serde_json::to_value(&c.report).unwrap(),
        "rules": c.rules,
        "endpoints": c.endpoints,
        "assigned": c.assigned,
    })
}

#[test]
fn an_incremental_compile_equals_a_fresh_one() {
    let store = crate::controller::Store::new();
    let load = |yaml: &str| {
        let (objects, errors) = parse_manifests(yaml).expect("test YAML parses");
        assert!(errors.is_empty(), "{errors:?}");
        store.apply(&[], objects);
    };
    load(BASE);
    load(INCREMENTAL_BASE);
    load(&incremental_route("a", "a.example", "/", "svc", 8080));
    load(&incremental_route("b", "shared.example", "/b", "svc", 8080));
    load(&incremental_route(
        "c",
        "shared.example",
        "/c",
        "secure",
        443,
    ));
    load(&incremental_route(
        "d",
        "*.wild.example",
        "/",
        "secure",
        443,
    ));
    load(&incremental_route("e", "e.example", "/", "missing", 80));
    let mut options = CompileOptions {
        address_pool: vec!["127.0.0.1".parse().unwrap(), "127.0.0.2".parse().unwrap()],
        ..Default::default()
    };
    let mut cache = CompileCache::default();
    // As the compile loop does: the addresses handed out are fed back into the options.
    let mut check = |cache: &mut CompileCache, step: &str| -> Compiled {
        let snapshot = store.snapshot();
        let incremental = compile_with(&snapshot, &options, cache);
        let fresh = compile(&snapshot, &options);
        assert_eq!(outcome(&incremental), outcome(&fresh), "after {step}");
        options.assigned = incremental.assigned.clone();
        incremental
    };
    let first = check(&mut cache, "the first compile");
    let shared_paths = |c: &Compiled| {
        let bind = "127.0.0.1:80".parse().unwrap();
        c.table.binds[&bind].listeners[0].hosts.exact["a.example"].clone()
    };

    // One route changes: the others' host entries are handed on, not rebuilt.
    load(&incremental_route(
        "b",
        "shared.example",
        "/bb",
        "svc",
        8080,
    ));
    let second = check(&mut cache, "a route changed");
    assert!(Arc::ptr_eq(&shared_paths(&first), &shared_paths(&second)));
    assert_eq!(
        lookup_route(&second, "shared.example", "/bb", &[]).as_deref(),
        Some("infra/b#0")
    );

    // Routes come and go; one moves to a host another route serves.
    store.delete(&crate::controller::ObjectKey::new(
        Kind::HttpRoute,
        "infra",
        "c",
    ));
    load(&incremental_route("f", "a.example", "/f", "secure", 443));
    let third = check(&mut cache, "routes were added and deleted");
    assert!(!Arc::ptr_eq(&shared_paths(&second), &shared_paths(&third)));

    // Only an EndpointSlice changes: the routes to its Service are redone, the others kept.
    let wildcard_paths = |c: &Compiled| {
        let bind = "127.0.0.1:80".parse().unwrap();
        c.table.binds[&bind].listeners[0].hosts.wildcard[".wild.example"].clone()
    };
    load(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: svc-1, \
         namespace: infra, labels: {kubernetes.io/service-name: svc}}\naddressType: IPv4\n\
         endpoints: [{addresses: [127.0.0.9]}]\nports: [{name: http, port: 9998}]\n",
    );
    let fourth = check(&mut cache, "an EndpointSlice changed");
    assert!(Arc::ptr_eq(
        &wildcard_paths(&third),
        &wildcard_paths(&fourth)
    ));
    assert!(!Arc::ptr_eq(&shared_paths(&third), &shared_paths(&fourth)));

    // A Service changes: every route may resolve differently, so everything is redone.
    load(
        "apiVersion: v1\nkind: Service\nmetadata: {name: missing, namespace: infra}\n\
         spec: {ports: [{name: http, port: 80}]}\n",
    );
    check(&mut cache, "a Service appeared");

    // Options change (here the address pool): redone as well.
    let options = CompileOptions {
        address_pool: vec!["127.0.0.3".parse().unwrap(), "127.0.0.2".parse().unwrap()],
        ..CompileOptions::default()
    };
    let snapshot = store.snapshot();
    let incremental = compile_with(&snapshot, &options, &mut cache);
    assert_eq!(
        outcome(&incremental),
        outcome(&compile(&snapshot, &options))
    );
}

/// A Gateway is served on one address: asking for two is refused (`AddressNotUsable`, naming
/// both), not served on the first with the second left out unsaid; one asked for twice is one.
#[test]
fn a_gateway_that_asks_for_two_addresses_is_told_it_gets_one() {
    let gateway = |addresses: &str| {
        format!(
            "---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\n\
             metadata: {{name: two, namespace: infra}}\nspec:\n  gatewayClassName: portcullis\n\
             \x20 addresses: [{addresses}]\n\
             \x20 listeners: [{{name: http, port: 80, protocol: HTTP}}]\n"
        )
    };
    let options = CompileOptions {
        address_pool: ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect(),
        ..Default::default()
    };
    let two = format!(
        "{BASE}{}",
        gateway("{value: 127.0.0.2}, {value: 127.0.0.3}")
    );
    let c = compile(&snapshot(&two), &options);
    let status = &c.report.get(Kind::Gateway, "infra", "two").unwrap().status;
    let programmed = condition(&status["conditions"], "Programmed");
    assert_eq!(programmed["reason"], "AddressNotUsable", "{programmed}");
    assert!(
        programmed["message"]
            .as_str()
            .unwrap()
            .contains("127.0.0.3 cannot be served beside 127.0.0.2"),
        "{programmed}"
    );
    assert_eq!(c.assigned.get("infra/two"), None);
    let same = format!(
        "{BASE}{}",
        gateway("{value: 127.0.0.2}, {value: 127.0.0.2}")
    );
    let c = compile(&snapshot(&same), &options);
    assert_eq!(
        c.assigned
            .get("infra/two")
            .map(|a| a.to_string())
            .as_deref(),
        Some("127.0.0.2")
    );
}

#[test]
fn a_requested_address_wins_over_one_kept_and_a_second_request_is_refused() {
    let gateway = |name: &str, address: Option<&str>| {
        let addresses = address.map_or(String::new(), |a| {
            format!("  addresses: [{{type: IPAddress, value: {a}}}]\n")
        });
        format!(
            "---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\n\
             metadata: {{name: {name}, namespace: infra}}\nspec:\n  gatewayClassName: portcullis\n\
             {addresses}  listeners: [{{name: http, port: 80, protocol: HTTP}}]\n"
        )
    };
    let text = [
        BASE.to_string(),
        gateway("gw-a", None),
        gateway("gw-b", Some("127.0.0.1")),
        gateway("gw-c", Some("127.0.0.1")),
    ]
    .concat();
    // gw-a had 127.0.0.1 before gw-b asked for it; BASE's gw takes the next pool address.
    let options = CompileOptions {
        address_pool: ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect(),
        assigned: [("infra/gw-a".to_string(), "127.0.0.1".parse().unwrap())].into(),
        ..Default::default()
    };
    let c = compile(&snapshot(&text), &options);
    let address = |name: &str| {
        c.assigned
            .get(&format!("infra/{name}"))
            .map(|a| a.to_string())
    };
    assert_eq!(address("gw-b").as_deref(), Some("127.0.0.1"));
    assert_eq!(address("gw").as_deref(), Some("127.0.0.2"));
    assert_eq!(address("gw-a").as_deref(), Some("127.0.0.3"));
    assert_eq!(address("gw-c"), None);
    let status = &c.report.get(Kind::Gateway, "infra", "gw-c").unwrap().status;
    let programmed = condition(&status["conditions"], "Programmed");
    assert_eq!(programmed["status"], "False");
    assert_eq!(programmed["reason"], "AddressNotUsable");
    assert!(
        programmed["message"]
            .as_str()
            .unwrap()
            .contains("infra/gw-b"),
        "{programmed}"
    );
    let problems = c.report.problems();
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("Gateway infra/gw-c: not programmed (AddressNotUsable)")),
        "{problems:?}"
    );
    assert_eq!(problems.len(), 1, "{problems:?}");
}

/// Of two requests for one address, the Gateway serving on it keeps it and otherwise the older
/// one gets it, whatever their names; a Gateway that is not accepted takes no address at all.
#[test]
fn a_later_request_never_takes_a_serving_gateway_s_address_and_an_unaccepted_one_takes_none() {
    let gateway = |name: &str, created: &str, address: &str, protocol: &str| {
        format!(
            "---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\n\
             metadata: {{name: {name}, namespace: infra, creationTimestamp: '{created}'}}\n\
             spec:\n  gatewayClassName: portcullis\n\
             \x20 addresses: [{{type: IPAddress, value: {address}}}]\n\
             \x20 listeners: [{{name: l, port: 80, protocol: {protocol}}}]\n"
        )
    };
    let text = [
        BASE.replace(
            "name: gw,",
            "name: gw, creationTimestamp: '2020-01-01T00:00:00Z',",
        ),
        gateway("a-new", "2025-01-01T00:00:00Z", "127.0.0.1", "HTTP"),
        gateway("z-old", "2020-01-01T00:00:00Z", "127.0.0.1", "HTTP"),
        gateway("b-serving", "2025-06-01T00:00:00Z", "127.0.0.2", "HTTP"),
        gateway("a-newer", "2024-01-01T00:00:00Z", "127.0.0.2", "HTTP"),
    ]
    .concat();
    let options = |pool: &[&str], assigned: &[(&str, &str)]| CompileOptions {
        address_pool: pool.iter().map(|a| a.parse().unwrap()).collect(),
        assigned: (assigned.iter())
            .map(|(g, a)| (format!("infra/{g}"), a.parse().unwrap()))
            .collect(),
        ..Default::default()
    };
    let c = compile(
        &snapshot(&text),
        &options(
            &["127.0.0.1", "127.0.0.2", "127.0.0.3"],
            &[("b-serving", "127.0.0.2")],
        ),
    );
    let address = |c: &Compiled, name: &str| c.assigned.get(&format!("infra/{name}")).copied();
    assert_eq!(address(&c, "z-old"), Some("127.0.0.1".parse().unwrap()));
    assert_eq!(address(&c, "a-new"), None);
    assert_eq!(address(&c, "b-serving"), Some("127.0.0.2".parse().unwrap()));
    assert_eq!(address(&c, "a-newer"), None);
    let programmed = |c: &Compiled, name: &str| {
        let status = &c.report.get(Kind::Gateway, "infra", name).unwrap().status;
        condition(&status["conditions"], "Programmed").clone()
    };
    assert!(
        programmed(&c, "a-newer")["message"]
            .as_str()
            .unwrap()
            .contains("requested by Gateway infra/b-serving"),
        "{}",
        programmed(&c, "a-newer")
    );

    // A pool of one: a Gateway whose only listener is not valid takes nothing from it.
    let text = [
        BASE.to_string(),
        gateway("a-udp", "2020-01-01T00:00:00Z", "127.0.0.1", "UDP")
            .replace("  addresses: [{type: IPAddress, value: 127.0.0.1}]\n", ""),
    ]
    .concat();
    let c = compile(&snapshot(&text), &options(&["127.0.0.1"], &[]));
    assert_eq!(address(&c, "a-udp"), None);
    assert_eq!(address(&c, "gw"), Some("127.0.0.1".parse().unwrap()));
    assert_eq!(programmed(&c, "gw")["status"], "True");
}

/// Accepted for a valid listener, but with none that can be served (its port is out of range
/// once moved by --port-offset): the Gateway is not programmed, and that is a problem.
#[test]
fn a_gateway_with_no_listener_served_is_not_programmed() {
    let options = CompileOptions {
        address_pool: vec!["127.0.0.1".parse().unwrap()],
        port_offset: 65500,
        ..Default::default()
    };
    let c = compile(&snapshot(BASE), &options);
    let status = &c.report.get(Kind::Gateway, "infra", "gw").unwrap().status;
    let listener = condition(&status["listeners"][0]["conditions"], "Programmed");
    assert_eq!(listener["status"], "False");
    let programmed = condition(&status["conditions"], "Programmed");
    assert_eq!(
        (&programmed["status"], &programmed["reason"]),
        (&"False".into(), &"Invalid".into())
    );
    assert!(c.table.binds.is_empty());
    assert!(
        c.report
            .problems()
            .iter()
            .any(|p| p.starts_with("Gateway infra/gw: not programmed")),
        "{:?}",
        c.report.problems()
    );
}

/// Service `name` in namespace infra with one port, 443, named https.
fn https_service(name: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: infra}}\n\
         spec: {{ports: [{{name: https, port: 443}}]}}\n"
    )
}

/// The rule of the first listener's routes without hostnames, for PathPrefix `/`.
fn catch_all_rule(c: &Compiled) -> &crate::routing::table::Rule {
    &c.table.binds.values().next().unwrap().listeners[0]
        .hosts
        .any
        .as_ref()
        .unwrap()
        .prefix["/"][0]
        .rule
}

#[test]
fn an_invalid_backend_tls_policy_is_not_accepted_and_counts_as_a_problem() {
    let policy = |name: &str, service: &str, validation: &str| {
        format!(
            "---\napiVersion: gateway.networking.k8s.io/v1\nkind: BackendTLSPolicy\n\
             metadata: {{name: {name}, namespace: infra}}\nspec:\n  \
             targetRefs: [{{group: \"\", kind: Service, name: {service}}}]\n  \
             validation: {validation}\n"
        )
    };
    let text = [
        BASE.to_string(),
        https_service("no-ca"),
        https_service("missing-ca"),
        policy("no-ca", "no-ca", "{hostname: a.example}"),
        policy(
            "missing-ca",
            "missing-ca",
            "{hostname: b.example, caCertificateRefs: [{group: \"\", kind: ConfigMap, name: nope}]}",
        ),
        https_service("sans"),
        policy(
            "sans",
            "sans",
            "{hostname: a.example, wellKnownCACertificates: System, \
             subjectAltNames: [{type: Hostname, hostname: b.example}]}",
        ),
        https_service("system"),
        policy("system", "system", "{hostname: a.example, wellKnownCACertificates: System}"),
        https_service("address"),
        policy("address", "address", "{hostname: 127.0.0.1, wellKnownCACertificates: System}"),
        https_service("typo"),
        policy("typo", "typo", "{hostname: a.example, wellKnownCACertificates: System}")
            .replace("name: typo}", "name: typo, sectionName: htps}"),
        route(
            "r",
            "  rules:\n  - backendRefs: [{name: no-ca, port: 443}, {name: missing-ca, port: 443}, \
             {name: sans, port: 443}, {name: system, port: 443}, {name: typo, port: 443}, \
             {name: address, port: 443}]\n",
        ),
    ]
    .concat();
    let c = compile(&snapshot(&text), &CompileOptions::default());
    let conditions = |name: &str| {
        let status = &c
            .report
            .get(Kind::BackendTlsPolicy, "infra", name)
            .unwrap()
            .status;
        let list = status["ancestors"][0]["conditions"]
            .as_array()
            .unwrap()
            .clone();
        let find = |t: &str| {
            let c = list.iter().find(|c| c["type"] == t).unwrap();
            (
                c["status"].as_str().unwrap().to_string(),
                c["reason"].as_str().unwrap().to_string(),
            )
        };
        (find("Accepted"), find("ResolvedRefs"))
    };
    let pair = |s: &str, r: &str| (s.to_string(), r.to_string());
    assert_eq!(
        conditions("no-ca"),
        (pair("False", "Invalid"), pair("True", "ResolvedRefs"))
    );
    assert_eq!(
        conditions("missing-ca"),
        (
            pair("False", "NoValidCACertificate"),
            pair("False", "InvalidCACertificateRef")
        )
    );
    // subjectAltNames cannot be verified: refused rather than served with less checking.
    assert_eq!(
        conditions("sans"),
        (pair("False", "Invalid"), pair("True", "ResolvedRefs"))
    );
    // The system roots, as the API spells the field.
    assert_eq!(
        conditions("system"),
        (pair("True", "Accepted"), pair("True", "ResolvedRefs"))
    );
    // A sectionName that names no port of the Service: not a Service without a policy.
    assert_eq!(
        conditions("typo"),
        (
            pair("False", "TargetNotFound"),
            pair("True", "ResolvedRefs")
        )
    );
    let backends = &catch_all_rule(&c).backends;
    let served: Vec<(String, bool)> = backends
        .iter()
        .map(|b| match b.target.as_ref() {
            Backend::Service(s) => (s.name.to_string(), s.tls.is_some()),
            Backend::Invalid { reason } => (reason.clone(), false),
        })
        .collect();
    assert_eq!(served.len(), 6, "{served:?}");
    assert!(
        served.contains(&("infra/system:443".to_string(), true)),
        "{served:?}"
    );
    assert!(
        served
            .iter()
            .any(|(r, _)| r.contains("sectionName \"htps\" names no port of Service infra/typo")),
        "{served:?}"
    );
    let problems = c.report.problems();
    assert_eq!(
        conditions("address"),
        (pair("False", "Invalid"), pair("True", "ResolvedRefs"))
    );
    for name in ["no-ca", "sans", "typo", "address"] {
        assert!(
            problems
                .iter()
                .any(|p| p.contains(&format!("BackendTLSPolicy infra/{name}"))),
            "{name}: {problems:?}"
        );
    }
}

/// Of two BackendTLSPolicies for one Service port, the one naming the port by sectionName
/// wins over one for the whole Service, whatever their names; between two for the whole
/// Service, the older.
#[test]
fn the_backend_tls_policy_naming_the_port_wins_then_the_oldest() {
    let policy = |name: &str, service: &str, section: &str, created: &str, hostname: &str| {
        format!(
            "---\napiVersion: gateway.networking.k8s.io/v1\nkind: BackendTLSPolicy\n\
             metadata: {{name: {name}, namespace: infra, creationTimestamp: \"{created}\"}}\n\
             spec:\n  targetRefs: [{{group: \"\", kind: Service, name: {service}{section}}}]\n  \
             validation: {{hostname: {hostname}, wellKnownCACertificates: System}}\n"
        )
    };
    // For Service `one`: one policy for the whole Service, an older one, and one naming its
    // port `https`, a newer one.
    let one_policies = policy(
        "a-whole",
        "one",
        "",
        "2020-01-01T00:00:00Z",
        "whole.example",
    ) + &policy(
        "b-port",
        "one",
        ", sectionName: https",
        "2024-01-01T00:00:00Z",
        "port.example",
    );
    let text = [
        BASE.to_string(),
        https_service("one"),
        one_policies.clone(),
        https_service("two"),
        policy(
            "a-newer",
            "two",
            "",
            "2024-01-01T00:00:00Z",
            "newer.example",
        ),
        policy(
            "b-older",
            "two",
            "",
            "2020-01-01T00:00:00Z",
            "older.example",
        ),
        route(
            "r",
            "  rules:\n  - backendRefs: [{name: one, port: 443}, {name: two, port: 443}]\n",
        ),
    ]
    .concat();
    let c = compile(&snapshot(&text), &CompileOptions::default());
    let backends = &catch_all_rule(&c).backends;
    let hostnames: Vec<String> = backends
        .iter()
        .map(|b| match b.target.as_ref() {
            Backend::Service(s) => s.tls.as_ref().unwrap().hostname.clone(),
            Backend::Invalid { reason } => panic!("{reason}"),
        })
        .collect();
    assert_eq!(hostnames, ["port.example", "older.example"]);
    // The policies that lose say so, and name the one in force.
    let accepted_in = |c: &Compiled, name: &str| {
        let status = &c
            .report
            .get(Kind::BackendTlsPolicy, "infra", name)
            .unwrap_or_else(|| panic!("no status for {name}"))
            .status;
        condition(&status["ancestors"][0]["conditions"], "Accepted").clone()
    };
    for (name, winner) in [("a-whole", "b-port"), ("a-newer", "b-older")] {
        let lost = accepted_in(&c, name);
        assert_eq!(lost["status"], "False", "{name}: {lost}");
        assert_eq!(lost["reason"], "Conflicted", "{name}: {lost}");
        assert!(
            lost["message"]
                .as_str()
                .is_some_and(|m| m.contains(&format!("infra/{winner} applies"))),
            "{name}: {lost}"
        );
    }
    for name in ["b-port", "b-older"] {
        assert_eq!(accepted_in(&c, name)["status"], "True", "{name}");
    }

    // A policy for the whole Service that loses on one port but applies on another is
    // accepted: it is in force where it applies.
    let text = [
        BASE.to_string(),
        "---\napiVersion: v1\nkind: Service\nmetadata: {name: one, namespace: infra}\n\
         spec: {ports: [{name: https, port: 443}, {name: alt, port: 8443}]}\n"
            .to_string(),
        one_policies,
        route(
            "r",
            "  rules:\n  - backendRefs: [{name: one, port: 443}, {name: one, port: 8443}]\n",
        ),
    ]
    .concat();
    let c = compile(&snapshot(&text), &CompileOptions::default());
    assert_eq!(accepted_in(&c, "a-whole")["status"], "True");
    assert_eq!(accepted_in(&c, "b-port")["status"], "True");
}

#[test]
fn listeners_mapped_onto_one_socket_conflict_like_listeners_on_one_port() {
    let text = BASE.replace(
        "  - {name: http, port: 80, protocol: HTTP}",
        "  - {name: http, port: 80, protocol: HTTP}\n  - name: alt\n    port: 8443\n    \
         protocol: HTTPS\n    tls: {certificateRefs: [{name: cert}]}",
    );
    let options = CompileOptions {
        port_map: [(80, 8443)].into(),
        ..Default::default()
    };
    let c = compile(&snapshot(&text), &options);
    let gw = &c.report.get(Kind::Gateway, "infra", "gw").unwrap().status;
    let alt = gw["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "alt")
        .unwrap();
    let conflicted = condition(&alt["conditions"], "Conflicted");
    assert_eq!(conflicted["status"], "True", "{alt}");
    assert_eq!(conflicted["reason"], "ProtocolConflict", "{alt}");

    // --port-offset and --port-map landing two listener ports on one socket: each listener's
    // message names the other's own port, and says the flags did it.
    let text = BASE.replace(
        "  - {name: http, port: 80, protocol: HTTP}",
        "  - {name: public, port: 80, protocol: HTTP}\n  - {name: internal, port: 81, protocol: HTTP}",
    );
    let options = CompileOptions {
        port_offset: 28000,
        port_map: [(80, 28081)].into(),
        ..Default::default()
    };
    let c = compile(&snapshot(&text), &options);
    let gw = &c.report.get(Kind::Gateway, "infra", "gw").unwrap().status;
    let public = &gw["listeners"][0];
    let message = condition(&public["conditions"], "Conflicted")["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.contains("\"internal\" (HTTP, port 81)")
            && message.contains(
                "--port-offset 28000 and --port-map 80=28081 both serve on socket port 28081"
            ),
        "{message}"
    );
}

/// A rule asking for session persistence, which the gateway does not offer, is served
/// without it, and the route's Accepted message says so rather than nothing.
#[test]
fn session_persistence_is_named_as_not_offered() {
    let rules =
        "  hostnames: [a.example]\n  rules:\n  - backendRefs: [{name: svc, port: 8080}]\n    \
                 sessionPersistence: {sessionName: s, type: Cookie}\n";
    let grpc = grpc_route(
        "g",
        "2020-01-01T00:00:00Z",
        "  hostnames: [g.example]\n  rules:\n  - backendRefs: [{name: svc, port: 8080}]\n    \
         sessionPersistence: {type: Header, sessionName: s}\n",
    );
    let yaml = format!("{BASE}{}{grpc}", route("a", rules));
    let c = compile(&snapshot(&yaml), &CompileOptions::default());
    for (kind, name) in [(Kind::HttpRoute, "a"), (Kind::GrpcRoute, "g")] {
        let status = &c.report.get(kind, "infra", name).unwrap().status;
        let accepted = condition(&status["parents"][0]["conditions"], "Accepted");
        assert_eq!(accepted["status"], "True", "{name}");
        assert!(
            (accepted["message"].as_str().unwrap())
                .contains("rule 0: sessionPersistence is not supported"),
            "{name}: {accepted}"
        );
    }
}

/// A certificateRef to a Secret the gateway does not see says why it may not be seen: in
/// Kubernetes mode only kubernetes.io/tls Secrets are read.
#[test]
fn a_missing_certificate_secret_says_which_secrets_are_read() {
    let yaml = BASE.replace(
        "  - {name: http, port: 80, protocol: HTTP}",
        "  - {name: https, port: 443, protocol: HTTPS, tls: {certificateRefs: [{name: opq}]}}",
    );
    let c = compile(&snapshot(&yaml), &CompileOptions::default());
    let status = &c.report.get(Kind::Gateway, "infra", "gw").unwrap().status;
    let resolved = condition(&status["listeners"][0]["conditions"], "ResolvedRefs");
    assert_eq!(resolved["reason"], "InvalidCertificateRef");
    assert!(
        (resolved["message"].as_str().unwrap())
            .contains("Secret infra/opq does not exist (or, in Kubernetes mode, is not of type kubernetes.io/tls"),
        "{resolved}"
    );
}

#[test]
fn retry_is_checked_and_its_defaults_filled_in() {
    let retry_of = |path: &str, c: &Compiled| {
        let header = |_: &str| -> Vec<&str> { Vec::new() };
        let view = RequestView {
            host: "h",
            path,
            query: None,
            method: "GET",
            header: &header,
        };
        let bind = "127.0.0.1:80".parse().unwrap();
        let matched = c.table.lookup(&bind, &view).expect("a rule matches");
        matched.entry.rule.retry.clone()
    };
    let rule = |path: &str, retry: &str| {
        format!("  - matches: [{{path: {{value: {path}}}}}]\n    retry: {retry}\n    backendRefs: [{{name: svc, port: 8080}}]\n")
    };
    let yaml = format!(
        "{BASE}{}",
        route(
            "a",
            &format!(
                "  rules:\n{}{}{}",
                rule("/given", "{codes: [500, 503], attempts: 3, backoff: 1s}"),
                rule("/defaults", "{}"),
                rule("/many", "{codes: [502], attempts: 1000}"),
            )
        )
    );
    let c = compile(&snapshot(&yaml), &CompileOptions::default());
    let given = retry_of("/given", &c).expect("a retry policy");
    assert_eq!(given.codes, [500, 503]);
    assert_eq!(given.attempts, 3);
    assert_eq!(given.backoff, std::time::Duration::from_secs(1));
    let defaults = retry_of("/defaults", &c).expect("a retry policy");
    assert!(defaults.codes.is_empty());
    assert_eq!(defaults.attempts, RetryPolicy::DEFAULT_ATTEMPTS);
    assert_eq!(defaults.backoff, RetryPolicy::DEFAULT_BACKOFF);
    assert_eq!(
        retry_of("/many", &c).unwrap().attempts,
        RetryPolicy::MAX_ATTEMPTS
    );
    // Served within the limit, and the route's Accepted message says so.
    let status = &c.report.get(Kind::HttpRoute, "infra", "a").unwrap().status;
    let accepted = condition(&status["parents"][0]["conditions"], "Accepted");
    assert_eq!(accepted["status"], "True");
    assert_eq!(
        accepted["message"],
        "route is attached; rule 2: retry attempts 1000 served as 10, the most one request gets"
    );

    // What the API server's schema refuses is refused here, naming the field.
    for (retry, says) in [
        ("{codes: [200]}", "retry code 200 is not an error status"),
        (
            "{codes: [500], attempts: -1}",
            "retry attempts must not be negative",
        ),
        ("{backoff: soon}", "retry backoff: invalid duration"),
    ] {
        let yaml = format!(
            "{BASE}{}",
            route("b", &format!("  rules:\n{}", rule("/", retry)))
        );
        let c = compile(&snapshot(&yaml), &CompileOptions::default());
        let status = &c.report.get(Kind::HttpRoute, "infra", "b").unwrap().status;
        let accepted = condition(&status["parents"][0]["conditions"], "Accepted");
        assert_eq!(accepted["status"], "False", "{retry}");
        assert_eq!(accepted["reason"], "UnsupportedValue", "{retry}");
        let message = accepted["message"].as_str().unwrap();
        assert!(message.contains(says), "{retry}: {message}");
    }
}

/// A query parameter match holds on the name and value as a backend reads them, decoded:
/// compared as sent, `?debug=%74rue` passed by a rule meant to catch `debug=true`.
#[test]
fn query_parameters_are_matched_decoded() {
    let yaml = format!(
        "{BASE}{}",
        route(
            "a",
            "  rules:\n  - matches: [{path: {value: /}, queryParams: [{name: debug, value: 'true'}]}]\n    \
             backendRefs: [{name: svc, port: 8080}]\n  \
             - matches: [{path: {value: /}, queryParams: [{name: q, value: 'a b&c'}]}]\n    \
             backendRefs: [{name: svc, port: 8080}]\n"
        )
    );
    let c = compile(&snapshot(&yaml), &CompileOptions::default());
    let route_of = |target: &str| lookup_route(&c, "a.example", target, &[]);
    for target in [
        "/?debug=true",
        "/?debug=%74rue",
        "/?%64ebug=true",
        "/?%64%65%62%75%67=%74%72%75%65",
    ] {
        assert_eq!(route_of(target).as_deref(), Some("infra/a#0"), "{target}");
    }
    assert_eq!(
        route_of("/?q=a+b%26c").as_deref(),
        Some("infra/a#1"),
        "a plus is a space"
    );
    // The first of a repeated name counts, however it is written.
    assert_eq!(route_of("/?%64ebug=no&debug=true"), None);
    // A `%` without two hex digits is itself.
    assert_eq!(route_of("/?debug=%7"), None);
    assert_eq!(route_of("/?debug=true%"), None);
}

/// Weights the API refuses are refused (as the API server does; standalone mode refuses them
/// at load too): two of the largest an i64 holds added up past u64 and made every request
/// through the rule panic.
#[test]
fn a_weight_above_the_apis_bound_refuses_the_rule() {
    let max = i64::MAX;
    let yaml = format!(
        "{BASE}{}",
        route(
            "a",
            &format!(
                "  rules:\n  - backendRefs: [{{name: svc, port: 8080, weight: {max}}}, \
                 {{name: svc, port: 8080, weight: {max}}}, {{name: svc, port: 8080, weight: 2}}]\n"
            )
        )
    );
    let c = compile(&snapshot(&yaml), &CompileOptions::default());
    let status = &c.report.get(Kind::HttpRoute, "infra", "a").unwrap().status;
    let accepted = condition(&status["parents"][0]["conditions"], "Accepted");
    assert_eq!(accepted["status"], "False");
    let message = accepted["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("backendRef weight {max} is outside 0 to 1000000")),
        "{message}"
    );
    assert_eq!(explain_get(&c, "/").status, Some(404));
    // The bound itself is served.
    let yaml = format!(
        "{BASE}{}",
        route(
            "a",
            "  rules:\n  - backendRefs: [{name: svc, port: 8080, weight: 1000000}, \
             {name: svc, port: 8080, weight: 0}]\n"
        )
    );
    let c = compile(&snapshot(&yaml), &CompileOptions::default());
    assert_eq!(explain_get(&c, "/").status, None);
}

#[test]
fn a_listener_moved_out_of_the_port_range_says_why_it_is_not_programmed() {
    let options = CompileOptions {
        port_offset: 65_500,
        ..CompileOptions::default()
    };
    let c = compile(&snapshot(BASE), &options);
    let status = &c.report.get(Kind::Gateway, "infra", "gw").unwrap().status;
    let programmed = condition(&status["listeners"][0]["conditions"], "Programmed");
    assert_eq!(programmed["status"], "False");
    let message = programmed["message"].as_str().unwrap();
    assert!(
        message.contains("port 80 moved by --port-offset 65500 is not a port"),
        "{message}"
    );
}

#[test]
fn a_header_value_with_a_line_break_is_refused_at_compile_time() {
    let yaml = format!(
        "{BASE}{}",
        route(
            "a",
            "  rules:\n  - filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-a, value: \"a\\r\\nx-evil: 1\"}]}}]\n    backendRefs: [{name: svc, port: 8080}]\n"
        )
    );
    let c = compile(&snapshot(&yaml), &CompileOptions::default());
    let status = &c.report.get(Kind::HttpRoute, "infra", "a").unwrap().status;
    let accepted = condition(&status["parents"][0]["conditions"], "Accepted");
    assert_eq!(accepted["status"], "False");
    let message = accepted["message"].as_str().unwrap();
    assert!(message.contains("control character"), "{message}");
}

#[test]
fn what_a_filter_writes_must_be_well_formed() {
    for (filter, wanted) in [
        (
            "{type: URLRewrite, urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: nos}}}",
            "is not an absolute path",
        ),
        (
            "{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: \"/a b\"}}}",
            "is not an absolute path",
        ),
        (
            "{type: RequestRedirect, requestRedirect: {path: {type: ReplaceFullPath, replaceFullPath: \"/x\\r\\nset-cookie: a=1\"}}}",
            "is not an absolute path",
        ),
        (
            "{type: RequestRedirect, requestRedirect: {hostname: \"a.com\\r\\nset-cookie: a=1\"}}",
            "is not a hostname",
        ),
        (
            "{type: URLRewrite, urlRewrite: {hostname: \"*.example.com\"}}",
            "is not a hostname",
        ),
        (
            "{type: RequestRedirect, requestRedirect: {port: 0}}",
            "is not a port",
        ),
        (
            "{type: CORS, cors: {allowOrigins: [\"*\"], maxAge: -1}}",
            "is negative",
        ),
    ] {
        let yaml = format!(
            "{BASE}{}",
            route(
                "a",
                &format!("  rules:\n  - filters: [{filter}]\n    backendRefs: [{{name: svc, port: 8080}}]\n"),
            )
        );
        let c = compile(&snapshot(&yaml), &CompileOptions::default());
        let status = &c.report.get(Kind::HttpRoute, "infra", "a").unwrap().status;
        let accepted = condition(&status["parents"][0]["conditions"], "Accepted");
        assert_eq!(accepted["status"], "False", "{filter}");
        let message = accepted["message"].as_str().unwrap();
        assert!(message.contains(wanted), "{filter}: {message}");
    }
    // What the conformance set writes is accepted: `/`, percent-encodings, a plain name.
    let yaml = format!(
        "{BASE}{}",
        route(
            "a",
            "  rules:\n  - filters: [{type: URLRewrite, urlRewrite: {hostname: example.org, path: {type: ReplacePrefixMatch, replacePrefixMatch: \"/\"}}}]\n    backendRefs: [{name: svc, port: 8080}]\n  - matches: [{path: {value: /b}}]\n    filters: [{type: RequestRedirect, requestRedirect: {path: {type: ReplaceFullPath, replaceFullPath: \"/%7Eone/two;x=1\"}}}]\n",
        )
    );
    let c = compile(&snapshot(&yaml), &CompileOptions::default());
    let status = &c.report.get(Kind::HttpRoute, "infra", "a").unwrap().status;
    let accepted = condition(&status["parents"][0]["conditions"], "Accepted");
    assert_eq!(accepted["status"], "True", "{accepted}");
}

#[test]
fn a_filter_may_not_change_the_headers_that_frame_a_message() {
    for (kind, field, edit) in [
        (
            "ResponseHeaderModifier",
            "responseHeaderModifier",
            "set: [{name: Content-Length, value: \"1\"}]",
        ),
        (
            "RequestHeaderModifier",
            "requestHeaderModifier",
            "add: [{name: transfer-encoding, value: chunked}]",
        ),
        (
            "RequestHeaderModifier",
            "requestHeaderModifier",
            "remove: [Connection]",
        ),
    ] {
        let yaml = format!(
            "{BASE}{}",
            route(
                "a",
                &format!("  rules:\n  - filters: [{{type: {kind}, {field}: {{{edit}}}}}]\n    backendRefs: [{{name: svc, port: 8080}}]\n"),
            )
        );
        let c = compile(&snapshot(&yaml), &CompileOptions::default());
        let status = &c.report.get(Kind::HttpRoute, "infra", "a").unwrap().status;
        let accepted = condition(&status["parents"][0]["conditions"], "Accepted");
        assert_eq!(accepted["status"], "False", "{edit}");
        let message = accepted["message"].as_str().unwrap();
        assert!(
            message.contains("set by the gateway for each hop"),
            "{message}"
        );
    }
}

/// A request has one Host: a filter may set it, but not add a second or remove it.
#[test]
fn a_filter_may_set_the_host_but_not_add_or_remove_it() {
    let accepted = |edit: &str| {
        let yaml = format!(
            "{BASE}{}",
            route(
                "a",
                &format!("  rules:\n  - filters: [{{type: RequestHeaderModifier, requestHeaderModifier: {{{edit}}}}}]\n    backendRefs: [{{name: svc, port: 8080}}]\n"),
            )
        );
        let c = compile(&snapshot(&yaml), &CompileOptions::default());
        let status = &c.report.get(Kind::HttpRoute, "infra", "a").unwrap().status;
        condition(&status["parents"][0]["conditions"], "Accepted").clone()
    };
    assert_eq!(
        accepted("set: [{name: Host, value: b.example}]")["status"],
        "True"
    );
    for (edit, says) in [
        (
            "add: [{name: Host, value: b.example}]",
            "not add a second one",
        ),
        ("remove: [host]", "not remove it"),
    ] {
        let condition = accepted(edit);
        assert_eq!(condition["status"], "False", "{edit}");
        assert!(
            condition["message"].as_str().unwrap().contains(says),
            "{condition}"
        );
    }
}

#[test]
fn every_backend_ref_that_does_not_resolve_is_named() {
    let refs: String = (0..12)
        .map(|i| format!("{{name: missing-{i}, port: 80}}, "))
        .collect();
    let yaml = format!(
        "{BASE}{}",
        route(
            "a",
            &format!("  rules:\n  - backendRefs: [{refs}{{name: missing-0, port: 80}}]\n"),
        ),
    );
    let c = compile(&snapshot(&yaml), &CompileOptions::default());
    let status = &c.report.get(Kind::HttpRoute, "infra", "a").unwrap().status;
    let resolved = condition(&status["parents"][0]["conditions"], "ResolvedRefs");
    assert_eq!(resolved["reason"], "BackendNotFound");
    let message = resolved["message"].as_str().unwrap();
    // The first eight distinct ones by name, each once, then a note that there are more.
    for i in 0..8 {
        assert_eq!(
            message.matches(&format!("infra/missing-{i} ")).count(),
            1,
            "{message}"
        );
    }
    assert!(!message.contains("missing-8"), "{message}");
    assert!(message.ends_with("; and more"), "{message}");
}

#[test]
fn unresolved_references_and_dropped_rules_are_problems() {
    let yaml = format!(
        "{BASE}{}{}",
        route("a", "  rules:\n  - backendRefs: [{name: nowhere, port: 80}]\n"),
        route(
            "b",
            "  rules:\n  - backendRefs: [{name: svc, port: 8080}]\n  - matches: [{path: {type: RegularExpression, value: '(['}}]\n    backendRefs: [{name: svc, port: 8080}]\n  - matches: [{path: {type: PathPrefix, value: noslash}}]\n    backendRefs: [{name: svc, port: 8080}]\n"
        ),
    );
    let c = compile(&snapshot(&yaml), &CompileOptions::default());
    // Both dropped rules are named, not only the first.
    let status = &c.report.get(Kind::HttpRoute, "infra", "b").unwrap().status;
    let partially = condition(&status["parents"][0]["conditions"], "PartiallyInvalid");
    let message = partially["message"].as_str().unwrap();
    assert!(
        message.starts_with("Dropped Rule: rule 1: ") && message.contains("; rule 2: "),
        "{message}"
    );
    let problems = c.report.problems();
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("HTTPRoute infra/a: references not resolved (BackendNotFound)")),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("HTTPRoute infra/b: partially invalid")),
        "{problems:?}"
    );
}

#[test]
fn objects_nothing_serves_are_named_with_the_reason() {
    let yaml = format!(
        "{BASE}{}{}{}{}",
        route(
            "served",
            "  rules:\n  - backendRefs: [{name: svc, port: 8080}]\n"
        ),
        route(
            "lost",
            "  rules:\n  - backendRefs: [{name: svc, port: 8080}]\n"
        )
        .replace("[{name: gw}]", "[{name: wg}]"),
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\n\
         metadata: {name: theirs}\nspec: {controllerName: example.com/other}\n",
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\n\
         metadata: {name: typo, namespace: infra}\nspec:\n  gatewayClassName: portculis\n  \
         listeners: [{name: http, port: 80, protocol: HTTP}]\n",
    );
    let options = CompileOptions::default();
    let c = compile(&snapshot(&yaml), &options);
    let unserved = unserved(&snapshot(&yaml), &c.report, &options);
    assert_eq!(unserved.len(), 3, "{unserved:?}");
    assert!(
        unserved[0].starts_with("GatewayClass theirs: its controllerName \"example.com/other\"")
    );
    assert!(
        unserved[1].starts_with(
            "Gateway infra/typo: its gatewayClassName \"portculis\" names no GatewayClass"
        ),
        "{unserved:?}"
    );
    assert!(
        unserved[2].starts_with("HTTPRoute infra/lost: none of its parentRefs (infra/wg)"),
        "{unserved:?}"
    );
    // The Gateways that are served are named, to see the misspelling against.
    assert!(unserved[2].contains("(served: infra/gw)"), "{unserved:?}");

    // A process scoped to one Gateway says nothing of the others, nor of routes.
    let scoped = CompileOptions {
        only_gateway: Some("infra/gw".into()),
        ..CompileOptions::default()
    };
    let c = compile(&snapshot(&yaml), &scoped);
    let unserved = super::unserved(&snapshot(&yaml), &c.report, &scoped);
    assert_eq!(unserved.len(), 1, "{unserved:?}");
}

/// A question about a listener the table does not hold says why, from the same compile.
#[test]
fn explain_says_why_a_listener_is_not_served() {
    use crate::routing::explain::Question;
    let yaml = BASE.replace(
        "  listeners:\n",
        "  addresses: [{type: IPAddress, value: 127.0.0.5}]\n  listeners:\n",
    );
    let ask = |c: &Compiled, listener: &str| {
        let answer = Question {
            listener: listener.to_string(),
            host: "a.example".to_string(),
            path: "/".to_string(),
            method: "GET".to_string(),
            headers: Vec::new(),
        }
        .answer(&c.table, &c.report);
        assert_eq!(answer.status, Some(404));
        assert!(!answer.steps[0].contains("(expected"), "{:?}", answer.steps);
        answer.steps.last().unwrap().clone()
    };
    let pool = |ip: &str| CompileOptions {
        address_pool: vec![ip.parse().unwrap()],
        ..CompileOptions::default()
    };
    let c = compile(&snapshot(&yaml), &pool("127.0.0.1"));
    let why = ask(&c, "infra/gw/http");
    assert!(
        why.starts_with("listener infra/gw/http is not served: Programmed=False AddressNotUsable")
            && why.ends_with("only when given the same --address-pool"),
        "{why}"
    );
    assert_eq!(
        ask(&c, "infra/gw/htp"),
        "Gateway infra/gw has no listener named \"htp\"; it has: http"
    );
    // A Gateway that is not there, or a name of another form: the listeners there are named.
    let why = ask(&c, "infra/other/http");
    assert!(
        why.starts_with("no Gateway infra/other is served here (listeners: infra/gw/http)"),
        "{why}"
    );
    // With the address it asks for, it is served.
    let c = compile(&snapshot(&yaml), &pool("127.0.0.5"));
    assert!(c.table.binds.len() == 1);
}

#[test]
fn explain_names_each_share_the_gateway_answers_itself() {
    // `empty` has no EndpointSlice; `nowhere` does not exist.
    let yaml = format!(
        "{BASE}---\napiVersion: v1\nkind: Service\nmetadata: {{name: empty, namespace: infra}}\nspec: {{ports: [{{port: 80}}]}}\n{}",
        route(
            "a",
            "  rules:\n  - matches: [{path: {value: /mixed}}]\n    backendRefs: [{name: svc, port: 8080}, {name: empty, port: 80}]\n\
             \x20 - matches: [{path: {value: /none}}]\n    backendRefs: [{name: empty, port: 80, weight: 3}, {name: nowhere, port: 80}]\n\
             \x20 - matches: [{path: {value: /empty}}]\n    backendRefs: [{name: empty, port: 80}]\n"
        )
    );
    let c = compile(&snapshot(&yaml), &CompileOptions::default());
    let ask = |path: &str| explain_get(&c, path);
    // Half the weight forwards: no status, but the 503 share is named.
    let mixed = ask("/mixed");
    assert_eq!(mixed.status, None);
    assert!(
        mixed
            .steps
            .iter()
            .any(|s| s.contains("weight 1 of 2 answers 503")),
        "{:?}",
        mixed.steps
    );
    // Nothing forwards: the larger share's answer, each share named.
    let none = ask("/none");
    assert_eq!(none.status, Some(503), "{:?}", none.steps);
    assert!(none
        .steps
        .iter()
        .any(|s| s.contains("weight 1 of 4 answers 500")));
    assert_eq!(ask("/empty").status, Some(503));
}

/// `/debug/routes` shows a header or query condition as the route wrote it: its match type,
/// and the value unquoted (a regular expression without the anchors it is run with).
#[test]
fn the_routes_table_shows_conditions_as_written() {
    let yaml = format!(
        "{BASE}{}",
        route(
            "c",
            "  hostnames: [a.example]\n  rules:\n\
             \x20 - matches: [{headers: [{name: x-canary, value: always}, \
             {type: RegularExpression, name: x-v, value: 'v[12]'}], \
             queryParams: [{name: debug, value: '1'}]}]\n"
        )
    );
    let c = compile(&snapshot(&yaml), &CompileOptions::default());
    let table = crate::routing::explain::describe(&c.table);
    let rule = &table["sockets"][0]["listeners"][0]["hosts"][0]["rules"][0];
    assert_eq!(
        rule["headers"],
        serde_json::json!([
            {"name": "x-canary", "type": "Exact", "value": "always"},
            {"name": "x-v", "type": "RegularExpression", "value": "v[12]"},
        ]),
        "{rule}"
    );
    assert_eq!(
        rule["queryParams"],
        serde_json::json!([{"name": "debug", "type": "Exact", "value": "1"}])
    );
}

/// A request no rule takes is told, for each host's routes tried, which rules' paths do not
/// take it, beside the rules whose path matched but whose other conditions did not.
#[test]
fn explain_names_the_rules_whose_path_does_not_match() {
    let yaml = format!(
        "{BASE}{}",
        route(
            "p",
            "  hostnames: [a.example]\n  rules:\n\
             \x20 - matches: [{path: {type: PathPrefix, value: /api}, headers: [{name: x-v, value: '1'}]}]\n\
             \x20 - matches: [{path: {type: Exact, value: /login}}]\n\
             \x20 - matches: [{path: {type: RegularExpression, value: '/img/.*'}}]\n"
        )
    );
    let c = compile(&snapshot(&yaml), &CompileOptions::default());
    let other = explain_get(&c, "/other");
    assert_eq!(other.status, Some(404));
    assert!(
        other.steps.contains(
            &"the path \"/other\" does not match the path of: infra/p#0 (PathPrefix /api), \
              infra/p#1 (Exact /login), infra/p#2 (RegularExpression ^(?:/img/.*)$)"
                .to_string()
        ),
        "{:?}",
        other.steps
    );
    // /api/v2 is taken by the prefix, whose header condition fails: that rule has its own step.
    let api = explain_get(&c, "/api/v2");
    assert_eq!(api.status, Some(404));
    assert!(
        api.steps
            .iter()
            .any(|s| s.starts_with("rule infra/p#0 (PathPrefix /api): header x-v")),
        "{:?}",
        api.steps
    );
    assert!(
        api.steps.contains(
            &"the path \"/api/v2\" does not match the path of: infra/p#1 (Exact /login), \
              infra/p#2 (RegularExpression ^(?:/img/.*)$)"
                .to_string()
        ),
        "{:?}",
        api.steps
    );
    // /apiary is not under the prefix /api.
    let apiary = explain_get(&c, "/apiary");
    assert!(
        apiary
            .steps
            .iter()
            .any(|s| s.contains("infra/p#0 (PathPrefix /api)")),
        "{:?}",
        apiary.steps
    );
}

#[test]
fn explain_knows_the_preflights_a_cors_filter_answers() {
    use crate::routing::explain::Question;
    let yaml = format!(
        "{BASE}{}",
        route(
            "a",
            "  rules:\n  - filters:\n    - type: CORS\n      cors: {allowOrigins: ['https://app.example']}\n    \
             backendRefs: [{name: svc, port: 8080}]\n"
        )
    );
    let c = compile(&snapshot(&yaml), &CompileOptions::default());
    let ask = |method: &str, headers: &[(&str, &str)]| {
        Question {
            listener: "infra/gw/http".to_string(),
            host: "a.example".to_string(),
            path: "/".to_string(),
            method: method.to_string(),
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
        }
        .answer(&c.table, &c.report)
    };
    let preflight = [
        ("origin", "https://app.example"),
        ("access-control-request-method", "PUT"),
    ];
    let answered = ask("OPTIONS", &preflight);
    assert_eq!(answered.status, Some(204), "{:?}", answered.steps);
    assert!(answered
        .steps
        .iter()
        .any(|s| s.contains("CORS filter answers")));
    // Not a preflight: a plain OPTIONS, or the same headers on a GET, is forwarded.
    assert_eq!(ask("OPTIONS", &preflight[..1]).status, None);
    assert_eq!(ask("GET", &preflight).status, None);
}

#[test]
fn debug_routes_shows_the_sni_table_of_a_passthrough_listener() {
    let yaml = BASE.replace(
        "  - {name: http, port: 80, protocol: HTTP}\n",
        "  - {name: http, port: 80, protocol: HTTP}\n  \
         - {name: tls, port: 443, protocol: TLS, tls: {mode: Passthrough}}\n",
    ) + "---\napiVersion: gateway.networking.k8s.io/v1\nkind: TLSRoute\n\
         metadata: {name: t, namespace: infra}\n\
         spec:\n  parentRefs: [{name: gw, sectionName: tls}]\n  hostnames: [db.example]\n  \
         rules: [{backendRefs: [{name: svc, port: 8080}]}]\n";
    let c = compile(&snapshot(&yaml), &CompileOptions::default());
    let routes = crate::routing::explain::describe(&c.table);
    let listeners: Vec<&serde_json::Value> = routes["sockets"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["listeners"].as_array().unwrap())
        .collect();
    let tls = listeners.iter().find(|l| l["listener"] == "tls").unwrap();
    assert_eq!(tls["passthrough"][0]["sni"], "db.example", "{tls}");
    assert_eq!(tls["passthrough"][0]["route"], "infra/t", "{tls}");
    assert_eq!(
        tls["passthrough"][0]["backends"][0]["endpoints"][0],
        "127.0.0.9:9999"
    );
    // An HTTP listener has no such table.
    let http = listeners.iter().find(|l| l["listener"] == "http").unwrap();
    assert!(http.get("passthrough").is_none(), "{http}");
}

/// An ExtensionRef filter cannot be resolved here (there are no custom filters), and the spec
/// forbids skipping it: the requests it would process are answered 500 by its own rule, never
/// passed on to a broader rule or served without the filter.
#[test]
fn an_extension_ref_filter_is_answered_500_not_skipped() {
    let ext = "{type: ExtensionRef, extensionRef: {group: foo.io, kind: Bar, name: baz}}";
    let yaml = format!(
        "{BASE}{}",
        route(
            "r",
            &format!(
                "  rules:\n\
                 \x20 - matches: [{{path: {{value: /x}}}}]\n    filters: [{ext}]\n    backendRefs: [{{name: svc, port: 8080}}]\n\
                 \x20 - matches: [{{path: {{value: /y}}}}]\n    backendRefs: [{{name: svc, port: 8080, filters: [{ext}]}}]\n\
                 \x20 - backendRefs: [{{name: svc, port: 8080}}]\n"
            )
        )
    );
    let c = compile(&snapshot(&yaml), &CompileOptions::default());
    let ask = |path: &str| explain_get(&c, path);
    for (path, rule) in [("/x", "infra/r#0"), ("/y", "infra/r#1")] {
        let answer = ask(path);
        assert_eq!(answer.matched.as_deref(), Some(rule), "{answer:?}");
        assert_eq!(answer.status, Some(500), "{answer:?}");
    }
    assert_eq!(ask("/z").status, None);
    let status = &c.report.get(Kind::HttpRoute, "infra", "r").unwrap().status;
    let conditions = &status["parents"][0]["conditions"];
    assert_eq!(condition(conditions, "Accepted")["status"], "True");
    let resolved = condition(conditions, "ResolvedRefs");
    assert_eq!(
        (&resolved["status"], &resolved["reason"]),
        (&"False".into(), &"InvalidKind".into())
    );
    assert!(
        resolved["message"]
            .as_str()
            .unwrap()
            .starts_with("rule 0: ExtensionRef filter foo.io/Bar \"baz\""),
        "{resolved}"
    );
    assert!(conditions
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["type"] != "PartiallyInvalid"));
}

/// `from: Selector` without a selector, or with one Kubernetes would not evaluate, selects no
/// namespace and the listener says why; it never falls open to every namespace.
#[test]
fn a_missing_or_invalid_namespace_selector_admits_no_route() {
    for (namespaces, says) in [
        ("{from: Selector}", "no selector is given"),
        (
            "{from: Selector, selector: {matchExpressions: [{key: team, operator: Foo, values: [x]}]}}",
            "selector operator \"Foo\" for key \"team\" is not one of",
        ),
        (
            "{from: Selector, selector: {matchExpressions: [{key: team, operator: In}]}}",
            "selector operator In for key \"team\" needs values",
        ),
    ] {
        let yaml = BASE.replace(
            "  - {name: http, port: 80, protocol: HTTP}",
            &format!(
                "  - {{name: http, port: 80, protocol: HTTP, allowedRoutes: {{namespaces: {namespaces}}}}}"
            ),
        ) + "---\napiVersion: v1\nkind: Namespace\nmetadata: {name: other, labels: {team: x}}\n"
            + "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
               metadata: {name: r, namespace: other}\n\
               spec: {parentRefs: [{name: gw, namespace: infra}], rules: [{}]}\n";
        let c = compile(&snapshot(&yaml), &CompileOptions::default());
        let gw = &c.report.get(Kind::Gateway, "infra", "gw").unwrap().status;
        let accepted = condition(&gw["listeners"][0]["conditions"], "Accepted");
        assert_eq!(accepted["status"], "False", "{namespaces}");
        assert!(accepted["message"].as_str().unwrap().contains(says), "{accepted}");
        let route = &c.report.get(Kind::HttpRoute, "other", "r").unwrap().status;
        let attached = condition(&route["parents"][0]["conditions"], "Accepted");
        assert_eq!(attached["status"], "False", "{namespaces}: {attached}");
        assert_eq!(gw["listeners"][0]["attachedRoutes"], 0);
    }
    // An empty selector selects every namespace.
    let yaml = BASE.replace(
        "  - {name: http, port: 80, protocol: HTTP}",
        "  - {name: http, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: Selector, selector: {}}}}",
    ) + "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
           metadata: {name: r, namespace: other}\n\
           spec: {parentRefs: [{name: gw, namespace: infra}], rules: [{}]}\n";
    let c = compile(&snapshot(&yaml), &CompileOptions::default());
    let gw = &c.report.get(Kind::Gateway, "infra", "gw").unwrap().status;
    assert_eq!(gw["listeners"][0]["attachedRoutes"], 1);
}

/// A route refused by every listener it selects is told whether the kind or the namespace
/// kept it out.
#[test]
fn not_allowed_by_listeners_says_whether_kind_or_namespace_is_the_cause() {
    let yaml = BASE.replace(
        "  - {name: http, port: 80, protocol: HTTP}",
        "  - {name: http, port: 80, protocol: HTTP}\n  - {name: tls, port: 443, protocol: TLS, tls: {mode: Passthrough}}",
    ) + "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
           metadata: {name: to-tls, namespace: infra}\n\
           spec: {parentRefs: [{name: gw, sectionName: tls}], rules: [{}]}\n\
           ---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
           metadata: {name: elsewhere, namespace: other}\n\
           spec: {parentRefs: [{name: gw, namespace: infra, sectionName: http}], rules: [{}]}\n";
    let c = compile(&snapshot(&yaml), &CompileOptions::default());
    let message = |ns: &str, name: &str| {
        let status = &c.report.get(Kind::HttpRoute, ns, name).unwrap().status;
        let accepted = condition(&status["parents"][0]["conditions"], "Accepted").clone();
        assert_eq!(accepted["reason"], "NotAllowedByListeners", "{accepted}");
        accepted["message"].as_str().unwrap().to_string()
    };
    assert!(
        message("infra", "to-tls")
            .contains("takes HTTPRoute routes (see each listener's supportedKinds)"),
        "{}",
        message("infra", "to-tls")
    );
    assert!(
        message("other", "elsewhere").contains("from namespace other"),
        "{}",
        message("other", "elsewhere")
    );
}

/// A prefix can only be replaced where the rule matches one path prefix, as the API's
/// validation says: elsewhere the rule is dropped with UnsupportedValue, its siblings served.
#[test]
fn replace_prefix_match_needs_one_path_prefix_match() {
    let rewrite = "filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /z}}}]";
    let yaml = format!(
        "{BASE}{}",
        route(
            "r",
            &format!(
                "  rules:\n\
                 \x20 - matches: [{{path: {{type: Exact, value: /exact}}}}]\n    {rewrite}\n    backendRefs: [{{name: svc, port: 8080}}]\n\
                 \x20 - matches: [{{path: {{value: /a}}}}, {{path: {{value: /b}}}}]\n    {rewrite}\n    backendRefs: [{{name: svc, port: 8080}}]\n\
                 \x20 - matches: [{{path: {{value: /ok}}}}]\n    {rewrite}\n    backendRefs: [{{name: svc, port: 8080}}]\n\
                 \x20 - {rewrite}\n    backendRefs: [{{name: svc, port: 8080}}]\n\
                 \x20 - matches: [{{path: {{type: Exact, value: /backend-level}}}}]\n    backendRefs: [{{name: svc, port: 8080, {rewrite}}}]\n"
            )
        )
    );
    let c = compile(&snapshot(&yaml), &CompileOptions::default());
    let status = &c.report.get(Kind::HttpRoute, "infra", "r").unwrap().status;
    let partly = condition(&status["parents"][0]["conditions"], "PartiallyInvalid");
    let message = partly["message"].as_str().unwrap();
    // A backendRef's filter is held to the rule's matches too (rule 4).
    assert!(
        message.starts_with(
            "Dropped Rule: rule 0: a ReplacePrefixMatch path modifier needs exactly one PathPrefix \
             match"
        ) && message.contains("; rule 1: a ReplacePrefixMatch")
            && !message.contains("rule 2")
            && !message.contains("rule 3")
            && message.contains("; rule 4: a ReplacePrefixMatch"),
        "{message}"
    );
    assert_eq!(c.rules, 2);
}

/// The hex digits of a percent-encoding are matched without regard to case (RFC 3986, section
/// 6.2.2.1), in a route's path value and in a request's path alike.
#[test]
fn percent_encodings_match_whatever_the_case_of_their_hex_digits() {
    let rules = "  rules:\n  \
        - matches: [{path: {type: Exact, value: '/a%2cb'}}]\n    \
          backendRefs: [{name: svc, port: 8080}]\n  \
        - matches: [{path: {type: PathPrefix, value: '/caf%C3%A9'}}]\n    \
          backendRefs: [{name: svc, port: 8080}]\n  \
        - matches: [{path: {type: RegularExpression, value: '/re%2c[0-9]+'}}]\n    \
          backendRefs: [{name: svc, port: 8080}]\n";
    let yaml = format!("{BASE}{}", route("r", rules));
    let c = compile(&snapshot(&yaml), &CompileOptions::default());
    let status = &c.report.get(Kind::HttpRoute, "infra", "r").unwrap().status;
    let accepted = condition(&status["parents"][0]["conditions"], "Accepted");
    assert_eq!(accepted["status"], "True", "{status}");
    let path = |p: &str| crate::routing::table::normalize_path(p).unwrap_or(p.to_string());
    for request in ["/a%2cb", "/a%2Cb"] {
        assert_eq!(
            lookup_route(&c, "a.example", &path(request), &[]).as_deref(),
            Some("infra/r#0"),
            "{request}"
        );
    }
    for request in ["/caf%c3%a9/x", "/caf%C3%A9", "/caf%c3%A9"] {
        assert_eq!(
            lookup_route(&c, "a.example", &path(request), &[]).as_deref(),
            Some("infra/r#1"),
            "{request}"
        );
    }
    assert_eq!(lookup_route(&c, "a.example", &path("/a%2db"), &[]), None);
    // A regular expression's percent-encodings too.
    for request in ["/re%2c12", "/re%2C12"] {
        assert_eq!(
            lookup_route(&c, "a.example", &path(request), &[]).as_deref(),
            Some("infra/r#2"),
            "{request}"
        );
    }
}

/// Match values the API's validation refuses (a path not in normal form or with a space, a
/// header or query parameter name that is no token) drop their rule with a message naming
/// the value; a rule whose matches are well formed is served beside them.
#[test]
fn match_values_the_api_refuses_drop_their_rule() {
    let bad = [
        "{path: {type: Exact, value: '/a b'}}",
        "{path: {type: PathPrefix, value: '/a//b'}}",
        "{path: {type: Exact, value: '/a/../b'}}",
        "{path: {type: PathPrefix, value: '/a/.'}}",
        "{path: {type: Exact, value: '/a%2Fb'}}",
        "{headers: [{name: 'bad header', value: x}]}",
        "{queryParams: [{name: 'q=1', value: x}]}",
        "{path: {type: Exact, value: '/%61dmin'}}",
        "{path: {type: PathPrefix, value: '/x/%2e%2e/y'}}",
    ];
    let mut rules = String::from("  rules:\n");
    for m in bad {
        rules.push_str(&format!(
            "  - matches: [{m}]\n    backendRefs: [{{name: svc, port: 8080}}]\n"
        ));
    }
    rules.push_str(
        "  - matches: [{path: {type: Exact, value: \"/ok-~!$&'()*+,;=:@%20\"}, \
         headers: [{name: \"x-a!#$%&'*+.^_`|~\", value: x}]}]\n    \
         backendRefs: [{name: svc, port: 8080}]\n",
    );
    let yaml = format!("{BASE}{}", route("r", &rules));
    let c = compile(&snapshot(&yaml), &CompileOptions::default());
    let status = &c.report.get(Kind::HttpRoute, "infra", "r").unwrap().status;
    let partly = condition(&status["parents"][0]["conditions"], "PartiallyInvalid");
    let message = partly["message"].as_str().unwrap();
    for (i, flaw) in [
        "\"/a b\" is not an absolute path",
        "must not hold \"//\"",
        "must not hold \"/../\"",
        "must not hold \"/.\"",
        "must not hold \"%2f\"",
        "\"bad header\" is not a header or query parameter name",
        "\"q=1\" is not a header or query parameter name",
        "where it reads \"/admin\"",
        "where it reads \"/y\"",
    ]
    .iter()
    .enumerate()
    {
        assert!(
            message.contains(&format!("rule {i}: ")),
            "rule {i}: {message}"
        );
        assert!(message.contains(flaw), "{flaw}: {message}");
    }
    assert!(!message.contains("rule 9"), "{message}");
    assert_eq!(c.rules, 1);
}

/// The namespace name label is the namespace's name, as the API server sets it: a Namespace
/// manifest that writes another value cannot pass a selector meant for another namespace.
#[test]
fn a_namespace_cannot_pose_as_another_through_its_name_label() {
    let yaml = BASE.replace(
        "  - {name: http, port: 80, protocol: HTTP}",
        "  - {name: http, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: Selector, \
         selector: {matchLabels: {kubernetes.io/metadata.name: team}}}}}",
    ) + "---\napiVersion: v1\nkind: Namespace\n\
           metadata: {name: team2, labels: {kubernetes.io/metadata.name: team}}\n\
           ---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
           metadata: {name: r, namespace: team2}\n\
           spec: {parentRefs: [{name: gw, namespace: infra}], rules: [{}]}\n\
           ---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
           metadata: {name: r, namespace: team}\n\
           spec: {parentRefs: [{name: gw, namespace: infra}], rules: [{}]}\n";
    let c = compile(&snapshot(&yaml), &CompileOptions::default());
    let accepted = |ns: &str| {
        let status = &c.report.get(Kind::HttpRoute, ns, "r").unwrap().status;
        condition(&status["parents"][0]["conditions"], "Accepted")["status"].clone()
    };
    assert_eq!(accepted("team2"), "False");
    assert_eq!(accepted("team"), "True");
}

/// An HTTPRoute without `rules` gets the API server's default, one rule for every path: with
/// no backendRefs, its requests are answered 500, in standalone mode as in a cluster.
#[test]
fn an_http_route_without_rules_gets_the_api_default_rule() {
    let yaml = format!(
        "{BASE}---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
         metadata: {{name: norules, namespace: infra}}\n\
         spec: {{parentRefs: [{{name: gw}}], hostnames: [a.example]}}\n"
    );
    let c = compile(&snapshot(&yaml), &CompileOptions::default());
    let answer = explain_get(&c, "/anything");
    assert_eq!(
        answer.matched.as_deref(),
        Some("infra/norules#0"),
        "{answer:?}"
    );
    assert_eq!(answer.status, Some(500));
}

/// One listener out of two that cannot be served for a reason of its own (its port, moved by
/// --port-offset, is past 65535) is a problem `check` names, though its Gateway is served.
#[test]
fn a_listener_not_programmed_for_a_reason_of_its_own_is_a_problem() {
    let yaml = BASE.replace(
        "  - {name: http, port: 80, protocol: HTTP}",
        "  - {name: http, port: 80, protocol: HTTP}\n  - {name: high, port: 65000, protocol: HTTP}",
    );
    let options = CompileOptions {
        address_pool: vec!["127.0.0.1".parse().unwrap()],
        port_offset: 1000,
        ..Default::default()
    };
    let c = compile(&snapshot(&yaml), &options);
    let problems = c.report.problems();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0]
            .starts_with("Gateway infra/gw listener high: not programmed (Invalid): port 65000"),
        "{problems:?}"
    );
    // A class that is not accepted: its Gateway says so, and its listeners point there.
    let yaml = BASE.replace(
        "portcullis.dev/gateway-controller}",
        "portcullis.dev/gateway-controller, parametersRef: {group: x.io, kind: P, name: p}}",
    );
    let c = compile(&snapshot(&yaml), &options);
    let gw = &c.report.get(Kind::Gateway, "infra", "gw").unwrap().status;
    let listener = condition(&gw["listeners"][0]["conditions"], "Programmed");
    assert_eq!(
        listener["message"],
        "the Gateway is not accepted; see its conditions"
    );
}

#[test]
fn only_tcp_ports_of_a_service_and_its_endpoints_carry_traffic() {
    let yaml = format!(
        "{BASE}{}{}---\napiVersion: v1\nkind: Service\nmetadata: {{name: dns, namespace: infra}}\n\
         spec: {{ports: [{{name: u, port: 53, protocol: UDP}}, {{name: t, port: 53}}]}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: dns-1, namespace: infra, labels: {{kubernetes.io/service-name: dns}}}}\n\
         addressType: IPv4\nendpoints: [{{addresses: [127.0.0.9]}}]\n\
         ports: [{{name: u, port: 5353, protocol: UDP}}, {{name: t, port: 5354, protocol: TCP}}]\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {{name: udp, namespace: infra}}\n\
         spec: {{ports: [{{port: 53, protocol: UDP}}]}}\n",
        route("a", "  hostnames: [a.example]\n  rules:\n  - backendRefs: [{name: dns, port: 53}]\n"),
        route("b", "  hostnames: [b.example]\n  rules:\n  - backendRefs: [{name: udp, port: 53}]\n"),
    );
    let c = compile(&snapshot(&yaml), &CompileOptions::default());
    let table = crate::routing::explain::describe(&c.table).to_string();
    assert!(table.contains("127.0.0.9:5354"), "{table}");
    assert!(!table.contains("5353"), "{table}");
    let status = &c.report.get(Kind::HttpRoute, "infra", "b").unwrap().status;
    let resolved = condition(&status["parents"][0]["conditions"], "ResolvedRefs");
    assert_eq!(resolved["reason"], "BackendNotFound");
    assert!(
        resolved["message"]
            .as_str()
            .unwrap()
            .contains("Service infra/udp port 53 is UDP, not TCP"),
        "{resolved}"
    );
}

/// A GRPCRoute in BASE's namespace with `body` after its parentRefs.
fn grpc_route(name: &str, created: &str, body: &str) -> String {
    format!(
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\n\
         metadata: {{name: {name}, namespace: infra, creationTimestamp: \"{created}\"}}\n\
         spec:\n  parentRefs: [{{name: gw}}]\n{body}"
    )
}

/// A regular expression must be one on its own: `/a)|(?:.*` is none, and inside the anchors
/// the gateway puts around it, it would match every path.
#[test]
fn a_regular_expression_cannot_break_out_of_its_anchors() {
    let rules = "  rules:\n  \
        - matches: [{path: {type: RegularExpression, value: '/a)|(?:.*'}}]\n    \
          backendRefs: [{name: svc, port: 8080}]\n  \
        - matches: [{path: {type: Exact, value: /ok}}]\n    \
          backendRefs: [{name: svc, port: 8080}]\n";
    let yaml = format!(
        "{BASE}{}{}",
        route("r", rules),
        grpc_route(
            "g",
            "2020-01-01T00:00:00Z",
            "  rules:\n  - matches: [{method: {type: RegularExpression, method: 'x)|(?:.*'}}]\n    \
             backendRefs: [{name: svc, port: 8080}]\n",
        )
    );
    let c = compile(&snapshot(&yaml), &CompileOptions::default());
    assert_eq!(lookup_route(&c, "a.example", "/anything", &[]), None);
    assert_eq!(
        lookup_route(&c, "a.example", "/ok", &[]).as_deref(),
        Some("infra/r#1")
    );
    for (kind, name) in [(Kind::HttpRoute, "r"), (Kind::GrpcRoute, "g")] {
        let status = &c.report.get(kind, "infra", name).unwrap().status;
        let text = status.to_string();
        assert!(
            text.contains("invalid regular expression"),
            "{name}: {text}"
        );
    }
}

/// A GRPCRoute `RegularExpression` method match takes each of service and method as a whole
/// pattern (an alternation is a choice of services), and one that does not compile is named by
/// its field.
#[test]
fn grpc_regular_expressions_stand_each_for_their_part() {
    let text = [
        BASE.to_string(),
        grpc_route(
            "re",
            "2020-01-01T00:00:00Z",
            "  rules:\n  - matches: [{method: {type: RegularExpression, service: 'a\\.A|a\\.B', method: Get}}]\n    \
             backendRefs: [{name: svc, port: 8080}]\n  \
             - matches: [{method: {type: RegularExpression, service: 'x\\.X', method: '(['}}]\n    \
             backendRefs: [{name: svc, port: 8080}]\n",
        ),
    ]
    .concat();
    let c = compile(&snapshot(&text), &CompileOptions::default());
    let route_of = |path: &str| lookup_route(&c, "any", path, &[]);
    assert_eq!(route_of("/a.A/Get").as_deref(), Some("infra/re#0"));
    assert_eq!(route_of("/a.B/Get").as_deref(), Some("infra/re#0"));
    assert_eq!(route_of("/a.A/Put"), None);
    assert_eq!(route_of("/a.A"), None);
    let status = &c.report.get(Kind::GrpcRoute, "infra", "re").unwrap().status;
    let partly = condition(&status["parents"][0]["conditions"], "PartiallyInvalid");
    let message = partly["message"].as_str().unwrap();
    assert!(
        message.contains("method.method: invalid regular expression \"([\""),
        "{message}"
    );
}

/// A GRPCRoute pattern's own anchors hold at the edges of its part: `^Ping$` is the method
/// `Ping`, `^a\.B$` the service `a.B` (pasted into one pattern for the whole path, a `^` or
/// `$` inside could never match, and the rule served nothing).
#[test]
fn grpc_patterns_may_anchor_their_part() {
    let text = [
        BASE.to_string(),
        grpc_route(
            "re",
            "2020-01-01T00:00:00Z",
            "  rules:\n  - matches: [{method: {type: RegularExpression, method: '^Ping$'}}]\n    \
             backendRefs: [{name: svc, port: 8080}]\n  \
             - matches: [{method: {type: RegularExpression, service: '^a\\.B$', method: 'Po.g'}}]\n    \
             backendRefs: [{name: svc, port: 8080}]\n  \
             - matches: [{method: {type: RegularExpression, service: '', method: 'Zap'}}]\n    \
             backendRefs: [{name: svc, port: 8080}]\n",
        ),
    ]
    .concat();
    let c = compile(&snapshot(&text), &CompileOptions::default());
    let route_of = |path: &str| lookup_route(&c, "any", path, &[]);
    assert_eq!(route_of("/s.S/Ping").as_deref(), Some("infra/re#0"));
    assert_eq!(route_of("/a.B/Pong").as_deref(), Some("infra/re#1"));
    // An empty part is one left out: any service.
    assert_eq!(route_of("/any.Svc/Zap").as_deref(), Some("infra/re#2"));
    assert_eq!(route_of("/s.S/Pingx"), None);
    assert_eq!(route_of("/xa.B/Pong"), None);
    // A method is one path segment, whatever a pattern lets through.
    assert_eq!(route_of("/s.S/x/Ping"), None);
}

/// explain answers a gRPC call as the proxy does: the gateway's own errors as gRPC statuses.
#[test]
fn explain_gives_a_grpc_call_the_grpc_status_it_gets() {
    let yaml = format!(
        "{BASE}{}",
        grpc_route(
            "g",
            "2020-01-01T00:00:00Z",
            "  rules:\n  - matches: [{method: {service: a.A}}]\n    \
             backendRefs: [{name: missing, port: 8080}]\n",
        )
    );
    let c = compile(&snapshot(&yaml), &CompileOptions::default());
    let ask = |path: &str, content_type: &str| {
        crate::routing::explain::Question {
            listener: "infra/gw/http".to_string(),
            host: "a.example".to_string(),
            path: path.to_string(),
            method: "POST".to_string(),
            headers: vec![("content-type".to_string(), content_type.to_string())],
        }
        .answer(&c.table, &c.report)
    };
    let unresolved = ask("/a.A/Get", "application/grpc+proto");
    assert_eq!(
        (unresolved.status, unresolved.grpc_status),
        (Some(500), Some(14))
    );
    let unrouted = ask("/b.B/Get", "application/grpc");
    assert_eq!(
        (unrouted.status, unrouted.grpc_status),
        (Some(404), Some(12))
    );
    assert!(
        unrouted.steps.last().unwrap().contains("grpc-status 12"),
        "{:?}",
        unrouted.steps
    );
    // Not a gRPC call: HTTP statuses only.
    assert_eq!(ask("/b.B/Get", "text/plain").grpc_status, None);
}

/// Routes that tie on everything else go by `{namespace}/{name}` as one string: `t-x/aa`
/// before `t/zz`, as `-` sorts before `/`.
#[test]
fn tied_routes_go_by_namespace_and_name_as_one_string() {
    let gateway = BASE.replace(
        "  - {name: http, port: 80, protocol: HTTP}",
        "  - {name: http, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: All}}}",
    );
    let tied = |namespace: &str, name: &str| {
        format!(
            "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
             metadata: {{name: {name}, namespace: {namespace}, creationTimestamp: \"2026-01-01T00:00:00Z\"}}\n\
             spec:\n  parentRefs: [{{name: gw, namespace: infra}}]\n  rules:\n  \
             - matches: [{{path: {{type: PathPrefix, value: /tie}}}}]\n    \
             backendRefs: [{{name: svc, namespace: infra, port: 8080}}]\n"
        )
    };
    let yaml = format!("{gateway}{}{}", tied("t", "zz"), tied("t-x", "aa"));
    let c = compile(&snapshot(&yaml), &CompileOptions::default());
    assert_eq!(
        lookup_route(&c, "any", "/tie", &[]).as_deref(),
        Some("t-x/aa#0")
    );
}

/// A `RegularExpression` path reads a percent-encoding of an unreserved character as the
/// character, as request paths arrive with it decoded: `/r%7E.*` matches `/r~x`.
#[test]
fn a_path_pattern_reads_unreserved_encodings_as_their_characters() {
    let rules = "  rules:\n  \
        - matches: [{path: {type: RegularExpression, value: '/r%7E.*'}}]\n    \
          backendRefs: [{name: svc, port: 8080}]\n  \
        - matches: [{path: {type: RegularExpression, value: '/c[%41-%5a]t'}}]\n    \
          backendRefs: [{name: svc, port: 8080}]\n  \
        - matches: [{path: {type: RegularExpression, value: '/d%2E'}}]\n    \
          backendRefs: [{name: svc, port: 8080}]\n  \
        - matches: [{path: {type: RegularExpression, value: '/e%41('}}]\n    \
          backendRefs: [{name: svc, port: 8080}]\n";
    let c = compile(
        &snapshot(&format!("{BASE}{}", route("r", rules))),
        &CompileOptions::default(),
    );
    assert_eq!(
        lookup_route(&c, "any", "/r~x", &[]).as_deref(),
        Some("infra/r#0")
    );
    assert_eq!(
        lookup_route(&c, "any", "/cQt", &[]).as_deref(),
        Some("infra/r#1")
    );
    // `%2E` is a dot, not any character.
    assert_eq!(
        lookup_route(&c, "any", "/d.", &[]).as_deref(),
        Some("infra/r#2")
    );
    assert_eq!(lookup_route(&c, "any", "/dx", &[]), None);
    // A pattern that does not compile is quoted as written.
    let status = &c.report.get(Kind::HttpRoute, "infra", "r").unwrap().status;
    let partly = condition(&status["parents"][0]["conditions"], "PartiallyInvalid");
    let message = partly["message"].as_str().unwrap();
    assert!(message.contains("\"/e%41(\""), "{message}");
}

/// GRPCRouteRule's precedence: the characters of the matching service, then those of the
/// matching method. Every match of a request that names its service counts the same
/// characters, exactly or by a pattern: naming both parts ranks above the service alone, that
/// above the method alone (a newer pattern for any method in any service used to win over an
/// older service match), that above naming neither; the older route breaks a tie.
#[test]
fn a_grpc_service_match_ranks_above_a_method_match() {
    let text = [
        BASE.to_string(),
        grpc_route(
            "method-only",
            "2020-01-01T00:00:00Z",
            "  rules:\n  - matches: [{method: {method: Foo}}]\n    \
             backendRefs: [{name: svc, port: 8080}]\n",
        ),
        grpc_route(
            "service-only",
            "2021-01-01T00:00:00Z",
            "  rules:\n  - matches: [{method: {service: a.B}}]\n    \
             backendRefs: [{name: svc, port: 8080}]\n",
        ),
        grpc_route(
            "method-pattern",
            "2022-01-01T00:00:00Z",
            "  rules:\n  - matches: [{method: {type: RegularExpression, method: '.*'}}]\n    \
             backendRefs: [{name: svc, port: 8080}]\n",
        ),
        grpc_route(
            "both-pattern",
            "2023-01-01T00:00:00Z",
            "  rules:\n  - matches: [{method: {type: RegularExpression, service: 'a\\.B', method: 'F.*'}}]\n    \
             backendRefs: [{name: svc, port: 8080}]\n",
        ),
        grpc_route(
            "any",
            "2019-01-01T00:00:00Z",
            "  rules:\n  - backendRefs: [{name: svc, port: 8080}]\n",
        ),
    ]
    .concat();
    let c = compile(&snapshot(&text), &CompileOptions::default());
    let route_of = |path: &str| lookup_route(&c, "any", path, &[]);
    let cases = [
        ("/a.B/Foo", "infra/both-pattern#0"),
        ("/a.B/Bar", "infra/service-only#0"),
        ("/c.D/Foo", "infra/method-only#0"),
        ("/c.D/Bar", "infra/method-pattern#0"),
        ("/c.D", "infra/any#0"),
    ];
    for (path, wanted) in cases {
        assert_eq!(route_of(path).as_deref(), Some(wanted), "{path}");
    }
    // explain takes the same road, and /debug/routes lists the entries in precedence.
    let question = |path: &str| crate::routing::explain::Question {
        listener: "infra/gw/http".to_string(),
        host: "any".to_string(),
        path: path.to_string(),
        method: "POST".to_string(),
        headers: Vec::new(),
    };
    for (path, wanted) in cases {
        let answer = question(path).answer(&c.table, &c.report);
        assert_eq!(
            answer.matched.as_deref(),
            Some(wanted),
            "{path}: {:?}",
            answer.steps
        );
    }
    let routes = serde_json::to_string(&crate::routing::explain::describe(&c.table)).unwrap();
    let at = |needle: &str| {
        routes
            .find(needle)
            .unwrap_or_else(|| panic!("{needle}: {routes}"))
    };
    let listed = [
        "infra/both-pattern",
        "infra/service-only",
        "infra/method-only",
        "infra/method-pattern",
        "infra/any",
    ];
    for pair in listed.windows(2) {
        assert!(at(pair[0]) < at(pair[1]), "{pair:?}: {routes}");
    }
}

/// A GRPCRoute has no redirects, rewrites or CORS: a rule that asks for one is dropped, and
/// the route says why, rather than redirecting or rewriting gRPC calls.
#[test]
fn a_grpc_route_refuses_the_filters_only_an_http_route_has() {
    let text = [
        BASE.to_string(),
        grpc_route(
            "g",
            "2020-01-01T00:00:00Z",
            "  rules:\n  - matches: [{method: {service: a.B}}]\n    \
             filters: [{type: URLRewrite, urlRewrite: {hostname: x.example}}]\n    \
             backendRefs: [{name: svc, port: 8080}]\n  \
             - filters: [{type: RequestHeaderModifier, \
             requestHeaderModifier: {set: [{name: x-a, value: b}]}}]\n    \
             backendRefs: [{name: svc, port: 8080}]\n",
        ),
    ]
    .concat();
    let c = compile(&snapshot(&text), &CompileOptions::default());
    let status = &c.report.get(Kind::GrpcRoute, "infra", "g").unwrap().status;
    let partly = condition(&status["parents"][0]["conditions"], "PartiallyInvalid");
    assert!(
        partly["message"]
            .as_str()
            .is_some_and(|m| m.contains("URLRewrite") && m.contains("not one a GRPCRoute has")),
        "{partly}"
    );
    assert_eq!(
        lookup_route(&c, "any", "/a.B/Foo", &[]).as_deref(),
        Some("infra/g#1")
    );
}

/// An empty `replacePrefixMatch` takes the matched prefix away, as HTTPPathModifier documents.
#[test]
fn an_empty_prefix_replacement_is_accepted() {
    let text = [
        BASE.to_string(),
        route(
            "r",
            "  rules:\n  - matches: [{path: {type: PathPrefix, value: /foo}}]\n    \
             filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, \
             replacePrefixMatch: \"\"}}}]\n    backendRefs: [{name: svc, port: 8080}]\n",
        ),
    ]
    .concat();
    let c = compile(&snapshot(&text), &CompileOptions::default());
    assert!(c.report.problems().is_empty(), "{:?}", c.report.problems());
    assert_eq!(
        lookup_route(&c, "any", "/foo/bar", &[]).as_deref(),
        Some("infra/r#0")
    );
}

/// An HTTP/2 client may split its Cookie field into one field per cookie (RFC 9113, section
/// 8.2.3): a header match sees them joined back with "; ", as one HTTP/1.1 field carries them.
#[test]
fn cookie_crumbs_match_as_the_cookie_they_came_from() {
    let text = [
        BASE.to_string(),
        route(
            "r",
            "  rules:\n  - matches: [{headers: [{name: cookie, value: \"a=1; b=2\"}]}]\n    \
             backendRefs: [{name: svc, port: 8080}]\n",
        ),
    ]
    .concat();
    let c = compile(&snapshot(&text), &CompileOptions::default());
    let crumbs = [("cookie", "a=1"), ("cookie", "b=2")];
    assert_eq!(
        lookup_route(&c, "any", "/", &crumbs).as_deref(),
        Some("infra/r#0")
    );
    assert_eq!(
        lookup_route(&c, "any", "/", &[("cookie", "a=1; b=2")]).as_deref(),
        Some("infra/r#0")
    );
}

/// On a TLS passthrough listener, explain answers for the connection: which TLSRoute takes the
/// SNI (given as the host), or that none does.
#[test]
fn explain_on_a_tls_listener_follows_the_sni() {
    use crate::routing::explain::Question;
    let yaml = format!(
        "{BASE}---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\n\
         metadata: {{name: edge, namespace: infra}}\nspec:\n  gatewayClassName: portcullis\n  \
         listeners: [{{name: tls, port: 443, protocol: TLS, tls: {{mode: Passthrough}}}}]\n\
         ---\napiVersion: gateway.networking.k8s.io/v1alpha2\nkind: TLSRoute\n\
         metadata: {{name: pt, namespace: infra}}\n\
         spec:\n  parentRefs: [{{name: edge}}]\n  hostnames: [pt.example]\n  \
         rules: [{{backendRefs: [{{name: svc, port: 8080}}]}}]\n"
    );
    let c = compile(&snapshot(&yaml), &CompileOptions::default());
    let ask = |host: &str| {
        Question {
            listener: "infra/edge/tls".to_string(),
            host: host.to_string(),
            path: "/".to_string(),
            method: "GET".to_string(),
            headers: Vec::new(),
        }
        .answer(&c.table, &c.report)
    };
    let answer = ask("pt.example");
    assert_eq!(
        answer.matched.as_deref(),
        Some("infra/pt#0"),
        "{:?}",
        answer.steps
    );
    assert_eq!(answer.status, None);
    let answer = ask("other.example");
    assert_eq!(answer.matched, None);
    assert!(
        answer
            .steps
            .last()
            .unwrap()
            .contains("no TLSRoute takes SNI"),
        "{:?}",
        answer.steps
    );
}

#[test]
fn terminating_listeners_with_overlapping_hostnames_on_a_port_are_marked_overlapping_tls() {
    let yaml = BASE.replace(
        "  - {name: http, port: 80, protocol: HTTP}",
        "  - {name: http, port: 80, protocol: HTTP}\n  \
         - {name: foo, port: 443, protocol: HTTPS, hostname: foo.example.com}\n  \
         - {name: org, port: 443, protocol: HTTPS, hostname: foo.example.org}\n  \
         - {name: wild, port: 443, protocol: HTTPS, hostname: \"*.example.com\"}\n  \
         - {name: deeper, port: 8443, protocol: HTTPS, hostname: \"*.a.example.net\"}\n  \
         - {name: shallow, port: 8443, protocol: TLS, hostname: \"*.example.net\", \
            tls: {mode: Terminate}}\n  \
         - {name: any, port: 9443, protocol: HTTPS}\n  \
         - {name: named, port: 9443, protocol: HTTPS, hostname: z.example}\n  \
         - {name: pass, port: 9443, protocol: TLS, hostname: p.example, \
            tls: {mode: Passthrough}}\n  \
         - {name: other-port, port: 8444, protocol: HTTPS, hostname: foo.example.com}",
    );
    let c = compile(&snapshot(&yaml), &CompileOptions::default());
    let gw = &c.report.get(Kind::Gateway, "infra", "gw").unwrap().status;
    let overlap = |name: &str| {
        let listener = gw["listeners"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["name"] == name)
            .unwrap();
        (listener["conditions"].as_array().unwrap().iter())
            .find(|c| c["type"] == "OverlappingTLSConfig")
            .cloned()
    };
    // The spec's own example: foo.example.com and *.example.com overlap, foo.example.org
    // overlaps neither. The condition is set only when true.
    for name in ["foo", "wild"] {
        let c = overlap(name).unwrap_or_else(|| panic!("{name}: no OverlappingTLSConfig"));
        assert_eq!(c["status"], "True", "{name}");
        assert_eq!(c["reason"], "OverlappingHostnames", "{name}");
    }
    let foo = overlap("foo").unwrap();
    assert!(
        foo["message"].as_str().unwrap().contains("\"wild\""),
        "{foo}"
    );
    // A wildcard covers a deeper wildcard, HTTPS and TLS Terminate alike.
    assert!(overlap("deeper").is_some());
    assert!(overlap("shallow").is_some());
    // A listener without a hostname takes every name on its port.
    assert!(overlap("any").is_some());
    assert!(overlap("named").is_some());
    // Not marked: another hostname, cleartext, passthrough (nothing terminated), another port.
    for name in ["org", "http", "pass", "other-port"] {
        assert_eq!(overlap(name), None, "{name}");
    }
    // Overlapping is no problem of the configuration: both listeners are served.
    assert!(
        !c.report
            .problems()
            .iter()
            .any(|p| p.contains("Overlapping")),
        "{:?}",
        c.report.problems()
    );
}

/// An HTTPRoute and a GRPCRoute whose hostnames meet on a listener are not merged: the older
/// is served, the newer rejected on that Gateway (`Accepted=False Conflicted`) and not counted
/// in `attachedRoutes`. Routes of one kind, or on hostnames apart, are left alone.
#[test]
fn an_http_route_and_a_grpc_route_on_one_hostname_are_not_merged() {
    let http = |name: &str, created: &str, hostnames: &str| {
        format!(
            "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
             metadata: {{name: {name}, namespace: infra, creationTimestamp: \"{created}\"}}\n\
             spec:\n  parentRefs: [{{name: gw}}]\n  hostnames: {hostnames}\n  rules:\n  \
             - matches: [{{path: {{type: PathPrefix, value: /{name}}}}}]\n    \
             backendRefs: [{{name: svc, port: 8080}}]\n"
        )
    };
    let grpc = |name: &str, created: &str, hostnames: &str| {
        grpc_route(
            name,
            created,
            &format!(
                "  hostnames: {hostnames}\n  rules:\n  \
                 - matches: [{{method: {{service: {name}.Svc}}}}]\n    \
                 backendRefs: [{{name: svc, port: 8080}}]\n"
            ),
        )
    };
    let yaml = [
        BASE.to_string(),
        // Older gRPC route; a newer HTTP one on the same hostname loses to it.
        grpc("g1", "2020-01-01T00:00:00Z", "[a.example]"),
        http("h1", "2021-01-01T00:00:00Z", "[a.example]"),
        // Older HTTP route on a wildcard; a newer gRPC one on a name it covers loses.
        http("h2", "2020-01-01T00:00:00Z", "['*.b.example']"),
        grpc("g2", "2021-01-01T00:00:00Z", "[x.b.example]"),
        // Apart: another hostname, and a second HTTP route on a.example.
        grpc("g3", "2021-01-01T00:00:00Z", "[c.example]"),
        http("h3", "2022-01-01T00:00:00Z", "[d.example]"),
        grpc("g4", "2022-06-01T00:00:00Z", "[a.example]"),
    ]
    .concat();
    let c = compile(&snapshot(&yaml), &CompileOptions::default());
    let accepted = |kind: Kind, name: &str| {
        let status = &c.report.get(kind, "infra", name).unwrap().status;
        condition(&status["parents"][0]["conditions"], "Accepted")
    };
    for (kind, name, winner) in [
        (Kind::HttpRoute, "h1", "GRPCRoute infra/g1"),
        (Kind::GrpcRoute, "g2", "HTTPRoute infra/h2"),
    ] {
        let a = accepted(kind, name);
        assert_eq!(a["status"], "False", "{name}: {a}");
        assert_eq!(a["reason"], "Conflicted", "{name}: {a}");
        assert!(
            a["message"].as_str().unwrap().contains(winner),
            "{name}: {a}"
        );
    }
    for (kind, name) in [
        (Kind::GrpcRoute, "g1"),
        (Kind::HttpRoute, "h2"),
        (Kind::GrpcRoute, "g3"),
        (Kind::HttpRoute, "h3"),
        // Of one kind with g1, and h1 (which it would meet) is rejected already.
        (Kind::GrpcRoute, "g4"),
    ] {
        assert_eq!(accepted(kind, name)["status"], "True", "{name}");
    }
    // The loser serves nothing there; the winner does.
    assert_eq!(lookup_route(&c, "a.example", "/h1", &[]), None);
    assert_eq!(
        lookup_route(&c, "x.b.example", "/h2", &[]).as_deref(),
        Some("infra/h2#0")
    );
    assert_eq!(lookup_route(&c, "x.b.example", "/g2.Svc/Call", &[]), None);
    let gw = &c.report.get(Kind::Gateway, "infra", "gw").unwrap().status;
    assert_eq!(gw["listeners"][0]["attachedRoutes"], 5);
    // A problem for `check`.
    assert!(
        c.report
            .problems()
            .iter()
            .any(|p| p.contains("infra/h1") && p.contains("not accepted (Conflicted)")),
        "{:?}",
        c.report.problems()
    );
}

/// Of header modifier entries that name one header, whatever its case, the first counts and
/// the others are ignored (spec, HTTPHeader: "Subsequent entries with an equivalent header
/// name MUST be ignored").
#[test]
fn the_first_of_header_entries_naming_one_header_counts() {
    let yaml = format!(
        "{BASE}{}",
        route(
            "a",
            "  rules:\n  - filters: [{type: RequestHeaderModifier, requestHeaderModifier: \
             {set: [{name: X-A, value: first}, {name: x-a, value: second}], \
             add: [{name: X-B, value: one}, {name: x-b, value: two}]}}]\n    \
             backendRefs: [{name: svc, port: 8080}]\n",
        )
    );
    let c = compile(&snapshot(&yaml), &CompileOptions::default());
    let header = |_: &str| -> Vec<&str> { Vec::new() };
    let view = RequestView {
        host: "a.example",
        path: "/",
        query: None,
        method: "GET",
        header: &header,
    };
    let bind = "127.0.0.1:80".parse().unwrap();
    let matched = c
        .table
        .lookup(&bind, &view)
        .unwrap_or_else(|_| panic!("the route is served"));
    let edits = matched
        .entry
        .rule
        .filters
        .iter()
        .find_map(|f| match f {
            crate::routing::table::Filter::RequestHeaders(edits) => Some(edits),
            _ => None,
        })
        .expect("a request header filter");
    assert_eq!(edits.set, [("x-a".to_string(), "first".to_string())]);
    assert_eq!(edits.add, [("x-b".to_string(), "one".to_string())]);
}

/// The HTTPRoute/GRPCRoute judgement is per listener: a GRPCRoute that meets an older
/// HTTPRoute on one listener is rejected there and served on the Gateway's other listener,
/// whose parent status says Accepted=True and whose attachedRoutes counts it.
#[test]
fn a_grpc_route_rejected_on_one_listener_is_served_on_another() {
    let gateway = BASE.replace(
        "  - {name: http, port: 80, protocol: HTTP}\n",
        "  - {name: a, port: 80, protocol: HTTP, hostname: a.example}\n  \
         - {name: b, port: 80, protocol: HTTP, hostname: b.example}\n",
    );
    let yaml = format!(
        "{gateway}---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
         metadata: {{name: old, namespace: infra, creationTimestamp: \"2020-01-01T00:00:00Z\"}}\n\
         spec:\n  parentRefs: [{{name: gw, sectionName: a}}]\n  \
         rules: [{{backendRefs: [{{name: svc, port: 8080}}]}}]\n\
         ---\napiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\n\
         metadata: {{name: new, namespace: infra, creationTimestamp: \"2021-01-01T00:00:00Z\"}}\n\
         spec:\n  parentRefs: [{{name: gw, sectionName: a}}, {{name: gw, sectionName: b}}]\n  \
         rules: [{{backendRefs: [{{name: svc, port: 8080}}]}}]\n"
    );
    let c = compile(&snapshot(&yaml), &CompileOptions::default());
    let parents = &c
        .report
        .get(Kind::GrpcRoute, "infra", "new")
        .unwrap()
        .status["parents"];
    let on_a = condition(&parents[0]["conditions"], "Accepted");
    assert_eq!(on_a["reason"], "Conflicted", "{on_a}");
    assert!(
        on_a["message"]
            .as_str()
            .unwrap()
            .contains("HTTPRoute infra/old is served on the same hostname of listener a"),
        "{on_a}"
    );
    let on_b = condition(&parents[1]["conditions"], "Accepted");
    assert_eq!(on_b["status"], "True", "{on_b}");
    let gw = &c.report.get(Kind::Gateway, "infra", "gw").unwrap().status;
    assert_eq!(gw["listeners"][0]["attachedRoutes"], 1);
    assert_eq!(gw["listeners"][1]["attachedRoutes"], 1);
    assert_eq!(
        lookup_route(&c, "a.example", "/pkg.Svc/Call", &[]).as_deref(),
        Some("infra/old#0")
    );
    assert_eq!(
        lookup_route(&c, "b.example", "/pkg.Svc/Call", &[]).as_deref(),
        Some("infra/new#0")
    );
}

/// Two parentRefs that name one Gateway alike (the route's namespace written out in one) attach
/// the route once: attachedRoutes counts routes, not parentRefs.
#[test]
fn a_route_naming_one_gateway_twice_counts_once() {
    let yaml = format!(
        "{BASE}{}",
        route("a", "  rules: [{backendRefs: [{name: svc, port: 8080}]}]\n").replace(
            "parentRefs: [{name: gw}]",
            "parentRefs: [{name: gw}, {name: gw, namespace: infra, sectionName: http}]"
        )
    );
    let c = compile(&snapshot(&yaml), &CompileOptions::default());
    let parents = &c.report.get(Kind::HttpRoute, "infra", "a").unwrap().status["parents"];
    for parent in parents.as_array().unwrap() {
        assert_eq!(
            condition(&parent["conditions"], "Accepted")["status"],
            "True"
        );
    }
    let gw = &c.report.get(Kind::Gateway, "infra", "gw").unwrap().status;
    assert_eq!(gw["listeners"][0]["attachedRoutes"], 1);
}

/// A Gateway that is not accepted as a whole (its class is not, or it asks for an address of a
/// type it cannot have) accepts no route: each says why, and no listener counts it.
#[test]
fn a_gateway_not_accepted_accepts_no_route() {
    let attached = route("a", "  rules: [{backendRefs: [{name: svc, port: 8080}]}]\n");
    for (change, from, to) in [
        (
            "class not accepted",
            "spec: {controllerName: portcullis.dev/gateway-controller}",
            "spec: {controllerName: portcullis.dev/gateway-controller, parametersRef: \
             {group: \"\", kind: ConfigMap, name: x, namespace: infra}}",
        ),
        (
            "unsupported address",
            "  gatewayClassName: portcullis\n",
            "  gatewayClassName: portcullis\n  \
             addresses: [{type: Hostname, value: gw.example}]\n",
        ),
    ] {
        let yaml = format!("{}{attached}", BASE.replace(from, to));
        let c = compile(&snapshot(&yaml), &CompileOptions::default());
        let gw = &c.report.get(Kind::Gateway, "infra", "gw").unwrap().status;
        assert_eq!(
            condition(&gw["conditions"], "Accepted")["status"],
            "False",
            "{change}"
        );
        assert_eq!(gw["listeners"][0]["attachedRoutes"], 0, "{change}");
        let parents = &c.report.get(Kind::HttpRoute, "infra", "a").unwrap().status["parents"];
        let accepted = condition(&parents[0]["conditions"], "Accepted");
        assert_eq!(accepted["status"], "False", "{change}: {accepted}");
        assert_eq!(
            accepted["reason"], "NoMatchingParent",
            "{change}: {accepted}"
        );
        assert!(
            accepted["message"]
                .as_str()
                .unwrap()
                .starts_with("Gateway infra/gw is not accepted ("),
            "{change}: {accepted}"
        );
    }
}

/// A backendRef to a Service port whose appProtocol the gateway cannot speak is invalid
/// (ResolvedRefs=False UnsupportedProtocol), as is one asking for TLS without a
/// BackendTLSPolicy to configure it; the protocols it speaks resolve.
#[test]
fn a_backend_app_protocol_the_gateway_cannot_speak_is_unsupported() {
    for (app_protocol, expected) in [
        ("http", None),
        ("HTTP", None),
        ("kubernetes.io/h2c", None),
        ("kubernetes.io/ws", None),
        ("grpc", None),
        ("example.com/foo", Some("does not speak")),
        ("mysql", Some("does not speak")),
        ("kubernetes.io/wss", Some("needs TLS to the backend")),
        ("https", Some("needs TLS to the backend")),
    ] {
        let yaml = format!(
            "{}{}",
            BASE.replace(
                "spec: {ports: [{name: http, port: 8080}]}",
                &format!(
                    "spec: {{ports: [{{name: http, port: 8080, appProtocol: {app_protocol}}}]}}"
                ),
            ),
            route("a", "  rules: [{backendRefs: [{name: svc, port: 8080}]}]\n")
        );
        let c = compile(&snapshot(&yaml), &CompileOptions::default());
        let parents = &c.report.get(Kind::HttpRoute, "infra", "a").unwrap().status["parents"];
        let resolved = condition(&parents[0]["conditions"], "ResolvedRefs");
        match expected {
            None => assert_eq!(resolved["status"], "True", "{app_protocol}: {resolved}"),
            Some(why) => {
                assert_eq!(resolved["reason"], "UnsupportedProtocol", "{app_protocol}");
                assert!(
                    resolved["message"].as_str().unwrap().contains(why),
                    "{app_protocol}: {resolved}"
                );
            }
        }
    }
}

/// An IPv4 address passes the API's hostname pattern but not its text ("IPs are not allowed"):
/// a listener with one is not accepted, a route with one is not accepted and serves nothing.
#[test]
fn an_ip_address_is_no_hostname() {
    let yaml = format!(
        "{}{}",
        BASE.replace(
            "  - {name: http, port: 80, protocol: HTTP}\n",
            "  - {name: http, port: 80, protocol: HTTP}\n  \
             - {name: ip, port: 81, protocol: HTTP, hostname: 1.2.3.4}\n",
        ),
        route(
            "a",
            "  hostnames: [a.example, 10.0.0.1, '127.1', 0x7f.0.0.1, '2130706433', 1.2.3.4a]\n  \
             rules: [{backendRefs: [{name: svc, port: 8080}]}]\n"
        )
    );
    let c = compile(&snapshot(&yaml), &CompileOptions::default());
    let gw = &c.report.get(Kind::Gateway, "infra", "gw").unwrap().status;
    let listener = condition(&gw["listeners"][1]["conditions"], "Accepted");
    assert_eq!(listener["status"], "False", "{listener}");
    assert!(
        listener["message"].as_str().unwrap().contains("IP address"),
        "{listener}"
    );
    let parents = &c.report.get(Kind::HttpRoute, "infra", "a").unwrap().status["parents"];
    let accepted = condition(&parents[0]["conditions"], "Accepted");
    assert_eq!(accepted["reason"], "UnsupportedValue", "{accepted}");
    assert!(
        accepted["message"]
            .as_str()
            .unwrap()
            .starts_with("spec.hostnames[1] \"10.0.0.1\" is an IP address"),
        "{accepted}"
    );
    assert_eq!(lookup_route(&c, "10.0.0.1", "/", &[]), None);
    for (hostname, address) in [
        ("127.1", true),
        ("0x7f.0.0.1", true),
        ("2130706433", true),
        ("01.2.3.4", true),
        ("1.2.3.4a", false),
        ("*.example", false),
        ("a1.b2", false),
    ] {
        assert_eq!(super::routes::is_ipv4(hostname), address, "{hostname}");
    }
    assert_eq!(lookup_route(&c, "a.example", "/", &[]), None);
}

/// A route kind that allowedRoutes names twice is listed once in supportedKinds.
#[test]
fn a_kind_named_twice_is_supported_once() {
    let yaml = BASE.replace(
        "  - {name: http, port: 80, protocol: HTTP}\n",
        "  - {name: http, port: 80, protocol: HTTP, allowedRoutes: {kinds: \
         [{kind: HTTPRoute}, {kind: HTTPRoute, group: gateway.networking.k8s.io}]}}\n",
    );
    let c = compile(&snapshot(&yaml), &CompileOptions::default());
    let gw = &c.report.get(Kind::Gateway, "infra", "gw").unwrap().status;
    assert_eq!(
        gw["listeners"][0]["supportedKinds"],
        serde_json::json!([{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute"}])
    );
}
