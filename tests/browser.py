"""A real headless Chromium for tests (Debian's ``chromium``), driven by Playwright.

One browser per test module (the ``browser`` fixture in conftest.py); each test opens its own
context (``new_page``), so cookies and storage never leak between tests. Playwright's own
browser downloads are never used: we launch the system binary.

Fonts are deterministic, so screenshots depend on the layout and not on the machine's fonts:
when DejaVu (``fonts-dejavu-core``) is installed, Chromium gets a private fontconfig that
knows only DejaVu Sans, gives it for every family a page names (Helvetica, Arial,
sans-serif, ...), and renders glyphs unhinted in greyscale.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from playwright.sync_api import Browser

#: Flags that let Chromium run here (as root, no GPU, no network chatter of its own). Playwright
#: adds --headless and a fresh --user-data-dir (a temporary profile) for every launch.
CHROMIUM_FLAGS = (
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    # The same pixels on every machine: greyscale text, no hinting, sRGB.
    "--disable-lcd-text", "--font-render-hinting=none", "--force-color-profile=srgb",
)
#: The one font family pages are rendered with (Debian's fonts-dejavu-core).
DEJAVU = Path("/usr/share/fonts/truetype/dejavu")
_FONTCONFIG = """<?xml version="1.0"?>
<!DOCTYPE fontconfig SYSTEM "fonts.dtd">
<fontconfig>
  <dir>{fonts}</dir>
  <cachedir>{cache}</cachedir>
  <match target="pattern">
    <edit name="family" mode="assign" binding="strong"><string>DejaVu Sans</string></edit>
  </match>
  <match target="font">
    <edit name="antialias" mode="assign"><bool>true</bool></edit>
    <edit name="hinting" mode="assign"><bool>false</bool></edit>
    <edit name="rgba" mode="assign"><const>none</const></edit>
  </match>
</fontconfig>
"""


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


def fixed_fonts() -> bool:
    """Whether the browser renders with the fixed font set (DejaVu is installed)."""
    return (DEJAVU / "DejaVuSans.ttf").is_file()


@contextmanager
def launch_chromium() -> Iterator[Browser]:
    """A headless Chromium, closed (and its driver stopped) on exit."""
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    assert executable is not None, why_no_browser()
    with tempfile.TemporaryDirectory(prefix="fontconfig-") as folder:
        env: dict[str, str | float | bool] = dict(os.environ)
        if fixed_fonts():
            config = Path(folder) / "fonts.conf"
            config.write_text(_FONTCONFIG.format(fonts=DEJAVU, cache=Path(folder) / "cache"),
                              encoding="utf-8")
            env["FONTCONFIG_FILE"] = str(config)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=executable, headless=True,
                                                 args=list(CHROMIUM_FLAGS), env=env,
                                                 timeout=30_000)
            try:
                yield browser
            finally:
                browser.close()
