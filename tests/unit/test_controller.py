"""The control loop's decisions and failure paths, against a fake API server at the HTTP level:
quota errors, namesake objects, hung requests, unreadable logs, re-created Tasks, a stalled loop.
(The cluster tiers prove the same against the real API server; these make each path fast and exact.)"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from typing import Any

import kopf
import pytest
from aiohttp import web
from kubernetes_asyncio.client.rest import ApiException

from taskyard import metrics
from taskyard.api import LABEL_TASK
from taskyard.controller import Controller, InstrumentedApiClient, TaskKey
from taskyard.records import project_job, project_pod, project_task
from taskyard.settings import OperatorSettings
from tests.unit.fakeapi import FakeApi, run

pytestmark = pytest.mark.unit

NS = "ns"
TASKS = f"/apis/taskyard.dev/v1alpha1/namespaces/{NS}/tasks"
JOBS = f"/apis/batch/v1/namespaces/{NS}/jobs"
CONFIG_MAPS = f"/api/v1/namespaces/{NS}/configmaps"
SERVICE_ACCOUNTS = f"/api/v1/namespaces/{NS}/serviceaccounts"
NETWORK_POLICIES = f"/apis/networking.k8s.io/v1/namespaces/{NS}/networkpolicies"
SHELL = {"image": "shell:dev", "command": ["sh", "/etc/taskyard/prompt"]}


def task_body(
    name: str, uid: str | None = None, priority: str = "medium", status: dict | None = None
) -> dict:
    return {
        "metadata": {
            "name": name,
            "namespace": NS,
            "uid": uid or f"uid-{name}",
            "resourceVersion": "1",
            "creationTimestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        },
        "spec": {"agent": "shell", "prompt": "echo hi", "priority": priority},
        "status": status or {},
    }


def status_api(fake: FakeApi, patches: list[tuple[str, dict]]) -> None:
    """PATCH .../tasks/<name>/status: records the patch and answers like the API server."""
    version = 100

    def route(name: str) -> None:
        async def patch(request: web.Request) -> web.StreamResponse:
            nonlocal version
            body = json.loads(await request.read())
            patches.append((name, body["status"]))
            version += 1
            meta = {"name": name, "namespace": NS, "uid": f"uid-{name}", "resourceVersion": str(version)}
            return web.json_response({"metadata": meta, "status": body["status"]})

        fake.route(f"{TASKS}/{name}/status", patch)

    fake.status_route = route  # type: ignore[attr-defined]


def created(kind: str = "ConfigMap"):
    async def handler(request: web.Request) -> web.StreamResponse:
        body = json.loads(await request.read())
        body["metadata"]["uid"] = f"uid-{kind.lower()}"
        return web.json_response(body, status=201)

    return handler


def controller_for(fake: FakeApi, **settings: Any) -> Controller:
    api = InstrumentedApiClient(fake.client().configuration)
    controller = Controller(api=api, settings=OperatorSettings(metrics_port=0, **settings), namespaces=[NS])
    controller.agents.put((NS, "shell"), dict(SHELL))
    if SERVICE_ACCOUNTS not in fake.routes:
        fake.route(SERVICE_ACCOUNTS, created("ServiceAccount"))
    if NETWORK_POLICIES not in fake.routes:
        fake.route(NETWORK_POLICIES, created("NetworkPolicy"))
    return controller


def add_task(controller: Controller, body: dict) -> None:
    record = project_task(body)
    old = controller.tasks.put((NS, record.name), record, record.resource_version)
    controller._task_changed((NS, record.name), old, record)


def quota_refuses_jobs_of(fake: FakeApi, name: str) -> list[tuple[str, dict]]:
    """A ResourceQuota refuses the Task's Job; returns the status patches the Task gets."""
    patches: list[tuple[str, dict]] = []
    status_api(fake, patches)
    fake.status_route(name)
    fake.route(CONFIG_MAPS, created())

    async def refuse(request: web.Request) -> web.StreamResponse:
        message = f'jobs.batch "{name}" is forbidden: exceeded quota: q, requested: count/jobs.batch=1'
        return web.json_response({"kind": "Status", "code": 403, "message": message}, status=403)

    fake.route(JOBS, refuse)
    return patches


def test_a_quota_refusal_gives_the_slot_back_and_backs_off_on_its_own():
    async def scenario() -> None:
        async with FakeApi() as fake:
            patches = quota_refuses_jobs_of(fake, "blocked")
            controller = controller_for(fake, max_concurrent=1)
            add_task(controller, task_body("blocked", priority="critical"))
            add_task(controller, task_body("behind", priority="low"))

            [key] = controller.admit()
            assert key[1] == "blocked"
            assert "uid-blocked" not in controller.waiting  # a pass reads only Tasks that still wait
            with pytest.raises(Exception, match="403"):
                await controller.reconcile(key)
            assert "uid-blocked" not in controller.reserved  # the slot is free again
            [(name, patch)] = patches
            assert name == "blocked" and patch["reason"] == "JobCreateFailed"
            assert "exceeded quota" in patch["message"] and "trying again in 1s" in patch["message"]
            # The next pass admits the Task behind it; the refused one waits out its back-off, back in
            # line from its next reconcile on.
            assert [k[1] for k in controller.admit()] == ["behind"]
            await controller.reconcile(key)
            assert "uid-blocked" in controller.waiting
            assert controller.admit() == []
            await controller.api.close()

    run(scenario())


