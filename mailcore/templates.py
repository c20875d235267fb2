"""Where templates come from: the built-in set on disk, and (optionally) a shared store.

A built-in template is a folder in ``templates/``::

    templates/password_reset/
        template.mjml      (or template.html)   the body, MJML/HTML with Jinja
        subject.txt                              the subject, Jinja
        template.txt       (optional)            the text part; derived from the HTML otherwise
        variables.json     (optional)            JSON Schema for the data
        sample.json        (optional)            sample data for previews and test renders

A template from the store with the same name wins over the built-in one.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from .rendering import CompiledTemplate, TemplateError, TemplateSource

_PACKAGED = Path(__file__).parent / "_builtin_templates"
_SOURCE_TREE = Path(__file__).resolve().parent.parent / "templates"


def builtin_templates_dir(configured: Path | None = None) -> Path:
    """The built-in template folder: configured, packaged with the wheel, or the source tree."""
    if configured is not None:
        return configured
    return _PACKAGED if _PACKAGED.is_dir() else _SOURCE_TREE


def load_template_dir(folder: Path) -> TemplateSource:
    """Read one template folder into a :class:`TemplateSource`."""

    def read(name: str) -> str | None:
        path = folder / name
        return path.read_text(encoding="utf-8") if path.is_file() else None

    def read_json(name: str) -> Any:
        raw = read(name)
        if raw is None:
            return None
        try:
            return json.loads(raw)
        except json.JSONDecodeError as exc:
            raise TemplateError("InvalidTemplate", f"{folder.name}/{name}: {exc}") from None

    subject = read("subject.txt")
    if subject is None:
        raise TemplateError("InvalidTemplate", f"{folder.name}: subject.txt is missing")
    return TemplateSource(
        name=folder.name,
        subject=subject.strip(),
        mjml=read("template.mjml"),
        html=read("template.html"),
        text=read("template.txt"),
        variables=read_json("variables.json"),
        sample_data=read_json("sample.json") or {},
    )


def load_builtin_templates(folder: Path) -> dict[str, TemplateSource]:
    return {
        child.name: load_template_dir(child)
        for child in sorted(folder.iterdir())
        if child.is_dir() and (child / "subject.txt").is_file()
    }


class TemplateStore(Protocol):
    """A shared store of templates (Redis, written by the operator)."""

    def get(self, name: str) -> TemplateSource | None: ...

    def names(self) -> list[str]: ...

    def origin(self, name: str) -> Mapping[str, Any] | None:
        """Where the stored template a name resolves to came from (resource, sync …)."""


class TemplateRegistry:
    """Looks templates up by name and compiles each version once.

    Parameters:
      builtins: the fallback set, by name.
      store: an optional shared store whose templates win over built-ins.
    """

    def __init__(
        self, builtins: Mapping[str, TemplateSource], store: TemplateStore | None = None
    ) -> None:
        self._builtins = dict(builtins)
        self._store = store
        self._compiled: dict[tuple[str, str], CompiledTemplate] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_dir(cls, folder: Path, store: TemplateStore | None = None) -> TemplateRegistry:
        return cls(load_builtin_templates(folder), store)

    def source(self, name: str) -> TemplateSource | None:
        stored = self._store.get(name) if self._store is not None else None
        return stored if stored is not None else self._builtins.get(name)

    def get(self, name: str) -> CompiledTemplate | None:
        """The compiled template, or ``None`` when no template has that name."""
        source = self.source(name)
        if source is None:
            return None
        key = (name, source.version)
        compiled = self._compiled.get(key)
        if compiled is None:
            compiled = CompiledTemplate(source)
            with self._lock:
                # Keep only the newest version of each name.
                for old in [k for k in self._compiled if k[0] == name]:
                    del self._compiled[old]
                self._compiled[key] = compiled
        return compiled

    def names(self) -> list[str]:
        stored = self._store.names() if self._store is not None else []
        return sorted(set(self._builtins) | set(stored))

    def origin(self, name: str) -> dict[str, Any] | None:
        """``{"kind": "EmailTemplate", "namespace", "name", …}`` for stored templates,
        ``{"kind": "builtin"}`` for the fallback set, ``None`` when unknown."""
        stored = self._store.origin(name) if self._store is not None else None
        if stored is not None:
            return dict(stored)
        return {"kind": "builtin"} if name in self._builtins else None
