# shellcheck shell=bash
# The local cluster's real node: a bridge with a private address, containerd + runc, the
# kubelet, kube-proxy and a cluster DNS server, all run as host processes by up.sh, and
# everything they change on the host undone by down.sh. Sourced after lib.sh.
#
# What it changes on the host while the cluster runs (and what node_down puts back):
#   - a bridge $NODE_BRIDGE with $NODE_IP/24; pods' veths are enslaved to it. IPv4 forwarding is
#     switched on for that bridge only (net.ipv4.conf.$NODE_BRIDGE.forwarding, gone with the
#     link; net.ipv4.ip_forward stays as it was), and a FORWARD rule drops anything the bridge
#     would forward to another interface: no traffic leaves the machine. Pods get no default
#     route, only routes to the Service range and the pod range.
#   - iptables: kube-proxy's KUBE-* chains, the kubelet's KUBE-FIREWALL and canaries, and the
#     AGENTMESH-NODE chain (every rule and chain that was not there before is removed).
#   - sysctls the kubelet sets (vm.overcommit_memory, kernel.panic, ...): recorded first,
#     restored after.
#   - mounts: bpffs on /sys/fs/bpf (when it was not mounted), pods' volumes and network
#     namespaces, containerd's snapshots; cgroups under kubepods/ in every hierarchy.
# The state (containerd's root, the kubelet's root, logs) lives under $DIR/node.

NODE_NAME=${AGENTMESH_NODE_NAME:-agentmesh-node}
NODE_BRIDGE=agentmesh0
NODE_CIDR=10.250.0.0/24
NODE_IP=10.250.0.1
CLUSTER_DNS=$NODE_IP
KUBELET_PORT=${AGENTMESH_KUBELET_PORT:-10250}
SANDBOX_IMAGE=agentmesh.local/pause:1.0
NODE_DIR=$DIR/node
CONTAINERD_SOCK=$NODE_DIR/run/containerd.sock
RUNC=${AGENTMESH_RUNC:-/usr/sbin/runc}
# The sysctls the kubelet sets (pkg/kubelet/cm/container_manager_linux.go, setupKernelTunables).
KUBELET_SYSCTLS=(vm/overcommit_memory vm/panic_on_oom kernel/panic kernel/panic_on_oops
  kernel/keys/root_maxkeys kernel/keys/root_maxbytes)

ctr_k8s() { "$BIN/ctr" --address "$CONTAINERD_SOCK" -n k8s.io "$@"; }
crictl_node() { "$BIN/crictl" --runtime-endpoint "unix://$CONTAINERD_SOCK" --image-endpoint "unix://$CONTAINERD_SOCK" --timeout 30s "$@"; }

# Record the host state node_up may change, once per cluster (restored by node_down).
node_record_host() {
  mkdir -p "$NODE_DIR/host"
  local s
  for s in "${KUBELET_SYSCTLS[@]}"; do
    printf '%s %s\n' "$s" "$(cat "/proc/sys/$s")"
  done >"$NODE_DIR/host/sysctls"
  if mountpoint -q /sys/fs/bpf; then echo no >"$NODE_DIR/host/bpffs-ours"; else echo yes >"$NODE_DIR/host/bpffs-ours"; fi
  if [[ -e /run/containerd ]]; then echo no >"$NODE_DIR/host/run-containerd-ours"; else echo yes >"$NODE_DIR/host/run-containerd-ours"; fi
  if [[ -e /run/netns ]]; then echo no >"$NODE_DIR/host/run-netns-ours"; else echo yes >"$NODE_DIR/host/run-netns-ours"; fi
  findmnt -no PROPAGATION /sys/fs/bpf >"$NODE_DIR/host/bpffs-propagation" 2>/dev/null || true
  local tool table
  for tool in iptables ip6tables; do
    for table in filter nat mangle raw; do
      "$tool" -w -t "$table" -S >"$NODE_DIR/host/$tool-$table.rules" 2>/dev/null || true
    done
  done
}

