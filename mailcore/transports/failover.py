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
from .base import (
    DeliveryError,
    DeliveryResult,
    TransientDeliveryError,
    Transport,
    UnconfirmedDeliveryError,
)


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

    def release(self) -> None:
        """A probe that proved nothing: the circuit stays as it was (open again if it was
        open), and another probe may come after the cooldown."""
        with self._lock:
            if self._probing:
                self._open_until = self.clock() + self.cooldown
            self._probing = False

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
        failures: list[tuple[str, DeliveryError]] = []
        if pinned:
            # An earlier attempt there may have delivered: only there may it be retried.
            result = self._try(pinned, envelope, failures, use_circuits=False)
        else:
            result = self._try(self.transports, envelope, failures, use_circuits=True)
            if result is None and not failures:
                # Every circuit open: trying is better than failing without a try.
                result = self._try(self.transports, envelope, failures, use_circuits=False)
        if result is not None:
            return result
        transient = [e for _, e in failures if e.transient]
        # Retried when any of them may work later (a refused token alone will not).
        last = transient[-1] if transient else failures[-1][1]
        cls = TransientDeliveryError if transient else type(last)
        summary = "; ".join(f"{n}: {e}" for n, e in failures)
        error = cls(f"every transport failed before accepting: {summary}", last.smtp_code,
                    before_accept=True, retry_after=last.retry_after)
        error.failures = tuple(failures)
        raise error

    def _try(self, transports: Sequence[Transport], envelope: Envelope,
             failures: list[tuple[str, DeliveryError]], *, use_circuits: bool
             ) -> DeliveryResult | None:
        """Each transport in turn (a circuit is asked only when its turn comes, so a probe is
        taken only by the send that makes it); the first delivery, or None when each failed
        before accepting (appended to ``failures``). Raises what must not move on."""
        for transport in transports:
            circuit = self.circuits[transport.name]
            if use_circuits and not circuit.allow():
                continue
            try:
                result = transport.send(envelope)
            except DeliveryError as exc:
                exc.via = transport.name
                if exc.before_accept:
                    circuit.failed()
                    failures.append((transport.name, exc))
                    continue
                # The message's own fault, or an unknown outcome: stop here. A refusal of the
                # message shows the transport works; an unconfirmed send reached the server but
                # proves nothing either way (a probe's turn is given back).
                if isinstance(exc, UnconfirmedDeliveryError):
                    circuit.release()
                elif exc.transient:
                    circuit.failed()
                else:
                    circuit.succeeded()
                exc.failures = tuple(failures)
                raise
            circuit.succeeded()
            return replace(result, failures=tuple(failures))
        return None

    def close(self) -> None:
        for transport in self.transports:
            transport.close()
