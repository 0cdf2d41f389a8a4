"""Reading what an agent reported (the entrypoint's result record) into status.result."""

from __future__ import annotations

import json

import pytest

from taskyard.results import failure_of, parse_record, task_result

pytestmark = pytest.mark.unit


def record(**fields: object) -> str:
    return json.dumps({"taskyard": 1, **fields})


def test_the_entrypoints_record_becomes_the_result():
    message = record(
        summary="Added notes.txt.",
        branch="agent/notes",
        commit="4b1f0c2d9e",
        pushed=True,
        changedFiles=["notes.txt", "src/app.py"],
        usage={"inputTokens": 1200, "outputTokens": 80, "costUSD": 0.01234567, "turns": 3},
    )
    assert task_result(message, 0) == {
        "summary": "Added notes.txt.",
        "branch": "agent/notes",
        "commit": "4b1f0c2d9e",
        "pushed": True,
        "changedFiles": ["notes.txt", "src/app.py"],
        "usage": {"inputTokens": 1200, "outputTokens": 80, "costUSD": 0.012346, "turns": 3},
    }


def test_a_record_is_read_whatever_the_exit_code_so_a_stopped_agent_keeps_its_partial_result():
    message = record(
        summary="halfway", limit="maxTurns: 4 turns, more than the limit of 3", usage={"turns": 4}
    )
    assert task_result(message, 121) == {
        "summary": "halfway",
        "limit": "maxTurns: 4 turns, more than the limit of 3",
        "usage": {"turns": 4},
    }


def test_fields_of_the_wrong_type_are_dropped_never_trusted():
    message = record(
        summary=["not", "text"],
        branch=7,
        pushed="yes",
        changedFiles=["ok.txt", 3, None],
        usage={"inputTokens": -5, "outputTokens": True, "costUSD": float("nan"), "turns": "2"},
    )
    assert task_result(message, 0) == {"changedFiles": ["ok.txt"]}


def test_plain_text_is_the_summary_of_an_attempt_that_succeeded():
    assert task_result("all 12 tests pass", 0) == {"summary": "all 12 tests pass"}
    assert task_result("x" * 5000, 0) == {"summary": "x" * 2000}
    # A failed attempt's termination message is the tail of its log (FallbackToLogsOnError): no result.
    assert task_result("Traceback (most recent call last): ...", 1) is None
    assert task_result(None, 0) is None and task_result("", 0) is None


@pytest.mark.parametrize(
    "message",
    ['{"summary": "no mark"}', '{"taskyard": 2}', "[1, 2]", "{not json", '{"taskyard": 1'],
)
def test_only_the_entrypoints_own_record_is_read_as_one(message: str):
    assert parse_record(message) is None
    assert failure_of(message, 121) is None


def test_failure_of_names_the_limit_or_the_setup_problem():
    assert failure_of(record(limit="maxTokens: 2000 tokens, more than the limit of 1000"), 121) == (
        "LimitExceeded",
        "the agent was stopped: maxTokens: 2000 tokens, more than the limit of 1000",
    )
    assert failure_of(record(error="setup: the prompt file /x does not exist"), 120) == (
        "AgentSetupFailed",
        "the agent could not start: setup: the prompt file /x does not exist",
    )
    assert failure_of(record(limit="maxTurns: ..."), 1) is None  # the exit code must say so too
