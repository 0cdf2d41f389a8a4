#!/usr/bin/env bash
# Starts a single-node Kubernetes on this machine from real components, without Docker:
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler, containerd + runc + CNI, kubelet,
# kube-proxy, kube-router's NetworkPolicy firewall and a local-path PVC provisioner. Idempotent: a
# healthy running cluster is left alone.
# Writes the admin kubeconfig to .cluster/kubeconfig; logs go to .cluster/logs/<component>.log.
# `hack/cluster-up.sh --restart-apiserver` kills and restarts only the API server (for the fault tier).
source "$(dirname "$0")/lib.sh"

[[ $EUID -eq 0 ]] || die "the local cluster runs containerd and the kubelet, which need root"

PKI="$CLUSTER_DIR/pki"
RUN="$CLUSTER_DIR/run"
LOGS="$CLUSTER_DIR/logs"
CONF="$CLUSTER_DIR/config"

cluster_healthy() {
  [[ -f "$KUBECONFIG_PATH" ]] || return 1
  kubectl --kubeconfig "$KUBECONFIG_PATH" --request-timeout=5s get --raw /readyz >/dev/null 2>&1 || return 1
  [[ "$(kubectl --kubeconfig "$KUBECONFIG_PATH" --request-timeout=5s get node "$NODE_NAME" \
      -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" == True ]]
}

# --- certificates ------------------------------------------------------------------------------

# issue_cert NAME CN ORG KIND [SANS]: a key and a certificate signed by the cluster CA.
# KIND is server, client or both; SANS is an openssl subjectAltName list.
issue_cert() {
  local name=$1 cn=$2 org=$3 kind=$4 sans=${5:-}
  local usage
  case "$kind" in
    server) usage=serverAuth ;; client) usage=clientAuth ;; both) usage=serverAuth,clientAuth ;;
  esac
  local ext="$PKI/$name.ext" subj="/CN=$cn"
  [[ -n "$org" ]] && subj="/O=$org$subj"
  {
    echo "basicConstraints=CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$usage"
    [[ -n "$sans" ]] && echo "subjectAltName=$sans"
  } >"$ext"
  openssl genrsa -out "$PKI/$name.key" 2048 2>/dev/null
  openssl req -new -key "$PKI/$name.key" -subj "$subj" -out "$PKI/$name.csr" 2>/dev/null
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
    -days 365 -extfile "$ext" -out "$PKI/$name.crt" 2>/dev/null
  rm -f "$PKI/$name.csr" "$ext"
}

make_pki() {
  mkdir -p "$PKI"
  openssl genrsa -out "$PKI/ca.key" 2048 2>/dev/null
  openssl req -x509 -new -key "$PKI/ca.key" -subj "/CN=taskyard-local-ca" -days 365 -out "$PKI/ca.crt" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" 2>/dev/null
  issue_cert etcd etcd "" both "IP:127.0.0.1,DNS:localhost"
  issue_cert apiserver-etcd-client kube-apiserver-etcd-client "" client
  issue_cert apiserver kube-apiserver "" server \
    "IP:127.0.0.1,IP:$NODE_IP,IP:$KUBERNETES_SERVICE_IP,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  issue_cert apiserver-kubelet-client kube-apiserver-kubelet-client system:masters client
  issue_cert admin kubernetes-admin system:masters client
  issue_cert controller-manager system:kube-controller-manager "" client
  issue_cert scheduler system:kube-scheduler "" client
  issue_cert kube-proxy system:kube-proxy "" client
  issue_cert kubelet "system:node:$NODE_NAME" system:nodes client
  issue_cert kubelet-serving "system:node:$NODE_NAME" system:nodes server "IP:$NODE_IP,IP:127.0.0.1,DNS:$NODE_NAME"
  issue_cert local-path-provisioner taskyard:local-path-provisioner "" client
  issue_cert kube-router taskyard:kube-router "" client
  openssl genrsa -out "$PKI/service-account.key" 2048 2>/dev/null
  openssl rsa -in "$PKI/service-account.key" -pubout -out "$PKI/service-account.pub" 2>/dev/null
}

