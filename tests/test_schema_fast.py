"""The quick template-data check (mailcore/schema_fast.py) never says "valid" where jsonschema
finds an error, says it for ordinary valid data (or it would save nothing), and declines
schemas it does not fully understand."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailcore.rendering import TemplateError
from mailcore.schema_fast import compile_check
from mailcore.templates import TemplateRegistry, builtin_templates_dir

_TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
SCHEMAS: list[dict[str, Any]] = [
    json.loads((_TEMPLATES / name / "variables.json").read_text())
    for name in ("password_reset", "order_confirmation")
] + [
    {"type": "object", "properties": {"n": {"type": "integer", "minimum": -3, "maximum": 7.5},
                                      "x": {"type": ["number", "boolean"], "maximum": 0},
                                      "s": {"type": "string", "pattern": "^a+$"},
                                      "l": {"type": "array", "items": {"type": "null"},
                                            "maxItems": 2}},
     "required": ["n"], "title": "t"},
]

_SCALARS = (st.none() | st.booleans() | st.integers(-20, 20) | st.floats(allow_nan=True)
            | st.sampled_from([1.0, -0.0, 7.5, 1e300]) | st.text(max_size=8)
            | st.sampled_from(["a", "aaa", "ba", "USD", "us", "x" * 65, "", "ü" * 64]))
_VALUES = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=3)
                       | st.dictionaries(st.sampled_from(
                           ["email", "code", "name", "n", "x", "s", "l", "order_id", "customer",
                            "items", "total", "currency", "product_id", "quantity", "price",
                            "phone", "address"]), inner, max_size=6), max_leaves=12)


@pytest.mark.parametrize("schema", SCHEMAS)
@settings(max_examples=400, deadline=None)
@given(data=_VALUES)
def test_never_valid_where_jsonschema_finds_an_error(schema: dict[str, Any], data: Any) -> None:
    check = compile_check(schema)
    assert check is not None
    if check(data):
        assert jsonschema.Draft202012Validator(schema).is_valid(data), data


def test_ordinary_valid_data_is_answered_without_jsonschema() -> None:
    reset, order, _ = (compile_check(schema) for schema in SCHEMAS)
    assert reset is not None and order is not None
    assert reset({"email": "ada@example.org", "code": "123456", "expires_in_minutes": 30})
    assert order({"order_id": "A1", "customer": {"name": "Ada", "email": "a@example.org",
                                                 "phone": None},
                  "items": [{"product_id": "p", "name": "Pen", "quantity": 2, "price": 1.5}],
                  "total": 3, "currency": "EUR"})
    assert not reset({"email": "ada@example.org"})  # missing code
    assert not reset({"email": "ada@example.org", "code": "1", "expires_in_minutes": True})
    assert not reset({"email": "ada@example.org", "code": "1", "expires_in_minutes": math.nan})


@pytest.mark.parametrize("schema", [
    {"type": "object", "additionalProperties": False},
    {"type": "object", "properties": {"a": {"format": "email"}}},
    {"type": "object", "properties": {"a": True}},
    {"$schema": "http://json-schema.org/draft-04/schema#", "type": "object"},
    {"type": "object", "properties": {"a": {"type": "strin"}}},
    {"$ref": "#/$defs/x", "$defs": {"x": {"type": "object"}}},
])
def test_a_schema_not_fully_understood_is_left_to_jsonschema(schema: dict[str, Any]) -> None:
    assert compile_check(schema) is None


def test_templates_still_word_errors_as_jsonschema_does() -> None:
    template = TemplateRegistry.from_dir(builtin_templates_dir()).get("password_reset")
    assert template is not None and template._valid is not None
    template.validate_data({"email": "ada@example.org", "code": "1"})
    bad = {"email": "ada@example.org", "code": "", "name": 3}
    with pytest.raises(TemplateError) as quick:
        template.validate_data(bad)
    template._valid = None  # jsonschema alone
    with pytest.raises(TemplateError) as alone:
        template.validate_data(bad)
    assert quick.value.violations == alone.value.violations
    assert [field for field, _ in quick.value.violations] == ["code", "name"]
