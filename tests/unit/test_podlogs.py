"""Reading logs as bytes: invalid UTF-8, huge logs and single huge lines, JSON kept as text, stalls."""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp import web
from kubernetes_asyncio.client.rest import ApiException

from taskyard.metrics import LOG_FOLLOWS_OPEN
from taskyard.podlogs import (
    ByteRing,
    FollowedLog,
    LogFollowers,
    LogUnavailable,
    decode_log,
    read_log_tail,
    read_log_to_its_end,
)
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


def test_a_read_cut_short_is_followed_by_the_logs_true_end():
    # A slow kubelet sends the last 20000 lines too slowly: the status's tail must still be the end of
    # what the agent wrote, not wherever the slow read stopped.
    async def scenario():
        async with FakeApi() as fake:

            async def log(request: web.Request) -> web.StreamResponse:
                response = web.StreamResponse()
                await response.prepare(request)
                if request.query["tailLines"] == "20000":
                    await response.write(b"line 1\nline 2\nline ")
                    await asyncio.sleep(30)
                else:
                    await response.write(b"line 9999\nLAST LINE\n")
                return response

            fake.route(LOG_PATH, log)
            api = fake.client()
            try:
                return await read_log_to_its_end(api, "ns", "p", "agent", deadline=0.5), fake.requests
            finally:
                await api.close()

    log, requests = run(scenario())
    assert log.text == (
        "line 1\nline 2\nline \n[taskyard: the read of this log stopped after 0.5 s;"
        " its last 200 lines follow]\nline 9999\nLAST LINE\n"
    )
    assert log.complete and log.total_bytes == len(b"line 1\nline 2\nline ")
    assert [query["tailLines"] for _, _, query in requests] == ["20000", "200"]


def test_a_read_cut_short_whose_end_cannot_be_read_says_so():
    async def scenario():
        async with FakeApi() as fake:
            calls = []

            async def log(request: web.Request) -> web.StreamResponse:
                calls.append(request.query["tailLines"])
                if len(calls) > 1:
                    return web.json_response({"kind": "Status", "code": 500, "message": "x"}, status=500)
                response = web.StreamResponse()
                await response.prepare(request)
                await response.write(b"working\n")
                await asyncio.sleep(30)
                return response

            fake.route(LOG_PATH, log)
            api = fake.client()
            try:
                return await read_log_to_its_end(api, "ns", "p", "agent", deadline=0.5)
            finally:
                await api.close()

    log = run(scenario())
    assert (
        log.text == "working\n[taskyard: the read of this log stopped after 0.5 s; its end could not be read]"
    )
    assert not log.complete


def test_a_missing_log_is_unavailable_and_other_errors_stay_api_errors():
    async def scenario():
        async with FakeApi() as fake:

            async def refused(request: web.Request) -> web.Response:
                return web.Response(status=403, text='{"message": "forbidden"}')

            fake.route("/api/v1/namespaces/ns/pods/secret/log", refused)
            api = fake.client()
            try:
                with pytest.raises(LogUnavailable, match="404"):
                    await read_log_tail(api, "ns", "p", "agent")
                with pytest.raises(ApiException) as raised:
                    await read_log_tail(api, "ns", "secret", "agent")
                assert raised.value.status == 403
            finally:
                await api.close()

    run(scenario())


KUBELET_ERRORS = [
    b"unable to retrieve container logs for containerd://0e42d760ff8185446dfca74036a6f3a1be72",
    b'failed to try resolving symlinks in path "/var/log/pods/ns_p_1/agent/0.log": lstat '
    b"/var/log/pods/ns_p_1/agent/0.log: no such file or directory",
    b'failed to open log file "/var/log/pods/ns_p_1/agent/0.log": open: no such file or directory',
]


@pytest.mark.parametrize("body", KUBELET_ERRORS, ids=["container-gone", "symlink-gone", "file-gone"])
def test_the_kubelets_error_in_a_successful_response_is_no_log(body: bytes):
    # The kubelet answers 200 before it finds the container gone, then writes its error as the body:
    # taking that for the agent's output would replace what was collected with the kubelet's words.
    with pytest.raises(LogUnavailable, match=body[:30].decode()):
        read(body)


