# Shared settings for the hack/ scripts. Source it; do not run it.
# shellcheck shell=bash

set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export REPO_ROOT

# Versions of everything the local cluster is built from. Bumping one rebuilds only that piece,
# because every cache directory is keyed by its version.
K8S_VERSION="${K8S_VERSION:-v1.34.4}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
HELM_VERSION="${HELM_VERSION:-v3.19.0}"
LOCAL_PATH_PROVISIONER_VERSION="${LOCAL_PATH_PROVISIONER_VERSION:-v0.0.30}"
KWOK_VERSION="${KWOK_VERSION:-v0.8.0}" # simulated nodes, for `make bench` only
KUBE_ROUTER_VERSION="${KUBE_ROUTER_VERSION:-v2.1.0}" # its firewall only: NetworkPolicy enforcement
GGCR_VERSION="${GGCR_VERSION:-v0.22.1}" # go-containerregistry's registry, for the image-push tests only

# Build caches live outside the repository so a fresh clone reuses them.
TASKYARD_CACHE="${TASKYARD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/taskyard}"
K8S_BIN="$TASKYARD_CACHE/kubernetes-$K8S_VERSION/bin"
ETCD_BIN="$TASKYARD_CACHE/etcd-$ETCD_VERSION/bin"
HELM_BIN="$TASKYARD_CACHE/helm-$HELM_VERSION/bin"
LPP_BIN="$TASKYARD_CACHE/local-path-provisioner-$LOCAL_PATH_PROVISIONER_VERSION/bin"
KWOK_BIN="$TASKYARD_CACHE/kwok-$KWOK_VERSION/bin"
KUBE_ROUTER_BIN="$TASKYARD_CACHE/kube-router-$KUBE_ROUTER_VERSION/bin"
REGISTRY_BIN="$TASKYARD_CACHE/registry-$GGCR_VERSION/bin"
VENV="${TASKYARD_VENV:-$REPO_ROOT/.venv}"

# Cluster state (certificates, data, logs, pids) is per checkout and git-ignored.
CLUSTER_DIR="${TASKYARD_CLUSTER_DIR:-$REPO_ROOT/.cluster}"
KUBECONFIG_PATH="$CLUSTER_DIR/kubeconfig"

export PATH="$K8S_BIN:$HELM_BIN:$ETCD_BIN:$PATH"

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# ensure_go_env checks for Go and sets static, reproducible builds; Go's own caches (~/go/pkg/mod,
# ~/.cache/go-build) make a second build of the same version quick.
ensure_go_env() {
  command -v go >/dev/null || die "go is not installed; install Go 1.24 or newer"
  export CGO_ENABLED=0
  export GOFLAGS="${GOFLAGS:-} -buildvcs=false"
}

# Images are built without a Docker daemon and kept as archives, keyed by a hash of their build context.
IMAGE_ARCHIVES="$TASKYARD_CACHE/images"
IMAGE_PREFIX="localhost/taskyard"
IMAGE_TAG="dev"
CONTAINERD_SOCK="$CLUSTER_DIR/run/containerd.sock"

ctr_k8s() { ctr --address "$CONTAINERD_SOCK" --namespace k8s.io "$@"; }

# Network layout of the local cluster. The node's address lives on the pod bridge, so that pods reach
# the API server (through the `kubernetes` service) at an address that is not loopback.
NODE_NAME="${TASKYARD_NODE_NAME:-taskyard-node}"
POD_BRIDGE="taskyard0"
POD_CIDR="10.244.0.0/16"
NODE_IP="10.244.0.1"
SERVICE_CIDR="10.0.0.0/24"
KUBERNETES_SERVICE_IP="10.0.0.1"
APISERVER_PORT="${TASKYARD_APISERVER_PORT:-6443}"
