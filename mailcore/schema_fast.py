"""A quick "valid" for template data, before jsonschema.

jsonschema's generic walk costs 15-20 µs for a handful of fields, on every request at the door.
Template variables use a small part of JSON Schema, so such a schema is compiled here into a few
closures that answer *certainly valid* (True) or *ask jsonschema* (False). Only True is trusted:
on False the caller runs jsonschema, which decides and words the errors. So this may be stricter
than the schema (a float 1.0 for an ``integer``, a ``str`` subclass: False), never looser, and a
schema using any keyword not below is not compiled at all.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

#: True only when the instance is certainly valid.
Check = Callable[[Any], bool]

_DRAFT_2020_12 = "https://json-schema.org/draft/2020-12/schema"
# Keywords that assert nothing (Draft 2020-12 without a format checker, as rendering.py builds it).
_ANNOTATIONS = frozenset({"title", "description", "$comment", "examples", "default"})
_SUPPORTED = frozenset({"type", "required", "properties", "minLength", "maxLength", "pattern",
                        "minimum", "maximum", "minItems", "maxItems", "items"}) | _ANNOTATIONS

# Exact types only (``type(x) is``): bool is not a number, subclasses go to jsonschema.
_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,), "integer": (int,), "number": (int, float), "boolean": (bool,),
    "null": (type(None),), "object": (dict,), "array": (list,),
}


class _Unsupported(Exception):
    """The schema uses something this module does not check: leave it all to jsonschema."""


def compile_check(schema: Mapping[str, Any] | None) -> Check | None:
    """The quick check of ``schema`` (a template's ``variables``), or None when it has none."""
    if not isinstance(schema, Mapping):
        return None
    root = dict(schema)
    if root.pop("$schema", _DRAFT_2020_12) != _DRAFT_2020_12:
        return None  # another draft: other meanings (e.g. ``items``)
    try:
        return _compile(root)
    except _Unsupported:
        return None


def _compile(schema: Any) -> Check:
    if not isinstance(schema, Mapping) or not set(schema) <= _SUPPORTED:
        raise _Unsupported
    checks: list[Check] = []
    if "type" in schema:
        checks.append(_type_check(schema["type"]))
    strings = _string_checks(schema)
    if strings:
        checks.append(lambda value: type(value) is not str or all(c(value) for c in strings))
    numbers = _number_checks(schema)
    if numbers:
        checks.append(lambda value: type(value) not in (int, float)
                      or all(c(value) for c in numbers))
    objects = _object_checks(schema)
    if objects:
        checks.append(lambda value: type(value) is not dict or all(c(value) for c in objects))
    arrays = _array_checks(schema)
    if arrays:
        checks.append(lambda value: type(value) is not list or all(c(value) for c in arrays))
    if len(checks) == 1:
        return checks[0]
    return lambda value: all(check(value) for check in checks)


def _type_check(names: Any) -> Check:
    names = [names] if isinstance(names, str) else names
    if not isinstance(names, list) or not names or any(name not in _TYPES for name in names):
        raise _Unsupported
    allowed = frozenset(kind for name in names for kind in _TYPES[name])
    return lambda value: type(value) in allowed


def _number(schema: Mapping[str, Any], key: str) -> int | float | None:
    value = schema.get(key)
    if value is None:
        return None
    if type(value) not in (int, float):
        raise _Unsupported
    return value  # type: ignore[no-any-return]


def _count(schema: Mapping[str, Any], key: str) -> int | None:
    value = schema.get(key)
    if value is None:
        return None
    if type(value) is not int or value < 0:
        raise _Unsupported
    return value


def _string_checks(schema: Mapping[str, Any]) -> list[Check]:
    checks: list[Check] = []
    low, high = _count(schema, "minLength"), _count(schema, "maxLength")
    if low is not None:
        checks.append(lambda text: len(text) >= low)
    if high is not None:
        checks.append(lambda text: len(text) <= high)
    if "pattern" in schema:
        if not isinstance(schema["pattern"], str):
            raise _Unsupported
        try:
            search = re.compile(schema["pattern"]).search  # as jsonschema: re.search
        except re.error:
            raise _Unsupported from None
        checks.append(lambda text: search(text) is not None)
    return checks


def _number_checks(schema: Mapping[str, Any]) -> list[Check]:
    checks: list[Check] = []
    low, high = _number(schema, "minimum"), _number(schema, "maximum")
    # A NaN compares false either way: not certainly valid, so jsonschema decides.
    if low is not None:
        checks.append(lambda number: number >= low)
    if high is not None:
        checks.append(lambda number: number <= high)
    return checks


def _object_checks(schema: Mapping[str, Any]) -> list[Check]:
    checks: list[Check] = []
    required = schema.get("required")
    if required is not None:
        if not isinstance(required, list) or not all(isinstance(n, str) for n in required):
            raise _Unsupported
        names = tuple(required)
        checks.append(lambda mapping: all(name in mapping for name in names))
    properties = schema.get("properties")
    if properties is not None:
        if not isinstance(properties, Mapping):
            raise _Unsupported
        compiled = {str(name): _compile(sub) for name, sub in properties.items()}

        def each(mapping: dict[str, Any]) -> bool:
            for name, check in compiled.items():
                if name in mapping and not check(mapping[name]):
                    return False
            return True

        checks.append(each)
    return checks


def _array_checks(schema: Mapping[str, Any]) -> list[Check]:
    checks: list[Check] = []
    low, high = _count(schema, "minItems"), _count(schema, "maxItems")
    if low is not None:
        checks.append(lambda items: len(items) >= low)
    if high is not None:
        checks.append(lambda items: len(items) <= high)
    if "items" in schema:
        item = _compile(schema["items"])
        checks.append(lambda items: all(item(value) for value in items))
    return checks
