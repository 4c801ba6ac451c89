//! `RequestMirror`: a copy of the request goes to another backend and its answer is dropped.
//!
//! Copies are sent by a detached task, so a slow or dead mirror never delays the real request.
//! They go through Pingora's connector as real requests do, with the same peer: TLS to a
//! Service a BackendTLSPolicy names (with the listener's client certificate), HTTP/2 to an h2c
//! or gRPC backend, HTTP/1.1 otherwise, on pooled connections of their own. At most
//! [`MAX_IN_FLIGHT`] copies are in flight; beyond that copies are dropped and counted, so a
//! mirror outage cannot exhaust memory or sockets.
//!
//! A request body reaches the copy chunk by chunk as the proxy reads it for the real backend
//! ([`MirrorBody::send`]): the chunks are shared, not copied, and at most
//! [`MAX_QUEUED_PER_COPY`] wait for one copy and [`MAX_QUEUED_BYTES`] for all of them. A copy
//! whose mirror cannot keep up, or that the real request leaves before its body ends (answered
//! early, or failed), is abandoned and counted: its connection is closed (HTTP/2: its stream is
//! reset) before the body ends, so the mirror never takes a cut body for a whole one. Each step
//! of a copy (connecting, each write, reading the whole answer) gets [`MIRROR_TIMEOUT`];
//! waiting for the client's next chunk gets no timeout of its own, since the real request
//! bounds it. A copy that fails (the mirror refused it, failed TLS verification, did not answer
//! whole in time) is counted apart from those dropped, and not tried on another endpoint.
//!
//! The copy carries what the real backend gets of the gateway's own: the request's
//! X-Request-Id, X-Forwarded-For with the client's address, and X-Forwarded-Proto.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use pingora_core::connectors::http::Connector;
use pingora_core::connectors::ConnectorOptions;
use pingora_core::protocols::http::client::HttpSession;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::utils::tls::CertKey;
use pingora_http::RequestHeader;
use rand::Rng;
use tokio::sync::mpsc;

use super::metrics::Metrics;
use super::proxy::{backend_peer, connection_options};
use crate::routing::table::{Backend, Mirror};

/// Copies in flight at most.
pub const MAX_IN_FLIGHT: usize = 1024;
/// How long one step of a copy may take: connecting, one write, reading the answer.
pub const MIRROR_TIMEOUT: Duration = Duration::from_secs(10);

/// Body bytes queued for all mirrors together at most.
pub const MAX_QUEUED_BYTES: usize = 64 << 20;
/// Body bytes queued for one copy at most: a mirror on loopback or a LAN drains far faster,
/// while a client uploads; a copy that falls this far behind is not keeping up.
pub const MAX_QUEUED_PER_COPY: usize = 8 << 20;

static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);
static QUEUED_BYTES: AtomicUsize = AtomicUsize::new(0);

/// What the mirror task is handed, in order: body chunks, then the end of the body. A sender
/// dropped before `End` abandons the copy.
enum Chunk {
    Data(Bytes),
    End,
}

/// The way a request's body reaches one copy of it. Dropped before the body's end (the real
/// request was answered or failed first), the copy is abandoned and counted.
pub struct MirrorBody {
    tx: mpsc::UnboundedSender<Chunk>,
    queued: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
    done: bool,
}

impl MirrorBody {
    /// Hands the copy a chunk of the body (and its end, on the last one). `false` when the copy
    /// is finished or abandoned, and this handle is no longer needed.
    pub fn send(&mut self, data: Option<&Bytes>, end: bool) -> bool {
        if let Some(data) = data.filter(|d| !d.is_empty()) {
            let len = data.len();
            let own = self.queued.fetch_add(len, Ordering::Relaxed) + len;
            let all = QUEUED_BYTES.fetch_add(len, Ordering::Relaxed) + len;
            let sent = own <= MAX_QUEUED_PER_COPY
                && all <= MAX_QUEUED_BYTES
                && self.tx.send(Chunk::Data(data.clone())).is_ok();
            if !sent {
                self.queued.fetch_sub(len, Ordering::Relaxed);
                QUEUED_BYTES.fetch_sub(len, Ordering::Relaxed);
                self.abandon();
                return false;
            }
        }
        if end {
            if self.tx.send(Chunk::End).is_err() {
                self.abandon();
            }
            self.done = true;
            return false;
        }
        true
    }

