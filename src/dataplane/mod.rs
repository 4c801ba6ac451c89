//! The data plane: Pingora serving traffic by the compiled routing table.
//!
//! [`run`] wires the pieces together: it subscribes to the [`Store`], compiles each new
//! snapshot (debounced, so that a burst of changes costs one compile), swaps the table into the
//! one `ArcSwap` the [`proxy`] reads, opens and closes listener sockets to match
//! ([`listeners`]), and publishes the status report on the [`admin`] endpoint. A table is swapped
//! in whole: a request sees either the old configuration or the new one, never a mix.

pub mod access_log;
pub mod admin;
pub mod coalesce;
pub mod header_deadline;
pub mod listeners;
pub mod metrics;
pub mod mirror;
pub mod passthrough;
pub mod proxy;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use pingora_core::server::configuration::ServerConf;

use crate::controller::Store;
use crate::routing::{compile_with, CompileCache, CompileOptions, RoutingTable, StatusReport};

/// How long the compile loop waits for more changes after the first one, so that a burst of
/// writes (a `kubectl apply` of many objects, a directory sync) compiles once.
pub const DEBOUNCE: Duration = Duration::from_millis(30);

/// How long open connections keep being served (with `Connection: close`) after SIGTERM before
/// idle keep-alive connections are closed.
pub const DRAIN_GRACE: Duration = Duration::from_secs(1);

/// State shared between the compile loop, the proxy and the admin endpoint.
pub struct Shared {
    /// The table every request reads.
    pub table: Arc<ArcSwap<RoutingTable>>,
    /// The latest status report.
    pub report: ArcSwap<StatusReport>,
    /// True once the first table is live with every listener socket it wants bound. It stays
    /// true afterwards: readiness gates a process coming up (a rollout waits for it), and a
    /// socket that a later change cannot bind shows on its listener, its Gateway and
    /// `portcullis_listener_sockets_unbound` rather than taking every other listener out of
    /// service.
    pub ready: AtomicBool,
    /// What `/readyz` says while not ready.
    pub waiting_for: ArcSwap<String>,
    /// Metrics.
    pub metrics: Arc<metrics::Metrics>,
}

/// How to run the data plane.
pub struct RunOptions {
    /// Compiler settings (controller name, address pool, port mapping).
    pub compile: CompileOptions,
    /// Where the admin endpoint listens.
    pub admin_addr: SocketAddr,
    /// How long in-flight requests may take to finish after SIGTERM.
    pub drain_timeout: Duration,
    /// How long a client may take to send a whole HTTP/1 request header (zero: no limit).
    pub request_header_timeout: Duration,
    /// Share of requests written to the access log (0 turns it off).
    pub access_log_sample: f64,
    /// Count each request in the labelled request metrics.
    pub request_metrics: bool,
    /// How many idle backend connections are kept for reuse, over all backends.
    pub upstream_idle_connections: usize,
    /// Where each new status report is also sent, for a provider that writes status back.
    pub status_reports: Option<tokio::sync::watch::Sender<Arc<StatusReport>>>,
    /// What must finish before the first compile, such as the initial lists of a provider that
    /// reads the Kubernetes API. The admin endpoint comes up before it, so liveness probes are
    /// answered while it runs; `/readyz` stays unready until the first table is live. An error
    /// ends the run.
    pub initial_sync: Option<InitialSync>,
    /// Told when the process starts shutting down (SIGTERM or SIGINT), before the drain: a
    /// leader gives up its Lease then, not once open connections have drained, so that another
    /// replica writes status in the meantime.
    pub stopping: Option<tokio::sync::oneshot::Sender<()>>,
}

/// See [`RunOptions::initial_sync`].
pub type InitialSync =
    std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>> + Send>>;