# Remove every iptables rule and chain that was not there when node_record_host ran: the
# node's own chain, kube-proxy's and the kubelet's (KUBE-FIREWALL, KUBE-KUBELET-CANARY, ...).
node_restore_iptables() {
  local tool table before rule chain
  for tool in iptables ip6tables; do
    for table in filter nat mangle raw; do
      before=$NODE_DIR/host/$tool-$table.rules
      [[ -f "$before" ]] || continue
      # Rules first (newest first), then the chains they jumped to.
      while read -r rule; do
        [[ -n "$rule" ]] || continue
        eval "\"$tool\" -w -t \"$table\" -D ${rule#-A }" 2>/dev/null || true
      done < <("$tool" -w -t "$table" -S 2>/dev/null | grep '^-A ' | grep -vxF -f "$before" | tac)
      while read -r chain; do
        [[ -n "$chain" ]] || continue
        "$tool" -w -t "$table" -F "$chain" 2>/dev/null || true
        "$tool" -w -t "$table" -X "$chain" 2>/dev/null || true
      done < <("$tool" -w -t "$table" -S 2>/dev/null | grep '^-N ' | grep -vxF -f "$before" | awk '{print $2}')
    done
  done
}

node_network_up() {
  if ip link show "$NODE_BRIDGE" >/dev/null 2>&1; then
    die "link $NODE_BRIDGE exists already (another local cluster? run e2e/cluster/down.sh)"
  fi
  ip link add "$NODE_BRIDGE" type bridge
  ip addr add "$NODE_IP/24" dev "$NODE_BRIDGE"
  ip link set "$NODE_BRIDGE" up
  # Service traffic to another pod is routed back out of the bridge: forwarding on this link
  # only, and nothing it forwards may leave through another interface.
  sysctl -qw "net.ipv4.conf.$NODE_BRIDGE.forwarding=1"
  iptables -w -N AGENTMESH-NODE
  iptables -w -A AGENTMESH-NODE -i "$NODE_BRIDGE" ! -o "$NODE_BRIDGE" -j DROP
  iptables -w -I FORWARD 1 -m comment --comment "agentmesh local cluster: pods stay on the node" -j AGENTMESH-NODE
  if ! mountpoint -q /sys/fs/bpf; then
    mount -t bpf bpf /sys/fs/bpf
  fi
  mount --make-shared /sys/fs/bpf
}

node_write_configs() {
  mkdir -p "$NODE_DIR"/{run,containerd,kubelet,cni/net.d,cni/ipam,pod-logs,config}
  cat >"$NODE_DIR/config/containerd.toml" <<EOF
# Written by e2e/cluster/up.sh
version = 3
root = "$NODE_DIR/containerd/root"
state = "$NODE_DIR/containerd/state"
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.blockfile", "io.containerd.snapshotter.v1.erofs",
  "io.containerd.nri.v1.nri"]

[grpc]
  address = "$CONTAINERD_SOCK"

[ttrpc]
  address = "$NODE_DIR/run/containerd.sock.ttrpc"

[plugins.'io.containerd.cri.v1.runtime']
  # This VM lacks CAP_SYS_RESOURCE: containers may not get a lower oom_score_adj than containerd.
  restrict_oom_score_adj = true
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = "$RUNC"
        SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["$BIN"]
    conf_dir = "$NODE_DIR/cni/net.d"

[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "$SANDBOX_IMAGE"

[plugins.'io.containerd.grpc.v1.cri']
  disable_tcp_service = true
EOF
  # No default route and no masquerading: pods reach the node, each other and Services.
  cat >"$NODE_DIR/cni/net.d/10-agentmesh.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "agentmesh",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$NODE_BRIDGE",
      "isGateway": false,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$NODE_DIR/cni/ipam",
        "ranges": [[{"subnet": "$NODE_CIDR", "gateway": "$NODE_IP"}]],
        "routes": [{"dst": "$SERVICE_CIDR", "gw": "$NODE_IP"}]
      }
    },
    {"type": "loopback"}
  ]
}
EOF
  cat >"$NODE_DIR/config/kubelet.yaml" <<EOF
# Written by e2e/cluster/up.sh
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: ${AGENTMESH_KUBELET_HEALTHZ_PORT:-10248}
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: Webhook}
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
clusterDNS: [$CLUSTER_DNS]
clusterDomain: cluster.local
resolvConf: /etc/resolv.conf
podLogsDir: $NODE_DIR/pod-logs
podCIDR: $NODE_CIDR
maxPods: 60
serializeImagePulls: false
imageGCHighThresholdPercent: 100
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
nodeStatusReportFrequency: 10s
nodeStatusUpdateFrequency: 5s
syncFrequency: 10s
fileCheckFrequency: 10s
registerNode: true
EOF
  cat >"$NODE_DIR/config/kube-proxy.yaml" <<EOF
