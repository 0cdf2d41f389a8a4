#!/usr/bin/env bash
# `make install`: the chart, installed (or upgraded) with `helm upgrade --install` as release taskyard in
# namespace taskyard-system, on images that the cluster can run.
#   On the local cluster (.cluster/kubeconfig, or KUBECONFIG pointing at it): the images built here,
#   which it builds and loads first (hack/images.sh).
#   On any other kube context: IMAGE_REGISTRY=<registry> [TAG=<tag>] names where the images are
#   (pushed there with `make images-push REGISTRY=...`); the operator image is pulled once by a
#   short-lived pod first, and the install is refused when the cluster cannot pull it.
# HELM_ARGS passes further arguments to helm (e.g. "--set concurrency.total=10").
source "$(dirname "$0")/lib.sh"

RELEASE="${TASKYARD_RELEASE:-taskyard}"
RELEASE_NAMESPACE="${TASKYARD_NAMESPACE:-taskyard-system}"

local_cluster() {
  [[ -f "$KUBECONFIG_PATH" ]] && [[ "${KUBECONFIG:-}" == "$KUBECONFIG_PATH" ]]
}

# image_pullable IMAGE: whether a pod in the release namespace can pull IMAGE (it runs `true` in it).
image_pullable() {
  local image=$1 pod="taskyard-pull-check" reason deadline=$((SECONDS + 180))
  kubectl -n "$RELEASE_NAMESPACE" delete pod "$pod" --ignore-not-found --wait >/dev/null
  kubectl -n "$RELEASE_NAMESPACE" run "$pod" --image "$image" --restart Never --quiet \
    --overrides '{"spec":{"automountServiceAccountToken":false}}' --command -- true >/dev/null
  while ((SECONDS < deadline)); do
    reason=$(kubectl -n "$RELEASE_NAMESPACE" get pod "$pod" \
      -o jsonpath='{.status.phase} {.status.containerStatuses[0].state.waiting.reason}' 2>/dev/null || true)
    case "$reason" in
      Succeeded* | Failed*) kubectl -n "$RELEASE_NAMESPACE" delete pod "$pod" --wait=false >/dev/null; return 0 ;;
      *ErrImagePull* | *ImagePullBackOff* | *InvalidImageName*)
        kubectl -n "$RELEASE_NAMESPACE" delete pod "$pod" --wait=false >/dev/null
        return 1 ;;
    esac
    sleep 2
  done
  kubectl -n "$RELEASE_NAMESPACE" delete pod "$pod" --wait=false >/dev/null
  return 1
}

main() {
  if [[ -z "${KUBECONFIG:-}" && ! -f "$HOME/.kube/config" && -f "$KUBECONFIG_PATH" ]]; then
    export KUBECONFIG="$KUBECONFIG_PATH"  # no context of the user's own: the local cluster
  fi
  command -v helm >/dev/null || "$REPO_ROOT/hack/build-tools.sh"
  local registry tag values=()
  if local_cluster; then
    "$REPO_ROOT/hack/images.sh" shell operator agents
    registry="$IMAGE_PREFIX" tag="$IMAGE_TAG"
    values+=(--set "agents.shell.image=$IMAGE_PREFIX/shell:$IMAGE_TAG" --set image.pullPolicy=IfNotPresent)
  else
    [[ -n "${IMAGE_REGISTRY:-}" ]] || die "installing on $(kubectl config current-context): set IMAGE_REGISTRY to \
the registry that holds taskyard's images (push them with: make images-push REGISTRY=<registry>)"
    registry="$IMAGE_REGISTRY"
    tag="${TAG:-$(awk -F'"' '/^appVersion:/ {print $2}' "$REPO_ROOT/helm/taskyard/Chart.yaml")}"
    kubectl get namespace "$RELEASE_NAMESPACE" >/dev/null 2>&1 || kubectl create namespace "$RELEASE_NAMESPACE" >/dev/null
    log "checking that the cluster can pull $registry/operator:$tag"
    image_pullable "$registry/operator:$tag" || die "the cluster cannot pull $registry/operator:$tag: push \
the images with make images-push REGISTRY=$registry TAG=$tag, or give the nodes access to that registry"
  fi
  log "helm upgrade --install $RELEASE helm/taskyard -n $RELEASE_NAMESPACE (images from $registry, tag $tag)"
  # shellcheck disable=SC2086
  helm upgrade --install "$RELEASE" "$REPO_ROOT/helm/taskyard" -n "$RELEASE_NAMESPACE" --create-namespace \
    --set "image.repository=$registry/operator" --set "image.tag=$tag" \
    --set "agentImages.registry=$registry" --set "agentImages.tag=$tag" \
    --set agents.claude-code.enabled=true --set agents.codex.enabled=true \
    --set agents.gemini-cli.enabled=true --set agents.opencode.enabled=true \
    "${values[@]}" ${HELM_ARGS:-} >/dev/null
  kubectl -n "$RELEASE_NAMESPACE" rollout status "deployment/$RELEASE" --timeout=180s
}

main "$@"
