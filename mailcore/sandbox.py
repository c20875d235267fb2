"""Jinja's sandbox with bounds on memory and time: templates are untrusted code.

Jinja's own sandbox stops templates reaching Python internals, not from exhausting the process.
Here every place a template can make something big, or keep running, is a checkpoint:

- a value built by an operation (``~``, ``+``, ``*``, ``%``, every filter, every call, every
  list/tuple/dict literal) may not exceed ``max_bytes`` characters, nor a container ``max_items``
  in *expanded* size (shared references count each time they would be printed or compared, so a
  list that doubles itself by reference is caught as surely as a string that does);
- operations whose result size is set by an argument (``center``/``ljust``/``rjust``/``zfill``,
  format widths in ``%`` and ``str.format``, ``indent``, ``wordwrap``, ``replace``, ``join``,
  ``batch``, ``slice``, ``sum``) have their size computed *before* they run;
- everything a render builds is charged to one allocation budget, so growing a value step by step
  in a loop cannot add up to gigabytes either;
- loops, calls and output are time checkpoints against the render's deadline, and loop
  iterations are counted (a filter or an operator is one bounded operation between them);
- rendered output is joined in chunks and refused past ``max_bytes``.

A render that crosses a bound raises :class:`~mailcore.render_budget.LimitExceeded` (with a
condition ``reason``: ``RenderBudgetExceeded`` or ``OutputTooLarge``); the caller turns it into a
permanent error. This module is the environment and its hooks; the bounded filters and string
operations are in :mod:`mailcore.sandbox_ops`, the per-render account in
:mod:`mailcore.render_budget`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from typing import Any

from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import SecurityError
from jinja2.runtime import LoopContext, markup_join, str_join
from jinja2.sandbox import ImmutableSandboxedEnvironment
from markupsafe import Markup

from .render_budget import (
    CONTAINERS,
    MAX_INT_BITS,
    SMALL,
    TOO_LARGE,
    Budget,
    charged,
    current,
)
from .sandbox_ops import (
    STR_METHODS,
    BoundedFormatter,
    bounded_filter,
    check_str_method,
    checked_result,
    collected,
    join_size,
    lipsum,
    percent_format,
)

#: Loops over at most this many items are checked once, at their start (their steps charged up
#: front); longer ones at every iteration. Short loops, the usual kind, then cost nothing more.
SHORT_LOOP = 64
_SIZED = frozenset({list, tuple, range, dict, str})


def _guard_iter(iterable: Any) -> Iterable[Any]:
    """Each loop iteration is counted and checks the deadline."""
    budget = current()
    if type(iterable) in _SIZED and len(iterable) <= SHORT_LOOP:
        budget.steps += len(iterable)
        if budget.steps > budget.limits.max_steps or time.monotonic() > budget.deadline:
            budget.steps -= 1
            budget.step()  # raises, saying which
        return iterable  # type: ignore[no-any-return]
    return _each_step(iterable, budget)


def _each_step(iterable: Any, budget: Budget) -> Iterator[Any]:
    for item in iterable:
        budget.step()
        yield item


def _bounded_markup_join(seq: Iterable[Any]) -> Any:
    parts = tuple(seq)
    join_size(current(), parts, "")
    return current().charge(markup_join(parts))


def _bounded_str_join(seq: Iterable[Any]) -> Any:
    parts = tuple(seq)
    join_size(current(), parts, "")
    return current().charge(str_join(parts))


def _bounded_concat(parts: Iterable[str]) -> str:
    """What macros, ``{% set %}`` blocks and filter blocks join their output with."""
    parts = list(parts)
    budget = current()
    budget.need(sum(map(len, parts)), "a block's output")
    budget.tick()
    joined = "".join(parts)
    budget.charge(joined)
    return joined


def patch_program(namespace: dict[str, Any]) -> None:
    """Point a compiled template's module at the bounded joins (``~``). What it prints is
    bounded where it is built: no operation makes a string or container over the limits."""
    namespace["markup_join"] = _bounded_markup_join
    namespace["str_join"] = _bounded_str_join


#: Output pieces gathered before their size is checked: few checks, a bounded overshoot. HTML
#: output holds literals (shared, not copied) and escaped values, each big one charged as it
#: is printed (see ``charge_printed``), so it can take large chunks; text output prints
#: containers unescaped, so it takes small ones.
HTML_CHUNK = 256
TEXT_CHUNK = 32
#: Printed values this long are charged to the render's budget when printed.
BIG_PRINT = SMALL


def charge_printed(value: Any) -> None:
    """Charge a big value (or a container) printed in HTML, before it is copied out escaped."""
    current().charge(value)


def render_output(chunks: Iterator[str], budget: Budget, chunk_size: int) -> str:
    """Join a template's output, refusing it past ``max_bytes``."""
    parts = list(islice(chunks, chunk_size))
    if len(parts) < chunk_size:  # the usual case: all of it, a chunk's worth at most
        text = "".join(parts)
        if len(text) > budget.limits.max_bytes:
            raise budget.fail(TOO_LARGE, "the rendered output is over "
                              f"{budget.limits.max_bytes} characters")
        return text
    size = sum(map(len, parts))
    while True:
        if size > budget.limits.max_bytes:
            raise budget.fail(TOO_LARGE, "the rendered output is over "
                              f"{budget.limits.max_bytes} characters")
        if len(parts) % chunk_size:  # the generator ran out
            return "".join(parts)
        budget.tick()
        chunk = list(islice(chunks, chunk_size))
        if not chunk:
            return "".join(parts)
        size += sum(map(len, chunk))
        parts += chunk


