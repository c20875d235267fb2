"""Templates cannot exhaust memory or time: each class of growth, in several shapes.

Every hostile template runs in the sandbox child process (``RLIMIT_AS`` 512 MiB here), so if a
bound regresses the child dies (``CompilerCrashed``, failing the test) instead of the CI machine
running out of memory.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailcore.render_budget import RenderLimits
from mailcore.rendering import (
    MAX_MJML_DEPTH,
    CompiledTemplate,
    TemplateError,
    TemplateSource,
    check_mjml_shape,
)
from mailcore.sandbox_process import ProcessLimits, TemplateSandbox

#: The child's limits in these tests: small enough that a regression fails fast and safely.
LIMITS = ProcessLimits(memory_mb=512, timeout=20,
                       render=RenderLimits(max_bytes=1024 * 1024, time_budget=1.0))
BOUNDED = {"OutputTooLarge", "RenderBudgetExceeded"}
NS = "{% set ns = namespace(s='x', l=[1], d={}, a=[1]) %}"


@pytest.fixture(scope="module")
def sandbox() -> Iterator[TemplateSandbox]:
    with TemplateSandbox(LIMITS) as child:
        yield child


def refused(sandbox: TemplateSandbox, body: str, data: dict[str, object] | None = None
            ) -> TemplateError:
    source = TemplateSource(name="hostile", subject="s", html=body, sample_data=data or {})
    started = time.monotonic()
    with pytest.raises(TemplateError) as caught:
        sandbox.compile(source)
    elapsed = time.monotonic() - started
    assert caught.value.reason in BOUNDED, caught.value
    assert "out of memory" not in caught.value.message  # the sandbox's bound, not the rlimit's
    # Stopped by its own bound, well before the child's wall-clock kill.
    assert elapsed < LIMITS.render.time_budget + 3, elapsed
    return caught.value


#: One argument sets the size of the result: refused before it is built.
WIDTHS = [
    "{{ 'x'|center(999999999) }}",
    "{{ 'x'.center(999999999) }}",
    "{{ 'x'.ljust(999999999) }}",
    "{{ 'x'.rjust(999999999, '-') }}",
    "{{ '7'.zfill(999999999) }}",
    "{{ '%999999999s'|format(1) }}",
    "{{ '%.999999999f'|format(1.5) }}",
    "{{ '%*d'|format(999999999, 1) }}",
    "{{ '%(a)999999999s'|format(a=1) }}",
    "{{ '%999999999s' % 'x' }}",
    "{{ '%-999999999d' % (1,) }}",
    "{{ '{:>999999999}'.format('x') }}",
    "{{ '{:>{w}}'.format('x', w=999999999) }}",
    "{{ '{0:{1}}'.format('x', 999999999) }}",
    "{{ '{a:^999999999}'.format_map({'a': 1}) }}",
    "{{ 'x'|indent(999999999) }}",
    "{{ ('a\\n' * 100000)|indent(500) }}",
    "{{ ('a ' * 100000)|wordwrap(1, wrapstring='<br>' * 100) }}",
    "{{ ('x' * 100000)|replace('x', 'y' * 1000) }}",
    "{{ ('x' * 1000).replace('', 'y' * 10000) }}",
    "{{ ('x' * 100000)|truncate(10, end='e' * 2000000) }}",
    "{{ range(10)|batch(999999999, 'x')|list }}",
    "{{ range(10)|slice(999999999)|list }}",
    "{{ lipsum(100000) }}",
    "{{ 'x' * 100000000 }}",
    "{{ [1] * 10000000 }}",
    "{{ (1,) * 10000000 }}",
]

#: A value grows step by step (doubling, or linearly in a long loop).
GROWTH = [
    NS + "{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}",
    NS + "{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s|length }}",
    NS + "{% for i in range(64) %}{% set ns.s = [ns.s, ns.s]|join %}{% endfor %}",
    NS + "{% for i in range(64) %}{% set ns.s = '%s%s' % (ns.s, ns.s) %}{% endfor %}",
    NS + "{% for i in range(64) %}{% set ns.s = '{}{}'.format(ns.s, ns.s) %}{% endfor %}",
    NS + "{% for i in range(64) %}{% set ns.s = ns.s|center(ns.s|length * 2) %}{% endfor %}",
    NS + "{% for i in range(64) %}{% set ns.s = ns.s|replace('x', 'xx') %}{% endfor %}",
    NS + "{% for i in range(100000) %}{% set ns.s = ns.s ~ ('y' * 1000) %}{% endfor %}",
    NS + "{% for i in range(64) %}{% set ns.l = ns.l + ns.l %}{% endfor %}{{ ns.l|length }}",
    NS + "{% for i in range(64) %}{% set ns.l = ns.l * 2 %}{% endfor %}",
    NS + "{% for i in range(100000) %}{% set ns.l = ns.l + ['item %d' % i] %}{% endfor %}",
    NS + "{% for i in range(64) %}{% set ns.a = [ns.a, ns.a] %}{% endfor %}{{ ns.a == ns.a }}",
    NS + "{% for i in range(64) %}{% set ns.a = (ns.a, ns.a) %}{% endfor %}{{ ns.a|tojson }}",
    NS + "{% for i in range(64) %}{% set ns.a = {'l': ns.a, 'r': ns.a} %}{% endfor %}",
    NS + "{% for i in range(64) %}{% set ns.a = dict(l=ns.a, r=ns.a) %}{% endfor %}",
    NS + "{% for i in range(64) %}{% set ns.a = namespace(l=ns.a, r=ns.a) %}{% endfor %}",
    NS + "{% for i in range(100000) %}{% set ns.d = dict(ns.d, **{'k%d' % i: i}) %}"
         "{% endfor %}",
    NS + "{% for i in range(64) %}{% set ns.a = [ns.a, ns.a]|list %}{% endfor %}",
    "{{ ([[1] * 1000] * 1000)|sum(start=[]) }}",
    "{{ ([[1] * 300] * 300)|sum(start=[])|length }}",
    "{{ range(1000)|map('string')|map('list')|sum(start=[])|length }}",
    # Lazy filters feeding a collector: each item is charged as it comes.
    "{{ range(100000)|map('string')|map('center', 8000)|list|length }}",
    "{{ range(100000)|map('string')|map('center', 8000)|join|length }}",
    "{{ range(100000)|map('string')|map('center', 8000)|sort|first }}",
    "{{ range(100000)|map('string')|map('center', 8000)|select|list|length }}",
    "{{ ''.join(range(100000)|map('string')|map('center', 8000)) }}",
    "{{ range(100000)|map('string')|map('center', 8000)|unique|list|length }}",
    "{{ ('a' * 200000)|wordwrap(1) }}",
    "{{ range(100000)|map('string')|join(',' * 100000) }}",
    "{{ (',' * 100000).join(range(100000)|map('string')) }}",
    "{{ ('x' * 9000).join({'a': 1, 'b': 2}.keys()|list * 100) }}",
    "{{ ('http://a.io ' * 20000)|urlize(target='_' * 100000) }}",
    "{{ ('http://a.io ' * 20000)|urlize(rel='x' * 100000) }}",
    "{{ (['x' * 100000] * 100)|join(',') }}",
    "{{ ','.join(['x' * 100000] * 100) }}",
]

#: Output piles up (loops printing, blocks and macros collecting).
OUTPUT = [
    "{% for i in range(100000) %}<p>{{ 'row %d' % i }} with some padding text</p>{% endfor %}",
    "{% for i in range(2000) %}{% for j in range(400) %}<td>cell</td>{% endfor %}{% endfor %}",
    "{% macro m() %}{% for i in range(100000) %}xxxxxxxxxxxxxxxxxxxxxxxx{% endfor %}"
    "{% endmacro %}{{ m()|length }}",
    "{% set b %}{% for i in range(100000) %}xxxxxxxxxxxxxxxxxxxxxxxx{% endfor %}{% endset %}"
    "{{ b|length }}",
    "{% filter upper %}{% for i in range(100000) %}xxxxxxxxxxxxxxxxxxxxxxx{% endfor %}"
    "{% endfilter %}",
    "{% for i in range(1000) %}{{ 'y' * 99999 }}{% endfor %}",
    "{% for item in items %}{% for again in items %}{{ item }}{{ again }}{% endfor %}"
    "{% endfor %}",
]

#: Bounded in size and steps, but minutes of work.
SLOW = ("{% set s = 'x' * 900000 %}{% for a in range(900) %}{% for b in range(900) %}"
        "{% set x = s.count('y') %}{% endfor %}{% endfor %}")

#: Time: loops and recursion that would run for minutes or forever.
TIME = [
    "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
    "{% for a in range(100000) %}{% for b in range(100000) %}{% set x = a %}{% endfor %}"
    "{% endfor %}",
    "{% for a in range(900) %}{% for b in range(900) %}{% set x = ('x' * 200000)|upper %}"
    "{% endfor %}{% endfor %}",
    "{% for a in items %}{% for b in items %}{% for c in items %}{% set x = a ~ b ~ c %}"
    "{% endfor %}{% endfor %}{% endfor %}",
    "{% for a in range(1000) %}{% for b in range(1000) %}{{ '' }}{% endfor %}{% endfor %}",
    SLOW,
    "{% for x in range(100000) recursive %}{% if loop.depth < 3 %}{{ loop(range(100000)) }}"
    "{% endif %}{% endfor %}",
]


@pytest.mark.parametrize("body", WIDTHS)
def test_a_size_set_by_an_argument_is_refused_before_it_is_built(
        sandbox: TemplateSandbox, body: str) -> None:
    error = refused(sandbox, body)
    assert error.reason == "OutputTooLarge"


@pytest.mark.parametrize("body", GROWTH)
def test_values_grown_step_by_step_are_stopped(sandbox: TemplateSandbox, body: str) -> None:
    refused(sandbox, body)


@pytest.mark.parametrize("body", OUTPUT)
def test_rendered_output_is_bounded(sandbox: TemplateSandbox, body: str) -> None:
    refused(sandbox, body, {"items": [f"item-{i:05d}" for i in range(3000)]})


@pytest.mark.parametrize("body", TIME)
def test_runaway_renders_are_stopped_by_the_budget(sandbox: TemplateSandbox, body: str) -> None:
    error = refused(sandbox, body, {"items": [str(i) for i in range(400)]})
    assert error.reason == "RenderBudgetExceeded"
    assert "render budget exceeded" in error.message


def test_the_child_still_serves_after_refusals(sandbox: TemplateSandbox) -> None:
    source = TemplateSource(name="ok", subject="Hi {{ n }}", html="<b>{{ n }}</b>")
    rendered = sandbox.render(source, {"n": "Ada"})
    assert rendered.subject == "Hi Ada" and "<b>Ada</b>" in rendered.html


def test_ordinary_templates_are_untouched() -> None:
    body = ("{% for item in items %}{{ item.name|upper|center(12) }} {{ '%.2f'|format(item.p) }}"
            "{{ loop.index }}{% endfor %}{{ items|map(attribute='name')|join(', ') }}"
            "{{ '{:>6}'.format(total) }}{{ (items|list + [1])|length }}"
            "{{ 'a-b'.replace('-', '+') }}"
            "{% set ns = namespace(t='') %}{% for i in items %}{% set ns.t = ns.t ~ i.name %}"
            "{% endfor %}{{ ns.t }}{{ {'a': [1, 2]}|tojson }}")
    compiled = CompiledTemplate(TemplateSource(name="ok", subject="s", html=body))
    html = compiled.render({"items": [{"name": "pen", "p": 1.5}, {"name": "ink", "p": 2}],
                            "total": 3.5}).html
    assert "    PEN     " in html and "1.50" in html and "pen, ink" in html
    assert "   3.5" in html and "3a+b" in html and "penink" in html


def test_a_worker_render_fails_permanently_with_a_clear_reason(sandbox: TemplateSandbox) -> None:
    """The worker renders in-process: the same budget stops it, as a TemplateError."""
    source = TemplateSource(name="slow", subject="s", html=SLOW)
    started = time.monotonic()
    with pytest.raises(TemplateError) as caught:
        sandbox.render(source, {"items": list(range(300))})
    assert caught.value.reason == "RenderBudgetExceeded"
    assert "render budget exceeded" in str(caught.value)
    assert time.monotonic() - started < LIMITS.render.time_budget + 2


def test_limits_are_configurable() -> None:
    compiled = CompiledTemplate(TemplateSource(name="t", subject="s", html="{{ 'x' * n }}"))
    assert len(compiled.render({"n": 5000}).html) == 5000
    with pytest.raises(TemplateError) as caught:
        compiled.render({"n": 5000}, limits=RenderLimits(max_bytes=4096))
    assert caught.value.reason == "OutputTooLarge"


@pytest.mark.parametrize("mjml", [
    "<mj-section>" * 3000 + "</mj-section>" * 3000,
    "<mj-wrapper>" * 2000 + "</mj-wrapper>" * 2000,
    "<mj-raw>" + "<div>" * 20000 + "</div>" * 20000 + "</mj-raw>",
    "<mj-section><mj-column><mj-text>" + "<b>" * 20000 + "x" + "</b>" * 20000
    + "</mj-text></mj-column></mj-section>",
    "<mj-foo>" * 5000,  # never closed
    "<mj-section>" + "<mj-column>" * (MAX_MJML_DEPTH + 1),
])
def test_deep_mjml_is_refused_before_the_compiler_sees_it(mjml: str) -> None:
    with pytest.raises(TemplateError) as caught:
        check_mjml_shape(f"<mjml><mj-body>{mjml}</mj-body></mjml>")
    assert caught.value.reason == "MJMLTooDeep"


def test_huge_mjml_is_refused() -> None:
    with pytest.raises(TemplateError) as caught:
        check_mjml_shape("<mjml><mj-body>" + "<mj-text>x</mj-text>" * 40000 + "</mj-body></mjml>")
    assert caught.value.reason == "MJMLTooLarge"


@pytest.mark.parametrize(("kill", "reason", "said"), [
    (signal.SIGSEGV, "CompilerCrashed", "SIGSEGV"),  # a crash
    (signal.SIGXCPU, "RenderBudgetExceeded", "CPU time"),  # RLIMIT_CPU reached
])
def test_a_killed_child_is_reported_and_replaced(kill: signal.Signals, reason: str,
                                                 said: str) -> None:
    slow = TemplateSource(name="slow", subject="s", html=SLOW)
    limits = ProcessLimits(memory_mb=512, timeout=20, render=RenderLimits(time_budget=15))
    with TemplateSandbox(limits) as sandbox:
        sandbox.compile(TemplateSource(name="ok", subject="s", html="ok"))  # warm
        child = sandbox._child
        assert child is not None
        killer = threading.Timer(0.3, os.kill, (child.process.pid, kill))
        killer.start()
        with pytest.raises(TemplateError) as caught:
            sandbox.compile(slow)
        killer.join()
        assert caught.value.reason == reason
        assert said in caught.value.message
        sandbox.compile(TemplateSource(name="ok", subject="s", html="ok"))  # a fresh child


def test_the_cpu_allowance_counts_from_the_cpu_already_used() -> None:
    """A child that has used 0.7 s still gets a whole second more (the limit is whole seconds,
    so the time used must be rounded up, not down)."""
    probe = textwrap.dedent("""
        import resource, time
        from mailcore.sandbox_process import _cpu_allowance
        end = time.process_time() + 0.7
        while time.process_time() < end:
            pass
        _cpu_allowance(1)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        soft = resource.getrlimit(resource.RLIMIT_CPU)[0]
        print(soft - (usage.ru_utime + usage.ru_stime))
    """)
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=60, cwd=Path(__file__).resolve().parents[1], check=True)
    assert float(done.stdout) >= 1.0


def test_a_runaway_child_is_killed_at_the_wall_clock_deadline() -> None:
    slow = TemplateSource(name="slow", subject="s", html=SLOW)
    limits = ProcessLimits(memory_mb=512, timeout=0.5, render=RenderLimits(time_budget=60))
    with TemplateSandbox(limits) as sandbox:
        sandbox.compile(TemplateSource(name="ok", subject="s", html="ok"))  # warm
        child = sandbox._child
        assert child is not None
        started = time.monotonic()
        with pytest.raises(TemplateError) as caught:
            sandbox.compile(slow)
        assert time.monotonic() - started < 3
        assert caught.value.reason == "RenderBudgetExceeded"
        assert child.process.poll() is not None  # really stopped, not left running


def test_the_childs_memory_limit_holds_even_with_the_sandbox_bounds_lifted() -> None:
    lifted = RenderLimits(max_bytes=2**31, allocation_factor=4)
    hog = TemplateSource(name="hog", subject="s", html="{{ ('x' * 200000000)|length }}")
    with TemplateSandbox(ProcessLimits(memory_mb=128, timeout=10, render=lifted)) as sandbox:
        with pytest.raises(TemplateError) as caught:
            sandbox.compile(hog)
        assert caught.value.reason in {"RenderBudgetExceeded", "CompilerCrashed"}
        assert "memory" in caught.value.message
        sandbox.compile(TemplateSource(name="ok", subject="s", html="ok"))  # still serving



@pytest.mark.parametrize("body", [
    "{{ ('{x' ~ code ~ '}').format_map({}) }}",  # KeyError: 'x<code>'
    "{{ ('{x' ~ order.ref ~ '}').format(1) }}",
    "{% set d = {} %}{{ ('%(' ~ code ~ ')s') % d }}",
])
def test_render_errors_never_quote_the_data(body: str) -> None:
    compiled = CompiledTemplate(TemplateSource(name="t", subject="s", html=body))
    with pytest.raises(TemplateError) as caught:
        compiled.render({"code": "739201", "order": {"ref": "REF-SECRET-77"}})
    assert caught.value.reason == "RenderError"
    assert "739201" not in str(caught.value) and "REF-SECRET-77" not in str(caught.value)


@pytest.mark.parametrize("body", [
    "<a" * 200_000, '<a "' * 100_000, "<a '" * 100_000, "<!--" * 100_000,
    "<![CDATA[" * 50_000, '<a x="' * 80_000, "<mj-text>x</mj-text>" * 20_000,
])
def test_the_mjml_shape_check_is_linear_on_hostile_input(body: str) -> None:
    started = time.monotonic()
    try:
        check_mjml_shape(f"<mjml><mj-body>{body}</mj-body></mjml>")
    except TemplateError as error:
        assert error.reason in {"MJMLTooDeep", "MJMLTooLarge"}
    assert time.monotonic() - started < 1.0


def test_sample_data_from_yaml_dates_reaches_the_child(sandbox: TemplateSandbox) -> None:
    import datetime

    source = TemplateSource(name="dated", subject="s", html="<p>{{ day }}</p>",
                            sample_data={"day": datetime.date(2026, 11, 30)})
    sandbox.compile(source)
    assert "2026-11-30" in sandbox.render(source, source.sample_data).html


@pytest.mark.parametrize("body", [
    "{{ ('\\t' * 1000).expandtabs(999999) }}",
    "{{ ('a' * 1000).translate({97: 'x' * 100000}) }}",
    "{{ 'a'.encode('utf-32') }}",
    "{{ ''.maketrans('a', 'b') }}",
    "{{ 'x'|attr('expandtabs') }}",
])
def test_string_methods_outside_the_allow_list_are_refused(body: str) -> None:
    """Called, they raise; merely printed, they are an empty undefined value."""
    compiled = CompiledTemplate(TemplateSource(name="t", subject="s", html=body))
    try:
        html = compiled.render({}).html
    except TemplateError as error:
        assert error.reason == "RenderError"
        assert "sandbox" in error.message or "unsafe" in error.message
    else:
        assert html.strip() == ""
