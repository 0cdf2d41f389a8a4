"""The task API (`taskyard serve`) on the real cluster, driven by the reference document's own clients:
its curl calls, its Python `requests` + `sseclient` client and its Node.js `EventSource` client, with a
ServiceAccount's token. RBAC is the cluster's: a token without rights gets a 403, none a 401."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.integration.conftest import Kube, OperatorProcess

pytestmark = pytest.mark.integration

SEED_CLIENTS = Path(__file__).parent / "seed_clients"
SEED_URL = "http://localhost:9090"
EVENTSOURCE = "eventsource@2.0.2"  # the package the document's Node client requires, as it was then
ROBOT_RULES = [
    {"apiGroups": ["taskyard.dev"], "resources": ["tasks"], "verbs": ["create", "get", "list", "patch"]},
    {"apiGroups": ["taskyard.dev"], "resources": ["agents"], "verbs": ["get"]},
    {"apiGroups": [""], "resources": ["pods", "configmaps"], "verbs": ["get", "list"]},
    {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
]


def service_account_token(kube: Kube, name: str, rules: list[dict[str, Any]] | None) -> str:
    cluster, namespace = kube.cluster, kube.namespace
    cluster.kubectl("-n", namespace, "create", "serviceaccount", name)
    if rules:
        role = {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": name, "namespace": namespace},
            "rules": rules,
        }
        cluster.kubectl("apply", "-f", "-", input=json.dumps(role))
        cluster.kubectl(
            "-n", namespace, "create", "rolebinding", name, f"--role={name}",
            f"--serviceaccount={namespace}:{name}",
        )  # fmt: skip
    return cluster.kubectl("-n", namespace, "create", "token", name, "--duration=1h").stdout.strip()


@pytest.fixture
def robot(kube: Kube) -> str:
    return service_account_token(kube, "robot", ROBOT_RULES)


def seed_python_client(api_url: str, token: str) -> dict[str, Any]:
    """The document's Python functions, with its base URL pointed at the API under test."""
    os.environ["MANAGEMENT_API_KEY"] = token
    source = (SEED_CLIENTS / "seed_client.py").read_text().replace(SEED_URL, api_url)
    scope: dict[str, Any] = {}
    exec(compile(source, str(SEED_CLIENTS / "seed_client.py"), "exec"), scope)
    return scope


def captured(function: Any, *args: Any) -> tuple[Any, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        result = function(*args)
    return result, out.getvalue()


def curl(*args: str) -> tuple[int, Any]:
    """The document's curl calls: the status and the JSON body."""
    result = subprocess.run(
        ["curl", "-s", "-w", "\n%{http_code}", *args], capture_output=True, text=True, timeout=60, check=True
    )
    body, _, code = result.stdout.rpartition("\n")
    return int(code), json.loads(body) if body else None


@pytest.fixture(scope="session")
def node_eventsource() -> Path:
    """The npm package the document's Node client requires, installed once into the cache."""
    cache = Path(os.environ.get("TASKYARD_CACHE", Path.home() / ".cache" / "taskyard")) / "node-clients"
    if not (cache / "node_modules" / "eventsource" / "package.json").exists():
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["npm", "install", "--no-save", "--no-audit", "--no-fund", "--prefix", str(cache), EVENTSOURCE],
            check=True, capture_output=True, timeout=300,
        )  # fmt: skip
    return cache / "node_modules"


def test_the_documents_clients_create_poll_stream_and_stop_tasks(
    kube: Kube,
    shell_agent: str,
    operator: OperatorProcess,
    api_url: str,
    robot: str,
    node_eventsource: Path,
    tmp_path: Path,
) -> None:
    headers = ["-H", f"Authorization: Bearer {robot}"]
    # curl, as in the document: create.
    code, created = curl(
        "-X", "POST", f"{api_url}/v1/tasks", *headers, "-H", "Content-Type: application/json",
        "-d", json.dumps({"agent": shell_agent, "task": "for i in 1 2 3 4 5; do echo line $i; sleep 1; done",
                          "provider": "claude"}),
    )  # fmt: skip
    assert code == 202, created
    task_id = created["taskId"]
    assert created["status"] == "accepted" and created["taskDir"] == "/workspace"
    assert kube.task(task_id)["spec"]["prompt"].startswith("for i in")  # a real Task, as the token's

    # The Node client and the Python client stream its log while the Python client polls it.
    script = tmp_path / "stream_logs.js"
    script.write_text((SEED_CLIENTS / "stream_logs.js").read_text().replace(SEED_URL, api_url))
    node = subprocess.Popen(
        ["node", str(script), task_id], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "MANAGEMENT_API_KEY": robot, "NODE_PATH": str(node_eventsource)},
    )  # fmt: skip
    seed = seed_python_client(api_url, robot)
    # The Python stream client in a process of its own: its prints and the poller's stay apart.
    python_stream = subprocess.Popen(
        [sys.executable, "-c", f"exec(open({str(SEED_CLIENTS / 'seed_client.py')!r}).read()"
         f".replace({SEED_URL!r}, {api_url!r})); stream_logs({task_id!r})"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "MANAGEMENT_API_KEY": robot},
    )  # fmt: skip
    first_line_at = None
    deadline = time.monotonic() + 120
    while first_line_at is None and time.monotonic() < deadline:
        first_line_at = time.time() if first_log_event(api_url, robot, task_id) else None
    client = seed["TaskClient"](base_url=api_url)
    result, polled = captured(seed["poll_until_complete"], client, task_id, 1)
    python_out, python_err = python_stream.communicate(timeout=60)
    out, err = node.communicate(timeout=60)

    assert result["status"] == "completed" and result["exitCode"] == 0
    assert result["logTail"] == "\n".join(f"line {i}" for i in range(1, 6))
    assert f"Task {task_id}: completed" in polled
    assert first_line_at is not None and first_line_at * 1000 < result["exitTime"]  # live, not afterwards
    assert python_stream.returncode == 0, python_err
    for output in (python_out, out):
        assert [line.split("] ", 1)[1] for line in output.splitlines() if line.startswith("[")] == [
            f"line {i}" for i in range(1, 6)
        ], output
        assert "Task completed: completed (exit code: 0)" in output
    assert node.returncode == 0, err

    # The Python client stops a running Task; a second stop is a 409, which it reports as such.
    started, _ = captured(client.create_task, shell_agent, "echo working; sleep 300")
    kube.wait_for_phase(started["taskId"], "Running")
    assert captured(seed["stop_task"], client, started["taskId"]) == (
        True,
        "Task stopped: Task stop signal sent successfully\n",
    )
    assert captured(seed["stop_task"], client, started["taskId"]) == (False, "Task already stopped\n")
    cancelled = kube.wait_for_phase(started["taskId"], "Cancelled", timeout=90)
    assert cancelled["status"]["reason"] == "Cancelled"

    # curl: the list, the status, a Task that does not exist.
    code, listed = curl(f"{api_url}/v1/tasks", *headers)
    assert (code, listed) == (200, {"activeTasks": [], "count": 0})
    code, status = curl(f"{api_url}/v1/status", *headers)
    assert (
        code == 200 and status["tasks"] == {"active": 0, "total": 2} and status["namespace"] == kube.namespace
    )
    code, missing = curl(f"{api_url}/v1/tasks/no-such-task", *headers)
    assert code == 404 and "not found" in missing["error"]


