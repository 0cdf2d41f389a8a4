"""Deleting a Task, or setting spec.cancel, stops its work: the Job and its pods go away."""

from __future__ import annotations

import time

import pytest

from tests.integration.conftest import Kube, OperatorProcess

pytestmark = pytest.mark.integration

LONG_RUNNING = "echo working; sleep 300"


def test_deleting_a_running_task_removes_its_job_and_pod(
    kube: Kube, shell_agent: str, operator: OperatorProcess
) -> None:
    kube.create("Task", "doomed", {"agent": shell_agent, "prompt": LONG_RUNNING})
    kube.wait_for_phase("doomed", "Running")
    kube.wait_for(
        "the agent pod to run", lambda: any(p.status.phase == "Running" for p in kube.pods("doomed"))
    )

    started = time.monotonic()
    kube.delete_task("doomed")

    # No finalizer holds the Task: it is gone at once, and the garbage collector takes the rest.
    kube.wait_for("the Task to be gone", lambda: not kube.task_exists("doomed"), timeout=10)
    kube.wait_for("the Job to be gone", lambda: not kube.jobs("doomed"), timeout=60)
    kube.wait_for("the pod to be gone", lambda: not kube.pods("doomed"), timeout=60)
    # SIGTERM, then SIGKILL after the 10 s grace period (the shell ignores SIGTERM while sleeping).
    assert time.monotonic() - started < 45


def test_deleting_a_task_while_the_operator_is_down_completes(
    kube: Kube, shell_agent: str, operator: OperatorProcess
) -> None:
    kube.create("Task", "orphan", {"agent": shell_agent, "prompt": LONG_RUNNING})
    kube.wait_for_phase("orphan", "Running")
    operator.kill()

    kube.delete_task("orphan")

    kube.wait_for("the Task to be gone", lambda: not kube.task_exists("orphan"), timeout=10)
    kube.wait_for("the Job to be gone", lambda: not kube.jobs("orphan"), timeout=60)


def test_cancel_stops_the_work_and_keeps_the_task_as_a_record(
    kube: Kube, shell_agent: str, operator: OperatorProcess
) -> None:
    kube.create("Task", "stopped", {"agent": shell_agent, "prompt": LONG_RUNNING})
    kube.wait_for_phase("stopped", "Running")
    kube.wait_for(
        "the agent to print",
        lambda: (
            "working" in kube.cluster.kubectl("-n", kube.namespace, "logs", "job/stopped", check=False).stdout
        ),
    )

    kube.patch_task("stopped", {"spec": {"cancel": True}})

    task = kube.wait_for_phase("stopped", "Cancelled")
    assert task["status"]["reason"] == "Cancelled"
    assert task["status"]["logTail"] == "working"  # what the agent wrote before it was stopped
    condition = next(c for c in task["status"]["conditions"] if c["type"] == "Succeeded")
    assert condition["status"] == "False"
    kube.wait_for("the Job to be gone", lambda: not kube.jobs("stopped"), timeout=60)
    kube.wait_for("the pod to be gone", lambda: not kube.pods("stopped"), timeout=60)
    assert kube.task("stopped")["status"]["phase"] == "Cancelled"


def test_cancelling_a_queued_task_never_starts_it(kube: Kube, shell_agent: str, start_operator) -> None:
    start_operator(TASKYARD_MAX_CONCURRENT="1")
    kube.create("Task", "first", {"agent": shell_agent, "prompt": "sleep 8"})
    kube.wait_for_phase("first", "Running")
    kube.create("Task", "second", {"agent": shell_agent, "prompt": "echo never"})
    queued = kube.wait_for_phase("second", "Queued")
    assert queued["status"]["reason"] == "WaitingForCapacity"

    kube.patch_task("second", {"spec": {"cancel": True}})

    kube.wait_for_phase("second", "Cancelled")
    kube.wait_for_phase("first", "Succeeded", timeout=60)
    time.sleep(2)
    assert not kube.jobs("second")


def test_deleting_a_queued_task_frees_its_place(kube: Kube, shell_agent: str, start_operator) -> None:
    start_operator(TASKYARD_MAX_CONCURRENT="1")
    kube.create("Task", "blocker", {"agent": shell_agent, "prompt": "sleep 6"})
    kube.wait_for_phase("blocker", "Running")
    kube.create("Task", "dropped", {"agent": shell_agent, "prompt": "echo dropped"})
    kube.create("Task", "next", {"agent": shell_agent, "prompt": "echo next"})
    kube.wait_for_phase("dropped", "Queued")

    kube.delete_task("dropped")

    task = kube.wait_for_phase("next", "Succeeded", timeout=90)
    assert task["status"]["logTail"] == "next"
    assert not kube.jobs("dropped")


def test_cancel_is_two_steps_and_keeps_what_the_agent_printed_in_its_grace_period(
    kube: Kube, shell_agent: str, operator
) -> None:
    script = "trap 'sleep 3; echo cleaning up; exit 0' TERM; echo working; while true; do sleep 1; done"
    kube.create("Task", "graceful", {"agent": shell_agent, "prompt": script})
    kube.wait_for(
        "the agent to run",
        lambda: (kube.task("graceful").get("status") or {}).get("reason") == "Running",
        timeout=60,
    )
    kube.patch_task("graceful", {"spec": {"cancel": True}})

    stopping = kube.wait_for_phase("graceful", "Cancelling", timeout=30)
    assert stopping["status"]["reason"] == "Cancelling"
    task = kube.wait_for_phase("graceful", "Cancelled", timeout=60)
    # It exited 0 on SIGTERM, but it was stopped by the cancel: Cancelled, not Succeeded.
    assert task["status"]["reason"] == "Cancelled"
    assert task["status"]["logTail"] == "working\ncleaning up"
    assert task["status"]["startTime"] and task["status"]["duration"]
    assert not kube.jobs("graceful") and not kube.pods("graceful")
