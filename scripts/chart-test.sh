#!/usr/bin/env bash
# make chart-test: the Helm charts and the plain manifests rendered from them, checked offline.
#
#   scripts/chart-test.sh            check everything, change nothing
#   UPDATE_GOLDEN=1 scripts/chart-test.sh
#                                    rewrite what is generated: the goldens, deploy/, the charts'
#                                    CRD copies and README tables (then review the diff)
#
# For each chart (charts/agentmesh, charts/meshlogic-agent):
#   - helm lint --strict;
#   - helm-unittest (charts/<chart>/tests/*_test.yaml);
#   - every scenario (charts/<chart>/tests/golden/<scenario>.values.yaml; its first line names
#     the release and namespace) rendered and compared with its golden <scenario>.yaml;
#   - kubeconform -strict on each rendering, against Kubernetes 1.34 and the CRD schemas (ours,
#     the Prometheus Operator's, cert-manager's);
#   - checkov on each rendering, with the skips of charts/<chart>/tests/checkov-skips.txt (each
#     one explained in the chart's README);
#   - values.yaml, values.schema.json and the README's values table in step (chart-docs.py).
# Then: charts/agentmesh/files/crds is crds/, and deploy/ is what the chart renders.
# The tools come from scripts/chart-tools.sh (built or downloaded once, cached by version).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
UPDATE="${UPDATE_GOLDEN:-0}"
eval "$(scripts/chart-tools.sh)"

failed=0
fail() { echo "chart-test: FAILED: $*" >&2; failed=1; }
step() { echo "chart-test: $*" >&2; }
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

# Compares a generated file with the committed one, or rewrites it with UPDATE_GOLDEN=1.
golden() {
  local generated="$1" committed="$2"
  if [[ "$UPDATE" == 1 ]]; then
    mkdir -p "$(dirname "$committed")"
    cp "$generated" "$committed"
  elif ! diff -u "$committed" "$generated" >"$WORK/diff" 2>&1; then
    head -n 60 "$WORK/diff" >&2
    fail "$committed differs from what is generated (UPDATE_GOLDEN=1 $0 rewrites it)"
  fi
}

