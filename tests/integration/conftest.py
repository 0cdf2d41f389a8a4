"""Fixtures for the operator tier: the CRDs applied, an operator process per test, and helpers.

Each test runs its own operator (``python -m taskyard --namespace <test namespace>``) as a separate
process, so a test can set the operator's limits, kill it and start it again.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from kubernetes import client, config

from tests.conftest import REPO_ROOT, SHELL_IMAGE, Cluster

GROUP, VERSION = "taskyard.dev", "v1alpha1"
TERMINAL = {"Succeeded", "Failed", "Cancelled"}


@pytest.fixture(scope="session")
def crds(cluster: Cluster) -> None:
    """The taskyard CRDs, applied from crds/ and established."""
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO_ROOT / "crds"))
    extensions = client.ApiextensionsV1Api(config.new_client_from_config(config_file=str(cluster.kubeconfig)))
    for name in ("tasks", "agents", "clusteragents"):
        # An API server that has just started can take a while over its first CRDs (their CEL rules
        # are compiled then): wait generously. Polled here rather than with `kubectl wait`, which
        # fails at once ("conditions accessor error") when it finds a CRD with no conditions yet.
        deadline = time.monotonic() + 180
        conditions: list[Any] = []
        while time.monotonic() < deadline:
            crd = extensions.read_custom_resource_definition(f"{name}.taskyard.dev", _request_timeout=10)
            conditions = (crd.status and crd.status.conditions) or []
            if any(c.type == "Established" and c.status == "True" for c in conditions):
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"CRD {name}.taskyard.dev not established within 180 s; conditions: {conditions}")


class Kube:
    """A thin client for the tests, on the official Kubernetes client."""

    def __init__(self, cluster: Cluster, namespace: str) -> None:
        self.cluster = cluster
        self.namespace = namespace
        api = config.new_client_from_config(config_file=str(cluster.kubeconfig))
        self.custom = client.CustomObjectsApi(api)
        self.batch = client.BatchV1Api(api)
        self.core = client.CoreV1Api(api)
        self.networking = client.NetworkingV1Api(api)

    def create(self, kind: str, name: str, spec: dict[str, Any], **metadata: Any) -> dict[str, Any]:
        """Creates a Task or Agent in the test namespace."""
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": kind,
            "metadata": {"name": name, **metadata},
            "spec": spec,
        }
        plural = kind.lower() + "s"
        return self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, plural, body)

    def task(self, name: str) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, "tasks", name)

    def patch_task(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        return self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, self.namespace, "tasks", name, patch
        )

    def delete_task(self, name: str) -> None:
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, self.namespace, "tasks", name)

    def task_exists(self, name: str) -> bool:
        try:
            self.task(name)
        except client.ApiException as error:
            if error.status == 404:
                return False
            raise
        return True

    def jobs(self, task: str | None = None) -> list[Any]:
        selector = f"taskyard.dev/task={task}" if task else "taskyard.dev/task"
        return self.batch.list_namespaced_job(self.namespace, label_selector=selector).items

    def pods(self, task: str) -> list[Any]:
        return self.core.list_namespaced_pod(self.namespace, label_selector=f"taskyard.dev/task={task}").items

    def wait_for(
        self, what: str, check: Callable[[], Any], timeout: float = 120, interval: float = 0.5
    ) -> Any:
        """Polls ``check`` until it returns something truthy; fails naming ``what`` on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            result = check()
            if result:
                return result
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {timeout}s waiting for {what}")
            time.sleep(interval)

    def wait_for_phase(self, name: str, *phases: str, timeout: float = 120) -> dict[str, Any]:
        """Waits until the Task reaches one of ``phases`` (or any terminal phase) and returns it."""
        wanted = set(phases)

        def reached() -> dict[str, Any] | None:
            task = self.task(name)
            phase = (task.get("status") or {}).get("phase")
            if phase in wanted:
                return task
            if phase in TERMINAL:
                pytest.fail(
                    f"task {name} ended {phase}, expected {sorted(wanted)}: {json.dumps(task['status'])}"
                )
            return None

        return self.wait_for(f"task {name} to be {'/'.join(sorted(wanted))}", reached, timeout)


@pytest.fixture
def kube(cluster: Cluster, namespace: str, crds: None) -> Kube:
    return Kube(cluster, namespace)


# A shell script asks for little CPU: at the default request (100m) twenty pods fill the 2-core node,
# and the other tests' pods, sharing it, would wait for a bursting test's to finish.
SHELL_AGENT = {
    "image": SHELL_IMAGE,
    "command": ["sh", "/etc/taskyard/prompt"],
    "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"cpu": "1", "memory": "512Mi"}},
}


@pytest.fixture
def shell_agent(kube: Kube) -> str:
    """An Agent named ``shell`` in the test namespace that runs the prompt as a shell script."""
    kube.create("Agent", "shell", SHELL_AGENT)
    return "shell"


class OperatorProcess:
    """``python -m taskyard`` watching one namespace, with its output in a log file."""

    def __init__(self, cluster: Cluster, namespace: str, log_path: Path, env: dict[str, str]) -> None:
        self.cluster, self.namespace, self.log_path, self.env = cluster, namespace, log_path, env
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> OperatorProcess:
        env = {**os.environ, "KUBECONFIG": str(self.cluster.kubeconfig), **self.env}
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "taskyard", "--namespace", self.namespace],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO_ROOT,
        )
        return self

    def kill(self) -> None:
        """SIGKILL: the operator gets no chance to tidy up, as in a node crash or OOM kill."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def start_operator(
    cluster: Cluster, namespace: str, crds: None, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., OperatorProcess]]:
    """Starts the operator for the test namespace; ``start_operator(TASKYARD_MAX_CONCURRENT="1")``."""
    started: list[OperatorProcess] = []

    def start(**env: str) -> OperatorProcess:
        env.setdefault("TASKYARD_METRICS_PORT", str(free_port()))
        operator = OperatorProcess(cluster, namespace, tmp_path / "operator.log", env).start()
        started.append(operator)
        return operator

    yield start
    for operator in started:
        operator.stop()
    report = getattr(request.node, "rep_call", None)
    if started and report is not None and report.failed:
        print(f"--- operator log ({started[-1].log_path}) ---\n{started[-1].log_tail()}")


@pytest.fixture
def operator(start_operator: Callable[..., OperatorProcess]) -> OperatorProcess:
    """The operator with default settings (no concurrency limits)."""
    return start_operator()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


@pytest.fixture
def api_url(cluster: Cluster, tmp_path: Path) -> Iterator[str]:
    """`taskyard serve` (the task API and dashboard) on a free port, against the test cluster."""
    port = free_port()
    log = (tmp_path / "api.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "taskyard.cli", "serve", "--port", str(port), "--kubeconfig",
         str(cluster.kubeconfig)],
        stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT / "operator")},
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(requests.ConnectionError):
                if requests.get(f"{url}/healthz", timeout=2).ok:
                    break
            assert process.poll() is None and time.monotonic() < deadline, (tmp_path / "api.log").read_text()
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=15)
