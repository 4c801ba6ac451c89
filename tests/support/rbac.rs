//! The API access the gateway needs, as one table: `tests/manifests.rs` holds the RBAC of the
//! manifests and the chart to it, and the Kubernetes-mode tests hold every request the binary
//! makes to it, so that a grant the code needs cannot go missing from the manifests, nor one
//! it does not need be kept.

/// What the gateway may do anywhere in the cluster: (API group, resources, verbs).
///
/// Reads are `list` and `watch`; `get` only on the kinds whose status is written (a write
/// refused as a conflict reads the object again). Status is written by merge patch on the
/// `/status` subresource only. Events are recorded through `events.k8s.io`.
pub(crate) const CLUSTER_GRANTS: &[(&str, &[&str], &[&str])] = &[
    // `patch` to put the spec's gateway-exists finalizer on a class in use, and take it off.
    (
        "gateway.networking.k8s.io",
        &["gatewayclasses"],
        &["get", "list", "watch", "patch"],
    ),
    (
        "gateway.networking.k8s.io",
        &[
            "gateways",
            "httproutes",
            "grpcroutes",
            "tlsroutes",
            "backendtlspolicies",
        ],
        &["get", "list", "watch"],
    ),
    (
        "gateway.networking.k8s.io",
        &["referencegrants"],
        &["list", "watch"],
    ),
    (
        "gateway.networking.k8s.io",
        &[
            "gatewayclasses/status",
            "gateways/status",
            "httproutes/status",
            "grpcroutes/status",
            "tlsroutes/status",
            "backendtlspolicies/status",
        ],
        &["patch"],
    ),
    (
        "",
        &["services", "namespaces", "secrets", "configmaps"],
        &["list", "watch"],
    ),
    ("discovery.k8s.io", &["endpointslices"], &["list", "watch"]),
    ("events.k8s.io", &["events"], &["create", "patch"]),
];

/// What the gateway may do in its own namespace only: create its leader-election Lease (RBAC
/// cannot limit `create` by name). (API group, resource, verbs).
pub(crate) const OWN_NAMESPACE_GRANTS: &[(&str, &str, &[&str])] =
    &[("coordination.k8s.io", "leases", &["create"])];

/// What each workload may do to its own Lease, and only to its own: granted by name.
pub(crate) const OWN_LEASE_VERBS: &[&str] = &["get", "update"];

/// Whether the table lets a client do what one HTTP request to the API server does: `Ok`, or
/// what the request needed that the table does not grant. Discovery (`/api`, `/apis`, a group
/// or version's resource list, `/version`) is open to every authenticated client.
#[allow(dead_code)]
pub(crate) fn permits(method: &str, path: &str, watch: bool) -> Result<(), String> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match segments.as_slice() {
        ["api", "v1", rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (*group, rest),
        _ => return Ok(()),
    };
    let (namespaced, rest) = match rest {
        ["namespaces", _namespace, rest @ ..] if !rest.is_empty() => (true, rest),
        rest => (false, rest),
    };
    let (resource, name) = match rest {
        [] => return Ok(()),
        [resource] => (resource.to_string(), None),
        [resource, name] => (resource.to_string(), Some(*name)),
        [resource, name, sub] => (format!("{resource}/{sub}"), Some(*name)),
        _ => return Err(format!("{method} {path}: not a resource path")),
    };
    let verb = match (method, name) {
        ("GET", Some(_)) => "get",
        ("GET", None) if watch => "watch",
        ("GET", None) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", _) => "delete",
        _ => return Err(format!("{method} {path}: a method RBAC has no verb for")),
    };
    let cluster = CLUSTER_GRANTS.iter().any(|(g, resources, verbs)| {
        *g == group && resources.contains(&resource.as_str()) && verbs.contains(&verb)
    });
    let lease = group == "coordination.k8s.io" && resource == "leases" && namespaced;
    let own_namespace = lease
        && OWN_NAMESPACE_GRANTS
            .iter()
            .any(|(g, r, verbs)| *g == group && *r == resource && verbs.contains(&verb));
    let own_lease = lease && name.is_some() && OWN_LEASE_VERBS.contains(&verb);
    if cluster || own_namespace || own_lease {
        Ok(())
    } else {
        let group = if group.is_empty() { "core" } else { group };
        Err(format!(
            "{method} {path} needs {verb} on {resource} ({group})"
        ))
    }
}
