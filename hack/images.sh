#!/usr/bin/env bash
# Builds taskyard's container images with buildah (vfs storage, chroot isolation: no daemon, no registry)
# and, when the local cluster is running, imports them into containerd's k8s.io namespace.
#
#   hack/images.sh            build every image (skipping those whose context did not change), import
#   hack/images.sh NAME...    only these (pause, busybox-base, shell, python-base, operator,
#                             agent-base, claude-code, codex, gemini-cli, opencode; `agents` for all four)
#
# One build at a time: a second call waits for the first (a lock), then finds its images up to date.
source "$(dirname "$0")/lib.sh"

command -v buildah >/dev/null || die "buildah is missing: run hack/install-deps.sh"
STORAGE="$TASKYARD_CACHE/buildah"
bah() { buildah --storage-driver vfs --root "$STORAGE/root" --runroot "$STORAGE/run" "$@"; }

# image_hash CONTEXT_DIR [--build-arg K=V ...]: what an image is built from; IMAGE_KEY, when set,
# stands for the context's files.
image_hash() {
  local context=$1; shift
  if [[ -n "${IMAGE_KEY:-}" ]]; then
    (echo "$IMAGE_KEY"; echo "$*") | sha256sum | cut -c1-16
  else
    (cd "$context" && find . -type f -print0 | sort -z | xargs -0 sha256sum; echo "$*") | sha256sum | cut -c1-16
  fi
}

# image_current NAME HASH: whether the image was built from that hash and is still in storage.
image_current() {
  local archive="$IMAGE_ARCHIVES/$1.tar"
  [[ -f "$archive" && "$(cat "$archive.hash" 2>/dev/null)" == "$2" ]] \
    && bah inspect "$IMAGE_PREFIX/$1:$IMAGE_TAG" >/dev/null 2>&1
}

