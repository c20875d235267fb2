"""Layouts and partials: shared pieces templates are composed from, before they are compiled.

An EmailTemplate with ``spec.kind: layout`` holds a whole MJML (or HTML) document with one
``{{ content }}`` slot; one with ``spec.kind: partial`` holds a snippet. A template names its
layout (``spec.layout``) and may ``{% include "name" %}`` partials. Both are resolved *only*
from the store (never from the file system), in the template's own namespace, and inlined as
text: the stored template is self-contained, so workers render it exactly as before (no
lookups, no extra cost per message) and a layout change gives every dependant a new version.

Refused with a clear reason: a missing layout or partial (``MissingReference``), an include
cycle or self-reference (``ReferenceCycle``), include chains deeper than :data:`MAX_DEPTH` or
more than :data:`MAX_INCLUDES` includes, names that are not resource names (``../x``,
``/etc/passwd``, NUL), includes by variable, ``extends``/``import``/``from`` (``InvalidTemplate``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .rendering import TemplateError, TemplateSource

TEMPLATE = "template"
LAYOUT = "layout"
PARTIAL = "partial"
KINDS = (TEMPLATE, LAYOUT, PARTIAL)
#: Reasons of the Ready condition for references.
MISSING_REFERENCE = "MissingReference"
REFERENCE_CYCLE = "ReferenceCycle"
#: Deepest chain of includes (a partial including a partial …).
MAX_DEPTH = 8
#: Includes one composition may inline in all.
MAX_INCLUDES = 64
#: Largest composed body (the MJML compiler's own limit).
MAX_COMPOSED = 512 * 1024

#: The layout's slot.
SLOT = re.compile(r"\{\{-?\s*content\s*-?\}\}")
_NAME = re.compile(r"[a-z0-9](?:[a-z0-9.-]{0,251}[a-z0-9])?")
_STATEMENT = re.compile(r"\{%[-+]?\s*(include|import|extends|from)\b(.*?)[-+]?%\}", re.DOTALL)
_LITERAL = re.compile(r"""\s*(?:"([^"\\]*)"|'([^'\\]*)')\s*""")


@dataclass(frozen=True)
class Part:
    """A stored layout or partial: its kind, its text and a content hash."""

    kind: str
    body: str
    #: ``mjml`` or ``html``: which field a layout's composed body goes to.
    markup: str = "mjml"

    @property
    def version(self) -> str:
        content = f"{self.kind}\0{self.markup}\0{self.body}"
        return hashlib.sha256(content.encode()).hexdigest()[:16]


#: Looks a part up by its store key (``namespace/name``); ``None`` when not stored.
PartLookup = Callable[[str], "Part | None"]


def spec_kind(spec: Mapping[str, Any]) -> str:
    kind = spec.get("kind", TEMPLATE)
    if kind not in KINDS:
        raise TemplateError("InvalidTemplate",
                            f"spec.kind must be one of {', '.join(KINDS)}, got {str(kind)[:40]!r}")
    return str(kind)


def check_name(value: Any, field: str) -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value) or ".." in value:
        shown = repr(value)[:60]
        raise TemplateError("InvalidTemplate",
                            f"{field}: {shown} is not a resource name (lowercase letters, digits, "
                            "'-' and '.'; a layout or partial in the same namespace)")
    return value


def part_from_spec(spec: Mapping[str, Any]) -> Part:
    """A layout's or partial's spec as a :class:`Part` (its slot checked)."""
    kind = spec_kind(spec)
    markup = "mjml" if spec.get("mjml") is not None else "html"
    body = spec.get(markup)
    if not isinstance(body, str) or not body.strip():
        raise TemplateError("InvalidTemplate", f"a {kind} needs spec.mjml or spec.html")
    if kind == LAYOUT:
        slots = len(SLOT.findall(body))
        if slots != 1:
            raise TemplateError("InvalidTemplate",
                                f"a layout needs exactly one {{{{ content }}}} slot, found {slots}")
    if spec.get("layout") is not None:
        raise TemplateError("InvalidTemplate", f"a {kind} cannot have a layout")
    if spec.get("pinnedVersion") is not None:
        raise TemplateError("InvalidTemplate", f"a {kind} cannot be pinned")
    return Part(kind, body, markup)


