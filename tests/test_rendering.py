"""Compile-once rendering: MJML + Jinja in the sandbox, text derivation, real-world templates."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mailcore.rendering import (
    CompiledTemplate,
    LocaleOverride,
    TemplateError,
    TemplateSource,
    _restore,
    compile_template,
)
from mailcore.templates import TemplateRegistry, builtin_templates_dir

from .conftest import SHARED
from .support import REPO

MJML = """<mjml><mj-body><mj-section><mj-column>
<mj-text>Hello {{ name }}! {% if vip %}<b>VIP</b>{% endif %} {{ "quoted" | upper }}
{{ (a | default(2)) > (b | default(1)) }}</mj-text>
<mj-button href="{{ url }}">Open</mj-button>
</mj-column></mj-section></mj-body></mjml>"""


def source(**overrides: object) -> TemplateSource:
    fields: dict[str, object] = {"name": "t", "subject": "Hi {{ name }}", "mjml": MJML}
    fields.update(overrides)
    return TemplateSource(**fields)  # type: ignore[arg-type]


def test_jinja_survives_the_mjml_compiler() -> None:
    out = CompiledTemplate(source()).render(
        {"name": "Ada", "vip": True, "url": "https://x.example.com/?a=1&b=2", "a": 2, "b": 1})
    assert "Hello Ada!" in out.html and "<b>VIP</b>" in out.html and "QUOTED" in out.html
    assert 'href="https://x.example.com/?a=1&amp;b=2"' in out.html
    assert "True" in out.html
    assert out.subject == "Hi Ada"
    assert "Open (https://x.example.com/?a=1&b=2)" in out.text
    assert "<" not in out.text


def test_literal_braces_emitted_by_the_compiler_stay_literal() -> None:
    # What the MJML compiler emits is made literal to Jinja; only the author's constructs act.
    from jinja2 import Environment

    program = _restore("<style>#a{#b{x}}{{y}}{%z%}</style>JINJAX000000X", ["{{ name }}"])
    assert Environment().from_string(program).render(name="Ada") == (
        "<style>#a{#b{x}}{{y}}{%z%}</style>Ada")


def test_html_is_autoescaped_but_text_and_subject_are_not() -> None:
    out = CompiledTemplate(source()).render({"name": "<i>&</i>"})
    assert "&lt;i&gt;&amp;&lt;/i&gt;" in out.html
    assert out.subject == "Hi <i>&</i>"
    assert "Hello <i>&</i>!" in out.text


HOSTILE_TEXT = """<script>alert('x') & "y"</script>"""


def test_html_escaping_matches_jinjas_own_for_every_kind_of_value() -> None:
    # The oracle is plain Jinja with autoescaping, unpatched: our faster escape must print
    # exactly what it prints, for text, numbers, Markup (|safe, macros, set blocks) and the rest.
    from jinja2 import Environment

    html = (
        "{% macro cell(v) %}<td>{{ v }}</td>{% endmacro %}{% set block %}<i>{{ s }}</i>{% endset %}"
        "{{ s }}|{{ n }}|{{ f }}|{{ b }}|{{ none }}|{{ items }}|{{ d }}|{{ s | safe }}|"
        "{{ cell(s) }}|{{ block }}|{{ missing }}|{{ n * f }}|{{ b * 2 }}|{{ '%.2f' | format(f) }}|"
        "{% autoescape false %}{{ s }}{% endautoescape %}"
    )
    data = {"s": HOSTILE_TEXT, "n": 3, "f": 2.5, "b": True, "none": None,
            "items": [HOSTILE_TEXT, 1], "d": {"k": HOSTILE_TEXT}}
    ours = CompiledTemplate(source(mjml=None, html=html, text="-")).render(data).html
    assert ours == Environment(autoescape=True).from_string(html).render(data)
    assert "<script>" not in ours.split("|")[0]


def test_the_portable_text_escape_matches_markupsafe() -> None:
    from markupsafe import escape

    from mailcore.rendering import _escape_text_portably

    for text in (HOSTILE_TEXT, "&amp; already", "plain", ""):
        assert _escape_text_portably(text) == str(escape(text))


def test_subject_line_breaks_from_data_are_collapsed() -> None:
    out = CompiledTemplate(source()).render({"name": "Ada\r\nBcc: victim@example.com"})
    assert "\n" not in out.subject and "\r" not in out.subject


@pytest.mark.parametrize(
    "expression",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ name.__class__ }}",
        "{{ 2 ** 100000 }}",
        "{% set ns = namespace(x=4294967296) %}{% for i in range(40) %}"
        "{% set ns.x = ns.x * ns.x %}{% endfor %}{{ ns.x > 0 }}",
        "{{ ((2 ** 64) ** 64) ** 64 }}",
    ],
)
def test_sandbox_blocks_template_injection(expression: str) -> None:
    with pytest.raises(TemplateError) as error:
        compile_template(source(subject=expression, sample_data={"name": "x"}))
    assert error.value.reason == "RenderError"


@pytest.mark.parametrize("expression", [
    "{{ order.__class__ }}", "{{ order.copy.__globals__ }}", "{{ order.items.__self__ }}",
    "{{ (order | list).__class__.__subclasses__() }}",
])
def test_sandbox_still_guards_dicts_and_their_methods(expression: str) -> None:
    with pytest.raises(TemplateError) as error:
        compile_template(source(subject=expression, sample_data={"order": {"id": 1}}))
    assert error.value.reason == "RenderError"


def test_data_keys_come_before_dict_methods() -> None:
    # JSON data: ``order.items`` is the order's items, not dict.items (Jinja's default).
    template = CompiledTemplate(source(
        subject="{{ order.items | length }} items, {{ order.keys }}",
        mjml="<mjml><mj-body><mj-text>{% for i in order.items %}{{ i.name }};{% endfor %}"
             "{{ range(3) | list }}</mj-text></mj-body></mjml>"))
    out = template.render({"order": {"items": [{"name": "tea"}, {"name": "cup"}],
                                     "keys": "house keys"}})
    assert out.subject == "2 items, house keys"
    assert "tea;cup;" in out.html and "[0, 1, 2]" in out.html  # Jinja's globals still there
    # A template's own assignments never leak into the next render.
    setter = CompiledTemplate(source(subject="{% set name = 'changed' %}{{ name }}"))
    assert setter.render({"name": "Ada"}).subject == "changed"
    assert CompiledTemplate(source()).render({"name": "Ada"}).subject == "Hi Ada"


def test_data_is_never_evaluated_as_a_template() -> None:
    out = CompiledTemplate(source()).render({"name": "{{ ''.__class__ }}"})
    assert "{{ ''.__class__ }}" in out.text


def test_compile_errors_have_reasons() -> None:
    with pytest.raises(TemplateError) as error:
        compile_template(source(mjml="<mjml><mj-body><mj-section>"))
    assert error.value.reason == "InvalidMJML"
    with pytest.raises(TemplateError) as error:
        compile_template(source(mjml="<p>not mjml</p>"))
    assert error.value.reason == "InvalidMJML"
    with pytest.raises(TemplateError) as error:
        compile_template(source(mjml=MJML.replace("{% endif %}", "")))
    assert error.value.reason == "RenderError" and error.value.line is not None
    with pytest.raises(TemplateError) as error:
        compile_template(source(variables={"type": "object", "required": 5}))
    assert error.value.reason == "InvalidSchema"
    schema = {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}}
    with pytest.raises(TemplateError) as error:
        compile_template(source(variables=schema, sample_data={"name": 3}))
    assert error.value.reason == "InvalidData" and error.value.field == "name"


def test_locale_falls_back_to_language_then_default() -> None:
    template = compile_template(source(
        sample_data={"name": "Ada"},
        locales={"de": LocaleOverride(subject="Hallo {{ name }}"),
                 "fr": LocaleOverride(html="<p>Bonjour {{ name }}</p>")},
    ))
    assert template.render({"name": "A"}, locale="de-AT").subject == "Hallo A"
    assert template.render({"name": "A"}, locale="de").subject == "Hallo A"
    french = template.render({"name": "A"}, locale="fr")
    assert "Bonjour A" in french.html and french.subject == "Hi A"
    assert template.render({"name": "A"}, locale="es").subject == "Hi A"


def test_versions_change_with_content_only() -> None:
    assert source().version == source().version
    assert source().version != source(subject="Other").version


def test_builtin_templates_compile_and_render_their_samples() -> None:
    registry = TemplateRegistry.from_dir(builtin_templates_dir())
    assert {"password_reset", "order_confirmation"} <= set(registry.names())
    for name in registry.names():
        template_source = registry.source(name)
        assert template_source is not None
        compiled = compile_template(template_source)
        out = compiled.render(template_source.sample_data, brand={"name": "Acme"})
        assert "Acme" in out.html and out.subject and out.text.strip()
        assert registry.get(name) is registry.get(name)  # compiled once


@pytest.mark.skipif(not (SHARED / "testdata" / "mjml").is_dir(), reason="../shared is absent")
@pytest.mark.parametrize(
    "path", sorted((SHARED / "testdata" / "mjml").glob("*.mjml")), ids=lambda p: p.stem)
def test_real_world_mjml_compiles_through_the_render_path(path: Path) -> None:
    template = compile_template(
        TemplateSource(name=path.stem, subject=path.stem, mjml=path.read_text()))
    out = template.render({})
    assert out.html.lstrip().lower().startswith("<!doctype html")
    assert out.text.strip()


@pytest.mark.skipif(not (SHARED / "testdata" / "mjml").is_dir(), reason="../shared is absent")
def test_render_command_turns_shared_mjml_into_html(tmp_path: Path) -> None:
    mjml = SHARED / "testdata" / "mjml" / "welcome-email.mjml"
    out = tmp_path / "welcome.html"
    result = subprocess.run([sys.executable, "-m", "email_service", "render", str(mjml),
                             "--out", str(out)], cwd=REPO, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert "<!doctype html>" in out.read_text().lower()
    named = subprocess.run([sys.executable, "-m", "email_service", "render", "password_reset",
                            "--part", "subject"], cwd=REPO, capture_output=True, text=True,
                           timeout=60, env={"PATH": "/usr/bin", "BRAND_NAME": "Acme"})
    assert named.stdout == "Your Acme password reset code\n"
    missing = subprocess.run([sys.executable, "-m", "email_service", "render", "nope"],
                             cwd=REPO, capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "no template or file named 'nope'" in missing.stderr
