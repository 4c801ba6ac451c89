#!/usr/bin/env bash
# Builds the binary that the image ships and shows that it needs nothing else:
#
#  1. The Dockerfile's build: `cargo auditable build`, release, fat LTO, one codegen unit,
#     stripped, for the static musl target, from a copy of exactly the files that .dockerignore
#     lets into the build context. The binary carries its dependency list (for image scanners).
#  2. `file` and `ldd` find no dynamic dependencies; its size is printed.
#  3. Copied alone into an empty directory, it runs there (chroot) as 65532:65532 with no
#     supplementary groups, no capabilities and no_new_privs: `--help`; then, with the CA bundle
#     beside it as in the image, standalone mode with --port-offset, and a request through it
#     reaches a backend that runs outside that root.
#  4. With the image's file capability (cap_net_bind_service=+ep) and the credentials a pod gets
#     (uid 65532, every capability but NET_BIND_SERVICE dropped from all sets, no_new_privs), in
#     a network namespace of its own, it serves a listener on port 80 itself. Without the file
#     capability, port 80 stays closed and /readyz says so (503).
#
# Needs root (setcap, chroot, namespaces). Installs what is missing (Debian packages, the Rust
# musl target). Idempotent; everything it starts is stopped on exit. All traffic is on loopback.
#
#   ci/static-binary.sh              # build, then run the checks
#   TARGET=... ci/static-binary.sh   # another x86_64 triple
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
# shellcheck source=SCRIPTDIR/../scripts/lib/manifests.sh
source scripts/lib/manifests.sh

step() { printf '\n== %s\n' "$*"; }
fail() {
  printf 'FAIL: %s\n' "$*" >&2
  if [ -n "${log:-}" ] && [ -f "$log" ]; then
    printf -- '--- last lines of %s\n' "$log" >&2
    tail -n 20 "$log" >&2
  fi
  exit 1
}

# --- what this script needs -------------------------------------------------------------------
need=()
command -v musl-gcc >/dev/null || need+=(musl-tools)
command -v cmake >/dev/null || need+=(cmake)
command -v file >/dev/null || need+=(file)
command -v readelf >/dev/null || need+=(binutils)
command -v curl >/dev/null || need+=(curl)
command -v setcap >/dev/null || need+=(libcap2-bin)
command -v setpriv >/dev/null || need+=(util-linux)
command -v ip >/dev/null || need+=(iproute2)
command -v python3 >/dev/null || need+=(python3)
ca_bundle=/etc/ssl/certs/ca-certificates.crt
[ -f "$ca_bundle" ] || need+=(ca-certificates)
if [ "${#need[@]}" -gt 0 ]; then
  echo "installing: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
[ "$(id -u)" -eq 0 ] || fail "run as root: chroot, setcap and network namespaces need it"

# --- 1. build ---------------------------------------------------------------------------------
target="${TARGET:-x86_64-unknown-linux-musl}"
rustflags=""
installed_targets=$(rustup target list --installed)
if ! grep -qx "$target" <<<"$installed_targets"; then
  if ! rustup target add "$target"; then
    # Without the musl standard library, a glibc build with a static C runtime shows the same
    # thing (no dynamic dependencies), though it is not the image's exact build.
    echo "rustup cannot add $target: building x86_64-unknown-linux-gnu with +crt-static instead"
    target=x86_64-unknown-linux-gnu
    rustflags="-C target-feature=+crt-static"
  fi
fi

command -v cargo-auditable >/dev/null || cargo install --locked cargo-auditable@0.7.7

# A target directory of its own: a different profile and target than the everyday builds, which
# it would otherwise lock and invalidate.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo/target/static}"
mkdir -p "$CARGO_TARGET_DIR"
context="$CARGO_TARGET_DIR/context"
step "build context: the paths .dockerignore lets in"
rm -rf "$context"
mkdir -p "$context"
first_rule=$(grep -v '^[[:space:]]*\(#\|$\)' .dockerignore | head -n 1)
[ "$first_rule" = "*" ] || fail ".dockerignore is expected to start with '*' and allow paths with '!'"
while read -r rule; do
  path="${rule#!}"
  [ -e "$path" ] || fail ".dockerignore allows $path, which does not exist"
  cp -a "$path" "$context/"
  echo "  $path"
done < <(grep '^!' .dockerignore)

