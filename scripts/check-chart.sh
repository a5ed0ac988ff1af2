#!/usr/bin/env bash
# Offline checks of the Kubernetes deployment (no cluster needed); exits non-zero on the first failing step.
#
#   1. helm lint --strict of charts/scout with every values profile
#   2. helm template of every profile (plus the traces dev overlay, with the traces packaged in libs/scout/data/traces)
#      into a temporary folder
#   3. kubernetes-validate --strict of every rendered manifest and of the plain manifests under k8s/, at the chart's
#      minimum Kubernetes version and the newest one kubernetes-validate knows
#   4. every ScaledObject (chart and k8s/keda) against KEDA's CRD schema
#      (tests/fixtures/schemas/keda.sh_scaledobjects.yaml)
#   5. skaffold.yaml (and each profile, patches applied) against tests/fixtures/schemas/skaffold-v4beta13.schema.json
#   6. values.schema.json rejects wrong values (a string replica count, an unknown key)
#
# Everything it reads is in the repository (a fresh clone needs nothing beside it). Environment: HELM (a helm binary;
# default: scripts/get-helm.sh fetches and caches one), PYTHON (default: .venv's). Needs kubernetes-validate,
# check-jsonschema and jsonschema in that Python.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-}"
if [[ -z "$PYTHON" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
bindir=$(dirname "$PYTHON")
kv="$bindir/kubernetes-validate"
cj="$bindir/check-jsonschema"
[[ -x "$kv" ]] || kv=kubernetes-validate
[[ -x "$cj" ]] || cj=check-jsonschema

HELM="${HELM:-$(scripts/get-helm.sh)}"
export HELM
schemas=tests/fixtures/schemas
traces=libs/scout/data/traces
for f in "$schemas/keda.sh_scaledobjects.yaml" "$schemas/skaffold-v4beta13.schema.json" \
  "$traces/lumos5g_vzw_mmwave5g_dl_driving_trace103.csv" "$traces/lumos5g_vzw_mmwave5g_dl_walking_trace100.csv"; do
  if [[ ! -f "$f" ]]; then
    echo "check-chart: $f is missing from the checkout" >&2
    exit 1
  fi
done

chart=charts/scout
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
# helm keeps its config and cache out of $HOME (CI may have a read-only or shared one).
export HELM_CONFIG_HOME="$out/helm/config" HELM_CACHE_HOME="$out/helm/cache" HELM_DATA_HOME="$out/helm/data"

kube_versions=(1.27.0 1.37.0)
declare -A profiles=(
  [default]=""
  [cpu]="-f $chart/values-cpu.yaml"
  [gpu]="-f $chart/values-gpu.yaml"
  [external]="-f $chart/values-external.yaml"
  [gpu-external]="-f $chart/values-gpu.yaml -f $chart/values-external.yaml"
  # The same files as skaffold's traces profile (skaffold.yaml); users add their own with --set-file traces.NAME=FILE.
  [cpu-traces]="-f $chart/values-cpu.yaml -f k8s/dev/values-traces.yaml
    --set-file traces.lumos_driving=$traces/lumos5g_vzw_mmwave5g_dl_driving_trace103.csv
    --set-file traces.lumos_walking=$traces/lumos5g_vzw_mmwave5g_dl_walking_trace100.csv"
)

step() { echo "== $*"; }

step "helm $("$HELM" version --short)"
for name in default cpu gpu external gpu-external cpu-traces; do
  # shellcheck disable=SC2086 # profile flags are deliberately word-split
  "$HELM" lint --strict "$chart" ${profiles[$name]} >"$out/lint-$name.log" 2>&1 || {
    cat "$out/lint-$name.log" >&2
    echo "check-chart: helm lint --strict failed for profile $name" >&2
    exit 1
  }
  # shellcheck disable=SC2086
  "$HELM" template scout "$chart" --namespace scout ${profiles[$name]} >"$out/$name.yaml"
  echo "lint + template ok: $name ($(grep -c '^kind:' "$out/$name.yaml") objects)"
done

step "kubernetes-validate --strict"
plain=(k8s/namespace.yaml k8s/external-credentials.example.yaml k8s/observability/namespace.yaml
  k8s/observability/otel-collector.yaml k8s/observability/jaeger.yaml)
for v in "${kube_versions[@]}"; do
  # ScaledObjects have no built-in schema: kubernetes-validate warns and skips them (step 4 checks them).
  "$kv" --strict --quiet -k "$v" "$out"/*.yaml "${plain[@]}"
  echo "kubernetes $v: ok"
done

step "KEDA ScaledObject against the CRD schema"
"$PYTHON" tests/chart/chartlib.py keda "$out"/*.yaml k8s/keda/scaledobject-example.yaml
if ! grep -q '^kind: ScaledObject' "$out/gpu.yaml"; then
  echo "check-chart: the gpu profile renders no ScaledObject" >&2
  exit 1
fi

step "skaffold.yaml against the v4beta13 schema"
"$cj" --schemafile "$schemas/skaffold-v4beta13.schema.json" skaffold.yaml
"$PYTHON" tests/chart/chartlib.py skaffold

step "values.schema.json rejects wrong values"
reject() {
  if "$HELM" template scout "$chart" "$@" >/dev/null 2>"$out/reject.log"; then
    echo "check-chart: helm template accepted $* (values.schema.json should reject it)" >&2
    exit 1
  fi
  grep -q "values don't meet the specifications of the schema" "$out/reject.log" || {
    cat "$out/reject.log" >&2
    echo "check-chart: $* failed, but not by values.schema.json" >&2
    exit 1
  }
  echo "rejected: $*"
}
reject --set-string cloudDecoder.replicas=2
reject --set cloudDecoder.replicaCount=2
reject --set unknownTopLevelKey=true
reject --set securityContext.runAsUser=0

echo "check-chart: all checks passed"
