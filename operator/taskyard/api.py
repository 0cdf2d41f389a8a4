"""The taskyard API (Task, Agent, ClusterAgent) as pydantic models.

These models are the single source of truth for the API: crd.py generates the CustomResourceDefinitions
from them, and the operator parses live objects with them. Field descriptions end up in `kubectl explain`,
so they are written for users.

The API server validates objects against the generated schema before storing them, so parsing ignores
unknown fields rather than rejecting them. The validators here still give readable messages, because a
stored object can predate a schema change, and because the operator reports parse failures to users.
"""

import ipaddress
import re
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

GROUP = "taskyard.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

LABEL_TASK = "taskyard.dev/task"
LABEL_AGENT = "taskyard.dev/agent"
LABEL_PRIORITY = "taskyard.dev/priority"
# On agent pods whose Agent sets its own egress rules (value "agent").
LABEL_EGRESS = "taskyard.dev/egress"
ANNOTATION_PROMPT = "taskyard.dev/prompt"

PROMPT_MAX_CHARS = 32768
# The API server skips every CEL rule of an object once a "blocking" schema check such as maxLength has
# failed (apiextensions-apiserver, hasBlockingErr). A schema maxLength of PROMPT_MAX_CHARS would therefore
# hide the readable CEL message behind the bare "Too long: may not be more than 32768 bytes". The schema's
# maxLength is only a backstop that bounds CEL cost estimates; the CEL rule enforces PROMPT_MAX_CHARS.
# 256 KiB is what all annotations of a Pod may hold together, and an inline prompt travels in one.
PROMPT_SCHEMA_MAX_CHARS = 262144

Priority = Literal["critical", "high", "medium", "low"]
# Highest first: the index is the rank the queue sorts by.
PRIORITIES: tuple[str, ...] = get_args(Priority)

Phase = Literal["Pending", "Queued", "Running", "Cancelling", "Succeeded", "Failed", "Cancelled"]
PHASES: tuple[str, ...] = get_args(Phase)

# Anchored alternatives rather than one optional-everything pattern: the schema must reject "" without
# lookahead, which RE2 (the API server's regex engine) does not have.
DURATION_PATTERN = r"^([0-9]+h([0-9]+m)?([0-9]+s)?|[0-9]+m([0-9]+s)?|[0-9]+s)$"
_DURATION_PARTS = re.compile(r"(?:(?P<h>[0-9]+)h)?(?:(?P<m>[0-9]+)m)?(?:(?P<s>[0-9]+)s)?")
_DURATION_HINT = "use a number with h, m or s, e.g. 90s, 30m, 2h, 1h30m"
# Long enough for any sensible duration; CEL cost estimates need a bound on every compared string.
_DURATION_MAX_CHARS = 32
# The longest timeout a Task or Agent may ask for: a week. Beyond it a typo (99999999h) would be
# accepted and then overflow the Job's deadline.
MAX_TIMEOUT = "168h"
MAX_TIMEOUT_SECONDS = 168 * 3600
# Environment variable names every Kubernetes version accepts (C identifiers, plus '-' and '.').
ENV_NAME_PATTERN = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
# The ServiceAccount of agent pods whose Agent names none: created by the operator in each namespace
# that runs Tasks, with no API token and bound to no role.
AGENT_SERVICE_ACCOUNT = "taskyard-agent"
_ENV_NAME = re.compile(ENV_NAME_PATTERN)

DNS1123_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# Kubernetes quantities use lowercase k for the decimal kilo; "K" is not a valid suffix.
QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$"

NON_ROOT_DEFAULT_ID = 65532


def _duration_seconds(text: str) -> int:
    match = _DURATION_PARTS.fullmatch(text)
    if not text or match is None:
        raise ValueError(f"{text!r} is not a duration; {_DURATION_HINT}")
    seconds = int(match["h"] or 0) * 3600 + int(match["m"] or 0) * 60 + int(match["s"] or 0)
    if seconds == 0:
        raise ValueError(f"{text!r} is zero; use a duration longer than that, e.g. 90s, 30m, 2h, 1h30m")
    if seconds > MAX_TIMEOUT_SECONDS:
        raise ValueError(f"{text!r} is longer than the longest timeout, {MAX_TIMEOUT} (a week)")
    return seconds


def parse_duration(text: str) -> int:
    """Return the seconds in a Go-like duration such as "90s", "30m", "2h", "1h30m" or "1h0m30s".

    Units h, m and s may each appear once, in that order, with whole numbers. Raises ValueError for
    anything else, and for durations that add up to zero.
    """
    if not isinstance(text, str):
        raise ValueError(f"timeout: {text!r} is not a duration; {_DURATION_HINT}")
    try:
        return _duration_seconds(text)
    except ValueError as error:
        raise ValueError(f"timeout: {error}") from None