# write_kubeconfig FILE CERT_NAME: a kubeconfig that authenticates with PKI/CERT_NAME.{crt,key}.
write_kubeconfig() {
  local file=$1 cert=$2
  cat >"$file" <<YAML
apiVersion: v1
kind: Config
clusters:
- name: taskyard-local
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
    certificate-authority-data: $(base64 -w0 "$PKI/ca.crt")
users:
- name: $cert
  user:
    client-certificate-data: $(base64 -w0 "$PKI/$cert.crt")
    client-key-data: $(base64 -w0 "$PKI/$cert.key")
contexts:
- name: taskyard-local
  context: {cluster: taskyard-local, user: $cert, namespace: default}
current-context: taskyard-local
YAML
  chmod 600 "$file"
}

# --- processes ---------------------------------------------------------------------------------

# start NAME COMMAND...: runs a component in its own session, logging to LOGS/NAME.log, pid in RUN/NAME.pid.
start() {
  local name=$1; shift
  log "starting $name"
  setsid "$@" >>"$LOGS/$name.log" 2>&1 </dev/null &
  echo $! >"$RUN/$name.pid"
}

fail_component() {
  local name=$1 why=$2
  printf '\nerror: %s %s. Last lines of %s:\n' "$name" "$why" "$LOGS/$name.log" >&2
  tail -n 25 "$LOGS/$name.log" >&2 || true
  exit 1
}

# wait_until NAME SECONDS CHECK...: polls CHECK until it succeeds; fails fast if NAME's process died.
wait_until() {
  local name=$1 timeout=$2; shift 2
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    kill -0 "$(cat "$RUN/$name.pid")" 2>/dev/null || fail_component "$name" "exited during start-up"
    ((SECONDS < deadline)) || fail_component "$name" "was not ready after ${timeout}s"
    sleep 0.5
  done
}

# --- components --------------------------------------------------------------------------------

