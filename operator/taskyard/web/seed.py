"""The task API's bodies, as plain functions of plain data: a request body checked and made into a Task,
and a Task shown as the task API shows it. No I/O here.

The API is the management API of the system taskyard grew from (docs/api-http.md): `taskId` is the
Task's name, its `status` is the Task's phase mapped onto that API's states, times are milliseconds.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Any

from taskyard.api import API_VERSION, DNS1123_SUBDOMAIN_PATTERN, PRIORITIES
from taskyard.stats import parse_time, phase_of

ANNOTATION_PROVIDER = "taskyard.dev/provider"
LABEL_CREATED_BY = "app.kubernetes.io/created-by"
CREATED_BY = "taskyard-api"
# What the seed's clients may send besides agent and task; anything else is refused by name.
REQUEST_FIELDS = ("agent", "task", "provider", "priority")
PROMPT_MAX_CHARS = 32 * 1024
PROVIDER_MAX_CHARS = 63
WORKSPACE = "/workspace"

# The Task's phases as the task API's states. `accepted` is the answer to the create only: the API's
# clients poll until the state is no longer `running`, so a Task waiting for its turn is `running`
# (its `phase` says Queued). A Task whose cancel was asked for is `stopped` at once, as the API's DELETE
# promises, while its agent is still given its grace period.
STATE_OF_PHASE = {
    "Pending": "running",
    "Queued": "running",
    "Running": "running",
    "Cancelling": "stopped",
    "Succeeded": "completed",
    "Failed": "failed",
    "Cancelled": "stopped",
}
FINAL_STATES = frozenset({"completed", "failed", "stopped"})
_NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_AGENT = re.compile(DNS1123_SUBDOMAIN_PATTERN)


class RequestError(ValueError):
    """A request the API refuses; `field` names the part of the request that is wrong."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def check_namespace(namespace: str, source: str) -> str:
    if len(namespace) > 63 or not _NAMESPACE.match(namespace):
        raise RequestError(
            source,
            f"{namespace!r} is not a namespace name: lowercase letters, digits and '-', at most 63 "
            "characters, starting and ending with a letter or digit",
        )
    return namespace


def task_from_request(body: Any, namespace: str, name: str | None = None) -> dict[str, Any]:
    """The Task a `POST /v1/tasks` body asks for; RequestError naming the field when it cannot be made."""
    if not isinstance(body, dict):
        raise RequestError("body", "must be a JSON object with the fields agent and task")
    unknown = sorted(set(body) - set(REQUEST_FIELDS))
    if unknown:
        raise RequestError(unknown[0], f"unknown field; accepted: {', '.join(REQUEST_FIELDS)}")
    agent = body.get("agent")
    if not isinstance(agent, str) or not agent:
        raise RequestError("agent", "required: the name of an Agent of the namespace or of a ClusterAgent")
    if len(agent) > 253 or not _AGENT.match(agent):
        raise RequestError(
            "agent", f"{agent!r} is not an agent name: lowercase letters, digits, '-' and '.' (DNS-1123)"
        )
    prompt = body.get("task")
    if not isinstance(prompt, str) or not prompt.strip():
        raise RequestError("task", "required: what the agent is to do, as a non-empty string")
    if len(prompt) > PROMPT_MAX_CHARS:
        raise RequestError("task", f"{len(prompt)} characters; at most {PROMPT_MAX_CHARS} are accepted")
    provider = body.get("provider")
    if provider is not None and (not isinstance(provider, str) or len(provider) > PROVIDER_MAX_CHARS):
        raise RequestError("provider", f"must be a string of at most {PROVIDER_MAX_CHARS} characters")
    priority = body.get("priority")
    if priority is not None and priority not in PRIORITIES:
        raise RequestError("priority", f"{priority!r} is not accepted; one of {', '.join(PRIORITIES)}")
    spec: dict[str, Any] = {"agent": agent, "prompt": prompt}
    if priority is not None:
        spec["priority"] = priority
    metadata: dict[str, Any] = {
        "name": name or str(uuid.uuid4()),
        "namespace": namespace,
        "labels": {LABEL_CREATED_BY: CREATED_BY},
    }
    if provider:
        metadata["annotations"] = {ANNOTATION_PROVIDER: provider}
    return {"apiVersion": API_VERSION, "kind": "Task", "metadata": metadata, "spec": spec}


def accepted(task: dict[str, Any]) -> dict[str, Any]:
    """The 202 body of a created Task."""
    meta = task["metadata"]
    return {
        "taskId": meta["name"],
        "status": "accepted",
        "message": f"Task accepted: Task {meta['namespace']}/{meta['name']} runs when its turn comes",
        "taskDir": WORKSPACE,
        "logFile": f"/v1/tasks/{meta['name']}/logs/stream",
    }


def state_of(task: dict[str, Any]) -> str:
    phase = phase_of(task)
    if (task.get("spec") or {}).get("cancel") and phase in ("Pending", "Queued", "Running"):
        return "stopped"
    return STATE_OF_PHASE[phase]


def millis(moment: datetime | None) -> int | None:
    return None if moment is None else int(moment.timestamp() * 1000)


