"""Operator settings, read once from the environment at start-up."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass


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

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> OperatorSettings:
        """Reads TASKYARD_* variables; raises ValueError naming the variable and what it accepts."""
        return cls(
            max_concurrent=_limit(env, "TASKYARD_MAX_CONCURRENT"),
            max_concurrent_per_namespace=_limit(env, "TASKYARD_MAX_CONCURRENT_PER_NAMESPACE"),
            max_concurrent_per_agent=_limit(env, "TASKYARD_MAX_CONCURRENT_PER_AGENT"),
            aging_seconds=_seconds(env, "TASKYARD_AGING_SECONDS", default=600.0),
            metrics_port=_port(env, "TASKYARD_METRICS_PORT", default=8000),
        )


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
