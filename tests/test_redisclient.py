"""One Redis client factory: each use's timeouts, against a real redis-server."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import redis

from mailcore import redisclient
from mailcore.redisclient import TIMEOUTS, async_client, sync_client

from .support import REPO, RedisServer


@pytest.mark.parametrize("use", list(TIMEOUTS))
def test_each_use_connects_with_its_timeouts(redis_server: RedisServer, use: redisclient.Use
                                             ) -> None:
    with sync_client(redis_server.url, use) as client:
        assert client.ping()
        options = client.connection_pool.connection_kwargs
        assert options["socket_timeout"] == TIMEOUTS[use].command
        assert options["socket_connect_timeout"] == TIMEOUTS[use].connect
        assert options["health_check_interval"] == TIMEOUTS[use].health_check


def test_the_subscription_waits_without_a_command_timeout(redis_server: RedisServer) -> None:
    assert TIMEOUTS["pubsub"].command is None and TIMEOUTS["pubsub"].health_check > 0

    async def main() -> None:
        client = async_client(redis_server.url, "pubsub")
        try:
            assert await client.ping()
            assert client.connection_pool.connection_kwargs["socket_timeout"] is None
        finally:
            await client.aclose()

    asyncio.run(main())


def test_a_thread_connection_is_its_own(redis_server: RedisServer) -> None:
    client = sync_client(redis_server.url, "worker", single_connection=True)
    try:
        assert client.connection is not None and client.ping()
    finally:
        client.close()


def test_no_other_module_builds_a_redis_client() -> None:
    # Dramatiq's broker makes its own (workers/broker.py); the factory is the only other place.
    for package in ("mailcore", "service", "workers", "email_service", "operator"):
        for module in (REPO / package).rglob("*.py"):
            if module == Path(redisclient.__file__):
                continue
            text = module.read_text()
            assert "Redis.from_url" not in text and "Redis(" not in text, module


def test_a_write_refused_for_want_of_replicas_counts_as_redis_unavailable(tmp_path: Path
                                                                           ) -> None:
    """``min-replicas-to-write`` without a replica: every write, in a script too, is refused
    with NOREPLICAS, which the service treats as an unreachable Redis (nothing was written)."""
    server = RedisServer(tmp_path / "redis", persistent=False,
                         extra=("--min-replicas-to-write", "1")).start()
    try:
        with sync_client(server.url, "admin") as client:
            assert client.get("k") is None  # reads are served
            with pytest.raises(redisclient.NoReplicasError):
                client.set("k", "v")
            script = client.register_script("return redis.call('SET', KEYS[1], 'v')")
            with pytest.raises(redis.ConnectionError, match="Not enough good replicas"):
                script(keys=["k"])

        async def main() -> None:
            client = async_client(server.url, "ingress")
            try:
                with pytest.raises(redisclient.NoReplicasError):
                    await client.set("k", "v")
            finally:
                await client.aclose()

        asyncio.run(main())
    finally:
        server.stop()
