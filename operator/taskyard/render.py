"""Turn a Task and its agent into the Kubernetes objects that run it: a Job and, if asked, a workspace claim.

Everything here is a pure function of plain data, so the exact objects the operator creates can be
checked without a cluster.
"""

import copy
import hashlib
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from taskyard import api
from taskyard.api import AgentSpec, TaskSpec

CONTAINER_NAME = "agent"
WORKSPACE_VOLUME = "workspace"
WORKSPACE_PATH = "/workspace"
PROMPT_VOLUME = "prompt"
PROMPT_DIR = "/etc/taskyard"
PROMPT_FILE_NAME = "prompt"
PROMPT_FILE = f"{PROMPT_DIR}/{PROMPT_FILE_NAME}"
SCRATCH_VOLUME = "tmp"
SCRATCH_PATH = "/tmp"
HOME_VOLUME = "home"
# The home of the agent images' user; in any other image the kubelet creates the directory.
HOME_PATH = "/home/agent"
GIT_CREDENTIALS_VOLUME = "git-credentials"
# Beside the prompt's directory, not inside it: that one is a projected volume the kubelet rewrites.
GIT_CREDENTIALS_DIR = "/etc/taskyard-git"
# Readable by the agent's group (the pod's fsGroup) only.
GIT_CREDENTIALS_MODE = 0o440
DEFAULT_TIMEOUT = "1h"
DEFAULT_RESOURCES: dict[str, Any] = {
    "requests": {"cpu": "100m", "memory": "128Mi"},
    "limits": {"cpu": "1", "memory": "512Mi"},
}
# Without a limit, an agent that fills the node's disk is evicted for disk pressure, which the pod
# failure policy treats as a disruption and retries without end; with one, only the agent is evicted
# (and the operator fails its Task with StorageLimitExceeded).
DEFAULT_EPHEMERAL_STORAGE_LIMIT = "4Gi"
DEFAULT_EPHEMERAL_STORAGE_REQUEST = "64Mi"
DEFAULT_WORKSPACE_SIZE_LIMIT = "2Gi"
MANAGED_BY = "taskyard"
APP_NAME = "taskyard-task"

# Job names end up in the Pods' batch.kubernetes.io/job-name label, and label values stop at 63 characters.
_MAX_LABEL_VALUE = 63
_HASH_CHARS = 10
_KEPT_PREFIX = _MAX_LABEL_VALUE - _HASH_CHARS - 1
_MAX_OBJECT_NAME = 253
_WORKSPACE_SUFFIX = "-workspace"


def _shortened(name: str) -> str:
    if len(name) <= _MAX_LABEL_VALUE:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:_HASH_CHARS]
    # A '.' before the '-' would leave an empty DNS label ("a.-b"), so it goes as well as a trailing '-'.
    return f"{name[:_KEPT_PREFIX].rstrip('-.')}-{digest}"


def job_name_for(task_name: str) -> str:
    """The Job name of a Task: its name, or beyond 63 characters a shortened form that is still unique."""
    return _shortened(task_name)


def label_value_for(name: str) -> str:
    """A label value standing for an object name; names longer than 63 characters are shortened like Jobs."""
    return _shortened(name)


def workspace_claim_name(task_name: str) -> str:
    """The name of the PersistentVolumeClaim that holds a Task's /workspace."""
    name = job_name_for(task_name) + _WORKSPACE_SUFFIX
    return name[:_MAX_OBJECT_NAME]


@dataclass(frozen=True)
class TaskRef:
    """The parts of a Task object that rendering needs."""

    name: str
    namespace: str
    uid: str
    spec: TaskSpec


def _labels(task: TaskRef, agent_name: str) -> dict[str, str]:
    # The Task's own labels are deliberately not copied: GitOps tools track what they own by label, and
    # would adopt (and prune) the Jobs and claims the operator creates.
    return {
        api.LABEL_TASK: label_value_for(task.name),
        api.LABEL_AGENT: label_value_for(agent_name),
        api.LABEL_PRIORITY: task.spec.priority,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "app.kubernetes.io/name": APP_NAME,
    }


