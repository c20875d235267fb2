"""EmailTemplate resources: from a resource's spec to a :class:`TemplateSource`, and back to status.

Pure functions only: the kopf handlers (``operator/handlers.py``) and the dev sync
(``email-service sync``) call these and apply what they return; nothing here talks to Kubernetes
or Redis.

Names: an EmailTemplate ``welcome`` in namespace ``team-a`` is stored as ``team-a/welcome``.
Callers may use that qualified name, or the bare ``welcome`` when ``team-a`` is one of the
configured ``TEMPLATE_NAMESPACES`` (searched in the configured order; see :mod:`mailcore.store`).
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

from .locales import check_locale
from .rendering import (
    CompiledTemplate,
    LocaleOverride,
    TemplateError,
    TemplateSource,
    compile_template,
)
from .streams import STREAM_NAMES
from .template_parts import TEMPLATE as TEMPLATE_KIND
from .template_parts import Composer, Part, PartLookup, compose, part_from_spec, spec_kind

GROUP = "email.platform.example.com"
VERSION = "v1"
PLURAL = "emailtemplates"
KIND = "EmailTemplate"
API_VERSION = f"{GROUP}/{VERSION}"
#: Blocks deletion until the template is removed from the store.
FINALIZER = f"{GROUP}/store-cleanup"
READY = "Ready"
#: Reason of the Ready condition when the template compiled and is in the store.
COMPILED = "Compiled"
#: Reason when the store could not be written (retried with backoff).
STORE_UNAVAILABLE = "StoreUnavailable"
#: Reason of the Ready condition while ``spec.pinnedVersion`` holds an older version serving.
PINNED = "Pinned"
#: Reason when ``spec.pinnedVersion`` names a version the store does not keep.
UNKNOWN_VERSION = "UnknownVersion"
#: Annotation ``kubectl`` sets (``--record``, or by hand) to say why a resource changed.
CHANGE_CAUSE = "kubernetes.io/change-cause"
#: Locale entries one template may have (the CRD's maxItems).
MAX_LOCALES = 64
#: Longest condition message kept (the API server allows 32768).
MAX_MESSAGE = 4096


def qualified_name(namespace: str, name: str) -> str:
    """The store key and the name callers use: ``namespace/name``."""
    return f"{namespace}/{name}"


def source_from_spec(key: str, spec: Mapping[str, Any]) -> TemplateSource:
    """Translate an EmailTemplate spec into a :class:`TemplateSource` (no compiling yet)."""
    locales: dict[str, LocaleOverride] = {}
    entries = spec.get("locales") or []
    if not isinstance(entries, list) or len(entries) > MAX_LOCALES:
        raise TemplateError("InvalidTemplate",
                            f"spec.locales: a list of at most {MAX_LOCALES} entries")
    for entry in entries:
        if not isinstance(entry, Mapping) or not entry.get("locale"):
            raise TemplateError("InvalidTemplate", "spec.locales: every entry needs a locale")
        locale = _locale(entry.get("locale"), "spec.locales")
        if locale in locales:
            raise TemplateError("InvalidTemplate", f"spec.locales: {locale!r} appears twice")
        sample = entry.get("sampleData")
        if sample is not None and not isinstance(sample, Mapping):
            raise TemplateError("InvalidTemplate",
                                f"spec.locales[{locale}].sampleData must be an object")
        locales[locale] = LocaleOverride(
            subject=entry.get("subject"), mjml=entry.get("mjml"), html=entry.get("html"),
            text=entry.get("text"), sample_data=dict(sample) if sample is not None else None,
        )
    subject = spec.get("subject")
    if not isinstance(subject, str) or not subject.strip():
        raise TemplateError("InvalidTemplate", "spec.subject is required")
    variables = spec.get("variables")
    sample = spec.get("sampleData")
    fallback = spec.get("fallbackLocale")
    if fallback is not None:
        fallback = _locale(fallback, "spec.fallbackLocale")
        if fallback not in locales:
            raise TemplateError("InvalidTemplate",
                                f"spec.fallbackLocale: {fallback!r} is not one of spec.locales")
    unsubscribe = spec.get("unsubscribe", False)
    if not isinstance(unsubscribe, bool):
        raise TemplateError("InvalidTemplate", "spec.unsubscribe must be true or false")
    return TemplateSource(
        name=key,
        subject=subject.strip(),
        mjml=spec.get("mjml"),
        html=spec.get("html"),
        text=spec.get("text"),
        sender=spec.get("from"),
        reply_to=spec.get("replyTo"),
        variables=dict(variables) if isinstance(variables, Mapping) else None,
        sample_data=dict(sample) if isinstance(sample, Mapping) else {},
        locales=locales,
        fallback_locale=fallback,
        stream=_stream(spec.get("stream")),
        unsubscribe=unsubscribe,
    )


def _stream(value: Any) -> str | None:
    """``spec.stream``: the template's default stream (README: Streams)."""
    if value is None or value in STREAM_NAMES:
        return cast("str | None", value)
    raise TemplateError("InvalidTemplate", f"spec.stream must be one of "
                        f"{', '.join(STREAM_NAMES)}, got {repr(value)[:40]}")