def test_a_refused_start_is_tried_again_when_its_back_off_ends_and_the_back_off_doubles():
    async def scenario() -> None:
        async with FakeApi() as fake:
            patches = quota_refuses_jobs_of(fake, "blocked")
            controller = controller_for(fake, max_concurrent=1, retry_base_seconds=0.2)
            add_task(controller, task_body("blocked"))
            for attempt, delay in enumerate(["0s", "0s", "1s"]):  # 0.2, 0.4, 0.8 s
                [key] = controller.admit()
                with pytest.raises(Exception, match="403"):
                    await controller.reconcile(key)
                assert patches[-1][1]["message"].endswith(f"trying again in {delay}")
                # The status write comes back as an event, which puts the Task back in line: that
                # alone must lead to an admission pass once the back-off is over (no reconcile of the
                # Task is needed, and that reconcile succeeding must not reset the back-off).
                controller.admission_needed.clear()
                add_task(
                    controller, task_body("blocked", status={"phase": "Queued", "reason": "JobCreateFailed"})
                )
                assert controller.admission_needed.is_set()
                await controller.reconcile(key)
                assert controller.admit() == []  # still backing off
                controller.admission_needed.clear()
                started = time.monotonic()
                await asyncio.wait_for(controller.admission_needed.wait(), timeout=3)
                assert time.monotonic() - started == pytest.approx(0.2 * 2**attempt, abs=0.15)
            assert controller.start_failures["uid-blocked"] == 3
            await controller.api.close()

    run(scenario())


@pytest.mark.parametrize(
    ("owners", "outcome"),
    [
        ([], "NameConflict"),
        (
            [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "x", "uid": "u1", "controller": True}],
            "NameConflict",
        ),
        (
            [{"apiVersion": "taskyard.dev/v1alpha1", "kind": "Task", "name": "clash", "uid": "old-uid"}],
            "namesake",
        ),
        (
            [{"apiVersion": "taskyard.dev/v1alpha1", "kind": "Task", "name": "clash", "uid": "uid-clash"}],
            "ours",
        ),
    ],
    ids=["unowned", "someone-elses", "deleted-namesake", "ours"],
)
def test_an_existing_job_is_used_only_when_the_task_owns_it(owners: list, outcome: str):
    async def scenario() -> None:
        async with FakeApi() as fake:
            patches: list[tuple[str, dict]] = []
            status_api(fake, patches)
            fake.status_route("clash")
            fake.route(CONFIG_MAPS, created())

            async def exists(request: web.Request) -> web.StreamResponse:
                return web.json_response(
                    {"kind": "Status", "code": 409, "reason": "AlreadyExists"}, status=409
                )

            async def read(request: web.Request) -> web.StreamResponse:
                assert request.method == "GET"  # never deleted, never patched
                meta = {"name": "clash", "namespace": NS, "uid": "job-uid", "ownerReferences": owners}
                return web.json_response({"apiVersion": "batch/v1", "kind": "Job", "metadata": meta})

            fake.route(JOBS, exists)
            fake.route(f"{JOBS}/clash", read)
            controller = controller_for(fake)
            add_task(controller, task_body("clash"))
            [key] = controller.admit()
            await controller.reconcile(key)
            reservation = controller.reserved.get("uid-clash")
            if outcome == "NameConflict":
                [(_, patch)] = patches
                assert (patch["phase"], patch["reason"]) == ("Failed", "NameConflict")
                assert "a Job named 'clash' already exists" in patch["message"]
                assert reservation is None
            elif outcome == "namesake":
                assert reservation is None and controller.blocked_until["uid-clash"] > time.monotonic()
                assert all(p.get("phase") != "Failed" for _, p in patches)
            else:
                assert reservation is not None and reservation.created
                assert patches == []  # the status follows once the watch shows the Job
                owner = {**owners[0], "controller": True}
                meta = {"name": "clash", "namespace": NS, "uid": "job-uid", "ownerReferences": [owner]}
                job = project_job({"metadata": meta, "spec": {}, "status": {}})
                controller.jobs.put((NS, "clash"), job, "2")
                await controller.reconcile(key)
                assert patches[-1][1]["jobName"] == "clash"
            methods = {(m, p) for m, p, _ in fake.requests}
            assert not any(m in ("DELETE", "PUT") for m, _ in methods)
            await controller.api.close()

    run(scenario())


def test_a_request_that_never_answers_times_out_and_frees_the_slot():
    async def scenario() -> None:
        async with FakeApi() as fake:
            patches: list[tuple[str, dict]] = []
            status_api(fake, patches)
            fake.status_route("stuck")
            fake.route(CONFIG_MAPS, created())

            async def hang(request: web.Request) -> web.StreamResponse:
                await asyncio.sleep(60)
                return web.json_response({})

            fake.route(JOBS, hang)
            controller = controller_for(fake)
            controller.api.default_timeout = 0.5  # type: ignore[attr-defined]
            add_task(controller, task_body("stuck"))
            [key] = controller.admit()
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                await controller.reconcile(key)
            assert time.monotonic() - started < 5
            assert "uid-stuck" not in controller.reserved
            assert patches[-1][1]["reason"] == "JobCreateFailed"
            await controller.api.close()

    run(scenario())


