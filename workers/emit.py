"""Broker signals sent only to the middleware that handle them.

Dramatiq's ``Broker.emit_before`` / ``emit_after`` call the hook of every middleware for every
signal, and most of those calls are :class:`~dramatiq.middleware.Middleware`'s own no-ops: with
the workers' eleven middleware a delivered message costs about sixty calls, ~7 % of a worker's
samples (bench/README.md, "Smaller cuts"). :class:`EmitsToHandlers` finds, once per signal, the
middleware whose class (or instance) overrides that hook and calls only those, in Dramatiq's
order (``before_*`` in list order, ``after_*`` reversed) and with its error handling: a
``MiddlewareError`` from a ``before_*`` hook propagates, any other exception is logged and the
next hook still runs. Adding middleware forgets what was found.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from dramatiq.middleware import Middleware, MiddlewareError

Hook = Callable[..., Any]


def handlers(middleware: list[Middleware], name: str) -> tuple[Hook, ...]:
    """The hooks called ``name`` of ``middleware`` that do something (in list order): every one
    but :class:`Middleware`'s own no-op. A middleware without the hook at all is kept, so that
    calling it fails (and is logged) as it would in Dramatiq."""
    default = getattr(Middleware, name, None)
    found = []
    for item in middleware:
        if name in vars(item) or default is None or getattr(type(item), name, None) is not default:
            found.append(getattr(item, name, _missing(item, name)))
    return tuple(found)


def _missing(item: Middleware, name: str) -> Hook:
    def fail(*_: Any, **__: Any) -> None:
        raise AttributeError(f"{type(item).__name__!r} object has no attribute {name!r}")

    return fail


class EmitsToHandlers:
    """A mixin for a Dramatiq broker (listed before it) that emits signals to handlers only."""

    middleware: list[Middleware]
    logger: logging.Logger
    _handlers: dict[str, tuple[Hook, ...]]

    def add_middleware(self, middleware: Middleware, *, before: type[Middleware] | None = None,
                       after: type[Middleware] | None = None) -> None:
        super().add_middleware(middleware, before=before, after=after)  # type: ignore[misc]
        self._handlers = {}

    def _hooks(self, name: str) -> tuple[Hook, ...]:
        cache: dict[str, tuple[Hook, ...]] = self.__dict__.setdefault("_handlers", {})
        hooks = cache.get(name)
        if hooks is None:
            hooks = cache[name] = handlers(self.middleware, name)
        return hooks

    def emit_before(self, signal: str, *args: Any, **kwargs: Any) -> None:
        name = "before_" + signal
        for hook in self._hooks(name):
            try:
                hook(self, *args, **kwargs)
            except MiddlewareError:
                raise
            except Exception:
                self.logger.critical("Unexpected failure in %s of %r.", name,
                                     getattr(hook, "__self__", hook), exc_info=True)

    def emit_after(self, signal: str, *args: Any, **kwargs: Any) -> None:
        name = "after_" + signal
        for hook in reversed(self._hooks(name)):
            try:
                hook(self, *args, **kwargs)
            except Exception:
                self.logger.critical("Unexpected failure in %s of %r.", name,
                                     getattr(hook, "__self__", hook), exc_info=True)
