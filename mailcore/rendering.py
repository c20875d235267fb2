"""Compile a template once, render it per message.

A template's body is MJML (or HTML) with Jinja in it. Compiling runs the MJML compiler once per
template version; rendering a message is then only Jinja on the compiled HTML. The Jinja
constructs are swapped for inert placeholders while MJML compiles, so the compiler cannot
mangle them, and any literal ``{{``/``{%``/``{#`` the compiler emits (CSS can) stays literal.

Templates may come from Kubernetes resources written by other teams, so they run in Jinja's
sandbox, with HTML autoescaping, and with limits on the operators that can exhaust memory.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import jsonschema
import orjson
from jinja2 import TemplateSyntaxError
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context
from markupsafe import escape
from mjml import mjml2html

from .blanking import blank, data_values
from .html_text import html_to_text
from .locales import check_locale, lookup_chain
from .render_budget import Budget, LimitExceeded, RenderLimits, activate
from .sandbox import (
    BIG_PRINT,
    HTML_CHUNK,
    TEXT_CHUNK,
    Sandbox,
    charge_printed,
    patch_program,
    render_output,
)
from .schema_fast import compile_check

_JINJA = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", re.DOTALL)
_LITERAL_OPENER = re.compile(r"\{[{%#]")
_WHITESPACE = re.compile(r"\s+")
_BLANK_LINES = re.compile(r"\n[ \t]*(?:\n[ \t]*){2,}")
#: The bounds a render gets when its caller names none (see :class:`RenderLimits`).
DEFAULT_LIMITS = RenderLimits()


class TemplateError(Exception):
    """A template cannot be compiled or rendered.

    Parameters:
      reason: a CamelCase reason (``InvalidMJML``, ``RenderError``, ``InvalidSchema``,
        ``InvalidData``) fit for a Kubernetes condition.
      message: what is wrong, for humans.
      line: the line of the offending source, where known.
      field: for ``InvalidData``, the dotted path inside the data (``customer.email``).
      violations: for ``InvalidData``, every ``(field, message)`` found, the first one first.
    """

    def __init__(
        self, reason: str, message: str, line: int | None = None, field: str | None = None,
        violations: list[tuple[str, str]] | None = None,
    ) -> None:
        super().__init__(f"{message} (line {line})" if line else message)
        self.reason = reason
        self.message = message
        self.line = line
        self.field = field
        self.violations = violations or []


@dataclass(frozen=True)
class LocaleOverride:
    """Per-locale replacements; a field left ``None`` falls back to the default."""

    subject: str | None = None
    mjml: str | None = None
    html: str | None = None
    text: str | None = None
    #: Sample data for this locale's test render (e.g. a German address); else the default's.
    sample_data: Mapping[str, Any] | None = None

    def content(self) -> dict[str, Any]:
        """The fields that make the version (``sample_data`` only when set, so versions of
        templates without it stay what they were)."""
        fields = vars(self).copy()
        if fields.get("sample_data") is None:
            fields.pop("sample_data", None)
        return fields


@dataclass(frozen=True)
class TemplateSource:
    """A template as authored (a file set in templates/ or an EmailTemplate resource)."""

    name: str
    subject: str
    mjml: str | None = None
    html: str | None = None
    text: str | None = None
    sender: str | None = None
    reply_to: str | None = None
    variables: Mapping[str, Any] | None = None
    sample_data: Mapping[str, Any] = field(default_factory=dict)
    locales: Mapping[str, LocaleOverride] = field(default_factory=dict)
    #: The locale whose entry serves a request whose own locale has none (before the default).
    fallback_locale: str | None = None
    #: The stream its messages go on unless a request names one (README: Streams).
    stream: str | None = None
    #: Messages carry one-click unsubscribe headers (RFC 8058; ``spec.unsubscribe``).
    unsubscribe: bool = False

    @cached_property
    def version(self) -> str:
        """A content hash: equal sources have equal versions, any change gives a new one."""
        content: dict[str, Any] = {
            "subject": self.subject, "mjml": self.mjml, "html": self.html, "text": self.text,
            "sender": self.sender, "reply_to": self.reply_to, "variables": self.variables,
            "sample_data": self.sample_data,
            "locales": {key: value.content() for key, value in sorted(self.locales.items())},
        }
        if self.fallback_locale is not None:  # absent: versions stay what they were
            content["fallback_locale"] = self.fallback_locale
        if self.stream is not None:  # likewise
            content["stream"] = self.stream
        if self.unsubscribe:  # likewise
            content["unsubscribe"] = True
        canonical = orjson.dumps(content, option=orjson.OPT_SORT_KEYS)
        return hashlib.sha256(canonical).hexdigest()[:16]


@dataclass(frozen=True)
class RenderedEmail:
    subject: str
    html: str
    text: str


_HTML_ENV = Sandbox(autoescape=True, keep_trailing_newline=True)
_TEXT_ENV = Sandbox(autoescape=False, keep_trailing_newline=True)


#: Jinja's globals (range, dict, namespace, ...), the same in both environments.
_GLOBALS = dict(_HTML_ENV.globals)


def _escape_text_portably(text: str) -> str:
    return (text.replace("&", "&amp;").replace(">", "&gt;").replace("<", "&lt;")
            .replace("'", "&#39;").replace('"', "&#34;"))


try:
    from markupsafe._speedups import _escape_inner as _escape_text
except ImportError:  # fires only when markupsafe was installed without its C speedups
    _escape_text = _escape_text_portably


def _escape(value: Any) -> str:
    """markupsafe's ``escape`` for what templates print, without wrapping plain text in Markup.

    Compiled templates only join what they print, so the Markup wrapper (a Python-level
    ``__new__``) buys nothing for plain strings and numbers; it was a third of an
    order confirmation's render. Anything else (Markup, objects with ``__html__``) takes the
    general path.
    """
    kind = type(value)
    if kind is str:
        if len(value) >= BIG_PRINT:
            charge_printed(value)
        return _escape_text(value)
    if kind is int or kind is float:
        return str(value)
    charge_printed(value)
    return escape(value)


def _run(program: Any, context: dict[str, Any], budget: Budget, chunk_size: int) -> str:
    # Template.render copies the globals (a ChainMap) into a fresh dict on every call, three
    # times per message; ``context`` already holds them, so it is used as it is (the
    # template's own assignments go to its context's locals, never into ``context``). The
    # Context is built directly, as new_context(shared=True) would, minus the set of global
    # names it keeps for ``{% import %}``, which these loader-less environments cannot run.
    return render_output(program.root_render_func(
        Context(program.environment, context, program.name, program.blocks)), budget, chunk_size)


@dataclass(frozen=True)
class _Body:
    subject: Any
    html: Any
    text: Any


class CompiledTemplate:
    """A template ready to render: Jinja programs for subject, HTML and text, per locale."""

    def __init__(self, source: TemplateSource) -> None:
        self.source = source
        self.name = source.name
        self.version = source.version
        self.validator = _schema_validator(source.variables)
        #: "Certainly valid" without jsonschema's walk (mailcore/schema_fast.py).
        self._valid = compile_check(source.variables) if self.validator is not None else None
        self._default = _compile_body(source.subject, source.mjml, source.html, source.text)
        self._locales = {
            _normal(locale): _compile_body(
                override.subject or source.subject,
                override.mjml if override.mjml or override.html else source.mjml,
                override.html if override.mjml or override.html else source.html,
                override.text if override.text is not None else (
                    source.text if not (override.mjml or override.html) else None
                ),
            )
            for locale, override in source.locales.items()
        }

    @property
    def locales(self) -> list[str]:
        return sorted(self._locales)

    def validate_data(self, data: Mapping[str, Any]) -> None:
        """Raise ``TemplateError(InvalidData)`` when data does not match ``variables``."""
        if self.validator is None or (self._valid is not None and self._valid(data)):
            return
        errors = sorted(self.validator.iter_errors(data), key=lambda e: list(e.absolute_path))
        if errors:
            violations = [(".".join(str(p) for p in error.absolute_path), _violation(error))
                          for error in errors[:50]]
            where, message = violations[0]
            more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
            raise TemplateError("InvalidData", f"{where or 'data'}: {message}{more}", field=where,
                                violations=violations)

    def render(
        self, data: Mapping[str, Any], *, brand: Mapping[str, Any] | None = None,
        locale: str | None = None, limits: RenderLimits | None = None,
    ) -> RenderedEmail:
        """Render with ``data``; raises ``TemplateError`` (``RenderError``, or
        ``RenderBudgetExceeded`` / ``OutputTooLarge`` past ``limits``)."""
        body = self._select(locale)
        brand = dict(brand or {})
        # ``locale`` is the message's language tag (BCP 47 spelling): the HTML's ``lang`` and
        # the ``money`` filter's default read it; without one, the brand's (DEFAULT_LOCALE).
        tag = str(locale or brand.get("locale") or "en").replace("_", "-")
        context = {**_GLOBALS, **data, "brand": brand, "locale": tag}
        budget = Budget(limits or DEFAULT_LIMITS)
        previous = activate(budget)
        try:
            subject = _WHITESPACE.sub(" ", _run(body.subject, context, budget, TEXT_CHUNK)).strip()
            html = _run(body.html, context, budget, HTML_CHUNK)
            text = _BLANK_LINES.sub("\n\n", _run(body.text, context, budget, TEXT_CHUNK))
            if budget.failure is not None:  # raised, and swallowed somewhere in the template
                raise budget.failure
        except LimitExceeded as exc:
            raise TemplateError(exc.reason, exc.text) from None
        except MemoryError:  # the process's own limit (RLIMIT_AS in the sandbox process)
            raise TemplateError("RenderBudgetExceeded", "render budget exceeded: the render ran "
                                "out of memory") from None
        except SecurityError as exc:
            raise TemplateError("RenderError", f"blocked by the sandbox: {exc}") from None
        except Exception as exc:  # a template error at render time: bad filter use, types, ...
            if budget.failure is not None:
                raise TemplateError(budget.failure.reason, budget.failure.text) from None
            raise TemplateError("RenderError", _without_data(f"{type(exc).__name__}: {exc}", data)
                                ) from None
        finally:
            activate(previous)
        if not subject:
            raise TemplateError("RenderError", "the subject renders empty")
        return RenderedEmail(subject=subject, html=html, text=text)

    def _select(self, locale: str | None) -> _Body:
        """RFC 4647 lookup of ``locale``, then of the template's fallback locale, then the
        default body (see :mod:`mailcore.locales`)."""
        if self._locales:
            for tag in (locale, self.source.fallback_locale):
                if tag:
                    for candidate in lookup_chain(_normal(tag)):
                        body = self._locales.get(candidate)
                        if body is not None:
                            return body
        return self._default

    def has_locale(self, locale: str) -> bool:
        """Whether ``locale`` (or a shorter form of it) has its own entry."""
        return any(tag in self._locales for tag in lookup_chain(_normal(locale)))


def _normal(tag: str) -> str:
    try:
        return check_locale(tag)
    except ValueError:
        return tag


def _without_data(message: str, data: Mapping[str, Any]) -> str:
    """An error message with the data's values blanked out: Python's messages can quote a value
    (``KeyError: '123456'``), and they reach logs and statuses, while data may be secret."""
    return blank(message, data_values(data, min_length=3, limit=10_000))


def compile_template(source: TemplateSource, limits: RenderLimits | None = None
                     ) -> CompiledTemplate:
    """Compile MJML and Jinja, then test-render with ``sample_data`` (raises TemplateError)."""
    compiled = CompiledTemplate(source)
    if source.sample_data or source.variables:
        compiled.validate_data(source.sample_data)
    compiled.render(source.sample_data, limits=limits)
    for tag, override in source.locales.items():
        sample = source.sample_data if override.sample_data is None else override.sample_data
        if override.sample_data is not None:
            try:
                compiled.validate_data(sample)
            except TemplateError as exc:
                raise TemplateError(exc.reason, f"sampleData of locale {tag}: {exc.message}",
                                    field=exc.field, violations=exc.violations) from None
        compiled.render(sample, locale=tag, limits=limits)
    return compiled


#: Deepest element nesting the MJML compiler is given. mjml-python (Rust) recurses per level
#: and overflows its stack, killing the process with SIGSEGV, at ~1,500-2,000 nested
#: mj-section/mj-wrapper (~7,000-10,000 plain HTML tags) on an 8 MiB stack; real templates
#: nest 5-9 deep.
MAX_MJML_DEPTH = 64
#: Largest MJML source compiled (real-world templates are 2-20 KB).
MAX_MJML_BYTES = 512 * 1024
# A tag at a given "<"; nothing in it may span another "<", so an unclosed tag or quote ends
# the attempt at the next one and the scan stays linear whatever the input.
_TAG_AT = re.compile(r"<(/?)([A-Za-z][\w:.-]*)(?:[^<>\"']|\"[^<>\"]*\"|'[^<>']*')*(/?)>")
_VOID = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta",
                   "param", "source", "track", "wbr"})
_SKIPPED = (("<!--", "-->"), ("<![CDATA[", "]]>"))


def _tags(text: str) -> Iterator[tuple[bool, str, bool, int]]:
    """``(closing, name, self_closing, offset)`` of each tag, outside comments and CDATA, in one
    linear pass (a regex with ``.*?`` rescans the rest of the text for each unclosed one)."""
    position = text.find("<")
    while position >= 0:
        for opener, closer in _SKIPPED:  # comments and CDATA hold no elements
            if text.startswith(opener, position):
                end = text.find(closer, position + len(opener))
                if end < 0:
                    return
                position = text.find("<", end + len(closer))
                break
        else:
            match = _TAG_AT.match(text, position)
            if match is None:
                position = text.find("<", position + 1)
                continue
            closing, name, self_closing = match.groups()
            yield bool(closing), name, bool(self_closing), position
            position = text.find("<", match.end())


def check_mjml_shape(mjml: str) -> None:
    """Refuse MJML too large or nested too deep to compile safely (before the compiler runs)."""
    size = len(mjml.encode("utf-8", "surrogatepass"))
    if size > MAX_MJML_BYTES:
        raise TemplateError("MJMLTooLarge", f"the MJML is {size} bytes (the limit is "
                            f"{MAX_MJML_BYTES})")
    depth = 0
    for closing, name, self_closing, position in _tags(mjml):
        if closing:
            depth = max(0, depth - 1)
        elif not self_closing and name.lower() not in _VOID:
            depth += 1
            if depth > MAX_MJML_DEPTH:  # read at each call: the sandbox process may set it
                raise TemplateError("MJMLTooDeep", f"elements nest more than {MAX_MJML_DEPTH} "
                                    "deep", mjml.count("\n", 0, position) + 1)


def compile_mjml(mjml: str) -> str:
    """MJML to HTML (the compiler alone, no Jinja handling)."""
    check_mjml_shape(mjml)
    try:
        return str(mjml2html(mjml))
    except ValueError as exc:
        raise TemplateError("InvalidMJML", f"MJML does not compile: {exc}") from None


def _compile_body(subject: str, mjml: str | None, html: str | None, text: str | None) -> _Body:
    if (mjml is None) == (html is None):
        raise TemplateError("InvalidTemplate", "exactly one of mjml or html is required")
    source = mjml if mjml is not None else html
    assert source is not None
    _parse(_TEXT_ENV, source, "body")  # syntax errors with the author's line numbers
    protected, constructs = _protect(source)
    if mjml is not None:
        _check_mjml_root(mjml)
        check_mjml_shape(mjml)
        try:
            protected = compile_mjml(protected)
        except TemplateError as exc:
            raise _locate_mjml_error(exc, mjml) from None
        protected = _with_lang(protected, constructs)
    html_program = _restore(protected, constructs)
    text_program = text if text is not None else _restore(html_to_text(protected), constructs)
    return _Body(
        subject=_parse(_TEXT_ENV, subject, "subject"),
        html=_parse(_HTML_ENV, html_program, "body"),
        text=_parse(_TEXT_ENV, text_program, "text"),
    )


def _check_mjml_root(mjml: str) -> None:
    stripped = _JINJA.sub("", mjml).lstrip()
    if stripped.startswith("<?xml"):
        stripped = stripped.split("?>", 1)[-1].lstrip()
    if not stripped.startswith("<mjml"):
        raise TemplateError("InvalidMJML", "MJML must start with an <mjml> root element", 1)


_MJML_POSITION = re.compile(r" at position (\d+):(\d+)$")
_PLACEHOLDER_LENGTH = len("JINJAX000000X")


def _locate_mjml_error(error: TemplateError, mjml: str) -> TemplateError:
    """Add the author's line to an MJML compiler error (the compiler reports none, or offsets
    into the text with Jinja swapped out), naming the element left open or closed astray."""
    message = _MJML_POSITION.sub("", error.message)
    problem = _structure_problem(mjml)
    if problem is not None:
        what, line = problem
        return TemplateError(error.reason, f"{message}: {what}", line)
    position = _MJML_POSITION.search(error.message)
    if position:
        offset = _original_offset(mjml, int(position.group(1)))
        return TemplateError(error.reason, message, mjml.count("\n", 0, offset) + 1)
    return error


def _original_offset(source: str, protected_offset: int) -> int:
    """Map an offset in the protected text (Jinja swapped for placeholders) back to ``source``."""
    delta = 0
    for match in _JINJA.finditer(source):
        start = match.start() + delta
        if protected_offset < start:
            break
        if protected_offset < start + _PLACEHOLDER_LENGTH:
            return match.start()
        delta += _PLACEHOLDER_LENGTH - (match.end() - match.start())
    return max(0, min(len(source), protected_offset - delta))


def _structure_problem(mjml: str) -> tuple[str, int] | None:
    """The first MJML element closed astray, or the innermost one never closed, with its line."""
    text = _JINJA.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), mjml)
    stack: list[tuple[str, int]] = []
    for closing, name, self_closing, position in _tags(text):
        if self_closing or not (name == "mjml" or name.startswith("mj-")):
            continue
        line = text.count("\n", 0, position) + 1
        if not closing:
            stack.append((name, line))
        elif stack and stack[-1][0] == name:
            stack.pop()
        elif any(open_name == name for open_name, _ in stack):
            inner, inner_line = stack[-1]
            return f"<{inner}> is never closed", inner_line
        else:
            return f"</{name}> closes no open <{name}>", line
    if stack:
        name, line = stack[-1]
        return f"<{name}> is never closed", line
    return None


def _protect(source: str) -> tuple[str, list[str]]:
    """Replace each Jinja construct with an alphanumeric placeholder the compiler keeps as is.

    Equal constructs share one placeholder, so the text part can tell that a link's text is
    its target (``<a href="{{ url }}">{{ url }}</a>``) and print it once."""
    constructs: list[str] = []
    index: dict[str, int] = {}

    def swap(match: re.Match[str]) -> str:
        construct = match.group(0)
        number = index.get(construct)
        if number is None:
            number = index[construct] = len(constructs)
            constructs.append(construct)
        return f"JINJAX{number:06d}X"

    return _JINJA.sub(swap, source), constructs


#: Where the compiler writes ``lang="und"`` (unless ``<mjml lang>`` names one): the root
#: element and the body's wrapper.
_UNDETERMINED_LANG = ('<html lang="und"', 'role="article" lang="und"')


def _with_lang(html: str, constructs: list[str]) -> str:
    """Make an undetermined ``lang`` the message's locale (a construct of its own, restored
    with the others)."""
    if _UNDETERMINED_LANG[0] not in html[:200]:
        return html
    constructs.append("{{ locale }}")
    placeholder = f"JINJAX{len(constructs) - 1:06d}X"
    for attribute in _UNDETERMINED_LANG:
        html = html.replace(attribute, attribute.replace("und", placeholder), 1)
    return html


def _restore(compiled: str, constructs: list[str]) -> str:
    """Make the compiler's output literal to Jinja, then put the Jinja constructs back."""
    literal = _LITERAL_OPENER.sub(lambda m: "{{ '" + m.group(0) + "' }}", compiled)
    return re.sub(r"JINJAX(\d{6})X", lambda m: constructs[int(m.group(1))], literal)


