#!/usr/bin/env bash
# `make install`: the chart, installed (or upgraded) with `helm upgrade --install` as release taskyard in
# namespace taskyard-system, on images that the cluster can run.
#   On the local cluster (.cluster/kubeconfig, or KUBECONFIG pointing at it): the images built here,
#   which it builds and loads first (hack/images.sh).
#   On any other kube context: IMAGE_REGISTRY=<registry> [TAG=<tag>] names where the images are
#   (pushed there with `make images-push REGISTRY=...`); the operator image is pulled once by a
#   short-lived pod first (IMAGE_PULL_SECRET names a pull Secret of the release namespace), and the
#   install is refused when the cluster cannot pull it.
# HELM_ARGS passes further arguments to helm (e.g. "--set concurrency.total=10").
source "$(dirname "$0")/lib.sh"

RELEASE="${TASKYARD_RELEASE:-taskyard}"
RELEASE_NAMESPACE="${TASKYARD_NAMESPACE:-taskyard-system}"

local_cluster() {
  [[ -f "$KUBECONFIG_PATH" ]] && [[ "${KUBECONFIG:-}" == "$KUBECONFIG_PATH" ]]
}

# image_pullable IMAGE: whether a pod in the release namespace can pull IMAGE (it runs `true` in it, as
# the restricted Pod Security Standard allows, with IMAGE_PULL_SECRET when that is set).
image_pullable() {
  local image=$1 pod="taskyard-pull-check" state deadline=$((SECONDS + 180))
  local secrets="[]"
  [[ -n "${IMAGE_PULL_SECRET:-}" ]] && secrets="[{\"name\": \"$IMAGE_PULL_SECRET\"}]"
  kubectl -n "$RELEASE_NAMESPACE" delete pod "$pod" --ignore-not-found --wait >/dev/null
  # A namespace made a moment ago gets its default ServiceAccount, which pods need, shortly after.
  until kubectl -n "$RELEASE_NAMESPACE" get serviceaccount default >/dev/null 2>&1; do
    ((SECONDS < deadline)) || die "namespace $RELEASE_NAMESPACE has no default ServiceAccount"
    sleep 1
  done
  kubectl -n "$RELEASE_NAMESPACE" create -f - >/dev/null <<JSON || die "could not start the pod that checks the image pull (above)"
{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "$pod"},
 "spec": {"restartPolicy": "Never", "automountServiceAccountToken": false, "imagePullSecrets": $secrets,
  "securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "seccompProfile": {"type": "RuntimeDefault"}},
  "containers": [{"name": "pull", "image": "$image", "command": ["true"],
   "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}}]}}
JSON
  while ((SECONDS < deadline)); do
    state=$(kubectl -n "$RELEASE_NAMESPACE" get pod "$pod" \
      -o jsonpath='{.status.phase} {.status.containerStatuses[0].state.waiting.reason}' 2>/dev/null || true)
    case "$state" in
      Succeeded* | Failed*) kubectl -n "$RELEASE_NAMESPACE" delete pod "$pod" --wait=false >/dev/null; return 0 ;;
      *ErrImagePull* | *ImagePullBackOff* | *InvalidImageName*) break ;;
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
    local context
    context=$(kubectl config current-context 2>/dev/null) || die "no kube context: start the local cluster \
(make cluster-up) or point KUBECONFIG at a cluster"
    [[ -n "${IMAGE_REGISTRY:-}" ]] || die "installing on $context: set IMAGE_REGISTRY to \
the registry that holds taskyard's images (push them with: make images-push REGISTRY=<registry>)"
    registry="$IMAGE_REGISTRY"
    tag="${TAG:-$(awk -F'"' '/^appVersion:/ {print $2}' "$REPO_ROOT/helm/taskyard/Chart.yaml")}"
    kubectl get namespace "$RELEASE_NAMESPACE" >/dev/null 2>&1 || kubectl create namespace "$RELEASE_NAMESPACE" >/dev/null
    log "checking that the cluster can pull $registry/operator:$tag"
    [[ -n "${IMAGE_PULL_SECRET:-}" ]] && values+=(--set "imagePullSecrets[0].name=$IMAGE_PULL_SECRET")
    values+=(--set "agents.shell.image=$registry/shell:$tag")  # pushed with the others
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
  if kubectl -n "$RELEASE_NAMESPACE" get "deployment/$RELEASE-api" >/dev/null 2>&1; then
    kubectl -n "$RELEASE_NAMESPACE" rollout status "deployment/$RELEASE-api" --timeout=180s
  fi
}

main "$@"