/// Serves traffic from `store` until SIGTERM or SIGINT, then drains and returns.
pub async fn run(store: Store, mut options: RunOptions) -> anyhow::Result<()> {
    let metrics = metrics::global().clone();
    if options.status_reports.is_none() {
        // Standalone: nothing to elect, the report on /status is this process's own.
        metrics.leader.set(1);
    }
    let shared = Arc::new(Shared {
        table: Arc::new(ArcSwap::from_pointee(RoutingTable::default())),
        report: ArcSwap::from_pointee(StatusReport::default()),
        ready: AtomicBool::new(false),
        waiting_for: ArcSwap::from_pointee("no routing table yet".to_string()),
        metrics: metrics.clone(),
    });
    let admin = admin::bind(options.admin_addr).await.map_err(|e| {
        anyhow::anyhow!("cannot bind the admin address {}: {e}", options.admin_addr)
    })?;
    // The address bound, which for port 0 is not the one asked for.
    let bound = admin.local_addr().unwrap_or(options.admin_addr);
    tracing::info!(addr = %bound, "admin endpoint listening");
    tokio::spawn(admin::serve(admin, shared.clone()));
    if let Some(initial_sync) = options.initial_sync.take() {
        initial_sync.await?;
    }

    // Pingora keeps 128 idle backend connections by default, over all backends together. A
    // gateway carrying more requests at once than that (an HTTP/2 client alone may send a
    // hundred streams) would close the connections it has just used and open new ones for the
    // next requests: with 200 streams in flight, one backend request in twelve went out on a
    // new connection.
    let conf = Arc::new(ServerConf {
        upstream_keepalive_pool_size: options.upstream_idle_connections,
        ..ServerConf::default()
    });
    let access_log = access_log::AccessLog::start(
        options.access_log_sample,
        metrics.access_log_dropped.clone(),
    );
    let (shutdown_tx, shutdown_rx) = listeners::shutdown_channel();
    let mut proxy = pingora_proxy::http_proxy(
        &conf,
        proxy::Proxy::new(
            shared.table.clone(),
            metrics.clone(),
            access_log.clone(),
            options.request_metrics,
            shutdown_rx.clone(),
        ),
    );
    let mut server_options = pingora_core::apps::HttpServerOptions::default();
    server_options.h2c = true;
    // An HTTP/2 connection without open streams is closed after the same idle time as an
    // HTTP/1.1 one between requests.
    server_options.h2_idle_timeout = Some(proxy::KEEPALIVE_IDLE);
    proxy.server_options = Some(server_options);
    // Connections that hold what a table decided (client certificate validation) look again
    // at each swap.
    let (swaps_tx, swaps_rx) = tokio::sync::watch::channel(0u64);
    let mut sockets = listeners::Listeners::new(
        Arc::new(proxy),
        shared.table.clone(),
        metrics.clone(),
        shutdown_rx,
        options.request_header_timeout,
        swaps_rx,
    );

    let mut changes = store.subscribe();
    // Compile what the providers loaded before we subscribed, too.
    changes.mark_changed();
    let mut compile_options = options.compile;
    let mut generation = 0u64;
    // Moved into each compile job and back: what the next compile can reuse.
    let mut cache = Some(CompileCache::default());
    let mut last_problems: Vec<String> = Vec::new();
    let mut last_unserved: Vec<String> = Vec::new();
    // Whether the last table served nothing, to warn once each time that starts.
    let mut served_nothing = false;
    // Listeners whose certificate was out of its validity at the last compile, to warn once
    // each time that starts.
    let mut certificates_out_of_date = std::collections::HashSet::new();
    // Standalone mode has no status writer: the status is ours to report, all of it.
    let standalone = options.status_reports.is_none();
    // The last compile's report before sockets that could not be bound were marked on it, so
    // that a bind retry can mark it again without compiling.
    let mut compiled_report = StatusReport::default();
    let mut terminate = signal()?;
    // Series of objects the configuration dropped are removed from the metrics some time after
    // the change (once for a burst of changes, not at each), and again every minute after
    // that: a request still running on a deleted route, a WebSocket say, counts into its
    // series again when it ends.
    let mut prune: Option<(Instant, Arc<metrics::Configured>)> = None;
    loop {
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            _ = tokio::time::sleep_until(prune.as_ref().map_or_else(Instant::now, |(at, _)| *at).into()), if prune.is_some() => {
                if let Some((_, configured)) = prune.take() {
                    let (metrics, kept) = (metrics.clone(), configured.clone());
                    tokio::task::spawn_blocking(move || metrics.retain_series(&kept));
                    prune = Some((Instant::now() + SERIES_PRUNE_INTERVAL, configured));
                }
                continue;
            }
            // A socket that could not be bound (port taken, address missing) is tried again;
            // the configuration did not change, so the table stays and only the status of
            // its listeners is redone when a bind succeeds.
            _ = tokio::time::sleep(BIND_RETRY), if !sockets.failed.is_empty() => {
                let table = shared.table.load_full();
                let binds: Vec<(SocketAddr, bool)> =
                    table.binds.iter().map(|(a, b)| (*a, b.tls)).collect();
                let before = sockets.failed.clone();
                sockets.reconcile(&binds).await;
                if sockets.failed != before {
                    let now = crate::controller::directory::now_rfc3339();
                    publish(&shared, &options.status_reports, compiled_report.clone(), &table, &sockets.failed, &now);
                }
                continue;
            }
            _ = terminate.recv() => break,
        }
        tokio::time::sleep(DEBOUNCE).await;
        changes.borrow_and_update();
        let started = Instant::now();
        compile_options.now = crate::controller::directory::now_rfc3339();
        // Taking the snapshot, compiling it and counting its objects take milliseconds at
        // thousands of routes: do it where it does not hold up the requests being served.
        let job = {
            let options = compile_options.clone();
            let mut taken = cache.take().unwrap_or_default();
            let store = store.clone();
            tokio::task::spawn_blocking(move || {
                let snapshot = store.snapshot();
                let compiled = compile_with(&snapshot, &options, &mut taken);
                let counts: Vec<(crate::controller::Kind, usize)> = crate::controller::Kind::ALL
                    .into_iter()
                    .map(|kind| (kind, snapshot.of_kind(kind).count()))
                    .collect();
                // In a directory of one's own, an object nothing serves is most often a
                // misspelt name; in a cluster it belongs to another controller.
                let unserved = if standalone {
                    crate::routing::unserved(&snapshot, &compiled.report, &options)
                } else {
                    Vec::new()
                };
                (compiled, taken, counts, unserved)
            })
        };
        let (compiled, counts, unserved) = match job.await {
            Ok((compiled, kept, counts, unserved)) => {
                cache = Some(kept);
                (compiled, counts, unserved)
            }
            Err(err) => {
                // The compiler never fails on input; a panic is a bug. Keep serving the last
                // table and say so; the next compile starts from an empty cache.
                tracing::error!(error = %err, "compile failed; keeping the last configuration");
                continue;
            }
        };
        let took = started.elapsed();
        compile_options.assigned = compiled.assigned.clone();
        generation += 1;
        let mut table = compiled.table;
        table.generation = generation;
        let binds: Vec<(SocketAddr, bool)> = table.binds.iter().map(|(a, b)| (*a, b.tls)).collect();
        let rules = compiled.rules;
        // Sockets first, then the table: a new listener's first request finds its routes.
        sockets.reconcile(&binds).await;
        let table = Arc::new(table);
        let previous = shared.table.swap(table.clone());
        swaps_tx.send_replace(generation);
        // Freeing a large table is as slow as building it; do it off the serving threads too
        // (requests still holding it free it when they end).
        tokio::task::spawn_blocking(move || drop(previous));
        // The table is live before the status says so and readiness can turn.
        compiled_report = compiled.report;
        let refused = compiled_report.errors.len();
        let problems = publish(
            &shared,
            &options.status_reports,
            compiled_report.clone(),
            &table,
            &sockets.failed,
            &compile_options.now,
        );
        metrics.compiles.inc();
        metrics.compile_duration.observe(took.as_secs_f64());
        metrics.config_generation.set(generation as i64);
        metrics.rules.set(rules as i64);
        metrics.objects.reset();
        for (kind, count) in &counts {
            metrics
                .objects
                .with_label_values(&[kind.as_str()])
                .set(*count as i64);
        }
        let configured = Arc::new(metrics::Configured::new(
            &compiled_report,
            compiled.endpoints.keys().map(String::as_str),
        ));
        let soon = Instant::now() + SERIES_PRUNE_DELAY;
        let due = prune.take().map_or(soon, |(at, _)| at.min(soon));
        prune = Some((due, configured));
        metrics.endpoints_ready.reset();
        for (backend, ready) in &compiled.endpoints {
            metrics
                .endpoints_ready
                .with_label_values(&[backend])
                .set(*ready as i64);
        }
        metrics.config_problems.set(problems.len() as i64);
        note_certificates(&table, &metrics, &mut certificates_out_of_date);
        tracing::info!(
            generation,
            objects = counts.iter().map(|(_, n)| n).sum::<usize>(),
            rules,
            sockets = binds.len(),
            sockets_unbound = sockets.failed.len(),
            problems = problems.len(),
            compile_ms = took.as_secs_f64() * 1e3,
            refused,
            "{}",
            // A refused input (a file that does not parse) is among the problems, and what it
            // held before is still served: "applied" alone would read as if it went in.
            if refused == 0 {
                "configuration applied"
            } else {
                "configuration applied without the refused inputs the warnings name"
            }
        );
        // An empty table is valid configuration, and most often a mistake (a volume mounted
        // empty, a directory emptied, every Gateway of another class): say so each time the
        // gateway comes to serve nothing, not only in the counts above.
        let serves_nothing = binds.is_empty();
        if serves_nothing && !served_nothing {
            tracing::warn!(
                objects = counts.iter().map(|(_, n)| n).sum::<usize>(),
                "nothing is served: no Gateway of this controller has a listener to serve \
                 (see /status, or `portcullis check` on the configuration)"
            );
        }
        served_nothing = serves_nothing;
        for p in problems.iter().filter(|p| !last_problems.contains(p)) {
            tracing::warn!(problem = %p, "configuration problem");
        }
        last_problems = problems;
        for u in unserved.iter().filter(|u| !last_unserved.contains(u)) {
            tracing::warn!(object = %u, "not served");
        }
        last_unserved = unserved;
    }
    tracing::info!(
        drain_timeout_s = options.drain_timeout.as_secs_f64(),
        "shutting down: no new connections, draining in-flight requests"
    );
    if let Some(stopping) = options.stopping.take() {
        let _ = stopping.send(());
    }
    // Not ready from here on, so that whatever sends traffic here (a Service's endpoints, a
    // load balancer's health check) stops doing so while open connections drain.
    shared.waiting_for.store(Arc::new(
        "shutting down: draining in-flight requests".to_string(),
    ));
    shared.ready.store(false, Ordering::Release);
    // Draining runs in three steps. New connections are refused at once. For a short grace
    // period, requests on open connections are still served but answered with
    // `Connection: close`, so busy clients move away cleanly; closing idle keep-alive connections
    // right away would race with a request a client is sending on one. Then idle connections
    // are closed, and in-flight requests get the rest of the drain timeout.
    sockets.stop_accepting();
    let _ = shutdown_tx.send(true);
    let deadline = Instant::now() + options.drain_timeout;
    let grace = Instant::now() + DRAIN_GRACE.min(options.drain_timeout / 2);
    // A second SIGTERM or SIGINT (an operator's second Ctrl-C) ends the drain at once.
    let mut hurried = false;
    let pause = async |terminate: &mut tokio::sync::mpsc::Receiver<()>| {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(20)) => false,
            _ = terminate.recv() => true,
        }
    };
    while !hurried && metrics.connections_open.get() > 0 && Instant::now() < grace {
        hurried = pause(&mut terminate).await;
    }
    if !hurried {
        sockets.close_idle().await;
    }
    while !hurried && metrics.connections_open.get() > 0 && Instant::now() < deadline {
        hurried = pause(&mut terminate).await;
    }
    if hurried {
        tracing::warn!(
            open = metrics.connections_open.get(),
            "second stop signal: stopping without waiting for the open connections"
        );
    }
    // The requests that finished while draining are logged before the process goes, if
    // stdout takes them within a second.
    access_log.flush(Duration::from_secs(1));
    tracing::info!(open = metrics.connections_open.get(), "stopped");
    Ok(())
}

