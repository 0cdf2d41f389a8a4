"""A TCP fault proxy for the fault tier: sits between the operator and the API server and, on request,
black-holes connections (bytes stop, sockets stay open), swallows only what the client sends (requests
hang while open watch streams keep delivering), or resets them. In front of a plain-HTTP upstream
(`kubectl proxy`) it can also silence only the requests whose request line matches, such as one
resource's watch, while every other request goes through.

TLS passes through untouched (it is a layer-4 proxy), so the operator talks to the real API server
with its real certificates; only the transport misbehaves. Threads rather than asyncio, so the proxy
keeps forwarding while a test blocks in a synchronous client.
"""

from __future__ import annotations

import contextlib
import re
import socket
import struct
import threading
from collections.abc import Callable


class _Connection:
    def __init__(
        self,
        downstream: socket.socket,
        upstream: socket.socket,
        black_holed: bool,
        requests_dropped: bool,
        silences: Callable[[bytes], bool],
    ) -> None:
        self.downstream, self.upstream = downstream, upstream
        self.silences = silences
        self.black_holed = threading.Event()
        if black_holed:
            self.black_holed.set()
        self.requests_dropped = threading.Event()
        if requests_dropped:
            self.requests_dropped.set()
        self.closed = False

    def pump(self, source: socket.socket, target: socket.socket) -> None:
        towards_server = source is self.downstream
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if towards_server and self.silences(data):
                    self.black_holed.set()  # this request, and the connection it came on, go silent
                if self.black_holed.is_set() or (towards_server and self.requests_dropped.is_set()):
                    # A half-open connection: what is sent is never delivered, and nothing comes back.
                    # Keep reading so the sender never sees back-pressure either.
                    continue
                target.sendall(data)
        except OSError:
            pass
        finally:
            if not (self.black_holed.is_set() or self.requests_dropped.is_set()):
                self.close()
            # Otherwise the connection stays half-open: when the server gives up on a connection that
            # carries nothing, the client must not learn of it either (stop() closes it in the end).

    def close(self, reset: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        for sock in (self.downstream, self.upstream):
            with contextlib.suppress(OSError):
                if reset:  # RST instead of FIN: the peer sees "connection reset by peer"
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                # Wakes the pump blocked reading this socket: close() alone would leave the socket open
                # (and the peer unaware) until that read returned.
                sock.shutdown(socket.SHUT_RD)
            with contextlib.suppress(OSError):
                sock.close()


class FaultProxy:
    def __init__(self, upstream_host: str, upstream_port: int, listen_host: str = "127.0.0.1") -> None:
        # listen_host: the node's address to serve pods (an operator in the cluster), loopback otherwise.
        self.upstream = (upstream_host, upstream_port)
        self._listener = socket.create_server((listen_host, 0))
        self.port = self._listener.getsockname()[1]
        self._connections: list[_Connection] = []
        self._lock = threading.Lock()
        self._stalled = False
        self._dropping_requests = False
        self._silenced: re.Pattern[bytes] | None = None
        self.accepted = 0

    def start(self) -> FaultProxy:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.upstream, timeout=10)
                upstream.settimeout(None)
            except OSError:
                downstream.close()
                continue
            with self._lock:
                connection = _Connection(
                    downstream,
                    upstream,
                    black_holed=self._stalled,
                    requests_dropped=self._dropping_requests,
                    silences=self._silences,
                )
                self._connections.append(connection)
                self.accepted += 1
            threading.Thread(target=connection.pump, args=(downstream, upstream), daemon=True).start()
            threading.Thread(target=connection.pump, args=(upstream, downstream), daemon=True).start()

    def stall(self) -> None:
        """Every open connection goes silent for good, and so does every new one until :meth:`heal`,
        as after an API server fail-over that leaves half-open connections behind."""
        with self._lock:
            self._stalled = True
            for connection in self._connections:
                connection.black_holed.set()

    def drop_requests(self) -> None:
        """What clients send is swallowed on every open connection and every new one until
        :meth:`heal`; what the server sends still arrives. Requests never get an answer, while watch
        streams opened before keep delivering events: work keeps arriving and none can be done."""
        with self._lock:
            self._dropping_requests = True
            for connection in self._connections:
                connection.requests_dropped.set()

    def silence_requests(self, request_line: str) -> None:
        """Until :meth:`heal`, a request whose request line matches the regular expression gets no
        answer, and the connection it came on goes silent for good; other connections are untouched.
        Only for a plain-HTTP upstream: in TLS the request line cannot be seen."""
        self._silenced = re.compile(request_line.encode())

    def _silences(self, data: bytes) -> bool:
        pattern = self._silenced
        return pattern is not None and pattern.search(data) is not None

    def heal(self) -> None:
        """New connections work again; the silent ones stay silent (the client must give up on them)."""
        with self._lock:
            self._stalled = False
            self._dropping_requests = False
            self._silenced = None

    def reset_all(self) -> int:
        """Resets every open connection (RST); returns how many."""
        with self._lock:
            open_connections = [c for c in self._connections if not c.closed]
            self._connections = []
        for connection in open_connections:
            connection.close(reset=True)
        return len(open_connections)

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            connections, self._connections = self._connections, []
        for connection in connections:
            connection.close()
