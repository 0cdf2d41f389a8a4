"""Objects that are not a Task's are never used or deleted: a Job, a log ConfigMap or a workspace claim
under the Task's name that the Task does not own fails the Task with NameConflict, and stays as it was."""

from __future__ import annotations

import pytest
from kubernetes import client

from tests.conftest import SHELL_IMAGE
from tests.integration.conftest import Kube, OperatorProcess

pytestmark = pytest.mark.fault


def foreign_job(kube: Kube, name: str) -> client.V1Job:
    container = client.V1Container(name="other", image=SHELL_IMAGE, command=["true"])
    template = client.V1PodTemplateSpec(spec=client.V1PodSpec(containers=[container], restart_policy="Never"))
    body = client.V1Job(metadata=client.V1ObjectMeta(name=name), spec=client.V1JobSpec(template=template))
    return kube.batch.create_namespaced_job(kube.namespace, body)


@pytest.mark.parametrize("kind", ["Job", "ConfigMap", "PersistentVolumeClaim"])
def test_a_namesake_object_that_is_not_the_tasks_is_left_alone(
    kube: Kube, shell_agent: str, operator: OperatorProcess, kind: str
) -> None:
    if kind == "Job":
        existing = foreign_job(kube, "clash")
        read = lambda: kube.batch.read_namespaced_job("clash", kube.namespace)  # noqa: E731
        name = "clash"
    elif kind == "ConfigMap":
        body = client.V1ConfigMap(metadata=client.V1ObjectMeta(name="clash-logs"), data={"mine": "yes"})
        existing = kube.core.create_namespaced_config_map(kube.namespace, body)
        read = lambda: kube.core.read_namespaced_config_map("clash-logs", kube.namespace)  # noqa: E731
        name = "clash-logs"
    else:
        spec = client.V1PersistentVolumeClaimSpec(
            access_modes=["ReadWriteOnce"],
            resources=client.V1VolumeResourceRequirements(requests={"storage": "1Mi"}),
        )
        body = client.V1PersistentVolumeClaim(metadata=client.V1ObjectMeta(name="clash-workspace"), spec=spec)
        existing = kube.core.create_namespaced_persistent_volume_claim(kube.namespace, body)
        read = lambda: kube.core.read_namespaced_persistent_volume_claim("clash-workspace", kube.namespace)  # noqa: E731
        name = "clash-workspace"

    spec = {"agent": shell_agent, "prompt": "echo should never run"}
    if kind == "PersistentVolumeClaim":
        spec["workspace"] = {"size": "64Mi", "keep": False}
    kube.create("Task", "clash", spec)

    task = kube.wait_for_phase("clash", "Failed", timeout=60)
    assert task["status"]["reason"] == "NameConflict"
    assert f"a {kind} named {name!r}" in task["status"]["message"]
    after = read()
    assert after.metadata.uid == existing.metadata.uid  # not deleted and re-created
    assert not after.metadata.deletion_timestamp
    assert not after.metadata.owner_references  # not adopted
    assert (after.metadata.labels or {}) == (existing.metadata.labels or {})
    if kind == "ConfigMap":
        assert after.data == {"mine": "yes"} and not after.binary_data
        assert after.metadata.resource_version == existing.metadata.resource_version  # not even patched
    if kind != "Job":
        assert kube.jobs("clash") == []  # nothing ran