@pytest.mark.parametrize(
    "body",
    [KUBELET_ERRORS[0] + b"\n", b"working\n" + KUBELET_ERRORS[0], b"x" * 5000 + KUBELET_ERRORS[0]],
    ids=["a-printed-line", "after-output", "long-log"],
)
def test_an_agent_printing_the_kubelets_words_is_still_its_log(body: bytes):
    log, _ = read(body)
    assert log.text == body.decode()


def serve_following(lines: list[bytes], pause: float):
    """A log endpoint that, asked to follow, writes a line per pause and ends (the agent exiting)."""

    async def log(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        for line in lines if request.query.get("follow") == "true" else lines[:1]:
            await response.write(line)
            await asyncio.sleep(pause)
        return response

    return log


def test_a_follow_brings_back_all_the_agent_wrote_until_it_exits():
    async def scenario():
        async with FakeApi() as fake:
            fake.route(LOG_PATH, serve_following([b"working\n", b"cleaning up\n"], pause=0.2))
            api = fake.client()
            done: list[str] = []
            followers = LogFollowers(api, done.append)
            try:
                assert followers.start("uid-1", "ns", "p", 1, deadline=10)
                assert followers.start("uid-1", "ns", "p", 1, deadline=10)  # already followed
                assert followers.following("uid-1", "p") and not followers.following("uid-1", "other")
                assert followers.result("uid-1") is None
                for _ in range(50):
                    if done:
                        break
                    await asyncio.sleep(0.1)
                assert done == ["uid-1"] and not followers.following("uid-1")
                followed = followers.result("uid-1")
                followers.release("uid-1", followed)
                assert followers.result("uid-1") is None
                assert followed.pod == "p" and followed.attempt == 1
                assert followed.log.text == "working\ncleaning up\n" and followed.log.complete
                assert ("follow", "true") in fake.requests[0][2].items()
                assert not followers.start("uid-1", "ns", "p", 1, deadline=10)  # each pod once
            finally:
                await followers.stop()
                await api.close()

    run(scenario())


def test_follows_are_bounded_in_number_and_time_and_end_when_forgotten():
    async def scenario():
        async with FakeApi() as fake:
            fake.route(LOG_PATH, serve_log(b"started\n", hold=30))
            api = fake.client()
            done: list[str] = []
            followers = LogFollowers(api, done.append, limit=2)
            try:
                assert followers.start("a", "ns", "p", 1, deadline=0.5)
                assert followers.start("b", "ns", "p", 1, deadline=30)
                assert not followers.start("c", "ns", "p", 1, deadline=30)  # over the limit: read once
                for _ in range(20):  # the gauge counts streams once they are open
                    if LOG_FOLLOWS_OPEN._value.get() == 2:
                        break
                    await asyncio.sleep(0.02)
                assert LOG_FOLLOWS_OPEN._value.get() == 2
                followers.forget("b")
                assert len(followers) == 1
                for _ in range(50):
                    if done:
                        break
                    await asyncio.sleep(0.1)
                assert done == ["a"]  # "b" was forgotten: it reports nothing
                assert LOG_FOLLOWS_OPEN._value.get() == 0  # the one cut short and the forgotten one
                followed = followers.result("a")
                assert followed.log.text == "started\n" and not followed.log.complete
            finally:
                await followers.stop()
                await api.close()

    run(scenario())


def test_a_follow_of_a_gone_container_brings_back_no_log():
    async def scenario():
        async with FakeApi() as fake:
            fake.route(LOG_PATH, serve_log(KUBELET_ERRORS[0]))
            api = fake.client()
            done: list[str] = []
            followers = LogFollowers(api, done.append)
            try:
                followers.start("uid-1", "ns", "p", 2, deadline=10)
                for _ in range(50):
                    if done:
                        break
                    await asyncio.sleep(0.1)
                assert followers.result("uid-1") == FollowedLog("p", 2, None)
            finally:
                await followers.stop()
                await api.close()

    run(scenario())
