"""A Task's life on a real cluster: Job, pod, status, logs, exit codes, retries, timeouts."""

from __future__ import annotations

import pytest

from tests.conftest import SHELL_IMAGE
from tests.integration.conftest import SHELL_AGENT, Kube, OperatorProcess

pytestmark = pytest.mark.integration


def test_successful_task_reports_logs_exit_code_and_runs_isolated(
    kube: Kube, shell_agent: str, operator: OperatorProcess
) -> None:
    script = 'echo "one"; echo "two"; echo "id=$TASK_ID name=$TASK_NAME"; ls /workspace; id -u'
    created = kube.create("Task", "hello", {"agent": shell_agent, "prompt": script})

    task = kube.wait_for_phase("hello", "Succeeded")

    status = task["status"]
    uid = created["metadata"]["uid"]
    assert status["exitCode"] == 0
    assert status["reason"] == "Completed"
    assert status["jobName"] == "hello"
    assert status["attempts"] == 1
    assert status["logTail"].splitlines() == ["one", "two", f"id={uid} name=hello", "65532"]
    assert status["duration"].endswith("s")
    condition = next(c for c in status["conditions"] if c["type"] == "Succeeded")
    assert condition["status"] == "True"
    # kubectl works on the Task and its Job the way users expect.
    waited = kube.cluster.kubectl("-n", kube.namespace, "wait", "--for=condition=Succeeded", "task/hello")
    assert "condition met" in waited.stdout
    logs = kube.cluster.kubectl("-n", kube.namespace, "logs", "job/hello").stdout
    assert logs.splitlines()[:2] == ["one", "two"]

    [job] = kube.jobs("hello")
    assert job.metadata.owner_references[0].uid == uid
    assert job.metadata.owner_references[0].controller is True
    assert job.metadata.labels["taskyard.dev/task"] == "hello"
    assert job.metadata.labels["taskyard.dev/agent"] == "shell"
    pod_spec = job.spec.template.spec
    container = pod_spec.containers[0]
    assert pod_spec.automount_service_account_token is False
    assert pod_spec.security_context.run_as_non_root is True
    assert pod_spec.security_context.seccomp_profile.type == "RuntimeDefault"
    assert container.security_context.allow_privilege_escalation is False
    assert container.security_context.capabilities.drop == ["ALL"]
    assert container.resources.limits and container.resources.requests
    assert pod_spec.termination_grace_period_seconds == 10
    assert any(v.name == "workspace" and v.empty_dir is not None for v in pod_spec.volumes)


def test_what_the_agent_reports_is_the_structured_result(
    kube: Kube, shell_agent: str, operator: OperatorProcess
) -> None:
    record = (
        '{"taskyard":1,"summary":"Fixed it.","commit":"4b1f0c2","changedFiles":["a.py"],'
        '"usage":{"inputTokens":1200,"outputTokens":80,"costUSD":0.0125,"turns":3}}'
    )
    kube.create(
        "Task", "reported", {"agent": shell_agent, "prompt": f"printf '%s' '{record}' > /dev/termination-log"}
    )
    kube.create(
        "Task", "plain", {"agent": shell_agent, "prompt": "echo 'all 12 tests pass' > /dev/termination-log"}
    )
    stopped = '{"taskyard":1,"summary":"halfway","limit":"maxTurns: 4 turns, more than the limit of 3"}'
    limit = {"agent": "limited", "prompt": f"printf '%s' '{stopped}' > /dev/termination-log; exit 121"}
    kube.create("Agent", "limited", {**SHELL_AGENT, "nonRetryableExitCodes": [120, 121]})
    kube.create("Task", "stopped", limit)

    result = kube.wait_for_phase("reported", "Succeeded")["status"]["result"]
    assert result == {
        "summary": "Fixed it.",
        "commit": "4b1f0c2",
        "changedFiles": ["a.py"],
        "usage": {"inputTokens": 1200, "outputTokens": 80, "costUSD": 0.0125, "turns": 3},
    }
    assert kube.wait_for_phase("plain", "Succeeded")["status"]["result"] == {"summary": "all 12 tests pass\n"}
    status = kube.wait_for_phase("stopped", "Failed")["status"]
    assert status["reason"] == "LimitExceeded"
    assert status["message"] == "the agent was stopped: maxTurns: 4 turns, more than the limit of 3"
    assert status["result"]["summary"] == "halfway"


