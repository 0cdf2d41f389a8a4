"""Least privilege, checked as the identities involved: the operator's ServiceAccount (impersonated, and
running the operator on its own token), Task authors with and without access to a Secret.

Each test installs the chart's RBAC and admission policies under a release of its own (helm template,
applied with kubectl), so what is checked is exactly what the chart ships; the API server enforces it.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO_ROOT, Cluster, helm_binary
from tests.integration.conftest import Kube

pytestmark = pytest.mark.integration

CHART = REPO_ROOT / "helm" / "taskyard"
POLICY_TEMPLATES = ("templates/admission.yaml", "templates/rbac.yaml", "templates/serviceaccount.yaml")


@dataclass
class Policies:
    """The chart's RBAC and admission policies, installed for one release."""

    cluster: Cluster
    release: str
    operator_namespace: str
    manifest: str

    @property
    def objects(self) -> list[dict[str, Any]]:
        return [o for o in yaml.safe_load_all(self.manifest) if o]

    @property
    def operator_account(self) -> str:
        [account] = [o for o in self.objects if o["kind"] == "ServiceAccount"]
        return account["metadata"]["name"]

    @property
    def operator_user(self) -> str:
        return f"system:serviceaccount:{self.operator_namespace}:{self.operator_account}"

    def as_operator(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return self.cluster.kubectl(*args, f"--as={self.operator_user}", input=input, check=False)

    def operator_kubeconfig(self, path: Path) -> Path:
        """A kubeconfig that authenticates with a token of the operator's ServiceAccount, nothing else."""
        token = self.cluster.kubectl(
            "-n", self.operator_namespace, "create", "token", self.operator_account, "--duration=1h"
        ).stdout.strip()
        admin = yaml.safe_load(self.cluster.kubeconfig.read_text())
        server = admin["clusters"][0]["cluster"]
        path.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "local", "cluster": server}],
                    "users": [{"name": "operator", "user": {"token": token}}],
                    "contexts": [{"name": "operator", "context": {"cluster": "local", "user": "operator"}}],
                    "current-context": "operator",
                }
            )
        )
        return path


def install_policies(cluster: Cluster, watched: str, *values: str) -> Policies:
    """The policies of a release that watches namespace ``watched``: they judge the Tasks and Agents of
    that namespace only, so the other tests sharing the cluster are not judged by them."""
    release = f"sec-{uuid.uuid4().hex[:6]}"
    operator_namespace = f"{release}-system"
    cluster.kubectl("create", "namespace", operator_namespace)
    shown = [arg for template in POLICY_TEMPLATES for arg in ("--show-only", template)]
    sets = [arg for value in (f"watchNamespaces={{{watched}}}", *values) for arg in ("--set", value)]
    manifest = subprocess.run(
        [helm_binary(), "template", release, str(CHART), "--namespace", operator_namespace, *shown, *sets],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    installed = Policies(cluster, release, operator_namespace, manifest)
    try:
        cluster.kubectl("apply", "-f", "-", input=manifest)  # every namespaced object names its namespace
    except subprocess.CalledProcessError as error:
        remove_policies(installed)
        pytest.fail(f"applying the chart's policies failed: {error.stderr}")
    return installed


def remove_policies(policies: Policies) -> None:
    policies.cluster.kubectl(
        "delete", "-f", "-", "--wait=false", "--ignore-not-found",
        input=policies.manifest, check=False,
    )  # fmt: skip
    policies.cluster.kubectl("delete", "namespace", policies.operator_namespace, "--wait=false", check=False)


@pytest.fixture
def policies(cluster: Cluster, kube: Kube) -> Iterator[Policies]:
    installed = install_policies(cluster, kube.namespace)
    try:
        yield installed
    finally:
        remove_policies(installed)


def eventually(what: str, attempt: Callable[[], subprocess.CompletedProcess[str]], denied_with: str) -> str:
    """Runs ``attempt`` until it fails with ``denied_with`` in its error (a new policy takes the API
    server a moment to load) and returns the error; fails if it never does."""
    deadline = time.monotonic() + 30
    while True:
        result = attempt()
        if result.returncode != 0 and denied_with in result.stderr:
            return result.stderr
        if time.monotonic() > deadline:
            pytest.fail(f"{what} was not denied with {denied_with!r}: rc={result.returncode} {result.stderr}")
        time.sleep(0.5)


def manifest(kind: str, name: str, namespace: str, **fields: Any) -> str:
    api_version = {"Job": "batch/v1", "Task": "taskyard.dev/v1alpha1", "Agent": "taskyard.dev/v1alpha1"}
    body = {
        "apiVersion": api_version.get(kind, "v1"),
        "kind": kind,
        "metadata": {"name": name, "namespace": namespace},
    }
    body.update(fields)
    return json.dumps(body)


def job_of(
    task: dict[str, Any], namespace: str, account: str = "taskyard-agent", labelled: bool = True
) -> str:
    """A Job as the operator would create it for ``task`` (labels, Task as controller owner)."""
    owner = {
        "apiVersion": "taskyard.dev/v1alpha1",
        "kind": "Task",
        "name": task["metadata"]["name"],
        "uid": task["metadata"]["uid"],
        "controller": True,
    }
    labels = {"app.kubernetes.io/managed-by": "taskyard", "taskyard.dev/task": task["metadata"]["name"]}
    if not labelled:  # on the pod template too: a Job without labels takes its template's
        labels = {"app": "other"}
    pod = {
        "restartPolicy": "Never",
        "serviceAccountName": account,
        "automountServiceAccountToken": False,
        "containers": [{"name": "agent", "image": "localhost/taskyard/shell:dev", "command": ["true"]}],
    }
    return json.dumps(
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {
                "name": task["metadata"]["name"],
                "namespace": namespace,
                "labels": labels,
                "ownerReferences": [owner],
            },
            "spec": {"template": {"metadata": {"labels": labels}, "spec": pod}},
        }
    )


