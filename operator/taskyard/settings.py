"""Operator settings, read once from the environment at start-up."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass

from taskyard.api import check_cidr
from taskyard.render import DEFAULT_DENIED_CIDRS


@dataclass(frozen=True)
class OperatorSettings:
    """What an operator deployment decides for every Task it manages.

    Concurrency limits of ``None`` mean unlimited. A per-agent limit set on the Agent itself
    (``spec.maxConcurrent``) wins over ``max_concurrent_per_agent``.
    """

    max_concurrent: int | None = None
    max_concurrent_per_namespace: int | None = None
    max_concurrent_per_agent: int | None = None
    # A waiting Task climbs one priority level per this many seconds, so low work cannot starve.
    aging_seconds: float = 600.0
    # Where /metrics is served; 0 turns the endpoint off.
    metrics_port: int = 8000
    # Tasks reconciled at once, each on its own (no Task waits for another's calls).
    workers: int = 16
    # Every API request times out after this long unless it sets its own; a reconcile after this.
    request_timeout_seconds: float = 30.0
    reconcile_deadline_seconds: float = 90.0
    # How long reading one pod's log may take; what was read by then is kept.
    log_read_seconds: float = 20.0
    # Every unfinished Task is looked at again this often, whatever the watches said.
    resync_seconds: float = 300.0
    # A finished Task's Job and pods are deleted this long after it finished (its logs are kept).
    job_retention_seconds: float = 3600.0
    # Finished Tasks without their own spec.ttlSecondsAfterFinished are deleted this long after they
    # finished; None keeps them.
    task_ttl_seconds: float | None = None
    # A transient image pull failure is retried this long before the Task fails (ImagePullFailed);
    # an agent that has not started after the start-up deadline fails the Task, naming the cause.
    image_pull_patience_seconds: float = 300.0
    startup_deadline_seconds: float = 600.0
    # Back-off of a Task whose reconcile fails: doubling from the base, at most the maximum.
    retry_base_seconds: float = 1.0
    retry_max_seconds: float = 300.0
    # The liveness probe fails when work waits this long with nothing processed, or the first
    # complete list of every resource takes longer than the sync deadline.
    stall_seconds: float = 120.0
    sync_deadline_seconds: float = 600.0
    # Whether the operator keeps NetworkPolicies for agent pods (off where administrators write their
    # own), the ranges the default one denies, and whether it lets agents reach the cluster's DNS.
    egress_policy: bool = True
    egress_denied_cidrs: tuple[str, ...] = DEFAULT_DENIED_CIDRS
    egress_allow_dns: bool = True

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> OperatorSettings:
        """Reads TASKYARD_* variables; raises ValueError naming the variable and what it accepts."""
        # Defaults come from the fields above, so the two can never disagree.
        return cls(
            max_concurrent=_limit(env, "TASKYARD_MAX_CONCURRENT"),
            max_concurrent_per_namespace=_limit(env, "TASKYARD_MAX_CONCURRENT_PER_NAMESPACE"),
            max_concurrent_per_agent=_limit(env, "TASKYARD_MAX_CONCURRENT_PER_AGENT"),
            aging_seconds=_seconds(env, "TASKYARD_AGING_SECONDS", default=cls.aging_seconds),
            metrics_port=_port(env, "TASKYARD_METRICS_PORT", default=cls.metrics_port),
            workers=_count(env, "TASKYARD_WORKERS", default=cls.workers),
            task_ttl_seconds=_optional_seconds(env, "TASKYARD_TASK_TTL_SECONDS"),
            egress_policy=_flag(env, "TASKYARD_EGRESS_POLICY", default=cls.egress_policy),
            egress_denied_cidrs=_cidrs(env, "TASKYARD_EGRESS_DENIED_CIDRS", default=cls.egress_denied_cidrs),
            egress_allow_dns=_flag(env, "TASKYARD_EGRESS_ALLOW_DNS", default=cls.egress_allow_dns),
            **{
                field: _positive(
                    env, f"TASKYARD_{field.upper()}", getattr(cls, field), zero_ok=field in _ZERO_OK
                )
                for field in _DURATIONS
            },
        )


# Settings in seconds read the same way: TASKYARD_<FIELD NAME>, a finite number more than 0.
_DURATIONS = (
    "request_timeout_seconds",
    "reconcile_deadline_seconds",
    "log_read_seconds",
    "resync_seconds",
    "job_retention_seconds",
    "image_pull_patience_seconds",
    "startup_deadline_seconds",
    "retry_base_seconds",
    "retry_max_seconds",
    "stall_seconds",
    "sync_deadline_seconds",
)
_ZERO_OK = {"job_retention_seconds", "image_pull_patience_seconds"}  # 0: at once


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw not in ("true", "false"):
        raise ValueError(f"{name}={raw!r}: expected true or false")
    return raw == "true"


def _cidrs(env: Mapping[str, str], name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    if name not in env:
        return default
    ranges = tuple(part.strip() for part in env[name].split(",") if part.strip())
    for cidr in ranges:
        try:
            check_cidr(cidr)
        except ValueError as error:
            raise ValueError(f"{name}: {error} (a comma-separated list is expected)") from None
        if cidr.endswith("/0"):
            # An exception as wide as its block is refused by the API server: every Task would fail.
            raise ValueError(
                f"{name}: {cidr!r} would deny every address; to allow agents nothing, give their Agents "
                "egress: [] instead"
            )
    return ranges


def _limit(env: Mapping[str, str], name: str) -> int | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise ValueError(f"{name}={raw!r}: expected a whole number of Tasks (0 or unset means no limit)")
    return value or None


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ValueError(f"{name}={raw!r}: expected a number of seconds (0 disables aging)")
    return value


def _port(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or int(raw) > 65535:
        raise ValueError(f"{name}={raw!r}: expected a TCP port from 1 to 65535, or 0 to turn it off")
    return int(raw)


def _count(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"{name}={raw!r}: expected a whole number of at least 1")
    return int(raw)


def _positive(env: Mapping[str, str], name: str, default: float, zero_ok: bool = False) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero_ok):
        accepted = "0 or more" if zero_ok else "more than 0"
        raise ValueError(f"{name}={raw!r}: expected a number of seconds, {accepted}")
    return value


def _optional_seconds(env: Mapping[str, str], name: str) -> float | None:
    if not env.get(name, "").strip():
        return None
    return _positive(env, name, 0.0, zero_ok=True)
