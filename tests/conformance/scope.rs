//! Which tests this run counts: [`SCOPE`] is the one table to edit to widen it.
//!
//! A test is described by what it needs beyond plain HTTP (read from its data, never from its
//! name); it runs when every need is in scope. `PORTCULLIS_CONFORMANCE_ALL=1` runs every test
//! regardless, and then every failure counts. Tests that upstream skips for a feature the gateway
//! claims ([`CLAIMED_FEATURES`]) never run: they do not apply.

use std::collections::HashSet;

use serde_json::Value;

use crate::cases::{Suite, Test};

/// Something a test needs beyond plain-HTTP requests and status checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Need {
    /// `standalone_applicable: false`: checks Kubernetes objects the implementation creates.
    KubernetesObjects,
    /// gRPC requests or GRPCRoute status.
    Grpc,
    /// TLSRoute (the feature, or the route kind).
    TlsRoute,
    /// A request over TLS (`scheme` https or tls).
    TlsClient,
    /// The test's own manifests refer to a generated certificate Secret or CA ConfigMap, so its
    /// status checks are about certificates.
    Certificates,
}

/// Whether each need is in scope now, and the reason given when a test is skipped for it.
pub(crate) const SCOPE: &[(Need, bool, &str)] = &[
    (
        Need::KubernetesObjects,
        false,
        "not applicable standalone: checks Kubernetes objects the implementation would create",
    ),
    (
        Need::Grpc,
        false,
        "needs gRPC (client and echo not in this runner yet)",
    ),
    (Need::TlsRoute, false, "TLSRoute is not in scope yet"),
    (
        Need::TlsClient,
        false,
        "needs TLS requests (HTTPS client not in this runner yet)",
    ),
    (
        Need::Certificates,
        false,
        "certificate-dependent status checks (TLS) are not in scope yet",
    ),
];

/// Features the gateway claims (upstream's SupportedFeatures), for the tests upstream skips when
/// one is claimed (`skip_if_supported`): such tests do not apply, whatever the scope.
pub(crate) const CLAIMED_FEATURES: &[&str] = &["TLSRouteModeMixed", "TLSRouteModeTerminate"];

/// Why a test does not apply to this gateway at all, if it does not.
pub(crate) fn not_applicable(test: &Test) -> Option<String> {
    let claimed: Vec<&str> = test
        .skip_if_supported
        .iter()
        .map(String::as_str)
        .filter(|f| CLAIMED_FEATURES.contains(f))
        .collect();
    (!claimed.is_empty()).then(|| {
        format!(
            "does not apply: upstream skips it when {} is supported",
            claimed.join(", ")
        )
    })
}

/// What a test needs, in [`SCOPE`] order.
pub(crate) fn needs(test: &Test, suite: &Suite, own_docs: &[Value]) -> Vec<Need> {
    let mut out = Vec::new();
    if test.standalone_applicable == Some(false) {
        out.push(Need::KubernetesObjects);
    }
    let feature = |f: &str| test.features.iter().any(|x| x == f);
    if test.route_kind == "GRPCRoute"
        || feature("GRPCRoute")
        || test
            .all_cases()
            .any(|c| c.request.protocol.as_deref() == Some("grpc"))
    {
        out.push(Need::Grpc);
    }
    if test.route_kind == "TLSRoute" || feature("TLSRoute") {
        out.push(Need::TlsRoute);
    }
    if test
        .all_cases()
        .any(|c| matches!(c.request.scheme.as_str(), "https" | "tls"))
    {
        out.push(Need::TlsClient);
    }
    let generated: HashSet<&str> = suite
        .generated_secrets
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    if own_docs.iter().any(|d| refers_to(d, &generated)) {
        out.push(Need::Certificates);
    }
    out
}

/// Whether an object holds a reference (`{kind?: Secret|ConfigMap, name}`, outside metadata) to
/// one of `names`.
fn refers_to(v: &Value, names: &HashSet<&str>) -> bool {
    match v {
        Value::Object(map) => {
            let is_ref = map
                .get("name")
                .and_then(Value::as_str)
                .is_some_and(|n| names.contains(n))
                && map
                    .get("kind")
                    .and_then(Value::as_str)
                    .is_none_or(|k| k == "Secret" || k == "ConfigMap")
                && !map.contains_key("apiVersion");
            is_ref
                || map
                    .iter()
                    .any(|(k, child)| k != "metadata" && refers_to(child, names))
        }
        Value::Array(items) => items.iter().any(|i| refers_to(i, names)),
        _ => false,
    }
}

/// Why a test is skipped, or `None` if it runs.
pub(crate) fn skip_reason(needs: &[Need], run_all: bool) -> Option<&'static str> {
    if run_all {
        return None;
    }
    needs.iter().find_map(|need| {
        SCOPE
            .iter()
            .find(|(n, _, _)| n == need)
            .and_then(|(_, in_scope, reason)| (!in_scope).then_some(*reason))
    })
}
