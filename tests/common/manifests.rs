//! Gateway API manifests for the tests that run the binary on a config directory. Each function
//! returns YAML documents that open with `---`, so that pieces can be joined into one file, and
//! a test writes out in full only what is its own.

/// The GatewayClass `portcullis`, for the controller name the binary answers to by default.
pub(crate) fn gateway_class() -> String {
    "---\napiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\n\
     metadata: {name: portcullis}\nspec: {controllerName: portcullis.dev/gateway-controller}\n"
        .to_string()
}

/// One line of a Gateway's `listeners:` list.
pub(crate) fn listener(name: &str, port: u16, protocol: &str) -> String {
    format!("  - {{name: {name}, port: {port}, protocol: {protocol}}}\n")
}

/// A Gateway of class `portcullis`; `listeners` are lines made by [`listener`] (or of the same
/// shape).
pub(crate) fn gateway(namespace: &str, name: &str, listeners: &str) -> String {
    format!(
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\n\
         metadata: {{name: {name}, namespace: {namespace}}}\n\
         spec:\n  gatewayClassName: portcullis\n  listeners:\n{listeners}"
    )
}

/// An HTTPRoute attached to every listener of `gateway` that sends every request for
/// `hostnames` (any host when empty) to port 80 of `service`.
pub(crate) fn http_route(
    namespace: &str,
    name: &str,
    gateway: &str,
    hostnames: &[&str],
    service: &str,
) -> String {
    let hostnames = if hostnames.is_empty() {
        String::new()
    } else {
        format!("  hostnames: [{}]\n", hostnames.join(", "))
    };
    let rules = format!("  rules: [{{backendRefs: [{{name: {service}, port: 80}}]}}]\n");
    format!(
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
         metadata: {{name: {name}, namespace: {namespace}}}\n\
         spec:\n  parentRefs: [{{name: {gateway}}}]\n{hostnames}{rules}"
    )
}

/// A Service with port 80, named http, and no endpoints.
pub(crate) fn service(namespace: &str, name: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {namespace}}}\n\
         spec: {{ports: [{{name: http, port: 80}}]}}\n"
    )
}

/// The EndpointSlice `{service}-1`, which gives port http of `service` one endpoint:
/// 127.0.0.1:`port`.
pub(crate) fn endpoint_slice(namespace: &str, service: &str, port: u16) -> String {
    format!(
        "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: {service}-1, namespace: {namespace}, \
         labels: {{kubernetes.io/service-name: {service}}}}}\naddressType: IPv4\n\
         endpoints: [{{addresses: [127.0.0.1]}}]\nports: [{{name: http, port: {port}}}]\n"
    )
}

/// A [`service`] with its [`endpoint_slice`]: port 80 of `service` reaches 127.0.0.1:`port`.
pub(crate) fn backend(namespace: &str, service: &str, port: u16) -> String {
    self::service(namespace, service) + &endpoint_slice(namespace, service, port)
}
