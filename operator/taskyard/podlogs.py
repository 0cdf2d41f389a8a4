"""Reading an agent's output from the kubelet: as bytes, bounded in memory and in time.

Agents print whatever their tools print: binary diffs, progress bars, 50 MB lines. So the log is read
as a byte stream into a ring that keeps only its last ``keep_bytes`` (never the whole log), decoded once
with replacement characters, and cut short when the read takes longer than ``deadline`` seconds
(the end of a log says why it ended, so the latest bytes are the ones worth waiting for, but not for ever).
Nothing is parsed: a log that is one JSON document stays the text the agent wrote.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import aiohttp
from kubernetes_asyncio import client
from kubernetes_asyncio.client.rest import ApiException

from taskyard.informer import open_stream
from taskyard.metrics import LOG_FOLLOWS_OPEN

logger = logging.getLogger("taskyard")

KEEP_BYTES = 256 * 1024
END_LINES = 200  # read on their own when a log's read is cut short, so the status still shows its end
FOLLOW_LIMIT = 64  # log follows at once; the API client's connection pool has room for them

# The kubelet starts a log response (status 200) before it asks the runtime for the container, so when
# the container is already gone (a deleted pod's containers are removed the moment they exit) its error
# arrives as the whole body of a successful response. These are its words for "there is no log".
_KUBELET_NO_LOG = re.compile(
    rb"(unable to retrieve container logs for \S+"
    rb'|failed to try resolving symlinks in path "[^"\n]*": [^\n]*'
    rb'|failed to open log file "[^"\n]*": [^\n]*)'
)


class LogUnavailable(Exception):
    """The kubelet has no log to give: the container never started, or it (or its pod) is gone."""


@dataclass(frozen=True)
class CollectedLog:
    """The end of a log, and how much of it was left out."""

    text: str
    total_bytes: int  # bytes read from the kubelet
    dropped_bytes: int  # of those, how many were not kept (the head)
    complete: bool  # False when the read was cut short by its deadline


class ByteRing:
    """The last ``capacity`` bytes written to it, in O(capacity) memory whatever is written."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._buffer = bytearray()
        self.total = 0

    def write(self, chunk: bytes) -> None:
        self.total += len(chunk)
        if len(chunk) >= self.capacity:
            self._buffer = bytearray(chunk[-self.capacity :])
            return
        self._buffer.extend(chunk)
        excess = len(self._buffer) - self.capacity
        if excess > 0:
            del self._buffer[:excess]

    def getvalue(self) -> bytes:
        return bytes(self._buffer)


def decode_log(raw: bytes, dropped: int) -> str:
    """The kept bytes as text: invalid UTF-8 becomes U+FFFD, and a cut head starts on a whole line
    behind a marker saying how much went."""
    if dropped:
        newline = raw.find(b"\n")
        if 0 <= newline < len(raw) - 1:
            dropped += newline + 1
            raw = raw[newline + 1 :]
        return f"[taskyard: {dropped} bytes dropped from the start]\n" + raw.decode(errors="replace")
    return raw.decode(errors="replace")


def is_kubelet_error(raw: bytes) -> bool:
    """Whether a log body is the kubelet saying it has no log, rather than anything the agent wrote
    (agents' lines end in a newline; the kubelet's error does not)."""
    return len(raw) < 4096 and _KUBELET_NO_LOG.fullmatch(raw) is not None


async def read_log_tail(
    api: client.ApiClient,
    namespace: str,
    pod: str,
    container: str,
    keep_bytes: int = KEEP_BYTES,
    deadline: float = 20.0,
    tail_lines: int | None = 20000,
    follow: bool = False,
) -> CollectedLog:
    """The end of one container's log; with ``follow``, everything it writes until it exits (or the
    deadline passes). Raises LogUnavailable when the kubelet has no log to give (404, 400 for a
    container that never started, or its error in place of a log), ApiException on other error
    statuses, and aiohttp or OS errors on a connection failure."""
    query: list[tuple[str, Any]] = [("container", container)]
    if tail_lines:
        query.append(("tailLines", tail_lines))
    if follow:
        query.append(("follow", "true"))
    path = f"/api/v1/namespaces/{namespace}/pods/{pod}/log"
    ring = ByteRing(keep_bytes)
    complete = True
    timeout = aiohttp.ClientTimeout(total=deadline + 5, sock_connect=10, sock_read=deadline)
    try:
        response = await open_stream(api, path, query, timeout)
    except ApiException as error:
        if error.status in (400, 404):
            raise LogUnavailable(f"{error.status}: {(error.body or error.reason or '').strip()}") from error
        raise
    if follow:
        LOG_FOLLOWS_OPEN.inc()
    try:
        async with asyncio.timeout(deadline):
            async for chunk in response.content.iter_chunked(64 * 1024):
                ring.write(chunk)
    except TimeoutError:
        complete = False
    finally:
        response.close()  # not release(): an unread rest must not go back to the connection pool
        if follow:
            LOG_FOLLOWS_OPEN.dec()
    raw = ring.getvalue()
    if ring.total == len(raw) and is_kubelet_error(raw):
        raise LogUnavailable(raw.decode(errors="replace"))
    dropped = ring.total - len(raw)
    return CollectedLog(decode_log(raw, dropped), ring.total, dropped, complete)


