"""The fault tier: the operator against the real cluster while things go wrong on purpose.

It reuses the integration tier's fixtures (CRDs, a namespace, an operator process per test) and adds a
TCP fault proxy between the operator and the API server (:mod:`tests.fault.proxy`).
"""

from __future__ import annotations

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
    path = tmp_path / "kubeconfig-via-proxy"
    path.write_text(yaml.safe_dump(config))
    try:
        yield proxy, path
    finally:
        proxy.stop()