/// How long after a configuration change the metric series of the objects it dropped go.
pub const SERIES_PRUNE_DELAY: Duration = Duration::from_secs(10);

/// How often series of objects no longer configured are looked for between changes.
pub const SERIES_PRUNE_INTERVAL: Duration = Duration::from_secs(60);

/// How often sockets that could not be bound are tried again.
pub const BIND_RETRY: Duration = Duration::from_secs(2);

/// Sets the certificate expiry gauge of every TLS listener of `table`, and warns of a
/// certificate served outside its validity (expired, or not yet valid): clients refuse it, and
/// nothing in the listener's status says so, as a certificate that parses is a resolved
/// reference. Warned once per listener each time it starts.
fn note_certificates(
    table: &RoutingTable,
    metrics: &metrics::Metrics,
    out_of_date: &mut std::collections::HashSet<(Arc<str>, Arc<str>)>,
) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    metrics.certificate_expiry.reset();
    let mut still = std::collections::HashSet::new();
    for listener in table.binds.values().flat_map(|b| &b.listeners) {
        // With several certificateRefs all are in `certificates`; with one, only `certificate`.
        let validities: Vec<(i64, i64)> = if listener.certificates.is_empty() {
            listener
                .certificate
                .iter()
                .filter_map(|k| crate::tls::validity(k))
                .collect()
        } else {
            (listener.certificates.iter())
                .filter_map(|c| crate::tls::validity(&c.key))
                .collect()
        };
        let Some(first_expiry) = validities.iter().map(|(_, after)| *after).min() else {
            continue;
        };
        metrics
            .certificate_expiry
            .with_label_values(&[&listener.gateway, &listener.name])
            .set(first_expiry);
        if validities
            .iter()
            .any(|(before, after)| now < *before || now > *after)
        {
            let id = (listener.gateway.clone(), listener.name.clone());
            if !out_of_date.contains(&id) {
                tracing::warn!(
                    gateway = %listener.gateway,
                    listener = %listener.name,
                    "a certificate this listener serves is expired or not yet valid: clients \
                     will refuse it; renew the Secret"
                );
            }
            still.insert(id);
        }
    }
    *out_of_date = still;
}

