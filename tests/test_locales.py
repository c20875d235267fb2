"""Locale tags (BCP 47), Accept-Language, the template's lookup and fallback chain, built-in
locale folders, and hostile locales at every door."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from mailcore.config import Settings
from mailcore.locales import check_locale, lookup_chain, negotiate, parse_accept_language
from mailcore.rendering import CompiledTemplate, LocaleOverride, TemplateError, TemplateSource
from mailcore.template_resources import source_from_spec
from mailcore.templates import load_template_dir
from mailcore.tokens import mint_token
from service.app import create_app

from .support import REPO, TEST_SECRET, RedisServer

AUTH = {"Authorization": f"Bearer {mint_token(TEST_SECRET, subject='locales')}"}


@pytest.mark.parametrize(("tag", "normal"), [
    ("de", "de"), ("DE", "de"), ("de-at", "de-AT"), ("pt_BR", "pt-BR"),
    ("zh-hant-tw", "zh-Hant-TW"),
    ("es-419", "es-419"), ("de-DE-1996", "de-DE-1996"), ("en-US-x-twain", "en-US-x-twain"),
    ("sr-Latn-RS", "sr-Latn-RS"), ("gsw", "gsw"), ("en-a-bbb-ccc", "en-a-bbb-ccc"),
])
def test_valid_tags_are_normalised(tag: str, normal: str) -> None:
    assert check_locale(tag) == normal


#: Malformed, huge, non-ASCII, path-like and control-character tags.
BAD_TAGS = [
    "", "d", "deutsch-de-de-de-de-x", "de--AT", "-de", "de-", "de AT", "de.AT", "../de",
    "/etc/passwd", "de\x00", "de\r\nBcc: x@y.z", "dé", "日本", "de-" + "a" * 40, "x" * 10_000,
    "de-AT-", "12", "de-x", "en-US-x",
]


@pytest.mark.parametrize("tag", BAD_TAGS)
def test_malformed_tags_are_refused_without_echoing_long_values(tag: str) -> None:
    with pytest.raises(ValueError) as refused:
        check_locale(tag)
    assert len(str(refused.value)) < 120


def test_lookup_chain() -> None:
    assert list(lookup_chain("zh-Hant-TW")) == ["zh-Hant-TW", "zh-Hant", "zh"]
    assert list(lookup_chain("en-US-x-twain")) == ["en-US-x-twain", "en-US", "en"]
    assert list(lookup_chain("de")) == ["de"]


@pytest.mark.parametrize(("header", "tags"), [
    ("de-AT, de;q=0.9, en;q=0.5", ["de-AT", "de", "en"]),
    ("en;q=0.2, fr;q=0.8, *;q=0.1", ["fr", "en"]),
    ("fr;q=0, de", ["de"]),
    ("de;q=bogus, en", ["en"]),
    ("dé, ../x, de\x00, en-GB", ["en-GB"]),
    ("*", []), ("", []), (None, []),
    (",".join(["xx-" + "y" * 9] * 5000), []),  # huge: cut, every item malformed
    ("de;q=1.0000", []),
])
def test_accept_language(header: str | None, tags: list[str]) -> None:
    assert parse_accept_language(header) == tags


def test_negotiate_prefers_a_tag_the_template_has() -> None:
    assert negotiate(["fr", "de-CH", "en"], lambda t: t.startswith("de")) == "de-CH"
    assert negotiate(["fr"], lambda t: False) == "fr"
    assert negotiate([], lambda t: True) is None


def template(fallback: str | None = None) -> CompiledTemplate:
    return CompiledTemplate(TemplateSource(
        name="t", subject="Hello", html="<p>x</p>", fallback_locale=fallback,
        locales={"de": LocaleOverride(subject="Hallo"), "zh-Hant": LocaleOverride(subject="Ni"),
                 "en-GB": LocaleOverride(subject="Hiya")}))


@pytest.mark.parametrize(("locale", "subject"), [
    (None, "Hello"), ("de", "Hallo"), ("de-AT", "Hallo"), ("de_at", "Hallo"), ("DE", "Hallo"),
    ("zh-Hant-TW", "Ni"), ("zh", "Hello"), ("fr", "Hello"), ("en-GB-oxendict", "Hiya"),
    ("not a tag", "Hello"),  # a job from elsewhere: the default, never an error
])
def test_lookup_then_default(locale: str | None, subject: str) -> None:
    assert template().render({}, locale=locale).subject == subject


def test_fallback_locale_serves_before_the_default() -> None:
    assert template("en-GB").render({}, locale="fr").subject == "Hiya"
    assert template("en-GB").render({}, locale="de-CH").subject == "Hallo"
    assert template("en-GB").render({}).subject == "Hiya"


def test_the_fallback_locale_changes_the_version_only_when_set() -> None:
    plain = TemplateSource(name="t", subject="s", html="<p>x</p>")
    assert plain.version == TemplateSource(name="t", subject="s", html="<p>x</p>").version
    with_fallback = TemplateSource(name="t", subject="s", html="<p>x</p>",
                                   locales={"de": LocaleOverride(subject="x")},
                                   fallback_locale="de")
    assert with_fallback.version != TemplateSource(
        name="t", subject="s", html="<p>x</p>", locales={"de": LocaleOverride(subject="x")}
    ).version


def spec(**extra: Any) -> dict[str, Any]:
    return {"subject": "Hi", "html": "<p>x</p>",
            "locales": [{"locale": "de", "subject": "Hallo"}], **extra}


@pytest.mark.parametrize(("change", "message"), [
    ({"fallbackLocale": "fr"}, "spec.fallbackLocale: 'fr' is not one of spec.locales"),
    ({"fallbackLocale": "x" * 5000}, "spec.fallbackLocale: a locale is at most 35 characters"),
    ({"fallbackLocale": 42}, "spec.fallbackLocale: a locale is a string"),
    ({"locales": [{"locale": "../de", "subject": "x"}]}, "spec.locales: '../de' is not a BCP 47"),
    ({"locales": [{"locale": "dé", "subject": "x"}]}, "spec.locales: a locale is ASCII"),
    ({"locales": [{"locale": "de", "subject": "x"}, {"locale": "DE", "subject": "y"}]},
     "spec.locales: 'de' appears twice"),
    ({"locales": "de"}, "spec.locales: a list of at most 64 entries"),
    ({"locales": [{"locale": f"de-{i:03d}", "subject": "x"} for i in range(65)]},
     "spec.locales: a list of at most 64 entries"),
    ({"locales": ["de"]}, "spec.locales: every entry needs a locale"),
])
def test_resource_locales_are_checked(change: dict[str, Any], message: str) -> None:
    with pytest.raises(TemplateError) as refused:
        source_from_spec("default/t", spec(**change))
    assert refused.value.message.startswith(message), refused.value.message


def test_resource_fallback_locale_is_kept() -> None:
    source = source_from_spec("default/t", spec(fallbackLocale="DE"))
    assert source.fallback_locale == "de"


def test_builtin_templates_ship_locales() -> None:
    for name, german in (("password_reset", "Ihr Code"), ("order_confirmation", "Bestellung")):
        source = load_template_dir(REPO / "templates" / name)
        assert set(source.locales) == {"de"}
        rendered = CompiledTemplate(source).render(source.sample_data, locale="de-AT")
        assert rendered.subject.startswith(german)


@pytest.mark.parametrize("folder", ["not a tag", "dé", "x" * 40, "de_DE_x"])
def test_builtin_locale_folders_with_bad_names_are_refused(tmp_path: Path, folder: str) -> None:
    target = tmp_path / "password_reset"
    shutil.copytree(REPO / "templates" / "password_reset", target)
    (target / "locales" / folder).mkdir()
    (target / "locales" / folder / "subject.txt").write_text("x")
    with pytest.raises(TemplateError) as refused:
        load_template_dir(target)
    assert "password_reset/locales:" in refused.value.message


def test_builtin_locale_files_are_not_read_through_symlinks(tmp_path: Path) -> None:
    target = tmp_path / "password_reset"
    shutil.copytree(REPO / "templates" / "password_reset", target)
    secret = tmp_path / "secret.txt"
    secret.write_text("SECRET")
    (target / "locales" / "fr").mkdir()
    (target / "locales" / "fr" / "subject.txt").symlink_to(secret)
    with pytest.raises(TemplateError) as refused:  # nothing else: it overrides nothing
        load_template_dir(target)
    assert "overrides nothing" in refused.value.message


# --- the doors ---------------------------------------------------------------------------------

@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[TestClient]:
    settings = Settings.from_env({
        "REDIS_URL": redis_server.url, "JWT_SECRET": TEST_SECRET, "QUEUE_NAME": "locales-test",
        "SENDER_EMAIL": "noreply@shop.example.com", "EVENTS_ENABLED": "false",
        "SECRETS_DIR": "/nonexistent", "RESET_LIMIT_PER_RECIPIENT": "off",
        "TEMPLATE_STORE": "off",
    })
    with TestClient(create_app(settings)) as test_client:
        yield test_client


RESET = {"template": "password_reset", "to": "ada@example.com",
         "data": {"email": "ada@example.com", "code": "123"}}


@pytest.mark.parametrize("locale", [*BAD_TAGS, 42, ["de"], {"de": 1}, True])
def test_hostile_locales_are_refused_at_every_door(client: TestClient, locale: Any) -> None:
    answers = [
        client.post("/v1/messages", json={**RESET, "locale": locale}, headers=AUTH),
        client.post("/v1/messages/batch", json={"messages": [RESET, {**RESET, "locale": locale}]},
                    headers=AUTH),
        client.post("/v1/templates/password_reset/render", json={"locale": locale},
                    headers=AUTH),
        client.post("/email-service/send-reset-code",
                    json={"email": "ada@example.com", "code": "1", "locale": locale},
                    headers=AUTH),
    ]
    fields = []
    for answer in answers:
        assert answer.status_code in {400, 422}, answer.text
        assert len(answer.content) < 3000
        fields.append(answer.json()["details"][0]["field"])
    assert fields == ["locale", "messages.1.locale", "locale", "locale"]


def test_a_hostile_accept_language_is_ignored(client: TestClient) -> None:
    for header in ("../../etc/passwd", "x" * 8000, "de\x01", "*;q=1"):
        answer = client.post("/email-service/send-reset-code",
                             json={"email": "ada@example.com", "code": "1"},
                             headers={**AUTH, "Accept-Language": header})
        assert answer.status_code == 200, answer.text


def test_the_readme_worked_example_serves_as_documented() -> None:
    import yaml

    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("### Locales"):readme.index("### Versions, history")]
    block = section[section.index("```yaml") + 7:]
    document = yaml.safe_load(block[:block.index("```")])
    source = source_from_spec("shop/invoice-reminder", document["spec"])
    compiled = CompiledTemplate(source)
    data = {"invoice": "R-1"}

    def served(locale: str | None) -> tuple[str, str]:
        rendered = compiled.render(data, locale=locale)
        return rendered.subject, rendered.html

    assert served("fr-CH")[0] == "Rappel : facture R-1"
    assert served("en-GB") == ("Reminder: invoice R-1", served("en")[1])
    assert "Please settle" in served("en-GB")[1]
    for other in ("rm", "it", None):
        assert served(other)[0] == "Erinnerung: Rechnung R-1"
    assert negotiate(parse_accept_language("it, fr;q=0.8"), compiled.has_locale) == "fr"


def test_sample_data_per_locale_is_validated_and_test_rendered() -> None:
    from mailcore.rendering import compile_template

    base: dict[str, Any] = {"subject": "Hi {{ name }}", "html": "<p>{{ name }}</p>",
            "variables": {"type": "object", "required": ["name"],
                          "properties": {"name": {"type": "string"}}},
            "sampleData": {"name": "Ada"}}
    good = source_from_spec("d/t", {**base, "locales": [
        {"locale": "de", "subject": "Hallo {{ name }}", "sampleData": {"name": "Jürgen"}}]})
    compile_template(good)
    bad = source_from_spec("d/t", {**base, "locales": [
        {"locale": "de", "subject": "Hallo {{ name }}", "sampleData": {"name": 7}}]})
    with pytest.raises(TemplateError) as refused:
        compile_template(bad)
    assert refused.value.reason == "InvalidData"
    assert refused.value.message.startswith("sampleData of locale de: name")
    # A German body that needs German data: rendered with the default's, it would fail.
    needs = source_from_spec("d/t", {**base, "locales": [
        {"locale": "de", "subject": "{{ 10 // plz }}", "sampleData": {"name": "J", "plz": 2}}]})
    compile_template(needs)
    with pytest.raises(TemplateError):
        source_from_spec("d/t", {**base, "locales": [
            {"locale": "de", "subject": "x", "sampleData": ["not", "an", "object"]}]})
    # Without per-locale sample data the version is what it was.
    plain = source_from_spec("d/t", {**base, "locales": [{"locale": "de", "subject": "x"}]})
    assert plain.version == TemplateSource(
        name="d/t", subject="Hi {{ name }}", html="<p>{{ name }}</p>",
        variables=base["variables"], sample_data={"name": "Ada"},
        locales={"de": LocaleOverride(subject="x")}).version
