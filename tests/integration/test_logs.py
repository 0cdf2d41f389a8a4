"""Each attempt's output outlives its pod: kept in a ConfigMap, salvaged on timeout and cancel."""

from __future__ import annotations

import base64
import gzip

import pytest

from tests.integration.conftest import Kube, OperatorProcess

pytestmark = pytest.mark.integration


def kept_logs(kube: Kube, task: str) -> dict[int, str]:
    """Attempt number → text, from the ConfigMap the operator keeps."""
    config_map = kube.core.read_namespaced_config_map(f"{task}-logs", kube.namespace)
    return {
        int(key.split("-")[1].split(".")[0]): gzip.decompress(base64.b64decode(value)).decode()
        for key, value in (config_map.binary_data or {}).items()
    }


def test_every_attempt_is_kept_after_its_pods_are_gone(
    kube: Kube, shell_agent: str, operator: OperatorProcess
) -> None:
    script = (
        'if [ -f /workspace/tried ]; then echo "attempt two"; else touch /workspace/tried; '
        'echo "attempt one"; exit 1; fi'
    )
    spec = {"agent": shell_agent, "prompt": script, "retries": 1, "workspace": {"size": "64Mi"}}
    kube.create("Task", "twice", spec)
    kube.wait_for_phase("twice", "Succeeded", timeout=180)

    kube.cluster.kubectl("-n", kube.namespace, "delete", "pods", "-l", "taskyard.dev/task=twice", "--wait")

    assert kept_logs(kube, "twice") == {1: "attempt one\n", 2: "attempt two\n"}
    config_map = kube.core.read_namespaced_config_map("twice-logs", kube.namespace)
    assert config_map.metadata.owner_references[0].kind == "Task"


def test_timed_out_task_keeps_what_it_wrote_before_the_kill(
    kube: Kube, shell_agent: str, operator: OperatorProcess
) -> None:
    kube.create(
        "Task", "overdue", {"agent": shell_agent, "prompt": "echo progress; sleep 300", "timeout": "20s"}
    )

    task = kube.wait_for_phase("overdue", "Failed", timeout=90)

    assert task["status"]["reason"] == "DeadlineExceeded"
    kube.wait_for("the pod to be gone", lambda: not kube.pods("overdue"), timeout=60)
    assert kept_logs(kube, "overdue") == {1: "progress\n"}
    assert task["status"]["logTail"] == "progress"


def test_a_timed_out_agent_keeps_what_it_prints_in_its_grace_period(
    kube: Kube, shell_agent: str, operator: OperatorProcess
) -> None:
    # The kubelet removes a deleted pod's container (and its log) the moment it exits: the operator
    # follows the log of a pod that is shutting down, and the final status waits for that follow.
    script = (
        "trap 'echo saving; sleep 2; echo saved; exit 3' TERM; echo progress; while true; do sleep 1; done"
    )
    # Long enough for the pod to start on a busy node: the deadline counts from the Job's start.
    kube.create("Task", "wrapping", {"agent": shell_agent, "prompt": script, "timeout": "20s"})

    task = kube.wait_for_phase("wrapping", "Failed", timeout=90)

    assert task["status"]["reason"] == "DeadlineExceeded"
    assert task["status"]["logTail"] == "progress\nsaving\nsaved"
    assert kept_logs(kube, "wrapping") == {1: "progress\nsaving\nsaved\n"}


def test_cancelled_task_keeps_what_it_wrote(kube: Kube, shell_agent: str, operator: OperatorProcess) -> None:
    kube.create("Task", "halted", {"agent": shell_agent, "prompt": "echo half-way; sleep 300"})
    kube.wait_for(
        "the agent to print",
        lambda: (
            "half-way" in kube.cluster.kubectl("-n", kube.namespace, "logs", "job/halted", check=False).stdout
        ),
    )

    kube.patch_task("halted", {"spec": {"cancel": True}})

    kube.wait_for_phase("halted", "Cancelled")
    kube.wait_for("the pod to be gone", lambda: not kube.pods("halted"), timeout=60)
    assert kept_logs(kube, "halted") == {1: "half-way\n"}
