"""Reading logs as bytes: invalid UTF-8, huge logs and single huge lines, JSON kept as text, stalls."""

from __future__ import annotations

import json

import pytest
from aiohttp import web
from kubernetes_asyncio.client.rest import ApiException

from taskyard.podlogs import ByteRing, decode_log, read_log_tail
from tests.unit.fakeapi import FakeApi, run

pytestmark = pytest.mark.unit

LOG_PATH = "/api/v1/namespaces/ns/pods/p/log"


def test_ring_keeps_only_the_last_bytes():
    ring = ByteRing(10)
    for chunk in (b"0123", b"456789ab", b"", b"c" * 3):
        ring.write(chunk)
    assert ring.getvalue() == (b"0123456789ab" + b"ccc")[-10:]
    assert ring.total == 15
    ring.write(b"x" * 100)
    assert ring.getvalue() == b"x" * 10


def test_decode_replaces_bad_bytes_and_starts_a_cut_log_on_a_line():
    assert decode_log(b"ok \xff\xfe done\n", 0) == "ok \ufffd\ufffd done\n"
    text = decode_log(b"tial line\nwhole line\n", 100)
    assert text == "[taskyard: 110 bytes dropped from the start]\nwhole line\n"


def serve_log(body: bytes, chunk: int = 1 << 20, hold: float = 0.0):
    async def log(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_type = "text/plain"
        await response.prepare(request)
        for start in range(0, len(body), chunk):
            await response.write(body[start : start + chunk])
        if hold:
            import asyncio

            await asyncio.sleep(hold)
        return response

    return log


def read(body: bytes, **kwargs) -> tuple:
    async def scenario():
        async with FakeApi() as fake:
            fake.route(LOG_PATH, serve_log(body, hold=kwargs.pop("hold", 0.0)))
            api = fake.client()
            try:
                return await read_log_tail(api, "ns", "p", "agent", **kwargs), fake.requests
            finally:
                await api.close()

    return run(scenario())


def test_non_utf8_output_is_text_with_replacement_characters():
    log, requests = read(b"binary \xff\x00\xfe\n")
    assert log.text == "binary \ufffd\x00\ufffd\n" and log.complete
    assert requests[0][2] == {"container": "agent", "tailLines": "20000"}


def test_a_json_document_stays_the_text_written():
    document = json.dumps({"result": "ok", "n": [1, 2]})
    log, _ = read(document.encode())
    assert log.text == document


def test_a_100_mb_log_keeps_only_its_end():
    body = b"".join(b"line %08d\n" % n for n in range(10_000_000 // 14 * 10))  # about 100 MB
    log, _ = read(body, keep_bytes=64 * 1024)
    assert log.total_bytes == len(body)
    assert log.text.endswith(body[-1000:].decode())
    assert log.text.startswith("[taskyard: ")
    assert len(log.text.encode()) <= 64 * 1024 + 64


def test_one_50_mb_line():
    body = b"x" * (50 * 1024 * 1024) + b"END"
    log, _ = read(body, keep_bytes=1024)
    assert log.text.endswith("xEND") and log.dropped_bytes == len(body) - 1024


def test_a_stalled_log_is_cut_short_at_its_deadline():
    log, _ = read(b"started\n", hold=30, deadline=0.5)
    assert not log.complete and log.text == "started\n"


def test_a_missing_log_is_an_api_error():
    async def scenario():
        async with FakeApi() as fake:
            api = fake.client()
            try:
                with pytest.raises(ApiException) as raised:
                    await read_log_tail(api, "ns", "p", "agent")
                assert raised.value.status == 404
            finally:
                await api.close()

    run(scenario())
