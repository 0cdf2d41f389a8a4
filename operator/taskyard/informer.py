"""The operator's cache: a list-and-watch reflector per resource feeding an indexed store.

Modelled on client-go's informers rather than on kopf's indexes, for three reasons the operator cannot
live without (docs/architecture.md has the measurements):

- **A complete picture before any work.** :attr:`Informer.synced` is set only after a full list has been
  stored (client-go's ``HasSynced``); the controller admits nothing before every informer is synced.
- **Gaps repair themselves.** A watch that ends with 410 Gone (or any error the watch cannot resume from)
  is followed by a fresh list that *replaces* the store, and every object that vanished meanwhile is
  reported as deleted. kopf re-lists too, but never tells its handlers which objects are gone.
- **Small and linear.** Each object is reduced to a small record by the resource's ``project`` function
  before it is stored (client-go's transform), so a finished Task costs a few hundred bytes, not its
  prompt and log tail; a list is one paged request per 500 objects with no per-object worker.

Every request is bounded in time: lists by a total timeout per page, watches by the server's
``timeoutSeconds`` and a client-side read timeout longer than the bookmark interval, so a half-open
connection is noticed within ``read_timeout`` seconds and the watch starts over.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import aiohttp
from kubernetes_asyncio import client
from kubernetes_asyncio.client.rest import ApiException

from taskyard import metrics

logger = logging.getLogger("taskyard.informer")

T = TypeVar("T")
ObjectKey = tuple[str, str]  # (namespace, name); namespace "" for cluster-scoped objects
ChangeHandler = Callable[[ObjectKey, Any, Any], None]  # (key, old record or None, new record or None)


@dataclass(frozen=True)
class ResourceType:
    """A kind of object to list and watch, and where to find it."""

    group: str
    version: str
    plural: str
    namespaced: bool = True
    label_selector: str | None = None

    def path(self, namespace: str | None) -> str:
        base = f"/api/{self.version}" if not self.group else f"/apis/{self.group}/{self.version}"
        if self.namespaced and namespace:
            return f"{base}/namespaces/{namespace}/{self.plural}"
        return f"{base}/{self.plural}"


class Store(Generic[T]):
    """Records by (namespace, name), with secondary indexes kept up to date on every change.

    An index maps a record to the values it is filed under (client-go's ``IndexFunc``); ``by_index``
    answers in time proportional to the answer, never to the size of the store.
    """

    def __init__(self, indexers: dict[str, Callable[[T], Iterable[Hashable]]] | None = None) -> None:
        self._items: dict[ObjectKey, T] = {}
        self._versions: dict[ObjectKey, str] = {}
        self._indexers = dict(indexers or {})
        # value -> the one key filed under it, or a set once there are several: most values (uids)
        # name one object, and a set per object would cost more than the object's own record.
        self._indexes: dict[str, dict[Hashable, ObjectKey | set[ObjectKey]]] = {
            name: {} for name in self._indexers
        }

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: ObjectKey) -> T | None:
        return self._items.get(key)

    def version(self, key: ObjectKey) -> str | None:
        return self._versions.get(key)

    def keys(self) -> list[ObjectKey]:
        return list(self._items)

    def values(self) -> list[T]:
        return list(self._items.values())

    def by_index(self, index: str, value: Hashable) -> list[T]:
        bucket = self._indexes[index].get(value)
        if bucket is None:
            return []
        if isinstance(bucket, set):
            return [self._items[key] for key in bucket]
        return [self._items[bucket]]

    def index_values(self, index: str) -> list[Hashable]:
        """Every value that some record is filed under in ``index``."""
        return list(self._indexes[index])

    def put(self, key: ObjectKey, record: T, version: str = "") -> T | None:
        old = self._items.get(key)
        if old is not None:
            self._unindex(key, old)
        self._items[key] = record
        self._versions[key] = version
        for name, indexer in self._indexers.items():
            index = self._indexes[name]
            for value in indexer(record):
                bucket = index.get(value)
                if bucket is None:
                    index[value] = key
                elif isinstance(bucket, set):
                    bucket.add(key)
                elif bucket != key:
                    index[value] = {bucket, key}
        return old

    def delete(self, key: ObjectKey) -> T | None:
        old = self._items.pop(key, None)
        self._versions.pop(key, None)
        if old is not None:
            self._unindex(key, old)
        return old

    def _unindex(self, key: ObjectKey, record: T) -> None:
        for name, indexer in self._indexers.items():
            index = self._indexes[name]
            for value in indexer(record):
                bucket = index.get(value)
                if isinstance(bucket, set):
                    bucket.discard(key)
                    if not bucket:
                        del index[value]
                elif bucket == key:
                    del index[value]


class WatchExpired(Exception):
    """The watch's resourceVersion is too old (HTTP 410): only a new list can continue."""


class Informer(Generic[T]):
    """Lists, then watches, one resource in one namespace (or all), keeping ``store`` current.

    ``project`` turns an object as the API returns it into the record kept; ``on_change`` hears of
    every change, including the deletions a re-list discovers.
    """

    def __init__(
        self,
        api: client.ApiClient,
        resource: ResourceType,
        store: Store[T],
        project: Callable[[dict[str, Any]], T],
        on_change: ChangeHandler,
        namespace: str | None = None,
        page_size: int = 500,
        request_timeout: float = 60.0,
        watch_timeout: int = 300,
        read_timeout: float = 90.0,
    ) -> None:
        self.api, self.resource, self.store = api, resource, store
        self.project, self.on_change, self.namespace = project, on_change, namespace
        self.page_size, self.request_timeout = page_size, request_timeout
        self.watch_timeout, self.read_timeout = watch_timeout, read_timeout
        self.synced = asyncio.Event()
        self.lists = 0  # complete lists stored: 1 after start-up, more after gaps
        self._keys: set[ObjectKey] = set()  # what this informer put in the (possibly shared) store

    @property
    def name(self) -> str:
        where = (self.namespace or "all namespaces") if self.resource.namespaced else "cluster"
        return f"{self.resource.plural} ({where})"

    async def run(self) -> None:
        """Forever: list, then watch until the watch can no longer continue; back off after errors."""
        failures = 0
        resource_version: str | None = None
        while True:
            try:
                if resource_version is None:
                    resource_version = await self.relist()
                resource_version = await self.watch(resource_version)
                failures = 0
            except WatchExpired:
                logger.info("watch of %s expired; listing again", self.name)
                resource_version = None
            except asyncio.CancelledError:
                raise
            except Exception as error:
                failures += 1
                # Capped low: an API server that is back must be noticed within seconds, and a list or
                # watch every 5 s per resource is nothing to an API server.
                delay = min(0.25 * 2 ** min(failures, 6), 5.0) * random.uniform(0.8, 1.2)
                logger.warning("watching %s failed (%s); again in %.1fs", self.name, _describe(error), delay)
                await asyncio.sleep(delay)
                if isinstance(error, ApiException) and error.status == 410:
                    resource_version = None

    async def relist(self) -> str:
        """Lists every object (in pages), replaces this informer's part of the store, and reports
        the changes, deletions included. Returns the list's resourceVersion to watch from."""
        # Each page is projected as it arrives, so a list never holds more than one page of whole
        # objects: 10,000 pods as records are a few MiB, as parsed bodies a few hundred.
        listed: dict[ObjectKey, tuple[str, T | None]] = {}
        resource_version = ""
        token: str | None = None
        while True:
            query: list[tuple[str, Any]] = [("limit", self.page_size)]
            if token:
                query.append(("continue", token))
            if self.resource.label_selector:
                query.append(("labelSelector", self.resource.label_selector))
            response = await request_json(
                self.api, self.resource.path(self.namespace), query, self.request_timeout
            )
            meta = response.get("metadata") or {}
            for item in response.get("items") or []:
                item_meta = item.get("metadata") or {}
                key = (item_meta.get("namespace") or "", item_meta["name"])
                version = item_meta.get("resourceVersion", "")
                unchanged = key in self._keys and self.store.version(key) == version
                listed[key] = (version, None if unchanged else self.project(item))
            del response
            token = meta.get("continue")
            resource_version = meta.get("resourceVersion", resource_version)
            if not token:
                break
        self._replace(listed)
        self.lists += 1
        self.synced.set()
        return resource_version

    def _replace(self, listed: dict[ObjectKey, tuple[str, T | None]]) -> None:
        for key in self._keys - listed.keys():
            old = self.store.delete(key)
            if old is not None:
                self.on_change(key, old, None)
        for key, (version, record) in listed.items():
            if record is not None:  # None: unchanged since we last saw it
                self._put(key, version, record)
        self._keys = set(listed)

    def _put(self, key: ObjectKey, version: str, record: T) -> None:
        old = self.store.put(key, record, version)
        self._keys.add(key)
        self.on_change(key, old, record)

    async def watch(self, resource_version: str) -> str:
        """Follows changes from ``resource_version`` until the server ends the watch; returns where to
        resume. Raises :class:`WatchExpired` when the version is too old."""
        query: list[tuple[str, Any]] = [
            ("watch", "true"),
            ("allowWatchBookmarks", "true"),
            ("resourceVersion", resource_version),
            ("timeoutSeconds", self.watch_timeout),
        ]
        if self.resource.label_selector:
            query.append(("labelSelector", self.resource.label_selector))
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self.request_timeout, sock_read=self.read_timeout
        )
        response = await open_stream(self.api, self.resource.path(self.namespace), query, timeout)
        try:
            async for line in _lines(response):
                event = json.loads(line)
                kind, item = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    if item.get("code") == 410:
                        raise WatchExpired()
                    raise ApiException(status=item.get("code"), reason=item.get("message"))
                meta = item.get("metadata") or {}
                resource_version = meta.get("resourceVersion") or resource_version
                if kind == "BOOKMARK":
                    continue
                metrics.EVENTS_HANDLED.labels(resource=self.resource.plural).inc()
                key = (meta.get("namespace") or "", meta["name"])
                if kind == "DELETED":
                    self._keys.discard(key)
                    old = self.store.delete(key)
                    if old is not None:
                        self.on_change(key, old, None)
                else:
                    self._put(key, resource_version, self.project(item))
        except (TimeoutError, aiohttp.ServerTimeoutError):
            # Nothing arrived for read_timeout seconds: a quiet resource (the API server does not
            # always send bookmarks that often), or a connection that stalled. Either way this
            # connection is done with, and the watch resumes where it was, at once: no error.
            logger.debug("watch of %s quiet for %.0fs; watching again", self.name, self.read_timeout)
        finally:
            response.release()
        return resource_version


