"""The work queue's guarantees: coalescing, never two workers on one key, one timer per key,
per-key back-off."""

from __future__ import annotations

import asyncio

import pytest

from taskyard.workqueue import WorkQueue
from tests.unit.fakeapi import run

pytestmark = pytest.mark.unit


def test_adds_coalesce_while_waiting():
    async def scenario() -> None:
        queue: WorkQueue[str] = WorkQueue()
        for key in ("a", "b", "a", "a", "b"):
            queue.add(key)
        assert len(queue) == 2
        assert [await queue.get(), await queue.get()] == ["a", "b"]

    run(scenario())


def test_a_key_added_while_processing_waits_for_done():
    async def scenario() -> None:
        queue: WorkQueue[str] = WorkQueue()
        queue.add("a")
        key = await queue.get()
        queue.add("a")  # an event arrives while a worker holds the key
        assert len(queue) == 0  # nobody else may take it now
        second = asyncio.create_task(queue.get())
        await asyncio.sleep(0.01)
        assert not second.done()
        queue.done(key)
        assert await asyncio.wait_for(second, 1) == "a"

    run(scenario())


def test_delayed_adds_keep_one_timer_per_key():
    async def scenario() -> None:
        queue: WorkQueue[str] = WorkQueue()
        for _ in range(50):
            queue.add_after("a", 0.05)
        queue.add_after("a", 10)  # a later one never replaces the earlier
        await asyncio.sleep(0.1)
        assert len(queue) == 1
        assert await queue.get() == "a"
        queue.done("a")
        await asyncio.sleep(0.1)
        assert len(queue) == 0

    run(scenario())


def test_back_off_doubles_per_key_and_resets_on_forget():
    async def scenario() -> None:
        queue: WorkQueue[str] = WorkQueue(base_delay=1, max_delay=5)
        assert [queue.add_rate_limited("a") for _ in range(5)] == [1, 2, 4, 5, 5]
        assert queue.add_rate_limited("b") == 1  # another key has its own count
        queue.forget("a")
        assert queue.next_delay("a") == 1
        queue.shutdown()

    run(scenario())


def test_discard_drops_queued_entry_and_timer():
    async def scenario() -> None:
        queue: WorkQueue[str] = WorkQueue()
        queue.add("a")
        queue.add_after("b", 0.05)
        queue.discard("a")
        queue.discard("b")
        await asyncio.sleep(0.1)
        assert len(queue) == 0

    run(scenario())
