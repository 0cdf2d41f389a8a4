"""Phase derivation: what a Task's status should say, from what is observed in the cluster.

Plain functions of plain data. The operator reads the Task, its Job and the Job's newest Pod,
calls :func:`derive_status`, and writes the result only when it differs from the current status.
Everything here is deterministic for the same observations (no clock except the ``now`` passed in,
used only when a phase changes), so an operator restart re-derives the same status and writes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from taskyard.api import format_duration
from taskyard.results import failure_of

PENDING, QUEUED, RUNNING, CANCELLING = "Pending", "Queued", "Running", "Cancelling"
SUCCEEDED, FAILED, CANCELLED = "Succeeded", "Failed", "Cancelled"
TERMINAL_PHASES = frozenset({SUCCEEDED, FAILED, CANCELLED})
# Phases never move to a lower rank: a stale observation cannot take a Task backwards.
_RANK = {PENDING: 0, QUEUED: 0, RUNNING: 1, CANCELLING: 1, SUCCEEDED: 2, FAILED: 2, CANCELLED: 2}

# Waiting reasons of a container whose image does not start; the kubelet would retry them forever.
IMAGE_PULL_FAILURES = frozenset({"ImagePullBackOff", "ErrImageNeverPull", "InvalidImageName"})
# Of those, the ones no retry can fix (the others may be a registry's rate limit or a short outage).
PERMANENT_IMAGE_FAILURES = frozenset({"ErrImageNeverPull", "InvalidImageName"})
# Waiting reasons that mean the pod's configuration names something missing (a Secret, a ConfigMap key).
CONFIG_FAILURES = frozenset({"CreateContainerConfigError", "CreateContainerError"})
# How the kubelet words an eviction for a pod's *own* storage limits (its containers' ephemeral-storage
# limits, or an emptyDir's sizeLimit), as opposed to node pressure ("The node was low on resource").
# Such an eviction carries no DisruptionTarget condition, and a new pod would fill its disk again.
_OWN_STORAGE_LIMIT_EVICTIONS = (
    "exceeded its local ephemeral storage limit",
    "ephemeral local storage usage exceeds the total limit",
    "Usage of EmptyDir volume",
)

# Job failure reasons (batch/v1 Job condition `Failed`) and the Task reason each becomes.
_JOB_FAILURE_REASONS = {
    "DeadlineExceeded": "DeadlineExceeded",
    "BackoffLimitExceeded": "BackoffLimitExceeded",
    "PodFailurePolicy": "NonRetryableExitCode",
}

# Status fields this module owns; logTail and result are filled by the operator from the pod.
MANAGED_FIELDS = (
    "phase",
    "reason",
    "message",
    "conditions",
    "jobName",
    "podName",
    "attempts",
    "queuedAt",
    "startTime",
    "completionTime",
    "duration",
    "exitCode",
    "workspace",
    "observedGeneration",
)


@dataclass(frozen=True, slots=True)
class JobView:
    """The parts of a batch/v1 Job that decide a Task's phase."""

    name: str
    uid: str = ""
    owner_uid: str = ""  # the Task that owns this Job (a re-created Task of the same name has another uid)
    active: int = 0
    succeeded: int = 0
    failed: int = 0
    complete: bool = False
    failed_reason: str | None = None
    failed_message: str | None = None
    start_time: str | None = None
    completion_time: str | None = None
    deleting: bool = False
    created: str = ""

    @property
    def finished(self) -> bool:
        """Whether the Job reached Complete or Failed."""
        return self.complete or self.failed_reason is not None

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> JobView:
        """Extracts the view from a Job object as the API returns it."""
        status = body.get("status") or {}
        conditions = {c.get("type"): c for c in status.get("conditions") or [] if c.get("status") == "True"}
        failed = conditions.get("Failed")
        complete = conditions.get("Complete")
        completion_time = status.get("completionTime")
        if failed and not completion_time:
            completion_time = failed.get("lastTransitionTime")
        owner = next((o for o in body["metadata"].get("ownerReferences") or [] if o.get("controller")), {})
        return cls(
            name=body["metadata"]["name"],
            uid=body["metadata"].get("uid", ""),
            owner_uid=owner.get("uid", ""),
            active=status.get("active") or 0,
            succeeded=status.get("succeeded") or 0,
            failed=status.get("failed") or 0,
            complete=complete is not None,
            failed_reason=(failed.get("reason") or "Failed") if failed else None,
            failed_message=failed.get("message") if failed else None,
            start_time=status.get("startTime"),
            completion_time=completion_time,
            deleting=bool(body["metadata"].get("deletionTimestamp")),
            created=body["metadata"].get("creationTimestamp") or "",
        )


