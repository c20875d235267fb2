"""Ordered transports with a circuit breaker: the next one takes a message only when the one
before failed *before it could have accepted it*.

A failure that leaves the outcome unknown (the body went out and the answer was lost:
:class:`UnconfirmedDeliveryError`) is never failed over — the first transport may have the
message, and a second copy would be a duplicate. Permanent refusals of the message itself (a
5xx for a recipient, a 400/422 from an API) are not failed over either: another transport would
refuse it too. Circuits are per worker process.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace

from ..mime import Envelope
from .base import DeliveryError, DeliveryResult, TransientDeliveryError, Transport


class Circuit:
    """Closed (in use) until ``threshold`` failures in a row; then open for ``cooldown``
    seconds; then one probe send may try it (half-open): success closes it, failure opens it
    again.

    Parameters:
      threshold: consecutive failures that open the circuit.
      cooldown: seconds it stays open before a probe.
      clock: monotonic seconds (tests may pass another).
    """

    def __init__(self, threshold: int = 1, cooldown: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self.clock = clock
        self._failures = 0
        self._open_until: float | None = None
        self._probing = False
        self._lock = threading.Lock()

    @property
    def state(self) -> str:
        with self._lock:
            if self._open_until is None:
                return "closed"
            return "half-open" if self._probing else "open"

    def allow(self) -> bool:
        """Whether a send may use this transport now (takes the probe when one is due)."""
        with self._lock:
            if self._open_until is None:
                return True
            if self._probing or self.clock() < self._open_until:
                return False
            self._probing = True
            return True

    def succeeded(self) -> None:
        with self._lock:
            self._failures, self._open_until, self._probing = 0, None, False

    def failed(self) -> None:
        with self._lock:
            self._failures += 1
            if self._probing or self._failures >= self.threshold:
                self._open_until = self.clock() + self.cooldown
            self._probing = False


class FailoverTransport(Transport):
    """Tries ``transports`` in order within one attempt (see the module docstring).

    Parameters:
      transports: in order of preference.
      threshold, cooldown: of each transport's :class:`Circuit`.
      clock: monotonic seconds, for the circuits.
    """

    name = "failover"

    def __init__(self, transports: Sequence[Transport], *, threshold: int = 1,
                 cooldown: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.transports = tuple(transports)
        self.circuits = {t.name: Circuit(threshold, cooldown, clock) for t in self.transports}

    def send(self, envelope: Envelope) -> DeliveryResult:
        pinned = [t for t in self.transports if t.name == envelope.only_via]
        if pinned:
            # An earlier attempt there may have delivered: only there may it be retried.
            candidates = pinned
        else:
            usable = [t for t in self.transports if self.circuits[t.name].allow()]
            # Every circuit open: trying is better than failing without a try.
            candidates = usable or list(self.transports)
        failures: list[tuple[str, DeliveryError]] = []
        for transport in candidates:
            circuit = self.circuits[transport.name]
            try:
                result = transport.send(envelope)
            except DeliveryError as exc:
                exc.via = transport.name
                if exc.before_accept:
                    circuit.failed()
                    failures.append((transport.name, exc))
                    continue
                # The message's own fault, or an unknown outcome: the transport itself may be
                # fine (permanent), or may have the message (unconfirmed): stop here. An
                # unconfirmed send reached the server: no reason to open its circuit.
                if type(exc) is TransientDeliveryError:
                    circuit.failed()
                exc.failures = tuple(failures)
                raise
            circuit.succeeded()
            return replace(result, failures=tuple(failures))
        transient = [e for _, e in failures if e.transient]
        # Retried when any of them may work later (a refused token alone will not).
        last = transient[-1] if transient else failures[-1][1]
        cls = TransientDeliveryError if transient else type(last)
        summary = "; ".join(f"{n}: {e}" for n, e in failures)
        error = cls(f"every transport failed before accepting: {summary}", last.code,
                    before_accept=True, retry_after=last.retry_after)
        error.failures = tuple(failures)
        raise error

    def close(self) -> None:
        for transport in self.transports:
            transport.close()
