//! Metrics and access logs after known traffic: the counters and histogram counts follow what
//! was sent, `promtool check metrics` accepts the scrape, and each request leaves one JSON line
//! with its request id; lines that cannot be written are counted as dropped.

mod common;

use common::manifests::{endpoint_slice, gateway, gateway_class, http_route, listener, service};
use common::{admin_text, free_port, wait_ready, Killed};

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Host a.example routed to an echo backend, b.example to a Service without endpoints.
fn config(echo_port: u16) -> String {
    [
        gateway_class(),
        gateway("obs", "gw", &listener("web", 80, "HTTP")),
        http_route("obs", "route-a", "gw", &["a.example"], "echo"),
        http_route("obs", "route-b", "gw", &["b.example"], "empty"),
        service("obs", "echo"),
        service("obs", "empty"),
        endpoint_slice("obs", "echo", echo_port),
    ]
    .concat()
}

fn sample(metrics: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter(|l| {
            let (series, _) = l.rsplit_once(' ').unwrap_or((l, ""));
            series.split(['{', '}']).next() == Some(name)
                && labels
                    .iter()
                    .all(|(k, v)| series.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

/// An echo backend, and the gateway in front of it serving [`config`] from `dir`, with its
/// stdout (the access log) piped and its stderr as given. Returns the echo process, the gateway
/// process (still to be wrapped in `Killed`), its listener port and its admin port.
fn echo_and_gateway(
    dir: &std::path::Path,
    stderr: Stdio,
) -> (Killed, std::process::Child, u16, u16) {
    let echo_port = free_port();
    let echo = Killed(
        Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["echo", "--listen", &format!("127.0.0.1:{echo_port}")])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    std::fs::write(dir.join("all.yaml"), config(echo_port)).unwrap();
    let (listen, admin) = (free_port(), free_port());
    let gateway = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["run", "--config-dir"])
        .arg(dir)
        .args(["--admin-addr", &format!("127.0.0.1:{admin}")])
        .args(["--port-offset", &(i32::from(listen) - 80).to_string()])
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap();
    (echo, gateway, listen, admin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_histograms_and_access_log_follow_known_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let (_echo, mut gateway, listen, admin) = echo_and_gateway(dir.path(), Stdio::null());
    let stdout = gateway.stdout.take().unwrap();
    let _gateway = Killed(gateway);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let url = format!("http://127.0.0.1:{listen}/");
    wait_ready(&client, admin).await;

    for i in 0..7 {
        let r = client
            .get(&url)
            .header("host", "a.example")
            .header("x-request-id", format!("known-{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    for _ in 0..3 {
        let r = client
            .get(&url)
            .header("host", "b.example")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 503, "a Service without endpoints answers 503");
    }
    for _ in 0..2 {
        let r = client
            .post(&url)
            .header("host", "nowhere.example")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
    }

    let metrics = admin_text(&client, admin, "/metrics").await;
    let requests = "portcullis_requests_total";
    assert_eq!(
        sample(
            &metrics,
            requests,
            &[
                ("route", "obs/route-a"),
                ("status_class", "2xx"),
                ("backend", "obs/echo:80"),
                ("method", "GET")
            ]
        ),
        7.0
    );
    assert_eq!(
        sample(
            &metrics,
            requests,
            &[("route", "obs/route-b"), ("status_class", "5xx")]
        ),
        3.0
    );
    assert_eq!(
        sample(
            &metrics,
            requests,
            &[("route", ""), ("status_class", "4xx"), ("method", "POST")]
        ),
        2.0
    );
    // The listener took the host, though no route did: the 404s are its.
    assert_eq!(
        sample(
            &metrics,
            requests,
            &[
                ("gateway", "obs/gw"),
                ("listener", "web"),
                ("route", ""),
                ("status_class", "4xx")
            ]
        ),
        2.0
    );
    assert_eq!(
        sample(&metrics, "portcullis_request_duration_seconds_count", &[]),
        12.0
    );
    assert_eq!(
        sample(
            &metrics,
            "portcullis_upstream_duration_seconds_count",
            &[("backend", "obs/echo:80")]
        ),
        7.0
    );
    assert_eq!(
        sample(
            &metrics,
            "portcullis_backend_endpoints_ready",
            &[("backend", "obs/empty:80")]
        ),
        0.0
    );
    assert_eq!(
        sample(
            &metrics,
            "portcullis_backend_endpoints_ready",
            &[("backend", "obs/echo:80")]
        ),
        1.0
    );
    assert!(
        sample(
            &metrics,
            "portcullis_upstream_connections_total",
            &[("reused", "true")]
        ) >= 1.0
    );

    // The process's CPU time to the microsecond, not in whole seconds.
    let cpu = sample(&metrics, "process_cpu_seconds_total", &[]);
    assert!(
        cpu > 0.0 && cpu.fract() != 0.0,
        "process_cpu_seconds_total {cpu}"
    );

    // promtool must accept the exposition (CI installs it with Debian's prometheus package).
    let scrape = dir.path().join("scrape.txt");
    std::fs::write(&scrape, &metrics).unwrap();
    let promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&scrape).unwrap())
        .output()
        .expect(
            "promtool is installed (Debian package prometheus; scripts/install-deps installs it)",
        );
    assert!(
        promtool.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&promtool.stdout),
        String::from_utf8_lossy(&promtool.stderr)
    );

    // A request refused before routing (a backslash in its target) is logged with the id its
    // client sent.
    let mut raw = tokio::net::TcpStream::connect(("127.0.0.1", listen))
        .await
        .unwrap();
    tokio::io::AsyncWriteExt::write_all(
        &mut raw,
        b"GET /a\\b HTTP/1.1\r\nhost: a.example\r\nx-request-id: refused-1\r\nconnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut raw, &mut answer)
        .await
        .unwrap();
    assert!(
        answer.starts_with(b"HTTP/1.1 400"),
        "{}",
        String::from_utf8_lossy(&answer)
    );

    // Thirteen access log lines, the first seven carrying the ids the client sent.
    let lines = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .take(13)
            .map(|l| l.unwrap())
            .collect::<Vec<_>>()
    });
    let lines = tokio::time::timeout(Duration::from_secs(10), lines)
        .await
        .expect("access log lines arrive")
        .unwrap();
    let entries: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    for (i, e) in entries.iter().take(7).enumerate() {
        assert_eq!(e["request_id"], format!("known-{i}"));
        assert_eq!(e["route"], "obs/route-a");
        assert_eq!(e["status"], 200);
        assert!(e["upstream_duration"].as_f64().is_some());
    }
    assert_eq!(entries[7]["status"], 503);
    assert_eq!(entries[11]["status"], 404);
    assert_eq!(
        entries[11]["request_id"].as_str().map(str::len),
        Some(32),
        "a generated id"
    );
    assert_eq!(entries[12]["status"], 400);
    assert_eq!(entries[12]["request_id"], "refused-1");
}

/// The status of `GET /` for host `a.example` through the gateway on `listen`.
async fn status_of_a(client: &reqwest::Client, listen: u16) -> u16 {
    client
        .get(format!("http://127.0.0.1:{listen}/"))
        .header("host", "a.example")
        .send()
        .await
        .expect("the gateway answers")
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_lines_that_cannot_be_written_are_counted_as_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let (_echo, mut gateway, listen, admin) = echo_and_gateway(dir.path(), Stdio::piped());
    // Nobody reads the access log: its pipe is closed from the start.
    drop(gateway.stdout.take());
    let stderr = gateway.stderr.take().unwrap();
    let _gateway = Killed(gateway);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    wait_ready(&client, admin).await;
    for _ in 0..5 {
        let status = status_of_a(&client, listen).await;
        assert_eq!(status, 200, "served though the log cannot be written");
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = admin_text(&client, admin, "/metrics").await;
        if sample(&metrics, "portcullis_access_log_dropped_total", &[]) >= 5.0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Said once on stderr.
    let said = tokio::task::spawn_blocking(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .find(|l| l.contains("cannot write the access log"))
    });
    let said = tokio::time::timeout(Duration::from_secs(5), said).await;
    assert!(matches!(said, Ok(Ok(Some(_)))), "{said:?}");
}

/// The gateway, ready, with what it writes on stderr gathered line by line as it comes, and a
/// client for it.
async fn logging_and_ready(
    mut gateway: std::process::Child,
    admin: u16,
) -> (Killed, Arc<Mutex<Vec<String>>>, reqwest::Client) {
    let stderr = gateway.stderr.take().unwrap();
    let gateway = Killed(gateway);
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let collected = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            collected.lock().unwrap().push(line);
        }
    });
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    wait_ready(&client, admin).await;
    (gateway, lines, client)
}