def start_of(task: dict[str, Any]) -> datetime | None:
    """When the Task's work started (its Job), else when it was created."""
    status = task.get("status") or {}
    return parse_time(status.get("startTime")) or parse_time(task["metadata"].get("creationTimestamp"))


def duration_ms(task: dict[str, Any], now: datetime) -> int:
    start = start_of(task)
    if start is None:
        return 0
    end = parse_time((task.get("status") or {}).get("completionTime"))
    if end is None or state_of(task) not in FINAL_STATES:
        end = now
    return max(int((end - start).total_seconds() * 1000), 0)


def task_status(task: dict[str, Any], now: datetime) -> dict[str, Any]:
    """`GET /v1/tasks/:taskId`."""
    meta, spec, status = task["metadata"], task.get("spec") or {}, task.get("status") or {}
    state = state_of(task)
    shown: dict[str, Any] = {
        "taskId": meta["name"],
        "agent": spec.get("agent"),
        "task": spec.get("prompt"),
        "provider": (meta.get("annotations") or {}).get(ANNOTATION_PROVIDER),
        "status": state,
        "startTime": millis(start_of(task)),
        "exitTime": millis(parse_time(status.get("completionTime"))) if state in FINAL_STATES else None,
        "exitCode": status.get("exitCode"),
        "duration": duration_ms(task, now),
        "logTail": status.get("logTail") or "",
        # Beyond the seed's fields: what taskyard knows besides.
        "phase": phase_of(task),
        "reason": status.get("reason"),
        "priority": spec.get("priority", "medium"),
        "namespace": meta.get("namespace"),
        "attempts": status.get("attempts", 0),
    }
    if state == "failed" or (state == "stopped" and status.get("message")):
        shown["error"] = status.get("message") or status.get("reason") or "failed"
    if status.get("result"):
        shown["result"] = status["result"]
    return shown


def active_tasks(tasks: list[dict[str, Any]], now: datetime) -> dict[str, Any]:
    """`GET /v1/tasks`: the Tasks not yet in a final state, oldest first."""
    active = [task for task in tasks if state_of(task) not in FINAL_STATES]
    active.sort(key=lambda task: (millis(start_of(task)) or 0, task["metadata"]["name"]))
    return {
        "activeTasks": [
            {
                "taskId": task["metadata"]["name"],
                "agent": (task.get("spec") or {}).get("agent"),
                "status": state_of(task),
                "startTime": millis(start_of(task)),
                "duration": duration_ms(task, now),
            }
            for task in active
        ],
        "count": len(active),
    }


def stopped(task: dict[str, Any]) -> dict[str, Any]:
    return {
        "taskId": task["metadata"]["name"],
        "status": "stopped",
        "message": "Task stop signal sent successfully",
    }


def completion_event(task: dict[str, Any], now: datetime) -> dict[str, Any]:
    """The data of the log stream's `task-complete` event."""
    return {
        "status": state_of(task),
        "exitCode": (task.get("status") or {}).get("exitCode"),
        "timestamp": millis(now),
    }


def request_field_of(api_field: str) -> str:
    """The request field an API server's field path (e.g. spec.prompt) came from."""
    return {"spec.prompt": "task", "spec.agent": "agent", "spec.priority": "priority"}.get(
        api_field, api_field
    )


def log_line(raw: str) -> tuple[str, int | None]:
    """A line of a pod log read with timestamps=true: its text and the kubelet's time of it, in ms."""
    stamp, _, text = raw.partition(" ")
    moment = parse_time(stamp) if stamp.endswith("Z") else None
    if moment is None:
        return raw, None
    return text, millis(moment)


def all_tasks(tasks: list[dict[str, Any]], now: datetime) -> dict[str, Any]:
    """The dashboard's list: every Task of the namespace with its status, newest first."""
    shown = [task_status(task, now) for task in tasks]
    shown.sort(key=lambda item: (-(item["startTime"] or 0), item["taskId"]))
    return {"tasks": shown, "count": len(shown)}


def task_events(events: list[dict[str, Any]]) -> dict[str, Any]:
    """A Task's Kubernetes Events, oldest first, as the dashboard shows them."""
    shown = []
    for event in events:
        moment = (
            parse_time(event.get("lastTimestamp"))
            or parse_time(event.get("eventTime"))
            or parse_time((event.get("metadata") or {}).get("creationTimestamp"))
        )
        shown.append(
            {
                "type": event.get("type") or "Normal",
                "reason": event.get("reason") or "",
                "message": event.get("message") or "",
                "count": event.get("count") or 1,
                "timestamp": millis(moment),
            }
        )
    shown.sort(key=lambda item: item["timestamp"] or 0)
    return {"events": shown}


def agent_names(agents: list[dict[str, Any]], cluster_agents: list[dict[str, Any]]) -> dict[str, Any]:
    """The agents a Task of the namespace may name: the namespace's own first (they take precedence)."""
    own = sorted(agent["metadata"]["name"] for agent in agents)
    shared = sorted(
        agent["metadata"]["name"] for agent in cluster_agents if agent["metadata"]["name"] not in own
    )
    return {
        "agents": [{"name": name, "kind": "Agent"} for name in own]
        + [{"name": name, "kind": "ClusterAgent"} for name in shared]
    }
