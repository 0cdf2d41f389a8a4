#!/usr/bin/env bash
# `make bench`: the operator against the API-server floor, the queue and scale (see hack/bench.py).
# Uses $KUBECONFIG when it answers, else the local cluster (started if needed). Prints figures and
# writes docs/benchmarks.json; docs/benchmarks.md explains them.
source "$(dirname "$0")/lib.sh"

"$REPO_ROOT/hack/install-deps.sh" python
if [[ -z "${KUBECONFIG:-}" ]] || ! kubectl --request-timeout=5s get --raw /readyz >/dev/null 2>&1; then
  "$REPO_ROOT/hack/install-deps.sh"
  "$REPO_ROOT/hack/cluster-up.sh"
  export KUBECONFIG="$KUBECONFIG_PATH"
fi
"$REPO_ROOT/hack/build-tools.sh" kwok
export TASKYARD_KWOK="$KWOK_BIN/kwok"
kubectl apply --server-side --force-conflicts -f "$REPO_ROOT/crds/" >/dev/null
kubectl wait --for=condition=Established crd/tasks.taskyard.dev --timeout=60s >/dev/null
mkdir -p "$CLUSTER_DIR"
cd "$REPO_ROOT"
exec "$VENV/bin/python" hack/bench.py
