"""Clients that follow the primary of a Redis behind Sentinel.

With ``REDIS_SENTINELS`` set, no process talks to a fixed Redis address: each client asks the
sentinels which node is the primary of ``REDIS_SENTINEL_MASTER`` and asks again whenever it
(re)connects or the node it reaches answers ``READONLY`` (a demoted primary). Closing a client
also closes its connections to the sentinels. :func:`redis_client` and
:func:`async_redis_client` are what every component calls: a URL's client, or these.
"""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio as aioredis
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


class _SentinelRedis(redis.Redis):
    """A client of the primary that also closes its connections to the sentinels."""

    def close(self) -> None:
        super().close()
        sentinel = getattr(self.connection_pool, "sentinel_manager", None)
        for client in getattr(sentinel, "sentinels", ()):
            client.close()


class _AsyncSentinelRedis(aioredis.Redis):
    """The asyncio client of the primary that also closes its connections to the sentinels."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        sentinel = getattr(self.connection_pool, "sentinel_manager", None)
        for client in getattr(sentinel, "sentinels", ()):
            await client.aclose()


def primary_client(settings: SentinelSettings, **options: Any) -> redis.Redis:
    """A sync client of the current primary; ``options`` as for ``redis.Redis`` (timeouts,
    ``single_connection_client``, ``health_check_interval``…)."""
    single = bool(options.pop("single_connection_client", False))
    kwargs = _sentinel_options(settings, options)
    sentinel = Sentinel(list(settings.sentinels), sentinel_kwargs=kwargs)  # type: ignore[no-untyped-call]
    pool = SentinelConnectionPool(  # type: ignore[no-untyped-call]
        settings.master, sentinel, is_master=True, password=settings.password, db=settings.db,
        connection_class=_FollowingConnection, **options)
    client = _SentinelRedis(connection_pool=pool, single_connection_client=single)
    client.auto_close_connection_pool = True  # the pool is this client's alone
    return client


def async_primary_client(settings: SentinelSettings, **options: Any) -> aioredis.Redis:
    """An asyncio client of the current primary (``options`` as for ``redis.asyncio.Redis``)."""
    single = bool(options.pop("single_connection_client", False))
    kwargs = _sentinel_options(settings, options)
    sentinel = AsyncSentinel(list(settings.sentinels), sentinel_kwargs=kwargs)  # type: ignore[no-untyped-call]
    pool = AsyncSentinelConnectionPool(  # type: ignore[no-untyped-call]
        settings.master, sentinel, is_master=True, password=settings.password, db=settings.db,
        connection_class=_AsyncFollowingConnection, **options)
    client = _AsyncSentinelRedis(connection_pool=pool, single_connection_client=single)
    client.auto_close_connection_pool = True
    return client


def redis_client(url: str, sentinel: SentinelSettings | None, **options: Any) -> redis.Redis:
    """A sync client of ``url``, or of the primary behind ``sentinel`` when it is set."""
    if sentinel is not None:
        return primary_client(sentinel, **options)
    return redis.Redis.from_url(url, **options)


def async_redis_client(url: str, sentinel: SentinelSettings | None,
                       **options: Any) -> aioredis.Redis:
    """:func:`redis_client` for asyncio."""
    if sentinel is not None:
        return async_primary_client(sentinel, **options)
    return aioredis.Redis.from_url(url, **options)
