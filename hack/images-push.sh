#!/usr/bin/env bash
# `make images-push REGISTRY=... [TAG=...]`: builds the operator and agent images (as `make images`
# does) and pushes them with buildah to REGISTRY/<name>:TAG, the names the chart uses:
# image.repository=REGISTRY/operator and agentImages.registry=REGISTRY, agentImages.tag=TAG; and the
# `shell` image (busybox) for agents.shell.image, so a cluster needs no other registry.
#   REGISTRY   e.g. ghcr.io/my-org/taskyard (required); log in first: buildah login ghcr.io
#   TAG        default: the chart's appVersion
#   PUSH_ARGS  extra arguments for buildah push, e.g. --tls-verify=false for a registry without TLS
source "$(dirname "$0")/images.sh"

[[ -n "${REGISTRY:-}" ]] || die "set REGISTRY, e.g. make images-push REGISTRY=ghcr.io/my-org/taskyard"
TAG="${TAG:-$(awk -F'"' '/^appVersion:/ {print $2}' "$REPO_ROOT/helm/taskyard/Chart.yaml")}"
[[ -n "$TAG" ]] || die "no TAG given and no appVersion in helm/taskyard/Chart.yaml"

"$REPO_ROOT/hack/images.sh" shell operator agents
for name in operator shell "${AGENTS[@]}"; do
  log "pushing $IMAGE_PREFIX/$name:$IMAGE_TAG as $REGISTRY/$name:$TAG"
  # shellcheck disable=SC2086
  bah push --quiet ${PUSH_ARGS:-} "$IMAGE_PREFIX/$name:$IMAGE_TAG" "docker://$REGISTRY/$name:$TAG"
done
log "pushed; install with: helm upgrade --install taskyard helm/taskyard -n taskyard-system --create-namespace \\"
log "  --set image.repository=$REGISTRY/operator --set image.tag=$TAG \\"
log "  --set agentImages.registry=$REGISTRY --set agentImages.tag=$TAG --set agents.shell.image=$REGISTRY/shell:$TAG"
log "or: make install IMAGE_REGISTRY=$REGISTRY TAG=$TAG"
