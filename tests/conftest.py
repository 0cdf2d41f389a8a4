"""Test fixtures shared by every tier.

The cluster tiers (smoke, integration, e2e) run against a real Kubernetes:
- by default the local single-node cluster of hack/cluster-up.sh, started if it is not running;
- with ``--kubeconfig PATH`` (or ``KUBECONFIG``) an existing cluster;
- with ``--cluster=kind`` a kind cluster through pytest-kind, where Docker exists.
Unit tests use none of these fixtures and need no cluster.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
LOCAL_KUBECONFIG = Path(os.environ.get("TASKYARD_CLUSTER_DIR", REPO_ROOT / ".cluster")) / "kubeconfig"
SHELL_IMAGE = "localhost/taskyard/shell:dev"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("taskyard")
    group.addoption(
        "--cluster",
        choices=["local", "kind"],
        default="local",
        help="local: the hack/cluster-up.sh cluster (default); kind: a kind cluster via pytest-kind",
    )
    # --kubeconfig PATH (use an existing cluster) comes with the pytest-kind plugin.


@dataclass(frozen=True)
class Cluster:
    """A reachable Kubernetes cluster and the means to talk to it."""

    kubeconfig: Path

    def kubectl(self, *args: str, check: bool = True, input: str | None = None, timeout: float = 120):
        """Runs kubectl against this cluster and returns the CompletedProcess (text mode)."""
        return subprocess.run(
            ["kubectl", f"--kubeconfig={self.kubeconfig}", *args],
            input=input,
            capture_output=True,
            text=True,
            check=check,
            timeout=timeout,
        )


def _kubectl_binary_dir() -> str:
    """The kubectl built with the local cluster, so the client matches the server version."""
    version = os.environ.get("K8S_VERSION", "v1.34.4")
    cache = Path(os.environ.get("TASKYARD_CACHE", Path.home() / ".cache" / "taskyard"))
    return str(cache / f"kubernetes-{version}" / "bin")


def helm_binary() -> str:
    """The helm built with the local cluster's tools, else helm on PATH."""
    version = os.environ.get("HELM_VERSION", "v3.19.0")
    cache = Path(os.environ.get("TASKYARD_CACHE", Path.home() / ".cache" / "taskyard"))
    built = cache / f"helm-{version}" / "bin" / "helm"
    return str(built) if built.exists() else "helm"


@pytest.fixture(scope="session")
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """The cluster under test (see the module docstring for how it is chosen)."""
    os.environ["PATH"] = _kubectl_binary_dir() + os.pathsep + os.environ["PATH"]
    kubeconfig = request.config.getoption("--kubeconfig") or os.environ.get("KUBECONFIG")
    mode = request.config.getoption("--cluster")
    if mode == "kind":
        from pytest_kind import KindCluster

        kind = KindCluster("taskyard-test")
        kind.create()
        # kind nodes cannot see images built here: build the agent image with Docker from the same
        # Dockerfile (on the public busybox base) and load it into the nodes.
        shell_context = str(REPO_ROOT / "hack" / "images" / "shell")
        subprocess.run(["docker", "build", "-t", SHELL_IMAGE, shell_context], check=True)
        kind.load_docker_image(SHELL_IMAGE)
        try:
            yield Cluster(kubeconfig=Path(kind.kubeconfig_path))
        finally:
            kind.delete()
        return
    if not kubeconfig:
        subprocess.run([str(REPO_ROOT / "hack" / "cluster-up.sh")], check=True)
        kubeconfig = str(LOCAL_KUBECONFIG)
    yield Cluster(kubeconfig=Path(kubeconfig))


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    """A fresh namespace for one test, deleted (with everything in it) afterwards."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    cluster.kubectl("create", "namespace", name)
    try:
        yield name
    finally:
        cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)