# build_image NAME CONTEXT_DIR [--build-arg K=V ...]
build_image() {
  local name=$1 context=$2; shift 2
  local ref="$IMAGE_PREFIX/$name:$IMAGE_TAG" archive="$IMAGE_ARCHIVES/$name.tar"
  local hash
  hash=$(image_hash "$context" "$@")
  if image_current "$name" "$hash"; then
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

# Debian packages of the two Debian bases; changing a list rebuilds that base.
PYTHON_BASE_PACKAGES="python3,python3-venv,ca-certificates"
AGENT_ROOTFS_PACKAGES="python3,git,openssh-client,ca-certificates,passwd"
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
DEBIAN_SECURITY_MIRROR="${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"

# build_debian_rootfs NAME PACKAGES: an image that is a Debian bookworm root filesystem with PACKAGES.
build_debian_rootfs() {
  local name=$1 packages=$2
  command -v mmdebstrap >/dev/null || die "mmdebstrap is missing: run hack/install-deps.sh"
  local context; context=$(mktemp -d)
  cp "$REPO_ROOT/hack/images/python-base/Dockerfile" "$context/"
  # The root filesystem differs byte for byte on every run (timestamps), so the cache key is the recipe.
  echo "bookworm minbase $packages" >"$context/recipe"
  if [[ -f "$IMAGE_ARCHIVES/$name.tar" && "$(cat "$IMAGE_ARCHIVES/$name.recipe" 2>/dev/null)" == "$(cat "$context/recipe")" ]] \
    && bah inspect "$IMAGE_PREFIX/$name:$IMAGE_TAG" >/dev/null 2>&1; then
    log "image $IMAGE_PREFIX/$name:$IMAGE_TAG: up to date"
    rm -rf "$context"
    return
  fi
  log "assembling a Debian root filesystem with $packages (mmdebstrap)"
  mmdebstrap --quiet --variant=minbase --include="$packages" --skip=output/dev \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    bookworm "$context/rootfs.tar" "deb $DEBIAN_MIRROR bookworm main" \
    "deb $DEBIAN_SECURITY_MIRROR bookworm-security main"
  rm -f "$IMAGE_ARCHIVES/$name.tar.hash"
  build_image "$name" "$context"
  cp "$context/recipe" "$IMAGE_ARCHIVES/$name.recipe"
  rm -rf "$context"
}

build_python_base() { build_debian_rootfs python-base "$PYTHON_BASE_PACKAGES"; }

# --- agent images: the base (git, Python, the entrypoint, a non-root user), then one per CLI --------

AGENTS=(claude-code codex gemini-cli opencode)
NPM_CACHE="$TASKYARD_CACHE/npm"

build_agent_base() {
  build_debian_rootfs agent-rootfs "$AGENT_ROOTFS_PACKAGES"
  local context; context=$(mktemp -d)
  cp "$REPO_ROOT/agents/base/Dockerfile" "$REPO_ROOT/agents/entrypoint/taskyard_agent.py" \
    "$REPO_ROOT/agents/entrypoint/taskyard_credential_proxy.py" "$context/"
  # The recipe is an argument, so a rebuilt root filesystem rebuilds the base too.
  build_image agent-base "$context" --build-arg "BASE=$IMAGE_PREFIX/agent-rootfs:$IMAGE_TAG" \
    --build-arg "ROOTFS_RECIPE=$AGENT_ROOTFS_PACKAGES"
  rm -rf "$context"
}

# npm_unpack SPEC DIR: the npm package SPEC (name@version), fetched once into the cache, unpacked in DIR.
npm_unpack() {
  local spec=$1 dir=$2
  command -v npm >/dev/null || die "npm is missing: run hack/install-deps.sh"
  local archive="$NPM_CACHE/$(printf '%s' "$spec" | tr '/@' '__').tgz"
  if [[ ! -f "$archive" ]]; then
    log "fetching $spec from the npm registry"
    mkdir -p "$NPM_CACHE"
    local fetched; fetched=$(mktemp -d)
    (cd "$fetched" && npm pack --silent "$spec" >/dev/null) || die "npm could not fetch $spec"
    mv "$fetched"/*.tgz "$archive"
    rm -rf "$fetched"
  fi
  mkdir -p "$dir"
  tar -xzf "$archive" -C "$dir" --strip-components=1 --no-same-owner
}

build_agent() {
  local name=$1 CLI_PACKAGE="" CLI_COMMAND="" NODE_PACKAGE=""
  local recipe="$REPO_ROOT/agents/$name/cli.env"
  [[ -f "$recipe" ]] || die "unknown agent image '$name' (known: ${AGENTS[*]})"
  # shellcheck disable=SC1090
  source "$recipe"
  build_agent_base
  local context; context=$(mktemp -d)
  # The Dockerfile and whatever it copies besides the CLI (settings files); not the recipe.
  find "$REPO_ROOT/agents/$name" -maxdepth 1 -type f ! -name cli.env -exec cp {} "$context/" \;
  npm_unpack "$CLI_PACKAGE" "$context/cli/package"
  mkdir -p "$context/cli/bin"
  if [[ -n "$NODE_PACKAGE" ]]; then
    npm_unpack "$NODE_PACKAGE" "$context/cli/node-dist"
    mkdir -p "$context/cli/node/bin"
    mv "$context/cli/node-dist/bin/node" "$context/cli/node/bin/node"  # the runtime, not its headers
    rm -rf "$context/cli/node-dist"
    ln -s ../node/bin/node "$context/cli/bin/node"
  fi
  local command=${CLI_COMMAND%%=*} target=${CLI_COMMAND#*=}
  [[ -f "$context/cli/package/$target" ]] || die "$CLI_PACKAGE has no $target"
  chmod 0755 "$context/cli/package/$target"
  ln -s "../package/$target" "$context/cli/bin/$command"
  # The key is the recipe, not the unpacked files (hundreds of MB to hash on every run).
  IMAGE_KEY="$(cat "$REPO_ROOT/agents/$name"/* "$IMAGE_ARCHIVES/agent-base.tar.hash")" \
    build_image "$name" "$context" --build-arg "BASE=$IMAGE_PREFIX/agent-base:$IMAGE_TAG"
  rm -rf "$context"
  report_agent_image "$name" "$command"
}

# The figures a lean image is judged by: its size, and how long its CLI takes to answer --version
# from a cold start (a fresh container of the image).
# Measured once per built image (a fresh container costs a copy of the image) and kept beside it.
report_agent_image() {
  local name=$1 command=$2 ref="$IMAGE_PREFIX/$1:$IMAGE_TAG"
  local report="$IMAGE_ARCHIVES/$name.report"
  if [[ -f "$report" && "$report" -nt "$IMAGE_ARCHIVES/$name.tar" ]]; then
    log "$(cat "$report")"
    return
  fi
  local size container started elapsed version
  size=$(stat -c %s "$IMAGE_ARCHIVES/$name.tar")
  container=$(bah from --pull=never --quiet "$ref")
  started=$(date +%s%N)
  version=$(bah run --isolation chroot --user 65532:65532 --env HOME=/tmp "$container" -- "$command" --version 2>&1 | tail -1) \
    || version="(--version failed: $version)"
  elapsed=$((($(date +%s%N) - started) / 1000000))
  bah rm "$container" >/dev/null
  echo "image $ref: $((size / 1000000)) MB unpacked, \`$command --version\` answered \"$version\" in ${elapsed} ms" >"$report"
  log "$(cat "$report")"
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
  # The key is the operator's own files and the base: collecting the wheels (a minute on a busy
  # machine) only to find the image up to date would cost that on every call.
  local base_arg="BASE=$IMAGE_PREFIX/python-base:$IMAGE_TAG" key
  key="$(image_hash "$context") $(cat "$IMAGE_ARCHIVES/python-base.tar.hash")"
  if image_current operator "$(IMAGE_KEY="$key" image_hash "$context" --build-arg "$base_arg")"; then
    log "image $IMAGE_PREFIX/operator:$IMAGE_TAG: up to date"
    rm -rf "$context"
    return
  fi
  log "collecting wheels for the operator image"
  python3 -m pip wheel --quiet --disable-pip-version-check --wheel-dir "$context/wheels" "$context" "setuptools>=68" >/dev/null
  rm -f "$context"/wheels/taskyard-*.whl
  IMAGE_KEY="$key" build_image operator "$context" --build-arg "$base_arg"
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
    # Hundreds of MB per agent image: imported again only when the archive changed since the last
    # import, or containerd no longer has it (a new cluster).
    local stamp="$IMAGE_ARCHIVES/$name.imported"
    if [[ "$(cat "$stamp" 2>/dev/null)" == "$(cat "$IMAGE_ARCHIVES/$name.tar.hash" 2>/dev/null)" ]] \
      && ctr_k8s images ls -q "name==$IMAGE_PREFIX/$name:$IMAGE_TAG" | grep -q .; then
      continue
    fi
    ctr_k8s images import "$IMAGE_ARCHIVES/$name.tar" >/dev/null
    cp "$IMAGE_ARCHIVES/$name.tar.hash" "$stamp" 2>/dev/null || true
    log "imported $IMAGE_PREFIX/$name:$IMAGE_TAG into containerd"
  done
}

main() {
  local names=()
  local name
  for name in "${@:-pause busybox-base shell operator agents}"; do
    # shellcheck disable=SC2206
    [[ "$name" == agents ]] && names+=("${AGENTS[@]}") || names+=($name)
  done
  mkdir -p "$TASKYARD_CACHE"
  exec 9>"$TASKYARD_CACHE/images.lock"
  flock 9
  for name in "${names[@]}"; do
    case "$name" in
      pause) build_pause ;;
      busybox-base) build_busybox_base ;;
      shell) build_busybox_base; build_shell ;;
      python-base) build_python_base ;;
      operator) build_operator ;;
      agent-base) build_agent_base ;;
      claude-code | codex | gemini-cli | opencode) build_agent "$name" ;;
      *) die "unknown image '$name' (known: pause, busybox-base, shell, python-base, operator, agent-base, agents, ${AGENTS[*]})" ;;
    esac
  done
  import_images "${names[@]}"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then main "$@"; fi
