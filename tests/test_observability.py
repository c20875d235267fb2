"""One trace from request to SMTP, metrics that move by exactly what happened, JSON logs.

The ingress and a worker run as real processes exporting OTLP/HTTP to a receiver started here.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from prometheus_client.parser import text_string_to_metric_families

from mailcore.tokens import mint_token

from .support import (
    REPO,
    TEST_SECRET,
    RedisServer,
    ServiceProcess,
    ServiceStack,
    SMTPServer,
    base_env,
    free_port,
    wait_for,
)

pytestmark = pytest.mark.slow
QUEUE = "email-observability"


@dataclass
class Span:
    trace_id: str
    span_id: str
    parent_id: str
    name: str
    attributes: dict[str, Any]
    links: list[str]


class Receiver(ThreadingHTTPServer):
    """A minimal OTLP/HTTP trace receiver that keeps every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", free_port()), _OTLPHandler)

    def named(self, name: str, trace_id: str | None = None) -> list[Span]:
        with self.lock:
            return [s for s in self.spans
                    if s.name == name and (trace_id is None or s.trace_id == trace_id)]


class _OTLPHandler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        request = ExportTraceServiceRequest.FromString(body)
        spans = []
        for resource in request.resource_spans:
            for scope in resource.scope_spans:
                for span in scope.spans:
                    attributes = {a.key: _value(a.value) for a in span.attributes}
                    spans.append(Span(span.trace_id.hex(), span.span_id.hex(),
                                      span.parent_span_id.hex(), span.name, attributes,
                                      [link.span_id.hex() for link in span.links]))
        with self.server.lock:
            self.server.spans.extend(spans)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


@dataclass
class Observed:
    api: ServiceProcess
    worker: ServiceProcess
    base_url: str
    worker_metrics: str
    receiver: Receiver


@pytest.fixture(scope="module")
def observed(redis_server: RedisServer, smtp_server: SMTPServer,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Observed]:
    receiver = Receiver()
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    logs = tmp_path_factory.mktemp("observability")
    metrics_port = free_port()
    env = base_env(redis_server.url, smtp_server.port, QUEUE_NAME=QUEUE,
                   OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{receiver.server_port}",
                   OTEL_BSP_SCHEDULE_DELAY="50", WORKER_METRICS_PORT=str(metrics_port),
                   LOG_FORMAT="json",  # and the default PROMETHEUS_MULTIPROC_DIR, as deployed
                   KEY_PREFIX="email-obs", EVENTS_CHANNEL="observed_reset_events")
    try:
        with ServiceStack(env, logs, processes=2, threads=2) as stack:
            stack.worker.wait_until(
                lambda: httpx.get(f"http://127.0.0.1:{metrics_port}/").status_code == 200,
                message="worker metrics")
            yield Observed(stack.api, stack.worker, stack.base_url,
                           f"http://127.0.0.1:{metrics_port}/", receiver)
    finally:
        receiver.shutdown()
        receiver.server_close()


def send(observed: Observed, to: str, **extra: Any) -> httpx.Response:
    token = mint_token(TEST_SECRET, subject="observer")
    return httpx.post(f"{observed.base_url}/v1/messages",
                      json={"template": "password_reset", "to": to,
                            "data": {"email": to, "code": "31337"}, **extra},
                      headers={"Authorization": f"Bearer {token}"})


