"""Ports for the servers a test or a benchmark run starts."""

from __future__ import annotations

import random
import socket
from pathlib import Path

_HANDED_OUT: set[int] = set()


def _below_ephemeral_range() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0]) - 1
    except (OSError, ValueError, IndexError):
        return 32767


def free_port() -> int:
    """A free port below the kernel's ephemeral range: one handed out for binding to port 0 may
    be reused by an outgoing connection before the server we start binds it. A port is handed
    out once per process, so two servers started side by side never get the same one."""
    high = _below_ephemeral_range()
    for _ in range(200):
        port = random.randint(max(1024, high - 12000), high)  # noqa: S311 - not a secret
        if port in _HANDED_OUT:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            _HANDED_OUT.add(port)
            return port
    raise RuntimeError("no free port below the ephemeral range")
