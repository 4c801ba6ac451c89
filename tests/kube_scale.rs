//! Scale in Kubernetes mode, measured on demand: thousands of HTTPRoutes created at once on the
//! local API server while the real binary watches it. Printed: how long until they all serve
//! traffic, how long until all their statuses are written back, and the gateway's peak memory.
//!
//! ```sh
//! cargo test --release --test kube_scale -- --ignored --nocapture
//! PORTCULLIS_SCALE_ROUTES=20000 cargo test --release --test kube_scale -- --ignored --nocapture
//! ```
//!
//! Everything runs on loopback. The figures include the local API server's own cost (it runs in
//! this test process) and whatever else the machine is doing, so compare runs on the same host.

// Not every helper of the shared harness is used here.
#[allow(dead_code)]
mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use support::apiserver::ApiServer;
use support::{client, condition, eventually, loopback, Echo, Gateway};

const GATEWAY_API: &str = "gateway.networking.k8s.io/v1";
const CONTROLLER: &str = "portcullis.dev/gateway-controller";
const NAMESPACE: &str = "apps";
/// Every wait of the measurement is bounded by this.
const LIMIT: Duration = Duration::from_secs(300);
/// How many routes, spread over the whole set, are probed with requests.
const SAMPLE: usize = 50;

fn routes_wanted() -> usize {
    std::env::var("PORTCULLIS_SCALE_ROUTES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(5000)
}

fn route_name(i: usize) -> String {
    format!("route-{i:05}")
}

fn host(i: usize) -> String {
    format!("r{i}.scale.example")
}

fn route(i: usize) -> Value {
    json!({
        "apiVersion": GATEWAY_API, "kind": "HTTPRoute",
        "metadata": {"name": route_name(i), "namespace": NAMESPACE},
        "spec": {
            "parentRefs": [{"name": "gw"}],
            "hostnames": [host(i)],
            "rules": [{
                "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                "backendRefs": [{"name": "echo", "port": 80}],
            }],
        },
    })
}

fn fixtures(server: &ApiServer, echo_port: u16) {
    server.apply(json!({
        "apiVersion": GATEWAY_API, "kind": "GatewayClass",
        "metadata": {"name": "portcullis"},
        "spec": {"controllerName": CONTROLLER},
    }));
    server.apply(json!({"apiVersion": "v1", "kind": "Namespace",
                        "metadata": {"name": NAMESPACE, "labels": {}}}));
    server.apply(json!({
        "apiVersion": GATEWAY_API, "kind": "Gateway",
        "metadata": {"name": "gw", "namespace": NAMESPACE},
        "spec": {
            "gatewayClassName": "portcullis",
            "listeners": [{"name": "http", "port": 80, "protocol": "HTTP",
                           "allowedRoutes": {"namespaces": {"from": "Same"}}}],
        },
    }));
    server.apply(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "echo", "namespace": NAMESPACE},
        "spec": {"ports": [{"name": "http", "port": 80}]},
    }));
    server.apply(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "echo-1", "namespace": NAMESPACE,
                     "labels": {"kubernetes.io/service-name": "echo"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": true}}],
        "ports": [{"name": "http", "port": echo_port}],
    }));
}

/// Whether our `Accepted=True` is written on the route for its current generation.
fn accepted(server: &ApiServer, i: usize) -> bool {
    let Some(route) = server.get(GATEWAY_API, "HTTPRoute", NAMESPACE, &route_name(i)) else {
        return false;
    };
    let Some(parents) = route["status"]["parents"].as_array() else {
        return false;
    };
    parents
        .iter()
        .filter(|p| p["controllerName"] == CONTROLLER)
        .filter_map(|p| condition(&p["conditions"], "Accepted"))
        .any(|c| {
            c["status"] == "True" && c["observedGeneration"] == route["metadata"]["generation"]
        })
}

/// The pid of the gateway serving its admin endpoint on `admin` (found by its command line).
fn pid_of(admin: SocketAddr) -> Option<u32> {
    let wanted = admin.to_string();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if args
            .windows(2)
            .any(|w| w[0] == b"--admin-addr" && w[1] == wanted.as_bytes())
        {
            return Some(pid);
        }
    }
    None
}

/// A `kB` field of `/proc/<pid>/status` (`VmHWM`, `VmRSS`), in MiB.
fn memory_mib(pid: u32, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// User plus system CPU time of the process so far.
fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // USER_HZ is 100 on every Linux this runs on.
    Some(Duration::from_millis(ticks * 10))
}

