"""Where templates come from: the built-in set on disk, and (optionally) a shared store.

A built-in template is a folder in ``templates/``::

    templates/password_reset/
        template.mjml      (or template.html)   the body, MJML/HTML with Jinja
        subject.txt                              the subject, Jinja
        template.txt       (optional)            the text part; derived from the HTML otherwise
        variables.json     (optional)            JSON Schema for the data
        sample.json        (optional)            sample data for previews and test renders
        locales/de/        (optional, one folder per BCP 47 tag) subject.txt, template.mjml or
                           template.html, template.txt: each overrides the default's

A template from the store with the same name wins over the built-in one.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .locales import check_locale
from .rendering import CompiledTemplate, LocaleOverride, TemplateError, TemplateSource

if TYPE_CHECKING:
    from .store import StoredTemplate

#: Compiled template versions one process keeps (the serving ones and recently pinned ones).
MAX_COMPILED = 256

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
        locales=_load_locales(folder),
        name=folder.name,
        subject=subject.strip(),
        mjml=read("template.mjml"),
        html=read("template.html"),
        text=read("template.txt"),
        variables=read_json("variables.json"),
        sample_data=read_json("sample.json") or {},
    )


def _load_locales(folder: Path) -> dict[str, LocaleOverride]:
    """``locales/<tag>/`` folders: per-locale subject, body and text (symlinks are not
    followed out of the template folder)."""
    root = folder / "locales"
    if not root.is_dir():
        return {}
    locales: dict[str, LocaleOverride] = {}
    for child in sorted(root.iterdir()):
        if not child.is_dir():
            continue
        try:
            tag = check_locale(child.name)
        except ValueError as exc:
            raise TemplateError("InvalidTemplate", f"{folder.name}/locales: {exc}") from None
        if tag in locales:
            raise TemplateError("InvalidTemplate", f"{folder.name}/locales: {tag!r} twice")

        def read(name: str, child: Path = child) -> str | None:
            path = child / name
            if path.is_symlink() or not path.is_file():
                return None
            return path.read_text(encoding="utf-8")

        subject = read("subject.txt")
        override = LocaleOverride(subject=subject.strip() if subject else None,
                                  mjml=read("template.mjml"), html=read("template.html"),
                                  text=read("template.txt"))
        if override == LocaleOverride():
            raise TemplateError("InvalidTemplate",
                                f"{folder.name}/locales/{child.name}: overrides nothing")
        locales[tag] = override
    return locales


def load_builtin_templates(folder: Path) -> dict[str, TemplateSource]:
    return {
        child.name: load_template_dir(child)
        for child in sorted(folder.iterdir())
        if child.is_dir() and (child / "subject.txt").is_file()
    }


class TemplateStore(Protocol):
    """A shared store of templates (Redis, written by the operator)."""

    def get(self, name: str) -> TemplateSource | None: ...

    def lookup(self, name: str) -> StoredTemplate | None:
        """The record a caller's name resolves to (its store key and version)."""

    def archived(self, key: str, version: str) -> StoredTemplate | None:
        """A kept version of the template stored as ``key`` (may read Redis)."""

    def names(self) -> list[str]: ...

    def origin(self, name: str) -> Mapping[str, Any] | None:
        """Where the stored template a name resolves to came from (resource, sync …)."""


@dataclass(frozen=True)
class Pin:
    """A message's template version: the store key and the version it was validated against."""

    key: str
    version: str


@dataclass(frozen=True)
class Resolved:
    """A template a name resolved to, and the pin a message sent with it records (stored
    templates only; built-ins are whatever the worker ships)."""

    template: CompiledTemplate
    pin: Pin | None


def unknown_version(name: str, version: str) -> TemplateError:
    return TemplateError("UnknownTemplateVersion",
                         f"template {name!r} has no kept version {version!r}")


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
        self._compiled: OrderedDict[tuple[str, str], CompiledTemplate] = OrderedDict()
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
        return self._compile(source) if source is not None else None

    def resolve(self, name: str, version: str | None = None) -> Resolved | None:
        """The template ``name`` resolves to (``None`` when none), at ``version`` when given.

        Raises :class:`TemplateError` ``UnknownTemplateVersion`` when that version is not kept,
        and ``redis.RedisError`` when an older version must be read from an unreachable store.
        """
        stored = self._store.lookup(name) if self._store is not None else None
        if stored is not None:
            if version is not None and version != stored.version:
                older = self._store.archived(stored.key, version) if self._store else None
                if older is None:
                    raise unknown_version(name, version)
                stored = older
            return Resolved(self._compile(stored.source), Pin(stored.key, stored.version))
        builtin = self._builtins.get(name)
        if builtin is None:
            return None
        if version is not None and version != builtin.version:
            raise unknown_version(name, version)
        return Resolved(self._compile(builtin), None)

    def pinned(self, pin: Pin) -> CompiledTemplate | None:
        """The exact version a message was accepted with, even if no longer serving or deleted
        (``None`` when the store no longer keeps it). May read Redis (worker threads)."""
        if self._store is None:
            return None
        stored = self._store.archived(pin.key, pin.version)
        return self._compile(stored.source) if stored is not None else None

    def _compile(self, source: TemplateSource) -> CompiledTemplate:
        key = (source.name, source.version)
        with self._lock:
            compiled = self._compiled.get(key)
            if compiled is not None:
                self._compiled.move_to_end(key)
                return compiled
        compiled = CompiledTemplate(source)
        with self._lock:
            self._compiled[key] = compiled
            while len(self._compiled) > MAX_COMPILED:
                self._compiled.popitem(last=False)
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
