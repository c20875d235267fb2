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

A render that crosses a bound raises :class:`LimitExceeded` (with a condition ``reason``:
``RenderBudgetExceeded`` or ``OutputTooLarge``); the caller turns it into a permanent error.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import wraps
from itertools import islice
from string import Formatter
from typing import Any

from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import SecurityError
from jinja2.runtime import LoopContext, markup_join, str_join
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace, generate_lorem_ipsum
from markupsafe import Markup, soft_str

#: Largest integer, in bits, ``*`` or ``**`` may make (repeated squaring doubles the size).
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
        elif kind in _CONTAINERS:
            size = weight(value, self)
        else:
            return value
        self.allocated += size
        if self.allocated > self.max_allocated:
            raise self.fail(BUDGET_EXCEEDED, "render budget exceeded: the template built more "
                            f"than {self.max_allocated} characters in all")
        return value


_CONTAINERS = frozenset({list, tuple, dict, set, frozenset, Namespace})
_local = threading.local()
#: Outside a render (Jinja folds constant expressions while compiling): bounds, no deadline.
_UNTIMED = Budget(RenderLimits(max_steps=2**62), timed=False)
#: Strings shorter than this are not charged: to pile up, they must go into a container or a
#: concatenation, which are. (It keeps the common case free of the thread-local lookup.)
SMALL = 8192
_FREE = frozenset({int, float, bool, type(None)})


def charged(value: Any) -> Any:
    """``value``, checked and charged to the current render unless it is small."""
    kind = type(value)
    if ((kind is str or kind is Markup) and len(value) < SMALL) or kind in _FREE:
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
        elif kind in _CONTAINERS:
            stack.extend(object.__getattribute__(item, "_Namespace__attrs").values()
                         if kind is Namespace else item)
        if items_left < 0:
            raise budget.fail(TOO_LARGE, "a container would hold more than "
                              f"{budget.limits.max_items} items")
    budget.need(chars, "a container's text")
    return chars + budget.limits.max_items - items_left


# -- sizes computed before an operation runs -------------------------------------------------

