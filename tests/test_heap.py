"""Start-up objects are frozen out of the collector's walks once a process is ready to serve,
and the collector still frees what is made afterwards."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from mailcore.heap import freeze_startup_objects
from service.app import create_app
from workers.runtime import FreezeAfterBoot

from .support import RedisServer, app_settings


@pytest.fixture
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    try:
        yield
    finally:
        gc.unfreeze()  # the test process's objects go back to the collector's oldest generation


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def _cycle() -> weakref.ref[Node]:
    a, b = Node(), Node()
    a.other, b.other = b, a  # only the cycle collector can free these
    return weakref.ref(a)


@pytest.mark.usefixtures("unfrozen")
def test_freezing_keeps_the_collector_working_for_later_objects() -> None:
    # Frozen objects are still freed when nothing refers to them: the count only ever drops.
    assert freeze_startup_objects() > 1000  # the interpreter and pytest alone
    later = _cycle()
    gc.collect()
    assert later() is None  # made after the freeze: collected


@pytest.mark.usefixtures("unfrozen")
def test_garbage_left_at_start_up_is_collected_not_frozen() -> None:
    garbage = _cycle()
    freeze_startup_objects()
    assert garbage() is None


@pytest.mark.usefixtures("unfrozen")
def test_the_server_freezes_once_started_and_test_apps_do_not(
        redis_server: RedisServer) -> None:
    settings = app_settings(redis_server.url)
    with TestClient(create_app(settings)) as client:
        assert client.get("/health").status_code == 200
        assert gc.get_freeze_count() == 0
    with TestClient(create_app(settings, freeze_heap=True)) as client:
        assert gc.get_freeze_count() > 10_000  # the started app's objects among them
        assert client.get("/health").status_code == 200


@pytest.mark.usefixtures("unfrozen")
def test_a_worker_freezes_after_boot() -> None:
    FreezeAfterBoot().after_worker_boot(broker=None, worker=None)  # type: ignore[arg-type]
    assert gc.get_freeze_count() > 1000


def test_the_worker_runtime_freezes_last(redis_server: RedisServer) -> None:
    from workers.runtime import build_runtime

    runtime = build_runtime(app_settings(redis_server.url, SMTP_HOST="127.0.0.1",
                                         SMTP_SECURITY="none"))
    try:
        assert isinstance(runtime.broker.middleware[-1], FreezeAfterBoot)
    finally:
        runtime.status.close()
        runtime.broker.close()
