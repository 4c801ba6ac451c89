#!/usr/bin/env bash
# gRPC unary calls through the gateway beside the same backend called directly, with h2load
# (cleartext HTTP/2, prior knowledge; each request a gRPC-framed empty message). Prints the
# median calls/second of each over ROUNDS alternating rounds and their ratio. Loopback only.
#
#   bench/grpc_unary.sh                 # 3 rounds of 20,000 calls each
#   ROUNDS=5 CALLS=50000 bench/grpc_unary.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=SCRIPTDIR/../scripts/lib/manifests.sh
source scripts/lib/manifests.sh
ROUNDS=${ROUNDS:-3}
CALLS=${CALLS:-20000}
scripts/install-deps
cargo build --locked --release --quiet --bin portcullis
bin=target/release/portcullis
work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

backend=$(free_port)
# A gRPC backend answering /bench.Echo/Unary with an empty message (raw bytes, no generated code).
python3 - "$backend" <<'PY' &
import sys, time, grpc
from concurrent import futures
server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
    "bench.Echo", {"Unary": grpc.unary_unary_rpc_method_handler(lambda req, ctx: b"")})])
server.add_insecure_port(f"127.0.0.1:{sys.argv[1]}")
server.start()
time.sleep(3600)
PY
pids+=($!)

listen=$(free_port)
admin=$(free_port)
{
  manifest_gateway_class
  manifest_gateway bench gw "$(manifest_listener web 80 HTTP)"
  cat <<YAML
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: echo, namespace: bench}
spec:
  parentRefs: [{name: gw}]
  rules: [{matches: [{method: {service: bench.Echo}}], backendRefs: [{name: echo, port: 80}]}]
YAML
  manifest_backend bench echo "$backend"
} >"$work/all.yaml"
"$bin" run --config-dir "$work" --admin-addr "127.0.0.1:$admin" --port-offset $((listen - 80)) \
  --access-log-sample 0 2>/dev/null &
pids+=($!)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$admin/readyz" >/dev/null && break; sleep 0.05; done
sleep 1
printf '\0\0\0\0\0' > "$work/frame"

calls() {
  h2load -n "$CALLS" -c 4 -m 16 -d "$work/frame" -H 'content-type: application/grpc' -H 'te: trailers' \
    "http://127.0.0.1:$1/bench.Echo/Unary" | awk '/^finished in/ {gsub(",", "", $4); print $4} /^requests:/ {ok=$8} END {}'
}
via=(); direct=()
for i in $(seq "$ROUNDS"); do
  via+=("$(calls "$listen")")
  direct+=("$(calls "$backend")")
  echo "round $i: through the gateway ${via[-1]} calls/s, direct ${direct[-1]} calls/s" >&2
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
m_via=$(median "${via[@]}")
m_direct=$(median "${direct[@]}")
echo "gRPC unary through the gateway: median ${m_via} calls/s"
echo "gRPC unary direct to the backend: median ${m_direct} calls/s"
awk -v a="$m_via" -v b="$m_direct" 'BEGIN {printf "gateway/direct ratio: %.3f\n", a / b}'
