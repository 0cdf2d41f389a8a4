"""The credential proxy: the real key reaches the provider, the agent's never does; answers stream."""

from __future__ import annotations

import http.client
import http.server
import importlib.util
import json
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

SOURCE = Path(__file__).resolve().parents[2] / "agents" / "entrypoint" / "taskyard_credential_proxy.py"
_spec = importlib.util.spec_from_file_location("taskyard_credential_proxy", SOURCE)
proxy = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = proxy  # dataclasses look their module up while the class is made
_spec.loader.exec_module(proxy)  # type: ignore[union-attr]

REAL_KEY = "sk-real-0123456789"
PLACEHOLDER = "taskyard-proxied"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Upstream:
    """A provider stand-in that records each request and answers with server-sent events."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.event_gap = 0.0
        recorder = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                recorder.requests.append(
                    {"path": self.path, "headers": dict(self.headers.items()), "body": body}
                )
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()  # no length: the answer ends with the connection
                for n in range(3):
                    self.wfile.write(f"event: delta\ndata: {json.dumps({'n': n})}\n\n".encode())
                    self.wfile.flush()
                    time.sleep(recorder.event_gap)
                self.close_connection = True

            do_GET = do_POST

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    server = Upstream()
    yield server
    server.server.shutdown()


def start_proxy(tmp_path: Path, upstream_url: str, auth: str = "x-api-key") -> tuple[int, object]:
    key_file = tmp_path / "key"
    key_file.write_text(REAL_KEY + "\n")
    port = free_port()
    config = proxy.ProxyConfig.from_env(
        {
            "TASKYARD_PROXY_UPSTREAM": upstream_url,
            "TASKYARD_PROXY_AUTH": auth,
            "TASKYARD_PROXY_KEY_FILE": str(key_file),
            "TASKYARD_PROXY_PORT": str(port),
        }
    )
    server = proxy.make_server(config)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return port, server


@pytest.mark.parametrize(
    ("auth", "sent", "expected"),
    [
        ("x-api-key", {"x-api-key": PLACEHOLDER}, {"x-api-key": REAL_KEY}),
        ("bearer", {"Authorization": f"Bearer {PLACEHOLDER}"}, {"Authorization": f"Bearer {REAL_KEY}"}),
        ("x-goog-api-key", {"x-goog-api-key": PLACEHOLDER}, {"x-goog-api-key": REAL_KEY}),
    ],
)
def test_the_provider_gets_the_real_key_and_never_the_agents(tmp_path, upstream, auth, sent, expected):
    port, server = start_proxy(tmp_path, upstream.url + "/v1", auth)
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        headers = {**sent, "Content-Type": "application/json", "anthropic-version": "2023-06-01"}
        connection.request(
            "POST", "/messages?beta=true&key=leaked", body=b'{"stream": true}', headers=headers
        )
        response = connection.getresponse()
        assert response.status == 200 and response.read().count(b"event: delta") == 3
    finally:
        server.shutdown()
    [request] = upstream.requests
    received = {k.lower(): v for k, v in request["headers"].items()}
    for name, value in expected.items():
        assert received[name.lower()] == value
    assert PLACEHOLDER not in json.dumps(request["headers"])
    assert request["path"] == "/v1/messages?beta=true"  # base path kept, a key in the query dropped
    assert received["host"] == upstream.url.removeprefix("http://")
    assert received["anthropic-version"] == "2023-06-01" and request["body"] == b'{"stream": true}'


def test_an_answer_streams_event_by_event(tmp_path, upstream):
    upstream.event_gap = 0.5
    port, server = start_proxy(tmp_path, upstream.url)
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("POST", "/v1/messages", body=b"{}", headers={"x-api-key": PLACEHOLDER})
        response = connection.getresponse()
        started = time.monotonic()
        first = response.read1(4096)
        first_at = time.monotonic() - started
        rest = response.read()
    finally:
        server.shutdown()
    assert b'"n": 0' in first and b'"n": 2' not in first
    assert first_at < 0.4  # the first event arrived before the upstream had finished
    assert rest.count(b"event: delta") == 2


def test_an_unreachable_provider_is_a_502_naming_it(tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"
    port, server = start_proxy(tmp_path, dead)
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("POST", "/v1/messages", body=b"{}")
        response = connection.getresponse()
        document = json.loads(response.read())
    finally:
        server.shutdown()
    assert response.status == 502
    assert document["error"]["message"].startswith(dead.removeprefix("http://"))


def test_health_is_answered_by_the_proxy_itself(tmp_path, upstream):
    port, server = start_proxy(tmp_path, upstream.url)
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("GET", "/healthz")
        assert connection.getresponse().status == 200
    finally:
        server.shutdown()
    assert upstream.requests == []


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TASKYARD_PROXY_UPSTREAM": "api.anthropic.com"}, "TASKYARD_PROXY_UPSTREAM is 'api.anthropic.com'"),
        ({"TASKYARD_PROXY_AUTH": "basic"}, "TASKYARD_PROXY_AUTH is 'basic'; it must be one of"),
        ({"TASKYARD_PROXY_KEY_FILE": "/nonexistent/key"}, "cannot be read"),
        ({"TASKYARD_PROXY_PORT": "http"}, "TASKYARD_PROXY_PORT is 'http'"),
    ],
)
def test_bad_settings_stop_the_proxy_with_a_message_naming_them(tmp_path, env, message):
    key_file = tmp_path / "key"
    key_file.write_text(REAL_KEY)
    settings = {
        "TASKYARD_PROXY_UPSTREAM": "https://api.anthropic.com",
        "TASKYARD_PROXY_AUTH": "x-api-key",
        "TASKYARD_PROXY_KEY_FILE": str(key_file),
        **env,
    }
    with pytest.raises(proxy.ConfigError, match=message.replace("(", r"\(").replace("?", r"\?")):
        proxy.ProxyConfig.from_env(settings)


def test_an_empty_key_file_stops_the_proxy(tmp_path):
    (tmp_path / "key").write_text("\n")
    settings = {
        "TASKYARD_PROXY_UPSTREAM": "https://api.anthropic.com",
        "TASKYARD_PROXY_AUTH": "bearer",
        "TASKYARD_PROXY_KEY_FILE": str(tmp_path / "key"),
    }
    with pytest.raises(proxy.ConfigError, match="is empty"):
        proxy.ProxyConfig.from_env(settings)


def test_paths_and_queries_reach_the_provider_as_sent(tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text(REAL_KEY)
    config = proxy.ProxyConfig.from_env(
        {
            "TASKYARD_PROXY_UPSTREAM": "https://api.openai.com/v1",
            "TASKYARD_PROXY_AUTH": "bearer",
            "TASKYARD_PROXY_KEY": REAL_KEY,
        }
    )
    assert proxy.upstream_path("//responses", config) == "/v1//responses"
    assert proxy.upstream_path("/models?flag&alt=sse&key=x", config) == "/v1/models?flag&alt=sse"
    assert proxy.upstream_path("/models?key=x", config) == "/v1/models"


def test_a_key_a_header_cannot_carry_is_refused_without_being_shown():
    secret = "sk-line-one\nsk-line-two"
    settings = {
        "TASKYARD_PROXY_UPSTREAM": "https://api.anthropic.com",
        "TASKYARD_PROXY_AUTH": "x-api-key",
        "TASKYARD_PROXY_KEY": secret,
    }
    with pytest.raises(proxy.ConfigError) as raised:
        proxy.ProxyConfig.from_env(settings)
    assert "cannot carry" in str(raised.value) and "sk-line" not in str(raised.value)


def test_an_answer_cut_short_reaches_the_agent_as_broken(tmp_path):
    class Short(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            self.wfile.write(b"x" * 10)
            self.close_connection = True

    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Short)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    port, server = start_proxy(tmp_path, f"http://127.0.0.1:{upstream.server_address[1]}")
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("POST", "/v1/messages", body=b"{}")
        response = connection.getresponse()
        with pytest.raises(http.client.IncompleteRead):
            response.read()
    finally:
        server.shutdown()
        upstream.shutdown()
