"""Checks shared by the fault tier's tests."""

from __future__ import annotations

import time
from collections import Counter

from tests.integration.conftest import TERMINAL, Kube


def final_within(kube: Kube, name: str, seconds: float, overall: float = 300) -> dict:
    """Waits for the Task's Job to finish, then for the Task to be final; fails unless the Task was
    final within ``seconds`` of its Job's completion."""

    def job_finished():
        jobs = kube.jobs(name)
        if jobs and any(
            c.status == "True" and c.type in ("Complete", "Failed") for c in jobs[0].status.conditions or []
        ):
            return jobs[0]
        return None

    job = kube.wait_for(f"the Job of {name} to finish", job_finished, timeout=overall)
    conditions = [
        c for c in job.status.conditions or [] if c.status == "True" and c.type in ("Complete", "Failed")
    ]
    finished_at = conditions[0].last_transition_time.timestamp()

    def task_final():
        task = kube.task(name)
        return task if (task.get("status") or {}).get("phase") in TERMINAL else None

    task = kube.wait_for(f"task {name} to be final", task_final, timeout=seconds + 30)
    lag = time.time() - finished_at  # an upper bound: the Task may have been final before we looked
    assert lag <= seconds, f"{name} was final only {lag:.0f}s after its Job finished"
    return task


def jobs_per_task(kube: Kube) -> Counter[str]:
    """How many Jobs each Task label has (a duplicate would show as 2)."""
    return Counter(job.metadata.labels["taskyard.dev/task"] for job in kube.jobs())


def all_final(kube: Kube, names: list[str], timeout: float) -> dict[str, dict]:
    """Waits until every named Task is final; returns them by name."""

    def check():
        tasks = kube.custom.list_namespaced_custom_object(
            "taskyard.dev", "v1alpha1", kube.namespace, "tasks"
        )["items"]
        by_name = {t["metadata"]["name"]: t for t in tasks}
        if all((by_name.get(n, {}).get("status") or {}).get("phase") in TERMINAL for n in names):
            return by_name
        return None

    return kube.wait_for(f"all {len(names)} Tasks to be final", check, timeout=timeout, interval=2)
