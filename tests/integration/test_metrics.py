"""The operator's Prometheus endpoint reports what happened to real Tasks."""

from __future__ import annotations

import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import Kube

pytestmark = pytest.mark.integration


def scrape(port: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_count_tasks_by_phase_outcome_and_duration(
    kube: Kube, shell_agent: str, start_operator
) -> None:
    operator = start_operator(TASKYARD_MAX_CONCURRENT="1")
    port = operator.env["TASKYARD_METRICS_PORT"]
    kube.create("Task", "good", {"agent": shell_agent, "prompt": "sleep 3", "priority": "high"})
    kube.create("Task", "bad", {"agent": shell_agent, "prompt": "exit 1", "priority": "low"})
    kube.wait_for_phase("good", "Running")
    kube.wait_for_phase("bad", "Queued")

    during = scrape(port)
    assert during[("taskyard_queue_depth", ())] == 1
    assert during[("taskyard_tasks", (("agent", "shell"), ("phase", "Queued")))] == 1

    kube.wait_for_phase("good", "Succeeded")
    kube.wait_for_phase("bad", "Failed")
    after = kube.wait_for(
        "the metrics to show both outcomes",
        lambda: (
            (m := scrape(port)).get(
                ("taskyard_tasks_finished_total", (("agent", "shell"), ("outcome", "Failed")))
            )
            and m
        ),
    )

    assert after[("taskyard_tasks_finished_total", (("agent", "shell"), ("outcome", "Succeeded")))] == 1
    assert after[("taskyard_tasks", (("agent", "shell"), ("phase", "Succeeded")))] == 1
    assert after[("taskyard_tasks", (("agent", "shell"), ("phase", "Failed")))] == 1
    assert after[("taskyard_task_duration_seconds_count", (("agent", "shell"),))] == 2
    assert after[("taskyard_task_duration_seconds_sum", (("agent", "shell"),))] >= 3
    assert after[("taskyard_admission_wait_seconds_count", ())] == 2
    assert after[("taskyard_queue_depth", ())] == 0
