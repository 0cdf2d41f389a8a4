#!/usr/bin/env bash
# `make test`: installs what the project needs, starts a fresh local cluster, runs every tier
# (unit, smoke, integration, fault, e2e, demo) and tears the cluster down again. Exits non-zero on any
# failure. Two passes: first every test that shares the cluster (each has its own namespace and its
# own operator for it), TEST_WORKERS at a time; then the `exclusive` ones (an operator for every
# namespace, an API server restart), one at a time.
#   TASKYARD_KEEP_CLUSTER=1   leave the cluster running afterwards (for debugging)
#   TEST_WORKERS=N            tests of the first pass run side by side (default 4; 1: one at a time)
#   PYTEST_ARGS="-k name"     extra pytest arguments, for both passes
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
workers="${TEST_WORKERS:-4}"
parallel=()
[[ "$workers" -gt 1 ]] && parallel=(-n "$workers" --dist worksteal)
status=0
log "tests that share the cluster ($workers at a time)"
# shellcheck disable=SC2086
"$VENV/bin/python" -m pytest --kubeconfig "$KUBECONFIG_PATH" "${parallel[@]}" -m "not exclusive" \
  --durations=15 ${PYTEST_ARGS:-} || { rc=$?; [[ $rc -eq 5 ]] || status=$rc; }
log "tests that need the cluster to themselves (one at a time)"
# shellcheck disable=SC2086
"$VENV/bin/python" -m pytest --kubeconfig "$KUBECONFIG_PATH" -m exclusive --durations=10 \
  ${PYTEST_ARGS:-} || { rc=$?; [[ $rc -eq 5 ]] || status=$rc; }
exit "$status"  # 5 (no tests) in one pass is fine: PYTEST_ARGS may select tests of one pass only