def _locale(value: Any, field: str) -> str:
    try:
        return check_locale(value)
    except ValueError as exc:
        raise TemplateError("InvalidTemplate", f"{field}: {exc}") from None


def pinned_version(spec: Mapping[str, Any]) -> str | None:
    """``spec.pinnedVersion`` when set: a 16-hex-digit content hash, else TemplateError."""
    value = spec.get("pinnedVersion")
    if value is None:
        return None
    if (not isinstance(value, str) or len(value) != 16
            or any(c not in "0123456789abcdef" for c in value)):
        shown = repr(value)[:40]
        raise TemplateError("InvalidTemplate",
                            f"spec.pinnedVersion must be a 16-hex-digit version, got {shown}")
    return value


def resource_origin(namespace: str, name: str, meta: Mapping[str, Any]) -> dict[str, Any]:
    """Who/what stored a version: the resource, its generation and uid, and the
    ``kubernetes.io/change-cause`` annotation when present (bounded)."""
    origin: dict[str, Any] = {"kind": KIND, "namespace": namespace, "name": name,
                              "uid": meta.get("uid"), "generation": meta.get("generation")}
    cause = (meta.get("annotations") or {}).get(CHANGE_CAUSE)
    if isinstance(cause, str) and cause:
        origin["changeCause"] = cause[:1024]
    return origin


def compile_resource(
    key: str, spec: Mapping[str, Any], *, sender_allowed: Callable[[str], bool] | None = None,
) -> CompiledTemplate:
    """Build, compile and test-render a spec; raises :class:`TemplateError` saying why not.

    ``sender_allowed`` (e.g. ``SenderSettings.domain_allowed``) checks ``spec.from``'s address.
    """
    check_mailboxes(spec, sender_allowed)
    return compile_template(source_from_spec(key, spec))


def check_mailboxes(
    spec: Mapping[str, Any], sender_allowed: Callable[[str], bool] | None = None,
) -> None:
    """``from``/``replyTo`` must be ``addr`` or ``Name <addr>`` that a message could carry."""
    from .message import recipient_from_text

    for field in ("from", "replyTo"):
        value = spec.get(field)
        if value is None:
            continue
        try:
            if not isinstance(value, str):
                raise ValueError("expected addr@example.com or Name <addr@example.com>")
            address = recipient_from_text(value).email
        except ValueError as exc:
            raise TemplateError("InvalidTemplate", f"spec.{field}: {exc}") from None
        if field == "from" and sender_allowed is not None and not sender_allowed(address):
            raise TemplateError(
                "SenderNotAllowed",
                f"spec.from: {address.rpartition('@')[2]} is not a domain this service may send "
                "from (SENDER_EMAIL's domain or ALLOWED_SENDER_DOMAINS)")


def describe_error(error: TemplateError) -> str:
    """The condition message for a refused template: the error, with its line where known."""
    text = f"{error.message} (line {error.line})" if error.line else error.message
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat().replace(
        "+00:00", "Z"
    )


