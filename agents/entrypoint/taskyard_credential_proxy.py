#!/usr/bin/env python3
"""taskyard-credential-proxy: the model provider's API key stays out of the agent's container.

Runs beside the agent in the Task's pod (a sidecar sharing its network namespace) and listens on the
pod's loopback only. The agent's CLI is pointed at it through its base-URL setting and holds a
placeholder key; the proxy drops whatever credentials a request carries, adds the real key (read from a
file that only the proxy's container mounts) and forwards the request to the provider, streaming the
answer back as it arrives (server-sent events included).

Settings, from the environment:
  TASKYARD_PROXY_UPSTREAM   the provider's base URL, e.g. https://api.anthropic.com
  TASKYARD_PROXY_AUTH       how the key is sent: x-api-key, bearer or x-goog-api-key
  TASKYARD_PROXY_KEY        the key (from a Secret, in this container's environment only), or
  TASKYARD_PROXY_KEY_FILE   a file holding it
  TASKYARD_PROXY_PORT       the loopback port to listen on (8484)

Standard library only: it runs on the agent images' Python, and must not need anything they lack.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import json
import os
import re
import socket
import ssl
import sys
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass

DEFAULT_PORT = 8484
AUTH_SCHEMES = ("x-api-key", "bearer", "x-goog-api-key")
# Never forwarded from the agent: whatever it sends as a credential is a placeholder at best.
CREDENTIAL_HEADERS = frozenset(
    {"authorization", "x-api-key", "x-goog-api-key", "api-key", "proxy-authorization"}
)
# Headers of one connection, not of the request (RFC 9110, 7.6.1), and those the proxy sets itself.
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade", "host", "content-length"}
)
_HEADER_SAFE = re.compile(r"[\x21-\x7e]+")  # visible ASCII: what a header value can carry as is
UPSTREAM_TIMEOUT = 600.0  # a long generation streams for minutes; a silent upstream is given up on


class ConfigError(Exception):
    """A setting is missing or wrong: the proxy does not start."""


@dataclass(frozen=True)
class ProxyConfig:
    scheme: str
    host: str
    port: int
    base_path: str
    auth: str
    key: str
    listen_port: int

    @classmethod
    def from_env(cls, env: dict[str, str]) -> ProxyConfig:
        upstream = env.get("TASKYARD_PROXY_UPSTREAM", "")
        parsed = urllib.parse.urlsplit(upstream)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ConfigError(
                f"TASKYARD_PROXY_UPSTREAM is {upstream!r}; it must be the provider's base URL, "
                "e.g. https://api.anthropic.com"
            )
        auth = env.get("TASKYARD_PROXY_AUTH", "")
        if auth not in AUTH_SCHEMES:
            raise ConfigError(f"TASKYARD_PROXY_AUTH is {auth!r}; it must be one of {', '.join(AUTH_SCHEMES)}")
        key, source = env.get("TASKYARD_PROXY_KEY", "").strip(), "TASKYARD_PROXY_KEY"
        if not key and env.get("TASKYARD_PROXY_KEY_FILE"):
            source = f"TASKYARD_PROXY_KEY_FILE {env['TASKYARD_PROXY_KEY_FILE']!r}"
            try:
                with open(env["TASKYARD_PROXY_KEY_FILE"], encoding="utf-8") as handle:
                    key = handle.read().strip()
            except OSError as error:
                raise ConfigError(f"{source} cannot be read: {error.strerror}") from None
        if not key:
            raise ConfigError(f"{source} is empty: the proxy has no key to add")
        if not _HEADER_SAFE.fullmatch(key):
            # Never echoed: a key with a line break or space in it would otherwise end up in a log.
            raise ConfigError(f"the key in {source} has characters an HTTP header cannot carry")
        port_text = env.get("TASKYARD_PROXY_PORT", str(DEFAULT_PORT))
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ConfigError(f"TASKYARD_PROXY_PORT is {port_text!r}; it must be a port number")
        return cls(
            scheme=parsed.scheme,
            host=parsed.hostname,
            port=parsed.port or (443 if parsed.scheme == "https" else 80),
            base_path=parsed.path.rstrip("/"),
            auth=auth,
            key=key,
            listen_port=int(port_text),
        )

    @property
    def netloc(self) -> str:
        default = 443 if self.scheme == "https" else 80
        return self.host if self.port == default else f"{self.host}:{self.port}"

    def credential(self) -> dict[str, str]:
        if self.auth == "bearer":
            return {"Authorization": f"Bearer {self.key}"}
        return {self.auth: self.key}


def forwarded_headers(received: list[tuple[str, str]], config: ProxyConfig) -> dict[str, str]:
    """The request's headers as the provider gets them: no credentials of the agent's, no headers of the
    agent's connection, the real key, and the provider's host."""
    headers = {
        name: value
        for name, value in received
        if name.lower() not in CREDENTIAL_HEADERS and name.lower() not in HOP_BY_HOP
    }
    headers.update(config.credential())
    headers["Host"] = config.netloc
    return headers


def upstream_path(path: str, config: ProxyConfig) -> str:
    """The provider's path for a request: its base path, then the request's path and query, with any
    ``key`` query parameter (Gemini's other way of passing a key) dropped."""
    # Split by hand: urlsplit takes "//x" for a host, and re-encoding would change the query.
    target, _, query = path.partition("?")
    kept = [part for part in query.split("&") if part and part.split("=", 1)[0] != "key"]
    joined = config.base_path + (target if target.startswith("/") else "/" + target)
    return joined + ("?" + "&".join(kept) if kept else "")


def read_chunked(stream) -> Iterator[bytes]:  # type: ignore[no-untyped-def]
    """The chunks of a chunked request body."""
    while True:
        size_line = stream.readline(1024)
        size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            while stream.readline(1024) not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return
        yield stream.read(size)
        stream.readline(8)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "taskyard-credential-proxy"
    config: ProxyConfig  # set on the class built by make_server

    def log_message(self, format: str, *args: object) -> None:
        # One line per request on stderr (the container's log); never a header, so never a key.
        sys.stderr.write(f"taskyard-credential-proxy: {format % args}\n")

    def _body(self) -> bytes | None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return b"".join(read_chunked(self.rfile))
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else None

    def _forward(self) -> None:
        if self.path == "/healthz":
            self._answer(200, {"status": "ok"})
            return
        config = self.config
        body = self._body()
        connection_class = (
            http.client.HTTPSConnection if config.scheme == "https" else http.client.HTTPConnection
        )
        extra = {"context": ssl.create_default_context()} if config.scheme == "https" else {}
        upstream = connection_class(config.host, config.port, timeout=UPSTREAM_TIMEOUT, **extra)
        try:
            upstream.request(
                self.command,
                upstream_path(self.path, config),
                body=body,
                headers=forwarded_headers(list(self.headers.items()), config),
            )
            response = upstream.getresponse()
        except (OSError, http.client.HTTPException) as error:
            upstream.close()
            self._answer(502, {"error": {"type": "proxy_error", "message": f"{config.netloc}: {error}"}})
            return
        except ValueError:  # a header http.client will not send; its message could quote the key
            upstream.close()
            self._answer(502, {"error": {"type": "proxy_error", "message": "a request header was refused"}})
            return
        try:
            self._relay(response)
        finally:
            upstream.close()

    def _relay(self, response: http.client.HTTPResponse) -> None:
        self.send_response(response.status, response.reason)
        for name, value in response.getheaders():
            if name.lower() not in HOP_BY_HOP:
                self.send_header(name, value)
        if self.command == "HEAD" or response.status in (204, 304) or 100 <= response.status < 200:
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        # Re-chunked as it arrives: a streamed answer reaches the agent event by event.
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        while True:
            chunk = response.read1(64 * 1024)
            if not chunk:
                break
            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.flush()
        if response.length:
            # The upstream stopped short of its Content-Length: the connection ends without the last
            # chunk, so the agent sees a broken answer rather than a complete one.
            self.close_connection = True
            return
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _answer(self, status: int, document: dict[str, object]) -> None:
        payload = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _forward


def make_server(config: ProxyConfig, host: str = "127.0.0.1") -> http.server.ThreadingHTTPServer:
    handler = type("ConfiguredHandler", (Handler,), {"config": config})
    server = http.server.ThreadingHTTPServer((host, config.listen_port), handler)
    server.daemon_threads = True
    return server


def main() -> int:
    try:
        config = ProxyConfig.from_env(dict(os.environ))
    except ConfigError as error:
        print(f"taskyard-credential-proxy: {error}", file=sys.stderr)
        return 2
    try:
        server = make_server(config)
    except OSError as error:
        print(
            f"taskyard-credential-proxy: cannot listen on 127.0.0.1:{config.listen_port}: {error}",
            file=sys.stderr,
        )
        return 2
    print(
        f"taskyard-credential-proxy: 127.0.0.1:{config.listen_port} -> {config.scheme}://{config.netloc}"
        f"{config.base_path} ({config.auth})",
        file=sys.stderr,
        flush=True,
    )
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    return 0


if __name__ == "__main__":
    socket.setdefaulttimeout(None)
    sys.exit(main())
