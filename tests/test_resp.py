"""The one-pass RESP packer writes exactly what redis-py's packers write, refuses what they
refuse, and every client of the service uses it against a real redis-server."""

from __future__ import annotations

import asyncio
import enum
from typing import Any

import pytest
import redis
from redis._parsers.encoders import Encoder
from redis.asyncio.connection import Connection as AsyncConnection
from redis.connection import PythonRespSerializer
from redis.exceptions import DataError

from mailcore.redisclient import async_client, sync_client
from mailcore.resp import OnePassPacker

from .support import RedisServer


class Level(enum.IntEnum):
    HIGH = 3


#: Argument lists of every shape a command can take: types, encodings, sizes, spaces in the
#: command name (``CONFIG GET``), bytes command names, buffers past redis-py's 6,000-byte cutoff.
SHAPES: list[tuple[Any, ...]] = [
    ("PING",),
    ("SET", "k", "v"),
    ("CONFIG GET", "maxmemory"),
    (b"CONFIG GET", b"maxmemory"),
    (b"GET", b"k"),
    ("SET", "clé", "straße ✉ 😀"),
    ("SET", b"k", b"\x00\xff\r\n$*"),
    ("SET", "k", memoryview(b"view bytes")), ("SET", "k", bytearray(b"array\r\n")),
    ("INCRBY", "k", 0), ("INCRBY", "k", -17), ("INCRBY", "k", 2**70),
    ("SET", "k", 1.5), ("SET", "k", -0.0), ("SET", "k", 1e300), ("SET", "k", float("inf")),
    ("SET", "k", Level.HIGH),  # an int subclass: redis-py's repr, whatever it is
    ("SET", "k", ""), ("SET", "k", b""),
    ("SET", "k", "x" * 6_001), ("SET", "k", b"y" * 100_000), ("SET", "k", "z" * 1_000_000),
    ("EVALSHA", "a" * 40, 3, *(f"key:{i}" for i in range(3)), *range(40), "tail"),
    ("MSET", *(f"k{i}" if i % 2 else "v" * 5_000 for i in range(12))),
]


def _redis_py_packer() -> Any:
    return PythonRespSerializer(6000, Encoder("utf-8", "strict", False).encode)  # type: ignore[no-untyped-call]


def _redis_py_sync(args: tuple[Any, ...]) -> bytes:
    return b"".join(bytes(chunk) for chunk in _redis_py_packer().pack(*args))


def _redis_py_async(args: tuple[Any, ...]) -> bytes:
    return b"".join(bytes(chunk) for chunk in AsyncConnection().pack_command(*args))


@pytest.mark.parametrize("args", SHAPES, ids=range(len(SHAPES)))
def test_the_bytes_are_redis_pys(args: tuple[Any, ...]) -> None:
    ours = OnePassPacker().pack(*args)
    assert len(ours) == 1  # one chunk: one write, however large the arguments
    assert ours[0] == _redis_py_sync(args) == _redis_py_async(args)


@pytest.mark.parametrize("value", [True, False, None, {"a": 1}, ["a"], ("a",), object(),
                                   {b"a"}, 1j])
def test_what_redis_py_refuses_is_refused(value: Any) -> None:
    with pytest.raises(DataError):
        _redis_py_packer().pack("SET", "k", value)
    with pytest.raises(DataError):
        OnePassPacker().pack("SET", "k", value)


def test_unencodable_text_fails_as_before() -> None:
    lone_surrogate = "\udc80"
    with pytest.raises(UnicodeEncodeError):
        _redis_py_sync(("SET", "k", lone_surrogate))
    with pytest.raises(UnicodeEncodeError):
        OnePassPacker().pack("SET", "k", lone_surrogate)


VALUES: list[str | bytes] = ["straße ✉ 😀", b"\x00\xff\r\n$*", "x" * 1_000_000, "", "1.5"]


def test_sync_clients_round_trip_through_redis(redis_server: RedisServer) -> None:
    with sync_client(redis_server.url, "worker", single_connection=True) as client:
        assert client.connection is not None
        assert isinstance(client.connection._command_packer, OnePassPacker)
        for i, value in enumerate(VALUES):
            client.set(f"resp:sync:{i}", value)
            stored = client.get(f"resp:sync:{i}")
            assert stored == (value.encode() if isinstance(value, str) else value)
        script = client.register_script("return {#KEYS, #ARGV, ARGV[#ARGV]}")
        assert script(keys=["a", "b"], args=[*range(50), "последний"]) == [
            2, 51, "последний".encode()]
        with client.pipeline(transaction=True) as pipe:
            pipe.incrby("resp:sync:n", 2**40).incrbyfloat("resp:sync:f", 0.25)
            assert pipe.execute() == [2**40, 0.25]
        client.delete(*(f"resp:sync:{i}" for i in range(len(VALUES))), "resp:sync:n",
                      "resp:sync:f")


def test_async_clients_round_trip_through_redis(redis_server: RedisServer) -> None:
    async def main() -> None:
        client = async_client(redis_server.url, "ingress")
        try:
            for i, value in enumerate(VALUES):
                await client.set(f"resp:async:{i}", value)
                stored = await client.get(f"resp:async:{i}")
                assert stored == (value.encode() if isinstance(value, str) else value)
            async with client.pipeline(transaction=False) as pipe:
                pipe.set("resp:async:x", "ünï")
                pipe.get("resp:async:x")
                assert await pipe.execute() == [True, "ünï".encode()]
            pool: Any = client.connection_pool
            connection = await pool.get_connection()
            try:
                assert connection.pack_command("SET", "k", "v") == [
                    b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n"]
            finally:
                await pool.release(connection)
            await client.delete(*(f"resp:async:{i}" for i in range(len(VALUES))),
                                "resp:async:x")
        finally:
            await client.aclose()

    asyncio.run(main())


def test_a_sync_client_refuses_a_bad_argument_before_writing(redis_server: RedisServer) -> None:
    with sync_client(redis_server.url, "worker", single_connection=True) as client:
        with pytest.raises(DataError):
            client.set("resp:bad", True)
        assert client.ping()  # nothing half-written on the connection
        assert client.exists("resp:bad") == 0
        assert isinstance(client, redis.Redis)
