//! Access logs: one JSON line per request on stdout.
//!
//! The request path never writes to stdout itself: it formats the line and hands it to a bounded
//! queue drained by a dedicated thread. When stdout is slow (a blocked pipe, a full disk) the
//! queue fills and further lines are dropped and counted
//! (`portcullis_access_log_dropped_total`), so a logging problem never stalls traffic.

use std::io::Write;
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};

use prometheus::IntCounter;
use rand::Rng;
use serde::Serialize;

/// Lines waiting for the writer thread at most.
pub const QUEUE: usize = 16_384;

/// One request, as logged.
#[derive(Serialize)]
pub struct Entry<'a> {
    /// RFC 3339 time the request ended.
    pub time: String,
    /// Client address.
    pub client: Option<String>,
    /// Method.
    pub method: &'a str,
    /// Host the client asked for.
    pub host: &'a str,
    /// Path and query.
    pub path: &'a str,
    /// Status sent (0 when the connection died first).
    pub status: u16,
    /// Response body bytes sent.
    pub bytes_sent: usize,
    /// Request body bytes read.
    pub bytes_received: usize,
    /// Seconds from request start to the end of the response.
    pub duration: f64,
    /// The endpoint the request went to, if any.
    pub upstream: Option<String>,
    /// Seconds from choosing the endpoint to its response header, if any.
    pub upstream_duration: Option<f64>,
    /// `namespace/name` of the route, if one matched.
    pub route: Option<&'a str>,
    /// The rule index in that route.
    pub rule: Option<usize>,
    /// The request id sent upstream.
    pub request_id: &'a str,
}

/// A handle to the writer thread.
#[derive(Clone)]
pub struct AccessLog {
    queue: Option<SyncSender<String>>,
    /// Requests logged, in parts per million.
    sample_per_million: u32,
    dropped: IntCounter,
}

impl AccessLog {
    /// Starts the writer thread; `sample` is the share of requests logged (0.0 to 1.0), and a
    /// `sample` of 0 starts nothing.
    pub fn start(sample: f64, dropped: IntCounter) -> Self {
        let sample_per_million = (sample.clamp(0.0, 1.0) * 1e6) as u32;
        if sample_per_million == 0 {
            return AccessLog {
                queue: None,
                sample_per_million,
                dropped,
            };
        }
        let (tx, rx) = sync_channel::<String>(QUEUE);
        let spawned = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                let stdout = std::io::stdout();
                let mut out = std::io::BufWriter::new(stdout.lock());
                while let Ok(line) = rx.recv() {
                    let _ = out.write_all(line.as_bytes());
                    // Flush when the queue is empty, so lines appear promptly at low rates and
                    // in large writes at high rates.
                    while let Ok(line) = rx.try_recv() {
                        let _ = out.write_all(line.as_bytes());
                    }
                    let _ = out.flush();
                }
            });
        AccessLog {
            queue: spawned.ok().map(|_| tx),
            sample_per_million,
            dropped,
        }
    }

    /// Whether this request should be logged (decided before formatting anything).
    pub fn sampled(&self) -> bool {
        self.queue.is_some()
            && (self.sample_per_million >= 1_000_000
                || rand::rng().random_range(0..1_000_000) < self.sample_per_million)
    }

    /// Queues one line; drops it (and counts) when the writer is behind.
    pub fn write(&self, entry: &Entry<'_>) {
        let Some(queue) = &self.queue else { return };
        let Ok(mut line) = serde_json::to_string(entry) else {
            return;
        };
        line.push('\n');
        match queue.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => self.dropped.inc(),
        }
    }
}
