"""taskyard-api: the task API of docs/api-http.md over the Task resources, on aiohttp.

Each request acts as its caller: the bearer token it carries goes with every call to the Kubernetes
API server, so authentication and RBAC are the cluster's own. Nothing is stored here.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import shutil
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from typing import Any

import aiohttp
import yaml
from aiohttp import web

from taskyard.web import seed
from taskyard.web.kube import Endpoint, KubeError, UserKube, service_account_namespace
from taskyard.web.sharing import ACCESS_SECONDS, AccessReviews, LogFeeds, SharedReads, TaskReads

log = logging.getLogger("taskyard.api")

NAMESPACE_HEADER = "X-Taskyard-Namespace"
HEARTBEAT_SECONDS = 30.0
POLL_SECONDS = 1.0
DEFAULT_NAMESPACE_TTL = 300.0
DEFAULT_NAMESPACE_ENTRIES = 1024
SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # proxies in front must not hold events back
}
_CONFIG = web.AppKey("config", "ApiConfig")
_SESSION = web.AppKey("session", aiohttp.ClientSession)
_READS = web.AppKey("reads", TaskReads)
_FEEDS = web.AppKey("feeds", LogFeeds)


@dataclass
class ApiConfig:
    endpoint: Endpoint
    default_namespace: str = "default"
    heartbeat_seconds: float = HEARTBEAT_SECONDS
    poll_seconds: float = POLL_SECONDS
    access_seconds: float = ACCESS_SECONDS  # how long a caller's "allowed" is trusted
    started: float = field(default_factory=time.monotonic)
    default_namespaces: OrderedDict[str, tuple[float, str]] = field(default_factory=OrderedDict)
    cpu_mark: tuple[float, float] = field(default_factory=lambda: (time.monotonic(), time.process_time()))


# --- errors: always JSON, never a stack trace --------------------------------------------------------


def error_response(status: int, message: str, **extra: Any) -> web.Response:
    headers = {"WWW-Authenticate": 'Bearer realm="kubernetes"'} if status == 401 else None
    return web.json_response({"error": message, **extra}, status=status, headers=headers)


def _from_kube(error: KubeError) -> web.Response:
    if error.status in (400, 422):
        causes = error.causes
        if causes:
            field_name = seed.request_field_of(str(causes[0].get("field") or ""))
            return error_response(400, f"{field_name}: {causes[0].get('message')}", field=field_name)
        return error_response(400, error.message)
    if error.status in (401, 403, 404, 409):
        return error_response(error.status, error.message)
    if error.status == 429:
        return error_response(503, "the Kubernetes API server is busy: try again shortly")
    status = 504 if error.status == 504 else 502
    return error_response(status, f"the Kubernetes API server failed: {error.message}")


@web.middleware
async def json_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except seed.RequestError as error:
        return error_response(400, str(error), field=error.field)
    except KubeError as error:
        return _from_kube(error)
    except web.HTTPException as error:
        if error.status < 400:
            raise
        return error_response(error.status, error.reason)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return error_response(500, "internal error: the server's log has the details")


# --- who is asking, and where ------------------------------------------------------------------------


def bearer_token(request: web.Request) -> str:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _Unauthorized(
            "missing bearer token: send Authorization: Bearer <token>, a Kubernetes token "
            "(kubectl create token <serviceaccount>, or your own)"
        )
    return token.strip()


class _Unauthorized(web.HTTPUnauthorized):
    def __init__(self, message: str) -> None:
        super().__init__(reason=message)


async def caller(request: web.Request) -> UserKube:
    """The caller's view of the cluster: their token, and the namespace the request names (query
    `namespace`, else header X-Taskyard-Namespace, else the token's own)."""
    config = request.app[_CONFIG]
    token = bearer_token(request)
    kube = UserKube(request.app[_SESSION], config.endpoint, token, config.default_namespace)
    named = request.query.get("namespace")
    source = "namespace"
    if named is None and NAMESPACE_HEADER in request.headers:
        named, source = request.headers[NAMESPACE_HEADER], NAMESPACE_HEADER
    if named is not None:
        kube.namespace = seed.check_namespace(named, source)
    else:
        kube.namespace = await default_namespace(config, kube)
    return kube


async def default_namespace(config: ApiConfig, kube: UserKube) -> str:
    """A ServiceAccount's own namespace, else the server's default. Remembered for a while per token
    (by its hash), so that a client's every request does not cost a review."""
    key = hashlib.sha256(kube.token.encode()).hexdigest()
    now = time.monotonic()
    known = config.default_namespaces.get(key)
    if known is not None and known[0] > now:
        return known[1]
    namespace = service_account_namespace(await kube.username()) or config.default_namespace
    config.default_namespaces[key] = (now + DEFAULT_NAMESPACE_TTL, namespace)
    config.default_namespaces.move_to_end(key)
    while len(config.default_namespaces) > DEFAULT_NAMESPACE_ENTRIES:
        config.default_namespaces.popitem(last=False)
    return namespace