def test_the_operator_may_touch_only_what_is_its_own(
    kube: Kube, shell_agent: str, policies: Policies
) -> None:
    ns = kube.namespace
    task = kube.create("Task", "target", {"agent": shell_agent, "prompt": "true"})  # no operator: it waits

    unlabelled = job_of(task, ns, labelled=False)
    dry_run = ("create", "--dry-run=server", "-f", "-")  # admission runs; nothing is stored
    eventually(
        "an unlabelled Job",
        lambda: policies.as_operator(*dry_run, input=unlabelled),
        "may create only jobs of its own",
    )
    error = policies.as_operator("create", "-f", "-", input=unlabelled).stderr
    assert "may create only jobs of its own" in error and f"{ns}/target is not one" in error
    error = policies.as_operator("create", "-f", "-", input=job_of(task, "kube-system")).stderr
    assert "may not create jobs in namespace kube-system: it is protected" in error
    error = policies.as_operator("create", "-f", "-", input=job_of(task, ns, account="default")).stderr
    assert "would run as ServiceAccount default, which is not one agents may use (taskyard-agent)" in error
    # What the operator does for a Task is still allowed (checked by the API server, not persisted).
    allowed = policies.as_operator("create", "--dry-run=server", "-f", "-", input=job_of(task, ns))
    assert allowed.returncode == 0, allowed.stderr

    cluster = policies.cluster
    cluster.kubectl("-n", ns, "create", "configmap", "foreign", "--from-literal=k=v")
    error = policies.as_operator("-n", ns, "patch", "configmap", "foreign", "-p", '{"data":{"k":"x"}}').stderr
    assert "may update only configmaps of its own" in error and f"{ns}/foreign is not one" in error
    assert cluster.kubectl("-n", ns, "get", "configmap", "foreign", "-o", "jsonpath={.data.k}").stdout == "v"
    claim = manifest(
        "PersistentVolumeClaim", "foreign", ns,
        spec={"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Mi"}}},
    )  # fmt: skip
    cluster.kubectl("create", "-f", "-", input=claim)
    error = policies.as_operator("-n", ns, "delete", "pvc", "foreign", "--wait=false").stderr
    assert "may delete only persistentvolumeclaims of its own" in error
    assert cluster.kubectl("-n", ns, "get", "pvc", "foreign", check=False).returncode == 0
    error = policies.as_operator(
        "-n", "kube-system", "patch", "configmap", "kube-root-ca.crt", "-p", '{"data":{}}'
    ).stderr
    assert "in namespace kube-system: it is protected" in error

    def account(name: str, token: bool) -> str:
        metadata = {"name": name, "namespace": ns, "labels": {"app.kubernetes.io/managed-by": "taskyard"}}
        return manifest("ServiceAccount", name, ns, automountServiceAccountToken=token, metadata=metadata)

    error = policies.as_operator("create", "-f", "-", input=account("builder", token=False)).stderr
    assert "may only create the agents' taskyard-agent" in error and f"not create {ns}/builder" in error
    error = policies.as_operator("create", "-f", "-", input=account("taskyard-agent", token=True)).stderr
    assert "must have automountServiceAccountToken: false" in error
    allowed = policies.as_operator(*dry_run, input=account("taskyard-agent", token=False))
    assert allowed.returncode == 0, allowed.stderr
    for verb in ("get", "list"):
        answer = policies.as_operator("auth", "can-i", verb, "secrets", "-n", ns).stdout.strip()
        assert answer == "no", f"the operator may {verb} Secrets"

    def network_policy(name: str, selector: dict[str, Any]) -> str:
        metadata = {"name": name, "namespace": ns, "labels": {"app.kubernetes.io/managed-by": "taskyard"}}
        spec = {"podSelector": selector, "policyTypes": ["Egress"], "egress": []}
        return manifest(
            "NetworkPolicy", name, ns, apiVersion="networking.k8s.io/v1", metadata=metadata, spec=spec
        )

    ours = {"matchLabels": {"app.kubernetes.io/managed-by": "taskyard"}}
    # A policy selecting every pod of the namespace would cut them all off.
    error = policies.as_operator("create", "-f", "-", input=network_policy("taskyard-agents", {})).stderr
    assert (
        "may only create and update the agents' own" in error and f"not create {ns}/taskyard-agents" in error
    )
    error = policies.as_operator("create", "-f", "-", input=network_policy("deny-all", ours)).stderr
    assert f"not create {ns}/deny-all" in error
    allowed = policies.as_operator(*dry_run, input=network_policy("taskyard-agents", ours))
    assert allowed.returncode == 0, allowed.stderr
    cluster.kubectl("create", "-f", "-", input=network_policy("taskyard-agents", ours))
    error = policies.as_operator(
        "-n", ns, "delete", "networkpolicy", "taskyard-agents", "--wait=false"
    ).stderr
    assert "not delete" in error or "forbidden" in error


