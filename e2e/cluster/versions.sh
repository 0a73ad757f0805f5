# shellcheck shell=bash disable=SC2034
# Versions of the e2e control-plane components. Sourced by build.sh / up.sh.
# The authoritative pins are the wrapper modules' go.mod files (e2e/k8s, e2e/etcd,
# e2e/kwok, e2e/node, e2e/dns); build.sh checks that these strings match them.
K8S_VERSION=v1.34.4
ETCD_VERSION=v3.6.5
KWOK_VERSION=v0.8.0
CONTAINERD_VERSION=v2.4.2
CNI_PLUGINS_VERSION=v1.9.1
COREDNS_VERSION=v1.14.7