class Composer:
    """Inlines one template's layout and includes, recording which parts (and versions) it used.

    Parameters:
      namespace: where the parts are looked up.
      lookup: reads a part from the store.
      own: the key of the resource being composed (a part including itself is a cycle).
    """

    def __init__(self, namespace: str, lookup: PartLookup, own: str | None = None, *,
                 used: dict[str, str | None] | None = None) -> None:
        self.namespace = namespace
        self.lookup = lookup
        self.own = own
        #: key -> version of every part used (``None``: referenced but missing); filled even
        #: when composing fails, so a missing part can be waited for.
        self.used: dict[str, str | None] = {} if used is None else used
        self._includes = 0

    def _part(self, name: str, kind: str, chain: list[str]) -> Part:
        key = f"{self.namespace}/{name}"
        if key in chain or key == self.own:
            cycle = " → ".join([*chain, key] if key in chain else [key, key])
            raise TemplateError(REFERENCE_CYCLE, f"include cycle: {cycle}")
        part = self.lookup(key)
        self.used[key] = part.version if part is not None and part.kind == kind else None
        if part is None:
            raise TemplateError(MISSING_REFERENCE,
                                f"{kind} {name!r} is not stored in namespace {self.namespace} "
                                f"(apply an EmailTemplate {name!r} with spec.kind: {kind})")
        if part.kind != kind:
            raise TemplateError(MISSING_REFERENCE,
                                f"{name!r} in namespace {self.namespace} is a {part.kind}, "
                                f"not a {kind}")
        return part

    def expand(self, text: str, field: str, chain: list[str] | None = None) -> str:
        """``text`` with every ``{% include "name" %}`` replaced by that partial, recursively."""
        chain = chain or ([self.own] if self.own else [])
        if len(chain) > MAX_DEPTH:
            raise TemplateError(REFERENCE_CYCLE,
                                f"{field}: includes nest deeper than {MAX_DEPTH}: "
                                + " → ".join(chain[:MAX_DEPTH + 1]))
        pieces: list[str] = []
        at = 0
        for match in _STATEMENT.finditer(text):
            word, rest = match.group(1), match.group(2)
            if word != "include":
                raise TemplateError("InvalidTemplate",
                                    f"{field}: {{% {word} %}} is not supported; share markup "
                                    "with a layout or {% include \"partial-name\" %}")
            literal = _LITERAL.fullmatch(rest)
            if literal is None:
                raise TemplateError("InvalidTemplate",
                                    f"{field}: include only a partial by its quoted name, "
                                    "e.g. {% include \"footer\" %}")
            name = check_name(literal.group(1) if literal.group(1) is not None
                              else literal.group(2), f"{field}: include")
            self._includes += 1
            if self._includes > MAX_INCLUDES:
                raise TemplateError("InvalidTemplate",
                                    f"{field}: more than {MAX_INCLUDES} includes")
            key = f"{self.namespace}/{name}"
            part = self._part(name, PARTIAL, chain)
            pieces.append(text[at:match.start()])
            pieces.append(self.expand(part.body, field, [*chain, key]))
            at = match.end()
        pieces.append(text[at:])
        result = "".join(pieces)
        if len(result) > MAX_COMPOSED:
            raise TemplateError("MJMLTooLarge",
                                f"{field}: the composed body is larger than {MAX_COMPOSED} bytes")
        return result

    def layout(self, name: str) -> Part:
        return self._part(name, LAYOUT, [self.own] if self.own else [])

    def with_layout(self, layout: str | None, body: str | None, field: str) -> str | None:
        """``body`` (includes expanded) placed in ``layout``'s slot, or as it is without one."""
        if body is None:
            return None
        expanded = self.expand(body, field)
        if layout is None:
            return expanded
        part = self.layout(layout)
        frame = self.expand(part.body, f"layout {layout}")
        slot = SLOT.search(frame)
        assert slot is not None  # checked when the layout was stored
        result = frame[:slot.start()] + expanded + frame[slot.end():]
        if len(result) > MAX_COMPOSED:
            raise TemplateError("MJMLTooLarge",
                                f"{field}: the body in its layout is larger than "
                                f"{MAX_COMPOSED} bytes")
        return result


def compose(source: TemplateSource, spec: Mapping[str, Any], composer: Composer
            ) -> TemplateSource:
    """``source`` with its layout and includes inlined (``composer.used`` says which parts).

    A template without a layout or includes comes back unchanged (the same version)."""
    layout = spec.get("layout")
    if layout is not None:
        layout = check_name(layout, "spec.layout")

    def body(mjml: str | None, html: str | None, where: str
             ) -> tuple[str | None, str | None]:
        if layout is None:
            return (composer.expand(mjml, f"{where}mjml") if mjml is not None else None,
                    composer.expand(html, f"{where}html") if html is not None else None)
        fragment, field = (mjml, "mjml") if mjml is not None else (html, "html")
        if fragment is None:
            return None, None
        composed = composer.with_layout(layout, fragment, f"{where}{field}")
        return (composed, None) if composer.layout(layout).markup == "mjml" else (None, composed)

    def text(value: str | None, field: str) -> str | None:
        return composer.expand(value, field) if value is not None else None

    mjml, html = body(source.mjml, source.html, "spec.")
    locales = {}
    for tag, override in source.locales.items():
        where = f"spec.locales[{tag}]."
        own_mjml, own_html = body(override.mjml, override.html, where)
        locales[tag] = dataclasses.replace(
            override, mjml=own_mjml, html=own_html,
            subject=text(override.subject, f"{where}subject"),
            text=text(override.text, f"{where}text"))
    composed = dataclasses.replace(
        source, subject=composer.expand(source.subject, "spec.subject"), mjml=mjml, html=html,
        text=text(source.text, "spec.text"), locales=locales)
    return source if composed == source else composed


def layout_test_source(key: str, part: Part, composer: Composer,
                       sample_data: Mapping[str, Any] | None = None) -> TemplateSource:
    """A layout with an empty slot, for compiling and test-rendering it on its own with its
    ``sampleData`` (each dependant is test-rendered again with its own)."""
    frame = composer.expand(part.body, f"spec.{part.markup}")
    empty = SLOT.sub("", frame, count=1)
    return TemplateSource(name=key, subject="layout",
                          mjml=empty if part.markup == "mjml" else None,
                          html=empty if part.markup == "html" else None,
                          sample_data=dict(sample_data or {}))