/// Publishes `report` (a compile's, for `table`) on `/status` and to the status writer, with
/// the listeners of sockets in `failed` marked pending and condition times carried over from
/// the report it replaces (a condition that changed gets `now`); updates readiness and the
/// unbound-socket gauge. Returns the report's problems.
fn publish(
    shared: &Shared,
    status_reports: &Option<tokio::sync::watch::Sender<Arc<StatusReport>>>,
    mut report: StatusReport,
    table: &RoutingTable,
    failed: &std::collections::HashMap<SocketAddr, String>,
    now: &str,
) -> Vec<String> {
    mark_unbound(&mut report, table, failed);
    report.carry_transition_times(&shared.report.load(), now);
    let problems = report.problems();
    let report = Arc::new(report);
    shared.report.store(report.clone());
    if let Some(reports) = status_reports {
        reports.send_replace(report);
    }
    shared.metrics.sockets_unbound.set(failed.len() as i64);
    if failed.is_empty() {
        shared.ready.store(true, Ordering::Release);
    } else if !shared.ready.load(Ordering::Acquire) {
        shared
            .waiting_for
            .store(Arc::new(unbound_summary(failed, table)));
    }
    problems
}

/// Marks the listeners of sockets that could not be bound as not programmed: the compiler
/// cannot know that a port is taken, only the bind can. A Gateway is programmed when all of it
/// is served, so one listener that cannot listen leaves its Gateway pending too; the Gateway's
/// message names every such listener, by socket, in a stable order.
fn mark_unbound(
    report: &mut StatusReport,
    table: &RoutingTable,
    failed: &std::collections::HashMap<SocketAddr, String>,
) {
    use std::collections::BTreeMap;
    let retrying = format!("retrying every {} s", BIND_RETRY.as_secs());
    // Gateway -> socket -> (why, its listeners on that socket).
    let mut pending: BTreeMap<&str, BTreeMap<SocketAddr, (&str, Vec<&str>)>> = BTreeMap::new();
    for (addr, error) in failed {
        for listener in table.binds.get(addr).into_iter().flat_map(|b| &b.listeners) {
            let entry = pending.entry(&listener.gateway).or_default();
            let (_, names) = entry.entry(*addr).or_insert((error, Vec::new()));
            names.push(&listener.name);
        }
    }
    for (key, sockets) in pending {
        let Some((namespace, name)) = key.split_once('/') else {
            continue;
        };
        let gateway = report.objects.iter_mut().find(|o| {
            o.kind == crate::controller::Kind::Gateway && o.namespace == namespace && o.name == name
        });
        let Some(gateway) = gateway else { continue };
        let gateway = Arc::make_mut(gateway);
        gateway.problems = Default::default();
        let mut said = Vec::new();
        for (addr, (error, mut names)) in sockets {
            names.sort_unstable();
            let cause = format!("cannot listen on {addr}: {error}");
            let listeners = gateway.status["listeners"].as_array_mut();
            for l in (listeners.into_iter().flatten())
                .filter(|l| l["name"].as_str().is_some_and(|n| names.contains(&n)))
            {
                set_pending(&mut l["conditions"], &format!("{cause}; {retrying}"));
            }
            let which = match names.as_slice() {
                [one] => format!("listener {one}"),
                many => format!("listeners {}", many.join(", ")),
            };
            said.push(format!("{which} {cause}"));
        }
        let message = format!("{}; {retrying}", said.join("; "));
        set_pending(&mut gateway.status["conditions"], &message);
    }
}

