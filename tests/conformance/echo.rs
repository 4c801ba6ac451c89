//! Echo backends: one HTTP server per backend Service, on 127.0.0.1 ephemeral ports.
//!
//! Each echo answers every request with `200` and a JSON description of the request as received
//! (path with query, host, method, protocol, every header value, and the namespace, Service and
//! pod it stands for), which is what the cases compare against. On top of that it implements the
//! behaviours the README lists: `delay=` waits, `X-Echo-Set-Header` response headers, the flaky
//! `/retry` endpoint, a WebSocket echo, an HTTP/2-cleartext-only port for `appProtocol:
//! kubernetes.io/h2c`, and a count of every path+query it received (mirror checks need it,
//! because the Gateway throws the mirror's reply away).

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::header::{HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

use crate::cases::Backend;

/// The appProtocol that asks for a port speaking only HTTP/2 cleartext.
const H2C_APP_PROTOCOL: &str = "kubernetes.io/h2c";

/// One backend Service's echo: its identity, its listening ports and what it received.
pub(crate) struct Echo {
    pub(crate) namespace: String,
    pub(crate) service: String,
    /// Service targetPort -> the port the echo really listens on.
    ports: BTreeMap<u16, u16>,
    state: Arc<State>,
}

impl Echo {
    /// The real port standing for a Service targetPort, if the echo serves it.
    pub(crate) fn real_port(&self, target_port: u16) -> Option<u16> {
        self.ports.get(&target_port).copied()
    }

    /// How many requests with exactly this path and query the echo has received.
    pub(crate) fn seen_count(&self, path_and_query: &str) -> usize {
        let seen = self.state.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.get(path_and_query).copied().unwrap_or(0)
    }
}

/// Every echo, by `(namespace, service)`; aliased Services map to the echo they alias.
pub(crate) struct Echoes {
    by_service: HashMap<(String, String), Arc<Echo>>,
}

impl Echoes {
    /// Starts an echo for every `http` backend and resolves `alias-of:` entries. Backends of
    /// other kinds (TLS, gRPC, TCP, DNS) get no echo here.
    pub(crate) async fn start(backends: &[Backend]) -> io::Result<Echoes> {
        let mut by_service = HashMap::new();
        for b in backends.iter().filter(|b| b.echo == "http") {
            let state = Arc::new(State {
                namespace: b.namespace.clone(),
                service: b.service.clone(),
                seen: Mutex::new(HashMap::new()),
                retries: Mutex::new(HashMap::new()),
            });
            let mut ports = BTreeMap::new();
            for p in &b.ports {
                let target = p.target_port.unwrap_or(p.port);
                if ports.contains_key(&target) {
                    continue;
                }
                let h2c_only = p.app_protocol.as_deref() == Some(H2C_APP_PROTOCOL);
                let real = serve(state.clone(), h2c_only).await?;
                ports.insert(target, real);
            }
            let echo = Echo {
                namespace: b.namespace.clone(),
                service: b.service.clone(),
                ports,
                state,
            };
            by_service.insert((b.namespace.clone(), b.service.clone()), Arc::new(echo));
        }
        for b in backends {
            if let Some(target) = b.echo.strip_prefix("alias-of:") {
                if let Some(echo) = by_service.get(&(b.namespace.clone(), target.to_string())) {
                    let echo = echo.clone();
                    by_service.insert((b.namespace.clone(), b.service.clone()), echo);
                }
            }
        }
        Ok(Echoes { by_service })
    }

    /// The echo answering for a Service.
    pub(crate) fn get(&self, namespace: &str, service: &str) -> Option<&Arc<Echo>> {
        self.by_service
            .get(&(namespace.to_string(), service.to_string()))
    }
}

/// What one echo shares across its ports and connections.
struct State {
    namespace: String,
    service: String,
    /// path+query -> number of requests received.
    seen: Mutex<HashMap<String, usize>>,
    /// `/retry` attempt counters by `uuid` query value.
    retries: Mutex<HashMap<String, u32>>,
}

/// Binds a port for `state` and serves it until the process ends; returns the port.
async fn serve(state: Arc<State>, h2c_only: bool) -> io::Result<u16> {
    let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                // Out of file descriptors or similar: back off rather than spin.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let state = state.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| handle(state.clone(), h2c_only, req));
                // The same builder detects HTTP/1.1 and the HTTP/2 preface, so the h2c-only port
                // can still answer an HTTP/1.1 request with a readable 400.
                let builder = auto::Builder::new(TokioExecutor::new());
                let _ = builder
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(port)
}

type Reply = Response<Full<Bytes>>;

async fn handle(
    state: Arc<State>,
    h2c_only: bool,
    mut req: Request<Incoming>,
) -> io::Result<Reply> {
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".to_string());
    {
        let mut seen = state.seen.lock().unwrap_or_else(|e| e.into_inner());
        *seen.entry(path.clone()).or_default() += 1;
    }
    if h2c_only && req.version() != Version::HTTP_2 {
        return Ok(text(
            StatusCode::BAD_REQUEST,
            "this port serves HTTP/2 cleartext only\n",
        ));
    }
    let query = query_params(&path);
    if let Some(delay) = query.get("delay").and_then(|d| parse_go_duration(d)) {
        tokio::time::sleep(delay).await;
    }
    if path.starts_with("/retry") {
        if let Some(reply) = flaky(&state, &query)? {
            return Ok(reply);
        }
    }
    if is_websocket_upgrade(&req) {
        return Ok(websocket(&mut req));
    }
    let description = describe(&state, &req, &path);
    let set_headers = req
        .headers()
        .get_all("x-echo-set-header")
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect::<Vec<_>>();
    // The body is read so that the connection stays usable; its content is not reported.
    let _ = req.into_body().collect().await;
    let mut reply = Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(description.to_string())))
        .map_err(io::Error::other)?;
    for entry in set_headers.iter().flat_map(|v| v.split(',')) {
        let Some((name, value)) = entry.split_once(':') else {
            continue;
        };
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.trim().as_bytes()),
            HeaderValue::from_str(value.trim()),
        ) {
            reply.headers_mut().append(name, value);
        }
    }
    Ok(reply)
}

