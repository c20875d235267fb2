"""A real headless Chromium for tests (Debian's ``chromium``), driven by Playwright.

One browser per test module (the ``browser`` fixture in conftest.py); each test opens its own
context (``new_page``), so cookies and storage never leak between tests. Playwright's own
browser downloads are never used: we launch the system binary.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from playwright.sync_api import Browser

#: Flags that let Chromium run here (as root, no GPU, no network chatter of its own). Playwright
#: adds --headless and a fresh --user-data-dir (a temporary profile) for every launch.
CHROMIUM_FLAGS = (
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
)


def chromium_path() -> str | None:
    """The system Chromium (``$CHROMIUM`` wins), or ``None`` when none is installed."""
    for candidate in (os.environ.get("CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                      shutil.which("chromium-browser")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def why_no_browser() -> str | None:
    """Why browser tests cannot run here, or ``None`` when they can."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (make install-test-tools)"
    if chromium_path() is None:
        return "no Chromium installed (make install-test-tools: apt-get install chromium)"
    return None


@contextmanager
def launch_chromium() -> Iterator[Browser]:
    """A headless Chromium, closed (and its driver stopped) on exit."""
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    assert executable is not None, why_no_browser()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True,
                                             args=list(CHROMIUM_FLAGS), timeout=30_000)
        try:
            yield browser
        finally:
            browser.close()
