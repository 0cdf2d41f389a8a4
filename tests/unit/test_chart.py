"""The Helm chart in helm/taskyard and the manifests rendered from it: lint, schema, RBAC, presets.

These tests run the helm binary (``helm template`` and ``helm lint``, no cluster): the one built for the
local cluster (~/.cache/taskyard/helm-$HELM_VERSION/bin/helm), else ``helm`` on PATH.
"""

from __future__ import annotations

import filecmp
import os
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from taskyard.api import parse_agent_spec
from taskyard.settings import OperatorSettings

pytestmark = pytest.mark.unit

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "helm" / "taskyard"
RELEASE_NAMESPACE = "taskyard-system"
PRIORITIES = ("critical", "high", "medium", "low")
PRESETS = ("shell", "claude-code", "gemini-cli", "codex", "opencode")
STANDARD_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/component",
    "app.kubernetes.io/part-of",
    "app.kubernetes.io/managed-by",
    "helm.sh/chart",
)


@cache
def _helm() -> str:
    version = os.environ.get("HELM_VERSION", "v3.19.0")
    cache_dir = Path(os.environ.get("TASKYARD_CACHE", Path.home() / ".cache" / "taskyard"))
    built = cache_dir / f"helm-{version}" / "bin" / "helm"
    if built.is_file() and os.access(built, os.X_OK):
        return str(built)
    on_path = shutil.which("helm")
    if on_path is None:
        pytest.fail(f"no helm binary: neither {built} nor helm on PATH (hack/build-tools.sh builds it)")
    return on_path


def _run_helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_helm(), *args], capture_output=True, text=True, check=check, timeout=120)


def render(*sets: str, release: str = "taskyard") -> list[dict[str, Any]]:
    """`helm template` with --set arguments; the rendered objects (CRDs not included)."""
    args = ["template", release, str(CHART), "--namespace", RELEASE_NAMESPACE]
    for item in sets:
        args += ["--set", item]
    result = _run_helm(*args, check=False)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def of_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [obj for obj in objects if obj["kind"] == kind]


def component(obj: dict[str, Any]) -> str:
    return obj["metadata"]["labels"]["app.kubernetes.io/component"]


def deployment(objects: list[dict[str, Any]]) -> dict[str, Any]:
    """The operator's Deployment."""
    (found,) = [d for d in of_kind(objects, "Deployment") if component(d) == "operator"]
    return found


def operator_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = deployment(objects)["spec"]["template"]["spec"]["containers"]
    return container


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item.get("value") for item in container.get("env", [])}


def rbac_rules(objects: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{obj['kind']}/{obj['metadata'].get('namespace', '')}/{obj['metadata']['name']}", rule)
        for obj in objects
        if obj["kind"] in ("Role", "ClusterRole")
        for rule in obj.get("rules", [])
    ]


def grants(objects: list[dict[str, Any]], kind: str, group: str, resource: str, verb: str) -> bool:
    return any(
        group in rule["apiGroups"] and resource in rule["resources"] and verb in rule["verbs"]
        for obj in of_kind(objects, kind)
        for rule in obj["rules"]
    )


# --- the chart as a whole ------------------------------------------------------------------------


