"""``/docs`` in a real headless Chromium: Swagger UI renders our OpenAPI 3.1 document, and
"Try it out" sends an authorised request to a live ingress (uvicorn, a real redis-server)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from mailcore.tokens import mint_token
from service.openapi import openapi_document

from .support import TEST_SECRET, RedisServer, ServiceProcess, SMTPServer, base_env, free_port

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Route

#: Generous for a cold page on a busy 2-core machine; a healthy run takes a fraction of it.
TIMEOUT_MS = 20_000


@pytest.fixture(scope="module")
def ingress(redis_server: RedisServer, smtp_server: SMTPServer,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``email-service api`` alone (nothing needs delivering here): its base URL."""
    port = free_port()
    log = tmp_path_factory.mktemp("docs") / "api.log"
    api = ServiceProcess(["api", "--host", "127.0.0.1", "--port", str(port)],
                         base_env(redis_server.url, smtp_server.port, QUEUE_NAME="docs"),
                         log).start()
    try:
        api.wait_until(lambda: httpx.get(f"http://127.0.0.1:{port}/ready").status_code == 200,
                       message="the ingress to be ready")
        yield f"http://127.0.0.1:{port}"
    finally:
        api.stop()


def test_docs_render_every_operation_and_try_it_out_sends(
    browser: Browser, ingress: str
) -> None:
    from playwright.sync_api import expect

    document = openapi_document()
    # Swagger UI shows the webhooks (what receivers are sent) as operations too.
    operations = sum(len(item) for part in ("paths", "webhooks")
                     for item in document.get(part, {}).values())
    page = browser.new_page()
    # Offline: anything the page asks for outside the ingress is a failure, not a fetch.
    outside: list[str] = []

    def only_the_ingress(route: Route) -> None:
        if route.request.url.startswith(ingress):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    page.route("**/*", only_the_ingress)
    try:
        page.goto(f"{ingress}/docs", timeout=TIMEOUT_MS)
        expect(page.locator(".opblock")).to_have_count(operations, timeout=TIMEOUT_MS)
        expect(page.get_by_text("Unable to render this definition")).to_have_count(0)
        expect(page.locator(".information-container .title")).to_contain_text("email-service")

        # Authorize with a bearer token, as a user would.
        token = mint_token(TEST_SECRET, subject="docs", ttl_seconds=600)
        page.locator(".auth-wrapper .authorize").click()
        dialog = page.locator(".modal-ux")
        dialog.locator("input").fill(token)
        dialog.locator(".auth-btn-wrapper button.authorize").click()
        expect(dialog.locator(".auth-btn-wrapper button.btn-done")).to_be_visible()
        dialog.locator(".auth-btn-wrapper button.btn-done").click()
        expect(dialog).to_have_count(0)

        # POST /v1/messages: Try it out, a body of our own, Execute, and the live 202.
        send = page.locator("#operations-default-send")
        send.locator(".opblock-summary").click()
        send.locator(".try-out__btn").click()
        body = {"template": "password_reset", "to": "ada@example.com",
                "data": {"email": "ada@example.com", "code": "314159"}}
        send.locator("textarea.body-param__text").fill(json.dumps(body))
        send.locator("button.execute").click()
        live = send.locator(".live-responses-table .response")
        expect(live.locator(".response-col_status")).to_have_text("202", timeout=TIMEOUT_MS)
        expect(live.locator(".response-col_description")).to_contain_text('"queued"')
        expect(send.locator(".curl-command")).to_contain_text("Authorization: Bearer")
        assert outside == []
    finally:
        page.close()


def test_docs_assets_are_vendored_swagger_ui_5() -> None:
    from service.docs import ASSETS

    version = (ASSETS / "VERSION").read_text().split()[1]
    assert int(version.split(".")[0]) >= 5, version  # 4.x cannot read OpenAPI 3.1
    assert (ASSETS / "swagger-ui-bundle.js").stat().st_size > 500_000
    assert Path(ASSETS / "LICENSE").read_text().lstrip().startswith("Apache License")
