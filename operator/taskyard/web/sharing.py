"""What the task API shares between callers, so that many clients do not multiply the load on the API
server: reads of Tasks for a second, and one follow of a Task's log, fanned out to every client
streaming it.

Sharing never widens what a caller may see. Each caller's rights are asked of the API server as that
caller (SelfSubjectAccessReview) and remembered for a short while; a caller it does not allow gets
no shared answer but makes the call itself, so the API server's own refusal reaches them as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from taskyard.cli import agent_started, kept_logs_of_task, sorted_pods
from taskyard.logstore import log_config_map_name
from taskyard.stats import FINAL_PHASES, parse_time, phase_of
from taskyard.web import seed
from taskyard.web.kube import KubeError, UserKube

log = logging.getLogger("taskyard.api")

ACCESS_SECONDS = 30.0  # how long a caller's "allowed" is trusted (revoked rights take this long to bite)
ACCESS_ENTRIES = 8192
READ_SECONDS = 1.0  # how old a shared read may be
READ_ENTRIES = 8192
HISTORY_BYTES = 4 * 1024 * 1024  # of a followed log, replayed to clients that join late
BACKLOG_BYTES = 8 * 1024 * 1024  # unsent to one client before it is given up as too slow
# Log lines held for clients in all (histories and backlogs): well inside the chart's 256 MiB limit.
BUDGET_BYTES = 64 * 1024 * 1024
REFUSED = (401, 403)

Event = tuple[str | None, dict[str, Any]]


def token_key(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class AccessReviews:
    """Whether a caller may do something in a namespace, asked as the caller and remembered for
    ACCESS_SECONDS when the answer is yes (a no is asked again each time)."""

    def __init__(self, seconds: float = ACCESS_SECONDS, entries: int = ACCESS_ENTRIES) -> None:
        self.seconds = seconds
        self.entries = entries
        self.allowed: OrderedDict[tuple[str, ...], float] = OrderedDict()
        self.asking: dict[tuple[str, ...], asyncio.Future[bool]] = {}

    async def allows(self, kube: UserKube, verb: str, resource: str, subresource: str = "") -> bool:
        key = (token_key(kube.token), kube.namespace, verb, resource, subresource)
        if self.allowed.get(key, 0.0) > time.monotonic():
            return True
        asking = self.asking.get(key)
        if asking is None:  # one review at a time per caller and question, however many requests wait
            asking = self.asking[key] = asyncio.ensure_future(kube.may(verb, resource, subresource))
            asking.add_done_callback(_retrieved)
            asking.add_done_callback(lambda _: self.asking.pop(key, None))
        if not await asyncio.shield(asking):
            self.allowed.pop(key, None)
            return False
        self.allowed[key] = time.monotonic() + self.seconds
        self.allowed.move_to_end(key)
        while len(self.allowed) > self.entries:
            self.allowed.popitem(last=False)
        return True

    async def allows_all(self, kube: UserKube, *rights: tuple[str, str, str]) -> bool:
        for verb, resource, subresource in rights:
            if not await self.allows(kube, verb, resource, subresource):
                return False
        return True


class SharedReads:
    """Reads of the API server shared by every caller allowed to make them, for `seconds`: concurrent
    callers wait on one request, later ones take its answer (or its error) until it is that old."""

    def __init__(self, seconds: float = READ_SECONDS, entries: int = READ_ENTRIES) -> None:
        self.seconds = seconds
        self.entries = entries
        self.answers: OrderedDict[tuple[str, ...], tuple[float, asyncio.Future[Any]]] = OrderedDict()

    async def read(self, key: tuple[str, ...], fetch: Callable[[], Awaitable[Any]]) -> Any:
        now = time.monotonic()
        known = self.answers.get(key)
        if known is None or known[0] <= now:
            answer = asyncio.ensure_future(fetch())
            answer.add_done_callback(_retrieved)
            self.answers[key] = (now + self.seconds, answer)
            self.answers.move_to_end(key)
            # Oldest first, and all kept equally long: what is expired is at the front.
            while self.answers and (
                len(self.answers) > self.entries or next(iter(self.answers.values()))[0] <= now
            ):
                self.answers.popitem(last=False)
            known = self.answers[key]
        return await asyncio.shield(known[1])

    def forget(self, key: tuple[str, ...]) -> None:
        self.answers.pop(key, None)


def _retrieved(answer: asyncio.Future[Any]) -> None:
    if not answer.cancelled():
        answer.exception()  # an error is handed to the waiting callers; asyncio must not log it as lost


class TaskReads:
    """Task reads for the status endpoints: shared between callers RBAC allows to make them."""

    def __init__(self, access: AccessReviews, reads: SharedReads) -> None:
        self.access = access
        self.reads = reads

    async def task(self, kube: UserKube, name: str) -> dict[str, Any]:
        return await self._read(kube, "get", ("get", kube.namespace, name), lambda: kube.get_task(name))

    async def tasks(self, kube: UserKube) -> list[dict[str, Any]]:
        return await self._read(kube, "list", ("list", kube.namespace), kube.list_tasks)

    def changed(self, namespace: str, name: str) -> None:
        """This server changed the Task: what was read of it, and of its namespace's list, is old."""
        self.reads.forget(("get", namespace, name))
        self.reads.forget(("list", namespace))

    async def _read(
        self, kube: UserKube, verb: str, key: tuple[str, ...], fetch: Callable[[], Awaitable[Any]]
    ) -> Any:
        if not await self.access.allows(kube, verb, "tasks"):
            return await fetch()  # the API server's own refusal (or answer)
        try:
            return await self.reads.read(key, fetch)
        except KubeError as error:
            if error.status not in REFUSED:
                raise
            # The token that made the shared read was refused (expired, its rights revoked since its
            # review): that is its own answer, not this caller's.
            self.reads.forget(key)
            return await fetch()