/// A backend that fails is said in the log at its first failure, with the error, and not again
/// for every request that fails after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_backend_is_logged_once_not_per_request() {
    let dir = tempfile::tempdir().unwrap();
    let (echo, gateway, listen, admin) = echo_and_gateway(dir.path(), Stdio::piped());
    let (_gateway, lines, client) = logging_and_ready(gateway, admin).await;
    drop(echo);
    for _ in 0..4 {
        assert_eq!(status_of_a(&client, listen).await, 502);
    }
    // The lines of the four failures have been written by the time the answers came; a
    // moment more for the reader thread.
    tokio::time::sleep(Duration::from_millis(500)).await;
    {
        let lines = lines.lock().unwrap();
        let failed: Vec<&String> = lines
            .iter()
            .filter(|l| l.contains("backend request failed"))
            .collect();
        assert_eq!(failed.len(), 1, "{lines:#?}");
        assert!(
            failed[0].contains("WARN")
                && failed[0].contains("obs/echo")
                && failed[0].contains("failures=1"),
            "{}",
            failed[0]
        );
    }
    // Counted as failures to connect, not as bad answers.
    let metrics = admin_text(&client, admin, "/metrics").await;
    let failures = |kind| {
        sample(
            &metrics,
            "portcullis_upstream_failures_total",
            &[("backend", "obs/echo:80"), ("kind", kind)],
        )
    };
    assert_eq!(
        (failures("connect"), failures("response")),
        (4.0, 0.0),
        "{metrics}"
    );
}

