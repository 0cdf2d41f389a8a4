"""Kill the operator at any moment, start it again: it converges with no duplicate and no lost write."""

from __future__ import annotations

import time

import pytest

from tests.integration.conftest import Kube

pytestmark = pytest.mark.integration


def test_restart_mid_run_converges_without_a_second_job(kube: Kube, shell_agent: str, start_operator) -> None:
    first = start_operator()
    kube.create("Task", "finished-before", {"agent": shell_agent, "prompt": "echo early"})
    kube.wait_for_phase("finished-before", "Succeeded")
    kube.create("Task", "survivor", {"agent": shell_agent, "prompt": "echo begin; sleep 8; echo end"})
    kube.wait_for_phase("survivor", "Running")
    untouched_version = kube.task("finished-before")["metadata"]["resourceVersion"]

    first.kill()
    time.sleep(1)
    start_operator()

    task = kube.wait_for_phase("survivor", "Succeeded", timeout=90)
    assert task["status"]["logTail"] == "begin\nend"
    assert len(kube.jobs("survivor")) == 1
    assert len(kube.pods("survivor")) == 1
    # A finished Task costs the restarted operator no write at all.
    assert kube.task("finished-before")["metadata"]["resourceVersion"] == untouched_version


def test_tasks_created_while_the_operator_is_down_start_when_it_returns(
    kube: Kube, shell_agent: str, start_operator
) -> None:
    start_operator().kill()
    for name in ("while-down-1", "while-down-2"):
        kube.create("Task", name, {"agent": shell_agent, "prompt": f"echo {name}"})

    start_operator()

    for name in ("while-down-1", "while-down-2"):
        assert kube.wait_for_phase(name, "Succeeded")["status"]["logTail"] == name
        assert len(kube.jobs(name)) == 1


def test_a_task_recreated_under_the_same_name_runs_again_with_its_own_job_and_logs(
    kube: Kube, shell_agent: str, start_operator
) -> None:
    start_operator()
    kube.create("Task", "again", {"agent": shell_agent, "prompt": "echo first"})
    kube.wait_for_phase("again", "Succeeded")

    kube.delete_task("again")
    kube.wait_for("the Task to be gone", lambda: not kube.task_exists("again"), timeout=10)
    recreated = kube.create("Task", "again", {"agent": shell_agent, "prompt": "echo second"})

    task = kube.wait_for_phase("again", "Succeeded", timeout=120)
    assert task["status"]["logTail"] == "second"
    [job] = kube.jobs("again")
    assert job.metadata.owner_references[0].uid == recreated["metadata"]["uid"]
    kept = kube.core.read_namespaced_config_map("again-logs", kube.namespace)
    assert kept.metadata.owner_references[0].uid == recreated["metadata"]["uid"]