# --- one follow of a Task's log, fanned out -------------------------------------------------------------

# What a client needs to be allowed, besides reading the Task, to share a Task's log follow: the same
# as following it on its own (list its pods, read their logs, read the logs the operator kept).
LOG_RIGHTS = (("list", "pods", ""), ("get", "pods", "log"), ("get", "configmaps", ""))


class _NoOneLeft(Exception):
    """Every client of a feed has gone (too slow, all of them): the follow stops."""


class Budget:
    """Bytes of log lines held for clients, across every feed: the histories and the backlogs."""

    def __init__(self, limit: int = BUDGET_BYTES) -> None:
        self.limit = limit
        self.used = 0

    def take(self, size: int) -> bool:
        if self.used + size > self.limit:
            return False
        self.used += size
        return True

    def give(self, size: int) -> None:
        self.used -= size


class Subscriber:
    """One client of a feed: the events it has yet to be sent, up to BACKLOG_BYTES of its own and
    within the shared budget."""

    def __init__(self, kube: UserKube, budget: Budget | None = None, backlog_bytes: int = BACKLOG_BYTES):
        self.kube = kube
        self.budget = budget or Budget()
        self.backlog_bytes = backlog_bytes
        self.pending: deque[Event] = deque()
        self.pending_bytes = 0
        self.ready = asyncio.Event()
        self.ended = False

    def put(self, event: Event) -> None:
        if self.ended:
            return
        if event[0] is not None:  # a control event (complete, error): small, and always delivered
            self.pending.append(event)
            self.ready.set()
            return
        size = _size(event)
        if self.pending_bytes + size > self.backlog_bytes or not self.budget.take(size):
            self.release()
            self.pending.append(("error", {"message": "this client reads the stream too slowly; reconnect"}))
            self.end()
            return
        self.pending.append(event)
        self.pending_bytes += size
        self.ready.set()

    def end(self) -> None:
        self.ended = True
        self.ready.set()

    def release(self) -> None:
        """Drops what was not sent (the client is gone, or is let go) and gives its bytes back."""
        self.pending.clear()
        self.budget.give(self.pending_bytes)
        self.pending_bytes = 0

    async def events(self) -> AsyncIterator[Event]:
        while True:
            while self.pending:
                event = self.pending.popleft()
                if event[0] is None:
                    size = _size(event)
                    self.pending_bytes -= size
                    self.budget.give(size)
                yield event
            if self.ended:
                return
            self.ready.clear()
            await self.ready.wait()


