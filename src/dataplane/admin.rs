//! The admin endpoint: health, readiness, metrics and the status report.
//!
//! | path       | answer                                                              |
//! |------------|---------------------------------------------------------------------|
//! | `/healthz` | 200 while the process runs                                          |
//! | `/readyz`  | 200 once the first routing table is live with its listener sockets bound, 503 (saying why) before and from SIGTERM on |
//! | `/metrics` | Prometheus text format                                              |
//! | `/status`  | the compiler's report as JSON, the same as `portcullis check --json` |
//! | `/debug/routes` | the routing table as JSON, rules in the order they are tried   |
//! | `/debug/explain?listener=NS/GW/L&host=H&path=P&method=M&header=N:V` | which rule a request would match, and why earlier ones did not |

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::Shared;

/// How long a client of the admin endpoint has to send a request's header, counted from when
/// the connection opens or its previous answer was sent: a connection that stays silent, or
/// trickles its header in, is closed after this.
const ADMIN_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Admin connections served at once. Scrapers and probes need a handful; past this a new
/// connection is closed at once, so that the endpoint (often reachable from the whole cluster)
/// cannot be made to hold an unbounded number of sockets.
const ADMIN_CONNECTIONS: usize = 64;

/// Serves the admin endpoint on `listener` until the process ends.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let slots = Arc::new(Semaphore::new(ADMIN_CONNECTIONS));
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!("admin connection refused: {ADMIN_CONNECTIONS} already open");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let shared = shared.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, std::convert::Infallible>(answer(&req, &shared)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(ADMIN_HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}

fn answer(req: &Request<Incoming>, shared: &Shared) -> Response<Full<Bytes>> {
    // Every endpoint only reads: anything but GET and HEAD is refused, so that a client that
    // means to change something (`curl -X POST .../status`) is not told it did.
    if req.method() != hyper::Method::GET && req.method() != hyper::Method::HEAD {
        let mut resp = Response::new(Full::new(Bytes::from_static(
            b"method not allowed: the admin endpoints only answer GET and HEAD\n",
        )));
        *resp.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
        resp.headers_mut().insert(
            hyper::header::ALLOW,
            hyper::header::HeaderValue::from_static("GET, HEAD"),
        );
        return resp;
    }
    let (status, content_type, body) = match req.uri().path() {
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".to_string()),
        "/readyz" if shared.ready.load(Ordering::Acquire) => {
            (StatusCode::OK, "text/plain", "ready\n".to_string())
        }
        "/readyz" => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            format!("{}\n", shared.waiting_for.load()),
        ),
        "/metrics" => (
            StatusCode::OK,
            "text/plain; version=0.0.4",
            shared.metrics.render(),
        ),
        "/status" => {
            let report = shared.report.load();
            let body = serde_json::to_string_pretty(&**report).unwrap_or_default();
            (StatusCode::OK, "application/json", body)
        }
        "/debug/routes" => {
            let table = shared.table.load();
            let body = serde_json::to_string_pretty(&crate::routing::explain::describe(&table)).unwrap_or_default();
            (StatusCode::OK, "application/json", body)
        }
        "/debug/explain" => {
            match crate::routing::explain::Question::from_query(req.uri().query().unwrap_or("")) {
                Ok(question) => {
                    let answer = question.answer(&shared.table.load(), &shared.report.load());
                    // The listener asked about is what is not found; the body says why.
                    let status = if answer.listener_unknown { StatusCode::NOT_FOUND } else { StatusCode::OK };
                    (status, "application/json", serde_json::to_string_pretty(&answer).unwrap_or_default())
                }
                Err(err) => (StatusCode::BAD_REQUEST, "text/plain", format!("{err}\n")),
            }
        }
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found; try /healthz, /readyz, /metrics, /status, /debug/routes or /debug/explain\n".to_string(),
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    resp
}

/// Binds the admin address.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
