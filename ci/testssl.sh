#!/usr/bin/env bash
# Scans the gateway's HTTPS termination with testssl.sh, on loopback only: protocols, cipher
# categories, forward secrecy, the ciphers of each protocol, and the vulnerability checks. It
# fails if SSLv2/SSLv3/TLS 1.0/TLS 1.1 are offered, if TLS 1.2 or 1.3 is missing, if any cipher
# without AEAD or forward secrecy (or under 128 bits) is offered, if any check reports
# VULNERABLE or a HIGH/CRITICAL finding, or if the scan could not run a check.
#
# Two listeners are scanned, picked by SNI: one with an RSA 2048 certificate and one with an
# ECDSA P-256 certificate; a third, without hostname, serves clients that send no SNI. testssl.sh never leaves the machine: it is given the address
# (--ip), makes no DNS lookups (--nodns none) and does no CRL/OCSP fetching (--phone-out is
# off unless asked for).
#
#   ci/testssl.sh [--binary PATH]      # default: target/debug/portcullis, built if missing
#   ci/testssl.sh --evaluate FILE.json # only judge an existing testssl.sh JSON report
set -euo pipefail
report=""
[ "${1:-}" = "--evaluate" ] && report=$(realpath "$2")
cd "$(dirname "$0")/.."
# shellcheck source=SCRIPTDIR/../scripts/lib/manifests.sh
source scripts/lib/manifests.sh

SCAN_TIMEOUT=${TESTSSL_SCAN_TIMEOUT:-300}

# Judges one testssl.sh flat JSON report (--jsonfile); prints each problem, exits 1 on any.
evaluate() {
  python3 - "$1" <<'PY'
import json, sys

path = sys.argv[1]
entries = json.load(open(path))
by_id = {e["id"]: e for e in entries}
problems = []

def finding(id_):
    return by_id[id_]["finding"] if id_ in by_id else None

for id_ in ["SSLv2", "SSLv3", "TLS1", "TLS1_1"]:
    f = finding(id_)
    if f is None:
        problems.append(f"{id_}: not checked")
    elif not f.startswith("not offered"):
        problems.append(f"{id_} is offered: {f}")
for id_ in ["TLS1_2", "TLS1_3"]:
    f = finding(id_)
    if f is None or not f.startswith("offered"):
        problems.append(f"{id_} is not offered: {f}")

# Cipher categories: all of these are weak (or, for AVERAGE, CBC without AEAD).
for id_ in ["cipherlist_NULL", "cipherlist_aNULL", "cipherlist_EXPORT", "cipherlist_LOW",
            "cipherlist_3DES_IDEA", "cipherlist_AVERAGE"]:
    f = finding(id_)
    if f is None:
        problems.append(f"{id_}: not checked")
    elif not f.startswith("not offered"):
        problems.append(f"weak cipher category {id_} offered: {f}")

# Each offered cipher (-E): AEAD, authenticated forward secret key exchange, at least 128 bits.
ciphers = [e for e in entries if e["id"].startswith("cipher-")]
if not ciphers:
    problems.append("no per-protocol cipher list (-E) in the report")
for e in ciphers:
    # "TLS 1.2   xc02f   ECDHE-RSA-AES128-GCM-SHA256   ECDH 253   AESGCM   128   TLS_..."
    cols = e["finding"].split()
    name, kx, enc, bits = cols[3], cols[4], cols[6], cols[7]
    weak = (enc not in ("AESGCM", "ChaCha20", "AESCCM")
            or not kx.startswith(("ECDH", "DH")) or name.startswith(("AECDH", "ADH"))
            or not bits.isdigit() or int(bits) < 128)
    if weak:
        problems.append(f"weak cipher offered (not AEAD, no forward secrecy, anonymous "
                        f"or under 128 bits): {e['finding']}")

for id_ in ["heartbleed", "CCS", "ticketbleed", "ROBOT", "secure_renego",
            "secure_client_renego", "CRIME_TLS", "BREACH", "POODLE_SSL", "fallback_SCSV",
            "SWEET32", "FREAK", "DROWN", "LOGJAM", "BEAST", "LUCKY13", "RC4"]:
    if id_ not in by_id:
        problems.append(f"vulnerability check {id_} did not run")

for e in entries:
    if "VULNERABLE" in e["finding"] or e["severity"] in ("HIGH", "CRITICAL", "FATAL"):
        problems.append(f"{e['id']} [{e['severity']}]: {e['finding']}")
    # WARN: a check that could not be done (the local openssl having no GOST engine is the
    # one warning about the client, not the server).
    if e["id"] == "scanProblem" or (e["severity"] == "WARN" and e["id"] != "engine_problem"):
        problems.append(f"{e['id']} could not be checked: {e['finding']}")

for p in problems:
    print(f"  FAIL {p}")
offered = [e["finding"].split()[3] for e in ciphers]
print(f"  {path}: {len(entries)} findings, ciphers offered: {' '.join(offered) or '-'}; "
      f"{len(problems)} problem(s)")
sys.exit(1 if problems else 0)
PY
}

