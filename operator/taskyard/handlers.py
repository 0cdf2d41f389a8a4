"""kopf wiring: login, start-up and clean-up, the liveness probe.

kopf runs the operator process (its command line, signals, credentials, the /healthz endpoint), while
the control loop itself (:class:`taskyard.controller.Controller`) keeps its own cache: kopf's indexes
are the wrong tool for a cache at this scale (docs/architecture.md, "Why not kopf's indexes"). No
kopf resource handler is registered, so kopf writes nothing onto Tasks: no finalizer, no annotations.
Deleting a Task is cancelling it: Kubernetes' garbage collector removes the Job and its pods through
the owner reference, so a delete completes even while the operator is down.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from typing import Any

import kopf
from kubernetes_asyncio import client, config

from taskyard import metrics
from taskyard.controller import Controller, InstrumentedApiClient
from taskyard.podlogs import FOLLOW_LIMIT
from taskyard.settings import OperatorSettings

# Set by ``python -m taskyard`` from its --namespace options; empty: every namespace.
NAMESPACES_ENV = "TASKYARD_WATCH_NAMESPACES"


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    # Pinned: by default kopf tries every client library it finds installed, in no fixed order.
    in_cluster = kopf.login_with_service_account(**kwargs)
    if in_cluster is None:
        return kopf.login_with_kubeconfig(**kwargs)
    host, port = _service_address()
    if host and port:
        return dataclasses.replace(in_cluster, server=f"https://{host}:{port}")
    return in_cluster


def _service_address() -> tuple[str | None, str | None]:
    # Reach the API server the way client-go does, by the service address the kubelet puts in the
    # environment rather than the kubernetes.default.svc name, which needs cluster DNS.
    host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT")
    if host and ":" in host:
        host = f"[{host}]"
    return host, port


async def _api_client(settings: OperatorSettings, watches: int) -> InstrumentedApiClient:
    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException:
        await config.load_kube_config(client_configuration=configuration)
    # Every watch holds a connection for its whole life, and so does every log follow while it runs;
    # the workers need room beside them.
    configuration.connection_pool_maxsize = watches + FOLLOW_LIMIT + 2 * settings.workers + 16
    api = InstrumentedApiClient(configuration)
    api.default_timeout = settings.request_timeout_seconds
    return api


@kopf.on.startup()
async def start(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    settings.posting.level = logging.INFO
    operator_settings = OperatorSettings.from_env()
    namespaces = [ns for ns in os.environ.get(NAMESPACES_ENV, "").split(",") if ns] or None
    watches = 6 * len(namespaces or [""])
    controller = Controller(
        api=await _api_client(operator_settings, watches), settings=operator_settings, namespaces=namespaces
    )
    memo.controller = controller
    memo.loop = asyncio.get_running_loop().create_task(controller.run())
    memo.metrics = None
    if operator_settings.metrics_port:
        memo.metrics = await metrics.serve(operator_settings.metrics_port, controller.task_phases)
    logger.info(
        "taskyard operator started in %s with %s",
        ", ".join(namespaces) if namespaces else "all namespaces",
        operator_settings,
    )


@kopf.on.probe(id="workLoop")
def work_loop(memo: kopf.Memo, **_: Any) -> dict[str, Any]:
    # Raises (and /healthz answers 500, so the kubelet restarts the operator) when the work loop has
    # stopped: work waiting with nothing processed, or no complete list in time.
    if memo.loop.done():
        raise kopf.PermanentError(f"the control loop ended: {memo.loop.exception()!r}")
    return memo.controller.health()


@kopf.on.cleanup()
async def stop(memo: kopf.Memo, **_: Any) -> None:
    memo.loop.cancel()
    await asyncio.gather(memo.loop, return_exceptions=True)
    if memo.metrics is not None:
        await memo.metrics.cleanup()
    await memo.controller.api.close()