# ------------------------------------------------------------------ the CRDs the chart carries
if [[ "$UPDATE" == 1 ]]; then
  rm -f charts/agentmesh/files/crds/*.yaml
  cp crds/*.yaml charts/agentmesh/files/crds/
elif ! diff -r crds charts/agentmesh/files/crds >"$WORK/diff"; then
  cat "$WORK/diff" >&2
  fail "charts/agentmesh/files/crds is not crds/ (make crds copies them)"
fi

# ------------------------------------------------------------------ versions and images in step
# The charts' appVersion is the workspace's version (the probe's tag), and their default images
# are the ones `make images` builds.
version="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)"
sidecar="$(sed -n 's/.*SIDECAR_IMAGE: &str = "\(.*\)";/\1/p' crates/api/src/names.rs)"
probe="$(sed -n 's/.*PROBE_IMAGE_REPOSITORY: &str = "\(.*\)";/\1/p' crates/api/src/names.rs)"
for chart in agentmesh meshlogic-agent; do
  grep -qx "appVersion: \"$version\"" "charts/$chart/Chart.yaml" || fail "charts/$chart/Chart.yaml: appVersion is not the workspace's $version"
done
"$HELM" template agentmesh charts/agentmesh >"$WORK/images.yaml"
grep -q "value: \"$sidecar\"" "$WORK/images.yaml" || fail "charts/agentmesh: image.sidecar is not $sidecar"
grep -q "image: agentmesh/server:${sidecar##*:}\$" "$WORK/images.yaml" || fail "charts/agentmesh: image.server is not agentmesh/server:${sidecar##*:}"
"$HELM" template meshlogic-agent charts/meshlogic-agent --set agent.customerId=x >"$WORK/images.yaml"
grep -q "repository: \"$probe\"" "$WORK/images.yaml" || fail "charts/meshlogic-agent: the image is not $probe"

# ------------------------------------------------------------------ each chart
for chart in agentmesh meshlogic-agent; do
  dir="charts/$chart"
  lint_values=()
  [[ "$chart" == meshlogic-agent ]] && lint_values=(--set agent.customerId=lint)
  step "$chart: helm lint --strict"
  "$HELM" lint --strict "$dir" "${lint_values[@]}" >"$WORK/lint" 2>&1 || { cat "$WORK/lint" >&2; fail "$chart: helm lint"; }

  step "$chart: helm-unittest"
  $HELM_UNITTEST --color=false "$dir" >"$WORK/unittest" 2>&1 || { cat "$WORK/unittest" >&2; fail "$chart: helm-unittest"; }
  grep -E '^(Charts|Test Suites|Tests):' "$WORK/unittest" | sed "s/^/chart-test: $chart: /" >&2 || true

  for values in "$dir"/tests/golden/*.values.yaml; do
    scenario="$(basename "$values" .values.yaml)"
    read -r release namespace < <(sed -n '1s/^# release: \([^,]*\), namespace: \([^ ]*\) .*/\1 \2/p' "$values")
    [[ -n "${release:-}" && -n "${namespace:-}" ]] || { fail "$values: first line must be '# release: R, namespace: N — ...'"; continue; }
    rendered="$WORK/$chart-$scenario.yaml"
    if ! "$HELM" template "$release" "$dir" --namespace "$namespace" -f "$values" >"$rendered" 2>"$WORK/err"; then
      cat "$WORK/err" >&2
      fail "$chart/$scenario: helm template"
      continue
    fi
    golden "$rendered" "$dir/tests/golden/$scenario.yaml"

    step "$chart/$scenario: kubeconform -strict"
    # shellcheck disable=SC2086 # KUBECONFORM_FLAGS is a list of flags
    "$KUBECONFORM" $KUBECONFORM_FLAGS -summary "$rendered" >"$WORK/kc" 2>&1 || { cat "$WORK/kc" >&2; fail "$chart/$scenario: kubeconform"; }
    tail -n1 "$WORK/kc" | sed "s/^/chart-test: $chart\/$scenario: /" >&2

    step "$chart/$scenario: checkov"
    mkdir -p "$WORK/checkov-$chart-$scenario" && cp "$rendered" "$WORK/checkov-$chart-$scenario/"
    skips="$(grep -oE '^CKV[A-Z0-9_]+' "$dir/tests/checkov-skips.txt" 2>/dev/null | paste -sd, - || true)"
    if ! "$CHECKOV" --directory "$WORK/checkov-$chart-$scenario" --framework kubernetes --quiet --compact \
        ${skips:+--skip-check "$skips"} >"$WORK/checkov" 2>&1; then
      cat "$WORK/checkov" >&2
      fail "$chart/$scenario: checkov (fix it, or add the check to $dir/tests/checkov-skips.txt with the reason)"
    fi
  done
done

# ------------------------------------------------------------------ what the operator makes
# The probe's DaemonSet, RBAC and Service are not in a chart: the operator makes them from a
# MeshLogicAgent. Its unit test `rendered` writes what it makes of the meshlogic-agent chart's
# goldens to crates/operator/tests/golden/probe/ (and fails when they drift); they get the
# same checks, with the meshlogic-agent chart's skips (e2e/tests/charts.rs checks what the
# operator made on the real node with them too).
probe_dir=crates/operator/tests/golden/probe
for rendered in "$probe_dir"/seed.yaml "$probe_dir"/all-keys.yaml; do
  scenario="$(basename "$rendered" .yaml)"
  step "operator/$scenario: kubeconform -strict"
  # shellcheck disable=SC2086 # KUBECONFORM_FLAGS is a list of flags
  "$KUBECONFORM" $KUBECONFORM_FLAGS -summary "$rendered" >"$WORK/kc" 2>&1 || { cat "$WORK/kc" >&2; fail "operator/$scenario: kubeconform"; }
  tail -n1 "$WORK/kc" | sed "s/^/chart-test: operator\/$scenario: /" >&2
  # all-keys turns every opt-in on (privileged, hostNetwork, extra capabilities...) on purpose:
  # checkov judges the defaults, the seed's.
  [[ "$scenario" == seed ]] || continue
  step "operator/$scenario: checkov"
  mkdir -p "$WORK/checkov-operator-$scenario" && cp "$rendered" "$WORK/checkov-operator-$scenario/"
  skips="$(grep -oE '^CKV[A-Z0-9_]+' charts/meshlogic-agent/tests/checkov-skips.txt | paste -sd, -)"
  if ! "$CHECKOV" --directory "$WORK/checkov-operator-$scenario" --framework kubernetes --quiet --compact \
      ${skips:+--skip-check "$skips"} >"$WORK/checkov" 2>&1; then
    cat "$WORK/checkov" >&2
    fail "operator/$scenario: checkov (fix it, or add the check to charts/meshlogic-agent/tests/checkov-skips.txt with the reason)"
  fi
