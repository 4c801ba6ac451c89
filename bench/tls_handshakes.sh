#!/usr/bin/env bash
# TLS handshakes per second, Portcullis beside nginx, on loopback.
#
# Both terminate TLS with the same certificates (RSA 2048 and ECDSA P-256, one port each) and
# proxy each request to the same `portcullis echo` backend over kept-alive upstream
# connections. `openssl s_time` measures, for TLS 1.2 and 1.3:
#   new    connections per second, each a full handshake plus one GET through the proxy;
#   reuse  connections per second, each resuming the first connection's session (TLS 1.2
#          session id or ticket, TLS 1.3 PSK) plus one GET; the share actually resumed is shown.
# CLIENTS s_time processes run side by side for RUN_SECONDS each; both servers get as many
# worker threads as there are cores. Loopback only; the runs take about 16 x RUN_SECONDS
# (under two minutes by default), after a release build of the binary if one is needed.
#
#   bench/tls_handshakes.sh [--binary PATH]      # RUN_SECONDS=4 CLIENTS=2 by default
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=SCRIPTDIR/../scripts/lib/manifests.sh
source scripts/lib/manifests.sh

RUN_SECONDS=${RUN_SECONDS:-4}
CLIENTS=${CLIENTS:-2}

binary=target/release/portcullis
if [ "${1:-}" = "--binary" ]; then
  binary=$2
else
  cargo build --release --locked --quiet
fi

need=()
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx)
command -v openssl >/dev/null || need+=(openssl)
command -v curl >/dev/null || need+=(curl)
if [ "${#need[@]}" -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing: ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
nginx=$(command -v nginx || echo /usr/sbin/nginx)

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

openssl req -x509 -newkey rsa:2048 -noenc -days 2 -subj /CN=bench.example \
  -addext subjectAltName=DNS:bench.example -keyout "$work/rsa.key" -out "$work/rsa.crt" 2>/dev/null
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -noenc -days 2 \
  -subj /CN=bench.example -addext subjectAltName=DNS:bench.example \
  -keyout "$work/ecdsa.key" -out "$work/ecdsa.crt" 2>/dev/null

echo_port=$(free_port)
admin_port=$(free_port)
declare -A port
for server in portcullis nginx; do
  for key in rsa ecdsa; do port[$server-$key]=$(free_port); done
done

"$binary" echo --listen "127.0.0.1:$echo_port" --name bench >"$work/echo.log" 2>&1 &
pids+=($!)

# Portcullis: one listener per certificate, without hostname (s_time sends no SNI).
mkdir "$work/config"
{
  manifest_gateway_class
  manifest_gateway bench gw "$(manifest_https_listener rsa 443 rsa)" \
    "$(manifest_https_listener ecdsa 8443 ecdsa)"
  manifest_http_route bench echo gw echo
  manifest_backend bench echo "$echo_port"
  manifest_tls_secret bench rsa "$work/rsa.crt" "$work/rsa.key"
  manifest_tls_secret bench ecdsa "$work/ecdsa.crt" "$work/ecdsa.key"
} >"$work/config/gateway.yaml"
"$binary" run --config-dir "$work/config" --admin-addr "127.0.0.1:$admin_port" \
  --address-pool 127.0.0.1 --port-map "443=${port[portcullis-rsa]},8443=${port[portcullis-ecdsa]}" \
  --access-log-sample 0 >"$work/portcullis.log" 2>&1 &
pids+=($!)

# nginx: the same two certificates, its usual session cache and tickets, the same backend.
mkdir -p "$work/nginx/logs"
nginx_server() {
  cat <<EOF
  server {
    listen 127.0.0.1:$1 ssl http2;
    ssl_certificate $work/$2.crt;
    ssl_certificate_key $work/$2.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:TLS:10m;
    location / {
      proxy_pass http://echo;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
      proxy_set_header X-Forwarded-For \$remote_addr;
      proxy_set_header X-Forwarded-Proto https;
    }
  }
EOF
}
cat >"$work/nginx/nginx.conf" <<EOF
worker_processes $(nproc);
pid $work/nginx/nginx.pid;
error_log $work/nginx/logs/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $work/nginx/body;
  proxy_temp_path $work/nginx/proxy;
  upstream echo { server 127.0.0.1:$echo_port; keepalive 64; }
$(nginx_server "${port[nginx-rsa]}" rsa)
$(nginx_server "${port[nginx-ecdsa]}" ecdsa)
}
EOF
"$nginx" -p "$work/nginx" -c "$work/nginx/nginx.conf" -g 'daemon off;' \
  >"$work/nginx/logs/stdout.log" 2>&1 &