def test_helm_lint_strict_passes():
    result = _run_helm("lint", "--strict", str(CHART), check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout, result.stdout


def test_chart_version_and_app_version():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert (chart["name"], chart["version"], chart["appVersion"]) == ("taskyard", "0.1.0", "0.1.0")


def test_chart_crds_are_identical_to_the_repository_crds():
    """crds/ is the source of truth; `make manifests` copies it into the chart."""
    source = sorted(path.name for path in (REPO_ROOT / "crds").glob("*.yaml"))
    copied = sorted(path.name for path in (CHART / "crds").glob("*.yaml"))
    assert copied == source, "run `make manifests`"
    for name in source:
        assert (CHART / "crds" / name).read_bytes() == (REPO_ROOT / "crds" / name).read_bytes(), (
            f"helm/taskyard/crds/{name} differs from crds/{name}: run `make manifests`"
        )


def test_manifests_are_identical_to_a_fresh_render(tmp_path: Path):
    """manifests/ is what hack/sync-chart.sh renders from the chart today."""
    env = {**os.environ, "HELM_VERSION": os.environ.get("HELM_VERSION", "v3.19.0")}
    env["PATH"] = str(Path(_helm()).parent) + os.pathsep + env["PATH"]
    fresh = tmp_path / "manifests"
    subprocess.run(
        [str(REPO_ROOT / "hack" / "sync-chart.sh"), "--manifests", str(fresh)],
        check=True,
        capture_output=True,
        env=env,
        timeout=120,
    )
    committed = REPO_ROOT / "manifests"
    fresh_files = sorted(str(path.relative_to(fresh)) for path in fresh.rglob("*") if path.is_file())
    committed_files = sorted(
        str(path.relative_to(committed)) for path in committed.rglob("*") if path.is_file()
    )
    assert committed_files == fresh_files, "run `make manifests`"
    _, mismatch, errors = filecmp.cmpfiles(committed, fresh, fresh_files, shallow=False)
    assert not mismatch and not errors, f"stale in manifests/: {mismatch + errors}; run `make manifests`"


def test_manifests_install_the_operator_and_keep_presets_apart():
    kustomization = yaml.safe_load((REPO_ROOT / "manifests" / "kustomization.yaml").read_text())
    objects = [
        doc
        for name in kustomization["resources"]
        for doc in yaml.safe_load_all((REPO_ROOT / "manifests" / name).read_text())
        if doc
    ]
    kinds = {obj["kind"] for obj in objects}
    assert {"Namespace", "CustomResourceDefinition", "Deployment", "ClusterRole"} <= kinds
    # A custom resource cannot be applied in the same kubectl run that creates its CRD.
    assert "ClusterAgent" not in kinds
    (namespace,) = of_kind(objects, "Namespace")
    assert namespace["metadata"]["name"] == RELEASE_NAMESPACE
    assert deployment(objects)["metadata"]["namespace"] == RELEASE_NAMESPACE
    for path in (REPO_ROOT / "manifests").rglob("*.yaml"):
        assert path.read_text().startswith("# Generated by hack/sync-chart.sh"), path


def test_every_object_carries_the_standard_labels():
    objects = render("priorityClasses.create=true", *(f"agents.{name}.enabled=true" for name in PRESETS))
    for obj in objects:
        labels = obj["metadata"].get("labels", {})
        missing = [key for key in STANDARD_LABELS if key not in labels]
        assert not missing, f"{obj['kind']}/{obj['metadata']['name']} lacks {missing}"
        assert labels["app.kubernetes.io/part-of"] == "taskyard"


# --- values schema -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "complaint"),
    [
        ("concurency.total=1", "concurency"),
        ("agents.shel.enabled=true", "shel"),
        ("agents.shell.timout=5m", "timout"),
        ("rbac.scope=everywhere", "scope"),
        ("logLevel=trace", "logLevel"),
        ("concurrency.total=-1", "total"),
        ("agents.shell.timeout=1.5h", "timeout"),
    ],
)
def test_values_schema_rejects_typos_and_bad_values(setting: str, complaint: str):
    result = _run_helm("template", "taskyard", str(CHART), "--set", setting, check=False)
    assert result.returncode != 0, f"--set {setting} was accepted"
    assert complaint in result.stderr


def test_namespaced_scope_needs_namespace_names():
    result = _run_helm("template", "taskyard", str(CHART), "--set", "rbac.scope=namespaced", check=False)
    assert result.returncode != 0
    assert "watchNamespaces" in result.stderr
    result = _run_helm(
        "template",
        "taskyard",
        str(CHART),
        "--set",
        "rbac.scope=namespaced",
        "--set",
        "watchNamespaces={team-*}",
        check=False,
    )
    assert result.returncode != 0
    assert "pattern" in result.stderr


