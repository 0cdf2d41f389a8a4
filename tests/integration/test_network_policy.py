"""Agent pods cannot reach the cluster's insides: the operator's egress NetworkPolicies, enforced by the
local cluster's network policy controller (kube-router's firewall), on real pod traffic.

Every probe is made twice: from a plain pod of the namespace (no policy selects it), which proves the
target answers, and from a Task's pod, which the policy must stop."""

from __future__ import annotations

import secrets
from typing import Any

import pytest

from tests.conftest import SHELL_IMAGE
from tests.integration.conftest import SHELL_AGENT, Kube, OperatorProcess

pytestmark = pytest.mark.integration

API_SERVICE = ("10.0.0.1", 443)  # the `kubernetes` Service: the API server, behind kube-proxy
NODE = ("10.244.0.1", 6443)  # the node's own address: the API server, directly
ENFORCER_PATIENCE_SECONDS = 60
RESTRICTED = {
    "runAsNonRoot": True,
    "runAsUser": 65532,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def probe_script(targets: dict[str, tuple[str, int]], token: str) -> str:
    """A shell script that prints `<name> reached` or `<name> blocked` for each target: web servers
    must answer with the token, the API server with its answer to plain HTTP on its TLS port."""
    lines = ["set +e"]
    for name, (address, port) in targets.items():
        # busybox's nc, as its wget crashes on a timeout option; a blocked connection times out.
        answer = "HTTP/1.0 400" if port != 8080 else token
        request = f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | timeout 5 nc -w 3 {address} {port} 2>/dev/null"
        lines.append(
            f"if {request} | grep -q '{answer}'; then echo '{name} reached'; else echo '{name} blocked'; fi"
        )
    return "\n".join(lines) + "\n"


def web_server(kube: Kube, name: str, token: str) -> str:
    """A pod labelled app=<name> serving the token on port 8080; returns its address."""
    serve = f"mkdir -p /tmp/www && echo {token} > /tmp/www/index.html && exec httpd -f -p 8080 -h /tmp/www"
    pod = {
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "containers": [
                {
                    "name": "web",
                    "image": SHELL_IMAGE,
                    "command": ["sh", "-c", serve],
                    "securityContext": RESTRICTED,
                    "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1},
                }
            ],
            "automountServiceAccountToken": False,
        },
    }
    kube.core.create_namespaced_pod(kube.namespace, pod)

    def ready() -> str | None:
        status = kube.core.read_namespaced_pod(name, kube.namespace).status
        conditions = {c.type: c.status for c in status.conditions or []}
        return status.pod_ip if conditions.get("Ready") == "True" else None

    return kube.wait_for(f"web server {name} to be ready", ready, timeout=120)


def probe_from_plain_pod(kube: Kube, script: str) -> dict[str, str]:
    """Runs the probes in a pod no NetworkPolicy selects."""
    pod = {
        "metadata": {"name": "control"},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "probe",
                    "image": SHELL_IMAGE,
                    "command": ["sh", "-c", script],
                    "securityContext": RESTRICTED,
                }
            ],
            "automountServiceAccountToken": False,
        },
    }
    kube.core.create_namespaced_pod(kube.namespace, pod)
    kube.wait_for(
        "the control pod to finish",
        lambda: kube.core.read_namespaced_pod("control", kube.namespace).status.phase == "Succeeded",
        timeout=120,
    )
    return outcomes(kube.core.read_namespaced_pod_log("control", kube.namespace))


def outcomes(output: str) -> dict[str, str]:
    return dict(line.split(" ", 1) for line in output.strip().splitlines())


def probe_from_task(kube: Kube, name: str, agent: str, script: str) -> dict[str, str]:
    # kube-router programs a new pod's rules when it sees the pod's address, a moment after the pod
    # starts (docs/security.md says how long; longer on a busy node): the probes start once the node,
    # which no policy of these tests opens, stops answering, or after a minute without that.
    address, port = NODE
    wait = (
        f"end=$(($(date +%s) + {ENFORCER_PATIENCE_SECONDS}))\n"
        f"while [ $(date +%s) -lt $end ] && timeout 3 nc -w 2 {address} {port} </dev/null 2>/dev/null\n"
        "do sleep 1; done\n"
    )
    kube.create("Task", name, {"agent": agent, "prompt": wait + script})
    task = kube.wait_for_phase(name, "Succeeded", timeout=180)
    return outcomes(task["status"]["logTail"])


def policy(kube: Kube, name: str) -> dict[str, Any]:
    return kube.networking.read_namespaced_network_policy(name, kube.namespace).to_dict()


@pytest.fixture
def targets(kube: Kube) -> tuple[str, dict[str, tuple[str, int]]]:
    token = secrets.token_hex(8)
    allowed = web_server(kube, "allowed-target", token)
    other = web_server(kube, "other-target", token)
    return token, {
        "api-service": API_SERVICE,
        "node": NODE,
        "allowed-target": (allowed, 8080),
        "other-target": (other, 8080),
    }


def test_an_agent_pod_reaches_nothing_inside_the_cluster_by_default(
    kube: Kube, operator: OperatorProcess, targets: tuple[str, dict[str, tuple[str, int]]]
) -> None:
    token, addresses = targets
    script = probe_script(addresses, token)
    assert probe_from_plain_pod(kube, script) == dict.fromkeys(addresses, "reached")
    kube.create("Agent", "shell", SHELL_AGENT)

    assert probe_from_task(kube, "sealed", "shell", script) == dict.fromkeys(addresses, "blocked")

    made = policy(kube, "taskyard-agents")
    assert made["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "taskyard"
    assert made["spec"]["policy_types"] == ["Egress"]


def test_an_agent_may_open_exactly_what_its_egress_rules_allow(
    kube: Kube, operator: OperatorProcess, targets: tuple[str, dict[str, tuple[str, int]]]
) -> None:
    token, addresses = targets
    egress = [
        {"to": [{"podSelector": {"matchLabels": {"app": "allowed-target"}}}], "ports": [{"port": 8080}]}
    ]
    kube.create("Agent", "gateway-only", {**SHELL_AGENT, "egress": egress})

    reached = probe_from_task(kube, "via-gateway", "gateway-only", probe_script(addresses, token))

    assert reached == {
        "api-service": "blocked",
        "node": "blocked",
        "allowed-target": "reached",
        "other-target": "blocked",
    }
    own = policy(kube, "taskyard-agent-gateway-only")
    assert own["spec"]["pod_selector"]["match_labels"] == {
        "app.kubernetes.io/managed-by": "taskyard",
        "taskyard.dev/agent": "gateway-only",
        "taskyard.dev/egress": "agent",
    }