def format_duration(seconds: float) -> str:
    """Format whole seconds the way Go prints durations: "45s", "2m5s", "1h2m3s".

    Fractions are dropped and negative values (clock skew between writers) show as "0s".
    """
    whole = max(0, int(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def _show(value: Any) -> str:
    text = repr(value)
    if len(text) <= 80:
        return text
    if isinstance(value, str):
        return f"{text[:60]}... ({len(value)} characters)"
    return f"{text[:77]}..."


def _matching(pattern: str, accepted: str) -> BeforeValidator:
    """A validator that explains a pattern mismatch in words; the schema keeps the pattern itself."""
    compiled = re.compile(pattern)

    def check(value: Any) -> Any:
        if isinstance(value, str) and not compiled.fullmatch(value):
            raise ValueError(f"{_show(value)} is not accepted; {accepted}")
        return value

    return BeforeValidator(check)


def _check_duration(value: Any) -> Any:
    if isinstance(value, str):
        _duration_seconds(value)
    return value


def _require_env_name(item: dict[str, Any]) -> dict[str, Any]:
    name = item.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError(
            f"{_show(item)} has no name; every environment variable needs a non-empty name, "
            "e.g. {name: LOG_LEVEL, value: debug}"
        )
    if not _ENV_NAME.match(name):
        raise ValueError(
            f"{name!r} is not an environment variable name; use letters, digits, '_', '-' and '.', "
            "not starting with a digit, e.g. LOG_LEVEL"
        )
    return item


def _non_root(what: str) -> BeforeValidator:
    def check(value: Any) -> Any:
        if isinstance(value, int) and value < 1:
            raise ValueError(
                f"{value} is not allowed; agents never run as root, so use a {what} of 1 or more"
            )
        return value

    return BeforeValidator(check)


Duration = Annotated[
    str,
    Field(
        pattern=DURATION_PATTERN,
        max_length=_DURATION_MAX_CHARS,
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    # The pattern already holds, so a non-zero digit anywhere means a non-zero total.
                    "rule": "self.matches('[1-9]')",
                    "message": "timeout must be longer than zero, e.g. 90s, 30m, 2h, 1h30m",
                },
                {
                    # CEL reads Go durations, and the pattern is a subset of them.
                    "rule": f"duration(self) <= duration('{MAX_TIMEOUT}')",
                    "message": f"timeout must be at most {MAX_TIMEOUT} (a week)",
                },
            ]
        },
    ),
    BeforeValidator(_check_duration),
]

# EnvVar is kept open (x-kubernetes-preserve-unknown-fields) so new Kubernetes fields pass through.
# name, value and valueFrom are still declared: CEL equality compares declared fields exactly, but skips an
# undeclared field that only one side has, so declaring them makes the immutability rule notice a switch
# between value and valueFrom.
ENV_VAR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "A Kubernetes EnvVar: a name and either a value or a valueFrom source.",
    "required": ["name"],
    "properties": {
        "name": {
            "type": "string",
            "minLength": 1,
            "maxLength": 253,
            "pattern": ENV_NAME_PATTERN,
            "description": "Name of the environment variable: letters, digits, '_', '-' and '.', not "
            "starting with a digit.",
        },
        "value": {"type": "string", "description": "Value of the environment variable."},
        "valueFrom": {
            "type": "object",
            "description": "Source of the value (configMapKeyRef, secretKeyRef, fieldRef, ...).",
            "x-kubernetes-preserve-unknown-fields": True,
        },
    },
    "x-kubernetes-preserve-unknown-fields": True,
}

EnvVar = Annotated[dict[str, Any], AfterValidator(_require_env_name), WithJsonSchema(ENV_VAR_SCHEMA)]
EnvName = Annotated[
    str,
    Field(min_length=1, max_length=1024, pattern=ENV_NAME_PATTERN),
    _matching(
        ENV_NAME_PATTERN,
        "an environment variable name uses letters, digits, '_', '-' and '.', not starting with a digit",
    ),
]


def _open_object(description: str) -> Any:
    """A Kubernetes object taskyard passes through to the Pod without looking inside."""
    schema = {"type": "object", "description": description, "x-kubernetes-preserve-unknown-fields": True}
    return Annotated[dict[str, Any], WithJsonSchema(schema)]


EnvFromSource = _open_object(
    "A Kubernetes EnvFromSource: a configMapRef or secretRef, with an optional prefix."
)
Toleration = _open_object("A Kubernetes Toleration.")
ResourceRequirements = _open_object("Kubernetes ResourceRequirements: requests and limits.")
LabelSelector = _open_object("A Kubernetes label selector: matchLabels, matchExpressions; {} selects all.")
DateTime = Annotated[str, Field(json_schema_extra={"format": "date-time"})]


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True)