/// Turns a true `Programmed` condition among `conditions` to false with reason `Pending`. A
/// condition already false keeps its own reason.
fn set_pending(conditions: &mut serde_json::Value, message: &str) {
    for c in conditions.as_array_mut().into_iter().flatten() {
        if c["type"] == "Programmed" && c["status"] == "True" {
            c["status"] = "False".into();
            c["reason"] = "Pending".into();
            c["message"] = message.into();
        }
    }
}

/// What `/readyz` says while listener sockets cannot be bound: each socket, the listeners it
/// serves, and why.
fn unbound_summary(
    failed: &std::collections::HashMap<SocketAddr, String>,
    table: &RoutingTable,
) -> String {
    let mut sockets: Vec<String> = failed
        .iter()
        .map(|(addr, error)| {
            let listeners: Vec<String> = table
                .binds
                .get(addr)
                .into_iter()
                .flat_map(|b| &b.listeners)
                .map(|l| format!("{}/{}", l.gateway, l.name))
                .collect();
            format!(
                "cannot listen on {addr} (listener {}): {error}",
                listeners.join(", ")
            )
        })
        .collect();
    sockets.sort();
    format!(
        "{}; retrying every {} s",
        sockets.join("; "),
        BIND_RETRY.as_secs()
    )
}

/// A stream of SIGTERM and SIGINT. SIGHUP, which would end the process at once by default
/// (a closed terminal, or `kill -HUP` sent out of habit to make a proxy reload), is said in
/// the log and otherwise ignored: there is nothing to reload, as configuration changes apply
/// as they come.
fn signal() -> anyhow::Result<tokio::sync::mpsc::Receiver<()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP ignored: configuration changes apply as they come, with no reload; SIGTERM stops the gateway");
        }
    });
    // Every SIGTERM or SIGINT is passed on: the first starts the drain, a second cuts it short.
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            if tx.send(()).await.is_err() {
                break;
            }
        }
    });
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::{directory::parse_manifests, Kind, Snapshot};
    use crate::routing::compile;

    /// Three listeners on two sockets, neither of which can be had: each listener says its own
    /// socket, and the Gateway names all three, grouped by socket, in the same order every time.
    #[test]
    fn a_gateway_pending_on_taken_sockets_names_every_listener_waiting() {
        let yaml = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: c}