@pytest.mark.parametrize("scope", ["cluster", "namespaced"])
def test_the_operator_runs_tasks_on_its_own_token_within_the_policies(
    kube: Kube, shell_agent: str, start_operator, cluster: Cluster, tmp_path: Path, scope: str
) -> None:
    installed = install_policies(cluster, kube.namespace, f"rbac.scope={scope}")
    try:
        kubeconfig = installed.operator_kubeconfig(tmp_path / "operator-kubeconfig")
        start_operator(KUBECONFIG=str(kubeconfig))
        script = "echo first; test -f /workspace/again || { touch /workspace/again; exit 1; }; echo second"
        kube.create(
            "Task",
            "own",
            {"agent": shell_agent, "prompt": script, "retries": 1, "workspace": {"size": "1Mi"}},
        )

        task = kube.wait_for_phase("own", "Succeeded", timeout=180)

        assert task["status"]["attempts"] == 2 and task["status"]["logTail"] == "first\nsecond"
        account = kube.core.read_namespaced_service_account("taskyard-agent", kube.namespace)
        assert account.automount_service_account_token is False
        made = kube.networking.read_namespaced_network_policy("taskyard-agents", kube.namespace)
        assert made.metadata.labels["app.kubernetes.io/managed-by"] == "taskyard"
        [job] = kube.jobs("own")
        assert job.spec.template.spec.service_account_name == "taskyard-agent"
        if scope == "namespaced":
            elsewhere = installed.as_operator(
                "auth", "can-i", "create", "jobs", "-n", installed.operator_namespace
            )
            assert elsewhere.stdout.strip() == "no"
    finally:
        remove_policies(installed)


