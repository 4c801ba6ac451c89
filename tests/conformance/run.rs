//! Running one test: load its configuration into the gateway, wait for its status
//! expectations, send its request cases with upstream's consistency rule, apply its steps, and
//! check its traffic split and mirror shares.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::Value;

use crate::cases::{Case, Request, StatusExpectation, Test, Weights};
use crate::client::{self, HttpReply, HttpVersion};
use crate::echo::Echoes;
use crate::gateway::{Gateway, PORT_OFFSET};
use crate::judge::{self, Echoed, Generations};
use crate::manifests;

/// How long status expectations may take. Upstream allows 60-300 s; this gateway compiles in
/// milliseconds, and a shorter cap keeps a failing run bounded.
const STATUS_WAIT: Duration = Duration::from_secs(30);
/// Upstream's consistency rule: passes in a row, the pause after a failure, the overall limit.
const CONSECUTIVE_PASSES: u32 = 3;
const RETRY_DELAY: Duration = Duration::from_secs(1);
const CONSISTENCY_WAIT: Duration = Duration::from_secs(30);
/// How long a mirrored copy may take to reach its backend.
const MIRROR_WAIT: Duration = Duration::from_secs(10);
/// The namespace of the echo backends when a case does not say.
const DEFAULT_BACKEND_NAMESPACE: &str = "gateway-conformance-infra";

/// Everything a test runs against.
pub(crate) struct Runner {
    pub(crate) data_dir: PathBuf,
    pub(crate) echoes: Echoes,
    pub(crate) gateway: Gateway,
    /// The generated certificate Secrets and ConfigMaps, part of every configuration.
    pub(crate) secrets: Vec<Value>,
}

impl Runner {
    /// Runs one test; the error is the first thing that failed.
    pub(crate) async fn run_test(&mut self, test: &Test) -> Result<(), String> {
        let mut docs = manifests::load(&self.data_dir, &test.manifests)?;
        self.apply(&docs).await?;
        self.wait_status(&test.status_expectations, &docs, None)
            .await?;
        for case in &test.cases {
            self.run_case(test, case).await?;
        }
        for (i, step) in test.steps.iter().enumerate() {
            let before = judge::generations(&self.gateway.status().await?);
            manifests::apply_step(&mut docs, step)?;
            self.apply(&docs).await?;
            self.wait_status(&step.then_status, &docs, Some(&before))
                .await
                .map_err(|e| {
                    format!("after step {} ({} {}): {e}", i + 1, step.action, step.name)
                })?;
            for case in &step.then_cases {
                self.run_case(test, case)
                    .await
                    .map_err(|e| format!("after step {}: {e}", i + 1))?;
            }
        }
        if let Some(weights) = &test.weights {
            self.check_weights(test, weights).await?;
        }
        Ok(())
    }

    /// Gives the gateway `docs` plus the certificates and EndpointSlices.
    async fn apply(&mut self, docs: &[Value]) -> Result<(), String> {
        let mut all = docs.to_vec();
        all.extend(self.secrets.iter().cloned());
        manifests::add_endpoint_slices(&mut all, &self.echoes);
        self.gateway.apply(&all).await
    }

