"""Rendering a Task and its agent into a Job and a workspace claim."""

import hashlib
import json
import re

import pytest

from taskyard import api
from taskyard.api import SpecError, parse_agent_spec, parse_task_spec
from taskyard.render import (
    TaskRef,
    default_egress,
    job_name_for,
    label_value_for,
    refused_env_overrides,
    render_egress_policy,
    render_job,
    render_workspace_claim,
    workspace_claim_name,
)

pytestmark = pytest.mark.unit

LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(api.DNS1123_SUBDOMAIN_PATTERN)


def make_task(name="fix-bug", namespace="team-a", uid="uid-1", **spec) -> TaskRef:
    spec.setdefault("agent", "coder")
    if "promptFrom" not in spec:
        spec.setdefault("prompt", "fix the bug")
    return TaskRef(name=name, namespace=namespace, uid=uid, spec=parse_task_spec(spec))


def make_agent(**spec):
    spec.setdefault("image", "registry.example/agent:1")
    return parse_agent_spec(spec)


def pod_spec(job):
    return job["spec"]["template"]["spec"]


def container(job):
    (only,) = pod_spec(job)["containers"]
    return only


def env_of(job):
    return container(job)["env"]


def volume(job, name):
    (found,) = [v for v in pod_spec(job)["volumes"] if v["name"] == name]
    return found


# Names


def test_short_names_are_kept():
    assert job_name_for("fix-bug") == "fix-bug"
    assert job_name_for("a" * 63) == "a" * 63
    assert label_value_for("coder") == "coder"
    assert workspace_claim_name("fix-bug") == "fix-bug-workspace"


def test_long_names_are_shortened_to_63_with_a_hash_of_the_full_name():
    name = "refactor-the-payment-service-to-use-the-new-ledger-api-and-add-tests"
    assert len(name) > 63
    shortened = job_name_for(name)
    digest = hashlib.sha256(name.encode()).hexdigest()[:10]
    assert shortened == f"{name[:52]}-{digest}"
    assert len(shortened) == 63
    assert label_value_for(name) == shortened


def test_shortening_keeps_names_unique_and_stable():
    first, second = "x" * 60 + "-one", "x" * 60 + "-two"
    assert job_name_for(first) != job_name_for(second)
    assert job_name_for(first) == job_name_for(first)


@pytest.mark.parametrize("cut", ["-", "--", ".", "-."])
def test_shortened_names_do_not_end_the_kept_part_with_a_separator(cut):
    name = "a" * (52 - len(cut)) + cut + "b" * 30
    shortened = job_name_for(name)
    assert shortened.startswith("a" * (52 - len(cut)) + "-")
    assert len(shortened) == 52 - len(cut) + 11
    assert DNS1123_SUBDOMAIN.fullmatch(shortened)
    assert LABEL_VALUE.fullmatch(shortened)


def test_names_of_the_longest_tasks_are_valid_everywhere():
    name = ".".join(["a" * 63] * 3) + "." + "b" * 61
    assert len(name) == 253
    for rendered in (job_name_for(name), label_value_for(name)):
        assert len(rendered) <= 63
        assert DNS1123_SUBDOMAIN.fullmatch(rendered)
        assert LABEL_VALUE.fullmatch(rendered)
    claim = workspace_claim_name(name)
    assert len(claim) <= 253
    assert DNS1123_SUBDOMAIN.fullmatch(claim)
    assert claim == job_name_for(name) + "-workspace"


# Job metadata


