"""Locale tags (BCP 47, RFC 5646) and how a template picks its locale.

A tag is checked by its syntax (``language[-script][-region][-variant…][-extension…][-x-…]``),
ASCII only, at most 35 characters; ``_`` is read as ``-`` (``pt_BR`` is ``pt-BR``) and the case
is normalised (``de-at`` is ``de-AT``, ``zh-hant`` is ``zh-Hant``). A template's lookup is RFC
4647's: the tag, then the tag with its last subtag removed, and so on (``de-AT-1996`` →
``de-AT`` → ``de``), then the template's ``fallbackLocale`` chain, then its default body.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

#: Longest tag accepted (the CRD's maxLength; real tags are rarely past 15).
MAX_TAG = 35
#: Longest Accept-Language header read (longer headers are cut, not refused).
MAX_ACCEPT_LANGUAGE = 1024

_TAG = re.compile(
    r"""(?P<language>[a-z]{2,3}(?:-[a-z]{3}){0,3}|[a-z]{4,8})
        (?:-(?P<script>[a-z]{4}))?
        (?:-(?P<region>[a-z]{2}|[0-9]{3}))?
        (?P<rest>(?:-(?:[a-z0-9]{5,8}|[0-9][a-z0-9]{3}))*
                 (?:-[0-9a-wy-z](?:-[a-z0-9]{2,8})+)*
                 (?:-x(?:-[a-z0-9]{1,8})+)?)""",
    re.VERBOSE | re.IGNORECASE)
_WEIGHT = re.compile(r"q=(0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?)", re.IGNORECASE)


def check_locale(value: str) -> str:
    """The tag in its normal form, or ``ValueError`` saying what is wrong (never echoing a
    long value)."""
    if not isinstance(value, str):
        raise ValueError("a locale is a string such as 'de' or 'pt-BR'")
    if len(value) > MAX_TAG:
        raise ValueError(f"a locale is at most {MAX_TAG} characters")
    if not value.isascii():
        raise ValueError("a locale is ASCII letters, digits and '-' (BCP 47)")
    match = _TAG.fullmatch(value.replace("_", "-"))
    if match is None:
        raise ValueError(f"{value!r} is not a BCP 47 language tag (e.g. 'de', 'pt-BR', "
                         "'zh-Hant-TW')")
    parts = [match["language"].lower()]
    if match["script"]:
        parts.append(match["script"].title())
    if match["region"]:
        parts.append(match["region"].upper())
    return "-".join(parts) + match["rest"].lower()


def lookup_chain(tag: str) -> Iterator[str]:
    """RFC 4647 lookup: ``zh-Hant-TW`` → ``zh-Hant-TW``, ``zh-Hant``, ``zh`` (a single-letter
    subtag left at the end is dropped with the one after it)."""
    parts = tag.split("-")
    while parts:
        yield "-".join(parts)
        parts.pop()
        if parts and len(parts[-1]) == 1:
            parts.pop()


def parse_accept_language(header: str | None) -> list[str]:
    """The valid tags of an ``Accept-Language`` header, preferred first (highest ``q``, then
    order); ``*``, ``q=0`` and tags that do not parse are skipped. At most 32 items of the
    first 1,024 characters are read."""
    if not header:
        return []
    candidates: list[tuple[float, int, str]] = []
    for index, item in enumerate(header[:MAX_ACCEPT_LANGUAGE].split(",")[:32]):
        tag, _, params = item.strip().partition(";")
        weight = 1.0
        match = _WEIGHT.fullmatch(params.strip()) if params.strip() else None
        if params.strip() and match is None:
            continue
        if match is not None:
            weight = float(match.group(1))
        if weight <= 0 or tag.strip() in {"", "*"}:
            continue
        try:
            candidates.append((-weight, index, check_locale(tag.strip())))
        except ValueError:
            continue
    return [tag for _, _, tag in sorted(candidates)]


def negotiate(preferred: list[str], available: Callable[[str], bool]) -> str | None:
    """The first of ``preferred`` that ``available`` (e.g. a template's locales) can serve,
    else the first of them; ``None`` when none was given."""
    return next((tag for tag in preferred if available(tag)), preferred[0] if preferred else None)
