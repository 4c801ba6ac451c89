//! Prometheus metrics, named by Prometheus conventions: a `portcullis_` prefix, base units,
//! `_total` counters, histograms in seconds.
//!
//! Label values come only from configuration (Gateway, listener, route and Service names, rule
//! indexes) and from small fixed sets (method class, status class, outcome), never from the
//! request itself, so the number of series stays bounded by the configuration: by the
//! configuration as it is, as the series of objects it dropped are removed
//! ([`Metrics::retain_series`]) some seconds after each change.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use prometheus::core::Collector;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::routing::table::Rule;

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// What one finished request is counted under: the objects whose names label its series.
pub struct RequestSeries<'a> {
    /// `namespace/name` of the Gateway; `None` when no listener took the request.
    pub gateway: Option<&'a Arc<str>>,
    /// Listener name.
    pub listener: Option<&'a Arc<str>>,
    /// The rule that matched: its route's `namespace/name` and its index label the series.
    pub rule: Option<&'a Arc<Rule>>,
    /// `namespace/name:port` of the backend Service.
    pub backend: Option<&'a Arc<str>>,
    /// Request method.
    pub method: &'a str,
    /// Response status (0 when none was sent).
    pub status: u16,
}

/// The label values of request series and their metric handles, looked up once.
///
/// Finding a series in a Prometheus vector hashes every label value and takes the vector's lock,
/// about 1% of the instructions of a small proxied request, several times that once thousands of
/// routes make the vectors large. Here a series is found by the addresses of the objects that
/// name it (Gateway, listener, rule, backend) plus the method and status class. Each entry holds
/// those objects, so no address in a key can be reused for another object while the entry
/// lives; the cache is emptied when it reaches `SERIES_CACHE_CAPACITY`, which bounds what old
/// routing tables it keeps alive.
#[derive(Default)]
struct SeriesCache {
    requests: Mutex<HashMap<[usize; 5], RequestHandles, BuildHasherDefault<AddressHasher>>>,
    upstream: Mutex<HashMap<usize, UpstreamHandles, BuildHasherDefault<AddressHasher>>>,
}

/// Large enough for the series of ten thousand routes in use at once (one method and status
/// class each): below that, traffic spread over them empties the cache faster than it helps
/// (seen in profiles at 10,000 routes). An entry, with the rule it keeps alive, is a few hundred
/// bytes.
const SERIES_CACHE_CAPACITY: usize = 16_384;

struct RequestHandles {
    _names: SeriesNames,
    requests: IntCounter,
    duration: Histogram,
    request_bytes: Option<IntCounter>,
    response_bytes: Option<IntCounter>,
}

/// The Gateway, listener, rule and backend a request series is keyed by, held alive.
struct SeriesNames {
    _gateway: Option<Arc<str>>,
    _listener: Option<Arc<str>>,
    _rule: Option<Arc<Rule>>,
    _backend: Option<Arc<str>>,
}

struct UpstreamHandles {
    _backend: Arc<str>,
    duration: Histogram,
}

/// Hashes cache keys: addresses and small indexes, chosen by the configuration and never by a
/// request, so a fast multiplicative mix is enough.
#[derive(Default)]
struct AddressHasher(u64);

impl std::hash::Hasher for AddressHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

/// The address of what `value` points to, 0 for none.
fn address<T: ?Sized>(value: Option<&Arc<T>>) -> usize {
    value.map_or(0, |v| Arc::as_ptr(v) as *const u8 as usize)
}

/// A label value: the name, or empty for none.
fn name(value: Option<&Arc<str>>) -> &str {
    value.map_or("", |v| v)
}

/// A fixed label value for a method, and its index in the cache key.
fn method_label(method: &str) -> (&str, usize) {
    const KNOWN: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE",
    ];
    match KNOWN.iter().position(|m| *m == method) {
        Some(i) => (KNOWN[i], i),
        None => ("other", KNOWN.len()),
    }
}

/// The status class label, and its index in the cache key.
/// The name of a gRPC status code (`grpc-status`), as the gRPC documentation spells it.
fn grpc_code(code: u8) -> &'static str {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    // A code outside the list is read as UNKNOWN, as gRPC clients read it.
    NAMES.get(usize::from(code)).copied().unwrap_or("UNKNOWN")
}

fn status_class(status: u16) -> (&'static str, usize) {
    match status {
        100..=199 => ("1xx", 1),
        200..=299 => ("2xx", 2),
        300..=399 => ("3xx", 3),
        400..=499 => ("4xx", 4),
        500..=599 => ("5xx", 5),
        _ => ("none", 0),
    }
}

