"""Compile and test-render untrusted templates in a child process that may die.

The sandbox (:mod:`mailcore.sandbox`) bounds what a template can do in Jinja, but the MJML
compiler is native code (a stack overflow is a SIGSEGV) and a bound could have a hole. So the
operator, ``email-service sync`` and the preview endpoint never compile or test-render in their
own process: a warm child (``python -m mailcore.sandbox_process``) does it, speaking one JSON
line per request on stdin/stdout, under an address-space limit (``RLIMIT_AS``), a CPU limit per
request (``RLIMIT_CPU``) and a wall-clock deadline after which the parent kills it. A child that
died or was killed is replaced on the next request; the caller gets a :class:`TemplateError`
(``CompilerCrashed``, ``RenderBudgetExceeded``) and carries on.

The worker's per-message render stays in-process (microseconds), bounded by the sandbox alone.
"""

from __future__ import annotations

import json
import math
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import rendering
from .config import Settings
from .render_budget import RenderLimits
from .rendering import (
    CompiledTemplate,
    LocaleOverride,
    RenderedEmail,
    TemplateError,
    TemplateSource,
    compile_template,
)

#: Seconds a child may take to start (imports) before it counts as crashed.
START_TIMEOUT = 30.0
_ROOT = str(Path(__file__).resolve().parent.parent)


@dataclass(frozen=True)
class ProcessLimits:
    """Limits of the child process.

    Parameters:
      memory_mb: its address space (``RLIMIT_AS``); the child itself takes ~50 MiB.
      timeout: wall-clock seconds per request, after which it is killed.
      render: the sandbox's limits for the renders it runs.
      mjml_max_depth: the deepest MJML nesting it compiles.
    """

    memory_mb: int = 256
    timeout: float = 10.0
    render: RenderLimits = field(default_factory=RenderLimits)
    mjml_max_depth: int = rendering.MAX_MJML_DEPTH

    @classmethod
    def from_settings(cls, settings: Settings, timeout: float) -> ProcessLimits:
        templates = settings.templates
        return cls(memory_mb=templates.compile_memory_limit_mb, timeout=timeout,
                   render=templates.render_limits, mjml_max_depth=templates.mjml_max_depth)


def source_to_dict(source: TemplateSource) -> dict[str, Any]:
    return {
        "name": source.name, "subject": source.subject, "mjml": source.mjml,
        "html": source.html, "text": source.text, "sender": source.sender,
        "reply_to": source.reply_to,
        "variables": dict(source.variables) if source.variables is not None else None,
        "sample_data": dict(source.sample_data),
        "locales": {key: value.content() for key, value in source.locales.items()},
        "fallback_locale": source.fallback_locale,
        "stream": source.stream,
        "unsubscribe": source.unsubscribe,
    }


def source_from_dict(raw: Mapping[str, Any]) -> TemplateSource:
    fields = dict(raw)
    fields["locales"] = {key: LocaleOverride(**value)
                         for key, value in (raw.get("locales") or {}).items()}
    return TemplateSource(**fields)


