#!/usr/bin/env bash
# Start a throw-away local Kubernetes cluster for e2e tests and the demo, from binaries built
# by build.sh: etcd, kube-apiserver, kube-controller-manager, kube-scheduler, one real node
# (containerd + runc, the kubelet, kube-proxy and CoreDNS on a private bridge: node.sh says
# what that changes on the host, down.sh undoes it) and, when asked, kwok's fake nodes (pods
# bound to them go Running without a kubelet or container runtime: for scale tests).
#
# The control plane listens on 127.0.0.1, or with a real node on the node's bridge address
# ($NODE_IP, reachable from this host and its pods only). State (certs, etcd data, logs, pids, kubeconfig)
# lives in $AGENTMESH_CLUSTER_DIR (default ${AGENTMESH_CACHE:-$HOME/.cache/agentmesh}/cluster),
# which is wiped and recreated on every run. The admin kubeconfig is
#   $AGENTMESH_CLUSTER_DIR/kubeconfig
# On success the last line printed is "export KUBECONFIG=<that path>".
#
# Environment (all optional):
#   AGENTMESH_CACHE             cache root                    (~/.cache/agentmesh)
#   AGENTMESH_BIN_DIR           binaries                      ($AGENTMESH_CACHE/k8s/<ver>/bin)
#   AGENTMESH_CLUSTER_DIR       state dir (wiped!)            ($AGENTMESH_CACHE/cluster)
#   AGENTMESH_APISERVER_PORT    kube-apiserver https port     (6443)
#   AGENTMESH_ETCD_PORT         etcd client port              (23790)
#   AGENTMESH_ETCD_PEER_PORT    etcd peer port                (23800)
#   AGENTMESH_KCM_PORT          kube-controller-manager https (10257)
#   AGENTMESH_SCHEDULER_PORT    kube-scheduler https          (10259)
#   AGENTMESH_NODE=0            no real node (control plane + kwok only; needs no root)
#   AGENTMESH_KWOK_NODES        number of kwok fake nodes     (0 with a real node, else 2;
#                               AGENTMESH_NODES is the old name)
#   AGENTMESH_UP_TIMEOUT        seconds to wait for readiness (120)
#   AGENTMESH_AUDIT_POLICY      an audit policy file: the API server then writes its audit log
#                               to $AGENTMESH_CLUSTER_DIR/logs/audit.log (make bench-scale)
#   AGENTMESH_BUILD=0           don't call build.sh when binaries are missing
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.sh
source "$HERE/versions.sh"
# shellcheck source=lib.sh
source "$HERE/lib.sh"
trap 'die "up.sh failed at line $LINENO"' ERR
trap 'die "up.sh interrupted"' INT TERM

APISERVER_PORT=${AGENTMESH_APISERVER_PORT:-6443}
ETCD_PORT=${AGENTMESH_ETCD_PORT:-23790}
ETCD_PEER_PORT=${AGENTMESH_ETCD_PEER_PORT:-23800}
KCM_PORT=${AGENTMESH_KCM_PORT:-10257}
SCHEDULER_PORT=${AGENTMESH_SCHEDULER_PORT:-10259}
NODE=${AGENTMESH_NODE:-1}
if [[ $NODE == 1 ]]; then NODES=${AGENTMESH_KWOK_NODES:-${AGENTMESH_NODES:-0}}; else NODES=${AGENTMESH_KWOK_NODES:-${AGENTMESH_NODES:-2}}; fi
KWOK=${AGENTMESH_KWOK:-1}
[[ $NODES == 0 ]] && KWOK=0
TIMEOUT=${AGENTMESH_UP_TIMEOUT:-120}
SERVICE_CIDR=10.96.0.0/16
SERVICE_IP=10.96.0.1        # first IP of SERVICE_CIDR: the "kubernetes" Service
POD_CIDR=10.244.0.0/16

# ------------------------------------------------------------------ binaries
need_bins=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl)
[[ "$KWOK" == 1 ]] && need_bins+=(kwok)
[[ "$NODE" == 1 ]] && need_bins+=(kubelet kube-proxy containerd containerd-shim-runc-v2 ctr crictl coredns bridge host-local loopback)
if [[ "$NODE" == 1 && $(id -u) != 0 ]]; then
  echo "up.sh: a real node needs root (links, mounts, iptables); AGENTMESH_NODE=0 runs without one" >&2
  exit 1
