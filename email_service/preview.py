"""Local previews for ``email-service render``: an EmailTemplate YAML file as the operator would
compose and compile it, and an optional PNG screenshot through a headless Chromium."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from mailcore.rendering import TemplateError, TemplateSource, compile_template
from mailcore.template_parts import TEMPLATE, Composer, compose, spec_kind
from mailcore.template_resources import (
    check_mailboxes,
    collect_parts,
    iter_resource_documents,
    resource_key,
    source_from_spec,
)

#: Longest wait for Chromium to take a screenshot.
SCREENSHOT_TIMEOUT = 60.0


def load_resource(path: Path, name: str | None = None) -> TemplateSource:
    """The EmailTemplate (``name``, or the file's only template) of a YAML file, composed with
    the layouts and partials of the YAML files beside it, compiled and test-rendered with its
    sample data (every locale). Raises :class:`TemplateError` saying what is wrong."""
    documents = list(iter_resource_documents(path))
    templates = [d for d in documents if spec_kind(d.get("spec") or {}) == TEMPLATE]
    if name is not None:
        templates = [d for d in templates if (d.get("metadata") or {}).get("name") == name]
    if len(templates) != 1:
        names = [str((d.get("metadata") or {}).get("name")) for d in templates]
        what = f"no EmailTemplate named {name!r}" if name is not None and not names else (
            f"{len(names)} EmailTemplates ({', '.join(names)}): say which with --name"
            if names else "no EmailTemplate (spec.kind template)")
        raise TemplateError("InvalidTemplate", f"{path.name}: {what}")
    document = templates[0]
    key = resource_key(document, "default")
    spec = document.get("spec") or {}
    parts, refused = collect_parts([path.parent], key.partition("/")[0])
    if refused:
        first = refused[0]
        raise TemplateError(first.error.reason, f"{first.where}: {first.error.message}")
    check_mailboxes(spec)
    composer = Composer(key.partition("/")[0],
                        lambda k: parts[k][0] if k in parts else None, own=key)
    source = compose(source_from_spec(key, spec), spec, composer)
    compile_template(source)
    return source


def chromium(configured: Path | None = None) -> str | None:
    """A headless-capable Chromium: ``configured`` (``--chromium``), or ``chromium``/
    ``chromium-browser``/``google-chrome`` on the PATH."""
    if configured is not None:
        return str(configured) if configured.is_file() else None
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


def screenshot(html: str, png: Path, *, browser_path: Path | None = None, width: int = 700,
               height: int = 1400) -> None:
    """Write a PNG of ``html`` as a mail client about ``width`` pixels wide shows it; raises
    ``RuntimeError`` (one line) when no Chromium is found or it fails."""
    browser = chromium(browser_path)
    if browser is None:
        raise RuntimeError("--png needs a Chromium (chromium, chromium-browser or "
                           "google-chrome on the PATH, or --chromium PATH)")
    with tempfile.TemporaryDirectory(prefix="email-service-preview-") as workdir:
        page = Path(workdir) / "preview.html"
        page.write_text(html, encoding="utf-8")
        target = png.resolve()
        command = [browser, "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars",
                   f"--user-data-dir={workdir}/profile", f"--window-size={width},{height}",
                   f"--screenshot={target}", page.as_uri()]
        try:
            result = subprocess.run(command, capture_output=True, timeout=SCREENSHOT_TIMEOUT,
                                    check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise RuntimeError(f"Chromium failed: {exc}") from None
    if result.returncode != 0 or not target.is_file() or target.stat().st_size == 0:
        lines = result.stderr.decode(errors="replace").strip().splitlines()
        raise RuntimeError(f"Chromium failed (exit {result.returncode}): "
                           f"{lines[-1] if lines else 'no screenshot written'}")
