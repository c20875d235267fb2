"""Group commit in the workers: the threads of a process share status round trips.

Each worker thread's status steps (``StatusStore.begin_attempt``, ``settle``) are script calls
handed to :class:`GroupCommitter` (leader/follower, the threaded twin of the door's
``service/coalescer.py``). A thread that finds nothing in flight sends its call at once, as the
plain script call: a lone call waits for no timer and no other thread. Threads arriving while a
call is in flight queue theirs; when it returns, the thread that sent it elects the oldest
waiting thread, which sends everything queued (at most :data:`MAX_FLUSH`) as one pipeline of the
same ``EVALSHA`` calls (``transaction=False``): one write, one read. Each call is its own script
run, decided exactly as alone, in arrival order; its reply or its script error is its caller's
alone. A ``NOSCRIPT`` reply (Redis restarted, script cache flushed) means that call did not run:
the script is loaded and those calls are sent again.

A connection error or timeout fails every call of that flush with the error a single call would
raise (each caller raises its own copy), so the actor's "Redis unreachable" handling is unchanged.
The worker's client makes no command retry (``mailcore.redisclient``), so a flush whose reply
was lost is never sent again behind the callers' backs; the actor's own retry runs the step
again later, which the status scripts are written for (``mailcore/status.py``).

No thread waits on a thread that is gone: whoever sends a flush hands the turn on in a
``finally`` (its own exception included, an interrupt from Dramatiq's time limit too), and a
thread elected to send does so even when an exception is on its way through it.
"""

from __future__ import annotations

import copy
import threading
from collections import deque
from collections.abc import Sequence
from typing import Any

import redis
from redis.commands.core import Script
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError

#: The most calls in one flush (the rest go in the next, at once).
MAX_FLUSH = 128


class _Call:
    """One script call waiting for its turn; its thread blocks on ``wake``."""

    __slots__ = ("args", "batch", "error", "keys", "reply", "script", "wake")

    def __init__(self, script: Script, keys: Sequence[Any], args: Sequence[Any]) -> None:
        self.script = script
        self.keys = keys
        self.args = args
        self.wake = threading.Lock()
        self.wake.acquire()  # released by whoever has this call's outcome (or elects it)
        self.reply: Any = None
        self.error: BaseException | None = None
        #: Set when this call's thread is elected to send the next flush (it is ``batch[0]``).
        self.batch: list[_Call] | None = None


