//! What the gateway sends to backends beyond the plain forward, end to end: the binary in front
//! of backends that fail on demand and record what they receive.
//!
//! - `rules[].retry`: a listed status is retried with the whole request body, the last answer
//!   passes through as the backend gave it, an unlisted status and a rule without `retry` go
//!   back at once; an endpoint that refuses connections is passed over for the Service's next
//!   endpoint, with a retry policy or without.
//! - `RequestMirror`: the copy carries the request body, whether its length is given or it
//!   comes chunked, and however many reads it takes; an h2c mirror gets its copies over HTTP/2.
//! - The backend's hop-by-hop response fields stay behind; an HTTP/1.0 client gets a chunked
//!   answer as plain bytes; a client that stalls its body gets 408, not the backend's blame.
//! - Idle backend connections are kept for reuse up to `--upstream-idle-connections`, over
//!   all backends together; beyond it, the connections of finished requests are closed.
//! - A WebSocket outlives the request timeout while it talks; CORS `exposeHeaders: ['*']`
//!   with credentials names the response's fields.

mod common;

use common::manifests::{backend, gateway, gateway_class, listener, service};
use common::{admin_text, run_gateway, wait_ready, Killed};

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};

/// What the backend does and what it saw.
#[derive(Default)]
struct Flaky {
    /// Answers still to fail, and the status they fail with.
    failures: Mutex<(usize, u16)>,
    /// `METHOD body` of every request received.
    seen: Mutex<Vec<String>>,
}

impl Flaky {
    fn fail_next(&self, count: usize, status: u16) {
        *self.failures.lock().unwrap() = (count, status);
        self.seen.lock().unwrap().clear();
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }

    async fn answer(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let method = req.method().to_string();
        let body = match req.into_body().collect().await {
            Ok(body) => String::from_utf8_lossy(&body.to_bytes()).into_owned(),
            // A copy abandoned mid-body: recorded as such, never as a whole body.
            Err(_) => "<cut short>".to_string(),
        };
        self.seen.lock().unwrap().push(format!("{method} {body}"));
        let mut failures = self.failures.lock().unwrap();
        if failures.0 > 0 {
            failures.0 -= 1;
            return Response::builder()
                .status(failures.1)
                .body(Full::new(Bytes::from_static(b"failing as asked\n")))
                .unwrap();
        }
        Response::new(Full::new(Bytes::from(format!("ok:{body}"))))
    }
}

/// Serves `flaky` on a port of 127.0.0.1 it returns, HTTP/1.1 with keep-alive. Binding port 0
/// here, rather than a port picked before, leaves no window for tests running beside this one.
async fn serve(flaky: Arc<Flaky>) -> u16 {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let flaky = flaky.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let flaky = flaky.clone();
                    async move { Ok::<_, Infallible>(flaky.answer(req).await) }
                });
                let io = hyper_util::rt::TokioIo::new(tcp);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await;
            });
        }
    });
    port
}

/// An HTTPRoute for `host` sending everything to port 80 of `service`, with the rule's `retry`
/// or `filters` (YAML flow values) if given.
fn route(name: &str, host: &str, service: &str, retry: Option<&str>) -> String {
    route_with(name, host, service, retry, None)
}

fn route_with(
    name: &str,
    host: &str,
    service: &str,
    retry: Option<&str>,
    filters: Option<&str>,
) -> String {
    let extra = retry.map_or(String::new(), |r| format!("    retry: {r}\n"))
        + &filters.map_or(String::new(), |f| format!("    filters: {f}\n"));
    format!(
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
         metadata: {{name: {name}, namespace: rt}}\n\
         spec:\n  parentRefs: [{{name: gw}}]\n  hostnames: [{host}]\n  rules:\n\
         \x20 - backendRefs: [{{name: {service}, port: 80}}]\n{extra}"
    )
}

/// The EndpointSlice of `service`: port `port` on each of `addresses` (for a Service with more
/// than one endpoint; `manifests::backend` makes the one-endpoint kind).
fn endpoints(service: &str, addresses: &str, port: u16) -> String {
    format!(
        "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: {service}-1, namespace: rt, \
         labels: {{kubernetes.io/service-name: {service}}}}}\naddressType: IPv4\n\
         endpoints: [{{addresses: [{addresses}]}}]\nports: [{{name: http, port: {port}}}]\n"
    )
}

/// The gateway serving route `name` on host `{name}.example` to Service `service` (one
/// endpoint, `port`), its one rule with the `timeouts` given.
async fn with_timeouts(name: &str, service: &str, port: u16, timeouts: &str) -> Gateway {
    let route = format!(
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
         metadata: {{name: {name}, namespace: rt}}\n\
         spec:\n  parentRefs: [{{name: gw}}]\n  hostnames: [{name}.example]\n  rules:\n\
         \x20 - backendRefs: [{{name: {service}, port: 80}}]\n    timeouts: {timeouts}\n"
    );
    let config = [
        gateway_class(),
        gateway("rt", "gw", &listener("web", 80, "HTTP")),
        route,
        backend("rt", service, port),
    ]
    .concat();
    Gateway::start(&config).await
}

/// The binary serving one config file, ready, with a client for it.
struct Gateway {
    _process: Killed,
    _dir: tempfile::TempDir,
    client: reqwest::Client,
    listen: u16,
    admin: u16,
}

impl Gateway {
    /// A client speaking cleartext HTTP/2 with prior knowledge, for which each of `hosts` is
    /// the gateway's address: over HTTP/2 the host is the request's authority.
    fn h2_client(&self, hosts: &[&str]) -> reqwest::Client {
        let at = std::net::SocketAddr::from(([127, 0, 0, 1], self.listen));
        hosts
            .iter()
            .fold(
                reqwest::Client::builder().http2_prior_knowledge(),
                |b, host| b.resolve(host, at),
            )
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap()
    }

    async fn start(config: &str) -> Gateway {
        Gateway::start_with(config, &[]).await
    }