setup_network() {
  modprobe br_netfilter 2>/dev/null || true
  modprobe overlay 2>/dev/null || true
  sysctl -qw net.ipv4.ip_forward=1
  sysctl -qw net.bridge.bridge-nf-call-iptables=1 2>/dev/null || true
  if ! ip link show "$POD_BRIDGE" >/dev/null 2>&1; then
    ip link add "$POD_BRIDGE" type bridge
  fi
  ip addr replace "$NODE_IP/16" dev "$POD_BRIDGE"
  ip link set "$POD_BRIDGE" up
  mkdir -p "$CONF/cni"
  cat >"$CONF/cni/10-taskyard.conflist" <<JSON
{
  "cniVersion": "1.0.0",
  "name": "taskyard",
  "plugins": [
    {
      "type": "bridge", "bridge": "$POD_BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
      "ipam": {
        "type": "host-local", "dataDir": "$CLUSTER_DIR/cni/ipam",
        "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$NODE_IP"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
JSON
}

start_etcd() {
  start etcd "$ETCD_BIN/etcd" --name "$NODE_NAME" --data-dir "$CLUSTER_DIR/etcd" \
    --listen-client-urls https://127.0.0.1:2379 --advertise-client-urls https://127.0.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster "$NODE_NAME=http://127.0.0.1:2380" \
    --cert-file "$PKI/etcd.crt" --key-file "$PKI/etcd.key" --client-cert-auth --trusted-ca-file "$PKI/ca.crt" \
    --listen-metrics-urls http://127.0.0.1:2381 --quota-backend-bytes 4294967296 --log-level warn
  wait_until etcd 60 curl -sf http://127.0.0.1:2381/health
}

# has_sys_resource: whether this host lets us lower OOM scores (capability 24, CAP_SYS_RESOURCE).
has_sys_resource() {
  local effective
  effective=$(awk '/^CapEff/ {print $2}' /proc/self/status)
  (( (16#$effective >> 24) & 1 ))
}

start_containerd() {
  mkdir -p "$CLUSTER_DIR/containerd"
  cat >"$CONF/containerd.toml" <<TOML
version = 2
root = "$CLUSTER_DIR/containerd/root"
state = "$CLUSTER_DIR/containerd/state"
[grpc]
  address = "$CONTAINERD_SOCK"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$IMAGE_PREFIX/pause:$IMAGE_TAG"
  # The kubelet asks for negative OOM scores (-998 for sandboxes), which need CAP_SYS_RESOURCE; hosts that
  # withhold it (some VMs and sandboxes) fail every pod. Clamp to containerd's own score instead.
  restrict_oom_score_adj = $( [[ -r /proc/self/status ]] && has_sys_resource && echo false || echo true )
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$CONF/cni"
TOML
  start containerd containerd --config "$CONF/containerd.toml"
  wait_until containerd 30 ctr --address "$CONTAINERD_SOCK" version
  "$REPO_ROOT/hack/images.sh" pause shell
}

start_apiserver() {
  start kube-apiserver kube-apiserver \
    --etcd-servers https://127.0.0.1:2379 --etcd-cafile "$PKI/ca.crt" \
    --etcd-certfile "$PKI/apiserver-etcd-client.crt" --etcd-keyfile "$PKI/apiserver-etcd-client.key" \
    --bind-address 0.0.0.0 --secure-port "$APISERVER_PORT" --advertise-address "$NODE_IP" \
    --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
    --client-ca-file "$PKI/ca.crt" \
    --kubelet-client-certificate "$PKI/apiserver-kubelet-client.crt" \
    --kubelet-client-key "$PKI/apiserver-kubelet-client.key" \
    --kubelet-certificate-authority "$PKI/ca.crt" --kubelet-preferred-address-types InternalIP \
    --service-account-key-file "$PKI/service-account.pub" \
    --service-account-signing-key-file "$PKI/service-account.key" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-cluster-ip-range "$SERVICE_CIDR" \
    --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
    --allow-privileged=true --v=1
  wait_until kube-apiserver 120 kubectl --kubeconfig "$KUBECONFIG_PATH" get --raw /readyz
}

start_controllers() {
  write_kubeconfig "$CONF/controller-manager.kubeconfig" controller-manager
  write_kubeconfig "$CONF/scheduler.kubeconfig" scheduler
  start kube-controller-manager kube-controller-manager \
    --kubeconfig "$CONF/controller-manager.kubeconfig" \
    --authentication-kubeconfig "$CONF/controller-manager.kubeconfig" \
    --authorization-kubeconfig "$CONF/controller-manager.kubeconfig" \
    --bind-address 127.0.0.1 --leader-elect=false --use-service-account-credentials \
    --service-account-private-key-file "$PKI/service-account.key" --root-ca-file "$PKI/ca.crt" \
    --cluster-signing-cert-file "$PKI/ca.crt" --cluster-signing-key-file "$PKI/ca.key" \
    --service-cluster-ip-range "$SERVICE_CIDR" --v=1 \
    --kube-api-qps=100 --kube-api-burst=200  # the default 20/s makes deleting a busy namespace crawl
  start kube-scheduler kube-scheduler \
    --kubeconfig "$CONF/scheduler.kubeconfig" \
    --authentication-kubeconfig "$CONF/scheduler.kubeconfig" \
    --authorization-kubeconfig "$CONF/scheduler.kubeconfig" \
    --bind-address 127.0.0.1 --leader-elect=false --v=1
  wait_until kube-controller-manager 60 curl -sfk https://127.0.0.1:10257/healthz
  wait_until kube-scheduler 60 curl -sfk https://127.0.0.1:10259/healthz
}

node_ready() {
  [[ "$(kubectl --kubeconfig "$KUBECONFIG_PATH" get node "$NODE_NAME" \
      -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" == True ]]
}

start_kubelet() {
  write_kubeconfig "$CONF/kubelet.kubeconfig" kubelet
  cat >"$CONF/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: Webhook}
tlsCertFile: $PKI/kubelet-serving.crt
tlsPrivateKeyFile: $PKI/kubelet-serving.key
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
clusterDomain: cluster.local
resolvConf: /etc/resolv.conf
maxPods: 250
serializeImagePulls: false
# Images are imported, never pulled: keep the kubelet from collecting them or evicting pods on a busy disk.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", nodefs.inodesFree: "1%", imagefs.available: "1%"}
YAML
  start kubelet kubelet --config "$CONF/kubelet.yaml" --kubeconfig "$CONF/kubelet.kubeconfig" \
    --root-dir "$CLUSTER_DIR/kubelet" --hostname-override "$NODE_NAME" --node-ip "$NODE_IP" --v=1
  wait_until kubelet 120 node_ready
}

start_kube_proxy() {
  write_kubeconfig "$CONF/kube-proxy.kubeconfig" kube-proxy
  cat >"$CONF/kube-proxy.yaml" <<YAML
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $CONF/kube-proxy.kubeconfig}
hostnameOverride: $NODE_NAME
mode: iptables
clusterCIDR: $POD_CIDR
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 127.0.0.1:10256
conntrack: {maxPerCore: 0}
YAML
  start kube-proxy kube-proxy --config "$CONF/kube-proxy.yaml" --v=1
  wait_until kube-proxy 60 curl -sf http://127.0.0.1:10256/healthz
}

start_network_policy() {
  write_kubeconfig "$CONF/kube-router.kubeconfig" kube-router
  "$REPO_ROOT/hack/network-policy.sh"
  wait_until kube-router 60 curl -sf http://127.0.0.1:20244/healthz
}

start_storage() {
  write_kubeconfig "$CONF/local-path-provisioner.kubeconfig" local-path-provisioner
  "$REPO_ROOT/hack/local-storage.sh"
}

# restart_apiserver: kills the API server process and starts it again (the fault tier's
# "API server restarted mid-run"). Everything else keeps running.
restart_apiserver() {
  local pid
  pid=$(cat "$RUN/kube-apiserver.pid")
  kill -KILL "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
  start_apiserver
}

main() {
  if [[ "${1:-}" == "--restart-apiserver" ]]; then
    restart_apiserver
    return
  fi
  # etcd, helm, kube-router and the provisioner build alongside Kubernetes: a cold Kubernetes build
  # leaves cores idle while it downloads modules and links, and the two share only Go's caches.
  local tools_log tools_pid
  tools_log=$(mktemp)
  "$REPO_ROOT/hack/build-tools.sh" >"$tools_log" 2>&1 &
  tools_pid=$!
  "$REPO_ROOT/hack/build-kubernetes.sh"
  if ! wait "$tools_pid"; then
    cat "$tools_log" >&2
    die "building the cluster's tools failed (above)"
  fi
  grep '^\[' "$tools_log" >&2 || true  # their progress lines, once Kubernetes is built
  rm -f "$tools_log"
  "$REPO_ROOT/hack/images.sh" pause shell

  if cluster_healthy; then
    log "the local cluster is already running: export KUBECONFIG=$KUBECONFIG_PATH"
    return
  fi
  if [[ -d "$CLUSTER_DIR" ]]; then
    log "found the remains of an earlier cluster: cleaning them up first"
    "$REPO_ROOT/hack/cluster-down.sh"
  fi
  local started=$SECONDS
  mkdir -p "$RUN" "$LOGS" "$CONF"
  make_pki
  write_kubeconfig "$KUBECONFIG_PATH" admin
  setup_network
  start_etcd
  start_containerd
  start_apiserver
  start_controllers
  start_kubelet
  start_kube_proxy
  start_network_policy
  start_storage
  log "cluster up in $((SECONDS - started))s: kubernetes $K8S_VERSION, node $NODE_NAME"
  log "export KUBECONFIG=$KUBECONFIG_PATH"
}

main "$@"
