"""Layouts and partials: composition, and everything refused (cycles, missing references,
hostile names, unsupported statements, sizes)."""

from __future__ import annotations

from typing import Any

import pytest

from mailcore.rendering import CompiledTemplate, TemplateError, compile_template
from mailcore.template_parts import (
    MAX_DEPTH,
    MAX_INCLUDES,
    Composer,
    Part,
    compose,
    layout_test_source,
    part_from_spec,
)
from mailcore.template_resources import source_from_spec

LAYOUT = """<mjml>
  <mj-head><mj-title>{{ brand.name }}</mj-title></mj-head>
  <mj-body>
    <mj-section><mj-column><mj-text>Header</mj-text></mj-column></mj-section>
    {{ content }}
    {% include "footer" %}
  </mj-body>
</mjml>"""
FOOTER = ('<mj-section><mj-column><mj-text>Footer {% include "legal" %}</mj-text></mj-column>'
          "</mj-section>")


def store(**parts: Part) -> dict[str, Part]:
    return {f"shop/{name}": part for name, part in parts.items()}


BASE = store(base=Part("layout", LAYOUT), footer=Part("partial", FOOTER),
             legal=Part("partial", "© Shop AG"))


def composer(parts: dict[str, Part], own: str = "shop/welcome") -> Composer:
    return Composer("shop", parts.get, own=own)


def spec(**extra: Any) -> dict[str, Any]:
    return {"subject": "Hi {{ name }}", "layout": "base", "sampleData": {"name": "Ada"},
            "mjml": "<mj-section><mj-column><mj-text>Hello {{ name }}</mj-text></mj-column>"
                    "</mj-section>", **extra}


def composed(parts: dict[str, Part], **extra: Any) -> tuple[Any, Composer]:
    used = composer(parts)
    source = compose(source_from_spec("shop/welcome", spec(**extra)), spec(**extra), used)
    return source, used


def test_a_template_is_placed_in_its_layout_with_partials_inlined() -> None:
    source, used = composed(BASE)
    assert source.mjml.count("Header") == 1 and "Hello {{ name }}" in source.mjml
    assert "Footer © Shop AG" in source.mjml and "include" not in source.mjml
    assert set(used.used) == {"shop/base", "shop/footer", "shop/legal"}
    assert all(used.used.values())
    rendered = compile_template(source).render({"name": "Ada"}, brand={"name": "Shop"})
    assert "Hello Ada" in rendered.html and "Footer © Shop AG" in rendered.html


def test_locale_bodies_get_the_layout_too() -> None:
    source, _ = composed(BASE, locales=[{"locale": "de", "mjml": "<mj-section><mj-column>"
                                         "<mj-text>Hallo</mj-text></mj-column></mj-section>"}])
    assert "Header" in source.locales["de"].mjml and "Hallo" in source.locales["de"].mjml
    assert "Hallo" in CompiledTemplate(source).render({"name": "A"}, locale="de").html


def test_without_layout_or_includes_nothing_changes() -> None:
    plain = {"subject": "Hi", "html": "<p>x</p>"}
    source = source_from_spec("shop/plain", plain)
    assert compose(source, plain, composer({})) is source


def test_a_layout_change_gives_dependants_a_new_version() -> None:
    before, _ = composed(BASE)
    after, _ = composed({**BASE, "shop/legal": Part("partial", "© Shop GmbH")})
    assert before.version != after.version


@pytest.mark.parametrize(("parts", "reason", "message"), [
    ({}, "MissingReference", "layout 'base' is not stored in namespace shop"),
    (store(base=Part("layout", LAYOUT)), "MissingReference",
     "partial 'footer' is not stored in namespace shop"),
    (store(base=Part("partial", "x")), "MissingReference", "'base' in namespace shop is a "
     "partial, not a layout"),
    (store(base=Part("layout", LAYOUT), footer=Part("partial", '{% include "footer" %}')),
     "ReferenceCycle", "include cycle: shop/welcome → shop/footer → shop/footer"),
    (store(base=Part("layout", LAYOUT), footer=Part("partial", '{% include "legal" %}'),
           legal=Part("partial", "{% include 'footer' %}")),
     "ReferenceCycle", "include cycle: shop/welcome → shop/footer → shop/legal → shop/footer"),
    (store(base=Part("layout", LAYOUT), footer=Part("partial", '{% include "welcome" %}')),
     "ReferenceCycle", "include cycle: shop/welcome → shop/footer → shop/welcome"),
])
def test_references_are_refused_with_a_clear_reason(parts: dict[str, Part], reason: str,
                                                     message: str) -> None:
    with pytest.raises(TemplateError) as refused:
        composed(parts)
    assert refused.value.reason == reason
    assert message in refused.value.message, refused.value.message


