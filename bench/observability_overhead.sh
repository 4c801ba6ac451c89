#!/usr/bin/env bash
# What request metrics and access logs cost: the same keep-alive load through the gateway with
# both on (access log written to a file) and with both off, alternating rounds so that machine
# noise hits both alike. Prints the median requests/second of each and their ratio; the target
# is "on" within 5% of "off". Loopback only; every run is bounded by ROUND_SECONDS.
#
#   bench/observability_overhead.sh            # 5 rounds of 5 s each per mode
#   ROUNDS=3 ROUND_SECONDS=3 bench/observability_overhead.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-5}
ROUND_SECONDS=${ROUND_SECONDS:-5}
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
scripts/install-deps
cargo build --locked --release --quiet --bin portcullis
bin=target/release/portcullis
work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
echo_port=$(free_port)
taskset -c 1 "$bin" echo --listen "127.0.0.1:$echo_port" --name bench 2>/dev/null &
pids+=($!)
mkdir "$work/config"
sed "s/port: 9001/port: $echo_port/" examples/standalone/backends.yaml > "$work/config/backends.yaml"
cp examples/standalone/gateway.yaml examples/standalone/routes.yaml "$work/config/"

# run MODE: starts the gateway with or without metrics and logs, loads it, prints requests/s.
run() {
  local mode=$1 listen admin gw rps
  listen=$(free_port)
  admin=$(free_port)
  local flags=(--access-log-sample 1 --request-metrics true)
  [ "$mode" = off ] && flags=(--access-log-sample 0 --request-metrics false)
  taskset -c 0 "$bin" run --config-dir "$work/config" --admin-addr "127.0.0.1:$admin" \
    --port-offset $((listen - 80)) "${flags[@]}" > "$work/access-$mode.log" 2>/dev/null &
  gw=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$admin/readyz" >/dev/null && break; sleep 0.05; done
  rps=$(taskset -c 1 wrk -t1 -c32 -d"${ROUND_SECONDS}s" "http://127.0.0.1:$listen/api/bench" | awk '/Requests\/sec/ {print $2}')
  kill "$gw"; wait "$gw" 2>/dev/null || true
  echo "$rps"
}

on=(); off=()
for i in $(seq "$ROUNDS"); do
  on+=("$(run on)")
  off+=("$(run off)")
  echo "round $i: on ${on[-1]} req/s, off ${off[-1]} req/s" >&2
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
m_on=$(median "${on[@]}")
m_off=$(median "${off[@]}")
echo "metrics + access log on:  median ${m_on} req/s over ${ROUNDS} rounds"
echo "metrics + access log off: median ${m_off} req/s over ${ROUNDS} rounds"
awk -v a="$m_on" -v b="$m_off" 'BEGIN {printf "on/off throughput ratio: %.3f (target >= 0.95)\n", a / b}'
