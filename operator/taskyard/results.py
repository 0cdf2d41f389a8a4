"""What an agent reports about its work, read back from its container's termination message.

The agent images' entrypoint (taskyard-agent, agents/entrypoint/) ends by writing one JSON record
there: the agent's final message, what it changed in the repository, and its usage. Any other text
an agent leaves there (a shell script's `echo ... > /dev/termination-log`) is kept as the summary.
Pure functions of plain data: the controller feeds them the message, the status gets the result.
"""

from __future__ import annotations

import json
import math
from typing import Any

# The entrypoint's exit codes (agents/entrypoint/taskyard_agent.py), which the presets mark as not
# worth a retry. Only a termination message that is the entrypoint's record is read as one of these.
SETUP_FAILED_EXIT_CODE = 120
LIMIT_REACHED_EXIT_CODE = 121
RECORD_MARK = "taskyard"  # the record's version key
SUMMARY_CHARS = 2000
_TEXT_FIELDS = ("branch", "commit", "limit", "error")
_USAGE_COUNTS = ("inputTokens", "outputTokens", "turns")


def parse_record(message: str | None) -> dict[str, Any] | None:
    """The entrypoint's record in a termination message, or None when the message is anything else."""
    if not message or not message.lstrip().startswith("{"):
        return None
    try:
        record = json.loads(message)
    except ValueError:
        return None
    if not isinstance(record, dict) or record.get(RECORD_MARK) != 1:
        return None
    return record


def task_result(message: str | None, exit_code: int | None) -> dict[str, Any] | None:
    """``status.result`` from an attempt's termination message: the record's fields that have the
    right types (anything else is dropped, never trusted), or plain text as the summary of an
    attempt that succeeded. None when there is nothing to report."""
    record = parse_record(message)
    if record is None:
        if message and exit_code == 0:
            return {"summary": message[-SUMMARY_CHARS:]}
        return None
    result: dict[str, Any] = {}
    if isinstance(record.get("summary"), str) and record["summary"]:
        result["summary"] = record["summary"][-SUMMARY_CHARS:]
    for name in _TEXT_FIELDS:
        if isinstance(record.get(name), str) and record[name]:
            result[name] = record[name][:1024]
    files = record.get("changedFiles")
    if isinstance(files, list):
        result["changedFiles"] = [f for f in files if isinstance(f, str)]
    for flag in ("changedFilesTruncated", "pushed"):
        if record.get(flag) is True:
            result[flag] = True
    usage = _usage(record.get("usage"))
    if usage:
        result["usage"] = usage
    return result or None


def _usage(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        return {}
    usage: dict[str, Any] = {
        name: raw[name]
        for name in _USAGE_COUNTS
        if isinstance(raw.get(name), int) and not isinstance(raw[name], bool) and raw[name] >= 0
    }
    cost = raw.get("costUSD")
    if isinstance(cost, int | float) and not isinstance(cost, bool) and math.isfinite(cost) and cost >= 0:
        usage["costUSD"] = round(float(cost), 6)
    return usage


def failure_of(message: str | None, exit_code: int | None) -> tuple[str, str] | None:
    """(reason, message) for an attempt the entrypoint itself ended: a limit of the Task was passed,
    or the agent could not be set up. None for every other failure."""
    record = parse_record(message)
    if record is None:
        return None
    if exit_code == LIMIT_REACHED_EXIT_CODE and isinstance(record.get("limit"), str):
        return "LimitExceeded", f"the agent was stopped: {record['limit']}"
    if exit_code == SETUP_FAILED_EXIT_CODE and isinstance(record.get("error"), str):
        return "AgentSetupFailed", f"the agent could not start: {record['error']}"
    return None
