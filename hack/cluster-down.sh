#!/usr/bin/env bash
# Stops every process hack/cluster-up.sh started (by the pids it recorded, never by name), removes
# the pods' containers, mounts, iptables rules and the pod bridge, then deletes .cluster/.
source "$(dirname "$0")/lib.sh"

RUN="$CLUSTER_DIR/run"

# stop NAME: SIGTERM the recorded pid, SIGKILL after 10 s.
stop() {
  local name=$1 pidfile="$RUN/$1.pid" pid
  [[ -f "$pidfile" ]] || return 0
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
}

# remove_containers: every task and container in containerd's k8s.io namespace, through its API.
remove_containers() {
  [[ -S "$CONTAINERD_SOCK" ]] || return 0
  local id
  for id in $(ctr_k8s tasks ls -q 2>/dev/null); do
    ctr_k8s tasks kill --signal SIGKILL "$id" >/dev/null 2>&1 || true
  done
  sleep 1
  for id in $(ctr_k8s tasks ls -q 2>/dev/null); do ctr_k8s tasks delete --force "$id" >/dev/null 2>&1 || true; done
  for id in $(ctr_k8s containers ls -q 2>/dev/null); do ctr_k8s containers delete "$id" >/dev/null 2>&1 || true; done
}

# kill_pod_processes: anything still inside the kubelet's pod cgroups (a shim that outlived containerd).
kill_pod_processes() {
  local procs root
  # cgroup v1 (the pids hierarchy) or v2 (the unified one): the kubelet's cgroupfs layout is the same.
  for root in /sys/fs/cgroup/pids/kubepods /sys/fs/cgroup/kubepods; do
  for procs in "$root"/cgroup.procs "$root"/*/cgroup.procs "$root"/*/*/cgroup.procs "$root"/*/*/*/cgroup.procs; do
    [[ -f "$procs" ]] || continue
    xargs -r kill -KILL <"$procs" 2>/dev/null || true
  done
  done
}

unmount_all() {
  local target
  # Deepest first, so nested mounts come off before their parents.
  awk -v d="$CLUSTER_DIR" '$2 ~ "^"d {print $2}' /proc/mounts | sort -r | while read -r target; do
    umount "$target" 2>/dev/null || umount -l "$target" 2>/dev/null || true
  done
}

main() {
  if [[ ! -d "$CLUSTER_DIR" ]]; then
    log "no local cluster in $CLUSTER_DIR"
    return
  fi
  stop local-path-provisioner
  stop kube-router
  stop kube-proxy
  stop kubelet
  remove_containers
  stop containerd
  kill_pod_processes
  stop kube-scheduler
  stop kube-controller-manager
  stop kube-apiserver
  stop etcd
  unmount_all
  [[ -x "$K8S_BIN/kube-proxy" ]] && "$K8S_BIN/kube-proxy" --cleanup >/dev/null 2>&1 || true
  [[ -x "$KUBE_ROUTER_BIN/kube-router" ]] && "$KUBE_ROUTER_BIN/kube-router" --cleanup-config >/dev/null 2>&1 || true
  ip link del "$POD_BRIDGE" 2>/dev/null || true
  rm -rf "$CLUSTER_DIR"
  log "local cluster removed"
}

main "$@"