def test_one_trace_spans_ingress_worker_and_smtp(observed: Observed,
                                                  smtp_server: SMTPServer) -> None:
    to = f"traced-{uuid.uuid4().hex[:6]}@example.org"
    message_id = send(observed, to).json()["id"]
    wait_for(lambda: smtp_server.handler.to(to), message="the email")
    receiver = observed.receiver
    enqueue = wait_for(lambda: next((s for s in receiver.named("enqueue")
                                     if s.attributes.get("email.message_id") == message_id),
                                    None),
                       message="the enqueue span")
    trace_id = enqueue.trace_id
    send_span = wait_for(lambda: next(iter(receiver.named("send_email", trace_id)), None),
                         message="the worker's span in the same trace")
    render = wait_for(lambda: next(iter(receiver.named("render", trace_id)), None),
                      message="the render span")
    smtp = wait_for(lambda: next(iter(receiver.named("transport.send", trace_id)), None),
                    message="the SMTP span")
    server = wait_for(lambda: next(iter(receiver.named("POST /v1/messages", trace_id)), None),
                      message="the HTTP request span")

    assert send_span.parent_id == enqueue.span_id  # worker continues the enqueue span
    assert render.parent_id == send_span.span_id and smtp.parent_id == send_span.span_id
    assert enqueue.parent_id == server.span_id  # the enqueue happens inside the request
    assert server.parent_id == ""  # the request is the root
    assert send_span.attributes["email.outcome"] == "sent"
    assert render.attributes["email.template"] == "password_reset"
    assert len(render.attributes["email.template_version"]) == 16
    assert smtp.attributes["smtp.code"] == 250 and smtp.attributes["email.transport"] == "smtp"
    assert not any(to in json.dumps(s.attributes) for s in receiver.spans)  # no addresses