def owner_reference(task_name: str, task_uid: str) -> dict[str, Any]:
    """The controller reference that ties an object to its Task, so it is deleted with the Task."""
    return {
        "apiVersion": api.API_VERSION,
        "kind": "Task",
        "name": task_name,
        "uid": task_uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _owner_references(task: TaskRef) -> list[dict[str, Any]]:
    return [owner_reference(task.name, task.uid)]


def _uses_claim(spec: TaskSpec) -> bool:
    return spec.workspace is not None and spec.workspace.size is not None


def _merged_env(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per name: a later entry replaces an earlier one, which keeps its position."""
    by_name: dict[str, dict[str, Any]] = {}
    for entry in entries:
        by_name[entry["name"]] = entry
    return list(by_name.values())


def refused_env_overrides(task: TaskSpec, agent: AgentSpec) -> list[str]:
    """The Task's env variables that would replace ones the Agent sets without listing them as
    overridable: an Agent's settings (a base URL next to its API key, say) are its author's."""
    own = {entry["name"] for entry in agent.env or []} - set(agent.overridable_env or [])
    own |= {entry["name"] for entry in _proxy_env(agent)}  # never overridable: the key would follow
    return [entry["name"] for entry in task.env or [] if entry["name"] in own]


def _env(task: TaskRef, agent: AgentSpec) -> list[dict[str, Any]]:
    spec = task.spec
    entries: list[dict[str, Any]] = [
        {"name": "TASK_ID", "value": task.uid},
        {"name": "TASK_NAME", "value": task.name},
        {"name": "TASK_NAMESPACE", "value": task.namespace},
        {"name": "TASK_PRIORITY", "value": spec.priority},
        {"name": "TASK_PROMPT_FILE", "value": PROMPT_FILE},
    ]
    if spec.prompt is not None:
        entries.append({"name": "TASK_PROMPT", "value": spec.prompt})
    elif spec.prompt_from is not None and spec.prompt_from.config_map_key_ref is not None:
        ref = spec.prompt_from.config_map_key_ref
        entries.append(
            {"name": "TASK_PROMPT", "valueFrom": {"configMapKeyRef": {"name": ref.name, "key": ref.key}}}
        )
    elif spec.prompt_from is not None and spec.prompt_from.secret_key_ref is not None:
        ref = spec.prompt_from.secret_key_ref
        entries.append(
            {"name": "TASK_PROMPT", "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}
        )
    if spec.provider is not None:
        entries.append({"name": "TASK_PROVIDER", "value": spec.provider})
    if spec.model is not None:
        entries.append({"name": "TASK_MODEL", "value": spec.model})
    entries.extend(_repository_env(spec))
    entries.extend(_limits_env(spec))
    if agent.read_only_root_filesystem:
        # Where the image's home is read-only, the agent's settings and caches go to a volume of its own.
        entries.append({"name": "HOME", "value": HOME_PATH})
    entries.extend(agent.env or [])
    entries.extend(_proxy_env(agent))
    entries.extend(spec.env or [])
    merged = _merged_env(copy.deepcopy(entries))
    return _bypassing_proxies_for_loopback(merged) if agent.credential_proxy is not None else merged


LOOPBACK_HOSTS = ("127.0.0.1", "localhost")


def _bypassing_proxies_for_loopback(env: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A CLI that honours HTTP(S)_PROXY must still reach the credential proxy beside it directly: the
    loopback names join whatever NO_PROXY the Agent or Task sets."""
    for entry in env:
        if entry["name"] == "NO_PROXY" and "value" in entry:
            hosts = [host for host in str(entry["value"]).split(",") if host.strip()]
            entry["value"] = ",".join([*hosts, *(h for h in LOOPBACK_HOSTS if h not in hosts)])
            return env
    if not any(entry["name"] == "NO_PROXY" for entry in env):
        env.append({"name": "NO_PROXY", "value": ",".join(LOOPBACK_HOSTS)})
    return env


def _repository_env(spec: TaskSpec) -> list[dict[str, Any]]:
    """What the agent images' entrypoint reads to clone the repository and push the agent's work."""
    repository = spec.repository
    if repository is None:
        return []
    values = {
        "TASKYARD_REPO_URL": repository.url,
        "TASKYARD_REPO_REF": repository.ref,
        "TASKYARD_REPO_BRANCH": repository.branch,
        "TASKYARD_REPO_PUSH": "true" if repository.push else None,
        "TASKYARD_GIT_CREDENTIALS": GIT_CREDENTIALS_DIR if repository.secret_ref else None,
    }
    return _set_values(values)


def _limits_env(spec: TaskSpec) -> list[dict[str, Any]]:
    limits = spec.limits
    if limits is None:
        return []
    return _set_values(
        {
            "TASKYARD_MAX_TURNS": limits.max_turns,
            "TASKYARD_MAX_TOKENS": limits.max_tokens,
            "TASKYARD_MAX_COST_USD": limits.max_cost_usd,
        }
    )


def _set_values(values: dict[str, str | int | float | None]) -> list[dict[str, Any]]:
    """Env entries for the values that are set; numbers as the entrypoint parses them (2.5, not 2.50)."""
    return [
        {"name": name, "value": f"{value:g}" if isinstance(value, float) else str(value)}
        for name, value in values.items()
        if value is not None
    ]


def _git_credentials_volume(spec: TaskSpec) -> dict[str, Any] | None:
    repository = spec.repository
    if repository is None or repository.secret_ref is None:
        return None
    return {
        "name": GIT_CREDENTIALS_VOLUME,
        "secret": {"secretName": repository.secret_ref.name, "defaultMode": GIT_CREDENTIALS_MODE},
    }


def _prompt_volume(spec: TaskSpec) -> dict[str, Any]:
    if spec.prompt is not None:
        # The inline prompt reaches the file through the Pod's own annotation, so no ConfigMap has to be
        # created, owned and cleaned up for it.
        field_path = f"metadata.annotations['{api.ANNOTATION_PROMPT}']"
        return {
            "name": PROMPT_VOLUME,
            "downwardAPI": {"items": [{"path": PROMPT_FILE_NAME, "fieldRef": {"fieldPath": field_path}}]},
        }
    source = spec.prompt_from
    if source is not None and source.config_map_key_ref is not None:
        ref = source.config_map_key_ref
        items = [{"key": ref.key, "path": PROMPT_FILE_NAME}]
        return {"name": PROMPT_VOLUME, "configMap": {"name": ref.name, "items": items}}
    if source is not None and source.secret_key_ref is not None:
        ref = source.secret_key_ref
        items = [{"key": ref.key, "path": PROMPT_FILE_NAME}]
        return {"name": PROMPT_VOLUME, "secret": {"secretName": ref.name, "items": items}}
    raise ValueError(f"the Task has no prompt; {api.EXACTLY_ONE_PROMPT}")


def _resources(agent: AgentSpec) -> dict[str, Any]:
    resources = copy.deepcopy(agent.resources if agent.resources is not None else DEFAULT_RESOURCES)
    limits = resources.setdefault("limits", {})
    if "ephemeral-storage" not in limits:
        limits["ephemeral-storage"] = DEFAULT_EPHEMERAL_STORAGE_LIMIT
        # A limit without a request makes the request equal to it: the scheduler would reserve 4Gi of
        # disk per agent. Agents rarely need more than their image's writable layer and logs.
        resources.setdefault("requests", {}).setdefault(
            "ephemeral-storage", DEFAULT_EPHEMERAL_STORAGE_REQUEST
        )
    return resources


def _workspace_volume(
    task: TaskRef, workspace_size_limit: str = DEFAULT_WORKSPACE_SIZE_LIMIT
) -> dict[str, Any]:
    if _uses_claim(task.spec):
        return {
            "name": WORKSPACE_VOLUME,
            "persistentVolumeClaim": {"claimName": workspace_claim_name(task.name)},
        }
    return {"name": WORKSPACE_VOLUME, "emptyDir": {"sizeLimit": workspace_size_limit}}


def _pod_security_context(agent: AgentSpec) -> dict[str, Any]:
    ids = agent.security_context or api.AgentSecurityContext()

    def chosen(value: int | None) -> int:
        return api.NON_ROOT_DEFAULT_ID if value is None else value

    return {
        "runAsNonRoot": True,
        "runAsUser": chosen(ids.run_as_user),
        "runAsGroup": chosen(ids.run_as_group),
        "fsGroup": chosen(ids.fs_group),
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _container(task: TaskRef, agent: AgentSpec) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": agent.image,
        "imagePullPolicy": "IfNotPresent",
    }
    if agent.command is not None:
        container["command"] = list(agent.command)
    if agent.args is not None:
        container["args"] = list(agent.args)
    container["workingDir"] = WORKSPACE_PATH
    container["env"] = _env(task, agent)
    if agent.env_from:
        container["envFrom"] = copy.deepcopy(agent.env_from)
    # Copies, so that whoever edits the returned Job cannot change the parsed spec or the defaults.
    container["resources"] = _resources(agent)
    container["securityContext"] = {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    if agent.read_only_root_filesystem:
        container["securityContext"]["readOnlyRootFilesystem"] = True
    # Without a termination message the last log lines become one, so a crash still says why.
    container["terminationMessagePolicy"] = "FallbackToLogsOnError"
    container["volumeMounts"] = [
        {"name": WORKSPACE_VOLUME, "mountPath": WORKSPACE_PATH},
        {"name": PROMPT_VOLUME, "mountPath": PROMPT_DIR, "readOnly": True},
    ]
    if agent.read_only_root_filesystem:
        container["volumeMounts"].append({"name": SCRATCH_VOLUME, "mountPath": SCRATCH_PATH})
        container["volumeMounts"].append({"name": HOME_VOLUME, "mountPath": HOME_PATH})
    if _git_credentials_volume(task.spec) is not None:
        container["volumeMounts"].append(
            {"name": GIT_CREDENTIALS_VOLUME, "mountPath": GIT_CREDENTIALS_DIR, "readOnly": True}
        )
    return container


PROXY_CONTAINER_NAME = "credential-proxy"


def _proxy_env(agent: AgentSpec) -> list[dict[str, Any]]:
    """What the agent's CLI is told: the proxy is its provider, and its key a placeholder."""
    proxy = agent.credential_proxy
    if proxy is None:
        return []
    entries = [{"name": proxy.base_url_env, "value": f"http://127.0.0.1:{api.PROXY_PORT}"}]
    if proxy.api_key_env:
        entries.append({"name": proxy.api_key_env, "value": api.PROXY_PLACEHOLDER_KEY})
    return entries


def _proxy_container(agent: AgentSpec) -> dict[str, Any] | None:
    """The credential proxy as a native sidecar: it starts before the agent, stays up beside it and
    does not keep the Job from completing. Only its environment has the key (containers of a pod do
    not share processes), and a missing Secret or key is named by the kubelet's CreateContainerConfigError."""
    proxy = agent.credential_proxy
    if proxy is None:
        return None
    listening = f"import socket; socket.create_connection(('127.0.0.1', {api.PROXY_PORT}), 1)"
    return {
        "name": PROXY_CONTAINER_NAME,
        "image": proxy.image or agent.image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["taskyard-credential-proxy"],
        "restartPolicy": "Always",
        "env": [
            {"name": "TASKYARD_PROXY_UPSTREAM", "value": proxy.upstream},
            {"name": "TASKYARD_PROXY_AUTH", "value": proxy.auth},
            {
                "name": "TASKYARD_PROXY_KEY",
                "valueFrom": {
                    "secretKeyRef": {"name": proxy.secret_key_ref.name, "key": proxy.secret_key_ref.key}
                },
            },
            {"name": "TASKYARD_PROXY_PORT", "value": str(api.PROXY_PORT)},
        ],
        # The agent starts once the proxy listens, so its first request never finds nothing there.
        "startupProbe": {
            "exec": {"command": ["python3", "-c", listening]},
            "periodSeconds": 1,
            "failureThreshold": 30,
        },
        "resources": {
            "requests": {"cpu": "10m", "memory": "32Mi"},
            "limits": {"cpu": "500m", "memory": "128Mi", "ephemeral-storage": "64Mi"},
        },
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "runAsNonRoot": True,
            "readOnlyRootFilesystem": True,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


def _pod_failure_policy(agent: AgentSpec) -> dict[str, Any]:
    # An evicted or preempted Pod did nothing wrong, so it must not use up a retry.
    rules: list[dict[str, Any]] = [{"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}]
    if agent.non_retryable_exit_codes:
        rules.append(
            {
                "action": "FailJob",
                "onExitCodes": {
                    "containerName": CONTAINER_NAME,
                    "operator": "In",
                    # The API server wants these sorted and unique.
                    "values": sorted(set(agent.non_retryable_exit_codes)),
                },
            }
        )
    return {"rules": rules}


def render_job(
    task: TaskRef, agent: AgentSpec, agent_name: str, priority_class: str | None = None
) -> dict[str, Any]:
    """The batch/v1 Job that runs `task` with `agent`, owned by the Task.

    `agent_name` is the name of the Agent or ClusterAgent object; it goes into the taskyard.dev/agent label.
    Raises ValueError when the Task has no prompt or its timeout is not a duration.
    """
    spec = task.spec
    labels = _labels(task, agent_name)
    retries = spec.retries if spec.retries is not None else agent.retries
    timeout = api.parse_duration(spec.timeout or agent.timeout or DEFAULT_TIMEOUT)

    template_metadata: dict[str, Any] = {"labels": dict(labels)}
    if agent.egress is not None:
        # Takes the pod out of the namespace's default egress policy and into its Agent's own.
        template_metadata["labels"][api.LABEL_EGRESS] = EGRESS_OF_AGENT
    if spec.prompt is not None:
        template_metadata["annotations"] = {api.ANNOTATION_PROMPT: spec.prompt}

    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": agent.automount_service_account_token,
    }
    pod_spec["serviceAccountName"] = agent.service_account_name or api.AGENT_SERVICE_ACCOUNT
    pod_spec["terminationGracePeriodSeconds"] = agent.termination_grace_period_seconds
    # Service links inject an env var per Service in the namespace: noise for the agent, and a leak of names.
    pod_spec["enableServiceLinks"] = False
    pod_spec["securityContext"] = _pod_security_context(agent)
    if agent.node_selector:
        pod_spec["nodeSelector"] = dict(agent.node_selector)
    if agent.tolerations:
        pod_spec["tolerations"] = copy.deepcopy(agent.tolerations)
    if agent.scheduler_name:
        pod_spec["schedulerName"] = agent.scheduler_name
    if priority_class:
        pod_spec["priorityClassName"] = priority_class
    proxy = _proxy_container(agent)
    if proxy is not None:
        pod_spec["initContainers"] = [proxy]
    pod_spec["containers"] = [_container(task, agent)]
    size_limit = agent.workspace_size_limit or DEFAULT_WORKSPACE_SIZE_LIMIT
    pod_spec["volumes"] = [_workspace_volume(task, size_limit), _prompt_volume(spec)]
    if agent.read_only_root_filesystem:
        # Counted against the pod's ephemeral-storage limit like any write to the root filesystem.
        pod_spec["volumes"].append({"name": SCRATCH_VOLUME, "emptyDir": {}})
        pod_spec["volumes"].append({"name": HOME_VOLUME, "emptyDir": {}})
    credentials = _git_credentials_volume(spec)
    if credentials is not None:
        pod_spec["volumes"].append(credentials)

    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name_for(task.name),
            "namespace": task.namespace,
            "labels": labels,
            "ownerReferences": _owner_references(task),
        },
        "spec": {
            "parallelism": 1,
            "completions": 1,
            "backoffLimit": retries,
            "activeDeadlineSeconds": timeout,
            # Needs restartPolicy Never, which the template has.
            "podFailurePolicy": _pod_failure_policy(agent),
            "template": {"metadata": template_metadata, "spec": pod_spec},
        },
    }


def render_workspace_claim(task: TaskRef, agent_name: str | None = None) -> dict[str, Any] | None:
    """The PersistentVolumeClaim for the Task's /workspace, or None when the Task asks for no size.

    The claim is owned by the Task, so it goes when the Task is deleted. Its labels match the Job's;
    `agent_name` defaults to the name in spec.agent.
    """
    workspace = task.spec.workspace
    if workspace is None or workspace.size is None:
        return None
    claim_spec: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": workspace.size}},
    }
    if workspace.storage_class_name:
        claim_spec["storageClassName"] = workspace.storage_class_name
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": workspace_claim_name(task.name),
            "namespace": task.namespace,
            "labels": _labels(task, agent_name or task.spec.agent),
            "ownerReferences": _owner_references(task),
        },
        "spec": claim_spec,
    }