/// Every metric the process exports.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    /// gRPC calls by their status: their HTTP status is 200 whatever became of them.
    grpc_responses: IntCounterVec,
    request_duration: HistogramVec,
    upstream_duration: HistogramVec,
    request_bytes: IntCounterVec,
    response_bytes: IntCounterVec,
    upstream_connections: IntCounterVec,
    /// Upstream connections reused from the pool.
    pub upstream_connections_reused: IntCounter,
    /// Upstream connections newly made.
    pub upstream_connections_new: IntCounter,
    /// Upstream failures by backend and kind (`connect`, `timeout`, `response`).
    pub upstream_failures: IntCounterVec,
    /// Backend requests sent again, under a rule's `retry` or after a pooled connection failed,
    /// by backend.
    pub upstream_retries: IntCounterVec,
    /// Ready endpoints per backend Service port, as of the served table.
    pub endpoints_ready: IntGaugeVec,
    /// When the first of a TLS listener's certificates stops being valid (its `notAfter`, in
    /// seconds since the epoch), as of the served table: what an expiry alert is written on.
    pub certificate_expiry: IntGaugeVec,
    /// Client connections open now.
    pub connections_open: IntGauge,
    /// Client connections accepted.
    pub connections_accepted: IntCounter,
    /// Client request headers not complete within the request header timeout.
    pub request_header_timeouts: IntCounter,
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
    /// Listener sockets the configuration wants that could not be bound (port taken, address
    /// missing); they are tried again every few seconds.
    pub sockets_unbound: IntGauge,
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
    /// Mirror copies sent that failed: the mirror refused or broke the connection, failed TLS
    /// verification, or did not answer (whole) in time.
    pub mirror_failed: IntCounter,
    /// Client connections that broke while sending a request header (reset or closed midway).
    pub client_header_failures: IntCounter,
    series: SeriesCache,
}

/// The objects of the configuration that label series: what [`Metrics::retain_series`] keeps.
#[derive(Debug, Default)]
pub struct Configured {
    /// Gateways, `namespace/name`.
    pub gateways: std::collections::HashSet<String>,
    /// Listeners, by Gateway (`namespace/name`) and listener name.
    pub listeners: std::collections::HashSet<(String, String)>,
    /// Routes of every kind, `namespace/name`.
    pub routes: std::collections::HashSet<String>,
    /// Backends, as their label reads (`namespace/name:port`).
    pub backends: std::collections::HashSet<String>,
}

impl Configured {
    /// The Gateways, listeners and routes of a compile's report, and `backends`.
    pub fn new<'a>(
        report: &crate::routing::StatusReport,
        backends: impl IntoIterator<Item = &'a str>,
    ) -> Self {
        use crate::controller::Kind;
        let mut out = Configured {
            backends: backends.into_iter().map(str::to_string).collect(),
            ..Configured::default()
        };
        for object in &report.objects {
            let name = format!("{}/{}", object.namespace, object.name);
            match object.kind {
                Kind::Gateway => {
                    for l in object.status["listeners"].as_array().into_iter().flatten() {
                        if let Some(listener) = l["name"].as_str() {
                            out.listeners.insert((name.clone(), listener.to_string()));
                        }
                    }
                    out.gateways.insert(name);
                }
                Kind::HttpRoute | Kind::GrpcRoute | Kind::TlsRoute => {
                    out.routes.insert(name);
                }
                _ => {}
            }
        }
        out
    }

    /// Whether a series of these labels names only objects still configured (or none).
    fn holds(&self, labels: &HashMap<&str, &str>) -> bool {
        let label = |name: &str| labels.get(name).copied().filter(|v| !v.is_empty());
        let gateway_ok = label("gateway").is_none_or(|g| self.gateways.contains(g));
        let listener_ok = match (label("gateway"), label("listener")) {
            (Some(g), Some(l)) => self.listeners.contains(&(g.to_string(), l.to_string())),
            _ => true,
        };
        let route_ok = label("route").is_none_or(|r| self.routes.contains(r));
        let backend_ok = label("backend").is_none_or(|b| self.backends.contains(b));
        gateway_ok && listener_ok && route_ok && backend_ok
    }
}

