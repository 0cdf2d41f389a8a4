"""The `taskyard` command against a real cluster and operator, run as a user would run it: a subprocess."""

from __future__ import annotations

import base64
import gzip
import itertools
import json
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from taskyard import stats
from taskyard.render import job_name_for, label_value_for
from tests.conftest import REPO_ROOT
from tests.integration.conftest import Kube, OperatorProcess

pytestmark = pytest.mark.integration

COMMAND = [sys.executable, "-m", "taskyard.cli"]


def taskyard(
    kube: Kube, *args: str, kubeconfig: Path | None = None, timeout: float = 180, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Runs `taskyard --kubeconfig ... -n <test namespace> ARGS` and returns what it did."""
    return subprocess.run(
        [*COMMAND, "--kubeconfig", str(kubeconfig or kube.cluster.kubeconfig), "-n", kube.namespace, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO_ROOT,
    )


def start_taskyard(kube: Kube, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*COMMAND, "--kubeconfig", str(kube.cluster.kubeconfig), "-n", kube.namespace, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
    )


def assert_one_error_line(result: subprocess.CompletedProcess[str], *parts: str) -> str:
    """The command failed with exit code 1 and said so in one line on stderr, without a traceback."""
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    for part in parts:
        assert part in lines[0], lines[0]
    return lines[0]


def table(text: str) -> tuple[list[str], dict[str, list[str]]]:
    """The header and the rows (by first cell) of a table the command printed."""
    lines = text.splitlines()
    return lines[0].split(), {line.split()[0]: line.split() for line in lines[1:]}


def phase_of(kube: Kube, name: str) -> str | None:
    return (kube.task(name).get("status") or {}).get("phase")


def agent_running(kube: Kube, name: str) -> bool:
    """Whether the Task exists (the command under test may still be creating it) and its agent runs."""
    return kube.task_exists(name) and (kube.task(name).get("status") or {}).get("reason") == "Running"


# --- run ---------------------------------------------------------------------------------------------


def test_run_wait_reports_the_status_and_exits_0_on_success(
    kube: Kube, shell_agent: str, operator: OperatorProcess
) -> None:
    result = taskyard(
        kube,
        "run",
        "--agent",
        shell_agent,
        "--name",
        "hello",
        "--priority",
        "high",
        "--wait",
        'echo "hello from $TASK_NAME"',
    )

    assert result.returncode == 0, result
    assert result.stdout == "task/hello created\n"
    # stderr is not a terminal here: one line per change, ending with the outcome.
    lines = result.stderr.splitlines()
    assert lines[-1] == "task/hello Succeeded (Completed): the agent finished with exit code 0"
    assert any(line.startswith("task/hello Running (") for line in lines)
    assert all(line != following for line, following in itertools.pairwise(lines))
    task = kube.task("hello")
    assert task["spec"] == {
        "agent": "shell",
        "prompt": 'echo "hello from $TASK_NAME"',
        "priority": "high",
        "cancel": False,
    }
    assert task["status"]["phase"] == "Succeeded"
    assert task["status"]["logTail"] == "hello from hello"


def test_run_without_wait_exits_at_once_with_a_generated_name(
    kube: Kube, shell_agent: str, operator: OperatorProcess
) -> None:
    result = taskyard(kube, "run", "--agent", shell_agent, "--timeout", "90s", "--retries", "2", "sleep 30")

    assert result.returncode == 0, result
    created = result.stdout.strip()
    assert created.startswith("task/task-") and created.endswith(" created")
    name = created.split()[0].removeprefix("task/")
    task = kube.task(name)
    assert task["spec"]["timeout"] == "90s" and task["spec"]["retries"] == 2
    assert phase_of(kube, name) not in {"Succeeded", "Failed", "Cancelled"}


def test_run_reads_the_prompt_from_a_file_and_from_stdin(
    kube: Kube, shell_agent: str, operator: OperatorProcess, tmp_path: Path
) -> None:
    prompt_file = tmp_path / "prompt.sh"
    prompt_file.write_text("echo from-file\n")
    from_file = taskyard(kube, "run", "--agent", shell_agent, "--name", "f", "-f", str(prompt_file))
    from_stdin = taskyard(kube, "run", "--agent", shell_agent, "--name", "s", "-", stdin="echo from-stdin\n")

    assert from_file.returncode == 0 and from_stdin.returncode == 0, (from_file, from_stdin)
    assert kube.task("f")["spec"]["prompt"] == "echo from-file\n"
    assert kube.task("s")["spec"]["prompt"] == "echo from-stdin\n"
    missing = taskyard(kube, "run", "--agent", shell_agent, "-f", str(tmp_path / "nope.sh"))
    assert_one_error_line(missing, "cannot read the prompt from", "nope.sh")


def test_run_wait_exits_1_when_the_task_fails(
    kube: Kube, shell_agent: str, operator: OperatorProcess
) -> None:
    result = taskyard(
        kube, "run", "--agent", shell_agent, "--name", "broken", "--wait", "echo trying; exit 3"
    )

    assert result.returncode == 1, result
    assert result.stderr.splitlines()[-1] == (
        "task/broken Failed (BackoffLimitExceeded): the agent failed (last exit code 3) after 1 attempt"
    )
    assert phase_of(kube, "broken") == "Failed"


def test_run_follow_streams_the_log_while_the_agent_runs(
    kube: Kube, shell_agent: str, operator: OperatorProcess
) -> None:
    script = "echo line-1; sleep 6; echo line-2; echo line-3"
    process = start_taskyard(kube, "run", "--agent", shell_agent, "--name", "chatty", "--follow", script)
    assert process.stdout is not None
    try:
        assert process.stdout.readline() == "task/chatty created\n"
        assert process.stdout.readline() == "line-1\n"
        # The first line arrived while the agent still sleeps: it is streamed, not read afterwards.
        assert phase_of(kube, "chatty") == "Running"
        rest, errors = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 0, errors
    assert rest == "line-2\nline-3\n"
    assert errors.splitlines()[-1].startswith("task/chatty Succeeded (Completed)")


def test_run_follow_shows_every_attempt_and_exits_1_when_all_fail(
    kube: Kube, shell_agent: str, operator: OperatorProcess
) -> None:
    result = taskyard(
        kube,
        "run",
        "--agent",
        shell_agent,
        "--name",
        "twice",
        "--retries",
        "1",
        "--follow",
        'echo "attempt in $HOSTNAME"; exit 5',
        timeout=240,
    )

    assert result.returncode == 1, result
    pods = [
        pod.metadata.name for pod in sorted(kube.pods("twice"), key=lambda p: p.metadata.creation_timestamp)
    ]
    assert len(pods) == 2
    assert result.stdout.splitlines() == ["task/twice created", *(f"attempt in {pod}" for pod in pods)]


def test_invalid_input_is_refused_by_the_api_server_in_one_line(kube: Kube, crds: None) -> None:
    priority = taskyard(kube, "run", "--agent", "shell", "--priority", "urgent", "echo hi")
    line = assert_one_error_line(priority, "the Task is invalid", "spec.priority", "urgent")
    assert "validation rules were not checked" not in line
    assert_one_error_line(
        taskyard(kube, "run", "--agent", "shell", "--name", "e", ""), 'task "e" is invalid', "spec.prompt"
    )
    assert_one_error_line(
        taskyard(kube, "run", "--agent", "shell", "--timeout", "0s", "x"),
        "spec.timeout",
        "timeout must be longer than zero",
    )
    assert (
        kube.custom.list_namespaced_custom_object("taskyard.dev", "v1alpha1", kube.namespace, "tasks")[
            "items"
        ]
        == []
    )


# --- list --------------------------------------------------------------------------------------------


def test_list_shows_tasks_with_their_phases_and_filters_them(
    kube: Kube, shell_agent: str, operator: OperatorProcess
) -> None:
    kube.create("Task", "good", {"agent": shell_agent, "prompt": "echo ok", "priority": "high"})
    kube.create("Task", "bad", {"agent": shell_agent, "prompt": "exit 1", "priority": "low"})
    kube.create("Task", "lost", {"agent": "ghost", "prompt": "echo never"})
    kube.wait_for_phase("good", "Succeeded")
    kube.wait_for_phase("bad", "Failed")
    kube.wait_for_phase("lost", "Pending")

    result = taskyard(kube, "list")

    assert result.returncode == 0, result
    header, rows = table(result.stdout)
    assert header == ["NAME", "AGENT", "PRIORITY", "PHASE", "REASON", "ATTEMPTS", "DURATION", "AGE"]
    assert sorted(rows) == ["bad", "good", "lost"]
    assert rows["good"][:6] == ["good", "shell", "high", "Succeeded", "Completed", "1"]
    assert rows["good"][6] == kube.task("good")["status"]["duration"]
    assert rows["bad"][:6] == ["bad", "shell", "low", "Failed", "BackoffLimitExceeded", "1"]
    assert rows["lost"][:7] == ["lost", "ghost", "medium", "Pending", "AgentNotFound", "0", "-"]

    assert sorted(table(taskyard(kube, "list", "--phase", "failed").stdout)[1]) == ["bad"]
    both = taskyard(kube, "list", "--phase", "Failed", "--phase", "Pending").stdout
    assert sorted(table(both)[1]) == ["bad", "lost"]
    assert sorted(table(taskyard(kube, "list", "--agent", "ghost").stdout)[1]) == ["lost"]
    assert sorted(table(taskyard(kube, "list", "--priority", "high").stdout)[1]) == ["good"]
    nothing = taskyard(kube, "list", "--phase", "Running", "--agent", "ghost")
    assert (nothing.returncode, nothing.stdout) == (0, "")
    assert nothing.stderr == f'no tasks found in namespace "{kube.namespace}"\n'

    everywhere = taskyard(kube, "list", "-A")
    lines = everywhere.stdout.splitlines()
    assert lines[0].split()[:2] == ["NAMESPACE", "NAME"]
    ours = sorted(line.split()[1] for line in lines[1:] if line.split()[0] == kube.namespace)
    assert ours == ["bad", "good", "lost"]


def test_kubectl_runs_it_as_a_plugin(kube: Kube, shell_agent: str, operator: OperatorProcess) -> None:
    kube.create("Task", "plugged", {"agent": shell_agent, "prompt": "echo hi"})
    scripts = Path(sys.executable).parent
    assert (scripts / "kubectl-taskyard").is_file()
    env = {**os.environ, "PATH": f"{scripts}{os.pathsep}{os.environ['PATH']}"}
    kubeconfig = str(kube.cluster.kubeconfig)
    run = subprocess.run(
        ["kubectl", "taskyard", "--kubeconfig", kubeconfig, "-n", kube.namespace, "list"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert run.returncode == 0, run
    assert "plugged" in table(run.stdout)[1]
    usage = subprocess.run(["kubectl", "taskyard", "--help"], capture_output=True, text=True, env=env)
    assert usage.stdout.startswith("usage: kubectl taskyard ")


# --- logs --------------------------------------------------------------------------------------------


def test_logs_follow_a_running_task_and_read_it_afterwards(
    kube: Kube, shell_agent: str, operator: OperatorProcess
) -> None:
    kube.create("Task", "talker", {"agent": shell_agent, "prompt": "echo first; sleep 20; echo second"})
    kube.wait_for("the agent to run", lambda: agent_running(kube, "talker"))

    process = start_taskyard(kube, "logs", "talker", "-f")
    assert process.stdout is not None
    try:
        assert process.stdout.readline() == "first\n"
        assert phase_of(kube, "talker") == "Running"
        rest, errors = process.communicate(timeout=120)
    finally:
        process.kill()
    assert (process.returncode, rest, errors) == (0, "second\n", "")
    assert phase_of(kube, "talker") == "Succeeded"

    after = taskyard(kube, "logs", "talker")
    assert (after.returncode, after.stdout, after.stderr) == (0, "first\nsecond\n", "")
    assert taskyard(kube, "logs", "talker", "--attempt", "1").stdout == "first\nsecond\n"


def test_logs_of_a_task_that_has_not_started(kube: Kube, operator: OperatorProcess) -> None:
    kube.create("Task", "waiting", {"agent": "ghost", "prompt": "echo"})
    kube.wait_for_phase("waiting", "Pending")

    result = taskyard(kube, "logs", "waiting")

    assert_one_error_line(result, "no logs for task waiting: it has not started (Pending)")


def test_logs_read_the_kept_logs_once_the_pods_are_gone(kube: Kube, crds: None) -> None:
    """The operator's logs ConfigMap, written here by the test itself (no operator runs)."""
    name = "a-task-with-a-rather-long-name-that-is-shortened-for-its-job-and-labels"
    uid = kube.create("Task", name, {"agent": "shell", "prompt": "echo"})["metadata"]["uid"]
    kube.custom.patch_namespaced_custom_object_status(
        "taskyard.dev",
        "v1alpha1",
        kube.namespace,
        "tasks",
        name,
        {
            "status": {
                "phase": "Failed",
                "reason": "BackoffLimitExceeded",
                "jobName": job_name_for(name),
                "startTime": "2025-01-01T10:00:00Z",
                "completionTime": "2025-01-01T10:01:00Z",
            }
        },
    )
    assert job_name_for(name) != name

    def packed(text: str) -> str:
        return base64.b64encode(gzip.compress(text.encode())).decode()

    second = "[taskyard: 4096 bytes dropped from the start]\nsecond try, the end\n"
    kube.core.create_namespaced_config_map(
        kube.namespace,
        {
            "metadata": {
                "name": f"{job_name_for(name)}-logs",
                "labels": {"taskyard.dev/task": label_value_for(name)},
                "ownerReferences": [
                    {
                        "apiVersion": "taskyard.dev/v1alpha1",
                        "kind": "Task",
                        "name": name,
                        "uid": uid,
                        "controller": True,
                    }
                ],
            },
            "data": {"attempt-1.pod": "pod-one", "attempt-2.pod": "pod-two"},
            "binaryData": {
                "attempt-1.log.gz": packed("first try ✓\nfailed\n"),
                "attempt-2.log.gz": packed(second),
            },
        },
    )

    newest = taskyard(kube, "logs", name)
    assert (newest.returncode, newest.stdout, newest.stderr) == (0, second, "")
    assert taskyard(kube, "logs", name, "--attempt", "1").stdout == "first try ✓\nfailed\n"
    assert taskyard(kube, "logs", name, "--attempt", "2").stdout == second
    # -f on a finished Task whose pods are gone has nothing to follow: it prints what was kept.
    assert taskyard(kube, "logs", name, "-f").stdout == second
    missing = taskyard(kube, "logs", name, "--attempt", "3")
    assert_one_error_line(missing, f"no logs kept for attempt 3 of task {name}")


def test_logs_kept_by_the_operator_after_the_pods_are_deleted(
    kube: Kube, shell_agent: str, operator: OperatorProcess
) -> None:
    """Relies on the operator writing the logs ConfigMap after each attempt."""
    kube.create("Task", "gone", {"agent": shell_agent, "prompt": "echo alpha; echo beta; echo gamma"})
    kube.wait_for_phase("gone", "Succeeded")
    live = taskyard(kube, "logs", "gone").stdout
    assert live == "alpha\nbeta\ngamma\n"

    kube.cluster.kubectl(
        "-n", kube.namespace, "delete", "pods", "-l", f"taskyard.dev/task={label_value_for('gone')}"
    )
    kube.wait_for("the pods to be gone", lambda: not kube.pods("gone"))

    kept = taskyard(kube, "logs", "gone")
    assert (kept.returncode, kept.stdout, kept.stderr) == (0, live, "")
    assert taskyard(kube, "logs", "gone", "--attempt", "1").stdout == live
    assert_one_error_line(
        taskyard(kube, "logs", "gone", "--attempt", "2"), "no logs kept for attempt 2 of task gone"
    )


# --- cancel ------------------------------------------------------------------------------------------


def test_cancel_a_running_task_ends_a_waiting_run_with_exit_2(
    kube: Kube, shell_agent: str, operator: OperatorProcess
) -> None:
    waiting = start_taskyard(kube, "run", "--agent", shell_agent, "--name", "sleeper", "--wait", "sleep 300")
    try:
        kube.wait_for("the agent to run", lambda: agent_running(kube, "sleeper"))

        cancelled = taskyard(kube, "cancel", "sleeper")

        assert (cancelled.returncode, cancelled.stdout, cancelled.stderr) == (
            0,
            "task/sleeper cancelled\n",
            "",
        )
        out, errors = waiting.communicate(timeout=120)
    finally:
        waiting.kill()
    assert waiting.returncode == 2, errors
    assert out == "task/sleeper created\n"
    assert errors.splitlines()[-1].startswith("task/sleeper Cancelled (Cancelled)")
    assert kube.task("sleeper")["spec"]["cancel"] is True
    assert phase_of(kube, "sleeper") == "Cancelled"

    again = taskyard(kube, "cancel", "sleeper")
    assert_one_error_line(again, "task sleeper already finished (Cancelled)")


def test_cancel_a_finished_task_changes_nothing(
    kube: Kube, shell_agent: str, operator: OperatorProcess
) -> None:
    kube.create("Task", "done", {"agent": shell_agent, "prompt": "true"})
    kube.wait_for_phase("done", "Succeeded")

    result = taskyard(kube, "cancel", "done")

    assert_one_error_line(result, "task done already finished (Succeeded)")
    assert result.stdout == ""
    assert kube.task("done")["spec"]["cancel"] is False


# --- stats -------------------------------------------------------------------------------------------


def test_stats_count_phases_and_measure_finished_tasks(
    kube: Kube, shell_agent: str, operator: OperatorProcess
) -> None:
    kube.create("Task", "ok-1", {"agent": shell_agent, "prompt": "true"})
    kube.create("Task", "ok-2", {"agent": shell_agent, "prompt": "sleep 2"})
    kube.create("Task", "fails", {"agent": shell_agent, "prompt": "exit 1"})
    kube.create("Task", "stuck", {"agent": "ghost", "prompt": "echo"})
    kube.create("Task", "dropped", {"agent": "ghost", "prompt": "echo"})
    kube.wait_for_phase("dropped", "Pending")
    assert taskyard(kube, "cancel", "dropped").returncode == 0
    finished = [kube.wait_for_phase(name, "Succeeded") for name in ("ok-1", "ok-2")]
    finished.append(kube.wait_for_phase("fails", "Failed"))
    kube.wait_for_phase("dropped", "Cancelled")

    result = taskyard(kube, "stats")

    assert result.returncode == 0, result
    lines = result.stdout.splitlines()
    assert lines[0].split() == [
        "AGENT",
        "TOTAL",
        "PENDING",
        "QUEUED",
        "RUNNING",
        "CANCELLING",
        "SUCCEEDED",
        "FAILED",
        "CANCELLED",
        "SUCCESS",
        "RATE",
        "AVG",
        "DURATION",
        "P95",
        "DURATION",
        "TOKENS",
        "COST",
    ]
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    assert list(rows) == ["ghost", "shell", "TOTAL"]

    def seconds(task: dict[str, Any]) -> float:
        started = datetime.fromisoformat(task["status"]["startTime"].replace("Z", "+00:00"))
        ended = datetime.fromisoformat(task["status"]["completionTime"].replace("Z", "+00:00"))
        return (ended - started).total_seconds()

    durations = [seconds(task) for task in finished]
    average, slowest = stats.format_seconds(sum(durations) / 3), stats.format_seconds(max(durations))
    # The shell agent reports no usage: no tokens, and no cost rather than a cost of zero.
    assert rows["ghost"] == ["2", "1", "0", "0", "0", "0", "0", "1", "n/a", "-", "-", "0", "-"]
    assert rows["shell"] == ["3", "0", "0", "0", "0", "2", "1", "0", "66.7%", average, slowest, "0", "-"]
    assert rows["TOTAL"] == ["5", "1", "0", "0", "0", "2", "1", "1", "66.7%", average, slowest, "0", "-"]


# --- errors ------------------------------------------------------------------------------------------


def test_an_unknown_task_is_named_with_its_namespace(kube: Kube, crds: None) -> None:
    expected = f'error: task "nope" not found in namespace "{kube.namespace}"'
    for command in (["logs", "nope"], ["logs", "nope", "-f"], ["cancel", "nope"]):
        assert assert_one_error_line(taskyard(kube, *command)) == expected


def write_kubeconfig(path: Path, server: str, cluster: dict[str, Any], user: dict[str, Any]) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": server, **cluster}}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "x",
    }
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


