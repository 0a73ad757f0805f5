#!/usr/bin/env bash
# Smoke-test a control-plane-and-kwok cluster (AGENTMESH_NODE=0 up.sh; the real node has its own
# test, e2e/tests/node.rs):
#   /readyz, Ready nodes, DaemonSet pods Running, ServiceAccount token + TokenReview,
#   garbage collection of owned objects, CRD Established + CEL validation, and
#   admission webhooks (mutating + validating) served on https://127.0.0.1:PORT.
# Leaves no objects behind. Env: as up.sh; SMOKE_WEBHOOK_PORT (default 18443).
# shellcheck disable=SC2015  # pass() never fails
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.sh
source "$HERE/versions.sh"
# shellcheck source=lib.sh
source "$HERE/lib.sh"

export KUBECONFIG=$DIR/kubeconfig
[[ -f "$DIR/ready" ]] || { echo "smoke.sh: no ready cluster in $DIR (run up.sh)" >&2; exit 1; }
K=$BIN/kubectl
NS=agentmesh-smoke
WH_PORT=${SMOKE_WEBHOOK_PORT:-18443}
WH_PID=""
TMP=$(mktemp -d)
pass() { printf 'PASS  %s\n' "$*"; }
fail() { printf 'FAIL  %s\n' "$*" >&2; exit 1; }
cleanup() {
  [[ -n "$WH_PID" ]] && kill "$WH_PID" 2>/dev/null || true
  "$K" delete mutatingwebhookconfiguration agentmesh-smoke --ignore-not-found >/dev/null 2>&1 || true
  "$K" delete validatingwebhookconfiguration agentmesh-smoke --ignore-not-found >/dev/null 2>&1 || true
  "$K" delete crd widgets.smoke.agentmesh.io --ignore-not-found --wait=false >/dev/null 2>&1 || true
  "$K" delete ns "$NS" --ignore-not-found --wait=false >/dev/null 2>&1 || true
  rm -rf "$TMP"
}
trap cleanup EXIT
retry() { # seconds cmd...
  local t=$1; shift
  for _ in $(seq 1 $((t * 2))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.5; done
  return 1
}

"$K" delete ns "$NS" --ignore-not-found --wait=true >/dev/null

[[ "$("$K" get --raw /readyz)" == ok ]] && pass "/readyz ok" || fail "/readyz"

nodes=$("$K" get nodes -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' | grep -c True || true)
((nodes > 0)) && pass "$nodes node(s) Ready" || fail "no Ready nodes"

"$K" create ns "$NS" >/dev/null
"$K" apply -f - >/dev/null <<EOF
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: probe, namespace: $NS}
spec:
  selector: {matchLabels: {app: probe}}
  template:
    metadata: {labels: {app: probe}}
    spec:
      hostNetwork: true
      containers:
      - {name: probe, image: example.invalid/probe:1, securityContext: {privileged: true}}
EOF
ds_running() { [[ $("$K" -n "$NS" get pods -l app=probe --field-selector=status.phase=Running -o name | wc -l) -eq $nodes ]]; }
retry 60 ds_running && pass "DaemonSet: $nodes pod(s) Running" || fail "DaemonSet pods not Running: $("$K" -n "$NS" get pods -o wide)"

"$K" -n "$NS" create serviceaccount agent >/dev/null
token=$("$K" -n "$NS" create token agent --duration=10m)
"$K" create -o jsonpath='{.status.authenticated} {.status.user.username}' -f - >"$TMP/tr" <<EOF
apiVersion: authentication.k8s.io/v1
kind: TokenReview
spec: {token: "$token"}
EOF
[[ "$(cat "$TMP/tr")" == "true system:serviceaccount:$NS:agent" ]] \
  && pass "create token + TokenReview: $(cat "$TMP/tr")" || fail "TokenReview: $(cat "$TMP/tr")"

"$K" -n "$NS" create configmap owner >/dev/null
uid=$("$K" -n "$NS" get configmap owner -o jsonpath='{.metadata.uid}')
"$K" apply -f - >/dev/null <<EOF
apiVersion: v1
kind: ConfigMap
metadata:
  name: child
  namespace: $NS
  ownerReferences: [{apiVersion: v1, kind: ConfigMap, name: owner, uid: "$uid"}]
EOF
"$K" -n "$NS" delete configmap owner >/dev/null
child_gone() { ! "$K" -n "$NS" get configmap child >/dev/null 2>&1; }
retry 30 child_gone && pass "garbage collector removed owned object" || fail "GC: child still present"

"$K" apply -f - >/dev/null <<'EOF'
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.smoke.agentmesh.io}
spec:
  group: smoke.agentmesh.io
  names: {kind: Widget, plural: widgets, singular: widget}
  scope: Namespaced
  versions:
  - name: v1alpha1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties: {size: {type: integer}}
            x-kubernetes-validations: [{rule: "self.size <= 10", message: "size too big"}]
