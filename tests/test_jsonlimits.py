"""Bounds on decoded JSON: depth and value count, exactly at and just over the limits."""

from __future__ import annotations

from typing import Any

import pytest

from mailcore.errors import InvalidRequest
from mailcore.jsonlimits import MAX_DEPTH, check_json


def nested(depth: int, kind: str) -> Any:
    value: Any = 0
    for level in range(depth):
        as_dict = kind == "dicts" or (kind == "mixed" and level % 2)
        value = {"k": value} if as_dict else [value]
    return value


@pytest.mark.parametrize("kind", ["dicts", "lists", "mixed"])
def test_depth_at_the_limit_passes_and_one_more_is_refused(kind: str) -> None:
    check_json(nested(MAX_DEPTH, kind))
    with pytest.raises(InvalidRequest, match=f"nested deeper than {MAX_DEPTH} levels") as error:
        check_json(nested(MAX_DEPTH + 1, kind))
    assert error.value.details[0]["message"] == f"nested deeper than {MAX_DEPTH} levels"


def test_the_path_names_where_it_is_too_deep() -> None:
    body = {"to": "a@example.com", "data": {"ok": [1, 2], "deep": nested(40, "dicts")}}
    with pytest.raises(InvalidRequest) as error:
        check_json(body)
    field = error.value.details[0]["field"]
    assert field.startswith("data.deep.k") and "..." in field and len(field) < 120


def test_value_count_at_the_limit_passes_and_beyond_is_refused() -> None:
    check_json({"a": [0] * 9, "b": {}}, max_nodes=11)  # 2 members + 9 items
    with pytest.raises(InvalidRequest, match="more than 11 values"):
        check_json({"a": [0] * 10, "b": {}}, max_nodes=11)


@pytest.mark.parametrize("value", [None, 1, "text", 1.5, True, [], {}])
def test_scalars_and_empty_containers_pass(value: Any) -> None:
    check_json(value)


def test_shared_subtrees_are_counted_each_time() -> None:
    shared = [0] * 1000
    with pytest.raises(InvalidRequest):
        check_json([shared] * 200)  # 200,200 values although few distinct objects
