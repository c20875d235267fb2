"""Group commit in the workers (mailcore/group_commit.py) against a real redis-server: threads
calling at once each get their own outcome, decided as alone; a lone call goes out at once; a
connection error fails every caller of the flush and the next call works once Redis is back;
pipelines recover from an empty script cache (SCRIPT FLUSH, a restarted redis-server); no caller
hangs when the thread sending its flush raises or is interrupted; a flush re-sent after a lost
reply runs each call again exactly as a single call's retry does.

Calls are made to meet deterministically: ``CLIENT PAUSE WRITE`` holds the lone call at the
server while the other threads queue behind it (their number is watched, not timed)."""

from __future__ import annotations

import ctypes
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any

import pytest
import redis
from dramatiq.middleware import TimeLimitExceeded

from harness.redis import RedisServer as PrivateRedis
from harness.waiting import wait_for
from mailcore.config import ConfigError
from mailcore.group_commit import GroupCommitter
from mailcore.redisclient import sync_client
from mailcore.status import (
    FAILED,
    QUEUED,
    RETRYING,
    SENT,
    Attempt,
    Holding,
    StatusStore,
    status_key,
    timeline_key,
)

from .redis_cutter import RedisCutter, argument
from .support import RedisServer, make_settings

Call = Callable[[], Any]


