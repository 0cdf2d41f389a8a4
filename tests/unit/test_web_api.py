"""taskyard-api against a fake Kubernetes API server at the HTTP level: the caller's token goes with every
call, errors are JSON with the right status, the log stream's events are framed as the seed's clients
read them. (The cluster tiers run the seed's own clients against the real API server.)"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import json
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from taskyard.web import kube as web_kube
from taskyard.web import seed, sharing
from taskyard.web.kube import Endpoint
from taskyard.web.server import ApiConfig, make_app, openapi_document
from tests.unit.fakeapi import FakeApi, run

pytestmark = pytest.mark.unit

NS = "team-a"
ACCESS_REVIEW = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
TASKS = f"/apis/taskyard.dev/v1alpha1/namespaces/{NS}/tasks"
REVIEW = "/apis/authentication.k8s.io/v1/selfsubjectreviews"
TOKEN = "token-of-team-a"
NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def task(name: str, phase: str | None = None, **status: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "taskyard.dev/v1alpha1",
        "kind": "Task",
        "metadata": {
            "name": name,
            "namespace": NS,
            "uid": f"uid-{name}",
            "resourceVersion": "7",
            "creationTimestamp": "2026-01-01T11:59:00Z",
        },
        "spec": {"agent": "shell", "prompt": "echo hi"},
        "status": {"phase": phase, **status} if phase else {},
    }
    return body


# --- the pure mapping ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ([], "body"),
        ({"task": "x"}, "agent"),
        ({"agent": "Not_A_Name", "task": "x"}, "agent"),
        ({"agent": "shell"}, "task"),
        ({"agent": "shell", "task": "   "}, "task"),
        ({"agent": "shell", "task": "x" * (32 * 1024 + 1)}, "task"),
        ({"agent": "shell", "task": "x", "provider": 5}, "provider"),
        ({"agent": "shell", "task": "x", "priority": "urgent"}, "priority"),
        ({"agent": "shell", "task": "x", "image": "evil"}, "image"),
    ],
)
def test_a_bad_request_body_is_refused_naming_the_field(body: Any, field: str) -> None:
    with pytest.raises(seed.RequestError) as refused:
        seed.task_from_request(body, NS)
    assert refused.value.field == field
    assert str(refused.value).startswith(f"{field}: ")


def test_a_request_becomes_a_task_named_by_a_fresh_id() -> None:
    made = seed.task_from_request({"agent": "coder", "task": "do it", "provider": "claude"}, NS)
    again = seed.task_from_request({"agent": "coder", "task": "do it"}, NS)
    assert made["spec"] == {"agent": "coder", "prompt": "do it"}
    assert made["metadata"]["annotations"] == {seed.ANNOTATION_PROVIDER: "claude"}
    assert made["metadata"]["namespace"] == NS
    assert made["metadata"]["name"] != again["metadata"]["name"]
    assert len(made["metadata"]["name"]) == 36  # a UUID, as the seed's clients expect of a taskId


@pytest.mark.parametrize(
    ("phase", "cancel", "state"),
    [
        (None, False, "running"),  # the seed's clients poll while `running`: waiting is running
        ("Queued", False, "running"),
        ("Running", False, "running"),
        ("Running", True, "stopped"),
        ("Cancelling", False, "stopped"),
        ("Succeeded", False, "completed"),
        ("Failed", False, "failed"),
        ("Cancelled", True, "stopped"),
    ],
)
def test_phases_map_onto_the_seeds_states(phase: str | None, cancel: bool, state: str) -> None:
    body = task("t", phase)
    body["spec"]["cancel"] = cancel
    assert seed.state_of(body) == state


def test_a_finished_tasks_status_has_millisecond_times_and_its_error() -> None:
    body = task(
        "t",
        "Failed",
        startTime="2026-01-01T11:59:30Z",
        completionTime="2026-01-01T11:59:45Z",
        exitCode=3,
        logTail="boom",
        reason="AgentFailed",
        message="the agent exited with 3",
    )
    shown = seed.task_status(body, NOW)
    assert shown["status"] == "failed"
    assert shown["startTime"] == int(datetime(2026, 1, 1, 11, 59, 30, tzinfo=UTC).timestamp() * 1000)
    assert shown["exitTime"] - shown["startTime"] == 15_000 == shown["duration"]
    assert (shown["exitCode"], shown["logTail"], shown["error"]) == (3, "boom", "the agent exited with 3")


def test_active_tasks_leave_out_the_finished_ones() -> None:
    listed = seed.active_tasks(
        [task("a", "Running", startTime="2026-01-01T11:59:50Z"), task("b", "Succeeded"), task("c")], NOW
    )
    assert listed["count"] == 2
    assert [t["taskId"] for t in listed["activeTasks"]] == ["c", "a"]  # c waits since 11:59:00
    assert listed["activeTasks"][1]["duration"] == 10_000


def test_a_log_line_keeps_the_kubelets_time() -> None:
    assert seed.log_line("2026-01-01T12:00:00.250000000Z hello world") == ("hello world", 1767268800250)
    assert seed.log_line("no stamp here") == ("no stamp here", None)


def test_the_openapi_document_describes_every_route() -> None:
    document = openapi_document()
    app = make_app(ApiConfig(endpoint=Endpoint("http://127.0.0.1:1", False)))
    routes = {
        (route.method.lower(), route.resource.canonical.replace("{task_id}", "{taskId}"))
        for route in app.router.routes()
        if route.resource is not None
        and route.resource.canonical.startswith("/v1/")
        and route.method != "HEAD"
    }
    described = {
        (method, path)
        for path, item in document["paths"].items()
        for method in item
        if method != "parameters"
    }
    assert routes == described


# --- the server against a fake API server --------------------------------------------------------------


class Cluster:
    """A scripted API server that insists on the caller's token."""

    def __init__(self, fake: FakeApi) -> None:
        self.fake = fake
        self.tasks: dict[str, dict[str, Any]] = {}
        self.tokens_seen: list[str] = []
        self.patches: list[dict[str, Any]] = []
        self.created: list[dict[str, Any]] = []
        self.denied: set[tuple[str, str]] = set()  # (verb, resource[/subresource]) RBAC refuses
        self.access_reviews: list[dict[str, Any]] = []
        fake.route(REVIEW, self.review)
        fake.route(ACCESS_REVIEW, self.access_review)
        fake.route(TASKS, self.tasks_collection)

    def authorized(self, request: web.Request) -> web.Response | None:
        token = request.headers.get("Authorization", "")
        self.tokens_seen.append(token)
        if token != f"Bearer {TOKEN}":
            return web.json_response({"kind": "Status", "code": 401, "message": "Unauthorized"}, status=401)
        return None

    async def review(self, request: web.Request) -> web.StreamResponse:
        refused = self.authorized(request)
        if refused:
            return refused
        user = {"username": f"system:serviceaccount:{NS}:robot"}
        return web.json_response({"status": {"userInfo": user}}, status=201)

    async def access_review(self, request: web.Request) -> web.StreamResponse:
        refused = self.authorized(request)
        if refused:
            return refused
        asked = json.loads(await request.read())["spec"]["resourceAttributes"]
        self.access_reviews.append(asked)
        resource = "/".join(filter(None, (asked["resource"], asked.get("subresource"))))
        allowed = (asked["verb"], resource) not in self.denied
        return web.json_response({"status": {"allowed": allowed}}, status=201)

    async def tasks_collection(self, request: web.Request) -> web.StreamResponse:
        refused = self.authorized(request)
        if refused:
            return refused
        if request.method == "POST":
            body = json.loads(await request.read())
            body["metadata"].update(uid="uid-new", resourceVersion="1")
            self.created.append(body)
            return web.json_response(body, status=201)
        return web.json_response({"items": list(self.tasks.values())})

    def add(self, body: dict[str, Any]) -> None:
        name = body["metadata"]["name"]
        self.tasks[name] = body

        async def one(request: web.Request) -> web.StreamResponse:
            refused = self.authorized(request)
            if refused:
                return refused
            if request.method == "PATCH":
                self.patches.append(json.loads(await request.read()))
                return web.json_response(self.tasks[name])
            return web.json_response(self.tasks[name])

        self.fake.route(f"{TASKS}/{name}", one)