def _size(event: Event) -> int:
    line = event[1].get("line")
    return 64 + (len(line) if isinstance(line, str) else 0)


class LogFeed:
    """One Task's log followed once, with the token of one of its clients (the longest connected), and
    sent to all of them. A client that joins late is first sent what was followed so far (the last
    HISTORY_BYTES of it). Ends with `task-complete` once the Task is final, or with an `error`."""

    def __init__(
        self,
        task: dict[str, Any],
        poll: float,
        on_end: Callable[[LogFeed], None],
        access: AccessReviews | None = None,
        history_bytes: int = HISTORY_BYTES,
        budget: Budget | None = None,
    ) -> None:
        self.budget = budget or Budget()
        self.name = task["metadata"]["name"]
        self.uid = task["metadata"]["uid"]
        self.poll = poll
        self.on_end = on_end
        self.history_bytes = history_bytes
        self.history: deque[Event] = deque()
        self.history_size = 0
        self.left_out = 0  # lines no longer in the history
        self.subscribers: list[Subscriber] = []
        self.finished_pods: set[str] = set()
        self.lines_of: dict[str, int] = {}  # pod -> lines sent, to resume after a change of token
        self.runner: asyncio.Task[None] | None = None
        self.access = access
        self.guard: asyncio.Task[None] | None = None

    def join(self, kube: UserKube) -> Subscriber:
        subscriber = Subscriber(kube, self.budget)
        if self.left_out:
            subscriber.put(
                (None, {"line": f"[taskyard: the first {self.left_out} lines are left out]", "timestamp": 0})
            )
        for event in self.history:
            subscriber.put(event)
        self.subscribers.append(subscriber)
        if self.runner is None:
            self.runner = asyncio.create_task(self._run())
            if self.access is not None:
                self.guard = asyncio.create_task(self._guard(self.access))
        return subscriber

    def leave(self, subscriber: Subscriber) -> None:
        with contextlib.suppress(ValueError):
            self.subscribers.remove(subscriber)
        subscriber.end()
        if not self.subscribers:
            self._stop()

    def publish(self, event: Event) -> None:
        for subscriber in list(self.subscribers):
            subscriber.put(event)
            if subscriber.ended:
                self.subscribers.remove(subscriber)
        if not self.subscribers:
            self._stop()
            raise _NoOneLeft
        if event[0] is None:
            size = _size(event)
            while self.history and (
                self.history_size + size > self.history_bytes or not self.budget.take(size)
            ):
                dropped = _size(self.history.popleft())
                self.history_size -= dropped
                self.budget.give(dropped)
                self.left_out += 1
            if self.history_size + size <= self.history_bytes and (self.history or self.budget.take(size)):
                self.history.append(event)
                self.history_size += size
            else:
                self.left_out += 1

    def _stop(self) -> None:
        self.history.clear()
        self.budget.give(self.history_size)
        self.history_size = 0
        for task in (self.runner, self.guard):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
        self.on_end(self)

    async def _guard(self, access: AccessReviews) -> None:
        """Asks again, as often as an answer is trusted, whether each client may still read the Task
        and its logs: one whose token expired or whose rights were taken away is told and let go, as
        its own follow would have been refused."""
        while self.subscribers:
            await asyncio.sleep(access.seconds)
            for subscriber in list(self.subscribers):
                try:
                    allowed = await access.allows_all(subscriber.kube, ("get", "tasks", ""), *LOG_RIGHTS)
                    message = "this token may no longer read the task's log"
                except KubeError as error:
                    allowed, message = False, error.message
                if not allowed and subscriber in self.subscribers:
                    subscriber.put(("error", {"message": message}))
                    self.leave(subscriber)

    def _end_all(self, event: Event) -> None:
        for subscriber in self.subscribers:
            subscriber.put(event)
            subscriber.end()
        self.subscribers.clear()
        self._stop()

    async def _run(self) -> None:
        try:
            while self.subscribers:
                holder = self.subscribers[0]
                try:
                    await self._follow(holder.kube)
                    return
                except KubeError as error:
                    if error.status not in REFUSED or not [s for s in self.subscribers if s is not holder]:
                        raise
                    # This client's token no longer works (expired, revoked): it is told, and the others
                    # go on with the next one's.
                    holder.put(("error", {"message": error.message}))
                    self.leave(holder)
        except _NoOneLeft:
            pass  # publish has stopped the feed
        except KubeError as error:
            self._end_all(("error", {"message": error.message}))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("following the log of task %s failed", self.name)
            self._end_all(("error", {"message": "internal error: the server's log has the details"}))

    async def _follow(self, kube: UserKube) -> None:
        """Each attempt's log lines as they come, oldest attempt first, then `task-complete` once the
        Task is final. A Task whose pods are gone is told from the logs the operator kept."""
        while True:
            pods = [
                pod
                for pod in sorted_pods(await kube.pods_of(self.name))
                if pod["metadata"]["name"] not in self.finished_pods and agent_started(pod)
            ]
            if pods:
                await self._follow_pod(kube, pods[0]["metadata"]["name"])
                continue
            try:
                task = await kube.get_task(self.name)
            except KubeError as error:
                if error.status == 404:
                    raise KubeError(404, f"task {self.name} was deleted") from None
                raise
            if task["metadata"]["uid"] != self.uid:
                raise KubeError(404, f"task {self.name} was deleted (a new Task of that name exists)")
            if phase_of(task) in FINAL_PHASES:
                if not self.finished_pods:
                    await self._publish_kept_logs(kube, task)
                self._end_all(("task-complete", seed.completion_event(task, datetime.now(UTC))))
                return
            await asyncio.sleep(self.poll)

    async def _follow_pod(self, kube: UserKube, pod: str) -> None:
        skip = self.lines_of.get(pod, 0)
        try:
            async with contextlib.aclosing(kube.log_lines(pod)) as lines:
                async for raw in lines:
                    if skip:
                        skip -= 1
                        continue
                    text, stamp = seed.log_line(raw)
                    self.lines_of[pod] = self.lines_of.get(pod, 0) + 1
                    self.publish((None, {"line": text, "timestamp": stamp or seed.millis(datetime.now(UTC))}))
        except KubeError as error:
            if error.status not in (400, 404):  # 400/404: the pod or its container is gone already
                raise
        self.finished_pods.add(pod)

    async def _publish_kept_logs(self, kube: UserKube, task: dict[str, Any]) -> None:
        config_map = await kube.config_map(log_config_map_name(self.name))
        kept = kept_logs_of_task(config_map, task)
        finished = seed.millis(parse_time((task.get("status") or {}).get("completionTime"))) or 0
        for attempt in sorted(kept):
            for line in kept[attempt].text.splitlines():
                self.publish((None, {"line": line, "timestamp": finished}))