class KeyRef(_Model):
    """A key of a ConfigMap or Secret in the Task's namespace."""

    name: str = Field(min_length=1, max_length=253, description="Name of the ConfigMap or Secret.")
    key: str = Field(min_length=1, max_length=253, description="Key whose value is the prompt.")


_EXACTLY_ONE_SOURCE = "set exactly one of spec.promptFrom.configMapKeyRef or spec.promptFrom.secretKeyRef"


class PromptSource(_Model):
    """Where to read the prompt: exactly one of configMapKeyRef or secretKeyRef."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.configMapKeyRef) != has(self.secretKeyRef)",
                    "message": _EXACTLY_ONE_SOURCE,
                }
            ]
        }
    )

    config_map_key_ref: KeyRef | None = Field(None, description="Read the prompt from a ConfigMap key.")
    secret_key_ref: KeyRef | None = Field(None, description="Read the prompt from a Secret key.")

    @model_validator(mode="after")
    def _exactly_one_source(self) -> "PromptSource":
        if (self.config_map_key_ref is None) == (self.secret_key_ref is None):
            found = "both are set" if self.config_map_key_ref else "neither is set"
            raise ValueError(f"{_EXACTLY_ONE_SOURCE} ({found})")
        return self


Quantity = Annotated[
    str,
    Field(pattern=QUANTITY_PATTERN, max_length=32),
    _matching(QUANTITY_PATTERN, "use a Kubernetes quantity such as 500Mi, 10Gi or 1Ti"),
]


class WorkspaceSpec(_Model):
    """The /workspace directory of the agent."""

    size: Quantity | None = Field(
        None,
        description="Size of a PersistentVolumeClaim for /workspace, e.g. 10Gi. "
        "Without a size, /workspace is an emptyDir that lives only as long as the Pod.",
    )
    storage_class_name: str | None = Field(
        None,
        max_length=253,
        description="StorageClass of the claim; the cluster's default StorageClass when unset.",
    )
    keep: bool = Field(
        True,
        description="Keep the claim after the Task finishes, until the Task is deleted, so its files can "
        "be inspected. When false, the claim is deleted as soon as the Task finishes.",
    )


REPOSITORY_URL_PATTERN = r"^((https?|ssh|git)://[^\s]+|[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:[^\s]+)$"
# Branch, tag and commit names as git accepts them, in the part that a pattern can say: no spaces,
# control characters or ~^:?*[\\, and not starting with '-' (it would read as an option).
GIT_REF_PATTERN = r"^[A-Za-z0-9_.][A-Za-z0-9_./+@-]*$"
_GIT_REF_RULES = [
    {"rule": "!self.contains('..')", "message": "a git ref cannot contain '..'"},
    {
        "rule": "!self.endsWith('/') && !self.endsWith('.lock')",
        "message": "a git ref cannot end in '/' or '.lock'",
    },
]
_CREDENTIALS_IN_URL = re.compile(r"^[a-z]+://[^/@]*:[^/@]*@")


def _check_git_ref(value: Any) -> Any:
    if isinstance(value, str) and (".." in value or value.endswith(("/", ".lock"))):
        raise ValueError(f"{_show(value)} is not a git ref: it cannot contain '..' or end in '/' or '.lock'")
    return value


GitRef = Annotated[
    str,
    Field(
        pattern=GIT_REF_PATTERN,
        max_length=255,
        json_schema_extra={"x-kubernetes-validations": _GIT_REF_RULES},
    ),
    _matching(
        GIT_REF_PATTERN,
        "use a branch, tag or commit name: letters, digits and . _ / + @ -, not starting with '-' or '/'",
    ),
    AfterValidator(_check_git_ref),
]


class SecretName(_Model):
    """A Secret in the Task's namespace."""

    name: str = Field(min_length=1, max_length=253, description="Name of the Secret.")


def _no_credentials_in_url(url: str) -> str:
    if _CREDENTIALS_IN_URL.match(url):
        raise ValueError(
            "the URL carries a password or token; put it in a Secret (key token) and name the Secret "
            "in spec.repository.secretRef"
        )
    return url


