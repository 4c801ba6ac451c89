//! `RequestMirror`: a copy of the request goes to another backend and its answer is dropped.
//!
//! Copies are sent on their own HTTP/1.1 connection by a detached task, so a slow or dead mirror
//! never delays the real request. At most [`MAX_IN_FLIGHT`] copies are in flight; beyond that
//! copies are dropped and counted, so a mirror outage cannot exhaust memory or sockets.
//!
//! Known shortcoming: the copy carries the request line and headers but not the body (a request
//! with a body is mirrored with an empty one), since the body is streamed to the real backend and
//! buffering it for a copy would cost memory on every mirrored upload.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pingora_http::RequestHeader;
use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::metrics::Metrics;
use crate::routing::table::{Backend, Mirror};

/// Copies in flight at most.
pub const MAX_IN_FLIGHT: usize = 1024;
const MIRROR_TIMEOUT: Duration = Duration::from_secs(10);

static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// Sends a copy of `req` to the mirror's backend, if this request falls in its share.
pub fn spawn(mirror: &Mirror, req: &RequestHeader, metrics: &Arc<Metrics>) {
    if mirror.per_million < 1_000_000
        && rand::rng().random_range(0..1_000_000) >= mirror.per_million
    {
        return;
    }
    let Backend::Service(service) = mirror.backend.as_ref() else {
        return;
    };
    let Some(endpoint) = service.pick() else {
        return;
    };
    if IN_FLIGHT.fetch_add(1, Ordering::Relaxed) >= MAX_IN_FLIGHT {
        IN_FLIGHT.fetch_sub(1, Ordering::Relaxed);
        metrics.mirror_dropped.inc();
        return;
    }
    let mut head = format!(
        "{} {} HTTP/1.1\r\n",
        req.method,
        req.uri.path_and_query().map_or("/", |p| p.as_str())
    );
    let mut has_host = false;
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
    head.push_str("content-length: 0\r\nconnection: close\r\n\r\n");
    tokio::spawn(async move {
        let send = async {
            let mut stream = tokio::net::TcpStream::connect(endpoint).await?;
            stream.write_all(head.as_bytes()).await?;
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
}
