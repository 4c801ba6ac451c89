//! `RequestMirror`: a copy of the request goes to another backend and its answer is dropped.
//!
//! Copies are sent on their own HTTP/1.1 connection by a detached task, so a slow or dead mirror
//! never delays the real request. Known shortcoming: HTTP/1.1 is the only protocol copies go
//! in, so a mirror backend spoken to over HTTP/2 (h2c, gRPC) gets none; they are counted as
//! dropped. At most [`MAX_IN_FLIGHT`] copies are in flight; beyond that
//! copies are dropped and counted, so a mirror outage cannot exhaust memory or sockets.
//!
//! A request body reaches the copy chunk by chunk as the proxy reads it for the real backend
//! ([`MirrorBody::send`]): the chunks are shared, not copied, and at most
//! [`MAX_QUEUED_PER_COPY`] wait for one copy and [`MAX_QUEUED_BYTES`] for all of them. A copy
//! whose mirror cannot keep up, or that the real request leaves before its body ends (answered
//! early, or failed), is abandoned and counted: its connection is closed before the body ends,
//! so the mirror never takes a cut body for a whole one. Each step of a copy (connecting, each
//! write, reading the answer) gets [`MIRROR_TIMEOUT`]; waiting for the client's next chunk gets
//! no timeout of its own, since the real request bounds it.
//!
//! The copy carries what the real backend gets of the gateway's own: the request's
//! X-Request-Id, and X-Forwarded-For with the client's address.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use pingora_http::RequestHeader;
use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::metrics::Metrics;
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
/// Whether the dropping of copies for an HTTP/2 mirror backend has been said.
static WARNED_H2C: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

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

