"""The failover chain's rules, with transports that fail as told and a clock the test moves:
which failures move on to the next transport, which never do, and how the circuit keeps a
failing primary out and probes it back. (End to end with a real relay and the Mailtrap
stand-in: tests/test_mailtrap_delivery.py.)"""

from __future__ import annotations

import pytest

from mailcore.mime import Envelope
from mailcore.transports import (
    ConfigurationDeliveryError,
    DeliveryError,
    DeliveryResult,
    PermanentDeliveryError,
    TransientDeliveryError,
    Transport,
    UnconfirmedDeliveryError,
)
from mailcore.transports.failover import Circuit, FailoverTransport


class Scripted(Transport):
    """Raises the queued errors in turn, then delivers."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.errors: list[DeliveryError] = []
        self.sent: list[str] = []

    def send(self, envelope: Envelope) -> DeliveryResult:
        if self.errors:
            raise self.errors.pop(0)
        self.sent.append(envelope.message_id)
        return DeliveryResult(transport=self.name, response="250 ok")


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


def chain(cooldown: float = 30.0) -> tuple[FailoverTransport, Scripted, Scripted, Clock]:
    clock = Clock()
    smtp, http = Scripted("smtp"), Scripted("mailtrap")
    return FailoverTransport([smtp, http], cooldown=cooldown, clock=clock), smtp, http, clock


def mail(ident: str = "m1", only_via: str | None = None) -> Envelope:
    return Envelope(message_id=ident, sender="a@example.com", recipients=("b@example.com",),
                    raw=b"", only_via=only_via)


BEFORE_ACCEPT = [
    TransientDeliveryError("ConnectionRefusedError", before_accept=True),
    TransientDeliveryError("451 try later", 451, before_accept=True),
    TransientDeliveryError("Mailtrap answered 503", 503, before_accept=True, retry_after=2),
    ConfigurationDeliveryError("535 bad credentials", 535, before_accept=True),
]


@pytest.mark.parametrize("error", BEFORE_ACCEPT, ids=str)
def test_a_failure_before_accepting_moves_on_in_the_same_attempt(error: DeliveryError) -> None:
    failover, smtp, http, _ = chain()
    smtp.errors = [error]
    result = failover.send(mail())
    assert result.transport == "mailtrap" and http.sent == ["m1"]
    assert result.failures == (("smtp", error),)


@pytest.mark.parametrize("error", [
    UnconfirmedDeliveryError("unconfirmed: lost after the final dot"),
    PermanentDeliveryError("550 no such user", 550),
    TransientDeliveryError("451 after the body", 451),  # the body went out
], ids=str)
def test_an_ambiguous_or_final_outcome_never_moves_on(error: DeliveryError) -> None:
    failover, smtp, http, _ = chain()
    smtp.errors = [error]
    with pytest.raises(DeliveryError) as raised:
        failover.send(mail())
    assert raised.value is error and raised.value.via == "smtp"
    assert http.sent == []


def test_an_unconfirmed_message_is_retried_only_where_it_may_be() -> None:
    failover, smtp, http, _ = chain()
    smtp.errors = [TransientDeliveryError("refused", before_accept=True)]
    failover.send(mail("other"))  # opens smtp's circuit
    assert failover.circuits["smtp"].state == "open"
    result = failover.send(mail("m1", only_via="smtp"))
    assert result.transport == "smtp" and http.sent == ["other"]


def test_the_circuit_keeps_a_failing_primary_out_then_probes_it_back() -> None:
    failover, smtp, _, clock = chain(cooldown=30)
    smtp.errors = [TransientDeliveryError("refused", before_accept=True)]
    assert failover.send(mail("1")).transport == "mailtrap"
    clock.now += 29
    assert failover.send(mail("2")).transport == "mailtrap"  # smtp not even tried
    assert smtp.errors == [] and smtp.sent == []
    clock.now += 2
    smtp.errors = [TransientDeliveryError("still down", before_accept=True)]
    assert failover.send(mail("3")).transport == "mailtrap"  # the probe failed: open again
    assert failover.circuits["smtp"].state == "open"
    clock.now += 31
    assert failover.send(mail("4")).transport == "smtp"  # the probe succeeded: closed
    assert failover.circuits["smtp"].state == "closed" and smtp.sent == ["4"]


def test_only_one_probe_at_a_time() -> None:
    circuit = Circuit(threshold=1, cooldown=10, clock=(clock := Clock()))
    circuit.failed()
    assert not circuit.allow()
    clock.now += 11
    assert circuit.allow() and circuit.state == "half-open"
    assert not circuit.allow()  # another thread while the probe is out


def test_threshold_counts_consecutive_failures() -> None:
    circuit = Circuit(threshold=3, cooldown=10, clock=Clock())
    circuit.failed()
    circuit.failed()
    circuit.succeeded()
    circuit.failed()
    circuit.failed()
    assert circuit.state == "closed"
    circuit.failed()
    assert circuit.state == "open"


def test_when_every_transport_fails_before_accepting_the_attempt_is_retried() -> None:
    failover, smtp, http, _ = chain()
    smtp.errors = [TransientDeliveryError("refused", before_accept=True)]
    http.errors = [TransientDeliveryError("503", 503, before_accept=True, retry_after=4)]
    with pytest.raises(TransientDeliveryError) as raised:
        failover.send(mail())
    error = raised.value
    assert "every transport failed" in str(error) and error.retry_after == 4
    assert [name for name, _ in error.failures] == ["smtp", "mailtrap"]


def test_every_circuit_open_still_tries() -> None:
    failover, smtp, http, _ = chain()
    smtp.errors = [TransientDeliveryError("x", before_accept=True)]
    http.errors = [TransientDeliveryError("y", before_accept=True)]
    with pytest.raises(TransientDeliveryError):
        failover.send(mail("1"))
    assert failover.send(mail("2")).transport == "smtp"


def test_refused_credentials_everywhere_are_permanent() -> None:
    failover, smtp, http, _ = chain()
    smtp.errors = [ConfigurationDeliveryError("535", 535, before_accept=True)]
    http.errors = [ConfigurationDeliveryError("401", 401, before_accept=True)]
    with pytest.raises(ConfigurationDeliveryError):
        failover.send(mail())


def test_a_probe_is_taken_only_by_the_send_that_makes_it() -> None:
    failover, smtp, http, clock = chain(cooldown=10)
    http.errors = [TransientDeliveryError("down", before_accept=True)]
    smtp.errors = [TransientDeliveryError("down", before_accept=True)]
    with pytest.raises(TransientDeliveryError):
        failover.send(mail("1"))  # both open now
    clock.now += 11
    # smtp's probe succeeds; mailtrap's circuit is never asked, so its probe is still due.
    assert failover.send(mail("2")).transport == "smtp"
    assert failover.circuits["mailtrap"].state == "open"
    assert failover.circuits["mailtrap"].allow()


@pytest.mark.parametrize(("error", "state"), [
    (PermanentDeliveryError("550 no such user", 550), "closed"),  # the relay works
    (UnconfirmedDeliveryError("unconfirmed"), "open"),  # proves nothing: probe again later
])
def test_a_probe_that_ends_without_a_verdict_does_not_wedge_the_circuit(
        error: DeliveryError, state: str) -> None:
    failover, smtp, _, clock = chain(cooldown=10)
    smtp.errors = [TransientDeliveryError("down", before_accept=True)]
    failover.send(mail("1"))
    clock.now += 11
    smtp.errors = [error]
    with pytest.raises(DeliveryError):
        failover.send(mail("2"))
    assert failover.circuits["smtp"].state == state
    clock.now += 11
    assert failover.send(mail("3")).transport == "smtp"