/// The process metrics of the `prometheus` crate (CPU, memory, file descriptors, threads,
/// start time), with `process_cpu_seconds_total` to the microsecond: the crate's counts whole
/// seconds, so the rate of a gateway using a fifth of a CPU second a minute reads zero, then
/// one.
struct ProcessMetrics(prometheus::process_collector::ProcessCollector);

impl Collector for ProcessMetrics {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.0.desc()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        use nix::sys::resource::{getrusage, UsageWho};
        let mut families = self.0.collect();
        let Ok(usage) = getrusage(UsageWho::RUSAGE_SELF) else {
            return families;
        };
        let seconds = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
        let cpu = seconds(usage.user_time()) + seconds(usage.system_time());
        for family in &mut families {
            if family.name() != "process_cpu_seconds_total" {
                continue;
            }
            for metric in family.mut_metric() {
                let mut counter = metric.get_counter().clone();
                counter.set_value(cpu);
                metric.set_counter(counter);
            }
        }
        families
    }
}

/// The guarded value; a panic elsewhere while it was held leaves nothing half-written here.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
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
        let upstream_connections = counter(
            "portcullis_upstream_connections_total",
            "Upstream connections used, by whether they came from the pool.",
            &["reused"],
        );
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
            grpc_responses: counter(
                "portcullis_grpc_responses_total",
                "gRPC calls, by the status their client reads: the backend's grpc-status, the \
                 gateway's own when no backend could take the call, or one read from the HTTP \
                 status (503 UNAVAILABLE) or the call's end (CANCELLED, UNKNOWN); each is also \
                 in portcullis_requests_total, by its HTTP status.",
                &["gateway", "listener", "route", "rule", "backend", "grpc_code"],
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
            upstream_connections_reused: upstream_connections.with_label_values(&["true"]),
            upstream_connections_new: upstream_connections.with_label_values(&["false"]),
            upstream_connections,
            upstream_failures: counter(
                "portcullis_upstream_failures_total",
                "Requests whose upstream failed, by backend and kind: connect (not reached), timeout (silent), response (a bad or cut-off answer).",
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
            certificate_expiry: IntGaugeVec::new(
                Opts::new(
                    "portcullis_listener_certificate_expiry_timestamp_seconds",
                    "When the first of a TLS listener's certificates expires (notAfter), in \
                     seconds since the epoch.",
                ),
                &["gateway", "listener"],
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
            request_header_timeouts: IntCounter::new(
                "portcullis_request_header_timeouts_total",
                "Client request headers not complete within --request-header-timeout (answered 408).",
            )
            .expect("static metric definition"),
            tls_handshakes: counter(
                "portcullis_tls_handshakes_total",
                "Client TLS handshakes by result: ok, failed, timeout, closed (before the ClientHello was whole), passthrough, rejected, plaintext.",
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
            sockets_unbound: IntGauge::new(
                "portcullis_listener_sockets_unbound",
                "Listener sockets that could not be bound (port taken, address missing); retried every 2 s.",
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
            client_header_failures: IntCounter::new(
                "portcullis_client_header_failures_total",
                "Client connections that broke (reset, or closed) while sending a request header.",
            )
            .expect("static metric definition"),
            mirror_dropped: IntCounter::new(
                "portcullis_mirror_dropped_total",
                "Mirror copies dropped: too many in flight, a mirror that could not keep up with the body, or a request header that cannot be copied.",
            )
            .expect("static metric definition"),
            mirror_failed: IntCounter::new(
                "portcullis_mirror_failed_total",
                "Mirror copies that failed: refused or broken connections, failed TLS verification, no whole answer within 10 s.",
            )
            .expect("static metric definition"),
            series: SeriesCache::default(),
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
            Box::new(m.grpc_responses.clone()),
            Box::new(m.request_duration.clone()),
            Box::new(m.upstream_duration.clone()),
            Box::new(m.request_bytes.clone()),
            Box::new(m.response_bytes.clone()),
            Box::new(m.upstream_connections.clone()),
            Box::new(m.upstream_failures.clone()),
            Box::new(m.upstream_retries.clone()),
            Box::new(m.endpoints_ready.clone()),
            Box::new(m.certificate_expiry.clone()),
            Box::new(m.connections_open.clone()),
            Box::new(m.connections_accepted.clone()),
            Box::new(m.request_header_timeouts.clone()),
            Box::new(m.tls_handshakes.clone()),
            Box::new(m.config_generation.clone()),
            Box::new(m.compiles.clone()),
            Box::new(m.compile_duration.clone()),
            Box::new(m.objects.clone()),
            Box::new(m.config_problems.clone()),
            Box::new(m.sockets_unbound.clone()),
            Box::new(m.rules.clone()),
            Box::new(m.watch_restarts.clone()),
            Box::new(m.status_writes.clone()),
            Box::new(m.leader.clone()),
            Box::new(m.access_log_dropped.clone()),
            Box::new(m.mirror_dropped.clone()),
            Box::new(m.mirror_failed.clone()),
            Box::new(m.client_header_failures.clone()),
            Box::new(build),
            Box::new(ProcessMetrics(
                prometheus::process_collector::ProcessCollector::for_self(),
            )),
        ];
        for c in collectors {
            m.registry.register(c).expect("metric names are unique");
        }
        m
    }

    /// Drops the series whose Gateway, listener, route or backend the configuration no longer
    /// has, so that the scrape (and the registry's memory) follows the configuration as it is,
    /// not every route it ever held. A series dropped comes back from zero if its object does.
    pub fn retain_series(&self, configured: &Configured) {
        fn prune(
            collector: &dyn Collector,
            remove: &dyn Fn(&HashMap<&str, &str>),
            configured: &Configured,
        ) {
            for family in collector.collect() {
                for metric in family.get_metric() {
                    let labels: HashMap<&str, &str> = metric
                        .get_label()
                        .iter()
                        .map(|l| (l.name(), l.value()))
                        .collect();
                    if !configured.holds(&labels) {
                        remove(&labels);
                    }
                }
            }
        }
        let counter = |vec: &IntCounterVec| {
            let remove = |labels: &HashMap<&str, &str>| {
                let _ = vec.remove(labels);
            };
            prune(vec, &remove, configured);
        };
        let histogram = |vec: &HistogramVec| {
            let remove = |labels: &HashMap<&str, &str>| {
                let _ = vec.remove(labels);
            };
            prune(vec, &remove, configured);
        };
        counter(&self.requests);
        counter(&self.grpc_responses);
        counter(&self.request_bytes);
        counter(&self.response_bytes);
        counter(&self.upstream_failures);
        counter(&self.upstream_retries);
        histogram(&self.request_duration);
        histogram(&self.upstream_duration);
        // Handles of series just dropped would count into nothing: found again, they are made
        // anew in the registry.
        lock(&self.series.requests).clear();
        lock(&self.series.upstream).clear();
    }

    /// Counts one finished gRPC call by its status. (Not cached as the request series are:
    /// a call ends once, and gRPC traffic is the lesser part where both are served.)
    pub fn observe_grpc(&self, series: &RequestSeries<'_>, code: u8) {
        let (route, rule) = series.rule.map_or((String::new(), String::new()), |r| {
            (r.route.to_string(), r.index.to_string())
        });
        self.grpc_responses
            .with_label_values(&[
                name(series.gateway),
                name(series.listener),
                &route,
                &rule,
                name(series.backend),
                grpc_code(code),
            ])
            .inc();
    }

    /// Counts one finished request.
    pub fn observe_request(
        &self,
        series: &RequestSeries<'_>,
        elapsed: Duration,
        bytes_in: usize,
        bytes_out: usize,
    ) {
        let (method, method_index) = method_label(series.method);
        let (class, class_index) = status_class(series.status);
        let key = [
            address(series.gateway),
            address(series.listener),
            address(series.rule),
            address(series.backend),
            method_index << 8 | class_index,
        ];
        let mut cache = lock(&self.series.requests);
        if cache.len() >= SERIES_CACHE_CAPACITY && !cache.contains_key(&key) {
            cache.clear();
        }
        let handles = cache.entry(key).or_insert_with(|| {
            let gateway = name(series.gateway);
            let listener = name(series.listener);
            let (route, rule) = series.rule.map_or((String::new(), String::new()), |r| {
                (r.route.to_string(), r.index.to_string())
            });
            RequestHandles {
                requests: self.requests.with_label_values(&[
                    gateway,
                    listener,
                    &route,
                    &rule,
                    name(series.backend),
                    method,
                    class,
                ]),
                duration: self
                    .request_duration
                    .with_label_values(&[gateway, listener]),
                request_bytes: None,
                response_bytes: None,
                _names: SeriesNames {
                    _gateway: series.gateway.cloned(),
                    _listener: series.listener.cloned(),
                    _rule: series.rule.cloned(),
                    _backend: series.backend.cloned(),
                },
            }
        });
        handles.requests.inc();
        handles.duration.observe(elapsed.as_secs_f64());
        // The byte counters are made on first use, so that a Gateway shows none until it has
        // carried a body.
        let gateway = name(series.gateway);
        if bytes_in > 0 {
            handles
                .request_bytes
                .get_or_insert_with(|| self.request_bytes.with_label_values(&[gateway]))
                .inc_by(bytes_in as u64);
        }
        if bytes_out > 0 {
            handles
                .response_bytes
                .get_or_insert_with(|| self.response_bytes.with_label_values(&[gateway]))
                .inc_by(bytes_out as u64);
        }
    }

    /// Records how long a backend took to send its response header.
    pub fn observe_upstream(&self, backend: &Arc<str>, elapsed: Duration) {
        let mut cache = lock(&self.series.upstream);
        let key = address(Some(backend));
        if cache.len() >= SERIES_CACHE_CAPACITY && !cache.contains_key(&key) {
            cache.clear();
        }
        cache
            .entry(key)
            .or_insert_with(|| UpstreamHandles {
                duration: self.upstream_duration.with_label_values(&[&**backend]),
                _backend: backend.clone(),
            })
            .duration
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

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(route: &str, index: usize) -> Arc<Rule> {
        Arc::new(Rule {
            route: route.into(),
            index,
            name: None,
            filters: Vec::new(),
            backends: Vec::new(),
            total_weight: 0,
            request_timeout: None,
            backend_timeout: None,
            retry: None,
        })
    }

    /// The value of the one `portcullis_requests_total` series that has every label in `labels`.
    fn requests(m: &Metrics, labels: &[(&str, &str)]) -> Option<u64> {
        let text = m.render();
        let mut series = text
            .lines()
            .filter(|l| l.starts_with("portcullis_requests_total{"))
            .filter(|l| {
                labels
                    .iter()
                    .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
            });
        let value = series.next()?.rsplit(' ').next()?.parse().ok();
        assert!(
            series.next().is_none(),
            "more than one series has {labels:?}"
        );
        value
    }

    #[test]
    fn cached_series_count_under_the_names_of_their_objects() {
        let m = Metrics::new();
        let (gateway, listener): (Arc<str>, Arc<str>) = ("ns/gw".into(), "http".into());
        let backend: Arc<str> = "ns/svc:80".into();
        let (a, b) = (rule("ns/a", 0), rule("ns/b", 3));
        let count = |rule: &Arc<Rule>, method: &str, status: u16| {
            let series = RequestSeries {
                gateway: Some(&gateway),
                listener: Some(&listener),
                rule: Some(rule),
                backend: Some(&backend),
                method,
                status,
            };
            m.observe_request(&series, Duration::from_millis(1), 0, 10);
        };
        count(&a, "GET", 200);
        count(&a, "GET", 204);
        count(&b, "GET", 200);
        count(&a, "BREW", 503);
        m.observe_request(
            &RequestSeries {
                gateway: None,
                listener: None,
                rule: None,
                backend: None,
                method: "GET",
                status: 404,
            },
            Duration::from_millis(1),
            0,
            0,
        );
        let a_get = [
            ("gateway", "ns/gw"),
            ("listener", "http"),
            ("route", "ns/a"),
            ("rule", "0"),
            ("backend", "ns/svc:80"),
            ("method", "GET"),
            ("status_class", "2xx"),
        ];
        assert_eq!(requests(&m, &a_get), Some(2));
        assert_eq!(requests(&m, &[("route", "ns/b"), ("rule", "3")]), Some(1));
        assert_eq!(
            requests(&m, &[("method", "other"), ("status_class", "5xx")]),
            Some(1)
        );
        assert_eq!(
            requests(
                &m,
                &[("gateway", ""), ("route", ""), ("status_class", "4xx")]
            ),
            Some(1)
        );

        // Emptied once full, the cache finds the same series again.
        for i in 0..SERIES_CACHE_CAPACITY + 10 {
            let other = rule("ns/many", i);
            count(&other, "GET", 200);
        }
        count(&a, "GET", 200);
        assert_eq!(requests(&m, &a_get), Some(3));
        assert!(lock(&m.series.requests).len() < SERIES_CACHE_CAPACITY);

        // Bytes are counted per Gateway; none was read, so no request-body series exists.
        let text = m.render();
        assert!(text.contains(r#"portcullis_response_body_bytes_total{gateway="ns/gw"} "#));
        assert!(!text.contains("portcullis_request_body_bytes_total{"));
    }
}