class _Child:
    """One child process and its pipes."""

    def __init__(self, limits: ProcessLimits) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_ROOT, env.get("PYTHONPATH")]))
        env["EMAIL_SERVICE_CHILD_LIMITS"] = json.dumps(
            {"memory_mb": limits.memory_mb, "cpu_seconds": max(1, int(limits.timeout) + 1)})
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mailcore.sandbox_process"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, close_fds=True,
            start_new_session=True)  # a SIGINT/SIGTERM to the parent's group is not its own
        self.ready = False

    def ask(self, request: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Send one request and wait for its answer (raises TimeoutError / EOFError)."""
        assert self.process.stdin is not None and self.process.stdout is not None
        if not self.ready:
            self._read(START_TIMEOUT)  # the child says hello once its imports are done
            self.ready = True
        try:
            # default=str: YAML sample data may hold dates; the child sees them as text.
            self.process.stdin.write(json.dumps(request, default=str).encode() + b"\n")
            self.process.stdin.flush()
        except BrokenPipeError:
            raise EOFError from None
        return self._read(timeout)

    def _read(self, timeout: float) -> dict[str, Any]:
        assert self.process.stdout is not None
        readable, _, _ = select.select([self.process.stdout], [], [], timeout)
        if not readable:
            raise TimeoutError
        line = self.process.stdout.readline()
        if not line:
            raise EOFError
        answer: dict[str, Any] = json.loads(line)
        return answer

    def describe_death(self) -> str:
        try:
            code = self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return "stopped answering"
        if code < 0:
            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exited with status {code}"

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=5)
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                pipe.close()


class TemplateSandbox:
    """A warm child process for compiling and rendering untrusted templates, reused while it is
    healthy; requests are served one at a time (a lock), so keep one per use.

    Parameters:
      limits: the child's memory, time and render limits.
    """

    def __init__(self, limits: ProcessLimits | None = None) -> None:
        self.limits = limits or ProcessLimits()
        self._child: _Child | None = None
        self._lock = threading.Lock()

    def compile(self, source: TemplateSource) -> None:
        """Compile and test-render ``source`` (raises :class:`TemplateError` saying why not)."""
        self._ask({"op": "compile", "source": source_to_dict(source)})

    def render(self, source: TemplateSource, data: Mapping[str, Any], *,
               brand: Mapping[str, Any] | None = None, locale: str | None = None,
               validate: bool = True) -> RenderedEmail:
        """Validate ``data`` and render ``source`` with it (raises :class:`TemplateError`)."""
        answer = self._ask({"op": "render", "source": source_to_dict(source), "data": dict(data),
                            "brand": dict(brand or {}), "locale": locale, "validate": validate})
        return RenderedEmail(**answer["rendered"])

    def close(self) -> None:
        with self._lock:
            if self._child is not None:
                self._child.kill()
                self._child = None

    def __enter__(self) -> TemplateSandbox:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _ask(self, request: dict[str, Any]) -> dict[str, Any]:
        request["limits"] = asdict(self.limits.render)
        request["mjml_max_depth"] = self.limits.mjml_max_depth
        with self._lock:
            if self._child is None or self._child.process.poll() is not None:
                self._child = _Child(self.limits)
            child = self._child
            try:
                answer = child.ask(request, self.limits.timeout)
            except TimeoutError:
                self._child = None
                child.kill()
                raise TemplateError(
                    "RenderBudgetExceeded", "render budget exceeded: compiling and "
                    f"test-rendering took longer than {self.limits.timeout:g} s (stopped)"
                ) from None
            except (EOFError, OSError, ValueError):
                self._child = None
                how = child.describe_death()
                child.kill()
                if child.process.returncode == -signal.SIGXCPU:
                    raise TemplateError(
                        "RenderBudgetExceeded", "render budget exceeded: compiling and "
                        "test-rendering used up the compiler process's CPU time (stopped)"
                    ) from None
                raise TemplateError("CompilerCrashed", f"the template compiler process {how} "
                                    f"(memory limit {self.limits.memory_mb} MiB)") from None
        if "error" in answer:
            error = answer["error"]
            raise TemplateError(error["reason"], error["message"], error.get("line"),
                                error.get("field"),
                                [tuple(v) for v in error.get("violations") or []])
        return answer


# -- the child ------------------------------------------------------------------------------

def _apply_limits() -> None:
    import resource

    raw = json.loads(os.environ.get("EMAIL_SERVICE_CHILD_LIMITS") or "{}")
    if raw.get("memory_mb"):
        limit = int(raw["memory_mb"]) * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _cpu_allowance(seconds: int) -> None:
    """Let the next request use ``seconds`` of CPU beyond what the child has used so far."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    # Rounded up: the limit is in whole seconds, and rounding down could leave a child that has
    # used 0.9 s only 0.1 s of its allowance (killed by SIGXCPU before the wall-clock deadline).
    used = math.ceil(usage.ru_utime + usage.ru_stime)
    hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
    soft = used + seconds
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def _serve(request: dict[str, Any], cache: dict[tuple[str, str], CompiledTemplate]
           ) -> dict[str, Any]:
    limits = RenderLimits(**request["limits"])
    rendering.MAX_MJML_DEPTH = request["mjml_max_depth"]  # this process serves one caller
    source = source_from_dict(request["source"])
    if request["op"] == "compile":
        compile_template(source, limits)
        return {"ok": True}
    key = (source.name, source.version)
    compiled = cache.get(key)
    if compiled is None:
        compiled = CompiledTemplate(source)
        cache.clear()  # a preview child keeps the template it last compiled
        cache[key] = compiled
    if request.get("validate", True):
        compiled.validate_data(request["data"])
    rendered = compiled.render(request["data"], brand=request["brand"],
                               locale=request["locale"], limits=limits)
    return {"ok": True, "rendered": asdict(rendered)}


def main() -> None:
    """Serve requests from stdin until it closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when this one ends
    _apply_limits()
    cpu_seconds = int(json.loads(os.environ.get("EMAIL_SERVICE_CHILD_LIMITS") or "{}")
                      .get("cpu_seconds", 10))
    cache: dict[tuple[str, str], CompiledTemplate] = {}
    out = sys.stdout.buffer
    out.write(b'{"ready": true}\n')
    out.flush()
    for line in sys.stdin.buffer:
        _cpu_allowance(cpu_seconds)
        started = time.monotonic()
        try:
            answer = _serve(json.loads(line), cache)
        except TemplateError as exc:
            answer = {"error": {"reason": exc.reason, "message": exc.message, "line": exc.line,
                                "field": exc.field, "violations": exc.violations}}
        except MemoryError:
            sys.exit(3)  # the parent reports it as a crash and starts a fresh child
        answer["seconds"] = round(time.monotonic() - started, 6)
        out.write(json.dumps(answer).encode() + b"\n")
        out.flush()


if __name__ == "__main__":
    main()
