"""The API models: durations, parsing of live specs, defaults and readable errors."""

import itertools
import re

import pytest

from taskyard import api
from taskyard.api import SpecError, format_duration, parse_agent_spec, parse_duration, parse_task_spec

pytestmark = pytest.mark.unit

DURATION_HINT = "use a number with h, m or s, e.g. 90s, 30m, 2h, 1h30m"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("30m", 1800),
        ("2h", 7200),
        ("1h30m", 5400),
        ("1h0m30s", 3630),
        ("1m30s", 90),
        ("10h5s", 36005),
        ("0h1s", 1),
        ("100000s", 100000),
    ],
)
def test_parse_duration_accepts_go_like_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text",
    [
        "",
        "5",
        "5x",
        "h",
        "1m1h",
        "1s1m",
        "1h1h",
        "-5s",
        "+5s",
        "1.5h",
        "1h 30m",
        " 1h",
        "1h\n",
        "1d",
        "1H",
        "\uff11s",  # a fullwidth digit: Unicode digits are not durations
        "s1",
    ],
)
def test_parse_duration_rejects_other_text_with_the_documented_message(text):
    with pytest.raises(ValueError) as raised:
        parse_duration(text)
    assert str(raised.value) == f"timeout: {text!r} is not a duration; {DURATION_HINT}"


@pytest.mark.parametrize("text", ["0s", "0m", "0h0m0s", "00s"])
def test_parse_duration_rejects_zero(text):
    with pytest.raises(ValueError, match=rf"^timeout: '{text}' is zero; use a duration longer than that"):
        parse_duration(text)


@pytest.mark.parametrize("text", ["169h", "99999999h", "168h1s", "10081m"])
def test_parse_duration_rejects_more_than_a_week(text):
    with pytest.raises(ValueError, match=rf"^timeout: '{text}' is longer than the longest timeout, 168h"):
        parse_duration(text)


def test_a_week_is_the_longest_timeout():
    assert parse_duration("168h") == parse_duration("10080m") == 7 * 24 * 3600


@pytest.mark.parametrize("name", ["1ABC", "A=B", "has space", "", "ÄPFEL"])
def test_environment_variable_names_are_checked(name):
    with pytest.raises(ValueError):
        api.TaskSpec.model_validate({"agent": "a", "prompt": "p", "env": [{"name": name, "value": "x"}]})


def test_duration_pattern_accepts_exactly_what_parse_duration_accepts_or_finds_zero():
    """The CRD pattern and the parser must agree; only the zero and the upper bound are left to code
    (and CEL rules)."""
    pattern = re.compile(api.DURATION_PATTERN)
    for length in range(1, 6):
        for chars in itertools.product("01hms", repeat=length):
            text = "".join(chars)
            try:
                parse_duration(text)
                parses = True
            except ValueError as error:
                parses = "is zero" in str(error) or "longer than the longest" in str(error)
            assert bool(pattern.search(text)) == parses, text
    assert pattern.search("") is None


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (45, "45s"),
        (60, "1m0s"),
        (125, "2m5s"),
        (3600, "1h0m0s"),
        (3723, "1h2m3s"),
        (59.9, "59s"),
        (-3, "0s"),
        (90061, "25h1m1s"),
    ],
)
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_format_duration_round_trips_through_parse_duration():
    for seconds in range(1, 20000, 37):
        assert parse_duration(format_duration(seconds)) == seconds


def test_priorities_are_ordered_highest_first():
    assert api.PRIORITIES == ("critical", "high", "medium", "low")


def test_task_spec_defaults():
    spec = parse_task_spec({"agent": "coder", "prompt": "fix the bug"})
    assert spec.agent == "coder"
    assert spec.prompt == "fix the bug"
    assert spec.prompt_from is None
    assert spec.priority == "medium"
    assert spec.cancel is False
    assert spec.retries is None
    assert spec.timeout is None
    assert spec.workspace is None
    assert spec.env is None


