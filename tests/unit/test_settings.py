"""Operator settings read from TASKYARD_* environment variables."""

import re

import pytest

from taskyard.settings import OperatorSettings

pytestmark = pytest.mark.unit

LIMIT_VARIABLES = {
    "TASKYARD_MAX_CONCURRENT": "max_concurrent",
    "TASKYARD_MAX_CONCURRENT_PER_NAMESPACE": "max_concurrent_per_namespace",
    "TASKYARD_MAX_CONCURRENT_PER_AGENT": "max_concurrent_per_agent",
}
LIMIT_HINT = "expected a whole number of Tasks (0 or unset means no limit)"
SECONDS_HINT = "expected a number of seconds (0 disables aging)"

# What the Deployment of the operator sets besides taskyard's own variables.
POD_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "HOSTNAME": "taskyard-operator-6d5f8b7c9-abcde",
    "KUBERNETES_SERVICE_HOST": "10.96.0.1",
    "KUBERNETES_SERVICE_PORT": "443",
}


def settings(**variables):
    return OperatorSettings.from_env({**POD_ENV, **variables})


def test_defaults_without_any_variable():
    loaded = settings()
    assert loaded == OperatorSettings()
    assert loaded.max_concurrent is None
    assert loaded.max_concurrent_per_namespace is None
    assert loaded.max_concurrent_per_agent is None
    assert loaded.aging_seconds == 600.0


def test_every_variable_is_read():
    loaded = settings(
        TASKYARD_MAX_CONCURRENT="20",
        TASKYARD_MAX_CONCURRENT_PER_NAMESPACE="5",
        TASKYARD_MAX_CONCURRENT_PER_AGENT="2",
        TASKYARD_AGING_SECONDS="120",
    )
    assert loaded == OperatorSettings(
        max_concurrent=20,
        max_concurrent_per_namespace=5,
        max_concurrent_per_agent=2,
        aging_seconds=120.0,
    )


@pytest.mark.parametrize(("variable", "field"), sorted(LIMIT_VARIABLES.items()))
def test_each_limit_is_read_on_its_own(variable, field):
    loaded = settings(**{variable: "3"})
    assert getattr(loaded, field) == 3
    for other in set(LIMIT_VARIABLES.values()) - {field}:
        assert getattr(loaded, other) is None


@pytest.mark.parametrize(("variable", "field"), sorted(LIMIT_VARIABLES.items()))
@pytest.mark.parametrize("raw", ["0", "", "   ", " 0 "])
def test_zero_or_empty_limit_means_unlimited(variable, field, raw):
    assert getattr(settings(**{variable: raw}), field) is None


@pytest.mark.parametrize("raw", ["00", "+0", "-0"])
def test_zero_written_another_way_also_means_unlimited(raw):
    # A limit of 0 would admit no Task at all; the documented meaning of 0 is "no limit".
    assert settings(TASKYARD_MAX_CONCURRENT=raw).max_concurrent is None


def test_limit_around_whitespace_is_read():
    assert settings(TASKYARD_MAX_CONCURRENT=" 12\n").max_concurrent == 12


@pytest.mark.parametrize("variable", sorted(LIMIT_VARIABLES))
@pytest.mark.parametrize("raw", ["-1", "ten", "2.5", "5 tasks", "1e3", "0x10"])
def test_bad_limit_is_reported_with_the_variable_and_what_it_accepts(variable, raw):
    with pytest.raises(ValueError, match=re.escape(f"{variable}={raw!r}: {LIMIT_HINT}")):
        settings(**{variable: raw})


@pytest.mark.parametrize(
    ("raw", "seconds"), [("120", 120.0), ("90.5", 90.5), (" 3600 ", 3600.0), ("1e3", 1000.0)]
)
def test_aging_seconds_is_read(raw, seconds):
    assert settings(TASKYARD_AGING_SECONDS=raw).aging_seconds == seconds


def test_aging_seconds_zero_disables_aging_rather_than_meaning_the_default():
    assert settings(TASKYARD_AGING_SECONDS="0").aging_seconds == 0.0


@pytest.mark.parametrize("raw", ["", "  "])
def test_empty_aging_seconds_is_the_default(raw):
    assert settings(TASKYARD_AGING_SECONDS=raw).aging_seconds == 600.0


@pytest.mark.parametrize("raw", ["10m", "ten", "1h30m", "600s"])
def test_bad_aging_seconds_is_reported_with_the_variable_and_what_it_accepts(raw):
    with pytest.raises(ValueError, match=re.escape(f"TASKYARD_AGING_SECONDS={raw!r}: {SECONDS_HINT}")):
        settings(TASKYARD_AGING_SECONDS=raw)


def test_aging_seconds_that_is_not_a_number_is_rejected():
    # float("nan") parses, but is no number of seconds: the queue's int(waited // nan) fails later.
    with pytest.raises(ValueError, match=re.escape(f"TASKYARD_AGING_SECONDS='nan': {SECONDS_HINT}")):
        settings(TASKYARD_AGING_SECONDS="nan")


