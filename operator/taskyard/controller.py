"""The operator's moves: read the cached view of the cluster, call the pure core, write the result.

Everything that touches the API server lives here; everything that decides lives in the pure modules
(:mod:`taskyard.phase`, :mod:`taskyard.queue`, :mod:`taskyard.render`). The kopf handlers in
:mod:`taskyard.handlers` only mark Tasks dirty; one worker (:meth:`Controller.run`) does the work in
passes: an admission pass (never two at once, so two Tasks never both take the last free slot), then
the dirty Tasks side by side (each touches only its own objects). A Task is never reconciled twice at
the same time, and the status it last wrote is remembered until the watch shows it, so a status is
never written from a view older than one already written.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
import kopf
from kubernetes_asyncio import client
from kubernetes_asyncio.client.rest import ApiException

from taskyard import metrics
from taskyard.api import API_VERSION, GROUP, LABEL_TASK, VERSION, SpecError, parse_agent_spec, parse_task_spec
from taskyard.logstore import attempts_to_keep, log_config_map_name, log_key, pack_log, pod_key
from taskyard.phase import (
    IMAGE_PULL_FAILURES,
    TERMINAL_PHASES,
    JobView,
    Observation,
    PodView,
    derive_status,
    newest_pod,
    status_changes,
    tail_lines,
)
from taskyard.queue import Limits, QueueEntry, select_admissions
from taskyard.render import (
    TaskRef,
    label_value_for,
    owner_reference,
    render_job,
    render_workspace_claim,
    workspace_claim_name,
)
from taskyard.settings import OperatorSettings

logger = logging.getLogger("taskyard")

# (namespace, value of the taskyard.dev/task label): how Tasks, their Jobs and their Pods find each other.
TaskKey = tuple[str, str]
ANNOTATION_AGENT_REF = "taskyard.dev/agent-ref"
# When the operator admitted the Task, to the microsecond (metadata timestamps only have seconds).
ANNOTATION_ADMITTED_AT = "taskyard.dev/admitted-at"
MERGE_PATCH = "application/merge-patch+json"
START_CONCURRENCY = 16  # Tasks started at once in one admission pass
RECONCILE_CONCURRENCY = 32  # Tasks reconciled at once in one pass
LOG_TAIL_LINES = 50
LOG_TAIL_BYTES = 8192
LOG_KEEP_LINES = 20000  # read per attempt; the log store keeps the last 256 KiB of it


class InstrumentedApiClient(client.ApiClient):
    """The API client, counting every request it sends (``taskyard_api_requests_total``)."""

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        metrics.API_REQUESTS.labels(method=method).inc()
        return super().request(method, url, *args, **kwargs)


@dataclass(frozen=True)
class ResolvedAgent:
    """An Agent or ClusterAgent a Task can run on. ``ref`` identifies it for per-agent limits."""

    ref: str
    name: str
    spec: dict[str, Any]


@dataclass(frozen=True)
class ClusterView:
    """Read-only lookups over kopf's indexes (each maps a key to the values indexed under it)."""

    tasks: Mapping[TaskKey, Iterable[dict[str, Any]]]
    waiting: Mapping[TaskKey, Iterable[dict[str, Any]]]
    jobs: Mapping[TaskKey, Iterable[JobView]]
    active_jobs: Mapping[TaskKey, Iterable[str]]
    live_pods: Mapping[TaskKey, Iterable[str]]
    priority_classes: Mapping[str, Iterable[bool]]
    pods: Mapping[TaskKey, Iterable[PodView]]
    agents: Mapping[tuple[str, str], Iterable[dict[str, Any]]]
    cluster_agents: Mapping[str, Iterable[dict[str, Any]]]

    def task(self, key: TaskKey) -> dict[str, Any] | None:
        return _first(self.tasks.get(key))

    def job(self, key: TaskKey) -> JobView | None:
        """The Job of the Task now under this key (not one left over from a deleted namesake)."""
        task = self.task(key)
        uid = task["metadata"].get("uid") if task else None
        return next((job for job in self.jobs.get(key) or [] if job.owner_uid == uid), None)

    def job_pods(self, key: TaskKey) -> list[PodView]:
        """The pods of the Task's Job, oldest first: attempt n ran in the n-th."""
        job = self.job(key)
        if job is None:
            return []
        return sorted(
            (p for p in self.pods.get(key) or [] if p.job_uid == job.uid), key=lambda p: (p.created, p.name)
        )

    def pod(self, key: TaskKey) -> PodView | None:
        """The newest pod of the Task's Job."""
        return newest_pod(self.job_pods(key))

    def attempt_of(self, key: TaskKey, pod: PodView) -> int:
        """The 1-based attempt number of one of the Task's pods."""
        names = [p.name for p in self.job_pods(key)]
        return names.index(pod.name) + 1 if pod.name in names else max(len(names), 1)

    def resolve_agent(self, namespace: str, name: str) -> ResolvedAgent | None:
        """The same-namespace Agent of that name, else the ClusterAgent, else None."""
        spec = _first(self.agents.get((namespace, name)))
        if spec is not None:
            return ResolvedAgent(ref=f"Agent/{namespace}/{name}", name=name, spec=spec)
        spec = _first(self.cluster_agents.get(name))
        if spec is not None:
            return ResolvedAgent(ref=f"ClusterAgent/{name}", name=name, spec=spec)
        return None