    /// The binary serving `config` with `extra` arguments to `run`.
    async fn start_with(config: &str, extra: &[&str]) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("all.yaml"), config).unwrap();
        let args = [&["--access-log-sample", "0"], extra].concat();
        let (process, listen, admin) = run_gateway(dir.path(), &args);
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        wait_ready(&client, admin).await;
        Gateway {
            _process: process,
            _dir: dir,
            client,
            listen,
            admin,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_backend_requests_are_retried_as_the_rule_says() {
    let flaky = Arc::new(Flaky::default());
    let backend_port = serve(flaky.clone()).await;

    // `half` has two endpoints: 127.0.0.2 refuses connections (nothing listens there), and
    // 127.0.0.1 is the backend.
    let config = [
        gateway_class(),
        gateway("rt", "gw", &listener("web", 80, "HTTP")),
        route(
            "retried",
            "retry.example",
            "flaky",
            Some("{codes: [503], attempts: 2, backoff: 10ms}"),
        ),
        route("plain", "plain.example", "flaky", None),
        route(
            "slow-retry",
            "slow-retry.example",
            "flaky",
            Some("{codes: [503], attempts: 1, backoff: 1s}"),
        ),
        route(
            "half-retried",
            "half.example",
            "half",
            Some("{attempts: 1}"),
        ),
        route("half-plain", "half-plain.example", "half", None),
        backend("rt", "flaky", backend_port),
        service("rt", "half"),
        endpoints("half", "127.0.0.2, 127.0.0.1", backend_port),
    ]
    .concat();
    let gateway = Gateway::start(&config).await;
    let (client, listen, admin) = (&gateway.client, gateway.listen, gateway.admin);
    let url = format!("http://127.0.0.1:{listen}/");
    let send = |host: &'static str, body: Option<&'static str>| {
        let request = match body {
            Some(body) => client.post(&url).body(body),
            None => client.get(&url),
        };
        async move {
            let r = request.header("host", host).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };

    // Two 503s, then success: the client sees only the success, and every try carried the body.
    flaky.fail_next(2, 503);
    assert_eq!(
        send("retry.example", Some("payload")).await,
        (200, "ok:payload".to_string())
    );
    assert_eq!(flaky.seen(), ["POST payload"; 3]);

    // More failures than tries: the backend's own last answer comes back, body and all.
    flaky.fail_next(5, 503);
    assert_eq!(
        send("retry.example", None).await,
        (503, "failing as asked\n".to_string())
    );
    assert_eq!(flaky.seen().len(), 3, "the first try and two retries");

    // A status the rule does not list, and a rule without retry, go back at once.
    flaky.fail_next(1, 500);
    assert_eq!(send("retry.example", None).await.0, 500);
    assert_eq!(flaky.seen().len(), 1);
    flaky.fail_next(1, 503);
    assert_eq!(send("plain.example", None).await.0, 503);
    assert_eq!(flaky.seen().len(), 1);

    // A client that gives up during the backoff: no retry is sent for it.
    flaky.fail_next(1, 503);
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let gone = impatient
        .post(&url)
        .header("host", "slow-retry.example")
        .body("charge once")
        .send()
        .await;
    assert!(gone.is_err(), "the client gave up: {gone:?}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        flaky.seen(),
        ["POST charge once"],
        "no retry after the client left"
    );

    // An endpoint refusing connections was sent nothing: the request, body and all, goes to
    // the next endpoint without a retry policy too, and the dead one is passed over for a
    // while. (Two requests: round robin offers the dead endpoint to one of them first.)
    flaky.fail_next(0, 200);
    for body in ["first", "second"] {
        assert_eq!(
            send("half-plain.example", Some(body)).await,
            (200, format!("ok:{body}"))
        );
    }
    assert_eq!(flaky.seen(), ["POST first", "POST second"]);
    for _ in 0..6 {
        assert_eq!(send("half-plain.example", None).await.0, 200);
        assert_eq!(send("half.example", None).await.0, 200);
    }

    let metrics = admin_text(client, admin, "/metrics").await;
    let retries = |backend: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with("portcullis_upstream_retries_total{"))
            .filter(|l| l.contains(&format!("backend=\"{backend}\"")))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum()
    };
    assert_eq!(retries("rt/flaky:80"), 5.0, "{metrics}");
    // The dead endpoint was tried once, then set aside: one request went on to the next.
    assert_eq!(retries("rt/half:80"), 1.0, "{metrics}");
}

/// An HTTP/2 client that resets its request's stream during a retry's backoff gets no retry
/// sent for it: nobody waits for the answer, and the backend would process it for nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_retry_goes_out_for_an_http2_stream_the_client_reset() {
    let flaky = Arc::new(Flaky::default());
    let backend_port = serve(flaky.clone()).await;
    let config = [
        gateway_class(),
        gateway("rt", "gw", &listener("web", 80, "HTTP")),
        route(
            "retried",
            "retry.example",
            "flaky",
            Some("{codes: [503], attempts: 2, backoff: 1500ms}"),
        ),
        backend("rt", "flaky", backend_port),
    ]
    .concat();
    let gateway = Gateway::start(&config).await;
    flaky.fail_next(5, 503);
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", gateway.listen))
        .await
        .unwrap();
    let (mut client, connection) = h2::client::handshake(tcp).await.unwrap();
    let driven = tokio::spawn(connection);
    let request = http::Request::builder()
        .method("POST")
        .uri("http://retry.example/orders")
        .body(())
        .unwrap();
    let (_response, mut stream) = client.send_request(request, false).unwrap();
    stream
        .send_data(Bytes::from_static(b"order"), true)
        .unwrap();
    // The first try is answered 503 at once; the retry waits out its backoff.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stream.send_reset(h2::Reason::CANCEL);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(flaky.seen(), ["POST order"], "only the first try went out");
    driven.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirrored_copies_carry_the_request_body() {
    let (primary, copy) = (Arc::new(Flaky::default()), Arc::new(Flaky::default()));
    let (primary_port, copy_port) = (serve(primary.clone()).await, serve(copy.clone()).await);
    let config = [
        gateway_class(),
        gateway("rt", "gw", &listener("web", 80, "HTTP")),
        route_with(
            "mirrored",
            "mirror.example",
            "primary",
            None,
            Some("[{type: RequestMirror, requestMirror: {backendRef: {name: copy, port: 80}}}]"),
        ),
        backend("rt", "primary", primary_port),
        backend("rt", "copy", copy_port),
    ]
    .concat();
    let gateway = Gateway::start(&config).await;
    let url = format!("http://127.0.0.1:{}/", gateway.listen);
    let copy_saw = |want: String| {
        let copy = copy.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(5);
            while !copy.seen().contains(&want) {
                assert!(
                    Instant::now() < deadline,
                    "the copy never arrived: {:?}",
                    copy.seen()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };

    // A body of known length, then one of 6 MiB: many reads, the copy gets all of it.
    for body in ["a small body".to_string(), "x".repeat(6 << 20)] {
        let r = gateway
            .client
            .post(&url)
            .header("host", "mirror.example")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), format!("ok:{body}"));
        copy_saw(format!("POST {body}")).await;
    }

    // A chunked body: the copy is sent chunked too.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", gateway.listen))
        .await
        .unwrap();
    tcp.write_all(
        b"POST / HTTP/1.1\r\nhost: mirror.example\r\ntransfer-encoding: chunked\r\n\
          connection: close\r\n\r\n5\r\nhello\r\n6\r\n chunk\r\n0\r\n\r\n",
    )
    .await
    .unwrap();
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("ok:hello chunk"), "{answer}");
    copy_saw("POST hello chunk".to_string()).await;

    // Without a body the copy has none either.
    let r = gateway
        .client
        .get(&url)
        .header("host", "mirror.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    copy_saw("GET ".to_string()).await;
}

/// A backend that keeps the header of every request it gets and answers 200; returns its port
/// and the headers so far, lower-cased.
async fn serve_keeping_heads() -> (u16, Arc<std::sync::Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let heads = Arc::new(std::sync::Mutex::new(Vec::new()));
    let kept = heads.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let kept = kept.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
                kept.lock().unwrap().push(text);
                let _ = tcp
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
            });
        }
    });
    (port, heads)
}

/// An HTTP/2 cleartext (h2c) backend that keeps every request it gets, as `METHOD target`, its
/// header fields (`name: value` lines, in order) and its body, and answers 200; returns its port,
/// the requests so far and the count of connections it accepted.
async fn serve_h2c_keeping_requests() -> (
    u16,
    Arc<Mutex<Vec<String>>>,
    Arc<std::sync::atomic::AtomicUsize>,
) {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let kept = Arc::new(Mutex::new(Vec::new()));
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (keep, count) = (kept.clone(), accepted.clone());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let keep = keep.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let keep = keep.clone();
                    async move {
                        let mut text = format!("{} {}\n", req.method(), req.uri());
                        for (name, value) in req.headers() {
                            text.push_str(&format!("{name}: {}\n", value.to_str().unwrap()));
                        }
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        text.push_str(&format!("\n{}", String::from_utf8_lossy(&body)));
                        keep.lock().unwrap().push(text);
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                    }
                });
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                        .await;
            });
        }
    });
    (port, kept, accepted)
}

