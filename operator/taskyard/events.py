"""Kubernetes Events about Tasks, posted in the background.

Posting an Event is a courtesy to the user, never a step of the work: events go into a bounded queue
that one background task drains, each post with its own timeout, and a full queue drops the newest
(as client-go's event broadcaster does) rather than slow the control loop.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from datetime import UTC, datetime
from typing import Any

from kubernetes_asyncio import client

from taskyard.api import API_VERSION
from taskyard.apiwrite import send

logger = logging.getLogger("taskyard.events")
MESSAGE_LIMIT = 1024


class EventRecorder:
    def __init__(self, api: client.ApiClient, capacity: int = 1000, timeout: float = 10.0) -> None:
        self.api, self.timeout = api, timeout
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=capacity)
        self.dropped = 0
        self._host = socket.gethostname()

    def record(self, task: dict[str, Any], type: str, reason: str, message: str) -> None:
        """Queues an Event for the Task (``task`` has its metadata); never blocks, never raises."""
        meta = task["metadata"]
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        body = {
            "metadata": {"generateName": f"{meta['name'][:200]}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": API_VERSION,
                "kind": "Task",
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta["uid"],
            },
            "type": type,
            "reason": reason[:128] or "Unknown",
            "message": message[:MESSAGE_LIMIT],
            "source": {"component": "taskyard", "host": self._host},
            "reportingComponent": "taskyard.dev/operator",
            "reportingInstance": self._host,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            self.queue.put_nowait(body)
        except asyncio.QueueFull:
            self.dropped += 1

    async def run(self) -> None:
        core = client.CoreV1Api(self.api)
        while True:
            body = await self.queue.get()
            try:
                await send(
                    core.create_namespaced_event,
                    body["metadata"]["namespace"],
                    body,
                    _request_timeout=self.timeout,
                )
            except asyncio.CancelledError:
                raise
            except Exception as error:  # an Event is not worth a retry
                logger.debug("posting event %s failed: %s", body["reason"], error)
