"""Compile/validate of EmailTemplate specs: the checks the operator runs before storing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mailcore.rendering import TemplateError
from mailcore.template_resources import (
    collect_parts,
    collect_templates,
    compile_resource,
    describe_error,
    ready_status,
    set_condition,
    source_from_spec,
)

from ..support import make_settings

MJML = """<mjml>
  <mj-body>
    <mj-section>
      <mj-column>
        <mj-text>Hello {{ user.name }}</mj-text>
      </mj-column>
    </mj-section>
  </mj-body>
</mjml>"""


def spec(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "subject": "Hi {{ user.name }}",
        "mjml": MJML,
        "variables": {"type": "object", "required": ["user"],
                      "properties": {"user": {"type": "object", "required": ["name"],
                                              "properties": {"name": {"type": "string"}}}}},
        "sampleData": {"user": {"name": "Ada"}},
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def refused(**overrides: Any) -> TemplateError:
    with pytest.raises(TemplateError) as info:
        compile_resource("team-a/t", spec(**overrides))
    return info.value


def test_valid_spec_compiles_and_renders() -> None:
    compiled = compile_resource("team-a/t", spec())
    rendered = compiled.render({"user": {"name": "Grace"}})
    assert rendered.subject == "Hi Grace"
    assert "Hello Grace" in rendered.html and "Hello Grace" in rendered.text
    assert compiled.source.name == "team-a/t"
    assert compiled.version == compile_resource("team-a/t", spec()).version  # content hash


def test_any_change_gives_a_new_version() -> None:
    assert (compile_resource("t", spec()).version
            != compile_resource("t", spec(subject="Hello {{ user.name }}")).version)


@pytest.mark.parametrize("mjml", [
    "<mjml><mj-body><mj-section><mj-column><mj-text>x</mj-text></mj-column></mj-section>",
    "<html><body>not mjml</body></html>",
])
def test_malformed_mjml_is_refused(mjml: str) -> None:
    error = refused(mjml=mjml)
    assert error.reason == "InvalidMJML"
    assert "MJML" in describe_error(error)


def test_jinja_syntax_error_reports_its_line() -> None:
    broken = MJML.replace("{{ user.name }}", "{{ user.name ")
    error = refused(mjml=broken)
    assert error.reason == "RenderError"
    assert error.line == 5
    assert describe_error(error).endswith("(line 5)")
    assert "Jinja syntax error in body" in error.message


def test_jinja_syntax_error_in_subject() -> None:
    error = refused(subject="Hi {% if %}")
    assert error.reason == "RenderError" and "subject" in error.message


@pytest.mark.parametrize("expression", [
    "{{ ''.__class__.__mro__ }}",
    "{{ ''.__class__.__base__.__subclasses__() }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ lipsum.__globals__['os'] }}",
    "{{ self.__init__.__globals__ }}",
    "{{ user.name.__class__.__mro__ }}",
    "{{ [].append(1) }}",
    "{{ {}.update(a=1) }}",
])
def test_template_injection_is_blocked_by_the_sandbox(expression: str) -> None:
    error = refused(html=f"<p>{expression}</p>", mjml=None)
    assert error.reason == "RenderError"
    assert "sandbox" in error.message


@pytest.mark.parametrize("expression", ["{{ ''.__class__ }}", "{{ namespace.__init__ }}",
                                        "{{ self._TemplateReference__context }}",
                                        "{{ user.__class__.__init__ }}"])
def test_internals_never_leak_into_output(expression: str) -> None:
    compiled = compile_resource("t", spec(html=f"<p>[{expression}]</p>", mjml=None))
    html = compiled.render({"user": {"name": "x"}}).html
    assert "<p>[]</p>" in html


def test_injection_in_data_is_escaped_not_executed() -> None:
    compiled = compile_resource("t", spec())
    rendered = compiled.render({"user": {"name": "{{ ''.__class__.__mro__ }}<script>"}})
    assert "&lt;script&gt;" in rendered.html
    assert "{{ ''.__class__.__mro__ }}" in rendered.subject  # data is text, never a template


def test_sample_data_must_match_variables() -> None:
    error = refused(sampleData={"user": {"name": 42}})
    assert error.reason == "InvalidData"
    assert error.field == "user.name"
    assert "user.name" in error.message


def test_missing_required_sample_data() -> None:
    error = refused(sampleData={})
    assert error.reason == "InvalidData" and "user" in error.message


def test_variables_must_be_a_valid_json_schema() -> None:
    error = refused(variables={"type": "no-such-type"})
    assert error.reason == "InvalidSchema"


def test_exactly_one_body() -> None:
    assert refused(html="<p>x</p>").reason == "InvalidTemplate"
    assert refused(mjml=None).reason == "InvalidTemplate"


def test_locale_fallback() -> None:
    compiled = compile_resource("t", spec(locales=[
        {"locale": "de", "subject": "Hallo {{ user.name }}"},
        {"locale": "fr", "html": "<p>Bonjour {{ user.name }}</p>"},
    ]))
    data = {"user": {"name": "Ada"}}
    assert compiled.render(data, locale="de").subject == "Hallo Ada"
    german = compiled.render(data, locale="de-AT")  # language fallback
    assert german.subject == "Hallo Ada" and "Hello Ada" in german.html  # body falls back
    french = compiled.render(data, locale="fr")
    assert french.subject == "Hi Ada"  # subject falls back to the default
    assert "Bonjour Ada" in french.html and "Bonjour Ada" in french.text  # text from its own HTML
    assert compiled.render(data, locale="es").subject == "Hi Ada"  # unknown locale: default
    assert compiled.render(data).subject == "Hi Ada"


def test_every_locale_is_test_rendered() -> None:
    error = refused(locales=[{"locale": "de", "subject": "Hallo {{ user.name | nosuchfilter }}"}])
    assert error.reason == "RenderError"


def test_duplicate_locales_are_refused() -> None:
    with pytest.raises(TemplateError, match="twice"):
        source_from_spec("t", spec(locales=[{"locale": "de", "subject": "a"},
                                            {"locale": "de", "subject": "b"}]))


@pytest.mark.parametrize(("field", "value"), [
    ("from", "not an address"), ("from", "Name <broken@>"), ("replyTo", "a@b.c\nBcc: x@y.z"),
])
def test_sender_overrides_must_be_mailboxes(field: str, value: str) -> None:
    error = refused(**{field: value})
    assert error.reason == "InvalidTemplate" and f"spec.{field}" in error.message


def test_sender_domain_must_be_allowed() -> None:
    allowed = make_settings(SENDER_EMAIL="no-reply@shop.example.com",
                            ALLOWED_SENDER_DOMAINS="news.example.com").sender.domain_allowed
    for good in ("Shop <team@shop.example.com>", "x@news.example.com"):
        compile_resource("t", spec(**{"from": good}), sender_allowed=allowed)
    with pytest.raises(TemplateError) as info:
        compile_resource("t", spec(**{"from": "Evil <ceo@evil-corp.example.org>"}),
                         sender_allowed=allowed)
    assert info.value.reason == "SenderNotAllowed" and "evil-corp.example.org" in info.value.message


def test_spec_fields_map_to_the_source() -> None:
    source = source_from_spec("ns/t", spec(**{"from": "Team <team@example.com>",
                                               "replyTo": "help@example.com", "text": "T"}))
    assert (source.sender, source.reply_to, source.text) == (
        "Team <team@example.com>", "help@example.com", "T")


def test_a_bad_stream_is_a_permanent_invalid_template() -> None:
    assert compile_resource("t", spec(stream="bulk")).source.stream == "bulk"
    with pytest.raises(TemplateError) as info:
        compile_resource("t", spec(stream="marketing"))
    assert info.value.reason == "InvalidTemplate" and "spec.stream" in info.value.message


def test_condition_transition_time_moves_only_when_the_status_changes() -> None:
    first = set_condition(None, type="Ready", status=False, reason="InvalidMJML", message="a",
                          generation=1, now="2026-01-01T00:00:00Z")
    again = set_condition(first, type="Ready", status=False, reason="RenderError", message="b",
                          generation=2, now="2026-01-02T00:00:00Z")
    assert again[0]["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    assert again[0]["observedGeneration"] == 2 and again[0]["reason"] == "RenderError"
    flipped = set_condition(again, type="Ready", status=True, reason="Compiled", message="c",
                            generation=3, now="2026-01-03T00:00:00Z")
    assert flipped == [{"type": "Ready", "status": "True", "reason": "Compiled", "message": "c",
                        "lastTransitionTime": "2026-01-03T00:00:00Z", "observedGeneration": 3}]


def test_ready_status_keeps_other_conditions_and_the_last_good_version() -> None:
    status = {"version": "v1", "conditions": [
        {"type": "Other", "status": "True", "reason": "X", "message": "",
         "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
    patch = ready_status(status, ready=False, reason="InvalidMJML", message="m", generation=4,
                         key="a/b")
    assert "version" not in patch  # a merge patch without it keeps v1
    assert [c["type"] for c in patch["conditions"]] == ["Other", "Ready"]
    assert patch["observedGeneration"] == 4 and patch["template"] == "a/b"


def test_collect_reads_folders_and_yaml_and_reports_errors(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[2]
    (tmp_path / "bad.yaml").write_text(
        "apiVersion: email.platform.example.com/v1\nkind: EmailTemplate\n"
        "metadata: {name: bad}\nspec: {subject: x, mjml: '<div>'}\n")
    paths = [repo / "templates", repo / "examples" / "emailtemplates", tmp_path]
    parts, part_errors = collect_parts(paths, "dev")
    assert part_errors == [] and set(parts) == {"default/shop-frame", "default/shop-legal"}
    valid, errors = collect_templates(paths, "dev",
                                      parts=lambda key: parts[key][0] if key in parts else None)
    assert {"dev/password_reset", "dev/order_confirmation"} <= set(valid)
    assert {"default/welcome", "default/invoice", "default/order-shipped"} <= set(valid)
    assert "shop-legal" not in str(valid["default/order-shipped"][0].mjml)  # inlined
    assert [(r.where.endswith("bad.yaml: bad"), r.key, r.error.reason) for r in errors] == [
        (True, "dev/bad", "InvalidMJML")]


@pytest.mark.parametrize(("mjml", "line", "what"), [
    ("<mjml>\n<mj-body>\n<mj-section>\n<mj-column><mj-text>x</mj-text></mj-column>\n"
     "</mj-body>\n</mjml>", 3, "<mj-section> is never closed"),
    ("<mjml>\n<mj-body>\n{{ a_long_jinja_expression }}<mj-section>\n</mj-column>\n"
     "</mj-section></mj-body></mjml>", 4, "</mj-column> closes no open <mj-column>"),
    ("<mjml><mj-body>\n<mj-section><mj-column>\n<mj-text>x", 3, "<mj-text> is never closed"),
])
def test_mjml_errors_name_the_element_and_line(mjml: str, line: int, what: str) -> None:
    error = refused(mjml=mjml, sampleData={"user": {"name": "x"}, "a_long_jinja_expression": 1})
    assert error.reason == "InvalidMJML"
    assert error.line == line
    assert what in error.message
    assert describe_error(error).endswith(f"(line {line})")


def test_mjml_compiler_positions_map_back_to_the_authors_lines() -> None:
    from mailcore.rendering import _original_offset, _protect

    source = "ab{{ x }}cd\n{{ yyyyyyyyyyyyyyyyyyyy }}ef"
    protected, _ = _protect(source)
    assert protected == "abJINJAX000000Xcd\nJINJAX000001Xef"
    for original, mapped in ((0, 0), (9, 15), (10, 16), (11, 17), (38, 31), (39, 32)):
        assert source[original] == protected[mapped]
        assert _original_offset(source, mapped) == original


def test_every_shared_testdata_template_still_compiles() -> None:
    folder = Path(__file__).resolve().parents[3] / "shared" / "testdata" / "mjml"
    if not folder.is_dir():
        pytest.skip("../shared/testdata is absent")
    for path in sorted(folder.glob("*.mjml")):
        compile_resource(f"t/{path.stem}", {"subject": path.stem, "mjml": path.read_text()})