def test_an_unreachable_cluster_names_the_server_and_the_reason(kube: Kube, tmp_path: Path) -> None:
    kubeconfig = write_kubeconfig(
        tmp_path / "config", "https://127.0.0.1:1", {"insecure-skip-tls-verify": True}, {"token": "x"}
    )

    started = time.monotonic()
    result = taskyard(kube, "list", kubeconfig=kubeconfig, timeout=60)

    line = assert_one_error_line(result)
    assert line == "error: cannot reach the Kubernetes API server at https://127.0.0.1:1: Connection refused"
    assert time.monotonic() - started < 30


def test_forbidden_by_rbac_shows_the_api_servers_message(kube: Kube, crds: None, tmp_path: Path) -> None:
    kube.core.create_namespaced_service_account(kube.namespace, {"metadata": {"name": "nobody"}})
    token = kube.cluster.kubectl("-n", kube.namespace, "create", "token", "nobody").stdout.strip()
    raw = kube.cluster.kubectl("config", "view", "--raw", "--minify", "--flatten", "-o", "json").stdout
    cluster = json.loads(raw)["clusters"][0]["cluster"]
    kubeconfig = write_kubeconfig(
        tmp_path / "config",
        cluster["server"],
        {"certificate-authority-data": cluster["certificate-authority-data"]},
        {"token": token},
    )
    user = f"system:serviceaccount:{kube.namespace}:nobody"

    listed = taskyard(kube, "list", kubeconfig=kubeconfig)
    created = taskyard(kube, "run", "--agent", "shell", "echo", kubeconfig=kubeconfig)

    assert_one_error_line(listed, "error: forbidden: ", f'User "{user}" cannot list resource "tasks"')
    assert_one_error_line(created, "error: forbidden: ", f'User "{user}" cannot create resource "tasks"')
