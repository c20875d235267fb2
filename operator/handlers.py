"""kopf handlers for EmailTemplate resources: compile, test-render, store, report.

Run with ``email-service operator`` (which runs ``kopf run <this file> --standalone``). This
folder is deliberately not a package: ``operator`` would shadow the standard library module.

What is written comes from pure functions in :mod:`mailcore.template_resources`; the handlers
only apply it. Handlers are plain functions, so kopf runs them in its thread pool and the
synchronous Redis calls never block the event loop.

Deployment: ONE replica, Recreate strategy, ``--standalone`` (no peering). Everything a handler
does is idempotent (the content hash is the version, an unchanged version is not rewritten), so
an operator restart simply re-applies every template through the resume handler.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Any, NoReturn

import kopf
import redis
from prometheus_client import Counter, Gauge, start_http_server

from mailcore.config import Settings
from mailcore.logs import configure_logging
from mailcore.rendering import TemplateError, TemplateSource
from mailcore.sandbox_process import ProcessLimits, TemplateSandbox
from mailcore.store import TemplateStoreWriter
from mailcore.template_history import collect_garbage
from mailcore.template_parts import (
    LAYOUT,
    TEMPLATE,
    Composer,
    Part,
    compose,
    layout_test_source,
    part_from_spec,
    spec_kind,
)
from mailcore.template_resources import (
    COMPILED,
    FINALIZER,
    GROUP,
    PINNED,
    PLURAL,
    STORE_UNAVAILABLE,
    UNKNOWN_VERSION,
    VERSION,
    check_mailboxes,
    describe_error,
    pinned_version,
    qualified_name,
    ready_status,
    resource_origin,
    source_from_spec,
)

log = logging.getLogger("email_service.operator")

#: Reconciles by outcome: the Ready condition's reason (Compiled, InvalidMJML, StoreUnavailable…).
RECONCILES = Counter("email_operator_reconciles", "EmailTemplate reconciles by outcome",
                     ["outcome"])
TEMPLATES = Gauge("email_operator_templates", "EmailTemplates by readiness", ["ready"])
_readiness: dict[str, bool] = {}


def _observe(key: str, outcome: str, ready: bool | None) -> None:
    """Count a reconcile and keep the Ready/not-Ready gauge (``ready=None``: deleted)."""
    if outcome:
        RECONCILES.labels(outcome).inc()
    if ready is None:
        _readiness.pop(key, None)
    else:
        _readiness[key] = ready
    ready_count = sum(_readiness.values())
    TEMPLATES.labels("true").set(ready_count)
    TEMPLATES.labels("false").set(len(_readiness) - ready_count)
#: Read once at import: kopf's decorators need the intervals now.
RESYNC_SECONDS = Settings.from_env().operator.resync_seconds
PARTS_SECONDS = Settings.from_env().operator.parts_seconds


def _compile(key: str, namespace: str, spec: kopf.Spec, memo: Any,
             used: dict[str, str | None]) -> TemplateSource | Part:
    """Check, compose, compile and test-render a spec in the sandbox process (raises
    TemplateError, or ``redis.RedisError`` when layouts and partials cannot be read).

    A template is untrusted code: the compiler (native) may crash and a render may run away, so
    both happen in a child process with memory, CPU and wall-clock limits, never in this one.
    ``used`` receives the layouts and partials looked up (also when refused).
    """
    config: Settings = memo.config
    sandbox: TemplateSandbox = memo.sandbox
    store: TemplateStoreWriter = memo.store
    composer = Composer(namespace, store.get_part, own=key, used=used)
    if spec_kind(spec) != TEMPLATE:
        part = part_from_spec(spec)
        composer.expand(part.body, f"spec.{part.markup}")  # references exist, no cycles
        if part.kind == LAYOUT:
            sample = spec.get("sampleData")
            sandbox.compile(layout_test_source(
                key, part, composer, sample if isinstance(sample, dict) else None))
        return part
    check_mailboxes(spec, config.sender.domain_allowed)
    pinned_version(spec)
    source = compose(source_from_spec(key, spec), spec, composer)
    sandbox.compile(source)
    return source


def _retry_delay(retry: int, settings: Settings) -> float:
    """Exponential backoff for store outages: 1, 2, 4 … seconds, capped by configuration."""
    return float(min(settings.operator.retry_max_seconds, 2 ** min(retry, 10)))


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    config = Settings.from_env()
    configure_logging(config.telemetry)  # the same JSON lines as the ingress and workers
    if config.operator.metrics_port:
        start_http_server(config.operator.metrics_port)
    memo.config = config
    memo.store = TemplateStoreWriter.from_settings(config)
    memo.sandbox = TemplateSandbox(ProcessLimits.from_settings(
        config, config.operator.render_timeout_seconds))
    settings.persistence.finalizer = FINALIZER
    # Keep kopf's bookkeeping in our own annotations; status holds only what users read.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration")
    settings.posting.reporting_component = "email-service-operator"
    memo.collector_stop = threading.Event()
    memo.collector = threading.Thread(
        target=_collect_versions, args=(memo.store, config, memo.collector_stop),
        name="version-collector", daemon=True)
    memo.collector.start()
    # Network hiccups to the API server: reconnect watches promptly.
    settings.watching.reconnect_backoff = 1.0


def _collect_versions(store: TemplateStoreWriter, config: Settings,
                      stop: threading.Event) -> None:
    """Every ``OPERATOR_RESYNC_SECONDS``: drop archived versions nothing needs (the retention
    rules are in :mod:`mailcore.template_history`). One operator replica runs it."""
    while not stop.wait(config.operator.resync_seconds):
        try:
            removed = collect_garbage(store.client, config.redis.key_prefix,
                                      keep=config.templates.history_versions)
        except (redis.RedisError, OSError) as exc:
            log.warning("version collection skipped, the store is unreachable: %s", exc)
            continue
        if removed:
            log.info("removed %d template versions nothing references: %s", len(removed),
                     ", ".join(removed[:20]))


@kopf.on.cleanup()
def close(memo: kopf.Memo, **_: Any) -> None:
    memo.collector_stop.set()
    store: TemplateStoreWriter = memo.store
    store.close()
    sandbox: TemplateSandbox = memo.sandbox
    sandbox.close()


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL)
def reconcile(
    spec: kopf.Spec, name: str, namespace: str | None, meta: kopf.Meta, status: kopf.Status,
    body: kopf.Body, patch: kopf.Patch, memo: Any, retry: int, **_: Any,
) -> None:
    """Compile and test-render the spec; store it when valid; say why not otherwise."""
    _apply(spec, name, namespace or "default", meta, status, body, patch, memo, retry,
           follow_up=False)


def _apply(
    spec: kopf.Spec, name: str, namespace: str, meta: kopf.Meta, status: kopf.Status,
    body: kopf.Body, patch: kopf.Patch, memo: Any, retry: int, *, follow_up: bool,
) -> None:
    """The reconcile; ``follow_up``: re-validating after a layout or partial changed (a timer:
    a refusal is reported, not raised)."""
    key = qualified_name(namespace, name)
    generation = meta.get("generation")
    store: TemplateStoreWriter = memo.store
    used: dict[str, str | None] = {}
    try:
        built = _compile(key, namespace, spec, memo, used)
    except TemplateError as exc:
        message = describe_error(exc)
        if used:
            message = f"{message} (with {_describe_parts(used)})"
        patch.status.update(ready_status(status, ready=False, reason=exc.reason, message=message,
                                         generation=generation, key=key, parts=used))
        kopf.warn(body, reason=exc.reason, message=message)
        _observe(key, exc.reason, ready=False)
        if follow_up:
            log.warning("%s: %s", key, message)
            return
        # Permanent: not retried until the spec changes; the stored version keeps serving.
        raise kopf.PermanentError(f"{exc.reason}: {message}") from None
    except (redis.RedisError, OSError) as exc:
        _store_unavailable(exc, status, body, patch, memo, retry, key, generation)

    origin = resource_origin(namespace, name, meta)
    if isinstance(built, Part):
        try:
            changed: bool | None = store.put_part(key, built, origin)
        except (redis.RedisError, OSError) as exc:
            _store_unavailable(exc, status, body, patch, memo, retry, key, generation)
        message = (f"{built.kind} version {built.version} stored as {key}; templates using it "
                   f"re-validate within {PARTS_SECONDS:g}s")
        _observe(key, COMPILED, ready=True)
        patch.status.update(ready_status(status, ready=True, reason=COMPILED, message=message,
                                         generation=generation, key=key, version=built.version,
                                         parts=used))
        if changed:
            kopf.info(body, reason=COMPILED, message=message)
        log.info("%s: %s", key, message)
        return

    source = built
    version = source.version
    pinned = pinned_version(spec)  # checked by _compile already
    try:
        if pinned is None:
            changed = store.put(key, source, origin)
        else:
            store.archive(key, source, origin)  # kept in the history, not serving
            changed = store.serve(key, pinned)
    except (redis.RedisError, OSError) as exc:
        _store_unavailable(exc, status, body, patch, memo, retry, key, generation)

    if pinned is not None and changed is None:
        message = (f"spec.pinnedVersion {pinned} is not a kept version of {key} (see GET "
                   f"/v1/templates/{key}/versions); version {status.get('version')} keeps serving")
        patch.status.update(ready_status(status, ready=False, reason=UNKNOWN_VERSION,
                                         message=message, generation=generation, key=key,
                                         parts=used))
        kopf.warn(body, reason=UNKNOWN_VERSION, message=message)
        _observe(key, UNKNOWN_VERSION, ready=False)
        if follow_up:
            return
        raise kopf.PermanentError(f"{UNKNOWN_VERSION}: {message}")
    if pinned is not None:
        reason = PINNED
        message = (f"version {pinned} serving as {key}, pinned by spec.pinnedVersion; the "
                   f"spec's version {version} compiled and is kept in the history")
    else:
        reason = COMPILED
        message = f"version {version} compiled and serving as {key}"
    if used:
        message = f"{message} (with {_describe_parts(used)})"
    _observe(key, reason, ready=True)
    patch.status.update(ready_status(status, ready=True, reason=reason, message=message,
                                     generation=generation, key=key, version=pinned or version,
                                     latest=version, pinned=pinned, parts=used))
    if changed:
        kopf.info(body, reason=reason, message=message)
    log.info("%s: %s (%s)", key, message, "stored" if changed else "already stored")


def _describe_parts(used: dict[str, str | None]) -> str:
    return ", ".join(f"{key}@{version}" if version else f"{key} (missing)"
                     for key, version in sorted(used.items()))


def _store_unavailable(exc: Exception, status: kopf.Status, body: kopf.Body, patch: kopf.Patch,
                       memo: Any, retry: int, key: str, generation: int | None) -> NoReturn:
    delay = _retry_delay(retry, memo.config)
    message = f"the template store is unreachable ({exc}); retrying in {delay:g}s"
    patch.status.update(ready_status(status, ready=False, reason=STORE_UNAVAILABLE,
                                     message=message, generation=generation, key=key))
    kopf.warn(body, reason=STORE_UNAVAILABLE, message=message)
    _observe(key, STORE_UNAVAILABLE, ready=False)
    raise kopf.TemporaryError(message, delay=delay) from None


@kopf.timer(GROUP, VERSION, PLURAL, interval=PARTS_SECONDS, initial_delay=PARTS_SECONDS,
            when=lambda status, **_: bool(status.get("parts")))
def follow_parts(
    spec: kopf.Spec, name: str, namespace: str | None, meta: kopf.Meta, status: kopf.Status,
    body: kopf.Body, patch: kopf.Patch, memo: Any, **_: Any,
) -> None:
    """A layout or partial this template uses changed (or a missing one appeared): compose,
    compile and test-render again before the new version serves; a refusal goes to the
    condition and the version serving stays."""
    recorded: dict[str, str] = {k: str(v or "") for k, v in (status.get("parts") or {}).items()}
    store: TemplateStoreWriter = memo.store
    try:
        current = {key: (part.version if (part := store.get_part(key)) else "")
                   for key in recorded}
    except (redis.RedisError, OSError):
        return  # checked again next time
    if current == recorded:
        return
    log.info("%s/%s: layouts or partials changed (%s); re-validating", namespace, name,
             ", ".join(k for k in sorted(current) if current[k] != recorded[k]))
    _apply(spec, name, namespace or "default", meta, status, body, patch, memo, 0,
           follow_up=True)


@kopf.timer(GROUP, VERSION, PLURAL, interval=RESYNC_SECONDS, initial_delay=RESYNC_SECONDS)
def resync(spec: kopf.Spec, name: str, namespace: str | None, meta: kopf.Meta,
           status: kopf.Status, memo: Any, **_: Any) -> None:
    """Put a Ready template back when the store lost it (e.g. a Redis without persistence)."""
    key = qualified_name(namespace or "default", name)
    store: TemplateStoreWriter = memo.store
    try:
        if store.get(key) is not None or not status.get("version"):
            return
        source = _compile(key, namespace or "default", spec, memo, {})
    except (redis.RedisError, OSError, TemplateError):
        return  # the store is down (retried next time) or the spec is refused (reconcile says)
    if isinstance(source, Part) or source.version != status.get("version"):
        return  # a newer spec is being handled by reconcile (or a pinned version serves)
    origin = resource_origin(namespace or "default", name, meta)
    with contextlib.suppress(redis.RedisError, OSError):
        if store.put(key, source, origin, only_if_absent=True):
            log.warning("%s: was missing from the store; restored version %s", key,
                        source.version)


@kopf.on.delete(GROUP, VERSION, PLURAL)
def remove(name: str, namespace: str | None, body: kopf.Body, memo: Any, retry: int,
           **_: Any) -> None:
    """Take the template out of the store before the resource goes (the finalizer waits)."""
    key = qualified_name(namespace or "default", name)
    store: TemplateStoreWriter = memo.store
    try:
        removed = store.delete(key) or store.delete_part(key)
    except (redis.RedisError, OSError) as exc:
        delay = _retry_delay(retry, memo.config)
        message = f"the template store is unreachable ({exc}); retrying in {delay:g}s"
        kopf.warn(body, reason=STORE_UNAVAILABLE, message=message)
        raise kopf.TemporaryError(message, delay=delay) from None
    _observe(key, "", ready=None)
    if removed:
        kopf.info(body, reason="Removed", message=f"{key} removed from the template store")
    log.info("%s: %s", key, "removed from the store" if removed else "was not stored")
