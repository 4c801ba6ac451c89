//! SIGTERM during a bounded load run: the gateway stops accepting, lets every request it has
//! accepted finish, and exits 0. Clients may see new connections refused; no accepted request
//! may fail.

#![allow(
    clippy::print_stdout,
    reason = "the figures this prints are the point of the run"
)]

mod common;

use common::{free_port, run_gateway, spawn_gateway, wait_ready, Killed};

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A Gateway with one listener on port 80 routing everything to the echo backend.
fn config(echo_port: u16) -> String {
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
        )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let echo_port = free_port();
    let mut echo = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["echo", "--listen", &format!("127.0.0.1:{echo_port}")])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::fs::write(dir.path().join("all.yaml"), config(echo_port)).unwrap();
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

/// SIGHUP is said and ignored: the gateway keeps serving. At SIGTERM `/readyz` turns 503 at
/// once, so that traffic is sent elsewhere while a request in flight still completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_is_ignored_and_a_draining_gateway_is_not_ready() {
    let dir = tempfile::tempdir().unwrap();
    let echo_port = free_port();
    let echo = Killed(
        Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["echo", "--listen", &format!("127.0.0.1:{echo_port}")])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    std::fs::write(dir.path().join("all.yaml"), config(echo_port)).unwrap();
    let (mut gateway, listen, admin) = run_gateway(dir.path(), &["--drain-timeout", "10s"]);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    wait_ready(&client, admin).await;
    let signal = |name: &str, pid: u32| {
        let sent = Command::new("kill")
            .args([&format!("-{name}"), &pid.to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
    };
    let pid = gateway.0.id();
    let get = |url: String| {
        let client = client.clone();
        async move {
            let r = client.get(url).send().await.ok()?;
            Some((r.status().as_u16(), r.text().await.ok()?))
        }
    };
    let readyz = format!("http://127.0.0.1:{admin}/readyz");
    signal("HUP", pid);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        gateway.0.try_wait().unwrap().is_none(),
        "SIGHUP ended the gateway"
    );
    let through = get(format!("http://127.0.0.1:{listen}/")).await;
    assert_eq!(through.map(|r| r.0), Some(200));
    assert_eq!(get(readyz.clone()).await.map(|r| r.0), Some(200));

    // In flight when SIGTERM comes: answered, with `Connection: close`.
    let slow = tokio::spawn({
        let client = client.clone();
        let url = format!("http://127.0.0.1:{listen}/slow?delay_ms=1500");
        async move {
            let r = client.get(url).send().await.ok()?;
            let connection = r.headers().get("connection")?.to_str().ok()?.to_string();
            Some((r.status().as_u16(), connection))
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    signal("TERM", pid);
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        match get(readyz.clone()).await {
            Some((503, body)) => {
                assert!(body.contains("shutting down"), "{body}");
                break;
            }
            other => assert!(
                Instant::now() < deadline,
                "still ready while draining: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        gateway.0.try_wait().unwrap().is_none(),
        "exited with a request in flight"
    );
    assert_eq!(slow.await.unwrap(), Some((200, "close".to_string())));
    let deadline = Instant::now() + Duration::from_secs(15);
    while gateway.0.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "gateway did not exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(echo);
}

/// An echo backend and, in front of it, the gateway serving [`config`] from `dir` with `extra`
/// arguments and its stdout as given; returns the echo (killed when dropped), the gateway's
/// process, its listener port and a client, once the gateway is ready.
async fn echo_and_gateway(
    dir: &std::path::Path,
    extra: &[&str],
    stdout: Stdio,
) -> (Killed, std::process::Child, u16, reqwest::Client) {
    let echo_port = free_port();
    let echo = Killed(
        Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["echo", "--listen", &format!("127.0.0.1:{echo_port}")])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    std::fs::write(dir.join("all.yaml"), config(echo_port)).unwrap();
    let (gateway, listen, admin) = spawn_gateway(dir, extra, stdout);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    wait_ready(&client, admin).await;
    (echo, gateway, listen, client)
}

/// A request that finishes while the gateway drains is in the access log when the process has
/// gone, though it ended within the log writer's last interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_served_while_draining_are_logged_before_exit() {
    let dir = tempfile::tempdir().unwrap();
    let (_echo, gateway, listen, client) =
        echo_and_gateway(dir.path(), &["--drain-timeout", "10s"], Stdio::piped()).await;
    let pid = gateway.id();
    let output = tokio::task::spawn_blocking(move || gateway.wait_with_output());

    // Each request ends a moment after SIGTERM, while the gateway drains; the process exits as
    // soon as the last one is answered.
    let mut tags = Vec::new();
    let mut requests = Vec::new();
    for round in 0..5 {
        let tag = format!("drained-{round}");
        let url = format!(
            "http://127.0.0.1:{listen}/{tag}?delay_ms={}",
            300 + round * 20
        );
        let client = client.clone();
        requests.push(tokio::spawn(async move {
            client.get(url).send().await.map(|r| r.status().as_u16())
        }));
        tags.push(tag);
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    for request in requests {
        assert_eq!(request.await.unwrap().ok(), Some(200));
    }
    let output = tokio::time::timeout(Duration::from_secs(20), output)
        .await
        .expect("the gateway exits")
        .unwrap()
        .unwrap();
    assert!(output.status.success());
    let log = String::from_utf8_lossy(&output.stdout);
    for tag in &tags {
        assert!(
            log.lines().any(|l| l.contains(tag.as_str())),
            "no access log line for /{tag}; the log was:\n{log}"
        );
    }
}

/// A second SIGTERM during the drain (an operator's second Ctrl-C) stops the gateway at once,
/// without waiting for the requests still open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_ends_the_drain_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (_echo, gateway, listen, client) = echo_and_gateway(
        dir.path(),
        &["--drain-timeout", "30s", "--access-log-sample", "0"],
        Stdio::null(),
    )
    .await;
    let pid = gateway.id().to_string();
    let exited = tokio::task::spawn_blocking(move || gateway.wait_with_output());
    // A request that would hold the drain for 10 s.
    let slow = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .get(format!("http://127.0.0.1:{listen}/slow?delay_ms=10000"))
                .send()
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let term = || Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    term();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second = Instant::now();
    term();
    let output = tokio::time::timeout(Duration::from_secs(20), exited)
        .await
        .expect("the gateway exits")
        .unwrap()
        .unwrap();
    let took = second.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "the gateway took {took:?} after the second SIGTERM, the slow request's whole time"
    );
    let _ = output;
    slow.abort();
}

/// A stdout that takes nothing (a pipe whose reader stopped reading) does not hold the exit:
/// the last access log lines are given up, and counted, after a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stdout_no_one_reads_does_not_hold_the_exit() {
    let dir = tempfile::tempdir().unwrap();
    let (_echo, mut gateway, listen, client) =
        echo_and_gateway(dir.path(), &["--drain-timeout", "2s"], Stdio::piped()).await;
    // Held open, never read.
    let _unread = gateway.stdout.take();
    // Far more lines than the pipe holds.
    for _ in 0..1500 {
        let url = format!("http://127.0.0.1:{listen}/{}", "x".repeat(200));
        assert_eq!(client.get(url).send().await.unwrap().status(), 200);
    }
    let pid = gateway.id().to_string();
    let stopped = Instant::now();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let exited = tokio::task::spawn_blocking(move || gateway.wait());
    let status = tokio::time::timeout(Duration::from_secs(15), exited)
        .await
        .expect("the gateway exits though no one reads its stdout")
        .unwrap()
        .unwrap();
    assert!(status.success());
    assert!(
        stopped.elapsed() < Duration::from_secs(10),
        "{:?}",
        stopped.elapsed()
    );
}