done

step "values.yaml, values.schema.json and README tables"
if [[ "$UPDATE" == 1 ]]; then
  "$CHART_PYTHON" scripts/chart-docs.py charts/agentmesh charts/meshlogic-agent >&2
else
  "$CHART_PYTHON" scripts/chart-docs.py --check charts/agentmesh charts/meshlogic-agent || fail "chart READMEs or schemas"
fi

# ------------------------------------------------------------------ deploy/: rendered from the chart
namespace() {
  cat <<'NS'
apiVersion: v1
kind: Namespace
metadata:
  name: agentmesh
  labels:
    app.kubernetes.io/part-of: agentmesh
NS
}
# Plain manifests carry no Helm bookkeeping: no helm.sh/chart label, no managed-by: Helm.
plain() { grep -v -e '^ *helm.sh/chart: ' -e '^ *app.kubernetes.io/managed-by: Helm$' -e '^# Source: '; }
render() { "$HELM" template agentmesh charts/agentmesh --namespace agentmesh "$@" | plain; }
mkdir -p "$WORK/deploy/standalone"
{
  echo "# Generated from charts/agentmesh with its default values by scripts/chart-test.sh (UPDATE_GOLDEN=1"
  echo "# rewrites it; make chart-test fails when it drifts): the ClusterRoles of meshlogic-operator and of its probes, and the operator's Role in its own namespace (its only Secret rights)."
  render --show-only templates/clusterrole.yaml
} >"$WORK/deploy/operator-rbac.yaml"
{
  echo "# Generated from charts/agentmesh with its default values by scripts/chart-test.sh (UPDATE_GOLDEN=1"
  echo "# rewrites it; make chart-test fails when it drifts). The whole installation as plain manifests:"
  echo "#   kubectl apply -f crds/ -f deploy/agentmesh.yaml"
  echo "# Uninstall: kubectl delete -f deploy/agentmesh.yaml (the CRDs and your resources stay)."
  namespace
  echo "---"
  render --set crds.install=false
} >"$WORK/deploy/agentmesh.yaml"
# The deployment guide's standalone layout, file by file, where it maps to this product.
standalone=(--set replicaCount=3 --set autoscaling.enabled=true
  --set observability.serviceMonitor.enabled=true --set observability.prometheusRule.enabled=true)
{
  echo "# The deployment guide's namespace.yaml (generated by scripts/chart-test.sh)."
  namespace
} >"$WORK/deploy/standalone/namespace.yaml"
for pair in serviceaccount:serviceaccount configmap:configmap deployment:deployment service:service \
    hpa:hpa servicemonitor:servicemonitor prometheusrule:prometheusrule clusterrole:clusterrole \
    clusterrolebinding:clusterrolebinding pdb:poddisruptionbudget; do
  template="${pair%%:*}" file="${pair##*:}"
  {
    echo "# Generated from charts/agentmesh/templates/$template.yaml (replicaCount=3, autoscaling, ServiceMonitor and"
    echo "# PrometheusRule on) by scripts/chart-test.sh; make chart-test fails when it drifts."
    render "${standalone[@]}" --show-only "templates/$template.yaml"
  } >"$WORK/deploy/standalone/$file.yaml"
done
for file in "$WORK"/deploy/*.yaml "$WORK"/deploy/standalone/*.yaml; do
  golden "$file" "deploy/${file#"$WORK/deploy/"}"
done
step "deploy/: kubeconform -strict"
# shellcheck disable=SC2086
"$KUBECONFORM" $KUBECONFORM_FLAGS -summary "$WORK"/deploy/*.yaml "$WORK"/deploy/standalone/*.yaml >"$WORK/kc" 2>&1 ||
  { cat "$WORK/kc" >&2; fail "deploy/: kubeconform"; }

if [[ "$failed" != 0 ]]; then
  echo "chart-test: FAILED" >&2
  exit 1
fi
echo "chart-test: ok" >&2
