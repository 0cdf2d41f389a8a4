"""Prometheus metrics of the operator, served on /metrics from the operator's own event loop.

Counters and histograms are updated where things happen (a Task finishing, a Task admitted, a failed
reconcile); the per-phase gauge is computed at scrape time from the operator's cache, so it is exact
after a restart too. Serving from the event loop (not prometheus-client's thread) means the collector
reads the cache without racing the handlers that change it.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

REGISTRY = CollectorRegistry()

TASKS_FINISHED = Counter(
    "taskyard_tasks_finished_total",
    "Tasks that reached a final phase, by agent and outcome (Succeeded, Failed, Cancelled).",
    ["agent", "outcome"],
    registry=REGISTRY,
)
TASK_DURATION = Histogram(
    "taskyard_task_duration_seconds",
    "Run time of finished Tasks, from the Job's start to the final phase, by agent.",
    ["agent"],
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800),
    registry=REGISTRY,
)
TASK_TOKENS = Counter(
    "taskyard_task_tokens_total",
    "Model tokens of finished Tasks as their agents reported them, by agent, namespace and direction "
    "(input, output).",
    ["agent", "namespace", "direction"],
    registry=REGISTRY,
)
TASK_COST = Counter(
    "taskyard_task_cost_usd_total",
    "Cost in US dollars of finished Tasks, where their agents reported one, by agent and namespace.",
    ["agent", "namespace"],
    registry=REGISTRY,
)
ADMISSION_WAIT = Histogram(
    "taskyard_admission_wait_seconds",
    "Time from a Task's creation until the operator admitted it (created its Job).",
    buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
    registry=REGISTRY,
)
QUEUE_DEPTH = Gauge(
    "taskyard_queue_depth",
    "Tasks waiting for capacity (their agent exists, the concurrency limits hold them back).",
    registry=REGISTRY,
)
API_REQUESTS = Counter(
    "taskyard_api_requests_total",
    "Requests the controller made to the API server, by HTTP method (lists, watches and events included).",
    ["method"],
    registry=REGISTRY,
)
EVENTS_HANDLED = Counter(
    "taskyard_events_handled_total",
    "Watch events handled, by resource (tasks, jobs, pods, agents, clusteragents, priorityclasses).",
    ["resource"],
    registry=REGISTRY,
)
CACHE_SYNCED = Gauge(
    "taskyard_cache_synced",
    "1 once every informer has stored a complete list (nothing is admitted before), else 0.",
    registry=REGISTRY,
)
CACHE_OBJECTS = Gauge(
    "taskyard_cache_objects",
    "Objects in the operator's cache, by resource.",
    ["resource"],
    registry=REGISTRY,
)
LOG_FOLLOWS_OPEN = Gauge(
    "taskyard_log_follows_open",
    "Log streams of stopping pods open now, each until its agent exits (each holds an API connection).",
    registry=REGISTRY,
)
RECONCILE_ERRORS = Counter(
    "taskyard_reconcile_errors_total",
    "Reconciliations that failed on an API error and were scheduled again.",
    registry=REGISTRY,
)


class TaskPhaseCollector(Collector):
    """``taskyard_tasks{phase, agent}``: the Tasks the operator sees, counted at scrape time."""

    def __init__(self, tasks: Callable[[], Iterable[tuple[str, str]]]) -> None:
        self._tasks = tasks

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("taskyard_tasks", "Tasks by phase and agent.", labels=["phase", "agent"])
        counts = count_by_phase_and_agent(self._tasks())
        for (phase, agent), count in sorted(counts.items()):
            family.add_metric([phase, agent], count)
        yield family


def count_by_phase_and_agent(tasks: Iterable[tuple[str, str]]) -> dict[tuple[str, str], int]:
    """How many Tasks are in each (phase, agent), from one (phase, agent) pair per Task."""
    return dict(Tally(tasks))


async def serve(port: int, tasks: Callable[[], Iterable[tuple[str, str]]]) -> web.AppRunner:
    """Starts the /metrics endpoint on ``port`` (all interfaces); returns the runner to stop it."""
    REGISTRY.register(TaskPhaseCollector(tasks))

    async def metrics(_: web.Request) -> web.Response:
        response = web.Response(body=generate_latest(REGISTRY))
        response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
        return response

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "0.0.0.0", port).start()
    return runner
