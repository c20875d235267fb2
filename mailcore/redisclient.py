"""Every Redis client of the service, with its timeouts decided here, once per use.

A use is what the client is for, and it decides how long a caller may wait: a request at the
door fails fast, a worker may wait longer than a request would, a Pub/Sub subscription waits for
messages without end and detects a dead connection with health checks instead. Dramatiq's broker
makes its own client from a URL (``workers/broker.py``); behind Sentinel it gets one from here.

Where Redis is: a URL, or the Sentinel set whose primary every client follows
(:mod:`mailcore.sentinel_client`), as ``settings.redis.where`` says.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import redis
import redis.asyncio as aioredis
from redis._parsers.base import BaseParser

from .resp import OnePassPacker, use_in_async
from .sentinel import SentinelSettings
from .sentinel_client import async_sentinel_pool, sentinel_pool

Use = Literal["ingress", "admin", "worker", "store", "pubsub", "metrics", "broker"]
#: A ``redis://`` (``rediss://``, ``unix://``) URL, or a Sentinel set.
Where = str | SentinelSettings


class NoReplicasError(redis.ConnectionError):
    """The primary refused a write: fewer replicas than its ``min-replicas-to-write`` are in
    sync. Nothing was written, so it is what an unreachable Redis is: waited out by a worker,
    503 at the door."""


# redis-py maps an error's first word to its exception; NOREPLICAS has no entry (a plain
# ResponseError, which the workers would take for a failed attempt, not a brief refusal).
BaseParser.EXCEPTION_CLASSES.setdefault("NOREPLICAS", NoReplicasError)


@dataclass(frozen=True)
class Timeouts:
    """How long a client waits.

    Parameters:
      command: seconds a command may take; ``None`` for a subscription that waits for messages.
      connect: seconds to connect.
      health_check: seconds idle after which the next command is preceded by a PING (0: never).
    """

    command: float | None
    connect: float
    health_check: int = 0


#: Per use: ``ingress`` the door's sends (a request must not hang on Redis); ``admin`` dead
#: letters and publishing from the API or the command line; ``worker`` the workers' status
#: writes and the sweeper; ``store`` the template store's readers and writers; ``pubsub`` the
#: Redis event listener; ``metrics`` a Prometheus scrape; ``broker`` Dramatiq's broker behind
#: Sentinel (with a URL Dramatiq makes its own client: no command timeout, as here).
TIMEOUTS: dict[Use, Timeouts] = {
    "ingress": Timeouts(command=5, connect=2),
    "admin": Timeouts(command=10, connect=2),
    "worker": Timeouts(command=10, connect=10),
    "store": Timeouts(command=5, connect=5, health_check=30),
    "pubsub": Timeouts(command=None, connect=2, health_check=10),
    "metrics": Timeouts(command=2, connect=2),
    "broker": Timeouts(command=None, connect=5),
}


class SentinelRedis(redis.Redis):
    """A client of the primary behind Sentinel that also closes its connections to the
    sentinels."""

    def close(self) -> None:
        super().close()
        sentinel = getattr(self.connection_pool, "sentinel_manager", None)
        for client in getattr(sentinel, "sentinels", ()):
            client.close()


class AsyncSentinelRedis(aioredis.Redis):
    """The asyncio client of the primary that also closes its connections to the sentinels."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        sentinel = getattr(self.connection_pool, "sentinel_manager", None)
        for client in getattr(sentinel, "sentinels", ()):
            await client.aclose()


def _options(use: Use) -> dict[str, Any]:
    timeouts = TIMEOUTS[use]
    return {"socket_timeout": timeouts.command, "socket_connect_timeout": timeouts.connect,
            "health_check_interval": timeouts.health_check}


#: Packs every synchronous client's commands (mailcore/resp.py: one pass, same bytes).
_PACKER = OnePassPacker()


def sync_client(where: Where, use: Use, *, single_connection: bool = False) -> redis.Redis:
    """A synchronous client for ``use``; ``single_connection`` for one thread's own connection
    (no pool checkout per command)."""
    options = {**_options(use), "command_packer": _PACKER}
    if isinstance(where, SentinelSettings):
        sentinel = SentinelRedis(connection_pool=sentinel_pool(where, **options),
                                 single_connection_client=single_connection)
        sentinel.auto_close_connection_pool = True  # the pool is this client's alone
        return sentinel
    client: redis.Redis = redis.Redis.from_url(where, single_connection_client=single_connection,
                                               **options)
    return client


def async_client(where: Where, use: Use) -> aioredis.Redis:
    """An asyncio client for ``use``."""
    if isinstance(where, SentinelSettings):
        sentinel = AsyncSentinelRedis(connection_pool=async_sentinel_pool(where, **_options(use)))
        sentinel.auto_close_connection_pool = True
        use_in_async(sentinel)
        return sentinel
    client: aioredis.Redis = aioredis.Redis.from_url(where, **_options(use))
    use_in_async(client)
    return client
