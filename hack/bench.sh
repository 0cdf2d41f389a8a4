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
# Polled, not `kubectl wait --for=condition=Established`: that fails at once when it finds the new CRD
# without conditions yet (a busy API server), where this waits up to 60 s.
for _ in $(seq 120); do
  [[ "$(kubectl get crd/tasks.taskyard.dev -o 'jsonpath={.status.conditions[?(@.type=="Established")].status}' 2>/dev/null)" == True ]] && break
  sleep 0.5
done
mkdir -p "$CLUSTER_DIR"
cd "$REPO_ROOT"
exec "$VENV/bin/python" hack/bench.py
