#!/usr/bin/env bash
# Builds taskyard's container images with buildah (vfs storage, chroot isolation: no daemon, no registry)
# and, when the local cluster is running, imports them into containerd's k8s.io namespace.
#
#   hack/images.sh            build every image (skipping those whose context did not change), import
#   hack/images.sh NAME...    only these (pause, busybox-base, shell, python-base, operator)
source "$(dirname "$0")/lib.sh"

command -v buildah >/dev/null || die "buildah is missing: run hack/install-deps.sh"
STORAGE="$TASKYARD_CACHE/buildah"
bah() { buildah --storage-driver vfs --root "$STORAGE/root" --runroot "$STORAGE/run" "$@"; }

# build_image NAME CONTEXT_DIR [--build-arg K=V ...]
build_image() {
  local name=$1 context=$2; shift 2
  local ref="$IMAGE_PREFIX/$name:$IMAGE_TAG" archive="$IMAGE_ARCHIVES/$name.tar"
  local hash
  hash=$( (cd "$context" && find . -type f -print0 | sort -z | xargs -0 sha256sum; echo "$*") | sha256sum | cut -c1-16)
  if [[ -f "$archive" && "$(cat "$archive.hash" 2>/dev/null)" == "$hash" ]] && bah inspect "$ref" >/dev/null 2>&1; then
    log "image $ref: up to date"
    return
  fi
  log "building image $ref"
  mkdir -p "$IMAGE_ARCHIVES"
  bah bud --quiet --isolation chroot --pull=never --layers=false -t "$ref" "$@" -f "$context/Dockerfile" "$context" >/dev/null
  rm -f "$archive"
  bah push --quiet "$ref" "docker-archive:$archive:$ref"
  echo "$hash" >"$archive.hash"
}

build_pause() {
  local context; context=$(mktemp -d)
  cp "$REPO_ROOT/hack/images/pause/"* "$context/"
  cc -static -Os -o "$context/pause" "$context/pause.c"
  strip "$context/pause"
  build_image pause "$context"
  rm -rf "$context"
}

build_busybox_base() {
  local context; context=$(mktemp -d)
  local root="$context/rootfs"
  cp "$REPO_ROOT/hack/images/busybox-base/Dockerfile" "$context/"
  mkdir -p "$root/bin" "$root/etc" "$root/tmp" "$root/workspace"
  cp /bin/busybox "$root/bin/busybox"
  "$root/bin/busybox" --list | while read -r applet; do
    [[ "$applet" == busybox ]] || ln -sf busybox "$root/bin/$applet"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\nagent:x:65532:65532:agent:/workspace:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$root/etc/passwd"
  printf 'root:x:0:\nagent:x:65532:\nnobody:x:65534:\n' >"$root/etc/group"
  chmod 1777 "$root/tmp"
  chown 65532:65532 "$root/workspace"
  build_image busybox-base "$context"
  rm -rf "$context"
}

# Debian packages in the Python base; changing this list rebuilds the base.
PYTHON_BASE_PACKAGES="python3,python3-venv,ca-certificates"
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
DEBIAN_SECURITY_MIRROR="${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"

build_python_base() {
  command -v mmdebstrap >/dev/null || die "mmdebstrap is missing: run hack/install-deps.sh"
  local context; context=$(mktemp -d)
  cp "$REPO_ROOT/hack/images/python-base/Dockerfile" "$context/"
  # The root filesystem differs byte for byte on every run (timestamps), so the cache key is the recipe.
  echo "bookworm minbase $PYTHON_BASE_PACKAGES" >"$context/recipe"
  if [[ -f "$IMAGE_ARCHIVES/python-base.tar" && "$(cat "$IMAGE_ARCHIVES/python-base.recipe" 2>/dev/null)" == "$(cat "$context/recipe")" ]] \
    && bah inspect "$IMAGE_PREFIX/python-base:$IMAGE_TAG" >/dev/null 2>&1; then
    log "image $IMAGE_PREFIX/python-base:$IMAGE_TAG: up to date"
    rm -rf "$context"
    return
  fi
  log "assembling a Debian root filesystem with $PYTHON_BASE_PACKAGES (mmdebstrap)"
  mmdebstrap --quiet --variant=minbase --include="$PYTHON_BASE_PACKAGES" --skip=output/dev \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    bookworm "$context/rootfs.tar" "deb $DEBIAN_MIRROR bookworm main" \
    "deb $DEBIAN_SECURITY_MIRROR bookworm-security main"
  rm -f "$IMAGE_ARCHIVES/python-base.tar.hash"
  build_image python-base "$context"
  cp "$context/recipe" "$IMAGE_ARCHIVES/python-base.recipe"
  rm -rf "$context"
}

build_operator() {
  build_python_base
  local context; context=$(mktemp -d)
  mkdir -p "$context/operator"
  cp "$REPO_ROOT/pyproject.toml" "$REPO_ROOT/README.md" "$REPO_ROOT/operator/Dockerfile" "$context/"
  cp -r "$REPO_ROOT/operator/taskyard" "$context/operator/taskyard"
  find "$context" -name __pycache__ -prune -exec rm -rf {} +
  # Wheels are fetched here, where the package index is reachable as configured for this host, so
  # the image build itself needs no network. The base's Python is 3.11, like the one used here.
  # Compiled wheels must match the base's Python (Debian bookworm: 3.11).
  local host_python
  host_python=$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
  [[ "$host_python" == 3.11 ]] || die "the operator image is built from wheels collected with this host's python3, \
which is $host_python; the image's base has Python 3.11: put a python3.11 first on PATH"
  log "collecting wheels for the operator image"
  python3 -m pip wheel --quiet --disable-pip-version-check --wheel-dir "$context/wheels" "$context" "setuptools>=68" >/dev/null
  rm -f "$context"/wheels/taskyard-*.whl
  build_image operator "$context" --build-arg "BASE=$IMAGE_PREFIX/python-base:$IMAGE_TAG"
  rm -rf "$context"
}

build_shell() {
  build_image shell "$REPO_ROOT/hack/images/shell" --build-arg "BASE=$IMAGE_PREFIX/busybox-base:$IMAGE_TAG"
}

# import_images NAME...: load built archives into the running cluster's containerd.
import_images() {
  [[ -S "$CONTAINERD_SOCK" ]] || { log "cluster not running: images built, not imported"; return; }
  local name
  for name in "$@"; do
    [[ -f "$IMAGE_ARCHIVES/$name.tar" ]] || continue
    ctr_k8s images import "$IMAGE_ARCHIVES/$name.tar" >/dev/null
    log "imported $IMAGE_PREFIX/$name:$IMAGE_TAG into containerd"
  done
}

main() {
  local names=("$@")
  [[ ${#names[@]} -gt 0 ]] || names=(pause busybox-base shell operator)
  local name
  for name in "${names[@]}"; do
    case "$name" in
      pause) build_pause ;;
      busybox-base) build_busybox_base ;;
      shell) build_busybox_base; build_shell ;;
      python-base) build_python_base ;;
      operator) build_operator ;;
      *) die "unknown image '$name' (known: pause, busybox-base, shell, python-base, operator)" ;;
    esac
  done
  import_images "${names[@]}"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then main "$@"; fi
