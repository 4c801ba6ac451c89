//! Prometheus metrics. Label values come only from configuration (Gateway and route names) and
//! from status classes, never from the request itself, so the number of series stays bounded.

use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

/// Every metric the process exports.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    /// Configuration generation now served.
    pub config_generation: IntGauge,
    /// Compiles run.
    pub compiles: IntCounter,
    /// How long compiles take.
    pub compile_duration: Histogram,
    /// Objects that are not accepted, plus inputs that did not parse.
    pub config_problems: IntGauge,
    /// Rules in the served table.
    pub rules: IntGauge,
    /// Downstream connections open now.
    pub connections_open: IntGauge,
    /// Downstream connections accepted.
    pub connections_accepted: IntCounter,
    /// Mirror copies dropped because too many were in flight.
    pub mirror_dropped: IntCounter,
}

impl Metrics {
    /// Registers every metric in a fresh registry.
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "portcullis_requests_total",
                "Requests handled, by Gateway, route and status class.",
            ),
            &["gateway", "route", "status_class"],
        )
        .expect("static metric definition");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "portcullis_request_duration_seconds",
                "Time from request start to the end of logging, by Gateway.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ]),
            &["gateway"],
        )
        .expect("static metric definition");
        let config_generation = IntGauge::new(
            "portcullis_config_generation",
            "Routing table generation being served.",
        )
        .expect("static metric definition");
        let compiles = IntCounter::new("portcullis_compiles_total", "Routing table compiles.")
            .expect("static metric definition");
        let compile_duration = Histogram::with_opts(
            HistogramOpts::new(
                "portcullis_compile_duration_seconds",
                "Time to compile the routing table.",
            )
            .buckets(vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0]),
        )
        .expect("static metric definition");
        let config_problems = IntGauge::new(
            "portcullis_config_problems",
            "Objects not accepted plus inputs that do not parse.",
        )
        .expect("static metric definition");
        let rules = IntGauge::new("portcullis_route_rules", "Route rules in the served table.")
            .expect("static metric definition");
        let connections_open = IntGauge::new(
            "portcullis_downstream_connections_open",
            "Client connections open.",
        )
        .expect("static metric definition");
        let connections_accepted = IntCounter::new(
            "portcullis_downstream_connections_accepted_total",
            "Client connections accepted.",
        )
        .expect("static metric definition");
        let mirror_dropped = IntCounter::new(
            "portcullis_mirror_dropped_total",
            "Mirror copies dropped because too many were in flight.",
        )
        .expect("static metric definition");
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(duration.clone()),
            Box::new(config_generation.clone()),
            Box::new(compiles.clone()),
            Box::new(compile_duration.clone()),
            Box::new(config_problems.clone()),
            Box::new(rules.clone()),
            Box::new(connections_open.clone()),
            Box::new(connections_accepted.clone()),
            Box::new(mirror_dropped.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        Metrics {
            registry,
            requests,
            duration,
            config_generation,
            compiles,
            compile_duration,
            config_problems,
            rules,
            connections_open,
            connections_accepted,
            mirror_dropped,
        }
    }

    /// Counts one finished request.
    pub fn observe_request(&self, gateway: &str, route: &str, status: u16, elapsed: Duration) {
        let class = match status {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            500..=599 => "5xx",
            _ => "none",
        };
        self.requests
            .with_label_values(&[gateway, route, class])
            .inc();
        self.duration
            .with_label_values(&[gateway])
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

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
