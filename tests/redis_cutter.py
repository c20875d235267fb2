"""A TCP proxy in front of a redis-server that plays "Redis died at exactly this command".

Processes under test connect through it. Armed with byte patterns (e.g. a Lua script's SHA and an
argument), it waits for the n-th command carrying all of them, then cuts every connection going
through it and refuses new ones for an outage: either before the command reaches Redis
(``when="before"``: nothing of it was written) or after Redis ran it and before any reply gets
back (``when="after"``: written, but the client cannot know). With the real redis-server running
AOF with ``appendfsync always``, those are the two sides of a crash at that command. Or
(``when="connection"``) only the connection carrying the command breaks before it reaches Redis,
and new connections are refused for the outage, while the others carry on: the process's other
parts (its queue consumer) never notice.
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
import threading
import time
from dataclasses import dataclass, field

from harness.ports import free_port


def script_sha(script: str | bytes) -> bytes:
    """The SHA1 redis-py sends in EVALSHA for ``script``."""
    raw = script.encode() if isinstance(script, str) else script
    return hashlib.sha1(raw, usedforsecurity=False).hexdigest().encode()


def argument(value: str) -> bytes:
    """``value`` as one RESP bulk-string argument."""
    return f"${len(value.encode())}\r\n{value}\r\n".encode()


@dataclass
class _Pair:
    client: socket.socket
    server: socket.socket
    doomed: bool = False

    def close(self) -> None:
        for sock in (self.client, self.server):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


@dataclass
class _Trigger:
    patterns: tuple[bytes, ...]
    when: str
    skip: int
    outage: float


@dataclass
class RedisCutter:
    """Parameters:
      target_port: the redis-server's port (on 127.0.0.1).
    """

    target_port: int
    port: int = field(default_factory=free_port)
    fired: threading.Event = field(default_factory=threading.Event)
    _by_id: dict[int, _Pair] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _trigger: _Trigger | None = None
    _down_until: float = 0.0
    _listener: socket.socket | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisCutter:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        self._listener = listener
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        self._cut_all()

    def arm(self, *patterns: bytes, when: str = "before", skip: int = 0,
            outage: float = 1.0) -> None:
        """Cut at the ``skip + 1``-th command containing every pattern."""
        assert when in {"before", "after", "connection"}
        self.fired.clear()
        with self._lock:
            self._trigger = _Trigger(patterns, when, skip, outage)

    def _accept(self) -> None:
        while self._listener is not None:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if time.monotonic() < self._down_until:
                client.close()  # Redis is "down"
                continue
            try:
                server = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            pair = _Pair(client, server)
            with self._lock:
                self._by_id[id(pair)] = pair
            threading.Thread(target=self._upstream, args=(pair,), daemon=True).start()
            threading.Thread(target=self._downstream, args=(pair,), daemon=True).start()

    def _matches(self, data: bytes) -> _Trigger | None:
        with self._lock:
            trigger = self._trigger
            if trigger is None or not all(p in data for p in trigger.patterns):
                return None
            if trigger.skip:
                trigger.skip -= 1
                return None
            self._trigger = None
            return trigger

    def _upstream(self, pair: _Pair) -> None:
        while True:
            try:
                data = pair.client.recv(65536)
            except OSError:
                data = b""
            if not data:
                self._drop(pair)
                return
            trigger = self._matches(data)
            if trigger is not None and trigger.when == "before":
                self._cut_all(trigger.outage)
                return
            if trigger is not None and trigger.when == "connection":
                with self._lock:
                    self._down_until = time.monotonic() + trigger.outage
                self._drop(pair)
                self.fired.set()
                return
            if trigger is not None:  # after: Redis runs it, no reply gets back
                with self._lock:
                    self._down_until = time.monotonic() + trigger.outage
                    for other in self._by_id.values():
                        other.doomed = True
            try:
                pair.server.sendall(data)
            except OSError:
                self._drop(pair)
                return

    def _downstream(self, pair: _Pair) -> None:
        while True:
            try:
                data = pair.server.recv(65536)
            except OSError:
                data = b""
            if not data:
                self._drop(pair)
                return
            if pair.doomed:
                self._cut_all()
                return
            try:
                pair.client.sendall(data)
            except OSError:
                self._drop(pair)
                return

    def _drop(self, pair: _Pair) -> None:
        with self._lock:
            self._by_id.pop(id(pair), None)
        pair.close()

    def _cut_all(self, outage: float | None = None) -> None:
        with self._lock:
            if outage is not None:
                self._down_until = time.monotonic() + outage
            pairs, self._by_id = list(self._by_id.values()), {}
        for pair in pairs:
            pair.close()
        if pairs or outage is not None:
            self.fired.set()