/// Waits up to 5 s for `kept` to hold `count` entries, and returns them.
async fn kept_at_least(kept: &Mutex<Vec<String>>, count: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = kept.lock().unwrap().clone();
        if now.len() >= count {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {count} copies arrived: {now:?}",
            now.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The gateway with one route, for `h.example`, to an HTTP/2 cleartext (h2c) backend on `port`.
async fn in_front_of_h2c(port: u16) -> Gateway {
    let h2c_service = "---\napiVersion: v1\nkind: Service\nmetadata: {name: h2c, namespace: rt}\n\
         spec: {ports: [{name: http, port: 80, appProtocol: kubernetes.io/h2c}]}\n";
    let config = [
        gateway_class(),
        gateway("rt", "gw", &listener("web", 80, "HTTP")),
        route_with("h", "h.example", "h2c", None, None),
        h2c_service.to_string(),
        endpoints("h2c", "127.0.0.1", port),
    ]
    .concat();
    Gateway::start(&config).await
}

/// An HTTP/2 backend (h2c) gets the host the client named, as its `:authority`, whether the
/// client named it in a Host header (HTTP/1.1) or as its own `:authority` (HTTP/2), never the
/// backend's address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_backend_gets_the_clients_host_as_its_authority() {
    let (h2c_port, requests, _) = serve_h2c_keeping_requests().await;
    let gateway = in_front_of_h2c(h2c_port).await;
    let h2 = gateway.h2_client(&["h.example"]);
    let r = h2
        .get(format!("http://h.example:{}/over-h2", gateway.listen))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = gateway
        .client
        .get(format!("http://127.0.0.1:{}/over-h1", gateway.listen))
        .header("host", "h.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = kept_at_least(&requests, 2).await;
    for (request, path) in seen.iter().zip(["/over-h2", "/over-h1"]) {
        let first = request.lines().next().unwrap();
        assert!(
            first.contains("//h.example") && first.ends_with(path),
            "{request}"
        );
        assert!(!first.contains(&h2c_port.to_string()), "{request}");
    }
}

/// A copy carries the request's cookies as one field, as the real backend gets them. A mirror
/// backend spoken to over HTTP/2 (h2c) gets its copies over HTTP/2: the host as `:authority`,
/// no hop-by-hop fields, the body whole whether its length was given or not, and the copies of
/// one client reuse a connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_copies_join_cookies_and_reach_http2_mirrors() {
    let (primary_port, _) = serve_keeping_heads().await;
    let (copy_port, copies) = serve_keeping_heads().await;
    let (h2c_port, h2c_copies, h2c_connections) = serve_h2c_keeping_requests().await;
    let mirror_to = |service: &str| {
        format!("[{{type: RequestMirror, requestMirror: {{backendRef: {{name: {service}, port: 80}}}}}}]")
    };
    let h2c_service =
        "---\napiVersion: v1\nkind: Service\nmetadata: {name: copy-h2c, namespace: rt}\n\
         spec: {ports: [{name: http, port: 80, appProtocol: kubernetes.io/h2c}]}\n";
    let config = [
        gateway_class(),
        gateway("rt", "gw", &listener("web", 80, "HTTP")),
        route_with(
            "m1",
            "m1.example",
            "primary",
            None,
            Some(&mirror_to("copy")),
        ),
        route_with(
            "m2",
            "m2.example",
            "primary",
            None,
            Some(&mirror_to("copy-h2c")),
        ),
        backend("rt", "primary", primary_port),
        backend("rt", "copy", copy_port),
        h2c_service.to_string(),
        endpoints("copy-h2c", "127.0.0.1", h2c_port),
    ]
    .concat();
    let gateway = Gateway::start(&config).await;
    let h2 = gateway.h2_client(&["m1.example", "m2.example"]);
    for host in ["m1.example", "m2.example"] {
        let r = h2
            .get(format!("http://{host}:{}/", gateway.listen))
            .header("cookie", "a=1")
            .header("cookie", "b=2")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let copy = kept_at_least(&copies, 1).await.remove(0);
    assert!(copy.contains("\r\ncookie: a=1; b=2\r\n"), "{copy}");
    assert_eq!(copy.matches("cookie:").count(), 1, "{copy}");
    assert!(copy.contains("\r\nx-forwarded-proto: http\r\n"), "{copy}");

    // Fields the client's Connection header names belong to its hop: the copy does not carry
    // them, as the real request does not; nor TE, nor a length for a request without a body.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", gateway.listen))
            .await
            .unwrap();
        tcp.write_all(
            b"GET /hop HTTP/1.1\r\nhost: m1.example\r\nconnection: close, X-Hop\r\n\
              x-hop: secret\r\nte: trailers\r\nx-kept: yes\r\n\r\n",
        )
        .await
        .unwrap();
        let mut answer = String::new();
        tcp.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    let copy = kept_at_least(&copies, 2).await.remove(1);
    assert!(copy.starts_with("get /hop http/1.1\r\n"), "{copy}");
    assert!(copy.contains("\r\nx-kept: yes\r\n"), "{copy}");
    for absent in ["x-hop:", "te:", "connection: close", "content-length:"] {
        assert!(
            !copy.contains(&format!("\r\n{absent}")),
            "{absent} in {copy}"
        );
    }

    let h2c_copy = kept_at_least(&h2c_copies, 1).await.remove(0);
    let lines: Vec<&str> = h2c_copy.lines().collect();
    assert_eq!(
        lines[0],
        format!("GET http://m2.example:{}/", gateway.listen),
        "{h2c_copy}"
    );
    assert!(lines.contains(&"cookie: a=1; b=2"), "{h2c_copy}");
    assert!(
        lines.iter().any(|l| l.starts_with("x-request-id: ")),
        "{h2c_copy}"
    );
    assert!(lines.contains(&"x-forwarded-for: 127.0.0.1"), "{h2c_copy}");
    assert!(!lines.iter().any(|l| l.starts_with("host:")), "{h2c_copy}");

    // Bodies over HTTP/1.1, one with its length and one chunked, reach the HTTP/2 mirror whole.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    for (framing, body) in [
        ("content-length: 5\r\n\r\nhello", "hello"),
        (
            "transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n chunk\r\n0\r\n\r\n",
            "hello chunk",
        ),
    ] {
        let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", gateway.listen))
            .await
            .unwrap();
        let request = format!(
            "POST /up?x=1 HTTP/1.1\r\nhost: m2.example\r\nconnection: close\r\n\
             te: gzip\r\n{framing}"
        );
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        tcp.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let seen = kept_at_least(&h2c_copies, 1).await;
        let deadline = Instant::now() + Duration::from_secs(5);
        while !h2c_copies
            .lock()
            .unwrap()
            .iter()
            .any(|c| c.ends_with(&format!("\n\n{body}")))
        {
            assert!(
                Instant::now() < deadline,
                "no copy with body {body:?}: {seen:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let all = h2c_copies.lock().unwrap().clone();
    assert_eq!(all.len(), 3, "{all:?}");
    for copy in &all[1..] {
        assert!(
            copy.starts_with("POST http://m2.example/up?x=1\n"),
            "{copy}"
        );
        for hop in ["connection:", "transfer-encoding:", "te:"] {
            assert!(!copy.contains(&format!("\n{hop}")), "{hop} in {copy}");
        }
    }
    assert!(all[1].contains("\ncontent-length: 5\n"), "{}", all[1]);
    assert_eq!(
        h2c_connections.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "copies one after another share a connection"
    );
    let metrics = admin_text(&gateway.client, gateway.admin, "/metrics").await;
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("portcullis_mirror_dropped_total ") && !l.ends_with(" 0")),
        "{metrics}"
    );
}

/// A backend of raw bytes on a port of 127.0.0.1 it returns: for each connection, once a
/// request header has come in whole, `answer` writes whatever it likes.
async fn serve_raw<F, A>(answer: F) -> u16
where
    F: Fn(tokio::net::TcpStream) -> A + Copy + Send + 'static,
    A: std::future::Future<Output = ()> + Send,
{
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                if read_head(&mut tcp).await {
                    answer(tcp).await;
                }
            });
        }
    });
    port
}

