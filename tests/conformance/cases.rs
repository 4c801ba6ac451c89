//! The serde model of `cases.json`, the Gateway API conformance suite restated as data.
//!
//! Field names follow the file's schema (see the README next to it). Every object that carries
//! expectations keeps the fields it does not know in `extra`, so that a newer `cases.json` with a
//! check this runner cannot make fails loudly instead of passing by omission.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

/// The whole file.
#[derive(Debug, Deserialize)]
pub(crate) struct Suite {
    pub(crate) format: String,
    pub(crate) format_version: u32,
    #[serde(default)]
    pub(crate) generated_secrets: Vec<GeneratedSecret>,
    pub(crate) backends: Vec<Backend>,
    pub(crate) tests: Vec<Test>,
}

impl Suite {
    /// Reads and checks `cases.json` in `dir`.
    pub(crate) fn load(dir: &Path) -> Result<Suite, String> {
        let path = dir.join("cases.json");
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let suite: Suite = serde_json::from_str(&text)
            .map_err(|e| format!("cannot parse {}: {e}", path.display()))?;
        if suite.format != "gateway-api-conformance-cases" || suite.format_version != 1 {
            return Err(format!(
                "{} is format {} version {}, this runner reads gateway-api-conformance-cases version 1",
                path.display(),
                suite.format,
                suite.format_version
            ));
        }
        Ok(suite)
    }
}

/// A certificate Secret or CA ConfigMap that upstream creates at run time.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct GeneratedSecret {
    pub(crate) kind: String,
    pub(crate) namespace: String,
    pub(crate) name: String,
    /// What it is and who signs it, in words ("server certificate signed by CA 'C'").
    pub(crate) cert: String,
    #[serde(default)]
    pub(crate) san_dns: Vec<String>,
    #[serde(default)]
    pub(crate) san_uri: Vec<String>,
}

/// A Service that needs an echo process.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Backend {
    pub(crate) namespace: String,
    pub(crate) service: String,
    /// `http`, `https`, `grpc`, `tcp`, `udp-dns` or `alias-of:<service>`.
    pub(crate) echo: String,
    pub(crate) ports: Vec<BackendPort>,
}

/// One port of a backend Service.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct BackendPort {
    #[serde(rename = "targetPort")]
    pub(crate) target_port: Option<u16>,
    pub(crate) port: u16,
    #[serde(rename = "appProtocol")]
    pub(crate) app_protocol: Option<String>,
}

/// One upstream conformance test.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Test {
    pub(crate) name: String,
    pub(crate) route_kind: String,
    pub(crate) support: String,
    #[serde(default)]
    pub(crate) features: Vec<String>,
    pub(crate) manifests: Vec<String>,
    /// `namespace/name` of the Gateway requests go to.
    pub(crate) gateway: Option<String>,
    /// Upstream skips the test when the implementation claims one of these features.
    #[serde(default)]
    pub(crate) skip_if_supported: Vec<String>,
    pub(crate) standalone_applicable: Option<bool>,
    #[serde(default)]
    pub(crate) cases: Vec<Case>,
    #[serde(default)]
    pub(crate) steps: Vec<Step>,
    pub(crate) weights: Option<Weights>,
    #[serde(default)]
    pub(crate) status_expectations: Vec<StatusExpectation>,
}

impl Test {
    /// Every request case of the test, including those inside steps.
    pub(crate) fn all_cases(&self) -> impl Iterator<Item = &Case> {
        self.cases
            .iter()
            .chain(self.steps.iter().flat_map(|s| s.then_cases.iter()))
    }
}

/// One request and what must come back.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Case {
    pub(crate) name: Option<String>,
    /// Overrides the test's Gateway.
    pub(crate) gateway: Option<String>,
    #[serde(default)]
    pub(crate) repeat: u32,
    #[serde(default)]
    pub(crate) single_attempt: bool,
    pub(crate) request: Request,
    pub(crate) expect: Expect,
    pub(crate) mirror_distribution: Option<MirrorDistribution>,
    #[serde(flatten)]
    pub(crate) extra: BTreeMap<String, Value>,
}