class RepositorySpec(_Model):
    """A git repository cloned into /workspace before the agent runs."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.push) || !self.push || has(self.branch)",
                    "message": "spec.repository.push needs spec.repository.branch: the branch to push to",
                }
            ]
        }
    )

    url: Annotated[
        str,
        Field(
            min_length=1,
            max_length=2048,
            pattern=REPOSITORY_URL_PATTERN,
            json_schema_extra={
                "x-kubernetes-validations": [
                    {
                        "rule": "!self.matches('^[a-z]+://[^/@]*:[^/@]*@')",
                        "message": "the URL carries a password or token; put it in a Secret (key token) "
                        "and name the Secret in spec.repository.secretRef",
                    }
                ]
            },
        ),
        _matching(
            REPOSITORY_URL_PATTERN,
            "use an https://, http://, ssh:// or git:// URL, or user@host:path",
        ),
        AfterValidator(_no_credentials_in_url),
    ] = Field(
        description="Where to clone from: an https://, http://, ssh:// or git:// URL, or user@host:path."
    )
    ref: GitRef | None = Field(
        None, description="Branch, tag or commit to check out; the repository's default branch when unset."
    )
    branch: GitRef | None = Field(
        None,
        description="Branch for the agent's work: checked out from the remote when it exists there, "
        "else created at ref.",
    )
    push: bool = Field(
        False, description="Commit what the agent changed on branch and push it when the agent is done."
    )
    secret_ref: SecretName | None = Field(
        None,
        description="Secret with the credentials: key token (HTTPS), or ssh-privatekey and optionally "
        "known_hosts (SSH). Mounted for the agent's container only; never part of the Task.",
    )

    @model_validator(mode="after")
    def _push_needs_branch(self) -> "RepositorySpec":
        if self.push and not self.branch:
            raise ValueError("spec.repository.push needs spec.repository.branch: the branch to push to")
        return self


MAX_TURNS_LIMIT = 10_000


class LimitsSpec(_Model):
    """Limits that stop the agent while it runs. The agent's entrypoint checks them after every event
    of the CLI's stream; the Task then fails with reason LimitExceeded, keeping its logs and result."""

    max_turns: int | None = Field(
        None, ge=1, le=MAX_TURNS_LIMIT, description="Most model turns (responses) in the conversation."
    )
    max_tokens: int | None = Field(
        None, ge=1, le=10**12, description="Most tokens, input and output together, over the conversation."
    )
    max_cost_usd: float | None = Field(
        None,
        ge=0.01,
        le=1_000_000,
        alias="maxCostUSD",
        description="Most cost in US dollars (at least 0.01), for CLIs that report cost in their stream.",
        # The schema's minimum lets a whole 0 through (it compares it as an integer); CEL does not.
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": "double(self) >= 0.01", "message": "maxCostUSD must be at least 0.01"}
            ]
        },
    )


EXACTLY_ONE_PROMPT = "set exactly one of spec.prompt or spec.promptFrom"
PROMPT_TOO_LONG = (
    f"spec.prompt is limited to {PROMPT_MAX_CHARS} characters; "
    "put a larger prompt in a ConfigMap or Secret and reference it with spec.promptFrom"
)
# Fields that may change after creation. Everything else in the spec is fixed once the Job exists, and a
# silently ignored edit would be worse than a rejected one.
MUTABLE_TASK_FIELDS = frozenset({"cancel"})


def _task_spec_schema_rules(schema: dict[str, Any], model: type[BaseModel]) -> None:
    rules: list[dict[str, str]] = [
        {"rule": "has(self.prompt) != has(self.promptFrom)", "message": EXACTLY_ONE_PROMPT}
    ]
    for name, field in model.model_fields.items():
        if name in MUTABLE_TASK_FIELDS:
            continue
        alias = field.alias or name
        rules.append(
            {
                "rule": f"has(self.{alias}) == has(oldSelf.{alias}) && "
                f"(!has(self.{alias}) || self.{alias} == oldSelf.{alias})",
                "message": f"spec.{alias} is immutable once the Task exists; only spec.cancel can change",
                "fieldPath": f".{alias}",
            }
        )
    rules.append(
        {
            "rule": "!(has(oldSelf.cancel) && oldSelf.cancel) || (has(self.cancel) && self.cancel)",
            "message": "spec.cancel cannot be unset once set",
            "fieldPath": ".cancel",
        }
    )
    schema["x-kubernetes-validations"] = rules