@pytest.fixture
def authors(cluster: Cluster, kube: Kube) -> str:
    """Group task-authors may create and change Tasks and Agents; only alice may also read Secret api-key."""
    ns = kube.namespace
    kube.core.create_namespaced_secret(
        ns, {"metadata": {"name": "api-key"}, "stringData": {"key": "sk-test", "token": "t"}}
    )
    cluster.kubectl(
        "-n",
        ns,
        "create",
        "role",
        "task-author",
        "--verb=create,get,list,patch,update",
        "--resource=tasks.taskyard.dev,agents.taskyard.dev",
    )
    cluster.kubectl(
        "-n", ns, "create", "rolebinding", "task-authors", "--role=task-author", "--group=task-authors"
    )
    cluster.kubectl(
        "-n",
        ns,
        "create",
        "role",
        "api-key-reader",
        "--verb=get",
        "--resource=secrets",
        "--resource-name=api-key",
    )
    cluster.kubectl(
        "-n", ns, "create", "rolebinding", "alice-reads-api-key", "--role=api-key-reader", "--user=alice"
    )
    return ns


def create_as(
    cluster: Cluster, user: str, body: str, dry_run: bool = False
) -> subprocess.CompletedProcess[str]:
    """kubectl create as ``user`` of group task-authors; a server-side dry run still runs admission."""
    dry = ["--dry-run=server"] if dry_run else []
    return cluster.kubectl(
        "create", *dry, "-f", "-", f"--as={user}", "--as-group=task-authors", input=body, check=False
    )


SECRET_REFERENCES = {
    "spec.env[].valueFrom.secretKeyRef": {
        "env": [{"name": "API_KEY", "valueFrom": {"secretKeyRef": {"name": "api-key", "key": "key"}}}]
    },
    "spec.promptFrom.secretKeyRef": {"promptFrom": {"secretKeyRef": {"name": "api-key", "key": "key"}}},
    "spec.repository.secretRef.name": {
        "repository": {"url": "https://git.example/r.git", "secretRef": {"name": "api-key"}}
    },
}


@pytest.mark.parametrize("field", list(SECRET_REFERENCES))
def test_a_task_may_name_only_secrets_its_author_may_read(
    cluster: Cluster, kube: Kube, authors: str, policies: Policies, field: str
) -> None:
    spec = {"agent": "shell", "prompt": "echo hi", **SECRET_REFERENCES[field]}
    if "promptFrom" in spec:
        del spec["prompt"]

    def by(user: str, dry_run: bool = False) -> subprocess.CompletedProcess[str]:
        return create_as(cluster, user, manifest("Task", f"by-{user}", authors, spec=spec), dry_run)

    eventually("a Task by bob", lambda: by("bob", dry_run=True), "may not get")
    error = by("bob").stderr
    assert f"{field} names Secret api-key in namespace {authors}, which bob may not get" in error
    assert not kube.task_exists("by-bob")
    accepted = by("alice")
    assert accepted.returncode == 0, accepted.stderr
    assert kube.task_exists("by-alice")


AGENT_SECRET_REFERENCES = {
    "spec.envFrom[].secretRef": {"envFrom": [{"secretRef": {"name": "api-key"}}]},
    "spec.credentialProxy.secretKeyRef": {
        "credentialProxy": {
            "upstream": "https://api.anthropic.com",
            "auth": "x-api-key",
            "secretKeyRef": {"name": "api-key", "key": "key"},
            "baseUrlEnv": "ANTHROPIC_BASE_URL",
        }
    },
}