async def api_client(fake: FakeApi, **settings: Any) -> TestClient:
    config = ApiConfig(endpoint=Endpoint(f"http://127.0.0.1:{fake.port}", False), **settings)
    client = TestClient(TestServer(make_app(config)))
    await client.start_server()
    return client


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def scenario(test: Any) -> None:
    async def body() -> None:
        async with FakeApi() as fake:
            cluster = Cluster(fake)
            client = await api_client(fake)
            try:
                await test(fake, cluster, client)
            finally:
                await client.close()

    run(body())


def test_no_token_or_a_token_the_cluster_refuses_is_a_401_in_json() -> None:
    async def test(fake: FakeApi, cluster: Cluster, client: TestClient) -> None:
        missing = await client.get("/v1/tasks")
        assert missing.status == 401
        assert missing.headers["WWW-Authenticate"].startswith("Bearer")
        assert "missing bearer token" in (await missing.json())["error"]
        wrong = await client.get("/v1/tasks", headers=auth("stolen"))
        assert wrong.status == 401
        assert (await wrong.json()) == {"error": "Unauthorized"}
        assert cluster.tokens_seen == ["Bearer stolen"]  # passed on as it came, and nothing else

    scenario(test)


def test_a_task_is_created_as_its_caller_in_the_tokens_own_namespace() -> None:
    async def test(fake: FakeApi, cluster: Cluster, client: TestClient) -> None:
        agents = f"/apis/taskyard.dev/v1alpha1/namespaces/{NS}/agents/coder"

        async def agent(request: web.Request) -> web.StreamResponse:
            return web.json_response({"metadata": {"name": "coder"}})

        fake.route(agents, agent)
        answer = await client.post(
            "/v1/tasks", json={"agent": "coder", "task": "write tests", "provider": "claude"}, headers=auth()
        )
        assert answer.status == 202
        body = await answer.json()
        [created] = cluster.created
        assert body == {
            "taskId": created["metadata"]["name"],
            "status": "accepted",
            "message": f"Task accepted: Task {NS}/{created['metadata']['name']} runs when its turn comes",
            "taskDir": "/workspace",
            "logFile": f"/v1/tasks/{created['metadata']['name']}/logs/stream",
        }
        assert created["spec"] == {"agent": "coder", "prompt": "write tests"}
        assert set(cluster.tokens_seen) == {f"Bearer {TOKEN}"}

    scenario(test)