def test_one_hung_task_does_not_hold_up_the_others():
    async def scenario() -> None:
        async with FakeApi() as fake:
            patches: list[tuple[str, dict]] = []
            status_api(fake, patches)
            for name in ("slow", "quick"):
                fake.status_route(name)
            fake.route(CONFIG_MAPS, created())

            async def jobs(request: web.Request) -> web.StreamResponse:
                body = json.loads(await request.read())
                if body["metadata"]["name"] == "slow":
                    await asyncio.sleep(60)
                return web.json_response(body, status=201)

            fake.route(JOBS, jobs)
            controller = controller_for(fake, reconcile_deadline_seconds=3, workers=2)
            add_task(controller, task_body("slow", priority="critical"))
            add_task(controller, task_body("quick", priority="low"))
            controller.admit()
            workers = [asyncio.create_task(controller._worker()) for _ in range(2)]
            started = time.monotonic()
            while not (controller.reserved.get("uid-quick") and controller.reserved["uid-quick"].created):
                await asyncio.sleep(0.05)
                assert time.monotonic() - started < 2, "the quick Task waited for the slow one"
            for worker in workers:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            await controller.api.close()

    run(scenario())


def job_and_pod(task: str, exit_code: int = 0) -> tuple[dict, dict]:
    owner = {
        "apiVersion": "taskyard.dev/v1alpha1",
        "kind": "Task",
        "name": task,
        "uid": f"uid-{task}",
        "controller": True,
    }
    job = {
        "metadata": {"name": task, "namespace": NS, "uid": f"job-{task}", "ownerReferences": [owner]},
        "status": {
            "succeeded": 1,
            "startTime": "2026-12-01T10:00:01Z",
            "completionTime": "2026-12-01T10:00:09Z",
            "conditions": [{"type": "Complete", "status": "True"}],
        },
    }
    job_owner = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "name": task,
        "uid": f"job-{task}",
        "controller": True,
    }
    pod = {
        "metadata": {
            "name": f"{task}-abcde",
            "namespace": NS,
            "creationTimestamp": "2026-12-01T10:00:01Z",
            "ownerReferences": [job_owner],
        },
        "status": {
            "phase": "Succeeded",
            "containerStatuses": [{"name": "agent", "state": {"terminated": {"exitCode": exit_code}}}],
        },
    }
    return job, pod


@pytest.mark.parametrize("log", ["bad-bytes", "server-error", "hangs"])
def test_a_log_that_cannot_be_read_never_holds_up_the_final_status(log: str):
    async def scenario() -> None:
        async with FakeApi() as fake:
            patches: list[tuple[str, dict]] = []
            status_api(fake, patches)
            fake.status_route("done")
            fake.route(CONFIG_MAPS, created())
            fake.route(f"{CONFIG_MAPS}/done-logs", created())

            async def pod_log(request: web.Request) -> web.StreamResponse:
                if log == "server-error":
                    return web.json_response(
                        {"kind": "Status", "code": 500, "message": "kubelet"}, status=500
                    )
                response = web.StreamResponse()
                await response.prepare(request)
                await response.write(b"ok \xff\xfe\n")
                if log == "hangs":
                    await asyncio.sleep(60)
                return response

            fake.route(f"/api/v1/namespaces/{NS}/pods/done-abcde/log", pod_log)
            controller = controller_for(fake, log_read_seconds=0.5)
            job, pod = job_and_pod("done")
            controller.jobs.put((NS, "done"), project_job(job))
            controller.pods.put((NS, "done-abcde"), project_pod(pod))
            add_task(controller, task_body("done", status={"phase": "Running", "jobName": "done"}))
            started = time.monotonic()
            await controller.reconcile((NS, "done", "uid-done"))
            assert time.monotonic() - started < 5
            [(_, patch)] = patches
            assert patch["phase"] == "Succeeded"
            if log == "server-error":
                assert patch["logTail"].startswith("[taskyard: the log of pod done-abcde could not be read")
            elif log == "hangs":  # both reads are cut short: what came, and what the read of the end got
                assert patch["logTail"] == (
                    "ok \ufffd\ufffd\n[taskyard: the read of this log stopped after 0.5 s;"
                    " its last 200 lines follow]\nok \ufffd\ufffd"
                )
            else:
                assert patch["logTail"] == "ok \ufffd\ufffd"
            await controller.api.close()

    run(scenario())


def pods_listed(job: dict, *pods: dict):
    """Lists ``pods`` as the Job's, as the API server would."""

    async def handler(request: web.Request) -> web.StreamResponse:
        selector = f"batch.kubernetes.io/controller-uid={job['metadata']['uid']}"
        assert request.query["labelSelector"] == selector
        return web.json_response(
            {"kind": "PodList", "metadata": {"resourceVersion": "9"}, "items": list(pods)}
        )

    return handler


def reconcile_evicted(agent_state: dict, job_status: dict, log: web.Response) -> tuple[dict, list[str]]:
    """Reconciles a Task whose pod the kubelet evicted for its workspace; returns the status patch and
    the Job deletions."""

    async def scenario() -> tuple[dict, list[str]]:
        async with FakeApi() as fake:
            patches: list[tuple[str, dict]] = []
            deleted: list[str] = []
            status_api(fake, patches)
            fake.status_route("full")
            fake.route(CONFIG_MAPS, created())

            async def pod_log(request: web.Request) -> web.StreamResponse:
                return log

            async def delete_job(request: web.Request) -> web.StreamResponse:
                deleted.append(request.path)
                return web.json_response({"kind": "Status", "status": "Success"})

            fake.route(f"/api/v1/namespaces/{NS}/pods/full-abcde/log", pod_log)
            fake.route(f"{JOBS}/full", delete_job)
            controller = controller_for(fake)
            job, pod = job_and_pod("full")
            job["status"] = {**job_status, "startTime": "2026-12-01T10:00:01Z"}
            pod["status"] = {
                "phase": "Failed",
                "reason": "Evicted",
                "message": 'Usage of EmptyDir volume "workspace" exceeds the limit "1Mi". ',
                "containerStatuses": [{"name": "agent", "state": agent_state}],
            }
            controller.jobs.put((NS, "full"), project_job(job))
            controller.pods.put((NS, "full-abcde"), project_pod(pod))
            fake.route(f"/api/v1/namespaces/{NS}/pods", pods_listed(job, pod))
            add_task(controller, task_body("full", status={"phase": "Running", "jobName": "full"}))
            await controller.reconcile((NS, "full", "uid-full"))
            await controller.api.close()
            [(_, patch)] = patches
            return patch, deleted

    return run(scenario())


