"""Declaring settings as fields, and reading them from the environment.

A setting is a dataclass field made by :func:`setting`: its environment variable, its default
(written once, as the text a user would set), a parser, a line of documentation and whether it
is a secret. :func:`read_group` fills a group of such fields from an environment; the README's
table is generated from the same declarations (``mailcore.settings_table``).

Every parser takes the variable's text and raises :class:`ValueError` with a message that does
not name the variable; the reader prefixes the name, so every mistake reads
``NAME: what is wrong``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

#: Text that counts as true or false for a flag.
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class ConfigError(ValueError):
    """A setting is missing or invalid; the message starts with the variable's name."""


@dataclass(frozen=True)
class Var:
    """One environment variable behind a settings field.

    Parameters:
      name: the variable (``SMTP_PORT``).
      default: the text used when the variable is unset or empty, as a user would write it;
        ``None``: the field is ``None`` then.
      doc: one line for the README's table.
      parse: text to value; raises ``ValueError`` with a message that does not name the variable.
      secret: may also come from ``<NAME>_FILE`` or ``<SECRETS_DIR>/<lowercase name>``.
      shown: the README's default column when ``default`` alone would mislead.
      fallback: the default computed from variables read before (by name), e.g. ``BRAND_NAME``
        from ``SENDER_NAME``; ``None`` from it means ``default``.
      unless: a variable read before (or several) whose value makes this one unread (its
        default stands).
    """

    name: str
    default: str | None
    doc: str
    parse: Callable[[str], Any]
    secret: bool = False
    shown: str | None = None
    fallback: Callable[[Mapping[str, Any]], str | None] | None = None
    unless: str | tuple[str, ...] | None = None


def setting(name: str, default: str | None, doc: str, parse: Callable[[str], T], *,
            secret: bool = False, shown: str | None = None,
            fallback: Callable[[Mapping[str, Any]], str | None] | None = None,
            unless: str | tuple[str, ...] | None = None) -> T:
    """A dataclass field read from the variable ``name`` (see :class:`Var`)."""
    var = Var(name, default, doc, parse, secret, shown, fallback, unless)

    def default_value() -> Any:
        return None if default is None else parse(default)

    field: T = dataclasses.field(default_factory=default_value, metadata={"var": var})
    return field


def variables(group: type[Any]) -> Iterator[tuple[str, Var]]:
    """The ``(field name, variable)`` pairs of a settings group, in declaration order."""
    for field in dataclasses.fields(group):
        if "var" in field.metadata:
            yield field.name, field.metadata["var"]


class Environment:
    """Reads variables as text, secrets from files too.

    Parameters:
      environ: the variables (``os.environ`` in a process).
    """

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ
        #: Where ``/run/secrets/<name>`` files are looked for (tests point it elsewhere).
        self._secrets_dir = Path(environ.get("SECRETS_DIR", "/run/secrets"))
        #: Parsed values so far, by variable name, for fallbacks.
        self.seen: dict[str, Any] = {}

    def text(self, name: str) -> str | None:
        """The variable stripped, or ``None`` when it is unset or blank."""
        value = self._environ.get(name)
        if value is None or value.strip() == "":
            return None
        return value.strip()

    def secret(self, name: str) -> str | None:
        """``NAME``, else the file named by ``NAME_FILE``, else ``<SECRETS_DIR>/<name>``."""
        direct = self.text(name)
        file_name = self.text(f"{name}_FILE")
        if direct is not None and file_name is not None:
            raise ConfigError(f"{name}: set either {name} or {name}_FILE, not both")
        if direct is not None:
            return direct
        if file_name is not None:
            return _read_secret(f"{name}_FILE", Path(file_name))
        default_file = self._secrets_dir / name.lower()
        if default_file.is_file():
            return _read_secret(name, default_file)
        return None

    def value(self, var: Var) -> Any:
        unless = (var.unless,) if isinstance(var.unless, str) else var.unless or ()
        if any(self.seen.get(name) is not None for name in unless):
            raw = None
        else:
            raw = self.secret(var.name) if var.secret else self.text(var.name)
        if raw is None and var.fallback is not None:
            raw = var.fallback(self.seen)
        if raw is None:
            raw = var.default
        try:
            value = None if raw is None else var.parse(raw)
        except ValueError as exc:
            raise ConfigError(f"{var.name}: {exc}") from None
        self.seen[var.name] = value
        return value


def read_group(group: type[T], env: Environment) -> T:
    """An instance of the settings group ``group`` with every field read from ``env``."""
    return group(**{field: env.value(var) for field, var in variables(group)})


def _read_secret(name: str, path: Path) -> str | None:
    try:
        value = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"{name}: cannot read {str(path)!r} ({exc.strerror})") from None
    return value or None


# --- parsers: text -> value, ValueError without the variable's name ----------------------------

def text(raw: str) -> str:
    return raw


def integer(low: int | None = None, high: int | None = None) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise ValueError(f"must be an integer, got {raw!r}") from None
        _check_range(value, low, high)
        return value
    return parse


def number(low: float | None = None) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"must be a number, got {raw!r}") from None
        _check_range(value, low, None)
        return value
    return parse


def flag(raw: str) -> bool:
    if raw.lower() in _TRUE:
        return True
    if raw.lower() in _FALSE:
        return False
    raise ValueError(f"must be true or false, got {raw!r}")


def choice(*allowed: str, upper: bool = False) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.upper() if upper else raw.lower()
        if value not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}, got {raw!r}")
        return value
    return parse


def path(raw: str) -> Path:
    return Path(raw)


def directory(raw: str) -> Path:
    """An existing directory."""
    if not Path(raw).is_dir():
        raise ValueError(f"{raw!r} is not a directory")
    return Path(raw)


def file(raw: str) -> Path:
    """An existing, readable file."""
    if not Path(raw).is_file():
        raise ValueError(f"{raw!r} is not a readable file")
    return Path(raw)


def header_text(raw: str) -> str:
    """Text that goes into a mail header as it stands."""
    if "\r" in raw or "\n" in raw:
        raise ValueError("must not contain line breaks")
    if any((ord(char) < 0x20 and char != "\t") or ord(char) == 0x7f for char in raw):
        # Refused here, not when the worker builds its first message.
        raise ValueError("must not contain control characters")
    return raw


def names(raw: str) -> tuple[str, ...]:
    """Comma-separated names, in order, without repeats."""
    return tuple(dict.fromkeys(part.strip() for part in raw.split(",") if part.strip()))


def _check_range(value: float, low: float | None, high: float | None) -> None:
    if low is not None and value < low:
        raise ValueError(f"must be at least {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"must be at most {high}, got {value}")