fn seconds(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

// Printing the figures is what this test is for.
#[allow(clippy::print_stdout)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, run on demand: cargo test --release --test kube_scale -- --ignored --nocapture"]
async fn thousands_of_routes_created_at_once_serve_and_get_status() {
    let n = routes_wanted();
    let server = ApiServer::start().await;
    let echo = Echo::start("echo");
    fixtures(&server, echo.port);

    let gw = Gateway::start(&server, "scale", loopback(41), &["--leader-elect=false"]);
    let http = client();
    eventually("the gateway turns ready", LIMIT, || async {
        (gw.readyz(&http).await == Some(200)).then_some(())
    })
    .await;
    let pid = pid_of(gw.admin).expect("the gateway's process is found in /proc");
    let rules_before = support::metric(&http, gw.admin, "portcullis_route_rules")
        .await
        .expect("/metrics has portcullis_route_rules") as usize;
    let idle_rss = memory_mib(pid, "VmRSS").unwrap_or(f64::NAN);
    let idle_hwm = memory_mib(pid, "VmHWM").unwrap_or(f64::NAN);
    let cpu_before = cpu_time(pid).unwrap_or_default();
    let patches_before = status_patches(&server);
    let expected_rules = rules_before + n;
    let sample: Vec<usize> = (0..SAMPLE.min(n)).map(|k| k * n / SAMPLE.min(n)).collect();

    // Every route at once, as one `kubectl apply -f` of a large file would.
    let started = Instant::now();
    for i in 0..n {
        server.apply(route(i));
    }
    let created = started.elapsed();

    let mut rules_reached: Option<Duration> = None;
    let mut sample_served: Option<Duration> = None;
    let mut statuses_written: Option<Duration> = None;
    let mut attached: Option<Duration> = None;
    let mut waiting: BTreeSet<usize> = sample.iter().copied().collect();
    let mut unwritten: Vec<usize> = (0..n).collect();
    let mut last_rules = 0usize;
    loop {
        let elapsed = started.elapsed();
        if rules_reached.is_none() {
            if let Some(rules) = support::metric(&http, gw.admin, "portcullis_route_rules").await {
                last_rules = rules as usize;
                if last_rules >= expected_rules {
                    rules_reached = Some(started.elapsed());
                }
            }
        }
        if sample_served.is_none() {
            let mut served = Vec::new();
            for &i in &waiting {
                if gw.backend(&http, &host(i), "/").await.as_deref() == Some("echo") {
                    served.push(i);
                }
            }
            for i in served {
                waiting.remove(&i);
            }
            if waiting.is_empty() {
                sample_served = Some(started.elapsed());
            }
        }
        if statuses_written.is_none() {
            unwritten.retain(|&i| !accepted(&server, i));
            if unwritten.is_empty() {
                statuses_written = Some(started.elapsed());
            }
        }
        if attached.is_none() {
            let listeners = server
                .get(GATEWAY_API, "Gateway", NAMESPACE, "gw")
                .map(|g| g["status"]["listeners"].clone());
            if listeners.is_some_and(|l| l[0]["attachedRoutes"] == n) {
                attached = Some(started.elapsed());
            }
        }
        if rules_reached.is_some()
            && sample_served.is_some()
            && statuses_written.is_some()
            && attached.is_some()
        {
            break;
        }
        assert!(
            elapsed < LIMIT,
            "after {elapsed:?}: rules {last_rules}/{expected_rules}, {} sampled routes not \
             serving, {} statuses not written, attachedRoutes reached: {}",
            waiting.len(),
            unwritten.len(),
            attached.is_some()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Once the table is complete, every sampled route answers, each from its own host.
    for &i in &sample {
        assert_eq!(
            gw.backend(&http, &host(i), "/").await.as_deref(),
            Some("echo"),
            "route {i} serves"
        );
    }
    assert_eq!(
        gw.get(&http, "absent.scale.example", "/")
            .await
            .map(|r| r.0),
        Some(404),
        "a host no route names is not served"
    );

    let peak = memory_mib(pid, "VmHWM").unwrap_or(f64::NAN);
    let rss = memory_mib(pid, "VmRSS").unwrap_or(f64::NAN);
    let cpu = cpu_time(pid).unwrap_or_default().saturating_sub(cpu_before);
    let patches = status_patches(&server) - patches_before;
    let figures = [
        ("created on the API server in".to_string(), seconds(created)),
        (
            format!("portcullis_route_rules reaches {expected_rules}"),
            seconds(rules_reached.unwrap()),
        ),
        (
            format!("all {} sampled hosts answer 200", sample.len()),
            seconds(sample_served.unwrap()),
        ),
        (
            "every route's Accepted=True written".to_string(),
            seconds(statuses_written.unwrap()),
        ),
        (
            format!("Gateway attachedRoutes = {n} written"),
            seconds(attached.unwrap()),
        ),
        ("status PATCH requests".to_string(), patches.to_string()),
        (
            "gateway CPU time (user+sys) meanwhile".to_string(),
            seconds(cpu),
        ),
        (
            "gateway memory before the routes".to_string(),
            format!("VmRSS {idle_rss:.1} MiB, VmHWM {idle_hwm:.1} MiB"),
        ),
        (
            "gateway memory after".to_string(),
            format!("VmRSS {rss:.1} MiB, peak VmHWM {peak:.1} MiB"),
        ),
    ];
    println!(
        "kube_scale: {n} HTTPRoutes created at once on the local API server \
         (times from the first creation, polled every ~100 ms)"
    );
    for (what, value) in figures {
        println!("  {what:<44} {value}");
    }
}

fn status_patches(server: &ApiServer) -> usize {
    server
        .requests()
        .iter()
        .filter(|r| r.method == "PATCH" && r.path.ends_with("/status"))
        .count()
}
