"""The suppression list: addresses this service must not mail, and why.

One entry per (scope, mailbox): ``scope`` is ``"global"`` or a stream name (``transactional``,
``bulk``, ...); the mailbox is :func:`mailcore.addresses.mailbox_key` of the address, so
``Ada+news@Example.COM`` and ``ada@example.com`` are one entry. An entry may expire: from
``expires_at`` on it no longer applies (it is removed lazily when read or listed).

Redis layout (``<prefix>`` is the installation's key prefix)::

    <prefix>:supp              hash   "<scope>:<mailbox>" -> entry JSON (Suppression.to_json)
    <prefix>:supp:idx          zset   "<scope>:<mailbox>", all scores 0 (lexicographic order)
    <prefix>:supp:idx:<reason> zset   the same, for the entries with that reason

The hash answers the hot lookup (door and send time) in one ``HMGET`` for every recipient in
both scopes; the sorted sets give stable cursor paging (``ZRANGEBYLEX`` after the last member
returned), by scope (a lexicographic range) and by reason (its own index). Scope names cannot
contain ``:``, so the first ``:`` of a field always ends the scope.

Writers that must record something else in the same step (a status write, a lifecycle event)
queue :func:`add_to` on their own ``MULTI`` pipeline; Lua scripts include :data:`LOOKUP_LUA`
and pass :func:`lookup_fields` as arguments.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis
import redis.asyncio as aioredis

from .addresses import mailbox_key, normalize_address

REASONS = ("hard_bounce", "complaint", "unsubscribe", "manual")
GLOBAL = "global"
#: The stream a request without ``stream`` belongs to.
DEFAULT_STREAM = "transactional"
#: Scope (stream) names: short, lower case, no ``:`` (it separates scope from mailbox).
SCOPE_PATTERN = re.compile(r"^[a-z][a-z0-9_-]{0,31}\Z")
#: The most entries one page returns.
MAX_PAGE = 1000
#: Index members read per round when a filter skips expired entries.
_SCAN_BATCH = 200


def validate_scope(scope: str) -> str:
    """``scope`` unchanged, or ``ValueError``."""
    if not isinstance(scope, str) or not SCOPE_PATTERN.match(scope):
        raise ValueError("scope must be 'global' or a stream name (a-z, 0-9, '_' or '-', "
                         "at most 32 characters, starting with a letter)")
    return scope


def suppression_address(address: str) -> str:
    """The form an entry is stored under: the address validated, then folded to its mailbox key.

    Raises ``ValueError`` (with the reason) for anything that is not one valid address.
    """
    if not isinstance(address, str):
        raise ValueError("address must be a string")
    if len(address) > 1024:
        raise ValueError("not a valid email address: far too long")
    return mailbox_key(normalize_address(address))


@dataclass(frozen=True)
class Suppression:
    """One entry.

    Parameters:
      address: the mailbox key (:func:`suppression_address`).
      reason: one of :data:`REASONS`.
      scope: ``"global"`` or a stream name.
      source_message_id: the message that caused it (a bounce, an unsubscribe), if any.
      created_at: epoch seconds.
      expires_at: epoch seconds from which the entry no longer applies; ``None`` for never.
    """

    address: str
    reason: str
    scope: str = GLOBAL
    source_message_id: str | None = None
    created_at: float = field(default_factory=time.time)
    expires_at: float | None = None

    def __post_init__(self) -> None:
        if self.reason not in REASONS:
            raise ValueError(f"reason must be one of {', '.join(REASONS)}")
        validate_scope(self.scope)
        if not isinstance(self.address, str) or "@" not in self.address:
            raise ValueError("address must be an address")
        for name in ("created_at", "expires_at"):
            value = getattr(self, name)
            if value is None and name == "expires_at":
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or \
                    not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite, non-negative epoch time")
        if self.source_message_id is not None and (
                not isinstance(self.source_message_id, str) or
                not 0 < len(self.source_message_id) <= 200):
            raise ValueError("source_message_id must be a string of 1 to 200 characters")

    def applies(self, now: float | None = None) -> bool:
        """Whether the entry is in force (not expired)."""
        return self.expires_at is None or self.expires_at > (time.time() if now is None else now)

    @property
    def field(self) -> str:
        """Its field in the hash and member in the indexes."""
        return entry_field(self.scope, self.address)

    def to_json(self) -> dict[str, Any]:
        """The stored form (epoch numbers)."""
        return {"address": self.address, "reason": self.reason, "scope": self.scope,
                "source_message_id": self.source_message_id, "created_at": self.created_at,
                "expires_at": self.expires_at}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Suppression:
        """From :meth:`to_json`'s form; ``ValueError`` for anything else."""
        if not isinstance(data, dict):
            raise ValueError("an entry must be a JSON object")
        allowed = {"address", "reason", "scope", "source_message_id", "created_at", "expires_at"}
        unknown = set(data) - allowed
        if unknown:
            raise ValueError(f"unknown fields: {', '.join(sorted(map(str, unknown)))}")
        for required in ("address", "reason", "created_at"):
            if required not in data:
                raise ValueError(f"{required} is required")
        return cls(address=data["address"], reason=data["reason"],
                   scope=data.get("scope", GLOBAL),
                   source_message_id=data.get("source_message_id"),
                   created_at=data["created_at"], expires_at=data.get("expires_at"))


