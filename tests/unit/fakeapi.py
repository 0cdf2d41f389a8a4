"""A fake Kubernetes API server at the HTTP level, for unit tests of the control loop's client side.

It serves what a test scripts (lists in pages, watch streams, logs, errors, stalls) on a loopback port,
so the real HTTP client, its timeouts and its connection handling are exercised without a cluster.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from kubernetes_asyncio import client

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class FakeApi:
    def __init__(self) -> None:
        self.routes: dict[str, Handler] = {}
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self._runner: web.AppRunner | None = None
        self.port = 0

    def route(self, path: str, handler: Handler) -> None:
        self.routes[path] = handler

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.method, request.path, dict(request.query)))
        handler = self.routes.get(request.path)
        if handler is None:
            return web.json_response({"kind": "Status", "code": 404, "message": "not found"}, status=404)
        return await handler(request)

    async def __aenter__(self) -> FakeApi:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def __aexit__(self, *_: Any) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    def client(self) -> client.ApiClient:
        configuration = client.Configuration(host=f"http://127.0.0.1:{self.port}")
        return client.ApiClient(configuration)


async def stream_lines(
    request: web.Request, lines: list[dict[str, Any]], hold: float = 0.0
) -> web.StreamResponse:
    """Answers a watch: one JSON line per event, then (optionally) holds the connection open."""
    response = web.StreamResponse()
    response.content_type = "application/json"
    await response.prepare(request)
    for line in lines:
        await response.write(json.dumps(line).encode() + b"\n")
    if hold:
        await asyncio.sleep(hold)
    return response


def obj(name: str, rv: str, namespace: str = "ns", **extra: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": namespace, "resourceVersion": rv, "uid": f"uid-{name}"},
        **extra,
    }


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]