def test_task_spec_reads_camel_case_and_ignores_unknown_fields():
    spec = parse_task_spec(
        {
            "agent": "coder.team-a",
            "promptFrom": {"secretKeyRef": {"name": "prompts", "key": "task-1"}},
            "priority": "critical",
            "provider": "anthropic",
            "model": "claude",
            "timeout": "1h30m",
            "retries": 0,
            "workspace": {"size": "10Gi", "storageClassName": "fast"},
            "env": [
                {"name": "A", "value": "1"},
                {"name": "B", "valueFrom": {"fieldRef": {"fieldPath": "x"}}},
            ],
            "cancel": True,
            "futureField": {"anything": 1},
        }
    )
    assert spec.prompt_from.secret_key_ref == api.KeyRef(name="prompts", key="task-1")
    assert spec.prompt_from.config_map_key_ref is None
    assert spec.retries == 0
    assert spec.workspace.size == "10Gi"
    assert spec.workspace.storage_class_name == "fast"
    assert spec.workspace.keep is True
    assert spec.env[1] == {"name": "B", "valueFrom": {"fieldRef": {"fieldPath": "x"}}}
    assert spec.cancel is True


def test_prompt_of_exactly_the_limit_counts_characters_not_bytes():
    spec = parse_task_spec({"agent": "coder", "prompt": "é" * api.PROMPT_MAX_CHARS})
    assert len(spec.prompt) == api.PROMPT_MAX_CHARS


def test_oversize_prompt_names_the_limit_and_the_way_out_without_echoing_the_prompt():
    with pytest.raises(SpecError) as raised:
        parse_task_spec({"agent": "coder", "prompt": "x" * (api.PROMPT_MAX_CHARS + 1)})
    message = str(raised.value)
    assert message.startswith("spec.prompt: 32769 characters are too many; ")
    assert "spec.prompt is limited to 32768 characters" in message
    assert "spec.promptFrom" in message
    assert len(message) < 400


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"agent": "coder"}, "set exactly one of spec.prompt or spec.promptFrom (neither is set)"),
        (
            {"agent": "coder", "prompt": "x", "promptFrom": {"configMapKeyRef": {"name": "a", "key": "b"}}},
            "set exactly one of spec.prompt or spec.promptFrom (both are set)",
        ),
        (
            {"agent": "coder", "promptFrom": {}},
            "spec.promptFrom: set exactly one of spec.promptFrom.configMapKeyRef or "
            "spec.promptFrom.secretKeyRef (neither is set)",
        ),
        ({"prompt": "x"}, "spec.agent is required"),
        (
            {"agent": "coder", "prompt": "x", "timeout": "5x"},
            f"spec.timeout: '5x' is not a duration; {DURATION_HINT}",
        ),
        (
            {"agent": "coder", "prompt": "x", "timeout": "0m"},
            "spec.timeout: '0m' is zero; use a duration longer than that, e.g. 90s, 30m, 2h, 1h30m",
        ),
        (
            {"agent": "coder", "prompt": "x", "priority": "urgent"},
            "spec.priority: 'urgent' is invalid; input should be 'critical', 'high', 'medium' or 'low'",
        ),
        (
            {"agent": "Coder_1", "prompt": "x"},
            "spec.agent: 'Coder_1' is not accepted; an agent name is a DNS-1123 subdomain",
        ),
        (
            {"agent": "coder", "prompt": "x", "retries": 21},
            "spec.retries: 21 is invalid; input should be less than or equal to 20",
        ),
        (
            {"agent": "coder", "prompt": "x", "workspace": {"size": "10K"}},
            "spec.workspace.size: '10K' is not accepted; "
            "use a Kubernetes quantity such as 500Mi, 10Gi or 1Ti",
        ),
        (
            {"agent": "coder", "prompt": "x", "env": [{"name": "A"}, {"value": "1"}]},
            "spec.env[1]: {'value': '1'} has no name; every environment variable needs a non-empty name",
        ),
        (
            {"agent": "coder", "prompt": ""},
            "spec.prompt: '' is invalid; string should have at least 1 character",
        ),
    ],
)
def test_task_spec_errors_name_the_field_the_value_and_what_is_accepted(spec, expected):
    with pytest.raises(SpecError) as raised:
        parse_task_spec(spec)
    assert str(raised.value).startswith(expected)