spec: {controllerName: portcullis.dev/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: n}
spec:
  gatewayClassName: c
  listeners:
  - {name: web-b, port: 80, protocol: HTTP, hostname: b.example}
  - {name: web-a, port: 80, protocol: HTTP, hostname: a.example}
  - {name: admin, port: 81, protocol: HTTP}
"#;
        let (objects, errors) = parse_manifests(yaml).unwrap();
        assert!(errors.is_empty(), "{errors:?}");
        let options = CompileOptions {
            address_pool: vec!["127.0.0.1".parse().unwrap()],
            ..CompileOptions::default()
        };
        let compiled = compile(&Snapshot::from_objects(objects), &options);
        let socket = |port| SocketAddr::from(([127, 0, 0, 1], port));
        assert_eq!(compiled.table.binds.len(), 2);
        let failed = [(socket(80), "in use"), (socket(81), "denied")]
            .into_iter()
            .map(|(a, e)| (a, e.to_string()))
            .collect();
        let mut messages = Vec::new();
        for _ in 0..3 {
            let mut report = compiled.report.clone();
            mark_unbound(&mut report, &compiled.table, &failed);
            let gateway = report.get(Kind::Gateway, "n", "gw").unwrap();
            let programmed = |conditions: &serde_json::Value| {
                let c = conditions
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|c| c["type"] == "Programmed")
                    .unwrap()
                    .clone();
                assert_eq!(
                    (&c["status"], &c["reason"]),
                    (&"False".into(), &"Pending".into())
                );
                c["message"].as_str().unwrap().to_string()
            };
            for l in gateway.status["listeners"].as_array().unwrap() {
                let port = if l["name"] == "admin" { 81 } else { 80 };
                let message = programmed(&l["conditions"]);
                assert!(
                    message.starts_with(&format!("cannot listen on 127.0.0.1:{port}: ")),
                    "{message}"
                );
            }
            messages.push(programmed(&gateway.status["conditions"]));
        }
        assert_eq!(
            messages[0],
            "listeners web-a, web-b cannot listen on 127.0.0.1:80: in use; listener admin \
             cannot listen on 127.0.0.1:81: denied; retrying every 2 s"
        );
        assert!(messages.iter().all(|m| *m == messages[0]), "{messages:?}");
    }
}