# Written by e2e/cluster/up.sh. Every conntrack and sysctl knob kube-proxy would set is left
# alone (0 / false), so the host is as it was once it stops.
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $DIR/config/kube-proxy.kubeconfig}
hostnameOverride: $NODE_NAME
bindAddress: $NODE_IP
healthzBindAddress: 127.0.0.1:${AGENTMESH_KUBE_PROXY_HEALTHZ_PORT:-10256}
metricsBindAddress: 127.0.0.1:${AGENTMESH_KUBE_PROXY_METRICS_PORT:-10249}
mode: iptables
clusterCIDR: $NODE_CIDR
iptables: {masqueradeAll: true, localhostNodePorts: false, syncPeriod: 5s, minSyncPeriod: 0s}
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
nodePortAddresses: [$NODE_IP/32]
EOF
  cat >"$NODE_DIR/config/Corefile" <<EOF
cluster.local:53 {
    bind $NODE_IP
    errors
    kubernetes cluster.local in-addr.arpa {
        kubeconfig $DIR/config/coredns.kubeconfig agentmesh-e2e
        pods insecure
        ttl 5
    }
}
.:53 {
    bind $NODE_IP
    errors
    template ANY ANY {
        rcode NXDOMAIN
    }
}
EOF
}

# The sandbox image and the e2e suite's images (built here from e2e/images/*/Containerfile by
# scripts/images.sh e2e: a few seconds when nothing changed), then every image `make images`
# built. Nothing can be pulled: pods name these with imagePullPolicy Never or IfNotPresent.
node_load_images() {
  "$HERE/../../scripts/images.sh" e2e >/dev/null
  node_import_list "$CACHE/images/e2e-images.txt"
  node_import_list "${AGENTMESH_IMAGES_LIST:-$CACHE/images/images.txt}"
}

# Import the images of a list (a line per image: ARCHIVE REF DIGEST), when it exists.
node_import_list() {
  local list=$1 archive ref _digest
  [[ -s "$list" ]] || return 0
  while read -r archive ref _digest; do
    [[ -z "$archive" || "$archive" == \#* ]] && continue
    ctr_k8s images import "$archive" >/dev/null 2>"$DIR/logs/ctr-import.log" ||
      die "importing $archive: $(cat "$DIR/logs/ctr-import.log")"
    log "image $ref loaded"
  done <"$list"
}

# After node_record_host and node_network_up (before the API server, which listens on the
# bridge) and the control plane: containerd, the images, the kubelet.
node_up() {
  for b in containerd containerd-shim-runc-v2 ctr crictl kubelet kube-proxy coredns bridge host-local loopback; do
    [[ -x "$BIN/$b" ]] || die "$BIN/$b missing (run e2e/cluster/build.sh)"
  done
  [[ -x "$RUNC" ]] || die "runc not found at $RUNC (scripts/setup.sh installs Debian's runc)"
  node_write_configs

  sign "kubelet" "/O=system:nodes/CN=system:node:$NODE_NAME" "extendedKeyUsage=clientAuth"
  sign "kube-proxy" "/CN=system:kube-proxy" "extendedKeyUsage=clientAuth"
  sign "coredns" "/CN=agentmesh:coredns" "extendedKeyUsage=clientAuth"
  write_kubeconfig "$DIR/config/kubelet.kubeconfig" "system:node:$NODE_NAME" kubelet
  write_kubeconfig "$DIR/config/kube-proxy.kubeconfig" system:kube-proxy kube-proxy
  write_kubeconfig "$DIR/config/coredns.kubeconfig" agentmesh:coredns coredns

  # containerd finds its shim on PATH.
  PATH="$BIN:$PATH" start containerd "$BIN/containerd" --config "$NODE_DIR/config/containerd.toml" --log-level warn
  wait_for "containerd" 30 ctr_k8s version
  node_load_images

  start kubelet "$BIN/kubelet" \
    --config="$NODE_DIR/config/kubelet.yaml" \
    --kubeconfig="$DIR/config/kubelet.kubeconfig" \
    --root-dir="$NODE_DIR/kubelet" \
    --cert-dir="$NODE_DIR/kubelet/pki" \
    --hostname-override="$NODE_NAME" \
    --node-ip="$NODE_IP" \
    --node-labels="agentmesh.io/local-node=true" \
    --v=1
}

# After the API server is up: RBAC for the DNS server, then kube-proxy and DNS.
node_services_up() {
  kc apply -f - >/dev/null <<EOF
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "agentmesh:coredns"}
rules:
  - apiGroups: [""]
    resources: [services, endpoints, pods, namespaces]
    verbs: [list, watch]
  - apiGroups: [discovery.k8s.io]
    resources: [endpointslices]
    verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "agentmesh:coredns"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "agentmesh:coredns"}
subjects: [{kind: User, name: "agentmesh:coredns", apiGroup: rbac.authorization.k8s.io}]
EOF
  start kube-proxy "$BIN/kube-proxy" --config="$NODE_DIR/config/kube-proxy.yaml" --v=1
  start coredns "$BIN/coredns" -conf "$NODE_DIR/config/Corefile" -pidfile ""
}

