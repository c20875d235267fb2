"""The ``money`` filter: CLDR formats through Babel, a fast path equal to Babel, bounded inputs."""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any

import pytest
from babel.numbers import format_currency

from mailcore.money import MAX_AMOUNT, formatter
from mailcore.rendering import CompiledTemplate, TemplateError, TemplateSource


def render(expression: str, data: dict[str, Any] | None = None, *, locale: str | None = None,
           brand: dict[str, Any] | None = None) -> str:
    template = CompiledTemplate(TemplateSource(name="m", subject="s", html=expression,
                                               text=expression))
    rendered = template.render(data or {}, locale=locale, brand=brand)
    assert rendered.html == rendered.text  # nothing in a price needs escaping
    return rendered.text


@pytest.mark.parametrize(("locale", "currency", "amount", "expected"), [
    ("en-US", "USD", 1234.5, "$1,234.50"),
    ("en-US", "USD", 0, "$0.00"),
    ("en-US", "USD", -5.5, "-$5.50"),
    ("de-DE", "EUR", 1234.5, "1.234,50\xa0€"),
    ("de-DE", "EUR", -0.004, "0,00\xa0€"),  # rounds to zero: no "-0,00"
    ("ja-JP", "JPY", 1234.5, "￥1,234"),  # no decimals in yen; half to even
    ("ja-JP", "JPY", 1235.5, "￥1,236"),
    ("en-IN", "INR", 1234567.891, "₹12,34,567.89"),  # Indian grouping: Babel's own path
    ("en-US", "EUR", 2.675, "€2.68"),  # the decimal the data wrote, not the binary float
    ("en-US", "USD", 99_999_999_999_999.99, "$99,999,999,999,999.98"),  # a float's last cent
])
def test_locales_and_currencies(locale: str, currency: str, amount: float,
                                expected: str) -> None:
    assert render("{{ amount | money(currency, tag) }}",
                  {"amount": amount, "currency": currency, "tag": locale}) == expected
    # The message's locale is the default.
    assert render("{{ amount | money(currency) }}", {"amount": amount, "currency": currency},
                  locale=locale) == expected


def test_defaults_are_the_brands_currency_and_the_messages_locale() -> None:
    brand = {"currency": "EUR"}
    assert render("{{ 3.5 | money }}", brand=brand, locale="de-DE") == "3,50\xa0€"
    assert render("{{ 3.5 | money(currency) }}", {"currency": None}, brand=brand,
                  locale="fr_FR") == "3,50\xa0€"
    assert render("{{ 3.5 | money('jpy') }}", locale="en-US") == "¥4"
    assert render("{{ 3.5 | money }}") == "$3.50"  # nothing configured: USD, English
    # An unknown locale falls back to its language, then to English.
    assert render("{{ 3.5 | money('EUR', 'de-XX') }}") == "3,50\xa0€"
    assert render("{{ 3.5 | money('EUR', 'zz') }}") == "€3.50"


@pytest.mark.parametrize(("amount", "problem"), [
    (math.nan, "not a finite number"),
    (math.inf, "not a finite number"),
    (-math.inf, "not a finite number"),
    (Decimal("NaN"), "not a finite number"),
    (Decimal("sNaN"), "not a finite number"),
    (float(MAX_AMOUNT), "too large"),
    (10**400, "too large"),
    (-(10**15), "too large"),
    ("12.50", "must be a number, not text"),
    ("<script>", "must be a number, not text"),
    (True, "must be a number, not a boolean"),
    (None, "must be a number, not NoneType"),
    ([1, 2], "must be a number, not list"),
    ({"a": 1}, "must be a number, not dict"),
])
def test_hostile_amounts_are_clear_render_errors(amount: Any, problem: str) -> None:
    with pytest.raises(TemplateError) as caught:
        render("{{ amount | money('USD', 'en-US') }}", {"amount": amount})
    assert caught.value.reason == "RenderError"
    assert problem in caught.value.message
    assert "script" not in caught.value.message  # the value itself is never quoted


def test_an_undefined_amount_is_an_error_too() -> None:
    with pytest.raises(TemplateError, match="must be a number"):
        render("{{ missing | money }}")


@pytest.mark.parametrize(("arguments", "problem"), [
    ("'US$'", "currency must be a three-letter"),
    ("'USDX' * 100000", "currency must be a three-letter"),
    ("['USD']", "currency must be a three-letter"),
    ("'USD', 'x' * 100000", "locale must be a language tag"),
    ("'USD', 'en US'", "locale must be a language tag"),
    ("'USD', 42", "locale must be a language tag"),
])
def test_hostile_currencies_and_locales_are_refused(arguments: str, problem: str) -> None:
    with pytest.raises(TemplateError, match=problem):
        render("{{ 1 | money(" + arguments + ") }}")


def test_negative_and_huge_but_allowed_amounts_are_formatted_in_full() -> None:
    assert render("{{ -1234.5 | money('EUR', 'de-DE') }}") == "-1.234,50\xa0€"
    assert render("{{ 999999999999999 | money('JPY', 'ja-JP') }}") == "￥999,999,999,999,999"


@pytest.mark.parametrize(("currency", "tag"), [
    ("USD", "en-US"), ("EUR", "de-DE"), ("JPY", "ja-JP"), ("EUR", "fr-FR"), ("BRL", "pt-BR"),
    ("CHF", "de-CH"), ("INR", "en-IN"), ("EGP", "ar-EG"), ("SEK", "sv-SE"), ("KWD", "ar-KW"),
    ("GBP", "en-GB"), ("PLN", "pl-PL"), ("EUR", "nl-NL"), ("IRR", "fa-IR"), ("ZAR", "en-ZA"),
])
def test_the_fast_formatter_agrees_with_babel(currency: str, tag: str) -> None:
    format_ = formatter(currency, tag)
    babel_locale = tag.replace("-", "_")
    for text in ("0", "0.01", "0.5", "1", "9.995", "12.345", "999.5", "1000", "1234.5",
                 "-0.75", "-42.125", "65432.1", "1234567.875", "-7654321.5", "123456789012.34"):
        amount = Decimal(text)
        assert format_(amount) == format_currency(amount, currency, locale=babel_locale), text


def test_money_is_a_bounded_sandbox_filter() -> None:
    # Registered in the sandbox like every other filter, so it counts in the render's budget
    # and cannot be reached around: what it returns is one short string.
    from mailcore.sandbox import Sandbox

    env = Sandbox()
    assert "money" in env.filters
    assert getattr(env.filters["money"], "__wrapped__", None) is not None
    assert render("{% for i in range(3) %}{{ i | money }} {% endfor %}") == (
        "$0.00 $1.00 $2.00 ")
