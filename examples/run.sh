#!/usr/bin/env bash
# Runs the bundled example: three echo backends and the gateway in standalone mode.
# The Gateway's port 80 listener is served on 127.0.0.1:8080 (--port-offset 8000), so no root
# is needed. Try, in another terminal:
#   curl -s http://127.0.0.1:8080/api/users
#   curl -s http://127.0.0.1:8080/ -H 'x-canary: always'
#   curl -s http://127.0.0.1:9901/status
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps --build
# Where install-deps puts Rust when the machine had none.
export PATH="$HOME/.cargo/bin:$PATH"
# The commit the binary reports in portcullis_build_info, set alike in bench/run and
# examples/run.sh, so that neither rebuilds what the other built.
export PORTCULLIS_COMMIT="${PORTCULLIS_COMMIT:-$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)}"
cargo build --locked --release --bin portcullis
bin=target/release/portcullis
pids=()
# Everything started here stops with the script, however it ends: Ctrl-C, a kill of the script
# alone, or the gateway exiting. The gateway runs in the background so that the script, not
# the gateway, receives a signal sent to the script, and hands it on.
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
"$bin" echo --listen 127.0.0.1:9001 --name api & pids+=($!)
"$bin" echo --listen 127.0.0.1:9002 --name site & pids+=($!)
"$bin" echo --listen 127.0.0.1:9003 --name canary & pids+=($!)
echo "gateway: http://127.0.0.1:8080  admin: http://127.0.0.1:9901/status  (Ctrl-C stops all)"
"$bin" run --config-dir examples/standalone --port-offset 8000 --admin-addr 127.0.0.1:9901 &
pids+=($!)
wait "$!"