def set_condition(
    conditions: Sequence[Mapping[str, Any]] | None,
    *,
    type: str,  # the Kubernetes field name
    status: bool,
    reason: str,
    message: str,
    generation: int | None,
    now: str | None = None,
) -> list[dict[str, Any]]:
    """Conditions with ``type`` set; ``lastTransitionTime`` moves only when the status changes."""
    value = "True" if status else "False"
    result: list[dict[str, Any]] = []
    previous: Mapping[str, Any] | None = None
    for condition in conditions or []:
        if condition.get("type") == type:
            previous = condition
        else:
            result.append(dict(condition))
    transition = (
        previous["lastTransitionTime"]
        if previous is not None and previous.get("status") == value
        and previous.get("lastTransitionTime")
        else (now or now_rfc3339())
    )
    new: dict[str, Any] = {
        "type": type, "status": value, "reason": reason, "message": message,
        "lastTransitionTime": transition,
    }
    if generation is not None:
        new["observedGeneration"] = generation
    result.append(new)
    return result


def ready_status(
    status: Mapping[str, Any] | None,
    *,
    ready: bool,
    reason: str,
    message: str,
    generation: int | None,
    key: str,
    version: str | None = None,
    latest: str | None = None,
    pinned: str | None = None,
    parts: Mapping[str, str | None] | None = None,
) -> dict[str, Any]:
    """The whole ``status`` to merge-patch: conditions (replaced whole), generation, version.

    ``version`` is given only when a new version was stored; otherwise the last good one stays.
    """
    current = status or {}
    patch: dict[str, Any] = {
        "conditions": set_condition(
            current.get("conditions"), type=READY, status=ready, reason=reason, message=message,
            generation=generation,
        ),
        "template": key,
    }
    if generation is not None:
        patch["observedGeneration"] = generation
    if parts is not None and (parts or current.get("parts")):
        # The layouts and partials last composed in (None: missing); a merge patch replaces
        # the map's keys, so keys no longer used are set to null (removed).
        previous = current.get("parts") or {}
        patch["parts"] = {**{key: None for key in previous if key not in parts},
                          **{key: value or "" for key, value in parts.items()}}
    if version is not None:
        patch["version"] = version
        patch["latestVersion"] = latest or version
        patch["pinnedVersion"] = pinned  # None removes it (merge patch)
    return patch


def iter_resource_documents(path: Path) -> Iterator[dict[str, Any]]:
    """The EmailTemplate documents in one YAML file (other kinds are skipped)."""
    import yaml

    try:
        documents = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
    except yaml.YAMLError as exc:
        raise TemplateError("InvalidTemplate", f"{path.name}: not valid YAML: {exc}") from None
    for document in documents:
        if isinstance(document, dict) and document.get("kind") == KIND:
            yield document


def resource_key(document: Mapping[str, Any], default_namespace: str) -> str:
    metadata = document.get("metadata") or {}
    name = metadata.get("name")
    if not isinstance(name, str) or not name:
        raise TemplateError("InvalidTemplate", "metadata.name is required")
    return qualified_name(str(metadata.get("namespace") or default_namespace), name)


@dataclasses.dataclass(frozen=True)
class Refusal:
    """A template :func:`collect_templates` could not accept, and why."""

    #: Where it came from (a store key, or a file and document name).
    where: str
    #: Its store key when known: the stored version of that key must stay, not be removed.
    key: str | None
    error: TemplateError


def _yaml_files(paths: Sequence[Path]) -> Iterator[Path]:
    for path in paths:
        if path.is_file() and path.suffix in {".yaml", ".yml"}:
            yield path
        elif path.is_dir() and not (path / "subject.txt").is_file():
            yield from (child for child in sorted(path.iterdir())
                        if child.is_file() and child.suffix in {".yaml", ".yml"})