class LogFeeds:
    """The feeds being followed, one per Task (namespace, name, uid)."""

    def __init__(self, access: AccessReviews, poll: float, budget: Budget | None = None) -> None:
        self.access = access
        self.poll = poll
        self.budget = budget or Budget()
        self.feeds: dict[tuple[str, str, str], LogFeed] = {}

    async def subscribe(self, kube: UserKube, task: dict[str, Any]) -> tuple[LogFeed, Subscriber]:
        """Joins the Task's feed (starting it when none runs). A caller RBAC does not allow to follow
        the log gets a feed of its own, so that the API server answers them as it would anyway."""
        key = (kube.namespace, task["metadata"]["name"], task["metadata"]["uid"])
        if not await self.access.allows_all(kube, *LOG_RIGHTS):
            # Its own, as before any sharing: nothing to replay to anyone, so no history is kept.
            feed = LogFeed(task, self.poll, lambda feed: None, history_bytes=0, budget=self.budget)
            return feed, feed.join(kube)
        feed = self.feeds.get(key)
        if feed is None:
            feed = self.feeds[key] = LogFeed(
                task, self.poll, lambda ended: self._ended(key, ended), access=self.access, budget=self.budget
            )
        return feed, feed.join(kube)

    def _ended(self, key: tuple[str, str, str], feed: LogFeed) -> None:
        if self.feeds.get(key) is feed:
            del self.feeds[key]
