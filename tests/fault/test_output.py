"""Whatever an agent prints, its Task ends: bytes that are not UTF-8, 100 MB of output, one 50 MB line,
a log that is one JSON document. Each Task must be final within 30 s of its Job finishing."""

from __future__ import annotations

import json

import pytest
from kubernetes.client import ApiException

from tests.fault.helpers import final_within
from tests.fault.proxy import FaultProxy
from tests.integration.conftest import Kube, OperatorProcess
from tests.integration.test_logs import kept_logs
from tests.integration.test_metrics import scrape

pytestmark = pytest.mark.fault


def test_output_that_is_not_utf8(kube: Kube, shell_agent: str, operator: OperatorProcess) -> None:
    kube.create("Task", "binary", {"agent": shell_agent, "prompt": r"printf 'diff \377\376 done\n'"})
    task = final_within(kube, "binary", 30)
    assert task["status"]["phase"] == "Succeeded"
    assert task["status"]["logTail"] == "diff \ufffd\ufffd done"
    assert kept_logs(kube, "binary") == {1: "diff \ufffd\ufffd done\n"}


def printed(kube: Kube, task: str) -> bytes:
    """What the Task's pod has printed so far (nothing while its container is not running)."""
    pods = kube.pods(task)
    if not pods:
        return b""
    try:
        response = kube.core.read_namespaced_pod_log(
            pods[0].metadata.name, kube.namespace, _preload_content=False
        )
    except ApiException:
        return b""
    return response.data


def test_cancel_of_a_task_that_printed_bad_bytes(
    kube: Kube, shell_agent: str, operator: OperatorProcess
) -> None:
    kube.create("Task", "noisy", {"agent": shell_agent, "prompt": r"printf '\377\n'; sleep 300"})
    kube.wait_for("the agent to print", lambda: printed(kube, "noisy"), timeout=120)
    kube.patch_task("noisy", {"spec": {"cancel": True}})
    task = kube.wait_for_phase("noisy", "Cancelled", timeout=60)
    assert task["status"]["logTail"] == "\ufffd"
    kube.wait_for("the Job to be gone", lambda: not kube.jobs("noisy"), timeout=60)


def test_100_mb_of_output(kube: Kube, shell_agent: str, operator: OperatorProcess) -> None:
    # The kubelet rotates the log past 10 MiB (checking every 10 s) and serves only the newest file. The
    # quiet spell lets it rotate the 100 MB away before the end is written, so the end is in the file it
    # serves: a rotation between the last line and the exit would leave that file empty (next test).
    script = (
        "yes 'the agent keeps talking, line after line' | head -c 100000000; echo; sleep 15; "
        "yes 'the agent is nearly done' | head -c 1000000; echo; echo LAST-LINE"
    )
    kube.create("Task", "chatty", {"agent": shell_agent, "prompt": script, "timeout": "10m"})
    task = final_within(kube, "chatty", 30, overall=600)
    assert task["status"]["phase"] == "Succeeded"
    assert task["status"]["logTail"].endswith("LAST-LINE")
    assert len(task["status"]["logTail"].encode()) <= 8192
    kept = kept_logs(kube, "chatty")[1]
    assert kept.startswith("[taskyard: ") and kept.endswith("LAST-LINE\n")


def test_output_the_kubelet_rotated_away_is_named_not_shown_as_nothing(
    kube: Kube, shell_agent: str, operator: OperatorProcess
) -> None:
    """20 MB, then a quiet spell before the exit: the kubelet rotates the log while the agent is quiet,
    and the file it serves is empty. The status says why there is no output, not just nothing."""
    script = "yes 'the agent keeps talking, line after line' | head -c 20000000; echo LAST-LINE; sleep 15"
    kube.create("Task", "rotated", {"agent": shell_agent, "prompt": script})
    task = final_within(kube, "rotated", 30, overall=300)
    assert task["status"]["phase"] == "Succeeded"
    pod = task["status"]["podName"]
    assert task["status"]["logTail"].startswith(f"[taskyard: the kubelet served an empty log for pod {pod}")
    assert "containerLogMaxSize" in task["status"]["logTail"]


def test_one_50_mb_line(kube: Kube, shell_agent: str, operator: OperatorProcess) -> None:
    script = "head -c 50000000 /dev/zero | tr '\\0' x; echo END"
    kube.create("Task", "longline", {"agent": shell_agent, "prompt": script, "timeout": "10m"})
    task = final_within(kube, "longline", 30, overall=600)
    assert task["status"]["phase"] == "Succeeded"
    assert task["status"]["logTail"].endswith("xxxxEND")
    assert len(task["status"]["logTail"].encode()) <= 8192


def test_a_log_that_is_one_json_document_stays_text(
    kube: Kube, shell_agent: str, operator: OperatorProcess
) -> None:
    document = {"result": "ok", "files": ["a.py", "b.py"], "cost": 0.25}
    kube.create("Task", "jsonout", {"agent": shell_agent, "prompt": f"printf '%s' '{json.dumps(document)}'"})
    task = final_within(kube, "jsonout", 30)
    assert task["status"]["logTail"] == json.dumps(document)
    assert json.loads(kept_logs(kube, "jsonout")[1]) == document


def test_what_a_cancelled_agent_prints_while_it_stops_outlives_its_pod(
    kube: Kube, shell_agent: str, start_operator, fault_proxy: tuple[FaultProxy, object]
) -> None:
    # The kubelet removes a deleted pod's container, log included, as soon as it exits. Here no read
    # after the exit can reach the API server before the pod is gone: only a stream opened while the
    # agent was still stopping can bring back what it printed then.
    proxy, kubeconfig = fault_proxy
    operator = start_operator(KUBECONFIG=str(kubeconfig))
    script = (
        "trap 'echo saving; sleep 8; echo saved; exit 0' TERM; echo working; while true; do sleep 1; done"
    )
    kube.create("Task", "stopping", {"agent": shell_agent, "prompt": script})
    kube.wait_for("the agent to print", lambda: printed(kube, "stopping"), timeout=60)
    kube.patch_task("stopping", {"spec": {"cancel": True}})
    kube.wait_for(
        "the pod to be deleted",
        lambda: any(pod.metadata.deletion_timestamp for pod in kube.pods("stopping")),
        timeout=30,
    )
    kube.wait_for(
        "the operator to open its stream",
        lambda: scrape(operator.env["TASKYARD_METRICS_PORT"])[("taskyard_log_follows_open", ())] == 1,
        timeout=30,
    )

    proxy.drop_requests()
    kube.wait_for("the pod to be gone", lambda: not kube.pods("stopping"), timeout=60)
    proxy.heal()

    task = kube.wait_for_phase("stopping", "Cancelled", timeout=120)
    assert task["status"]["logTail"] == "working\nsaving\nsaved"
    assert kept_logs(kube, "stopping") == {1: "working\nsaving\nsaved\n"}
