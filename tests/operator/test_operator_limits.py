"""The operator against templates that crash or exhaust the compiler: each is refused with its
own reason, the operator stays up and keeps reconciling the rest.

This module lifts the MJML depth check (``MJML_MAX_DEPTH``) so that the compiler really
overflows its stack (SIGSEGV): it must kill only the sandbox child, never the operator.
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from ..support import RedisServer
from .conftest import Cluster, Operator, wait_ready
from .test_operator import store, template

pytestmark = pytest.mark.slow

SAMPLE_SECRET = "OPERATOR-SAMPLE-SECRET-8086"


@pytest.fixture(scope="module")
def operator_overrides() -> dict[str, str]:
    # A regressed bound costs the operator's child its memory limit, never the CI machine's.
    return {"MJML_MAX_DEPTH": "100000", "RENDER_TIME_BUDGET_SECONDS": "1",
            "OPERATOR_RENDER_TIMEOUT_SECONDS": "20", "COMPILE_MEMORY_LIMIT_MB": "512"}


def deep(levels: int) -> str:
    return ("<mjml><mj-body>" + "<mj-section>" * levels + "</mj-section>" * levels
            + "</mj-body></mjml>")


@pytest.mark.parametrize(("spec", "reason"), [
    ({"mjml": deep(3000), "html": None}, "CompilerCrashed"),
    ({"mjml": "<mjml><mj-body>" + "<mj-text>x</mj-text>" * 40000 + "</mj-body></mjml>",
      "html": None}, "MJMLTooLarge"),
    ({"html": "{% set s = 'x' * 900000 %}{% for a in range(900) %}{% for b in range(900) %}"
              "{% set x = s.count(code) %}{% endfor %}{% endfor %}"}, "RenderBudgetExceeded"),
    ({"html": "{% set ns = namespace(s=code) %}{% for i in range(64) %}"
              "{% set ns.s = ns.s ~ ns.s %}{% endfor %}"}, "OutputTooLarge"),
    ({"html": "{{ code.center(999999999) }}"}, "OutputTooLarge"),
])
def test_each_bound_is_a_reason_and_the_operator_stays_up(
    cluster: Cluster, operator: Operator, store_redis: RedisServer, spec: dict[str, Any],
    reason: str,
) -> None:
    name = f"hostile-{uuid.uuid4().hex[:6]}"
    cluster.create(template(name, sampleData={"code": SAMPLE_SECRET}, **spec))
    condition = wait_ready(cluster, "team-a", name, status="False", generation=1, reason=reason,
                           timeout=40)
    assert condition["message"] and SAMPLE_SECRET not in condition["message"]
    assert store(store_redis).get(f"team-a/{name}") is None
    # Still up, still serving: liveness answers and a good template becomes Ready.
    assert operator.process.process is not None and operator.process.process.poll() is None
    assert httpx.get(operator.liveness, timeout=5).status_code == 200
    good = f"good-{uuid.uuid4().hex[:6]}"
    cluster.create(template(good))
    wait_ready(cluster, "team-a", good, status="True", generation=1, reason="Compiled")
    assert SAMPLE_SECRET not in operator.output()