def _first(values: Iterable[Any] | None) -> Any:
    return next(iter(values), None) if values is not None else None


@dataclass
class Controller:
    """The operator's state: its API client, settings, and Jobs it created that the watch has not shown."""

    api: client.ApiClient
    settings: OperatorSettings
    dirty: set[TaskKey | None] = field(default_factory=set)
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    worker: asyncio.Task[None] | None = None
    # Jobs created whose watch event has not arrived yet: key -> (namespace, agent ref, job name).
    requested: dict[TaskKey, tuple[str, str, str]] = field(default_factory=dict)
    # Status as last written, until the watch delivers that write: the operator is the only writer of
    # status, so this is never older than what the index shows, and it keeps stale events from
    # writing (and announcing) the same transition twice.
    written: dict[TaskKey, tuple[str, dict[str, Any]]] = field(default_factory=dict)
    failures: dict[TaskKey | None, int] = field(default_factory=dict)
    # The pod whose output is in status.logTail; after a restart it is read once more, which is harmless.
    logs_collected_from: dict[TaskKey, str] = field(default_factory=dict)
    view: ClusterView | None = None  # the latest, for metrics scraped between events

    def known_tasks(self) -> list[dict[str, Any]]:
        """Every Task in the operator's cache (for metrics)."""
        if self.view is None:
            return []
        # With the status last written where the watch has not caught up yet.
        current = (self.current_task(key, self.view) for key in list(self.view.tasks.keys()))
        return [task for task in current if task is not None]

    def forget(self, key: TaskKey) -> None:
        """Drops what is remembered of a deleted Task."""
        self.requested.pop(key, None)
        self.written.pop(key, None)
        self.logs_collected_from.pop(key, None)

    def current_task(self, key: TaskKey, view: ClusterView) -> dict[str, Any] | None:
        """The Task from the index, with the status this operator last wrote if the index lags behind."""
        task = view.task(key)
        if task is None:
            return None
        written = self.written.get(key)
        if written is None:
            return task
        version, status = written
        if task["metadata"].get("resourceVersion") == version:
            del self.written[key]
            return task
        return {**task, "status": status}

    def enqueue(self, view: ClusterView, *keys: TaskKey | None) -> None:
        """Marks Tasks for reconciliation (None: only an admission pass) and wakes the worker."""
        self.view = view
        self.dirty.update(keys)
        self.wakeup.set()
        if self.worker is None:
            # Started from the first handler, not at start-up: a task inherits the context it is
            # created in, and kopf sets up event posting (kopf.event) for handlers only.
            self.worker = asyncio.get_running_loop().create_task(self.run())

    async def stop(self) -> None:
        """Stops the worker (at operator shutdown)."""
        if self.worker is not None:
            self.worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.worker

    async def run(self) -> None:
        """The single worker. Events only mark Tasks dirty; each pass takes every dirty Task at once,
        runs one admission pass, then reconciles them side by side. A burst of events thus costs a few
        passes rather than one locked round trip each, and admission is never run twice at a time, so
        two Tasks can never both take the last free slot."""
        while True:
            await self.wakeup.wait()
            self.wakeup.clear()
            keys, self.dirty = self.dirty, set()
            await self._pass({key for key in keys if key is not None})

    async def _pass(self, keys: set[TaskKey]) -> None:
        view = self.view
        if view is None:
            return
        try:
            await self.admit(view)  # first, so a Task that can start at once is never shown as Queued
            self.failures.pop(None, None)
        except Exception as error:
            self._retry_later(None, error)
        gate = asyncio.Semaphore(RECONCILE_CONCURRENCY)

        async def reconcile(key: TaskKey) -> None:
            async with gate:
                try:
                    await self.reconcile(key, view)
                    self.failures.pop(key, None)
                except Exception as error:
                    self._retry_later(key, error)

        await asyncio.gather(*(reconcile(key) for key in keys))

    def _retry_later(self, key: TaskKey | None, error: Exception) -> None:
        # kopf does not retry event handlers, and a level-triggered operator must not lose a change
        # because one request failed: the Task is marked dirty again after a growing delay.
        failures = self.failures.get(key, 0) + 1
        self.failures[key] = failures
        delay = min(2.0 * 2 ** (failures - 1), 60.0)
        if isinstance(error, (TimeoutError, ApiException, aiohttp.ClientError, OSError)):
            logger.warning("reconciling %s failed (%s); retrying in %.0fs", key or "admission", error, delay)
        else:
            logger.exception("reconciling %s failed; retrying in %.0fs", key or "admission", delay)
        metrics.RECONCILE_ERRORS.inc()
        asyncio.get_running_loop().call_later(delay, lambda: self.enqueue(self.view, key))

    # --- admission ---------------------------------------------------------------------------------

    async def admit(self, view: ClusterView) -> None:
        """Starts as many waiting Tasks as the concurrency limits allow, in priority order."""
        for key in [key for key in self.requested if view.job(key) is not None or view.task(key) is None]:
            del self.requested[key]
        # A slot is held by an unfinished Job, a Job being created, or pods still shutting down (a deleted
        # Task's Job can vanish before its pods do).
        holders: dict[TaskKey, str] = {}
        for index in (view.live_pods, view.active_jobs):
            for key, refs in index.items():
                for agent_ref in refs:
                    holders[key] = agent_ref
        holders.update({key: agent_ref for key, (_, agent_ref, _) in self.requested.items()})
        running = [(namespace, agent_ref) for (namespace, _), agent_ref in holders.items()]
        candidates: dict[TaskKey, tuple[dict[str, Any], ResolvedAgent]] = {}
        for key, tasks in view.waiting.items():
            if _first(tasks) is None or any(True for _ in view.jobs.get(key) or []) or key in self.requested:
                continue
            # The index may not show our latest status write yet; that write is the truth.
            task = self.current_task(key, view) or _first(tasks)
            status = task.get("status") or {}
            if status.get("jobName") or status.get("phase") in TERMINAL_PHASES:
                continue
            agent = view.resolve_agent(task["metadata"]["namespace"], task["spec"].get("agent", ""))
            if agent is not None:
                candidates[key] = (task, agent)
        if not candidates:
            metrics.QUEUE_DEPTH.set(0)
            return
        waiting = [
            QueueEntry(
                namespace=task["metadata"]["namespace"],
                name=task["metadata"]["name"],
                agent=agent.ref,
                priority=task["spec"].get("priority", "medium"),
                created=_epoch(task["metadata"].get("creationTimestamp")),
            )
            for task, agent in candidates.values()
        ]
        per_agent = {}
        for _, agent in candidates.values():
            limit = agent.spec.get("maxConcurrent") or self.settings.max_concurrent_per_agent
            if limit:
                per_agent[agent.ref] = limit
        limits = Limits(
            total=self.settings.max_concurrent,
            per_namespace=self.settings.max_concurrent_per_namespace,
            per_agent=per_agent,
        )
        chosen = select_admissions(
            waiting, running, limits, datetime.now(UTC).timestamp(), self.settings.aging_seconds
        )
        metrics.QUEUE_DEPTH.set(len(waiting) - len(chosen))
        # The chosen Tasks start side by side: their slots are already counted, and each touches only
        # its own objects. A burst then costs about one round trip per batch rather than per Task.
        gate = asyncio.Semaphore(START_CONCURRENCY)

        async def start(entry: QueueEntry) -> None:
            key = (entry.namespace, label_value_for(entry.name))
            task, agent = candidates[key]
            async with gate:
                await self._start(key, task, agent, view)

        outcomes = await asyncio.gather(*(start(entry) for entry in chosen), return_exceptions=True)
        failures = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
        if failures:
            raise failures[0]

    async def _start(
        self, key: TaskKey, task: dict[str, Any], agent: ResolvedAgent, view: ClusterView
    ) -> None:
        meta = task["metadata"]
        try:
            task_spec = parse_task_spec(task["spec"])
            agent_spec = parse_agent_spec(agent.spec)
        except SpecError as error:
            await self._fail_without_job(task, "InvalidSpec", str(error))
            return
        ref = TaskRef(name=meta["name"], namespace=meta["namespace"], uid=meta["uid"], spec=task_spec)
        priority_class = f"taskyard-{task_spec.priority}"
        if priority_class not in view.priority_classes:
            priority_class = None  # the scheduler only learns our priorities when the classes exist
        job = render_job(ref, agent_spec, agent.name, priority_class)
        annotations = job["metadata"].setdefault("annotations", {})
        annotations[ANNOTATION_AGENT_REF] = agent.ref
        annotations[ANNOTATION_ADMITTED_AT] = datetime.now(UTC).isoformat(timespec="microseconds")
        job["spec"]["template"]["metadata"].setdefault("annotations", {})[ANNOTATION_AGENT_REF] = agent.ref
        claim = render_workspace_claim(ref)
        try:
            if claim is not None:
                await _create_ignoring_conflict(
                    client.CoreV1Api(self.api).create_namespaced_persistent_volume_claim(
                        meta["namespace"], claim
                    )
                )
            created = await _create_ignoring_conflict(
                client.BatchV1Api(self.api).create_namespaced_job(meta["namespace"], job)
            )
        except ApiException as error:
            if error.status not in (400, 422):
                raise
            # The API server refuses what the Agent asks for (e.g. malformed resources or tolerations,
            # which the Agent schema passes through): no retry can fix that, so the Task fails.
            await self._fail_without_job(
                task, "JobRejected", f"the API server rejected the Job: {_api_reason(error)}"
            )
            return
        if not created and not await self._job_is_ours(meta, job["metadata"]["name"]):
            return  # a namesake Job of a deleted Task is still going away; its deletion event brings us back
        self.requested[key] = (meta["namespace"], agent.ref, job["metadata"]["name"])
        metrics.ADMISSION_WAIT.observe(
            max(datetime.now(UTC).timestamp() - _epoch(meta.get("creationTimestamp")), 0)
        )
        kopf.event(
            _ref(task), type="Normal", reason="Admitted", message=f"created Job {job['metadata']['name']}"
        )
        await self.reconcile(key, view)

    async def _job_is_ours(self, meta: dict[str, Any], job_name: str) -> bool:
        try:
            existing = await client.BatchV1Api(self.api).read_namespaced_job(job_name, meta["namespace"])
        except ApiException as error:
            if error.status == 404:
                return False
            raise
        return any(owner.uid == meta["uid"] for owner in existing.metadata.owner_references or [])

    async def _fail_without_job(self, task: dict[str, Any], reason: str, message: str) -> None:
        now = _now()
        generation = task["metadata"].get("generation", 1)
        condition = {"type": "Succeeded", "status": "False", "reason": reason, "message": message}
        condition.update(lastTransitionTime=now, observedGeneration=generation)
        patch = {"phase": "Failed", "reason": reason, "message": message, "completionTime": now}
        patch["observedGeneration"] = generation
        patch["conditions"] = [condition]
        await self._patch_status(self._key_of(task), task, patch)
        kopf.event(_ref(task), type="Warning", reason=reason, message=message)
        _count_finished(task["spec"].get("agent", ""), patch)

    # --- reconciliation ----------------------------------------------------------------------------

    async def reconcile(self, key: TaskKey, view: ClusterView) -> None:
        """Brings one Task's status (and its Job, when cancelled or unstartable) in line with the cluster."""
        task = self.current_task(key, view)
        if task is None or task["metadata"].get("deletionTimestamp"):
            return
        meta, spec, current = task["metadata"], task.get("spec") or {}, task.get("status") or {}
        if current.get("phase") in TERMINAL_PHASES:
            return
        job, pod = view.job(key), view.pod(key)
        extra: dict[str, Any] = {}
        stop_job = job is not None and not job.finished and not job.deleting
        requested = self.requested.get(key)
        if spec.get("cancel") and (stop_job or (job is None and requested)):
            if pod is not None:  # salvage what the agent wrote before it is stopped
                extra.update(await self._collect_logs(key, task, view, pod))
            await self._delete_job(meta["namespace"], job.name if job else requested[2])
            self.requested.pop(key, None)
        elif stop_job and pod is not None and pod.waiting_reason in IMAGE_PULL_FAILURES:
            await self._delete_job(meta["namespace"], job.name)

        agent = view.resolve_agent(meta["namespace"], spec.get("agent", ""))
        claim = workspace_claim_name(meta["name"]) if (spec.get("workspace") or {}).get("size") else None
        seen = Observation(
            job=job,
            pod=pod,
            agent_found=agent is not None,
            agent_description=_missing_agent(meta["namespace"], spec.get("agent", "")),
            job_requested=requested[2] if requested and job is None else None,
            queued_message=self._queued_message(),
            workspace_claim=claim if (job is not None or requested) else None,
        )
        if job is not None and job.finished and pod is not None and not pod.terminated:
            # The Job's final event can overtake its pod's: read the pod itself for the exit code and logs.
            pod = await self._read_pod(meta["namespace"], pod)
            seen = dataclasses.replace(seen, pod=pod)
        desired = derive_status(task, seen, _now())
        if job is None and not requested and current.get("jobName") and not spec.get("cancel"):
            desired = _job_lost(desired, current["jobName"])
        # Each attempt's output is kept when it ends, or as soon as its pod starts shutting down (a
        # timeout or cancel deletes the pod, and its log with it).
        if (
            pod is not None
            and (pod.terminated or pod.deleting)
            and self.logs_collected_from.get(key) != pod.name
        ):
            extra.update(await self._collect_logs(key, task, view, pod))
        patch = status_changes(current, desired)
        patch.update({k: v for k, v in extra.items() if current.get(k) != v})
        if not patch:
            return
        await self._patch_status(key, task, patch)
        if "phase" in patch:
            _announce(task, desired)
            if desired["phase"] in TERMINAL_PHASES:
                _count_finished(spec.get("agent", ""), desired)
        elif desired.get("attempts", 0) > max(current.get("attempts", 0), 1):
            message = f"attempt {desired['attempts']} started; the previous one failed"
            kopf.event(_ref(task), type="Normal", reason="Retrying", message=message)
        if (
            desired.get("phase") in TERMINAL_PHASES
            and claim
            and not (spec.get("workspace") or {}).get("keep", True)
        ):
            await _delete_ignoring_missing(
                client.CoreV1Api(self.api).delete_namespaced_persistent_volume_claim(claim, meta["namespace"])
            )

    def _queued_message(self) -> str:
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
        self, key: TaskKey, task: dict[str, Any], view: ClusterView, pod: PodView
    ) -> dict[str, Any]:
        """Reads an attempt's output before its pod can go away: keeps it in the Task's log ConfigMap
        and returns the status fields it feeds (logTail, result)."""
        namespace = task["metadata"]["namespace"]
        collected: dict[str, Any] = {}
        try:
            text = await client.CoreV1Api(self.api).read_namespaced_pod_log(
                pod.name, namespace, container="agent", tail_lines=LOG_KEEP_LINES
            )
        except ApiException as error:
            if error.status not in (400, 404):
                raise
            text = None  # never started (or already gone): nothing to keep
        if text is not None:
            collected["logTail"] = tail_lines(text, LOG_TAIL_LINES, LOG_TAIL_BYTES)
            await self._keep_log(task, view.attempt_of(key, pod), pod.name, text)
        if pod.termination_message and pod.exit_code == 0:
            collected["result"] = pod.termination_message
        self.logs_collected_from[key] = pod.name
        return collected

    async def _keep_log(self, task: dict[str, Any], attempt: int, pod_name: str, text: str) -> None:
        meta = task["metadata"]
        core = client.CoreV1Api(self.api)
        name = log_config_map_name(meta["name"])
        packed = pack_log(text)
        # Create first: most Tasks have one attempt, so the ConfigMap rarely exists yet.
        body = {
            "metadata": {
                "name": name,
                "labels": {
                    LABEL_TASK: label_value_for(meta["name"]),
                    "app.kubernetes.io/managed-by": "taskyard",
                },
                "ownerReferences": [owner_reference(meta["name"], meta["uid"])],
            },
            "binaryData": {log_key(attempt): base64.b64encode(packed).decode()},
            "data": {pod_key(attempt): pod_name},
        }
        if await _create_ignoring_conflict(core.create_namespaced_config_map(meta["namespace"], body)):
            return
        existing = await core.read_namespaced_config_map(name, meta["namespace"])
        if not any(owner.uid == meta["uid"] for owner in existing.metadata.owner_references or []):
            # Left by a deleted Task of the same name and about to be collected: replace it.
            await core.replace_namespaced_config_map(name, meta["namespace"], body)
            return
        binary = dict(existing.binary_data or {})
        binary[log_key(attempt)] = base64.b64encode(packed).decode()
        sizes = {int(k.split("-")[1].split(".")[0]): len(v) * 3 // 4 for k, v in binary.items()}
        keep = attempts_to_keep(sizes)
        dropped = [n for n in sizes if n not in keep]  # the oldest attempts, when all would not fit
        patch = {
            "binaryData": {log_key(attempt): binary[log_key(attempt)], **{log_key(n): None for n in dropped}},
            "data": {pod_key(attempt): pod_name, **{pod_key(n): None for n in dropped}},
        }
        await core.patch_namespaced_config_map(name, meta["namespace"], patch)

    async def _read_pod(self, namespace: str, pod: PodView) -> PodView:
        try:
            body = await client.CoreV1Api(self.api).read_namespaced_pod(pod.name, namespace)
        except ApiException as error:
            if error.status == 404:
                return pod
            raise
        return PodView.from_body(self.api.sanitize_for_serialization(body))

    async def _delete_job(self, namespace: str, name: str) -> None:
        # Foreground: the Job stays (and keeps its slot) until its pods are gone, so a cancelled Task
        # cannot let a queued one start while its agent is still shutting down.
        await _delete_ignoring_missing(
            client.BatchV1Api(self.api).delete_namespaced_job(
                name, namespace, propagation_policy="Foreground"
            )
        )

    async def _patch_status(self, key: TaskKey, task: dict[str, Any], patch: dict[str, Any]) -> None:
        meta = task["metadata"]
        try:
            updated = await client.CustomObjectsApi(self.api).patch_namespaced_custom_object_status(
                GROUP,
                VERSION,
                meta["namespace"],
                "tasks",
                meta["name"],
                {"status": patch},
                _content_type=MERGE_PATCH,
            )
        except ApiException as error:
            if error.status != 404:  # deleted meanwhile: nothing left to report on
                raise
            return
        self.written[key] = (updated["metadata"]["resourceVersion"], updated.get("status") or {})

    @staticmethod
    def _key_of(task: dict[str, Any]) -> TaskKey:
        return (task["metadata"]["namespace"], label_value_for(task["metadata"]["name"]))


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


def _announce(task: dict[str, Any], status: dict[str, Any]) -> None:
    phase, reason, message = status.get("phase"), status.get("reason", ""), status.get("message", "")
    warning = phase == "Failed" or reason == "AgentNotFound"
    kopf.event(_ref(task), type="Warning" if warning else "Normal", reason=reason or phase, message=message)


def _count_finished(agent: str, status: dict[str, Any]) -> None:
    metrics.TASKS_FINISHED.labels(agent=agent, outcome=status["phase"]).inc()
    if status.get("startTime") and status.get("completionTime"):
        seconds = _epoch(status["completionTime"]) - _epoch(status["startTime"])
        metrics.TASK_DURATION.labels(agent=agent).observe(max(seconds, 0))


def _ref(task: dict[str, Any]) -> dict[str, Any]:
    meta = task["metadata"]
    return {
        "apiVersion": API_VERSION,
        "kind": "Task",
        "metadata": {"name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"]},
    }


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _epoch(timestamp: str | None) -> float:
    if not timestamp:
        return datetime.now(UTC).timestamp()
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


async def _create_ignoring_conflict(call: Any) -> bool:
    """Creates an object; returns False when it already existed (deterministic names: likely ours)."""
    try:
        await call
    except ApiException as error:
        if error.status != 409:
            raise
        return False
    return True


def _api_reason(error: ApiException) -> str:
    try:
        return json.loads(error.body).get("message") or str(error.reason)
    except (TypeError, ValueError):
        return str(error.reason)


async def _delete_ignoring_missing(call: Any) -> None:
    try:
        await call
    except ApiException as error:
        if error.status != 404:
            raise