async def request_json(
    api: client.ApiClient, path: str, query: list[tuple[str, Any]], timeout: float
) -> dict[str, Any]:
    """GETs ``path`` and returns the decoded JSON body; raises ApiException on an error status."""
    response = await open_stream(api, path, query, timeout)
    try:
        return json.loads(await response.read())
    finally:
        response.release()


async def open_stream(
    api: client.ApiClient, path: str, query: list[tuple[str, Any]], timeout: float | aiohttp.ClientTimeout
) -> aiohttp.ClientResponse:
    """Sends a GET whose body the caller reads (and releases); raises ApiException on an error status."""
    response: aiohttp.ClientResponse = await api.call_api(
        path,
        "GET",
        query_params=query,
        header_params={"Accept": "application/json"},
        auth_settings=["BearerToken"],
        _preload_content=False,
        _request_timeout=timeout,
    )
    if not 200 <= response.status <= 299:
        body = b""
        with contextlib.suppress(Exception):
            body = await response.content.read(64 * 1024)
        response.release()
        error = ApiException(status=response.status, reason=response.reason)
        error.body = body.decode(errors="replace")
        raise error
    return response


async def _lines(response: aiohttp.ClientResponse) -> Any:
    # Watch events are one JSON document per line; a line can be large (a whole object), so lines are
    # assembled from chunks rather than read with a fixed-size line buffer.
    pending = bytearray()
    async for chunk in response.content.iter_any():
        searched = len(pending)
        pending.extend(chunk)
        start = 0
        while (end := pending.find(b"\n", max(start, searched))) >= 0:
            line = bytes(pending[start:end])
            if line.strip():
                yield line
            start = end + 1
        del pending[:start]
    if bytes(pending).strip():
        yield bytes(pending)


def _describe(error: BaseException) -> str:
    if isinstance(error, ApiException):
        return f"HTTP {error.status} {error.reason}"
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