def collect_parts(
    paths: Sequence[Path], default_namespace: str,
) -> tuple[dict[str, tuple[Part, dict[str, Any]]], list[Refusal]]:
    """The layouts and partials (``spec.kind``) among EmailTemplate YAML files, each checked
    (slot, references among themselves, cycles)."""
    found: dict[str, tuple[Part, dict[str, Any]]] = {}
    refused: list[Refusal] = []
    for path in _yaml_files(paths):
        try:
            documents = list(iter_resource_documents(path))
        except TemplateError:
            continue  # collect_templates reports it
        for document in documents:
            spec = document.get("spec") or {}
            key = None
            try:
                if spec_kind(spec) == TEMPLATE_KIND:
                    continue
                key = resource_key(document, default_namespace)
                found[key] = (part_from_spec(spec), {"kind": KIND, "path": str(path)})
            except TemplateError as exc:
                where = f"{path}: {(document.get('metadata') or {}).get('name')}"
                refused.append(Refusal(where, key, exc))
    for key, (part, _) in list(found.items()):
        namespace = key.partition("/")[0]
        try:
            Composer(namespace, lambda k: found[k][0] if k in found else None, own=key
                     ).expand(part.body, f"spec.{part.markup}")
        except TemplateError as exc:
            refused.append(Refusal(f"{found[key][1]['path']}: {key}", key, exc))
            del found[key]
    return found, refused


def collect_templates(
    paths: Sequence[Path], default_namespace: str, *,
    sender_allowed: Callable[[str], bool] | None = None,
    compiler: Callable[[TemplateSource], object] = compile_template,
    parts: PartLookup | None = None,
) -> tuple[dict[str, tuple[TemplateSource, dict[str, Any]]], list[Refusal]]:
    """Read template folders (as in ``templates/``) and EmailTemplate YAML files, and compile them.

    Returns the valid templates by store key (with an origin record) and the refused ones. A path
    may be a folder of template folders, a folder of YAML files, one template folder, or one YAML
    file. ``compiler`` compiles and test-renders one source, raising :class:`TemplateError` (e.g.
    :meth:`mailcore.sandbox_process.TemplateSandbox.compile`, which risks a child process only).
    Layouts and partials (see :func:`collect_parts`) are skipped; ``parts`` looks them up for
    the templates that use them.
    """
    from .templates import load_template_dir

    valid: dict[str, tuple[TemplateSource, dict[str, Any]]] = {}
    refused: list[Refusal] = []

    def add_folder(folder: Path) -> None:
        key = qualified_name(default_namespace, folder.name)
        try:
            loaded = load_template_dir(folder)
            source = dataclasses.replace(loaded, name=key)
            compiler(source)
        except TemplateError as exc:
            refused.append(Refusal(key, key, exc))
            return
        valid[key] = (source, {"kind": "TemplateFolder", "path": str(folder)})

    def add_yaml(path: Path) -> None:
        try:
            documents = list(iter_resource_documents(path))
        except TemplateError as exc:
            refused.append(Refusal(str(path), None, exc))
            return
        for document in documents:
            key = None
            try:
                spec = document.get("spec") or {}
                if spec_kind(spec) != TEMPLATE_KIND:
                    continue
                key = resource_key(document, default_namespace)
                check_mailboxes(spec, sender_allowed)
                composer = Composer(key.partition("/")[0], parts or (lambda _: None), own=key)
                source = compose(source_from_spec(key, spec), spec, composer)
                compiler(source)
            except TemplateError as exc:
                where = f"{path}: {(document.get('metadata') or {}).get('name')}"
                refused.append(Refusal(where, key, exc))
                continue
            valid[key] = (source, {"kind": KIND, "path": str(path)})

    def add(path: Path) -> None:
        if path.is_file() and path.suffix in {".yaml", ".yml"}:
            add_yaml(path)
        elif path.is_dir() and (path / "subject.txt").is_file():
            add_folder(path)
        elif path.is_dir():
            for child in sorted(path.iterdir()):
                if child.is_dir() and (child / "subject.txt").is_file():
                    add_folder(child)
                elif child.is_file() and child.suffix in {".yaml", ".yml"}:
                    add_yaml(child)

    for path in paths:
        add(path)
    return valid, refused