# --- RBAC ------------------------------------------------------------------------------------------


def test_cluster_scope_grants_what_the_operator_uses():
    objects = render()
    assert not of_kind(objects, "Role")
    needed = [
        ("taskyard.dev", "tasks", "watch"),
        ("taskyard.dev", "tasks", "delete"),
        ("taskyard.dev", "agents", "list"),
        ("taskyard.dev", "clusteragents", "watch"),
        ("taskyard.dev", "tasks/status", "patch"),
        ("taskyard.dev", "tasks/finalizers", "update"),
        ("batch", "jobs", "create"),
        ("batch", "jobs", "delete"),
        ("batch", "jobs", "get"),
        ("", "pods", "watch"),
        ("", "pods/log", "get"),
        ("", "persistentvolumeclaims", "create"),
        ("", "persistentvolumeclaims", "delete"),
        ("", "events", "create"),
        ("events.k8s.io", "events", "create"),
        ("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
        ("scheduling.k8s.io", "priorityclasses", "watch"),
        ("", "configmaps", "create"),
        ("", "configmaps", "patch"),
    ]
    for group, resource, verb in needed:
        assert grants(objects, "ClusterRole", group, resource, verb), (group, resource, verb)
    (binding,) = of_kind(objects, "ClusterRoleBinding")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "taskyard", "namespace": RELEASE_NAMESPACE}
    ]
    # The Task spec and metadata are never written: only the status subresource.
    assert not grants(objects, "ClusterRole", "taskyard.dev", "tasks", "patch")
    assert not grants(objects, "ClusterRole", "taskyard.dev", "tasks", "update")


def test_namespaced_scope_creates_a_role_in_each_watched_namespace():
    objects = render("rbac.scope=namespaced", "watchNamespaces={team-a,team-b}")
    roles = {role["metadata"]["namespace"]: role for role in of_kind(objects, "Role")}
    assert sorted(roles) == ["team-a", "team-b"]
    bindings = {binding["metadata"]["namespace"]: binding for binding in of_kind(objects, "RoleBinding")}
    assert sorted(bindings) == ["team-a", "team-b"]
    for binding in bindings.values():
        assert binding["roleRef"]["kind"] == "Role"
        assert binding["subjects"][0]["namespace"] == RELEASE_NAMESPACE
    for role in roles.values():
        assert {"tasks", "jobs", "pods", "pods/log"} <= {
            r for rule in role["rules"] for r in rule["resources"]
        }
    # The ClusterRole keeps only what is cluster-scoped.
    (cluster_role,) = of_kind(objects, "ClusterRole")
    cluster_resources = {r for rule in cluster_role["rules"] for r in rule["resources"]}
    assert cluster_resources == {
        "clusteragents",
        "priorityclasses",
        "customresourcedefinitions",
        "namespaces",
    }
    args = operator_container(objects)["args"]
    assert "--namespace=team-a" in args and "--namespace=team-b" in args


def test_watch_namespaces_with_cluster_scope_restricts_the_operator_only():
    objects = render("watchNamespaces={team-a}")
    assert not of_kind(objects, "Role")
    assert "--namespace=team-a" in operator_container(objects)["args"]
    assert grants(objects, "ClusterRole", "", "namespaces", "list")


@pytest.mark.parametrize(
    "sets",
    [(), ("rbac.scope=namespaced", "watchNamespaces={team-a,team-b}")],
    ids=["cluster", "namespaced"],
)
def test_no_access_to_secrets_and_no_reading_through_configmaps(sets: tuple[str, ...]):
    """Task pods read their Secrets and ConfigMaps themselves, so the operator has no access to Secrets.

    Its only ConfigMap access is to the log ConfigMap each Task owns: create it, read it back and patch
    it for a later attempt. Without list or watch it cannot go through the ConfigMaps of a namespace.
    """
    rules = rbac_rules(render(*sets))
    assert rules
    for where, rule in rules:
        assert "*" not in rule["resources"], where
        assert "*" not in rule["verbs"], where
        assert "*" not in rule["apiGroups"], where
        assert "secrets" not in rule["resources"], f"{where}: {rule}"
        if "configmaps" in rule["resources"]:
            assert rule["resources"] == ["configmaps"], where
            assert sorted(rule["verbs"]) == ["create", "get", "patch"], f"{where}: {rule}"


