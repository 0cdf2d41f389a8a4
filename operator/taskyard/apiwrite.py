"""Writes to the API server whose answer the operator does not need.

kubernetes_asyncio turns every answer into client models: each field, each timestamp through
dateutil's parser. For a created Job that was a fifth of the operator's CPU during a burst, spent on
an object the watch delivers again a moment later. These calls check the answer's status and drop
its body.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from kubernetes_asyncio.client.rest import ApiException, RESTResponse


async def send(call: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> None:
    """Makes the request of a kubernetes_asyncio API method; raises ApiException as the method would
    when the API server refuses it, and returns nothing."""
    response = await call(*args, _preload_content=False, **kwargs)
    try:
        data = await response.read()
    finally:
        response.release()
    if not 200 <= response.status <= 299:
        raise ApiException(http_resp=RESTResponse(response, data))