# The commit the binary reports in portcullis_build_info, as the Dockerfile's REVISION gives it.
commit=$(git rev-parse --short=12 HEAD)
step "cargo auditable build --release --target $target (LTO, stripped, commit $commit)"
started=$SECONDS
(
  cd "$context"
  # The same profile settings as the Dockerfile: Cargo.toml's release profile, stripped.
  CARGO_PROFILE_RELEASE_STRIP=symbols \
    RUSTFLAGS="$rustflags" \
    PORTCULLIS_COMMIT="$commit" \
    cargo auditable build --locked --release --target "$target" --bin portcullis
)
echo "built in $((SECONDS - started)) s"
bin="$CARGO_TARGET_DIR/$target/release/portcullis"

# --- 2. static --------------------------------------------------------------------------------
step "no dynamic dependencies"
description=$(file -b "$bin")
echo "file: $description"
case "$description" in
  *"statically linked"* | *"static-pie linked"*) ;;
  *) fail "the binary is not statically linked" ;;
esac
ldd_out=$(ldd "$bin" 2>&1 || true)
echo "ldd: $ldd_out"
case "$ldd_out" in
  *"=>"* | *"ld-linux"*) fail "ldd lists shared libraries" ;;
  *"not a dynamic executable"* | *"statically linked"*) ;;
  *) fail "unexpected ldd output" ;;
esac
# The section list is read whole before it is searched: with pipefail, `readelf | grep -q` fails
# whenever grep stops at the match before readelf has written its last block (SIGPIPE).
sections=$(readelf -S "$bin")
grep -q '\.dep-v0' <<<"$sections" || fail "the binary carries no dependency list (.dep-v0)"
echo "dependency list: embedded (.dep-v0)"
size=$(stat -c %s "$bin")
echo "size: $size bytes ($((size / 1024 / 1024)) MiB)"

# --- scaffolding for the runs -----------------------------------------------------------------
work=$(mktemp -d)
# uid 65532 must reach the roots inside it.
chmod 711 "$work"
netns="portcullis-static-$$"
pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  ip netns delete "$netns" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# An empty root holding the binary alone, world-readable so that uid 65532 can run it.
make_root() {
  local root="$work/$1"
  mkdir -m 755 "$root"
  cp "$bin" "$root/portcullis"
  chmod 755 "$root/portcullis"
  echo "$root"
}

# The image's one other file. `portcullis run` needs it: Pingora loads the native CA roots when
# it starts its upstream TLS connector, and stops the process when the file is missing.
add_ca_bundle() {
  mkdir -p "$1/etc/ssl/certs"
  cp "$ca_bundle" "$1/etc/ssl/certs/ca-certificates.crt"
  chmod -R a+rX "$1/etc"
}

# A Gateway with an HTTP listener on port 80 and a route to a Service whose one endpoint is
# 127.0.0.1:$2, written into the root's /config.
write_config() {
  local config="$1/config" backend_port="$2"
  mkdir -m 755 "$config"
  {
    manifest_gateway_class
    cat <<'YAML'
---
apiVersion: v1
kind: Namespace
metadata: {name: static}
YAML
    manifest_gateway static web "$(manifest_listener http 80 HTTP)"
    manifest_http_route static site web site
    manifest_backend static site "$backend_port"
  } >"$config/gateway.yaml"
  chmod 644 "$config/gateway.yaml"
}

# A backend whose answer carries a token no other process on the machine would send.
token="portcullis-static-check-$$-$RANDOM"
mkdir -p "$work/www"
echo "$token" >"$work/www/index.html"

# `run_in [NETNS] CMD...`: CMD in the network namespace, or here when NETNS is "-".
run_in() {
  local ns="$1"
  shift
  if [ "$ns" = "-" ]; then
    "$@"
  else
    ip netns exec "$ns" "$@"
  fi
}

# Waits until the backend itself answers, so that a failure later is the gateway's.
wait_backend() {
  local ns="$1" url="$2" i
  for i in $(seq 1 100); do
    if [ "$(run_in "$ns" curl -fsS --max-time 2 "$url" 2>/dev/null)" = "$token" ]; then
      return 0
    fi
    sleep 0.1
  done
  fail "the backend at $url did not answer within 10 s"
}

wait_ready() {
  local ns="$1" admin="$2" pid="$3" i
  for i in $(seq 1 150); do
    kill -0 "$pid" 2>/dev/null || fail "the gateway exited before it was ready"
    if run_in "$ns" curl -fsS -o /dev/null "http://$admin/readyz" 2>/dev/null; then
      echo "ready after ~$((i / 5)) s"
      return 0
    fi
    sleep 0.2
  done
  fail "/readyz on $admin did not turn 200 within 30 s"
}