pids+=($!)

# Both servers answer through the backend before anything is measured (at most 30 s).
deadline=$((SECONDS + 30))
for target in portcullis-rsa portcullis-ecdsa nginx-rsa nginx-ecdsa; do
  key=${target#*-}
  until [ "$(curl -s --noproxy '*' --max-time 2 -o /dev/null -w '%{http_code}' \
    --cacert "$work/$key.crt" --resolve "bench.example:${port[$target]}:127.0.0.1" \
    "https://bench.example:${port[$target]}/")" = 200 ]; do
    if [ $SECONDS -ge $deadline ]; then
      echo "$target did not answer within 30 s" >&2
      tail -n 20 "$work/portcullis.log" "$work/nginx/logs/error.log" >&2
      exit 1
    fi
    sleep 0.2
  done
done

# Runs CLIENTS s_time processes against a port; sets `rate` (connections/s) and `resumed` (%).
measure() {
  local target_port=$1 version=$2 mode=$3 i start end clients=() failed=0
  rm -f "$work"/s_time.*
  start=$(date +%s.%N)
  for i in $(seq 1 "$CLIENTS"); do
    timeout $((RUN_SECONDS + 20)) openssl s_time -connect "127.0.0.1:$target_port" \
      "-$mode" "-$version" -time "$RUN_SECONDS" -www / >"$work/s_time.$i" 2>&1 &
    clients+=($!)
  done
  for i in "${clients[@]}"; do wait "$i" || failed=1; done
  end=$(date +%s.%N)
  if [ "$failed" -ne 0 ]; then
    echo "s_time failed against port $target_port ($version $mode):" >&2
    tail -n 5 "$work"/s_time.* >&2
    exit 1
  fi
  read -r rate resumed < <(python3 - "$start" "$end" "$work"/s_time.* <<'PY'
import re, sys
start, end, files = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3:]
total = reused = new = 0
for path in files:
    text = open(path, errors="replace").read()
    m = re.search(r"(\d+) connections in [\d.]+ real seconds", text)
    total += int(m.group(1)) if m else 0
    # One mark per connection: "r" resumed, "*" full handshake (reuse mode only).
    marks = "".join(l.strip() for l in text.splitlines() if re.fullmatch(r"[r*]+", l.strip()))
    reused += marks.count("r")
    new += marks.count("*")
resumed = 100.0 * reused / (reused + new) if reused + new else 0.0
print(f"{total / (end - start):.0f} {resumed:.0f}")
PY
  )
}

printf '\nTLS connections per second, each with one GET through the proxy (%s clients, %s s each)\n' \
  "$CLIENTS" "$RUN_SECONDS"
printf '%-6s %-8s %-6s %12s %12s %8s %10s\n' key version mode portcullis nginx ratio resumed
for key in rsa ecdsa; do
  for version in tls1_2 tls1_3; do
    for mode in new reuse; do
      measure "${port[portcullis-$key]}" $version $mode
      ours=$rate ours_resumed=$resumed
      measure "${port[nginx-$key]}" $version $mode
      theirs=$rate theirs_resumed=$resumed
      ratio=$(python3 -c "print(f'{$ours / $theirs:.2f}' if $theirs else '-')")
      resumed="-"
      [ "$mode" = reuse ] && resumed="$ours_resumed%/$theirs_resumed%"
      printf '%-6s %-8s %-6s %12s %12s %8s %10s\n' \
        "$key" "$version" "$mode" "$ours" "$theirs" "$ratio" "$resumed"
    done
  done
done
echo "ratio = portcullis / nginx; resumed = share of connections that resumed (portcullis/nginx)"
echo "elapsed: ${SECONDS}s"
