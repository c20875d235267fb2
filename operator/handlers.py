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
from typing import Any

import kopf
import redis
from prometheus_client import Counter, Gauge, start_http_server

from mailcore.config import Settings
from mailcore.logs import configure_logging
from mailcore.rendering import TemplateError, TemplateSource
from mailcore.sandbox_process import ProcessLimits, TemplateSandbox
from mailcore.store import TemplateStoreWriter
from mailcore.template_resources import (
    COMPILED,
    FINALIZER,
    GROUP,
    PLURAL,
    STORE_UNAVAILABLE,
    VERSION,
    check_mailboxes,
    describe_error,
    qualified_name,
    ready_status,
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
#: Read once at import: kopf's decorators need the interval now.
RESYNC_SECONDS = Settings.from_env().operator.resync_seconds


def _compile(key: str, spec: kopf.Spec, memo: Any) -> TemplateSource:
    """Check, compile and test-render a spec in the sandbox process (raises TemplateError).

    A template is untrusted code: the compiler (native) may crash and a render may run away, so
    both happen in a child process with memory, CPU and wall-clock limits, never in this one.
    """
    config: Settings = memo.config
    check_mailboxes(spec, config.sender.domain_allowed)
    source = source_from_spec(key, spec)
    sandbox: TemplateSandbox = memo.sandbox
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
    # Network hiccups to the API server: reconnect watches promptly.
    settings.watching.reconnect_backoff = 1.0


@kopf.on.cleanup()
def close(memo: kopf.Memo, **_: Any) -> None:
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
    namespace = namespace or "default"  # EmailTemplates are namespaced; for type checkers
    key = qualified_name(namespace, name)
    generation = meta.get("generation")
    try:
        source = _compile(key, spec, memo)
    except TemplateError as exc:
        message = describe_error(exc)
        patch.status.update(ready_status(status, ready=False, reason=exc.reason, message=message,
                                         generation=generation, key=key))
        kopf.warn(body, reason=exc.reason, message=message)
        _observe(key, exc.reason, ready=False)
        # Permanent: not retried until the spec changes; the stored version keeps serving.
        raise kopf.PermanentError(f"{exc.reason}: {message}") from None

    version = source.version
    store: TemplateStoreWriter = memo.store
    origin = {"kind": "EmailTemplate", "namespace": namespace, "name": name,
              "uid": meta.get("uid"), "generation": generation}
    try:
        changed = store.put(key, source, origin)
    except (redis.RedisError, OSError) as exc:
        delay = _retry_delay(retry, memo.config)
        message = f"the template store is unreachable ({exc}); retrying in {delay:g}s"
        patch.status.update(ready_status(status, ready=False, reason=STORE_UNAVAILABLE,
                                         message=message, generation=generation, key=key))
        kopf.warn(body, reason=STORE_UNAVAILABLE, message=message)
        _observe(key, STORE_UNAVAILABLE, ready=False)
        raise kopf.TemporaryError(message, delay=delay) from None

    _observe(key, COMPILED, ready=True)
    message = f"version {version} compiled and serving as {key}"
    patch.status.update(ready_status(status, ready=True, reason=COMPILED, message=message,
                                     generation=generation, key=key, version=version))
    if changed:
        kopf.info(body, reason=COMPILED, message=message)
    log.info("%s: %s (%s)", key, message, "stored" if changed else "already stored")


@kopf.timer(GROUP, VERSION, PLURAL, interval=RESYNC_SECONDS, initial_delay=RESYNC_SECONDS)
def resync(spec: kopf.Spec, name: str, namespace: str | None, meta: kopf.Meta,
           status: kopf.Status, memo: Any, **_: Any) -> None:
    """Put a Ready template back when the store lost it (e.g. a Redis without persistence)."""
    key = qualified_name(namespace or "default", name)
    store: TemplateStoreWriter = memo.store
    try:
        if store.get(key) is not None or not status.get("version"):
            return
        source = _compile(key, spec, memo)
    except (redis.RedisError, OSError, TemplateError):
        return  # the store is down (retried next time) or the spec is refused (reconcile says)
    if source.version != status.get("version"):
        return  # a newer spec is being handled by reconcile
    origin = {"kind": "EmailTemplate", "namespace": namespace, "name": name,
              "uid": meta.get("uid"), "generation": meta.get("generation")}
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
        removed = store.delete(key)
    except (redis.RedisError, OSError) as exc:
        delay = _retry_delay(retry, memo.config)
        message = f"the template store is unreachable ({exc}); retrying in {delay:g}s"
        kopf.warn(body, reason=STORE_UNAVAILABLE, message=message)
        raise kopf.TemporaryError(message, delay=delay) from None
    _observe(key, "", ready=None)
    if removed:
        kopf.info(body, reason="Removed", message=f"{key} removed from the template store")
    log.info("%s: %s", key, "removed from the store" if removed else "was not stored")