def test_an_agent_that_does_not_exist_is_refused_before_a_task_is_made() -> None:
    async def test(fake: FakeApi, cluster: Cluster, client: TestClient) -> None:
        answer = await client.post(
            "/v1/tasks?namespace=team-a", json={"agent": "nobody", "task": "x"}, headers=auth()
        )
        assert answer.status == 400
        body = await answer.json()
        assert body["field"] == "agent"
        assert 'no Agent "nobody" in namespace "team-a" and no ClusterAgent "nobody"' in body["error"]
        assert cluster.created == []

    scenario(test)


def test_bad_json_and_a_bad_namespace_are_400s_naming_what_is_wrong() -> None:
    async def test(fake: FakeApi, cluster: Cluster, client: TestClient) -> None:
        answer = await client.post("/v1/tasks", data=b"{not json", headers=auth())
        assert (answer.status, (await answer.json())["field"]) == (400, "body")
        answer = await client.get("/v1/tasks", headers={**auth(), "X-Taskyard-Namespace": "Team_A"})
        assert (answer.status, (await answer.json())["field"]) == (400, "X-Taskyard-Namespace")

    scenario(test)


def test_get_a_task_and_a_missing_one() -> None:
    async def test(fake: FakeApi, cluster: Cluster, client: TestClient) -> None:
        cluster.add(task("known", "Running", startTime="2026-01-01T11:59:30Z"))
        found = await client.get("/v1/tasks/known", headers=auth())
        assert found.status == 200
        assert (await found.json())["status"] == "running"
        missing = await client.get("/v1/tasks/unknown", headers=auth())
        assert missing.status == 404
        assert "error" in await missing.json()

    scenario(test)