class TaskSpec(_Model):
    """What a Task runs: which agent, with which prompt, within which limits.

    Only spec.cancel can change once the Task exists.
    """

    model_config = ConfigDict(json_schema_extra=_task_spec_schema_rules)

    agent: Annotated[
        str,
        Field(min_length=1, max_length=253, pattern=DNS1123_SUBDOMAIN_PATTERN),
        _matching(
            DNS1123_SUBDOMAIN_PATTERN,
            "an agent name is a DNS-1123 subdomain: lowercase letters, digits, '-' and '.', "
            "starting and ending with a letter or digit",
        ),
    ] = Field(
        description="Name of the agent that runs the Task: an Agent in the Task's namespace "
        "or a ClusterAgent."
    )
    prompt: str | None = Field(
        None,
        min_length=1,
        description=f"The instructions for the agent, at most {PROMPT_MAX_CHARS} characters. The agent reads "
        "them from the file named by $TASK_PROMPT_FILE or from $TASK_PROMPT. "
        "Set exactly one of prompt or promptFrom.",
        json_schema_extra={
            "maxLength": PROMPT_SCHEMA_MAX_CHARS,
            "x-kubernetes-validations": [
                {"rule": f"size(self) <= {PROMPT_MAX_CHARS}", "message": PROMPT_TOO_LONG}
            ],
        },
    )
    prompt_from: PromptSource | None = Field(
        None,
        description="Read the prompt from a ConfigMap or Secret key in the Task's namespace, for prompts "
        f"longer than {PROMPT_MAX_CHARS} characters or ones that should stay out of the Task. "
        "Set exactly one of prompt or promptFrom.",
    )
    priority: Priority = Field(
        "medium",
        description="Order in which waiting Tasks start when capacity frees up: critical, high, medium or "
        "low. A Task that has waited long moves up, so low-priority work is never starved.",
    )
    provider: str | None = Field(
        None, max_length=63, description="Model provider, passed to the agent as $TASK_PROVIDER."
    )
    model: str | None = Field(None, max_length=253, description="Model, passed to the agent as $TASK_MODEL.")
    timeout: Duration | None = Field(
        None,
        description="Longest the Task may run, all attempts together, e.g. 90s, 30m, 2h or 1h30m. "
        "Defaults to the agent's timeout, or 1h.",
    )
    retries: int | None = Field(
        None,
        ge=0,
        le=20,
        description="How often a failed attempt is retried. Defaults to the agent's retries.",
    )
    workspace: WorkspaceSpec | None = Field(
        None, description="The /workspace directory: an emptyDir unless a size asks for a volume claim."
    )
    repository: RepositorySpec | None = Field(
        None, description="A git repository cloned into /workspace for the agent, and where its work goes."
    )
    limits: LimitsSpec | None = Field(
        None, description="Turns, tokens and cost after which the agent is stopped while it runs."
    )
    env: list[EnvVar] | None = Field(
        None,
        max_length=64,
        description="Environment variables for the agent, as Kubernetes EnvVar objects. They replace the "
        "agent's variables of the same name.",
    )
    cancel: bool = Field(
        False, description="Set to true to stop the Task, whether it waits or runs. It cannot be set back."
    )
    ttl_seconds_after_finished: int | None = Field(
        None,
        ge=0,
        le=MAX_TIMEOUT_SECONDS * 52,
        description="Delete the Task (and with it its Job, logs and claim) this many seconds after it "
        "finished. Defaults to the operator's TASKYARD_TASK_TTL_SECONDS; unset there too, the Task stays.",
    )

    @field_validator("prompt")
    @classmethod
    def _prompt_fits(cls, prompt: str | None) -> str | None:
        if prompt is not None and len(prompt) > PROMPT_MAX_CHARS:
            raise ValueError(f"{len(prompt)} characters are too many; {PROMPT_TOO_LONG}")
        return prompt

    @model_validator(mode="after")
    def _exactly_one_prompt(self) -> "TaskSpec":
        if (self.prompt is None) == (self.prompt_from is None):
            found = "both are set" if self.prompt is not None else "neither is set"
            raise ValueError(f"{EXACTLY_ONE_PROMPT} ({found})")
        return self


def _non_root_id(field: str, what: str) -> Any:
    """An optional user or group ID that may not be root, checked by the API server and here alike."""
    return (
        Annotated[
            int,
            Field(
                ge=1,
                json_schema_extra={
                    "x-kubernetes-validations": [
                        {
                            "rule": "self >= 1",
                            "message": f"{field} must be 1 or more: agents never run as root",
                        }
                    ]
                },
            ),
            _non_root(what),
        ]
        | None
    )


def check_cidr(value: str) -> str:
    """`value` when it is an address range with a prefix length; else ValueError saying what is accepted."""
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(
            f"{value!r} is not a CIDR: use an address range such as 10.0.0.0/8 or 2001:db8::/32"
        ) from None
    if "/" not in value:
        raise ValueError(f"{value!r} has no prefix length: use e.g. {value}/32")
    return value


Cidr = Annotated[str, Field(max_length=64), AfterValidator(check_cidr)]


class IPBlock(_Model):
    """An address range, as in a NetworkPolicy."""

    cidr: Cidr = Field(description="The range, e.g. 0.0.0.0/0 or 203.0.113.0/24.")
    except_: list[Cidr] | None = Field(
        None, alias="except", description="Ranges inside cidr that are not part of the peer."
    )