class GroupCommitter:
    """Runs script calls of many threads in shared round trips on one client.

    Only one thread at a time sends (a lone call or a flush), so the client needs no more than
    its own connection plus the one its pipelines take from its pool.

    Parameters:
      client: the synchronous Redis client the scripts are registered on.
      max_flush: the most calls in one flush.
    """

    def __init__(self, client: redis.Redis, *, max_flush: int = MAX_FLUSH) -> None:
        self.client = client
        self.max_flush = max_flush
        self._lock = threading.Lock()
        #: A call or flush is in flight, or a thread was elected to send the next one.
        #: Invariant: nothing is queued while this is false.
        self._busy = False
        self._queue: deque[_Call] = deque()
        #: Round trips of script calls sent (lone calls included) and the calls they carried
        #: (tests, bench): ``calls / flushes`` is the mean flush size.
        self.flushes = 0
        self.calls = 0

    @property
    def busy(self) -> bool:
        """Whether a call or flush is in flight (or about to be sent)."""
        return self._busy

    @property
    def waiting(self) -> int:
        """Calls queued for the next flush."""
        return len(self._queue)

    def register(self, script: str) -> Script:
        """``script`` registered on this committer's client, for :meth:`run`."""
        return self.client.register_script(script)

    def run(self, script: Script, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """``script``'s reply for ``keys`` and ``args``, sent with whatever else is waiting;
        raises what the script call would raise alone."""
        call: _Call | None = None
        alone = woken = False
        # One try from the first step: an exception arriving anywhere (Dramatiq's time limit
        # is raised asynchronously in the thread) still hands the turn on, takes a queued call
        # back, or sends the flush this thread was elected to send.
        try:
            with self._lock:
                if self._busy:
                    call = _Call(script, keys, args)
                    self._queue.append(call)
                else:
                    self._busy = alone = True
            if alone:
                # Nothing in flight: this thread sends its own call now, as the plain call.
                self.flushes += 1
                self.calls += 1
                return script(keys=keys, args=args)
            assert call is not None
            call.wake.acquire()
            woken = True
        finally:
            if alone:
                self._hand_on()
            elif call is not None:
                if not woken:  # interrupted while queued: take the call back if still there
                    self._withdraw(call)
                if call.batch is not None:  # elected: this thread sends, whatever is under way
                    self._lead(call.batch)
        if call.error is not None:
            raise call.error
        return call.reply

    def _withdraw(self, call: _Call) -> None:
        with self._lock:
            if call in self._queue:
                self._queue.remove(call)

    def _hand_on(self) -> None:
        """The turn is over: elect the oldest waiting thread to send what is queued, or idle."""
        with self._lock:
            if not self._queue:
                self._busy = False
                return
            batch = [self._queue.popleft()
                     for _ in range(min(len(self._queue), self.max_flush))]
            batch[0].batch = batch
        batch[0].wake.release()

    def _lead(self, batch: list[_Call]) -> None:
        """Send ``batch`` and hand each call its outcome; the turn passes on in every case."""
        outcomes: list[Any] | None = None
        failure: BaseException | None = None
        try:
            outcomes = self._flush(batch)
        except Exception as exc:  # the whole flush failed: every call with it, as alone
            failure = exc
        except BaseException as exc:  # interrupted (time limit, shutdown): nobody may wait on
            failure = exc
            raise
        finally:
            self._hand_on()
            for index, call in enumerate(batch):
                if outcomes is not None:
                    outcome = outcomes[index]
                    if isinstance(outcome, BaseException):
                        call.error = outcome
                    else:
                        call.reply = outcome
                elif index == 0:
                    call.error = failure  # the leader's own call: the error itself
                else:
                    call.error = _twin(failure)
                if index:
                    call.wake.release()

    def _flush(self, batch: Sequence[_Call]) -> list[Any]:
        """One round trip for ``batch``: each call's reply, or the script error that is its
        own; raises when the round trip itself fails."""
        self.flushes += 1
        self.calls += len(batch)
        if len(batch) == 1:  # alone after all: the plain script call, no pipeline to build
            call = batch[0]
            try:
                return [call.script(keys=call.keys, args=call.args)]
            except ResponseError as exc:
                return [exc]
        replies = self._send(batch)
        missing = [index for index, reply in enumerate(replies)
                   if isinstance(reply, NoScriptError)]
        if missing:  # Redis restarted or flushed its scripts: none of these ran; again
            for script in {id(batch[index].script): batch[index].script
                           for index in missing}.values():
                script.sha = self.client.script_load(script.script)
            again = self._send([batch[index] for index in missing])
            for index, reply in zip(missing, again, strict=True):
                replies[index] = reply
        return replies

    def _send(self, batch: Sequence[_Call]) -> list[Any]:
        with self.client.pipeline(transaction=False) as pipe:
            for call in batch:
                pipe.evalsha(call.script.sha, len(call.keys), *call.keys, *call.args)
            return list(pipe.execute(raise_on_error=False))

    def close(self) -> None:
        self.client.close()


def _twin(failure: BaseException | None) -> BaseException:
    """The flush's error for one more caller: its own copy (an exception raised in several
    threads at once would share one traceback); an interrupt is the interrupted thread's own,
    the others see a connection error (their calls may or may not have run)."""
    if not isinstance(failure, Exception):
        return RedisConnectionError(f"the status flush was interrupted: {failure!r}")
    try:
        return copy.copy(failure)
    except Exception:  # an exception class that cannot be copied: share it
        return failure