def test_delete_stops_a_running_task_and_is_a_409_for_a_finished_one() -> None:
    async def test(fake: FakeApi, cluster: Cluster, client: TestClient) -> None:
        cluster.add(task("busy", "Running"))
        cluster.add(task("done", "Succeeded"))
        stopped = await client.delete("/v1/tasks/busy", headers=auth())
        assert stopped.status == 200
        assert await stopped.json() == {
            "taskId": "busy",
            "status": "stopped",
            "message": "Task stop signal sent successfully",
        }
        assert cluster.patches == [{"metadata": {"resourceVersion": "7"}, "spec": {"cancel": True}}]
        final = await client.delete("/v1/tasks/done", headers=auth())
        assert final.status == 409
        assert (await final.json())["status"] == "completed"
        assert len(cluster.patches) == 1

    scenario(test)


def test_a_failing_or_silent_api_server_is_a_json_502_or_504(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(web_kube, "REQUEST_TIMEOUT", aiohttp.ClientTimeout(total=0.5))

    async def test(fake: FakeApi, cluster: Cluster, client: TestClient) -> None:
        async def broken(request: web.Request) -> web.StreamResponse:
            return web.Response(status=500, text="etcd is on fire")

        async def silent(request: web.Request) -> web.StreamResponse:
            await asyncio.sleep(5)
            return web.json_response({})

        fake.route(f"{TASKS}/broken", broken)
        fake.route(f"{TASKS}/silent", silent)
        answer = await client.get("/v1/tasks/broken", headers=auth())
        assert answer.status == 502
        assert "etcd is on fire" in (await answer.json())["error"]
        answer = await client.get("/v1/tasks/silent", headers=auth())
        assert answer.status == 504
        assert "did not answer in time" in (await answer.json())["error"]

    scenario(test)


def test_status_counts_the_namespaces_tasks() -> None:
    async def test(fake: FakeApi, cluster: Cluster, client: TestClient) -> None:
        cluster.add(task("a", "Running"))
        cluster.add(task("b", "Succeeded"))
        answer = await client.get("/v1/status", headers=auth())
        body = await answer.json()
        assert answer.status == 200
        assert (body["status"], body["tasks"], body["namespace"]) == (
            "healthy",
            {"active": 1, "total": 2},
            NS,
        )
        assert set(body["system"]) == {"cpuUsage", "memoryUsage", "diskUsage"}

    scenario(test)


# --- the log stream ------------------------------------------------------------------------------------


def sse_events(raw: str) -> list[tuple[str, dict[str, Any]]]:
    """(event, data) of each event, `message` for unnamed ones, as EventSource reads them."""
    events = []
    for frame in raw.split("\n\n"):
        if not frame.strip():
            continue
        fields = dict(line.split(": ", 1) for line in frame.splitlines())
        events.append((fields.get("event", "message"), json.loads(fields["data"])))
    return events


def test_the_stream_sends_each_line_then_task_complete() -> None:
    async def test(fake: FakeApi, cluster: Cluster, client: TestClient) -> None:
        body = task("talker", "Running")
        cluster.add(body)
        pod = {
            "metadata": {"name": "talker-abc", "creationTimestamp": "2026-01-01T11:59:10Z"},
            "status": {"containerStatuses": [{"name": "agent", "state": {"running": {}}}]},
        }

        async def pods(request: web.Request) -> web.StreamResponse:
            assert request.query["labelSelector"] == "taskyard.dev/task=talker"
            return web.json_response({"items": [pod]})

        async def log(request: web.Request) -> web.StreamResponse:
            assert request.headers["Authorization"] == f"Bearer {TOKEN}"
            assert (request.query["follow"], request.query["timestamps"]) == ("true", "true")
            response = web.StreamResponse()
            await response.prepare(request)
            await response.write(
                b"2026-01-01T12:00:00.000000001Z first\n2026-01-01T12:00:01Z bad \xff byte\n"
            )
            await asyncio.sleep(0.2)
            await response.write(b"2026-01-01T12:00:02Z last")
            body["status"] = {"phase": "Succeeded", "exitCode": 0}
            return response

        fake.route(f"/api/v1/namespaces/{NS}/pods", pods)
        fake.route(f"/api/v1/namespaces/{NS}/pods/talker-abc/log", log)
        answer = await client.get("/v1/tasks/talker/logs/stream", headers=auth())
        assert answer.headers["Content-Type"] == "text/event-stream"
        events = sse_events(await answer.text())
        assert events[:3] == [
            ("message", {"line": "first", "timestamp": 1767268800000}),
            ("message", {"line": "bad \ufffd byte", "timestamp": 1767268801000}),
            ("message", {"line": "last", "timestamp": 1767268802000}),
        ]
        name, data = events[3]
        assert (name, data["status"], data["exitCode"]) == ("task-complete", "completed", 0)
        assert len(events) == 4

    scenario(test)


def test_a_finished_tasks_stream_replays_the_kept_logs() -> None:
    async def test(fake: FakeApi, cluster: Cluster, client: TestClient) -> None:
        cluster.add(task("old", "Failed", exitCode=2, completionTime="2026-01-01T11:59:59Z"))
        kept = base64.b64encode(gzip.compress(b"one\ntwo\n")).decode()

        async def pods(request: web.Request) -> web.StreamResponse:
            return web.json_response({"items": []})

        async def config_map(request: web.Request) -> web.StreamResponse:
            owner = {"uid": "uid-old"}
            meta = {"name": "old-logs", "ownerReferences": [owner]}
            return web.json_response({"metadata": meta, "binaryData": {"attempt-1.log.gz": kept}})

        fake.route(f"/api/v1/namespaces/{NS}/pods", pods)
        fake.route(f"/api/v1/namespaces/{NS}/configmaps/old-logs", config_map)
        events = sse_events(await (await client.get("/v1/tasks/old/logs/stream", headers=auth())).text())
        assert [e for e in events if e[0] == "message"] == [
            ("message", {"line": "one", "timestamp": 1767268799000}),
            ("message", {"line": "two", "timestamp": 1767268799000}),
        ]
        assert events[-1][0] == "task-complete" and events[-1][1]["status"] == "failed"

    scenario(test)


def test_a_quiet_stream_sends_heartbeats_and_an_error_when_the_task_goes() -> None:
    async def test(fake: FakeApi, cluster: Cluster, client: TestClient) -> None:
        client_ = await api_client(fake, heartbeat_seconds=0.1, poll_seconds=0.05)
        cluster.add(task("waiting", "Queued"))

        async def pods(request: web.Request) -> web.StreamResponse:
            return web.json_response({"items": []})

        fake.route(f"/api/v1/namespaces/{NS}/pods", pods)

        async def delete_later() -> None:
            await asyncio.sleep(0.5)
            del fake.routes[f"{TASKS}/waiting"]

        deleting = asyncio.create_task(delete_later())
        answer = await client_.get("/v1/tasks/waiting/logs/stream", headers=auth())
        events = sse_events(await answer.text())
        await deleting
        await client_.close()
        assert [name for name, _ in events].count("heartbeat") >= 3
        assert events[-1] == ("error", {"message": "task waiting was deleted"})

    scenario(test)


def test_the_dashboard_is_served_with_a_policy_that_keeps_it_to_itself() -> None:
    async def test(fake: FakeApi, cluster: Cluster, client: TestClient) -> None:
        root = await client.get("/", allow_redirects=False)
        assert (root.status, root.headers["Location"]) == (302, "/dashboard/")
        page = await client.get("/dashboard/")
        assert page.status == 200 and page.content_type == "text/html"
        assert "default-src 'self'" in page.headers["Content-Security-Policy"]
        assert 'src="/dashboard/app.js"' in await page.text()
        script = await client.get("/dashboard/app.js")
        assert script.content_type == "text/javascript" and "followLog" in await script.text()
        assert (await client.get("/dashboard/../server.py")).status == 404
        assert (await client.get("/dashboard/openapi.yaml")).status == 404

    scenario(test)


def test_the_dashboards_reads_list_every_task_its_events_and_the_agents() -> None:
    async def test(fake: FakeApi, cluster: Cluster, client: TestClient) -> None:
        cluster.add(task("old", "Succeeded", startTime="2026-01-01T11:00:00Z"))
        cluster.add(task("new", "Running", startTime="2026-01-01T11:30:00Z"))
        listed = await (await client.get("/v1/dashboard/tasks", headers=auth())).json()
        assert [t["taskId"] for t in listed["tasks"]] == ["new", "old"] and listed["namespace"] == NS

        async def events(request: web.Request) -> web.StreamResponse:
            assert request.query["fieldSelector"] == "involvedObject.kind=Task,involvedObject.uid=uid-old"
            later = {"reason": "Succeeded", "message": "done", "lastTimestamp": "2026-01-01T11:00:09Z"}
            earlier = {"reason": "Started", "message": "go", "lastTimestamp": "2026-01-01T11:00:01Z"}
            return web.json_response({"items": [later, earlier]})

        fake.route(f"/api/v1/namespaces/{NS}/events", events)
        shown = await (await client.get("/v1/tasks/old/events", headers=auth())).json()
        assert [e["reason"] for e in shown["events"]] == ["Started", "Succeeded"]

        async def agents(request: web.Request) -> web.StreamResponse:
            return web.json_response({"items": [{"metadata": {"name": "shell"}}]})

        async def cluster_agents(request: web.Request) -> web.StreamResponse:
            return web.json_response({"kind": "Status", "code": 403, "message": "forbidden"}, status=403)

        fake.route(f"/apis/taskyard.dev/v1alpha1/namespaces/{NS}/agents", agents)
        fake.route("/apis/taskyard.dev/v1alpha1/clusteragents", cluster_agents)
        found = await (await client.get("/v1/agents", headers=auth())).json()
        assert found == {"agents": [{"name": "shell", "kind": "Agent"}]}  # ClusterAgents: not allowed

    scenario(test)


# --- sharing between callers ---------------------------------------------------------------------------


def serve_running_pod(fake: FakeApi) -> None:
    """The Task "talker" has one pod, talker-abc, whose agent runs."""
    pod = {
        "metadata": {"name": "talker-abc", "creationTimestamp": "2026-01-01T11:59:10Z"},
        "status": {"containerStatuses": [{"name": "agent", "state": {"running": {}}}]},
    }

    async def pods(request: web.Request) -> web.StreamResponse:
        return web.json_response({"items": [pod]})

    fake.route(f"/api/v1/namespaces/{NS}/pods", pods)


def test_concurrent_status_reads_share_one_request_and_each_caller_is_authorized_once() -> None:
    async def test(fake: FakeApi, cluster: Cluster, client: TestClient) -> None:
        cluster.add(task("known", "Running", startTime="2026-01-01T11:59:30Z"))
        answers = await asyncio.gather(*(client.get("/v1/tasks/known", headers=auth()) for _ in range(20)))
        assert {answer.status for answer in answers} == {200}
        gets = [r for r in fake.requests if r[:2] == ("GET", f"{TASKS}/known")]
        assert len(gets) == 1
        assert [(a["verb"], a["resource"]) for a in cluster.access_reviews] == [("get", "tasks")]

        assert (await client.delete("/v1/tasks/known", headers=auth())).status == 200  # reads it fresh
        assert (await client.get("/v1/tasks/known", headers=auth())).status == 200  # not the old answer
        await asyncio.sleep(1.1)  # older than a shared read may be: read again; the caller is not asked
        assert (await client.get("/v1/tasks/known", headers=auth())).status == 200
        gets = [r for r in fake.requests if r[:2] == ("GET", f"{TASKS}/known")]
        assert len(gets) == 4
        assert len([a for a in cluster.access_reviews if a["verb"] == "get"]) == 1

    scenario(test)


def test_a_caller_rbac_refuses_gets_the_api_servers_own_answer_not_a_shared_one() -> None:
    async def test(fake: FakeApi, cluster: Cluster, client: TestClient) -> None:
        cluster.add(task("known", "Running"))
        assert (await client.get("/v1/tasks/known", headers=auth())).status == 200
        cluster.denied.add(("get", "tasks"))

        async def forbidden(request: web.Request) -> web.StreamResponse:
            message = 'tasks.taskyard.dev "known" is forbidden: User "robot" cannot get resource "tasks"'
            return web.json_response({"kind": "Status", "code": 403, "message": message}, status=403)

        fake.route(f"{TASKS}/known", forbidden)
        other = "Bearer another-token"
        cluster.authorized = lambda request: None  # type: ignore[method-assign]
        answer = await client.get("/v1/tasks/known", headers={"Authorization": other})
        assert answer.status == 403 and "cannot get resource" in (await answer.json())["error"]

    scenario(test)


def test_many_clients_of_one_tasks_log_share_one_follow_and_a_late_one_gets_it_all() -> None:
    async def test(fake: FakeApi, cluster: Cluster, client: TestClient) -> None:
        body = task("talker", "Running")
        cluster.add(body)
        follows = 0
        go_on = asyncio.Event()

        async def log(request: web.Request) -> web.StreamResponse:
            nonlocal follows
            follows += 1
            response = web.StreamResponse()
            await response.prepare(request)
            await response.write(b"2026-01-01T12:00:00Z first\n")
            await go_on.wait()
            await response.write(b"2026-01-01T12:00:01Z second\n")
            body["status"] = {"phase": "Succeeded", "exitCode": 0}
            return response

        serve_running_pod(fake)
        fake.route(f"/api/v1/namespaces/{NS}/pods/talker-abc/log", log)

        async def read_stream() -> list[tuple[str, dict[str, Any]]]:
            answer = await client.get("/v1/tasks/talker/logs/stream", headers=auth())
            return sse_events(await answer.text())

        early = [asyncio.create_task(read_stream()) for _ in range(10)]
        while follows == 0:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)
        late = asyncio.create_task(read_stream())
        await asyncio.sleep(0.2)
        go_on.set()
        streams = await asyncio.gather(*early, late)
        assert follows == 1
        for events in streams:
            assert [data["line"] for name, data in events if name == "message"] == ["first", "second"]
            assert events[-1][0] == "task-complete"

    scenario(test)


