"""Shared fixtures: one real redis-server and SMTP server per session, service stacks per module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser

from .browser import launch_chromium, why_no_browser
from .support import TEST_SECRET, RedisServer, ServiceStack, SMTPServer, base_env

SHARED = Path(__file__).resolve().parent.parent.parent / "shared"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--update-screenshots", action="store_true", default=False,
                     help="rewrite tests/screenshots/*.png from this run (review them after)")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the fault-injection table when the fault scenarios ran."""
    from .test_faults import FAULT_TABLE

    if not FAULT_TABLE:
        return
    # Every column any scenario filled (the Sentinel ones add records lost and failover time).
    columns = list(dict.fromkeys(column for row in FAULT_TABLE for column in row))
    terminalreporter.section("fault injection: accepted vs delivered")
    terminalreporter.write_line("  ".join(f"{c:>18}" for c in columns))
    for row in FAULT_TABLE:
        terminalreporter.write_line("  ".join(f"{row.get(c, '')!s:>18}" for c in columns))


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def smtp_server() -> Iterator[SMTPServer]:
    server = SMTPServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One headless Chromium per test module (tests/browser.py); each test opens its own page
    with ``browser.new_page()`` and closes it.

    Not per session: while Playwright's sync API is active it keeps an asyncio loop running in
    the main thread, so every later test calling ``asyncio.run`` would fail."""
    reason = why_no_browser()
    if reason is not None:
        pytest.skip(reason)
    with launch_chromium() as chromium:
        yield chromium


@pytest.fixture
def secret() -> str:
    return TEST_SECRET


#: The module-wide stack's type, for annotations in tests.
Stack = ServiceStack


@pytest.fixture(scope="module")
def stack(
    redis_server: RedisServer, smtp_server: SMTPServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceStack]:
    """An ingress and a worker against the session's Redis and SMTP server."""
    env = base_env(redis_server.url, smtp_server.port)
    with ServiceStack(env, tmp_path_factory.mktemp("stack-logs")) as stack:
        yield stack