def test_redis_event_send_has_its_own_trace(observed: Observed, redis_server: RedisServer,
                                            smtp_server: SMTPServer) -> None:
    to = f"event-traced-{uuid.uuid4().hex[:6]}@example.org"
    client = redis_server.client()
    wait_for(lambda: client.pubsub_numsub("observed_reset_events")[0][1] >= 1,
             message="the listener")
    publisher = "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"
    client.publish("observed_reset_events",
                   json.dumps({"email": to, "code": "5", "traceparent": publisher}))
    wait_for(lambda: smtp_server.handler.to(to), message="the event's email")
    receiver = observed.receiver
    root = wait_for(lambda: next((s for s in receiver.named("observed_reset_events receive")
                                  if "cd" * 8 in s.links), None),
                    message="the event's receive span")
    assert root.parent_id == "" and root.trace_id != "ab" * 16  # its own trace, linked
    wait_for(lambda: receiver.named("send_email", root.trace_id), message="the send in it")
    assert not receiver.named("POST /v1/messages", root.trace_id)


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def _delta(before: dict[Any, float], after: dict[Any, float], name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


def test_metrics_move_by_exactly_the_traffic(observed: Observed,
                                             smtp_server: SMTPServer) -> None:
    ingress_url = f"{observed.base_url}/metrics"
    before = _samples(httpx.get(ingress_url).text)
    worker_before = _samples(httpx.get(observed.worker_metrics).text)
    addresses = [f"counted-{i}-{uuid.uuid4().hex[:6]}@example.org" for i in range(3)]
    for to in addresses:
        assert send(observed, to).status_code == 202
    for _ in range(2):
        assert send(observed, "not-an-address").status_code == 422
    assert httpx.post(f"{observed.base_url}/v1/messages", json={}).status_code == 401
    for to in addresses:
        wait_for(functools.partial(smtp_server.handler.to, to), message="each email")

    after = _samples(httpx.get(ingress_url).text)
    route = {"route": "/v1/messages", "method": "POST"}
    assert _delta(before, after, "email_http_requests_total", **route, status="202") == 3
    assert _delta(before, after, "email_http_requests_total", **route, status="422") == 2
    assert _delta(before, after, "email_http_requests_total", **route, status="401") == 1
    assert _delta(before, after, "email_rejections_total", reason="invalid_request") == 2
    assert _delta(before, after, "email_rejections_total", reason="unauthorized") == 1
    assert _delta(before, after, "email_accepted_total", source="api") == 3
    assert _delta(before, after, "email_http_request_seconds_count", route="/v1/messages") == 6

    def worker_counted() -> dict[Any, float] | None:
        now = _samples(httpx.get(observed.worker_metrics).text)
        sent = _delta(worker_before, now, "email_messages_total", template="password_reset",
                      transport="smtp", outcome="sent")
        return now if sent >= 3 else None

    worker_after = wait_for(worker_counted, message="the worker counters")
    assert _delta(worker_before, worker_after, "email_messages_total",
                  template="password_reset", transport="smtp", outcome="sent") == 3
    assert _delta(worker_before, worker_after, "email_render_seconds_count",
                  template="password_reset") == 3
    assert _delta(worker_before, worker_after, "email_send_seconds_count", transport="smtp") == 3
    # One series per stream's queue (README: Streams).
    for queue in (QUEUE, "email-bulk"):
        assert ("email_queue_depth", (("queue", queue),)) in worker_after
        assert ("email_queue_oldest_age_seconds", (("queue", queue),)) in worker_after


def test_logs_are_json_with_trace_ids_and_no_secrets(observed: Observed,
                                                     smtp_server: SMTPServer) -> None:
    to = f"logged.person-{uuid.uuid4().hex[:6]}@example.org"
    smtp_server.handler.plan[to] = [f"550 5.1.1 <{to}>: Recipient address rejected"]
    message_id = send(observed, to).json()["id"]
    wait_for(lambda: message_id in observed.worker.output() and
             "dead-lettered" in observed.worker.output(), message="the worker's log line")
    enqueue = wait_for(lambda: next((s for s in observed.receiver.named("enqueue")
                                     if s.attributes.get("email.message_id") == message_id),
                                    None), message="the enqueue span")
    lines = []
    for process in (observed.api, observed.worker):
        for line in process.output().splitlines():
            if line.startswith("{"):
                lines.append(json.loads(line))  # every structured line parses
    queued = next(e for e in lines if e.get("message_id") == message_id and
                  e["message"] == "queued")
    assert {"time", "level", "logger", "message", "trace_id", "span_id"} <= set(queued)
    assert queued["trace_id"] == enqueue.trace_id
    failed = next(e for e in lines if e.get("message_id") == message_id and
                  "dead-lettered" in e["message"])
    assert failed["trace_id"] == enqueue.trace_id and failed["level"] == "error"
    text = observed.api.output() + observed.worker.output()
    assert to not in text  # addresses are masked...
    assert "l***@example.org" in failed["message"]  # ...but still recognisable
    assert TEST_SECRET not in text


def test_log_lines_are_all_json(observed: Observed, smtp_server: SMTPServer) -> None:
    to = f"json-lines-{uuid.uuid4().hex[:6]}@example.org"
    message_id = send(observed, to).json()["id"]
    wait_for(lambda: smtp_server.handler.to(to), message="the email")
    # Each process logs this message ("queued", "delivered"): its output cannot be empty, and
    # every line of it parses (a line that does not keeps failing until the deadline).
    for process, event in ((observed.api, "queued"), (observed.worker, "delivered")):
        entries = wait_for(functools.partial(_logged, process, message_id, event),
                           message=f"a {event!r} line for {message_id} among JSON lines")
        assert all({"time", "level", "logger", "message"} <= set(entry) for entry in entries)


def _logged(process: ServiceProcess, message_id: str, event: str) -> list[dict[str, Any]]:
    """Every line the process logged, parsed, once one of them is ``event`` for the message."""
    entries = [json.loads(line) for line in process.output().splitlines() if line.strip()]
    found = any(entry.get("message_id") == message_id and entry["message"] == event
                for entry in entries)
    return entries if found else []


_SPAN_PROBE = """
import json, sys
from mailcore.config import Settings
from mailcore.telemetry import configure_tracing, current_ids, detail_span, tracer
configure_tracing("worker", Settings.from_env().telemetry)
with tracer().start_as_current_span("probe") as span:
    with detail_span("child") as child:
        inner, child_recorded = current_ids(), child.is_recording()
    sys.stderr.write(json.dumps([span.is_recording(), current_ids() is not None,
                                 child_recorded, inner == current_ids()]))
"""


@pytest.mark.parametrize(("exporter", "recorded"), [("otlp", False), ("console", True)])
def test_spans_are_recorded_only_when_exported(exporter: str, recorded: bool) -> None:
    # No collector configured: spans are not recorded (cheap), yet logs still get their ids;
    # child spans are not even made, so inside one the logs carry the parent's ids.
    env = {key: value for key, value in os.environ.items() if not key.startswith("OTEL_")}
    env["OTEL_TRACES_EXPORTER"] = exporter
    probe = subprocess.run([sys.executable, "-c", _SPAN_PROBE], env=env, cwd=REPO,
                           capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(probe.stderr) == [recorded, True, recorded, not recorded]