    async fn wait_status(
        &mut self,
        expectations: &[StatusExpectation],
        docs: &[Value],
        before: Option<&Generations>,
    ) -> Result<(), String> {
        if expectations.is_empty() {
            return Ok(());
        }
        let deadline = Instant::now() + STATUS_WAIT;
        loop {
            self.gateway.check_alive()?;
            let problem = match self.gateway.status().await {
                Ok(report) => expectations
                    .iter()
                    .flat_map(|e| judge::status_problems(&report, e, docs, before))
                    .next(),
                Err(e) => Some(e),
            };
            let Some(problem) = problem else {
                return Ok(());
            };
            if Instant::now() > deadline {
                return Err(format!(
                    "status not reached within {}s: {problem}",
                    STATUS_WAIT.as_secs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// One case with the consistency rule, then its repeats and mirror share.
    async fn run_case(&mut self, test: &Test, case: &Case) -> Result<(), String> {
        let label = case.label();
        let fail = |e: String| format!("case {label}: {e}");
        unsupported(case).map_err(fail)?;
        let gateway = case
            .gateway
            .as_deref()
            .or(test.gateway.as_deref())
            .ok_or_else(|| fail("no Gateway to send it to".into()))?;
        let deadline = Instant::now() + CONSISTENCY_WAIT;
        let mut passes = 0;
        loop {
            self.gateway.check_alive()?;
            match self.attempt(test, gateway, case, &case.request).await {
                Ok(_) => {
                    passes += 1;
                    if case.single_attempt || passes >= CONSECUTIVE_PASSES {
                        break;
                    }
                }
                Err(e) if case.single_attempt => return Err(fail(e)),
                Err(e) => {
                    passes = 0;
                    if Instant::now() + RETRY_DELAY > deadline {
                        return Err(fail(format!(
                            "not {CONSECUTIVE_PASSES} passes in a row within {}s; last: {e}",
                            CONSISTENCY_WAIT.as_secs()
                        )));
                    }
                    tokio::time::sleep(RETRY_DELAY).await;
                }
            }
        }
        for i in 0..case.repeat {
            self.attempt(test, gateway, case, &case.request)
                .await
                .map_err(|e| fail(format!("repeat {} of {}: {e}", i + 1, case.repeat)))?;
        }
        if let Some(dist) = &case.mirror_distribution {
            self.check_mirror_share(gateway, case, dist)
                .await
                .map_err(fail)?;
        }
        Ok(())
    }

    /// One attempt of a case; returns what the echo reported, if a backend answered.
    async fn attempt(
        &mut self,
        test: &Test,
        gateway: &str,
        case: &Case,
        req: &Request,
    ) -> Result<Option<Echoed>, String> {
        let expect = &case.expect;
        let ip = self.gateway_address(gateway).await?;
        let addr = SocketAddr::new(ip, req.port + PORT_OFFSET);
        let host = host_header(req, ip);
        if req.scheme == "ws" || expect.websocket_echo {
            let ws = req
                .websocket
                .as_ref()
                .ok_or("a WebSocket case without an exchange")?;
            let origin = ws
                .origin
                .as_ref()
                .map(|o| o.replace("<test name>", &test.name));
            client::websocket(addr, &host, &req.path, origin.as_deref(), &ws.exchange).await?;
            return Ok(None);
        }
        let (path, seen_path) = paths_for_attempt(
            req,
            expect.request_seen.as_ref().and_then(|s| s.path.as_deref()),
        );
        let reply = send(req, addr, &host, &path).await;
        if expect.connection_fails {
            return match reply {
                Err(_) => Ok(None),
                Ok(r) => Err(format!(
                    "the connection should have failed, got HTTP {}",
                    r.status
                )),
            };
        }
        let reply = reply?;
        let echoed = judge::judge_http(expect, seen_path.as_deref(), &reply)?;
        for m in expect
            .mirrored_to
            .iter()
            .filter(|m| m.percent.is_none_or(|p| p >= 100.0))
        {
            let ns = m
                .namespace
                .as_deref()
                .or(expect.namespace.as_deref())
                .unwrap_or(DEFAULT_BACKEND_NAMESPACE);
            let echo = self
                .echoes
                .get(ns, &m.backend)
                .ok_or_else(|| format!("no echo for mirror {ns}/{}", m.backend))?;
            // If the mirror is the answering backend itself it sees the request twice.
            let answered_here = echoed
                .as_ref()
                .is_some_and(|e| e.service == echo.service && e.namespace == echo.namespace);
            let needed = if answered_here { 2 } else { 1 };
            let mirrored_path = seen_path.as_deref().unwrap_or(&path);
            let deadline = Instant::now() + MIRROR_WAIT;
            while echo.seen_count(mirrored_path) < needed {
                if Instant::now() > deadline {
                    return Err(format!(
                        "no mirrored copy of {mirrored_path} reached {ns}/{} within {}s",
                        m.backend,
                        MIRROR_WAIT.as_secs()
                    ));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(echoed)
    }

    /// The address a Gateway (`namespace/name`) publishes in its status.
    async fn gateway_address(&self, gateway: &str) -> Result<IpAddr, String> {
        let (ns, name) = gateway
            .split_once('/')
            .ok_or_else(|| format!("bad Gateway reference {gateway:?}"))?;
        let report = self.gateway.status().await?;
        let g = report
            .find("Gateway", Some(ns), name)
            .ok_or_else(|| format!("Gateway {gateway} is not in the status report"))?;
        let value = g.status["addresses"][0]["value"]
            .as_str()
            .ok_or_else(|| format!("Gateway {gateway} publishes no address"))?;
        value
            .parse()
            .map_err(|_| format!("Gateway {gateway} publishes {value:?}, not an IP address"))
    }

    /// Upstream's percentage-mirror check: batches of identical requests (a fresh request id per
    /// batch), counting the copies that reach the mirror.
    async fn check_mirror_share(
        &mut self,
        gateway: &str,
        case: &Case,
        dist: &crate::cases::MirrorDistribution,
    ) -> Result<(), String> {
        let mirror = case
            .expect
            .mirrored_to
            .iter()
            .find(|m| m.percent.is_some())
            .ok_or("mirror_distribution without a percentage mirror")?;
        let p = mirror.percent.unwrap_or(100.0) / 100.0;
        let ns = mirror
            .namespace
            .as_deref()
            .unwrap_or(DEFAULT_BACKEND_NAMESPACE);
        let echo = self
            .echoes
            .get(ns, &mirror.backend)
            .ok_or_else(|| format!("no echo for mirror {ns}/{}", mirror.backend))?
            .clone();
        let n = dist.requests_per_batch;
        let expected = n as f64 * p;
        let band = dist.tolerance_std_devs * (n as f64 * p * (1.0 - p)).sqrt();
        let ip = self.gateway_address(gateway).await?;
        let addr = SocketAddr::new(ip, case.request.port + PORT_OFFSET);
        let host = host_header(&case.request, ip);
        let mut counts = Vec::new();
        for _ in 0..dist.max_batches {
            let path = with_query_param(
                &case.request.path,
                &dist.request_id_query_param,
                &uuid::Uuid::new_v4().to_string(),
            );
            let replies: Vec<Result<HttpReply, String>> = futures_util::stream::iter(0..n)
                .map(|_| send(&case.request, addr, &host, &path))
                .buffer_unordered(dist.concurrency.max(1))
                .collect()
                .await;
            for r in &replies {
                match r {
                    Ok(r) if r.status == 200 => {}
                    Ok(r) => return Err(format!("a mirrored request answered {}", r.status)),
                    Err(e) => return Err(format!("a mirrored request failed: {e}")),
                }
            }
            // Copies go out after the real requests; wait until the count settles.
            let mut count = echo.seen_count(&path);
            let settle_deadline = Instant::now() + Duration::from_secs(5);
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let now = echo.seen_count(&path);
                if now == count || Instant::now() > settle_deadline {
                    count = now;
                    break;
                }
                count = now;
            }
            let primary_is_mirror = case.expect.backend.as_deref() == Some(mirror.backend.as_str());
            if primary_is_mirror {
                count = count.saturating_sub(n);
            }
            counts.push(count);
            if (count as f64 - expected).abs() <= band {
                return Ok(());
            }
        }
        Err(format!(
            "mirror {ns}/{} got {counts:?} copies per batch of {n}, want {expected:.0} +/- {band:.1}",
            mirror.backend
        ))
    }

    /// Upstream's traffic-split check: batches of requests whose shares per backend must match
    /// the weights within the tolerance.
    async fn check_weights(&mut self, test: &Test, w: &Weights) -> Result<(), String> {
        let gateway = test.gateway.as_deref().ok_or("weights without a Gateway")?;
        let ip = self.gateway_address(gateway).await?;
        let addr = SocketAddr::new(ip, w.request.port + PORT_OFFSET);
        let host = host_header(&w.request, ip);
        let mut last = String::new();
        for _ in 0..w.max_attempts.max(1) {
            let replies: Vec<Result<HttpReply, String>> =
                futures_util::stream::iter(0..w.total_requests)
                    .map(|i| {
                        // Upstream adds entropy to half the requests; it is not checked.
                        let mut req = w.request.clone();
                        if i % 2 == 0 {
                            req.headers.insert(
                                "X-Jitter".into(),
                                rand::random_range(0..10000).to_string(),
                            );
                        }
                        let host = host.clone();
                        async move { send(&req, addr, &host, &req.path).await }
                    })
                    .buffer_unordered(w.concurrency.max(1))
                    .collect()
                    .await;
            let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
            let mut failure = None;
            for r in replies {
                match r {
                    Ok(r) if r.status == 200 => match Echoed::parse(&r.body) {
                        Some(e) => *counts.entry(e.service).or_default() += 1,
                        None => failure = Some("a reply not from an echo backend".to_string()),
                    },
                    Ok(r) => failure = Some(format!("a request answered {}", r.status)),
                    Err(e) => failure = Some(format!("a request failed: {e}")),
                }
            }
            if let Some(f) = failure {
                last = f;
                continue;
            }
            let total = counts.values().sum::<usize>().max(1) as f64;
            let served: Vec<&String> = counts.keys().collect();
            let wanted: Vec<&String> = w
                .expected_fractions
                .iter()
                .filter(|(_, f)| **f > 0.0)
                .map(|(k, _)| k)
                .collect();
            let shares_ok = w.expected_fractions.iter().all(|(backend, fraction)| {
                let got = *counts.get(backend).unwrap_or(&0) as f64 / total;
                (got - fraction).abs() <= w.tolerance
            });
            if served == wanted && shares_ok {
                return Ok(());
            }
            last = format!(
                "split {counts:?}, want shares {:?} within {}",
                w.expected_fractions, w.tolerance
            );
        }
        Err(format!(
            "traffic split not right in {} attempts; last: {last}",
            w.max_attempts
        ))
    }
}

/// Fails for a case that needs something this runner does not do (so it never passes by
/// omission).
fn unsupported(case: &Case) -> Result<(), String> {
    let req = &case.request;
    if let Some(p) = &req.protocol {
        return Err(format!(
            "needs protocol {p}, which this runner does not speak yet"
        ));
    }
    if !matches!(req.scheme.as_str(), "http" | "ws") {
        return Err(format!(
            "needs scheme {}, which this runner does not speak yet",
            req.scheme
        ));
    }
    if matches!(req.http_version.as_deref(), Some(v) if v != "h2c-prior-knowledge") {
        return Err(format!(
            "needs HTTP version {:?}, which this runner does not speak yet",
            req.http_version
        ));
    }
    let unknown: Vec<&String> = req
        .extra
        .keys()
        .chain(case.expect.extra.keys())
        .chain(case.extra.keys())
        .collect();
    if !unknown.is_empty() {
        return Err(format!(
            "uses {unknown:?}, which this runner cannot send or judge yet"
        ));
    }
    Ok(())
}

/// The Host header: the case's host as given (it may carry the manifest port), else the
/// Gateway address, with the manifest port unless it is the scheme's default.
pub(crate) fn host_header(req: &Request, ip: IpAddr) -> String {
    if let Some(host) = &req.host {
        return host.clone();
    }
    let address = match ip {
        IpAddr::V6(v6) => format!("[{v6}]"),
        IpAddr::V4(v4) => v4.to_string(),
    };
    let default = match req.scheme.as_str() {
        "https" | "wss" | "tls" => 443,
        _ => 80,
    };
    if req.port == default {
        address
    } else {
        format!("{address}:{}", req.port)
    }
}

/// The path to send on this attempt and the path the echo must see: a fresh UUID for `{uuid}`
/// and a fresh request-id query parameter, when the case asks.
fn paths_for_attempt(req: &Request, seen: Option<&str>) -> (String, Option<String>) {
    let mut path = req.path.clone();
    let mut seen = seen.map(str::to_string);
    if req.fresh_uuid_per_attempt {
        let id = uuid::Uuid::new_v4().to_string();
        path = path.replace("{uuid}", &id);
        seen = seen.map(|s| s.replace("{uuid}", &id));
    }
    if let Some(param) = &req.add_request_id_query_param {
        let id = uuid::Uuid::new_v4().to_string();
        path = with_query_param(&path, param, &id);
        seen = seen.map(|s| with_query_param(&s, param, &id));
    }
    (path, seen)
}

fn with_query_param(path: &str, name: &str, value: &str) -> String {
    let sep = if path.contains('?') { '&' } else { '?' };
    format!("{path}{sep}{name}={value}")
}

/// Sends a case's HTTP request to `addr` on a fresh connection.
async fn send(
    req: &Request,
    addr: SocketAddr,
    host: &str,
    path: &str,
) -> Result<HttpReply, String> {
    let version = match req.http_version.as_deref() {
        Some("h2c-prior-knowledge") => HttpVersion::H2cPriorKnowledge,
        _ => HttpVersion::Http1,
    };
    let mut headers: Vec<(String, String)> = req
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    // Upstream always sends the response-header request to the echo, possibly empty.
    let set: Vec<String> = req
        .echo_set_response_headers
        .iter()
        .map(|(k, v)| format!("{k}:{v}"))
        .collect();
    headers.push(("X-Echo-Set-Header".to_string(), set.join(",")));
    client::request(version, addr, &req.method, host, path, &headers).await
}
