"""Failures stay with their Task, and finished work is tidied up: a Job creation that a quota refuses
backs off on its own without holding a slot or the head of the queue; a finished Task's Job and pods go
after the retention period while its logs stay."""

from __future__ import annotations

import pytest
from kubernetes import client

from tests.integration.conftest import Kube
from tests.integration.test_logs import kept_logs

pytestmark = pytest.mark.integration


def test_a_task_whose_job_cannot_be_created_backs_off_without_holding_the_queue(
    kube: Kube, shell_agent: str, start_operator
) -> None:
    # The quota forbids claims: the critical Task (it asks for one) cannot start; the low one can.
    quota = client.V1ResourceQuota(
        metadata=client.V1ObjectMeta(name="no-claims"),
        spec=client.V1ResourceQuotaSpec(hard={"count/persistentvolumeclaims": "0"}),
    )
    kube.core.create_namespaced_resource_quota(kube.namespace, quota)
    start_operator(TASKYARD_MAX_CONCURRENT="1")
    blocked = {
        "agent": shell_agent,
        "prompt": "echo never",
        "priority": "critical",
        "workspace": {"size": "64Mi"},
    }
    kube.create("Task", "blocked", blocked)
    kube.wait_for(
        "the quota error in the status",
        lambda: (kube.task("blocked").get("status") or {}).get("reason") == "JobCreateFailed",
        timeout=60,
    )
    status = kube.task("blocked")["status"]
    assert status["phase"] == "Queued"
    assert "exceeded quota" in status["message"] and "trying again in" in status["message"]

    kube.create("Task", "behind", {"agent": shell_agent, "prompt": "echo ran", "priority": "low"})
    done = kube.wait_for_phase("behind", "Succeeded", timeout=90)  # the only slot was not held
    assert done["status"]["logTail"] == "ran"

    kube.core.delete_namespaced_resource_quota("no-claims", kube.namespace)
    # Its own back-off, then it runs: well before the resync (300 s) would look at it again.
    task = kube.wait_for_phase("blocked", "Succeeded", timeout=120)
    assert task["status"]["logTail"] == "never"
    assert len(kube.jobs("blocked")) == 1


def test_a_finished_tasks_job_goes_after_the_retention_period_and_its_logs_stay(
    kube: Kube, shell_agent: str, start_operator
) -> None:
    start_operator(TASKYARD_JOB_RETENTION_SECONDS="5")
    kube.create("Task", "kept", {"agent": shell_agent, "prompt": "echo worth keeping"})
    task = kube.wait_for_phase("kept", "Succeeded", timeout=90)
    assert kube.jobs("kept")  # still there right after it finished

    kube.wait_for("the Job to be removed", lambda: not kube.jobs("kept"), timeout=60)
    kube.wait_for("its pods to be removed", lambda: not kube.pods("kept"), timeout=60)
    after = kube.task("kept")
    assert after["status"] == task["status"]  # the Task is untouched
    assert kept_logs(kube, "kept") == {1: "worth keeping\n"}


def test_retention_of_zero_removes_the_job_as_soon_as_the_task_is_final(
    kube: Kube, shell_agent: str, start_operator
) -> None:
    start_operator(TASKYARD_JOB_RETENTION_SECONDS="0")
    kube.create("Task", "brief", {"agent": shell_agent, "prompt": "echo brief"})
    kube.wait_for_phase("brief", "Succeeded", timeout=90)
    kube.wait_for("the Job to be removed", lambda: not kube.jobs("brief"), timeout=30)
    assert kept_logs(kube, "brief") == {1: "brief\n"}


def test_a_task_with_a_ttl_is_deleted_after_it_finished_and_others_stay(
    kube: Kube, shell_agent: str, start_operator
) -> None:
    start_operator()
    kube.create(
        "Task", "ephemeral", {"agent": shell_agent, "prompt": "echo gone", "ttlSecondsAfterFinished": 3}
    )
    kube.create("Task", "record", {"agent": shell_agent, "prompt": "echo stays"})
    kube.wait_for_phase("record", "Succeeded", timeout=180)
    kube.wait_for("the Task with a TTL to be deleted", lambda: not kube.task_exists("ephemeral"), timeout=60)
    kube.wait_for("its Job to go with it", lambda: not kube.jobs("ephemeral"), timeout=60)
    assert kube.task("record")["status"]["phase"] == "Succeeded"  # no TTL, no default: it stays


def test_the_operator_default_ttl_applies_to_tasks_without_their_own(
    kube: Kube, shell_agent: str, start_operator
) -> None:
    start_operator(TASKYARD_TASK_TTL_SECONDS="2")
    kube.create("Task", "default-ttl", {"agent": shell_agent, "prompt": "echo bye"})
    kube.create(
        "Task", "own-ttl", {"agent": shell_agent, "prompt": "echo later", "ttlSecondsAfterFinished": 3600}
    )
    kube.wait_for_phase("own-ttl", "Succeeded", timeout=90)
    kube.wait_for("the Task to be deleted", lambda: not kube.task_exists("default-ttl"), timeout=60)
    assert kube.task("own-ttl")["status"]["phase"] == "Succeeded"  # its own TTL wins
