"""workers/emit.py: signals reach exactly the hooks Dramatiq's own emit would run, in its order
and with its error handling, while Middleware's no-ops are skipped."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from dramatiq.broker import Broker
from dramatiq.middleware import Middleware, MiddlewareError

from workers.emit import EmitsToHandlers, handlers


class Recording(Middleware):
    def __init__(self, name: str, calls: list[str]) -> None:
        self.name, self.calls = name, calls

    def before_process_message(self, broker: Any, message: Any) -> None:
        self.calls.append(f"{self.name}.before")

    def after_process_message(self, broker: Any, message: Any, *, result: Any = None,
                              exception: Any = None) -> None:
        self.calls.append(f"{self.name}.after:{result}")


class OnlyAfter(Recording):
    before_process_message = Middleware.before_process_message  # back to the no-op


class Failing(Middleware):
    def __init__(self, error: Exception) -> None:
        self.error = error

    def before_process_message(self, broker: Any, message: Any) -> None:
        raise self.error

    def after_process_message(self, broker: Any, message: Any, *, result: Any = None,
                              exception: Any = None) -> None:
        raise self.error


class Plain(Broker):
    """Dramatiq's own emit, as the reference."""


class Pruned(EmitsToHandlers, Plain):
    pass


def test_the_same_hooks_run_in_the_same_order_as_in_dramatiq() -> None:
    calls: dict[str, list[str]] = {"plain": [], "pruned": []}
    brokers = []
    for kind, broker_type in (("plain", Plain), ("pruned", Pruned)):
        log = calls[kind]
        brokers.append(broker_type(middleware=[
            Recording("a", log), OnlyAfter("b", log), Middleware(), Recording("c", log)]))
    for broker in brokers:
        broker.emit_before("process_message", "m")
        broker.emit_after("process_message", "m", result=7)
        broker.emit_after("ack", "m")  # nobody handles it
    assert calls["pruned"] == calls["plain"] == [
        "a.before", "c.before", "c.after:7", "b.after:7", "a.after:7"]


def test_only_the_overriding_middleware_are_called() -> None:
    calls: list[str] = []
    listed = [Recording("a", calls), OnlyAfter("b", calls), Middleware()]
    def owners(name: str) -> list[Any]:
        return [getattr(hook, "__self__", None) for hook in handlers(listed, name)]

    assert owners("before_process_message") == [listed[0]]
    assert owners("after_process_message") == listed[:2]
    assert handlers(listed, "after_ack") == ()


def test_a_hook_set_on_the_instance_is_called() -> None:
    calls: list[str] = []
    middleware = Middleware()
    middleware.after_ack = lambda broker, message: calls.append("ack")  # type: ignore[method-assign]
    broker = Pruned(middleware=[middleware])
    broker.emit_after("ack", "m")
    assert calls == ["ack"]


def test_middleware_added_later_is_called() -> None:
    calls: list[str] = []
    broker = Pruned(middleware=[Recording("a", calls)])
    broker.emit_before("process_message", "m")
    broker.add_middleware(Recording("b", calls))
    broker.emit_before("process_message", "m")
    assert calls == ["a.before", "a.before", "b.before"]


@pytest.mark.parametrize("error", [ValueError("boom"), KeyError("k"), RuntimeError("x")])
def test_a_failing_hook_is_logged_and_the_next_still_runs(
        error: Exception, caplog: pytest.LogCaptureFixture) -> None:
    calls: list[str] = []
    broker = Pruned(middleware=[Recording("a", calls), Failing(error), Recording("c", calls)])
    with caplog.at_level(logging.CRITICAL):
        broker.emit_before("process_message", "m")
        broker.emit_after("process_message", "m", result=1)
    assert calls == ["a.before", "c.before", "c.after:1", "a.after:1"]
    failures = [r for r in caplog.records if r.levelno == logging.CRITICAL]
    assert len(failures) == 2
    assert "before_process_message" in failures[0].getMessage()
    assert "Failing" in failures[0].getMessage()


def test_a_middleware_error_before_stops_the_signal_as_in_dramatiq() -> None:
    for broker_type in (Plain, Pruned):
        calls: list[str] = []
        broker = broker_type(middleware=[Failing(MiddlewareError("stop")), Recording("b", calls)])
        with pytest.raises(MiddlewareError):
            broker.emit_before("process_message", "m")
        assert calls == []


def test_a_hook_missing_altogether_fails_and_is_logged_as_in_dramatiq(
        caplog: pytest.LogCaptureFixture) -> None:
    for broker_type in (Plain, Pruned):
        caplog.clear()
        broker = broker_type(middleware=[Middleware()])
        with caplog.at_level(logging.CRITICAL):
            broker.emit_after("no_such_signal", "m")
        [failure] = [r for r in caplog.records if r.levelno == logging.CRITICAL]
        assert "after_no_such_signal" in failure.getMessage()
        assert failure.exc_info is not None and failure.exc_info[0] is AttributeError
