#!/usr/bin/env bash
# `make test`: installs what the project needs, starts a fresh local cluster, runs every tier
# (unit, smoke, integration, e2e) and tears the cluster down again. Exits non-zero on any failure.
#   TASKYARD_KEEP_CLUSTER=1   leave the cluster running afterwards (for debugging)
#   PYTEST_ARGS="-k name"     extra pytest arguments
source "$(dirname "$0")/lib.sh"

"$REPO_ROOT/hack/install-deps.sh"
log "lint and generated files"
"$VENV/bin/ruff" check "$REPO_ROOT/operator" "$REPO_ROOT/tests" "$REPO_ROOT/hack" "$REPO_ROOT/agents"
"$VENV/bin/ruff" format --check "$REPO_ROOT/operator" "$REPO_ROOT/tests" "$REPO_ROOT/hack" "$REPO_ROOT/agents"

"$REPO_ROOT/hack/cluster-down.sh"
if [[ "${TASKYARD_KEEP_CLUSTER:-0}" != 1 ]]; then
  trap '"$REPO_ROOT/hack/cluster-down.sh"' EXIT
fi
"$REPO_ROOT/hack/cluster-up.sh"

cd "$REPO_ROOT"
# shellcheck disable=SC2086
"$VENV/bin/python" -m pytest --kubeconfig "$KUBECONFIG_PATH" ${PYTEST_ARGS:-}
