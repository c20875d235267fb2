"""Bounded versions of what templates can call: ``%`` and ``str.format`` with their widths checked,
string methods on an allow-list, and every Jinja filter wrapped so that a size set by an argument is
checked before it runs and what it returns is charged to the render's budget."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from functools import wraps
from string import Formatter
from typing import Any

from jinja2.sandbox import SandboxedEnvironment
from jinja2.utils import generate_lorem_ipsum
from markupsafe import Markup, soft_str

from .render_budget import (
    BUDGET_EXCEEDED,
    CONTAINERS,
    FREE,
    SMALL,
    TOO_LARGE,
    Budget,
    check_printable,
    current,
    weight,
)

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


class BoundedFormatter(Formatter):
    """``str.format`` through the sandbox, with widths checked before formatting."""

    def __init__(self, env: SandboxedEnvironment, budget: Budget) -> None:
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
        if type(value) in CONTAINERS:
            weight(value, self.budget)
        return format(value, format_spec)


def join_size(budget: Budget, items: Iterable[Any], separator: str) -> None:
    size = 0
    count = 0
    for item in items:
        count += 1
        kind = type(item)
        size += len(item) if kind is str or kind is Markup else (
            weight(item, budget) if kind in CONTAINERS else 24)
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
STR_METHODS = frozenset({
    "capitalize", "casefold", "count", "endswith", "find", "index", "isalnum", "isalpha",
    "isascii", "isdecimal", "isdigit", "isidentifier", "islower", "isnumeric", "isprintable",
    "isspace", "istitle", "isupper", "lower", "lstrip", "partition", "removeprefix",
    "removesuffix", "rfind", "rindex", "rpartition", "rsplit", "rstrip", "split", "splitlines",
    "startswith", "strip", "swapcase", "title", "upper",
    "center", "ljust", "rjust", "zfill", "replace", "join", "format", "format_map",
    "escape", "unescape", "striptags",  # Markup's own
})


def check_str_method(budget: Budget, name: str, text: str, args: tuple[Any, ...],
                      kwargs: Mapping[str, Any]) -> None:
    if name in ("center", "ljust", "rjust", "zfill"):
        _check_width(budget, args[0] if args else kwargs.get("width"), name)
    elif name == "replace":
        _replace_size(budget, text, *args, **kwargs)
    elif name == "join" and args:
        items = args[0]
        if type(items) in CONTAINERS:
            join_size(budget, items, text)


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
    if type(value) in CONTAINERS and name in _PRINTING_FILTERS:
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
    elif name == "join" and type(value) in CONTAINERS:
        join_size(budget, value, str(_arg(rest, kwargs, 0, "d", "")))
    elif name == "sum" and not isinstance(_arg(rest, kwargs, 1, "start", 0), (int, float)):
        # Concatenating sequences copies the running result at each item: n * total.
        if type(value) not in CONTAINERS:
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


def charged_iter(iterator: Iterator[Any]) -> Iterator[Any]:
    """A lazy filter's results (``map``, ``select``…), each counted and charged as it comes:
    whatever collects them (``list``, ``join``, ``sort``) cannot pile up more than the budget."""
    budget = current()
    for item in iterator:
        budget.step()
        kind = type(item)
        if kind is str or kind is Markup:
            budget.need(len(item), "a value")
            budget.add(len(item))
        elif kind in CONTAINERS:
            budget.charge(item)
        yield item


def collected(iterable: Any) -> list[Any]:
    """An iterable's items in a list, each counted and charged as it comes."""
    return list(charged_iter(iter(iterable)))


def checked_result(value: Any) -> Any:
    """What a filter or call returned, checked: charged, or its items charged as they come."""
    kind = type(value)
    if kind is str or kind is Markup:
        return value if len(value) < SMALL else current().charge(value)
    if kind in FREE:
        return value
    if kind in CONTAINERS:
        return current().charge(value)
    if hasattr(value, "__next__"):
        return charged_iter(value)
    return value


#: Filters whose result is at most proportional to their input: checked after they run.
_LINEAR_FILTERS = frozenset({
    "abs", "attr", "capitalize", "count", "d", "default", "dictsort", "filesizeformat", "first",
    "float", "groupby", "int", "items", "last", "length", "list", "lower", "map", "max", "min",
    "money", "random", "reject", "rejectattr", "reverse", "round", "safe", "select", "selectattr",
    "sort", "title", "trim", "unique", "upper", "striptags", "wordcount"})
#: Of those, the ones that print a value given to them.
_PRINTING_LINEAR = frozenset({"capitalize", "lower", "title", "trim", "upper", "striptags",
                              "wordcount"})


def bounded_filter(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
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
            return checked_result(fn(*args, **kwargs))

        return printing
    if name in _LINEAR_FILTERS:
        @wraps(fn)
        def linear(*args: Any, **kwargs: Any) -> Any:
            return checked_result(fn(*args, **kwargs))

        return linear

    skip = 1 if getattr(fn, "jinja_pass_arg", None) is not None else 0

    @wraps(fn)
    def bounded(*args: Any, **kwargs: Any) -> Any:
        budget = current()
        value, rest = _value_of(args, fn)
        if name == "join" and len(args) > skip and type(value) not in CONTAINERS and not (
                isinstance(value, str)):
            value = collected(value)  # a lazy input is sized before it is joined
            args = (*args[:skip], value, *args[skip + 1:])
        _pre_filter(name, budget, value, rest, kwargs)
        return checked_result(fn(*args, **kwargs))

    return bounded


def lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:
    """Jinja's placeholder text, at most 20 paragraphs of at most 200 words."""
    if not (isinstance(n, int) and isinstance(max, int) and n <= 20 and max <= 200):
        raise current().fail(TOO_LARGE, "lipsum: at most 20 paragraphs of 200 words")
    return generate_lorem_ipsum(n, html, min, max)