class _BoundedCodeGenerator(CodeGenerator):
    """Jinja's compiler, wrapping loop iterables and container literals in checks."""

    def visit_Call(self, node: nodes.Call, frame: Frame, forward_caller: bool = False) -> None:
        if isinstance(node.node, nodes.EnvironmentAttribute) and node.node.name == "guard_iter":
            self.write("environment.guard_iter(")  # ours: called directly, not via the sandbox
            self.visit(node.args[0], frame)
            self.write(")")
            return
        super().visit_Call(node, frame, forward_caller=forward_caller)

    def visit_For(self, node: nodes.For, frame: Frame) -> None:
        guarded = (isinstance(node.iter, nodes.Call)
                   and isinstance(node.iter.node, nodes.EnvironmentAttribute)
                   and node.iter.node.name == "guard_iter")
        if not guarded:
            node.iter = nodes.Call(nodes.EnvironmentAttribute("guard_iter"), [node.iter], [],
                                   None, None, lineno=node.iter.lineno)
        super().visit_For(node, frame)

    def _guarded(self, visit: Callable[[Any, Frame], None], node: Any, frame: Frame) -> None:
        if getattr(node, "ctx", "load") != "load":
            visit(node, frame)
            return
        self.write("environment.guard_value(")
        visit(node, frame)
        self.write(")")

    def visit_List(self, node: nodes.List, frame: Frame) -> None:
        self._guarded(super().visit_List, node, frame)

    def visit_Tuple(self, node: nodes.Tuple, frame: Frame) -> None:
        self._guarded(super().visit_Tuple, node, frame)

    def visit_Dict(self, node: nodes.Dict, frame: Frame) -> None:
        self._guarded(super().visit_Dict, node, frame)


_NUMBERS = (int, float)


