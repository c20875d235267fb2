"""``email-service dev``: from nothing to a caught, rendered email with the printed curl."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from .support import REPO, free_port, wait_for

pytestmark = pytest.mark.slow

HELLO = """apiVersion: email.platform.example.com/v1
kind: EmailTemplate
metadata:
  name: hello
spec:
  subject: "Hello {{ name }}"
  html: "<p>Hello {{ name }}</p>"
"""


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_dev_stack_prints_a_curl_that_produces_an_email_file(tmp_path: Path) -> None:
    outbox = tmp_path / "outbox"
    log = tmp_path / "dev.log"
    resources = tmp_path / "resources"
    resources.mkdir()
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("REDIS_", "SMTP_", "JWT_"))}
    env["PYTHONUNBUFFERED"] = "1"
    with log.open("wb") as out:
        dev = subprocess.Popen(
            [sys.executable, "-m", "email_service", "dev", "--port", str(free_port()),
             "--outbox", str(outbox), "--sync", str(REPO / "templates"), "--sync",
             str(resources)],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        def banner() -> re.Match[str] | None:
            assert dev.poll() is None, log.read_text()
            return re.search(r"(curl -sS -X POST \S+/email-service/send-reset-code.*?\}')",
                             log.read_text(), re.DOTALL)

        match = wait_for(banner, timeout=60, message="the dev banner")
        curl = match.group(1).replace("\\\n", " ")
        result = subprocess.run(["bash", "-c", curl], capture_output=True, text=True, timeout=30)
        assert '"Password reset code sent successfully"' in result.stdout, result
        html = wait_for(lambda: list(outbox.glob("*.html")), message="the caught email")
        assert "123456" in html[0].read_text()
        eml = list(outbox.glob("*.eml"))
        assert len(eml) == 1 and b"Subject:" in eml[0].read_bytes()

        # A new EmailTemplate file is synced into the store and can be sent at once.
        (resources / "hello.yaml").write_text(HELLO)
        found_url = re.search(r"(http://\S+)/email-service/send-reset-code", curl)
        found_token = re.search(r"Bearer (\S+)'", curl)
        assert found_url and found_token, curl
        url, token = found_url.group(1), found_token.group(1)

        def hello_sent() -> bool:
            answer = httpx.post(f"{url}/v1/messages", headers={"Authorization": f"Bearer {token}"},
                                json={"template": "hello", "to": "grace@example.com",
                                      "data": {"name": "Grace"}})
            return answer.status_code == 202

        wait_for(hello_sent, timeout=30, message="the synced template to be usable")
        wait_for(lambda: any("Hello Grace" in p.read_text() for p in outbox.glob("*.html")),
                 message="the email from the synced template")
    finally:
        os.killpg(dev.pid, signal.SIGTERM)
        assert dev.wait(timeout=30) == 0