if [ -n "$report" ]; then
  evaluate "$report"
  exit $?
fi

binary=target/debug/portcullis
if [ "${1:-}" = "--binary" ]; then
  binary=$2
elif [ ! -x "$binary" ]; then
  cargo build --locked --quiet
fi

need=()
command -v testssl >/dev/null || command -v testssl.sh >/dev/null || need+=(testssl.sh)
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
testssl=$(command -v testssl || command -v testssl.sh)

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

# Certificates: RSA 2048 and ECDSA P-256, self-signed.
openssl req -x509 -newkey rsa:2048 -noenc -days 2 -subj /CN=rsa.example \
  -addext subjectAltName=DNS:rsa.example -keyout "$work/rsa.key" -out "$work/rsa.crt" 2>/dev/null
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -noenc -days 2 \
  -subj /CN=ecdsa.example -addext subjectAltName=DNS:ecdsa.example \
  -keyout "$work/ecdsa.key" -out "$work/ecdsa.crt" 2>/dev/null

echo_port=$(free_port)
admin_port=$(free_port)
https_port=$(free_port)
mkdir "$work/config"
{
  manifest_gateway_class
  # The third listener is for clients without SNI, such as testssl.sh's renegotiation check.
  manifest_gateway testssl gw "$(manifest_https_listener rsa 443 rsa rsa.example)" \
    "$(manifest_https_listener ecdsa 443 ecdsa ecdsa.example)" \
    "$(manifest_https_listener default 443 rsa)"
  manifest_http_route testssl echo gw echo
  manifest_backend testssl echo "$echo_port"
  manifest_tls_secret testssl rsa "$work/rsa.crt" "$work/rsa.key"
  manifest_tls_secret testssl ecdsa "$work/ecdsa.crt" "$work/ecdsa.key"
} >"$work/config/gateway.yaml"

"$binary" echo --listen "127.0.0.1:$echo_port" --name testssl >"$work/echo.log" 2>&1 &
pids+=($!)
"$binary" run --config-dir "$work/config" --admin-addr "127.0.0.1:$admin_port" \
  --address-pool 127.0.0.1 --port-offset $((https_port - 443)) --access-log-sample 0 \
  >"$work/gateway.log" 2>&1 &
pids+=($!)

# Wait (at most 30 s) until both listeners answer through the echo backend.
deadline=$((SECONDS + 30))
for name in rsa ecdsa; do
  until [ "$(curl -s --noproxy '*' --max-time 2 -o /dev/null -w '%{http_code}' \
    --resolve "$name.example:$https_port:127.0.0.1" --cacert "$work/$name.crt" \
    "https://$name.example:$https_port/")" = 200 ]; do
    if [ $SECONDS -ge $deadline ]; then
      echo "the gateway did not serve https://$name.example:$https_port/ within 30 s" >&2
      tail -n 40 "$work/gateway.log" >&2
      exit 1
    fi
    sleep 0.2
  done
done

failed=0
for name in rsa ecdsa; do
  echo "=== testssl.sh against $name.example (127.0.0.1:$https_port)"
  status=0
  timeout "$SCAN_TIMEOUT" "$testssl" --quiet --color 0 --warnings batch --nodns none \
    --ip 127.0.0.1 --connect-timeout 5 --openssl-timeout 10 \
    -p -s -f -E -U --jsonfile "$work/$name.json" "$name.example:$https_port" \
    >"$work/$name.txt" 2>&1 || status=$?
  grep -v -e '^$' -e 'No engine or GOST support' "$work/$name.txt" || true
  if [ "$status" -eq 124 ]; then
    echo "  FAIL testssl.sh did not finish within $SCAN_TIMEOUT s"
    failed=1
    continue
  elif [ "$status" -ge 242 ]; then
    echo "  FAIL testssl.sh stopped with error $status"
    failed=1
    continue
  fi
  echo "--- verdict for $name.example"
  evaluate "$work/$name.json" || failed=1
done

if [ "$failed" -ne 0 ]; then
  echo "testssl: FAILED" >&2
  exit 1
fi
echo "testssl: no old protocol, weak cipher or vulnerability found"
