#!/usr/bin/env bash
# Installs the default StorageClass of the local cluster and starts the local-path provisioner
# on the host, so PVCs bind dynamically the way they do on kind.
source "$(dirname "$0")/lib.sh"

RUN="$CLUSTER_DIR/run"
CONF="$CLUSTER_DIR/config"
volume_root="$CLUSTER_DIR/volumes"
mkdir -p "$volume_root"

sed -e "s|@VOLUME_ROOT@|$volume_root|" -e "s|@HELPER_IMAGE@|$IMAGE_PREFIX/shell:$IMAGE_TAG|" \
  "$REPO_ROOT/hack/manifests/local-path-storage.yaml" >"$CONF/local-path-storage.yaml"
kubectl --kubeconfig "$KUBECONFIG_PATH" apply -f "$CONF/local-path-storage.yaml" >/dev/null
kubectl --kubeconfig "$KUBECONFIG_PATH" -n local-path-storage get configmap local-path-config \
  -o jsonpath='{.data.config\.json}' >"$CONF/local-path-config.json"
kubectl --kubeconfig "$KUBECONFIG_PATH" -n local-path-storage get configmap local-path-config \
  -o jsonpath='{.data.helperPod\.yaml}' >"$CONF/local-path-helper-pod.yaml"

log "starting local-path-provisioner"
setsid "$LPP_BIN/local-path-provisioner" start \
  --kubeconfig "$CONF/local-path-provisioner.kubeconfig" \
  --namespace local-path-storage --service-account-name local-path-helper \
  --config "$CONF/local-path-config.json" --helper-pod-file "$CONF/local-path-helper-pod.yaml" \
  >>"$CLUSTER_DIR/logs/local-path-provisioner.log" 2>&1 </dev/null &
echo $! >"$RUN/local-path-provisioner.pid"