def first_log_event(api_url: str, token: str, task_id: str) -> str | None:
    """The first log line event of the Task's stream, if one comes within a few seconds."""
    try:
        with requests.get(
            f"{api_url}/v1/tasks/{task_id}/logs/stream",
            headers={"Authorization": f"Bearer {token}"},
            stream=True,
            timeout=5,
        ) as response:
            for raw in response.iter_lines(decode_unicode=True):
                if raw.startswith("data: ") and '"line"' in raw:
                    return raw
    except requests.RequestException:
        return None
    return None


def test_no_token_is_a_401_and_a_token_without_rights_a_403(kube: Kube, api_url: str) -> None:
    outsider = service_account_token(kube, "outsider", None)
    code, body = curl(f"{api_url}/v1/tasks")
    assert code == 401 and "bearer token" in body["error"]
    code, body = curl(f"{api_url}/v1/tasks", "-H", "Authorization: Bearer not-a-token")
    assert code == 401 and body == {"error": "Unauthorized"}
    code, body = curl(f"{api_url}/v1/tasks", "-H", f"Authorization: Bearer {outsider}")
    assert code == 403
    assert f"system:serviceaccount:{kube.namespace}:outsider" in body["error"]
    code, body = curl(
        "-X", "POST", f"{api_url}/v1/tasks?namespace={kube.namespace}",
        "-H", f"Authorization: Bearer {outsider}", "-H", "Content-Type: application/json",
        "-d", '{"agent": "shell", "task": "echo no"}',
    )  # fmt: skip
    assert code == 403
    tasks = kube.custom.list_namespaced_custom_object("taskyard.dev", "v1alpha1", kube.namespace, "tasks")
    assert tasks["items"] == []  # nothing was made for the outsider


def what_schemathesis_found(output: str) -> str:
    """Its report's first finding and its summary: a traceback's last lines name the error, and a
    long report's head and tail would both be cut from a failure's message."""
    lines = output.splitlines()
    first = next(
        (
            n
            for n, line in enumerate(lines)
            if "Traceback" in line or line.startswith(("FAILURES", "ERRORS", "_"))
        ),
        max(len(lines) - 60, 0),
    )
    errors = [line for line in lines if re.match(r"\s*[\w.]*(Error|Exception|Invalid\w*):", line)]
    return "\n".join(
        ["errors named:", *errors[:10], "first finding:", *lines[first : first + 40], "end:", *lines[-25:]]
    )


def test_requests_made_from_the_openapi_document_find_no_server_error(
    kube: Kube, api_url: str, robot: str, shell_agent: str, tmp_path: Path
) -> None:
    """Schemathesis sends what the document allows and what it does not (bad bodies, odd namespaces
    and ids), as the robot: every answer must be one the document lists, in its shape, and none a 5xx."""
    result = subprocess.run(
        [str(Path(sys.executable).parent / "schemathesis"), "run", f"{api_url}/v1/openapi.json",
         "--header", f"Authorization: Bearer {robot}",
         "--header", f"X-Taskyard-Namespace: {kube.namespace}",
         "--checks", "not_a_server_error,status_code_conformance,response_schema_conformance,"
                     "content_type_conformance",
         "--max-examples", "10", "--no-shrink", "--seed", "1", "--request-timeout", "20",
         "--workers", "2", "--phases", "coverage,fuzzing",
         "--report", "junit", "--report-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=900, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, what_schemathesis_found(result.stdout) + result.stderr[-2000:]
    [report] = tmp_path.glob("junit-*.xml")
    assert report.read_text().count("<testcase") >= 10  # every operation of the document was exercised