def test_an_evicted_pod_whose_log_the_kubelet_removed_says_so_in_the_status():
    gone = web.json_response({"kind": "Status", "code": 404, "message": "gone"}, status=404)
    patch, deleted = reconcile_evicted({"terminated": {"exitCode": 137}}, {"active": 0, "failed": 1}, gone)
    assert (patch["phase"], patch["reason"]) == ("Failed", "StorageLimitExceeded")
    assert patch["logTail"] == "[taskyard: the kubelet removed the log of pod full-abcde when it evicted it]"
    assert deleted == [f"{JOBS}/full"]


def test_an_evicted_pod_whose_agent_still_runs_has_its_log_read_before_the_task_is_final():
    # The kubelet can write Failed/Evicted while the agent container still shows as running; the Task
    # is final at once, and the log goes with the container, so it is read then, not after.
    printed = web.Response(body=b"8+0 records in\nfilled\n")
    patch, _ = reconcile_evicted({"running": {}}, {"active": 1}, printed)
    assert (patch["phase"], patch["reason"]) == ("Failed", "StorageLimitExceeded")
    assert patch["logTail"] == "8+0 records in\nfilled"


def test_a_recreated_namesake_is_never_confused_with_the_task_it_replaces():
    async def scenario() -> None:
        async with FakeApi() as fake:
            controller = controller_for(fake, max_concurrent=1)
            add_task(controller, task_body("same", uid="first"))
            [old_key] = controller.admit()
            assert old_key == (NS, "same", "first")
            # Deleted and created again under the same name before anything ran.
            add_task(controller, task_body("same", uid="second"))
            assert "first" not in controller.reserved and "first" not in controller.waiting
            await controller.reconcile(old_key)  # the old key does nothing at all
            assert fake.requests == []
            assert controller.admit() == [(NS, "same", "second")]
            await controller.api.close()

    run(scenario())


def test_liveness_fails_when_work_waits_and_nothing_is_processed():
    async def scenario() -> None:
        async with FakeApi() as fake:
            controller = controller_for(fake, stall_seconds=5)
            controller.synced = True
            assert controller.health()["queued"] == 0
            controller.queue.add((NS, "t", "u"))
            controller.health()  # waiting, but only just
            controller.last_progress -= 10
            with pytest.raises(kopf.PermanentError, match="none processed"):
                controller.health()
            await controller.api.close()

    run(scenario())


def test_a_finished_task_leaves_nothing_behind_in_memory():
    async def scenario() -> None:
        async with FakeApi() as fake:
            controller = controller_for(fake)
            add_task(controller, task_body("done", status={"phase": "Running", "jobName": "done"}))
            controller.logs_collected_from["uid-done"] = ("done-abcde", True)
            controller.blocked_until["uid-done"] = time.monotonic() + 60
            final = {"phase": "Succeeded", "jobName": "done", "completionTime": "2026-12-01T10:00:09Z"}
            add_task(controller, task_body("done", status=final))
            assert "uid-done" not in controller.logs_collected_from
            assert "uid-done" not in controller.blocked_until
            assert len(controller.queue) == 1  # the earlier event; the finished one queues nothing
            await controller.api.close()

    run(scenario())


def test_admitted_at_is_when_admission_decided_not_when_the_job_was_created():
    async def scenario() -> None:
        async with FakeApi() as fake:
            patches: list[tuple[str, dict]] = []
            status_api(fake, patches)
            fake.status_route("late")
            fake.route(CONFIG_MAPS, created())
            jobs: list[dict] = []

            async def create_job(request: web.Request) -> web.StreamResponse:
                body = json.loads(await request.read())
                jobs.append(body)
                body["metadata"]["uid"] = "uid-job"
                return web.json_response(body, status=201)

            fake.route(JOBS, create_job)
            controller = controller_for(fake)
            add_task(controller, task_body("late"))
            before = time.time()
            [key] = controller.admit()
            after = time.time()
            await asyncio.sleep(0.5)  # the worker reaches the Task later than the decision
            await controller.reconcile(key)
            [job] = jobs
            stamp = datetime.fromisoformat(job["metadata"]["annotations"]["taskyard.dev/admitted-at"])
            assert before <= stamp.timestamp() <= after
            await controller.api.close()

    run(scenario())


