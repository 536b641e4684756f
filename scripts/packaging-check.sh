#!/usr/bin/env bash
# Offline checks of the packaging artefacts that need no build (a few seconds once the
# tools are there):
#   - Prometheus rules: `promtool check rules` and their unit tests (`promtool test rules`);
#   - the Grafana dashboard is JSON (that every metric it queries is exported is
#     tests/observability.rs, against a live gxd);
#   - Kubernetes manifests: `kubernetes-validate --strict` against the schemas of
#     Kubernetes 1.29 (the oldest with native sidecars and ReadWriteOncePod GA) and of the
#     tool's newest, offline (the schemas ship with the tool);
#   - the systemd unit: `systemd-analyze security --offline` at most 2.0 (verify needs the
#     installed binary: scripts/package-test.sh does it);
#   - each check once more on a broken copy, which must fail (the checks can fail).
#
# Tools, installed when missing: Debian's `prometheus` (promtool) and `systemd`
# (systemd-analyze) by name; kubernetes-validate from PyPI into a venv at
# $GXD_KV_VENV (default /var/cache/gxd/venv-kubernetes-validate; ~1 min once).
set -euo pipefail
cd "$(dirname "$0")/.."
say() { echo "packaging-check: $*" >&2; }
failures=0
pass() { echo "packaging-check: ok   $*"; }
fail() { echo "packaging-check: FAIL $*"; failures=$((failures + 1)); }

need=()
command -v promtool >/dev/null || need+=(prometheus)
command -v systemd-analyze >/dev/null || need+=(systemd)
command -v python3 >/dev/null || need+=(python3 python3-venv)
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  say "installing ${need[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
venv=${GXD_KV_VENV:-/var/cache/gxd/venv-kubernetes-validate}
kv="$venv/bin/kubernetes-validate"
if [ ! -x "$kv" ]; then
  say "installing kubernetes-validate (PyPI) into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q kubernetes-validate
fi

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
obs=packaging/observability
k8s=packaging/kubernetes

# Prometheus rules and their unit tests.
if promtool check rules "$obs/gxd-alerts.rules.yml" >"$scratch/out" 2>&1; then
  pass "promtool check rules: $(grep -o 'SUCCESS.*' "$scratch/out")"
else fail "promtool check rules: $(cat "$scratch/out")"; fi
if (cd "$obs" && promtool test rules gxd-alerts.test.yml) >"$scratch/out" 2>&1; then
  pass "promtool test rules ($(grep -c 'alertname:' "$obs/gxd-alerts.test.yml") alert cases)"
else fail "promtool test rules: $(cat "$scratch/out")"; fi
sed 's/expr: up{job="gxd"} == 0/expr: up{job="gxd"} == = 0/' "$obs/gxd-alerts.rules.yml" >"$scratch/bad.yml"
if promtool check rules "$scratch/bad.yml" >/dev/null 2>&1; then fail "promtool accepted a broken rule"
else pass "promtool refuses a broken rule"; fi

# The dashboard.
if python3 -m json.tool "$obs/gxd-dashboard.json" >/dev/null; then
  pass "dashboard is JSON ($(grep -c '"expr"' "$obs/gxd-dashboard.json") queries)"
else fail "dashboard is not JSON"; fi

# Kubernetes manifests.
for v in 1.29.0 ""; do
  if "$kv" --strict --quiet ${v:+-k "$v"} "$k8s"/*.yaml >"$scratch/out" 2>&1; then
    pass "kubernetes-validate --strict ${v:-(newest: $("$kv" --version))}: $(cd "$k8s" && echo *.yaml)"
  else fail "kubernetes-validate ${v:-newest}: $(cat "$scratch/out")"; fi
done
sed 's/readinessProbe:/readinesProbe:/' "$k8s/gxd-statefulset.yaml" >"$scratch/bad.yaml"
if "$kv" --strict --quiet "$scratch/bad.yaml" >/dev/null 2>&1; then fail "kubernetes-validate accepted a misspelt field"
else pass "kubernetes-validate refuses a misspelt field"; fi

# The systemd unit's exposure.
score=$(systemd-analyze security --offline=yes packaging/systemd/gxd.service 2>/dev/null \
  | sed -n 's/.*Overall exposure level for gxd.service: \([0-9.]*\).*/\1/p')
if awk -v s="${score:-99}" 'BEGIN { exit !(s <= 2.0) }'; then
  pass "systemd-analyze security: exposure $score (limit 2.0)"
else fail "systemd-analyze security: exposure ${score:-?} (limit 2.0)"; fi
grep -v '^NoNewPrivileges=\|^ProtectSystem=\|^SystemCallFilter=\|^CapabilityBoundingSet=' \
  packaging/systemd/gxd.service >"$scratch/gxd.service"
bad=$(systemd-analyze security --offline=yes "$scratch/gxd.service" 2>/dev/null \
  | sed -n 's/.*Overall exposure level for gxd.service: \([0-9.]*\).*/\1/p')
if awk -v s="${bad:-0}" 'BEGIN { exit !(s > 2.0) }'; then
  pass "a unit without its hardening scores $bad (the limit can fail)"
else fail "a unit without its hardening still scores ${bad:-?}"; fi

# The chaincode service's unit, the same limit.
score=$(systemd-analyze security --offline=yes packaging/systemd/gxd-chaincode.service 2>/dev/null \
  | sed -n 's/.*Overall exposure level for gxd-chaincode.service: \([0-9.]*\).*/\1/p')
if awk -v s="${score:-99}" 'BEGIN { exit !(s <= 2.0) }'; then
  pass "systemd-analyze security gxd-chaincode.service: exposure $score (limit 2.0)"
else fail "systemd-analyze security gxd-chaincode.service: exposure ${score:-?} (limit 2.0)"; fi

if [ "$failures" -eq 0 ]; then echo "packaging-check: ok"; else echo "packaging-check: FAILED ($failures)"; exit 1; fi
