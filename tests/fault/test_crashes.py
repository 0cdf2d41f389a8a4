"""The operator SIGKILLed five times during a burst of 500 Tasks: none lost, none run twice, all final."""

from __future__ import annotations

import time

import pytest

from tests.fault.helpers import all_final, jobs_per_task
from tests.integration.conftest import Kube

pytestmark = pytest.mark.fault

BURST = 500


def test_operator_killed_five_times_during_a_500_task_burst(
    kube: Kube, shell_agent: str, start_operator
) -> None:
    # A cap keeps the node from starting 500 pods at once; the kills land while Tasks are being admitted,
    # started, and finished.
    settings = {"TASKYARD_MAX_CONCURRENT": "40"}
    operator = start_operator(**settings)
    names = [f"t{n:03d}" for n in range(BURST)]
    created = 0
    for kill in range(5):
        for name in names[created : created + BURST // 5]:
            kube.create("Task", name, {"agent": shell_agent, "prompt": "true"})
        created += BURST // 5
        time.sleep(4 + kill)
        operator.kill()
        operator = start_operator(**settings)

    tasks = all_final(kube, names, timeout=1200)
    phases = {name: tasks[name]["status"]["phase"] for name in names}
    assert [n for n, p in phases.items() if p != "Succeeded"] == []
    jobs = jobs_per_task(kube)
    assert sorted(jobs) == sorted(names)
    assert set(jobs.values()) == {1}