/// Sends a copy of `req` to the mirror's backend, if this request falls in its share. With
/// `with_body`, the copy waits for the body through the returned [`MirrorBody`].
pub fn spawn(
    mirror: &Mirror,
    req: &RequestHeader,
    with_body: bool,
    request_id: &str,
    client: Option<std::net::IpAddr>,
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
    if service.h2c {
        // Known shortcoming: copies are sent over HTTP/1.1 only. A backend spoken to over
        // HTTP/2 (h2c, gRPC) would take an HTTP/1.1 copy for garbage, so none is sent: it is
        // counted as dropped, and said once.
        metrics.mirror_dropped.inc();
        if !WARNED_H2C.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                backend = %service.name,
                "RequestMirror copies are sent over HTTP/1.1 only; this mirror backend speaks \
                 HTTP/2 (h2c or gRPC), so its copies are dropped and counted in \
                 portcullis_mirror_dropped_total"
            );
        }
        return None;
    }
    let endpoint = service.pick()?;
    if IN_FLIGHT.fetch_add(1, Ordering::Relaxed) >= MAX_IN_FLIGHT {
        IN_FLIGHT.fetch_sub(1, Ordering::Relaxed);
        metrics.mirror_dropped.inc();
        return None;
    }
    let mut head = format!(
        "{} {} HTTP/1.1\r\n",
        req.method,
        req.uri.path_and_query().map_or("/", |p| p.as_str())
    );
    let mut has_host = false;
    // The copy keeps the client's Content-Length; a body of unknown length is sent chunked.
    let length = req
        .headers
        .get("content-length")
        .filter(|_| with_body)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let chunked = with_body && length.is_none();
    let mut forwarded = String::new();
    let mut cookies = String::new();
    for (name, value) in req.headers.iter() {
        let name = name.as_str();
        if matches!(
            name,
            "connection"
                | "content-length"
                | "transfer-encoding"
                | "keep-alive"
                | "upgrade"
                | "x-request-id"
        ) {
            continue;
        }
        let Ok(v) = value.to_str() else {
            continue;
        };
        if name == "x-forwarded-for" {
            forwarded.push_str(v);
            forwarded.push_str(", ");
            continue;
        }
        // Cookies an HTTP/2 client sent as separate fields go as one, as to the real backend.
        if name == "cookie" {
            if !cookies.is_empty() {
                cookies.push_str("; ");
            }
            cookies.push_str(v);
            continue;
        }
        has_host |= name == "host";
        head.push_str(&format!("{name}: {v}\r\n"));
    }
    if !cookies.is_empty() {
        head.push_str(&format!("cookie: {cookies}\r\n"));
    }
    if let Some(client) = client {
        head.push_str(&format!("x-forwarded-for: {forwarded}{client}\r\n"));
    }
    if !request_id.is_empty() {
        head.push_str(&format!("x-request-id: {request_id}\r\n"));
    }
    if !has_host {
        if let Some(a) = req.uri.authority() {
            head.push_str(&format!("host: {a}\r\n"));
        }
    }
    match (&length, chunked) {
        (Some(length), _) => head.push_str(&format!("content-length: {length}\r\n")),
        (None, true) => head.push_str("transfer-encoding: chunked\r\n"),
        (None, false) => head.push_str("content-length: 0\r\n"),
    }
    head.push_str("connection: close\r\n\r\n");
    let queued = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = if with_body {
        let (tx, rx) = mpsc::unbounded_channel();
        (Some(tx), Some(rx))
    } else {
        (None, None)
    };
    let task_queued = queued.clone();
    tokio::spawn(async move {
        let send = async {
            let connect = tokio::net::TcpStream::connect(endpoint);
            let mut stream = within("connecting", connect).await?;
            write(&mut stream, head.as_bytes()).await?;
            if let Some(rx) = rx {
                send_body(&mut stream, rx, &task_queued, chunked).await?;
            }
            let drain = async {
                let mut sink = [0u8; 4096];
                while stream.read(&mut sink).await? > 0 {}
                Ok(())
            };
            within("reading the answer", drain).await
        };
        if let Err(err) = send.await {
            tracing::debug!(%endpoint, error = %err, "mirror request failed");
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

/// One step of a copy, within [`MIRROR_TIMEOUT`]; `what` names the step if it times out.
async fn within<T>(
    what: &'static str,
    step: impl std::future::Future<Output = std::io::Result<T>>,
) -> std::io::Result<T> {
    tokio::time::timeout(MIRROR_TIMEOUT, step)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, what))?
}

/// One write to the mirror, within [`MIRROR_TIMEOUT`].
async fn write(stream: &mut tokio::net::TcpStream, data: &[u8]) -> std::io::Result<()> {
    within("writing", stream.write_all(data)).await
}

/// Writes the body chunks handed over by [`MirrorBody::send`], in the copy's framing. Fails,
/// leaving the body unfinished, when the copy is abandoned.
async fn send_body(
    stream: &mut tokio::net::TcpStream,
    mut rx: mpsc::UnboundedReceiver<Chunk>,
    queued: &AtomicUsize,
    chunked: bool,
) -> std::io::Result<()> {
    let abandoned = || std::io::Error::other("copy abandoned before the end of the body");
    let give_back = |len: usize| {
        queued.fetch_sub(len, Ordering::Relaxed);
        QUEUED_BYTES.fetch_sub(len, Ordering::Relaxed);
    };
    let result = loop {
        match rx.recv().await {
            Some(Chunk::Data(data)) => {
                give_back(data.len());
                if let Err(err) = write_chunk(stream, &data, chunked).await {
                    break Err(err);
                }
            }
            Some(Chunk::End) if chunked => break write(stream, b"0\r\n\r\n").await,
            Some(Chunk::End) => break Ok(()),
            None => break Err(abandoned()),
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

async fn write_chunk(
    stream: &mut tokio::net::TcpStream,
    data: &[u8],
    chunked: bool,
) -> std::io::Result<()> {
    if chunked {
        write(stream, format!("{:x}\r\n", data.len()).as_bytes()).await?;
        write(stream, data).await?;
        write(stream, b"\r\n").await
    } else {
        write(stream, data).await
    }
}
