"""Bounds on decoded JSON (request bodies, events) checked before any model sees it.

Deep nesting breaks serialisation later (orjson refuses more than 254 levels when a job is
written) and costs recursion everywhere; a huge count of tiny values costs validation time out
of proportion to the body's size. Both are refused up front, naming where.
"""

from __future__ import annotations

from typing import Any

from .errors import InvalidRequest

#: Deepest nesting of objects and arrays; the body itself is level 1 (``data`` is level 2).
MAX_DEPTH = 32
#: Most values (members of objects, items of arrays) in one body or event.
MAX_NODES = 100_000

_SCALARS = frozenset({str, int, float, bool, type(None)})


def check_json(value: Any, *, max_depth: int = MAX_DEPTH, max_nodes: int = MAX_NODES) -> None:
    """Raise :class:`InvalidRequest` when ``value`` nests deeper than ``max_depth`` levels or
    holds more than ``max_nodes`` values in all."""
    if not isinstance(value, dict | list):
        return
    nodes = 0
    stack: list[tuple[dict[str, Any] | list[Any], int]] = [(value, 1)]
    while stack:
        container, depth = stack.pop()
        if depth > max_depth:
            path = _path_to_depth(value, max_depth + 1)
            raise InvalidRequest(
                f"{path}: nested deeper than {max_depth} levels",
                details=[{"field": path, "message": f"nested deeper than {max_depth} levels"}])
        children = container.values() if isinstance(container, dict) else container
        nodes += len(children)
        if nodes > max_nodes:
            raise InvalidRequest(
                f"body: more than {max_nodes} values",
                details=[{"field": "body", "message": f"more than {max_nodes} values"}])
        for child in children:
            kind = type(child)  # an exact-type test first: JSON is mostly scalars
            if kind in _SCALARS:
                continue
            if kind is dict or kind is list or isinstance(child, dict | list):
                stack.append((child, depth + 1))


def _path_to_depth(value: Any, depth: int) -> str:
    """The dotted path (``data.a.0.b``) of the first container at ``depth``, shortened."""
    parts: list[str] = []

    def find(node: Any, level: int) -> bool:
        if not isinstance(node, dict | list):
            return False
        if level == depth:
            return True
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, child in items:
            parts.append(str(key))
            if find(child, level + 1):
                return True
            parts.pop()
        return False

    find(value, 1)
    if not parts:
        return "body"
    shown = [part if len(part) <= 40 else part[:37] + "..." for part in parts]
    return ".".join(shown if len(shown) <= 6 else [*shown[:3], "...", *shown[-2:]])
