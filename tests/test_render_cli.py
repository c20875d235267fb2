"""``email-service render`` on EmailTemplate YAML files: the real command, as a reviewer runs it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .browser import chromium_path
from .support import REPO

EXAMPLE = REPO / "examples" / "emailtemplates" / "order-shipped.yaml"
COMMAND = [sys.executable, "-m", "email_service.cli"]


def render(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*COMMAND, "render", *map(str, args)], capture_output=True,
                          text=True, timeout=60, cwd=REPO,
                          env={"PATH": "/usr/bin:/bin", "SECRETS_DIR": "/nonexistent",
                               "PYTHONPATH": str(REPO)})


def test_a_resource_with_its_layout_and_locale(tmp_path: Path) -> None:
    out = tmp_path / "preview.html"
    result = render(EXAMPLE, "--locale", "de-AT", "--out", out)
    assert result.returncode == 0, result.stderr
    html = out.read_text()
    assert "Gute Nachrichten, Jürgen!" in html  # the locale's own sample data
    assert "Sendung verfolgen" in html and "example.com" in html  # the layout's partial
    subject = render(EXAMPLE, "--part", "subject", "--locale", "en-GB")
    assert subject.stdout.strip() == "Your order A-1042 is on its way"
    subject = render(EXAMPLE, "--part", "subject")  # no locale: the fallback, German
    assert subject.stdout.strip() == "Ihre Bestellung A-1042 ist unterwegs"
    data = tmp_path / "data.json"
    data.write_text(json.dumps({"order_id": "Z-9", "customer": {"first_name": "Zoë"},
                                "carrier": "UPS", "items": [{"name": "Mug", "quantity": 1}],
                                "tracking_url": "https://t.example/Z-9"}))
    result = render(EXAMPLE, "--locale", "fr", "--data", data, "--part", "subject")
    assert result.stdout.strip() == "Ihre Bestellung Z-9 ist unterwegs"  # fallback: German


def broken(tmp_path: Path, spec: str, name: str = "broken.yaml") -> Path:
    path = tmp_path / name
    path.write_text("apiVersion: email.platform.example.com/v1\nkind: EmailTemplate\n"
                    f"metadata: {{name: broken}}\nspec:\n{spec}")
    return path


@pytest.mark.parametrize(("spec", "expected"), [
    ("  subject: x\n  mjml: |\n    <mjml>\n    <mj-body>\n    <mj-section>\n    </mj-body>\n"
     "    </mjml>\n", "InvalidMJML: "),
    ("  subject: x\n  layout: nowhere\n  mjml: <mj-section></mj-section>\n",
     "MissingReference: layout 'nowhere' is not stored in namespace default"),
    ("  subject: x\n  html: '{% include \"../../etc/passwd\" %}'\n",
     "InvalidTemplate: spec.html: include: '../../etc/passwd' is not a resource name"),
    ("  subject: '{{ x'\n  html: <p>x</p>\n", "RenderError: "),
    ("  subject: x\n  html: <p>x</p>\n  locales: [{locale: 'dé', subject: y}]\n",
     "InvalidTemplate: spec.locales: a locale is ASCII"),
])
def test_errors_are_one_line(tmp_path: Path, spec: str, expected: str) -> None:
    result = render(broken(tmp_path, spec))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("email-service: ") and expected in lines[0], lines[0]


def test_usage_errors_are_one_line(tmp_path: Path) -> None:
    good = broken(tmp_path, "  subject: x\n  html: <p>{{ a }}</p>\n", "good.yaml")
    not_yaml = tmp_path / "bad.yaml"
    not_yaml.write_text("spec: [unclosed\n")
    two = tmp_path / "two.yaml"
    two.write_text(good.read_text() + "\n---\n" + good.read_text().replace("broken", "other"))
    data = tmp_path / "data.json"
    data.write_text("[1, 2]")
    for args, expected in (
        ((tmp_path / "missing.yaml",), "No such file"),
        ((not_yaml,), "not valid YAML"),
        ((two,), "2 EmailTemplates (broken, other): say which with --name"),
        ((two, "--name", "third"), "no EmailTemplate named 'third'"),
        ((good, "--locale", "../../x"), "InvalidLocale: "),
        ((good, "--locale", "x" * 5000), "InvalidLocale: a locale is at most 35 characters"),
        ((good, "--data", tmp_path / "nope.json"), "InvalidData: cannot read --data"),
        ((good, "--data", data), "InvalidData: --data must hold a JSON object"),
    ):
        result = render(*args)
        lines = result.stderr.strip().splitlines()
        assert result.returncode != 0 and len(lines) == 1, result.stderr
        assert expected in lines[0], lines[0]
    assert render(two, "--name", "other", "--part", "subject").stdout.strip() == "x"


@pytest.mark.skipif(chromium_path() is None and shutil.which("chromium") is None,
                    reason="no Chromium here")
def test_png_screenshot(tmp_path: Path) -> None:
    png = tmp_path / "preview.png"
    result = render(EXAMPLE, "--out", tmp_path / "p.html", "--png", png)
    assert result.returncode == 0, result.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_png_without_chromium_is_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [*COMMAND, "render", str(EXAMPLE), "--out", str(tmp_path / "p.html"), "--png",
         str(tmp_path / "p.png")], capture_output=True, text=True, timeout=60, cwd=REPO,
        env={"PATH": str(tmp_path), "SECRETS_DIR": "/nonexistent", "PYTHONPATH": str(REPO)})
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "email-service: Screenshot: --png needs a Chromium (chromium, chromium-browser or "
        "google-chrome on the PATH, or --chromium PATH)"]
