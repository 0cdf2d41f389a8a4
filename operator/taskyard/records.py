"""What the operator's cache keeps of each object: small records projected from the API's objects.

Plain functions of plain data (client-go calls them transforms). A finished Task keeps only what
admission, metrics and clean-up need (its names, agent, phase and times), never its prompt, log tail
or result: those live in the API server, where the taskyard command and kubectl read them.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from taskyard.api import LABEL_TASK
from taskyard.phase import MANAGED_FIELDS, TERMINAL_PHASES, JobView, PodView

ANNOTATION_AGENT_REF = "taskyard.dev/agent-ref"
# What a finished Task's record keeps of its status.
_FINISHED_STATUS_FIELDS = (
    "phase",
    "reason",
    "jobName",
    "podName",
    "startTime",
    "completionTime",
    "workspace",
)
_SHARED_FIELDS = frozenset({"phase", "reason"})  # a few values repeated across thousands of Tasks


class FinishedStatus(Mapping[str, Any]):
    """A finished Task's few status fields, as a tuple in a fixed order: at tens of thousands of
    finished Tasks, a dict each would cost more than the rest of the record."""

    __slots__ = ("_values",)

    def __init__(self, status: Mapping[str, Any]) -> None:
        self._values = tuple(status.get(field) for field in _FINISHED_STATUS_FIELDS)

    def __getitem__(self, field: str) -> Any:
        try:
            value = self._values[_FINISHED_STATUS_FIELDS.index(field)]
        except ValueError:
            raise KeyError(field) from None
        if value is None:
            raise KeyError(field)
        return value

    def __iter__(self) -> Iterator[str]:
        return (
            field
            for field, value in zip(_FINISHED_STATUS_FIELDS, self._values, strict=True)
            if value is not None
        )

    def __len__(self) -> int:
        return sum(value is not None for value in self._values)


@dataclass(frozen=True, slots=True)
class TaskRecord:
    namespace: str
    name: str
    uid: str
    resource_version: str
    generation: int
    created: str  # creationTimestamp
    deleting: bool
    agent: str
    priority: str
    cancel: bool
    ttl: int | None  # spec.ttlSecondsAfterFinished
    phase: str | None
    spec: Mapping[str, Any] | None  # the whole spec while the Task is unfinished; None once finished
    status: Mapping[str, Any]  # the fields the operator manages (no logTail or result)

    @property
    def finished(self) -> bool:
        return self.phase in TERMINAL_PHASES

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.namespace, self.name, self.uid)

    @property
    def waiting(self) -> bool:
        """Whether the Task may still need a Job: unfinished, not cancelled, never admitted."""
        return not (self.finished or self.deleting or self.cancel or self.status.get("jobName"))

    def as_task(self, status: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The Task in the shape the pure core takes (metadata, spec, status)."""
        return {
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "uid": self.uid,
                "resourceVersion": self.resource_version,
                "generation": self.generation,
                "creationTimestamp": self.created,
                "deletionTimestamp": "yes" if self.deleting else None,
            },
            "spec": dict(self.spec) if self.spec is not None else self._minimal_spec(),
            "status": dict(self.status if status is None else status),
        }

    def _minimal_spec(self) -> dict[str, Any]:
        return {"agent": self.agent, "priority": self.priority, "cancel": self.cancel}


def project_task(body: Mapping[str, Any]) -> TaskRecord:
    meta, spec, status = body["metadata"], body.get("spec") or {}, body.get("status") or {}
    phase = status.get("phase")
    finished = phase in TERMINAL_PHASES
    return TaskRecord(
        namespace=sys.intern(meta.get("namespace") or ""),
        name=meta["name"],
        uid=meta.get("uid", ""),
        resource_version=meta.get("resourceVersion", ""),
        generation=meta.get("generation", 1),
        created=meta.get("creationTimestamp") or "",
        deleting=bool(meta.get("deletionTimestamp")),
        agent=sys.intern(str(spec.get("agent", ""))),
        priority=sys.intern(str(spec.get("priority", "medium"))),
        cancel=bool(spec.get("cancel")),
        ttl=spec.get("ttlSecondsAfterFinished"),
        phase=sys.intern(phase) if isinstance(phase, str) else phase,
        spec=None if finished else dict(spec),
        status=FinishedStatus(_shared(status)) if finished else _shared(status),
    )


@dataclass(frozen=True, slots=True)
class JobRecord:
    namespace: str
    view: JobView
    agent_ref: str
    task_label: str

    @property
    def holds_slot(self) -> bool:
        """An unfinished Job holds its slot (a deleted one until its pods are gone: see PodRecord)."""
        return not self.view.finished


def project_job(body: Mapping[str, Any]) -> JobRecord:
    meta = body["metadata"]
    return JobRecord(
        namespace=sys.intern(meta.get("namespace") or ""),
        view=JobView.from_body(dict(body)),
        agent_ref=sys.intern((meta.get("annotations") or {}).get(ANNOTATION_AGENT_REF, "")),
        task_label=(meta.get("labels") or {}).get(LABEL_TASK, ""),
    )


@dataclass(frozen=True, slots=True)
class PodRecord:
    namespace: str
    view: PodView
    agent_ref: str
    task_label: str

    @property
    def holds_slot(self) -> bool:
        """A pod holds its slot until it has ended, even when its Job is already gone."""
        return self.view.phase not in ("Succeeded", "Failed")


def project_pod(body: Mapping[str, Any]) -> PodRecord:
    meta = body["metadata"]
    return PodRecord(
        namespace=sys.intern(meta.get("namespace") or ""),
        view=PodView.from_body(dict(body)),
        agent_ref=sys.intern((meta.get("annotations") or {}).get(ANNOTATION_AGENT_REF, "")),
        task_label=(meta.get("labels") or {}).get(LABEL_TASK, ""),
    )


def _shared(status: Mapping[str, Any]) -> dict[str, Any]:
    """The managed fields of a status; values repeated across thousands of Tasks are kept once."""
    return {
        field: sys.intern(status[field])
        if field in _SHARED_FIELDS and isinstance(status[field], str)
        else status[field]
        for field in MANAGED_FIELDS
        if field in status
    }


def project_spec(body: Mapping[str, Any]) -> dict[str, Any]:
    """Agents and ClusterAgents: their spec is what Tasks run with."""
    return dict(body.get("spec") or {})


def project_name(body: Mapping[str, Any]) -> bool:
    """Objects whose existence is all that matters (PriorityClasses)."""
    return True