impl Case {
    /// A short label for reports: the case's name, or its method, host and path.
    pub(crate) fn label(&self) -> String {
        let r = &self.request;
        let mut label = format!("{} {}{}", r.method, r.host.as_deref().unwrap_or(""), r.path);
        if r.port != 80 {
            label = format!("{label} (port {})", r.port);
        }
        match &self.name {
            Some(name) => format!("{name:?}: {label}"),
            None => label,
        }
    }
}

fn default_scheme() -> String {
    "http".to_string()
}
fn default_port() -> u16 {
    80
}
fn default_method() -> String {
    "GET".to_string()
}
fn default_path() -> String {
    "/".to_string()
}

/// What the client sends.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Request {
    #[serde(default = "default_scheme")]
    pub(crate) scheme: String,
    /// Absent for HTTP; `grpc` or `tls`.
    pub(crate) protocol: Option<String>,
    /// The listener port of the manifest (the gateway serves it at port + offset).
    #[serde(default = "default_port")]
    pub(crate) port: u16,
    pub(crate) host: Option<String>,
    #[serde(default = "default_method")]
    pub(crate) method: String,
    #[serde(default = "default_path")]
    pub(crate) path: String,
    #[serde(default)]
    pub(crate) headers: BTreeMap<String, String>,
    pub(crate) http_version: Option<String>,
    /// The runner never follows redirects (their targets are not on this machine); the field is
    /// read so that it does not count as unknown.
    #[allow(dead_code)]
    pub(crate) follow_redirects: Option<bool>,
    #[serde(default)]
    pub(crate) echo_set_response_headers: BTreeMap<String, String>,
    pub(crate) add_request_id_query_param: Option<String>,
    #[serde(default)]
    pub(crate) fresh_uuid_per_attempt: bool,
    pub(crate) websocket: Option<WebSocket>,
    /// TLS and gRPC fields (`sni`, `tls_trust`, `client_cert`, `grpc_service`, ...) and anything
    /// newer; the HTTP client refuses a request that sets one it does not implement.
    #[serde(flatten)]
    pub(crate) extra: BTreeMap<String, Value>,
}

/// A WebSocket exchange.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct WebSocket {
    pub(crate) origin: Option<String>,
    #[serde(default)]
    pub(crate) exchange: Vec<WsMessage>,
}

/// One message sent over a WebSocket and the echo expected back.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct WsMessage {
    pub(crate) send_text: Option<String>,
    pub(crate) expect_text: Option<String>,
    pub(crate) send_binary_hex: Option<String>,
    pub(crate) expect_binary_hex: Option<String>,
}

/// What must come back for a case.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct Expect {
    pub(crate) status: Option<u16>,
    #[serde(default)]
    pub(crate) accept_statuses: Vec<u16>,
    pub(crate) backend: Option<String>,
    #[serde(default)]
    pub(crate) backend_any_of: Vec<String>,
    pub(crate) namespace: Option<String>,
    pub(crate) request_seen: Option<RequestSeen>,
    #[serde(default)]
    pub(crate) response_headers: BTreeMap<String, String>,
    #[serde(default)]
    pub(crate) response_header_one_of: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub(crate) ignore_whitespace_in_response_headers: bool,
    #[serde(default)]
    pub(crate) absent_response_headers: Vec<String>,
    pub(crate) redirect: Option<Redirect>,
    #[serde(default)]
    pub(crate) mirrored_to: Vec<MirroredTo>,
    #[serde(default)]
    pub(crate) answered_by_gateway: bool,
    pub(crate) backend_matches_seen_header: Option<String>,
    pub(crate) seen_header_single_value: Option<String>,
    #[serde(default)]
    pub(crate) connection_fails: bool,
    #[serde(default)]
    pub(crate) websocket_echo: bool,
    /// TLS and gRPC checks (`backend_tls_seen`, `grpc_code`, `tcp_echo`, ...) and anything newer;
    /// a case carrying one this runner cannot judge fails rather than passes.
    #[serde(flatten)]
    pub(crate) extra: BTreeMap<String, Value>,
}