def test_a_caller_not_allowed_to_read_logs_does_not_share_the_follow() -> None:
    async def test(fake: FakeApi, cluster: Cluster, client: TestClient) -> None:
        cluster.add(task("talker", "Running"))
        cluster.denied.add(("get", "pods/log"))

        async def log(request: web.Request) -> web.StreamResponse:
            message = 'pods "talker-abc" is forbidden: User "robot" cannot get resource "pods/log"'
            return web.json_response({"kind": "Status", "code": 403, "message": message}, status=403)

        serve_running_pod(fake)
        fake.route(f"/api/v1/namespaces/{NS}/pods/talker-abc/log", log)
        answer = await client.get("/v1/tasks/talker/logs/stream", headers=auth())
        events = sse_events(await answer.text())
        assert events[-1][0] == "error" and "cannot get resource" in events[-1][1]["message"]

    scenario(test)


def test_a_client_too_slow_for_its_backlog_is_told_and_let_go() -> None:
    subscriber = sharing.Subscriber(kube=None, backlog_bytes=1000)  # type: ignore[arg-type]
    for number in range(5):
        subscriber.put((None, {"line": f"line {number}", "timestamp": 0}))
    subscriber.put((None, {"line": "x" * 2000, "timestamp": 0}))
    subscriber.put((None, {"line": "after", "timestamp": 0}))

    async def drain() -> list[tuple[str | None, dict[str, Any]]]:
        return [event async for event in subscriber.events()]

    events = run(drain())
    assert events == [("error", {"message": "this client reads the stream too slowly; reconnect"})]
    assert subscriber.budget.used == 0


