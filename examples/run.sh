#!/usr/bin/env bash
# Runs the bundled example: three echo backends and the gateway in standalone mode.
# The Gateway's port 80 listener is served on 127.0.0.1:8080 (--port-offset 8000), so no root
# is needed. Try, in another terminal:
#   curl -s http://127.0.0.1:8080/api/users
#   curl -s http://127.0.0.1:8080/ -H 'x-canary: always'
#   curl -s http://127.0.0.1:9901/status
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps
cargo build --locked --release --bin portcullis
bin=target/release/portcullis
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
"$bin" echo --listen 127.0.0.1:9001 --name api & pids+=($!)
"$bin" echo --listen 127.0.0.1:9002 --name site & pids+=($!)
"$bin" echo --listen 127.0.0.1:9003 --name canary & pids+=($!)
echo "gateway: http://127.0.0.1:8080  admin: http://127.0.0.1:9901/status"
"$bin" run --config-dir examples/standalone --port-offset 8000 --admin-addr 127.0.0.1:9901