fi
missing=0
for b in "${need_bins[@]}"; do [[ -x "$BIN/$b" ]] || missing=1; done
if [[ $missing == 1 ]]; then
  if [[ "${AGENTMESH_BUILD:-1}" == 1 ]]; then
    log "binaries missing in $BIN; running build.sh"
    "$HERE/build.sh"
  else
    die "binaries missing in $BIN (run e2e/cluster/build.sh)"
  fi
fi
KUBECTL=$BIN/kubectl

if ! command -v openssl >/dev/null 2>&1; then
  log "openssl not found; installing it with apt-get"
  if [[ $(id -u) == 0 ]]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl >/dev/null
  else
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl >/dev/null
  fi
fi

# ------------------------------------------------------------------ clean slate
stop_all   # stale processes of a previous run (pid files in $DIR), then wipe $DIR
wipe_dir
for p in "$APISERVER_PORT" "$ETCD_PORT" "$ETCD_PEER_PORT" "$KCM_PORT" "$SCHEDULER_PORT"; do
  if port_in_use "$p"; then
    die "port 127.0.0.1:$p is already in use (another cluster? set AGENTMESH_*_PORT): $(port_owner "$p")"
  fi
done
mkdir -p "$DIR"/{pki,etcd,logs,pids,config}
BIND=127.0.0.1
if [[ "$NODE" == 1 ]]; then
  # The host's state before the node changes it (down.sh restores it), then the bridge: the
  # API server listens on it so that pods reach it through the kubernetes Service.
  node_record_host
  node_network_up
  BIND=$NODE_IP
fi
chmod 700 "$DIR/etcd" "$DIR/pki"
touch "$DIR/$MARKER"
T0=$SECONDS

# ------------------------------------------------------------------ PKI
PKI=$DIR/pki
log "generating certificates in $PKI"
ossl() { openssl "$@" 2>>"$DIR/logs/openssl.log"; }
ossl req -x509 -newkey rsa:2048 -nodes -days 3650 -sha256 \
  -keyout "$PKI/ca.key" -out "$PKI/ca.crt" -subj "/CN=agentmesh-e2e-ca" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature"

# sign NAME SUBJ EXT-LINES...: key + cert signed by the CA
sign() {
  local name=$1 subj=$2; shift 2
  local ext="$PKI/$name.ext"
  printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" "$@" >"$ext"
  ossl req -new -newkey rsa:2048 -nodes -keyout "$PKI/$name.key" -out "$PKI/$name.csr" -subj "$subj"
  ossl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
    -days 3650 -sha256 -extfile "$ext" -out "$PKI/$name.crt"
  rm -f "$PKI/$name.csr" "$ext"
}
sign apiserver "/CN=kube-apiserver" "extendedKeyUsage=serverAuth" \
  "subjectAltName=DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:127.0.0.1,IP:$SERVICE_IP,IP:$BIND"