    fn abandon(&mut self) {
        if !self.done {
            self.done = true;
            self.metrics.mirror_dropped.inc();
        }
    }
}

impl Drop for MirrorBody {
    fn drop(&mut self) {
        self.abandon();
    }
}

/// What the gateway adds to a copy, as to the real request.
pub struct Origin<'a> {
    /// The request's X-Request-Id.
    pub request_id: &'a str,
    /// The client's address, appended to X-Forwarded-For.
    pub client: Option<std::net::IpAddr>,
    /// `http` or `https`: the X-Forwarded-Proto.
    pub scheme: &'static str,
    /// What the listener presents to TLS backends.
    pub client_cert: Option<Arc<CertKey>>,
}

/// Sends a copy of `req` to the mirror's backend, if this request falls in its share. With
/// `with_body`, the copy waits for the body through the returned [`MirrorBody`].
pub fn spawn(
    mirror: &Mirror,
    req: &RequestHeader,
    with_body: bool,
    origin: &Origin<'_>,
    metrics: &Arc<Metrics>,
) -> Option<MirrorBody> {
    if mirror.per_million < 1_000_000
        && rand::rng().random_range(0..1_000_000) >= mirror.per_million
    {
        return None;
    }
    let Backend::Service(service) = mirror.backend.as_ref() else {
        return None;
    };
    let endpoint = service.pick()?;
    let peer = backend_peer(
        endpoint,
        service.h2c,
        service.tls.as_deref(),
        origin.client_cert.clone(),
    );
    let head = match copy_header(req, with_body, origin, &peer) {
        Ok(head) => head,
        Err(err) => {
            metrics.mirror_dropped.inc();
            tracing::debug!(backend = %service.name, error = %err, "mirror request not made");
            return None;
        }
    };
    if IN_FLIGHT.fetch_add(1, Ordering::Relaxed) >= MAX_IN_FLIGHT {
        IN_FLIGHT.fetch_sub(1, Ordering::Relaxed);
        metrics.mirror_dropped.inc();
        return None;
    }
    let queued = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = if with_body {
        let (tx, rx) = mpsc::unbounded_channel();
        (Some(tx), Some(rx))
    } else {
        (None, None)
    };
    let task_queued = queued.clone();
    let task_metrics = metrics.clone();
    tokio::spawn(async move {
        match send_copy(&peer, head, rx, &task_queued).await {
            Ok(()) => {}
            // Counted already, as dropped.
            Err(Failure::Abandoned) => {}
            Err(Failure::Mirror(err)) => {
                task_metrics.mirror_failed.inc();
                tracing::debug!(%endpoint, error = %err, "mirror request failed");
            }
        }
        IN_FLIGHT.fetch_sub(1, Ordering::Relaxed);
    });
    tx.map(|tx| MirrorBody {
        tx,
        queued,
        metrics: metrics.clone(),
        done: false,
    })
}

/// The connections copies go on: Pingora's connector, as for real requests (TLS, HTTP/2 and
/// pooled idle connections alike), but a pool of its own, so that copies never take a
/// connection a real request could have reused.
fn connector() -> &'static Connector {
    static CONNECTOR: OnceLock<Connector> = OnceLock::new();
    CONNECTOR.get_or_init(|| Connector::new(Some(ConnectorOptions::new(IDLE_CONNECTIONS))))
}

/// Idle connections to mirror backends kept for the next copies, at most.
const IDLE_CONNECTIONS: usize = 128;

/// Headers that belong to one hop, or that the copy sets itself.
const NOT_COPIED: [&str; 11] = [
    "connection",
    "content-length",
    "cookie",
    "keep-alive",
    "proxy-connection",
    "te",
    "transfer-encoding",
    "upgrade",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-request-id",
];

