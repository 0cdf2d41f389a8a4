"""The control loop: informers fill the cache, one admission loop decides, N workers act per Task.

Everything that touches the API server lives here; everything that decides lives in the pure modules
(:mod:`taskyard.phase`, :mod:`taskyard.queue`, :mod:`taskyard.render`, :mod:`taskyard.records`).
The shape follows the Go controllers (docs/architecture.md says why, piece by piece):

- **Informers** (:mod:`taskyard.informer`) list and watch Tasks, Jobs, Pods, Agents, ClusterAgents and
  PriorityClasses into indexed stores. Nothing is admitted before every informer has a complete list.
- **The admission loop** is the only place that hands out capacity. It runs without awaiting anything
  (so two Tasks can never both take the last slot), is woken only when capacity or candidates change,
  and reads the waiting queue only as far as there is room. It reserves a slot and hands the Task on.
- **Workers** take Task keys (namespace, name, uid) from a :class:`~taskyard.workqueue.WorkQueue`: a key is
  never processed twice at once, a failing key backs off on its own, and every reconcile has a deadline,
  so no Task waits on another's slow call.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ctypes
import dataclasses
import gc
import hashlib
import json
import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import kopf
from kubernetes_asyncio import client
from kubernetes_asyncio.client.rest import ApiException

from taskyard import metrics
from taskyard.api import (
    AGENT_SERVICE_ACCOUNT,
    API_VERSION,
    GROUP,
    LABEL_TASK,
    VERSION,
    SpecError,
    parse_agent_spec,
    parse_task_spec,
)
from taskyard.apiwrite import send
from taskyard.events import EventRecorder
from taskyard.informer import Informer, ResourceType, Store, request_json
from taskyard.logstore import attempts_to_keep, log_config_map_name, log_key, pack_log, pod_key
from taskyard.phase import (
    IMAGE_PULL_FAILURES,
    MANAGED_FIELDS,
    STOPPED_BY_OPERATOR,
    TERMINAL_PHASES,
    Observation,
    PodView,
    deciding_pod,
    derive_status,
    image_pull_patience_over,
    startup_overdue,
    status_changes,
    tail_lines,
    waiting_since,
)
from taskyard.podlogs import CollectedLog, LogFollowers, LogUnavailable, read_log_to_its_end
from taskyard.queue import Limits, QueueEntry, WaitingQueue, select_in_order
from taskyard.records import (
    ANNOTATION_AGENT_REF,
    JobRecord,
    PodRecord,
    TaskRecord,
    project_job,
    project_name,
    project_pod,
    project_spec,
    project_task,
)
from taskyard.render import (
    DEFAULT_EGRESS_POLICY,
    TaskRef,
    default_egress,
    job_name_for,
    label_value_for,
    owner_reference,
    refused_env_overrides,
    render_egress_policy,
    render_job,
    render_workspace_claim,
    workspace_claim_name,
)
from taskyard.results import task_result
from taskyard.settings import OperatorSettings
from taskyard.workqueue import WorkQueue

logger = logging.getLogger("taskyard")

TaskKey = tuple[str, str, str]  # (namespace, name, uid): a re-created namesake is another key
# When the operator admitted the Task, to the microsecond (metadata timestamps only have seconds).
ANNOTATION_ADMITTED_AT = "taskyard.dev/admitted-at"
MERGE_PATCH = "application/merge-patch+json"
LOG_TAIL_LINES = 50
LOG_TAIL_BYTES = 8192
# How long a Job the operator created may take to show up in the watch before the API server is asked
# whether it exists: the watch may have a gap (silent connections, a slow re-list), or the Job may have
# been deleted before it was seen. Only the API server's answer decides which.
RESERVATION_TTL = 120.0
# A Job the API server has but the watch does not show (any more) is looked for again after this long, when
# no reservation waits for it (its watch event brings the Task back sooner).
JOB_RECHECK_SECONDS = 30.0

TASKS = ResourceType(GROUP, VERSION, "tasks")
AGENTS = ResourceType(GROUP, VERSION, "agents")
CLUSTER_AGENTS = ResourceType(GROUP, VERSION, "clusteragents", namespaced=False)
JOBS = ResourceType("batch", "v1", "jobs", label_selector=LABEL_TASK)
PODS = ResourceType("", "v1", "pods", label_selector=LABEL_TASK)
PRIORITY_CLASSES = ResourceType("scheduling.k8s.io", "v1", "priorityclasses", namespaced=False)


class InstrumentedApiClient(client.ApiClient):
    """The API client: counts every request (``taskyard_api_requests_total``) and gives every request
    a timeout unless the call sets its own, so no call can wait for ever."""

    default_timeout: float = 30.0

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        metrics.API_REQUESTS.labels(method=method).inc()
        if kwargs.get("_request_timeout") is None:
            kwargs["_request_timeout"] = self.default_timeout
        return super().request(method, url, *args, **kwargs)


class NameConflict(Exception):
    """An object the Task needs exists under its name, and another owner has it."""


@dataclass(frozen=True)
class ResolvedAgent:
    """An Agent or ClusterAgent a Task can run on. ``ref`` identifies it for per-agent limits."""

    ref: str
    name: str
    spec: dict[str, Any]


@dataclass
class Reservation:
    """A slot the admission loop gave a Task whose Job the watch has not shown yet."""

    namespace: str
    agent: ResolvedAgent
    job_name: str
    at: float  # monotonic
    decided_at: datetime  # wall clock, strictly increasing across decisions (see _admission_stamp)
    created: bool = False
    # The worker is asking the API server whether the Job exists: the admission passes leave the Task to
    # the worker's retries (and their back-off) until it has the answer.
    confirming: bool = False


class _AgentLimits(Mapping[str, int]):
    """Per-agent limits, looked up only for the agents the admission loop meets."""

    def __init__(self, controller: Controller) -> None:
        self._controller = controller

    def __getitem__(self, ref: str) -> int:
        limit = self.get(ref)
        if limit is None:
            raise KeyError(ref)
        return limit

    def get(self, ref: str, default: Any = None) -> Any:
        spec = self._controller.agent_spec(ref)
        limit = (spec or {}).get("maxConcurrent") or self._controller.settings.max_concurrent_per_agent
        return limit or default

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


@dataclass
class Controller:
    api: client.ApiClient
    settings: OperatorSettings
    namespaces: list[str] | None = None  # None: every namespace
    tasks: Store[TaskRecord] = field(init=False)
    jobs: Store[JobRecord] = field(init=False)
    pods: Store[PodRecord] = field(init=False)
    agents: Store[dict[str, Any]] = field(init=False)
    cluster_agents: Store[dict[str, Any]] = field(init=False)
    priority_classes: Store[bool] = field(init=False)

    def __post_init__(self) -> None:
        self.tasks = Store(
            {
                "uid": lambda task: [task.uid],
                "unfinished": lambda task: [] if task.finished else [True],
                "agent": lambda task: [] if task.finished else [task.agent],
            }
        )
        self.jobs = Store(
            {
                "uid": lambda job: [job.view.uid],
                "owner": lambda job: [job.view.owner_uid],
                "active": lambda job: [True] if job.holds_slot else [],
            }
        )
        self.pods = Store(
            {"job": lambda pod: [pod.view.job_uid], "live": lambda pod: [True] if pod.holds_slot else []}
        )
        self.agents, self.cluster_agents, self.priority_classes = Store(), Store(), Store()
        self.queue: WorkQueue[TaskKey] = WorkQueue(
            base_delay=self.settings.retry_base_seconds, max_delay=self.settings.retry_max_seconds
        )
        self.waiting = WaitingQueue()
        self.reserved: dict[str, Reservation] = {}
        self._last_admission_stamp = datetime.min.replace(tzinfo=UTC)
        # Status as last written, until the watch delivers that write: the operator is the only writer
        # of status, so this is never older than what the cache shows.
        self.written: dict[str, tuple[str, dict[str, Any]]] = {}
        # uid -> (pod, whether it had ended): the output the status shows. A pod read while it still ran
        # (salvaged at a cancel) is read once more when it has ended, for what it printed meanwhile.
        self.logs_collected_from: dict[str, tuple[str, bool]] = {}
        self.log_followers = LogFollowers(self.api, self._followed_log_ready)
        # namespace -> when the agents' ServiceAccount was last made sure of there
        self.agent_accounts: dict[str, float] = {}
        self.default_egress = default_egress(
            self.settings.egress_denied_cidrs, self.settings.egress_allow_dns
        )
        self.blocked_until: dict[str, float] = {}  # uid -> monotonic time its Job creation may be tried again
        # uid -> Job creations that failed in a row: the back-off doubles with each, whatever reconciles
        # succeed in between (a status write alone brings one), until a Job is created.
        self.start_failures: dict[str, int] = {}
        # uid -> name of the Job this operator created, until the Task is final: the status names its Job
        # only once the watch has shown it, and a Job that vanishes before that must fail the Task
        # (JobDeleted), never be created a second time.
        self.created_jobs: dict[str, str] = {}
        self.admission_needed = asyncio.Event()
        self.events = EventRecorder(self.api)
        self.synced = False
        self.started_at = self.last_progress = self.last_admission = time.monotonic()
        self.informers: list[Informer[Any]] = self._informers()
        self._tasks: list[asyncio.Task[None]] = []
        for resource, store in (("tasks", self.tasks), ("jobs", self.jobs), ("pods", self.pods)):
            metrics.CACHE_OBJECTS.labels(resource=resource).set_function(store.__len__)

    # --- wiring ------------------------------------------------------------------------------------

    def _informers(self) -> list[Informer[Any]]:
        def make(
            resource: ResourceType, store: Store[Any], project: Any, on_change: Any
        ) -> list[Informer[Any]]:
            scopes: list[str | None] = (
                list(self.namespaces) if resource.namespaced and self.namespaces else [None]
            )
            return [Informer(self.api, resource, store, project, on_change, namespace=ns) for ns in scopes]

        return [
            *make(PRIORITY_CLASSES, self.priority_classes, project_name, _ignore),
            *make(CLUSTER_AGENTS, self.cluster_agents, project_spec, self._agent_changed),
            *make(AGENTS, self.agents, project_spec, self._agent_changed),
            *make(JOBS, self.jobs, project_job, self._job_changed),
            *make(PODS, self.pods, project_pod, self._pod_changed),
            *make(TASKS, self.tasks, project_task, self._task_changed),
        ]

    async def run(self) -> None:
        """Starts the informers, waits until each has a complete list, then admits and reconciles."""
        self._tasks = [asyncio.create_task(informer.run()) for informer in self.informers]
        self._tasks.append(asyncio.create_task(self.events.run()))
        try:
            for informer in self.informers:
                await informer.synced.wait()
            self.synced = True
            metrics.CACHE_SYNCED.set(1)
            _return_freed_memory()
            logger.info(
                "cache synced: %d Tasks, %d Jobs, %d pods in %.1fs",
                len(self.tasks),
                len(self.jobs),
                len(self.pods),
                time.monotonic() - self.started_at,
            )
            self.admission_needed.set()
            loops = [self._admission_loop(), self._resync_loop()]
            loops += [self._worker() for _ in range(self.settings.workers)]
            self._tasks += [asyncio.create_task(loop) for loop in loops]
            await asyncio.gather(*self._tasks)
        finally:
            await self.stop()

    async def stop(self) -> None:
        self.queue.shutdown()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.log_followers.stop()

    def health(self) -> dict[str, Any]:
        """For the liveness probe: raises when the loop has stopped making progress."""
        now = time.monotonic()
        pending = len(self.queue) + self.queue.processing
        if not self.synced and now - self.started_at > self.settings.sync_deadline_seconds:
            unsynced = [i.name for i in self.informers if not i.synced.is_set()]
            raise kopf.PermanentError(f"no complete list yet of {', '.join(unsynced)}")
        if pending and now - self.last_progress > self.settings.stall_seconds:
            raise kopf.PermanentError(
                f"{pending} Tasks waiting, none processed for {now - self.last_progress:.0f}s"
            )
        if self.admission_needed.is_set() and now - self.last_admission > self.settings.stall_seconds:
            raise kopf.PermanentError(f"the admission loop has not run for {now - self.last_admission:.0f}s")
        return {
            "synced": self.synced,
            "queued": pending,
            "waiting": len(self.waiting),
            "reserved": len(self.reserved),
        }

    def task_phases(self) -> Iterator[tuple[str, str]]:
        """(phase, agent) of every Task in the cache, with the status last written (for metrics)."""
        for task in self.tasks.values():
            yield (self.current_status(task).get("phase") or "Pending", task.agent)

    # --- change handlers: they only mark work; they never await ----------------------------------

    def _task_changed(self, key: Any, old: TaskRecord | None, new: TaskRecord | None) -> None:
        if old is not None and (new is None or new.uid != old.uid):
            self._forget(old.key)
        if new is None:
            self.admission_needed.set()  # its slot or place in the queue is free
            return
        put_in_line = new.waiting and new.uid not in self.reserved and self._wait_in_line(new)
        if not new.waiting:
            self.waiting.remove(new.uid)
        if put_in_line or old is None or old.waiting != new.waiting or old.uid != new.uid:
            # A Task back in line after a failed start counts too: no later reconcile of it will.
            self.admission_needed.set()
        self._touch(new)

    def _job_changed(self, key: Any, old: JobRecord | None, new: JobRecord | None) -> None:
        record = new or old
        assert record is not None
        if old is None or new is None or old.holds_slot != new.holds_slot:
            self.admission_needed.set()
        task = self._task_by_uid(record.view.owner_uid)
        if task is not None:
            self._touch(task)

    def _pod_changed(self, key: Any, old: PodRecord | None, new: PodRecord | None) -> None:
        record = new or old
        assert record is not None
        if old is None or new is None or old.holds_slot != new.holds_slot:
            self.admission_needed.set()
        job = _first(self.jobs.by_index("uid", record.view.job_uid))
        task = self._task_by_uid(job.view.owner_uid) if job is not None else None
        if task is not None:
            self._touch(task)

    def _agent_changed(self, key: Any, old: Any, new: Any) -> None:
        # Tasks waiting for this agent (GitOps applies in any order) re-derive their phase and may start.
        self.admission_needed.set()
        for task in self.tasks.by_index("agent", key[1]):
            self.queue.add(task.key)

    def _touch(self, task: TaskRecord) -> None:
        if not task.finished:
            self.queue.add(task.key)
            return
        # Nothing of a finished Task is needed in memory beyond its record.
        for memory in (
            self.reserved,
            self.logs_collected_from,
            self.blocked_until,
            self.start_failures,
            self.created_jobs,
        ):
            memory.pop(task.uid, None)
        self.log_followers.forget(task.uid)
        due = self._tidy_due(task)
        if due is not None:  # a finished Task costs nothing until its clean-up is due
            self.queue.add_after(task.key, due - time.time())

    def _wait_in_line(self, task: TaskRecord) -> bool:
        """Puts a Task that needs a Job (and has no reservation) in the waiting queue; True if it was
        not there. Admission takes a Task out when it reserves its slot, so that a pass reads only
        Tasks that still wait; every path that gives the slot back comes through here again."""
        if task.uid in self.waiting:
            return False
        try:
            self.waiting.add(task.uid, task.namespace, task.name, task.priority, _epoch(task.created))
        except ValueError:
            return False  # an unknown priority: the worker fails it with InvalidSpec
        return True

    def _back_in_line(self, task: TaskRecord) -> bool:
        """Puts a Task back in the waiting queue when it still needs a Job and nothing stands for one
        (no reservation, no Job created or seen, none named in its status); True if it was put back."""
        return (
            task.waiting
            and task.uid not in self.reserved
            and task.uid not in self.created_jobs
            and self._job_of(task.uid) is None
            and not self.current_status(task).get("jobName")
            and self._wait_in_line(task)
        )

    def _tidy_due(self, task: TaskRecord) -> float | None:
        """When a finished Task next needs work (its Job's retention ends, or its TTL), if ever."""
        finished = _epoch(task.status.get("completionTime"))
        due = []
        ttl = task.ttl if task.ttl is not None else self.settings.task_ttl_seconds
        if ttl is not None:
            due.append(finished + ttl)
        job = self._job_of(task.uid)
        if job is not None and not job.view.deleting:
            due.append(finished + self.settings.job_retention_seconds)
        return min(due) if due else None

    def _forget(self, key: TaskKey) -> None:
        uid = key[2]
        self.queue.discard(key)
        self.waiting.remove(uid)
        for memory in (
            self.reserved,
            self.written,
            self.logs_collected_from,
            self.blocked_until,
            self.start_failures,
            self.created_jobs,
        ):
            memory.pop(uid, None)
        self.log_followers.forget(uid)

    def _followed_log_ready(self, uid: str) -> None:
        task = self._task_by_uid(uid)
        if task is not None:
            self.queue.add(task.key)

    # --- lookups -----------------------------------------------------------------------------------

    def _task_by_uid(self, uid: str) -> TaskRecord | None:
        return _first(self.tasks.by_index("uid", uid)) if uid else None

    def _job_of(self, task_uid: str) -> JobRecord | None:
        return _first(self.jobs.by_index("owner", task_uid))

    def _pods_of(self, job: JobRecord) -> list[PodView]:
        """The pods of a Job, oldest first: attempt n ran in the n-th."""
        return _oldest_first(p.view for p in self.pods.by_index("job", job.view.uid))

    async def _pods_from_api(self, namespace: str, job: JobRecord) -> list[PodView]:
        """The pods of a Job as the API server has them now, oldest first."""
        query = [("labelSelector", f"batch.kubernetes.io/controller-uid={job.view.uid}")]
        path = f"/api/v1/namespaces/{namespace}/pods"
        listed = await request_json(self.api, path, query, self.settings.request_timeout_seconds)
        return _oldest_first(PodView.from_body(item) for item in listed.get("items") or [])

    def resolve_agent(self, namespace: str, name: str) -> ResolvedAgent | None:
        """The same-namespace Agent of that name, else the ClusterAgent, else None."""
        spec = self.agents.get((namespace, name))
        if spec is not None:
            return ResolvedAgent(ref=f"Agent/{namespace}/{name}", name=name, spec=spec)
        spec = self.cluster_agents.get(("", name))
        if spec is not None:
            return ResolvedAgent(ref=f"ClusterAgent/{name}", name=name, spec=spec)
        return None

    def agent_spec(self, ref: str) -> dict[str, Any] | None:
        kind, _, rest = ref.partition("/")
        if kind == "Agent":
            namespace, _, name = rest.partition("/")
            return self.agents.get((namespace, name))
        return self.cluster_agents.get(("", rest))

    def current_status(self, task: TaskRecord) -> Mapping[str, Any]:
        """The Task's status: the one this operator last wrote, if the cache does not show it yet."""
        written = self.written.get(task.uid)
        if written is None:
            return task.status
        version, status = written
        if _not_older(task.resource_version, version):
            del self.written[task.uid]
            return task.status
        return status

    # --- admission ---------------------------------------------------------------------------------

    async def _admission_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                # Also on a clock: aging changes the order, and back-offs and reservations expire. (Always:
                # a Task can come into line while this waits, and a pass with none waiting costs nothing.)
                async with asyncio.timeout(5.0):
                    await self.admission_needed.wait()
            self.admission_needed.clear()
            try:
                self.admit()
            except Exception:
                logger.exception("admission pass failed")
            self.last_admission = time.monotonic()

    def admit(self) -> list[TaskKey]:
        """One admission pass; never awaits. Reserves slots for the Tasks that may start now, in priority
        order, and hands them to the workers. Returns their keys."""
        now = time.monotonic()
        for uid, reservation in list(self.reserved.items()):
            if now - reservation.at > RESERVATION_TTL and self._job_of(uid) is None:
                task = self._task_by_uid(uid)
                if reservation.created and task is not None:
                    # Its Job was created and the watch has not shown it: the worker asks the API server
                    # whether it is gone or the watch is behind (_sync); the slot stays held meanwhile.
                    if not reservation.confirming:
                        reservation.confirming = True
                        self.queue.add(task.key)
                    continue
                del self.reserved[uid]  # its Job was never created: the worker finds out what happened
                if task is not None:
                    self._back_in_line(task)  # keeps its turn: this very pass may admit it again
                    self.queue.add(task.key)
        limits = Limits(
            total=self.settings.max_concurrent,
            per_namespace=self.settings.max_concurrent_per_namespace,
            per_agent=_AgentLimits(self),
        )
        chosen_agents: dict[tuple[str, str], tuple[TaskRecord, ResolvedAgent]] = {}
        candidates: Iterable[QueueEntry] = self._candidates(now, chosen_agents)
        holders = self._slot_holders
        if limits.total is None and limits.per_namespace is None:
            # Without a limit in total or per namespace, every candidate is read anyway; when none of
            # their agents is limited either, who holds a slot does not matter, and counting the
            # holders (every unfinished Job and live pod) would be most of a pass's cost.
            candidates = list(candidates)
            if not any(limits.per_agent.get(entry.agent) for entry in candidates):
                holders = list
        chosen = select_in_order(candidates, holders(), limits)
        metrics.QUEUE_DEPTH.set(max(len(self.waiting) - len(chosen), 0))
        keys = []
        for entry in chosen:
            task, agent = chosen_agents[(entry.namespace, entry.name)]
            # Out of the waiting queue while it holds a reservation; a Job creation that fails gives the
            # reservation back, and the Task's next reconcile puts it back in line (_wait_in_line).
            self.reserved[task.uid] = Reservation(
                task.namespace, agent, job_name_for(task.name), now, self._admission_stamp()
            )
            self.waiting.remove(task.uid)
            self.queue.add(task.key)
            keys.append(task.key)
        return keys

    def _admission_stamp(self) -> datetime:
        """The wall-clock time of an admission decision, later than every earlier one.

        One pass admits several Tasks within microseconds; stamps that could tie or (with a clock step)
        go backwards would make `taskyard.dev/admitted-at` misstate the order the Tasks were admitted in.
        """
        stamp = max(datetime.now(UTC), self._last_admission_stamp + timedelta(microseconds=1))
        self._last_admission_stamp = stamp
        return stamp

    def _candidates(
        self, now: float, resolved: dict[tuple[str, str], tuple[TaskRecord, ResolvedAgent]]
    ) -> Iterator[QueueEntry]:
        for uid, entry in self.waiting.ordered(time.time(), self.settings.aging_seconds):
            if uid in self.reserved or self.blocked_until.get(uid, 0) > now or self._job_of(uid) is not None:
                continue
            task = self.tasks.get((entry.namespace, entry.name))
            if task is None or task.uid != uid or not task.waiting:
                continue
            status = self.current_status(task)
            if status.get("jobName") or status.get("phase") in TERMINAL_PHASES:
                continue
            agent = self.resolve_agent(task.namespace, task.agent)
            if agent is None:
                continue
            resolved[(task.namespace, task.name)] = (task, agent)
            yield QueueEntry(entry.namespace, entry.name, agent.ref, entry.priority, entry.created)

    def _slot_holders(self) -> list[tuple[str, str]]:
        """(namespace, agent ref) per slot in use: an unfinished Job, a Job being created, or pods still
        shutting down (a deleted Task's Job can vanish before its pods do)."""
        holders: dict[tuple[str, str], str] = {}
        for job in self.jobs.by_index("active", True):
            holders[(job.namespace, job.view.owner_uid or job.view.uid)] = job.agent_ref
        for pod in self.pods.by_index("live", True):
            job = _first(self.jobs.by_index("uid", pod.view.job_uid))
            owner = job.view.owner_uid if job is not None else f"pod/{pod.view.name}"
            holders[(pod.namespace, owner)] = pod.agent_ref
        for uid, reservation in self.reserved.items():
            holders[(reservation.namespace, uid)] = reservation.agent.ref
        return [(namespace, agent_ref) for (namespace, _), agent_ref in holders.items()]

    # --- workers -----------------------------------------------------------------------------------

    async def _worker(self) -> None:
        while True:
            key = await self.queue.get()
            try:
                async with asyncio.timeout(self.settings.reconcile_deadline_seconds):
                    await self.reconcile(key)
                self.queue.forget(key)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                delay = self.queue.add_rate_limited(key)
                metrics.RECONCILE_ERRORS.inc()
                if isinstance(error, (TimeoutError, ApiException, aiohttp.ClientError, OSError)):
                    logger.warning(
                        "reconciling %s/%s failed (%s); again in %.0fs",
                        key[0],
                        key[1],
                        _describe(error),
                        delay,
                    )
                else:
                    logger.exception("reconciling %s/%s failed; again in %.0fs", key[0], key[1], delay)
            finally:
                self.queue.done(key)
                self.last_progress = time.monotonic()

    async def _resync_loop(self) -> None:
        # Level-triggered repair: whatever an event handler missed, every unfinished Task is looked at
        # again on this period (client-go's resync), and admission runs.
        while True:
            await asyncio.sleep(self.settings.resync_seconds)
            for task in self.tasks.by_index("unfinished", True):
                self.queue.add(task.key)
            self.admission_needed.set()

    async def reconcile(self, key: TaskKey) -> None:
        """Brings one Task (and its Job) in line with what is observed."""
        namespace, name, uid = key
        task = self.tasks.get((namespace, name))
        if task is None or task.uid != uid:
            self._forget(key)
            return
        if task.finished:
            await self._tidy_finished(task)
            return
        if task.deleting or self.current_status(task).get("phase") in TERMINAL_PHASES:
            return
        if self._back_in_line(task):
            self.admission_needed.set()  # back in line after a failed start, or a reservation expired
        reservation = self.reserved.get(uid)
        if reservation is not None and not reservation.created:
            if task.cancel:
                del self.reserved[uid]  # cancelled before its Job was created: nothing to start
            else:
                # Either way, nothing more now: a Task that started gets its status once the watch
                # shows its Job (one status write where two would say the same), and the reservation
                # holds its slot until then.
                await self._start(task, reservation)
                return
        await self._sync(task)

    # --- starting a Task ---------------------------------------------------------------------------

    async def _start(self, task: TaskRecord, reservation: Reservation) -> bool:
        """Creates the Task's Job (and claim); False when the Task did not start (failed or backing off)."""
        body = task.as_task(self.current_status(task))
        try:
            task_spec = parse_task_spec(body["spec"])
            agent_spec = parse_agent_spec(reservation.agent.spec)
        except SpecError as error:
            self.reserved.pop(task.uid, None)
            await self._fail(task, "InvalidSpec", str(error))
            return False
        refused = refused_env_overrides(task_spec, agent_spec)
        if refused:
            self.reserved.pop(task.uid, None)
            await self._fail(task, "InvalidSpec", _refused_overrides_message(refused, reservation.agent.ref))
            return False
        ref = TaskRef(name=task.name, namespace=task.namespace, uid=task.uid, spec=task_spec)
        priority_class = f"taskyard-{task_spec.priority}"
        if self.priority_classes.get(("", priority_class)) is None:
            priority_class = None  # the scheduler only learns our priorities when the classes exist
        job = render_job(ref, agent_spec, reservation.agent.name, priority_class)
        annotations = job["metadata"].setdefault("annotations", {})
        annotations[ANNOTATION_AGENT_REF] = reservation.agent.ref
        # The moment of the admission decision, not of this create: a worker can reach it seconds later.
        annotations[ANNOTATION_ADMITTED_AT] = reservation.decided_at.isoformat(timespec="microseconds")
        job["spec"]["template"]["metadata"].setdefault("annotations", {})[ANNOTATION_AGENT_REF] = (
            reservation.agent.ref
        )
        core, batch = client.CoreV1Api(self.api), client.BatchV1Api(self.api)
        claim = render_workspace_claim(ref)
        try:
            steps = [
                self._create_owned(
                    task,
                    "ConfigMap",
                    self._log_config_map(task),
                    core.create_namespaced_config_map,
                    core.read_namespaced_config_map,
                )
            ]
            if (agent_spec.service_account_name or AGENT_SERVICE_ACCOUNT) == AGENT_SERVICE_ACCOUNT:
                steps.append(self._ensure_agent_account(task.namespace))
            if self.settings.egress_policy:
                policy = render_egress_policy(agent_spec, reservation.agent.name, self.default_egress)
                steps.append(self._ensure_egress_policy(task.namespace, policy))
            if claim is not None:
                steps.append(
                    self._create_owned(
                        task,
                        "PersistentVolumeClaim",
                        claim,
                        core.create_namespaced_persistent_volume_claim,
                        core.read_namespaced_persistent_volume_claim,
                    )
                )
            await asyncio.gather(*steps)
            await self._create_owned(task, "Job", job, batch.create_namespaced_job, batch.read_namespaced_job)
        except NameConflict as conflict:
            self.reserved.pop(task.uid, None)
            await self._fail(task, "NameConflict", str(conflict))
            return False
        except EgressPolicyRejected as error:
            self.reserved.pop(task.uid, None)
            await self._fail(task, "EgressPolicyRejected", str(error))
            return False
        except _NamesakeLeaving:
            # The objects of a deleted Task of the same name are still being collected: try again soon.
            self.reserved.pop(task.uid, None)
            self.blocked_until[task.uid] = time.monotonic() + 2.0
            self.queue.add_after(task.key, 2.0)
            return False
        except ApiException as error:
            self.reserved.pop(task.uid, None)
            if error.status in (400, 422):
                # The API server refuses what the Agent asks for (e.g. malformed resources, which the
                # Agent schema passes through): no retry can fix that, so the Task fails.
                await self._fail(
                    task, "JobRejected", f"the API server rejected the Job: {_api_reason(error)}"
                )
                return False
            await self._creation_failed(task, _api_reason(error))
            raise
        except (TimeoutError, aiohttp.ClientError, OSError) as error:
            self.reserved.pop(task.uid, None)
            await self._creation_failed(task, _describe(error))
            raise
        reservation.created = True
        self.start_failures.pop(task.uid, None)
        self.created_jobs[task.uid] = job["metadata"]["name"]
        metrics.ADMISSION_WAIT.observe(max(time.time() - _epoch(task.created), 0))
        message = f"created Job {job['metadata']['name']}; waiting for its pod to start"
        self.events.record(body, "Normal", "Admitted", message)
        return True

    async def _creation_failed(self, task: TaskRecord, reason: str) -> None:
        """A Job that could not be created (quota, API trouble): the Task gives its slot back and waits
        out its own back-off, out of the queue's way, saying why in its status."""
        failures = self.start_failures.get(task.uid, 0)
        self.start_failures[task.uid] = failures + 1
        delay = min(
            self.settings.retry_base_seconds * 2 ** min(failures, 30), self.settings.retry_max_seconds
        )
        self.blocked_until[task.uid] = time.monotonic() + delay
        self.admission_needed.set()
        # An admission pass when the back-off ends, whatever else happens by then.
        asyncio.get_running_loop().call_later(delay + 0.01, self.admission_needed.set)
        message = f"creating the Job failed ({reason}); trying again in {delay:.0f}s"
        with contextlib.suppress(Exception):
            await self._patch_status(task, {"reason": "JobCreateFailed", "message": message})

    async def _ensure_agent_account(self, namespace: str) -> None:
        """The ServiceAccount of agent pods whose Agent names none, created once per namespace. One
        that exists under that name is used as it is: an administrator may have made it on purpose.
        Checked again after a while, so one deleted (or a namespace made anew) comes back."""
        if time.monotonic() - self.agent_accounts.get(namespace, -AGENT_ACCOUNT_RECHECK_SECONDS) < (
            AGENT_ACCOUNT_RECHECK_SECONDS
        ):
            return
        body = {
            "metadata": {
                "name": AGENT_SERVICE_ACCOUNT,
                "labels": {"app.kubernetes.io/managed-by": "taskyard", "app.kubernetes.io/name": "taskyard"},
            },
            "automountServiceAccountToken": False,
        }
        try:
            await send(client.CoreV1Api(self.api).create_namespaced_service_account, namespace, body)
        except ApiException as error:
            if error.status != 409:
                raise
        self.agent_accounts[namespace] = time.monotonic()

    async def _ensure_egress_policy(self, namespace: str, policy: dict[str, Any]) -> None:
        """The NetworkPolicy that limits where the agent's pod may connect, in place before every Job:
        read each time (one deleted, or a namespace made anew, must never let a pod out unrestricted),
        created when missing, brought back in line when the Agent or the operator's settings change it.
        A policy of that name that is not labelled as taskyard's is an administrator's, used as it is."""
        name = policy["metadata"]["name"]
        # The API server fills in defaults (a port's protocol), so what was asked for is compared by digest.
        wanted = hashlib.sha256(json.dumps(policy["spec"], sort_keys=True).encode()).hexdigest()[:16]
        metadata = {**policy["metadata"], "annotations": {ANNOTATION_SPEC_DIGEST: wanted}}
        policy = {**policy, "metadata": metadata}
        networking = client.NetworkingV1Api(self.api)
        try:
            try:
                existing = await networking.read_namespaced_network_policy(name, namespace)
            except ApiException as error:
                if error.status != 404:
                    raise
                try:
                    await send(networking.create_namespaced_network_policy, namespace, policy)
                except ApiException as error:
                    if error.status != 409:  # made by another worker meanwhile, from the same spec
                        raise
                return
            labels = existing.metadata.labels or {}
            digest = (existing.metadata.annotations or {}).get(ANNOTATION_SPEC_DIGEST)
            if labels.get("app.kubernetes.io/managed-by") == "taskyard" and digest != wanted:
                policy["metadata"]["resourceVersion"] = existing.metadata.resource_version
                await send(networking.replace_namespaced_network_policy, name, namespace, policy)
        except ApiException as error:
            if error.status in (400, 422):
                source = (
                    "the operator's default egress" if name == DEFAULT_EGRESS_POLICY else "the Agent's egress"
                )
                raise EgressPolicyRejected(
                    f"the API server rejected NetworkPolicy {name}, made from {source}: {_api_reason(error)}"
                ) from None
            raise

    async def _create_owned(
        self, task: TaskRecord, kind: str, body: dict[str, Any], create: Any, read: Any
    ) -> None:
        """Creates an object named after the Task; an existing one is accepted only if the Task owns it."""
        try:
            await send(create, task.namespace, body)
            return
        except ApiException as error:
            if error.status != 409:
                raise
        name = body["metadata"]["name"]
        existing = await read(name, task.namespace)
        owners = existing.metadata.owner_references or []
        if any(owner.uid == task.uid for owner in owners):
            return  # ours: created by an earlier attempt whose answer was lost
        namesake = any(
            o.kind == "Task" and o.api_version == API_VERSION and o.name == task.name for o in owners
        )
        if namesake:
            raise _NamesakeLeaving()
        raise NameConflict(
            f"a {kind} named {name!r} already exists in namespace {task.namespace!r} and the Task does "
            "not own it; taskyard leaves it alone: rename the Task or remove that object"
        )

    def _log_config_map(self, task: TaskRecord) -> dict[str, Any]:
        return {
            "metadata": {
                "name": log_config_map_name(task.name),
                "labels": {
                    LABEL_TASK: label_value_for(task.name),
                    "app.kubernetes.io/managed-by": "taskyard",
                },
                "ownerReferences": [owner_reference(task.name, task.uid)],
            }
        }

    async def _fail(self, task: TaskRecord, reason: str, message: str) -> None:
        now = _now()
        generation = task.generation
        condition = {"type": "Succeeded", "status": "False", "reason": reason, "message": message}
        condition.update(lastTransitionTime=now, observedGeneration=generation)
        patch = {"phase": "Failed", "reason": reason, "message": message, "completionTime": now}
        patch["observedGeneration"] = generation
        patch["conditions"] = [condition]
        await self._patch_status(task, patch)
        self.events.record(task.as_task(), "Warning", reason, message)
        _count_finished(task, patch)

    # --- keeping a Task's status current -----------------------------------------------------------

    async def _sync(self, task: TaskRecord) -> None:
        current = self.current_status(task)
        body = task.as_task(current)
        spec = body["spec"]
        job = self._job_of(task.uid)
        reservation = self.reserved.get(task.uid)
        if job is not None and reservation is not None:
            del self.reserved[task.uid]  # the Job holds the slot from now on
            reservation = None
        known_job = current.get("jobName") or self.created_jobs.get(task.uid)
        if job is None and known_job and not spec.get("cancel") and not _still_expected(reservation):
            if await self._job_exists_unseen(task, known_job):
                self._wait_for_the_watch(task, known_job, reservation)
                return
            self.reserved.pop(task.uid, None)  # confirmed gone: the Task fails below (JobDeleted)
            reservation = None
        pods = self._pods_of(job) if job is not None else []
        pod = deciding_pod(pods, job_complete=job is not None and job.view.complete)
        extra: dict[str, Any] = {}
        collected_pod = None
        stop_job = job is not None and not job.view.finished and not job.view.deleting
        if spec.get("cancel") and (stop_job or (job is None and reservation is not None)):
            if pod is not None:  # salvage what the agent wrote before it is stopped
                fields, _ = await self._collect_logs(task, pods, pod, final=True)
                extra.update(fields)
                collected_pod = (pod.name, pod.terminated)
            await self._delete_job(task.namespace, job.view.name if job else reservation.job_name)  # type: ignore[union-attr]
            self.reserved.pop(task.uid, None)
            reservation = None

        agent = self.resolve_agent(task.namespace, task.agent)
        claim = workspace_claim_name(task.name) if (spec.get("workspace") or {}).get("size") else None
        requested = reservation.job_name if reservation is not None and reservation.created else None
        seen = Observation(
            job=job.view if job is not None else None,
            pod=pod,
            agent_found=agent is not None,
            agent_description=_missing_agent(task.namespace, task.agent),
            job_requested=requested if job is None else None,
            queued_message=self._queued_message(task),
            workspace_claim=claim if (job is not None or requested) else None,
            **self._startup_checks(task, job, pod, agent, claim),
        )
        if job is not None and job.view.finished and pod is not None and not pod.terminated:
            # The Job's final event can overtake its pod's: read the pod itself for the exit code and logs.
            pod = await self._read_pod(task.namespace, pod)
            seen = dataclasses.replace(seen, pod=pod)
        elif job is not None and job.view.finished and pod is None:
            # A pods watch with a gap may never have shown the pod: its exit code and log are the Task's.
            pods = await self._pods_from_api(task.namespace, job)
            pod = deciding_pod(pods, job_complete=job.view.complete)
            seen = dataclasses.replace(seen, pod=pod)
        desired = derive_status(body, seen, _now())
        if stop_job and _stops_the_job(desired):
            # Deleting the Job stops its agent, so the pods it is decided on are read from the API server:
            # a watch gap can leave the cache without a pod that runs, or with one still waiting to.
            pods = await self._pods_from_api(task.namespace, job)  # type: ignore[arg-type]
            pod = deciding_pod(pods, job_complete=False)
            checks = {"startup_overdue": None, "image_pull_patience_over": True}  # unless found again
            checks.update(self._startup_checks(task, job, pod, agent, claim))
            desired = derive_status(body, dataclasses.replace(seen, pod=pod, **checks), _now())
        if stop_job and _stops_the_job(desired):
            # The kubelet or the Job controller would keep trying (and hold the slot) until the timeout.
            await self._delete_job(task.namespace, job.view.name)  # type: ignore[union-attr]
        if job is None and requested is None and known_job and not spec.get("cancel"):
            desired = _job_lost(desired, known_job)
        backing_off = self.blocked_until.get(task.uid, 0) > time.monotonic()
        if (
            backing_off
            and desired.get("reason") == "WaitingForCapacity"
            and current.get("reason") == "JobCreateFailed"
        ):
            desired = {**desired, "reason": current["reason"], "message": current.get("message", "")}
        # Each attempt's output is kept when it ends, or as soon as its pod starts shutting down (a
        # timeout or cancel deletes the pod, and its log with it).
        followed = self.log_followers.result(task.uid)
        if followed is not None and followed.log is not None:
            fields = await self._keep_collected(task, followed.attempt, followed.pod, followed.log)
            if pod is None or pod.name == followed.pod:  # not when a newer attempt's pod is the one shown
                extra.update(fields)
                if pod is not None and pod.terminated:
                    result = task_result(pod.termination_message, pod.exit_code)
                    if result is not None:
                        extra["result"] = result
                # An end not yet seen is read once more, for its result.
                collected_pod = (followed.pod, pod is None or pod.terminated)
        if pod is not None and pod.deleting and not pod.terminated:
            deadline = (pod.grace_seconds if pod.grace_seconds is not None else 30) + 10
            self.log_followers.start(task.uid, task.namespace, pod.name, _attempt(pods, pod), deadline)
        if (
            pod is not None
            # An evicted pod's status can say so while its agent still runs: the Task is final then,
            # and the kubelet removes the log with the container, so it is read at once.
            and (pod.terminated or pod.deleting or pod.evicted_message is not None)
            and collected_pod is None
            and not self.log_followers.following(task.uid, pod.name)
            and self._needs_collecting(task.uid, pod)
        ):
            final = desired.get("phase") in TERMINAL_PHASES
            fields, settled = await self._collect_logs(task, pods, pod, final=final)
            extra.update(fields)
            collected_pod = (pod.name, pod.terminated) if settled else None
        # A final status carries all the agent wrote: it waits for a follow to end (the agent's exit,
        # or the grace period and a little more), and the follow's end brings the Task back.
        holding = desired.get("phase") in TERMINAL_PHASES and self.log_followers.following(task.uid)
        patch = {} if holding else status_changes(dict(current), desired)
        patch.update(extra)
        if patch:
            await self._patch_status(task, patch)
            if "phase" in patch:
                _announce(self.events, body, desired)
                if desired["phase"] in TERMINAL_PHASES:
                    _count_finished(task, {**current, **patch})
            elif desired.get("attempts", 0) > max(current.get("attempts", 0), 1):
                message = f"attempt {desired['attempts']} started; the previous one failed"
                self.events.record(body, "Normal", "Retrying", message)
        if collected_pod is not None:
            # Only once the status carries it: a failed write collects again on the next try.
            self.logs_collected_from[task.uid] = collected_pod
        if followed is not None:
            self.log_followers.release(task.uid, followed)
        if (
            desired.get("phase") in TERMINAL_PHASES
            and not holding
            and claim
            and not (spec.get("workspace") or {}).get("keep", True)
        ):
            await self._delete_claim(task, claim)

    async def _job_exists_unseen(self, task: TaskRecord, name: str) -> bool:
        """Whether the Task's Job exists although the watch does not show it. The cache alone never
        decides that a Job is gone: a watch gap longer than the wait for a new Job would otherwise fail
        Tasks whose agents are running (client-go's controllers make the same uncached read before acting
        on an absence). Errors propagate: the reconcile is tried again, nothing is decided."""
        try:
            job = await client.BatchV1Api(self.api).read_namespaced_job(name, task.namespace)
        except ApiException as error:
            if error.status == 404:
                return False
            raise
        # Not another Task's namesake, not one the watch would never show (its label or owner taken
        # away), not being deleted outside taskyard: otherwise the Task's Job is gone as far as it can tell.
        owners = job.metadata.owner_references or []
        return (
            any(o.uid == task.uid and o.controller for o in owners)
            and LABEL_TASK in (job.metadata.labels or {})
            and job.metadata.deletion_timestamp is None
        )

    def _wait_for_the_watch(self, task: TaskRecord, job_name: str, reservation: Reservation | None) -> None:
        """Nothing is decided while the watch is behind; the Job is looked for again later."""
        logger.info(
            "%s/%s: the Job %s exists but the watch has not shown it yet; waiting for the watch",
            task.namespace,
            task.name,
            job_name,
        )
        if reservation is not None:
            reservation.at = time.monotonic()  # asked again only after another wait
            reservation.confirming = False
        self.queue.add_after(task.key, RESERVATION_TTL if reservation is not None else JOB_RECHECK_SECONDS)

    def _needs_collecting(self, uid: str, pod: PodView) -> bool:
        collected = self.logs_collected_from.get(uid)
        if collected is None or collected[0] != pod.name:
            return True
        return pod.terminated and not collected[1]

    def _startup_checks(
        self,
        task: TaskRecord,
        job: JobRecord | None,
        pod: PodView | None,
        agent: ResolvedAgent | None,
        claim: str | None,
    ) -> dict[str, Any]:
        """The start-up deadline and the image-pull patience for a Job whose agent has not started;
        the Task is looked at again when either runs out, whatever the watches say."""
        if job is None or job.view.finished or (pod is not None and (pod.running or pod.terminated)):
            return {}
        now = time.time()
        account = (agent.spec.get("serviceAccountName") if agent is not None else None) or None
        checks: dict[str, Any] = {
            "startup_overdue": startup_overdue(
                job.view, pod, now, self.settings.startup_deadline_seconds, account, claim
            )
        }
        due = [_epoch(waiting_since(job.view, pod)) + self.settings.startup_deadline_seconds]
        if pod is not None and pod.waiting_reason in IMAGE_PULL_FAILURES:
            checks["image_pull_patience_over"] = image_pull_patience_over(
                pod, now, self.settings.image_pull_patience_seconds
            )
            due.append(_epoch(pod.created) + self.settings.image_pull_patience_seconds)
        pending = [at for at in due if at > now]
        if pending:
            self.queue.add_after(task.key, min(pending) - now + 0.5)
        return checks

    def _queued_message(self, task: TaskRecord) -> str:
        limits = []
        if self.settings.max_concurrent:
            limits.append(f"{self.settings.max_concurrent} in the cluster")
        if self.settings.max_concurrent_per_namespace:
            limits.append(f"{self.settings.max_concurrent_per_namespace} per namespace")
        if self.settings.max_concurrent_per_agent:
            limits.append(f"{self.settings.max_concurrent_per_agent} per agent")
        where = f" (at most {', '.join(limits)})" if limits else ""
        return f"waiting for a free slot under the concurrency limits{where}"

    async def _collect_logs(
        self, task: TaskRecord, pods: list[PodView], pod: PodView, final: bool
    ) -> tuple[dict[str, Any], bool]:
        """Reads an attempt's output before its pod can go away and keeps it in the Task's log ConfigMap.
        Returns the status fields it feeds (logTail, result) and whether the pod is done with (read,
        or nothing to read, or the Task is final). Never raises: a log that cannot be read must not
        hold up the status or a cancel."""
        collected: dict[str, Any] = {}
        result = task_result(pod.termination_message, pod.exit_code)
        if result is not None:
            collected["result"] = result
        try:
            log = await read_log_to_its_end(
                self.api, task.namespace, pod.name, "agent", deadline=self.settings.log_read_seconds
            )
        except LogUnavailable:
            if pod.evicted_message is not None:
                # The kubelet removes an evicted pod's containers, logs included, as soon as they exit;
                # the status says so rather than showing an empty tail as if the agent wrote nothing.
                collected["logTail"] = _empty_log_note(pod)
            return collected, True  # never started (or already gone): nothing to keep
        except Exception as error:
            logger.warning("reading the log of pod %s failed: %s", pod.name, _describe(error))
            if final:
                note = f"[taskyard: the log of pod {pod.name} could not be read: {_describe(error)}]"
                collected["logTail"] = note
            return collected, final
        collected.update(await self._keep_collected(task, _attempt(pods, pod), pod.name, log))
        if log.total_bytes == 0:
            collected["logTail"] = _empty_log_note(pod)
        return collected, True

    async def _keep_collected(
        self, task: TaskRecord, attempt: int, pod_name: str, log: CollectedLog
    ) -> dict[str, Any]:
        """Keeps an attempt's log in the Task's log ConfigMap; returns the status's logTail for it."""
        try:
            await self._keep_log(task, attempt, pod_name, log.text)
        except Exception as error:
            logger.warning("keeping the log of %s/%s failed: %s", task.namespace, task.name, _describe(error))
        return {"logTail": tail_lines(log.text, LOG_TAIL_LINES, LOG_TAIL_BYTES)}

    async def _keep_log(self, task: TaskRecord, attempt: int, pod_name: str, text: str) -> None:
        core = client.CoreV1Api(self.api)
        name = log_config_map_name(task.name)
        packed = base64.b64encode(pack_log(text)).decode()
        try:
            existing = await core.read_namespaced_config_map(name, task.namespace)
        except ApiException as error:
            if error.status != 404:
                raise
            body = self._log_config_map(task)
            body["binaryData"] = {log_key(attempt): packed}
            body["data"] = {pod_key(attempt): pod_name}
            await send(core.create_namespaced_config_map, task.namespace, body)
            return
        if not any(owner.uid == task.uid for owner in existing.metadata.owner_references or []):
            logger.warning(
                "ConfigMap %s/%s is not owned by its Task; its log is not kept", task.namespace, name
            )
            return
        binary = dict(existing.binary_data or {})
        binary[log_key(attempt)] = packed
        sizes = {int(k.split("-")[1].split(".")[0]): len(v) * 3 // 4 for k, v in binary.items()}
        keep = attempts_to_keep(sizes)
        dropped = [n for n in sizes if n not in keep]  # the oldest attempts, when all would not fit
        patch = {
            "binaryData": {log_key(attempt): packed, **{log_key(n): None for n in dropped}},
            "data": {pod_key(attempt): pod_name, **{pod_key(n): None for n in dropped}},
        }
        await send(core.patch_namespaced_config_map, name, task.namespace, patch)

    async def _read_pod(self, namespace: str, pod: PodView) -> PodView:
        try:
            body = await client.CoreV1Api(self.api).read_namespaced_pod(pod.name, namespace)
        except ApiException as error:
            if error.status == 404:
                return pod
            raise
        return PodView.from_body(self.api.sanitize_for_serialization(body))

    async def _delete_job(self, namespace: str, name: str, propagation: str = "Foreground") -> None:
        # Foreground: the Job stays (and keeps its slot) until its pods are gone, so a cancelled Task
        # cannot let a queued one start while its agent is still shutting down.
        batch = client.BatchV1Api(self.api)
        await _delete_ignoring_missing(
            send(batch.delete_namespaced_job, name, namespace, propagation_policy=propagation)
        )

    async def _delete_claim(self, task: TaskRecord, claim: str) -> None:
        """Deletes the Task's workspace claim, only if the Task owns it (and only that very object)."""
        core = client.CoreV1Api(self.api)
        try:
            existing = await core.read_namespaced_persistent_volume_claim(claim, task.namespace)
        except ApiException as error:
            if error.status == 404:
                return
            raise
        if not any(owner.uid == task.uid for owner in existing.metadata.owner_references or []):
            return
        options = client.V1DeleteOptions(preconditions=client.V1Preconditions(uid=existing.metadata.uid))
        await _delete_ignoring_missing(
            core.delete_namespaced_persistent_volume_claim(claim, task.namespace, body=options)
        )

    async def _tidy_finished(self, task: TaskRecord) -> None:
        """A finished Task's clean-up: after the retention period its Job and pods go (its logs were
        kept in its ConfigMap; `kubectl logs job/<task>` works until then), and after its TTL, if it
        has one, the Task itself."""
        now = time.time()
        finished = _epoch(task.status.get("completionTime"))
        ttl = task.ttl if task.ttl is not None else self.settings.task_ttl_seconds
        if ttl is not None and now >= finished + ttl:
            # The uid precondition: a namesake created meanwhile is never deleted in its place.
            options = client.V1DeleteOptions(
                preconditions=client.V1Preconditions(uid=task.uid), propagation_policy="Background"
            )
            await _delete_ignoring_missing(
                client.CustomObjectsApi(self.api).delete_namespaced_custom_object(
                    GROUP, VERSION, task.namespace, "tasks", task.name, body=options
                ),
                also=(409,),
            )
            return
        job = self._job_of(task.uid)
        if (
            job is not None
            and not job.view.deleting
            and now >= finished + self.settings.job_retention_seconds
        ):
            await self._delete_job(task.namespace, job.view.name, propagation="Background")
        due = self._tidy_due(task)
        if due is not None and due > now:
            self.queue.add_after(task.key, due - now)

    async def _patch_status(self, task: TaskRecord, patch: dict[str, Any]) -> None:
        try:
            updated = await client.CustomObjectsApi(self.api).patch_namespaced_custom_object_status(
                GROUP,
                VERSION,
                task.namespace,
                "tasks",
                task.name,
                {"status": patch},
                _content_type=MERGE_PATCH,
            )
        except ApiException as error:
            if error.status != 404:  # deleted meanwhile: nothing left to report on
                raise
            return
        if updated["metadata"].get("uid") != task.uid:
            return
        status = updated.get("status") or {}
        self.written[task.uid] = (
            updated["metadata"]["resourceVersion"],
            {k: status[k] for k in MANAGED_FIELDS if k in status},
        )


AGENT_ACCOUNT_RECHECK_SECONDS = 300.0


def _refused_overrides_message(names: list[str], agent_ref: str) -> str:
    listed = ", ".join(names)
    return (
        f"spec.env sets {listed}, which {agent_ref} sets itself and does not list in spec.overridableEnv: "
        "an Agent's variables are its author's; remove them from the Task, or have the Agent list them"
    )


def _attempt(pods: list[PodView], pod: PodView) -> int:
    """Which attempt a pod ran (pods oldest first); the latest when it is no longer listed."""
    return next((n for n, p in enumerate(pods, start=1) if p.name == pod.name), max(len(pods), 1))


ANNOTATION_SPEC_DIGEST = "taskyard.dev/spec-digest"


class EgressPolicyRejected(Exception):
    """The API server refused the NetworkPolicy an Agent's egress rules make."""


class _NamesakeLeaving(Exception):
    """The object under the Task's name belongs to a deleted Task of the same name."""


def _return_freed_memory() -> None:
    # The initial lists parse every object once and keep only small records: glibc keeps the freed
    # heap mapped unless asked, which would make a big start-up look like a big operator for ever.
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _ignore(*_: Any) -> None:
    return None


def _first(values: list[Any]) -> Any:
    return values[0] if values else None


def _not_older(version: str, than: str) -> bool:
    """Whether resourceVersion ``version`` is at least ``than``. Versions are opaque by contract but
    etcd revisions in practice; an unparsable one only compares equal."""
    try:
        return int(version) >= int(than)
    except ValueError:
        return version == than


def _empty_log_note(pod: PodView) -> str:
    """What logTail says when the kubelet gives no output for an attempt: why that may be."""
    if pod.evicted_message is not None:
        return f"[taskyard: the kubelet removed the log of pod {pod.name} when it evicted it]"
    # The kubelet rotates a running container's log past containerLogMaxSize and serves only the newest
    # file: output followed by a quiet spell (rotation comes every 10 s) leaves that file empty.
    return (
        f"[taskyard: the kubelet served an empty log for pod {pod.name}: the agent wrote nothing, or it "
        "wrote more than the kubelet's containerLogMaxSize (10 MiB unless configured) and nothing after "
        "the kubelet last rotated it; the kubelet serves only the newest of its rotated files]"
    )


def _oldest_first(pods: Iterable[PodView]) -> list[PodView]:
    return sorted(pods, key=lambda p: (p.created, p.name))


def _stops_the_job(desired: dict[str, Any]) -> bool:
    """Whether the status fails the Task for a reason the operator stops the Job for."""
    return desired.get("phase") == "Failed" and desired.get("reason") in STOPPED_BY_OPERATOR


def _still_expected(reservation: Reservation | None) -> bool:
    """Whether a Job created for a reservation may still be on its way through the watch."""
    return (
        reservation is not None
        and reservation.created
        and time.monotonic() - reservation.at <= RESERVATION_TTL
    )


def _job_lost(desired: dict[str, Any], job_name: str) -> dict[str, Any]:
    message = f"the Job {job_name} was deleted outside taskyard before the Task finished"
    lost = {**desired, "phase": "Failed", "reason": "JobDeleted", "message": message}
    lost["completionTime"] = desired.get("completionTime") or _now()
    lost["conditions"] = [
        {**desired["conditions"][0], "status": "False", "reason": "JobDeleted", "message": message}
    ]
    return lost


def _missing_agent(namespace: str, name: str) -> str:
    return (
        f"agent {name!r} not found: no Agent {name!r} in namespace {namespace!r} and no ClusterAgent "
        f"{name!r}; the Task starts once one exists"
    )


def _announce(events: EventRecorder, task: dict[str, Any], status: dict[str, Any]) -> None:
    phase, reason, message = status.get("phase"), status.get("reason", ""), status.get("message", "")
    if reason == "Starting":
        return  # the Admitted event said as much, a moment before: an Event is a write like any other
    warning = phase == "Failed" or reason == "AgentNotFound"
    events.record(task, "Warning" if warning else "Normal", reason or phase or "Unknown", message)


def _count_finished(task: TaskRecord, status: dict[str, Any]) -> None:
    agent = task.agent
    metrics.TASKS_FINISHED.labels(agent=agent, outcome=status["phase"]).inc()
    if status.get("startTime") and status.get("completionTime"):
        seconds = _epoch(status["completionTime"]) - _epoch(status["startTime"])
        metrics.TASK_DURATION.labels(agent=agent).observe(max(seconds, 0))
    usage = (status.get("result") or {}).get("usage") or {}
    for direction in ("input", "output"):
        if usage.get(f"{direction}Tokens"):
            tokens = metrics.TASK_TOKENS.labels(agent=agent, namespace=task.namespace, direction=direction)
            tokens.inc(usage[f"{direction}Tokens"])
    if usage.get("costUSD"):
        metrics.TASK_COST.labels(agent=agent, namespace=task.namespace).inc(usage["costUSD"])


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _epoch(timestamp: str | None) -> float:
    if not timestamp:
        return datetime.now(UTC).timestamp()
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


def _api_reason(error: ApiException) -> str:
    try:
        return json.loads(error.body).get("message") or str(error.reason)
    except (TypeError, ValueError, AttributeError):
        return str(error.reason)


def _describe(error: BaseException) -> str:
    if isinstance(error, ApiException):
        return f"HTTP {error.status}: {_api_reason(error)}"
    if isinstance(error, TimeoutError):
        return "timed out"
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


async def _delete_ignoring_missing(call: Any, also: tuple[int, ...] = ()) -> None:
    try:
        await call
    except ApiException as error:
        if error.status != 404 and error.status not in also:  # 409: the precondition names another object
            raise
