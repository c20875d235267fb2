"""Template data kept out of text that reaches logs and statuses.

Python's and libraries' messages can quote a value (``KeyError: '123456'``, a validation
error's ``input_value=…``), and template data may be secret (a password-reset code).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

BLANK = "<data>"


def data_values(data: Any, *, min_length: int, limit: int,
                keep: Callable[[str], bool] = lambda _: False) -> list[str]:
    """The scalar values in ``data`` (nested dicts and lists) as text, longest first.

    Values shorter than ``min_length`` are left out (blanking ``1`` would shred any text), as are
    those ``keep`` says may stay; at most ``limit`` values are collected.
    """
    values: set[str] = set()
    stack: list[Any] = [data]
    while stack and len(values) < limit:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str | int | float) and not isinstance(item, bool):
            text = str(item)
            if len(text) >= min_length and not keep(text):
                values.add(text)
    return sorted(values, key=len, reverse=True)


def blank(text: str, values: list[str]) -> str:
    """``text`` with each of ``values`` (longest first, so no value is half-blanked) replaced."""
    for value in values:
        if value in text:
            text = text.replace(value, BLANK)
    return text