# Waits until /readyz answers 503 naming a socket it cannot bind (the gateway is up, and says
# why it is not ready).
wait_unready_for() {
  local ns="$1" admin="$2" pid="$3" socket="$4" i body
  for i in $(seq 1 150); do
    kill -0 "$pid" 2>/dev/null || fail "the gateway exited"
    body=$(run_in "$ns" curl -sS "http://$admin/readyz" 2>/dev/null || true)
    if [[ "$body" == *"cannot listen on $socket"* ]]; then
      echo "not ready, as it should not be: $body"
      return 0
    fi
    sleep 0.2
  done
  fail "/readyz on $admin never said it cannot listen on $socket (last answer: $body)"
}

# Asserts one line of /proc/PID/status, e.g. `expect_status PID Uid "65532 65532 65532 65532"`.
expect_status() {
  local pid="$1" field="$2" want="$3" got
  got=$(awk -v f="$field:" '$1 == f { $1 = ""; sub(/^[ \t]+/, ""); print }' "/proc/$pid/status")
  got=$(echo "$got" | tr -s '\t ' ' ')
  [ "$got" = "$want" ] || fail "$field of the gateway is '$got', expected '$want'"
  printf '  %-10s %s\n' "$field:" "$got"
}

expect_answer() {
  local ns="$1" url="$2" body
  body=$(run_in "$ns" curl -fsS --max-time 10 "$url") || fail "no answer from $url"
  [ "$body" = "$token" ] || fail "unexpected answer from $url: $body"
  echo "GET $url -> the backend's answer"
}

stop_gateway() {
  local pid="$1" status=0 i
  kill -TERM "$pid"
  for i in $(seq 1 125); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.2
  done
  wait "$pid" || status=$?
  [ "$status" -eq 0 ] || fail "the gateway exited with status $status after SIGTERM"
  echo "stopped cleanly on SIGTERM"
}

# --- 3. alone in an empty root, unprivileged --------------------------------------------------
# setpriv drops to 65532:65532 with no groups, no capabilities and no_new_privs; unshare then
# enters the empty root from a user namespace of its own (so that an unprivileged process may
# chroot), mapping 65532 to itself, and executes the binary, which gets no capability back.
# (An array, not a function: started in the background, a function would run in a subshell, and
# `$!` would name that shell instead of the gateway.)
jail=(
  setpriv --reuid 65532 --regid 65532 --clear-groups --inh-caps=-all --bounding-set=-all
  --no-new-privs -- unshare --user --map-user=65532 --map-group=65532 --root
)

step "alone in an empty root, as 65532:65532: portcullis --help"
root=$(make_root unprivileged)
ls -la "$root"
"${jail[@]}" "$root" -- /portcullis --help >"$work/help.txt"
grep -q '^Usage: portcullis' "$work/help.txt" || fail "--help printed no usage"
head -n 3 "$work/help.txt"

step "in an empty root with the CA bundle (the image's files), as 65532:65532: --port-offset"
add_ca_bundle "$root"
backend_port=$(free_port)
admin_port=$(free_port)
listener_port=$(free_port)
offset=$((listener_port - 80))
write_config "$root" "$backend_port"
python3 -m http.server --bind 127.0.0.1 --directory "$work/www" "$backend_port" \
  >"$work/backend.log" 2>&1 &
pids+=($!)
wait_backend - "http://127.0.0.1:$backend_port/"
log="$work/gateway.log"
"${jail[@]}" "$root" -- /portcullis run --config-dir /config --admin-addr "127.0.0.1:$admin_port" \
  --address-pool 127.0.0.1 --port-offset "$offset" >"$log" 2>&1 &
gateway=$!
pids+=("$gateway")
wait_ready - "127.0.0.1:$admin_port" "$gateway"
in_root=$(readlink "/proc/$gateway/root" || true)
[ "$in_root" = "$root" ] || fail "the gateway runs in '$in_root', not in the empty root"
echo "  root:      $root (the binary, the CA bundle and the config)"
expect_status "$gateway" Uid "65532 65532 65532 65532"
expect_status "$gateway" Gid "65532 65532 65532 65532"
expect_status "$gateway" Groups ""
expect_status "$gateway" CapPrm 0000000000000000
expect_status "$gateway" CapEff 0000000000000000
expect_status "$gateway" NoNewPrivs 1
expect_answer - "http://127.0.0.1:$listener_port/"
build_info=$(curl -fsS "http://127.0.0.1:$admin_port/metrics" | grep '^portcullis_build_info{' || true)
case "$build_info" in
  *"commit=\"$commit\""*) echo "  build info: $build_info" ;;
  *) fail "portcullis_build_info does not name commit $commit: '$build_info'" ;;
