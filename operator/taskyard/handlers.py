"""kopf wiring: watches, indexes and the thin handlers that hand each event to the controller.

kopf's indexes are the operator's cache: they are complete before any handler runs (so admission
never starts from a partial picture after a restart) and each lookup is O(1), so no handler lists
Tasks, Jobs or Pods. Jobs and Pods are watched with a server-side label selector.
Handlers write nothing onto the Task but its status: no finalizer, no kopf annotations. Deleting a
Task is cancelling it: Kubernetes' garbage collector removes the Job and its pods through the owner
reference, so a delete completes even while the operator is down.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import kopf
from kubernetes_asyncio import config

from taskyard import metrics
from taskyard.api import GROUP, LABEL_TASK, VERSION
from taskyard.controller import ANNOTATION_AGENT_REF, ClusterView, Controller, InstrumentedApiClient, TaskKey
from taskyard.phase import TERMINAL_PHASES, JobView, PodView
from taskyard.render import label_value_for
from taskyard.settings import OperatorSettings

TASKS = (GROUP, VERSION, "tasks")
AGENTS = (GROUP, VERSION, "agents")
CLUSTER_AGENTS = (GROUP, VERSION, "clusteragents")
OWNED = {LABEL_TASK: kopf.PRESENT}


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    # Pinned: by default kopf tries every client library it finds installed, in no fixed order.
    in_cluster = kopf.login_with_service_account(**kwargs)
    if in_cluster is None:
        return kopf.login_with_kubeconfig(**kwargs)
    # Reach the API server the way client-go does, by the service address the kubelet puts in the
    # environment rather than the kubernetes.default.svc name, which needs cluster DNS.
    host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT")
    if host and port:
        host = f"[{host}]" if ":" in host else host
        return dataclasses.replace(in_cluster, server=f"https://{host}:{port}")
    return in_cluster


@kopf.on.startup()
async def start(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    settings.persistence.finalizer = "taskyard.dev/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="kopf.taskyard.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="kopf.taskyard.dev")
    settings.watching.label_selectors["batch", "v1", "jobs"] = LABEL_TASK
    settings.watching.label_selectors["", "v1", "pods"] = LABEL_TASK
    settings.watching.server_timeout = 120
    settings.networking.request_timeout = 30
    settings.posting.level = logging.INFO
    try:
        config.load_incluster_config()
    except config.ConfigException:
        await config.load_kube_config()
    controller = Controller(api=InstrumentedApiClient(), settings=OperatorSettings.from_env())
    memo.controller = controller
    memo.metrics = None
    if controller.settings.metrics_port:
        memo.metrics = await metrics.serve(controller.settings.metrics_port, controller.known_tasks)
    logger.info("taskyard operator started with %s", controller.settings)


@kopf.on.cleanup()
async def stop(memo: kopf.Memo, **_: Any) -> None:
    await memo.controller.stop()
    if memo.metrics is not None:
        await memo.metrics.cleanup()
    await memo.controller.api.close()


# --- indexes: the cache every handler reads --------------------------------------------------------


def _key(namespace: str, name: str) -> TaskKey:
    return (namespace, label_value_for(name))


@kopf.index(*TASKS)
def task_index(namespace: str, name: str, body: kopf.Body, **_: Any) -> dict[TaskKey, dict[str, Any]]:
    return {_key(namespace, name): _task_snapshot(body)}


def _may_need_a_job(body: kopf.Body, **_: Any) -> bool:
    # Never admitted, not cancelled, not finished, not being deleted.
    status, spec = body.get("status") or {}, body.get("spec") or {}
    if status.get("phase") in TERMINAL_PHASES or status.get("jobName") or spec.get("cancel"):
        return False
    return not body["metadata"].get("deletionTimestamp")


# A `when=` filter (not a None result) takes an object out of an index: kopf keeps the previous value
# of an object whose indexer returns None.
@kopf.index(*TASKS, when=_may_need_a_job)
def waiting_index(namespace: str, name: str, body: kopf.Body, **_: Any) -> dict[TaskKey, dict[str, Any]]:
    return {_key(namespace, name): _task_snapshot(body)}


@kopf.index("batch", "v1", "jobs", labels=OWNED)
def job_index(namespace: str, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[TaskKey, JobView]:
    return {(namespace, labels[LABEL_TASK]): JobView.from_body(dict(body))}


def _unfinished(body: kopf.Body, **_: Any) -> bool:
    return not JobView.from_body(dict(body)).finished


# A Job holds its slot until it has finished or, when deleted, until its pods are gone.
@kopf.index("batch", "v1", "jobs", labels=OWNED, when=_unfinished)
def active_job_index(namespace: str, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[TaskKey, str]:
    return {
        (namespace, labels[LABEL_TASK]): body["metadata"].get("annotations", {}).get(ANNOTATION_AGENT_REF, "")
    }


def _not_ended(body: kopf.Body, **_: Any) -> bool:
    return (body.get("status") or {}).get("phase") not in ("Succeeded", "Failed")


@kopf.index("", "v1", "pods", labels=OWNED, when=_not_ended)
def live_pod_index(namespace: str, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[TaskKey, str]:
    return {
        (namespace, labels[LABEL_TASK]): body["metadata"].get("annotations", {}).get(ANNOTATION_AGENT_REF, "")
    }


@kopf.index("", "v1", "pods", labels=OWNED)
def pod_index(namespace: str, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[TaskKey, PodView]:
    return {(namespace, labels[LABEL_TASK]): PodView.from_body(dict(body))}


@kopf.index("scheduling.k8s.io", "v1", "priorityclasses", when=lambda name, **_: name.startswith("taskyard-"))
def priority_class_index(name: str, **_: Any) -> dict[str, bool]:
    return {name: True}


@kopf.index(*AGENTS)
def agent_index(
    namespace: str, name: str, spec: kopf.Spec, **_: Any
) -> dict[tuple[str, str], dict[str, Any]]:
    return {(namespace, name): dict(spec)}


@kopf.index(*CLUSTER_AGENTS)
def cluster_agent_index(name: str, spec: kopf.Spec, **_: Any) -> dict[str, dict[str, Any]]:
    return {name: dict(spec)}


def _task_snapshot(body: kopf.Body) -> dict[str, Any]:
    meta = body["metadata"]
    return {
        "metadata": {
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta["uid"],
            "resourceVersion": meta.get("resourceVersion"),
            "generation": meta.get("generation", 1),
            "creationTimestamp": meta.get("creationTimestamp"),
            "deletionTimestamp": meta.get("deletionTimestamp"),
        },
        "spec": dict(body.get("spec") or {}),
        "status": dict(body.get("status") or {}),
    }


def _view(indexes: dict[str, Any]) -> ClusterView:
    return ClusterView(
        tasks=indexes["task_index"],
        waiting=indexes["waiting_index"],
        jobs=indexes["job_index"],
        active_jobs=indexes["active_job_index"],
        live_pods=indexes["live_pod_index"],
        priority_classes=indexes["priority_class_index"],
        pods=indexes["pod_index"],
        agents=indexes["agent_index"],
        cluster_agents=indexes["cluster_agent_index"],
    )


# --- handlers: every event re-derives the state of the Task it concerns --------------------------------


@kopf.on.event(*TASKS)
async def task_changed(type: str, namespace: str, name: str, memo: kopf.Memo, **kwargs: Any) -> None:
    metrics.EVENTS_HANDLED.labels(resource="tasks").inc()
    controller: Controller = memo.controller
    key = _key(namespace, name)
    if type == "DELETED":
        controller.forget(key)
        controller.enqueue(_view(kwargs), None)  # its slot or place in the queue is free
    else:
        controller.enqueue(_view(kwargs), key)


@kopf.on.event("batch", "v1", "jobs", labels=OWNED)
async def job_changed(namespace: str, labels: kopf.Labels, memo: kopf.Memo, **kwargs: Any) -> None:
    metrics.EVENTS_HANDLED.labels(resource="jobs").inc()
    memo.controller.enqueue(_view(kwargs), (namespace, labels[LABEL_TASK]))


@kopf.on.event("", "v1", "pods", labels=OWNED)
async def pod_changed(namespace: str, labels: kopf.Labels, memo: kopf.Memo, **kwargs: Any) -> None:
    metrics.EVENTS_HANDLED.labels(resource="pods").inc()
    memo.controller.enqueue(_view(kwargs), (namespace, labels[LABEL_TASK]))


@kopf.on.event(*AGENTS)
@kopf.on.event(*CLUSTER_AGENTS)
async def agent_changed(name: str, resource: kopf.Resource, memo: kopf.Memo, **kwargs: Any) -> None:
    # Tasks waiting for this agent (GitOps applies in any order) re-derive their phase and may start.
    metrics.EVENTS_HANDLED.labels(resource=resource.plural).inc()
    view = _view(kwargs)
    waiting = [
        key for key, tasks in view.waiting.items() if any(t["spec"].get("agent") == name for t in tasks)
    ]
    memo.controller.enqueue(view, None, *waiting)