class Sandbox(ImmutableSandboxedEnvironment):
    """The environment templates compile in: Jinja's immutable sandbox, bounded."""

    code_generator_class = _BoundedCodeGenerator
    intercepted_binops = frozenset({"*", "**", "+", "%"})
    concat = staticmethod(_bounded_concat)
    guard_iter = staticmethod(_guard_iter)

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.filters = {name: bounded_filter(name, fn) for name, fn in self.filters.items()}
        self.globals["lipsum"] = lipsum

    @staticmethod
    def guard_value(value: Any) -> Any:
        return current().charge(value)

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        if isinstance(obj, str) and attr not in STR_METHODS:
            return False
        return super().is_safe_attribute(obj, attr, value)

    def getattr(self, obj: Any, attribute: str) -> Any:
        # Template data is JSON: ``order.items`` means the key, not dict.items. Looking the key
        # up first is also what makes data access cheap (the sandbox's attribute check and a
        # caught AttributeError were most of a loop's render time). Only
        # plain dicts, and only their keys, which ``order['items']`` could reach anyway.
        if type(obj) is dict:
            try:
                return obj[attribute]
            except KeyError:
                pass
        return super().getattr(obj, attribute)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        if getattr(value, "__name__", None) not in ("format", "format_map") or not isinstance(
                getattr(value, "__self__", None), str):
            return None
        text: str = value.__self__
        as_map = value.__name__ == "format_map"
        escape = isinstance(text, Markup)

        def bounded_format(*args: Any, **kwargs: Any) -> str:
            budget = current()
            budget.tick()
            if as_map:
                if kwargs or len(args) != 1:
                    raise TypeError("format_map() takes exactly one argument")
                kwargs = args[0]
                args = ()
            if escape:
                args = tuple(Markup.escape(a) for a in args)
                kwargs = {k: Markup.escape(v) for k, v in kwargs.items()}
            result = BoundedFormatter(self, budget).vformat(text, args, kwargs)
            return budget.charge(type(text)(result))  # type: ignore[no-any-return]

        return bounded_format

    def call(__self, __context: Any, __obj: Any, *args: Any,
             **kwargs: Any) -> Any:
        if __obj is _guard_iter:  # every {% for %} (see _BoundedCodeGenerator)
            return _guard_iter(args[0])
        budget = current()
        budget.tick()
        owner = getattr(__obj, "__self__", None)
        if isinstance(owner, str):
            if __obj.__name__ == "join" and args and type(args[0]) not in CONTAINERS:
                args = (collected(args[0]), *args[1:])  # to size it before joining
            check_str_method(budget, __obj.__name__, owner, args, kwargs)
        elif isinstance(__obj, LoopContext) and args:  # a recursive loop's next level
            args = (_each_step(args[0], budget), *args[1:])
        return checked_result(super().call(__context, __obj, *args, **kwargs))

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "+" and type(left) in _NUMBERS and type(right) in _NUMBERS:
            return left + right
        if operator == "*" and type(left) in _NUMBERS and type(right) in _NUMBERS:
            # The common case (price * quantity). Integers are unbounded, and a loop that
            # squares one doubles its size each time: gigabytes within 30 iterations.
            if (type(left) is int and type(right) is int
                    and left.bit_length() + right.bit_length() > MAX_INT_BITS):
                raise SecurityError("result of * too large")
            return left * right
        budget = current()
        if operator == "**" and isinstance(right, int):
            if abs(right) > 64:
                raise SecurityError("exponent too large")
            if isinstance(left, int) and left.bit_length() * abs(right) > MAX_INT_BITS:
                raise SecurityError("result of ** too large")
        elif operator == "*":
            for seq, count in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and isinstance(count, int):
                    limit = (budget.limits.max_bytes if isinstance(seq, str)
                             else budget.limits.max_items)
                    if len(seq) * count > limit:
                        raise budget.fail(TOO_LARGE, f"result of * would be {len(seq) * count} "
                                          f"long (the limit is {limit})")
        elif operator == "+" and isinstance(left, str | list | tuple) and isinstance(
                right, str | list | tuple):
            if isinstance(left, str) and isinstance(right, str):
                budget.need(len(left) + len(right), "+")
        elif operator == "%" and isinstance(left, str):
            return percent_format(left, right)
        return charged(super().call_binop(context, operator, left, right))
