//! Route lookup cost for 10, 1,000 and 10,000 HTTPRoutes, and compile time.
//!
//! Routes mix exact hostnames, wildcard hostnames, path prefixes several elements deep, exact
//! paths and header matches, spread over 1 Gateway listener. Requests are drawn from the same
//! mix so that most of them match a rule deep in a bucket, a few fall through to the catch-all.
//! Run with `cargo bench --bench route_lookup`; it prints the compile time of each size and the
//! ratio of lookup cost between 10,000 and 10 routes (the target is at most 1.5).

#![allow(
    clippy::print_stdout,
    reason = "the figures this prints are the point of the run"
)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_main, Criterion};
use portcullis::controller::{directory::parse_manifests, Snapshot};
use portcullis::routing::{compile, CompileOptions, Compiled, RequestView};

const BASE: &str = "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\n\
metadata: {name: portcullis}\nspec: {controllerName: portcullis.dev/gateway-controller}\n---\n\
apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: gw, namespace: bench}\n\
spec:\n  gatewayClassName: portcullis\n  listeners: [{name: http, port: 80, protocol: HTTP, \
allowedRoutes: {namespaces: {from: All}}}]\n---\napiVersion: v1\nkind: Service\n\
metadata: {name: svc, namespace: bench}\nspec: {ports: [{name: http, port: 80}]}\n---\n\
apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: svc-1, namespace: bench, \
labels: {kubernetes.io/service-name: svc}}\naddressType: IPv4\n\
endpoints: [{addresses: [127.0.0.1]}]\nports: [{name: http, port: 8080}]\n";

/// Hostname of route `i`: ten routes share each host, a tenth of hosts are wildcards.
fn host(i: usize) -> String {
    let h = i / 10;
    if h % 10 == 9 {
        format!("*.team{h}.example.com")
    } else {
        format!("app{h}.example.com")
    }
}

fn routes(n: usize) -> String {
    let mut out = String::from(BASE);
    for i in 0..n {
        let (host, v, t) = (host(i), i % 3, i % 7);
        let lines = [
            "---".to_string(),
            "apiVersion: gateway.networking.k8s.io/v1".to_string(),
            "kind: HTTPRoute".to_string(),
            format!("metadata: {{name: r{i}, namespace: bench}}"),
            "spec:".to_string(),
            "  parentRefs: [{name: gw, namespace: bench}]".to_string(),
            format!("  hostnames: ['{host}']"),
            "  rules:".to_string(),
            format!("  - matches: [{{path: {{value: /api/v{v}/svc{i}}}, headers: [{{name: x-tenant, value: t{t}}}]}}]"),
            "    backendRefs: [{name: svc, port: 80}]".to_string(),
            format!("  - matches: [{{path: {{value: /api/v{v}/svc{i}}}}}]"),
            "    backendRefs: [{name: svc, port: 80}]".to_string(),
            format!("  - matches: [{{path: {{type: Exact, value: /health/{i}}}}}]"),
            "    backendRefs: [{name: svc, port: 80}]".to_string(),
        ];
        out.push_str(&lines.join("\n"));
        out.push('\n');
    }
    out
}

fn build(n: usize) -> (Compiled, Duration) {
    let (objects, errors) = parse_manifests(&routes(n)).expect("generated YAML parses");
    assert!(errors.is_empty());
    let snapshot = Snapshot::from_objects(objects);
    let started = Instant::now();
    let compiled = compile(&snapshot, &CompileOptions::default());
    (compiled, started.elapsed())
}

/// Requests against the routes of a table of `n`: (host, path, tenant header).
fn requests(n: usize) -> Vec<(String, String, &'static str)> {
    (0..64)
        .map(|k| {
            let i = (k * 7919) % n;
            let host = host(i).replace('*', "edge");
            let path = match k % 4 {
                0 => format!("/api/v{}/svc{i}/users/42", i % 3),
                1 => format!("/health/{i}"),
                2 => format!("/api/v{}/svc{i}", i % 3),
                _ => "/nothing/here".to_string(),
            };
            (
                host,
                path,
                ["t0", "t1", "t2", "t3", "t4", "t5", "t6"][k % 7],
            )
        })
        .collect()
}

fn lookup_all(c: &Compiled, reqs: &[(String, String, &'static str)]) -> usize {
    let bind = "127.0.0.1:80".parse().unwrap();
    let mut hits = 0;
    for (host, path, tenant) in reqs {
        let header = |name: &str| -> Vec<&str> {
            if name == "x-tenant" {
                vec![*tenant]
            } else {
                Vec::new()
            }
        };
        let view = RequestView {
            host,
            path,
            query: None,
            method: "GET",
            header: &header,
        };
        hits += usize::from(c.table.lookup(&bind, &view).is_ok());
    }
    hits
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_lookup");
    let mut per_size = Vec::new();
    for n in [10usize, 1_000, 10_000] {
        let (compiled, took) = build(n);
        println!(
            "compile {n} HTTPRoutes ({} rules): {took:?}",
            compiled.rules
        );
        let reqs = requests(n);
        assert!(
            lookup_all(&compiled, &reqs) > reqs.len() / 2,
            "most requests should match"
        );
        group.bench_function(format!("{n}_routes_64_requests"), |b| {
            b.iter(|| black_box(lookup_all(&compiled, black_box(&reqs))))
        });
        // A plain timing beside criterion's, for the growth ratio printed below.
        let started = Instant::now();
        let mut rounds = 0u32;
        while started.elapsed() < Duration::from_millis(300) {
            black_box(lookup_all(&compiled, &reqs));
            rounds += 1;
        }
        per_size.push((n, started.elapsed() / (rounds * reqs.len() as u32)));
    }
    group.finish();
    for (n, per) in &per_size {
        println!("lookup with {n} routes: {per:?} per request");
    }
    let ratio = per_size[2].1.as_secs_f64() / per_size[0].1.as_secs_f64();
    println!("lookup cost 10,000 vs 10 routes: {ratio:.2}x (target <= 1.5x)");
}

// The macro generates an undocumented public function.
#[allow(missing_docs)]
mod group {
    criterion::criterion_group!(benches, super::bench);
}
criterion_main!(group::benches);