class NetworkPolicyPeer(_Model):
    """Where an agent may connect to: an address range, or pods chosen by labels."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.ipBlock) || has(self.namespaceSelector) || has(self.podSelector)",
                    "message": "set ipBlock, or namespaceSelector and/or podSelector",
                },
                {
                    "rule": "!has(self.ipBlock) || (!has(self.namespaceSelector) && !has(self.podSelector))",
                    "message": "ipBlock cannot be combined with namespaceSelector or podSelector",
                },
            ]
        }
    )

    ip_block: IPBlock | None = Field(None, description="An address range.")
    namespace_selector: LabelSelector | None = Field(
        None, description="Namespaces by label ({} for all); with podSelector, pods in those namespaces."
    )
    pod_selector: LabelSelector | None = Field(
        None, description="Pods by label, in the Task's namespace unless namespaceSelector is set."
    )

    @model_validator(mode="after")
    def _one_kind_of_peer(self) -> "NetworkPolicyPeer":
        selectors = self.namespace_selector is not None or self.pod_selector is not None
        if self.ip_block is None and not selectors:
            raise ValueError("set ipBlock, or namespaceSelector and/or podSelector")
        if self.ip_block is not None and selectors:
            raise ValueError("ipBlock cannot be combined with namespaceSelector or podSelector")
        return self


PortNumberOrName = Annotated[
    int | str,
    WithJsonSchema({"x-kubernetes-int-or-string": True, "description": "A port number or a named port."}),
]


class NetworkPolicyPort(_Model):
    """A port (or range of ports) an agent may connect to."""

    protocol: Literal["TCP", "UDP", "SCTP"] | None = Field(None, description="TCP when unset.")
    port: PortNumberOrName | None = Field(
        None, description="A port number or a named port; every port when unset."
    )
    end_port: int | None = Field(
        None, ge=1, le=65535, description="With a numeric port: the last port of the range."
    )


class EgressRule(_Model):
    """Connections an agent may open: to any of the peers, on any of the ports (all when unset)."""

    to: list[NetworkPolicyPeer] | None = Field(None, description="Destinations; anywhere when unset.")
    ports: list[NetworkPolicyPort] | None = Field(None, description="Ports; every port when unset.")


class AgentSecurityContext(_Model):
    """User and group IDs of the agent's Pod. Agents always run as non-root."""

    run_as_user: _non_root_id("runAsUser", "UID") = Field(
        None, description=f"UID of the agent's processes; {NON_ROOT_DEFAULT_ID} when unset."
    )
    run_as_group: _non_root_id("runAsGroup", "GID") = Field(
        None, description=f"GID of the agent's processes; {NON_ROOT_DEFAULT_ID} when unset."
    )
    fs_group: _non_root_id("fsGroup", "GID") = Field(
        None,
        description=f"Group that owns the volumes, /workspace included; {NON_ROOT_DEFAULT_ID} when unset.",
    )


PROXY_AUTH_SCHEMES = ("x-api-key", "bearer", "x-goog-api-key")
PROXY_PORT = 8484
PROXY_PLACEHOLDER_KEY = "taskyard-proxied"


class SecretKeyRef(_Model):
    """A key of a Secret in the Task's namespace."""

    name: str = Field(min_length=1, max_length=253, description="Name of the Secret.")
    key: str = Field(min_length=1, max_length=253, description="Key whose value is the API key.")


class CredentialProxySpec(_Model):
    """A proxy beside the agent that holds its model provider's API key, so the agent never does."""

    upstream: Annotated[
        str,
        Field(max_length=2048, pattern=r"^https?://[^/?#\s]+(/[^?#\s]*)?$"),
        _matching(r"^https?://[^/?#\s]+(/[^?#\s]*)?$", "an http:// or https:// URL without query"),
    ] = Field(description="The provider's base URL the proxy forwards to, e.g. https://api.anthropic.com.")
    auth: Literal["x-api-key", "bearer", "x-goog-api-key"] = Field(
        description="How the provider takes the key: the x-api-key header (Anthropic), "
        "Authorization: Bearer (OpenAI and most others) or x-goog-api-key (Gemini)."
    )
    secret_key_ref: SecretKeyRef = Field(
        description="The Secret key holding the API key; it reaches the proxy's container only."
    )
    base_url_env: EnvName = Field(
        description="The CLI's base-URL variable, set to the proxy (http://127.0.0.1:8484), "
        "e.g. ANTHROPIC_BASE_URL."
    )
    api_key_env: EnvName | None = Field(
        None,
        description=f"The CLI's API-key variable, set to the placeholder {PROXY_PLACEHOLDER_KEY!r} so the "
        "CLI starts; the proxy replaces it with the real key.",
    )
    image: str | None = Field(
        None, description="Image of the proxy's container; the agent's image (taskyard's images have it)."
    )


