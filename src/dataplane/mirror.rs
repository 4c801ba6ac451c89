//! `RequestMirror`: a copy of the request goes to another backend and its answer is dropped.
//!
//! Copies are sent on their own HTTP/1.1 connection by a detached task, so a slow or dead mirror
//! never delays the real request. At most [`MAX_IN_FLIGHT`] copies are in flight; beyond that
//! copies are dropped and counted, so a mirror outage cannot exhaust memory or sockets.
//!
//! A request body reaches the copy chunk by chunk as the proxy reads it for the real backend
//! ([`MirrorBody::send`]): the chunks are shared, not copied, and at most [`MAX_QUEUED_BYTES`]
//! wait for all mirrors together. A copy whose mirror cannot keep up is abandoned and counted:
//! its connection is closed before the body ends, so the mirror never takes a cut body for a
//! whole one.

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
const MIRROR_TIMEOUT: Duration = Duration::from_secs(10);

/// Body bytes queued for all mirrors together at most.
pub const MAX_QUEUED_BYTES: usize = 64 << 20;
/// Body chunks queued for one mirror at most.
const QUEUED_CHUNKS: usize = 16;

static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);
static QUEUED_BYTES: AtomicUsize = AtomicUsize::new(0);

/// What the mirror task is handed, in order: body chunks, then the end of the body. A sender
/// dropped before `End` abandons the copy.
enum Chunk {
    Data(Bytes),
    End,
}

/// The way a request's body reaches one copy of it.
pub struct MirrorBody {
    tx: mpsc::Sender<Chunk>,
    metrics: Arc<Metrics>,
}

impl MirrorBody {
    /// Hands the copy a chunk of the body (and its end, on the last one). `false` when the copy
    /// is finished or abandoned, and this handle is no longer needed.
    pub fn send(&self, data: Option<&Bytes>, end: bool) -> bool {
        if let Some(data) = data.filter(|d| !d.is_empty()) {
            let len = data.len();
            if QUEUED_BYTES.fetch_add(len, Ordering::Relaxed) + len > MAX_QUEUED_BYTES {
                QUEUED_BYTES.fetch_sub(len, Ordering::Relaxed);
                self.metrics.mirror_dropped.inc();
                return false;
            }
            if self.tx.try_send(Chunk::Data(data.clone())).is_err() {
                QUEUED_BYTES.fetch_sub(len, Ordering::Relaxed);
                self.metrics.mirror_dropped.inc();
                return false;
            }
        }
        if end {
            // One more slot than data chunks is never guaranteed; a full queue here means the
            // mirror is behind, and the copy is abandoned like any other that cannot keep up.
            if self.tx.try_send(Chunk::End).is_err() {
                self.metrics.mirror_dropped.inc();
            }
            return false;
        }
        true
    }
}

/// Sends a copy of `req` to the mirror's backend, if this request falls in its share. With
/// `with_body`, the copy waits for the body through the returned [`MirrorBody`].
pub fn spawn(
    mirror: &Mirror,
    req: &RequestHeader,
    with_body: bool,
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
    for (name, value) in req.headers.iter() {
        let name = name.as_str();
        if matches!(
            name,
            "connection" | "content-length" | "transfer-encoding" | "keep-alive" | "upgrade"
        ) {
            continue;
        }
        has_host |= name == "host";
        if let Ok(v) = value.to_str() {
            head.push_str(&format!("{name}: {v}\r\n"));
        }
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
    let (tx, rx) = if with_body {
        let (tx, rx) = mpsc::channel(QUEUED_CHUNKS);
        (Some(tx), Some(rx))
    } else {
        (None, None)
    };
    tokio::spawn(async move {
        let send = async {
            let mut stream = tokio::net::TcpStream::connect(endpoint).await?;
            stream.write_all(head.as_bytes()).await?;
            if let Some(rx) = rx {
                send_body(&mut stream, rx, chunked).await?;
            }
            let mut sink = [0u8; 4096];
            while stream.read(&mut sink).await? > 0 {}
            Ok::<_, std::io::Error>(())
        };
        if let Err(err) = tokio::time::timeout(MIRROR_TIMEOUT, send)
            .await
            .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
        {
            tracing::debug!(%endpoint, error = %err, "mirror request failed");
        }
        IN_FLIGHT.fetch_sub(1, Ordering::Relaxed);
    });
    tx.map(|tx| MirrorBody {
        tx,
        metrics: metrics.clone(),
    })
}

/// Writes the body chunks handed over by [`MirrorBody::send`], in the copy's framing. Fails,
/// leaving the body unfinished, when the copy is abandoned.
async fn send_body(
    stream: &mut tokio::net::TcpStream,
    mut rx: mpsc::Receiver<Chunk>,
    chunked: bool,
) -> std::io::Result<()> {
    let abandoned = || std::io::Error::other("copy abandoned before the end of the body");
    let result = loop {
        match rx.recv().await {
            Some(Chunk::Data(data)) => {
                QUEUED_BYTES.fetch_sub(data.len(), Ordering::Relaxed);
                if let Err(err) = write_chunk(stream, &data, chunked).await {
                    break Err(err);
                }
            }
            Some(Chunk::End) if chunked => break stream.write_all(b"0\r\n\r\n").await,
            Some(Chunk::End) => break Ok(()),
            None => break Err(abandoned()),
        }
    };
    // Chunks still queued behind a failure are dropped with the receiver; give back their share
    // of the budget first.
    rx.close();
    while let Ok(Chunk::Data(data)) = rx.try_recv() {
        QUEUED_BYTES.fetch_sub(data.len(), Ordering::Relaxed);
    }
    result
}

async fn write_chunk(
    stream: &mut tokio::net::TcpStream,
    data: &[u8],
    chunked: bool,
) -> std::io::Result<()> {
    if chunked {
        let size = format!("{:x}\r\n", data.len());
        stream.write_all(size.as_bytes()).await?;
        stream.write_all(data).await?;
        stream.write_all(b"\r\n").await
    } else {
        stream.write_all(data).await
    }
}
