"""The coding agents, through the chart's presets, the operator and the real CLIs in their images.

No model provider can be reached from the cluster, so a model-API server of the tests' own
(modelstub.py, speaking the Anthropic Messages and OpenAI Responses streaming formats) replays a
scripted conversation, and a git server (gitserver.py, git's smart-HTTP backend) holds the repository
the agents clone and push to. Both run as pods of the cluster. Everything else is the product: the
images built from agents/, their entrypoint, the ClusterAgent presets of the chart, the operator.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO_ROOT, Cluster
from tests.e2e.conftest import CHART, Release
from tests.integration.conftest import Kube

# The module's release runs the Tasks of its own namespace only, so it shares the cluster with other
# tests; its ClusterAgents (the presets) are cluster-wide, so its tests stay on one worker.
pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("coding-agent-presets")]

HERE = Path(__file__).parent
AGENT_BASE_IMAGE = "localhost/taskyard/agent-base:dev"
PUSH_TOKEN = "push-token-" + uuid.uuid4().hex[:8]
# The agents' API keys, as their Secrets hold them: only the credential proxy beside each agent reads them.
API_KEYS = {
    "taskyard-anthropic": "sk-ant-e2e-" + uuid.uuid4().hex,
    "taskyard-openai": "sk-e2e-" + uuid.uuid4().hex,
}
REPOSITORY = "demo.git"
# What the stub's "edit" scenario writes and runs (tests/e2e/modelstub.py).
EDITED_FILE, EDITED_CONTENT = "hello.txt", "hello from the model stub\n"
RAN_FILE = "ran.txt"
AGENT_TIMEOUT = 240


@dataclass(frozen=True)
class Services:
    """The model stub and the git server, in the namespace the agents' Tasks run in."""

    namespace: str
    model_url: str  # in the cluster: http://<service IP>:8080
    git_url: str  # in the cluster
    git_url_here: str  # from this machine: the git server's pod address

    def model(self, scenario: str, *params: str) -> str:
        return "/".join([self.model_url, "s", scenario, *params])


@pytest.fixture(scope="module")
def agent_images() -> None:
    """The four agent images, built from agents/ and loaded into the cluster."""
    subprocess.run([str(REPO_ROOT / "hack" / "images.sh"), "agent-base", "agents"], check=True)


def _service(name: str, script: str, args: list[str], extra_mounts: list[dict], extra_volumes: list[dict]):
    labels = {"app": name}
    container = {
        "name": name,
        "image": AGENT_BASE_IMAGE,
        "imagePullPolicy": "IfNotPresent",
        "command": ["python3", f"/scripts/{script}", "--port", "8080", *args],
        "ports": [{"containerPort": 8080}],
        "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1},
        "volumeMounts": [{"name": "scripts", "mountPath": "/scripts"}, *extra_mounts],
    }
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                # The label the coding agents' egress rules open (tests/e2e/conftest.py).
                "metadata": {"labels": {**labels, "taskyard-e2e/role": "agent-service"}},
                "spec": {
                    "containers": [container],
                    "volumes": [{"name": "scripts", "configMap": {"name": "e2e-scripts"}}, *extra_volumes],
                    "automountServiceAccountToken": False,
                },
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {"selector": labels, "ports": [{"port": 8080, "targetPort": 8080}]},
    }
    return [deployment, service]


@pytest.fixture(scope="module")
def agents_namespace(cluster: Cluster) -> Iterator[str]:
    namespace = f"agents-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", namespace)
    try:
        yield namespace
    finally:
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


@pytest.fixture(scope="module")
def release(cluster: Cluster, crds: None, operator_image: str, agents_namespace: str) -> Iterator[Release]:
    """The chart with the coding agents' presets, in the agents' namespace and watching only it (no
    PriorityClasses: other tests' operators would give their pods these). The CRDs come from the
    fixture every test sharing the cluster uses, so this release never creates them itself."""
    installed = Release(cluster, f"taskyard-agents-{uuid.uuid4().hex[:6]}", agents_namespace)
    scoped = ["--set-json", f"watchNamespaces={json.dumps([agents_namespace])}"]
    try:
        installed.helm(
            "install", installed.name, str(CHART), *installed.image_values(), *scoped,
            "--set", "priorityClasses.create=false",
        )  # fmt: skip
        installed.wait_ready()
        yield installed
    finally:
        installed.helm("uninstall", installed.name, "--wait", check=False)