@dataclass(frozen=True, slots=True)
class PodView:
    """The parts of a Task's pod (its agent container) that show in the Task status."""

    name: str
    created: str
    job_uid: str = ""
    phase: str = "Pending"
    image: str = ""
    waiting_reason: str | None = None
    waiting_message: str | None = None
    running: bool = False
    exit_code: int | None = None
    terminated_reason: str | None = None
    termination_message: str | None = None
    deleting: bool = False
    grace_seconds: int | None = None  # the agent's time to exit, once the pod is being deleted
    unschedulable_message: str | None = None  # why the scheduler cannot place it (e.g. an unbound claim)
    evicted_message: str | None = None  # the kubelet's words, when it evicted the pod

    @property
    def over_storage_limit(self) -> bool:
        """Whether the kubelet evicted the pod for using more disk than its own limits allow."""
        message = self.evicted_message or ""
        return any(words in message for words in _OWN_STORAGE_LIMIT_EVICTIONS)

    @property
    def terminated(self) -> bool:
        """Whether the agent container has ended."""
        return self.exit_code is not None

    @classmethod
    def from_body(cls, body: dict[str, Any], container: str = "agent") -> PodView:
        """Extracts the view from a Pod object, reading the named container's state."""
        status = body.get("status") or {}
        spec_containers = (body.get("spec") or {}).get("containers") or []
        image = next((c.get("image", "") for c in spec_containers if c.get("name") == container), "")
        state: dict[str, Any] = {}
        for item in status.get("containerStatuses") or []:
            if item.get("name") == container:
                state = item.get("state") or {}
        waiting = state.get("waiting") or {}
        if not state or waiting.get("reason") == "PodInitializing":
            # The agent waits for a sidecar (the credential proxy): its trouble is the Task's, e.g. a
            # missing Secret, and its message names what is missing.
            waiting = _stuck_init_container(status) or waiting
        terminated = state.get("terminated")
        owner = next((o for o in body["metadata"].get("ownerReferences") or [] if o.get("controller")), {})
        scheduled = next((c for c in status.get("conditions") or [] if c.get("type") == "PodScheduled"), {})
        unschedulable = scheduled.get("message") if scheduled.get("reason") == "Unschedulable" else None
        evicted = (status.get("message") or "evicted") if status.get("reason") == "Evicted" else None
        return cls(
            name=body["metadata"]["name"],
            created=body["metadata"].get("creationTimestamp") or "",
            job_uid=owner.get("uid", ""),
            phase=status.get("phase") or "Pending",
            image=image,
            waiting_reason=waiting.get("reason"),
            waiting_message=waiting.get("message"),
            running="running" in state,
            exit_code=terminated.get("exitCode") if terminated else None,
            terminated_reason=terminated.get("reason") if terminated else None,
            termination_message=(terminated.get("message") or None) if terminated else None,
            deleting=bool(body["metadata"].get("deletionTimestamp")),
            grace_seconds=body["metadata"].get("deletionGracePeriodSeconds"),
            unschedulable_message=unschedulable[:1024] if unschedulable else None,
            evicted_message=evicted[:1024] if evicted else None,
        )


_STARTING = frozenset({"PodInitializing", "ContainerCreating"})