def test_from_env_reads_the_process_environment_by_default(monkeypatch):
    monkeypatch.setenv("TASKYARD_MAX_CONCURRENT", "7")
    monkeypatch.delenv("TASKYARD_MAX_CONCURRENT_PER_NAMESPACE", raising=False)
    loaded = OperatorSettings.from_env()
    assert loaded.max_concurrent == 7
    assert loaded.max_concurrent_per_namespace is None


def test_metrics_port_defaults_to_8000_and_zero_turns_it_off():
    assert settings().metrics_port == 8000
    assert settings(TASKYARD_METRICS_PORT="9102").metrics_port == 9102
    assert settings(TASKYARD_METRICS_PORT="0").metrics_port == 0


@pytest.mark.parametrize("raw", ["http", "-1", "65536", "80.5"])
def test_bad_metrics_port_is_reported_with_the_variable_and_what_it_accepts(raw):
    expected = f"TASKYARD_METRICS_PORT={raw!r}: expected a TCP port from 1 to 65535, or 0 to turn it off"
    with pytest.raises(ValueError, match=re.escape(expected)):
        settings(TASKYARD_METRICS_PORT=raw)


def test_the_control_loop_settings_have_their_documented_defaults():
    settings = OperatorSettings.from_env({})
    assert (settings.workers, settings.request_timeout_seconds, settings.reconcile_deadline_seconds) == (
        16,
        30,
        90,
    )
    assert (settings.log_read_seconds, settings.resync_seconds, settings.job_retention_seconds) == (
        20,
        300,
        3600,
    )
    assert (settings.image_pull_patience_seconds, settings.startup_deadline_seconds) == (300, 600)
    assert (settings.retry_base_seconds, settings.retry_max_seconds) == (1, 300)
    assert (settings.stall_seconds, settings.sync_deadline_seconds, settings.task_ttl_seconds) == (
        120,
        600,
        None,
    )


@pytest.mark.parametrize(
    ("name", "raw", "field", "value"),
    [
        ("TASKYARD_WORKERS", "4", "workers", 4),
        ("TASKYARD_REQUEST_TIMEOUT_SECONDS", "2.5", "request_timeout_seconds", 2.5),
        ("TASKYARD_JOB_RETENTION_SECONDS", "0", "job_retention_seconds", 0.0),
        ("TASKYARD_TASK_TTL_SECONDS", "86400", "task_ttl_seconds", 86400.0),
        ("TASKYARD_TASK_TTL_SECONDS", "0", "task_ttl_seconds", 0.0),
        ("TASKYARD_STARTUP_DEADLINE_SECONDS", "15", "startup_deadline_seconds", 15.0),
    ],
)
def test_control_loop_settings_are_read(name, raw, field, value):
    assert getattr(OperatorSettings.from_env({name: raw}), field) == value


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("TASKYARD_WORKERS", "0"),
        ("TASKYARD_WORKERS", "many"),
        ("TASKYARD_REQUEST_TIMEOUT_SECONDS", "0"),
        ("TASKYARD_RESYNC_SECONDS", "-1"),
        ("TASKYARD_STALL_SECONDS", "inf"),
        ("TASKYARD_TASK_TTL_SECONDS", "a day"),
    ],
)
def test_bad_control_loop_settings_name_the_variable(name, raw):
    with pytest.raises(ValueError, match=rf"^{name}={raw!r}: expected"):
        OperatorSettings.from_env({name: raw})


def test_egress_settings_are_read():
    settings = OperatorSettings.from_env(
        {
            "TASKYARD_EGRESS_POLICY": "false",
            "TASKYARD_EGRESS_DENIED_CIDRS": "10.0.0.0/8, fd00::/8",
            "TASKYARD_EGRESS_ALLOW_DNS": "False",
        }
    )
    assert settings.egress_policy is False and settings.egress_allow_dns is False
    assert settings.egress_denied_cidrs == ("10.0.0.0/8", "fd00::/8")
    assert OperatorSettings.from_env({}).egress_policy is True
    assert "169.254.0.0/16" in OperatorSettings.from_env({}).egress_denied_cidrs


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TASKYARD_EGRESS_POLICY": "yes"}, "TASKYARD_EGRESS_POLICY='yes': expected true or false"),
        ({"TASKYARD_EGRESS_DENIED_CIDRS": "10.0.0.1"}, "'10.0.0.1' has no prefix length"),
        ({"TASKYARD_EGRESS_DENIED_CIDRS": "10.0.0.0/8,nope"}, "'nope' is not a CIDR"),
        ({"TASKYARD_EGRESS_DENIED_CIDRS": "0.0.0.0/0"}, "would deny every address"),
    ],
)
def test_bad_egress_settings_name_the_variable_and_what_is_accepted(env, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        OperatorSettings.from_env(env)