@pytest.fixture(scope="module")
def services(
    cluster: Cluster, agents_namespace: str, release: Release, agent_images: None
) -> Iterator[Services]:
    namespace = agents_namespace  # the services go with it
    scripts = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "e2e-scripts"},
        "data": {name: (HERE / name).read_text() for name in ("modelstub.py", "gitserver.py")},
    }

    def secret(name: str, data: dict[str, str]) -> dict[str, Any]:
        encoded = {key: base64.b64encode(value.encode()).decode() for key, value in data.items()}
        return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "data": encoded}

    objects = [
        scripts,
        # The agents' API keys (the stub takes any key, and records a digest of the one it got).
        *[secret(name, {"api-key": key}) for name, key in API_KEYS.items()],
        # The credentials the agents push with, and the token the git server accepts.
        secret("git-push", {"token": PUSH_TOKEN}),
        *_service("model-stub", "modelstub.py", [], [], []),
        *_service(
            "git-server",
            "gitserver.py",
            ["--root", "/tmp/git", "--repo", REPOSITORY, "--token-file", "/etc/git-server/token"],
            [{"name": "token", "mountPath": "/etc/git-server", "readOnly": True}],
            [{"name": "token", "secret": {"secretName": "git-push"}}],
        ),
    ]
    cluster.kubectl(
        "-n",
        namespace,
        "apply",
        "-f",
        "-",
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}),
    )
    for name in ("model-stub", "git-server"):
        cluster.kubectl(
            "-n", namespace, "rollout", "status", f"deployment/{name}", "--timeout=180s", timeout=200
        )

    def service_ip(name: str) -> str:
        return cluster.kubectl(
            "-n", namespace, "get", "service", name, "-o", "jsonpath={.spec.clusterIP}"
        ).stdout

    for name in ("model-stub", "git-server"):
        # Ready endpoints are not yet a route: kube-proxy rejects a Service's address until it has
        # synced its rules, and an agent's first request would get "connection refused".
        wait_reachable(service_ip(name), 8080)
    git_pod_ip = cluster.kubectl(
        "-n", namespace, "get", "pods", "-l", "app=git-server", "-o", "jsonpath={.items[0].status.podIP}"
    ).stdout
    yield Services(
        namespace=namespace,
        model_url=f"http://{service_ip('model-stub')}:8080",
        git_url=f"http://{service_ip('git-server')}:8080/{REPOSITORY}",
        git_url_here=f"http://{git_pod_ip}:8080/{REPOSITORY}",
    )


def wait_reachable(host: str, port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=2):
                return
        except OSError as error:
            if time.monotonic() > deadline:
                pytest.fail(f"{host}:{port} did not accept connections within {timeout:.0f}s: {error}")
            time.sleep(0.5)


@pytest.fixture
def kube(cluster: Cluster, services: Services) -> Kube:
    return Kube(cluster, services.namespace)


def run_task(kube: Kube, name: str, spec: dict[str, Any]) -> None:
    kube.create("Task", name, spec)


def key_digest(secret: str) -> str:
    return hashlib.sha256(API_KEYS[secret].encode()).hexdigest()[:16]


def agent_on_stub(kube: Kube, preset: str, upstream: str, name: str) -> str:
    """An Agent of the test namespace that is the chart's preset with its credential proxy sending to
    the model stub (the Agent author decides where the key goes; a Task cannot)."""
    spec = json.loads(kube.cluster.kubectl("get", "clusteragent", preset, "-o", "json").stdout)["spec"]
    spec["credentialProxy"]["upstream"] = upstream
    kube.create("Agent", name, spec)
    return name


def final(kube: Kube, name: str, timeout: float = AGENT_TIMEOUT) -> dict[str, Any]:
    return kube.wait_for(
        f"task {name} to finish",
        lambda: (
            (t := kube.task(name)).get("status", {}).get("phase") in ("Succeeded", "Failed", "Cancelled")
            and t
        ),
        timeout=timeout,
        interval=1,
    )


def job_logs(kube: Kube, name: str) -> str:
    return kube.cluster.kubectl("-n", kube.namespace, "logs", f"job/{name}", check=False).stdout


