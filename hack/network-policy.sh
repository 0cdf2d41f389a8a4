#!/usr/bin/env bash
# Starts NetworkPolicy enforcement on the local cluster: kube-router's firewall alone, on the host.
# The bridge CNI enforces no policy by itself; with this, a NetworkPolicy restricts pods here as it
# does on a real cluster's network plugin. kube-router's routing and service proxy stay off (kube-proxy
# serves Services), and so do the parts its security advisories concern.
source "$(dirname "$0")/lib.sh"

RUN="$CLUSTER_DIR/run"
CONF="$CLUSTER_DIR/config"

kubectl --kubeconfig "$KUBECONFIG_PATH" apply -f "$REPO_ROOT/hack/manifests/network-policy.yaml" >/dev/null

log "starting kube-router (network policies)"
setsid "$KUBE_ROUTER_BIN/kube-router" --kubeconfig "$CONF/kube-router.kubeconfig" \
  --hostname-override "$NODE_NAME" --run-firewall=true --run-router=false --run-service-proxy=false \
  --service-cluster-ip-range "$SERVICE_CIDR" --health-port 20244 --metrics-port 0 \
  --iptables-sync-period 1m --v 1 \
  >>"$CLUSTER_DIR/logs/kube-router.log" 2>&1 </dev/null &
echo $! >"$RUN/kube-router.pid"