def test_a_missing_part_is_recorded_so_it_can_be_waited_for() -> None:
    used = composer({})
    with pytest.raises(TemplateError):
        compose(source_from_spec("shop/welcome", spec()), spec(), used)
    assert used.used == {"shop/base": None}


def test_a_partial_including_itself_is_a_cycle() -> None:
    with pytest.raises(TemplateError) as refused:
        composer({}, own="shop/loop").expand('{% include "loop" %}', "spec.mjml")
    assert refused.value.reason == "ReferenceCycle"


def test_huge_chains_stop_at_the_depth_limit() -> None:
    chain = {f"shop/p{i}": Part("partial", f'{{% include "p{i + 1}" %}}') for i in range(1000)}
    with pytest.raises(TemplateError) as refused:
        composer(chain).expand('{% include "p0" %}', "spec.mjml")
    assert refused.value.reason == "ReferenceCycle"
    assert f"deeper than {MAX_DEPTH}" in refused.value.message
    assert len(refused.value.message) < 1000


def test_too_many_includes_are_refused() -> None:
    parts = store(x=Part("partial", "x"))
    with pytest.raises(TemplateError) as refused:
        composer(parts).expand('{% include "x" %}' * (MAX_INCLUDES + 1), "spec.mjml")
    assert f"more than {MAX_INCLUDES} includes" in refused.value.message


def test_exponential_growth_is_bounded_by_size() -> None:
    parts = {f"shop/p{i}": Part("partial", f'{{% include "p{i + 1}" %}}' * 2) for i in range(6)}
    parts["shop/p6"] = Part("partial", "x" * 20_000)
    with pytest.raises(TemplateError) as refused:
        composer(parts).expand('{% include "p0" %}', "spec.mjml")
    assert refused.value.reason in {"MJMLTooLarge", "InvalidTemplate"}


@pytest.mark.parametrize("statement", [
    '{% include "../footer" %}', '{% include "/etc/passwd" %}', '{% include "foot\x00er" %}',
    '{% include "templates/password_reset/template.mjml" %}', '{% include "Footer" %}',
    '{% include "a..b" %}', '{% include "x" * 300 %}', '{% include name %}',
    '{% include ["footer", "legal"] %}', '{% include "footer" ignore missing %}',
    '{% include "footer" with context %}', '{% include "" %}',
    '{% extends "base" %}', '{% import "macros" as m %}', '{% from "macros" import x %}',
    '{%- include "../../etc/shadow" -%}',
])
def test_hostile_includes_are_refused(statement: str) -> None:
    parts = store(footer=Part("partial", "x"), legal=Part("partial", "y"))
    with pytest.raises(TemplateError) as refused:
        composer(parts).expand(f"<p>{statement}</p>", "spec.html")
    assert refused.value.reason == "InvalidTemplate"
    assert refused.value.message.startswith("spec.html")
    assert len(refused.value.message) < 300


@pytest.mark.parametrize(("layout", "slots"), [
    ("<mjml><mj-body></mj-body></mjml>", 0),
    ("<mjml><mj-body>{{ content }}{{content}}</mj-body></mjml>", 2),
])
def test_a_layout_needs_exactly_one_slot(layout: str, slots: int) -> None:
    with pytest.raises(TemplateError) as refused:
        part_from_spec({"kind": "layout", "mjml": layout})
    assert f"exactly one {{{{ content }}}} slot, found {slots}" in refused.value.message


@pytest.mark.parametrize(("change", "message"), [
    ({"kind": "fragment"}, "spec.kind must be one of template, layout, partial"),
    ({"kind": "partial", "layout": "base"}, "a partial cannot have a layout"),
    ({"kind": "partial", "mjml": None}, "a partial needs spec.mjml or spec.html"),
    ({"pinnedVersion": "0123456789abcdef"}, "a partial cannot be pinned"),
])
def test_part_specs_are_checked(change: dict[str, Any], message: str) -> None:
    part_spec = {"kind": "partial", "mjml": "<mj-text>x</mj-text>", **change}
    with pytest.raises(TemplateError) as refused:
        part_from_spec(part_spec)
    assert message in refused.value.message


@pytest.mark.parametrize("name", ["../base", "/etc/passwd", "base\x00", "Base", "x" * 300, 7])
def test_layout_names_are_resource_names(name: Any) -> None:
    with pytest.raises(TemplateError) as refused:
        composed(BASE, layout=name)
    assert "spec.layout" in refused.value.message and "is not a resource name" in (
        refused.value.message)


def test_a_layout_compiles_on_its_own_with_an_empty_slot() -> None:
    source = layout_test_source("shop/base", BASE["shop/base"], composer(BASE, "shop/base"))
    compile_template(source)
