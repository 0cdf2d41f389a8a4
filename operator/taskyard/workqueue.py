"""A work queue with controller-runtime's guarantees, for asyncio.

- A key is never handed to two workers at once: a key added while it is being processed is queued
  again only when its worker is done (so the worker after it sees everything that happened).
- A key waiting in the queue is there once, however often it is added (events coalesce).
- Delayed adds keep one timer per key (the earliest); retries therefore never multiply.
- Per-key exponential back-off (``add_rate_limited``), reset by ``forget`` after a success.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class WorkQueue(Generic[K]):
    def __init__(self, base_delay: float = 1.0, max_delay: float = 300.0) -> None:
        self.base_delay, self.max_delay = base_delay, max_delay
        self._queue: deque[K] = deque()
        self._dirty: set[K] = set()
        self._processing: set[K] = set()
        self._timers: dict[K, tuple[float, asyncio.TimerHandle]] = {}
        self._failures: dict[K, int] = {}
        self._nonempty = asyncio.Event()
        self.shut_down = False

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def processing(self) -> int:
        return len(self._processing)

    def add(self, key: K) -> None:
        if self.shut_down or key in self._dirty:
            return
        self._dirty.add(key)
        if key not in self._processing:
            self._queue.append(key)
            self._nonempty.set()

    def add_after(self, key: K, delay: float) -> None:
        """Adds ``key`` after ``delay`` seconds; an earlier pending add for the key wins."""
        if delay <= 0:
            self.add(key)
            return
        due = time.monotonic() + delay
        pending = self._timers.get(key)
        if pending is not None:
            if pending[0] <= due:
                return
            pending[1].cancel()
        handle = asyncio.get_running_loop().call_later(delay, self._fire, key)
        self._timers[key] = (due, handle)

    def next_delay(self, key: K) -> float:
        """The delay :meth:`add_rate_limited` would wait for this key now."""
        return min(self.base_delay * 2 ** self._failures.get(key, 0), self.max_delay)

    def add_rate_limited(self, key: K) -> float:
        """Adds ``key`` after its next back-off delay (doubling per failure); returns the delay."""
        delay = self.next_delay(key)
        self._failures[key] = self._failures.get(key, 0) + 1
        self.add_after(key, delay)
        return delay

    def failures(self, key: K) -> int:
        return self._failures.get(key, 0)

    def forget(self, key: K) -> None:
        """Resets the key's back-off (after it was processed successfully)."""
        self._failures.pop(key, None)

    def discard(self, key: K) -> None:
        """Drops every trace of a key whose object is gone: pending timer, back-off, queued entry."""
        self._failures.pop(key, None)
        pending = self._timers.pop(key, None)
        if pending is not None:
            pending[1].cancel()
        if key in self._dirty and key not in self._processing:
            self._dirty.discard(key)
            self._queue.remove(key)

    def _fire(self, key: K) -> None:
        self._timers.pop(key, None)
        self.add(key)

    async def get(self) -> K:
        """The next key to process; the caller must call :meth:`done` with it."""
        while not self._queue:
            self._nonempty.clear()
            await self._nonempty.wait()
        key = self._queue.popleft()
        self._dirty.discard(key)
        self._processing.add(key)
        return key

    def done(self, key: K) -> None:
        self._processing.discard(key)
        if key in self._dirty:
            self._queue.append(key)
            self._nonempty.set()

    def shutdown(self) -> None:
        self.shut_down = True
        for _, handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
