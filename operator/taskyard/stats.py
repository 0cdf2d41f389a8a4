"""Statistics over Tasks for `taskyard stats`: counts per phase, success rate and run times.

Pure functions of Task objects as the API returns them (plain dicts), so they can be checked without a
cluster. A Task without a phase yet (the operator has not seen it) counts as Pending.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from taskyard.api import PHASES, format_duration

FINAL_PHASES = ("Succeeded", "Failed", "Cancelled")
TOTAL_LABEL = "TOTAL"


def parse_time(text: Any) -> datetime | None:
    """An RFC 3339 timestamp as the API server writes it ("2024-05-01T10:00:00Z"), or None."""
    if not isinstance(text, str) or not text:
        return None
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def phase_of(task: dict[str, Any]) -> str:
    """The Task's phase; "Pending" until the operator has written one."""
    phase = (task.get("status") or {}).get("phase")
    return phase if phase in PHASES else "Pending"


def run_seconds(task: dict[str, Any]) -> float | None:
    """Seconds from status.startTime to status.completionTime of a finished Task that started, else None."""
    if phase_of(task) not in FINAL_PHASES:
        return None
    status = task.get("status") or {}
    started, completed = parse_time(status.get("startTime")), parse_time(status.get("completionTime"))
    if started is None or completed is None:
        return None
    return max((completed - started).total_seconds(), 0.0)


def percentile(values: Sequence[float], percent: float) -> float | None:
    """The nearest-rank percentile: the smallest value with at least `percent`% of the values at or below.

    None for no values. For 20 values, p95 is the 19th smallest; for fewer than 20 it is the largest.
    """
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(percent / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def success_rate(succeeded: int, failed: int) -> float | None:
    """Succeeded / (Succeeded + Failed); cancelled Tasks do not count. None when neither happened."""
    finished = succeeded + failed
    return succeeded / finished if finished else None


def format_rate(rate: float | None) -> str:
    """A rate as a percentage with one decimal ("66.7%"), or "n/a"."""
    return "n/a" if rate is None else f"{rate * 100:.1f}%"


def format_seconds(seconds: float | None) -> str:
    """Seconds as a Go-style duration ("1m5s"), or "-" for None.

    Under a minute a fraction shows with one decimal ("5.5s"), as an average of short runs often has
    one; from a minute on, whole seconds (rounded half up).
    """
    if seconds is None:
        return "-"
    tenths = math.floor(seconds * 10 + 0.5) / 10
    if tenths < 60 and tenths != int(tenths):
        return f"{tenths:.1f}s"
    return format_duration(math.floor(seconds + 0.5))


@dataclass
class StatsRow:
    """The numbers for one group of Tasks: an agent, or all of them."""

    agent: str
    namespace: str = ""
    phases: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PHASES, 0))
    durations: list[float] = field(default_factory=list)
    tokens: int = 0
    cost_usd: float = 0.0
    costed: int = 0  # Tasks whose agent reported a cost

    @property
    def total(self) -> int:
        return sum(self.phases.values())

    @property
    def success_rate(self) -> float | None:
        return success_rate(self.phases["Succeeded"], self.phases["Failed"])

    @property
    def average(self) -> float | None:
        return sum(self.durations) / len(self.durations) if self.durations else None

    @property
    def p95(self) -> float | None:
        return percentile(self.durations, 95)

    def add(self, task: dict[str, Any]) -> None:
        self.phases[phase_of(task)] += 1
        seconds = run_seconds(task)
        if seconds is not None:
            self.durations.append(seconds)
        usage = usage_of(task)
        self.tokens += _count(usage.get("inputTokens")) + _count(usage.get("outputTokens"))
        cost = usage.get("costUSD")
        if isinstance(cost, int | float) and not isinstance(cost, bool) and cost >= 0:
            self.cost_usd += cost
            self.costed += 1


def usage_of(task: dict[str, Any]) -> dict[str, Any]:
    """status.result.usage, or {} (a Task of an agent that reports none, or of an older version)."""
    result = (task.get("status") or {}).get("result")
    usage = result.get("usage") if isinstance(result, dict) else None
    return usage if isinstance(usage, dict) else {}


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def format_tokens(tokens: int) -> str:
    if tokens < 10_000:
        return str(tokens)
    if tokens < 10_000_000:
        return f"{tokens / 1000:.0f}k"
    return f"{tokens / 1_000_000:.0f}M"


def format_cost(row: StatsRow) -> str:
    return f"${row.cost_usd:.2f}" if row.costed else "-"


def compute_stats(tasks: Iterable[dict[str, Any]], by_namespace: bool = False) -> list[StatsRow]:
    """One row per agent (per namespace and agent with `by_namespace`), sorted, then a total row.

    Durations are those of finished Tasks (Succeeded, Failed or Cancelled) that have both
    status.startTime and status.completionTime; a Task cancelled while it waited has none.
    """
    groups: dict[tuple[str, str], StatsRow] = {}
    total = StatsRow(agent=TOTAL_LABEL)
    for task in tasks:
        agent = str((task.get("spec") or {}).get("agent") or "")
        namespace = str((task.get("metadata") or {}).get("namespace") or "") if by_namespace else ""
        row = groups.setdefault((namespace, agent), StatsRow(agent=agent, namespace=namespace))
        row.add(task)
        total.add(task)
    return [groups[key] for key in sorted(groups)] + [total]


STATS_HEADERS = (
    "AGENT",
    "TOTAL",
    *(phase.upper() for phase in PHASES),
    "SUCCESS RATE",
    "AVG DURATION",
    "P95 DURATION",
    "TOKENS",
    "COST",
)


def stats_table(rows: Sequence[StatsRow], by_namespace: bool = False) -> tuple[list[str], list[list[str]]]:
    """Headers and cells for printing `rows` (see compute_stats)."""
    headers = (["NAMESPACE"] if by_namespace else []) + list(STATS_HEADERS)
    cells = []
    for row in rows:
        line = [row.namespace or "-"] if by_namespace else []
        line += [row.agent, str(row.total), *(str(row.phases[phase]) for phase in PHASES)]
        line += [format_rate(row.success_rate), format_seconds(row.average), format_seconds(row.p95)]
        line += [format_tokens(row.tokens), format_cost(row)]
        cells.append(line)
    return headers, cells