def now() -> datetime:
    return datetime.now(UTC)


# --- the endpoints -----------------------------------------------------------------------------------


async def create_task(request: web.Request) -> web.Response:
    kube = await caller(request)
    try:
        body = await request.json()
    except ValueError:
        raise seed.RequestError("body", "is not JSON: send a JSON object with agent and task") from None
    task = seed.task_from_request(body, kube.namespace)
    known = await kube.agent_known(task["spec"]["agent"])
    if known is False:
        agent = task["spec"]["agent"]
        raise seed.RequestError(
            "agent", f'no Agent "{agent}" in namespace "{kube.namespace}" and no ClusterAgent "{agent}"'
        )
    created = await kube.create_task(task)
    request.app[_READS].changed(kube.namespace, created["metadata"]["name"])
    return web.json_response(seed.accepted(created), status=202)


async def get_task(request: web.Request) -> web.Response:
    kube = await caller(request)
    task = await request.app[_READS].task(kube, request.match_info["task_id"])
    return web.json_response(seed.task_status(task, now()))


async def list_tasks(request: web.Request) -> web.Response:
    kube = await caller(request)
    return web.json_response(seed.active_tasks(await request.app[_READS].tasks(kube), now()))


async def stop_task(request: web.Request) -> web.Response:
    kube = await caller(request)
    task = await kube.get_task(request.match_info["task_id"])
    state = seed.state_of(task)
    if state in seed.FINAL_STATES:
        return web.json_response(
            {"taskId": task["metadata"]["name"], "status": state, "error": f"task already {state}"},
            status=409,
        )
    await kube.cancel_task(task["metadata"]["name"], task["metadata"]["resourceVersion"])
    request.app[_READS].changed(kube.namespace, task["metadata"]["name"])
    return web.json_response(seed.stopped(task))


async def status(request: web.Request) -> web.Response:
    config = request.app[_CONFIG]
    kube = await caller(request)
    tasks = await request.app[_READS].tasks(kube)
    active = sum(1 for task in tasks if seed.state_of(task) not in seed.FINAL_STATES)
    return web.json_response(
        {
            "status": "healthy",
            "uptime": int((time.monotonic() - config.started) * 1000),
            "system": system_usage(config),
            "tasks": {"active": active, "total": len(tasks)},
            "namespace": kube.namespace,
        }
    )


def system_usage(config: ApiConfig) -> dict[str, float]:
    """This component's CPU (since the last call), memory and disk use, in percent."""
    wall, cpu = time.monotonic(), time.process_time()
    last_wall, last_cpu = config.cpu_mark
    config.cpu_mark = (wall, cpu)
    cpu_percent = 100.0 * (cpu - last_cpu) / (wall - last_wall) if wall > last_wall else 0.0
    disk = shutil.disk_usage("/")
    return {
        "cpuUsage": round(cpu_percent, 1),
        "memoryUsage": round(100.0 * _rss_bytes() / max(_memory_limit_bytes(), 1), 1),
        "diskUsage": round(100.0 * disk.used / max(disk.total, 1), 1),
    }


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _memory_limit_bytes() -> int:
    """The container's memory limit (cgroup v2), else the machine's memory."""
    try:
        with open("/sys/fs/cgroup/memory.max") as limit:
            text = limit.read().strip()
        if text.isdigit():
            return int(text)
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


# --- the log stream (Server-Sent Events) -------------------------------------------------------------


class EventSender:
    """Writes SSE events; one writer at a time (the heartbeat shares the response)."""

    def __init__(self, response: web.StreamResponse) -> None:
        self.response = response
        self.lock = asyncio.Lock()

    async def send(self, event: str | None, data: dict[str, Any]) -> None:
        frame = (f"event: {event}\n" if event else "") + f"data: {json.dumps(data)}\n\n"
        async with self.lock:
            await self.response.write(frame.encode())

    async def heartbeats(self, every: float) -> None:
        while True:
            await asyncio.sleep(every)
            await self.send("heartbeat", {"timestamp": seed.millis(now())})


