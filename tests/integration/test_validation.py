"""Bad Tasks are refused by `kubectl apply` itself, with a message that names the field."""

from __future__ import annotations

import json

import pytest

from tests.conftest import Cluster
from tests.integration.conftest import Kube

pytestmark = pytest.mark.integration


def apply(cluster: Cluster, namespace: str, spec: dict, name: str = "bad") -> tuple[int, str]:
    task = {"apiVersion": "taskyard.dev/v1alpha1", "kind": "Task", "metadata": {"name": name}, "spec": spec}
    result = cluster.kubectl("-n", namespace, "apply", "-f", "-", input=json.dumps(task), check=False)
    return result.returncode, result.stderr


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"prompt": "echo hi"}, "spec.agent: Required value"),
        ({"agent": "shell"}, "set exactly one of spec.prompt or spec.promptFrom"),
        ({"agent": "shell", "prompt": ""}, "spec.prompt"),
        (
            {"agent": "shell", "prompt": "x", "priority": "urgent"},
            'spec.priority: Unsupported value: "urgent"',
        ),
        ({"agent": "shell", "prompt": "x", "timeout": "5 minutes"}, "spec.timeout"),
        ({"agent": "shell", "prompt": "x", "timeout": "0s"}, "spec.timeout"),
        ({"agent": "shell", "prompt": "x", "retries": -1}, "spec.retries: Invalid value: -1"),
        ({"agent": "shell", "prompt": "x" * 40000}, "put a larger prompt in a ConfigMap or Secret"),
        ({"agent": "Not_A_Name", "prompt": "x"}, "spec.agent"),
        ({"agent": "shell", "prompt": "x", "workspace": {"size": "lots"}}, "spec.workspace.size"),
        ({"agent": "shell", "prompt": "x", "timeout": "99999999h"}, "timeout must be at most 168h (a week)"),
        ({"agent": "shell", "prompt": "x", "env": [{"name": "1ABC", "value": "v"}]}, "spec.env[0].name"),
        ({"agent": "shell", "prompt": "x", "ttlSecondsAfterFinished": -5}, "spec.ttlSecondsAfterFinished"),
        ({"agent": "shell", "prompt": "x", "repository": {"url": "/srv/repo"}}, "spec.repository.url"),
        (
            {"agent": "shell", "prompt": "x", "repository": {"url": "https://me:tok@g.example/r.git"}},
            "the URL carries a password or token; put it in a Secret",
        ),
        (
            {"agent": "shell", "prompt": "x", "repository": {"url": "https://g.example/r.git", "push": True}},
            "spec.repository.push needs spec.repository.branch",
        ),
        (
            {
                "agent": "shell",
                "prompt": "x",
                "repository": {"url": "https://g.example/r.git", "ref": "a..b"},
            },
            "a git ref cannot contain '..'",
        ),
        ({"agent": "shell", "prompt": "x", "limits": {"maxTurns": 0}}, "spec.limits.maxTurns"),
        ({"agent": "shell", "prompt": "x", "limits": {"maxCostUSD": 0}}, "spec.limits.maxCostUSD"),
    ],
    ids=[
        "missing-agent",
        "missing-prompt",
        "empty-prompt",
        "unknown-priority",
        "malformed-timeout",
        "zero-timeout",
        "negative-retries",
        "oversize-prompt",
        "bad-agent-name",
        "bad-workspace-size",
        "timeout-beyond-a-week",
        "bad-env-name",
        "negative-ttl",
        "repository-not-a-url",
        "repository-url-with-token",
        "push-without-branch",
        "ref-with-dots",
        "zero-turns",
        "zero-cost",
    ],
)
def test_bad_input_is_rejected_at_apply_time(kube: Kube, spec: dict, expected: str) -> None:
    code, message = apply(kube.cluster, kube.namespace, spec)

    assert code != 0
    assert expected in message
    assert not kube.task_exists("bad")


def test_spec_is_immutable_except_cancel(kube: Kube) -> None:
    assert apply(kube.cluster, kube.namespace, {"agent": "shell", "prompt": "echo 1"}, "fixed")[0] == 0

    code, message = apply(kube.cluster, kube.namespace, {"agent": "shell", "prompt": "echo 2"}, "fixed")
    assert code != 0
    assert "spec.prompt is immutable" in message

    code, _ = apply(
        kube.cluster, kube.namespace, {"agent": "shell", "prompt": "echo 1", "cancel": True}, "fixed"
    )
    assert code == 0
    assert kube.task("fixed")["spec"]["cancel"] is True

    code, message = apply(kube.cluster, kube.namespace, {"agent": "shell", "prompt": "echo 1"}, "fixed")
    assert code != 0
    assert "spec.cancel cannot be unset once set" in message
