//! How the gateway reads what clients send, over raw TCP so that nothing between the test and
//! the gateway tidies the request up first:
//!
//! - requests shorter than the HTTP/2 preface are answered, and an HTTP/1.1 request without
//!   Host gets 400;
//! - paths are put in their normal form before routes are matched, and the backend gets it;
//! - requests pipelined on one connection are answered in order;
//! - a target in absolute form is forwarded in origin form, with the host it names;
//! - every X-Forwarded-For line the client sent reaches the backend;
//! - an HTTP/1.0 request without Host reaches the backend with one;
//! - a connection that never sends a byte does not hold a shutdown for its drain timeout;
//! - a request header must be whole within `--request-header-timeout` (408), its body need not;
//! - the admin endpoint closes connections that send no header in time, and holds 64 at most;
//! - the gateway's own answers (404, 503) leave the connection open for the next request;
//! - a gRPC call the gateway answers itself gets the gRPC status the spec asks for;
//! - a redirect on a backendRef answers the requests sent that backend's way.

mod common;

use common::manifests::{backend, gateway, gateway_class, http_route, listener, service};
use common::{free_port, run_gateway, Killed};

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `/admin` goes to the echo named `admin`, and so does `/tagged` with `x-user: café`;
/// everything else to the one named `public`.
fn config(admin_port: u16, public_port: u16) -> String {
    let route = "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
         metadata: {name: split, namespace: cr}\n\
         spec:\n  parentRefs: [{name: gw}]\n  rules:\n\
         \x20 - matches: [{path: {type: PathPrefix, value: /admin}}]\n\
         \x20   backendRefs: [{name: admin, port: 80}]\n\
         \x20 - matches: [{path: {value: /tagged}, headers: [{name: x-user, value: café}]}]\n\
         \x20   backendRefs: [{name: admin, port: 80}]\n\
         \x20 - backendRefs: [{name: public, port: 80}]\n";
    [
        gateway_class(),
        gateway("cr", "gw", &listener("web", 80, "HTTP")),
        route.to_string(),
        backend("cr", "admin", admin_port),
        backend("cr", "public", public_port),
    ]
    .concat()
}

