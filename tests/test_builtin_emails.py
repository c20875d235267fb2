"""What recipients see of the built-in emails: text part, language, prices, optional blocks."""

from __future__ import annotations

import copy
import re
from dataclasses import asdict
from typing import Any

import pytest

from mailcore.config import ConfigError, Settings
from mailcore.errors import InvalidRequest
from mailcore.rendering import CompiledTemplate, RenderedEmail, TemplateSource
from mailcore.templates import TemplateRegistry, builtin_templates_dir
from service.legacy import parse_order

REGISTRY = TemplateRegistry.from_dir(builtin_templates_dir())
BRAND = asdict(Settings.from_env({"SECRETS_DIR": "/nonexistent"}).brand)
#: The legacy order contract's required fields only.
MINIMAL_ORDER: dict[str, Any] = {
    "order_id": "A-1", "customer": {"name": "Ada", "email": "ada@example.com"},
    "items": [{"product_id": "p1", "name": "Tea", "quantity": 2, "price": 3.5}], "total": 7.0,
}
OPTIONAL_LABELS = ("Shipping", "Estimated delivery", "Ship to", "Phone", "Notes")


def render(name: str, data: dict[str, Any], **options: Any) -> RenderedEmail:
    template = REGISTRY.get(name)
    assert template is not None
    template.validate_data(data)
    return template.render(data, brand=options.pop("brand", BRAND), **options)


def assert_tidy(text: str) -> None:
    assert "\n\n\n" not in text
    assert not re.search(r"[ \t]\n", text), "a line ends in spaces"
    assert not re.search(r"^\s*[A-Z][a-z ]+:\s*$", text, re.M), "a label without a value"


@pytest.mark.parametrize("name", REGISTRY.names())
def test_sample_text_parts_print_each_link_once(name: str) -> None:
    template = REGISTRY.get(name)
    assert template is not None
    text = render(name, dict(template.source.sample_data)).text
    assert "https://example.com" in text
    assert "(https://" not in text
    assert text.count("https://example.com") == 1
    assert_tidy(text)


def test_a_link_whose_text_is_its_target_is_printed_once() -> None:
    source = TemplateSource(name="l", subject="s", mjml=(
        "<mjml><mj-body><mj-section><mj-column><mj-text>"
        '<a href="{{ url }}">{{ url }}</a> · <a href="{{ url }}">Open</a> · '
        '<a href="https://a.example">https://a.example</a> · <a href="{{ other }}">{{ url }}</a>'
        "</mj-text></mj-column></mj-section></mj-body></mjml>"))
    text = CompiledTemplate(source).render({"url": "https://x.example/p",
                                            "other": "https://y.example"}).text
    assert text.strip() == ("https://x.example/p · Open (https://x.example/p) · "
                            "https://a.example · https://x.example/p (https://y.example)")


def test_order_without_optional_fields_leaves_no_trace() -> None:
    rendered = render("order_confirmation", copy.deepcopy(MINIMAL_ORDER))
    for label in OPTIONAL_LABELS:
        assert label not in rendered.text
        assert label not in rendered.html
    assert "placed on" not in rendered.text
    assert_tidy(rendered.text)
    assert rendered.text.strip().splitlines() == [
        "Example", "", "Thank you for your order, Ada!", "", "Order A-1 is confirmed.", "",
        "Item Qty Price Subtotal", "Tea 2 $3.50 $7.00", "Total $7.00", "",
        "Example · https://example.com"]


@pytest.mark.parametrize("present", OPTIONAL_LABELS)
def test_each_optional_field_shows_alone(present: str) -> None:
    order = copy.deepcopy(MINIMAL_ORDER)
    field = {"Shipping": "shipping_method", "Estimated delivery": "estimated_delivery",
             "Ship to": "address", "Phone": "phone", "Notes": "notes"}[present]
    (order["customer"] if field in ("address", "phone") else order)[field] = "VALUE"
    text = render("order_confirmation", order).text
    assert f"{present}: VALUE" in text
    assert [label for label in OPTIONAL_LABELS if label in text] == [present]
    assert_tidy(text)


def test_full_order_text_lists_details_one_per_line() -> None:
    template = REGISTRY.get("order_confirmation")
    assert template is not None
    text = render("order_confirmation", dict(template.source.sample_data)).text
    assert ("Shipping: Express\nEstimated delivery: 2026-11-26\n"
            "Ship to: 12 Analytical Way, London\nPhone: +44 20 7946 0000\n") in text
    assert "Difference Engine kit 1 $249.00 $249.00\nPunch cards (100) 3 $9.50 $28.50\n" in text


@pytest.mark.parametrize(("locale", "currency", "total"), [
    ("en-US", None, "$7.00"), ("de-DE", "EUR", "7,00\xa0€"), ("ja-JP", "JPY", "￥7"),
    ("fr_FR", "EUR", "7,00\xa0€"),
])
def test_prices_carry_the_currency_in_the_messages_locale(locale: str, currency: str | None,
                                                          total: str) -> None:
    order = {**copy.deepcopy(MINIMAL_ORDER), "currency": currency}
    rendered = render("order_confirmation", order, locale=locale)
    assert f"Total {total}" in rendered.text
    assert total in rendered.html
    tag = locale.replace("_", "-")
    assert rendered.html.startswith(f'<!doctype html><html lang="{tag}"')
    assert f'role="article" lang="{tag}"' in rendered.html
    assert 'lang="und"' not in rendered.html


def test_lang_defaults_to_the_configured_locale_and_the_author_can_fix_it() -> None:
    brand = {**BRAND, "locale": "pt-BR", "currency": "BRL"}
    rendered = render("order_confirmation", copy.deepcopy(MINIMAL_ORDER), brand=brand)
    assert '<html lang="pt-BR"' in rendered.html and "R$\xa07,00" in rendered.text
    assert '<html lang="en"' in render("password_reset", {"email": "a@example.com", "code": "1"},
                                       brand={}).html
    fixed = CompiledTemplate(TemplateSource(name="f", subject="s", mjml=(
        '<mjml lang="fr"><mj-body><mj-text>x</mj-text></mj-body></mjml>')))
    assert '<html lang="fr"' in fixed.render({}, locale="de").html


def test_legacy_order_contract_is_unchanged_and_takes_an_optional_currency() -> None:
    request = parse_order(copy.deepcopy(MINIMAL_ORDER), "order_confirmation")
    assert request.data["currency"] is None
    assert "Total $7.00" in render("order_confirmation", dict(request.data)).text
    request = parse_order({**MINIMAL_ORDER, "currency": "EUR"}, "order_confirmation")
    assert "Total €7.00" in render("order_confirmation", dict(request.data)).text
    with pytest.raises(InvalidRequest, match="currency"):
        parse_order({**MINIMAL_ORDER, "currency": "EURO"}, "order_confirmation")


def test_default_currency_and_locale_settings() -> None:
    brand = Settings.from_env({"SECRETS_DIR": "/nonexistent", "DEFAULT_CURRENCY": "eur",
                               "DEFAULT_LOCALE": "de_DE"}).brand
    assert (brand.currency, brand.locale) == ("EUR", "de-DE")
    for name, value in (("DEFAULT_CURRENCY", "EURO"), ("DEFAULT_LOCALE", "de DE")):
        with pytest.raises(ConfigError, match=name):
            Settings.from_env({"SECRETS_DIR": "/nonexistent", name: value})
