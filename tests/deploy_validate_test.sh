#!/usr/bin/env bash
# deploy/ checked offline (issue #16 parts 3 and 5), no cluster and no Docker daemon needed:
#   * Kubernetes: `kubectl kustomize deploy/k8s` renders (on a copy, after make-secrets.sh made its
#     Secret files), and every rendered object passes deploy/validate/k8s.mjs (the Kubernetes API
#     schemas of npm kubernetes-models, the ServiceMonitor CRD's of
#     @kubernetes-models/prometheus-operator, and the objects' agreement with each other);
#   * Grafana: every deploy/grafana/dashboards/*.json against @grafana/schema's Dashboard type
#     (deploy/validate/dashboard.mjs);
#   * Compose: deploy/docker-compose.yml against the Compose Specification JSON schema (Compose v2's
#     format; deploy/validate/compose.mjs) and through Debian's docker-compose 1.29 `config`.
# Then each validator must reject a broken copy (a test that cannot fail proves nothing).
# The npm packages come from scripts/install_deps.sh (deploy/validate/node_modules).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
V="$ROOT/deploy/validate"
for tool in node kubectl docker-compose openssl; do
  command -v "$tool" > /dev/null || { echo "FAIL: $tool not found: run scripts/install_deps.sh"; exit 1; }
done
[ -d "$V/node_modules/kubernetes-models" ] \
  || { echo "FAIL: $V/node_modules missing: run scripts/install_deps.sh"; exit 1; }
WORK="$(mktemp -d /tmp/optd-deploy-validate.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT

passed=0
failed=0
ok() { echo "ok: $*"; passed=$((passed + 1)); }
bad() { echo "FAILED: $*"; failed=$((failed + 1)); }
# expect_pass NAME CMD...: CMD must exit 0.   expect_fail NAME PATTERN CMD...: CMD must exit non-zero
# and print PATTERN (so it fails for the planted reason, not another one).
expect_pass() {
  local name=$1; shift
  if "$@" > "$WORK/out" 2>&1; then ok "$name"; sed 's/^/    /' "$WORK/out"
  else bad "$name"; cat "$WORK/out"; fi
}
expect_fail() {
  local name=$1 pattern=$2; shift 2
  if "$@" > "$WORK/out" 2>&1; then bad "$name: accepted"; cat "$WORK/out"
  elif grep -q -- "$pattern" "$WORK/out"; then ok "$name: rejected ($(grep -m1 -- "$pattern" "$WORK/out" | cut -c1-110))"
  else bad "$name: rejected, but not for '$pattern'"; cat "$WORK/out"; fi
}

# Kubernetes.
kubectl version --client 2> /dev/null | tr "\n" " " && echo
cp -r "$ROOT/deploy/k8s" "$WORK/k8s"
rm -rf "$WORK/k8s/secrets"
bash "$WORK/k8s/make-secrets.sh" "$WORK/k8s/secrets" > /dev/null
# (stdout, not -o: Debian's kubectl 1.20 has no -o for kustomize)
render() { kubectl kustomize "$WORK/k8s" > "$WORK/all.yaml"; }
expect_pass "kubectl kustomize deploy/k8s" render
expect_pass "rendered objects valid" node "$V/k8s.mjs" "$WORK/all.yaml"
sed 's/^  replicas: 3$/  replicas: three/' "$WORK/all.yaml" > "$WORK/bad1.yaml"
expect_fail "StatefulSet replicas: three" "replicas must be integer" node "$V/k8s.mjs" "$WORK/bad1.yaml"
/usr/bin/python3 - "$WORK/all.yaml" "$WORK/bad2.yaml" "$WORK/bad3.yaml" "$WORK/bad4.yaml" <<'EOF'
import sys, yaml
docs = list(yaml.safe_load_all(open(sys.argv[1])))
def write(path, change):
    copy = [yaml.safe_load(yaml.safe_dump(d)) for d in docs]
    for d in copy:
        change(d)
    yaml.safe_dump_all(copy, open(path, "w"))
def monitor(d):
    if d["kind"] == "ServiceMonitor":
        d["spec"]["endpoints"] = "metrics"
def probe(d):
    if d["kind"] == "StatefulSet":
        c = d["spec"]["template"]["spec"]["containers"][0]
        c["livenessProbe"]["exec"]["command"][1] = "--server=127.0.0.1:9464"
def secret(d):
    if d["kind"] == "StatefulSet":
        d["spec"]["template"]["spec"]["volumes"][0]["secret"]["secretName"] = "optd-tls"
write(sys.argv[2], monitor)
write(sys.argv[3], probe)
write(sys.argv[4], secret)
EOF
expect_fail "ServiceMonitor endpoints not a list (CRD schema)" "endpoints must be array" \
  node "$V/k8s.mjs" "$WORK/bad2.yaml"
expect_fail "liveness probe on the metrics port" "livenessProbe" node "$V/k8s.mjs" "$WORK/bad3.yaml"
expect_fail "a Secret that is not rendered" "not rendered" node "$V/k8s.mjs" "$WORK/bad4.yaml"

# Grafana.
expect_pass "dashboards match @grafana/schema" node "$V/dashboard.mjs" "$ROOT"/deploy/grafana/dashboards/*.json
sed 's/"schemaVersion": \([0-9]*\)/"schemaVersion": "\1"/' "$ROOT/deploy/grafana/dashboards/optd.json" > "$WORK/bad-type.json"
expect_fail "dashboard schemaVersion a string" "not assignable to type 'number'" node "$V/dashboard.mjs" "$WORK/bad-type.json"
sed '0,/"type": "timeseries"/s//"type": "timeseries", "gridPosition": {}/' \
  "$ROOT/deploy/grafana/dashboards/optd.json" > "$WORK/bad-field.json"
expect_fail "dashboard panel with an unknown field" "gridPosition" node "$V/dashboard.mjs" "$WORK/bad-field.json"

# Compose.
expect_pass "compose file matches the Compose Specification" node "$V/compose.mjs" "$ROOT/deploy/docker-compose.yml"
expect_pass "docker-compose $(docker-compose version --short) config" \
  docker-compose -f "$ROOT/deploy/docker-compose.yml" config -q
sed 's/^    network_mode: host$/    network_mode: host\n    netwrk: host/' "$ROOT/deploy/docker-compose.yml" > "$WORK/bad-compose.yml"
expect_fail "compose service with an unknown key" "additionalProperty" node "$V/compose.mjs" "$WORK/bad-compose.yml"
{ echo "name: optd"; cat "$ROOT/deploy/docker-compose.yml"; } > "$WORK/bad-name.yml"
expect_fail "docker-compose 1.29 refuses a top-level name" "'name' does not match" \
  docker-compose -f "$WORK/bad-name.yml" config -q

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