def test_lines_held_for_clients_stay_within_the_shared_budget_and_are_given_back() -> None:
    async def scenario() -> None:
        budget = sharing.Budget(limit=10_000)
        feeds = []
        for n in range(3):
            feed = sharing.LogFeed(task(f"t{n}"), 1.0, lambda feed: None, history_bytes=4000, budget=budget)
            feed.runner = asyncio.get_running_loop().create_future()  # type: ignore[assignment]  # no follow
            feeds.append(feed)
        readers = [feed.join(None) for feed in feeds for _ in range(2)]  # type: ignore[arg-type]
        for feed in feeds:
            for _ in range(30):
                with contextlib.suppress(sharing._NoOneLeft):
                    feed.publish((None, {"line": "x" * 100, "timestamp": 0}))
                assert budget.used <= budget.limit
        # Histories are trimmed and backlogs refused to stay within it: some clients are let go.
        assert any(reader.ended for reader in readers)
        held = sum(feed.history_size for feed in feeds) + sum(reader.pending_bytes for reader in readers)
        assert held == budget.used  # every byte held is counted, once
        for feed in feeds:
            for reader in list(feed.subscribers):
                feed.leave(reader)
        for reader in readers:
            reader.release()
        assert budget.used == 0

    run(scenario())


def test_a_task_id_that_is_not_a_name_never_reaches_another_resource() -> None:
    async def test(fake: FakeApi, cluster: Cluster, client: TestClient) -> None:
        named = await client.get("/v1/tasks/..%2F..%2Fsecrets%2Fs", headers=auth())
        assert "not a Kubernetes object name" in (await named.json())["error"]
        for task_id in ("..%2F..%2Fsecrets%2Fs", "..", "a%2Fb", "Upper"):
            answer = await client.get(f"/v1/tasks/{task_id}", headers=auth())
            assert answer.status == 404, task_id
            assert "error" in await answer.json()  # ".." the client itself resolves: no route
            assert (await client.get(f"/v1/tasks/{task_id}/logs/stream", headers=auth())).status == 404
            assert (await client.delete(f"/v1/tasks/{task_id}", headers=auth())).status == 404
        assert not [path for _, path, _ in fake.requests if "secrets" in path or path.endswith("/tasks/..")]

    scenario(test)


def test_a_client_whose_rights_are_taken_away_is_let_go_from_the_shared_stream() -> None:
    async def test(fake: FakeApi, cluster: Cluster, client: TestClient) -> None:
        client_ = await api_client(fake, access_seconds=0.2, heartbeat_seconds=60)
        cluster.add(task("talker", "Running"))

        async def log(request: web.Request) -> web.StreamResponse:
            response = web.StreamResponse()
            await response.prepare(request)
            await response.write(b"2026-01-01T12:00:00Z before\n")
            await asyncio.sleep(30)
            return response

        serve_running_pod(fake)
        fake.route(f"/api/v1/namespaces/{NS}/pods/talker-abc/log", log)

        async def revoke() -> None:
            await asyncio.sleep(0.3)
            cluster.denied.add(("get", "pods/log"))

        revoking = asyncio.create_task(revoke())
        answer = await asyncio.wait_for(client_.get("/v1/tasks/talker/logs/stream", headers=auth()), 5)
        events = sse_events(await asyncio.wait_for(answer.text(), 5))
        await revoking
        await client_.close()
        assert events == [
            ("message", {"line": "before", "timestamp": 1767268800000}),
            ("error", {"message": "this token may no longer read the task's log"}),
        ]

    scenario(test)
