#!/usr/bin/env bash
# `make test`: installs what the project needs, starts a fresh local cluster, runs every tier
# (unit, smoke, integration, fault, e2e, demo) and tears the cluster down again. Exits non-zero on any
# failure. Two passes: first every test that shares the cluster (each has its own namespace and its
# own operator for it, and chart releases watch their own namespace only), TEST_WORKERS at a time;
# then the `exclusive` ones (chart releases that watch every namespace, an API server restart), one at
# a time.
#   TASKYARD_KEEP_CLUSTER=1   leave the cluster running afterwards (for debugging)
#   TEST_WORKERS=N            tests of the first pass run N side by side (default 4; 1: one at a time)
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
# The operator and agent images the later tiers need are built meanwhile: mostly downloads (Debian,
# PyPI, npm) while the cluster's build is mostly compiling. The tests that use them take the same
# lock, so they wait for this build and find the images up to date.
images_log=$(mktemp)
log "building the operator and agent images in the background (log: $images_log)"
"$REPO_ROOT/hack/images.sh" operator agents >"$images_log" 2>&1 &
"$REPO_ROOT/hack/cluster-up.sh"

cd "$REPO_ROOT"
# Four side by side: the tests mostly wait for pods, so four take about 14 minutes where one at a time
# takes about 28. Tests marked with one xdist_group (a chart release whose presets are cluster-wide)
# run on one worker, one after another.
workers="${TEST_WORKERS:-4}"
parallel=()
[[ "$workers" -gt 1 ]] && parallel=(-n "$workers" --dist loadgroup)
status=0
if [[ " ${PYTEST_ARGS:-} " == *" -m "* ]]; then
  # A selection of the caller's own: one pass, one test at a time (it may mix exclusive ones in).
  log "the tests PYTEST_ARGS selects, one at a time"
  # shellcheck disable=SC2086
  "$VENV/bin/python" -m pytest --kubeconfig "$KUBECONFIG_PATH" ${PYTEST_ARGS} || status=$?
  wait || true
  exit "$status"
fi
log "tests that share the cluster ($workers at a time)"
# shellcheck disable=SC2086
"$VENV/bin/python" -m pytest --kubeconfig "$KUBECONFIG_PATH" "${parallel[@]}" -m "not exclusive" \
  --durations=15 ${PYTEST_ARGS:-} || { rc=$?; [[ $rc -eq 5 ]] || status=$rc; }
log "tests that need the cluster to themselves (one at a time)"
# shellcheck disable=SC2086
"$VENV/bin/python" -m pytest --kubeconfig "$KUBECONFIG_PATH" -m exclusive --durations=10 \
  ${PYTEST_ARGS:-} || { rc=$?; [[ $rc -eq 5 ]] || status=$rc; }
wait || { log "the background image build failed:"; cat "$images_log" >&2; }
exit "$status"  # 5 (no tests) in one pass is fine: PYTEST_ARGS may select tests of one pass only