def entry_field(scope: str, mailbox: str) -> str:
    return f"{scope}:{mailbox}"


def hash_key(prefix: str) -> str:
    return f"{prefix}:supp"


def index_key(prefix: str, reason: str | None = None) -> str:
    return f"{prefix}:supp:idx" if reason is None else f"{prefix}:supp:idx:{reason}"


def add_to(pipe: Any, prefix: str, entry: Suppression) -> None:
    """Queue the writes adding (or replacing) ``entry`` on a redis-py pipeline, sync or asyncio.

    Use a ``transaction=True`` pipeline to make them one step with the caller's own writes.
    """
    member = entry.field
    pipe.hset(hash_key(prefix), member, orjson.dumps(entry.to_json()))
    for reason in REASONS:
        if reason != entry.reason:
            pipe.zrem(index_key(prefix, reason), member)
    pipe.zadd(index_key(prefix), {member: 0})
    pipe.zadd(index_key(prefix, entry.reason), {member: 0})


def remove_from(pipe: Any, prefix: str, scope: str, mailbox: str) -> None:
    """Queue the removal of one entry (its hash field and every index member)."""
    member = entry_field(scope, mailbox)
    pipe.hdel(hash_key(prefix), member)
    pipe.zrem(index_key(prefix), member)
    for reason in REASONS:
        pipe.zrem(index_key(prefix, reason), member)


def lookup_fields(addresses: Sequence[str], stream: str) -> list[str]:
    """The hash fields that suppress ``addresses`` (validated addresses) on ``stream``: for each
    address its global entry, then its stream entry (two fields per address, in order)."""
    fields = []
    for address in addresses:
        key = mailbox_key(address)
        fields.append(entry_field(GLOBAL, key))
        fields.append(entry_field(stream, key))
    return fields


def decode_entry(raw: bytes | str | None) -> Suppression | None:
    """A stored entry, or ``None`` for a missing or unreadable one."""
    if raw is None:
        return None
    try:
        return Suppression.from_json(orjson.loads(raw))
    except (ValueError, TypeError):
        return None


def hits(addresses: Sequence[str], values: Sequence[bytes | str | None],
         now: float | None = None) -> set[str]:
    """The addresses whose entries (``HMGET`` of :func:`lookup_fields`) are in force."""
    at = time.time() if now is None else now
    found = set()
    for index, address in enumerate(addresses):
        for raw in values[2 * index:2 * index + 2]:
            entry = decode_entry(raw)
            if entry is not None and entry.applies(at):
                found.add(address)
    return found


#: For Lua scripts: ``suppression_hits(hash_key, fields, first, count, now)`` reads ``count``
#: fields starting at ``fields[first]`` (pairs from :func:`lookup_fields`) and returns a table
#: ``{[i] = true}`` of the address positions (1-based) suppressed at epoch ``now``.
LOOKUP_LUA = """
local function suppression_hits(hash, fields, first, count, now)
  local hit = {}
  if count == 0 then return hit end
  local wanted = {}
  for i = 0, count - 1 do wanted[#wanted + 1] = fields[first + i] end
  local values = redis.call('HMGET', hash, unpack(wanted))
  for i = 1, count do
    local raw = values[i]
    if raw then
      local ok, entry = pcall(cjson.decode, raw)
      if ok and type(entry) == 'table' then
        local expires = entry['expires_at']
        if type(expires) ~= 'number' or expires > now then
          hit[math.floor((i - 1) / 2) + 1] = true
        end
      end
    end
  end
  return hit
end
"""