# Stop and remove every pod sandbox (CNI DEL removes its veth and address), then the node's
# processes, then what they left on the host. Safe to run when nothing is up.
node_down() {
  [[ -d "$NODE_DIR" ]] || return 0
  local pid
  pid=$(pid_of kubelet || true)
  if ours "$pid"; then terminate "$pid"; fi
  pid=$(pid_of containerd || true)
  if ours "$pid" && [[ -S "$CONTAINERD_SOCK" ]]; then
    crictl_node rmp --all --force >/dev/null 2>&1 || true
  fi
  local c
  for c in kube-proxy coredns containerd; do
    pid=$(pid_of "$c" || true)
    if ours "$pid"; then terminate "$pid"; fi
  done
  # Shims (and anything they still run) whose command line names our containerd.
  local p
  for p in /proc/[0-9]*; do
    p=${p#/proc/}
    tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | grep -qF -- "$NODE_DIR/" || continue
    [[ "$p" == "$$" || "$p" == "$BASHPID" ]] && continue
    kill -KILL "$p" 2>/dev/null || true
  done
  if [[ -x "$BIN/kube-proxy" ]]; then "$BIN/kube-proxy" --cleanup >/dev/null 2>&1 || true; fi
  # Mounts under the node's state and the pods' network namespaces, deepest first.
  local m
  while read -r m; do
    umount -l "$m" 2>/dev/null || true
  done < <(findmnt -rn -o TARGET | grep -E "^($NODE_DIR/|/run/netns/cni-|/run/containerd/)" | sort -r)
  rm -f /run/netns/cni-* 2>/dev/null || true
  if [[ "$(cat "$NODE_DIR/host/run-netns-ours" 2>/dev/null)" == yes ]]; then rmdir /run/netns 2>/dev/null || true; fi
  if [[ "$(cat "$NODE_DIR/host/run-containerd-ours" 2>/dev/null)" == yes ]]; then rm -rf /run/containerd; fi
  # cgroups the kubelet made, deepest first.
  local hier
  for hier in /sys/fs/cgroup/*/ /sys/fs/cgroup/unified/; do
    [[ -d "${hier}kubepods" ]] || continue
    find "${hier}kubepods" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
  node_restore_iptables
  if ip link show "$NODE_BRIDGE" >/dev/null 2>&1; then ip link del "$NODE_BRIDGE"; fi
  if [[ -s "$NODE_DIR/host/sysctls" ]]; then
    local s v
    while read -r s v; do
      [[ "$(cat "/proc/sys/$s")" == "$v" ]] || echo "$v" >"/proc/sys/$s"
    done <"$NODE_DIR/host/sysctls"
  fi
  if [[ "$(cat "$NODE_DIR/host/bpffs-ours" 2>/dev/null)" == yes ]] && mountpoint -q /sys/fs/bpf; then
    umount /sys/fs/bpf || true
  elif [[ "$(cat "$NODE_DIR/host/bpffs-propagation" 2>/dev/null)" == private ]]; then
    mount --make-private /sys/fs/bpf || true
  fi
}