def test_tasks_admitted_in_one_pass_are_stamped_in_the_order_they_were_admitted():
    async def scenario() -> None:
        async with FakeApi() as fake:
            status_api(fake, [])
            fake.route(CONFIG_MAPS, created())
            jobs: list[dict] = []

            async def create_job(request: web.Request) -> web.StreamResponse:
                body = json.loads(await request.read())
                jobs.append(body)
                body["metadata"]["uid"] = f"uid-job-{len(jobs)}"
                return web.json_response(body, status=201)

            fake.route(JOBS, create_job)
            controller = controller_for(fake, max_concurrent=8)
            priorities = ["low", "medium", "high", "critical"] * 2
            for i, priority in enumerate(priorities):
                fake.status_route(f"t{i}")
                add_task(controller, task_body(f"t{i}", priority=priority))
            keys = controller.admit()  # one pass, eight decisions microseconds apart
            # Workers reach them in any order; the stamps still tell the order of the decisions.
            for key in reversed(keys):
                await controller.reconcile(key)
            stamps = {
                job["metadata"]["labels"]["taskyard.dev/task"]: datetime.fromisoformat(
                    job["metadata"]["annotations"]["taskyard.dev/admitted-at"]
                )
                for job in jobs
            }
            by_stamp = sorted(stamps, key=stamps.__getitem__)
            assert by_stamp == [key[1] for key in keys]
            assert len(set(stamps.values())) == len(keys)  # no two alike, so no order left to chance
            rank = ["critical", "high", "medium", "low"]
            assert [rank.index(priorities[int(n[1:])]) for n in by_stamp] == [0, 0, 1, 1, 2, 2, 3, 3]
            await controller.api.close()

    run(scenario())


def test_the_agents_result_record_is_in_the_status_and_its_usage_in_the_metrics():
    async def scenario() -> None:
        async with FakeApi() as fake:
            patches: list[tuple[str, dict]] = []
            status_api(fake, patches)
            fake.status_route("paid")
            fake.route(CONFIG_MAPS, created())

            async def pod_log(request: web.Request) -> web.StreamResponse:
                return web.Response(body=b"done\n")

            fake.route(f"/api/v1/namespaces/{NS}/pods/paid-abcde/log", pod_log)
            controller = controller_for(fake)
            job, pod = job_and_pod("paid")
            usage = {"inputTokens": 1500, "outputTokens": 300, "costUSD": 0.042, "turns": 3}
            record = {"taskyard": 1, "summary": "Fixed the bug.", "commit": "4b1f0c2d9e", "usage": usage}
            pod["status"]["containerStatuses"][0]["state"]["terminated"]["message"] = json.dumps(record)
            controller.jobs.put((NS, "paid"), project_job(job))
            controller.pods.put((NS, "paid-abcde"), project_pod(pod))
            add_task(controller, task_body("paid", status={"phase": "Running", "jobName": "paid"}))

            def sample(name: str, **labels: str) -> float:
                return (
                    metrics.REGISTRY.get_sample_value(name, {"agent": "shell", "namespace": NS, **labels})
                    or 0
                )

            tokens_before = sample("taskyard_task_tokens_total", direction="input")
            cost_before = sample("taskyard_task_cost_usd_total")
            await controller.reconcile((NS, "paid", "uid-paid"))
            [(_, patch)] = patches
            assert patch["phase"] == "Succeeded"
            assert patch["result"] == {"summary": "Fixed the bug.", "commit": "4b1f0c2d9e", "usage": usage}
            assert sample("taskyard_task_tokens_total", direction="input") - tokens_before == 1500
            assert sample("taskyard_task_cost_usd_total") - cost_before == pytest.approx(0.042)
            await controller.api.close()

    run(scenario())


def test_an_expired_reservation_keeps_its_turn():
    async def scenario() -> None:
        async with FakeApi() as fake:
            controller = controller_for(fake, max_concurrent=1)
            add_task(controller, task_body("first", priority="critical"))
            add_task(controller, task_body("second", priority="low"))
            [key] = controller.admit()
            assert key[1] == "first" and "uid-first" not in controller.waiting
            controller.reserved["uid-first"].at -= 200  # its Job never showed up in the watch
            # The slot is given back and taken again by the Task whose turn it is, not the one behind.
            assert [k[1] for k in controller.admit()] == ["first"]
            assert "uid-second" in controller.waiting and "uid-second" not in controller.reserved
            await controller.api.close()

    run(scenario())


def job_read(answer: str):
    """What the API server answers when asked for Job "gone", which the operator created."""
    answers = 0

    async def handler(request: web.Request) -> web.StreamResponse:
        nonlocal answers
        answers += 1
        if answer == "gone":
            return web.json_response({"kind": "Status", "code": 404, "message": "not found"}, status=404)
        if answer == "there-after-an-error" and answers == 1:
            return web.json_response({"kind": "Status", "code": 500, "message": "etcd"}, status=500)
        owner = {"apiVersion": "taskyard.dev/v1alpha1", "kind": "Task", "name": "gone", "controller": True}
        owner["uid"] = "uid-an-earlier-gone" if answer == "a-namesakes" else "uid-gone"
        meta: dict[str, Any] = {"name": "gone", "namespace": NS, "uid": "job-gone"}
        meta["ownerReferences"] = [owner]
        if answer != "unlabelled":
            meta["labels"] = {LABEL_TASK: "gone"}
        if answer == "being-deleted":
            meta["deletionTimestamp"] = "2026-12-01T10:00:00Z"
        return web.json_response({"apiVersion": "batch/v1", "kind": "Job", "metadata": meta})

    return handler