@pytest.mark.parametrize("field", list(AGENT_SECRET_REFERENCES))
def test_an_agent_may_name_only_secrets_its_author_may_read(
    cluster: Cluster, kube: Kube, authors: str, policies: Policies, field: str
) -> None:
    spec = {"image": "localhost/taskyard/shell:dev", **AGENT_SECRET_REFERENCES[field]}
    bobs = manifest("Agent", "bobs", authors, spec=spec)
    eventually("an Agent by bob", lambda: create_as(cluster, "bob", bobs, dry_run=True), "may not get")
    error = create_as(cluster, "bob", bobs).stderr
    assert f"{field} names Secret api-key in namespace {authors}, which bob may not get" in error
    accepted = create_as(cluster, "alice", manifest("Agent", "alices", authors, spec=spec))
    assert accepted.returncode == 0, accepted.stderr


def test_a_task_may_not_replace_what_its_agent_sets(cluster: Cluster, kube: Kube, policies: Policies) -> None:
    env = [
        {"name": "ANTHROPIC_BASE_URL", "value": "https://proxy.internal"},
        {"name": "LOG_LEVEL", "value": "info"},
    ]
    kube.create(
        "Agent",
        "guarded",
        {"image": "localhost/taskyard/shell:dev", "env": env, "overridableEnv": ["LOG_LEVEL"]},
    )
    cluster_agent = f"guarded-{kube.namespace}"
    cluster.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "taskyard.dev/v1alpha1", "kind": "ClusterAgent", "metadata": {"name": cluster_agent},
        "spec": {"image": "localhost/taskyard/shell:dev", "env": env[:1]},
    }))  # fmt: skip
    try:

        def task(
            name: str, agent: str, variable: str, dry_run: bool = False
        ) -> subprocess.CompletedProcess[str]:
            spec = {
                "agent": agent,
                "prompt": "true",
                "env": [{"name": variable, "value": "https://attacker.example"}],
            }
            body = manifest("Task", name, kube.namespace, spec=spec)
            dry = ["--dry-run=server"] if dry_run else []
            return cluster.kubectl("create", *dry, "-f", "-", input=body, check=False)

        for name, agent, kind in (
            ("redirect", "guarded", "Agent"),
            ("redirect-cluster", cluster_agent, "ClusterAgent"),
        ):
            eventually(
                f"a Task replacing the {kind}'s base URL",
                lambda name=name, agent=agent: task(name, agent, "ANTHROPIC_BASE_URL", dry_run=True),
                "overridableEnv",
            )
            error = task(name, agent, "ANTHROPIC_BASE_URL").stderr
            assert f"spec.env sets ANTHROPIC_BASE_URL, which {kind} {agent} sets itself" in error
            assert not kube.task_exists(name)
        for name, agent, variable in (("tune", "guarded", "LOG_LEVEL"), ("extra", "guarded", "EXTRA")):
            accepted = task(name, agent, variable)
            assert accepted.returncode == 0, accepted.stderr

        # A credential proxy's variables are the Agent's too, whatever overridableEnv says.
        proxied = {
            "image": "localhost/taskyard/shell:dev",
            "overridableEnv": ["ANTHROPIC_BASE_URL", "ANTHROPIC_API_KEY"],
            "credentialProxy": {
                "upstream": "https://api.anthropic.com",
                "auth": "x-api-key",
                "secretKeyRef": {"name": "anthropic", "key": "api-key"},
                "baseUrlEnv": "ANTHROPIC_BASE_URL",
                "apiKeyEnv": "ANTHROPIC_API_KEY",
            },
        }
        kube.create("Agent", "proxied", proxied)
        for variable in ("ANTHROPIC_BASE_URL", "ANTHROPIC_API_KEY"):
            error = eventually(
                f"a Task replacing the proxy's {variable}",
                lambda variable=variable: task("around-proxy", "proxied", variable, dry_run=True),
                "overridableEnv",
            )
            assert f"spec.env sets {variable}, which Agent proxied sets itself" in error

        # A namespace the release does not watch is not its to judge: another release may run its Tasks.
        elsewhere = f"{kube.namespace}-elsewhere"
        cluster.kubectl("create", "namespace", elsewhere)
        try:
            agent = {"image": "localhost/taskyard/shell:dev", "env": env}
            cluster.kubectl("create", "-f", "-", input=manifest("Agent", "guarded", elsewhere, spec=agent))
            spec = {"agent": "guarded", "prompt": "true", "env": [env[0]]}
            body = manifest("Task", "redirect", elsewhere, spec=spec)
            accepted = cluster.kubectl("create", "--dry-run=server", "-f", "-", input=body, check=False)
            assert accepted.returncode == 0, accepted.stderr
        finally:
            cluster.kubectl("delete", "namespace", elsewhere, "--wait=false", check=False)
    finally:
        cluster.kubectl("delete", "clusteragent", cluster_agent, "--wait=false", check=False)


