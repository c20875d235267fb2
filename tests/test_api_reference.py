"""The API's references stay whole as routes and errors are added: every route the app serves is
in the OpenAPI document (with that method) and in the README's API table; every error code the
code can answer with is in the OpenAPI ``Error`` description and in the README's errors table;
every message status and webhook event type is in the OpenAPI document."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.routing import Mount, Route
from starlette.testclient import TestClient

from mailcore import lifecycle, status
from service.app import create_app
from service.openapi import ERROR_CODES, openapi_document

from .support import REPO, RedisServer, app_settings

#: Served, but documentation or scraping rather than API.
NOT_API = {"/openapi.json", "/docs", "/metrics"}


@pytest.fixture(scope="module")
def routes(redis_server: RedisServer) -> Iterator[set[tuple[str, str]]]:
    prefix = f"ref-{uuid.uuid4().hex[:8]}"
    settings = app_settings(redis_server.url, KEY_PREFIX=prefix, QUEUE_NAME=prefix)
    with TestClient(create_app(settings)) as client:
        found: set[tuple[str, str]] = set()

        def walk(entries: list[Any], prefix: str = "") -> None:
            for entry in entries:
                if isinstance(entry, Mount):
                    walk(entry.routes, prefix + entry.path)
                elif isinstance(entry, Route):
                    path = prefix + re.sub(r":[a-z]+}", "}", entry.path)
                    found.update((method, path) for method in entry.methods or ()
                                 if method != "HEAD")

        walk(list(client.app.routes))  # type: ignore[attr-defined]
        yield {(method, path) for method, path in found
               if path not in NOT_API and not path.startswith("/docs/")}


def _readme_api_table() -> str:
    text = (REPO / "README.md").read_text()
    start = text.index("| Method and path | What it does |")
    return text[start:text.index("\n\n", start)]


def _readme_errors_table() -> str:
    text = (REPO / "README.md").read_text()
    start = text.index("| Status | When |")
    return text[start:text.index("\n\n", start)]


def test_every_route_is_in_the_openapi_document(routes: set[tuple[str, str]]) -> None:
    paths = openapi_document()["paths"]
    missing = sorted(f"{method} {path}" for method, path in routes
                     if method.lower() not in paths.get(path, {}))
    assert missing == []
    documented = {(method.upper(), path) for path, operations in paths.items()
                  for method in operations if method != "parameters"}
    assert sorted(documented - routes) == []


def test_every_route_is_in_the_readme_api_table(routes: set[tuple[str, str]]) -> None:
    table = _readme_api_table()
    missing = sorted(f"{method} {path}" for method, path in routes
                     if f"`{method} {path}`" not in table)
    assert missing == []


def _answered_codes() -> set[str]:
    """Codes the service and domain code construct: ``ApiError(status, "code", …)``, a domain
    error's ``code = "…"``, and ``http_error``'s table."""
    codes: set[str] = set()
    for folder in ("service", "mailcore"):
        for path in (REPO / folder).rglob("*.py"):
            text = path.read_text()
            codes.update(re.findall(r'ApiError\(\s*\d{3},\s*"([a-z_]+)"', text))
            codes.update(re.findall(r'^\s+code(?::\s*str)?\s*=\s*"([a-z_]+)"', text, re.MULTILINE))
    codes.discard("error")  # the base class's placeholder
    return codes


def test_every_error_code_is_documented() -> None:
    answered = _answered_codes()
    assert {"not_cancellable", "invalid_webhook_url", "too_many_endpoints",
            "invalid_send_at", "invalid_import"} <= answered  # the scan finds them
    assert sorted(answered - set(ERROR_CODES)) == []
    table = _readme_errors_table()
    assert sorted(code for code in ERROR_CODES if f"`{code}`" not in table) == []


def test_every_status_and_event_type_is_in_the_openapi_document() -> None:
    schemas = openapi_document()["components"]["schemas"]
    statuses = set(schemas["MessageStatus"]["properties"]["status"]["enum"])
    known = {value for name, value in vars(status).items()
             if name.isupper() and isinstance(value, str) and value in statuses | {
                 "scheduled", "cancelled", "suppressed", "bounced", "complained"}}
    assert {"scheduled", "cancelled", "suppressed", "bounced", "complained"} <= statuses
    assert known <= statuses
    events = set(schemas["EndpointSpec"]["properties"]["events"]["items"]["enum"])
    assert events == set(lifecycle.EVENT_TYPES)
