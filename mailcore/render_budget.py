"""The account a render runs against: its limits, what it has used, and how big a value is.

One :class:`Budget` per render, current for its thread (:func:`current`); the sandbox's hooks
(:mod:`mailcore.sandbox`, :mod:`mailcore.sandbox_ops`) charge it and check its deadline.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Any

from jinja2.exceptions import SecurityError
from jinja2.utils import Namespace
from markupsafe import Markup

MAX_INT_BITS = 4096
BUDGET_EXCEEDED = "RenderBudgetExceeded"
TOO_LARGE = "OutputTooLarge"


@dataclass(frozen=True)
class RenderLimits:
    """What one render may use.

    Parameters:
      max_bytes: longest rendered part (subject, HTML, text) and longest string any operation
        may build, in characters.
      time_budget: seconds of rendering before it is stopped.
      max_items: largest container (expanded: shared references counted each time) any
        operation may build.
      max_steps: loop iterations per render.
    """

    #: Gmail clips messages at 102 KB; 1 MiB leaves room without letting one render eat memory.
    max_bytes: int = 1024 * 1024
    #: Real templates render in microseconds; a second is a loop gone wrong.
    time_budget: float = 2.0
    #: Jinja's own ``range`` limit, applied to every container.
    max_items: int = 100_000
    max_steps: int = 1_000_000
    #: Everything built in one render, as a multiple of ``max_bytes``.
    allocation_factor: int = 16


class LimitExceeded(SecurityError):
    """A render crossed one of its :class:`RenderLimits`."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.text = message


class Budget:
    """The running account of one render (per thread)."""

    __slots__ = ("allocated", "deadline", "failure", "limits", "max_allocated", "steps")

    def __init__(self, limits: RenderLimits, *, timed: bool = True) -> None:
        self.limits = limits
        self.deadline = time.monotonic() + limits.time_budget if timed else math.inf
        self.steps = 0
        self.allocated = 0
        self.max_allocated = limits.max_bytes * limits.allocation_factor if timed else math.inf
        self.failure: LimitExceeded | None = None

    def fail(self, reason: str, message: str) -> LimitExceeded:
        # Sticky: a template cannot swallow the error and carry on (the render checks after).
        self.failure = LimitExceeded(reason, message)
        return self.failure

    def tick(self) -> None:
        if time.monotonic() > self.deadline:
            raise self.fail(BUDGET_EXCEEDED, "render budget exceeded: rendering took longer than "
                            f"{self.limits.time_budget:g} s")

    def step(self) -> None:
        self.steps += 1
        if self.steps > self.limits.max_steps:
            raise self.fail(BUDGET_EXCEEDED, "render budget exceeded: more than "
                            f"{self.limits.max_steps} loop iterations")
        self.tick()

    def need(self, size: int, what: str) -> None:
        """Refuse, before building it, a string of ``size`` characters."""
        if size > self.limits.max_bytes:
            raise self.fail(TOO_LARGE, f"{what} would be {size} characters "
                            f"(the limit is {self.limits.max_bytes})")

    def add(self, size: int) -> None:
        self.allocated += size
        if self.allocated > self.max_allocated:
            raise self.fail(BUDGET_EXCEEDED, "render budget exceeded: the template built more "
                            f"than {self.max_allocated} characters in all")

    def charge(self, value: Any) -> Any:
        """Check a value an operation built and add it to the render's account."""
        kind = type(value)
        if kind is str or kind is Markup:
            size = len(value)
            if size > self.limits.max_bytes:
                self.need(size, "a value")
        elif kind in CONTAINERS:
            size = weight(value, self)
        else:
            return value
        self.allocated += size
        if self.allocated > self.max_allocated:
            raise self.fail(BUDGET_EXCEEDED, "render budget exceeded: the template built more "
                            f"than {self.max_allocated} characters in all")
        return value


CONTAINERS = frozenset({list, tuple, dict, set, frozenset, Namespace})
_local = threading.local()
#: Outside a render (Jinja folds constant expressions while compiling): bounds, no deadline.
_UNTIMED = Budget(RenderLimits(max_steps=2**62), timed=False)
#: Strings shorter than this are not charged: to pile up, they must go into a container or a
#: concatenation, which are. (It keeps the common case free of the thread-local lookup.)
SMALL = 8192
FREE = frozenset({int, float, bool, type(None)})


def charged(value: Any) -> Any:
    """``value``, checked and charged to the current render unless it is small."""
    kind = type(value)
    if ((kind is str or kind is Markup) and len(value) < SMALL) or kind in FREE:
        return value
    return current().charge(value)


def current() -> Budget:
    budget: Budget | None = getattr(_local, "budget", None)
    return budget if budget is not None else _UNTIMED


def activate(budget: Budget | None) -> Budget | None:
    """Make ``budget`` the current thread's account; returns the one it replaces."""
    previous: Budget | None = getattr(_local, "budget", None)
    _local.budget = budget
    return previous


def weight(value: Any, budget: Budget) -> int:
    """Characters and items ``value`` stands for when printed or compared, shared parts counted
    each time; refused past ``max_items`` nodes or ``max_bytes`` characters (it stops there,
    so a self-doubling structure costs no more than the limit to measure)."""
    items_left = budget.limits.max_items
    chars = 0
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        items_left -= 1
        if kind is str or kind is Markup:
            chars += len(item)
        elif kind is dict:
            stack.extend(item.keys())
            stack.extend(item.values())
        elif kind in CONTAINERS:
            stack.extend(object.__getattribute__(item, "_Namespace__attrs").values()
                         if kind is Namespace else item)
        if items_left < 0:
            raise budget.fail(TOO_LARGE, "a container would hold more than "
                              f"{budget.limits.max_items} items")
    budget.need(chars, "a container's text")
    return chars + budget.limits.max_items - items_left


def check_printable(value: Any) -> None:
    """Measure a container before it is printed (its text could be far larger than it)."""
    if type(value) in CONTAINERS:
        weight(value, current())