def test_job_metadata_labels_and_owner():
    task = make_task(priority="high")
    job = render_job(task, make_agent(), "coder")
    assert job["apiVersion"] == "batch/v1"
    assert job["kind"] == "Job"
    metadata = job["metadata"]
    assert metadata["name"] == "fix-bug"
    assert metadata["namespace"] == "team-a"
    expected_labels = {
        "taskyard.dev/task": "fix-bug",
        "taskyard.dev/agent": "coder",
        "taskyard.dev/priority": "high",
        "app.kubernetes.io/managed-by": "taskyard",
        "app.kubernetes.io/name": "taskyard-task",
    }
    # Exactly these: the Task's own labels (e.g. a GitOps tool's tracking label) must not be copied.
    assert metadata["labels"] == expected_labels
    assert job["spec"]["template"]["metadata"]["labels"] == expected_labels
    assert metadata["ownerReferences"] == [
        {
            "apiVersion": "taskyard.dev/v1alpha1",
            "kind": "Task",
            "name": "fix-bug",
            "uid": "uid-1",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]


def test_long_task_and_agent_names_make_valid_labels():
    task = make_task(name="t" * 100, agent="a" * 100)
    job = render_job(task, make_agent(), "a" * 100)
    labels = job["metadata"]["labels"]
    assert labels["taskyard.dev/task"] == label_value_for("t" * 100)
    assert labels["taskyard.dev/agent"] == label_value_for("a" * 100)
    assert all(LABEL_VALUE.fullmatch(value) and len(value) <= 63 for value in labels.values())
    assert job["metadata"]["name"] == job_name_for("t" * 100)
    assert job["metadata"]["ownerReferences"][0]["name"] == "t" * 100


# Job spec


def test_job_runs_one_pod_and_defaults_retries_and_deadline():
    job = render_job(make_task(), make_agent(), "coder")
    spec = job["spec"]
    assert (spec["parallelism"], spec["completions"]) == (1, 1)
    assert spec["backoffLimit"] == 0
    assert spec["activeDeadlineSeconds"] == 3600
    assert spec["podFailurePolicy"] == {
        "rules": [{"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}]
    }
    assert pod_spec(job)["restartPolicy"] == "Never"


@pytest.mark.parametrize(
    ("task_retries", "agent_retries", "expected"),
    [(None, 3, 3), (0, 3, 0), (5, 3, 5), (None, 0, 0)],
)
def test_backoff_limit_prefers_the_task(task_retries, agent_retries, expected):
    task = make_task(**({} if task_retries is None else {"retries": task_retries}))
    job = render_job(task, make_agent(retries=agent_retries), "coder")
    assert job["spec"]["backoffLimit"] == expected


@pytest.mark.parametrize(
    ("task_timeout", "agent_timeout", "expected"),
    [(None, None, 3600), (None, "30m", 1800), ("90s", "30m", 90), ("1h0m30s", None, 3630)],
)
def test_active_deadline_prefers_the_task_then_the_agent_then_one_hour(task_timeout, agent_timeout, expected):
    task = make_task(**({} if task_timeout is None else {"timeout": task_timeout}))
    agent = make_agent(**({} if agent_timeout is None else {"timeout": agent_timeout}))
    assert render_job(task, agent, "coder")["spec"]["activeDeadlineSeconds"] == expected


def test_non_retryable_exit_codes_fail_the_job_at_once():
    job = render_job(make_task(), make_agent(nonRetryableExitCodes=[42, 3, 42, 7]), "coder")
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert rules[0] == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}
    assert rules[1] == {
        "action": "FailJob",
        "onExitCodes": {"containerName": "agent", "operator": "In", "values": [3, 7, 42]},
    }
    assert len(rules) == 2


# Pod


def test_pod_is_locked_down_by_default():
    job = render_job(make_task(), make_agent(), "coder")
    pod = pod_spec(job)
    assert pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False
    assert pod["terminationGracePeriodSeconds"] == 10
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 65532,
        "runAsGroup": 65532,
        "fsGroup": 65532,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert pod["serviceAccountName"] == "taskyard-agent"  # made by the operator, with no token
    assert "priorityClassName" not in pod
    assert "nodeSelector" not in pod and "schedulerName" not in pod
    assert "tolerations" not in pod
    agent = container(job)
    assert agent["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
        "readOnlyRootFilesystem": True,
    }
    assert agent["name"] == "agent"
    assert agent["image"] == "registry.example/agent:1"
    assert agent["imagePullPolicy"] == "IfNotPresent"
    assert agent["workingDir"] == "/workspace"
    assert agent["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert agent["resources"] == {
        "requests": {"cpu": "100m", "memory": "128Mi", "ephemeral-storage": "64Mi"},
        "limits": {"cpu": "1", "memory": "512Mi", "ephemeral-storage": "4Gi"},
    }
    assert agent["volumeMounts"] == [
        {"name": "workspace", "mountPath": "/workspace"},
        {"name": "prompt", "mountPath": "/etc/taskyard", "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "home", "mountPath": "/home/agent"},
    ]
    assert "command" not in agent and "args" not in agent and "envFrom" not in agent


def test_agent_settings_reach_the_pod():
    agent = make_agent(
        command=["/bin/agent"],
        args=["--fast"],
        envFrom=[{"secretRef": {"name": "keys"}}],
        resources={"limits": {"nvidia.com/gpu": "1"}},
        serviceAccountName="agent-sa",
        automountServiceAccountToken=True,
        terminationGracePeriodSeconds=60,
        nodeSelector={"pool": "agents"},
        tolerations=[{"key": "agents", "operator": "Exists", "effect": "NoSchedule"}],
        schedulerName="volcano",
        securityContext={"runAsUser": 1000, "fsGroup": 2000},
    )
    job = render_job(make_task(), agent, "coder", priority_class="taskyard-high")
    pod = pod_spec(job)
    assert pod["serviceAccountName"] == "agent-sa"
    assert pod["automountServiceAccountToken"] is True
    assert pod["terminationGracePeriodSeconds"] == 60
    assert pod["nodeSelector"] == {"pool": "agents"}
    assert pod["tolerations"] == [{"key": "agents", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["priorityClassName"] == "taskyard-high"
    assert pod["schedulerName"] == "volcano"
    assert pod["securityContext"]["runAsUser"] == 1000
    assert pod["securityContext"]["runAsGroup"] == 65532
    assert pod["securityContext"]["fsGroup"] == 2000
    assert pod["securityContext"]["runAsNonRoot"] is True
    main = container(job)
    assert main["command"] == ["/bin/agent"]
    assert main["args"] == ["--fast"]
    assert main["envFrom"] == [{"secretRef": {"name": "keys"}}]
    assert main["resources"] == {
        "limits": {"nvidia.com/gpu": "1", "ephemeral-storage": "4Gi"},
        "requests": {"ephemeral-storage": "64Mi"},  # not the limit: that would reserve 4Gi per agent
    }


# Environment


def test_env_order_and_overrides():
    task = make_task(
        provider="anthropic",
        model="claude",
        env=[
            {"name": "B", "value": "task"},
            {"name": "C", "value": "3"},
            {"name": "TASK_MODEL", "value": "other"},
        ],
    )
    agent = make_agent(env=[{"name": "A", "value": "1"}, {"name": "B", "value": "agent"}])
    env = env_of(render_job(task, agent, "coder"))
    assert [entry["name"] for entry in env] == [
        "TASK_ID",
        "TASK_NAME",
        "TASK_NAMESPACE",
        "TASK_PRIORITY",
        "TASK_PROMPT_FILE",
        "TASK_PROMPT",
        "TASK_PROVIDER",
        "TASK_MODEL",
        "HOME",
        "A",
        "B",
        "C",
    ]
    values = {entry["name"]: entry.get("value") for entry in env}
    assert values["TASK_ID"] == "uid-1"
    assert values["TASK_NAME"] == "fix-bug"
    assert values["TASK_NAMESPACE"] == "team-a"
    assert values["TASK_PRIORITY"] == "medium"
    assert values["TASK_PROMPT_FILE"] == "/etc/taskyard/prompt"
    assert values["TASK_PROMPT"] == "fix the bug"
    assert values["TASK_PROVIDER"] == "anthropic"
    assert values["B"] == "task"
    assert values["TASK_MODEL"] == "other"


def test_provider_and_model_are_left_out_when_unset():
    names = [entry["name"] for entry in env_of(render_job(make_task(), make_agent(), "coder"))]
    assert "TASK_PROVIDER" not in names and "TASK_MODEL" not in names


def test_an_override_replaces_the_whole_entry():
    task = make_task(env=[{"name": "TOKEN", "value": "plain"}])
    agent = make_agent(env=[{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}])
    env = env_of(render_job(task, agent, "coder"))
    assert [entry for entry in env if entry["name"] == "TOKEN"] == [{"name": "TOKEN", "value": "plain"}]


def test_editing_the_rendered_job_leaves_the_specs_alone():
    task = make_task(env=[{"name": "A", "value": "1"}])
    agent = make_agent(resources={"limits": {"cpu": "2"}}, tolerations=[{"key": "k"}])
    job = render_job(task, agent, "coder")
    env_of(job)[-1]["value"] = "changed"
    container(job)["resources"]["limits"]["cpu"] = "9"
    pod_spec(job)["tolerations"][0]["key"] = "changed"
    assert task.spec.env == [{"name": "A", "value": "1"}]
    assert agent.resources == {"limits": {"cpu": "2"}}
    assert agent.tolerations == [{"key": "k"}]
    again = render_job(make_task(), make_agent(), "coder")
    container(again)["resources"]["limits"]["cpu"] = "9"
    assert container(render_job(make_task(), make_agent(), "coder"))["resources"]["limits"]["cpu"] == "1"


# Prompt


def test_inline_prompt_travels_in_the_pod_annotation():
    job = render_job(make_task(prompt="write tests"), make_agent(), "coder")
    template = job["spec"]["template"]
    assert template["metadata"]["annotations"] == {"taskyard.dev/prompt": "write tests"}
    assert "annotations" not in job["metadata"]
    assert volume(job, "prompt") == {
        "name": "prompt",
        "downwardAPI": {
            "items": [
                {"path": "prompt", "fieldRef": {"fieldPath": "metadata.annotations['taskyard.dev/prompt']"}}
            ]
        },
    }


def test_prompt_from_a_config_map():
    task = make_task(promptFrom={"configMapKeyRef": {"name": "prompts", "key": "fix"}})
    job = render_job(task, make_agent(), "coder")
    assert "annotations" not in job["spec"]["template"]["metadata"]
    assert volume(job, "prompt") == {
        "name": "prompt",
        "configMap": {"name": "prompts", "items": [{"key": "fix", "path": "prompt"}]},
    }
    (prompt_env,) = [entry for entry in env_of(job) if entry["name"] == "TASK_PROMPT"]
    assert prompt_env == {
        "name": "TASK_PROMPT",
        "valueFrom": {"configMapKeyRef": {"name": "prompts", "key": "fix"}},
    }


def test_prompt_from_a_secret():
    task = make_task(promptFrom={"secretKeyRef": {"name": "private", "key": "p"}})
    job = render_job(task, make_agent(), "coder")
    assert "annotations" not in job["spec"]["template"]["metadata"]
    assert volume(job, "prompt") == {
        "name": "prompt",
        "secret": {"secretName": "private", "items": [{"key": "p", "path": "prompt"}]},
    }
    (prompt_env,) = [entry for entry in env_of(job) if entry["name"] == "TASK_PROMPT"]
    assert prompt_env == {
        "name": "TASK_PROMPT",
        "valueFrom": {"secretKeyRef": {"name": "private", "key": "p"}},
    }


# Workspace


def test_workspace_is_an_empty_dir_without_a_size():
    for task in (make_task(), make_task(workspace={"storageClassName": "fast"})):
        job = render_job(task, make_agent(), "coder")
        assert volume(job, "workspace") == {"name": "workspace", "emptyDir": {"sizeLimit": "2Gi"}}
        assert render_workspace_claim(task) is None


def test_agent_sets_the_workspace_size_limit_and_its_own_ephemeral_storage_limit():
    agent = make_agent(workspaceSizeLimit="500Mi", resources={"limits": {"ephemeral-storage": "1Gi"}})
    job = render_job(make_task(), agent, "coder")
    assert volume(job, "workspace") == {"name": "workspace", "emptyDir": {"sizeLimit": "500Mi"}}
    assert container(job)["resources"] == {"limits": {"ephemeral-storage": "1Gi"}}


def test_workspace_with_a_size_is_a_claim_owned_by_the_task():
    task = make_task(name="t" * 70, workspace={"size": "5Gi", "storageClassName": "fast"}, priority="low")
    job = render_job(task, make_agent(), "coder")
    claim_name = workspace_claim_name("t" * 70)
    assert volume(job, "workspace") == {
        "name": "workspace",
        "persistentVolumeClaim": {"claimName": claim_name},
    }
    claim = render_workspace_claim(task)
    assert claim == {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": claim_name,
            "namespace": "team-a",
            "labels": job["metadata"]["labels"],
            "ownerReferences": job["metadata"]["ownerReferences"],
        },
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "5Gi"}},
            "storageClassName": "fast",
        },
    }


def test_claim_without_a_storage_class_uses_the_cluster_default():
    claim = render_workspace_claim(make_task(workspace={"size": "1Gi"}))
    assert "storageClassName" not in claim["spec"]


def test_claim_labels_name_the_given_agent():
    claim = render_workspace_claim(make_task(workspace={"size": "1Gi"}), agent_name="other")
    assert claim["metadata"]["labels"]["taskyard.dev/agent"] == "other"


def test_a_bad_timeout_is_reported_not_rendered():
    task = TaskRef(
        "t", "ns", "u", parse_task_spec({"agent": "a", "prompt": "p"}).model_copy(update={"timeout": "x"})
    )
    with pytest.raises(ValueError, match="timeout: 'x' is not a duration"):
        render_job(task, make_agent(), "a")


# Repository, limits and a read-only root filesystem reach the agent's entrypoint


def test_repository_and_limits_become_the_entrypoints_environment():
    task = make_task(
        repository={
            "url": "https://g/r.git",
            "ref": "main",
            "branch": "taskyard/fix",
            "push": True,
            "secretRef": {"name": "git-token"},
        },
        limits={"maxTurns": 12, "maxTokens": 50000, "maxCostUSD": 1.5},
    )
    job = render_job(task, make_agent(), "coder")
    env = {e["name"]: e["value"] for e in env_of(job) if "value" in e}
    assert env["TASKYARD_REPO_URL"] == "https://g/r.git"
    assert env["TASKYARD_REPO_REF"] == "main"
    assert env["TASKYARD_REPO_BRANCH"] == "taskyard/fix"
    assert env["TASKYARD_REPO_PUSH"] == "true"
    assert env["TASKYARD_GIT_CREDENTIALS"] == "/etc/taskyard-git"
    assert (env["TASKYARD_MAX_TURNS"], env["TASKYARD_MAX_TOKENS"], env["TASKYARD_MAX_COST_USD"]) == (
        "12",
        "50000",
        "1.5",
    )
    # The Secret is a volume of the agent's container, read-only and not readable by others.
    assert volume(job, "git-credentials")["secret"] == {"secretName": "git-token", "defaultMode": 0o440}
    mount = next(m for m in container(job)["volumeMounts"] if m["name"] == "git-credentials")
    assert mount == {"name": "git-credentials", "mountPath": "/etc/taskyard-git", "readOnly": True}
    assert not any("secretKeyRef" in str(e) for e in env_of(job))


def test_without_repository_or_limits_nothing_of_them_is_rendered():
    job = render_job(make_task(), make_agent(), "coder")
    assert not [e for e in env_of(job) if e["name"].startswith("TASKYARD_")]
    assert {v["name"] for v in pod_spec(job)["volumes"]} == {"workspace", "prompt", "tmp", "home"}


def test_a_public_repository_without_push_has_no_credentials():
    job = render_job(make_task(repository={"url": "https://g/r.git"}), make_agent(), "coder")
    names = {e["name"] for e in env_of(job)}
    assert "TASKYARD_REPO_URL" in names
    assert names.isdisjoint({"TASKYARD_REPO_PUSH", "TASKYARD_GIT_CREDENTIALS", "TASKYARD_REPO_BRANCH"})
    assert "git-credentials" not in {v["name"] for v in pod_spec(job)["volumes"]}


def test_agents_run_on_a_read_only_root_filesystem_with_writable_tmp_and_home_by_default():
    job = render_job(make_task(), make_agent(), "coder")
    assert container(job)["securityContext"]["readOnlyRootFilesystem"] is True
    assert volume(job, "tmp") == {"name": "tmp", "emptyDir": {}}
    assert volume(job, "home") == {"name": "home", "emptyDir": {}}
    assert {"name": "tmp", "mountPath": "/tmp"} in container(job)["volumeMounts"]
    assert {"name": "home", "mountPath": "/home/agent"} in container(job)["volumeMounts"]
    assert {"name": "HOME", "value": "/home/agent"} in env_of(job)


def test_an_agent_may_keep_its_own_home_or_a_writable_root_filesystem():
    own_home = render_job(make_task(), make_agent(env=[{"name": "HOME", "value": "/tmp/h"}]), "coder")
    assert [e for e in env_of(own_home) if e["name"] == "HOME"] == [{"name": "HOME", "value": "/tmp/h"}]
    writable = render_job(make_task(), make_agent(readOnlyRootFilesystem=False), "coder")
    assert "readOnlyRootFilesystem" not in container(writable)["securityContext"]
    assert {v["name"] for v in pod_spec(writable)["volumes"]}.isdisjoint({"tmp", "home"})
    assert "HOME" not in {e["name"] for e in env_of(writable)}


def test_a_task_may_replace_only_the_agent_variables_it_lists_as_overridable():
    agent = parse_agent_spec(
        {
            "image": "a",
            "env": [{"name": "BASE_URL", "value": "https://proxy"}, {"name": "LEVEL", "value": "1"}],
            "overridableEnv": ["LEVEL"],
        }
    )
    task = parse_task_spec(
        {
            "agent": "a",
            "prompt": "p",
            "env": [
                {"name": "LEVEL", "value": "2"},
                {"name": "BASE_URL", "value": "https://elsewhere"},
                {"name": "NEW", "value": "x"},
            ],
        }
    )
    assert refused_env_overrides(task, agent) == ["BASE_URL"]
    assert refused_env_overrides(task, parse_agent_spec({"image": "a"})) == []


PROXIED = {
    "image": "localhost/taskyard/claude-code:dev",
    "credentialProxy": {
        "upstream": "https://api.anthropic.com",
        "auth": "x-api-key",
        "secretKeyRef": {"name": "taskyard-anthropic", "key": "api-key"},
        "baseUrlEnv": "ANTHROPIC_BASE_URL",
        "apiKeyEnv": "ANTHROPIC_API_KEY",
    },
}


def test_a_credential_proxy_holds_the_key_and_the_agent_only_a_placeholder():
    job = render_job(
        TaskRef("t", "ns", "uid", parse_task_spec({"agent": "a", "prompt": "p"})),
        parse_agent_spec(PROXIED),
        "a",
    )
    pod = job["spec"]["template"]["spec"]
    [proxy] = pod["initContainers"]
    [agent] = pod["containers"]
    assert proxy["restartPolicy"] == "Always" and proxy["command"] == ["taskyard-credential-proxy"]
    assert proxy["image"] == PROXIED["image"]
    proxy_env = {e["name"]: e for e in proxy["env"]}
    assert proxy_env["TASKYARD_PROXY_UPSTREAM"]["value"] == "https://api.anthropic.com"
    assert proxy_env["TASKYARD_PROXY_KEY"]["valueFrom"] == {
        "secretKeyRef": {"name": "taskyard-anthropic", "key": "api-key"}
    }
    assert "volumeMounts" not in proxy and proxy["securityContext"]["readOnlyRootFilesystem"] is True
    env = {e["name"]: e for e in agent["env"]}
    assert env["ANTHROPIC_BASE_URL"]["value"] == "http://127.0.0.1:8484"
    assert env["ANTHROPIC_API_KEY"]["value"] == "taskyard-proxied"
    assert env["NO_PROXY"]["value"] == "127.0.0.1,localhost"
    assert "secretKeyRef" not in json.dumps(agent)  # the key reaches no variable of the agent's
    assert "taskyard-anthropic" not in json.dumps(pod["volumes"])


@pytest.mark.parametrize(
    ("agent_env", "task_env", "expected"),
    [
        ([], [], "127.0.0.1,localhost"),
        ([{"name": "NO_PROXY", "value": "internal.example"}], [], "internal.example,127.0.0.1,localhost"),
        ([], [{"name": "NO_PROXY", "value": "localhost,.svc"}], "localhost,.svc,127.0.0.1"),
    ],
)
def test_the_proxy_beside_the_agent_is_always_reached_directly(agent_env, task_env, expected):
    task = parse_task_spec({"agent": "a", "prompt": "p", "env": task_env})
    agent = parse_agent_spec({**PROXIED, "env": agent_env, "overridableEnv": ["NO_PROXY"]})
    job = render_job(TaskRef("t", "ns", "uid", task), agent, "a")
    [no_proxy] = [
        e for e in job["spec"]["template"]["spec"]["containers"][0]["env"] if e["name"] == "NO_PROXY"
    ]
    assert no_proxy["value"] == expected
    assert refused_env_overrides(task, agent) == []  # NO_PROXY is the Agent's and Task's to extend


def test_an_agent_may_not_set_the_variables_its_proxy_gives():
    with pytest.raises(SpecError, match=r"env sets ANTHROPIC_BASE_URL, which credentialProxy\.baseUrlEnv"):
        parse_agent_spec({**PROXIED, "env": [{"name": "ANTHROPIC_BASE_URL", "value": "https://gateway"}]})


def test_a_task_cannot_point_a_proxied_agent_elsewhere():
    task = parse_task_spec(
        {
            "agent": "a",
            "prompt": "p",
            "env": [{"name": "ANTHROPIC_BASE_URL", "value": "https://attacker.example"}],
        }
    )
    assert refused_env_overrides(task, parse_agent_spec(PROXIED)) == ["ANTHROPIC_BASE_URL"]


# --- Egress policies --------------------------------------------------------------------------------------


def test_the_default_egress_allows_dns_and_everything_outside_the_denied_ranges_per_family():
    rules = default_egress(["10.0.0.0/8", "169.254.0.0/16", "fc00::/7"], allow_dns=True)
    dns, outside = rules
    assert dns["to"] == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
        }
    ]
    assert dns["ports"] == [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]
    assert outside == {
        "to": [
            {"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8", "169.254.0.0/16"]}},
            {"ipBlock": {"cidr": "::/0", "except": ["fc00::/7"]}},
        ]
    }
    assert default_egress([], allow_dns=False) == [
        {"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}, {"ipBlock": {"cidr": "::/0"}}]}
    ]


def test_agents_without_egress_rules_share_the_namespace_default_policy():
    default = default_egress(["10.0.0.0/8"], allow_dns=True)
    policy = render_egress_policy(make_agent(), "coder", default)
    assert policy["metadata"]["name"] == "taskyard-agents"
    assert policy["spec"] == {
        "podSelector": {
            "matchLabels": {"app.kubernetes.io/managed-by": "taskyard"},
            "matchExpressions": [{"key": "taskyard.dev/egress", "operator": "DoesNotExist"}],
        },
        "policyTypes": ["Egress"],
        "egress": default,
    }
    job = render_job(make_task(), make_agent(), "coder")
    assert "taskyard.dev/egress" not in job["spec"]["template"]["metadata"]["labels"]


def test_an_agent_with_egress_rules_gets_a_policy_of_its_own_that_replaces_the_default():
    rules = [{"to": [{"podSelector": {"matchLabels": {"app": "model-gateway"}}}], "ports": [{"port": 8080}]}]
    agent = make_agent(egress=rules)
    name = "a" * 100
    policy = render_egress_policy(agent, name, default_egress([], allow_dns=True))
    assert policy["metadata"]["name"] == "taskyard-agent-" + label_value_for(name)
    assert DNS1123_SUBDOMAIN.match(policy["metadata"]["name"])
    assert policy["spec"]["egress"] == rules
    assert policy["spec"]["podSelector"] == {
        "matchLabels": {
            "app.kubernetes.io/managed-by": "taskyard",
            "taskyard.dev/agent": label_value_for(name),
            "taskyard.dev/egress": "agent",
        }
    }
    labels = render_job(make_task(), agent, name)["spec"]["template"]["metadata"]["labels"]
    assert {k: labels[k] for k in policy["spec"]["podSelector"]["matchLabels"]} == (
        policy["spec"]["podSelector"]["matchLabels"]
    )
    nothing = render_egress_policy(make_agent(egress=[]), "sealed", [])
    assert nothing["spec"]["egress"] == [] and nothing["spec"]["policyTypes"] == ["Egress"]


@pytest.mark.parametrize(
    ("egress", "message"),
    [
        (
            [{"to": [{"ipBlock": {"cidr": "10.0.0.300/8"}}]}],
            "spec.egress[0].to[0].ipBlock.cidr: '10.0.0.300/8' is not a CIDR",
        ),
        ([{"to": [{"ipBlock": {"cidr": "10.0.0.1"}}]}], "has no prefix length"),
        ([{"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["nope"]}}]}], "is not a CIDR"),
        ([{"to": [{}]}], "set ipBlock, or namespaceSelector and/or podSelector"),
        (
            [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}, "podSelector": {}}]}],
            "ipBlock cannot be combined with namespaceSelector or podSelector",
        ),
        ([{"ports": [{"protocol": "ICMP"}]}], "spec.egress[0].ports[0].protocol: 'ICMP' is invalid"),
    ],
)
def test_bad_egress_rules_are_refused_naming_the_field(egress, message):
    with pytest.raises(api.SpecError, match=re.escape(message)):
        make_agent(egress=egress)
