"""Prices for templates: ``{{ item.price | money(currency, locale) }}``.

Formatting follows the locale's CLDR rules through Babel (symbol before or after, separators,
the currency's own number of decimals: ``$1,234.50``, ``1.234,50 €``, ``￥1,235``). Babel's
``format_currency`` costs ~10 µs a call, as much as half an order confirmation's render, so
each (currency, locale) pair gets a formatter built once from Babel's own output (prefix,
suffix, separators), checked against Babel on probe amounts, and used only if they all agree;
otherwise (other grouping, non-Latin digits, ...) Babel formats every amount itself.

The filter runs in the sandbox on untrusted templates and data, so every input is bounded: the
amount is a finite number below :data:`MAX_AMOUNT` (never text, never ``bool``), the currency
three letters, the locale a short language tag. Anything else is a render error that names
the problem, not the value (data may be secret).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from decimal import ROUND_HALF_EVEN, Decimal
from functools import lru_cache
from typing import Any

from babel import Locale, UnknownLocaleError
from babel.numbers import format_currency, get_currency_precision
from jinja2 import pass_context
from jinja2.runtime import Context

#: Largest absolute amount formatted: beyond it a float has lost its cents anyway, and no
#: order totals a quadrillion.
MAX_AMOUNT = 10**15
#: The currency and locale used when neither the template nor the render names one.
FALLBACK_CURRENCY = "USD"
FALLBACK_LOCALE = "en"
_CURRENCY = re.compile(r"[A-Za-z]{3}")
_LOCALE = re.compile(r"[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{2,8}){0,4}")
# Amounts the fast formatter must format exactly as Babel does before it is trusted.
_PROBES = tuple(Decimal(p) for p in (
    "0", "-0.001", "0.5", "1", "2.665", "2.675", "12.345", "999.995", "1234", "12345.675", "-5.5",
    "-1234.5", "1234567.891", "-98765432.1", "100000000000000.02"))


class MoneyError(ValueError):
    """A ``money`` argument the filter refuses (the message names the problem, not the value)."""


def _amount(value: Any) -> Decimal:
    kind = type(value)
    if kind is int:
        if abs(value) >= MAX_AMOUNT:
            raise MoneyError(f"money: the amount is too large (the limit is {MAX_AMOUNT:.0e})")
        return Decimal(value)
    if kind is float:
        if not math.isfinite(value):
            raise MoneyError("money: the amount is not a finite number (NaN or infinity)")
        if abs(value) >= MAX_AMOUNT:
            raise MoneyError(f"money: the amount is too large (the limit is {MAX_AMOUNT:.0e})")
        return Decimal(repr(value))  # the shortest decimal that is this float: 2.675, not 2.67499…
    if kind is Decimal:
        if not value.is_finite():
            raise MoneyError("money: the amount is not a finite number (NaN or infinity)")
        if abs(value) >= MAX_AMOUNT:
            raise MoneyError(f"money: the amount is too large (the limit is {MAX_AMOUNT:.0e})")
        return value  # type: ignore[no-any-return]
    raise MoneyError(f"money: the amount must be a number, not {_kind(value)}")


def _kind(value: Any) -> str:
    if isinstance(value, str):
        return "text"
    if isinstance(value, bool):
        return "a boolean"
    return type(value).__name__


def _text_arg(value: Any, pattern: re.Pattern[str], what: str) -> str | None:
    """A currency or locale argument: ``None`` when absent (undefined, empty, none)."""
    if not value:
        return None
    if not isinstance(value, str) or pattern.fullmatch(value) is None:
        raise MoneyError(f"money: the {what} must be "
                         + ("a three-letter ISO 4217 code" if what == "currency"
                            else "a language tag such as en-US"))
    return value


@pass_context
def money(context: Context, value: Any, currency: Any = None, locale: Any = None) -> str:
    """``value`` as an amount of ``currency`` for ``locale``.

    Parameters:
      value: a number (int, float or Decimal), finite, below :data:`MAX_AMOUNT`.
      currency: an ISO 4217 code; by default ``brand.currency`` (``DEFAULT_CURRENCY``).
      locale: a language tag; by default the message's (the render's ``locale``).
    """
    if not currency:
        brand = context.get("brand")
        currency = brand.get("currency") if isinstance(brand, dict) else None
    if not locale:
        locale = context.get("locale")
    # A message prints each amount twice (HTML and text part), and a shop's prices repeat
    # across messages: formatted amounts are remembered (the type too: 1, 1.0 and True are
    # equal keys), only once they formatted without error, so every key is small.
    key: tuple[Any, ...] | None = (type(value), value, currency, locale)
    try:
        known = _FORMATTED.get(key)  # type: ignore[arg-type]
    except TypeError:  # unhashable (a list as amount or currency): refused below
        known = key = None
    if known is not None:
        return known
    amount = _amount(value)
    code = _text_arg(currency, _CURRENCY, "currency") or FALLBACK_CURRENCY
    tag = _text_arg(locale, _LOCALE, "locale") or FALLBACK_LOCALE
    text = formatter(code.upper(), tag)(amount)
    if key is not None:
        if len(_FORMATTED) >= 4096:
            _FORMATTED.clear()
        _FORMATTED[key] = text
    return text


_FORMATTED: dict[tuple[Any, ...], str] = {}


@lru_cache(maxsize=512)  # bounded: currency and locale come from data
def formatter(currency: str, tag: str) -> Callable[[Decimal], str]:
    """A function formatting amounts of ``currency`` for ``tag`` as Babel does, fast."""
    locale = _babel_locale(tag)
    digits = get_currency_precision(currency)
    quantum = Decimal(1).scaleb(-digits)

    def slow(amount: Decimal) -> str:
        rounded = amount.quantize(quantum, rounding=ROUND_HALF_EVEN)
        return str(format_currency(abs(rounded) if rounded == 0 else rounded,  # never "-$0.00"
                                   currency, locale=locale))

    fast = _fast_formatter(slow, digits, quantum)
    if fast is None or any(fast(probe) != slow(probe) for probe in _PROBES):
        return slow
    return fast


def _fast_formatter(slow: Callable[[Decimal], str], digits: int, quantum: Decimal
                    ) -> Callable[[Decimal], str] | None:
    """Prefix, suffix and separators read from Babel's output for one sample amount each way."""
    spec = f",.{digits}f"
    sample = Decimal("1234567.891")
    plain = format(sample.quantize(quantum, rounding=ROUND_HALF_EVEN), spec)  # 1,234,567.89
    parts = []
    for signed in (sample, -sample):
        text = slow(signed)
        first = next((i for i, c in enumerate(text) if c.isdigit()), None)
        last = next((i for i in range(len(text) - 1, -1, -1) if text[i].isdigit()), None)
        if first is None or last is None or last - first + 1 != len(plain):
            return None
        parts.append((text[:first], text[last + 1:], text[first:last + 1]))
    number = parts[0][2]
    group, decimal = number[1], number[len(plain) - digits - 1] if digits else "."
    (prefix, suffix, _), (neg_prefix, neg_suffix, _) = parts

    def fast(amount: Decimal) -> str:
        rounded = amount.quantize(quantum, rounding=ROUND_HALF_EVEN)
        negative = rounded < 0  # -0.00 is not: "$0.00", as slow() prints it
        body = format(abs(rounded), spec)
        if group != "," or decimal != ".":
            body = body.replace(",", "\0").replace(".", decimal).replace("\0", group)
        return neg_prefix + body + neg_suffix if negative else prefix + body + suffix

    return fast


def _babel_locale(tag: str) -> Locale:
    """Babel's locale for a language tag, else its language's, else English."""
    for candidate in (tag.replace("-", "_"), tag.replace("_", "-").split("-")[0]):
        try:
            return Locale.parse(candidate)
        except (UnknownLocaleError, ValueError):
            continue
    return Locale.parse(FALLBACK_LOCALE)
