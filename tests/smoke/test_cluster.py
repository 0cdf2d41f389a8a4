"""The cluster under test is a real Kubernetes: pods run, logs flow, volumes bind, tokens authenticate."""

from __future__ import annotations

import json

import pytest

from tests.conftest import SHELL_IMAGE, Cluster

pytestmark = pytest.mark.smoke

SELF_SUBJECT_REVIEWS = "/apis/authentication.k8s.io/v1/selfsubjectreviews"
RESTRICTED_POD = {
    "restartPolicy": "Never",
    "securityContext": {
        "runAsNonRoot": True,
        "runAsUser": 65532,
        "seccompProfile": {"type": "RuntimeDefault"},
    },
}
RESTRICTED_CONTAINER = {
    "image": SHELL_IMAGE,
    "imagePullPolicy": "IfNotPresent",
    "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
}


def run_job(
    cluster: Cluster,
    namespace: str,
    name: str,
    script: str,
    pod_fields: dict | None = None,
    volume_mounts: list[dict] | None = None,
) -> None:
    """Creates a one-pod Job running `script` in the shell image and waits for it to complete."""
    container = {"name": "main", "command": ["sh", "-c", script], **RESTRICTED_CONTAINER}
    if volume_mounts:
        container["volumeMounts"] = volume_mounts
    pod = {
        "automountServiceAccountToken": False,
        **RESTRICTED_POD,
        **(pod_fields or {}),
        "containers": [container],
    }
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"backoffLimit": 0, "template": {"spec": pod}},
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(job))
    waited = cluster.kubectl(
        "-n", namespace, "wait", "--for=condition=Complete", f"job/{name}", "--timeout=180s", check=False
    )
    if waited.returncode != 0:
        described = cluster.kubectl("-n", namespace, "describe", f"job/{name}", "pods", check=False).stdout
        pytest.fail(f"job {name} did not complete: {waited.stderr}\n{described}")


def test_job_runs_and_its_logs_are_exactly_what_it_printed(cluster: Cluster, namespace: str) -> None:
    run_job(cluster, namespace, "hello", "echo one; echo two; echo three")

    logs = cluster.kubectl("-n", namespace, "logs", "job/hello").stdout

    assert logs == "one\ntwo\nthree\n"


def test_dynamic_volume_binds_and_keeps_data_between_pods(cluster: Cluster, namespace: str) -> None:
    claim = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "data", "namespace": namespace},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "64Mi"}}},
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(claim))
    volume = {"volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}]}
    mounts = [{"name": "data", "mountPath": "/data"}]

    run_job(cluster, namespace, "writer", "echo kept-on-volume > /data/file", volume, mounts)
    run_job(cluster, namespace, "reader", "cat /data/file", volume, mounts)

    phase = cluster.kubectl("-n", namespace, "get", "pvc", "data", "-o", "jsonpath={.status.phase}").stdout
    assert phase == "Bound"
    assert cluster.kubectl("-n", namespace, "logs", "job/reader").stdout == "kept-on-volume\n"


def test_pod_authenticates_to_the_api_server_through_the_kubernetes_service(
    cluster: Cluster, namespace: str
) -> None:
    # SelfSubjectReview answers "who am I": it proves the service IP routes to the API server and
    # that the projected service-account token is accepted.
    script = (
        'echo "$KUBERNETES_SERVICE_HOST"; '
        "token=$(cat /var/run/secrets/kubernetes.io/serviceaccount/token); "
        'wget -q -O- --header "Authorization: Bearer $token" --header "Content-Type: application/json" '
        '--post-data \'{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}\' '
        f'"https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT{SELF_SUBJECT_REVIEWS}" 2>/dev/null'
    )
    run_job(cluster, namespace, "whoami", script, {"automountServiceAccountToken": True})

    host, review = cluster.kubectl("-n", namespace, "logs", "job/whoami").stdout.split("\n", 1)
    service_ip = cluster.kubectl(
        "-n", "default", "get", "service", "kubernetes", "-o", "jsonpath={.spec.clusterIP}"
    ).stdout

    assert host == service_ip
    assert (
        json.loads(review)["status"]["userInfo"]["username"] == f"system:serviceaccount:{namespace}:default"
    )