async def job_created_and_unseen(
    fake: FakeApi, answer: str, patches: list[tuple[str, dict]], **settings: Any
) -> tuple[Controller, TaskKey]:
    """Task "gone" (and, behind it, a low-priority one) admitted and its Job created, then 200 s in
    which the watch never shows the Job; ``answer`` is what a read of the Job finds then."""
    status_api(fake, patches)
    fake.status_route("gone")
    fake.route(CONFIG_MAPS, created())
    fake.route(JOBS, created("Job"))
    fake.route(f"{JOBS}/gone", job_read(answer))
    controller = controller_for(fake, **settings)
    add_task(controller, task_body("gone"))
    add_task(controller, task_body("behind", priority="low"))
    [key, *_] = controller.admit()
    await controller.reconcile(key)  # the Job is created; its status waits for the watch
    assert patches == []
    controller.reserved["uid-gone"].at -= 200
    return controller, key


@pytest.mark.parametrize("answer", ["gone", "being-deleted", "a-namesakes", "unlabelled"])
def test_a_job_that_vanishes_before_the_watch_shows_it_fails_the_task_and_is_never_made_twice(answer: str):
    async def scenario() -> None:
        async with FakeApi() as fake:
            patches: list[tuple[str, dict]] = []
            controller, key = await job_created_and_unseen(fake, answer, patches, max_concurrent=1)
            assert controller.admit() == []
            await controller.reconcile(key)
            [(_, patch)] = patches  # decided on the API server's answer, not on the cache's silence
            assert (patch["phase"], patch["reason"]) == ("Failed", "JobDeleted")
            assert "the Job gone was deleted outside taskyard" in patch["message"]
            assert [(m, p) for m, p, _ in fake.requests if p.startswith(JOBS)] == [
                ("POST", JOBS),
                ("GET", f"{JOBS}/gone"),
            ]
            await controller.api.close()

    run(scenario())


def test_a_watch_gap_longer_than_the_wait_for_a_new_job_fails_nothing_and_keeps_the_slot():
    async def scenario() -> None:
        async with FakeApi() as fake:
            patches: list[tuple[str, dict]] = []
            controller, key = await job_created_and_unseen(
                fake, "there-after-an-error", patches, max_concurrent=1
            )
            assert controller.admit() == []  # the slot stays with the Job that may exist
            assert key in controller.queue._dirty
            controller.queue.discard(key)  # a worker takes it
            with pytest.raises(ApiException):
                await controller.reconcile(key)  # the read fails: nothing is decided
            assert controller.admit() == [] and key not in controller.queue._dirty  # the worker retries
            await controller.reconcile(key)  # (after its back-off)
            assert patches == []  # nothing decided while the cache is behind the API server
            assert controller.admit() == [] and "uid-gone" in controller.reserved
            assert key in controller.queue._timers  # asked again later, whatever the watch does
            await controller.reconcile(key)  # within the wait again: no second read, the Job is on its way
            reads = [p for m, p, _ in fake.requests if m == "GET" and p == f"{JOBS}/gone"]
            assert len(reads) == 2
            assert [(p["phase"], p["reason"]) for _, p in patches] == [("Running", "Starting")]
            # The watch catches up: the Task goes on from what the Job says.
            job, pod = job_and_pod("gone")
            controller.jobs.put((NS, "gone"), project_job(job))
            controller.pods.put((NS, "gone-abcde"), project_pod(pod))
            await controller.reconcile(key)
            assert [p["phase"] for _, p in patches] == ["Running", "Succeeded"]
            assert [(m, p) for m, p, _ in fake.requests if p == JOBS] == [("POST", JOBS)]
            await controller.api.close()

    run(scenario())


def test_a_finished_job_whose_pod_the_watch_never_showed_still_gives_the_task_its_exit_code_and_log():
    async def scenario() -> None:
        async with FakeApi() as fake:
            patches: list[tuple[str, dict]] = []
            status_api(fake, patches)
            fake.status_route("done")
            fake.route(f"{CONFIG_MAPS}/done-logs", created())
            job, pod = job_and_pod("done", exit_code=0)
            fake.route(f"/api/v1/namespaces/{NS}/pods", pods_listed(job, pod))

            async def pod_log(request: web.Request) -> web.StreamResponse:
                return web.Response(body=b"working\ndone\n")

            fake.route(f"/api/v1/namespaces/{NS}/pods/done-abcde/log", pod_log)
            controller = controller_for(fake)
            controller.jobs.put((NS, "done"), project_job(job))  # and no pod: the pods watch had a gap
            add_task(controller, task_body("done", status={"phase": "Running", "jobName": "done"}))
            await controller.reconcile((NS, "done", "uid-done"))
            [(_, patch)] = patches
            assert (patch["phase"], patch["exitCode"], patch["podName"]) == ("Succeeded", 0, "done-abcde")
            assert patch["logTail"] == "working\ndone"
            await controller.api.close()

    run(scenario())


def test_an_attempt_whose_log_the_kubelet_serves_empty_says_why_there_may_be_no_output():
    async def scenario() -> None:
        async with FakeApi() as fake:
            patches: list[tuple[str, dict]] = []
            status_api(fake, patches)
            fake.status_route("quiet")
            fake.route(f"{CONFIG_MAPS}/quiet-logs", created())

            async def empty_log(request: web.Request) -> web.StreamResponse:
                return web.Response(body=b"")

            fake.route(f"/api/v1/namespaces/{NS}/pods/quiet-abcde/log", empty_log)
            controller = controller_for(fake)
            job, pod = job_and_pod("quiet")
            controller.jobs.put((NS, "quiet"), project_job(job))
            controller.pods.put((NS, "quiet-abcde"), project_pod(pod))
            add_task(controller, task_body("quiet", status={"phase": "Running", "jobName": "quiet"}))
            await controller.reconcile((NS, "quiet", "uid-quiet"))
            [(_, patch)] = patches
            assert patch["phase"] == "Succeeded"
            assert patch["logTail"].startswith(
                "[taskyard: the kubelet served an empty log for pod quiet-abcde"
            )
            assert "containerLogMaxSize" in patch["logTail"]
            await controller.api.close()

    run(scenario())


