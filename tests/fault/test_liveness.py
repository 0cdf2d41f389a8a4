"""The liveness probe on a real kubelet: an operator whose work loop stops making progress is restarted.

The operator runs in the cluster from the chart, reaching the API server through the fault proxy (on
the node's address, so its pod can connect). The proxy then swallows everything the operator sends
while its open watches keep delivering: new Tasks arrive, every call to act on them hangs. Every call
has a timeout, so to show the last line of defence (an await that never returns however it came
about) the test raises the call timeouts far above the stall limit. /healthz then answers 500, the
kubelet restarts the container, and the new process finishes the work: nothing lost, nothing twice.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.conftest import Cluster
from tests.e2e.conftest import CHART, Release
from tests.fault.helpers import jobs_per_task
from tests.fault.proxy import FaultProxy
from tests.integration.conftest import Kube

# The release watches its own namespace only, makes no ClusterAgents or PriorityClasses, and its
# admission policies judge that namespace only: it shares the cluster with the other tests.
pytestmark = pytest.mark.fault

STALL_SECONDS = 20


def node_address(cluster: Cluster) -> str:
    addresses = json.loads(
        cluster.kubectl("get", "nodes", "-o", "jsonpath={.items[0].status.addresses}").stdout
    )
    return next(a["address"] for a in addresses if a["type"] == "InternalIP")


@pytest.fixture
def in_cluster_proxy(cluster: Cluster) -> Iterator[FaultProxy]:
    """A fault proxy in front of the API server that pods can reach, at the node's address."""
    config = yaml.safe_load(cluster.kubeconfig.read_text())
    host, port = config["clusters"][0]["cluster"]["server"].removeprefix("https://").rsplit(":", 1)
    proxy = FaultProxy(host, int(port), listen_host=node_address(cluster)).start()
    try:
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture
def release_through_proxy(
    cluster: Cluster, crds: None, namespace: str, in_cluster_proxy: FaultProxy, tmp_path: Path
) -> Iterator[Release]:
    # The CRDs come from the fixture every test sharing the cluster uses: the release never creates them.
    release = Release(cluster, f"taskyard-liveness-{uuid.uuid4().hex[:6]}", namespace)
    values = {
        "watchNamespaces": [namespace],
        "agents": {"shell": {"enabled": False}},  # the test namespace has its own shell Agent
        "priorityClasses": {"create": False},
        "metrics": {"service": {"enabled": False}},
        # Restart after two failed checks five seconds apart: sooner than the calls' own time limits
        # (the TLS handshake's 60 s among them) would end the stall by themselves.
        "livenessProbe": {"periodSeconds": 5, "failureThreshold": 2, "timeoutSeconds": 5},
        "extraEnv": [
            {"name": "KUBERNETES_SERVICE_HOST", "value": node_address(cluster)},
            {"name": "KUBERNETES_SERVICE_PORT", "value": str(in_cluster_proxy.port)},
            {"name": "TASKYARD_STALL_SECONDS", "value": str(STALL_SECONDS)},
            {"name": "TASKYARD_REQUEST_TIMEOUT_SECONDS", "value": "900"},
            {"name": "TASKYARD_RECONCILE_DEADLINE_SECONDS", "value": "1000"},
        ],
    }
    values_file = tmp_path / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    try:
        release.helm(
            "install",
            release.name,
            str(CHART),
            "-f",
            str(values_file),
            *release.image_values(coding_agents=False),
        )
        release.wait_ready()
        yield release
    finally:
        release.helm("uninstall", release.name, "--wait", check=False)


def operator_pod(cluster: Cluster, release: Release) -> dict:
    pods = json.loads(
        cluster.kubectl(
            "-n",
            release.namespace,
            "get",
            "pods",
            "-l",
            f"app.kubernetes.io/instance={release.name},app.kubernetes.io/component=operator",
            "-o",
            "json",
        ).stdout
    )["items"]
    assert len(pods) == 1, [p["metadata"]["name"] for p in pods]
    return pods[0]


def restarts(pod: dict) -> int:
    return sum(s.get("restartCount", 0) for s in pod["status"].get("containerStatuses") or [])


def liveness_failures(cluster: Cluster, release: Release, pod_name: str) -> list[str]:
    events = json.loads(
        cluster.kubectl(
            "-n", release.namespace, "get", "events", "--field-selector",
            f"involvedObject.name={pod_name},reason=Unhealthy", "-o", "json",
        ).stdout
    )["items"]  # fmt: skip
    return [e["message"] for e in events if e["message"].startswith("Liveness probe failed")]


def test_a_stalled_work_loop_fails_liveness_and_the_kubelet_restarts_the_operator(
    kube: Kube,
    shell_agent: str,
    cluster: Cluster,
    operator_image: str,
    in_cluster_proxy: FaultProxy,
    release_through_proxy: Release,
) -> None:
    release = release_through_proxy
    kube.create("Task", "before", {"agent": shell_agent, "prompt": "echo before"})
    kube.wait_for_phase("before", "Succeeded", timeout=120)
    pod = operator_pod(cluster, release)
    assert restarts(pod) == 0

    in_cluster_proxy.drop_requests()
    names = [f"during-{i}" for i in range(3)]
    for name in names:
        kube.create("Task", name, {"agent": shell_agent, "prompt": f"echo {name}"})

    # The Tasks' ADDED events arrive, their Job creations hang: after STALL_SECONDS without progress
    # /healthz answers 500 (not a timeout: the process itself is alive and answering).
    failures = kube.wait_for(
        "the liveness probe to fail",
        lambda: liveness_failures(cluster, release, pod["metadata"]["name"]),
        timeout=STALL_SECONDS + 120,
        interval=2,
    )
    assert any("statuscode: 500" in message for message in failures), failures
    for name in names:
        assert not kube.jobs(name), "a Job was created although every request was swallowed"

    in_cluster_proxy.heal()  # the stuck process keeps its silent connections; a new one starts afresh
    try:
        kube.wait_for(
            "the kubelet to restart the operator",
            lambda: restarts(operator_pod(cluster, release)) >= 1,
            timeout=180,
            interval=2,
        )
    except BaseException:
        name = pod["metadata"]["name"]
        logs = cluster.kubectl("-n", release.namespace, "logs", name, "--tail=40", check=False).stdout
        events = cluster.kubectl("-n", release.namespace, "get", "events", check=False).stdout
        print(f"--- operator log ---\n{logs}\n--- events ---\n{events}")
        raise
    for name in names:
        task = kube.wait_for_phase(name, "Succeeded", timeout=180)
        assert name in task["status"]["logTail"]
    counts = jobs_per_task(kube)
    assert all(counts[name] == 1 for name in [*names, "before"]), counts
