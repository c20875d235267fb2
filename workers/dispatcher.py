"""The scheduled-send dispatcher thread of every worker process.

Each worker process runs one :class:`DispatcherThread` beside the sweeper: every
``SCHEDULE_POLL_SECONDS`` it moves the messages whose ``send_at`` has come from the schedule to
their stream's queue (:class:`mailcore.schedule.Dispatcher`). All of them run at once, with no
lock: each message is taken by exactly one of them (the Lua step that queues it removes it from
the schedule first), so more worker replicas only mean more dispatchers racing harmlessly, and a
restart of any of them loses nothing (the schedule is in Redis). Running it in the workers keeps
it where the queues are consumed: with no worker running, nothing would be sent anyway.
"""

from __future__ import annotations

import logging
import threading

import redis
from dramatiq import Broker
from dramatiq.middleware import Middleware

from mailcore.schedule import DISPATCH_BATCH, Dispatcher

from . import metrics

log = logging.getLogger("email_service.worker")


class DispatcherThread(Middleware):
    """Runs :meth:`Dispatcher.dispatch_due` every ``interval_seconds`` in a worker process
    (at once again while a pass found a full batch).

    Parameters:
      dispatcher: what to run.
      interval_seconds: how often.
    """

    def __init__(self, dispatcher: Dispatcher, interval_seconds: float) -> None:
        self.dispatcher = dispatcher
        self.interval = interval_seconds
        self._stop = threading.Event()

    def after_worker_boot(self, broker: Broker, worker: object) -> None:
        threading.Thread(target=self._run, name="dispatcher", daemon=True).start()

    def before_worker_shutdown(self, broker: Broker, worker: object) -> None:
        self._stop.set()

    def _run(self) -> None:
        wait = self.interval
        while not self._stop.wait(wait):
            wait = self.interval
            try:
                done = self.dispatcher.dispatch_due()
            except redis.RedisError as exc:  # Redis away: the next interval tries again
                log.debug("dispatch skipped: %s", exc)
                continue
            except Exception:  # a bug must not end scheduled sending for this process
                log.exception("dispatch failed; trying again next interval")
                continue
            if done.queued:
                metrics.DISPATCHED.inc(done.queued)
            if done.queued + done.lost_races + done.broken >= DISPATCH_BATCH:
                wait = 0.0  # more are due