def test_every_problem_is_reported_at_once():
    with pytest.raises(SpecError) as raised:
        parse_task_spec({"agent": "coder", "prompt": "x", "retries": -1, "timeout": "soon"})
    assert [problem.split(":")[0] for problem in raised.value.problems] == ["spec.timeout", "spec.retries"]


def test_spec_error_is_a_value_error():
    with pytest.raises(ValueError):
        parse_task_spec({})


def test_agent_spec_defaults():
    agent = parse_agent_spec({"image": "ghcr.io/example/agent:1"})
    assert agent.image == "ghcr.io/example/agent:1"
    assert agent.retries == 0
    assert agent.non_retryable_exit_codes == []
    assert agent.automount_service_account_token is False
    assert agent.termination_grace_period_seconds == 10
    assert agent.timeout is None
    assert agent.security_context is None
    assert agent.max_concurrent is None


def test_agent_spec_reads_kubernetes_objects_as_given():
    resources = {"requests": {"cpu": "500m"}, "limits": {"memory": "1Gi"}}
    agent = parse_agent_spec(
        {
            "image": "agent",
            "envFrom": [{"secretRef": {"name": "api-keys"}}],
            "resources": resources,
            "tolerations": [{"key": "gpu", "operator": "Exists"}],
            "nodeSelector": {"pool": "agents"},
            "nonRetryableExitCodes": [3, 2],
            "securityContext": {"runAsUser": 1000},
            "maxConcurrent": 4,
        }
    )
    assert agent.env_from == [{"secretRef": {"name": "api-keys"}}]
    assert agent.resources == resources
    assert agent.tolerations == [{"key": "gpu", "operator": "Exists"}]
    assert agent.node_selector == {"pool": "agents"}
    assert agent.non_retryable_exit_codes == [3, 2]
    assert agent.security_context.run_as_user == 1000
    assert agent.security_context.fs_group is None
    assert agent.max_concurrent == 4


@pytest.mark.parametrize("field", ["runAsUser", "runAsGroup", "fsGroup"])
def test_agent_may_not_run_as_root(field):
    with pytest.raises(SpecError) as raised:
        parse_agent_spec({"image": "agent", "securityContext": {field: 0}})
    message = str(raised.value)
    assert message.startswith(f"spec.securityContext.{field}: 0 is not allowed; ")
    assert "root" in message
    assert "1 or more" in message


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({}, "spec.image is required"),
        ({"image": ""}, "spec.image: '' is invalid; string should have at least 1 character"),
        (
            {"image": "a", "nonRetryableExitCodes": [0]},
            "spec.nonRetryableExitCodes[0]: 0 is invalid; input should be greater than or equal to 1",
        ),
        (
            {"image": "a", "nonRetryableExitCodes": [256]},
            "spec.nonRetryableExitCodes[0]: 256 is invalid; input should be less than or equal to 255",
        ),
        (
            {"image": "a", "maxConcurrent": 0},
            "spec.maxConcurrent: 0 is invalid; input should be greater than",
        ),
        (
            {"image": "a", "terminationGracePeriodSeconds": 3601},
            "spec.terminationGracePeriodSeconds: 3601 is",
        ),
        ({"image": "a", "timeout": "1m1h"}, f"spec.timeout: '1m1h' is not a duration; {DURATION_HINT}"),
    ],
)
def test_agent_spec_errors(spec, expected):
    with pytest.raises(SpecError) as raised:
        parse_agent_spec(spec)
    assert str(raised.value).startswith(expected)


def test_task_status_model_reads_what_the_operator_writes():
    status = api.TaskStatus.model_validate(
        {
            "phase": "Running",
            "attempts": 2,
            "jobName": "t",
            "conditions": [
                {"type": "Ready", "status": "False", "lastTransitionTime": "2024-01-01T00:00:00Z"}
            ],
        }
    )
    assert status.phase == "Running"
    assert status.attempts == 2
    assert status.conditions[0].last_transition_time == "2024-01-01T00:00:00Z"
    assert set(api.PHASES) == {
        "Pending",
        "Queued",
        "Running",
        "Cancelling",
        "Succeeded",
        "Failed",
        "Cancelled",
    }


