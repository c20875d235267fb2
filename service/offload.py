"""Running CPU-heavy request work off the event loop.

Decoding and validating a large body (a 100-message batch is ~0.1-1 s of CPU) or building its
jobs would hold the event loop for that long: every other request and probe would wait. Such
work runs in a worker thread instead, one at a time: threads share the GIL anyway, and each
more thread lengthens the loop's wait for it. Small requests stay on the loop (a thread hop
costs more than their work).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import anyio
import anyio.to_thread

T = TypeVar("T")

#: Bodies larger than this are decoded and validated in the thread.
OFFLOAD_BYTES = 16 * 1024
#: Requests with more messages than this have their jobs built in the thread.
OFFLOAD_MESSAGES = 8

_LIMITER = anyio.CapacityLimiter(1)


async def off_loop(work: Callable[[], T]) -> T:
    """``work()`` in the worker thread (waiting for it without holding the loop)."""
    return await anyio.to_thread.run_sync(work, limiter=_LIMITER)