/// A client connection that breaks while sending its request header is counted, not logged:
/// one error line each would let any client fill the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_break_off_their_header_are_counted_not_logged() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let (_echo, gateway, listen, admin) = echo_and_gateway(dir.path(), Stdio::piped());
    let (_gateway, lines, client) = logging_and_ready(gateway, admin).await;
    for _ in 0..5 {
        let mut tcp = std::net::TcpStream::connect(("127.0.0.1", listen)).unwrap();
        tcp.write_all(b"GET / HTTP/1.1\r\nhost: a.example\r\nx-half")
            .unwrap();
    }
    // Two that break off within the HTTP/2 preface, one before it can be told from a request
    // line starting with P.
    for opening in [&b"PRI * HTTP/2.0\r\n"[..], b"P"] {
        let mut tcp = std::net::TcpStream::connect(("127.0.0.1", listen)).unwrap();
        tcp.write_all(opening).unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let metrics = admin_text(&client, admin, "/metrics").await;
        if sample(&metrics, "portcullis_client_header_failures_total", &[]) == 7.0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A whole request still works, and nothing was logged at error level.
    assert_eq!(status_of_a(&client, listen).await, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let lines = lines.lock().unwrap();
    assert!(!lines.iter().any(|l| l.contains("ERROR")), "{lines:#?}");
}

/// A configuration that comes to serve nothing (its directory emptied, say) is valid, and most
/// often a mistake: the gateway warns each time it starts serving nothing, not at every compile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coming_to_serve_nothing_is_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let (_echo, gateway, listen, admin) = echo_and_gateway(dir.path(), Stdio::piped());
    let (_gateway, lines, client) = logging_and_ready(gateway, admin).await;
    let file = dir.path().join("all.yaml");
    let text = std::fs::read_to_string(&file).unwrap();
    let said = |lines: &Arc<Mutex<Vec<String>>>| {
        lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("WARN") && l.contains("nothing is served"))
            .count()
    };
    let until = |what: &str, mut probe: Box<dyn FnMut() -> bool + '_>| {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !probe() {
            assert!(std::time::Instant::now() < deadline, "timed out: {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    assert_eq!(said(&lines), 0);
    std::fs::remove_file(&file).unwrap();
    until("the first warning", Box::new(|| said(&lines) == 1));
    // Another compile that serves nothing says nothing more.
    std::fs::write(dir.path().join("other.yaml"), gateway_class()).unwrap();
    until(
        "the second compile",
        Box::new(|| {
            lines
                .lock()
                .unwrap()
                .iter()
                .filter(|l| l.contains("configuration applied"))
                .count()
                >= 3
        }),
    );
    assert_eq!(said(&lines), 1);
    std::fs::write(&file, &text).unwrap();
    let mut served = false;
    for _ in 0..100 {
        let answer = client
            .get(format!("http://127.0.0.1:{listen}/"))
            .header("host", "a.example")
            .send()
            .await;
        if answer.is_ok_and(|r| r.status() == 200) {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(served);
    std::fs::remove_file(&file).unwrap();
    until(
        "the warning after serving again",
        Box::new(|| said(&lines) == 2),
    );
}

/// Tries made again under a rule's `retry` are counted, and their failures go to the same
/// throttled line as any backend failure: not one warning per try, which a flaky backend behind
/// retries would turn into a log line per request while clients see no error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_tries_are_not_a_log_line_each() {
    let dir = tempfile::tempdir().unwrap();
    let (_echo, gateway, listen, admin) = echo_and_gateway(dir.path(), Stdio::piped());
    let (_gateway, lines, client) = logging_and_ready(gateway, admin).await;
    let dead_port = free_port();
    let retried = "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
         metadata: {name: retried, namespace: obs}\n\
         spec:\n  parentRefs: [{name: gw}]\n  hostnames: [r.example]\n  rules:\n\
         \x20 - backendRefs: [{name: dead, port: 80}]\n\
         \x20   retry: {attempts: 2, backoff: 1ms}\n"
        .to_string()
        + &service("obs", "dead")
        + &endpoint_slice("obs", "dead", dead_port);
    std::fs::write(dir.path().join("retried.yaml"), retried).unwrap();
    let status = || async {
        client
            .get(format!("http://127.0.0.1:{listen}/"))
            .header("host", "r.example")
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while status().await != 502 {
        assert!(
            std::time::Instant::now() < deadline,
            "the route never served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..5 {
        assert_eq!(status().await, 502);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let lines = lines.lock().unwrap();
    assert!(
        !lines.iter().any(|l| l.contains("Fail to proxy")),
        "{lines:#?}"
    );
    let failed = lines
        .iter()
        .filter(|l| l.contains("backend request failed") && l.contains("obs/dead"))
        .count();
    assert_eq!(failed, 1, "{lines:#?}");
}

/// The debug endpoints answer what the running table holds: `/debug/routes` lists the rules,
/// `/debug/explain` names the rule a request would take, and a listener that is not served is
/// not found (404), with the steps that say why; a question that is not one gets 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_endpoints_explain_the_running_table() {
    let dir = tempfile::tempdir().unwrap();
    let (_echo, gateway, _listen, admin) = echo_and_gateway(dir.path(), Stdio::piped());
    let (_gateway, _lines, client) = logging_and_ready(gateway, admin).await;
    let get = |path: &str| {
        let request = client.get(format!("http://127.0.0.1:{admin}{path}"));
        async move {
            let response = request.send().await.expect("the admin endpoint answers");
            let status = response.status().as_u16();
            (status, response.text().await.unwrap())
        }
    };
    let (status, routes) = get("/debug/routes").await;
    assert_eq!(status, 200, "{routes}");
    assert!(routes.contains("obs/route-a"), "{routes}");

    let (status, body) = get("/debug/explain?listener=obs/gw/web&host=a.example&path=/x").await;
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        answer["matched"]
            .as_str()
            .is_some_and(|m| m.starts_with("obs/route-a")),
        "{body}"
    );
    // A request no rule takes is still an answer about a served listener.
    let (status, body) = get("/debug/explain?listener=obs/gw/web&host=c.example").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["status"],
        404
    );

    let (status, body) = get("/debug/explain?listener=obs/gw/nope&host=a.example").await;
    assert_eq!(status, 404, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        answer["steps"][0]
            .as_str()
            .is_some_and(|s| s.contains("obs/gw/nope")),
        "{body}"
    );
    for question in [
        "listener=obs/gw/web&path=x",
        "listner=obs/gw/web",
        "host=a.example",
    ] {
        let (status, body) = get(&format!("/debug/explain?{question}")).await;
        assert_eq!(status, 400, "{question}: {body}");
    }
}

/// Clients that ask for answers and never read them hold at most their own share of the admin
/// endpoint's connections: a probe from another address is still answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_never_read_cannot_take_the_admin_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let (_echo, gateway, _listen, admin) = echo_and_gateway(dir.path(), Stdio::piped());
    let (_gateway, _lines, _client) = logging_and_ready(gateway, admin).await;

    // As many connections as the endpoint serves at once, from one address, each with more
    // pipelined requests than its socket buffers hold answers for, none of them read.
    let mut held = Vec::new();
    for _ in 0..64 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let Ok(mut stream) = socket
            .connect(format!("127.0.0.1:{admin}").parse().unwrap())
            .await
        else {
            continue;
        };
        let requests = b"GET /metrics HTTP/1.1\r\nhost: a\r\n\r\n".repeat(400);
        let _ = tokio::time::timeout(
            Duration::from_millis(100),
            tokio::io::AsyncWriteExt::write_all(&mut stream, &requests),
        )
        .await;
        held.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // A probe from another loopback address.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut probe = socket
        .connect(format!("127.0.0.1:{admin}").parse().unwrap())
        .await
        .unwrap();
    tokio::io::AsyncWriteExt::write_all(
        &mut probe,
        b"GET /healthz HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read_to_end(&mut probe, &mut answer),
    )
    .await;
    assert!(
        matches!(read, Ok(Ok(_))) && answer.starts_with(b"HTTP/1.1 200"),
        "the probe got {:?} while one address held {} connections unread",
        String::from_utf8_lossy(&answer),
        held.len()
    );
}