/// Reads a request header byte by byte, so that nothing after it is consumed; false when the
/// connection closes first.
async fn read_head(tcp: &mut tokio::net::TcpStream) -> bool {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if tcp.read(&mut byte).await.unwrap_or(0) == 0 {
            return false;
        }
        head.push(byte[0]);
    }
    true
}

/// A try that `timeouts.backendRequest` cuts off is sent again under a retry stanza, as the
/// spec asks for connection errors ("disconnect, reset, timeout"), while `timeouts.request`
/// leaves time for it; without a retry stanza it is answered 504 at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_try_cut_off_by_the_backend_timeout_is_retried_under_a_retry_stanza() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static TRIES: AtomicUsize = AtomicUsize::new(0);
    let port = serve_raw(|mut tcp| async move {
        use tokio::io::AsyncWriteExt;
        // The first try of each request is not answered in time; the next at once.
        if TRIES.fetch_add(1, Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        let _ = tcp
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
            .await;
    })
    .await;
    let timeouts = "    timeouts: {request: 5s, backendRequest: 300ms}\n";
    let config = [
        gateway_class(),
        gateway("rt", "gw", &listener("web", 80, "HTTP")),
        route(
            "retried",
            "retry.example",
            "slow",
            Some("{attempts: 1, backoff: 10ms}"),
        ) + timeouts,
        route("plain", "plain.example", "slow", None) + timeouts,
        backend("rt", "slow", port),
    ]
    .concat();
    let gateway = Gateway::start(&config).await;
    let send = |host: &'static str| {
        let request = (gateway.client)
            .get(format!("http://127.0.0.1:{}/", gateway.listen))
            .header("host", host);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    TRIES.store(0, Ordering::SeqCst);
    assert_eq!(send("retry.example").await, 200);
    assert_eq!(
        TRIES.load(Ordering::SeqCst),
        2,
        "the try cut off, then one more"
    );
    TRIES.store(0, Ordering::SeqCst);
    assert_eq!(send("plain.example").await, 504);
    assert_eq!(TRIES.load(Ordering::SeqCst), 1);
}

/// A backend that answers every request with a chunked body of `chunks` bytes, one every
/// `every`: a response that keeps trickling in; with `slow_head`, its header comes in one byte
/// every `every` instead. Returns its port.
async fn serve_trickle(chunks: usize, every: Duration, slow_head: bool) -> u16 {
    use tokio::io::AsyncWriteExt;
    serve_raw(move |mut tcp| async move {
        let start = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
        let pieces: Vec<&[u8]> = if slow_head {
            start.chunks(1).collect()
        } else {
            vec![&start[..]]
        };
        for piece in pieces {
            if slow_head {
                tokio::time::sleep(every).await;
            }
            if tcp.write_all(piece).await.is_err() {
                return;
            }
        }
        for _ in 0..chunks {
            tokio::time::sleep(every).await;
            if tcp.write_all(b"1\r\nx\r\n").await.is_err() {
                return;
            }
        }
        let _ = tcp.write_all(b"0\r\n\r\n").await;
    })
    .await
}

/// A copy that fails is counted apart from those dropped: one to a mirror that refuses the
/// connection, and one to a mirror that streams its answer a byte a second, which the whole
/// answer's 10 s cut short (it would otherwise hold its place among the copies in flight for
/// as long as it streamed). The real requests are answered at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_copies_are_counted_and_a_slow_answer_is_cut_off() {
    let (primary_port, _) = serve_keeping_heads().await;
    let refusing = {
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
        listener.local_addr().unwrap().port()
    };
    let streaming = serve_trickle(60, Duration::from_secs(1), false).await;
    let mirror_to = |service: &str| {
        format!("[{{type: RequestMirror, requestMirror: {{backendRef: {{name: {service}, port: 80}}}}}}]")
    };
    let config = [
        gateway_class(),
        gateway("rt", "gw", &listener("web", 80, "HTTP")),
        route_with(
            "r",
            "refused.example",
            "primary",
            None,
            Some(&mirror_to("refusing")),
        ),
        route_with(
            "s",
            "slow.example",
            "primary",
            None,
            Some(&mirror_to("streaming")),
        ),
        backend("rt", "primary", primary_port),
        backend("rt", "refusing", refusing),
        backend("rt", "streaming", streaming),
    ]
    .concat();
    let gateway = Gateway::start(&config).await;
    let failed = || async {
        let metrics = admin_text(&gateway.client, gateway.admin, "/metrics").await;
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("portcullis_mirror_failed_total "))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    let started = Instant::now();
    for host in ["refused.example", "slow.example"] {
        let r = gateway
            .client
            .get(format!("http://127.0.0.1:{}/", gateway.listen))
            .header("host", host)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{host}");
    }
    assert!(started.elapsed() < Duration::from_secs(3));
    let deadline = Instant::now() + Duration::from_secs(5);
    while failed().await != "1" {
        assert!(
            Instant::now() < deadline,
            "the refused copy was not counted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while failed().await != "2" {
        assert!(
            Instant::now() < deadline,
            "the streaming answer was not cut off"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Cut off by the whole answer's 10 s, not at the end of its 60 s.
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(9) && took < Duration::from_secs(20),
        "{took:?}"
    );
    let metrics = admin_text(&gateway.client, gateway.admin, "/metrics").await;
    assert!(
        metrics.contains("\nportcullis_mirror_dropped_total 0\n"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_timeout_ends_a_response_that_keeps_trickling_in() {
    // 40 bytes, one every 100 ms: the backend is never silent for long, but the whole answer
    // takes 4 s against a 1 s `timeouts.request`.
    let port = serve_trickle(40, Duration::from_millis(100), false).await;
    let slow_head = serve_trickle(1, Duration::from_millis(50), true).await;
    let route = "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
         metadata: {name: slow, namespace: rt}\n\
         spec:\n  parentRefs: [{name: gw}]\n  rules:\n\
         \x20 - backendRefs: [{name: slow, port: 80}]\n    timeouts: {request: 1s}\n\
         \x20 - matches: [{path: {value: /head}}]\n\
         \x20   backendRefs: [{name: slow-head, port: 80}]\n    timeouts: {request: 1s}\n";
    let config = [
        gateway_class(),
        gateway("rt", "gw", &listener("web", 80, "HTTP")),
        route.to_string(),
        backend("rt", "slow", port),
        backend("rt", "slow-head", slow_head),
    ]
    .concat();
    let gateway = Gateway::start(&config).await;
    let started = Instant::now();
    let r = gateway
        .client
        .get(format!("http://127.0.0.1:{}/", gateway.listen))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the status went out before the deadline");
    let body = r.bytes().await;
    assert!(
        body.is_err(),
        "the body is cut off, not completed: {body:?}"
    );
    // The whole answer would take 4 s; cut off at the first chunk after 1 s, it ends well before.
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "took {took:?}");

    // A header trickled in over about 2.5 s, never silent for long: once it is whole, the
    // deadline has passed and the client gets 504, not the backend's 200.
    let r = gateway
        .client
        .get(format!("http://127.0.0.1:{}/head", gateway.listen))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 504);
}

/// A body with a length that the backend sends in pieces, slowly, reaches the client as it
/// comes: each piece when the backend sends it, over HTTP/1.1 (cleartext; TLS connections have
/// the same write buffer), not held until a later piece fills the buffer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_body_with_a_length_reaches_the_client_as_it_comes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let port = serve_raw(|mut tcp| async move {
        let _ = tcp
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 16\r\n\r\nfirst")
            .await;
        for piece in [&b"-second"[..], b"-end"] {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let _ = tcp.write_all(piece).await;
        }
    })
    .await;
    let route = "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
         metadata: {name: slow, namespace: rt}\n\
         spec:\n  parentRefs: [{name: gw}]\n  rules:\n\
         \x20 - backendRefs: [{name: slow, port: 80}]\n";
    let config = [
        gateway_class(),
        gateway("rt", "gw", &listener("web", 80, "HTTP")),
        route.to_string(),
        backend("rt", "slow", port),
    ]
    .concat();
    let gateway = Gateway::start(&config).await;
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", gateway.listen))
        .await
        .unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nhost: a.example\r\n\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut seen = Vec::new();
    // (when it came, what had come by then), for each piece.
    let mut arrivals = Vec::new();
    let mut chunk = [0u8; 1024];
    while !seen.ends_with(b"first-second-end") && started.elapsed() < Duration::from_secs(6) {
        let n = tokio::time::timeout(Duration::from_secs(6), tcp.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        if n == 0 {
            break;
        }
        seen.extend_from_slice(&chunk[..n]);
        arrivals.push((
            started.elapsed(),
            String::from_utf8_lossy(&seen).to_string(),
        ));
    }
    let by = |text: &str| {
        arrivals
            .iter()
            .find(|(_, seen)| seen.ends_with(text))
            .map(|(at, _)| *at)
    };
    // Each piece comes well before the backend sends the next (1.5 s later).
    let first = by("first").unwrap_or_else(|| panic!("{arrivals:?}"));
    let second = by("first-second").unwrap_or_else(|| panic!("{arrivals:?}"));
    assert!(first < Duration::from_millis(1200), "{arrivals:?}");
    assert!(second < Duration::from_millis(2700), "{arrivals:?}");
    assert!(by("first-second-end").is_some(), "{arrivals:?}");
}

