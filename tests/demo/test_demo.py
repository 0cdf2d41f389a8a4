"""`make demo` and `make install` as a newcomer runs them: on the local cluster, the chart installed with
Helm on the images built here, a hello Task end to end, an operator left running, and a clear refusal
where the images cannot be pulled. Runs after the e2e tier, whose release it would collide with."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import Cluster, helm_binary
from tests.demo.conftest import DEMO_NAMESPACE, make

pytestmark = [pytest.mark.demo, pytest.mark.exclusive]  # the release watches every namespace


def test_make_demo_installs_the_chart_runs_hello_and_leaves_the_operator_running(local: Cluster) -> None:
    first = make("demo", local.kubeconfig)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "Warning" not in first.stderr and "WARNING" not in first.stderr, first.stderr
    assert "hello from task hello" in first.stdout
    assert f"kubectl -n {DEMO_NAMESPACE} get ytask" in first.stdout  # what to try next

    status = subprocess.run(
        [helm_binary(), f"--kubeconfig={local.kubeconfig}", "status", "taskyard", "-n", "taskyard-system"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "STATUS: deployed" in status.stdout
    image = local.kubectl(
        "-n", "taskyard-system", "get", "deployment", "taskyard",
        "-o", "jsonpath={.spec.template.spec.containers[0].image}",
    ).stdout  # fmt: skip
    assert image == "localhost/taskyard/operator:dev"

    again = make("demo", local.kubeconfig)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "hello from task hello" in again.stdout
    revision = local.kubectl(
        "-n", "taskyard-system", "get", "secret", "-l", "owner=helm,name=taskyard", "-o", "name"
    ).stdout.split()
    assert len(revision) == 2  # upgraded in place, not installed twice

    # The operator outlives the demo: a Task applied afterwards runs.
    local.kubectl("create", "namespace", "taskyard-demo-after")
    task = (
        "apiVersion: taskyard.dev/v1alpha1\nkind: Task\nmetadata: {name: later}\n"
        "spec: {agent: shell, prompt: 'echo still here'}\n"
    )
    local.kubectl("-n", "taskyard-demo-after", "apply", "-f", "-", input=task)
    waited = local.kubectl(
        "-n", "taskyard-demo-after", "wait", "--for=condition=Succeeded", "task/later", "--timeout=120s",
        check=False, timeout=150,
    )  # fmt: skip
    assert waited.returncode == 0, waited.stderr
    logs = local.kubectl("-n", "taskyard-demo-after", "logs", "job/later").stdout
    assert logs.strip() == "still here"


def test_make_install_elsewhere_needs_images_the_cluster_can_pull(local: Cluster, tmp_path: Path) -> None:
    # The same cluster through another kubeconfig is, to make install, a cluster of the user's own.
    elsewhere = tmp_path / "kubeconfig"
    shutil.copy(local.kubeconfig, elsewhere)

    unnamed = make("install", elsewhere)
    assert unnamed.returncode != 0
    assert "Warning" not in unnamed.stderr
    assert "set IMAGE_REGISTRY to the registry that holds taskyard's images" in unnamed.stderr
    assert "make images-push REGISTRY=<registry>" in unnamed.stderr

    started = time.monotonic()
    missing = make("install", elsewhere, IMAGE_REGISTRY="registry.invalid/taskyard", TAG="0.0.0")
    assert missing.returncode != 0
    assert "the cluster cannot pull registry.invalid/taskyard/operator:0.0.0" in missing.stderr
    assert "make images-push REGISTRY=registry.invalid/taskyard TAG=0.0.0" in missing.stderr
    assert time.monotonic() - started < 240
    assert "Warning" not in missing.stderr