def remote_branch(services: Services, branch: str, tmp_path: Path) -> Path:
    """A clone of ``branch`` from the git server, made from this machine."""
    checkout = tmp_path / "checkout"
    subprocess.run(
        ["git", "clone", "--quiet", "--branch", branch, services.git_url_here, str(checkout)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return checkout


def git(checkout: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=checkout, check=True, capture_output=True, text=True
    ).stdout.strip()


def model_requests(services: Services, kube: Kube, scenario_marker: str) -> list[dict[str, Any]]:
    """What the model stub was asked, by the requests whose path carries ``scenario_marker``."""
    pod = kube.cluster.kubectl(
        "-n",
        services.namespace,
        "get",
        "pods",
        "-l",
        "app=model-stub",
        "-o",
        "jsonpath={.items[0].status.podIP}",
    ).stdout
    output = subprocess.run(
        ["curl", "-sf", f"http://{pod}:8080/_requests"],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    return [entry for entry in json.loads(output) if scenario_marker in entry.get("path", "")]


# --- Claude Code and Codex: a whole tool-using conversation ----------------------------------------


# What follows the scenario's path in each proxy's upstream (the preset's upstream path), and the
# Secret of each agent's key. OpenCode's Anthropic provider, like Codex, sends paths without /v1.
MODEL_ENDPOINTS = {
    "claude-code": ("", "taskyard-anthropic"),
    "codex": ("/v1", "taskyard-openai"),
    "opencode": ("/v1", "taskyard-anthropic"),
}
MODELS = {"opencode": "anthropic/claude-sonnet-4-5"}  # OpenCode's model names carry the provider


@pytest.mark.parametrize("agent", sorted(MODEL_ENDPOINTS))
def test_agent_edits_the_repository_and_pushes_its_branch(
    kube: Kube, services: Services, tmp_path: Path, agent: str
) -> None:
    api_suffix, key_secret = MODEL_ENDPOINTS[agent]
    name = f"{agent}-edit"
    branch = f"taskyard/{name}"
    marker = f"run={name}"
    agent_on_stub(kube, agent, services.model("edit", marker) + api_suffix, name)
    # 100 KiB, from a ConfigMap, starting with '-': it reaches the model as written, not as an option.
    prompt = "--fix: write hello.txt, then check it with a shell command.\n" + "context line\n" * 8_000
    kube.core.create_namespaced_config_map(
        kube.namespace, {"metadata": {"name": f"{name}-prompt"}, "data": {"prompt": prompt}}
    )
    run_task(
        kube,
        name,
        {
            "agent": name,
            **({"model": MODELS[agent]} if agent in MODELS else {}),
            "promptFrom": {"configMapKeyRef": {"name": f"{name}-prompt", "key": "prompt"}},
            "repository": {
                "url": services.git_url,
                "branch": branch,
                "push": True,
                "secretRef": {"name": "git-push"},
            },
            "limits": {"maxTurns": 10},
        },
    )
    task = final(kube, name)
    status = task["status"]
    assert status["phase"] == "Succeeded", json.dumps(status)
    result = status["result"]

    # The work is on the branch, pushed to the server with the Secret's token.
    checkout = remote_branch(services, branch, tmp_path)
    assert (checkout / EDITED_FILE).read_text() == EDITED_CONTENT
    assert (checkout / RAN_FILE).read_text().strip() == "ran-by-agent"  # the shell command ran
    assert git(checkout, "rev-parse", "HEAD") == result["commit"]
    assert git(checkout, "log", "--format=%s", "-1") == f"taskyard: {name}"
    assert result["branch"] == branch and result["pushed"] is True
    assert {EDITED_FILE, RAN_FILE} <= set(result["changedFiles"])

    # Usage and turns, as the CLI reported them, and the model's final answer.
    usage = result["usage"]
    assert usage["turns"] >= 3, usage
    assert usage["inputTokens"] > 0 and usage["outputTokens"] > 0, usage
    assert "Done: wrote hello.txt" in result["summary"]
    asked = [r for r in model_requests(services, kube, marker) if r.get("api") in ("anthropic", "responses")]
    assert len(asked) >= 3
    # The key from the preset's Secret reached the model, through the proxy.
    assert {r["key"] for r in asked} == {key_digest(key_secret)}

    # The log reads as lines, not as the CLI's JSON.
    log = job_logs(kube, name)
    assert "Done: wrote hello.txt" in log
    assert not any(line.startswith('{"type"') for line in log.splitlines()), log[:2000]


@pytest.mark.parametrize("agent", sorted(MODEL_ENDPOINTS))
def test_max_turns_stops_a_conversation_that_never_ends(kube: Kube, services: Services, agent: str) -> None:
    api_suffix, _ = MODEL_ENDPOINTS[agent]
    name = f"{agent}-endless"
    agent_on_stub(kube, agent, services.model("endless", f"run={name}") + api_suffix, name)
    run_task(
        kube,
        name,
        {
            "agent": name,
            **({"model": MODELS[agent]} if agent in MODELS else {}),
            "prompt": "keep going",
            "limits": {"maxTurns": 3},
        },
    )
    status = final(kube, name)["status"]
    assert status["phase"] == "Failed", json.dumps(status)
    assert status["reason"] == "LimitExceeded"
    assert "maxTurns" in status["message"]
    assert status["result"]["limit"].startswith("maxTurns")
    assert status["result"]["usage"]["turns"] >= 4
    assert status["attempts"] == 1  # a limit is not worth a retry
    assert "stopping the agent: maxTurns" in job_logs(kube, name)


def test_cancelling_stops_the_cli(kube: Kube, services: Services) -> None:
    name = "claude-code-cancel"
    marker = f"run={name}"
    agent_on_stub(kube, "claude-code", services.model("slow", marker), name)
    run_task(kube, name, {"agent": name, "prompt": "take your time"})
    # The CLI is at work: the model asked it to run the long command.
    kube.wait_for(
        "the agent to run its long command",
        lambda: "sleep" in job_logs(kube, name),
        timeout=AGENT_TIMEOUT,
        interval=1,
    )

    # Meanwhile: the key is in the proxy's container only. The agent's environment has the proxy's
    # address and a placeholder, and none of its files holds the key.
    [pod] = [p.metadata.name for p in kube.pods(name)]
    key = API_KEYS["taskyard-anthropic"]

    def in_container(container: str, script: str) -> str:
        return kube.cluster.kubectl(
            "-n", kube.namespace, "exec", pod, "-c", container, "--", "sh", "-c", script, check=False
        ).stdout

    environment = in_container("agent", "cat /proc/self/environ | tr '\\0' '\\n'")
    assert "ANTHROPIC_BASE_URL=http://127.0.0.1:8484" in environment
    assert "ANTHROPIC_API_KEY=taskyard-proxied" in environment and key not in environment
    found = in_container(
        "agent", f"grep -rls -e '{key}' /etc /home /tmp /workspace /run 2>/dev/null; echo done"
    )
    assert found.strip() == "done", found
    # Every process of the agent's container: none has the key in its environment.
    others = in_container("agent", "cat /proc/[0-9]*/environ 2>/dev/null | tr '\\0' '\\n'; echo END")
    assert others.rstrip().endswith("END") and "ANTHROPIC_BASE_URL=" in others and key not in others
    proxy_env = in_container("credential-proxy", "cat /proc/1/environ | tr '\\0' '\\n'")
    assert f"TASKYARD_PROXY_KEY={key}" in proxy_env.splitlines()
    asked = model_requests(services, kube, marker)
    assert asked and {r["key"] for r in asked if r.get("api") == "anthropic"} == {
        key_digest("taskyard-anthropic")
    }
    started = time.monotonic()
    kube.patch_task(name, {"spec": {"cancel": True}})
    status = final(kube, name, timeout=120)["status"]
    assert status["phase"] == "Cancelled", json.dumps(status)
    assert time.monotonic() - started < 60
    kube.wait_for("the agent's pod to be gone", lambda: not kube.pods(name), timeout=60)


# --- every image's CLI starts as a Task ------------------------------------------------------------

VERSIONS = {
    "claude-code": (["claude", "--version"], r"Claude Code"),
    "codex": (["codex", "--version"], r"codex-cli \d+\.\d+"),
    "gemini-cli": (["gemini", "--version"], r"^\d+\.\d+\.\d+"),
    "opencode": (["opencode", "--version"], r"^\d+\.\d+\.\d+"),
}


@pytest.mark.parametrize("agent", sorted(VERSIONS))
def test_each_agent_image_starts_its_cli(kube: Kube, agent: str) -> None:
    command, expected = VERSIONS[agent]
    image = kube.cluster.kubectl("get", "clusteragent", agent, "-o", "jsonpath={.spec.image}").stdout
    assert image == f"localhost/taskyard/{agent}:dev"
    # The CLI itself, without the entrypoint: on a read-only root filesystem it needs a HOME it may
    # write to (the entrypoint finds one on its own).
    kube.create(
        "Agent",
        f"{agent}-version",
        {
            "image": image,
            "command": command,
            "readOnlyRootFilesystem": True,
            "env": [{"name": "HOME", "value": "/tmp"}],
        },
    )
    name = f"{agent}-version"
    run_task(kube, name, {"agent": f"{agent}-version", "prompt": "unused"})
    status = final(kube, name)["status"]
    assert status["phase"] == "Succeeded", json.dumps(status)
    assert re.search(expected, job_logs(kube, name), re.MULTILINE), job_logs(kube, name)