# --- Egress: the NetworkPolicies that keep agents out of the cluster's insides ---------------------------

DEFAULT_EGRESS_POLICY = "taskyard-agents"
EGRESS_OF_AGENT = "agent"
_AGENT_EGRESS_POLICY_PREFIX = "taskyard-agent-"
# Pod, service and node addresses on almost every cluster, the link-local range of cloud metadata
# services (169.254.169.254) and their IPv6 counterparts.
DEFAULT_DENIED_CIDRS = (
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "169.254.0.0/16",
    "fc00::/7",
    "fe80::/10",
)
# The cluster DNS of kube-system only: a pod elsewhere could wear the label and listen on port 53.
DNS_PEER = {
    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
    "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
}


def default_egress(denied_cidrs: Sequence[str], allow_dns: bool) -> list[dict[str, Any]]:
    """Egress rules for agents whose Agent sets none: the cluster's DNS, and every address outside
    `denied_cidrs` (which should hold the pod and service ranges and the nodes' addresses)."""
    rules: list[dict[str, Any]] = []
    if allow_dns:
        rules.append(
            {"to": [DNS_PEER], "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]}
        )
    peers = []
    for everything, family in (("0.0.0.0/0", 4), ("::/0", 6)):
        denied = [c for c in denied_cidrs if ipaddress.ip_network(c, strict=False).version == family]
        peers.append({"ipBlock": {"cidr": everything, **({"except": denied} if denied else {})}})
    rules.append({"to": peers})
    return rules


def egress_policy_name(agent_name: str | None) -> str:
    """The namespace's default policy for None, else the one of the Agent named `agent_name`."""
    if agent_name is None:
        return DEFAULT_EGRESS_POLICY
    return _AGENT_EGRESS_POLICY_PREFIX + label_value_for(agent_name)


def render_egress_policy(agent: AgentSpec, agent_name: str, default: list[dict[str, Any]]) -> dict[str, Any]:
    """The NetworkPolicy that limits where pods of `agent` may connect: the namespace's default one
    (selecting every agent pod whose Agent sets no egress) or the Agent's own."""
    selector: dict[str, Any] = {"matchLabels": {"app.kubernetes.io/managed-by": MANAGED_BY}}
    if agent.egress is None:
        name, egress = egress_policy_name(None), copy.deepcopy(default)
        selector["matchExpressions"] = [{"key": api.LABEL_EGRESS, "operator": "DoesNotExist"}]
    else:
        name = egress_policy_name(agent_name)
        egress = [rule.model_dump(by_alias=True, exclude_none=True) for rule in agent.egress]
        selector["matchLabels"][api.LABEL_AGENT] = label_value_for(agent_name)
        selector["matchLabels"][api.LABEL_EGRESS] = EGRESS_OF_AGENT
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": name,
            "labels": {"app.kubernetes.io/managed-by": MANAGED_BY, "app.kubernetes.io/name": APP_NAME},
        },
        "spec": {"podSelector": selector, "policyTypes": ["Egress"], "egress": egress},
    }
