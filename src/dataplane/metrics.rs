//! Prometheus metrics, named by Prometheus conventions: a `portcullis_` prefix, base units,
//! `_total` counters, histograms in seconds.
//!
//! Label values come only from configuration (Gateway, listener, route and Service names, rule
//! indexes) and from small fixed sets (method class, status class, outcome), never from the
//! request itself, so the number of series stays bounded by the configuration.

use std::time::Duration;

use prometheus::core::Collector;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// What one finished request is counted under.
pub struct RequestLabels<'a> {
    /// `namespace/name` of the Gateway, empty when no listener took the request.
    pub gateway: &'a str,
    /// Listener name.
    pub listener: &'a str,
    /// `namespace/name` of the route.
    pub route: &'a str,
    /// Rule index, as text.
    pub rule: &'a str,
    /// `namespace/name:port` of the backend Service.
    pub backend: &'a str,
    /// Request method.
    pub method: &'a str,
    /// Response status (0 when none was sent).
    pub status: u16,
}

/// Every metric the process exports.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    request_duration: HistogramVec,
    upstream_duration: HistogramVec,
    request_bytes: IntCounterVec,
    response_bytes: IntCounterVec,
    /// Upstream connections used, by whether they were reused from the pool.
    pub upstream_connections: IntCounterVec,
    /// Upstream failures by backend and kind (`connect`, `timeout`, `other`).
    pub upstream_failures: IntCounterVec,
    /// Backend requests sent again, under a rule's `retry` or after a pooled connection failed,
    /// by backend.
    pub upstream_retries: IntCounterVec,
    /// Ready endpoints per backend Service port, as of the served table.
    pub endpoints_ready: IntGaugeVec,
    /// Client connections open now.
    pub connections_open: IntGauge,
    /// Client connections accepted.
    pub connections_accepted: IntCounter,
    /// TLS handshakes by result (`ok`, `failed`, `timeout`, `plaintext`).
    pub tls_handshakes: IntCounterVec,
    /// Routing table generation being served.
    pub config_generation: IntGauge,
    /// Compiles run.
    pub compiles: IntCounter,
    /// Compile time.
    pub compile_duration: Histogram,
    /// Objects in the store by kind.
    pub objects: IntGaugeVec,
    /// Objects not accepted plus inputs that do not parse.
    pub config_problems: IntGauge,
    /// Route rules in the served table.
    pub rules: IntGauge,
    /// Watch streams restarted (Kubernetes mode).
    pub watch_restarts: IntCounterVec,
    /// Status writes by result (`ok`, `failed`).
    pub status_writes: IntCounterVec,
    /// 1 while this process holds the leader Lease (or needs none).
    pub leader: IntGauge,
    /// Access log lines dropped because stdout could not keep up.
    pub access_log_dropped: IntCounter,
    /// Mirror copies dropped: too many in flight, or a mirror that fell behind the body.
    pub mirror_dropped: IntCounter,
}

fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("static metric definition")
}

fn histogram(name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    HistogramVec::new(
        HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
        labels,
    )
    .expect("static metric definition")
}

