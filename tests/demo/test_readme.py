"""The README, run as written: its first command (`make demo`), then every command of "Use it" and "The
taskyard command", in order, in a shell on the local cluster, as a user would type them; then "Install
on a cluster" as a user with a cluster and a registry of their own runs it: the images pushed to a
registry (go-containerregistry's, on this machine), the chart installed from it through a kubeconfig
that is not the local cluster's, then uninstalled and replaced by the plain manifests. A command of
those sections that fails fails this test. (`make test` is the run this test is part of; running the
operator out of the cluster is tested by the integration tier.)"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_ROOT, Cluster, _kubectl_binary_dir, helm_binary
from tests.demo.conftest import make

pytestmark = [pytest.mark.demo, pytest.mark.exclusive]  # the release watches every namespace

README = REPO_ROOT / "README.md"
RUN_SECTIONS = ("## Use it",)  # with its subsection "The taskyard command"
INSTALL_SECTION = "## Install on a cluster"
EXAMPLE_REGISTRY = "registry.example.com/taskyard"
# Commands that run until they are interrupted, and how long each is given first.
FOLLOWING = {"taskyard logs nap -f ": 20}


def section(text: str, heading: str) -> str:
    """The text under a heading, up to the next heading of the same or a higher level (a line starting
    with '#' inside a code block is not a heading)."""
    level = len(heading.split(" ")[0])
    lines = text.splitlines(keepends=True)
    start = lines.index(heading + "\n") + 1
    fenced = False
    for end in range(start, len(lines)):
        line = lines[end]
        fenced ^= line.startswith("```")
        marks = len(line) - len(line.lstrip("#"))
        if not fenced and 0 < marks <= level and line[marks : marks + 1] == " ":
            return "".join(lines[start:end])
    return "".join(lines[start:])


def console_commands(text: str) -> list[str]:
    """The commands of the ```console blocks: the lines after "$ " with the lines they continue onto
    (a trailing backslash), in order."""
    commands: list[str] = []
    for block in re.findall(r"```console\n(.*?)```", text, re.DOTALL):
        continued = False
        for line in block.splitlines():
            if continued:
                commands[-1] += "\n" + line
            elif line.startswith("$ "):
                commands.append(line[2:])
            continued = (continued or line.startswith("$ ")) and line.endswith("\\")
    return commands


def hello_manifest(text: str) -> str:
    """The YAML block the README calls hello.yaml."""
    [block] = [b for b in re.findall(r"```yaml\n(.*?)```", text, re.DOTALL) if b.startswith("# hello.yaml")]
    return block


@pytest.fixture
def user_shell(local: Cluster, tmp_path: Path) -> Iterator[dict[str, str]]:
    """The environment of a user's shell after `make demo`: the cluster's kubeconfig, kubectl and the
    taskyard command on PATH, in a directory of their own; their Tasks are removed afterwards."""
    helm_dir = [str(Path(helm_binary()).parent)] if os.sep in helm_binary() else []
    dirs = [str(REPO_ROOT / ".venv" / "bin"), _kubectl_binary_dir(), *helm_dir, os.environ["PATH"]]
    path = os.pathsep.join(dirs)
    yield {**os.environ, "KUBECONFIG": str(local.kubeconfig), "PATH": path}
    local.kubectl("delete", "tasks.taskyard.dev", "--all", "-n", "default", "--wait=false", check=False)
    local.kubectl("-n", "default", "delete", "networkpolicy", "taskyard-agents", check=False)
    local.kubectl("-n", "default", "delete", "serviceaccount", "taskyard-agent", check=False)


def as_in_a_terminal() -> None:
    """Ctrl-C as a terminal delivers it: a run started in the background (CI) inherits SIGINT ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run(command: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    patience = next((seconds for start, seconds in FOLLOWING.items() if command.startswith(start)), None)
    if patience is not None:  # stopped as a user stops it: Ctrl-C
        pipe = subprocess.PIPE
        process = subprocess.Popen(
            ["bash", "-c", command],
            env=env,
            cwd=cwd,
            text=True,
            stdout=pipe,
            stderr=pipe,
            start_new_session=True,
            preexec_fn=as_in_a_terminal,
        )
        try:
            out, err = process.communicate(timeout=patience)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGINT)
            out, err = process.communicate(timeout=30)
        return subprocess.CompletedProcess(command, 0, out, err)
    return subprocess.run(
        ["bash", "-c", command], env=env, cwd=cwd, capture_output=True, text=True, timeout=600
    )


def test_the_readme_runs_as_written(local: Cluster, user_shell: dict[str, str], tmp_path: Path) -> None:
    text = README.read_text()
    first = console_commands_of_intro(text)
    assert first == ["make demo", "make test"], "the README's first screen names its two commands"
    demo = make("demo", local.kubeconfig)
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]

    (tmp_path / "hello.yaml").write_text(hello_manifest(text))
    outputs: dict[str, str] = {}
    for heading in RUN_SECTIONS:
        for command in console_commands(section(text, heading)):
            result = run(command, user_shell, tmp_path)
            assert result.returncode == 0, (
                f"README command failed: {command}\n{result.stdout}\n{result.stderr}"
            )
            outputs[command] = result.stdout

    def output_of(prefix: str) -> str:
        [found] = [out for command, out in outputs.items() if command.startswith(prefix)]
        return found

    assert "hello from hello" in output_of("kubectl logs job/hello")
    assert "hello from hello" in output_of("kubectl get task hello -o jsonpath")
    assert "hello from greet" in output_of("taskyard logs greet")
    assert "taking a nap" in output_of("taskyard logs nap -f")
    listed = output_of("taskyard list")
    assert re.search(r"^greet\s.*Succeeded", listed, re.MULTILINE), listed
    assert re.search(r"^nap\s.*Cancel", listed, re.MULTILINE), listed
    assert "shell" in output_of("taskyard stats")


def console_commands_of_intro(text: str) -> list[str]:
    """The two commands of the README's first screen (a plain code block before the first section)."""
    intro = text[: text.index("\n## ")]
    [block] = re.findall(r"```\n(.*?)```", intro, re.DOTALL)
    return [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[str]:
    """A registry of the user's own: go-containerregistry's, in memory, on a port of this machine (the
    node pulls from localhost over plain HTTP)."""
    subprocess.run([str(REPO_ROOT / "hack" / "build-tools.sh"), "registry"], check=True, timeout=900)
    cache = Path(os.environ.get("TASKYARD_CACHE", Path.home() / ".cache" / "taskyard"))
    [binary] = cache.glob("registry-*/bin/registry")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = (tmp_path / "registry.log").open("w")
    process = subprocess.Popen([str(binary), "-port", str(port)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
            started = time.monotonic() < deadline and process.poll() is None
            assert started, (tmp_path / "registry.log").read_text()
            time.sleep(0.2)
        yield f"localhost:{port}/taskyard"
    finally:
        process.terminate()
        process.wait(timeout=30)


def release_image(cluster: Cluster) -> str:
    return cluster.kubectl(
        "-n", "taskyard-system", "get", "deployment", "taskyard",
        "-o", "jsonpath={.spec.template.spec.containers[0].image}",
    ).stdout  # fmt: skip


def run_a_task(cluster: Cluster, namespace: str, name: str, agent: str) -> dict:
    """Applies a Task and waits for it; returns it, and the image its pod ran."""
    task = {
        "apiVersion": "taskyard.dev/v1alpha1",
        "kind": "Task",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"agent": agent, "prompt": f"echo installed {name}"},
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(task))
    waited = cluster.kubectl(
        "-n", namespace, "wait", "--for=condition=Succeeded", f"task/{name}", "--timeout=180s",
        check=False, timeout=200,
    )  # fmt: skip
    described = cluster.kubectl("-n", namespace, "describe", "task", name, check=False).stdout
    assert waited.returncode == 0, waited.stderr + described
    logs = cluster.kubectl("-n", namespace, "logs", f"job/{name}").stdout
    assert logs.strip() == f"installed {name}"
    return json.loads(cluster.kubectl("-n", namespace, "get", "job", name, "-o", "json").stdout)


def job_image(job: dict) -> str:
    return job["spec"]["template"]["spec"]["containers"][0]["image"]


def test_the_readme_install_section_runs_as_written_on_a_registry_of_ones_own(
    local: Cluster, user_shell: dict[str, str], registry: str, tmp_path: Path
) -> None:
    text = README.read_text()
    written = console_commands(section(text, INSTALL_SECTION))
    commands = [command.replace(EXAMPLE_REGISTRY, registry) for command in written]
    assert len(commands) == 7 and all(EXAMPLE_REGISTRY not in c for c in commands), commands
    # The same cluster through another kubeconfig is, to make install, a cluster of the user's own.
    elsewhere = tmp_path / "kubeconfig"
    shutil.copy(local.kubeconfig, elsewhere)
    # The registry has no TLS (PUSH_ARGS is documented for that); it is on this machine, so compressing
    # the 1.7 GB of layers would cost minutes and prove nothing of ours.
    push_args = "--tls-verify=false --disable-compression"
    env = {**user_shell, "KUBECONFIG": str(elsewhere), "PUSH_ARGS": push_args}
    local.kubectl("create", "namespace", "readme-install", check=False)

    def run_in_checkout(command: str) -> None:
        result = run(command, env, REPO_ROOT)
        assert result.returncode == 0, f"README command failed: {command}\n{result.stdout}\n{result.stderr}"

    version = yaml.safe_load((REPO_ROOT / "helm" / "taskyard" / "Chart.yaml").read_text())["appVersion"]
    push, install, helm_install, rollout, apply_manifests, wait_crds, apply_agents = commands
    run_in_checkout(push)
    catalog = subprocess.run(
        ["curl", "-sf", f"http://{registry.split('/')[0]}/v2/_catalog"], capture_output=True, text=True
    )
    pushed = {"operator", "shell", "claude-code", "codex", "gemini-cli", "opencode"}
    assert {f"taskyard/{name}" for name in pushed} <= set(json.loads(catalog.stdout)["repositories"])

    run_in_checkout(install)
    assert release_image(local) == f"{registry}/operator:{version}"
    job = run_a_task(local, "readme-install", "from-registry", "shell")
    assert job_image(job) == f"{registry}/shell:{version}"  # the shell agent's image was pushed too

    run_in_checkout(helm_install)
    run_in_checkout(rollout)
    assert release_image(local) == f"{registry}/operator:{version}"

    # Without Helm: the plain manifests, after the chart is gone (docs/operations.md, Uninstall).
    uninstalled = run("helm uninstall taskyard -n taskyard-system --wait", env, REPO_ROOT)
    assert uninstalled.returncode == 0, uninstalled.stderr
    # manifests/ names the images a release publishes; a release builds them from this same source,
    # so the locally built operator is put on the node under that name instead of being pulled.
    released = f"ghcr.io/taskyard/operator:{version}"
    containerd = str(local.kubeconfig.parent / "run" / "containerd.sock")
    subprocess.run(
        ["ctr", "--address", containerd, "--namespace", "k8s.io",
         "images", "tag", "--force", "localhost/taskyard/operator:dev", released],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    try:
        for command in (apply_manifests, wait_crds, apply_agents):
            run_in_checkout(command)
        run_in_checkout("kubectl -n taskyard-system rollout status deployment/taskyard --timeout=180s")
        assert release_image(local) == released
        shell = local.kubectl("get", "clusteragent", "shell", "-o", "jsonpath={.spec.image}").stdout
        assert shell  # the manifests' shell ClusterAgent (its busybox is pulled from Docker Hub)
        # The operator of the plain manifests runs a Task: on an Agent of the namespace, whose image
        # the node has, as the ClusterAgent's busybox cannot be pulled here.
        agent = {
            "apiVersion": "taskyard.dev/v1alpha1",
            "kind": "Agent",
            "metadata": {"name": "local-shell", "namespace": "readme-install"},
            "spec": {"image": "localhost/taskyard/shell:dev", "command": ["sh", "/etc/taskyard/prompt"]},
        }
        local.kubectl("apply", "-f", "-", input=json.dumps(agent))
        run_a_task(local, "readme-install", "from-manifests", "local-shell")
    finally:
        local.kubectl("delete", "namespace", "readme-install", "--wait=false", check=False)
        agents = str(REPO_ROOT / "manifests" / "agents")
        local.kubectl("delete", "-k", agents, "--ignore-not-found", check=False)
        rendered = local.kubectl("kustomize", str(REPO_ROOT / "manifests")).stdout
        kept = [d for d in yaml.safe_load_all(rendered) if d and d["kind"] != "CustomResourceDefinition"]
        local.kubectl(
            "delete", "-f", "-", "--ignore-not-found", "--wait=false",
            input="\n---\n".join(yaml.safe_dump(d) for d in kept), check=False,
        )  # fmt: skip
