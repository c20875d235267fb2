"""The Dramatiq and Jinja internals we subclass, copy or patch, pinned: an upgrade that changes
any of them fails here, loudly, instead of quietly changing delivery or rendering.

What relies on them:
- workers/broker.py subclasses Dramatiq's private ``_RedisConsumer``, copies its ``__next__``
  (adding batched requeues and shorter waits), wraps ``RedisBroker._dispatch`` and sends the
  ``dispatch.lua`` script's "requeue" and "fetch" commands itself, with ``_dispatch``'s
  arguments. Its ``enqueue`` recognises the consumer thread promoting a due delayed message
  (``handle_delayed_messages``: an ``enqueue`` of the message with its Redis id and no delay,
  then an ack on the delay queue) and does both in one step; its consumer treats an ack of a
  message the worker did not settle as a requeue (``post_process_message`` acks or nacks, never
  leaves a message alone).
- workers/runtime.py removes a thread's deadline from the TimeLimit middleware's timeout manager
  once the relay has accepted a message (``_CtypesTimeoutManager.remove_timeout``).
- mailcore/rendering.py builds Jinja's ``Context`` directly (as ``new_context(shared=True)``
  would) and swaps the ``escape`` a compiled template looks up in its module namespace for one
  that calls markupsafe's C escaper.
- mailcore/dkim_header.py follows dkimpy's ``DKIM.sign`` and ``gen_header`` step by step (and
  ``hash_headers``), calling its parser, header selection, folding, b= pattern and
  canonicalisation, to write the same DKIM-Signature with a key parsed once
  (tests/test_dkim_header.py compares the bytes).

On a failure: read the upstream change, carry it into our copy (or drop the patch), run
tests/test_broker.py, tests/test_rendering.py and tests/test_dkim_header.py, then update the
fingerprint here.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import dkim
import dkim.canonicalization
import dramatiq.brokers.redis as dramatiq_redis
import dramatiq.middleware.time_limit as dramatiq_time_limit
import dramatiq.worker as dramatiq_worker
import jinja2
import jinja2.environment
import jinja2.runtime
import markupsafe
import pytest
from dramatiq.common import compute_backoff
from packaging.version import Version

#: Versions whose internals were read and matched (low inclusive, high exclusive).
CHECKED = {"dramatiq": ("2.2", "2.3"), "jinja2": ("3.1", "3.2"), "markupsafe": ("3.0", "3.1"),
           "dkimpy": ("1.1.8", "1.1.9")}


def fingerprint(source: str | bytes) -> str:
    data = source.encode() if isinstance(source, str) else source
    return hashlib.sha256(data).hexdigest()[:16]


def source_of(obj: Callable[..., Any]) -> str:
    return inspect.getsource(obj)


@pytest.mark.parametrize("package", sorted(CHECKED))
def test_installed_versions_are_the_checked_ones(package: str) -> None:
    low, high = CHECKED[package]
    installed = Version(version(package))
    assert Version(low) <= installed < Version(high), (
        f"{package} {installed} is outside {low} <= v < {high}, the range whose internals "
        "tests/test_pinned_internals.py pins: read the module docstring")


@pytest.mark.parametrize(("what", "source", "expected"), [
    ("dramatiq _RedisConsumer.__next__ (copied in workers/broker.py)",
     lambda: source_of(dramatiq_redis._RedisConsumer.__next__), "b8245bc4ab8044d6"),
    ("dramatiq _RedisConsumer.__init__ (its attributes are used)",
     lambda: source_of(dramatiq_redis._RedisConsumer.__init__), "c626986d71660eb6"),
    ("dramatiq RedisBroker._dispatch (wrapped; its arguments rebuilt)",
     lambda: source_of(dramatiq_redis.RedisBroker._dispatch), "ee77793d07f17bbe"),
    ("dramatiq ConsumerThread.handle_delayed_messages (enqueue, then ack: done in one step)",
     lambda: source_of(dramatiq_worker._ConsumerThread.handle_delayed_messages),
     "357b6b23675bc029"),
    ("dramatiq ConsumerThread.post_process_message (ack or nack: unsettled acks requeue)",
     lambda: source_of(dramatiq_worker._ConsumerThread.post_process_message),
     "34d4806bcc9eca81"),
    ("dramatiq _CtypesTimeoutManager.remove_timeout (the time limit disarmed after a send)",
     lambda: source_of(dramatiq_time_limit._CtypesTimeoutManager.remove_timeout),
     "120c9bc029897ede"),
    ("dramatiq dispatch.lua (its requeue and fetch commands sent directly)",
     lambda: (Path(dramatiq_redis.__file__).parent / "redis" / "dispatch.lua").read_bytes(),
     "ba4d872e4fb204eb"),
    ("jinja2 runtime.new_context (built directly in mailcore/rendering.py)",
     lambda: source_of(jinja2.runtime.new_context), "4578768842aedb44"),
    ("jinja2 Context.__init__",
     lambda: source_of(jinja2.runtime.Context.__init__), "58d8435955e09020"),
    ("jinja2 Template._from_namespace (root_render_func, blocks, globals)",
     lambda: source_of(jinja2.environment.Template._from_namespace), "fdce36aa99d87a24"),
    ("dkimpy DKIM.sign (its signature fields, in mailcore/dkim_header.py)",
     lambda: source_of(dkim.DKIM.sign), "427b6d31fef46a04"),
    ("dkimpy DomainSigner.gen_header (its folding and hashing steps)",
     lambda: source_of(dkim.DomainSigner.gen_header), "e86f61152fe59398"),
    ("dkimpy hash_headers", lambda: source_of(dkim.hash_headers), "216b8155ca91b6f8"),
    ("dkimpy canonicalization.py (its relaxed body steps called directly)",
     lambda: Path(dkim.canonicalization.__file__).read_bytes(), "86c85952ac069fcf"),
    ("dkimpy RE_BTAG", lambda: dkim.RE_BTAG.pattern, "9462d3ccdeee123a"),
], ids=["consumer-next", "consumer-init", "broker-dispatch", "delayed-promotion",
        "post-process", "time-limit-disarm", "dispatch-lua", "new-context", "context-init",
        "template-namespace", "dkim-sign", "dkim-gen-header", "dkim-hash-headers",
        "dkim-canonicalization", "dkim-btag"])
def test_the_code_we_copy_or_patch_is_unchanged(what: str, source: Callable[[], str | bytes],
                                                expected: str) -> None:
    assert fingerprint(source()) == expected, f"{what} changed upstream: read the docstring"


def test_consumer_and_broker_have_what_the_subclasses_use() -> None:
    consumer_init = inspect.signature(dramatiq_redis._RedisConsumer.__init__)
    assert list(consumer_init.parameters) == ["self", "broker", "queue_name", "prefetch",
                                              "timeout"]
    for name in ("ack", "close", "requeue", "outstanding_message_count"):
        assert hasattr(dramatiq_redis._RedisConsumer, name), name
    for name in ("_dispatch", "_should_do_maintenance", "_max_unpack_size", "consume"):
        assert callable(getattr(dramatiq_redis.RedisBroker, name)), name
    backoff = inspect.signature(compute_backoff)
    assert "max_backoff" in backoff.parameters


def test_compiled_templates_print_through_a_module_level_escape() -> None:
    program = jinja2.Environment(autoescape=True).from_string("{{ x }}")
    assert program.root_render_func.__globals__["escape"] is markupsafe.escape
    source = jinja2.Environment(autoescape=True).compile("{{ x }}", raw=True)
    assert "escape(" in source
    context = jinja2.runtime.Context(program.environment, {"x": "<a>"}, program.name,
                                     program.blocks)
    assert "".join(program.root_render_func(context)) == "&lt;a&gt;"


def test_markupsafe_has_the_c_escaper_we_call() -> None:
    from markupsafe._speedups import _escape_inner

    assert _escape_inner("<'\"&>") == str(markupsafe.escape("<'\"&>"))