/// An HTTP/1.0 backend's answer reaches the client in the gateway's own version, HTTP/1.1,
/// its body whole whether its length was given or ended by the backend closing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_1_0_backend_is_answered_for_in_http_1_1() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let port = serve_raw(|mut tcp| async move {
        let _ = tcp
            .write_all(b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok")
            .await;
    })
    .await;
    let unframed = serve_raw(|mut tcp| async move {
        let _ = tcp.write_all(b"HTTP/1.0 200 OK\r\n\r\nuntil closed").await;
    })
    .await;
    let config = [
        gateway_class(),
        gateway("rt", "gw", &listener("web", 80, "HTTP")),
        route("old", "old.example", "old", None),
        route("unframed", "unframed.example", "unframed", None),
        backend("rt", "old", port),
        backend("rt", "unframed", unframed),
    ]
    .concat();
    let gateway = Gateway::start(&config).await;
    for (host, body) in [("old.example", "ok"), ("unframed.example", "until closed")] {
        let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", gateway.listen))
            .await
            .unwrap();
        let request = format!("GET / HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n");
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer)).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
        assert!(answer.contains(body), "{answer:?}");
    }
}

/// A backend that answers every request, whatever it asked, with `101 Switching Protocols` to
/// WebSocket, then holds the connection open for a while. Returns its port.
async fn serve_switching() -> u16 {
    use tokio::io::AsyncWriteExt;
    serve_raw(|mut tcp| async move {
        let answer = b"HTTP/1.1 101 Switching Protocols\r\n\
            upgrade: websocket\r\nconnection: upgrade\r\n\r\n";
        if tcp.write_all(answer).await.is_ok() {
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    })
    .await
}

/// Sends `request` on a new connection to `port` and returns the status line of the answer.
async fn status_line(port: u16, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    let read = async {
        while !answer.windows(2).any(|w| w == b"\r\n") {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), read).await;
    let text = String::from_utf8_lossy(&answer);
    text.lines().next().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_may_switch_protocols_only_when_the_client_asked() {
    let port = serve_switching().await;
    let config = [
        gateway_class(),
        gateway("rt", "gw", &listener("web", 80, "HTTP")),
        route("switch", "switch.example", "switch", None),
        backend("rt", "switch", port),
    ]
    .concat();
    let gateway = Gateway::start(&config).await;

    // A plain GET offered no protocol to switch to: the 101 is the backend's fault.
    let plain = "GET / HTTP/1.1\r\nhost: switch.example\r\n\r\n";
    let line = status_line(gateway.listen, plain).await;
    assert!(line.starts_with("HTTP/1.1 502"), "got {line:?}");

    // A request that offers the upgrade gets the backend's 101: a WebSocket handshake.
    let upgrade = "GET / HTTP/1.1\r\nhost: switch.example\r\n\
                   connection: upgrade\r\nupgrade: websocket\r\n\r\n";
    let line = status_line(gateway.listen, upgrade).await;
    assert!(line.starts_with("HTTP/1.1 101"), "got {line:?}");

    // `Upgrade` that `Connection` does not name asks for no upgrade (RFC 9110, section 7.8):
    // the field is dropped, and a 101 to it is the backend's fault, as to a plain GET. (A
    // proxy in front that saw no upgrade would otherwise send other requests into a tunnel.)
    let unnamed = "GET / HTTP/1.1\r\nhost: switch.example\r\n\
                   connection: keep-alive\r\nupgrade: websocket\r\n\r\n";
    let line = status_line(gateway.listen, unnamed).await;
    assert!(line.starts_with("HTTP/1.1 502"), "got {line:?}");
}

/// A WebSocket lasts as long as both ends keep it: one that stays quiet for longer than the
/// minute Pingora gives a client to send each part of a request body is still open, and
/// carries what comes next. Nor is what the client sends after the switch held to the request
/// header's deadline (1 s here). (This test waits out that minute.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_websocket_is_not_cut_after_a_minute() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let port = serve_raw(|mut tcp| async move {
        let answer = b"HTTP/1.1 101 Switching Protocols\r\n\
            upgrade: websocket\r\nconnection: upgrade\r\n\r\n";
        if tcp.write_all(answer).await.is_err() {
            return;
        }
        // Echo what comes after the switch.
        let mut buf = [0u8; 1024];
        while let Ok(n @ 1..) = tcp.read(&mut buf).await {
            if tcp.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    })
    .await;
    let config = [
        gateway_class(),
        gateway("rt", "gw", &listener("web", 80, "HTTP")),
        route("quiet", "quiet.example", "quiet", None),
        backend("rt", "quiet", port),
    ]
    .concat();
    let gateway = Gateway::start_with(&config, &["--request-header-timeout", "1s"]).await;
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", gateway.listen))
        .await
        .unwrap();
    tcp.write_all(
        b"GET / HTTP/1.1\r\nhost: quiet.example\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(tcp.read(&mut byte).await.unwrap(), 1, "{head:?}");
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{head:?}");
    let mut echoed = [0u8; 5];
    tcp.write_all(b"first").await.unwrap();
    tcp.read_exact(&mut echoed).await.unwrap();
    tokio::time::sleep(Duration::from_secs(62)).await;
    tcp.write_all(b"still here").await.unwrap();
    let mut echoed = [0u8; 10];
    tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut echoed))
        .await
        .expect("an answer within 5 s")
        .expect("the connection is open");
    assert_eq!(&echoed, b"still here");
}