/// The JSON object describing a request as received.
fn describe(state: &State, req: &Request<Incoming>, path: &str) -> serde_json::Value {
    // Go's server (upstream's echo) moves Host out of the header map and canonicalises names;
    // the judge compares names case-insensitively either way.
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in req.headers() {
        if name == http::header::HOST {
            continue;
        }
        headers
            .entry(canonical_header_name(name.as_str()))
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    let host = req
        .headers()
        .get(http::header::HOST)
        .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let proto = match req.version() {
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2.0",
        _ => "HTTP/1.1",
    };
    serde_json::json!({
        "path": path,
        "host": host,
        "method": req.method().as_str(),
        "proto": proto,
        "headers": headers,
        "namespace": state.namespace,
        "service": state.service,
        "pod": format!("{}-0", state.service),
    })
}

/// The `/retry` endpoint: fails while the attempt counter of the request's `uuid` is below
/// `succeedAfter`. Returns `None` when the request should be echoed normally.
fn flaky(state: &State, query: &HashMap<String, String>) -> io::Result<Option<Reply>> {
    let succeed_after: u32 = query
        .get("succeedAfter")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let key = query.get("uuid").cloned().unwrap_or_default();
    let failing = {
        let mut counters = state.retries.lock().unwrap_or_else(|e| e.into_inner());
        let count = counters.entry(key).or_default();
        if *count < succeed_after {
            *count += 1;
            true
        } else {
            false
        }
    };
    if !failing {
        return Ok(None);
    }
    match query
        .get("responseCode")
        .and_then(|c| c.parse::<u16>().ok())
    {
        Some(code) => {
            let status = StatusCode::from_u16(code).map_err(io::Error::other)?;
            Ok(Some(text(status, "failing as asked by /retry\n")))
        }
        // An error from the service makes hyper drop the connection without a reply, which is
        // the connection failure the endpoint promises when no responseCode is given.
        None => Err(io::Error::new(
            io::ErrorKind::ConnectionReset,
            "dropping the connection as asked by /retry",
        )),
    }
}

fn is_websocket_upgrade<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
        && req.headers().contains_key("sec-websocket-key")
}

/// Accepts a WebSocket upgrade and echoes every text and binary message back.
fn websocket(req: &mut Request<Incoming>) -> Reply {
    let key = req
        .headers()
        .get("sec-websocket-key")
        .map(|k| k.as_bytes().to_vec())
        .unwrap_or_default();
    let upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        while let Some(Ok(message)) = ws.next().await {
            if message.is_text() || message.is_binary() {
                if ws.send(message).await.is_err() {
                    break;
                }
            } else if message.is_close() {
                break;
            }
        }
    });
    let mut reply = Response::new(Full::new(Bytes::new()));
    *reply.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = reply.headers_mut();
    headers.insert(http::header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(
        http::header::CONNECTION,
        HeaderValue::from_static("Upgrade"),
    );
    if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(&key)) {
        headers.insert("sec-websocket-accept", accept);
    }
    reply
}

fn text(status: StatusCode, body: &'static str) -> Reply {
    let mut reply = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *reply.status_mut() = status;
    reply.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain"),
    );
    reply
}

/// The query parameters of a path (first value wins; the values used here need no decoding).
pub(crate) fn query_params(path: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    if let Some((_, query)) = path.split_once('?') {
        for pair in query.split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            out.entry(k.to_string()).or_insert_with(|| v.to_string());
        }
    }
    out
}

/// Go's header-name canonical form: `x-header-set` -> `X-Header-Set`.
pub(crate) fn canonical_header_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = true;
    for c in name.chars() {
        out.push(if upper {
            c.to_ascii_uppercase()
        } else {
            c.to_ascii_lowercase()
        });
        upper = c == '-';
    }
    out
}

/// Parses Go's `time.ParseDuration` syntax (`1s`, `500ms`, `1m30s`, `1.5h`).
pub(crate) fn parse_go_duration(s: &str) -> Option<Duration> {
    let mut rest = s.trim();
    if rest == "0" {
        return Some(Duration::ZERO);
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if number_len == 0 {
            return None;
        }
        let value: f64 = rest[..number_len].parse().ok()?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds_per_unit = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += value * seconds_per_unit;
        rest = &rest[unit_len..];
    }
    Some(Duration::from_secs_f64(total))
}