def test_failing_task_reports_its_exit_code(kube: Kube, shell_agent: str, operator: OperatorProcess) -> None:
    kube.create("Task", "broken", {"agent": shell_agent, "prompt": "echo trying; exit 3"})

    task = kube.wait_for_phase("broken", "Failed")

    assert task["status"]["exitCode"] == 3
    assert task["status"]["reason"] == "BackoffLimitExceeded"
    assert "exit code 3" in task["status"]["message"]
    assert task["status"]["logTail"] == "trying"
    condition = next(c for c in task["status"]["conditions"] if c["type"] == "Succeeded")
    assert condition["status"] == "False"


def test_retry_runs_a_second_attempt_on_the_same_workspace(
    kube: Kube, shell_agent: str, operator: OperatorProcess
) -> None:
    # The first attempt leaves a mark on the persistent workspace and fails; the retry finds it.
    script = "if [ -f /workspace/tried ]; then echo second-attempt; else touch /workspace/tried; exit 1; fi"
    spec = {"agent": shell_agent, "prompt": script, "retries": 2, "workspace": {"size": "64Mi"}}
    kube.create("Task", "flaky", spec)

    task = kube.wait_for_phase("flaky", "Succeeded", timeout=180)

    assert task["status"]["attempts"] == 2
    assert task["status"]["logTail"] == "second-attempt"
    assert task["status"]["workspace"] == "flaky-workspace"
    claim = kube.core.read_namespaced_persistent_volume_claim("flaky-workspace", kube.namespace)
    assert claim.status.phase == "Bound"


def test_non_retryable_exit_code_ends_the_task_at_once(kube: Kube, operator: OperatorProcess) -> None:
    kube.create("Agent", "strict", {**SHELL_AGENT, "nonRetryableExitCodes": [42]})
    kube.create("Task", "fatal", {"agent": "strict", "prompt": "exit 42", "retries": 5})

    task = kube.wait_for_phase("fatal", "Failed")

    assert task["status"]["reason"] == "NonRetryableExitCode"
    assert task["status"]["attempts"] == 1
    assert "42" in task["status"]["message"]


def test_timeout_stops_the_task_with_deadline_exceeded(
    kube: Kube, shell_agent: str, operator: OperatorProcess
) -> None:
    kube.create("Task", "slow", {"agent": shell_agent, "prompt": "echo started; sleep 300", "timeout": "5s"})

    task = kube.wait_for_phase("slow", "Failed", timeout=90)

    assert task["status"]["reason"] == "DeadlineExceeded"
    kube.wait_for("the timed-out pod to be gone", lambda: not kube.pods("slow"), timeout=60)


def test_image_that_cannot_be_pulled_fails_the_task_once_the_patience_runs_out(
    kube: Kube, start_operator
) -> None:
    start_operator(TASKYARD_IMAGE_PULL_PATIENCE_SECONDS="20")
    kube.create("Agent", "ghost", {"image": "localhost/taskyard/does-not-exist:1", "command": ["true"]})
    kube.create("Task", "unpullable", {"agent": "ghost", "prompt": "anything"})

    # A pull failure may be a registry's rate limit: it is retried for a while first.
    kube.wait_for(
        "the pull to back off",
        lambda: (kube.task("unpullable").get("status") or {}).get("reason") == "ImagePullBackOff",
        timeout=60,
    )
    assert kube.task("unpullable")["status"]["phase"] == "Running"
    task = kube.wait_for_phase("unpullable", "Failed", timeout=120)

    assert task["status"]["reason"] == "ImagePullFailed"
    assert "localhost/taskyard/does-not-exist:1" in task["status"]["message"]
    kube.wait_for("the Job of the failed Task to be removed", lambda: not kube.jobs("unpullable"), timeout=60)


def test_a_missing_secret_fails_the_task_after_the_startup_deadline_naming_it(
    kube: Kube, shell_agent: str, start_operator
) -> None:
    start_operator(TASKYARD_STARTUP_DEADLINE_SECONDS="15", TASKYARD_MAX_CONCURRENT="1")
    env = [{"name": "API_KEY", "valueFrom": {"secretKeyRef": {"name": "no-such-secret", "key": "token"}}}]
    kube.create("Task", "unconfigured", {"agent": shell_agent, "prompt": "echo never", "env": env})
    kube.create("Task", "next", {"agent": shell_agent, "prompt": "echo next", "priority": "low"})

    task = kube.wait_for_phase("unconfigured", "Failed", timeout=120)
    assert task["status"]["reason"] == "ContainerConfigError"
    assert "no-such-secret" in task["status"]["message"]
    kube.wait_for_phase("next", "Succeeded", timeout=120)  # the slot was given back


