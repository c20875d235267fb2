"""The CRD itself: strict schema, CEL rules, printer columns; examples validated against it.

kmock does not enforce CRD schemas, so the schema is tested here on its own: the CRD's
openAPIV3Schema becomes a JSON Schema (unknown fields refused, as ``kubectl apply`` does with
server-side strict field validation) and the CEL rules are evaluated with a CEL library.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest
import yaml

from mailcore.rendering import compile_template
from mailcore.template_parts import Composer, compose, part_from_spec
from mailcore.template_resources import (
    FINALIZER,
    GROUP,
    KIND,
    PLURAL,
    source_from_spec,
)

from .conftest import CRD_PATH, EXAMPLES, load_crd

CRD = load_crd()
VERSION = CRD["spec"]["versions"][0]
SCHEMA = VERSION["schema"]["openAPIV3Schema"]


def to_json_schema(node: Any) -> Any:
    """An OpenAPI v3 structural schema as JSON Schema, with strict unknown-field handling."""
    if isinstance(node, list):
        return [to_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    result = {key: to_json_schema(value) for key, value in node.items()
              if not key.startswith("x-kubernetes-")}
    if "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields"):
        result["additionalProperties"] = False
    return result


def validator() -> jsonschema.Draft202012Validator:
    schema = to_json_schema(SCHEMA)
    # metadata is the API server's; only name rules are declared.
    schema["properties"]["metadata"]["additionalProperties"] = True
    return jsonschema.Draft202012Validator(schema,
                                           format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


def cel_rules(node: Any, path: str = "") -> Iterator[tuple[str, dict[str, str]]]:
    if isinstance(node, dict):
        for rule in node.get("x-kubernetes-validations", []):
            yield path, rule
        for key, value in (node.get("properties") or {}).items():
            yield from cel_rules(value, f"{path}.{key}")
        if "items" in node:
            yield from cel_rules(node["items"], f"{path}[]")


def cel_failures(obj: dict[str, Any]) -> list[str]:
    """Messages of the CEL rules ``obj`` breaks (evaluated where each rule is declared)."""
    cel = pytest.importorskip("cel")
    failures = []
    for path, rule in cel_rules(SCHEMA):
        targets: list[Any] = [obj]
        for part in path.strip(".").split(".") if path else []:
            many = part.endswith("[]")
            key = part.removesuffix("[]")
            targets = [t[key] for t in targets if isinstance(t, dict) and key in t]
            if many:
                targets = [item for t in targets for item in t]
        for target in targets:
            if not cel.evaluate(rule["rule"], {"self": target}):
                failures.append(rule["message"])
    return failures


def examples() -> list[dict[str, Any]]:
    docs = [doc for path in sorted(EXAMPLES.glob("*.yaml"))
            for doc in yaml.safe_load_all(path.read_text()) if doc]
    assert len(docs) >= 2
    return docs


def errors(obj: dict[str, Any]) -> list[tuple[str, str]]:
    return [(".".join(map(str, e.absolute_path)), e.validator)
            for e in validator().iter_errors(obj)]


def test_crd_identity() -> None:
    spec = CRD["spec"]
    assert CRD["metadata"]["name"] == f"{PLURAL}.{GROUP}"
    assert (spec["group"], spec["scope"], spec["names"]["kind"]) == (GROUP, "Namespaced", KIND)
    assert spec["names"]["shortNames"] == ["etpl"]
    assert spec["names"]["singular"] == "emailtemplate"
    assert VERSION["name"] == "v1" and VERSION["served"] and VERSION["storage"]
    assert VERSION["subresources"] == {"status": {}}
    assert FINALIZER == "email.platform.example.com/store-cleanup"


def test_printer_columns() -> None:
    columns = {c["name"]: c for c in VERSION["additionalPrinterColumns"]}
    assert columns["Ready"]["jsonPath"] == '.status.conditions[?(@.type=="Ready")].status'
    assert columns["Version"]["jsonPath"] == ".status.version"
    assert columns["Age"]["jsonPath"] == ".metadata.creationTimestamp"
    assert columns["Message"]["priority"] == 1
    assert columns["Message"]["jsonPath"].endswith(".message")
    assert [c["name"] for c in VERSION["additionalPrinterColumns"]][:1] == ["Ready"]


def test_schema_is_strict_and_documented() -> None:
    spec = SCHEMA["properties"]["spec"]
    assert not spec.get("x-kubernetes-preserve-unknown-fields")

    def walk(node: dict[str, Any], path: str) -> Iterator[str]:
        if "description" not in node and path not in {".apiVersion", ".kind"}:
            yield path
        for key, child in (node.get("properties") or {}).items():
            yield from walk(child, f"{path}.{key}")
        if "items" in node:
            yield from walk(node["items"], f"{path}[]")

    assert [p for p in walk(SCHEMA, "") if p.startswith((".spec", ".status"))] == []
    preserved = [p for p in walk_preserved(SCHEMA, "")]
    assert preserved == [".spec.variables", ".spec.sampleData", ".spec.locales[].sampleData"]


def walk_preserved(node: dict[str, Any], path: str) -> Iterator[str]:
    if node.get("x-kubernetes-preserve-unknown-fields"):
        yield path
    for key, child in (node.get("properties") or {}).items():
        yield from walk_preserved(child, f"{path}.{key}")
    if "items" in node:
        yield from walk_preserved(node["items"], f"{path}[]")


def test_list_maps() -> None:
    conditions = SCHEMA["properties"]["status"]["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert set(conditions["items"]["required"]) == {
        "type", "status", "lastTransitionTime", "reason", "message"}
    locales = SCHEMA["properties"]["spec"]["properties"]["locales"]
    assert locales["x-kubernetes-list-map-keys"] == ["locale"]


def test_cel_rules_exist() -> None:
    rules = {(path, rule["rule"]) for path, rule in cel_rules(SCHEMA)}
    assert (".spec", "has(self.mjml) != has(self.html)") in rules
    assert (".spec.locales[]", "!(has(self.mjml) && has(self.html))") in rules
    assert all(rule.get("message") for _, rule in cel_rules(SCHEMA))


@pytest.mark.parametrize("example", examples(), ids=lambda d: d["metadata"]["name"])
def test_examples_are_valid(example: dict[str, Any]) -> None:
    assert errors(example) == []
    key = f"{example['metadata']['namespace']}/{example['metadata']['name']}"
    if example["spec"].get("kind", "template") != "template":
        part_from_spec(example["spec"])
        return
    parts = {f"{doc['metadata']['namespace']}/{doc['metadata']['name']}":
             part_from_spec(doc["spec"]) for doc in examples()
             if doc["spec"].get("kind", "template") != "template"}
    source = compose(source_from_spec(key, example["spec"]), example["spec"],
                     Composer(example["metadata"]["namespace"], parts.get, own=key))
    compile_template(source)


@pytest.mark.parametrize("example", examples(), ids=lambda d: d["metadata"]["name"])
def test_examples_pass_the_cel_rules(example: dict[str, Any]) -> None:
    assert cel_failures(example) == []


def broken(change: Any) -> dict[str, Any]:
    obj = copy.deepcopy(examples()[-1])  # welcome: MJML, locales, variables
    assert obj["metadata"]["name"] == "welcome"
    change(obj["spec"])
    return obj


@pytest.mark.parametrize(("change", "expected"), [
    (lambda s: s.update(kind="snippet"), ("spec.kind", "enum")),
    (lambda s: s.update(layout="../base"), ("spec.layout", "pattern")),
    (lambda s: s.update(layout="/etc/passwd"), ("spec.layout", "pattern")),
    (lambda s: s.update(layout="base\x00"), ("spec.layout", "pattern")),
    (lambda s: s.update(layout="x" * 300), ("spec.layout", "maxLength")),
    (lambda s: s.update(layout=["base"]), ("spec.layout", "type")),
    (lambda s: s.update(subject=""), ("spec.subject", "minLength")),
    (lambda s: s.update(subjet="typo"), ("spec", "additionalProperties")),
    (lambda s: s.update(mjml=42), ("spec.mjml", "type")),
    (lambda s: s.update(replyTo="a@b.c\r\nBcc: x@y.z"), ("spec.replyTo", "pattern")),
    (lambda s: s.update(variables="not an object"), ("spec.variables", "type")),
    (lambda s: s["locales"].append({"locale": "not a tag!", "subject": "x"}),
     ("spec.locales.1.locale", "pattern")),
    (lambda s: s["locales"][0].update(body="?"), ("spec.locales.0", "additionalProperties")),
    (lambda s: s["locales"][0].pop("locale"), ("spec.locales.0", "required")),
    (lambda s: s.update(pinnedVersion=1234567890123456), ("spec.pinnedVersion", "type")),
    (lambda s: s.update(pinnedVersion=["0123456789abcdef"]), ("spec.pinnedVersion", "type")),
    (lambda s: s.update(pinnedVersion="0123456789ABCDEF"), ("spec.pinnedVersion", "pattern")),
    (lambda s: s.update(pinnedVersion="0123"), ("spec.pinnedVersion", "minLength")),
    (lambda s: s.update(pinnedVersion="0" * 100_000), ("spec.pinnedVersion", "maxLength")),
    (lambda s: s.update(pinnedVersion="../../etc/passwd"), ("spec.pinnedVersion", "pattern")),
    (lambda s: s.update(pinnedVersion="0123456789abcde\x00"), ("spec.pinnedVersion", "pattern")),
    (lambda s: s.update(stream="marketing"), ("spec.stream", "enum")),
    (lambda s: s.update(stream="Bulk"), ("spec.stream", "enum")),
    (lambda s: s.update(stream=["bulk"]), ("spec.stream", "type")),
    (lambda s: s.update(stream=1), ("spec.stream", "type")),
    (lambda s: s.update(unsubscribe="yes"), ("spec.unsubscribe", "type")),
    (lambda s: s.update(unsubscribe=1), ("spec.unsubscribe", "type")),
])
def test_broken_objects_fail_for_the_right_reason(change: Any, expected: tuple[str, str]) -> None:
    assert expected in errors(broken(change))


@pytest.mark.parametrize("name", ["password_reset", "Welcome", "-x", "x" * 254])
def test_resource_names_are_dns_subdomains(name: str) -> None:
    obj = copy.deepcopy(examples()[-1])
    obj["metadata"]["name"] = name
    assert {validator for path, validator in errors(obj) if path == "metadata.name"}


@pytest.mark.parametrize(("change", "message"), [
    (lambda s: s.update(html="<p>x</p>"), "exactly one of spec.mjml or spec.html must be set"),
    (lambda s: s.pop("mjml"), "exactly one of spec.mjml or spec.html must be set"),
    (lambda s: s["locales"][0].update(html="<p>x</p>"), "a locale sets mjml or html, not both"),
    (lambda s: s["locales"].append({"locale": "fr"}),
     "a locale overrides at least one of subject, mjml, html, text"),
    (lambda s: s.update(fallbackLocale="fr"),
     "spec.fallbackLocale must be the locale of one of spec.locales"),
    (lambda s: s.pop("subject"), "a template needs spec.subject"),
    (lambda s: (s.pop("subject"), s.update(kind="template")),
     "a template needs spec.subject"),
    (lambda s: s.update(kind="partial", layout="base"),
     "only a template (spec.kind template) may name a layout"),
    (lambda s: (s.pop("locales"), s.update(kind="layout")),
     "a layout needs a {{ content }} slot"),
    (lambda s: s.update(kind="partial", pinnedVersion="0123456789abcdef"),
     "only a template (spec.kind template) can be pinned"),
    (lambda s: (s.pop("locales"), s.update(fallbackLocale="de")),
     "spec.fallbackLocale must be the locale of one of spec.locales"),
])
def test_cel_rules_refuse_for_the_right_reason(change: Any, message: str) -> None:
    obj = broken(change)
    assert errors(obj) == []  # structurally fine: only the CEL rule catches it
    assert cel_failures(obj) == [message]  # needs `common-expression-language` (else skipped)


@pytest.mark.parametrize("slot", ["{{ content }}", "{{content}}", "{{- content -}}"])
def test_a_layout_with_a_slot_and_no_subject_is_valid(slot: str) -> None:
    def change(s: dict[str, Any]) -> None:
        s.clear()
        s.update(kind="layout", mjml=f"<mjml><mj-body>{slot}</mj-body></mjml>")

    obj = broken(change)
    assert errors(obj) == []
    assert cel_failures(obj) == []


def test_a_partial_and_a_template_with_a_layout_are_valid() -> None:
    partial = broken(lambda s: (s.clear(), s.update(kind="partial", mjml="<mj-text>x</mj-text>")))
    with_layout = broken(lambda s: s.update(layout="base"))
    for obj in (partial, with_layout):
        assert errors(obj) == []
        assert cel_failures(obj) == []


def test_a_fallback_locale_among_the_locales_is_valid() -> None:
    obj = broken(lambda s: s.update(fallbackLocale="de"))
    assert errors(obj) == []
    assert cel_failures(obj) == []


@pytest.mark.parametrize("value", [
    "", "d", "de_DE", "../de", "/etc", "de\x00", "d\u00e9", "x" * 36, 42, ["de"],
])
def test_fallback_locale_shapes_are_refused(value: object) -> None:
    obj = broken(lambda s: s.update(fallbackLocale=value))
    assert {path for path, _ in errors(obj)} == {"spec.fallbackLocale"}


def test_a_pinned_version_is_valid() -> None:
    obj = broken(lambda s: s.update(pinnedVersion="0123456789abcdef"))
    assert errors(obj) == []
    assert cel_failures(obj) == []


def test_status_written_by_the_operator_matches_the_schema() -> None:
    obj = copy.deepcopy(examples()[-1])
    obj["status"] = {
        "observedGeneration": 3, "version": "0123456789abcdef", "template": "default/welcome",
        "latestVersion": "fedcba9876543210", "pinnedVersion": "0123456789abcdef",
        "conditions": [{"type": "Ready", "status": "False", "reason": "InvalidMJML",
                        "message": "MJML does not compile (line 3)", "observedGeneration": 3,
                        "lastTransitionTime": "2026-11-23T02:58:05Z"}],
    }
    assert errors(obj) == []
    obj["status"]["conditions"][0]["status"] = "Maybe"
    assert ("status.conditions.0.status", "enum") in errors(obj)


def test_crd_file_is_a_single_document() -> None:
    assert len(list(yaml.safe_load_all(CRD_PATH.read_text()))) == 1


def test_crd_manifest_is_a_valid_kubernetes_object() -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    kubernetes_validate.validate(copy.deepcopy(CRD), "1.31", strict=True)
    typo = copy.deepcopy(CRD)
    typo["spec"]["versions"][0]["subresource"] = {"status": {}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(typo, "1.31", strict=True)


def test_a_template_may_name_its_stream() -> None:
    for stream in ("transactional", "bulk"):
        obj = copy.deepcopy(examples()[-1])
        obj["spec"]["stream"] = stream
        assert errors(obj) == [] and cel_failures(obj) == []
