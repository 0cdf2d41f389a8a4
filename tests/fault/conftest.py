"""The fault tier: the operator against the real cluster while things go wrong on purpose.

It reuses the integration tier's fixtures (CRDs, a namespace, an operator process per test) and adds a
TCP fault proxy between the operator and the API server (:mod:`tests.fault.proxy`).
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.conftest import Cluster
from tests.e2e.conftest import operator_image  # noqa: F401  (the liveness test runs the chart)
from tests.fault.proxy import FaultProxy
from tests.integration.conftest import (  # noqa: F401  (fixtures shared with the integration tier)
    Kube,
    crds,
    kube,
    operator,
    pytest_runtest_makereport,
    shell_agent,
    start_operator,
)


@pytest.fixture
def fault_proxy(cluster: Cluster, tmp_path: Path) -> Iterator[tuple[FaultProxy, Path]]:
    """A fault proxy in front of the API server, and a kubeconfig that goes through it."""
    config = yaml.safe_load(cluster.kubeconfig.read_text())
    server = config["clusters"][0]["cluster"]["server"]
    host, port = server.removeprefix("https://").rsplit(":", 1)
    proxy = FaultProxy(host, int(port)).start()
    config["clusters"][0]["cluster"]["server"] = f"https://{host}:{proxy.port}"
    with _serving(proxy, config, tmp_path / "kubeconfig-via-proxy") as served:
        yield served


@pytest.fixture
def plain_http_fault_proxy(cluster: Cluster, tmp_path: Path) -> Iterator[tuple[FaultProxy, Path]]:
    """A fault proxy that sees requests: in front of `kubectl proxy`, which serves the API in plain
    HTTP on loopback (adding the credentials), and a kubeconfig that goes through both."""
    kubectl_proxy = subprocess.Popen(
        ["kubectl", f"--kubeconfig={cluster.kubeconfig}", "proxy", "--port=0", "--address=127.0.0.1"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert kubectl_proxy.stdout is not None
        serving = kubectl_proxy.stdout.readline()  # "Starting to serve on 127.0.0.1:<port>"
        assert serving.startswith("Starting to serve on"), f"kubectl proxy said {serving!r}"
        proxy = FaultProxy("127.0.0.1", int(serving.rsplit(":", 1)[1])).start()
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "proxied", "cluster": {"server": f"http://127.0.0.1:{proxy.port}"}}],
            "users": [{"name": "proxied", "user": {}}],
            "contexts": [{"name": "proxied", "context": {"cluster": "proxied", "user": "proxied"}}],
            "current-context": "proxied",
        }
        with _serving(proxy, config, tmp_path / "kubeconfig-via-plain-proxy") as served:
            yield served
    finally:
        kubectl_proxy.terminate()
        kubectl_proxy.wait(timeout=10)


@contextlib.contextmanager
def _serving(proxy: FaultProxy, kubeconfig: dict, path: Path) -> Iterator[tuple[FaultProxy, Path]]:
    """The proxy and a kubeconfig through it (written to ``path``); the proxy stops afterwards."""
    path.write_text(yaml.safe_dump(kubeconfig))
    try:
        yield proxy, path
    finally:
        proxy.stop()