@pytest.mark.parametrize("on_the_server", ["none", "running", "pulling-for-ever"])
def test_a_job_is_stopped_for_a_start_that_failed_only_on_what_the_api_server_says(on_the_server: str):
    """The cache shows the Job but no pod (its watch had a gap) past the start-up deadline: whether the
    agent never started is decided on the pods the API server lists, not on the cache."""

    async def scenario() -> None:
        async with FakeApi() as fake:
            patches: list[tuple[str, dict]] = []
            status_api(fake, patches)
            fake.status_route("slow")
            job, pod = job_and_pod("slow")
            job["metadata"]["creationTimestamp"] = "2026-12-01T10:00:00Z"  # long past the deadline
            job["status"] = {"active": 1, "startTime": "2026-12-01T10:00:00Z"}
            agent = pod["status"]["containerStatuses"][0]
            pod["status"]["phase"] = "Running" if on_the_server == "running" else "Pending"
            if on_the_server == "running":
                agent["state"] = {"running": {"startedAt": "2026-12-01T10:00:05Z"}}
            else:
                agent["state"] = {"waiting": {"reason": "ErrImageNeverPull", "message": "never pulled"}}
            fake.route(
                f"/api/v1/namespaces/{NS}/pods", pods_listed(job, *([pod] if on_the_server != "none" else []))
            )
            deleted: list[str] = []

            async def delete(request: web.Request) -> web.StreamResponse:
                deleted.append(request.path)
                return web.json_response({"kind": "Status", "status": "Success"})

            fake.route(f"{JOBS}/slow", delete)
            controller = controller_for(fake)
            controller.jobs.put((NS, "slow"), project_job(job))
            add_task(controller, task_body("slow", status={"phase": "Running", "jobName": "slow"}))
            await controller.reconcile((NS, "slow", "uid-slow"))
            [(_, patch)] = patches
            if on_the_server == "running":
                assert "phase" not in patch and patch["reason"] == "Running"  # Running it stays
                assert patch["podName"] == "slow-abcde" and deleted == []
            else:
                expected = "NoPodCreated" if on_the_server == "none" else "ImagePullFailed"
                assert (patch["phase"], patch["reason"]) == ("Failed", expected)
                assert deleted == [f"{JOBS}/slow"]
            await controller.api.close()

    run(scenario())


@pytest.mark.parametrize("answer", [201, 409], ids=["created", "already-there"])
def test_agents_without_a_service_account_get_a_tokenless_one_made_once_per_namespace(answer: int):
    async def scenario() -> None:
        async with FakeApi() as fake:
            patches: list[tuple[str, dict]] = []
            status_api(fake, patches)
            fake.route(CONFIG_MAPS, created())
            jobs: list[dict] = []

            async def job(request: web.Request) -> web.StreamResponse:
                jobs.append(json.loads(await request.read()))
                return web.json_response(jobs[-1], status=201)

            fake.route(JOBS, job)
            accounts: list[dict] = []

            async def account(request: web.Request) -> web.StreamResponse:
                accounts.append(json.loads(await request.read()))
                if answer == 409:
                    return web.json_response({"kind": "Status", "code": 409}, status=409)
                return web.json_response(accounts[-1], status=201)

            fake.route(SERVICE_ACCOUNTS, account)
            controller = controller_for(fake)
            for name in ("one", "two"):
                fake.status_route(name)
                add_task(controller, task_body(name))
            for key in controller.admit():
                await controller.reconcile(key)
            assert len(accounts) == 1
            assert accounts[0]["metadata"]["name"] == "taskyard-agent"
            assert accounts[0]["automountServiceAccountToken"] is False
            assert [job["spec"]["template"]["spec"]["serviceAccountName"] for job in jobs] == [
                "taskyard-agent"
            ] * 2
            await controller.api.close()

    run(scenario())


def test_a_task_may_not_replace_what_its_agent_sets_unless_the_agent_lets_it():
    async def scenario() -> None:
        async with FakeApi() as fake:
            patches: list[tuple[str, dict]] = []
            status_api(fake, patches)
            fake.route(CONFIG_MAPS, created())
            fake.route(JOBS, created("Job"))
            controller = controller_for(fake)
            agent = {
                **SHELL,
                "env": [{"name": "BASE_URL", "value": "https://proxy"}, {"name": "LEVEL", "value": "1"}],
            }
            controller.agents.put((NS, "shell"), {**agent, "overridableEnv": ["LEVEL"]})
            for name, env in (("redirect", "BASE_URL"), ("tune", "LEVEL")):
                fake.status_route(name)
                body = task_body(name)
                body["spec"]["env"] = [{"name": env, "value": "x"}]
                add_task(controller, body)
            for key in controller.admit():
                await controller.reconcile(key)
            [(name, patch)] = patches
            assert name == "redirect" and (patch["phase"], patch["reason"]) == ("Failed", "InvalidSpec")
            assert "spec.env sets BASE_URL, which Agent/ns/shell sets itself" in patch["message"]
            assert "uid-tune" in controller.reserved and controller.reserved["uid-tune"].created
            await controller.api.close()

    run(scenario())


