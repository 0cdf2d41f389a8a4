#!/usr/bin/env bash
# `make demo`: taskyard installed as a user installs it, and one Task end to end.
# Uses the current kube context when it answers (the images then come from IMAGE_REGISTRY, see
# hack/install.sh); otherwise installs what is needed and starts the local cluster. Then installs the
# chart with `helm upgrade --install` (hack/install.sh), applies the hello Task of examples/hello.yaml,
# waits for it, prints its `kubectl logs` and the commands to try next. The operator stays installed;
# running it again replaces the hello Task and leaves everything else as it is.
source "$(dirname "$0")/lib.sh"

NAMESPACE="${TASKYARD_DEMO_NAMESPACE:-taskyard-demo}"

"$REPO_ROOT/hack/install-deps.sh" python
if [[ -n "${KUBECONFIG:-}" || -f "$HOME/.kube/config" ]] && kubectl --request-timeout=5s get --raw /readyz >/dev/null 2>&1; then
  log "using the current kube context: $(kubectl config current-context)"
else
  log "no reachable kube context: starting the local cluster"
  "$REPO_ROOT/hack/install-deps.sh"
  "$REPO_ROOT/hack/cluster-up.sh"
  export KUBECONFIG="$KUBECONFIG_PATH"
fi

"$REPO_ROOT/hack/install.sh"

# The Task of examples/hello.yaml; its ClusterAgent is the chart's `shell` preset.
kubectl get namespace "$NAMESPACE" >/dev/null 2>&1 || kubectl create namespace "$NAMESPACE" >/dev/null
kubectl -n "$NAMESPACE" delete task hello --ignore-not-found --wait >/dev/null
"$VENV/bin/python" -c '
import sys, yaml
tasks = [doc for doc in yaml.safe_load_all(sys.stdin) if doc and doc["kind"] == "Task"]
yaml.safe_dump_all(tasks, sys.stdout)' <"$REPO_ROOT/examples/hello.yaml" | kubectl -n "$NAMESPACE" apply -f -
log "waiting for task/hello to succeed"
if ! kubectl -n "$NAMESPACE" wait --for=condition=Succeeded task/hello --timeout=180s >/dev/null; then
  kubectl -n "$NAMESPACE" get task hello -o yaml >&2
  die "task/hello did not succeed"
fi
kubectl -n "$NAMESPACE" get ytask hello
echo
log "kubectl -n $NAMESPACE logs job/hello"
kubectl -n "$NAMESPACE" logs job/hello
echo
# Someone to sign in to the dashboard as: a ServiceAccount that may drive the demo namespace's Tasks.
kubectl -n "$NAMESPACE" apply -f - >/dev/null <<YAML
apiVersion: v1
kind: ServiceAccount
metadata: {name: dashboard}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: taskyard-dashboard}
rules:
  - {apiGroups: [taskyard.dev], resources: [tasks], verbs: [create, get, list, patch]}
  - {apiGroups: [taskyard.dev], resources: [agents], verbs: [get, list]}
  - {apiGroups: [""], resources: [pods, configmaps], verbs: [get, list]}
  - {apiGroups: [""], resources: [pods/log], verbs: [get]}
  - {apiGroups: [""], resources: [events], verbs: [list]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: taskyard-dashboard}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: taskyard-dashboard}
subjects: [{kind: ServiceAccount, name: dashboard}]
YAML
kubeconfig_hint=""
[[ "${KUBECONFIG:-}" == "$KUBECONFIG_PATH" ]] && kubeconfig_hint="export KUBECONFIG=$KUBECONFIG_PATH
  "
cat <<EOF
taskyard is installed (release taskyard in namespace taskyard-system) and stays installed. Next:
  ${kubeconfig_hint}kubectl -n $NAMESPACE get ytask
  kubectl -n $NAMESPACE describe task hello
  $VENV/bin/taskyard -n $NAMESPACE run --agent shell --name greet --wait 'echo "hello from \$TASK_NAME"'
  $VENV/bin/taskyard -n $NAMESPACE logs greet
  $VENV/bin/taskyard -n $NAMESPACE list
  kubectl -n taskyard-system logs deployment/taskyard          # the operator's own log
The task API and its dashboard (docs/api-http.md), on http://localhost:9090/ while this runs:
  kubectl -n taskyard-system port-forward service/taskyard-api 9090:9090
  kubectl -n $NAMESPACE create token dashboard                 # the token to sign in with
The coding agents (claude-code, codex, gemini-cli, opencode) are installed as ClusterAgents too; each
needs its API key in a Secret of the Task's namespace: see docs/agents.md.
EOF