/// What the echo backend must have received.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct RequestSeen {
    pub(crate) path: Option<String>,
    pub(crate) method: Option<String>,
    pub(crate) host: Option<String>,
    #[serde(default)]
    pub(crate) headers: BTreeMap<String, String>,
    #[serde(default)]
    pub(crate) absent_headers: Vec<String>,
}

/// The expected redirect target.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Redirect {
    pub(crate) status: Option<u16>,
    pub(crate) scheme: Option<String>,
    pub(crate) host: Option<String>,
    /// A string in the data ("8080"); a number is accepted too.
    pub(crate) port: Option<Value>,
    pub(crate) path: Option<String>,
}

/// A Service that must receive a mirrored copy.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct MirroredTo {
    pub(crate) backend: String,
    pub(crate) namespace: Option<String>,
    /// Share of requests mirrored; absent means every request.
    pub(crate) percent: Option<f64>,
}

/// The batch check of a percentage mirror.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct MirrorDistribution {
    pub(crate) requests_per_batch: usize,
    pub(crate) concurrency: usize,
    pub(crate) max_batches: usize,
    pub(crate) tolerance_std_devs: f64,
    pub(crate) request_id_query_param: String,
}

/// A mid-test edit and what to wait for after it.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Step {
    /// `patch` or `delete`.
    pub(crate) action: String,
    pub(crate) kind: String,
    pub(crate) name: String,
    pub(crate) namespace: Option<String>,
    pub(crate) change: Option<Value>,
    #[serde(default)]
    pub(crate) then_status: Vec<StatusExpectation>,
    #[serde(default)]
    pub(crate) then_cases: Vec<Case>,
}

/// The traffic-split check.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Weights {
    pub(crate) request: Request,
    pub(crate) expected_fractions: BTreeMap<String, f64>,
    pub(crate) total_requests: usize,
    pub(crate) concurrency: usize,
    pub(crate) tolerance: f64,
    pub(crate) max_attempts: usize,
}

/// A condition to find: a missing or empty status or reason matches any value.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Condition {
    #[serde(rename = "type")]
    pub(crate) type_: String,
    pub(crate) status: Option<String>,
    pub(crate) reason: Option<String>,
}

/// Expected state of one listener.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct ListenerStatus {
    pub(crate) name: String,
    pub(crate) attached_routes: Option<i64>,
    #[serde(default)]
    pub(crate) conditions: Vec<Condition>,
    pub(crate) supported_kinds: Option<Vec<String>>,
}

/// A check on the status of one object.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct StatusExpectation {
    pub(crate) kind: String,
    pub(crate) name: String,
    pub(crate) namespace: Option<String>,
    /// `namespace/name` of the Gateway whose `status.parents` entry is checked.
    pub(crate) parent: Option<String>,
    /// Informational: upstream does not compare sectionName.
    #[allow(dead_code)]
    pub(crate) parent_section: Option<String>,
    #[serde(default)]
    pub(crate) conditions: Vec<Condition>,
    /// `"*"`: `conditions` apply to every listener instead of the object.
    pub(crate) listeners: Option<String>,
    pub(crate) listener: Option<String>,
    #[serde(default)]
    pub(crate) listener_conditions: Vec<Condition>,
    #[serde(default)]
    pub(crate) listener_status: Vec<ListenerStatus>,
    pub(crate) exact_listener_count: Option<usize>,
    #[serde(default)]
    pub(crate) requires_address: bool,
    #[serde(default)]
    pub(crate) no_accepted_parents: bool,
    #[serde(default)]
    pub(crate) zero_attached_routes: bool,
    #[serde(default)]
    pub(crate) conditions_have_latest_observed_generation: bool,
    #[serde(default)]
    pub(crate) generation_changed: bool,
    #[serde(default)]
    pub(crate) namespace_ready: bool,
    /// Words; the only form in the data asks for exactly the usable static address.
    pub(crate) status_addresses: Option<String>,
    /// Anything this runner does not know.
    #[serde(flatten)]
    pub(crate) extra: BTreeMap<String, Value>,
}
