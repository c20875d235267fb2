"""Group commit at the door: concurrent accepts of one ingress process share Redis round trips.

A request's accept script call (mailcore/queue.py) is handed to :class:`AcceptCoalescer` instead of
being sent on its own. When no flush is in flight it is sent at once by its own task, as the plain
script call (a lone request after idle waits for no timer and no task hop); the requests that
arrive while a flush is in flight are sent together, in arrival order, as the next flush: one
pipeline of ``EVALSHA`` calls, one write and one read. Each call is its own script run, so each
request stays atomic (all or nothing, a batch too) and is decided exactly as when sent alone —
caller and recipient limits, idempotency, queue ceiling, suppression, schedule — in arrival order;
one request's refusal or script error is its own. A connection error fails every request of that
flush with the same error (503, as for a single request), and each request was either written whole
or not at all. With ``REDIS_WAIT_REPLICAS`` the flush ends with one ``WAIT`` on the same
connection, which covers every write before it.

Why a pipeline rather than one script over all the requests: the same per-request script is
the unit of atomicity and of every rule, unchanged; the pipeline saves the round trip (the
measured cost, bench/README.md) while a combined script would duplicate the accept logic.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError

from mailcore.queue import WRITTEN, ReplicationTimeout

#: The most requests in one flush (the rest go in the next, at once).
MAX_FLUSH = 128


@dataclass
class _Pending:
    keys: list[str]
    args: list[Any]
    #: Where its reply goes (None: its caller flushes it itself).
    future: asyncio.Future[Any] | None = field(default=None, repr=False)


class AcceptCoalescer:
    """Runs accept scripts for concurrent requests in shared round trips.

    Parameters:
      client: the asyncio Redis client.
      script: the registered accept script (``Acceptor.script``).
      wait_replicas: replicas that must confirm each flush (Redis ``WAIT``); 0: none.
      wait_timeout_ms: how long to wait for them before :class:`ReplicationTimeout`.
    """

    def __init__(self, client: aioredis.Redis, script: AsyncScript, *, wait_replicas: int = 0,
                 wait_timeout_ms: int = 100) -> None:
        self.client = client
        self.script = script
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms
        self._pending: list[_Pending] = []
        self._flusher: asyncio.Task[None] | None = None
        #: A lone request is being flushed by its own caller.
        self._alone = False
        self._loop: asyncio.AbstractEventLoop | None = None
        #: How many flushes ran and how many requests they carried (tests, metrics).
        self.flushes = 0
        self.flushed = 0

    async def run(self, keys: list[str], args: list[Any]) -> Any:
        """The accept script's reply for ``keys`` and ``args``, sent with whatever else is
        waiting; raises what the script call would raise alone."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # first use, or a new event loop: nothing of the old one
            self._loop, self._pending, self._flusher, self._alone = loop, [], None, False
        if self.idle:
            # Nothing in flight: this request is sent at once, from its own task (no timer, no
            # hop); requests arriving meanwhile wait for it and then go together.
            self._alone = True
            try:
                [reply] = await self._flush([_Pending(keys, args)])
            finally:
                self._alone = False
                self._start_drain()
            if isinstance(reply, BaseException):
                raise reply
            return reply
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append(_Pending(keys, args, future))
        if not self._alone:
            self._start_drain()
        return await future

    @property
    def idle(self) -> bool:
        """Whether nothing is waiting and no flush is in flight."""
        return self._flusher is None and not self._alone and not self._pending

    def _start_drain(self) -> None:
        if self._pending and self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending[:MAX_FLUSH], self._pending[MAX_FLUSH:]
                try:
                    replies = await self._flush(batch)
                except Exception as exc:  # the whole flush failed: every request with it
                    for item in batch:
                        _settle(item.future, exc)
                    continue
                for item, reply in zip(batch, replies, strict=True):
                    _settle(item.future, reply)
        except BaseException as exc:  # cancelled (shutdown): nobody may wait forever
            failure = RedisConnectionError(f"the accept flush was interrupted: {exc!r}")
            for item in self._pending:
                _settle(item.future, failure)
            self._pending = []
            raise
        finally:
            self._flusher = None

    async def _flush(self, batch: Sequence[_Pending]) -> list[Any]:
        """One pipeline for ``batch``: each request's reply, or the error that is its own."""
        self.flushes += 1
        self.flushed += len(batch)
        if len(batch) == 1 and not self.wait_replicas:
            # Alone: the plain script call (no pipeline to build), exactly as uncoalesced.
            try:
                return [await self.script(keys=batch[0].keys, args=batch[0].args)]
            except ResponseError as exc:  # the script's own error: the request's, as below
                return [exc]
        replies, replicas = await self._send(batch)
        missing = [index for index, reply in enumerate(replies)
                   if isinstance(reply, NoScriptError)]
        if missing:  # Redis restarted or flushed its scripts: none of these ran; again
            self.script.sha = await self.client.script_load(self.script.script)
            again, confirmed = await self._send([batch[index] for index in missing])
            replicas = min(replicas, confirmed)
            for index, reply in zip(missing, again, strict=True):
                replies[index] = reply
        if self.wait_replicas and replicas < self.wait_replicas:
            # One error each: an exception raised in several tasks would share a traceback.
            replies = [ReplicationTimeout.shortfall(replicas, self.wait_replicas,
                                                    self.wait_timeout_ms)
                       if isinstance(reply, list) and reply and reply[0] in WRITTEN else reply
                       for reply in replies]
        return replies

    async def _send(self, batch: Sequence[_Pending]) -> tuple[list[Any], int]:
        async with self.client.pipeline(transaction=False) as pipe:
            for item in batch:
                pipe.execute_command("EVALSHA", self.script.sha, len(item.keys),
                                     *item.keys, *item.args)
            if self.wait_replicas:
                pipe.execute_command("WAIT", self.wait_replicas, self.wait_timeout_ms)
            replies = await pipe.execute(raise_on_error=False)
        if not self.wait_replicas:
            return list(replies), 0
        if isinstance(replies[-1], Exception):  # WAIT refused: nothing is confirmed
            raise replies[-1]
        return list(replies[:-1]), int(replies[-1])


def _settle(future: asyncio.Future[Any] | None, outcome: Any) -> None:
    if future is None or future.done():  # its request was cancelled (client gone): the write stands
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