def test_no_rbac_objects_when_disabled():
    objects = render("rbac.create=false")
    assert not [obj for obj in objects if obj["apiVersion"].startswith("rbac.authorization.k8s.io")]


# --- Deployment ------------------------------------------------------------------------------------


def test_default_deployment():
    objects = render()
    found = deployment(objects)
    spec, pod = found["spec"], found["spec"]["template"]["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    assert pod["serviceAccountName"] == "taskyard"
    assert pod["automountServiceAccountToken"] is True
    assert pod["terminationGracePeriodSeconds"] == 30
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}} in pod["volumes"]

    container = operator_container(objects)
    assert container["image"] == "ghcr.io/taskyard/operator:0.1.0"
    assert container["imagePullPolicy"] == "IfNotPresent"
    assert container["command"] == ["python3", "-m", "taskyard"]
    assert container["args"] == ["--liveness=http://0.0.0.0:8080/healthz"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    probe = container["livenessProbe"]["httpGet"]
    assert probe["path"] == "/healthz"
    assert probe["port"] == "health"
    assert {"name": "health", "containerPort": 8080, "protocol": "TCP"} in container["ports"]
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert container["resources"] == {
        "requests": {"cpu": "100m", "memory": "128Mi"},
        "limits": {"cpu": "500m", "memory": "256Mi"},
    }
    env = env_of(container)
    assert env["TASKYARD_AGING_SECONDS"] == "600"
    assert env["TASKYARD_JOB_RETENTION_SECONDS"] == "3600"
    assert "TASKYARD_TASK_TTL_SECONDS" not in env  # finished Tasks stay unless asked
    assert "TASKYARD_MAX_CONCURRENT" not in env


def test_settings_reach_the_operator_as_it_reads_them():
    objects = render(
        "concurrency.total=5",
        "concurrency.perNamespace=2",
        "concurrency.perAgent=1",
        "agingSeconds=120",
        "jobRetentionSeconds=600",
        "taskTTLSeconds=86400",
    )
    settings = OperatorSettings.from_env(env_of(operator_container(objects)))
    assert settings == OperatorSettings(
        max_concurrent=5,
        max_concurrent_per_namespace=2,
        max_concurrent_per_agent=1,
        aging_seconds=120.0,
        job_retention_seconds=600.0,
        task_ttl_seconds=86400.0,
    )
    # null turns aging off rather than falling back to the operator's default of 600 s.
    assert (
        OperatorSettings.from_env(env_of(operator_container(render("agingSeconds=null")))).aging_seconds == 0
    )


@pytest.mark.parametrize(("level", "flag"), [("debug", "--verbose"), ("warning", "--quiet"), ("info", None)])
def test_log_level_maps_to_the_operator_flag(level: str, flag: str | None):
    args = operator_container(render(f"logLevel={level}"))["args"]
    assert [arg for arg in args if arg in ("--verbose", "--quiet")] == ([flag] if flag else [])


def test_image_tag_and_extra_args():
    container = operator_container(
        render(
            "image.repository=localhost/taskyard/operator", "image.tag=dev", "extraArgs={--log-format=json}"
        )
    )
    assert container["image"] == "localhost/taskyard/operator:dev"
    assert container["args"][-1] == "--log-format=json"


# --- PriorityClasses -------------------------------------------------------------------------------


def test_priority_classes_are_created_on_request():
    assert not of_kind(render(), "PriorityClass")
    objects = render("priorityClasses.create=true")
    classes = {item["metadata"]["name"]: item for item in of_kind(objects, "PriorityClass")}
    assert sorted(classes) == sorted(f"taskyard-{priority}" for priority in PRIORITIES)
    values = [classes[f"taskyard-{priority}"]["value"] for priority in PRIORITIES]
    assert values == sorted(values, reverse=True) and len(set(values)) == 4
    for item in classes.values():
        assert item["globalDefault"] is False
        assert item["preemptionPolicy"] == "Never"
    preempting = render(
        "priorityClasses.create=true", "priorityClasses.preemptionPolicy=PreemptLowerPriority"
    )
    assert {item["preemptionPolicy"] for item in of_kind(preempting, "PriorityClass")} == {
        "PreemptLowerPriority"
    }


# --- ClusterAgent presets -----------------------------------------------------------------------------


def test_only_the_shell_preset_is_enabled_by_default():
    agents = of_kind(render(), "ClusterAgent")
    assert [agent["metadata"]["name"] for agent in agents] == ["shell"]
    spec = agents[0]["spec"]
    assert spec["image"] == "docker.io/library/busybox:1.36"
    assert spec["command"] == ["sh", "/etc/taskyard/prompt"]


def test_presets_are_valid_agents_that_reference_their_keys():
    agents = {
        agent["metadata"]["name"]: agent["spec"]
        for agent in of_kind(render(*(f"agents.{name}.enabled=true" for name in PRESETS)), "ClusterAgent")
    }
    assert sorted(agents) == sorted(PRESETS)
    for spec in agents.values():
        parse_agent_spec(spec)  # what the operator does at admission
    expected_keys = {
        "claude-code": ("ANTHROPIC_API_KEY", "taskyard-anthropic", "ANTHROPIC_BASE_URL", "https://api.anthropic.com"),
        "gemini-cli": (
            "GEMINI_API_KEY", "taskyard-gemini", "GOOGLE_GEMINI_BASE_URL", "https://generativelanguage.googleapis.com",
        ),
        "codex": ("CODEX_API_KEY", "taskyard-openai", "OPENAI_BASE_URL", "https://api.openai.com/v1"),
        "opencode": ("ANTHROPIC_API_KEY", "taskyard-anthropic", "ANTHROPIC_BASE_URL", "https://api.anthropic.com/v1"),
    }  # fmt: skip
    for name, (variable, secret, base_url, upstream) in expected_keys.items():
        spec = agents[name]
        # The key goes to the credential proxy only; the agent's env never names the Secret.
        proxy = spec["credentialProxy"]
        assert proxy["secretKeyRef"] == {"name": secret, "key": "api-key"}
        assert (proxy["apiKeyEnv"], proxy["baseUrlEnv"], proxy["upstream"]) == (variable, base_url, upstream)
        assert "secretKeyRef" not in str(spec.get("env"))
        # taskyard's agent image, whose entrypoint runs the CLI: no command of the chart's own.
        assert spec["image"] == f"ghcr.io/taskyard/{name}:{chart_app_version()}"
        assert "command" not in spec and "args" not in spec
        assert spec["readOnlyRootFilesystem"] is True
        assert spec["nonRetryableExitCodes"] == [120, 121]  # setup failed, limit reached
    # Nothing secret is inlined anywhere in a preset.
    assert "env" not in agents["shell"]


def test_preset_settings_pass_through():
    objects = render(
        "agents.shell.maxConcurrent=3",
        "agents.shell.retries=2",
        "agents.shell.nonRetryableExitCodes={2,3}",
        "agents.shell.securityContext.runAsUser=1000",
        "agents.shell.schedulerName=volcano",
        "agents.shell.env[0].name=HOME",
        "agents.shell.env[0].value=/workspace",
        "agents.claude-code.enabled=true",
        "agents.claude-code.env[0].name=HOME",
        "agents.claude-code.env[0].value=/home/agent",
        "agents.claude-code.apiKey.secretName=my-key",
    )
    agents = {agent["metadata"]["name"]: agent["spec"] for agent in of_kind(objects, "ClusterAgent")}
    shell = parse_agent_spec(agents["shell"])
    assert (shell.max_concurrent, shell.retries, shell.non_retryable_exit_codes) == (3, 2, [2, 3])
    assert shell.security_context is not None and shell.security_context.run_as_user == 1000
    assert shell.scheduler_name == "volcano"
    claude_env = agents["claude-code"]["env"]
    assert [item["value"] for item in claude_env if item["name"] == "HOME"] == ["/home/agent"]
    assert agents["claude-code"]["credentialProxy"]["secretKeyRef"]["name"] == "my-key"


def test_without_the_proxy_a_preset_puts_its_key_into_the_agents_environment():
    objects = render("agents.codex.enabled=true", "agents.codex.credentialProxy.enabled=false")
    [codex] = [a["spec"] for a in of_kind(objects, "ClusterAgent") if a["metadata"]["name"] == "codex"]
    assert "credentialProxy" not in codex
    assert {
        "name": "CODEX_API_KEY",
        "valueFrom": {"secretKeyRef": {"name": "taskyard-openai", "key": "api-key"}},
    } in codex["env"]


def test_metrics_endpoint_service_and_optional_service_monitor():
    objects = render()
    container = operator_container(objects)
    assert env_of(container)["TASKYARD_METRICS_PORT"] == "8000"
    assert {"name": "metrics", "containerPort": 8000, "protocol": "TCP"} in container["ports"]
    [service] = [s for s in of_kind(objects, "Service") if component(s) == "metrics"]
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    assert service["spec"]["selector"] == deployment(objects)["spec"]["selector"]["matchLabels"]
    assert of_kind(objects, "ServiceMonitor") == []

    [monitor] = of_kind(render("metrics.serviceMonitor.enabled=true"), "ServiceMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()

    disabled = render("metrics.enabled=false")
    assert env_of(operator_container(disabled))["TASKYARD_METRICS_PORT"] == "0"
    assert [s for s in of_kind(disabled, "Service") if component(s) == "metrics"] == []


def chart_app_version() -> str:
    return yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]


def test_agent_images_follow_the_registry_and_tag_values():
    objects = render(
        "agents.codex.enabled=true",
        "agentImages.registry=registry.example/platform",
        "agentImages.tag=2.0.1",
        "agents.opencode.enabled=true",
        "agents.opencode.image=registry.example/own/opencode:7",
    )
    images = {agent["metadata"]["name"]: agent["spec"]["image"] for agent in of_kind(objects, "ClusterAgent")}
    assert images["codex"] == "registry.example/platform/codex:2.0.1"
    assert images["opencode"] == "registry.example/own/opencode:7"  # an image of the user's own wins


def policies(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {p["metadata"]["name"]: p for p in of_kind(objects, "ValidatingAdmissionPolicy")}


def test_admission_policies_and_their_bindings_are_installed_by_default():
    objects = render()
    names = set(policies(objects))
    assert names == {
        "taskyard-operator",
        "taskyard-task-secrets",
        "taskyard-agent-secrets",
        "taskyard-task-env-agent",
        "taskyard-task-env-clusteragent",
        "taskyard-agent-egress",
    }
    bindings = {b["spec"]["policyName"]: b for b in of_kind(objects, "ValidatingAdmissionPolicyBinding")}
    assert set(bindings) == names
    assert all(b["spec"]["validationActions"] == ["Deny"] for b in bindings.values())
    assert bindings["taskyard-task-env-agent"]["spec"]["paramRef"] == {
        "selector": {},
        "parameterNotFoundAction": "Allow",
    }
    assert all(p["spec"]["failurePolicy"] == "Fail" for p in policies(objects).values())
    off = render("admissionPolicies.enabled=false", "networkPolicy.enabled=false")
    assert not of_kind(off, "ValidatingAdmissionPolicy")


def binding_scopes(*sets: str) -> dict[str, Any]:
    """Each admission policy binding's matchResources (None: it applies in every namespace)."""
    objects = render(*sets)
    return {
        b["spec"]["policyName"]: b["spec"].get("matchResources")
        for b in of_kind(objects, "ValidatingAdmissionPolicyBinding")
    }


def test_task_and_agent_policies_judge_only_the_watched_namespaces_when_they_are_named():
    scopes = binding_scopes("watchNamespaces={team-a,team-b}")
    selector = {
        "namespaceSelector": {
            "matchExpressions": [
                {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["team-a", "team-b"]}
            ]
        }
    }
    assert scopes.pop("taskyard-operator") is None  # the operator is held everywhere it could write
    assert scopes == {
        "taskyard-task-secrets": selector,
        "taskyard-agent-secrets": selector,
        "taskyard-task-env-agent": selector,
        "taskyard-task-env-clusteragent": selector,
        "taskyard-agent-egress": selector,
    }


@pytest.mark.parametrize("sets", [(), ("watchNamespaces={team-a,team-*}",)], ids=["all", "pattern"])
def test_policies_judge_every_namespace_when_every_namespace_may_be_watched(sets: tuple[str, ...]):
    # A glob pattern may match namespaces created later: a name selector cannot follow it.
    assert set(binding_scopes(*sets).values()) == {None}


def test_egress_policies_need_the_admission_policy_that_guards_agent_egress():
    result = _run_helm("template", "t", str(CHART), "--set", "admissionPolicies.enabled=false", check=False)
    assert result.returncode != 0
    assert "networkPolicy.enabled needs admissionPolicies.enabled" in result.stderr


def test_the_operator_policy_binds_the_operators_own_account_and_protects_namespaces():
    operator = policies(render())["taskyard-operator"]["spec"]
    [condition] = operator["matchConditions"]
    assert condition["expression"] == (
        f"request.userInfo.username == 'system:serviceaccount:{RELEASE_NAMESPACE}:taskyard'"
    )
    protected = operator["validations"][0]["expression"]
    for namespace in ("kube-system", "kube-public", "kube-node-lease", RELEASE_NAMESPACE):
        assert f"'{namespace}'" in protected
    accounts = operator["validations"][4]["expression"]
    assert "['taskyard-agent']" in accounts

    listed = policies(render("watchNamespaces={kube-public,team-a}", "agentServiceAccounts={builder}"))
    spec = listed["taskyard-operator"]["spec"]
    assert "'kube-public'" not in spec["validations"][0]["expression"]  # watched on purpose
    assert "['taskyard-agent','builder']" in spec["validations"][4]["expression"]


def test_the_operator_may_create_only_service_accounts_of_all_that_policy_governs():
    rules = rbac_rules(render())
    accounts = [rule for _, rule in rules if "serviceaccounts" in rule["resources"]]
    assert [rule["verbs"] for rule in accounts] == [["create"]]


def test_the_operator_keeps_egress_policies_by_default_and_only_its_own():
    objects = render()
    env = env_of(operator_container(objects))
    assert env["TASKYARD_EGRESS_POLICY"] == "true"
    assert env["TASKYARD_EGRESS_ALLOW_DNS"] == "true"
    denied = env["TASKYARD_EGRESS_DENIED_CIDRS"].split(",")
    assert {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16"} <= set(denied)
    [rule] = [rule for _, rule in rbac_rules(objects) if "networkpolicies" in rule["resources"]]
    assert rule["verbs"] == ["get", "create", "update"]  # never list, watch or delete
    operator = policies(objects)["taskyard-operator"]["spec"]
    assert {
        "apiGroups": ["networking.k8s.io"],
        "apiVersions": ["*"],
        "operations": ["CREATE", "UPDATE", "DELETE"],
        "resources": ["networkpolicies"],
    } in operator["matchConstraints"]["resourceRules"]
    [own] = [
        v
        for v in operator["validations"]
        if 'request.resource.resource != "networkpolicies"' in v["expression"]
    ]
    assert 'request.operation != "DELETE"' in own["expression"]
    assert "object.spec.podSelector.matchLabels" in own["expression"]

    off = render("networkPolicy.enabled=false", "networkPolicy.deniedCIDRs={10.0.0.0/8}")
    assert env_of(operator_container(off))["TASKYARD_EGRESS_POLICY"] == "false"
    assert not [rule for _, rule in rbac_rules(off) if "networkpolicies" in rule["resources"]]


def test_writing_an_agents_egress_needs_the_right_to_create_network_policies():
    egress = policies(render())["taskyard-agent-egress"]["spec"]
    [rule] = egress["matchConstraints"]["resourceRules"]
    assert rule["resources"] == ["agents", "clusteragents"] and rule["operations"] == ["CREATE", "UPDATE"]
    [validation] = egress["validations"]
    assert (
        'resource("networkpolicies")' in validation["expression"]
        and 'check("create")' in validation["expression"]
    )
    assert validation["reason"] == "Forbidden"


def test_a_preset_may_replace_the_default_egress():
    objects = render("agents.shell.egress[0].ports[0].port=443")
    [shell] = [agent for agent in of_kind(objects, "ClusterAgent") if agent["metadata"]["name"] == "shell"]
    assert shell["spec"]["egress"] == [{"ports": [{"port": 443}]}]
    [default] = [agent for agent in of_kind(render(), "ClusterAgent") if agent["metadata"]["name"] == "shell"]
    assert "egress" not in default["spec"]


@pytest.mark.parametrize("value", ["10.0.0.0", "ten/8", "0.0.0.0/0"])
def test_denied_ranges_must_be_cidrs(value: str):
    result = _run_helm(
        "template", "t", str(CHART), "--set", f"networkPolicy.deniedCIDRs={{{value}}}", check=False
    )
    assert result.returncode != 0 and "deniedCIDRs" in result.stderr


@pytest.mark.parametrize("value", ["Kube System", "-x"])
def test_protected_namespaces_must_be_namespace_names(value: str):
    result = _run_helm("template", "t", str(CHART), "--set", f"protectedNamespaces={{{value}}}", check=False)
    assert result.returncode != 0 and "protectedNamespaces" in result.stderr


def test_a_preset_may_not_set_what_its_credential_proxy_gives():
    result = _run_helm(
        "template", "t", str(CHART), "--set", "agents.claude-code.enabled=true",
        "--set", "agents.claude-code.env[0].name=ANTHROPIC_BASE_URL",
        "--set", "agents.claude-code.env[0].value=https://gateway.example",
        check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "agents.claude-code.env sets ANTHROPIC_BASE_URL or ANTHROPIC_API_KEY" in result.stderr
    assert "credentialProxy.upstream" in result.stderr


def test_the_task_api_runs_with_no_token_and_no_rights_of_its_own():
    objects = render()
    [api] = [d for d in of_kind(objects, "Deployment") if component(d) == "api"]
    pod = api["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False  # a Service taskyard-api would set TASKYARD_API_PORT=tcp://...
    [account] = [
        a for a in of_kind(objects, "ServiceAccount") if a["metadata"]["name"] == pod["serviceAccountName"]
    ]
    assert account["automountServiceAccountToken"] is False
    bound = {
        b["subjects"][0]["name"]
        for b in of_kind(objects, "ClusterRoleBinding") + of_kind(objects, "RoleBinding")
    }
    assert pod["serviceAccountName"] not in bound  # it acts as its callers only
    [container] = pod["containers"]
    assert container["command"] == ["python3", "-m", "taskyard.web"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert {v["name"]: v.get("configMap", {}).get("name") for v in pod["volumes"]}[
        "cluster-ca"
    ] == "kube-root-ca.crt"
    [service] = [s for s in of_kind(objects, "Service") if component(s) == "api"]
    assert service["spec"]["selector"] == api["spec"]["selector"]["matchLabels"]
    assert service["spec"]["selector"] != deployment(objects)["spec"]["selector"]["matchLabels"]
    assert [d for d in of_kind(render("api.enabled=false"), "Deployment") if component(d) == "api"] == []