@pytest.fixture
def private(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A redis-server of this test alone (stopped, restarted, flushed)."""
    server = PrivateRedis(tmp_path, persistent=False).start()
    yield server
    server.stop()


def holding_for(prefix: str) -> Holding:
    return Holding(acks=f"{prefix}:acks", messages=f"{prefix}:msgs", delayed=f"{prefix}:DQ",
                   delayed_messages=f"{prefix}:DQ.msgs", dead=f"{prefix}:XQ",
                   dead_messages=f"{prefix}:XQ.msgs")


def hold(admin: redis.Redis, holding: Holding, *redis_ids: str) -> None:
    """This worker holds these copies (fetched, not yet acknowledged)."""
    for redis_id in redis_ids:
        admin.sadd(holding.acks, redis_id)
        admin.hset(holding.messages, redis_id, b"body")


class Gate:
    """Holds a lone call at the server (``CLIENT PAUSE WRITE``) while calls started meanwhile
    queue behind it, in order, then lets them go; collects each caller's reply or exception."""

    def __init__(self, admin: redis.Redis, committer: Callable[[], GroupCommitter | None]
                 ) -> None:
        self.admin = admin
        self.committer = committer
        self.threads: dict[str, threading.Thread] = {}
        self.outcomes: dict[str, Any] = {}

    def __enter__(self) -> Gate:
        self.admin.client_pause(60000, all=False)  # writes (scripts too) wait
        return self

    def __exit__(self, *exc: object) -> None:
        with suppress(redis.RedisError):  # the server may have been stopped on purpose
            self.release()

    def _start(self, name: str, call: Call) -> None:
        def run() -> None:
            try:
                self.outcomes[name] = call()
            except BaseException as exc:  # interrupts too: they are what is tested
                self.outcomes[name] = exc

        thread = threading.Thread(target=run, name=name, daemon=True)
        self.threads[name] = thread
        thread.start()

    def lone(self, call: Call) -> None:
        self._start("lone", call)
        wait_for(lambda: (committer := self.committer()) is not None and committer.busy,
                 message="the lone call in flight")

    def queue(self, name: str, call: Call) -> None:
        committer = self.committer()
        assert committer is not None
        expected = committer.waiting + 1
        self._start(name, call)
        wait_for(lambda: committer.waiting == expected, message=f"{name} queued")

    def release(self) -> None:
        self.admin.client_unpause()

    def results(self) -> dict[str, Any]:
        for thread in self.threads.values():
            thread.join(timeout=60)
        hanging = [name for name, thread in self.threads.items() if thread.is_alive()]
        assert not hanging, f"callers still waiting: {hanging}"
        return self.outcomes


def view(outcome: Any) -> Any:
    """What a caller decides on (an attempt's lease end is a time: left out)."""
    if isinstance(outcome, Attempt):
        return (outcome.proceed, outcome.reason, outcome.attempt, outcome.pinned,
                outcome.withheld)
    if isinstance(outcome, BaseException):
        return type(outcome).__name__
    return outcome


def scenario(store: StatusStore, admin: redis.Redis) -> list[tuple[str, Call]]:
    """Calls of every kind (set up in Redis first), in the order they are made."""
    holding = holding_for(store.prefix)
    store.begin_attempt("leased", 30, "r-leased")  # another attempt holds its lease
    store.record("done", SENT, "250 ok")
    hold(admin, holding, "r-done", "r-sent", "r-retry")
    return [
        ("begin-new", lambda: store.begin_attempt("new", 30, "r-new")),
        # The same message again in the same flush: decided after the first, so busy.
        ("begin-new-again", lambda: store.begin_attempt("new", 30, "r-new-2")),
        ("begin-leased", lambda: store.begin_attempt("leased", 30, "r-leased-2")),
        ("begin-finished", lambda: store.begin_attempt("done", 30, "r-done")),
        ("settle-sent", lambda: store.settle("sent", "sent", "r-sent", holding, status=SENT,
                                             detail="250 ok", transport="smtp")),
        ("settle-retry", lambda: store.settle("retry", "retry", "r-retry", holding,
                                              status=RETRYING, detail="451 later",
                                              next_copy=("r-retry-2", b"copy"))),
        ("settle-dead-given-back", lambda: store.settle("gone", "dead", "r-gone", holding,
                                                        status=FAILED, detail="550 no")),
        ("settle-drop", lambda: store.settle("done", "drop", "r-done", holding)),
        ("record", lambda: store.record("recorded", QUEUED)),
    ]


def redis_state(admin: redis.Redis, prefix: str) -> dict[str, Any]:
    holding = holding_for(prefix)
    ids = ("new", "leased", "done", "sent", "retry", "gone", "recorded", "lone")
    return {
        "statuses": {m: admin.hmget(status_key(prefix, m), "status", "attempts") for m in ids},
        "timelines": {m: admin.llen(timeline_key(prefix, m)) for m in ids},
        "acks": sorted(admin.smembers(holding.acks)),
        "delayed": admin.lrange(holding.delayed, 0, -1),
    }


def test_threads_at_once_each_get_their_own_outcome(redis_server: RedisServer) -> None:
    admin = redis_server.client()
    # The same calls one after another on today's per-thread connections: what each decides.
    alone = StatusStore.from_url(redis_server.url, f"gc-{uuid.uuid4().hex[:6]}", 60)
    expected = {"lone": view(alone.begin_attempt("lone", 30, "r-lone"))}
    expected |= {name: view(call()) for name, call in scenario(alone, admin)}
    alone.close()

    store = StatusStore.from_url(redis_server.url, f"gc-{uuid.uuid4().hex[:6]}", 60,
                                 group_commit=True)
    calls = scenario(store, admin)
    committer = store.committer
    assert committer is not None
    flushes, carried = committer.flushes, committer.calls
    with Gate(admin, lambda: store.committer) as gate:
        gate.lone(lambda: store.begin_attempt("lone", 30, "r-lone"))
        for name, call in calls:
            gate.queue(name, call)
        gate.release()
        outcomes = gate.results()
    assert {name: view(outcome) for name, outcome in outcomes.items()} == expected
    assert expected["begin-new"][:3] == (True, "", 1)
    assert expected["begin-new-again"][:2] == (False, "busy")
    assert expected["begin-finished"][:2] == (False, SENT)
    # Two round trips: the lone call, then everything that queued behind it.
    assert (committer.flushes - flushes, committer.calls - carried) == (2, len(calls) + 1)
    assert redis_state(admin, store.prefix) == redis_state(admin, alone.prefix)
    store.close()


def test_many_threads_looping_all_get_their_own_outcomes(redis_server: RedisServer) -> None:
    """No gate: threads race through begin + settle as workers do; every hand-on holds."""
    admin = redis_server.client()
    store = StatusStore.from_url(redis_server.url, f"gc-{uuid.uuid4().hex[:6]}", 60,
                                 group_commit=True)
    holding = holding_for(store.prefix)
    ids = [[f"t{t}-m{n}" for n in range(40)] for t in range(16)]
    hold(admin, holding, *(f"r-{m}" for mine in ids for m in mine))
    wrong: list[str] = []

    def work(mine: list[str]) -> None:
        for message_id in mine:
            attempt = store.begin_attempt(message_id, 30, f"r-{message_id}")
            if not (attempt.proceed and attempt.attempt == 1):
                wrong.append(f"{message_id}: {attempt}")
            if not store.settle(message_id, "sent", f"r-{message_id}", holding, status=SENT,
                                detail="250 ok"):
                wrong.append(f"{message_id}: not held")

    threads = [threading.Thread(target=work, args=(mine,), daemon=True) for mine in ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "a thread hangs"
    assert wrong == []
    assert admin.scard(holding.acks) == 0
    assert {admin.hget(status_key(store.prefix, m), "status") for mine in ids for m in mine} \
        == {SENT.encode()}
    committer = store.committer
    assert committer is not None and committer.calls == 2 * 16 * 40
    assert not committer.busy and committer.waiting == 0
    store.close()


def test_a_lone_call_goes_out_at_once(redis_server: RedisServer) -> None:
    admin = redis_server.client()
    store = StatusStore.from_url(redis_server.url, f"gc-{uuid.uuid4().hex[:6]}", 60,
                                 group_commit=True)
    for n in range(5):
        evalsha = admin.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)
        assert store.begin_attempt(f"m{n}", 30).proceed
        committer = store.committer
        assert committer is not None
        # Sent by the caller itself before it returned, as the plain script call: one round
        # trip each, nothing left behind.
        assert (committer.flushes, committer.calls) == (n + 1, n + 1)
        assert not committer.busy and committer.waiting == 0
        assert admin.info("commandstats")["cmdstat_evalsha"]["calls"] == evalsha + 1
    store.close()


def test_a_connection_error_fails_every_caller_then_the_next_call_works(
        private: PrivateRedis) -> None:
    admin = private.client()
    store = StatusStore.from_url(private.url, "gc", 60, group_commit=True)
    assert store.begin_attempt("warm", 30).proceed
    with Gate(admin, lambda: store.committer) as gate:
        gate.lone(lambda: store.begin_attempt("lone", 30))
        for n in range(4):
            gate.queue(f"q{n}", lambda n=n: store.begin_attempt(f"q{n}", 30))  # type: ignore[misc]
        private.stop()  # Redis dies with the lone call in it and four waiting
        outcomes = gate.results()
    errors = list(outcomes.values())
    assert all(isinstance(e, redis.ConnectionError | redis.TimeoutError) for e in errors), errors
    assert len({id(e) for e in errors}) == len(errors)  # each caller raises its own
    committer = store.committer
    assert committer is not None and not committer.busy and committer.waiting == 0
    private.start()
    assert store.begin_attempt("after", 30).proceed
    store.close()


@pytest.mark.parametrize("emptied_by", ["SCRIPT FLUSH", "restart"])
def test_pipelines_recover_an_empty_script_cache(private: PrivateRedis,
                                                 emptied_by: str) -> None:
    admin = private.client()
    store = StatusStore.from_url(private.url, "gc", 60, group_commit=True)
    holding = holding_for(store.prefix)

    def batch(tag: str) -> dict[str, Any]:
        hold(admin, holding, f"{tag}-r")
        with Gate(admin, lambda: store.committer) as gate:
            gate.lone(lambda: store.begin_attempt(f"{tag}-lone", 30, f"{tag}-l"))
            gate.queue("begin", lambda: store.begin_attempt(f"{tag}-b", 30, f"{tag}-b"))
            gate.queue("settle", lambda: store.settle(f"{tag}-s", "retry", f"{tag}-r", holding,
                                                      status=RETRYING, detail="451",
                                                      next_copy=(f"{tag}-r2", b"copy")))
            gate.queue("record", lambda: store.record(f"{tag}-rec", QUEUED))
            gate.release()
            return {name: view(outcome) for name, outcome in gate.results().items()}

    expected = {"lone": (True, "", 1, None, ()), "begin": (True, "", 1, None, ()),
                "settle": True, "record": None}
    assert batch("before") == expected  # scripts cached, the pipeline connection open
    if emptied_by == "restart":
        private.stop()
        private.start()  # in memory: an empty server, scripts and connections gone
        # The worker client does not retry: the call finding its connection closed fails, as
        # it does alone (the actor gives the message back); the next reconnects.
        with suppress(redis.ConnectionError):
            store.begin_attempt("probe", 30)
    else:
        admin.script_flush()
    loads = admin.info("commandstats").get("cmdstat_script|load", {}).get("calls", 0)
    assert batch("after") == expected
    # The lone call reloaded its script (redis-py's Script); the flush reloaded the others.
    assert admin.info("commandstats")["cmdstat_script|load"]["calls"] - loads == 3
    assert admin.hget(status_key(store.prefix, "after-s"), "status") == RETRYING.encode()
    assert admin.lrange(holding.delayed, 0, -1)[-1] == b"after-r2"
    store.close()


@pytest.mark.parametrize("who", ["lone", "elected"])
def test_an_interrupted_sender_leaves_nobody_waiting(redis_server: RedisServer,
                                                     who: str) -> None:
    """Dramatiq's time limit raises in the thread (``PyThreadState_SetAsyncExc``): in the
    thread sending a lone call, or in one elected to send the next flush (it sends it anyway)."""
    admin = redis_server.client()
    store = StatusStore.from_url(redis_server.url, f"gc-{uuid.uuid4().hex[:6]}", 60,
                                 group_commit=True)
    store.begin_attempt("warm", 30)
    with Gate(admin, lambda: store.committer) as gate:
        gate.lone(lambda: store.begin_attempt("lone", 30))
        gate.queue("elected", lambda: store.begin_attempt("elected", 30))
        gate.queue("follower", lambda: store.begin_attempt("follower", 30))
        ident = gate.threads[who].ident
        assert ident is not None
        assert ctypes.pythonapi.PyThreadState_SetAsyncExc(
            ctypes.c_ulong(ident), ctypes.py_object(TimeLimitExceeded)) == 1
        gate.release()
        outcomes = gate.results()
    assert isinstance(outcomes[who], TimeLimitExceeded)
    for name in {"lone", "elected", "follower"} - {who}:
        # Its own outcome, or (an interrupt inside the flush) a connection error: never a hang.
        assert (isinstance(outcomes[name], redis.ConnectionError)
                or view(outcomes[name]) == (True, "", 1, None, ())), outcomes[name]
    committer = store.committer
    assert committer is not None and not committer.busy and committer.waiting == 0
    assert store.begin_attempt("after", 30).proceed
    store.close()


def test_one_calls_error_is_its_own_and_a_failed_flush_wakes_everyone(
        redis_server: RedisServer) -> None:
    admin = redis_server.client()
    committer = GroupCommitter(redis_server.client())
    echo = committer.register(
        "if ARGV[1] == 'boom' then return redis.error_reply('BOOM') end return ARGV[1]")

    def run(value: object) -> Call:
        return lambda: committer.run(echo, [], [value])

    with Gate(admin, lambda: committer) as gate:
        gate.lone(run("lone"))
        for text in ("a", "boom", "b"):
            gate.queue(text, run(text))
        gate.release()
        outcomes = gate.results()
    assert outcomes["a"] == b"a" and outcomes["b"] == b"b" and outcomes["lone"] == b"lone"
    assert isinstance(outcomes["boom"], redis.ResponseError) and "BOOM" in str(outcomes["boom"])
    # A flush that cannot even be sent (an argument redis-py cannot encode): every caller of
    # it gets the error, each its own, and the next call goes out.
    with Gate(admin, lambda: committer) as gate:
        gate.lone(run("lone"))
        for name, bad in (("first", "a"), ("bad", object()), ("last", "b")):
            gate.queue(name, run(bad))
        gate.release()
        outcomes = gate.results()
    failed = [outcomes[name] for name in ("first", "bad", "last")]
    assert all(isinstance(e, redis.DataError) for e in failed), failed
    assert len({id(e) for e in failed}) == 3
    assert committer.run(echo, [], ["again"]) == b"again"
    committer.close()


def test_a_lost_reply_fails_every_caller_and_nothing_runs_twice(private: PrivateRedis) -> None:
    """The worker client has no command retry (``mailcore.redisclient`` gives no ``Retry``, so
    redis-py's is none): a flush whose connection dies is never sent again behind the callers'
    backs. Each caller gets the connection error, as a single call does, and each call ran at
    most once (the actor then gives its message back, or retries recording ``sent``)."""
    worker_client = sync_client(private.url, "worker", single_connection=True)
    assert worker_client.connection is not None
    assert worker_client.connection.retry.get_retries() == 0
    worker_client.close()
    admin = private.client()
    cutter = RedisCutter(private.port).start()
    store = StatusStore.from_url(cutter.url, "gc", 60, group_commit=True)
    holding = holding_for(store.prefix)
    hold(admin, holding, "r-batch")
    store.begin_attempt("warm", 30)
    try:
        with Gate(admin, lambda: store.committer) as gate:
            gate.lone(lambda: store.begin_attempt("lone", 30, "r0"))
            gate.queue("begin", lambda: store.begin_attempt("begin", 30, "r1"))
            gate.queue("batch", lambda: store.settle(
                "batch", "retry", "r-batch", holding, status=RETRYING, detail="451",
                next_copy=("r-batch-2", b"copy")))
            # Redis runs what reached it of the flush; no reply gets back.
            cutter.arm(argument(status_key(store.prefix, "begin")), when="after", outage=0.05)
            gate.release()
            outcomes = gate.results()
        assert cutter.fired.is_set()
    finally:
        cutter.stop()
        store.close()
    assert view(outcomes["lone"]) == (True, "", 1, None, ())  # before the loss
    assert isinstance(outcomes["begin"], redis.ConnectionError)
    assert isinstance(outcomes["batch"], redis.ConnectionError)
    # Each ran once or not at all (the flush may have been cut short), never twice.
    assert admin.hget(status_key(store.prefix, "begin"), "attempts") == b"1"
    assert admin.llen(timeline_key(store.prefix, "begin")) == 1
    assert admin.lrange(holding.delayed, 0, -1) in ([], [b"r-batch-2"])
    assert admin.llen(timeline_key(store.prefix, "batch")) <= 1


def test_the_setting() -> None:
    assert make_settings().worker.group_commit is True
    assert make_settings(WORKER_GROUP_COMMIT="false").worker.group_commit is False
    with pytest.raises(ConfigError, match="WORKER_GROUP_COMMIT"):
        make_settings(WORKER_GROUP_COMMIT="sometimes")
