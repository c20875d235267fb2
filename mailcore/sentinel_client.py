"""Connections that follow the primary of a Redis behind Sentinel.

With ``REDIS_SENTINELS`` set, no process talks to a fixed Redis address: each connection asks
the sentinels which node is the primary of ``REDIS_SENTINEL_MASTER``, and asks again whenever it
(re)connects or the node it reaches answers ``READONLY`` (a demoted primary). The clients are
made by :mod:`mailcore.redisclient`, like every other client, from the pools made here.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.asyncio.sentinel import SentinelConnectionPool as AsyncSentinelConnectionPool
from redis.asyncio.sentinel import SentinelManagedConnection as AsyncSentinelManagedConnection
from redis.sentinel import Sentinel, SentinelConnectionPool, SentinelManagedConnection

from .sentinel import SentinelSettings


def _sentinel_options(settings: SentinelSettings, options: dict[str, Any]) -> dict[str, Any]:
    # Sentinels get the same socket timeouts as the data connections, and their own password.
    sentinel_kwargs = {k: v for k, v in options.items() if k.startswith("socket_")}
    if settings.sentinel_password:
        sentinel_kwargs["password"] = settings.sentinel_password
    return sentinel_kwargs


class _FollowingConnection(SentinelManagedConnection):
    """A connection that asks the sentinels for the primary each time it (re)connects.

    redis-py's own resolves the primary only when a pool hands the connection out; a command
    that reconnects by itself (a retry, or a ``single_connection_client``) went back to the
    address it had, the dead primary, for ever.
    """

    def connect_check_health(self, check_health: bool = True,
                             retry_socket_connect: bool = True) -> None:
        if not self._sock and self.connection_pool.is_master:
            self.host, self.port = self.connection_pool.get_master_address()
        super().connect_check_health(check_health, retry_socket_connect)


class _AsyncFollowingConnection(AsyncSentinelManagedConnection):
    """:class:`_FollowingConnection` for asyncio."""

    async def connect_check_health(self, check_health: bool = True,
                                   retry_socket_connect: bool = True) -> None:
        if not self.is_connected and self.connection_pool.is_master:
            self.host, self.port = await self.connection_pool.get_master_address()
        await super().connect_check_health(check_health, retry_socket_connect)


def sentinel_pool(settings: SentinelSettings, **options: Any) -> SentinelConnectionPool:
    """A pool of connections to the current primary; ``options`` as for ``redis.Redis``'s
    connections (timeouts, health checks)."""
    kwargs = _sentinel_options(settings, options)
    sentinel = Sentinel(list(settings.sentinels), sentinel_kwargs=kwargs)  # type: ignore[no-untyped-call]
    return SentinelConnectionPool(  # type: ignore[no-untyped-call]
        settings.master, sentinel, is_master=True, password=settings.password, db=settings.db,
        connection_class=_FollowingConnection, **options)


def async_sentinel_pool(settings: SentinelSettings,
                        **options: Any) -> AsyncSentinelConnectionPool:
    """:func:`sentinel_pool` for asyncio."""
    kwargs = _sentinel_options(settings, options)
    sentinel = AsyncSentinel(list(settings.sentinels), sentinel_kwargs=kwargs)  # type: ignore[no-untyped-call]
    return AsyncSentinelConnectionPool(  # type: ignore[no-untyped-call]
        settings.master, sentinel, is_master=True, password=settings.password, db=settings.db,
        connection_class=_AsyncFollowingConnection, **options)
