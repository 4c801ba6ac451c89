# shellcheck shell=bash
# Gateway API manifests for the scripts that run the binary on a config directory (ci/, bench/):
# each function prints YAML documents, every one opening with `---`, so that their output can be
# written one after another into one file. Sourced from the repository root:
#
#   # shellcheck source=SCRIPTDIR/../scripts/lib/manifests.sh
#   source scripts/lib/manifests.sh
#   {
#     manifest_gateway_class
#     manifest_gateway bench gw "$(manifest_listener web 80 HTTP)"
#     manifest_http_route bench echo gw echo
#     manifest_backend bench echo "$echo_port"
#   } >"$work/config/gateway.yaml"

# The GatewayClass `portcullis`, for the controller name the binary answers to by default.
manifest_gateway_class() {
  cat <<YAML
---
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: portcullis}
spec: {controllerName: portcullis.dev/gateway-controller}
YAML
}

# `manifest_head API_VERSION KIND NAMESPACE NAME`: the lines a namespaced object opens with.
manifest_head() {
  printf -- '---\napiVersion: %s\nkind: %s\nmetadata: {name: %s, namespace: %s}\n' "$1" "$2" "$4" "$3"
}

# `manifest_listener NAME PORT PROTOCOL`: one entry of a Gateway's listeners, on one line.
manifest_listener() {
  printf '{name: %s, port: %s, protocol: %s}\n' "$1" "$2" "$3"
}

# `manifest_https_listener NAME PORT SECRET [HOSTNAME]`: an HTTPS listener that terminates TLS
# with the certificate of Secret SECRET, in the Gateway's namespace. Without HOSTNAME it answers
# every name, and clients that send no SNI.
manifest_https_listener() {
  local hostname=""
  [ -z "${4:-}" ] || hostname=" hostname: $4,"
  printf '{name: %s, port: %s, protocol: HTTPS,%s tls: {mode: Terminate, certificateRefs: [{name: %s}]}}\n' \
    "$1" "$2" "$hostname" "$3"
}

# `manifest_gateway NAMESPACE NAME LISTENER...`: a Gateway of class portcullis with the listeners
# made by manifest_listener or manifest_https_listener.
manifest_gateway() {
  local listener
  manifest_head gateway.networking.k8s.io/v1 Gateway "$1" "$2"
  shift 2
  cat <<'YAML'
spec:
  gatewayClassName: portcullis
  listeners:
YAML
  for listener in "$@"; do
    printf '  - %s\n' "$listener"
  done
}

# `manifest_http_route NAMESPACE NAME GATEWAY SERVICE`: an HTTPRoute attached to every listener of
# GATEWAY that sends every request to port 80 of SERVICE.
manifest_http_route() {
  local gateway=$3 service=$4
  manifest_head gateway.networking.k8s.io/v1 HTTPRoute "$1" "$2"
  cat <<YAML
spec:
  parentRefs: [{name: $gateway}]
  rules: [{backendRefs: [{name: $service, port: 80}]}]
YAML
}

# `manifest_backend NAMESPACE SERVICE PORT`: a Service with port 80 (named http) and the
# EndpointSlice `SERVICE-1` that gives it one endpoint, 127.0.0.1:PORT.
manifest_backend() {
  local namespace=$1 service=$2 port=$3
  manifest_head v1 Service "$namespace" "$service"
  cat <<YAML
spec: {ports: [{name: http, port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: $service-1, namespace: $namespace, labels: {kubernetes.io/service-name: $service}}
addressType: IPv4
endpoints: [{addresses: [127.0.0.1]}]
ports: [{name: http, port: $port}]
YAML
}

# `manifest_tls_secret NAMESPACE NAME CERT KEY`: a kubernetes.io/tls Secret holding the PEM files
# CERT (the chain, leaf first) and KEY.
manifest_tls_secret() {
  local crt key
  crt=$(base64 -w0 "$3")
  key=$(base64 -w0 "$4")
  manifest_head v1 Secret "$1" "$2"
  printf 'type: kubernetes.io/tls\ndata: {tls.crt: %s, tls.key: %s}\n' "$crt" "$key"
}