class AgentSpec(_Model):
    """How to run an agent: its image and the Pod settings every Task of this agent gets."""

    image: str = Field(min_length=1, description="Container image of the agent.")
    command: list[str] | None = Field(None, description="Entrypoint; the image's ENTRYPOINT when unset.")
    args: list[str] | None = Field(
        None, description="Arguments to the entrypoint; the image's CMD when unset."
    )
    env: list[EnvVar] | None = Field(
        None, description="Environment variables for every Task of this agent, as Kubernetes EnvVar objects."
    )
    env_from: list[EnvFromSource] | None = Field(
        None, description="ConfigMaps and Secrets whose keys become environment variables, e.g. API keys."
    )
    credential_proxy: CredentialProxySpec | None = Field(
        None,
        description="Keep the model provider's API key out of the agent's container: a proxy beside it "
        "adds the key to each request. Its base-URL and API-key variables are the Agent's; a Task cannot "
        "replace them.",
    )
    overridable_env: list[EnvName] | None = Field(
        None,
        max_length=64,
        description="Names of variables in env that a Task's spec.env may replace. The others are the "
        "Agent's: a Task that sets one is refused (by the chart's admission policy when it is applied, "
        "and by the operator before it starts).",
    )
    resources: ResourceRequirements | None = Field(
        None,
        description="CPU, memory and ephemeral-storage requests and limits of the agent container; "
        "requests 100m CPU and 128Mi memory, limits 1 CPU and 512Mi memory when unset. An "
        "ephemeral-storage limit of 4Gi is added unless one is given.",
    )
    workspace_size_limit: Quantity | None = Field(
        None,
        description="Most the emptyDir /workspace of a Task without a claim may hold; the kubelet evicts "
        "the pod beyond it. 2Gi when unset.",
    )
    timeout: Duration | None = Field(
        None,
        description="Longest a Task of this agent may run when the Task sets no timeout, e.g. 30m; "
        "1h when unset.",
    )
    retries: int = Field(
        0, ge=0, le=20, description="How often a failed attempt is retried when the Task does not say."
    )
    non_retryable_exit_codes: list[Annotated[int, Field(ge=1, le=255)]] = Field(
        [],
        max_length=32,
        description="Exit codes that mean retrying cannot help, e.g. a rejected prompt; "
        "the Task fails at once.",
    )
    max_concurrent: int | None = Field(
        None, ge=1, description="Most Tasks of this agent that run at once; further Tasks wait in the queue."
    )
    service_account_name: str | None = Field(
        None,
        max_length=253,
        description=f"ServiceAccount of the agent's Pod. When unset, {AGENT_SERVICE_ACCOUNT}: one the "
        "operator creates in the Task's namespace, without an API token and bound to no role. Another "
        "one must be listed in the chart's agentServiceAccounts, or the Job is refused.",
    )
    automount_service_account_token: bool = Field(
        False, description="Mount an API token into the agent's Pod. Off, as agents rarely need the API."
    )
    termination_grace_period_seconds: int = Field(
        10, ge=0, le=3600, description="Seconds the agent has to exit after SIGTERM, e.g. on cancel."
    )
    node_selector: dict[str, str] | None = Field(None, description="Node labels the agent's Pod must run on.")
    tolerations: list[Toleration] | None = Field(None, description="Taints the agent's Pod tolerates.")
    scheduler_name: str | None = Field(
        None,
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description="Scheduler that places the agent's Pod, for clusters with a batch scheduler "
        "(Volcano, YuniKorn); the default scheduler when unset.",
    )
    security_context: AgentSecurityContext | None = Field(
        None, description=f"User and group IDs of the agent; all default to {NON_ROOT_DEFAULT_ID}."
    )
    egress: list[EgressRule] | None = Field(
        None,
        max_length=64,
        description="Where the agent's pods may connect, as NetworkPolicy egress rules, in place of the "
        "operator's default (DNS and the public internet, not the cluster's own addresses). [] allows "
        "nothing. Applied by a NetworkPolicy the operator keeps per namespace and Agent; enforced where the "
        "cluster's network plugin enforces NetworkPolicies.",
    )
    read_only_root_filesystem: bool = Field(
        True,
        description="Run the agent on a read-only root filesystem; it may write only to /workspace, /tmp "
        "and its home /home/agent (HOME, unless the Agent sets it), which become emptyDirs. Set false for an "
        "image that must write elsewhere.",
    )

    @model_validator(mode="after")
    def _proxy_variables_are_the_proxys(self) -> "AgentSpec":
        proxy = self.credential_proxy
        if proxy is None:
            return self
        own = {proxy.base_url_env: "baseUrlEnv", proxy.api_key_env: "apiKeyEnv"}
        for entry in self.env or []:
            if entry["name"] in own:
                raise ValueError(
                    f"env sets {entry['name']}, which credentialProxy.{own[entry['name']]} gives the agent "
                    "(the proxy's address or the placeholder key); remove it from env, and put another "
                    "endpoint into credentialProxy.upstream"
                )
        return self


