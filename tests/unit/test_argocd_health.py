"""The Argo CD health check for Tasks (docs/argocd/task-health.lua), run in Lua 5.1 like Argo CD's gopher-lua.

The Task statuses come from taskyard.phase.derive_status, so they are the statuses the operator writes.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import lupa
import pytest

from taskyard.phase import JobView, Observation, PodView, derive_status

pytestmark = pytest.mark.unit

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "docs" / "argocd" / "task-health.lua"
NOW = "2025-03-04T10:02:07Z"
STARTED = "2025-03-04T10:00:00Z"
FINISHED = "2025-03-04T10:02:05Z"
MISSING_AGENT = (
    "agent 'coder' not found: no Agent 'coder' in namespace 'team-a' and no ClusterAgent 'coder'; "
    "the Task starts once one exists"
)


def _runtime() -> Any:
    try:
        from lupa import lua51

        return lua51.LuaRuntime()
    except ImportError:  # a lupa built without Lua 5.1: the script uses nothing newer
        return lupa.LuaRuntime()


def task(spec: dict[str, Any] | None = None, status: dict[str, Any] | None = None) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "taskyard.dev/v1alpha1",
        "kind": "Task",
        "metadata": {
            "name": "fix-flaky-test",
            "namespace": "team-a",
            "uid": "0d6c4f8e-4b1e-4c55-9a57-2f7c1e0b9a11",
            "generation": 1,
            "creationTimestamp": "2025-03-04T09:59:58Z",
        },
        "spec": {"agent": "coder", "prompt": "fix it", "priority": "medium", **(spec or {})},
    }
    if status is not None:
        obj["status"] = status
    return obj


def derived(seen: Observation, spec: dict[str, Any] | None = None) -> dict[str, Any]:
    """A Task with the status the operator derives for this observation."""
    base = task(spec)
    return task(spec, derive_status(base, seen, NOW))


def _job(**fields: Any) -> JobView:
    return JobView(name="fix-flaky-test", uid="job-uid", start_time=STARTED, **fields)


def _pod(**fields: Any) -> PodView:
    return PodView(name="fix-flaky-test-x7k2p", created=STARTED, job_uid="job-uid", **fields)


def health(obj: dict[str, Any]) -> tuple[str, str]:
    lua = _runtime()
    lua.globals().obj = lua.table_from(obj, recursive=True)
    result = lua.execute(SCRIPT.read_text())
    return result["status"], result["message"]


def test_no_status_yet_is_progressing():
    assert health(task()) == ("Progressing", "Waiting for the taskyard operator to pick up the Task")
    assert health(task(status={}))[0] == "Progressing"


def test_pending_for_a_missing_agent_is_progressing():
    obj = derived(Observation(agent_found=False, agent_description=MISSING_AGENT))
    assert obj["status"]["reason"] == "AgentNotFound"
    assert health(obj) == ("Progressing", f"Pending (AgentNotFound): {MISSING_AGENT}")


def test_queued_is_progressing():
    message = "waiting for a free slot under the concurrency limits (at most 1 in the cluster)"
    obj = derived(Observation(queued_message=message))
    assert health(obj) == ("Progressing", f"Queued (WaitingForCapacity): {message}")


def test_running_is_progressing():
    starting = derived(Observation(job=_job(active=1)))
    assert health(starting) == (
        "Progressing",
        "Running (Starting): the Job is created; waiting for its pod to start",
    )
    running = derived(Observation(job=_job(active=1), pod=_pod(phase="Running", running=True)))
    assert health(running) == ("Progressing", "Running: the agent is running in pod fix-flaky-test-x7k2p")


def test_succeeded_is_healthy():
    obj = derived(
        Observation(job=_job(succeeded=1, complete=True, completion_time=FINISHED), pod=_pod(exit_code=0))
    )
    assert health(obj) == ("Healthy", "Succeeded (Completed): the agent finished with exit code 0")


def test_failed_is_degraded_with_the_reason_and_message():
    obj = derived(
        Observation(
            job=_job(failed=2, failed_reason="BackoffLimitExceeded", completion_time=FINISHED),
            pod=_pod(phase="Failed", exit_code=3),
        )
    )
    assert health(obj) == (
        "Degraded",
        "Failed (BackoffLimitExceeded): the agent failed (last exit code 3) after 2 attempts",
    )
    timed_out = derived(Observation(job=_job(failed=1, failed_reason="DeadlineExceeded")))
    assert health(timed_out) == (
        "Degraded",
        "Failed (DeadlineExceeded): the Task ran longer than its timeout and was stopped",
    )
    image = derived(
        Observation(
            job=_job(active=1),
            pod=_pod(
                image="ghcr.io/example/nope:1", waiting_reason="ImagePullBackOff", waiting_message="not found"
            ),
        )
    )
    assert health(image) == (
        "Degraded",
        "Failed (ImagePullFailed): the agent image 'ghcr.io/example/nope:1' cannot be pulled: not found",
    )


def test_cancelling_progresses_then_cancelled_is_healthy_and_says_so():
    stopping = derived(Observation(job=_job(active=1, deleting=True)), spec={"cancel": True})
    assert stopping["status"]["phase"] == "Cancelling"
    assert health(stopping) == (
        "Progressing",
        "Cancelling: cancelled by spec.cancel; the agent is being stopped",
    )
    obj = derived(Observation(), spec={"cancel": True})
    assert obj["status"]["phase"] == "Cancelled"
    assert health(obj) == (
        "Healthy",
        "Cancelled: cancelled by spec.cancel; the Job and its pods were deleted",
    )


def test_cancel_set_after_the_task_finished_keeps_it_healthy():
    """The operator leaves a final status alone, so a late spec.cancel changes nothing."""
    finished = derived(Observation(job=_job(succeeded=1, complete=True, completion_time=FINISHED)))
    late = task({"cancel": True}, finished["status"])
    late["metadata"]["generation"] = 2
    assert health(late)[0] == "Healthy"


def test_an_unknown_phase_is_unknown():
    assert health(task(status={"phase": "Paused"})) == ("Unknown", "Paused")


def test_the_gitops_guide_shows_the_script_as_it_is():
    """docs/gitops.md embeds task-health.lua in the argocd-cm snippet; the two must not drift apart."""
    guide = (REPO_ROOT / "docs" / "gitops.md").read_text()
    assert "resource.customizations.health.taskyard.dev_Task: |" in guide
    assert textwrap.indent(SCRIPT.read_text(), "    ") in guide