impl Metrics {
    /// Registers every metric in a fresh registry.
    pub fn new() -> Self {
        let registry = Registry::new();
        let m = Metrics {
            requests: counter(
                "portcullis_requests_total",
                "Requests handled.",
                &[
                    "gateway",
                    "listener",
                    "route",
                    "rule",
                    "backend",
                    "method",
                    "status_class",
                ],
            ),
            request_duration: histogram(
                "portcullis_request_duration_seconds",
                "Time from reading the request header to the end of the response.",
                &["gateway", "listener"],
            ),
            upstream_duration: histogram(
                "portcullis_upstream_duration_seconds",
                "Time from choosing an endpoint to its response header.",
                &["backend"],
            ),
            request_bytes: counter(
                "portcullis_request_body_bytes_total",
                "Request body bytes read from clients.",
                &["gateway"],
            ),
            response_bytes: counter(
                "portcullis_response_body_bytes_total",
                "Response body bytes sent to clients.",
                &["gateway"],
            ),
            upstream_connections: counter(
                "portcullis_upstream_connections_total",
                "Upstream connections used, by whether they came from the pool.",
                &["reused"],
            ),
            upstream_failures: counter(
                "portcullis_upstream_failures_total",
                "Requests whose upstream failed, by backend and kind.",
                &["backend", "kind"],
            ),
            upstream_retries: counter(
                "portcullis_upstream_retries_total",
                "Backend requests sent again (a rule's retry, or a pooled connection that failed), by backend.",
                &["backend"],
            ),
            endpoints_ready: IntGaugeVec::new(
                Opts::new(
                    "portcullis_backend_endpoints_ready",
                    "Ready endpoints per backend Service port.",
                ),
                &["backend"],
            )
            .expect("static metric definition"),
            connections_open: IntGauge::new(
                "portcullis_downstream_connections_open",
                "Client connections open.",
            )
            .expect("static metric definition"),
            connections_accepted: IntCounter::new(
                "portcullis_downstream_connections_accepted_total",
                "Client connections accepted.",
            )
            .expect("static metric definition"),
            tls_handshakes: counter(
                "portcullis_tls_handshakes_total",
                "Client TLS handshakes by result.",
                &["result"],
            ),
            config_generation: IntGauge::new(
                "portcullis_config_generation",
                "Routing table generation served.",
            )
            .expect("static metric definition"),
            compiles: IntCounter::new("portcullis_compiles_total", "Routing table compiles.")
                .expect("static metric definition"),
            compile_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "portcullis_compile_duration_seconds",
                    "Time to compile the routing table.",
                )
                .buckets(vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0]),
            )
            .expect("static metric definition"),
            objects: IntGaugeVec::new(
                Opts::new("portcullis_objects", "Objects in the store by kind."),
                &["kind"],
            )
            .expect("static metric definition"),
            config_problems: IntGauge::new(
                "portcullis_config_problems",
                "Objects not accepted plus inputs that do not parse.",
            )
            .expect("static metric definition"),
            rules: IntGauge::new("portcullis_route_rules", "Route rules in the served table.")
                .expect("static metric definition"),
            watch_restarts: counter(
                "portcullis_watch_restarts_total",
                "Kubernetes watch streams restarted, by kind.",
                &["kind"],
            ),
            status_writes: counter(
                "portcullis_status_writes_total",
                "Status subresource writes, by result.",
                &["result"],
            ),
            leader: IntGauge::new("portcullis_leader", "1 while this process writes status.")
                .expect("static metric definition"),
            access_log_dropped: IntCounter::new(
                "portcullis_access_log_dropped_total",
                "Access log lines dropped because stdout could not keep up.",
            )
            .expect("static metric definition"),
            mirror_dropped: IntCounter::new(
                "portcullis_mirror_dropped_total",
                "Mirror copies dropped: too many in flight, or a mirror that could not keep up with the body.",
            )
            .expect("static metric definition"),
            registry,
        };
        let build = IntGaugeVec::new(
            Opts::new(
                "portcullis_build_info",
                "Build information; the value is always 1.",
            ),
            &["version", "commit"],
        )
        .expect("static metric definition");
        build
            .with_label_values(&[
                env!("CARGO_PKG_VERSION"),
                option_env!("PORTCULLIS_COMMIT").unwrap_or("unknown"),
            ])
            .set(1);
        let collectors: Vec<Box<dyn Collector>> = vec![
            Box::new(m.requests.clone()),
            Box::new(m.request_duration.clone()),
            Box::new(m.upstream_duration.clone()),
            Box::new(m.request_bytes.clone()),
            Box::new(m.response_bytes.clone()),
            Box::new(m.upstream_connections.clone()),
            Box::new(m.upstream_failures.clone()),
            Box::new(m.upstream_retries.clone()),
            Box::new(m.endpoints_ready.clone()),
            Box::new(m.connections_open.clone()),
            Box::new(m.connections_accepted.clone()),
            Box::new(m.tls_handshakes.clone()),
            Box::new(m.config_generation.clone()),
            Box::new(m.compiles.clone()),
            Box::new(m.compile_duration.clone()),
            Box::new(m.objects.clone()),
            Box::new(m.config_problems.clone()),
            Box::new(m.rules.clone()),
            Box::new(m.watch_restarts.clone()),
            Box::new(m.status_writes.clone()),
            Box::new(m.leader.clone()),
            Box::new(m.access_log_dropped.clone()),
            Box::new(m.mirror_dropped.clone()),
            Box::new(build),
            Box::new(prometheus::process_collector::ProcessCollector::for_self()),
        ];
        for c in collectors {
            m.registry.register(c).expect("metric names are unique");
        }
        m
    }

    /// Counts one finished request.
    pub fn observe_request(
        &self,
        l: &RequestLabels<'_>,
        elapsed: Duration,
        bytes_in: usize,
        bytes_out: usize,
    ) {
        let class = match l.status {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            500..=599 => "5xx",
            _ => "none",
        };
        let method = match l.method {
            "GET" | "HEAD" | "POST" | "PUT" | "DELETE" | "PATCH" | "OPTIONS" | "CONNECT"
            | "TRACE" => l.method,
            _ => "other",
        };
        self.requests
            .with_label_values(&[
                l.gateway, l.listener, l.route, l.rule, l.backend, method, class,
            ])
            .inc();
        self.request_duration
            .with_label_values(&[l.gateway, l.listener])
            .observe(elapsed.as_secs_f64());
        if bytes_in > 0 {
            self.request_bytes
                .with_label_values(&[l.gateway])
                .inc_by(bytes_in as u64);
        }
        if bytes_out > 0 {
            self.response_bytes
                .with_label_values(&[l.gateway])
                .inc_by(bytes_out as u64);
        }
    }

    /// Records how long a backend took to send its response header.
    pub fn observe_upstream(&self, backend: &str, elapsed: Duration) {
        self.upstream_duration
            .with_label_values(&[backend])
            .observe(elapsed.as_secs_f64());
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for the text format.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// The process's metrics. One registry per process: the Kubernetes controller (watches, status
/// writer, leader election) counts into the same one the data plane serves on `/metrics`.
pub fn global() -> &'static std::sync::Arc<Metrics> {
    static METRICS: std::sync::OnceLock<std::sync::Arc<Metrics>> = std::sync::OnceLock::new();
    METRICS.get_or_init(|| std::sync::Arc::new(Metrics::new()))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