/// The gateway in front of a backend that answers every request with `answer` and closes,
/// `NAME.example` routed to it.
async fn in_front_of_one_answer(name: &'static str, answer: &'static [u8]) -> Gateway {
    use tokio::io::AsyncWriteExt;
    let port = serve_raw(move |mut tcp| async move {
        let _ = tcp.write_all(answer).await;
        let _ = tcp.shutdown().await;
    })
    .await;
    let config = [
        gateway_class(),
        gateway("rt", "gw", &listener("web", 80, "HTTP")),
        route(name, &format!("{name}.example"), name, None),
        backend("rt", name, port),
    ]
    .concat();
    Gateway::start(&config).await
}

/// Sends `request` on a new connection to `port` and reads the answer to the connection's end.
async fn exchange(port: u16, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer))
        .await
        .expect("the answer ends with the connection")
        .unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

/// What the backend's response says of its own connection stays there: the fields its
/// `Connection` header names and `Keep-Alive` are not passed on. An HTTP/1.0 client, which
/// knows no chunked coding, gets a chunked answer as plain bytes ended by the close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_fields_stay_behind_and_an_http_1_0_client_gets_no_chunks() {
    // `upgrade` is not named in `connection`, and stays behind all the same.
    let gateway = in_front_of_one_answer(
        "chunked",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\
        connection: x-secret\r\nx-secret: s\r\nkeep-alive: timeout=5\r\nupgrade: h2c\r\n\
        x-kept: k\r\n\r\n\
        5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    )
    .await;
    for request in [
        "GET / HTTP/1.0\r\nhost: chunked.example\r\n\r\n",
        "GET / HTTP/1.1\r\nhost: chunked.example\r\nconnection: close\r\n\r\n",
    ] {
        let answer = exchange(gateway.listen, request).await;
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        let head = head.to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 200"), "{answer}");
        assert!(head.contains("x-kept: k"), "{answer}");
        assert!(
            !head.contains("x-secret")
                && !head.contains("keep-alive:")
                && !head.contains("upgrade"),
            "{answer}"
        );
        if request.contains("HTTP/1.0") {
            assert!(!head.contains("transfer-encoding"), "{answer}");
            assert_eq!(body, "hello world");
        } else {
            assert!(head.contains("transfer-encoding: chunked"), "{answer}");
            // The chunks as sent on: sizes in hex, each followed by its bytes.
            let mut rest = body;
            let mut decoded = String::new();
            while let Some((size, after)) = rest.split_once("\r\n") {
                let size = usize::from_str_radix(size, 16).unwrap();
                decoded.push_str(&after[..size]);
                rest = &after[size + 2..];
                if size == 0 {
                    break;
                }
            }
            assert_eq!(decoded, "hello world", "{answer}");
        }
    }
}

/// An HTTP/1.0 client gets no interim (1xx) answer, which it cannot read (RFC 9110, section
/// 15.2): a backend's 103 is passed to an HTTP/1.1 client only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_1_0_client_gets_no_interim_answer() {
    let gateway = in_front_of_one_answer(
        "hints",
        b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>\r\n\r\n\
        HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
    )
    .await;
    for (version, interim) in [("HTTP/1.0", false), ("HTTP/1.1", true)] {
        let request =
            format!("GET / {version}\r\nhost: hints.example\r\nconnection: close\r\n\r\n");
        let answer = exchange(gateway.listen, &request).await;
        assert_eq!(
            answer.starts_with("HTTP/1.1 103"),
            interim,
            "{version}: {answer}"
        );
        assert!(
            answer.contains("HTTP/1.1 200") && answer.ends_with("ok"),
            "{answer}"
        );
    }
}

/// A client that stops sending the body it announced gets 408 when the rule's timeout ends the
/// wait, and the backend, which was waiting for that body, is not counted as failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_sending_its_body_gets_408_and_the_backend_no_blame() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let flaky = Arc::new(Flaky::default());
    let port = serve(flaky.clone()).await;
    let gateway = with_timeouts("slow", "flaky", port, "{backendRequest: 1s}").await;
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", gateway.listen))
        .await
        .unwrap();
    tcp.write_all(b"POST / HTTP/1.1\r\nhost: slow.example\r\ncontent-length: 100\r\n\r\nx")
        .await
        .unwrap();
    let mut answer = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut answer))
        .await
        .expect("an answer within the timeout")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]).into_owned();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    let metrics = admin_text(&gateway.client, gateway.admin, "/metrics").await;
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("portcullis_upstream_failures_total{") && l.contains("rt/flaky")),
        "{metrics}"
    );
}

/// `timeouts.request` counts the client's upload: a body trickled in, a byte at a time well
/// within the read timeout, is cut off with 408 once the request's time is up, not sent on
/// whole and answered 504 seconds later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_trickled_in_past_the_request_timeout_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let flaky = Arc::new(Flaky::default());
    let port = serve(flaky.clone()).await;
    let gateway = with_timeouts("trickle", "flaky", port, "{request: 1s}").await;
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", gateway.listen))
        .await
        .unwrap();
    tcp.write_all(b"POST / HTTP/1.1\r\nhost: trickle.example\r\ncontent-length: 40\r\n\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let (mut read, mut write) = tcp.into_split();
    let sender = tokio::spawn(async move {
        for _ in 0..40 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if write.write_all(b"x").await.is_err() {
                break;
            }
        }
    });
    let mut answer = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(10), read.read(&mut answer))
        .await
        .expect("an answer")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]).into_owned();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    // The body would have taken 8 s; the answer comes when the second is up, at the next
    // byte (bounded loosely: the machine may be busy).
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    sender.abort();
}

/// An HTTP/2 connection whose port is no longer served is wound down (GOAWAY, then closed),
/// not left open to be answered 421 forever: the client's next request goes on a new
/// connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_connection_to_a_port_no_longer_served_gets_goaway() {
    let flaky = Arc::new(Flaky::default());
    let port = serve(flaky.clone()).await;
    let config = |listener_port: u16| {
        [
            gateway_class(),
            gateway("rt", "gw", &listener("web", listener_port, "HTTP")),
            route("moved", "moved.example", "flaky", None),
            backend("rt", "flaky", port),
        ]
        .concat()
    };
    let gateway = Gateway::start(&config(80)).await;
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", gateway.listen))
        .await
        .unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    let connection = tokio::spawn(connection);
    let request = || {
        Request::get("http://moved.example/")
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap()
    };
    let answer = sender.send_request(request()).await.unwrap();
    assert_eq!(answer.status(), 200);

    // The listener moves to another port: this one is no longer served.
    let dir = gateway._dir.path();
    std::fs::write(dir.join("all.yaml.new"), config(81)).unwrap();
    std::fs::rename(dir.join("all.yaml.new"), dir.join("all.yaml")).unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(10), connection).await;
    assert!(
        ended.is_ok(),
        "the connection was still open 10 s after its port stopped being served"
    );
}

/// A WebSocket (after a 101) lasts past the rule's request timeout while it is not silent for
/// that long: the deadline was the request's, and the conversation is not a request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgraded_connection_outlives_the_request_timeout_while_it_talks() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let port = serve_raw(|mut tcp| async move {
        let answer = b"HTTP/1.1 101 Switching Protocols\r\n\
            upgrade: websocket\r\nconnection: upgrade\r\n\r\n";
        if tcp.write_all(answer).await.is_err() {
            return;
        }
        // A byte every 200 ms for 2 s: never silent for the 1 s the rule allows.
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if tcp.write_all(b"m").await.is_err() {
                return;
            }
        }
    })
    .await;
    let gateway = with_timeouts("ws", "ws", port, "{request: 1s}").await;
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", gateway.listen))
        .await
        .unwrap();
    tcp.write_all(
        b"GET / HTTP/1.1\r\nhost: ws.example\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n",
    )
    .await
    .unwrap();
    let mut received = Vec::new();
    let read = tcp.read_to_end(&mut received);
    let _ = tokio::time::timeout(Duration::from_secs(5), read).await;
    let text = String::from_utf8_lossy(&received);
    let (head, messages) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    assert!(head.starts_with("HTTP/1.1 101"), "{text}");
    assert_eq!(messages, "m".repeat(10), "cut short: {text:?}");
}

