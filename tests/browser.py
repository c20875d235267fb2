"""A real headless Chromium for tests: Debian's ``chromium`` driven by playwright's Python driver.

Playwright never downloads a browser here (no ``playwright install``): it launches
``/usr/bin/chromium`` (or ``$CHROMIUM``) with flags that work in containers and CI, in a fresh
profile per session. Tests that need it skip only when no Chromium is installed
(``scripts/install-test-tools.sh`` installs it with apt-get).

Fonts are made deterministic: Chromium gets a private fontconfig that knows only DejaVu
(``fonts-dejavu-core``), maps every family a template can name (Helvetica, Arial, sans-serif,
...) to it, and renders glyphs without hinting or subpixel colour, so screenshots depend on
the layout, not on the fonts of the machine.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

#: Flags Chromium needs in a container without a GPU, a display or a network it should use.
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    # Same pixels on every machine: no LCD text, no font hinting, sRGB.
    "--disable-lcd-text", "--font-render-hinting=none", "--force-color-profile=srgb",
]
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
    """The Chromium to drive: ``$CHROMIUM``, else Debian's ``chromium``."""
    configured = os.environ.get("CHROMIUM")
    if configured:
        return configured
    return shutil.which("chromium") or shutil.which("chromium-browser")


def fontconfig_file(folder: Path) -> Path:
    """A fontconfig that offers DejaVu Sans alone, whatever family a page asks for."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "fonts.conf"
    path.write_text(_FONTCONFIG.format(fonts=DEJAVU, cache=folder / "cache"), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A headless Chromium (a playwright ``Browser``) for the whole session."""
    executable = chromium_path()
    if executable is None:
        pytest.skip("no Chromium installed (scripts/install-test-tools.sh installs it)")
    if not (DEJAVU / "DejaVuSans.ttf").is_file():
        pytest.skip("fonts-dejavu-core is not installed (scripts/install-test-tools.sh)")
    from playwright.sync_api import sync_playwright

    fonts = fontconfig_file(tmp_path_factory.mktemp("fontconfig"))
    env: dict[str, str | float | bool] = {**os.environ, "FONTCONFIG_FILE": str(fonts)}
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS,
                                              env=env)
        try:
            yield launched
        finally:
            launched.close()
