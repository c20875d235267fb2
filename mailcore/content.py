"""A message that brings its own content (no stored template): subject, html and/or text, or
MJML. Never evaluated as a template: ``{{ … }}`` in it is sent as written.

MJML is checked at the door (an ``<mjml>`` root, size and nesting depth: the compiler crashes on
deep nesting) and compiled in the worker, bounded by those checks; a compiler error fails the
message with the compiler's words. Text is derived from the HTML when not given.
"""

from __future__ import annotations

from . import rendering
from .html_text import html_to_text
from .rendering import RenderedEmail, TemplateError


def check_mjml_content(mjml: str) -> None:
    """An ``<mjml>`` root, at most ``MAX_MJML_BYTES`` and ``MAX_MJML_DEPTH`` deep (the limits
    the worker compiles templates with); else ``TemplateError``."""
    stripped = mjml.lstrip()
    if stripped.startswith("<?xml"):
        stripped = stripped.split("?>", 1)[-1].lstrip()
    if not stripped.startswith("<mjml"):
        raise TemplateError("InvalidMJML", "MJML must start with an <mjml> root element", 1)
    rendering.check_mjml_shape(mjml)


def render_content(subject: str, *, html: str | None, text: str | None,
                   mjml: str | None) -> RenderedEmail:
    """The message as sent: MJML compiled (checked again: a job is re-validated in the worker),
    text derived from the HTML when absent; an HTML part only when there is HTML.

    Parameters:
      subject, html, text, mjml: the caller's content (``html`` and ``mjml`` exclusive).
    """
    if mjml is not None:
        check_mjml_content(mjml)
        html = rendering.compile_mjml(mjml)
    if text is None:
        text = html_to_text(html or "")
    return RenderedEmail(subject=subject, html=html or "", text=text)