async def read_log_to_its_end(
    api: client.ApiClient,
    namespace: str,
    pod: str,
    container: str,
    deadline: float,
    keep_bytes: int = KEEP_BYTES,
) -> CollectedLog:
    """The end of one container's log, as :func:`read_log_tail` reads it. When that read is cut short
    by its deadline (a kubelet that sends slowly on a busy node), what came so far ends somewhere in
    the middle, yet the status's tail is taken from the end of the text: so the log's last
    ``END_LINES`` lines, a small read, are read on their own and follow it behind a marker."""
    log = await read_log_tail(api, namespace, pod, container, keep_bytes, deadline=deadline)
    if log.complete:
        return log
    logger.warning(
        "reading the log of pod %s/%s was cut short after %g s (%d bytes); reading its last %d lines",
        namespace, pod, deadline, log.total_bytes, END_LINES,
    )  # fmt: skip
    cut = "" if log.text.endswith("\n") or not log.text else "\n"  # the marker starts a line of its own
    stopped = f"{cut}[taskyard: the read of this log stopped after {deadline:g} s"
    try:
        end = await read_log_tail(
            api, namespace, pod, container, keep_bytes // 4, deadline=deadline, tail_lines=END_LINES
        )
    except (LogUnavailable, ApiException, aiohttp.ClientError, OSError, TimeoutError) as error:
        logger.warning("reading the end of the log of pod %s/%s failed: %r", namespace, pod, error)
        return replace(log, text=f"{log.text}{stopped}; its end could not be read]")
    text = f"{log.text}{stopped}; its last {END_LINES} lines follow]\n{end.text}"
    return replace(log, text=text, complete=end.complete)


@dataclass(frozen=True)
class FollowedLog:
    """What a follow of one pod's log brought back; ``log`` is None when there was nothing to read."""

    pod: str
    attempt: int
    log: CollectedLog | None


class LogFollowers:
    """Streams the logs of pods that are shutting down, each until its agent exits.

    A pod being deleted (a cancel, a timeout) gives its agent a grace period to wrap up, and what it
    prints then is often the most useful part. But the kubelet removes a deleted pod's containers, logs
    included, the moment they exit, so a read after the exit races that removal (and mostly loses it).
    A stream opened while the agent still runs ends when it exits and has every byte. Followers run
    beside the workers, one per Task, at most ``limit`` at once (each holds a connection and up to
    ``keep_bytes``); a pod past that limit is read once, as any other. ``on_done`` gets the Task's uid
    when a follow has ended, and ``take`` then hands over what it brought back.
    """

    def __init__(
        self,
        api: client.ApiClient,
        on_done: Callable[[str], None],
        limit: int = FOLLOW_LIMIT,
        keep_bytes: int = KEEP_BYTES,
    ) -> None:
        self.api = api
        self.on_done = on_done
        self.limit = limit
        self.keep_bytes = keep_bytes
        self._running: dict[str, tuple[str, asyncio.Task[None]]] = {}  # Task uid -> (pod, follow)
        self._done: dict[str, FollowedLog] = {}
        self._followed: dict[str, str] = {}  # Task uid -> the pod last followed: each is followed once

    def __len__(self) -> int:
        return len(self._running)

    def start(self, uid: str, namespace: str, pod: str, attempt: int, deadline: float) -> bool:
        """Follows the pod's log unless this Task already has a follow; False when none runs for it."""
        running = self._running.get(uid)
        if running is not None:
            return running[0] == pod
        if len(self._running) >= self.limit or self._followed.get(uid) == pod:
            return False
        follow = asyncio.create_task(self._follow(uid, namespace, pod, attempt, deadline))
        self._running[uid] = (pod, follow)
        self._followed[uid] = pod
        return True

    def following(self, uid: str, pod: str | None = None) -> bool:
        """Whether a follow runs for this Task (for that pod, when one is named)."""
        running = self._running.get(uid)
        return running is not None and (pod is None or running[0] == pod)

    def result(self, uid: str) -> FollowedLog | None:
        """What this Task's last follow brought back, until :meth:`release`."""
        return self._done.get(uid)

    def release(self, uid: str, followed: FollowedLog) -> None:
        """Forgets a follow's result once it has been used (a newer one is kept)."""
        if self._done.get(uid) is followed:
            del self._done[uid]

    def forget(self, uid: str) -> None:
        running = self._running.pop(uid, None)
        if running is not None:
            running[1].cancel()
        self._done.pop(uid, None)
        self._followed.pop(uid, None)

    async def stop(self) -> None:
        follows = [follow for _, follow in self._running.values()]
        self._running.clear()
        for follow in follows:
            follow.cancel()
        for follow in follows:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await follow

    async def _follow(self, uid: str, namespace: str, pod: str, attempt: int, deadline: float) -> None:
        log: CollectedLog | None = None
        try:
            log = await read_log_tail(
                self.api, namespace, pod, "agent", self.keep_bytes, deadline=deadline, follow=True
            )
        except LogUnavailable:
            pass
        except Exception as error:  # the pod is read once more, as any other
            logger.warning("following the log of pod %s/%s failed: %r", namespace, pod, error)
        if self._running.get(uid, ("", None))[1] is not asyncio.current_task():
            return  # forgotten meanwhile
        del self._running[uid]
        self._done[uid] = FollowedLog(pod, attempt, log)
        self.on_done(uid)