EOF
"$K" wait --for=condition=Established crd/widgets.smoke.agentmesh.io --timeout=30s >/dev/null \
  && pass "CRD Established" || fail "CRD not Established"
printf 'apiVersion: smoke.agentmesh.io/v1alpha1\nkind: Widget\nmetadata: {name: big, namespace: %s}\nspec: {size: 30}\n' "$NS" \
  | "$K" apply -f - >/dev/null 2>"$TMP/cel" && fail "CEL rule not enforced"
grep -q "size too big" "$TMP/cel" && pass "CRD CEL validation enforced" || fail "CEL: $(cat "$TMP/cel")"

# --- admission webhooks on 127.0.0.1 (needs python3 and the cluster CA key from up.sh)
if command -v python3 >/dev/null 2>&1; then
  printf '%s\n' "basicConstraints=CA:FALSE" "extendedKeyUsage=serverAuth" "subjectAltName=IP:127.0.0.1,DNS:localhost" >"$TMP/ext"
  openssl req -new -newkey rsa:2048 -nodes -keyout "$TMP/wh.key" -out "$TMP/wh.csr" -subj "/CN=webhook" 2>/dev/null
  openssl x509 -req -in "$TMP/wh.csr" -CA "$DIR/pki/ca.crt" -CAkey "$DIR/pki/ca.key" -CAcreateserial \
    -CAserial "$TMP/ca.srl" -days 1 -extfile "$TMP/ext" -out "$TMP/wh.crt" 2>/dev/null
  python3 "$HERE/webhook_echo.py" "$WH_PORT" "$TMP/wh.crt" "$TMP/wh.key" 2>"$TMP/webhook.log" &
  WH_PID=$!
  retry 10 curl -sk "https://127.0.0.1:$WH_PORT/" || { sleep 1; }
  ca=$(base64 -w0 <"$DIR/pki/ca.crt")
  "$K" label ns "$NS" agentmesh-inject=enabled >/dev/null
  "$K" apply -f - >/dev/null <<EOF
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata: {name: agentmesh-smoke}
webhooks:
- name: inject.smoke.agentmesh.io
  clientConfig: {url: "https://127.0.0.1:$WH_PORT/mutate", caBundle: "$ca"}
  rules: [{operations: [CREATE], apiGroups: [""], apiVersions: [v1], resources: [pods]}]
  namespaceSelector: {matchLabels: {agentmesh-inject: enabled}}
  sideEffects: None
  admissionReviewVersions: [v1]
  failurePolicy: Fail
  timeoutSeconds: 5
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingWebhookConfiguration
metadata: {name: agentmesh-smoke}
webhooks:
- name: deny.smoke.agentmesh.io
  clientConfig: {url: "https://127.0.0.1:$WH_PORT/validate", caBundle: "$ca"}
  rules: [{operations: [CREATE], apiGroups: [""], apiVersions: [v1], resources: [configmaps]}]
  namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: $NS}}
  sideEffects: None
  admissionReviewVersions: [v1]
  failurePolicy: Fail
  timeoutSeconds: 5
EOF
  # webhook configurations take a moment to reach the admission plugin
  deny_works() { ! "$K" -n "$NS" create configmap deny-me 2>"$TMP/deny" && grep -q "denied by webhook_echo" "$TMP/deny"; }
  retry 20 deny_works && pass "validating webhook at https://127.0.0.1:$WH_PORT denied a request" \
    || fail "validating webhook: $(cat "$TMP/deny")"
  "$K" -n "$NS" run agent --image=example.invalid/agent:1 >/dev/null
  containers=$("$K" -n "$NS" get pod agent -o jsonpath='{.spec.containers[*].name}')
  [[ "$containers" == "agent injected-sidecar" ]] \
    && pass "mutating webhook injected a container: $containers" || fail "mutating webhook: containers=$containers"
  pod_ready() { [[ "$("$K" -n "$NS" get pod agent -o jsonpath='{.status.phase} {.status.containerStatuses[*].ready}')" == "Running true true" ]]; }
  retry 30 pod_ready && pass "injected pod Running with 2/2 containers ready (kwok)" \
    || fail "injected pod: $("$K" -n "$NS" get pod agent -o wide)"
else
  echo "SKIP  webhooks (python3 not found)"
fi
echo "smoke: all checks passed"
