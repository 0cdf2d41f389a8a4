"""Writes whose answer is dropped: the status is still checked, the connection given back."""

from __future__ import annotations

import json

import pytest
from aiohttp import web
from kubernetes_asyncio import client
from kubernetes_asyncio.client.rest import ApiException

from taskyard.apiwrite import send
from tests.unit.fakeapi import FakeApi, run

pytestmark = pytest.mark.unit

JOBS = "/apis/batch/v1/namespaces/ns/jobs"


def test_an_accepted_write_returns_nothing_and_its_connection_is_reused():
    async def scenario() -> None:
        async with FakeApi() as fake:
            bodies = []

            async def create(request: web.Request) -> web.StreamResponse:
                body = json.loads(await request.read())
                bodies.append(body)
                return web.json_response(
                    {**body, "status": {"startTime": "2026-12-02T10:00:00Z"}}, status=201
                )

            fake.route(JOBS, create)
            api = fake.client()
            batch = client.BatchV1Api(api)
            for name in ("a", "b", "c"):
                assert await send(batch.create_namespaced_job, "ns", {"metadata": {"name": name}}) is None
            assert [b["metadata"]["name"] for b in bodies] == ["a", "b", "c"]
            connector = api.rest_client.pool_manager.connector
            assert len(connector._conns) == 1  # every answer was read and released: one connection, kept
            await api.close()

    run(scenario())


def test_a_refused_write_raises_the_api_exception_with_its_status_and_message():
    async def scenario() -> None:
        async with FakeApi() as fake:

            async def refuse(request: web.Request) -> web.StreamResponse:
                message = 'jobs.batch "a" is forbidden: exceeded quota: q'
                return web.json_response({"kind": "Status", "code": 403, "message": message}, status=403)

            fake.route(JOBS, refuse)
            api = fake.client()
            with pytest.raises(ApiException) as raised:
                await send(client.BatchV1Api(api).create_namespaced_job, "ns", {"metadata": {"name": "a"}})
            assert raised.value.status == 403
            assert json.loads(raised.value.body)["message"].endswith("exceeded quota: q")
            await api.close()

    run(scenario())