def test_the_egress_policy_is_read_before_every_job_and_made_again_when_it_is_gone():
    async def scenario() -> None:
        async with FakeApi() as fake:
            patches: list[tuple[str, dict]] = []
            status_api(fake, patches)
            fake.route(CONFIG_MAPS, created())
            calls: list[str] = []
            stored: dict[str, dict] = {}

            async def job(request: web.Request) -> web.StreamResponse:
                calls.append("create Job")
                return web.json_response(json.loads(await request.read()), status=201)

            async def create_policy(request: web.Request) -> web.StreamResponse:
                body = json.loads(await request.read())
                calls.append("create NetworkPolicy")
                stored[body["metadata"]["name"]] = body
                return web.json_response(body, status=201)

            async def read_policy(request: web.Request) -> web.StreamResponse:
                calls.append("read NetworkPolicy")
                if "taskyard-agents" not in stored:
                    return web.json_response({"kind": "Status", "code": 404}, status=404)
                return web.json_response(stored["taskyard-agents"])

            fake.route(JOBS, job)
            fake.route(NETWORK_POLICIES, create_policy)
            fake.route(f"{NETWORK_POLICIES}/taskyard-agents", read_policy)
            controller = controller_for(fake)
            for name in ("one", "two"):
                fake.status_route(name)
                add_task(controller, task_body(name))
            for key in controller.admit():
                await controller.reconcile(key)
            assert calls == [
                "read NetworkPolicy", "create NetworkPolicy", "create Job",
                "read NetworkPolicy", "create Job",
            ]  # fmt: skip
            policy = stored["taskyard-agents"]
            assert policy["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "taskyard"
            assert policy["metadata"]["annotations"]["taskyard.dev/spec-digest"]
            assert policy["spec"]["policyTypes"] == ["Egress"]
            denied = policy["spec"]["egress"][-1]["to"][0]["ipBlock"]
            assert denied["cidr"] == "0.0.0.0/0" and "10.0.0.0/8" in denied["except"]

            # Deleted (or its namespace made anew): the next Job does not start without it.
            stored.clear()
            calls.clear()
            fake.status_route("three")
            add_task(controller, task_body("three"))
            for key in controller.admit():
                await controller.reconcile(key)
            assert calls == ["read NetworkPolicy", "create NetworkPolicy", "create Job"]
            await controller.api.close()

    run(scenario())


def test_an_egress_policy_the_api_server_refuses_fails_the_task_without_a_job():
    async def scenario() -> None:
        async with FakeApi() as fake:
            patches: list[tuple[str, dict]] = []
            status_api(fake, patches)
            fake.status_route("t")
            fake.route(CONFIG_MAPS, created())
            jobs: list[dict] = []

            async def job(request: web.Request) -> web.StreamResponse:
                jobs.append(json.loads(await request.read()))
                return web.json_response(jobs[-1], status=201)

            async def refuse(request: web.Request) -> web.StreamResponse:
                message = 'NetworkPolicy.networking.k8s.io "taskyard-agent-shell" is invalid: spec.egress[0]'
                return web.json_response({"kind": "Status", "code": 422, "message": message}, status=422)

            fake.route(JOBS, job)
            fake.route(NETWORK_POLICIES, refuse)
            controller = controller_for(fake)
            controller.agents.put((NS, "shell"), {**SHELL, "egress": [{"ports": [{"port": 443}]}]})
            add_task(controller, task_body("t"))
            for key in controller.admit():
                await controller.reconcile(key)
            [(_, patch)] = patches
            assert (patch["phase"], patch["reason"]) == ("Failed", "EgressPolicyRejected")
            assert "taskyard-agent-shell" in patch["message"] and "spec.egress[0]" in patch["message"]
            assert jobs == []
            await controller.api.close()

    run(scenario())


@pytest.mark.parametrize("owner", ["taskyard", "an administrator"])
def test_an_outdated_egress_policy_of_ours_is_replaced_and_an_administrators_is_left_alone(owner):
    async def scenario() -> None:
        async with FakeApi() as fake:
            patches: list[tuple[str, dict]] = []
            status_api(fake, patches)
            fake.status_route("t")
            fake.route(CONFIG_MAPS, created())
            fake.route(JOBS, created("Job"))
            replaced: list[dict] = []
            labels = {"app.kubernetes.io/managed-by": "taskyard"} if owner == "taskyard" else {}

            async def existing(request: web.Request) -> web.StreamResponse:
                if request.method == "PUT":
                    replaced.append(json.loads(await request.read()))
                    return web.json_response(replaced[-1])
                metadata = {
                    "name": "taskyard-agents",
                    "namespace": NS,
                    "resourceVersion": "7",
                    "labels": labels,
                    "annotations": {"taskyard.dev/spec-digest": "from-an-older-version"},
                }
                return web.json_response({"metadata": metadata, "spec": {"podSelector": {}}})

            fake.route(f"{NETWORK_POLICIES}/taskyard-agents", existing)
            controller = controller_for(fake)
            add_task(controller, task_body("t"))
            for key in controller.admit():
                await controller.reconcile(key)
            assert controller.reserved["uid-t"].created
            if owner == "taskyard":
                [policy] = replaced
                assert policy["metadata"]["resourceVersion"] == "7"
                assert policy["spec"]["egress"]
            else:
                assert replaced == []
            await controller.api.close()

    run(scenario())