/// `exposeHeaders: ["*"]` with credentials: a browser reads `*` as a header name then, so the
/// answer names the response's own fields instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wildcard_expose_with_credentials_names_the_response_fields() {
    let flaky = Arc::new(Flaky::default());
    let port = serve(flaky).await;
    let cors = |credentials: bool| {
        format!(
            "[{{type: CORS, cors: {{allowOrigins: ['https://app.example'], \
             exposeHeaders: ['*'], allowCredentials: {credentials}}}}}]"
        )
    };
    let config = [
        gateway_class(),
        gateway("rt", "gw", &listener("web", 80, "HTTP")),
        route_with("cred", "cred.example", "flaky", None, Some(&cors(true))),
        route_with("open", "open.example", "flaky", None, Some(&cors(false))),
        backend("rt", "flaky", port),
    ]
    .concat();
    let gateway = Gateway::start(&config).await;
    let expose = |host: &'static str| {
        let client = gateway.client.clone();
        let url = format!("http://127.0.0.1:{}/", gateway.listen);
        async move {
            let r = client
                .get(url)
                .header("host", host)
                .header("origin", "https://app.example")
                .send()
                .await
                .unwrap();
            let value = r.headers()["access-control-expose-headers"]
                .to_str()
                .unwrap();
            value.to_string()
        }
    };
    let named = expose("cred.example").await;
    assert!(
        named != "*" && named.split(", ").any(|n| n == "content-length"),
        "{named}"
    );
    assert_eq!(expose("open.example").await, "*");
}

/// Under a retry policy too, a request whose endpoint refused the connection goes on to the
/// next endpoint with its whole body, and its mirror copy is sent once, whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_goes_on_with_its_body_and_mirror_under_a_retry_policy() {
    let (primary, copy) = (Arc::new(Flaky::default()), Arc::new(Flaky::default()));
    let (primary_port, copy_port) = (serve(primary.clone()).await, serve(copy.clone()).await);
    let config = [
        gateway_class(),
        gateway("rt", "gw", &listener("web", 80, "HTTP")),
        route_with(
            "failover",
            "failover.example",
            "half",
            Some("{codes: [503], attempts: 2, backoff: 10ms}"),
            Some("[{type: RequestMirror, requestMirror: {backendRef: {name: copy, port: 80}}}]"),
        ),
        service("rt", "half"),
        endpoints("half", "127.0.0.2, 127.0.0.1", primary_port),
        backend("rt", "copy", copy_port),
    ]
    .concat();
    let gateway = Gateway::start(&config).await;
    let url = format!("http://127.0.0.1:{}/", gateway.listen);
    for body in ["one", "two"] {
        let r = gateway
            .client
            .post(&url)
            .header("host", "failover.example")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), format!("ok:{body}"));
    }
    assert_eq!(primary.seen(), ["POST one", "POST two"]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while copy.seen().len() < 2 {
        assert!(Instant::now() < deadline, "copies: {:?}", copy.seen());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut copies = copy.seen();
    copies.sort();
    assert_eq!(copies, ["POST one", "POST two"]);
}

/// A backend's 204 with a Content-Length, or a length repeated (`5, 5`), reaches an HTTP/2
/// client as a response it can read; lengths that differ are the backend's fault (502).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_lengths_a_client_cannot_read_are_made_one_or_refused() {
    use tokio::io::AsyncWriteExt;
    async fn answering(answer: &'static [u8]) -> u16 {
        serve_raw(move |mut tcp| async move {
            let _ = tcp.write_all(answer).await;
            let _ = tcp.shutdown().await;
        })
        .await
    }
    let empty = answering(b"HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\n").await;
    let twice = answering(b"HTTP/1.1 200 OK\r\ncontent-length: 5, 5\r\n\r\nhello").await;
    let differ =
        answering(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello").await;
    let config = [
        gateway_class(),
        gateway("rt", "gw", &listener("web", 80, "HTTP")),
        route("empty", "empty.example", "empty", None),
        route("twice", "twice.example", "twice", None),
        route("differ", "differ.example", "differ", None),
        backend("rt", "empty", empty),
        backend("rt", "twice", twice),
        backend("rt", "differ", differ),
    ]
    .concat();
    let gateway = Gateway::start(&config).await;
    let h2 = gateway.h2_client(&["empty.example", "twice.example", "differ.example"]);
    let get = |host: &'static str| {
        let h2 = h2.clone();
        let url = format!("http://{host}:{}/", gateway.listen);
        async move {
            let r = h2.get(url).send().await;
            let r = r.unwrap_or_else(|e| panic!("{host}: {e:?}"));
            let status = r.status().as_u16();
            let length = r.headers().get("content-length").cloned();
            (
                status,
                length,
                r.text().await.unwrap_or_else(|e| panic!("{host}: {e:?}")),
            )
        }
    };
    assert_eq!(get("empty.example").await, (204, None, String::new()));
    let (status, length, body) = get("twice.example").await;
    assert_eq!((status, body.as_str()), (200, "hello"));
    assert_eq!(length.unwrap(), "5");
    assert_eq!(get("differ.example").await.0, 502);
    // Counted as a bad answer, not as a backend that could not be reached.
    let metrics = admin_text(&gateway.client, gateway.admin, "/metrics").await;
    let failed = |kind: &str| {
        metrics.lines().any(|l| {
            l.starts_with("portcullis_upstream_failures_total{")
                && l.contains("rt/differ")
                && l.contains(&format!("kind=\"{kind}\""))
        })
    };
    assert!(failed("response") && !failed("connect"), "{metrics}");
}

