"""The priority queue on a real cluster: order, limits, and the Queued phase."""

from __future__ import annotations

import itertools
import json
import threading
import time
from datetime import datetime

import pytest

from tests.integration.conftest import Kube

pytestmark = pytest.mark.integration

ADMITTED_AT = "taskyard.dev/admitted-at"


def admitted_at(kube: Kube, task: str) -> datetime:
    [job] = kube.jobs(task)
    return datetime.fromisoformat(job.metadata.annotations[ADMITTED_AT])


def test_priority_order_under_a_concurrency_limit_of_one(
    kube: Kube, shell_agent: str, start_operator
) -> None:
    start_operator(TASKYARD_MAX_CONCURRENT="1")
    kube.create("Task", "blocker", {"agent": shell_agent, "prompt": "sleep 5"})
    kube.wait_for_phase("blocker", "Running")
    # Created lowest first, so creation order is the opposite of the order they must run in.
    for priority in ("low", "medium", "high", "critical"):
        kube.create(
            "Task", f"p-{priority}", {"agent": shell_agent, "prompt": "sleep 1", "priority": priority}
        )
    for priority in ("low", "medium", "high", "critical"):
        assert kube.wait_for_phase(f"p-{priority}", "Queued", "Running")["status"]["phase"] == "Queued"

    for priority in ("low", "medium", "high", "critical"):
        kube.wait_for_phase(f"p-{priority}", "Succeeded", timeout=180)

    order = sorted(("critical", "high", "medium", "low"), key=lambda p: admitted_at(kube, f"p-{p}"))
    assert order == ["critical", "high", "medium", "low"]
    # With a limit of one, each Task started only after the one before it had finished.
    tasks = [kube.task(f"p-{p}")["status"] for p in order]
    for earlier, later in itertools.pairwise(tasks):
        assert earlier["completionTime"] <= later["startTime"]


def test_a_burst_respects_limits_and_priority(kube: Kube, shell_agent: str, start_operator) -> None:
    limit = 3
    start_operator(TASKYARD_MAX_CONCURRENT=str(limit))
    priorities = ["low", "medium", "high", "critical"]
    names = [f"burst-{i:02d}" for i in range(40)]
    most_running = 0
    done = threading.Event()

    def watch_concurrency() -> None:
        nonlocal most_running
        while not done.is_set():
            running = [
                j
                for j in kube.jobs()
                if not any(c.type in ("Complete", "Failed") for c in j.status.conditions or [])
            ]
            most_running = max(most_running, len(running))
            time.sleep(0.2)

    watcher = threading.Thread(target=watch_concurrency, daemon=True)
    watcher.start()
    for i, name in enumerate(names):
        kube.create("Task", name, {"agent": shell_agent, "prompt": "true", "priority": priorities[i % 4]})
    for name in names:
        kube.wait_for_phase(name, "Succeeded", timeout=400)
    done.set()
    watcher.join()

    assert most_running <= limit
    assert len(kube.jobs()) == len(names)  # one Job per Task, never two
    # No inversion: once the burst was queued, nothing started ahead of a waiting higher priority.
    admitted = sorted(names, key=lambda n: admitted_at(kube, n))
    rank = {name: priorities[::-1].index(priorities[i % 4]) for i, name in enumerate(names)}
    queued_tail = admitted[limit:]  # the first `limit` were admitted while the burst was still arriving
    assert [rank[n] for n in queued_tail] == sorted(rank[n] for n in queued_tail)


def test_priorities_map_to_priority_classes_that_exist(kube: Kube, shell_agent: str, start_operator) -> None:
    klass = {
        "apiVersion": "scheduling.k8s.io/v1",
        "kind": "PriorityClass",
        "metadata": {"name": "taskyard-high"},
        "value": 100000,
        "preemptionPolicy": "Never",
    }
    kube.cluster.kubectl("apply", "-f", "-", input=json.dumps(klass))
    try:
        start_operator()
        kube.create("Task", "urgent", {"agent": shell_agent, "prompt": "true", "priority": "high"})
        kube.create("Task", "ordinary", {"agent": shell_agent, "prompt": "true", "priority": "medium"})
        kube.wait_for_phase("urgent", "Succeeded")
        kube.wait_for_phase("ordinary", "Succeeded")

        [urgent] = kube.jobs("urgent")
        [ordinary] = kube.jobs("ordinary")
        assert urgent.spec.template.spec.priority_class_name == "taskyard-high"
        assert ordinary.spec.template.spec.priority_class_name is None  # no taskyard-medium class exists
    finally:
        kube.cluster.kubectl("delete", "priorityclass", "taskyard-high", "--ignore-not-found")
