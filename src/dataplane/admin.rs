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

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Sleep;

use super::Shared;

/// How long a client of the admin endpoint has to send a request's header, counted from when
/// the connection opens or its previous answer was sent: a connection that stays silent, or
/// trickles its header in, is closed after this.
const ADMIN_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long an answer may wait for the client to take any of it: a client that stops reading
/// (its socket buffers full) loses its connection after this, rather than holding it forever.
const ADMIN_WRITE_STALL: Duration = Duration::from_secs(10);

/// Admin connections served at once. Scrapers and probes need a handful; past this a new
/// connection is closed at once, so that the endpoint (often reachable from the whole cluster)
/// cannot be made to hold an unbounded number of sockets.
const ADMIN_CONNECTIONS: usize = 64;

/// Admin connections served at once from one peer address: a single client (one pod, one
/// scraper gone wrong) cannot take the slots that the kubelet's probes and the other scrapers
/// need.
const ADMIN_CONNECTIONS_PER_PEER: usize = 8;

/// Serves the admin endpoint on `listener` until the process ends.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let slots = Arc::new(Semaphore::new(ADMIN_CONNECTIONS));
    let peers = Arc::new(Peers::default());
    loop {
        let Ok((tcp, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Some(peer_slot) = peers.take(peer.ip()) else {
            tracing::debug!(%peer, "admin connection refused: {ADMIN_CONNECTIONS_PER_PEER} already open from this address");
            continue;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!("admin connection refused: {ADMIN_CONNECTIONS} already open");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let shared = shared.clone();
        tokio::spawn(async move {
            let _slots = (slot, peer_slot);
            let service = service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, std::convert::Infallible>(answer(&req, &shared)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(ADMIN_HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(WriteStall::new(tcp)), service)
                .await;
        });
    }
}

/// How many admin connections each peer address has open.
#[derive(Default)]
struct Peers(std::sync::Mutex<std::collections::HashMap<IpAddr, usize>>);

impl Peers {
    /// A slot for one more connection from `ip`, unless it has all of its own already.
    fn take(self: &Arc<Self>, ip: IpAddr) -> Option<PeerSlot> {
        let mut open = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let count = open.entry(ip).or_default();
        if *count >= ADMIN_CONNECTIONS_PER_PEER {
            return None;
        }
        *count += 1;
        Some(PeerSlot {
            peers: self.clone(),
            ip,
        })
    }
}

/// One connection's place in [`Peers`], given back when the connection ends.
struct PeerSlot {
    peers: Arc<Peers>,
    ip: IpAddr,
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut open = self.peers.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// A connection whose writes fail once they have made no progress for [`ADMIN_WRITE_STALL`]:
/// hyper bounds the wait for a request header, not the wait for the client to take an answer.
struct WriteStall {
    tcp: TcpStream,
    /// Armed while a write waits for room in the socket.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl WriteStall {
    fn new(tcp: TcpStream) -> Self {
        WriteStall { tcp, stalled: None }
    }

    /// What a write that is still waiting comes to: still waiting, or, past the stall limit, an
    /// error that ends the connection.
    fn waiting<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let timer = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(ADMIN_WRITE_STALL)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the admin client took none of its answer in time",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Disarms the stall timer when a write has made progress (or failed).
    fn settled<T>(
        &mut self,
        polled: Poll<io::Result<T>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<T>> {
        match polled {
            Poll::Pending => self.waiting(cx),
            ready => {
                self.stalled = None;
                ready
            }
        }
    }
}

impl AsyncRead for WriteStall {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for WriteStall {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.tcp).poll_write(cx, buf);
        self.settled(polled, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs);
        self.settled(polled, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.tcp).poll_flush(cx);
        self.settled(polled, cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
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