def test_only_who_may_write_network_policies_may_give_an_agent_egress_rules(
    cluster: Cluster, kube: Kube, authors: str, policies: Policies
) -> None:
    egress = [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}]}]  # the cluster's own addresses
    spec = {"image": "localhost/taskyard/shell:dev", "egress": egress}
    bobs = manifest("Agent", "bobs-open", authors, spec=spec)
    eventually("an Agent by bob", lambda: create_as(cluster, "bob", bobs, dry_run=True), "NetworkPolicies")
    error = create_as(cluster, "bob", bobs).stderr
    assert (
        "spec.egress becomes a NetworkPolicy: setting, changing or removing it needs the right to create"
        f" NetworkPolicies in namespace {authors}, which bob does not have"
    ) in error
    plain = create_as(cluster, "bob", manifest("Agent", "bobs-plain", authors, spec={"image": spec["image"]}))
    assert plain.returncode == 0, plain.stderr  # without egress, the default applies
    cluster.kubectl(
        "-n", authors, "create", "role", "netpol-writer", "--verb=create", "--resource=networkpolicies"
    )
    cluster.kubectl(
        "-n", authors, "create", "rolebinding", "carol-netpol", "--role=netpol-writer", "--user=carol"
    )
    sealed = manifest("Agent", "sealed", authors, spec={**spec, "egress": []})  # nothing allowed
    accepted = create_as(cluster, "carol", sealed)
    assert accepted.returncode == 0, accepted.stderr

    # Removing carol's egress would give the Agent the default (the internet): bob may not.
    remove = '[{"op":"remove","path":"/spec/egress"}]'
    removal = cluster.kubectl(
        "-n", authors, "patch", "agent", "sealed", "--type=json", "-p", remove,
        "--as=bob", "--as-group=task-authors", check=False,
    )  # fmt: skip
    assert "setting, changing or removing it needs the right" in removal.stderr
    stored = json.loads(cluster.kubectl("-n", authors, "get", "agent", "sealed", "-o", "json").stdout)
    assert stored["spec"]["egress"] == []


def test_a_cluster_agent_with_egress_rules_needs_the_right_to_create_network_policies_everywhere(
    cluster: Cluster, kube: Kube, policies: Policies
) -> None:
    # A ClusterAgent's request has no namespace: the policy asks about every namespace, where its
    # NetworkPolicies would be made.
    writer = f"clusteragent-writer-{kube.namespace}"
    cluster.kubectl("create", "clusterrole", writer, "--verb=create", "--resource=clusteragents.taskyard.dev")
    cluster.kubectl("create", "clusterrolebinding", writer, f"--clusterrole={writer}", "--user=dave")
    try:
        egress = [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}]}]
        body = json.dumps({
            "apiVersion": "taskyard.dev/v1alpha1", "kind": "ClusterAgent",
            "metadata": {"name": f"open-{kube.namespace}"},
            "spec": {"image": "localhost/taskyard/shell:dev", "egress": egress},
        })  # fmt: skip

        def create(*user: str) -> subprocess.CompletedProcess[str]:
            return cluster.kubectl("create", "--dry-run=server", "-f", "-", *user, input=body, check=False)

        error = eventually("a ClusterAgent by dave", lambda: create("--as=dave"), "NetworkPolicies")
        assert (
            "needs the right to create NetworkPolicies in every namespace, which dave does not have" in error
        )
        accepted = create()  # the cluster's admin may
        assert accepted.returncode == 0, accepted.stderr
    finally:
        cluster.kubectl("delete", "clusterrolebinding", writer, check=False)
        cluster.kubectl("delete", "clusterrole", writer, check=False)