/// The header of the copy of `req`: the client's header without hop-by-hop fields (those
/// above and those its Connection header names), with the gateway's X-Request-Id,
/// X-Forwarded-For and X-Forwarded-Proto, cookies as one field, and the body framed as the
/// client framed it (its Content-Length, or chunked over HTTP/1.1 when it gave none). To an
/// HTTP/2 peer the host goes in the `:authority`, and `TE: trailers` (which gRPC needs) is kept.
fn copy_header(
    req: &RequestHeader,
    with_body: bool,
    origin: &Origin<'_>,
    peer: &HttpPeer,
) -> pingora_core::Result<Box<RequestHeader>> {
    let h2 = peer.options.alpn.get_min_http_version() == 2;
    let path = req.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut head = RequestHeader::build(req.method.clone(), path.as_bytes(), None)?;
    let named_by_connection: Vec<String> = connection_options(&req.headers)
        .map(str::to_ascii_lowercase)
        .collect();
    let mut forwarded = String::new();
    let mut cookies = Vec::new();
    for (name, value) in req.headers.iter() {
        match name.as_str() {
            "x-forwarded-for" => {
                forwarded.push_str(value.to_str().unwrap_or_default());
                forwarded.push_str(", ");
            }
            // Cookies an HTTP/2 client sent as separate fields go as one, as to the real backend.
            "cookie" => {
                if !cookies.is_empty() {
                    cookies.extend_from_slice(b"; ");
                }
                cookies.extend_from_slice(value.as_bytes());
            }
            "te" if h2 && value.as_bytes().eq_ignore_ascii_case(b"trailers") => {
                head.append_header(http::header::TE, value.clone())?;
            }
            name if NOT_COPIED.contains(&name) => {}
            name if named_by_connection.iter().any(|n| n == name) => {}
            _ => {
                head.append_header(name.clone(), value.clone())?;
            }
        }
    }
    if !cookies.is_empty() {
        head.insert_header(http::header::COOKIE, cookies)?;
    }
    if let Some(client) = origin.client {
        head.insert_header("x-forwarded-for", format!("{forwarded}{client}"))?;
    }
    head.insert_header("x-forwarded-proto", origin.scheme)?;
    if !origin.request_id.is_empty() {
        head.insert_header("x-request-id", origin.request_id)?;
    }
    let length = req
        .headers
        .get(http::header::CONTENT_LENGTH)
        .filter(|_| with_body);
    match length {
        Some(length) => head.insert_header(http::header::CONTENT_LENGTH, length.clone())?,
        None if with_body && !h2 => {
            head.insert_header(http::header::TRANSFER_ENCODING, "chunked")?
        }
        // No body: over HTTP/1.1 a request without a length has none.
        None => {}
    }
    let host = head
        .headers
        .get(http::header::HOST)
        .map(|h| h.as_bytes().to_vec())
        .or_else(|| req.uri.authority().map(|a| a.as_str().as_bytes().to_vec()));
    if h2 {
        head.remove_header(&http::header::HOST);
        let authority = http::uri::Authority::try_from(host.unwrap_or_default().as_slice())
            .map_err(|e| {
                pingora_core::Error::explain(
                    pingora_core::ErrorType::InvalidHTTPHeader,
                    format!("the request's host is not an authority: {e}"),
                )
            })?;
        let uri = http::Uri::builder()
            .scheme(if peer.is_tls() { "https" } else { "http" })
            .authority(authority)
            .path_and_query(path)
            .build()
            .map_err(|e| {
                pingora_core::Error::explain(
                    pingora_core::ErrorType::InvalidHTTPHeader,
                    format!("no URI for the copy: {e}"),
                )
            })?;
        head.set_uri(uri);
    } else if let (None, Some(host)) = (head.headers.get(http::header::HOST), host) {
        head.insert_header(http::header::HOST, host)?;
    }
    Ok(Box::new(head))
}

