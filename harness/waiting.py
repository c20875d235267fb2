"""Waiting on a condition with a deadline, never sleeping and hoping."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal, TypeVar

T = TypeVar("T")


class ProcessExited(AssertionError):
    """A process we wait on stopped: waiting any longer is pointless."""


class WaitTimeout(AssertionError, TimeoutError):
    """The deadline passed: a test failure (AssertionError) and a timeout (TimeoutError)."""


#: What a condition returns while it does not hold yet (e.g. ``x and y`` gives ``False``).
NotYet = None | Literal[False]


def wait_for(condition: Callable[[], T | NotYet], *, timeout: float = 15.0,
             interval: float = 0.02, message: str = "condition") -> T:
    """Poll ``condition`` until it returns something truthy and return that; raise
    :class:`WaitTimeout` at the deadline. Errors while polling count as "not yet" (the thing
    may not be up), except :class:`ProcessExited`."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = condition()
        except ProcessExited:
            raise
        except Exception as exc:  # not up yet
            last_error = exc
        else:
            if value:
                return value
        time.sleep(interval)
    raise WaitTimeout(f"timed out after {timeout}s waiting for {message}"
                      + (f" (last error: {last_error!r})" if last_error else ""))
