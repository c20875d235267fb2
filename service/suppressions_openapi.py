"""The OpenAPI description of the suppression list and one-click unsubscribe endpoints (merged
into the document by :mod:`service.openapi`)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Reason = Literal["hard_bounce", "complaint", "unsubscribe", "manual"]
_SCOPE = r"^[a-z][a-z0-9_-]{0,31}$"
_SCOPE_TEXT = "`global` or a stream name (`transactional`, `bulk`, ...)"


class Suppression(BaseModel):
    model_config = ConfigDict(extra="forbid")

    address: str = Field(description="The mailbox key: lower case, A-label domain, no +tag")
    reason: Reason
    scope: str = Field(description=_SCOPE_TEXT)
    source_message_id: str | None = Field(description="The message that caused it, if any")
    created_at: datetime
    expires_at: datetime | None = Field(description="From then on it no longer applies")


class SuppressionAdd(BaseModel):
    """One entry to add (or replace); also one line of a JSONL import."""

    model_config = ConfigDict(extra="forbid")

    address: str = Field(max_length=1024, description=(
        "Any spelling of the address: `Ada+news@Example.COM` is stored as `ada@example.com` "
        "and suppresses every +tag of the mailbox"))
    reason: Reason = "manual"
    scope: str = Field("global", pattern=_SCOPE, description=_SCOPE_TEXT)
    source_message_id: str | None = Field(None, min_length=1, max_length=200)
    created_at: datetime | None = Field(None, description="Default: now")
    expires_at: datetime | None = Field(None, description="Must be in the future; default: never")


class SuppressionPage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    suppressions: list[Suppression]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; "
                                                "null at the end")


class Imported(BaseModel):
    model_config = ConfigDict(extra="forbid")

    imported: int


MODELS: list[type[BaseModel]] = [Suppression, SuppressionAdd, SuppressionPage, Imported]

_ADDRESS = {"name": "address", "in": "path", "required": True, "schema": {"type": "string"},
            "description": "The address (percent-encoded)"}
_SCOPE_QUERY = {"name": "scope", "in": "query", "required": False,
                "schema": {"type": "string", "pattern": _SCOPE}}
_REASON_QUERY = {"name": "reason", "in": "query", "required": False,
                 "schema": {"type": "string",
                            "enum": ["hard_bounce", "complaint", "unsubscribe", "manual"]}}
_TOKEN = {"name": "token", "in": "path", "required": True, "schema": {"type": "string"}}
_HTML = {"text/html": {"schema": {"type": "string"}}}
_JSONL = {"type": "string", "description": "One SuppressionAdd JSON object per line"}


def suppression_paths(json: Callable[[type[BaseModel], str], dict[str, Any]],
                      errors: Callable[..., dict[str, Any]],
                      ref: Callable[[type[BaseModel]], dict[str, str]]) -> dict[str, Any]:
    """The paths, built with the document's own helpers."""
    return {
        "/v1/suppressions": {
            "get": {"summary": "List suppressions, paged with a cursor",
                    "operationId": "listSuppressions",
                    "parameters": [
                        {"name": "limit", "in": "query", "required": False,
                         "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
                        {"name": "cursor", "in": "query", "required": False,
                         "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,800}$"}},
                        _REASON_QUERY, _SCOPE_QUERY],
                    "responses": {"200": json(SuppressionPage, "A page"), **errors(401, 422)}},
            "post": {"summary": "Add or replace a suppression (admin scope)",
                     "operationId": "addSuppression",
                     "requestBody": {"required": True, "content": {
                         "application/json": {"schema": ref(SuppressionAdd)}}},
                     "responses": {"201": json(Suppression, "Stored"),
                                   **errors(400, 401, 403, 408, 413, 422)}},
        },
        "/v1/suppressions/import": {"post": {
            "summary": "Import JSONL (admin scope): every line is validated first; any bad "
                       "line refuses the whole import, listing the bad lines by number",
            "operationId": "importSuppressions",
            "requestBody": {"required": True, "content": {
                "application/x-ndjson": {"schema": _JSONL}, "text/plain": {"schema": _JSONL}}},
            "responses": {"200": json(Imported, "All imported"),
                          **errors(400, 401, 403, 408, 413, 422)}}},
        "/v1/suppressions/export": {"get": {
            "summary": "Export every suppression in force as JSONL (streamed)",
            "operationId": "exportSuppressions", "parameters": [_REASON_QUERY, _SCOPE_QUERY],
            "responses": {"200": {"description": "JSONL, one Suppression per line",
                                  "content": {"application/x-ndjson": {"schema": _JSONL}}},
                          **errors(401, 422)}}},
        "/v1/suppressions/{address}": {
            "get": {"summary": "One suppression", "operationId": "getSuppression",
                    "parameters": [_ADDRESS, _SCOPE_QUERY],
                    "responses": {"200": json(Suppression, "The entry"),
                                  **errors(401, 404, 422)}},
            "delete": {"summary": "Delete a suppression (admin scope)",
                       "operationId": "deleteSuppression",
                       "parameters": [_ADDRESS, _SCOPE_QUERY],
                       "responses": {"204": {"description": "Deleted"},
                                     **errors(401, 403, 404, 422)}},
        },
        "/u/{token}": {
            "get": {"summary": "One-click unsubscribe: the confirmation page (changes nothing)",
                    "operationId": "unsubscribePage", "security": [], "parameters": [_TOKEN],
                    "responses": {"200": {"description": "A form that POSTs", "content": _HTML},
                                  "404": {"description": "Not a valid link (every bad token "
                                                         "alike)", "content": _HTML}}},
            "post": {"summary": "One-click unsubscribe (RFC 8058): add an `unsubscribe` "
                                "suppression for the token's address and stream",
                     "operationId": "unsubscribe", "security": [], "parameters": [_TOKEN],
                     "responses": {"200": {"description": "Unsubscribed", "content": _HTML},
                                   "404": {"description": "Not a valid link", "content": _HTML}}},
        },
    }