async def stream_logs(request: web.Request) -> web.StreamResponse:
    config = request.app[_CONFIG]
    kube = await caller(request)
    # A Task that does not exist is a 404, before the stream starts.
    task = await request.app[_READS].task(kube, request.match_info["task_id"])
    feed, subscriber = await request.app[_FEEDS].subscribe(kube, task)
    try:
        response = web.StreamResponse(headers=SSE_HEADERS)
        await response.prepare(request)
        sender = EventSender(response)
        following = asyncio.current_task()

        async def beat() -> None:
            try:
                await sender.heartbeats(config.heartbeat_seconds)
            except (ConnectionError, RuntimeError):
                if following is not None:
                    following.cancel()  # the client is gone: stop sending to it

        heartbeat = asyncio.create_task(beat())
        try:
            async for event, data in subscriber.events():
                await sender.send(event, data)
        except (ConnectionError, RuntimeError, asyncio.CancelledError):
            pass  # the client went away
        finally:
            heartbeat.cancel()
        return response
    finally:
        feed.leave(subscriber)
        subscriber.release()


# --- what the dashboard reads besides ----------------------------------------------------------------


async def dashboard_tasks(request: web.Request) -> web.Response:
    kube = await caller(request)
    listed = seed.all_tasks(await request.app[_READS].tasks(kube), now())
    return web.json_response({**listed, "namespace": kube.namespace})


async def task_events(request: web.Request) -> web.Response:
    kube = await caller(request)
    task = await kube.get_task(request.match_info["task_id"])
    return web.json_response(seed.task_events(await kube.events_of(task)))


async def list_agents(request: web.Request) -> web.Response:
    kube = await caller(request)
    return web.json_response(seed.agent_names(*await kube.agents()))


DASHBOARD_FILES = {"index.html": "text/html", "app.js": "text/javascript", "style.css": "text/css"}


async def dashboard_file(request: web.Request) -> web.StreamResponse:
    name = request.match_info.get("file") or "index.html"
    if name not in DASHBOARD_FILES:
        raise web.HTTPNotFound(reason=f"no such file: {name}")
    body = resources.files("taskyard.web").joinpath("dashboard", name).read_bytes()
    return web.Response(
        body=body,
        content_type=DASHBOARD_FILES[name],
        headers={"Cache-Control": "no-cache", "Content-Security-Policy": DASHBOARD_POLICY},
    )


# The page loads nothing but its own files and talks to nothing but this API.
DASHBOARD_POLICY = "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'"


async def to_dashboard(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("/dashboard/")


# --- the OpenAPI document, health ----------------------------------------------------------------------


def openapi_document() -> dict[str, Any]:
    text = resources.files("taskyard.web").joinpath("openapi.yaml").read_text()
    return yaml.safe_load(text)


async def openapi_yaml(request: web.Request) -> web.Response:
    text = resources.files("taskyard.web").joinpath("openapi.yaml").read_text()
    return web.Response(text=text, content_type="application/yaml")


async def openapi_json(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


# --- the application ------------------------------------------------------------------------------------


def make_app(config: ApiConfig) -> web.Application:
    app = web.Application(middlewares=[json_errors], client_max_size=256 * 1024)
    app[_CONFIG] = config
    access = AccessReviews(seconds=config.access_seconds)
    app[_READS] = TaskReads(access, SharedReads())
    app[_FEEDS] = LogFeeds(access, config.poll_seconds)

    async def session(app: web.Application):
        # Connections to the API server are pooled across callers; each request carries its own token.
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200)) as shared:
            app[_SESSION] = shared
            yield

    app.cleanup_ctx.append(session)
    app.router.add_post("/v1/tasks", create_task)
    app.router.add_get("/v1/tasks", list_tasks)
    app.router.add_get("/v1/tasks/{task_id}", get_task)
    app.router.add_delete("/v1/tasks/{task_id}", stop_task)
    app.router.add_get("/v1/tasks/{task_id}/logs/stream", stream_logs)
    app.router.add_get("/v1/status", status)
    app.router.add_get("/v1/dashboard/tasks", dashboard_tasks)
    app.router.add_get("/v1/tasks/{task_id}/events", task_events)
    app.router.add_get("/v1/agents", list_agents)
    app.router.add_get("/", to_dashboard)
    app.router.add_get("/dashboard/", dashboard_file)
    app.router.add_get("/dashboard/{file}", dashboard_file)
    app.router.add_get("/v1/openapi.yaml", openapi_yaml)
    app.router.add_get("/v1/openapi.json", openapi_json)
    app.router.add_get("/healthz", healthz)
    return app


def serve(config: ApiConfig, host: str, port: int) -> None:
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(name)s %(levelname)s %(message)s")
    log.info("taskyard-api on http://%s:%d, Kubernetes API server %s", host, port, config.endpoint.server)
    web.run_app(make_app(config), host=host, port=port, print=None, access_log=None)