/// A backend that answers no request until `together` requests are waiting at once, so that
/// each of them holds a connection of its own; it counts the connections it accepts. Returns
/// its port and the count.
async fn serve_in_rounds(together: usize) -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(tokio::sync::Barrier::new(together));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let barrier = barrier.clone();
            tokio::spawn(async move {
                while read_head(&mut tcp).await {
                    barrier.wait().await;
                    let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n";
                    if tcp.write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, accepted)
}

/// Two rounds of six requests at once, each round holding six backend connections: the second
/// round reuses every connection of the first by default, and only two of them when the
/// gateway may keep two idle (give or take one). None idle cannot be asked for: Pingora's pool
/// would then keep every connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_backend_connections_are_kept_up_to_the_configured_number() {
    use std::sync::atomic::Ordering;
    for refused in ["0", "1000001", "18446744073709551616", "some"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args([
                "run",
                "--config-dir",
                ".",
                "--upstream-idle-connections",
                refused,
            ])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{refused}: {stderr}");
        assert!(stderr.contains("--upstream-idle-connections"), "{stderr}");
    }
    const TOGETHER: usize = 6;
    // Pingora's pool bounds its idle connections by a sharded LRU, which can keep one more
    // than asked for a moment: with two, the second round opens three or four new connections.
    for (extra, expected) in [
        (&[][..], TOGETHER..=TOGETHER),
        (
            &["--upstream-idle-connections", "2"][..],
            TOGETHER + 3..=TOGETHER + 4,
        ),
    ] {
        let (port, accepted) = serve_in_rounds(TOGETHER).await;
        let config = [
            gateway_class(),
            gateway("rt", "gw", &listener("web", 80, "HTTP")),
            route("pool", "pool.example", "held", None),
            backend("rt", "held", port),
        ]
        .concat();
        let gateway = Gateway::start_with(&config, extra).await;
        let url = format!("http://127.0.0.1:{}/", gateway.listen);
        for _round in 0..2 {
            let mut requests = tokio::task::JoinSet::new();
            for _ in 0..TOGETHER {
                // A client of its own per request: one connection each to the gateway too.
                let client = reqwest::Client::builder()
                    .timeout(Duration::from_secs(5))
                    .build()
                    .unwrap();
                let url = url.clone();
                requests.spawn(async move {
                    let r = client.get(&url).header("host", "pool.example").send().await;
                    r.unwrap().status()
                });
            }
            while let Some(status) = requests.join_next().await {
                assert_eq!(status.unwrap(), 200);
            }
            // The gateway puts a connection back once it has passed the whole response on.
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let accepted = accepted.load(Ordering::SeqCst);
        assert!(
            expected.contains(&accepted),
            "{accepted} backend connections with {extra:?}, expected {expected:?}"
        );
    }
}

/// An HTTP/2 backend that refuses every other stream it is sent, or with `all` every stream
/// (RST_STREAM REFUSED_STREAM, as a server at its stream limit does), answering the rest 200
/// with the request's body; returns its port and the count of streams it refused.
async fn serve_h2c_refusing_streams(all: bool) -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let (streams, refused) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let counted = refused.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (streams, refused) = (streams.clone(), counted.clone());
            tokio::spawn(async move {
                let Ok(mut connection) = h2::server::handshake(tcp).await else {
                    return;
                };
                while let Some(Ok((request, mut respond))) = connection.accept().await {
                    if all || streams.fetch_add(1, Ordering::Relaxed) % 2 == 0 {
                        refused.fetch_add(1, Ordering::Relaxed);
                        respond.send_reset(h2::Reason::REFUSED_STREAM);
                        continue;
                    }
                    tokio::spawn(async move {
                        let mut body = request.into_body();
                        let mut got = Vec::new();
                        while let Some(Ok(chunk)) = body.data().await {
                            let _ = body.flow_control().release_capacity(chunk.len());
                            got.extend_from_slice(&chunk);
                        }
                        let response = http::Response::builder().status(200).body(()).unwrap();
                        if let Ok(mut send) = respond.send_response(response, false) {
                            let _ = send.send_data(Bytes::from(got), true);
                        }
                    });
                }
            });
        }
    });
    (port, refused)
}

/// A gRPC answer whose backend stream fails after its header ends in the gateway's gRPC
/// status, with no `Content-Length` from the backend left in front of it: a length the body
/// then falls short of would make the whole response malformed (RFC 9113, section 8.1.1), and
/// a strict client would see a protocol error instead of UNAVAILABLE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_answer_cut_short_ends_in_its_status_without_the_backends_length() {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .unwrap();
    let h2c_port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut connection) = h2::server::handshake(tcp).await else {
                    return;
                };
                while let Some(Ok((request, mut respond))) = connection.accept().await {
                    let response = http::Response::builder()
                        .status(200)
                        .header("content-type", "application/grpc");
                    if request.uri().path() == "/s.S/Gone" {
                        // An HTTP error, which a gRPC client reads as UNAVAILABLE, whatever
                        // grpc-status comes with it.
                        let response = http::Response::builder()
                            .status(503)
                            .header("grpc-status", "0")
                            .body(())
                            .unwrap();
                        let _ = respond.send_response(response, true);
                        continue;
                    }
                    if request.uri().path() == "/s.S/Odd" {
                        // A code past those gRPC defines, which its clients read as UNKNOWN.
                        let response = response.header("grpc-status", "99").body(()).unwrap();
                        let _ = respond.send_response(response, true);
                        continue;
                    }
                    if request.uri().path() == "/s.S/Bare" {
                        // A message and the end of the stream, without a status.
                        let response = response.body(()).unwrap();
                        if let Ok(mut send) = respond.send_response(response, false) {
                            let _ = send.send_data(Bytes::from_static(b"\0\0\0\0\0"), true);
                        }
                        continue;
                    }
                    if request.uri().path() == "/s.S/Denied" {
                        // A call the backend refuses: PERMISSION_DENIED in its trailers.
                        let response = response.body(()).unwrap();
                        if let Ok(mut send) = respond.send_response(response, false) {
                            let mut trailers = http::HeaderMap::new();
                            trailers.insert("grpc-status", "7".parse().unwrap());
                            let _ = send.send_trailers(trailers);
                        }
                        continue;
                    }
                    // Promises 1000 bytes and ends the stream after 10.
                    let response = response.header("content-length", "1000").body(()).unwrap();
                    if let Ok(mut send) = respond.send_response(response, false) {
                        let _ = send.send_data(Bytes::from_static(b"0123456789"), true);
                    }
                }
            });
        }
    });
    let gateway = in_front_of_h2c(h2c_port).await;
    let call = |method: &str| {
        let out = std::process::Command::new("curl")
            .args([
                "-sS",
                "--http2-prior-knowledge",
                "-D",
                "-",
                "-o",
                "/dev/null",
            ])
            .args([
                "-H",
                "content-type: application/grpc",
                "-H",
                "host: h.example",
            ])
            .args(["--data-binary", ""])
            .arg(format!("http://127.0.0.1:{}/s.S/{method}", gateway.listen))
            .output()
            .expect("curl runs");
        let head = String::from_utf8_lossy(&out.stdout).to_lowercase();
        let errors = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "curl: {errors}\n{head}");
        head
    };
    let head = call("Call");
    assert!(!head.contains("content-length"), "{head}");
    assert!(head.contains("grpc-status: 14"), "{head}");
    // The metrics count calls by their gRPC status, the gateway's own and the backend's.
    let denied = call("Denied");
    assert!(denied.contains("grpc-status: 7"), "{denied}");
    // A call that carried no status is counted as its client reads it.
    call("Gone");
    call("Bare");
    call("Odd");
    let metrics = admin_text(&gateway.client, gateway.admin, "/metrics").await;
    for (code, calls) in [("UNAVAILABLE", 2), ("PERMISSION_DENIED", 1), ("UNKNOWN", 2)] {
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("portcullis_grpc_responses_total{")
                    && l.contains(&format!("grpc_code=\"{code}\""))
                    && l.ends_with(&format!(" {calls}"))),
            "{code}: {metrics}"
        );
    }
}

/// A request an HTTP/2 backend refused without processing it (REFUSED_STREAM; a GOAWAY that
/// leaves its stream out is the same) is sent again, whatever its method and with its body,
/// with no retry policy on the route: the backend did nothing with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_an_http2_backend_refused_unprocessed_are_sent_again() {
    let (h2c_port, refused) = serve_h2c_refusing_streams(false).await;
    let gateway = in_front_of_h2c(h2c_port).await;
    for n in 0..6 {
        let body = format!("order {n}");
        let r = gateway
            .client
            .post(format!("http://127.0.0.1:{}/orders", gateway.listen))
            .header("host", "h.example")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "POST {n}");
        assert_eq!(r.text().await.unwrap(), body);
    }
    assert!(
        refused.load(std::sync::atomic::Ordering::Relaxed) >= 6,
        "the backend refused a stream for each request"
    );
}

/// A backend that refuses every stream gets each request three times at most (sent again
/// twice), not as many times as Pingora's own retry limit allows: it is shedding load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_refuses_every_stream_gets_each_request_three_times_at_most() {
    let (h2c_port, refused) = serve_h2c_refusing_streams(true).await;
    let gateway = in_front_of_h2c(h2c_port).await;
    let r = gateway
        .client
        .post(format!("http://127.0.0.1:{}/orders", gateway.listen))
        .header("host", "h.example")
        .body("order")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let refused = refused.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        (1..=3).contains(&refused),
        "the backend refused {refused} streams for one request"
    );
}