# Repository and limits


@pytest.mark.parametrize(
    "url",
    [
        "https://git.example.com/team/repo.git",
        "http://git-server.team-a.svc:8080/repo.git",
        "ssh://git@git.example.com/team/repo.git",
        "git://git.example.com/repo",
        "git@github.com:team/repo.git",
        "https://x-access-token@git.example.com/repo.git",  # a user name alone is not a secret
    ],
)
def test_repository_urls_that_git_clones_are_accepted(url):
    spec = parse_task_spec({"agent": "coder", "prompt": "x", "repository": {"url": url}})
    assert spec.repository.url == url
    assert spec.repository.push is False


@pytest.mark.parametrize(
    ("repository", "expected"),
    [
        (
            {"url": "/srv/repo"},
            "spec.repository.url: '/srv/repo' is not accepted; use an https://, http://, ssh:// or git://",
        ),
        (
            {"url": "https://me:ghp_secret@github.com/team/repo.git"},
            "spec.repository.url: the URL carries a password or token; put it in a Secret (key token)",
        ),
        (
            {"url": "https://g/r.git", "push": True},
            "spec.repository: spec.repository.push needs spec.repository.branch",
        ),
        (
            {"url": "https://g/r.git", "branch": "-x"},
            "spec.repository.branch: '-x' is not accepted; use a branch, tag or commit name",
        ),
        (
            {"url": "https://g/r.git", "ref": "main..dev"},
            "spec.repository.ref: 'main..dev' is not a git ref: it cannot contain '..'",
        ),
        (
            {"url": "https://g/r.git", "branch": "work/"},
            "spec.repository.branch: 'work/' is not a git ref",
        ),
        (
            {"url": "https://g/r.git", "secretRef": {}},
            "spec.repository.secretRef.name is required",
        ),
    ],
)
def test_repository_errors_name_the_field_and_what_is_accepted(repository, expected):
    with pytest.raises(SpecError) as raised:
        parse_task_spec({"agent": "coder", "prompt": "x", "repository": repository})
    assert str(raised.value).startswith(expected), str(raised.value)


def test_repository_and_limits_read_as_written():
    spec = parse_task_spec(
        {
            "agent": "coder",
            "prompt": "x",
            "repository": {
                "url": "https://g/r.git",
                "ref": "v1.2.0",
                "branch": "taskyard/fix-1",
                "push": True,
                "secretRef": {"name": "git-token"},
            },
            "limits": {"maxTurns": 30, "maxTokens": 200000, "maxCostUSD": 2.5},
        }
    )
    assert spec.repository.ref == "v1.2.0"
    assert spec.repository.branch == "taskyard/fix-1"
    assert spec.repository.secret_ref.name == "git-token"
    assert (spec.limits.max_turns, spec.limits.max_tokens, spec.limits.max_cost_usd) == (30, 200000, 2.5)


@pytest.mark.parametrize(
    ("limits", "expected"),
    [
        ({"maxTurns": 0}, "spec.limits.maxTurns: 0 is invalid; input should be greater than or equal to 1"),
        (
            {"maxTokens": -5},
            "spec.limits.maxTokens: -5 is invalid; input should be greater than or equal to 1",
        ),
        (
            {"maxCostUSD": 0},
            "spec.limits.maxCostUSD: 0 is invalid; input should be greater than or equal to 0.01",
        ),
        ({"maxTurns": "many"}, "spec.limits.maxTurns: 'many' is invalid; input should be a valid integer"),
    ],
)
def test_limit_errors_name_the_field(limits, expected):
    with pytest.raises(SpecError) as raised:
        parse_task_spec({"agent": "coder", "prompt": "x", "limits": limits})
    assert str(raised.value).startswith(expected), str(raised.value)
