"""The informer against a fake API server: complete lists before sync, re-lists that report what
vanished, watches that resume, stall detection, and the indexed store."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import web

from taskyard.informer import Informer, ResourceType, Store
from tests.unit.fakeapi import FakeApi, obj, run, stream_lines

pytestmark = pytest.mark.unit

PODS = ResourceType("", "v1", "pods", label_selector="taskyard.dev/task")
PATH = "/api/v1/namespaces/ns/pods"


def recorder() -> tuple[list[tuple[str, Any, Any]], Any]:
    changes: list[tuple[str, Any, Any]] = []

    def on_change(key: Any, old: Any, new: Any) -> None:
        changes.append((key[1], old and old["rv"], new and new["rv"]))

    return changes, on_change


def project(body: dict[str, Any]) -> dict[str, Any]:
    return {"rv": body["metadata"]["resourceVersion"], "note": body.get("note")}


def test_store_indexes_follow_every_change():
    store: Store[dict[str, Any]] = Store({"colour": lambda r: [r["colour"]] if r["colour"] else []})
    store.put(("ns", "a"), {"colour": "red"})
    store.put(("ns", "b"), {"colour": "red"})
    store.put(("ns", "c"), {"colour": None})
    assert len(store.by_index("colour", "red")) == 2
    store.put(("ns", "a"), {"colour": "blue"})
    assert store.by_index("colour", "red") == [{"colour": "red"}]
    assert store.by_index("colour", "blue") == [{"colour": "blue"}]
    store.delete(("ns", "b"))
    assert store.by_index("colour", "red") == []
    assert sorted(store.index_values("colour")) == ["blue"]
    assert store.delete(("ns", "missing")) is None


def test_index_values_that_name_one_object_and_several_answer_alike():
    store: Store[dict[str, Any]] = Store({"owner": lambda r: [r["owner"]]})
    store.put(("ns", "a"), {"owner": "u1"})
    store.put(("ns", "a"), {"owner": "u1"})  # the same object again: still one
    assert store.by_index("owner", "u1") == [{"owner": "u1"}]
    store.put(("ns", "b"), {"owner": "u1", "n": 2})
    store.put(("ns", "c"), {"owner": "u1", "n": 3})
    assert len(store.by_index("owner", "u1")) == 3
    store.delete(("ns", "a"))
    store.put(("ns", "b"), {"owner": "u2"})
    assert store.by_index("owner", "u1") == [{"owner": "u1", "n": 3}]
    assert store.by_index("owner", "u2") == [{"owner": "u2"}]
    store.delete(("ns", "c"))
    store.delete(("ns", "b"))
    assert store.index_values("owner") == [] and store.by_index("owner", "u1") == []


def test_synced_only_after_every_page_of_the_list():
    async def scenario() -> None:
        second_page = asyncio.Event()

        async def pods(request: web.Request) -> web.StreamResponse:
            if request.query.get("watch"):
                return await stream_lines(request, [], hold=5)
            assert request.query["labelSelector"] == "taskyard.dev/task"
            if request.query.get("continue") == "page-2":
                await second_page.wait()
                return web.json_response({"metadata": {"resourceVersion": "20"}, "items": [obj("b", "12")]})
            return web.json_response(
                {"metadata": {"resourceVersion": "20", "continue": "page-2"}, "items": [obj("a", "11")]}
            )

        async with FakeApi() as fake:
            fake.route(PATH, pods)
            api = fake.client()
            changes, on_change = recorder()
            informer = Informer(api, PODS, Store(), project, on_change, namespace="ns", page_size=1)
            running = asyncio.create_task(informer.run())
            await asyncio.sleep(0.3)
            assert not informer.synced.is_set()  # half a list is not a picture to act on
            second_page.set()
            await asyncio.wait_for(informer.synced.wait(), 5)
            assert sorted(informer.store.keys()) == [("ns", "a"), ("ns", "b")]
            assert sorted(changes) == [("a", None, "11"), ("b", None, "12")]
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)
            await api.close()

    run(scenario())


def test_watch_events_update_the_store_and_a_410_relist_reports_what_vanished():
    async def scenario() -> None:
        lists = 0
        watches: list[str] = []

        async def pods(request: web.Request) -> web.StreamResponse:
            nonlocal lists
            if request.query.get("watch"):
                watches.append(request.query["resourceVersion"])
                if len(watches) == 1:
                    events = [
                        {"type": "ADDED", "object": obj("c", "31")},
                        {"type": "MODIFIED", "object": obj("a", "32", note="changed")},
                        {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "33"}}},
                    ]
                    return await stream_lines(request, events)  # the server ends the watch
                if len(watches) == 2:
                    # Too old: events were compacted away while the watch was down.
                    return await stream_lines(
                        request, [{"type": "ERROR", "object": {"code": 410, "message": "gone"}}]
                    )
                return await stream_lines(request, [], hold=5)
            lists += 1
            if lists == 1:
                return web.json_response(
                    {"metadata": {"resourceVersion": "30"}, "items": [obj("a", "1"), obj("b", "2")]}
                )
            # b and c were deleted during the gap; a changed.
            return web.json_response({"metadata": {"resourceVersion": "40"}, "items": [obj("a", "39")]})

        async with FakeApi() as fake:
            fake.route(PATH, pods)
            api = fake.client()
            changes, on_change = recorder()
            informer = Informer(api, PODS, Store(), project, on_change, namespace="ns")
            running = asyncio.create_task(informer.run())
            for _ in range(100):
                if informer.lists == 2 and len(watches) >= 3:
                    break
                await asyncio.sleep(0.05)
            assert watches == ["30", "33", "40"]  # resumed from the bookmark, then from the new list
            assert informer.store.keys() == [("ns", "a")]
            assert informer.store.get(("ns", "a")) == {"rv": "39", "note": None}
            assert ("b", "2", None) in changes and ("c", "31", None) in changes
            assert ("a", "32", "39") in changes
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)
            await api.close()

    run(scenario())


def test_a_stalled_watch_is_abandoned_and_resumed():
    async def scenario() -> None:
        watches, lists, resumed_from = 0, 0, []

        async def pods(request: web.Request) -> web.StreamResponse:
            nonlocal watches, lists
            if request.query.get("watch"):
                watches += 1
                resumed_from.append(request.query["resourceVersion"])
                if watches == 1:
                    # Bytes stop, the socket stays open: a half-open connection after a fail-over.
                    return await stream_lines(request, [], hold=60)
                return await stream_lines(request, [{"type": "ADDED", "object": obj("late", "5")}], hold=60)
            lists += 1
            return web.json_response({"metadata": {"resourceVersion": "4"}, "items": []})

        async with FakeApi() as fake:
            fake.route(PATH, pods)
            api = fake.client()
            _, on_change = recorder()
            informer = Informer(api, PODS, Store(), project, on_change, namespace="ns", read_timeout=0.5)
            running = asyncio.create_task(informer.run())
            for _ in range(100):
                if informer.store.get(("ns", "late")):
                    break
                await asyncio.sleep(0.05)
            assert informer.store.get(("ns", "late")) == {"rv": "5", "note": None}
            # A quiet or stalled watch is dropped and resumed where it was: no new list, no back-off.
            assert watches == 2 and lists == 1 and resumed_from == ["4", "4"]
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)
            await api.close()

    run(scenario())


def test_list_errors_back_off_and_retry_without_syncing_early():
    async def scenario() -> None:
        attempts = 0

        async def pods(request: web.Request) -> web.StreamResponse:
            nonlocal attempts
            if request.query.get("watch"):
                return await stream_lines(request, [], hold=5)
            attempts += 1
            if attempts < 3:
                return web.json_response({"kind": "Status", "code": 500, "message": "etcd"}, status=500)
            return web.json_response({"metadata": {"resourceVersion": "9"}, "items": [obj("a", "8")]})

        async with FakeApi() as fake:
            fake.route(PATH, pods)
            api = fake.client()
            _, on_change = recorder()
            informer = Informer(api, PODS, Store(), project, on_change, namespace="ns")
            running = asyncio.create_task(informer.run())
            await asyncio.sleep(0.2)
            assert not informer.synced.is_set()
            await asyncio.wait_for(informer.synced.wait(), 10)
            assert attempts == 3 and informer.store.keys() == [("ns", "a")]
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)
            await api.close()

    run(scenario())
