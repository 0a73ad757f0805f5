#!/usr/bin/env bash
# Print what the local cluster's node may change on this host, in a stable order, so that the
# state before `up.sh` and after `down.sh` can be compared (e2e/run.sh fails when they differ):
# mounts, links and addresses, iptables rules and chains, the sysctls the kubelet and
# kube-proxy set, network namespaces, kubepods cgroups and processes started from the cluster's
# binaries.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.sh
source "$HERE/versions.sh"
CACHE=${AGENTMESH_CACHE:-$HOME/.cache/agentmesh}
BIN=$(realpath -m "${AGENTMESH_BIN_DIR:-$CACHE/k8s/$K8S_VERSION/bin}")

echo "## mounts"
findmnt -rn -o TARGET,FSTYPE,PROPAGATION | sort
echo "## links"
ip -o link show | awk -F': ' '{print $2}' | sed 's/@.*//' | sort
echo "## addresses"
ip -o addr show | awk '{print $2, $3, $4}' | sort
echo "## routes"
ip route show table all 2>/dev/null | sed -E '/^(local|broadcast|multicast|ff00|fe80)/d' | sort
for tool in iptables ip6tables; do
  command -v "$tool-save" >/dev/null 2>&1 || continue
  echo "## $tool"
  # An empty built-in chain with policy ACCEPT filters like no table at all (nft creates the
  # tables when first listed), so only rules, other policies and user chains count.
  "$tool-save" 2>/dev/null | sed -E '/^#/d; /^\*/d; /^COMMIT/d; /^:(INPUT|OUTPUT|FORWARD|PREROUTING|POSTROUTING) ACCEPT/d' |
    sed 's/\[[0-9]*:[0-9]*\]//' | sort
done
echo "## sysctls"
for s in net/ipv4/ip_forward net/ipv4/conf/all/forwarding net/ipv4/conf/all/route_localnet \
  net/bridge/bridge-nf-call-iptables net/netfilter/nf_conntrack_max \
  net/netfilter/nf_conntrack_tcp_timeout_established net/netfilter/nf_conntrack_tcp_timeout_close_wait \
  vm/overcommit_memory vm/panic_on_oom kernel/panic kernel/panic_on_oops \
  kernel/keys/root_maxkeys kernel/keys/root_maxbytes; do
  if [[ -r /proc/sys/$s ]]; then echo "$s=$(cat "/proc/sys/$s")"; fi
done
echo "## netns"
ls /run/netns 2>/dev/null | sort || true
echo "## cgroups"
for d in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/unified/kubepods /run/containerd; do
  if [[ -e $d ]]; then echo "$d"; fi
done
echo "## processes"
for p in /proc/[0-9]*; do
  exe=$(readlink "$p/exe" 2>/dev/null) || continue
  if [[ "$exe" == "$BIN/"* ]]; then echo "$exe"; fi
done | sort
