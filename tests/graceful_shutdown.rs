//! SIGTERM during a bounded load run: the gateway stops accepting, lets every request it has
//! accepted finish, and exits 0. Clients may see new connections refused; no accepted request
//! may fail.

#![allow(
    clippy::print_stdout,
    reason = "the figures this prints are the point of the run"
)]

mod common;

use common::free_port;

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let echo_port = free_port();
    let mut echo = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["echo", "--listen", &format!("127.0.0.1:{echo_port}")])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::fs::write(
        dir.path().join("all.yaml"),
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {{name: portcullis}}\n\
             spec: {{controllerName: portcullis.dev/gateway-controller}}\n---\n\
             apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: gw, namespace: d}}\n\
             spec: {{gatewayClassName: portcullis, listeners: [{{name: web, port: 80, protocol: HTTP}}]}}\n---\n\
             apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r, namespace: d}}\n\
             spec: {{parentRefs: [{{name: gw}}], rules: [{{backendRefs: [{{name: echo, port: 80}}]}}]}}\n---\n\
             apiVersion: v1\nkind: Service\nmetadata: {{name: echo, namespace: d}}\nspec: {{ports: [{{port: 80}}]}}\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: echo-1, namespace: d, labels: {{kubernetes.io/service-name: echo}}}}\n\
             addressType: IPv4\nendpoints: [{{addresses: [127.0.0.1]}}]\nports: [{{port: {echo_port}}}]\n"
        ),
    )
    .unwrap();
    let listen = free_port();
    let mut gateway = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["run", "--config-dir"])
        .arg(dir.path())
        .args(["--admin-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--port-offset", &(i32::from(listen) - 80).to_string()])
        .args(["--drain-timeout", "10s", "--access-log-sample", "0"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{listen}/slow?delay_ms=300");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !client
        .get(&url)
        .send()
        .await
        .is_ok_and(|r| r.status() == 200)
    {
        assert!(Instant::now() < deadline, "gateway never served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let gone = Arc::new(AtomicBool::new(false));
    let (ok, refused, failed) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let mut workers = Vec::new();
    for _ in 0..8 {
        let (client, url, gone) = (client.clone(), url.clone(), gone.clone());
        let (ok, refused, failed) = (ok.clone(), refused.clone(), failed.clone());
        workers.push(tokio::spawn(async move {
            let stop_at = Instant::now() + Duration::from_secs(15);
            while Instant::now() < stop_at && !gone.load(Ordering::Relaxed) {
                match client.get(&url).send().await {
                    Ok(r) => {
                        let status = r.status();
                        match r.bytes().await {
                            Ok(_) if status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                            Ok(_) => panic!("accepted request answered {status}"),
                            Err(e) => {
                                eprintln!("accepted request lost its body: {e:?}");
                                failed.fetch_add(1, Ordering::Relaxed)
                            }
                        }
                    }
                    Err(e) if e.is_connect() => {
                        gone.store(true, Ordering::Relaxed);
                        refused.fetch_add(1, Ordering::Relaxed)
                    }
                    Err(e) => {
                        eprintln!("accepted request failed: {e:?}");
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1350)).await;
    let killed = Command::new("kill")
        .args(["-TERM", &gateway.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let started = Instant::now();
    let status = loop {
        if let Some(status) = gateway.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "gateway did not exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    gone.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let _ = echo.kill();
    let _ = echo.wait();
    let (ok, refused, failed) = (
        ok.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
    );
    println!("drain: {ok} requests served, {refused} refused after SIGTERM, {failed} failed; exit {status}; {:?} to exit", started.elapsed());
    assert!(status.success(), "exit status {status}");
    assert_eq!(failed, 0, "accepted requests failed during the drain");
    assert!(ok > 16, "too little load ran before SIGTERM ({ok})");
}