fn echo(name: &str, port: u16) -> Killed {
    Killed(
        Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["echo", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--name", name])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// The gateway on `config`, ready; returns the process, the listener's port and the admin port.
async fn start(dir: &std::path::Path, config: &str, drain: &str) -> (Killed, u16, u16) {
    start_with(dir, config, &["--drain-timeout", drain]).await
}

/// [`start`], with these options for `run`.
async fn start_with(dir: &std::path::Path, config: &str, options: &[&str]) -> (Killed, u16, u16) {
    std::fs::write(dir.join("all.yaml"), config).unwrap();
    let args: Vec<&str> = ["--access-log-sample", "0"]
        .into_iter()
        .chain(options.iter().copied())
        .collect();
    let (child, listen, admin) = run_gateway(dir, &args);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ready = raw(
            admin,
            b"GET /readyz HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n",
        )
        .await
        .starts_with("HTTP/1.1 200");
        if ready {
            return (child, listen, admin);
        }
        assert!(Instant::now() < deadline, "gateway never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends `request` as it is and reads the answer until the gateway closes the connection (or
/// 5 s pass; a request that is never answered gives an empty string).
async fn raw(port: u16, request: &[u8]) -> String {
    let exchange = async {
        let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        tcp.write_all(request).await?;
        let mut answer = Vec::new();
        tcp.read_to_end(&mut answer).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&answer).into_owned())
    };
    match tokio::time::timeout(Duration::from_secs(5), exchange).await {
        Ok(Ok(answer)) => answer,
        _ => String::new(),
    }
}

/// The JSON body of an echo's answer.
fn echoed(answer: &str) -> serde_json::Value {
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {answer:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_read_as_they_were_meant() {
    let (admin_port, public_port) = (free_port(), free_port());
    let _echoes = (echo("admin", admin_port), echo("public", public_port));
    let dir = tempfile::tempdir().unwrap();
    let (_gateway, port, _) = start(dir.path(), &config(admin_port, public_port), "5s").await;

    // 18 bytes, shorter than the 24 of the HTTP/2 preface: answered all the same (in HTTP/1.1,
    // which RFC 9110 allows as the server's own version).
    let answer = raw(port, b"GET / HTTP/1.0\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert_eq!(echoed(&answer)["backend"], "public");
    // HTTP/1.1 requires Host.
    let answer = raw(port, b"GET / HTTP/1.1\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer:?}");
    // Answered 400 before any route is looked at:
    // - a Host in brackets that is no IPv6 address: `[.]` routed as no host at all and made a
    //   redirect's Location `http:///path`, which browsers read as a host of the path's;
    // - a method in lower case: a backend that reads `delete` as DELETE would get what a rule
    //   matching DELETE was there to stop;
    // - a target of no form the method allows, which would otherwise be routed as some path.
    let refused = [
        ("GET", "/", "[.]"),
        ("GET", "/", "[...]"),
        ("GET", "/", "[bad.cafe]"),
        ("GET", "/", "[a]:80"),
        ("delete", "/", "a"),
        ("Get", "/", "a"),
        ("GET", "x", "a"),
        ("GET", "*", "a"),
        ("GET", "a:80", "a"),
    ];
    for (method, target, host) in refused {
        let request =
            format!("{method} {target} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n");
        let answer = raw(port, request.as_bytes()).await;
        assert!(
            answer.starts_with("HTTP/1.1 400"),
            "{method} {target}, host {host}: {answer:?}"
        );
    }
    let answer = raw(
        port,
        b"GET / HTTP/1.1\r\nhost: [::1]:80\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    // A header value in UTF-8 is matched as the rule writes it (it was left out as not
    // visible ASCII, and the rule never matched).
    for (value, backend) in [("café", "admin"), ("cafe", "public")] {
        let request = format!(
            "GET /tagged HTTP/1.1\r\nhost: a\r\nx-user: {value}\r\nconnection: close\r\n\r\n"
        );
        let answer = raw(port, request.as_bytes()).await;
        assert_eq!(echoed(&answer)["backend"], backend, "{value}: {answer:?}");
    }
    // A second value that is not UTF-8 takes part in the match: left out, the request
    // matched on the first value alone while the backend got both.
    let answer = raw(
        port,
        b"GET /tagged HTTP/1.1\r\nhost: a\r\nx-user: caf\xc3\xa9\r\nx-user: \xff\r\n\
          connection: close\r\n\r\n",
    )
    .await;
    assert_eq!(echoed(&answer)["backend"], "public", "{answer:?}");
    // Bytes a target may not hold (a NUL) are percent-encoded by Pingora before anything reads
    // the target: the route and the backend see them one way only, encoded.
    let answer = raw(
        port,
        b"GET /a\0b HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(echoed(&answer)["target"], "/a%00b", "{answer:?}");
    // A backslash, which some backends take for `/`, is no URI character: 400.
    let answer = raw(
        port,
        b"GET /public\\..\\admin HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer:?}");
    // A transfer coding the gateway does not implement is refused (RFC 9112, section 6.1),
    // not decoded as chunked and forwarded with the gzip left in.
    let answer = raw(
        port,
        b"POST /p HTTP/1.1\r\nhost: a\r\ntransfer-encoding: gzip, chunked\r\n\r\n\
          3\r\nabc\r\n0\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 501"), "{answer:?}");

    // The route for /admin is matched on the path's normal form, and the backend gets that path.
    for path in [
        "/public/../admin/x",
        "/public/%2e%2e/admin/x",
        "/./admin/x",
        "/%61dmin/x",
        "/%61%64%6D%69%6E/%78",
    ] {
        let request = format!("GET {path}?q=1 HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n");
        let answer = raw(port, request.as_bytes()).await;
        let body = echoed(&answer);
        assert_eq!(body["backend"], "admin", "{path}");
        assert_eq!(body["path"], "/admin/x?q=1", "{path}");
    }
    let answer = raw(
        port,
        b"GET /admin/../public HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(echoed(&answer)["backend"], "public");
    // Other encodings stay encoded, their hex digits upper-cased (one byte however written).
    let answer = raw(
        port,
        b"GET /admin/a%2cb%2F HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(echoed(&answer)["path"], "/admin/a%2Cb%2F", "{answer:?}");

    // A target in absolute form names the host, which a Host header must repeat; the backend
    // gets the origin form.
    for (request, host, path) in [
        (
            &b"GET http://a/admin/x?q=1 HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n"[..],
            "a",
            "/admin/x?q=1",
        ),
        (
            b"GET https://b:8080/public HTTP/1.1\r\nconnection: close\r\n\r\n",
            "b:8080",
            "/public",
        ),
    ] {
        let answer = raw(port, request).await;
        let body = echoed(&answer);
        assert_eq!(body["target"], path, "{answer:?}");
        assert_eq!(body["headers"]["host"], host, "{answer:?}");
    }
    let answer = raw(
        port,
        b"GET http://a/admin HTTP/1.1\r\nhost: b\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer:?}");

    // Requests sent back to back without waiting for answers are answered in order, a body
    // included (RFC 9112, section 9.3.2), each matched on its own.
    let answer = raw(
        port,
        b"GET /admin/1 HTTP/1.1\r\nhost: a\r\n\r\n\
          POST /p/2 HTTP/1.1\r\nhost: a\r\ncontent-length: 3\r\n\r\nabc\
          GET /admin/3 HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n",
    )
    .await;
    let answers: Vec<_> = answer
        .split("HTTP/1.1 ")
        .skip(1)
        .map(|a| {
            let body = echoed(a);
            (
                body["backend"].clone(),
                body["method"].clone(),
                body["path"].clone(),
            )
        })
        .collect();
    assert_eq!(
        answers,
        [
            ("admin".into(), "GET".into(), "/admin/1".into()),
            ("public".into(), "POST".into(), "/p/2".into()),
            ("admin".into(), "GET".into(), "/admin/3".into()),
        ],
        "{answer:?}"
    );

    // Two X-Forwarded-For lines: both reach the backend, then the client's own address.
    let answer = raw(
        port,
        b"GET / HTTP/1.1\r\nhost: a\r\nx-forwarded-for: 192.0.2.1\r\n\
          x-forwarded-for: 192.0.2.2, 192.0.2.3\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(
        echoed(&answer)["headers"]["x-forwarded-for"],
        "192.0.2.1, 192.0.2.2, 192.0.2.3, 127.0.0.1"
    );

    // An HTTP/1.0 request without Host goes on as HTTP/1.1, which needs one: the backend gets
    // its own address as the Host.
    let answer = raw(port, b"GET /p/x HTTP/1.0\r\n\r\n").await;
    assert_eq!(
        echoed(&answer)["headers"]["host"],
        format!("127.0.0.1:{public_port}"),
        "{answer}"
    );
}

/// Over HTTP/2 the host is the request's `:authority`: a path brought to its normal form, or
/// rewritten by a filter, keeps it, for routing and for the Host the backend gets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_request_keeps_its_host_when_its_path_changes() {
    let (admin_port, public_port) = (free_port(), free_port());
    let _echoes = (echo("admin", admin_port), echo("public", public_port));
    let hosted = "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
         metadata: {name: hosted, namespace: cr}\n\
         spec:\n  parentRefs: [{name: gw}]\n  hostnames: [localhost]\n  rules:\n\
         \x20 - matches: [{path: {type: PathPrefix, value: /admin}}]\n\
         \x20   backendRefs: [{name: public, port: 80}]\n\
         \x20 - matches: [{path: {type: PathPrefix, value: /old}}]\n\
         \x20   filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, \
         replacePrefixMatch: /new}}}]\n\
         \x20   backendRefs: [{name: public, port: 80}]\n";
    let dir = tempfile::tempdir().unwrap();
    let config = config(admin_port, public_port) + hosted;
    let (_gateway, port, _) = start(dir.path(), &config, "5s").await;
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    for (path, expected) in [("/%61dmin/x", "/admin/x"), ("/old/x", "/new/x")] {
        let answer = client
            .get(format!("http://localhost:{port}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.version(), reqwest::Version::HTTP_2);
        let body: serde_json::Value = serde_json::from_str(&answer.text().await.unwrap()).unwrap();
        // Sent to the route of its host, not to the one for every host.
        assert_eq!(body["backend"], "public", "{path}: {body}");
        assert_eq!(body["path"], expected, "{path}: {body}");
        assert_eq!(
            body["headers"]["host"],
            format!("localhost:{port}"),
            "{body}"
        );
    }
    // Cookies sent as fields of their own, as HTTP/2 clients do, reach the HTTP/1.1 backend
    // as one field, joined by "; " (RFC 9113, section 8.2.3).
    let answer = client
        .get(format!("http://localhost:{port}/admin/c"))
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = serde_json::from_str(&answer.text().await.unwrap()).unwrap();
    assert_eq!(body["headers"]["cookie"], "a=1; b=2", "{body}");
}

/// Opens a connection, sends `pieces` with a pause after each, then reads what comes back in
/// 5 s or until the gateway closes.
async fn in_pieces(port: u16, pieces: &[&[u8]]) -> Vec<u8> {
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    for piece in pieces {
        tcp.write_all(piece).await.unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let mut answer = vec![0u8; 4096];
    let mut read = 0;
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while let Ok(n) = tcp.read(&mut answer[read..]).await {
            if n == 0 {
                break;
            }
            read += n;
            if read >= 9 {
                break;
            }
        }
    })
    .await;
    answer.truncate(read);
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_s_opening_may_come_in_pieces() {
    let (admin_port, public_port) = (free_port(), free_port());
    let _echoes = (echo("admin", admin_port), echo("public", public_port));
    let dir = tempfile::tempdir().unwrap();
    let (_gateway, port, _) = start(dir.path(), &config(admin_port, public_port), "5s").await;

    // An HTTP/1.1 request whose first byte comes alone.
    let answer = in_pieces(
        port,
        &[
            b"G",
            b"ET /admin HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n",
        ],
    )
    .await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    // The HTTP/2 preface cut in two, the first part a request line as far as it goes: the
    // gateway waits for the rest, then speaks HTTP/2 (its first frame is SETTINGS, type 4).
    let settings: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];
    let rest = [b"\r\nSM\r\n\r\n".as_slice(), settings].concat();
    let answer = in_pieces(port, &[b"PRI * HTTP/2.0\r\n", &rest]).await;
    assert!(answer.len() >= 9 && answer[3] == 4, "{answer:?}");
    // The whole preface in one piece is HTTP/2 at once.
    let whole = [b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".as_slice(), settings].concat();
    let answer = in_pieces(port, &[&whole]).await;
    assert!(answer.len() >= 9 && answer[3] == 4, "{answer:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_does_not_hold_a_shutdown() {
    let (admin_port, public_port) = (free_port(), free_port());
    let _echoes = (echo("admin", admin_port), echo("public", public_port));
    let dir = tempfile::tempdir().unwrap();
    let (mut gateway, port, _) = start(dir.path(), &config(admin_port, public_port), "20s").await;
    // Connected, never a byte sent; and a request line cut short of the preface's length.
    let _silent = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut partial = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    partial.write_all(b"GET /").await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let asked = Instant::now();
    let killed = Command::new("kill")
        .args(["-TERM", &gateway.0.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = loop {
        if let Some(status) = gateway.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            asked.elapsed() < Duration::from_secs(30),
            "gateway did not exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status:?}");
    // The drain grace is 1 s; the drain timeout of 20 s must not be waited out for them.
    let took = asked.elapsed();
    assert!(took < Duration::from_secs(10), "exit took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_endpoint_bounds_what_a_client_can_hold() {
    let (admin_port, public_port) = (free_port(), free_port());
    let _echoes = (echo("admin", admin_port), echo("public", public_port));
    let dir = tempfile::tempdir().unwrap();
    let (_gateway, _, admin) = start(dir.path(), &config(admin_port, public_port), "5s").await;
    let connect = || tokio::net::TcpStream::connect(("127.0.0.1", admin));
    // Whether the gateway closes `tcp` within `limit`, reading whatever it sends.
    async fn closed_within(tcp: &mut tokio::net::TcpStream, limit: Duration) -> bool {
        let mut sink = Vec::new();
        matches!(
            tokio::time::timeout(limit, tcp.read_to_end(&mut sink)).await,
            Ok(Ok(_)) | Ok(Err(_))
        )
    }

    // A silent connection, and one that trickles its header in, are closed once the header
    // timeout (10 s) has passed.
    let opened = Instant::now();
    let mut silent = connect().await.unwrap();
    let mut trickling = connect().await.unwrap();
    trickling
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: a\r\n")
        .await
        .unwrap();
    let trickle = tokio::spawn(async move {
        for i in 0..15 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let line = format!("x-{i}: y\r\n");
            if trickling.write_all(line.as_bytes()).await.is_err() {
                return Some(opened.elapsed());
            }
        }
        None
    });

    // With 64 connections open (the two above and 62 more), the next is closed at once.
    let mut held = Vec::new();
    for _ in 0..62 {
        held.push(connect().await.unwrap());
    }
    let mut extra = connect().await.unwrap();
    assert!(closed_within(&mut extra, Duration::from_secs(2)).await);
    drop(held);

    assert!(closed_within(&mut silent, Duration::from_secs(20)).await);
    let took = opened.elapsed();
    assert!(took >= Duration::from_secs(9), "closed after {took:?}");
    let cut = trickle.await.unwrap();
    assert!(
        cut.is_some_and(|t| t < Duration::from_secs(14)),
        "trickling header not cut: {cut:?}"
    );
    // Served as before.
    let answer = raw(
        admin,
        b"GET /healthz HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    // Every endpoint only reads: a request to change something is refused, not answered 200.
    let answer = raw(
        admin,
        b"POST /status HTTP/1.1\r\nhost: a\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 405"), "{answer:?}");
    assert!(
        answer.to_ascii_lowercase().contains("allow: get, head"),
        "{answer:?}"
    );
}

/// An answer the gateway makes itself before proxying (no route: 404; no endpoint: 503) keeps
/// the connection for the client's next request, as a backend's own 404 would: requests sent
/// back to back on one connection are all answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_s_own_answers_keep_the_connection_open() {
    let public_port = free_port();
    let _echo = echo("public", public_port);
    let config = [
        gateway_class(),
        gateway("cr", "gw", &listener("web", 80, "HTTP")),
        http_route("cr", "a", "gw", &["a.test"], "public"),
        backend("cr", "public", public_port),
        http_route("cr", "empty", "gw", &["empty.test"], "nothing"),
        service("cr", "nothing"),
    ]
    .concat();
    let dir = tempfile::tempdir().unwrap();
    let (_gateway, listen, _) = start(dir.path(), &config, "5s").await;
    let answer = raw(
        listen,
        b"GET /x HTTP/1.1\r\nhost: nope.test\r\n\r\n\
          HEAD /x HTTP/1.1\r\nhost: nope.test\r\n\r\n\
          GET /x HTTP/1.1\r\nhost: empty.test\r\n\r\n\
          GET /x HTTP/1.1\r\nhost: a.test\r\nconnection: close\r\n\r\n",
    )
    .await;
    let statuses: Vec<&str> = answer
        .lines()
        .filter(|l| l.starts_with("HTTP/1.1 "))
        .collect();
    assert_eq!(
        statuses,
        [
            "HTTP/1.1 404 Not Found",
            "HTTP/1.1 404 Not Found",
            "HTTP/1.1 503 Service Unavailable",
            "HTTP/1.1 200 OK"
        ],
        "{answer}"
    );
    assert!(!answer.contains("Pingora"), "{answer}");

    // A Host that is no host is refused, not routed by a catch-all listener and forwarded.
    let answer = raw(
        listen,
        b"GET /x HTTP/1.1\r\nhost: a.test/evil#\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");

    // A chunked body that does not parse is the client's fault: 400, and the connection
    // closes, as nothing after the fault can be read.
    let answer = raw(
        listen,
        b"POST /x HTTP/1.1\r\nhost: a.test\r\ntransfer-encoding: chunked\r\n\r\n\
          zz\r\nabc\r\n0\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");

    // A header larger than a backend would take is refused (431), not forwarded; one just
    // under the limit goes through.
    for (size, status) in [(60 * 1024, "HTTP/1.1 200"), (70 * 1024, "HTTP/1.1 431")] {
        let request = format!(
            "GET /x HTTP/1.1\r\nhost: a.test\r\nx-big: {}\r\nconnection: close\r\n\r\n",
            "a".repeat(size)
        );
        let answer = raw(listen, request.as_bytes()).await;
        assert!(answer.starts_with(status), "{size}: {answer:.200}");
    }
    // Connection options that would strip what the gateway sets for the backend, or that are
    // no tokens, get 400 rather than a connection closed without an answer; others are fine.
    for (options, status) in [
        ("x-forwarded-for", "HTTP/1.1 400"),
        ("keep-alive, Host", "HTTP/1.1 400"),
        ("\"x-a\"", "HTTP/1.1 400"),
        ("a,b,c,d,e,f,g,h,i,j", "HTTP/1.1 400"),
        ("keep-alive, x-custom", "HTTP/1.1 200"),
    ] {
        let request = format!(
            "GET /x HTTP/1.1\r\nhost: a.test\r\nconnection: {options}\r\n\r\n\
             GET /x HTTP/1.1\r\nhost: a.test\r\nconnection: close\r\n\r\n"
        );
        let answer = raw(listen, request.as_bytes()).await;
        assert!(answer.starts_with(status), "{options}: {answer}");
    }
}

/// A client that sends its request header a line at a time gets 408 once the header has taken
/// longer than `--request-header-timeout` in all, however short each pause; one whose header
/// is in on time is served, and so is a request whose body comes slowly after its header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_header_has_a_deadline_and_its_body_does_not() {
    let public_port = free_port();
    let _echo = echo("public", public_port);
    let config = [
        gateway_class(),
        gateway("cr", "gw", &listener("web", 80, "HTTP")),
        http_route("cr", "a", "gw", &["a.test"], "public"),
        backend("cr", "public", public_port),
    ]
    .concat();
    let dir = tempfile::tempdir().unwrap();
    let (_gateway, listen, admin) =
        start_with(dir.path(), &config, &["--request-header-timeout", "2s"]).await;
    /// Sends `parts` 400 ms apart on one connection, then reads the answer until it closes.
    async fn dripped(port: u16, parts: &[&[u8]]) -> (String, Duration) {
        let started = Instant::now();
        let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        for part in parts {
            // A write after the gateway closed may fail; the answer tells what happened.
            let _ = tcp.write_all(part).await;
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut answer)).await;
        (
            String::from_utf8_lossy(&answer).into_owned(),
            started.elapsed(),
        )
    }

    // Twelve lines 400 ms apart: about 4.8 s for the header, past the 2 s deadline.
    let mut slow: Vec<&[u8]> = vec![b"GET /x HTTP/1.1\r\n", b"host: a.test\r\n"];
    slow.extend(std::iter::repeat_n(&b"x-drip: 1\r\n"[..], 10));
    slow.push(b"\r\n");
    let (answer, took) = dripped(listen, &slow).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(took < Duration::from_secs(8), "{took:?}");
    // An empty line after a request (some clients end a body with one) is no header begun: a
    // keep-alive connection quiet for longer than the deadline after it is still served.
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", listen))
        .await
        .unwrap();
    tcp.write_all(b"GET /x HTTP/1.1\r\nhost: a.test\r\n\r\n")
        .await
        .unwrap();
    let mut first = vec![0u8; 4096];
    let n = tcp.read(&mut first).await.unwrap();
    assert!(first[..n].starts_with(b"HTTP/1.1 200"));
    tcp.write_all(b"\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    tcp.write_all(b"GET /y HTTP/1.1\r\nhost: a.test\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");

    // The same when the first byte could begin HTTP/2's preface (`P`, as `PUT` does) and the
    // rest comes late: the wait to tell the two apart is the header's deadline.
    let mut put: Vec<&[u8]> = vec![b"P"];
    put.extend(std::iter::repeat_n(&b""[..], 6));
    put.push(b"UT /x HTTP/1.1\r\nhost: a.test\r\ncontent-length: 0\r\n\r\n");
    let (answer, took) = dripped(listen, &put).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(took < Duration::from_secs(8), "{took:?}");

    // The deadline of a header that opens with `P` counts from that first byte, not from when
    // the rest told it from HTTP/2's preface: 408 about 2 s after the `P`, not 2 s after the
    // bytes that came 1.6 s later.
    let started = Instant::now();
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", listen))
        .await
        .unwrap();
    tcp.write_all(b"P").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1600)).await;
    tcp.write_all(b"UT /x HTTP/1.1\r\nhost: a.test\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut answer)).await;
    let took = started.elapsed();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(took < Duration::from_millis(3000), "{took:?}");

    // The second request of a keep-alive connection has a deadline of its own.
    let mut second: Vec<&[u8]> = vec![
        b"GET /x HTTP/1.1\r\nhost: a.test\r\n\r\n",
        b"GET /y HTTP/1.1\r\n",
    ];
    second.extend(std::iter::repeat_n(&b"x-drip: 1\r\n"[..], 10));
    second.push(b"\r\n");
    let (answer, _) = dripped(listen, &second).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert!(answer.contains("HTTP/1.1 408"), "{answer:?}");

    // A body that waits for `100 Continue` and then comes slowly is not a header.
    let mut expecting: Vec<&[u8]> = vec![
        b"POST /x HTTP/1.1\r\nhost: a.test\r\ncontent-length: 8\r\n\
          expect: 100-continue\r\nconnection: close\r\n\r\n",
    ];
    expecting.extend(std::iter::repeat_n(&b"ab"[..], 4));
    expecting.extend(std::iter::repeat_n(&b""[..], 4));
    let (answer, _) = dripped(listen, &expecting).await;
    assert!(answer.contains("HTTP/1.1 200"), "{answer:?}");
    assert!(!answer.contains("408"), "{answer:?}");

    // Three parts within the deadline, then a second request on the same connection, whose
    // deadline starts afresh: both answered.
    let (answer, _) = dripped(
        listen,
        &[
            b"GET /x HTTP/1.1\r\n",
            b"host: a.test\r\n",
            b"\r\n",
            b"GET /y HTTP/1.1\r\nhost: a.test\r\n",
            b"connection: close\r\n\r\n",
        ],
    )
    .await;
    let statuses = answer.matches("HTTP/1.1 200").count();
    assert_eq!(statuses, 2, "{answer:?}");

    // A body sent slowly, after a header in on time, is not cut off.
    let mut body_parts: Vec<&[u8]> =
        vec![b"POST /x HTTP/1.1\r\nhost: a.test\r\ncontent-length: 8\r\nconnection: close\r\n\r\n"];
    body_parts.extend(std::iter::repeat_n(&b"ab"[..], 4));
    body_parts.extend(std::iter::repeat_n(&b""[..], 4));
    let (answer, took) = dripped(listen, &body_parts).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert!(took > Duration::from_secs(2), "{took:?}");

    // HTTP/2 with prior knowledge is not HTTP/1: a connection quiet for longer than the
    // deadline carries its next request.
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .resolve("a.test", ([127, 0, 0, 1], listen).into())
        .build()
        .unwrap();
    let url = format!("http://a.test:{listen}/h2");
    for _ in 0..2 {
        let r = client.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 200);
        tokio::time::sleep(Duration::from_millis(2500)).await;
    }

    let metrics = raw(
        admin,
        b"GET /metrics HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(
        metrics.contains("portcullis_request_header_timeouts_total 4"),
        "{metrics}"
    );
    // A header cut off for its time is counted as that, not as a client that broke off.
    assert!(
        metrics.contains("portcullis_client_header_failures_total 0"),
        "{metrics}"
    );
}

/// A gRPC call to a backendRef that does not resolve gets UNAVAILABLE, as the spec asks ("When
/// a GRPCBackendRef is invalid, UNAVAILABLE statuses MUST be returned"), as one to a Service
/// without endpoints does; one that no rule takes gets UNIMPLEMENTED.
#[tokio::test]
async fn grpc_calls_the_gateway_answers_get_the_grpc_status_the_spec_asks_for() {
    let route = "---\napiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\n\
         metadata: {name: calls, namespace: cr}\n\
         spec:\n  parentRefs: [{name: gw}]\n  rules:\n\
         \x20 - matches: [{method: {service: missing.Service}}]\n\
         \x20   backendRefs: [{name: nope, port: 80}]\n\
         \x20 - matches: [{method: {service: other.Namespace}}]\n\
         \x20   backendRefs: [{name: empty, namespace: elsewhere, port: 80}]\n\
         \x20 - matches: [{method: {service: no.Endpoints}}]\n\
         \x20   backendRefs: [{name: empty, port: 80}]\n";
    let config = [
        gateway_class(),
        gateway("cr", "gw", &listener("web", 80, "HTTP")),
        route.to_string(),
        service("cr", "empty"),
        service("elsewhere", "empty"),
    ]
    .concat();
    let dir = tempfile::tempdir().unwrap();
    let (_gateway, port, admin) = start(dir.path(), &config, "1s").await;
    let status = |service: &str| {
        let out = Command::new("curl")
            .args([
                "-s",
                "--http2-prior-knowledge",
                "-D",
                "-",
                "-o",
                "/dev/null",
            ])
            .args(["-H", "content-type: application/grpc", "--data-binary", ""])
            .arg(format!("http://127.0.0.1:{port}/{service}/Call"))
            .output()
            .expect("curl runs");
        let head = String::from_utf8_lossy(&out.stdout).to_string();
        let code = head
            .lines()
            .find_map(|l| l.strip_prefix("grpc-status: "))
            .map(|v| v.trim().to_string());
        (code, head)
    };
    for (service, want) in [
        ("missing.Service", "14"),
        ("other.Namespace", "14"),
        ("no.Endpoints", "14"),
        ("not.Routed", "12"),
    ] {
        let (code, head) = status(service);
        assert_eq!(code.as_deref(), Some(want), "{service}: {head}");
    }
    // Their HTTP status is 200; the metrics count them by their gRPC status too.
    let metrics = raw(
        admin,
        b"GET /metrics HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n",
    )
    .await;
    let calls = |code: &str| -> u64 {
        (metrics.lines())
            .filter(|l| {
                l.starts_with("portcullis_grpc_responses_total{")
                    && l.contains(&format!("grpc_code=\"{code}\""))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    assert_eq!(calls("UNAVAILABLE"), 3, "{metrics}");
    assert_eq!(calls("UNIMPLEMENTED"), 1, "{metrics}");
}

/// A RequestRedirect filter on a backendRef answers the requests sent that backend's way with
/// the redirect, as one on the rule answers all of them, with the rule's response header
/// edits; the rule's other backend is proxied to as usual.
#[tokio::test]
async fn a_backend_ref_redirect_answers_the_requests_sent_its_way() {
    let public_port = free_port();
    let _echo = echo("public", public_port);
    let route = "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
         metadata: {name: moved, namespace: cr}\n\
         spec:\n  parentRefs: [{name: gw}]\n  rules:\n\
         \x20 - matches: [{path: {type: PathPrefix, value: /old}}]\n\
         \x20   filters: [{type: ResponseHeaderModifier, responseHeaderModifier: \
         {add: [{name: x-moved, value: 'yes'}]}}]\n\
         \x20   backendRefs:\n\
         \x20   - name: public\n\
         \x20     port: 80\n\
         \x20     filters:\n\
         \x20     - type: RequestRedirect\n\
         \x20       requestRedirect:\n\
         \x20         hostname: new.example\n\
         \x20         statusCode: 301\n\
         \x20         path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}\n\
         \x20 - matches: [{path: {type: PathPrefix, value: /kept}}]\n\
         \x20   backendRefs: [{name: public, port: 80}]\n";
    let config = [
        gateway_class(),
        gateway("cr", "gw", &listener("web", 80, "HTTP")),
        route.to_string(),
        backend("cr", "public", public_port),
    ]
    .concat();
    let dir = tempfile::tempdir().unwrap();
    let (_gateway, port, _) = start(dir.path(), &config, "1s").await;
    let answer = raw(
        port,
        b"GET /old/page?q=1 HTTP/1.1\r\nhost: site.example\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 301"), "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("\r\nlocation: http://new.example/new/page?q=1\r\n"),
        "{answer}"
    );
    // The rule's ResponseHeaderModifier applies to the redirect, the rule's answer.
    assert!(
        answer.to_ascii_lowercase().contains("\r\nx-moved: yes\r\n"),
        "{answer}"
    );
    let answer = raw(
        port,
        b"GET /kept HTTP/1.1\r\nhost: site.example\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(echoed(&answer)["path"], "/kept");
}