/// Why a copy did not go through.
enum Failure {
    /// The real request left before its body ended: counted as dropped.
    Abandoned,
    /// The mirror could not be reached, or did not answer in time or in form.
    Mirror(String),
}

impl From<String> for Failure {
    fn from(err: String) -> Self {
        Failure::Mirror(err)
    }
}

/// Sends one copy and reads its answer to the end, then hands the connection back for the next
/// copy. On failure the connection is closed (HTTP/1.1) or the stream reset (HTTP/2), so that
/// the mirror never takes a cut body for a whole one. The whole answer, header and body, must
/// come within [`MIRROR_TIMEOUT`]: a mirror that streams its answer slowly would otherwise
/// hold a place of [`MAX_IN_FLIGHT`] for as long as it streams.
async fn send_copy(
    peer: &HttpPeer,
    head: Box<RequestHeader>,
    body: Option<mpsc::UnboundedReceiver<Chunk>>,
    queued: &AtomicUsize,
) -> Result<(), Failure> {
    let connector = connector();
    // Pingora's connect future is some 18 KiB: boxed, it does not sit in every copy's task.
    let connect = Box::pin(connector.get_http_session(peer));
    let (mut session, _) = within("connecting", connect).await?;
    session.set_read_timeout(Some(MIRROR_TIMEOUT));
    session.set_write_timeout(Some(MIRROR_TIMEOUT));
    let exchange = async {
        within("writing the header", session.write_request_header(head)).await?;
        if let Some(rx) = body {
            send_body(&mut session, rx, queued).await?;
        }
        within("ending the body", session.finish_request_body()).await?;
        let answer = async {
            // An HTTP/1.1 mirror may send informational answers (100 Continue) first.
            loop {
                session.read_response_header().await?;
                match session.response_header().map(|h| h.status.as_u16()) {
                    Some(100..=199) => continue,
                    _ => break,
                }
            }
            while session.read_response_body().await?.is_some() {}
            Ok::<_, Box<pingora_core::Error>>(())
        };
        within("reading the answer", answer).await?;
        Ok::<_, Failure>(())
    };
    match exchange.await {
        Ok(()) => {
            connector
                .release_http_session(session, peer, Some(MIRROR_IDLE))
                .await;
            Ok(())
        }
        Err(err) => {
            session.shutdown().await;
            Err(err)
        }
    }
}

/// How long a connection to a mirror backend stays open for the next copy.
const MIRROR_IDLE: Duration = Duration::from_secs(60);

/// One step of a copy, within [`MIRROR_TIMEOUT`]; `what` names the step that failed.
async fn within<T>(
    what: &'static str,
    step: impl std::future::Future<Output = pingora_core::Result<T>>,
) -> Result<T, String> {
    match tokio::time::timeout(MIRROR_TIMEOUT, step).await {
        Ok(Ok(done)) => Ok(done),
        Ok(Err(err)) => Err(format!("{what}: {err}")),
        Err(_) => Err(format!("{what}: timed out")),
    }
}

/// Writes the body chunks handed over by [`MirrorBody::send`]. Fails, leaving the body
/// unfinished, when the copy is abandoned.
async fn send_body(
    session: &mut HttpSession,
    mut rx: mpsc::UnboundedReceiver<Chunk>,
    queued: &AtomicUsize,
) -> Result<(), Failure> {
    let give_back = |len: usize| {
        queued.fetch_sub(len, Ordering::Relaxed);
        QUEUED_BYTES.fetch_sub(len, Ordering::Relaxed);
    };
    let result = loop {
        match rx.recv().await {
            Some(Chunk::Data(data)) => {
                give_back(data.len());
                if let Err(err) = within("writing", session.write_request_body(data, false)).await {
                    break Err(err.into());
                }
            }
            Some(Chunk::End) => break Ok(()),
            None => break Err(Failure::Abandoned),
        }
    };
    // Chunks still queued behind a failure are dropped with the receiver; give back their share
    // of the budget first.
    rx.close();
    while let Ok(Chunk::Data(data)) = rx.try_recv() {
        give_back(data.len());
    }
    result
}
