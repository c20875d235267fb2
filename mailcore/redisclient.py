"""Every Redis client of the service, with its timeouts decided here, once per use.

A use is what the client is for, and it decides how long a caller may wait: a request at the
door fails fast, a worker may wait longer than a request would, a Pub/Sub subscription waits for
messages without end and detects a dead connection with health checks instead. Dramatiq's broker
makes its own client (``workers/broker.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import redis
import redis.asyncio as aioredis

Use = Literal["ingress", "admin", "worker", "store", "pubsub", "metrics"]


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
#: Redis event listener; ``metrics`` a Prometheus scrape.
TIMEOUTS: dict[Use, Timeouts] = {
    "ingress": Timeouts(command=5, connect=2),
    "admin": Timeouts(command=10, connect=2),
    "worker": Timeouts(command=10, connect=10),
    "store": Timeouts(command=5, connect=5, health_check=30),
    "pubsub": Timeouts(command=None, connect=2, health_check=10),
    "metrics": Timeouts(command=2, connect=2),
}


def _options(use: Use) -> dict[str, Any]:
    timeouts = TIMEOUTS[use]
    return {"socket_timeout": timeouts.command, "socket_connect_timeout": timeouts.connect,
            "health_check_interval": timeouts.health_check}


def sync_client(url: str, use: Use, *, single_connection: bool = False) -> redis.Redis:
    """A synchronous client for ``use``; ``single_connection`` for one thread's own connection
    (no pool checkout per command)."""
    client: redis.Redis = redis.Redis.from_url(url, single_connection_client=single_connection,
                                               **_options(use))
    return client


def async_client(url: str, use: Use) -> aioredis.Redis:
    """An asyncio client for ``use``."""
    client: aioredis.Redis = aioredis.Redis.from_url(url, **_options(use))
    return client