def _parse(env: Sandbox, source: str, part: str) -> Any:
    try:
        program = env.from_string(source)
    except TemplateSyntaxError as exc:
        raise TemplateError("RenderError", f"Jinja syntax error in {part}: {exc.message}",
                            exc.lineno) from None
    except (RecursionError, MemoryError):  # expressions nested thousands deep
        raise TemplateError("RenderError", f"the Jinja in {part} nests too deeply") from None
    # Every render's Context takes set(program.globals), three times a message: over Jinja's
    # ChainMap that is slow, over a plain dict of the same names it costs almost nothing.
    program.globals = dict(program.globals)
    # The compiled module looks ``escape`` up in its own namespace, where Jinja put markupsafe's;
    # its joins (``~``) and ``str`` (unescaped output) are swapped for bounded ones there too.
    program.root_render_func.__globals__["escape"] = _escape
    patch_program(program.root_render_func.__globals__)
    return program


#: Schema keywords whose messages name properties, never a value.
_NAMES_ONLY = frozenset({"required", "dependentRequired", "additionalProperties"})


def _violation(error: jsonschema.ValidationError) -> str:
    """What a value fails, without the value (data may be secret, e.g. a reset code, and
    these messages reach logs and statuses)."""
    if error.validator in _NAMES_ONLY:
        return error.message
    expected = orjson.dumps(error.validator_value, default=str).decode()
    expected = expected if len(expected) <= 120 else expected[:117] + "..."
    return f"does not satisfy {error.validator} {expected}"


def _schema_validator(schema: Mapping[str, Any] | None) -> jsonschema.protocols.Validator | None:
    if schema is None:
        return None
    validator_class = jsonschema.validators.validator_for(schema, jsonschema.Draft202012Validator)
    try:
        validator_class.check_schema(dict(schema))
    except jsonschema.SchemaError as exc:
        raise TemplateError("InvalidSchema", f"variables is not a valid JSON Schema: {exc.message}"
                            ) from None
    return validator_class(schema)
