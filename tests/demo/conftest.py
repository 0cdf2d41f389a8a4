"""The demo tier's shared pieces: the local cluster, and `make` run as a user runs it."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import LOCAL_KUBECONFIG, REPO_ROOT, Cluster, helm_binary

DEMO_NAMESPACE = "taskyard-demo"


def make(target: str, kubeconfig: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "-C", str(REPO_ROOT), target],
        env={**os.environ, "KUBECONFIG": str(kubeconfig), **env},
        capture_output=True,
        text=True,
        timeout=1800,
    )


@pytest.fixture(scope="package")
def local(cluster: Cluster) -> Iterator[Cluster]:
    """The local cluster; the demo's release and namespace are removed afterwards."""
    if cluster.kubeconfig.resolve() != LOCAL_KUBECONFIG.resolve():
        pytest.fail("make demo installs the locally built images: run this tier on the local cluster")
    yield cluster
    helm = [helm_binary(), f"--kubeconfig={cluster.kubeconfig}"]
    subprocess.run(
        [*helm, "uninstall", "taskyard", "-n", "taskyard-system", "--wait"], capture_output=True, timeout=300
    )
    for namespace in (DEMO_NAMESPACE, "taskyard-system", "taskyard-demo-after"):
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
