"""Commands packed into the Redis protocol (RESP) in one pass, for every client of the service.

redis-py's pure-Python packer grows one buffer argument by argument (each step copies it) and
calls a general encoder per argument; our scripts take 20-40 arguments, and packing them cost a
worker 5-8 % of its CPU and the door ~4 % (issue 18's profiles). This packer writes the same
bytes (``tests/test_resp.py`` compares them) in one join: the common types (``str``, ``bytes``)
inline, anything else through redis-py's own encoder, so every type is accepted or refused
exactly as before. hiredis would pack in C, but installing it also swaps redis-py's reply
parser, which crashed the Pub/Sub listener here before (bench/README.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis._parsers.encoders import Encoder
from redis.asyncio.connection import AbstractConnection as AsyncConnection

Encode = Callable[[Any], bytes | memoryview]


def pack(encode: Encode, encoding: str, errors: str, args: tuple[Any, ...]) -> list[bytes]:
    """``args`` as one RESP array of bulk strings, in a list of one chunk."""
    command = args[0]
    # A command name may carry literal arguments ("CONFIG GET"), sent as separate words.
    if isinstance(command, str):
        args = (*command.encode().split(), *args[1:])
    elif b" " in command:
        args = (*command.split(), *args[1:])
    parts = [b"*%d\r\n" % len(args)]
    append = parts.append
    for arg in args:
        kind = type(arg)
        if kind is str:
            arg = arg.encode(encoding, errors)
        elif kind is not bytes:
            arg = encode(arg)  # numbers, memoryviews; refuses what redis-py refuses
        append(b"$%d\r\n%b\r\n" % (len(arg), arg))
    return [b"".join(parts)]


class OnePassPacker:
    """redis-py's ``command_packer`` interface for the synchronous client's connections (a
    connection keyword, ``command_packer``: mailcore/redisclient.py passes it)."""

    def __init__(self, encoding: str = "utf-8", errors: str = "strict") -> None:
        self.encoding = encoding
        self.errors = errors
        self._encode: Encode = Encoder(encoding, errors, False).encode  # type: ignore[no-untyped-call]

    def pack(self, *args: Any) -> list[bytes]:
        return pack(self._encode, self.encoding, self.errors, args)


class _OnePassMixin:
    """Overrides the asyncio connection's packer (it has no ``command_packer`` hook)."""

    encoder: Any

    def pack_command(self, *args: Any) -> list[bytes]:
        encoder = self.encoder
        return pack(encoder.encode, encoder.encoding, encoder.encoding_errors, args)


_ASYNC_CLASSES: dict[type[AsyncConnection], type[AsyncConnection]] = {}


def use_in_async(client: aioredis.Redis) -> aioredis.Redis:
    """The same for an asyncio client: its pool makes connections of a subclass of the class
    it chose (TCP, TLS, Unix socket, Sentinel-managed) with the one-pass packer."""
    pool = client.connection_pool
    base: type[AsyncConnection] = pool.connection_class
    if not issubclass(base, _OnePassMixin):
        packed = _ASYNC_CLASSES.get(base)
        if packed is None:
            packed = _ASYNC_CLASSES[base] = type(base.__name__, (_OnePassMixin, base), {})
        pool.connection_class = packed
    return client
