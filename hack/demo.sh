#!/usr/bin/env bash
# `make demo`: one Task end to end. Uses the current kube context when it answers, else starts the
# local cluster; applies the CRDs, runs the operator (out of cluster) for the duration of the demo,
# applies examples/hello.yaml, waits for the Task and prints its logs with `kubectl logs`.
source "$(dirname "$0")/lib.sh"

"$REPO_ROOT/hack/install-deps.sh" python
shell_image="${TASKYARD_SHELL_IMAGE:-}"
if [[ -n "${KUBECONFIG:-}" || -f "$HOME/.kube/config" ]] && kubectl --request-timeout=5s get --raw /readyz >/dev/null 2>&1; then
  log "using the current kube context: $(kubectl config current-context)"
else
  log "no reachable kube context: starting the local cluster"
  "$REPO_ROOT/hack/install-deps.sh"
  "$REPO_ROOT/hack/cluster-up.sh"
  export KUBECONFIG="$KUBECONFIG_PATH"
  shell_image="${shell_image:-$IMAGE_PREFIX/shell:$IMAGE_TAG}"
fi

namespace="${TASKYARD_DEMO_NAMESPACE:-taskyard-demo}"
kubectl apply --server-side --force-conflicts -f "$REPO_ROOT/crds/" >/dev/null
kubectl wait --for=condition=Established crd/tasks.taskyard.dev --timeout=60s >/dev/null
kubectl create namespace "$namespace" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl -n "$namespace" delete task hello --ignore-not-found >/dev/null

# An operator already installed in the cluster (Helm or manifests/) runs the demo; otherwise one is
# started here for its duration. Two operators must never watch the same Tasks.
if [[ -n "$(kubectl get deployments -A -l app.kubernetes.io/name=taskyard -o name 2>/dev/null)" ]]; then
  log "using the taskyard operator installed in the cluster"
else
  log "starting the operator (logs: $CLUSTER_DIR/demo-operator.log)"
  mkdir -p "$CLUSTER_DIR"
  TASKYARD_METRICS_PORT=0 "$VENV/bin/python" -m taskyard --namespace "$namespace" \
    >"$CLUSTER_DIR/demo-operator.log" 2>&1 &
  operator_pid=$!
  trap 'kill "$operator_pid" 2>/dev/null || true' EXIT
fi

manifest=$(cat "$REPO_ROOT/examples/hello.yaml")
if [[ -n "$shell_image" ]]; then
  manifest=${manifest//docker.io\/library\/busybox:1.36/$shell_image}
fi
if kubectl get clusteragent shell >/dev/null 2>&1; then
  # Keep the cluster's own shell agent (e.g. the chart's preset): apply only the Task.
  manifest=$("$VENV/bin/python" -c '
import sys, yaml
tasks = [doc for doc in yaml.safe_load_all(sys.stdin) if doc and doc["kind"] == "Task"]
yaml.safe_dump_all(tasks, sys.stdout)' <<<"$manifest")
fi
kubectl -n "$namespace" apply -f - <<<"$manifest"
log "waiting for task/hello to succeed"
if ! kubectl -n "$namespace" wait --for=condition=Succeeded task/hello --timeout=180s >/dev/null; then
  kubectl -n "$namespace" get task hello -o yaml >&2
  die "task/hello did not succeed"
fi
kubectl -n "$namespace" get ytask hello
echo
log "kubectl -n $namespace logs job/hello"
kubectl -n "$namespace" logs job/hello