_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[#0 +-]*(\*|\d+)?(?:\.(\*|\d+))?[a-zA-Z%]")
_FORMAT_WIDTH = re.compile(r"(\d+)")


def _check_width(budget: Budget, width: Any, what: str) -> None:
    if isinstance(width, int) and width > budget.limits.max_bytes:
        raise budget.fail(TOO_LARGE, f"{what}: width {width} is over the limit "
                          f"({budget.limits.max_bytes})")


def _percent_widths(template: str) -> tuple[int, bool]:
    """The widest width/precision written in a ``%`` template, and whether one is ``*``."""
    widest, star = 0, False
    for match in _PERCENT_SPEC.finditer(template):
        for number in match.groups():
            if number == "*":
                star = True
            elif number:
                widest = max(widest, int(number))
    return widest, star


#: ``%`` templates seen, with their widths (a template's few format strings, parsed once).
_WIDTHS: dict[str, tuple[int, bool]] = {}


def percent_format(template: str, values: Any) -> str:
    """``template % values`` with every width and precision checked first."""
    found = _WIDTHS.get(template)
    if found is None:
        found = _percent_widths(template)
        if len(_WIDTHS) < 4096 and len(template) < 256:
            _WIDTHS[template] = found
    if found[0] > SMALL or found[1]:
        budget = current()
        _check_width(budget, found[0], "% format")
        if found[1]:  # widths taken from the values
            for value in values if type(values) is tuple else (values,):
                _check_width(budget, value, "% format")
    result = template % values
    if type(result) is str and len(result) < SMALL:
        return result
    return current().charge(result)  # type: ignore[no-any-return]


class _BoundedFormatter(Formatter):
    """``str.format`` through the sandbox, with widths checked before formatting."""

    def __init__(self, env: Sandbox, budget: Budget) -> None:
        self.env = env
        self.budget = budget

    def get_field(self, field_name: str, args: Any, kwargs: Any) -> Any:
        from _string import formatter_field_name_split  # type: ignore[import-not-found]

        first, rest = formatter_field_name_split(field_name)
        obj = self.get_value(first, args, kwargs)
        for is_attr, key in rest:
            obj = self.env.getattr(obj, key) if is_attr else self.env.getitem(obj, key)
        return obj, first

    def format_field(self, value: Any, format_spec: str) -> Any:
        for number in _FORMAT_WIDTH.findall(format_spec):
            _check_width(self.budget, int(number), "str.format")
        if type(value) in _CONTAINERS:
            weight(value, self.budget)
        return format(value, format_spec)


def _join_size(budget: Budget, items: Iterable[Any], separator: str) -> None:
    size = 0
    count = 0
    for item in items:
        count += 1
        kind = type(item)
        size += len(item) if kind is str or kind is Markup else (
            weight(item, budget) if kind in _CONTAINERS else 24)
    budget.need(size + len(separator) * max(0, count - 1), "join")


def _replace_size(budget: Budget, text: Any, old: Any, new: Any, count: Any = -1) -> None:
    if not (isinstance(text, str) and isinstance(old, str) and isinstance(new, str)):
        return
    matches = (len(text) + 1) if not old else text.count(old)
    if isinstance(count, int) and count >= 0:
        matches = min(matches, count)
    budget.need(len(text) + matches * max(0, len(new) - len(old)), "replace")


#: ``str`` methods a template may call; everything else on a string is refused. Those that
#: can build more than their input have their size checked in :meth:`Sandbox.call`.
_STR_METHODS = frozenset({
    "capitalize", "casefold", "count", "endswith", "find", "index", "isalnum", "isalpha",
    "isascii", "isdecimal", "isdigit", "isidentifier", "islower", "isnumeric", "isprintable",
    "isspace", "istitle", "isupper", "lower", "lstrip", "partition", "removeprefix",
    "removesuffix", "rfind", "rindex", "rpartition", "rsplit", "rstrip", "split", "splitlines",
    "startswith", "strip", "swapcase", "title", "upper",
    "center", "ljust", "rjust", "zfill", "replace", "join", "format", "format_map",
    "escape", "unescape", "striptags",  # Markup's own
})


def _check_str_method(budget: Budget, name: str, text: str, args: tuple[Any, ...],
                      kwargs: Mapping[str, Any]) -> None:
    if name in ("center", "ljust", "rjust", "zfill"):
        _check_width(budget, args[0] if args else kwargs.get("width"), name)
    elif name == "replace":
        _replace_size(budget, text, *args, **kwargs)
    elif name == "join" and args:
        items = args[0]
        if type(items) in _CONTAINERS:
            _join_size(budget, items, text)


# -- filters: Jinja's own, each wrapped, the size-setting ones checked first -----------------

def _value_of(args: tuple[Any, ...], fn: Callable[..., Any]) -> tuple[Any, tuple[Any, ...]]:
    """The filtered value and its arguments (without the context Jinja passes first)."""
    skip = 1 if getattr(fn, "jinja_pass_arg", None) is not None else 0
    return (args[skip] if len(args) > skip else None), args[skip + 1:]


def _arg(rest: tuple[Any, ...], kwargs: Mapping[str, Any], index: int, name: str,
         default: Any) -> Any:
    return rest[index] if len(rest) > index else kwargs.get(name, default)


def _pre_filter(name: str, budget: Budget, value: Any, rest: tuple[Any, ...],
                kwargs: Mapping[str, Any]) -> None:
    if type(value) in _CONTAINERS and name in _PRINTING_FILTERS:
        weight(value, budget)
    text = value if isinstance(value, str) else ""
    if name == "center":
        _check_width(budget, _arg(rest, kwargs, 0, "width", 80), name)
    elif name == "indent":
        width = _arg(rest, kwargs, 0, "width", 4)
        step = width if isinstance(width, int) else len(str(width))
        budget.need(len(text) + (text.count("\n") + 1) * max(0, step), name)
    elif name == "wordwrap":
        width = _arg(rest, kwargs, 0, "width", 79)
        width = max(1, width if isinstance(width, int) else 1)
        wrap = _arg(rest, kwargs, 2, "wrapstring", None) or "\n"
        lines = len(text) // width + text.count("\n")
        budget.need(len(text) + (lines + 1) * len(str(wrap)), name)
        # textwrap splits a long word in time ~ length² / width (1 MB at width 1: 9 s), in C
        # calls no deadline can interrupt: refuse what would take more than ~0.2 s.
        if len(text) * len(text) // width > WORDWRAP_WORK:
            raise budget.fail(BUDGET_EXCEEDED, "render budget exceeded: wordwrap of "
                              f"{len(text)} characters at width {width}")
    elif name == "replace":
        _replace_size(budget, str(value), _arg(rest, kwargs, 0, "old", ""),
                      _arg(rest, kwargs, 1, "new", ""), _arg(rest, kwargs, 2, "count", None))
    elif name in ("batch", "slice"):
        size = _arg(rest, kwargs, 0, "linecount" if name == "batch" else "slices", 1)
        if isinstance(size, int) and size > budget.limits.max_items:
            raise budget.fail(TOO_LARGE, f"{name}: {size} is over the limit "
                              f"({budget.limits.max_items})")
    elif name == "join" and type(value) in _CONTAINERS:
        _join_size(budget, value, str(_arg(rest, kwargs, 0, "d", "")))
    elif name == "sum" and not isinstance(_arg(rest, kwargs, 1, "start", 0), (int, float)):
        # Concatenating sequences copies the running result at each item: n * total.
        if type(value) not in _CONTAINERS:
            raise budget.fail(TOO_LARGE, "sum: a start that is not a number needs a list")
        total = sum(weight(item, budget) for item in value)
        if len(value) * total > 10 * budget.limits.max_items:
            raise budget.fail(TOO_LARGE, f"sum: joining {len(value)} sequences of {total} items")
    elif name == "tojson":
        indent = _arg(rest, kwargs, 0, "indent", None)
        if isinstance(indent, int) and indent > 16:
            raise budget.fail(TOO_LARGE, f"tojson: indent {indent} is over 16")
    elif name == "urlize":
        # Every link it makes carries ``target`` and ``rel``: their size multiplies.
        extra = sum(len(str(kwargs.get(key) or "")) for key in ("target", "rel"))
        extra += sum(len(str(arg)) for arg in rest[2:4] if arg)
        budget.need(len(text) + (len(text) // 2 + 1) * (extra + 32) if extra > 64 else 0,
                    name)
    elif name == "truncate":
        end = _arg(rest, kwargs, 2, "end", "...")
        budget.need(len(text) + len(str(end)), name)


#: Filters that print their value: a container given to them is measured first.
_PRINTING_FILTERS = frozenset({"string", "e", "escape", "forceescape", "tojson", "pprint",
                               "format", "urlencode", "xmlattr", "center", "indent", "wordwrap",
                               "truncate", "replace", "trim", "upper", "lower", "title",
                               "capitalize", "striptags", "urlize", "wordcount"})


#: ``len(text)² / width`` above which ``wordwrap`` is refused (textwrap's cost on long words).
WORDWRAP_WORK = 20_000_000_000


def _charged_iter(iterator: Iterator[Any]) -> Iterator[Any]:
    """A lazy filter's results (``map``, ``select``…), each counted and charged as it comes:
    whatever collects them (``list``, ``join``, ``sort``) cannot pile up more than the budget."""
    budget = current()
    for item in iterator:
        budget.step()
        kind = type(item)
        if kind is str or kind is Markup:
            budget.need(len(item), "a value")
            budget.add(len(item))
        elif kind in _CONTAINERS:
            budget.charge(item)
        yield item


def _collected(iterable: Any) -> list[Any]:
    """An iterable's items in a list, each counted and charged as it comes."""
    return list(_charged_iter(iter(iterable)))


def _checked_result(value: Any) -> Any:
    """What a filter or call returned, checked: charged, or its items charged as they come."""
    kind = type(value)
    if kind is str or kind is Markup:
        return value if len(value) < SMALL else current().charge(value)
    if kind in _FREE:
        return value
    if kind in _CONTAINERS:
        return current().charge(value)
    if hasattr(value, "__next__"):
        return _charged_iter(value)
    return value


#: Filters whose result is at most proportional to their input: checked after they run.
_LINEAR_FILTERS = frozenset({
    "abs", "attr", "capitalize", "count", "d", "default", "dictsort", "filesizeformat", "first",
    "float", "groupby", "int", "items", "last", "length", "list", "lower", "map", "max", "min",
    "random", "reject", "rejectattr", "reverse", "round", "safe", "select", "selectattr",
    "sort", "title", "trim", "unique", "upper", "striptags", "wordcount"})
#: Of those, the ones that print a value given to them.
_PRINTING_LINEAR = frozenset({"capitalize", "lower", "title", "trim", "upper", "striptags",
                              "wordcount"})


def _bounded_filter(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    # Each filter is one bounded operation, so none checks the clock: loops and calls do.
    if name == "format":
        def do_format(value: Any, *args: Any, **kwargs: Any) -> Any:
            if args and kwargs:
                raise TypeError("can't handle positional and keyword arguments at the same time")
            found = _WIDTHS.get(value)  # percent_format, inlined: '%.2f'|format is everywhere
            if found is None or found[0] > SMALL or found[1] or type(value) is not str:
                if type(value) is not str:
                    check_printable(value)
                    value = soft_str(value)
                return percent_format(value, kwargs or args)
            result = value % (kwargs or args)
            return result if len(result) < SMALL else current().charge(result)
        return do_format

    if name in _PRINTING_LINEAR:
        @wraps(fn)
        def printing(*args: Any, **kwargs: Any) -> Any:
            check_printable(_value_of(args, fn)[0])
            return _checked_result(fn(*args, **kwargs))

        return printing
    if name in _LINEAR_FILTERS:
        @wraps(fn)
        def linear(*args: Any, **kwargs: Any) -> Any:
            return _checked_result(fn(*args, **kwargs))

        return linear

    skip = 1 if getattr(fn, "jinja_pass_arg", None) is not None else 0

    @wraps(fn)
    def bounded(*args: Any, **kwargs: Any) -> Any:
        budget = current()
        value, rest = _value_of(args, fn)
        if name == "join" and len(args) > skip and type(value) not in _CONTAINERS and not (
                isinstance(value, str)):
            value = _collected(value)  # a lazy input is sized before it is joined
            args = (*args[:skip], value, *args[skip + 1:])
        _pre_filter(name, budget, value, rest, kwargs)
        return _checked_result(fn(*args, **kwargs))

    return bounded


def _lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:
    """Jinja's placeholder text, at most 20 paragraphs of at most 200 words."""
    if not (isinstance(n, int) and isinstance(max, int) and n <= 20 and max <= 200):
        raise current().fail(TOO_LARGE, "lipsum: at most 20 paragraphs of 200 words")
    return generate_lorem_ipsum(n, html, min, max)


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
    _join_size(current(), parts, "")
    return current().charge(markup_join(parts))


def _bounded_str_join(seq: Iterable[Any]) -> Any:
    parts = tuple(seq)
    _join_size(current(), parts, "")
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


def check_printable(value: Any) -> None:
    """Measure a container before it is printed (its text could be far larger than it)."""
    if type(value) in _CONTAINERS:
        weight(value, current())


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
        self.filters = {name: _bounded_filter(name, fn) for name, fn in self.filters.items()}
        self.globals["lipsum"] = _lipsum

    @staticmethod
    def guard_value(value: Any) -> Any:
        return current().charge(value)

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        if isinstance(obj, str) and attr not in _STR_METHODS:
            return False
        return super().is_safe_attribute(obj, attr, value)

    def getattr(self, obj: Any, attribute: str) -> Any:
        # Template data is JSON: ``order.items`` means the key, not dict.items. Looking the key
        # up first is also what makes data access cheap (the sandbox's attribute check and a
        # caught AttributeError cost ~3 µs per access, most of a loop's render time). Only
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
            result = _BoundedFormatter(self, budget).vformat(text, args, kwargs)
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
            if __obj.__name__ == "join" and args and type(args[0]) not in _CONTAINERS:
                args = (_collected(args[0]), *args[1:])  # to size it before joining
            _check_str_method(budget, __obj.__name__, owner, args, kwargs)
        elif isinstance(__obj, LoopContext) and args:  # a recursive loop's next level
            args = (_each_step(args[0], budget), *args[1:])
        return _checked_result(super().call(__context, __obj, *args, **kwargs))

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
