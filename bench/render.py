"""Render cost per message: compile-once (the service's path) vs compiling for every message."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

from mailcore.config import Settings
from mailcore.rendering import CompiledTemplate, TemplateSource
from mailcore.templates import TemplateRegistry, builtin_templates_dir

SHARED_MJML = Path(__file__).resolve().parent.parent.parent / "shared" / "testdata" / "mjml"


@dataclass
class RenderCost:
    name: str
    compiled_us: float  #: one render of an already compiled template (median of batches)
    per_message_us: float  #: compile + render, as if nothing were cached
    compiled_best_us: float = 0.0  #: the fastest batch: the code's own cost, VM noise aside


@dataclass(frozen=True)
class Timing:
    """Seconds per call over batches of calls: the median batch and the fastest one.

    On a shared VM the median moves by ±40 % from run to run as neighbours take the CPU; the
    fastest batch is what the code costs (timeit's reasoning), so both are reported."""

    median: float
    best: float


def _time_per_call(fn: Callable[[], Any], budget: float, min_calls: int = 3) -> float:
    """Median-of-batches seconds per call, spending about ``budget`` seconds."""
    return _timing(fn, budget, min_calls).median


def _timing(fn: Callable[[], Any], budget: float, min_calls: int = 3) -> Timing:
    """Per-call timing over batches of at least 5 ms, spending about ``budget`` seconds."""
    fn()  # warm
    batches: list[float] = []
    deadline = time.perf_counter() + budget
    batch = 1
    while True:
        started = time.perf_counter()
        for _ in range(batch):
            fn()
        elapsed = time.perf_counter() - started
        if elapsed < 0.005 and batch < 1 << 16:
            batch *= 4
            continue
        batches.append(elapsed / batch)
        if time.perf_counter() > deadline and len(batches) >= min_calls:
            break
    batches.sort()
    return Timing(median=batches[len(batches) // 2], best=batches[0])


def _compile_and_render(source: TemplateSource, data: dict[str, Any], brand: dict[str, Any]
                        ) -> Any:
    return CompiledTemplate(source).render(data, brand=brand)


def measure(budget_per_template: float = 0.4) -> tuple[list[RenderCost], list[RenderCost]]:
    """(built-in templates, real-world MJML set) costs in microseconds."""
    settings = Settings.from_env({"SENDER_EMAIL": "noreply@shop.example.com",
                                  "SENDER_NAME": "Shop", "SECRETS_DIR": "/nonexistent"})
    brand = asdict(settings.brand)
    registry = TemplateRegistry.from_dir(builtin_templates_dir())
    builtin: list[RenderCost] = []
    for name in registry.names():
        template = registry.get(name)
        assert template is not None
        data = dict(template.source.sample_data)
        source = template.source
        timing = _timing(partial(template.render, data, brand=brand), budget_per_template)
        builtin.append(RenderCost(
            name, timing.median * 1e6,
            _time_per_call(partial(_compile_and_render, source, data, brand),
                           budget_per_template) * 1e6,
            compiled_best_us=timing.best * 1e6,
        ))
    real: list[RenderCost] = []
    if SHARED_MJML.is_dir():
        for path in sorted(SHARED_MJML.glob("*.mjml")):
            source = TemplateSource(name=path.stem, subject=path.stem,
                                    mjml=path.read_text(encoding="utf-8"))
            compiled = CompiledTemplate(source)
            real.append(RenderCost(
                path.stem,
                _time_per_call(partial(compiled.render, {}, brand=brand),
                               budget_per_template / 4) * 1e6,
                _time_per_call(partial(_compile_and_render, source, {}, brand),
                               budget_per_template / 4, min_calls=2) * 1e6,
            ))
    return builtin, real


def measure_message_build(budget: float = 0.4) -> dict[str, float] | None:
    """Microseconds per message for what a worker does besides I/O: render ``password_reset``,
    build the MIME message, serialise it. ``None`` if the service's MIME API has changed."""
    try:
        from mailcore.message import Recipient
        from mailcore.mime import build_envelope
    except ImportError:
        return None
    registry = TemplateRegistry.from_dir(builtin_templates_dir())
    template = registry.get("password_reset")
    if template is None:
        return None
    brand = {"name": "Shop", "url": "https://example.com", "logo_url": "", "color": "#2563eb",
             "support_email": ""}
    data = dict(template.source.sample_data)
    sender = Recipient(email="noreply@shop.example.com", name="Shop")
    to = [Recipient(email="a@example.com")]
    rendered = template.render(data, brand=brand)

    def build() -> Any:
        return build_envelope(message_id="0f8fad5b-d9cb-469f-a165-70867728950e",
                              rendered=rendered, sender=sender, to=to)

    try:
        envelope = build()
        envelope.as_bytes()
    except (TypeError, AttributeError):
        return None
    return {
        "render_us": round(_time_per_call(partial(template.render, data, brand=brand),
                                          budget) * 1e6, 1),
        "mime_build_us": round(_time_per_call(build, budget) * 1e6, 1),
        "mime_serialise_us": round(_time_per_call(envelope.as_bytes, budget) * 1e6, 1),
        "message_bytes": len(envelope.as_bytes()),
    }


def measure_layout(budget: float = 0.4) -> dict[str, float]:
    """Microseconds per render of ``examples/emailtemplates/order-shipped.yaml`` composed with
    its layout and partial, of the same body without the layout, and of composing (the
    operator's cost, once per version). Composition happens before compiling, so a template
    without a layout is the very same source (and cost) as before layouts existed."""
    from mailcore.template_parts import Composer, compose
    from mailcore.template_resources import collect_parts, source_from_spec

    examples = Path(__file__).resolve().parent.parent / "examples" / "emailtemplates"
    path = examples / "order-shipped.yaml"
    import yaml

    documents = [d for d in yaml.safe_load_all(path.read_text()) if d]
    spec = next(d["spec"] for d in documents if d["metadata"]["name"] == "order-shipped")
    parts, _ = collect_parts([path], "default")
    lookup = {key: part for key, (part, _) in parts.items()}.get
    key = "default/order-shipped"
    source = source_from_spec(key, spec)

    def composed_source() -> TemplateSource:
        return compose(source, spec, Composer("default", lookup, own=key))

    with_layout = CompiledTemplate(composed_source())
    bare = CompiledTemplate(TemplateSource(
        name=key, subject=source.subject, text=source.text, sample_data=source.sample_data,
        mjml=f"<mjml><mj-body>{source.mjml}</mj-body></mjml>"))
    brand = {"name": "Shop", "url": "https://example.com", "logo_url": "", "color": "#2563eb",
             "support_email": "help@example.com"}
    data = dict(source.sample_data)
    return {
        "with_layout_us": round(_time_per_call(
            partial(with_layout.render, data, brand=brand), budget) * 1e6, 1),
        "without_layout_us": round(_time_per_call(
            partial(bare.render, data, brand=brand), budget) * 1e6, 1),
        "compose_us": round(_time_per_call(composed_source, budget) * 1e6, 1),
        "with_layout_html_bytes": len(with_layout.render(data, brand=brand).html),
        "without_layout_html_bytes": len(bare.render(data, brand=brand).html),
    }


if __name__ == "__main__":
    import json

    print(json.dumps(measure_layout(), indent=2))