esac
stop_gateway "$gateway"

# --- 4. port 80 with the image's file capability, as a pod runs it ----------------------------
# The container runtime enters the root, keeps capabilities across the switch to uid 65532,
# leaves only the ones the pod adds (NET_BIND_SERVICE) in every set, sets no_new_privs and
# executes the binary; the file capability then raises nothing the process did not hold. This
# launcher does the same steps in the same order.
launcher=$(
  cat <<'EOF'
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
PR_CAPBSET_DROP, PR_SET_KEEPCAPS, PR_SET_NO_NEW_PRIVS = 24, 8, 38
CAP_NET_BIND_SERVICE = 10
def check(result, what):
    if result != 0:
        raise OSError(ctypes.get_errno(), what)
root, uid, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
os.chroot(root)
os.chdir("/")
last_cap = 63
for cap in range(last_cap + 1):
    if cap != CAP_NET_BIND_SERVICE and libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
        if ctypes.get_errno() != 22:  # EINVAL: beyond the kernel's last capability
            raise OSError(ctypes.get_errno(), "PR_CAPBSET_DROP")
check(libc.prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0), "PR_SET_KEEPCAPS")
os.setgroups([])
os.setresgid(uid, uid, uid)
os.setresuid(uid, uid, uid)
class Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]
class Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]
bit = 1 << CAP_NET_BIND_SERVICE
data = (Data * 2)(Data(bit, bit, 0), Data(0, 0, 0))
check(libc.capset(ctypes.byref(Header(0x20080522, 0)), data), "capset")
check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "PR_SET_NO_NEW_PRIVS")
os.execv(argv[0], argv)
EOF
)
step "port 80 in a network namespace of its own, with the file capability, as a pod runs it"
ip netns add "$netns"
ip -n "$netns" link set lo up
ip netns exec "$netns" python3 -m http.server --bind 127.0.0.1 --directory "$work/www" 8080 \
  >"$work/backend-netns.log" 2>&1 &
pids+=($!)
wait_backend "$netns" http://127.0.0.1:8080/

root=$(make_root capable)
add_ca_bundle "$root"
write_config "$root" 8080
setcap cap_net_bind_service=+ep "$root/portcullis"
getcap "$root/portcullis"
log="$work/gateway-80.log"
ip netns exec "$netns" python3 -c "$launcher" "$root" 65532 /portcullis run --config-dir /config \
  --admin-addr 127.0.0.1:9901 --address-pool 127.0.0.1 >"$log" 2>&1 &
gateway=$!
pids+=("$gateway")
wait_ready "$netns" 127.0.0.1:9901 "$gateway"
expect_status "$gateway" Uid "65532 65532 65532 65532"
expect_status "$gateway" Groups ""
expect_status "$gateway" CapPrm 0000000000000400
expect_status "$gateway" CapEff 0000000000000400
expect_status "$gateway" CapBnd 0000000000000400
expect_status "$gateway" NoNewPrivs 1
expect_answer "$netns" http://127.0.0.1:80/
stop_gateway "$gateway"

step "port 80 without the file capability: closed, and the gateway not ready"
root=$(make_root incapable)
add_ca_bundle "$root"
write_config "$root" 8080
log="$work/gateway-no-cap.log"
ip netns exec "$netns" python3 -c "$launcher" "$root" 65532 /portcullis run --config-dir /config \
  --admin-addr 127.0.0.1:9901 --address-pool 127.0.0.1 >"$log" 2>&1 &
gateway=$!
pids+=("$gateway")
# Readiness waits for every listener socket: a pod that cannot open its port is not ready.
wait_unready_for "$netns" 127.0.0.1:9901 "$gateway" 127.0.0.1:80
expect_status "$gateway" CapEff 0000000000000000
if run_in "$netns" curl -fsS --max-time 5 -o /dev/null http://127.0.0.1:80/ 2>/dev/null; then
  fail "port 80 answered without the capability"
fi
grep -qi 'permission denied' "$log" || fail "the gateway did not report the refused bind"
echo "port 80 refused: $(grep -m1 -io 'permission denied[^"]*' "$log" | head -c 100)"
stop_gateway "$gateway"

step "static binary checks passed ($target, $size bytes)"