def test_a_missing_service_account_fails_the_task_after_the_startup_deadline(
    kube: Kube, start_operator
) -> None:
    start_operator(TASKYARD_STARTUP_DEADLINE_SECONDS="15")
    agent = {**SHELL_AGENT, "serviceAccountName": "nobody-made-me"}
    kube.create("Agent", "lonely", agent)
    kube.create("Task", "orphaned", {"agent": "lonely", "prompt": "echo never"})

    task = kube.wait_for_phase("orphaned", "Failed", timeout=120)
    assert task["status"]["reason"] == "NoPodCreated"
    assert "'nobody-made-me'" in task["status"]["message"]
    kube.wait_for("the Job to be removed", lambda: not kube.jobs("orphaned"), timeout=60)


def test_an_unbindable_workspace_claim_fails_the_task_after_the_startup_deadline_naming_it(
    kube: Kube, shell_agent: str, start_operator
) -> None:
    start_operator(TASKYARD_STARTUP_DEADLINE_SECONDS="15")
    workspace = {"size": "1Gi", "storageClassName": "no-such-class"}
    kube.create("Task", "unbound", {"agent": shell_agent, "prompt": "echo never", "workspace": workspace})

    task = kube.wait_for_phase("unbound", "Failed", timeout=120)
    assert task["status"]["reason"] == "Unschedulable"
    assert "the workspace claim unbound-workspace is not bound" in task["status"]["message"]
    kube.wait_for("the Job to be removed", lambda: not kube.jobs("unbound"), timeout=60)


def test_an_agent_that_fills_its_workspace_past_the_limit_fails_once_not_in_a_loop(
    kube: Kube, start_operator
) -> None:
    # The kubelet evicts a pod whose emptyDir passes its sizeLimit without a DisruptionTarget
    # condition; a retry would only fill the disk again, so the Task ends at once, naming the limit.
    start_operator()
    kube.create("Agent", "hoarder", {**SHELL_AGENT, "workspaceSizeLimit": "1Mi", "retries": 2})
    prompt = "dd if=/dev/zero of=/workspace/big bs=1048576 count=8 && echo filled && sleep 600"
    kube.create("Task", "hoarding", {"agent": "hoarder", "prompt": prompt, "timeout": "15m"})

    task = kube.wait_for_phase("hoarding", "Failed", timeout=240)
    assert task["status"]["reason"] == "StorageLimitExceeded", task["status"]
    assert 'Usage of EmptyDir volume "workspace" exceeds the limit' in task["status"]["message"]
    assert "workspaceSizeLimit" in task["status"]["message"]
    # The kubelet removes an evicted pod's containers and their logs as soon as they exit, so the log
    # is kept when the operator reads it first and the Task says it was lost otherwise.
    tail = task["status"].get("logTail", "")
    assert "filled" in tail or "the kubelet removed the log of pod hoarding-" in tail, tail
    # Without the operator's verdict the Job would retry twice more and end BackoffLimitExceeded.
    kube.wait_for("the Job to be removed", lambda: not kube.jobs("hoarding"), timeout=90)


def test_unknown_agent_waits_pending_until_the_agent_appears(kube: Kube, operator: OperatorProcess) -> None:
    kube.create("Task", "early", {"agent": "late-agent", "prompt": "echo finally"})

    pending = kube.wait_for_phase("early", "Pending")
    assert pending["status"]["reason"] == "AgentNotFound"
    assert "late-agent" in pending["status"]["message"]
    assert not kube.jobs("early")

    kube.create("Agent", "late-agent", {"image": SHELL_IMAGE, "command": ["sh", "/etc/taskyard/prompt"]})

    task = kube.wait_for_phase("early", "Succeeded")
    assert task["status"]["logTail"] == "finally"


def test_prompt_from_a_config_map(kube: Kube, shell_agent: str, operator: OperatorProcess) -> None:
    kube.core.create_namespaced_config_map(
        kube.namespace, {"metadata": {"name": "prompts"}, "data": {"build": "echo from-config-map"}}
    )
    spec = {"agent": shell_agent, "promptFrom": {"configMapKeyRef": {"name": "prompts", "key": "build"}}}
    kube.create("Task", "referenced", spec)

    task = kube.wait_for_phase("referenced", "Succeeded")

    assert task["status"]["logTail"] == "from-config-map"
