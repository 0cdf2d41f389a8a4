"""The README, run as written: its first command (`make demo`), then every command of "Use it" and "The
taskyard command", in order, in a shell on the local cluster, as a user would type them. A command of
those sections that fails fails this test. (`make test` is the run this test is part of; the sections
for other clusters and for running the operator out of the cluster are not run here.)"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, Cluster, _kubectl_binary_dir
from tests.demo.conftest import make

pytestmark = [pytest.mark.demo, pytest.mark.exclusive]  # the release watches every namespace

README = REPO_ROOT / "README.md"
RUN_SECTIONS = ("## Use it",)  # with its subsection "The taskyard command"
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
    """The commands of the ```console blocks: the lines after "$ ", in order."""
    blocks = re.findall(r"```console\n(.*?)```", text, re.DOTALL)
    return [line[2:] for block in blocks for line in block.splitlines() if line.startswith("$ ")]


def hello_manifest(text: str) -> str:
    """The YAML block the README calls hello.yaml."""
    [block] = [b for b in re.findall(r"```yaml\n(.*?)```", text, re.DOTALL) if b.startswith("# hello.yaml")]
    return block


@pytest.fixture
def user_shell(local: Cluster, tmp_path: Path) -> Iterator[dict[str, str]]:
    """The environment of a user's shell after `make demo`: the cluster's kubeconfig, kubectl and the
    taskyard command on PATH, in a directory of their own; their Tasks are removed afterwards."""
    path = os.pathsep.join([str(REPO_ROOT / ".venv" / "bin"), _kubectl_binary_dir(), os.environ["PATH"]])
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
