"""Reading an agent's output from the kubelet: as bytes, bounded in memory and in time.

Agents print whatever their tools print: binary diffs, progress bars, 50 MB lines. So the log is read
as a byte stream into a ring that keeps only its last ``keep_bytes`` (never the whole log), decoded once
with replacement characters, and cut short when the read takes longer than ``deadline`` seconds
(the end of a log says why it ended, so the latest bytes are the ones worth waiting for, but not for ever).
Nothing is parsed: a log that is one JSON document stays the text the agent wrote.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import aiohttp
from kubernetes_asyncio import client

from taskyard.informer import open_stream

KEEP_BYTES = 256 * 1024


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


async def read_log_tail(
    api: client.ApiClient,
    namespace: str,
    pod: str,
    container: str,
    keep_bytes: int = KEEP_BYTES,
    deadline: float = 20.0,
    tail_lines: int | None = 20000,
) -> CollectedLog:
    """The end of one container's log. Raises ApiException when the kubelet has no log to give
    (404, or 400 for a container that never started) or on a connection failure."""
    query: list[tuple[str, Any]] = [("container", container)]
    if tail_lines:
        query.append(("tailLines", tail_lines))
    path = f"/api/v1/namespaces/{namespace}/pods/{pod}/log"
    ring = ByteRing(keep_bytes)
    complete = True
    timeout = aiohttp.ClientTimeout(total=deadline + 5, sock_connect=10, sock_read=deadline)
    response = await open_stream(api, path, query, timeout)
    try:
        async with asyncio.timeout(deadline):
            async for chunk in response.content.iter_chunked(64 * 1024):
                ring.write(chunk)
    except TimeoutError:
        complete = False
    finally:
        response.close()  # not release(): an unread rest must not go back to the connection pool
    raw = ring.getvalue()
    dropped = ring.total - len(raw)
    return CollectedLog(decode_log(raw, dropped), ring.total, dropped, complete)
