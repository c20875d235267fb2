"""Every built-in email, rendered by the real render path and shown in headless Chromium at a
phone's width (375 px) and a desktop client's (800 px), compared with reviewed screenshots.

The references are ``tests/screenshots/<case>-<width>.png``. After a deliberate change to a
template, regenerate them and look at every one before committing::

    .venv/bin/pytest tests/test_screenshots.py --update-screenshots

A comparison tolerates font anti-aliasing noise (both images get a 3x3 blur, a pixel then
counts as different only past :data:`PIXEL_THRESHOLD` on some channel, and up to
:data:`MAX_DIFFERENT` of the pixels may differ) but not a layout change: a moved block shifts
thousands of pixels, and a page whose height changed fails outright. A failure leaves the
actual screenshot and a diff image in the test's temporary folder, named in the message.
"""

from __future__ import annotations

import copy
import io
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from mailcore.config import Settings
from mailcore.templates import TemplateRegistry, builtin_templates_dir

from .browser import fixed_fonts
from .test_builtin_emails import MINIMAL_ORDER

if TYPE_CHECKING:
    from playwright.sync_api import Browser

REFERENCES = Path(__file__).parent / "screenshots"
WIDTHS = (375, 800)
#: A pixel differs when one of its channels moved by more than this (of 255): anti-aliased
#: glyph edges wobble by less between runs and machines with the same fonts.
PIXEL_THRESHOLD = 48
#: The fraction of pixels allowed to differ.
MAX_DIFFERENT = 0.002

REGISTRY = TemplateRegistry.from_dir(builtin_templates_dir())
BRAND = asdict(Settings.from_env({"SECRETS_DIR": "/nonexistent"}).brand)


def _cases() -> dict[str, tuple[str, dict[str, Any], str | None]]:
    """Case name -> (template, data, locale): every built-in template with its sample data, in
    its default and each of its locales, and the order with none of its optional fields, in
    German and euros."""
    cases: dict[str, tuple[str, dict[str, Any], str | None]] = {}
    for name in REGISTRY.names():
        template = REGISTRY.get(name)
        assert template is not None
        cases[name] = (name, dict(template.source.sample_data), None)
        for locale in template.locales:
            cases[f"{name}-{locale}"] = (name, dict(template.source.sample_data), locale)
    cases["order_confirmation-minimal-de"] = (
        "order_confirmation", {**copy.deepcopy(MINIMAL_ORDER), "currency": "EUR"}, "de-DE")
    return cases


CASES = _cases()


def screenshot(chromium: Browser, html: str, width: int) -> bytes:
    """The whole page (its own height: the viewport is shorter) at ``width`` CSS pixels
    (scale 1), with every network request refused:
    an email must not depend on what it would fetch, and the test must not wait for it."""
    context = chromium.new_context(viewport={"width": width, "height": 100},
                                  device_scale_factor=1, java_script_enabled=False)
    try:
        page = context.new_page()
        page.route("**/*", lambda route: route.abort())
        page.set_content(html, wait_until="load")
        return bytes(page.screenshot(full_page=True, animations="disabled", caret="hide"))
    finally:
        context.close()


def compare(actual_png: bytes, reference: Path, keep: Path) -> str | None:
    """``None`` when ``actual_png`` matches the reference within the tolerance, else why (the
    actual image and a diff image are left in ``keep``)."""
    from PIL import Image, ImageChops, ImageFilter

    actual = Image.open(io.BytesIO(actual_png)).convert("RGB")
    expected = Image.open(reference).convert("RGB")
    keep.mkdir(parents=True, exist_ok=True)
    (keep / reference.name).write_bytes(actual_png)
    if actual.size != expected.size:
        return (f"{reference.name}: the page is {actual.size[0]}x{actual.size[1]} px, the "
                f"reference {expected.size[0]}x{expected.size[1]} "
                f"(actual: {keep / reference.name})")
    # Both slightly blurred first: a glyph edge anti-aliased one way or another moves a pixel
    # by a fraction of its value, and spread over its neighbours it stays under the threshold,
    # while a block that moved still differs. Then, per pixel, the largest channel
    # difference, and the share of pixels past the threshold.
    blur = ImageFilter.BoxBlur(1)
    difference = ImageChops.difference(actual.filter(blur), expected.filter(blur))
    channels = difference.split()
    largest = ImageChops.lighter(ImageChops.lighter(channels[0], channels[1]), channels[2])
    changed = largest.point(lambda value: 255 if value > PIXEL_THRESHOLD else 0)
    histogram = changed.histogram()
    share = histogram[255] / (actual.size[0] * actual.size[1])
    if share <= MAX_DIFFERENT:
        return None
    changed.save(keep / f"diff-{reference.name}")
    return (f"{reference.name}: {share:.2%} of the pixels differ (at most {MAX_DIFFERENT:.2%} "
            f"may); actual: {keep / reference.name}, diff: {keep / ('diff-' + reference.name)}")


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_builtin_email_looks_as_reviewed(browser: Browser, case: str,
                                         width: int, request: pytest.FixtureRequest,
                                         tmp_path: Path) -> None:
    if not fixed_fonts():
        pytest.skip("fonts-dejavu-core is not installed (make install-test-tools)")
    name, data, locale = CASES[case]
    template = REGISTRY.get(name)
    assert template is not None
    html = template.render(data, brand=BRAND, locale=locale).html
    actual = screenshot(browser, html, width)
    reference = REFERENCES / f"{case}-{width}.png"
    if request.config.getoption("--update-screenshots"):
        REFERENCES.mkdir(exist_ok=True)
        reference.write_bytes(actual)
        return
    if not reference.is_file():
        pytest.fail(f"no reference {reference}: run pytest {__file__} --update-screenshots "
                    "and review the images")
    problem = compare(actual, reference, tmp_path)
    assert problem is None, problem


def test_the_comparison_sees_a_moved_block_but_not_noise(tmp_path: Path) -> None:
    # The comparison itself, on synthetic images: anti-aliasing-like noise passes, a block
    # moved by 4 px and a changed height fail.
    from PIL import Image, ImageDraw

    def page(offset: int = 0, height: int = 400, noise: bool = False) -> bytes:
        image = Image.new("RGB", (375, height), "#f3f4f6")
        draw = ImageDraw.Draw(image)
        draw.rectangle((20, 40 + offset, 355, 200 + offset), fill="#ffffff")
        draw.text((40, 60 + offset), "Thank you for your order", fill="#1f2937")
        if noise:  # a few glyph-edge pixels a little lighter
            for x in range(40, 200, 7):
                r, g, b = image.getpixel((x, 65 + offset))  # type: ignore[misc]
                image.putpixel((x, 65 + offset), (min(255, r + 30), min(255, g + 30), b))
        out = io.BytesIO()
        image.save(out, "PNG")
        return out.getvalue()

    reference = tmp_path / "ref.png"
    reference.write_bytes(page())
    assert compare(page(noise=True), reference, tmp_path / "noise") is None
    moved = compare(page(offset=4), reference, tmp_path / "moved")
    assert moved is not None and "of the pixels differ" in moved
    taller = compare(page(height=404), reference, tmp_path / "taller")
    assert taller is not None and "375x404" in taller