def _stuck_init_container(status: dict[str, Any]) -> dict[str, Any] | None:
    """The waiting state of the first init or sidecar container that waits for anything but its turn,
    with the container named in the message."""
    for item in status.get("initContainerStatuses") or []:
        waiting = (item.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") and waiting["reason"] not in _STARTING:
            message = f"container {item.get('name')}: {waiting.get('message') or waiting['reason']}"
            return {"reason": waiting["reason"], "message": message}
    return None


def newest_pod(pods: list[PodView]) -> PodView | None:
    """The pod of the latest attempt (creation time, then name, so the choice is stable)."""
    return max(pods, key=lambda pod: (pod.created, pod.name), default=None)


def deciding_pod(pods: list[PodView], job_complete: bool = False) -> PodView | None:
    """The pod whose state the Task reports: the newest, unless an attempt was evicted for passing its
    own storage limits (the Job may already have started another; that eviction decides the Task) and
    the Job has not succeeded meanwhile (then the attempt that succeeded is the one to report)."""
    if job_complete:
        return newest_pod(pods)
    return next((pod for pod in pods if pod.over_storage_limit), None) or newest_pod(pods)


@dataclass(frozen=True)
class Observation:
    """Everything known about one Task at one moment, besides the Task itself."""

    job: JobView | None = None
    pod: PodView | None = None
    agent_found: bool = True
    agent_description: str = ""
    # The name of a Job the operator created that its watch has not shown yet.
    job_requested: str | None = None
    queued_message: str = "waiting for a free slot under the concurrency limits"
    workspace_claim: str | None = None
    # Whether a transient image pull failure has lasted past the operator's patience.
    image_pull_patience_over: bool = True
    # Set once the agent has not started within the start-up deadline: (reason, message).
    startup_overdue: tuple[str, str] | None = None


def derive_status(task: dict[str, Any], seen: Observation, now: str) -> dict[str, Any]:
    """The status the Task should have, as a dict of the fields in MANAGED_FIELDS.

    ``task`` is the Task object (metadata, spec, status); ``now`` is an RFC 3339 timestamp used only
    for times that nothing in the cluster records (when a Task was queued or cancelled).
    """
    current: dict[str, Any] = dict(task.get("status") or {})
    spec = task.get("spec") or {}
    current_phase = current.get("phase")
    if current_phase in TERMINAL_PHASES:
        return {field: current[field] for field in MANAGED_FIELDS if field in current}

    status: dict[str, Any] = {"observedGeneration": task["metadata"].get("generation", 1)}
    if seen.workspace_claim:
        status["workspace"] = seen.workspace_claim
    job, pod = seen.job, seen.pod
    if job is not None:
        status["jobName"] = job.name
        status["attempts"] = (
            job.succeeded + job.failed + job.active if not job.finished else _finished_attempts(job)
        )
        if job.start_time:
            status["startTime"] = job.start_time
    elif seen.job_requested:
        status["jobName"] = seen.job_requested
    if pod is not None:
        status["podName"] = pod.name
        if pod.exit_code is not None:
            status["exitCode"] = pod.exit_code
    if current.get("queuedAt"):
        status["queuedAt"] = current["queuedAt"]
    # What the Job and pod recorded stays once they are gone (a cancel deletes them before the end).
    for kept in ("jobName", "podName", "attempts", "startTime", "exitCode", "workspace"):
        if kept not in status and kept in current:
            status[kept] = current[kept]

    phase, reason, message = _phase_of(spec, seen)
    if phase in TERMINAL_PHASES:
        status["completionTime"] = (job.completion_time if job and job.finished else None) or now
        if status.get("startTime"):
            status["duration"] = _duration_between(status["startTime"], status["completionTime"])
    if phase == QUEUED and "queuedAt" not in status:
        status["queuedAt"] = now

    if current_phase and _RANK[phase] < _RANK[current_phase]:
        # A stale observation (the watch lags behind our own writes): keep what we had.
        return {field: current[field] for field in MANAGED_FIELDS if field in current}

    status.update(phase=phase, reason=reason, message=message)
    status["conditions"] = [_succeeded_condition(current, phase, reason, message, status, now)]
    return status


# Reasons the operator itself fails a Task for while its agent has not started.
STARTUP_FAILURES = frozenset(
    {"ImagePullFailed", "NoPodCreated", "ContainerConfigError", "Unschedulable", "StartupTimeout"}
)
STORAGE_LIMIT_EXCEEDED = "StorageLimitExceeded"
# Reasons the operator fails an unfinished Job's Task for; it then deletes the Job, which would
# otherwise keep trying (and hold the slot) until the timeout.
STOPPED_BY_OPERATOR = STARTUP_FAILURES | {STORAGE_LIMIT_EXCEEDED}


def waiting_since(job: JobView, pod: PodView | None) -> str:
    """Since when the agent has been waiting to start: its pod's creation (a retry has a new pod),
    else the Job's."""
    return (pod.created if pod is not None else "") or job.created


def image_pull_patience_over(pod: PodView, now: float, patience: float) -> bool:
    """Whether a pull failure that may be transient (a rate limit, a registry outage) has lasted
    long enough to give up; failures no retry can fix are over at once."""
    if pod.waiting_reason in PERMANENT_IMAGE_FAILURES:
        return True
    return now - _epoch(pod.created) >= patience


def startup_overdue(
    job: JobView,
    pod: PodView | None,
    now: float,
    deadline: float,
    service_account: str | None = None,
    claim: str | None = None,
) -> tuple[str, str] | None:
    """(reason, message) when the agent has not started within ``deadline`` seconds, naming what it
    waits for (its ServiceAccount, a Secret, its workspace claim); None while it may still start, or
    once it runs."""
    if job.finished or job.deleting or (pod is not None and (pod.running or pod.terminated)):
        return None
    since = waiting_since(job, pod)
    if not since or now - _epoch(since) < deadline:
        return None
    within = format_duration(deadline)
    if pod is None:
        account = f" (does the ServiceAccount {service_account!r} exist?)" if service_account else ""
        return (
            "NoPodCreated",
            f"the Job {job.name} created no pod within {within}{account}; `kubectl describe job {job.name}` "
            "shows why, e.g. a missing ServiceAccount or a ResourceQuota",
        )
    if pod.waiting_reason in CONFIG_FAILURES:
        detail = pod.waiting_message or pod.waiting_reason
        return "ContainerConfigError", f"the agent container could not be created within {within}: {detail}"
    if pod.unschedulable_message:
        unbound = ""
        if claim and "PersistentVolumeClaim" in pod.unschedulable_message:
            # The scheduler says a claim is unbound but not which: the Task's is the only one.
            unbound = (
                f"; the workspace claim {claim} is not bound (`kubectl describe pvc {claim}` says why, "
                "e.g. a StorageClass that does not exist)"
            )
        return (
            "Unschedulable",
            f"pod {pod.name} could not be scheduled within {within}: {pod.unschedulable_message}{unbound}",
        )
    state = pod.waiting_reason or pod.phase
    detail = f": {pod.waiting_message}" if pod.waiting_message else ""
    return "StartupTimeout", f"the agent did not start within {within} ({state}{detail})"


def _epoch(timestamp: str) -> float:
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


def _finished_attempts(job: JobView) -> int:
    return max(job.succeeded + job.failed, 1)


def _phase_of(spec: dict[str, Any], seen: Observation) -> tuple[str, str, str]:
    job, pod = seen.job, seen.pod
    # A Job that finished before the cancel was seen keeps its outcome: the work was done. One that
    # is being deleted for the cancel is cancelled, however its agent exits in its grace period.
    stopped_by_cancel = bool(spec.get("cancel")) and job is not None and job.deleting
    if job is not None and job.complete and not stopped_by_cancel:
        return SUCCEEDED, "Completed", "the agent finished with exit code 0"
    if pod is not None and pod.over_storage_limit and not stopped_by_cancel:
        # Whatever the Job makes of it (a retry, or a failure for a killed container), the agent
        # would fill its disk again: the Task fails, saying which limit it passed.
        return (
            FAILED,
            STORAGE_LIMIT_EXCEEDED,
            f"the kubelet evicted pod {pod.name} for using more disk than its limits allow: "
            f"{(pod.evicted_message or '').strip()} Raise the Agent's resources.limits.ephemeral-storage or "
            "workspaceSizeLimit if the agent needs more",
        )
    if job is not None and job.failed_reason is not None and not stopped_by_cancel:
        return FAILED, *_failure(job, pod)
    if spec.get("cancel"):
        if job is not None or (
            pod is not None and not pod.terminated and pod.phase not in ("Succeeded", "Failed")
        ):
            # The Job is being deleted (foreground: it goes once its pods are gone); its agent has its
            # grace period, and what it prints meanwhile is still collected.
            return CANCELLING, "Cancelling", "cancelled by spec.cancel; the agent is being stopped"
        return CANCELLED, "Cancelled", "cancelled by spec.cancel; the Job and its pods were deleted"
    if (
        pod is not None
        and pod.waiting_reason in IMAGE_PULL_FAILURES
        and (pod.waiting_reason in PERMANENT_IMAGE_FAILURES or seen.image_pull_patience_over)
    ):
        detail = f": {pod.waiting_message}" if pod.waiting_message else ""
        return FAILED, "ImagePullFailed", f"the agent image {pod.image!r} cannot be pulled{detail}"
    if seen.startup_overdue is not None and not (pod is not None and (pod.running or pod.terminated)):
        return FAILED, *seen.startup_overdue
    if job is not None or seen.job_requested:
        if pod is not None and pod.running:
            return RUNNING, "Running", f"the agent is running in pod {pod.name}"
        if pod is not None and pod.terminated:
            # Between the container's exit and the Job's verdict (complete, or retry).
            return (
                RUNNING,
                "AttemptEnded",
                f"the agent exited with code {pod.exit_code}; the Job decides what next",
            )
        if pod is not None and pod.waiting_reason and pod.waiting_reason not in _STARTING:
            return (
                RUNNING,
                pod.waiting_reason,
                pod.waiting_message or f"the agent container is {pod.waiting_reason}",
            )
        return RUNNING, "Starting", "the Job is created; waiting for its pod to start"
    if not seen.agent_found:
        return PENDING, "AgentNotFound", seen.agent_description
    return QUEUED, "WaitingForCapacity", seen.queued_message


# Terminated reasons of a container the runtime could not start (containerd says StartError, Docker's
# shim ContainerCannotRun).
_COULD_NOT_RUN = frozenset({"StartError", "ContainerCannotRun"})


def _failure(job: JobView, pod: PodView | None) -> tuple[str, str]:
    reason = _JOB_FAILURE_REASONS.get(job.failed_reason or "", job.failed_reason or "Failed")
    exit_code = pod.exit_code if pod is not None else None
    if pod is not None and reason != "DeadlineExceeded":
        ended_by_entrypoint = failure_of(pod.termination_message, exit_code)  # a limit, or no setup
        if ended_by_entrypoint is not None:
            return ended_by_entrypoint
    if reason == "DeadlineExceeded":
        return reason, "the Task ran longer than its timeout and was stopped"
    if pod is not None and pod.terminated_reason in _COULD_NOT_RUN:
        # The runtime never ran the agent (a command that is not in the image, say): exit code 128
        # says nothing, the runtime's message says what to fix.
        detail = pod.termination_message or f"the container ended with {pod.terminated_reason}"
        return "ContainerCannotRun", f"the agent container could not be started: {detail}"
    if reason == "NonRetryableExitCode":
        code = f"code {exit_code}, which" if exit_code is not None else "an exit code that"
        return reason, f"the agent exited with {code} its Agent marks as not worth retrying"
    if reason == "BackoffLimitExceeded":
        attempts = _finished_attempts(job)
        tries = "attempt" if attempts == 1 else "attempts"
        code = f" (last exit code {exit_code})" if exit_code is not None else ""
        return reason, f"the agent failed{code} after {attempts} {tries}"
    return reason, job.failed_message or "the Job failed"


def _succeeded_condition(
    current: dict[str, Any], phase: str, reason: str, message: str, status: dict[str, Any], now: str
) -> dict[str, Any]:
    value = {SUCCEEDED: "True", FAILED: "False", CANCELLED: "False"}.get(phase, "Unknown")
    previous = next((c for c in current.get("conditions") or [] if c.get("type") == "Succeeded"), None)
    changed_at = previous["lastTransitionTime"] if previous and previous.get("status") == value else now
    return {
        "type": "Succeeded",
        "status": value,
        "reason": reason,
        "message": message,
        "lastTransitionTime": changed_at,
        "observedGeneration": status["observedGeneration"],
    }


def _duration_between(start: str, end: str) -> str:
    started = datetime.fromisoformat(start.replace("Z", "+00:00"))
    ended = datetime.fromisoformat(end.replace("Z", "+00:00"))
    return format_duration(max((ended - started).total_seconds(), 0))


def status_changes(current: dict[str, Any], desired: dict[str, Any]) -> dict[str, Any]:
    """The merge patch that turns ``current`` into ``desired`` for the managed fields (None: no change)."""
    patch = {field: value for field, value in desired.items() if current.get(field) != value}
    for field in MANAGED_FIELDS:
        if field in current and field not in desired:
            patch[field] = None
    return patch


def tail_lines(text: str, lines: int = 50, max_bytes: int = 8192) -> str:
    """The last ``lines`` lines of ``text``, further cut from the front to at most ``max_bytes`` bytes."""
    kept = "\n".join(text.rstrip("\n").split("\n")[-lines:])
    encoded = kept.encode()
    if len(encoded) > max_bytes:
        starts_on_a_line = encoded[-max_bytes - 1 : -max_bytes] == b"\n"
        kept = encoded[-max_bytes:].decode(errors="ignore")
        if not starts_on_a_line and "\n" in kept:
            kept = kept.split("\n", 1)[1]  # drop the partial first line
    return kept
