//! End to end: the real binary serves keep-alive traffic while its routes and endpoints are
//! rewritten 100 times. No request may fail, each change must be visible to the next request
//! within a second, and the client's keep-alive connections must survive every swap.

#![allow(
    clippy::print_stdout,
    reason = "the figures this prints are the point of the run"
)]

mod common;

use common::manifests::{endpoint_slice, gateway, gateway_class, listener, service};
use common::{free_port, Killed};

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn spawn(args: &[&str]) -> Killed {
    Killed(
        Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("portcullis binary starts"),
    )
}

fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The GatewayClass and a Gateway with one HTTP listener, the file that never changes.
fn gateway_config() -> String {
    gateway_class() + &gateway("churn", "gw", &listener("http", 80, "HTTP"))
}

/// The route sends `/` to Service `target`; both Services' endpoints are given explicitly, so
/// that a step can move a Service to the other echo process.
fn config(step: usize, target: &str, a_port: u16, b_port: u16) -> String {
    let route = format!(
        r#"---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: r, namespace: churn}}
spec:
  parentRefs: [{{name: gw}}]
  rules:
  - filters:
    - type: ResponseHeaderModifier
      responseHeaderModifier: {{set: [{{name: x-step, value: "{step}"}}]}}
    backendRefs: [{{name: {target}, port: 80}}]
"#
    );
    [
        route,
        service("churn", "svc-a"),
        service("churn", "svc-b"),
        endpoint_slice("churn", "svc-a", a_port),
        endpoint_slice("churn", "svc-b", b_port),
    ]
    .concat()
}

/// Reads one unlabelled sample from the admin endpoint's metrics.
async fn scrape(client: &reqwest::Client, admin: SocketAddr, metric: &str) -> f64 {
    let body = client
        .get(format!("http://{admin}/metrics"))
        .send()
        .await
        .expect("admin endpoint answers")
        .text()
        .await
        .unwrap_or_default();
    body.lines()
        .find(|l| l.starts_with(metric))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

/// Runs with the default threads, then on one serving thread, where the compile loop shares
/// the thread with requests. One after the other, not as two tests: tests of one binary run
/// in parallel, and ports picked by [`free_port`] in one could be picked again by the other
/// before its processes bind them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_and_endpoints_change_100_times_under_keepalive_load() {
    reload_under_load(None).await;
    reload_under_load(Some("1")).await;
}

async fn reload_under_load(threads: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let (echo_1, echo_2) = (free_port(), free_port());
    let _e1 = spawn(&[
        "echo",
        "--listen",
        &format!("127.0.0.1:{echo_1}"),
        "--name",
        "one",
    ]);
    let _e2 = spawn(&[
        "echo",
        "--listen",
        &format!("127.0.0.1:{echo_2}"),
        "--name",
        "two",
    ]);
    std::fs::write(dir.path().join("gateway.yaml"), gateway_config()).unwrap();
    let routes = dir.path().join("routes.yaml");
    write_atomically(&routes, &config(0, "svc-a", echo_1, echo_2));

    let listen = free_port();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let offset = (i32::from(listen) - 80).to_string();
    let mut args = vec![
        "run",
        "--config-dir",
        dir.path().to_str().unwrap(),
        "--port-offset",
        &offset,
    ];
    let admin_text = admin.to_string();
    args.extend(["--admin-addr", &admin_text]);
    if let Some(threads) = threads {
        args.extend(["--threads", threads]);
    }
    let _gw = spawn(&args);
    let url = format!("http://127.0.0.1:{listen}/");
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(8)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = client.get(&url).send().await {
            if r.status() == 200 {
                break;
            }
        }
        assert!(Instant::now() < deadline, "gateway did not start serving");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let admin_client = reqwest::Client::new();
    let accepted_before = scrape(
        &admin_client,
        admin,
        "portcullis_downstream_connections_accepted_total",
    )
    .await;

    // Background load: four workers on keep-alive connections, stopped by `stop`.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (client, url) = (client.clone(), url.clone());
        let (stop, sent, failed) = (stop.clone(), sent.clone(), failed.clone());
        workers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let ok = match client.get(&url).send().await {
                    Ok(r) => r.status() == 200 && r.bytes().await.is_ok(),
                    Err(_) => false,
                };
                sent.fetch_add(1, Ordering::Relaxed);
                if !ok {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }

    let mut slowest = Duration::ZERO;
    for step in 1..=100usize {
        // The route's Service flips every two steps; the Services' endpoints swap between the
        // two echo processes every step.
        let service = if step % 4 == 1 || step % 4 == 2 {
            "svc-b"
        } else {
            "svc-a"
        };
        let (a_port, b_port) = if step % 2 == 0 {
            (echo_2, echo_1)
        } else {
            (echo_1, echo_2)
        };
        let changed = Instant::now();
        write_atomically(&routes, &config(step, service, a_port, b_port));
        let want = step.to_string();
        loop {
            let r = client.get(&url).send().await.expect("request during churn");
            assert_eq!(r.status(), 200);
            if r.headers().get("x-step").and_then(|v| v.to_str().ok()) == Some(want.as_str()) {
                break;
            }
            assert!(
                changed.elapsed() < Duration::from_secs(5),
                "step {step} never became visible"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        slowest = slowest.max(changed.elapsed());
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let accepted_after = scrape(
        &admin_client,
        admin,
        "portcullis_downstream_connections_accepted_total",
    )
    .await;
    let new_connections = accepted_after - accepted_before;
    let (sent, failed) = (sent.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!(
        "churn: {sent} requests, {failed} failed, slowest change-to-visible {slowest:?}, \
         {new_connections} new client connections"
    );
    assert_eq!(failed, 0, "requests failed during configuration changes");
    assert!(
        sent > 100,
        "the load generator barely ran ({sent} requests)"
    );
    assert!(
        slowest < Duration::from_secs(1),
        "a change took {slowest:?} to become visible"
    );
    // Table swaps must not close keep-alive connections: the client pools at most 8 idle
    // connections, so the whole run should need only a handful of new ones.
    assert!(
        new_connections <= 16.0,
        "connections were dropped: {new_connections} new ones"
    );
}
