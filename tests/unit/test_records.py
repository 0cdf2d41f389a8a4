"""What the cache keeps of a Task: everything while it runs, a few fields once it is finished."""

from __future__ import annotations

import pytest

from taskyard.records import FinishedStatus, project_task

pytestmark = pytest.mark.unit


def task(status: dict) -> dict:
    return {
        "metadata": {"name": "t", "namespace": "ns", "uid": "u", "resourceVersion": "7"},
        "spec": {"agent": "shell", "prompt": "echo hi" * 1000, "priority": "high"},
        "status": status,
    }


def test_a_finished_task_keeps_only_what_admission_metrics_and_clean_up_need():
    status = {
        "phase": "Succeeded",
        "reason": "Completed",
        "jobName": "t",
        "startTime": "2026-12-03T04:00:01Z",
        "completionTime": "2026-12-03T04:00:05Z",
        "logTail": "x" * 8000,
        "result": {"summary": "done"},
        "message": "the agent finished",
    }
    record = project_task(task(status))
    assert record.spec is None
    assert isinstance(record.status, FinishedStatus)
    kept = {k: status[k] for k in ("phase", "reason", "jobName", "startTime", "completionTime")}
    assert dict(record.status) == kept and record.status == kept
    assert len(record.status) == 5 and "podName" not in record.status
    assert record.status.get("logTail") is None and record.status.get("workspace", "none") == "none"
    with pytest.raises(KeyError):
        record.status["result"]
    assert record.as_task()["status"] == kept


def test_an_unfinished_task_keeps_its_spec_and_managed_status():
    record = project_task(task({"phase": "Running", "reason": "Running", "logTail": "x", "attempts": 1}))
    assert record.spec["prompt"].startswith("echo hi")
    assert record.status == {"phase": "Running", "reason": "Running", "attempts": 1}