/// The series of a route that was deleted leave the scrape some seconds after the change;
/// those of the routes still configured stay, with their counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn series_of_a_deleted_route_leave_the_scrape() {
    let dir = tempfile::tempdir().unwrap();
    let (_echo, gateway, listen, admin) = echo_and_gateway(dir.path(), Stdio::piped());
    let (_gateway, _lines, client) = logging_and_ready(gateway, admin).await;
    let url = format!("http://127.0.0.1:{listen}/");
    for host in ["a.example", "b.example"] {
        client.get(&url).header("host", host).send().await.unwrap();
    }
    let metrics = admin_text(&client, admin, "/metrics").await;
    assert!(metrics.contains("route=\"obs/route-b\""), "{metrics}");

    // route-b goes; a and its series stay.
    let all = std::fs::read_to_string(dir.path().join("all.yaml")).unwrap();
    let without_b = all.replace(
        &http_route("obs", "route-b", "gw", &["b.example"], "empty"),
        "",
    );
    assert_ne!(without_b, all);
    std::fs::write(dir.path().join("all.yaml"), without_b).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let metrics = admin_text(&client, admin, "/metrics").await;
        if !metrics.contains("route=\"obs/route-b\"") {
            assert_eq!(
                sample(
                    &metrics,
                    "portcullis_requests_total",
                    &[("route", "obs/route-a")]
                ),
                1.0
            );
            assert!(metrics.contains("backend=\"obs/echo:80\""), "{metrics}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "route-b's series are still there 30 s after it was deleted"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `--admin-addr` with port 0 takes a free port, and the log names the one it took.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_port_of_zero_is_logged_as_the_port_taken() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("all.yaml"), config(free_port())).unwrap();
    let mut gateway = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["run", "--config-dir"])
        .arg(dir.path())
        .args(["--admin-addr", "127.0.0.1:0"])
        .args(["--port-offset", &(i32::from(free_port()) - 80).to_string()])
        .env("PORTCULLIS_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = gateway.stderr.take().unwrap();
    let _gateway = Killed(gateway);
    let line = tokio::task::spawn_blocking(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .find(|l| l.contains("admin endpoint listening"))
    });
    let line = tokio::time::timeout(Duration::from_secs(20), line)
        .await
        .expect("the admin endpoint is logged")
        .unwrap()
        .expect("the admin endpoint is logged");
    let addr = line
        .split("addr=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_default()
        .to_string();
    assert!(!addr.ends_with(":0"), "{line}");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let status = client
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .map(|r| r.status().as_u16());
    assert_eq!(status.ok(), Some(200), "{line}");
}
