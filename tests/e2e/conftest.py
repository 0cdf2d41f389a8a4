"""The e2e tier: the Helm chart installed into the cluster, with the locally built operator image.

The install tests share one release with default values (package scope), which watches every
namespace: they run when nothing else uses the cluster (`exclusive`), and it is uninstalled at their
end. The coding agents' tests install a release of their own that watches their namespace only
(tests/e2e/test_agents.py). The operator runs in its pod, with in-cluster configuration.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.conftest import REPO_ROOT, SHELL_IMAGE, Cluster, helm_binary
from tests.integration.conftest import crds  # noqa: F401  (releases that share the cluster need them first)

OPERATOR_IMAGE = os.environ.get("TASKYARD_OPERATOR_IMAGE", "localhost/taskyard/operator:dev")
CHART = REPO_ROOT / "helm" / "taskyard"
AGENT_IMAGE_REGISTRY, AGENT_IMAGE_TAG = "localhost/taskyard", "dev"
CODING_AGENTS = ("claude-code", "codex", "gemini-cli", "opencode")
EGRESS = json.dumps(
    [
        {
            "to": [{"podSelector": {"matchLabels": {"taskyard-e2e/role": "agent-service"}}}],
            "ports": [{"port": 8080}],
        }
    ]
)


@dataclass(frozen=True)
class Release:
    """An installed taskyard release."""

    cluster: Cluster
    name: str
    namespace: str

    def helm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [helm_binary(), f"--kubeconfig={self.cluster.kubeconfig}", "--namespace", self.namespace, *args],
            capture_output=True,
            text=True,
            timeout=300,
        )
        if check and result.returncode != 0:
            pytest.fail(f"helm {' '.join(args[:2])} failed: {result.stderr.strip()}")
        return result

    def image_values(self, coding_agents: bool = True) -> list[str]:
        """The locally built images; with ``coding_agents``, the coding agents' presets enabled on them."""
        repository, tag = OPERATOR_IMAGE.rsplit(":", 1)
        operator = [
            "--set", f"image.repository={repository}",
            "--set", f"image.tag={tag}",
            "--set", "image.pullPolicy=IfNotPresent",
            "--set", f"agents.shell.image={SHELL_IMAGE}",
        ]  # fmt: skip
        if not coding_agents:
            return operator
        return [
            *operator,
            # The coding agents' presets, on the images built from agents/ (tests/e2e/test_agents.py).
            "--set", f"agentImages.registry={AGENT_IMAGE_REGISTRY}",
            "--set", f"agentImages.tag={AGENT_IMAGE_TAG}",
            *[arg for agent in CODING_AGENTS for arg in ("--set", f"agents.{agent}.enabled=true")],
            # In place of the default egress (no cluster addresses): exactly the model stub and the git
            # server, as a platform team would open its model gateway.
            *[arg for agent in CODING_AGENTS for arg in ("--set-json", f"agents.{agent}.egress={EGRESS}")],
        ]  # fmt: skip

    def wait_ready(self) -> None:
        self.cluster.kubectl(
            "-n",
            self.namespace,
            "rollout",
            "status",
            f"deployment/{self.name}",
            "--timeout=180s",
            timeout=200,
        )


@pytest.fixture(scope="package")
def operator_image(cluster: Cluster) -> str:
    """The operator image, built from operator/Dockerfile and loaded into the local cluster."""
    if "TASKYARD_OPERATOR_IMAGE" not in os.environ:
        subprocess.run([str(REPO_ROOT / "hack" / "images.sh"), "operator"], check=True)
    return OPERATOR_IMAGE


@pytest.fixture(scope="package")
def release(cluster: Cluster, operator_image: str) -> Iterator[Release]:
    """`helm install` of the chart with default values, except for the locally built images."""
    installed = Release(cluster, "taskyard", f"taskyard-e2e-{uuid.uuid4().hex[:6]}")
    try:
        # A failed install still leaves what it made (cluster-wide ClusterAgents among it): uninstalled too.
        installed.helm("install", installed.name, str(CHART), "--create-namespace", *installed.image_values())
        installed.wait_ready()
        yield installed
    finally:
        installed.helm("uninstall", installed.name, "--wait", check=False)
        cluster.kubectl("delete", "namespace", installed.namespace, "--wait=false", check=False)
