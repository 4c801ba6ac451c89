//! Access logs: one JSON line per request on stdout.
//!
//! The request path never writes to stdout itself and never wakes another thread: it appends
//! its line to a shared buffer under a short lock. A writer thread swaps the buffer out every
//! [`FLUSH_INTERVAL`] and writes it in one go. Waking a writer per request measured at about a
//! third of the proxy's throughput on a two-core machine; batching removes that. When stdout is
//! slow (a blocked pipe, a full disk) the buffer reaches [`MAX_BUFFERED`] and further lines are
//! dropped and counted (`portcullis_access_log_dropped_total`), so logging never stalls traffic.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::IntCounter;
use rand::Rng;
use serde::Serialize;

/// How often buffered lines are written out.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(100);
/// Bytes buffered at most while the writer is behind.
pub const MAX_BUFFERED: usize = 8 << 20;

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
    /// A gRPC call's status (`grpc-status`, 14 for UNAVAILABLE), the backend's or the
    /// gateway's own; absent for other requests and for calls that ended without one. A gRPC
    /// answer's HTTP status is 200 whatever became of the call.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<u8>,
}

/// A handle to the shared buffer; the writer thread drains it.
#[derive(Clone)]
pub struct AccessLog {
    buffer: Option<Arc<Mutex<Vec<u8>>>>,
    /// Held while a batch is taken from the buffer and written, so that batches reach stdout in
    /// the order they were taken, whoever writes them.
    writing: Arc<Mutex<()>>,
    /// Requests logged, in parts per million.
    sample_per_million: u32,
    dropped: IntCounter,
}

impl AccessLog {
    /// Starts the writer thread; `sample` is the share of requests logged (0.0 to 1.0), and a
    /// `sample` of 0 starts nothing.
    pub fn start(sample: f64, dropped: IntCounter) -> Self {
        let sample_per_million = (sample.clamp(0.0, 1.0) * 1e6) as u32;
        let off = AccessLog {
            buffer: None,
            writing: Arc::default(),
            sample_per_million,
            dropped: dropped.clone(),
        };
        if sample_per_million == 0 {
            return off;
        }
        let log = AccessLog {
            buffer: Some(Arc::new(Mutex::new(Vec::with_capacity(64 << 10)))),
            writing: Arc::default(),
            sample_per_million,
            dropped,
        };
        let writer = log.clone();
        let spawned = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                let mut batch = Vec::with_capacity(64 << 10);
                loop {
                    std::thread::sleep(FLUSH_INTERVAL);
                    writer.write_out(&mut batch);
                }
            });
        match spawned {
            Ok(_) => log,
            Err(err) => {
                tracing::warn!(error = %err, "cannot start the access log writer; access logs are off");
                off
            }
        }
    }

    /// Writes out every line buffered so far, waiting at most `within`: at exit, so that the
    /// requests served while draining are not lost with the writer thread's last batch. A
    /// stdout that takes nothing (a pipe no one reads) must not hold the exit, so the write
    /// runs on a thread of its own, left behind when it does not finish in time; the lines it
    /// could not write are counted as dropped.
    pub fn flush(&self, within: Duration) {
        let Some(buffer) = &self.buffer else { return };
        let (done, finished) = std::sync::mpsc::channel();
        let log = self.clone();
        let spawned = std::thread::Builder::new()
            .name("access-log-flush".into())
            .spawn(move || {
                log.write_out(&mut Vec::new());
                let _ = done.send(());
            });
        if spawned.is_ok() && finished.recv_timeout(within).is_ok() {
            return;
        }
        let pending = buffer.lock().unwrap_or_else(|p| p.into_inner());
        let lines = pending.iter().filter(|&&b| b == b'\n').count();
        self.dropped.inc_by(lines as u64);
        tracing::warn!(
            lines,
            "stdout took no access log lines in time; the last lines are dropped and counted in \
             portcullis_access_log_dropped_total"
        );
    }

    /// Takes the buffered lines (swapping `batch`, empty, in for them) and writes them out.
    fn write_out(&self, batch: &mut Vec<u8>) {
        let Some(buffer) = &self.buffer else { return };
        let _writing = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        {
            let mut pending = buffer.lock().unwrap_or_else(|p| p.into_inner());
            std::mem::swap(&mut *pending, batch);
        }
        if batch.is_empty() {
            return;
        }
        // Stdout closed or broken (a pipe whose reader went away): the lines are lost, so they
        // are counted as dropped, and said once on stderr.
        let mut out = std::io::stdout().lock();
        if let Err(err) = out.write_all(batch).and_then(|()| out.flush()) {
            let lines = batch.iter().filter(|&&b| b == b'\n').count();
            self.dropped.inc_by(lines as u64);
            static WARNED: std::sync::Once = std::sync::Once::new();
            WARNED.call_once(|| {
                tracing::warn!(
                    error = %err,
                    "cannot write the access log to stdout; its lines are dropped and counted \
                     in portcullis_access_log_dropped_total"
                );
            });
        }
        batch.clear();
    }

    /// Whether this request should be logged (decided before formatting anything).
    pub fn sampled(&self) -> bool {
        self.buffer.is_some()
            && (self.sample_per_million >= 1_000_000
                || rand::rng().random_range(0..1_000_000) < self.sample_per_million)
    }

    /// Appends one line; drops it (and counts) when the writer is behind.
    pub fn write(&self, entry: &Entry<'_>) {
        let Some(buffer) = &self.buffer else { return };
        let Ok(mut line) = serde_json::to_vec(entry) else {
            return;
        };
        line.push(b'\n');
        let mut pending = buffer.lock().unwrap_or_else(|p| p.into_inner());
        if pending.len() + line.len() > MAX_BUFFERED {
            drop(pending);
            self.dropped.inc();
            return;
        }
        pending.extend_from_slice(&line);
    }
}