sign apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "extendedKeyUsage=clientAuth"
sign admin "/O=system:masters/CN=kubernetes-admin" "extendedKeyUsage=clientAuth"
sign controller-manager "/CN=system:kube-controller-manager" "extendedKeyUsage=clientAuth"
sign scheduler "/CN=system:kube-scheduler" "extendedKeyUsage=clientAuth"
# own_ca_and_client CA CA-CN CLIENT CLIENT-CN: a CA of its own ($PKI/CA.crt, .key) and a client
# certificate ($PKI/CLIENT.crt, .key) it signs.
own_ca_and_client() {
  local ca=$1 ca_cn=$2 client=$3 client_cn=$4
  ossl req -x509 -newkey rsa:2048 -nodes -days 3650 -sha256 \
    -keyout "$PKI/$ca.key" -out "$PKI/$ca.crt" -subj "/CN=$ca_cn" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature"
  ossl req -new -newkey rsa:2048 -nodes -keyout "$PKI/$client.key" -out "$PKI/$client.csr" -subj "/CN=$client_cn"
  printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" "extendedKeyUsage=clientAuth" >"$PKI/$client.ext"
  ossl x509 -req -in "$PKI/$client.csr" -CA "$PKI/$ca.crt" -CAkey "$PKI/$ca.key" \
    -CAcreateserial -days 3650 -sha256 -extfile "$PKI/$client.ext" -out "$PKI/$client.crt"
  rm -f "$PKI/$client.csr" "$PKI/$client.ext"
}
# front-proxy CA + client for the aggregation layer (requestheader authn)
own_ca_and_client front-proxy-ca agentmesh-e2e-front-proxy-ca front-proxy-client front-proxy-client
# The API server's client certificate for admission webhooks, from a CA of its own (the cluster
# CA signs kubelets and users, who must not pass for the API server): the operator requires it
# when MESHLOGIC_WEBHOOK_CLIENT_CA_FILE names webhook-client-ca.crt.
own_ca_and_client webhook-client-ca agentmesh-e2e-webhook-client-ca webhook-client kube-apiserver-webhook-client
# ServiceAccount token signing key pair
ossl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$PKI/sa.key"
ossl pkey -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub"
chmod 600 "$PKI"/*.key

SERVER=https://$BIND:$APISERVER_PORT
# kubeconfig FILE USER CERTNAME
write_kubeconfig() {
  local f=$1 user=$2 cert=$3
  "$KUBECTL" config --kubeconfig="$f" set-cluster agentmesh-e2e --server="$SERVER" \
    --certificate-authority="$PKI/ca.crt" --embed-certs=true >/dev/null
  "$KUBECTL" config --kubeconfig="$f" set-credentials "$user" \
    --client-certificate="$PKI/$cert.crt" --client-key="$PKI/$cert.key" --embed-certs=true >/dev/null
  "$KUBECTL" config --kubeconfig="$f" set-context agentmesh-e2e --cluster=agentmesh-e2e --user="$user" >/dev/null
  "$KUBECTL" config --kubeconfig="$f" use-context agentmesh-e2e >/dev/null
  chmod 600 "$f"
}
KUBECONFIG_ADMIN=$DIR/kubeconfig
write_kubeconfig "$KUBECONFIG_ADMIN" kubernetes-admin admin
write_kubeconfig "$DIR/config/controller-manager.kubeconfig" system:kube-controller-manager controller-manager
write_kubeconfig "$DIR/config/scheduler.kubeconfig" system:kube-scheduler scheduler

# ------------------------------------------------------------------ etcd
start etcd "$BIN/etcd" \
  --name=agentmesh-e2e \
  --data-dir="$DIR/etcd" \
  --listen-client-urls="http://127.0.0.1:$ETCD_PORT" \
  --advertise-client-urls="http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster="agentmesh-e2e=http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster-state=new \
  --unsafe-no-fsync=true \
  --log-level=warn
wait_for "etcd healthy" 30 "$BIN/etcdctl" --endpoints="http://127.0.0.1:$ETCD_PORT" endpoint health

# ------------------------------------------------------------------ kube-apiserver
# Admission webhooks get the client certificate above ('*': every webhook, by Service or URL).
cat >"$DIR/config/webhook-client.kubeconfig" <<EOF
apiVersion: v1
kind: Config
users:
- name: '*'
  user:
    client-certificate: $PKI/webhook-client.crt
    client-key: $PKI/webhook-client.key
EOF
cat >"$DIR/config/admission.yaml" <<EOF
apiVersion: apiserver.config.k8s.io/v1
kind: AdmissionConfiguration
plugins:
- name: MutatingAdmissionWebhook
  configuration:
    apiVersion: apiserver.config.k8s.io/v1
    kind: WebhookAdmissionConfiguration
    kubeConfigFile: $DIR/config/webhook-client.kubeconfig
- name: ValidatingAdmissionWebhook
  configuration:
    apiVersion: apiserver.config.k8s.io/v1
    kind: WebhookAdmissionConfiguration
    kubeConfigFile: $DIR/config/webhook-client.kubeconfig
EOF
AUDIT_FLAGS=()
if [[ -n "${AGENTMESH_AUDIT_POLICY:-}" ]]; then
  [[ -r "$AGENTMESH_AUDIT_POLICY" ]] || die "AGENTMESH_AUDIT_POLICY=$AGENTMESH_AUDIT_POLICY is not readable"
  cp "$AGENTMESH_AUDIT_POLICY" "$DIR/config/audit-policy.yaml"
  # The log is never rotated (lumberjack's size 0 means 100 MB, not unlimited): readers follow it
  # by offset.
  AUDIT_FLAGS=(--audit-policy-file="$DIR/config/audit-policy.yaml" --audit-log-path="$DIR/logs/audit.log"
    --audit-log-format=json --audit-log-maxsize=1000000 --audit-log-mode=blocking)
fi
start kube-apiserver "$BIN/kube-apiserver" \
  --bind-address="$BIND" \
  --advertise-address="$BIND" \
  --secure-port="$APISERVER_PORT" \
  --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
  --tls-cert-file="$PKI/apiserver.crt" \
  --tls-private-key-file="$PKI/apiserver.key" \
  --client-ca-file="$PKI/ca.crt" \
  --kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt" \
  --kubelet-client-key="$PKI/apiserver-kubelet-client.key" \
  --kubelet-preferred-address-types=InternalIP,Hostname \
  --requestheader-client-ca-file="$PKI/front-proxy-ca.crt" \
  --requestheader-allowed-names=front-proxy-client \
  --requestheader-extra-headers-prefix=X-Remote-Extra- \
  --requestheader-group-headers=X-Remote-Group \
  --requestheader-username-headers=X-Remote-User \
  --proxy-client-cert-file="$PKI/front-proxy-client.crt" \
  --proxy-client-key-file="$PKI/front-proxy-client.key" \
  --service-account-key-file="$PKI/sa.pub" \
  --service-account-signing-key-file="$PKI/sa.key" \
  --service-account-issuer=https://kubernetes.default.svc.cluster.local \
  --service-cluster-ip-range="$SERVICE_CIDR" \
  --endpoint-reconciler-type="$([[ "$NODE" == 1 ]] && echo lease || echo none)" \
  --enable-aggregator-routing=true \
  --authorization-mode=Node,RBAC \
  --allow-privileged=true \
  --enable-admission-plugins=NodeRestriction \
  --admission-control-config-file="$DIR/config/admission.yaml" \
  --profiling=false \
  "${AUDIT_FLAGS[@]}" \
  --v=1
wait_for "kube-apiserver /readyz" 90 "$KUBECTL" --kubeconfig="$KUBECONFIG_ADMIN" --request-timeout=5s get --raw /readyz

# ------------------------------------------------------------------ controller-manager
start kube-controller-manager "$BIN/kube-controller-manager" \
  --kubeconfig="$DIR/config/controller-manager.kubeconfig" \
  --authentication-kubeconfig="$DIR/config/controller-manager.kubeconfig" \
  --authorization-kubeconfig="$DIR/config/controller-manager.kubeconfig" \
  --bind-address=127.0.0.1 \
  --secure-port="$KCM_PORT" \
  --leader-elect=false \
  --controllers='*' \
  --use-service-account-credentials=true \
  --service-account-private-key-file="$PKI/sa.key" \
  --root-ca-file="$PKI/ca.crt" \
  --cluster-signing-cert-file="$PKI/ca.crt" \
  --cluster-signing-key-file="$PKI/ca.key" \
  --service-cluster-ip-range="$SERVICE_CIDR" \
  --cluster-cidr="$POD_CIDR" \
  --allocate-node-cidrs=false \
  --profiling=false \
  --v=1

# ------------------------------------------------------------------ scheduler
start kube-scheduler "$BIN/kube-scheduler" \
  --kubeconfig="$DIR/config/scheduler.kubeconfig" \
  --authentication-kubeconfig="$DIR/config/scheduler.kubeconfig" \
  --authorization-kubeconfig="$DIR/config/scheduler.kubeconfig" \
  --bind-address=127.0.0.1 \
  --secure-port="$SCHEDULER_PORT" \
  --leader-elect=false \
  --profiling=false \
  --v=1

# ------------------------------------------------------------------ the real node
if [[ "$NODE" == 1 ]]; then
  node_up
fi

# ------------------------------------------------------------------ kwok (fake nodes)
if [[ "$KWOK" == 1 ]]; then
  # kwok's own server (logs/exec/port-forward emulation) is not started: no --node-port
  # and no --server-address, so kwok opens no ports.
  start kwok "$BIN/kwok" \
    --kubeconfig="$KUBECONFIG_ADMIN" \
    --config="$BIN/kwok-stages.yaml" \
    --manage-all-nodes=false \
    --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
    --node-ip=127.0.0.1 \
    --cidr=10.244.0.1/16 \
    --node-lease-duration-seconds=40
  for i in $(seq 0 $((NODES - 1))); do
    cat <<EOF
apiVersion: v1
kind: Node
metadata:
  name: kwok-node-$i
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: "0"
  labels:
    kubernetes.io/arch: amd64
    kubernetes.io/hostname: kwok-node-$i
    kubernetes.io/os: linux
    kubernetes.io/role: agent
    node-role.kubernetes.io/agent: ""
    type: kwok
$(if [[ "$NODE" == 1 ]]; then cat <<TAINT
spec:
  # Beside a real node, only pods that ask for a fake node land here: everything else must
  # really run.
  taints:
    - {key: kwok.x-k8s.io/node, value: fake, effect: NoSchedule}
TAINT
fi)
---
EOF
  done >"$DIR/config/nodes.yaml"
  wait_for "node objects created" 30 "$KUBECTL" --kubeconfig="$KUBECONFIG_ADMIN" apply -f "$DIR/config/nodes.yaml"
fi

# ------------------------------------------------------------------ readiness
kc() { "$KUBECTL" --kubeconfig="$KUBECONFIG_ADMIN" --request-timeout=5s "$@"; }
healthz() { # port: /healthz is anonymous-readable on both components
  if command -v curl >/dev/null 2>&1; then
    curl -skf --max-time 5 "https://127.0.0.1:$1/healthz" >/dev/null
  else
    port_in_use "$1"
  fi
}
wait_for "controller-manager /healthz" 60 healthz "$KCM_PORT"
wait_for "scheduler /healthz" 60 healthz "$SCHEDULER_PORT"
wait_for "namespace default + serviceaccount default/default" "$TIMEOUT" kc get -n default serviceaccount default
wait_for "configmap default/kube-root-ca.crt" "$TIMEOUT" kc get -n default configmap kube-root-ca.crt
if [[ "$NODE" == 1 ]]; then
  node_services_up
fi
ALL_NODES=$((NODES + NODE))
if ((ALL_NODES > 0)); then
  wait_for "$ALL_NODES node(s) Ready" "$TIMEOUT" \
    bash -c "[[ \$('$KUBECTL' --kubeconfig='$KUBECONFIG_ADMIN' get nodes -o jsonpath='{range .items[*]}{.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}{end}' | grep -c True) -ge $ALL_NODES ]]"
fi
wait_for "kube-apiserver /readyz" 30 kc get --raw /readyz
check_alive

cat >"$DIR/env" <<EOF
# Written by e2e/cluster/up.sh
export KUBECONFIG=$KUBECONFIG_ADMIN
export AGENTMESH_CLUSTER_DIR=$DIR
export AGENTMESH_BIN_DIR=$BIN
export AGENTMESH_APISERVER_URL=$SERVER
export AGENTMESH_CLUSTER_CA=$PKI/ca.crt
export AGENTMESH_APISERVER_PORT=$APISERVER_PORT
export AGENTMESH_ETCD_PORT=$ETCD_PORT
export AGENTMESH_REAL_NODE=$([[ "$NODE" == 1 ]] && echo "$NODE_NAME")
export AGENTMESH_CONTAINERD_ADDRESS=$([[ "$NODE" == 1 ]] && echo "$CONTAINERD_SOCK")
EOF
touch "$DIR/ready"
log "cluster ready in $((SECONDS - T0))s: $SERVER (k8s $K8S_VERSION, etcd $ETCD_VERSION$([[ "$NODE" == 1 ]] && echo ", node $NODE_NAME: containerd $CONTAINERD_VERSION")$([[ "$KWOK" == 1 ]] && echo ", kwok $KWOK_VERSION, $NODES fake node(s)"))"
log "logs: $DIR/logs   kubectl: $KUBECTL   env: $DIR/env"
echo "export KUBECONFIG=$KUBECONFIG_ADMIN"
