#!/usr/bin/env bash
# Builds the non-Kubernetes binaries of the local cluster through the Go module proxy:
# etcd, helm, kube-router (NetworkPolicy enforcement) and the local-path provisioner (dynamic PVCs).
# With the argument `kwok`, only kwok (simulated nodes for the benchmark); with `registry`, only
# go-containerregistry's registry (a registry in memory that the tests push images to). Each is cached
# by version.
source "$(dirname "$0")/lib.sh"
ensure_go_env

# build_with_wrapper DEST_DIR MODULE VERSION PACKAGE BINARY
# Modules that are not meant for `go install` (etcd's server keeps replace directives) are built
# from a throwaway wrapper module that requires them at the wanted version.
build_with_wrapper() {
  local dest=$1 module=$2 version=$3 package=$4 binary=$5
  if [[ -x "$dest/$binary" ]]; then
    log "$binary $version: cached in $dest"
    return
  fi
  log "building $binary $version from the Go module proxy"
  local work="$dest/../wrapper"
  mkdir -p "$work" "$dest"
  printf 'module taskyard.dev/local-cluster/%s\n\ngo 1.24.0\n\nrequire %s %s\n' "$binary" "$module" "$version" >"$work/go.mod"
  (cd "$work" && GOFLAGS="$GOFLAGS -mod=mod" go build -trimpath -ldflags "-s -w" -o "$dest/$binary" "$package")
}

if [[ "${1:-}" == kwok ]]; then
  build_with_wrapper "$KWOK_BIN" sigs.k8s.io/kwok "$KWOK_VERSION" sigs.k8s.io/kwok/cmd/kwok kwok
  exit 0
fi
if [[ "${1:-}" == registry ]]; then
  build_with_wrapper "$REGISTRY_BIN" github.com/google/go-containerregistry "$GGCR_VERSION" \
    github.com/google/go-containerregistry/cmd/registry registry
  exit 0
fi

build_with_wrapper "$ETCD_BIN" go.etcd.io/etcd/server/v3 "$ETCD_VERSION" go.etcd.io/etcd/server/v3 etcd
build_with_wrapper "$HELM_BIN" helm.sh/helm/v3 "$HELM_VERSION" helm.sh/helm/v3/cmd/helm helm
build_with_wrapper "$KUBE_ROUTER_BIN" github.com/cloudnativelabs/kube-router/v2 "$KUBE_ROUTER_VERSION" \
  github.com/cloudnativelabs/kube-router/v2/cmd/kube-router kube-router
build_with_wrapper "$LPP_BIN" github.com/rancher/local-path-provisioner "$LOCAL_PATH_PROVISIONER_VERSION" \
  github.com/rancher/local-path-provisioner local-path-provisioner