class Condition(_Model):
    """One aspect of the Task's state, in the usual Kubernetes condition form."""

    type: str = Field(description="Kind of condition, e.g. Ready.")
    status: Literal["True", "False", "Unknown"] = Field(description="Whether the condition holds.")
    reason: str | None = Field(None, description="CamelCase reason for the last transition.")
    message: str | None = Field(None, description="Human-readable details of the last transition.")
    last_transition_time: DateTime | None = Field(None, description="When the status last changed.")
    observed_generation: int | None = Field(
        None, ge=0, description="metadata.generation the condition was computed from."
    )


class TaskUsage(_Model):
    """What the agent's run cost, as its CLI reported it."""

    input_tokens: int | None = Field(
        None, ge=0, description="Tokens sent to the model, cached ones included."
    )
    output_tokens: int | None = Field(None, ge=0, description="Tokens the model produced.")
    cost_usd: float | None = Field(
        None, ge=0, alias="costUSD", description="Cost in US dollars, where the CLI reports it."
    )
    turns: int | None = Field(None, ge=0, description="Model turns (responses) in the conversation.")


class TaskResult(_Model):
    """What the agent reported at the end of its last attempt (the entrypoint's result record, or the
    termination message of an agent without it as the summary)."""

    summary: str | None = Field(None, description="The agent's final message, its last 2,000 characters.")
    branch: str | None = Field(None, description="The git branch the agent's work is on.")
    commit: str | None = Field(None, description="The commit the workspace ended at.")
    pushed: bool | None = Field(None, description="Whether that commit was pushed to the branch.")
    changed_files: list[str] | None = Field(
        None, description="Files changed from the commit the agent started at."
    )
    changed_files_truncated: bool | None = Field(
        None, description="True when changedFiles lists only the first of them."
    )
    usage: TaskUsage | None = Field(None, description="Tokens, cost and turns.")
    limit: str | None = Field(None, description="The limit that stopped the agent, if one did.")
    error: str | None = Field(None, description="How the agent ended when it did not succeed.")


class TaskStatus(_Model):
    """What the operator observed about the Task. Written by the operator only."""

    phase: Phase | None = Field(
        None,
        description="Pending, Queued, Running, Cancelling, Succeeded, Failed or Cancelled; the last three "
        "are final.",
    )
    reason: str | None = Field(None, description="CamelCase reason for the current phase.")
    message: str | None = Field(None, description="Human-readable details of the current phase.")
    conditions: list[Condition] | None = Field(
        None,
        description="Conditions of the Task.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    job_name: str | None = Field(None, description="Name of the Job that runs the Task.")
    pod_name: str | None = Field(None, description="Name of the Pod of the latest attempt.")
    attempts: int | None = Field(None, ge=0, description="Attempts started so far.")
    queued_at: DateTime | None = Field(None, description="When the Task started waiting for capacity.")
    start_time: DateTime | None = Field(None, description="When the Job was created.")
    completion_time: DateTime | None = Field(None, description="When the Task reached a final phase.")
    duration: str | None = Field(None, description="Run time from start to completion, e.g. 2m5s.")
    exit_code: int | None = Field(None, description="Exit code of the agent container's last attempt.")
    log_tail: str | None = Field(None, description="Last lines the agent wrote, for a quick look.")
    result: TaskResult | None = Field(
        None, description="What the agent reported: its final message, changes and usage."
    )
    workspace: str | None = Field(None, description="Name of the PersistentVolumeClaim holding /workspace.")
    observed_generation: int | None = Field(
        None, ge=0, description="metadata.generation the status was computed from."
    )


class SpecError(ValueError):
    """A spec taskyard cannot use. `problems` holds one readable line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def _field_path(root: str, loc: tuple[int | str, ...]) -> str:
    path = root
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def _describe(error: ValidationError, root: str) -> list[str]:
    problems = []
    for item in error.errors(include_url=False):
        path = _field_path(root, item["loc"])
        if item["type"] == "missing":
            problems.append(f"{path} is required")
        elif item["type"] == "value_error":
            # Our own validators write complete sentences; a model-level one names its fields itself.
            reason = str(item.get("ctx", {}).get("error", item["msg"]))
            problems.append(f"{path}: {reason}" if item["loc"] else reason)
        else:
            accepted = item["msg"][:1].lower() + item["msg"][1:]
            problems.append(f"{path}: {_show(item['input'])} is invalid; {accepted}")
    return problems


def parse_task_spec(spec: dict[str, Any]) -> TaskSpec:
    """Parse a Task's spec as stored by the API server; raises SpecError naming each bad field."""
    try:
        return TaskSpec.model_validate(spec)
    except ValidationError as error:
        raise SpecError(_describe(error, "spec")) from None


def parse_agent_spec(spec: dict[str, Any]) -> AgentSpec:
    """Parse an Agent's or ClusterAgent's spec; raises SpecError naming each bad field."""
    try:
        return AgentSpec.model_validate(spec)
    except ValidationError as error:
        raise SpecError(_describe(error, "spec")) from None
