"""taskyard as users install it: `helm install`, then Tasks applied with kubectl and GitOps-style."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_ROOT, SHELL_IMAGE, Cluster
from tests.e2e.conftest import CHART, Release
from tests.integration.conftest import Kube

pytestmark = [pytest.mark.e2e, pytest.mark.exclusive]  # the release watches every namespace


@pytest.fixture
def kube(cluster: Cluster, namespace: str, release: Release) -> Kube:
    return Kube(cluster, namespace)


def hello_task() -> dict:
    """The Task of examples/hello.yaml (its ClusterAgent comes with the chart)."""
    documents = yaml.safe_load_all((REPO_ROOT / "examples" / "hello.yaml").read_text())
    return next(doc for doc in documents if doc["kind"] == "Task")


def test_operator_pod_is_ready_and_runs_the_hello_task(kube: Kube, release: Release) -> None:
    pods = kube.cluster.kubectl(
        "-n", release.namespace, "get", "pods", "-o", "json",
        "-l", "app.kubernetes.io/name=taskyard,app.kubernetes.io/component=operator",
    )  # fmt: skip
    [pod] = json.loads(pods.stdout)["items"]
    assert all(c["ready"] for c in pod["status"]["containerStatuses"])

    kube.cluster.kubectl("-n", kube.namespace, "apply", "-f", "-", input=json.dumps(hello_task()))

    task = kube.wait_for_phase("hello", "Succeeded", timeout=180)
    assert "hello from task hello" in task["status"]["logTail"]
    logs = kube.cluster.kubectl("-n", kube.namespace, "logs", "job/hello").stdout
    assert logs.startswith(f"hello from task hello ({task['metadata']['uid']})")


def test_the_task_api_of_the_release_answers_as_its_caller(kube: Kube, release: Release) -> None:
    # From a pod of the cluster, through the release's Service, with a ServiceAccount's token.
    api = f"{release.name}-api"
    kube.cluster.kubectl("-n", release.namespace, "rollout", "status", f"deployment/{api}", "--timeout=180s")
    cluster, namespace = kube.cluster, kube.namespace
    cluster.kubectl("-n", namespace, "create", "serviceaccount", "reader")
    cluster.kubectl(
        "-n", namespace, "create", "role", "reader", "--verb=get,list", "--resource=tasks.taskyard.dev"
    )
    cluster.kubectl(
        "-n",
        namespace,
        "create",
        "rolebinding",
        "reader",
        "--role=reader",
        f"--serviceaccount={namespace}:reader",
    )
    token = cluster.kubectl("-n", namespace, "create", "token", "reader").stdout.strip()
    kube.cluster.kubectl("-n", kube.namespace, "apply", "-f", "-", input=json.dumps(hello_task()))
    kube.wait_for_phase("hello", "Succeeded", timeout=180)
    address = cluster.kubectl(
        "-n", release.namespace, "get", "service", api, "-o", "jsonpath={.spec.clusterIP}"
    )
    url = f"http://{address.stdout}:9090"  # by address: the local cluster runs no DNS
    script = (
        f"wget -qO- --header 'Authorization: Bearer {token}' {url}/v1/tasks/hello; echo; "
        # wget's error on stdout too: the container log does not keep the order across the two streams.
        f"wget -qO- {url}/v1/tasks/hello 2>&1 || echo refused"
    )
    pod = {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "api-client", "namespace": namespace},
        "spec": {"restartPolicy": "Never", "automountServiceAccountToken": False,
                 "containers": [{"name": "client", "image": SHELL_IMAGE, "command": ["sh", "-c", script]}]},
    }  # fmt: skip
    cluster.kubectl("apply", "-f", "-", input=json.dumps(pod))
    kube.wait_for(
        "the client pod to finish",
        lambda: (
            kube.core.read_namespaced_pod("api-client", namespace).status.phase in ("Succeeded", "Failed")
        ),
        timeout=120,
    )
    first, *rest = cluster.kubectl("-n", namespace, "logs", "api-client").stdout.splitlines()
    shown = json.loads(first)
    assert (shown["taskId"], shown["status"], shown["exitCode"]) == ("hello", "completed", 0)
    assert "hello from task hello" in shown["logTail"]
    assert rest == ["wget: server returned error: HTTP/1.1 401 Unauthorized", "refused"]  # no token


def test_a_gitops_directory_of_tasks_all_finish(kube: Kube, tmp_path: Path) -> None:
    # The directory as a GitOps tool would apply it, with the agent image switched to the local one and
    # the long report's six 10 s steps cut to 1 s (how long it runs is not what this shows).
    directory = tmp_path / "gitops"
    shutil.copytree(REPO_ROOT / "examples" / "gitops", directory)
    for manifest in directory.glob("*.yaml"):
        text = manifest.read_text().replace("docker.io/library/busybox:1.36", SHELL_IMAGE)
        manifest.write_text(text.replace("sleep 10;", "sleep 1;"))
    assert "sleep 1;" in (directory / "tasks.yaml").read_text()

    kube.cluster.kubectl("-n", kube.namespace, "apply", "-k", str(directory))

    tasks = json.loads(kube.cluster.kubectl("-n", kube.namespace, "get", "tasks", "-o", "json").stdout)[
        "items"
    ]
    assert len(tasks) >= 2
    for task in tasks:
        kube.wait_for_phase(task["metadata"]["name"], "Succeeded", timeout=180)


def test_deleting_a_running_task_cancels_its_work(kube: Kube) -> None:
    kube.create("Task", "doomed", {"agent": "shell", "prompt": "echo working; sleep 300"})
    kube.wait_for(
        "the agent pod to run", lambda: any(p.status.phase == "Running" for p in kube.pods("doomed"))
    )

    kube.delete_task("doomed")

    kube.wait_for("the Task to be gone", lambda: not kube.task_exists("doomed"), timeout=10)
    kube.wait_for("the Job to be gone", lambda: not kube.jobs("doomed"), timeout=60)
    kube.wait_for("the pod to be gone", lambda: not kube.pods("doomed"), timeout=60)


def test_helm_upgrade_with_new_values_keeps_running_tasks(kube: Kube, release: Release) -> None:
    kube.create("Task", "long", {"agent": "shell", "prompt": "echo before; sleep 20; echo after"})
    kube.wait_for_phase("long", "Running")

    release.helm("upgrade", release.name, str(CHART), "--set", "concurrency.total=5", *release.image_values())
    release.wait_ready()

    task = kube.wait_for_phase("long", "Succeeded", timeout=120)
    assert task["status"]["logTail"] == "before\nafter"
    assert len(kube.jobs("long")) == 1


def test_helm_uninstall_leaves_no_task_stuck(kube: Kube, release: Release) -> None:
    # Runs last: it uninstalls the tier's release (its fixture's own uninstall then finds nothing).
    kube.create("Task", "outlived", {"agent": "shell", "prompt": "echo started; sleep 300"})
    kube.wait_for_phase("outlived", "Running", timeout=120)

    release.helm("uninstall", release.name, "--wait")

    # The work outlives the operator (the Job belongs to the Task), and the Task can still be
    # deleted at once, with its Job, because the operator puts no finalizer on it.
    assert kube.task("outlived")["status"]["phase"] == "Running"
    assert len(kube.jobs("outlived")) == 1
    kube.delete_task("outlived")
    kube.wait_for("the Task to be gone", lambda: not kube.task_exists("outlived"), timeout=10)
    kube.wait_for("the Job to be gone", lambda: not kube.jobs("outlived"), timeout=60)