# -- paging -------------------------------------------------------------------------------


def encode_cursor(member: str) -> str:
    return base64.urlsafe_b64encode(member.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    """The index member a cursor stands for; ``ValueError`` for a malformed one."""
    if not isinstance(cursor, str) or not 0 < len(cursor) <= 800 or \
            not re.fullmatch(r"[A-Za-z0-9_-]+", cursor):
        raise ValueError("malformed cursor")
    try:
        member = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise ValueError("malformed cursor") from None
    if ":" not in member:
        raise ValueError("malformed cursor")
    return member


def _range(scope: str | None, cursor: str | None) -> tuple[str, str]:
    """ZRANGEBYLEX bounds: within ``scope`` (if any), after ``cursor`` (if any)."""
    low, high = ("-", "+") if scope is None else (f"[{scope}:", f"[{scope};")  # ';' follows ':'
    if cursor is not None:
        member = decode_cursor(cursor)
        if scope is not None and not member.startswith(f"{scope}:"):
            raise ValueError("cursor does not belong to this scope")
        low = f"({member}"
    return low, high


def _check_page(limit: int, reason: str | None, scope: str | None) -> None:
    if not 1 <= limit <= MAX_PAGE:
        raise ValueError(f"limit must be between 1 and {MAX_PAGE}")
    if reason is not None and reason not in REASONS:
        raise ValueError(f"reason must be one of {', '.join(REASONS)}")
    if scope is not None:
        validate_scope(scope)


def _decode_member(member: bytes | str) -> str:
    return member.decode() if isinstance(member, bytes) else member


class SuppressionList:
    """The suppression list through an asyncio Redis client (the ingress).

    Parameters:
      client: a ``redis.asyncio`` client.
      prefix: the installation's key prefix.
    """

    def __init__(self, client: aioredis.Redis, prefix: str) -> None:
        self.client: Any = client
        self.prefix = prefix

    async def get(self, address: str, scope: str = GLOBAL) -> Suppression | None:
        """The entry in force for ``address`` (any spelling of the mailbox) in ``scope``."""
        mailbox = suppression_address(address)
        raw = await self.client.hget(hash_key(self.prefix), entry_field(scope, mailbox))
        entry = decode_entry(raw)
        if entry is not None and not entry.applies():
            await self.remove(mailbox, scope, expired_only=True)
            return None
        return entry

    async def add(self, entry: Suppression) -> None:
        async with self.client.pipeline(transaction=True) as pipe:
            add_to(pipe, self.prefix, entry)
            await pipe.execute()

    async def remove(self, address: str, scope: str = GLOBAL, *,
                     expired_only: bool = False) -> bool:
        """Delete the entry; ``True`` when one (in force) was there. With ``expired_only``,
        delete it only if it has expired (a concurrent re-add survives)."""
        mailbox = address if expired_only else suppression_address(address)
        member = entry_field(scope, mailbox)
        while True:
            async with self.client.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(hash_key(self.prefix))
                    entry = decode_entry(await pipe.hget(hash_key(self.prefix), member))
                    in_force = entry is not None and entry.applies()
                    if expired_only and in_force:
                        return False
                    pipe.multi()
                    remove_from(pipe, self.prefix, scope, mailbox)
                    await pipe.execute()
                    return in_force
                except redis.WatchError:
                    continue

    async def suppressed(self, addresses: Sequence[str], stream: str) -> set[str]:
        """The subset of ``addresses`` (validated) suppressed globally or on ``stream``."""
        if not addresses:
            return set()
        values = await self.client.hmget(hash_key(self.prefix),
                                         lookup_fields(addresses, stream))
        return hits(addresses, values)

    async def page(self, cursor: str | None = None, limit: int = 100, *,
                   reason: str | None = None, scope: str | None = None
                   ) -> tuple[list[Suppression], str | None]:
        """Up to ``limit`` entries in force, in (scope, mailbox) order, and the cursor of the
        next page (``None`` at the end). Cursors stay valid while entries come and go."""
        _check_page(limit, reason, scope)
        low, high = _range(scope, cursor)
        found: list[Suppression] = []
        now = time.time()
        while len(found) < limit:
            want = limit - len(found)
            members = [_decode_member(m) for m in await self.client.zrangebylex(
                index_key(self.prefix, reason), low, high, start=0,
                num=max(want, min(_SCAN_BATCH, MAX_PAGE)))]
            if not members:
                return found, None
            values = await self.client.hmget(hash_key(self.prefix), members)
            for member, raw in zip(members, values, strict=True):
                entry = decode_entry(raw)
                if entry is not None and entry.applies(now):
                    found.append(entry)
                    if len(found) == limit:
                        return found, encode_cursor(member)
                elif entry is not None:
                    await self.remove(entry.address, entry.scope, expired_only=True)
            low = f"({members[-1]}"
        return found, None  # pragma: no cover - the loop returns

    async def iterate(self, *, reason: str | None = None, scope: str | None = None
                      ) -> AsyncIterator[Suppression]:
        """Every entry in force, page by page (for export)."""
        cursor = None
        while True:
            entries, cursor = await self.page(cursor, MAX_PAGE, reason=reason, scope=scope)
            for entry in entries:
                yield entry
            if cursor is None:
                return


class SyncSuppressionList:
    """The suppression list through a synchronous Redis client (workers, CLI).

    Parameters:
      client: a ``redis.Redis`` client.
      prefix: the installation's key prefix.
    """

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.client: Any = client
        self.prefix = prefix

    def get(self, address: str, scope: str = GLOBAL) -> Suppression | None:
        mailbox = suppression_address(address)
        entry = decode_entry(self.client.hget(hash_key(self.prefix),
                                              entry_field(scope, mailbox)))
        if entry is not None and not entry.applies():
            self.remove(mailbox, scope, expired_only=True)
            return None
        return entry

    def add(self, entry: Suppression) -> None:
        with self.client.pipeline(transaction=True) as pipe:
            add_to(pipe, self.prefix, entry)
            pipe.execute()

    def remove(self, address: str, scope: str = GLOBAL, *, expired_only: bool = False) -> bool:
        mailbox = address if expired_only else suppression_address(address)
        member = entry_field(scope, mailbox)
        while True:
            with self.client.pipeline(transaction=True) as pipe:
                try:
                    pipe.watch(hash_key(self.prefix))
                    entry = decode_entry(pipe.hget(hash_key(self.prefix), member))
                    in_force = entry is not None and entry.applies()
                    if expired_only and in_force:
                        return False
                    pipe.multi()
                    remove_from(pipe, self.prefix, scope, mailbox)
                    pipe.execute()
                    return in_force
                except redis.WatchError:
                    continue

    def suppressed(self, addresses: Sequence[str], stream: str) -> set[str]:
        if not addresses:
            return set()
        return hits(addresses, self.client.hmget(hash_key(self.prefix),
                                                 lookup_fields(addresses, stream)))

    def page(self, cursor: str | None = None, limit: int = 100, *, reason: str | None = None,
             scope: str | None = None) -> tuple[list[Suppression], str | None]:
        _check_page(limit, reason, scope)
        low, high = _range(scope, cursor)
        found: list[Suppression] = []
        now = time.time()
        while len(found) < limit:
            want = limit - len(found)
            members = [_decode_member(m) for m in self.client.zrangebylex(
                index_key(self.prefix, reason), low, high, start=0,
                num=max(want, min(_SCAN_BATCH, MAX_PAGE)))]
            if not members:
                return found, None
            values = self.client.hmget(hash_key(self.prefix), members)
            for member, raw in zip(members, values, strict=True):
                entry = decode_entry(raw)
                if entry is not None and entry.applies(now):
                    found.append(entry)
                    if len(found) == limit:
                        return found, encode_cursor(member)
                elif entry is not None:
                    self.remove(entry.address, entry.scope, expired_only=True)
            low = f"({members[-1]}"
        return found, None  # pragma: no cover - the loop returns

    def iterate(self, *, reason: str | None = None, scope: str | None = None
                ) -> Iterator[Suppression]:
        cursor = None
        while True:
            entries, cursor = self.page(cursor, MAX_PAGE, reason=reason, scope=scope)
            yield from entries
            if cursor is None:
                return
