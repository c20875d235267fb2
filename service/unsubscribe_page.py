"""One-click unsubscribe endpoints (RFC 8058): ``GET`` and ``POST /u/{token}``, no login.

``GET`` only shows a page with a button (a form that POSTs): mail scanners and link previews
fetch links, so nothing changes on ``GET``. ``POST`` (the recipient's button, or the mail
client's one-click ``List-Unsubscribe=One-Click`` request) adds an ``unsubscribe`` suppression
for the token's address and scope and appends the ``unsubscribed`` lifecycle event, in one Redis
transaction. Posting again is harmless (the entry is written again). Every bad token gets the
same 404 page, whatever is wrong with it.
"""

from __future__ import annotations

import html

from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

from mailcore import lifecycle
from mailcore.config import Settings
from mailcore.suppressions import Suppression, add_to
from mailcore.unsubscribe import Unsubscribe, verify_token

#: The page is self-contained: no script, no external resource, forms only to this origin.
_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "Referrer-Policy": "no-referrer",  # the token is in the URL
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
}

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex">
<title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; background: #f4f5f7; color: #1f2328; margin: 0; }}
main {{ max-width: 28rem; margin: 4rem auto; background: #fff; padding: 2rem;
        border-radius: 8px; box-shadow: 0 1px 3px rgba(0,0,0,.12); }}
h1 {{ font-size: 1.4rem; margin-top: 0; }}
button {{ font-size: 1rem; padding: .6rem 1.2rem; border: 0; border-radius: 6px;
          background: #1f6feb; color: #fff; cursor: pointer; }}
</style></head>
<body><main>
<h1>{title}</h1>
{body}
</main></body></html>
"""


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(_PAGE.format(title=html.escape(title), body=body), status_code=status,
                        headers=_HEADERS)


def masked(address: str) -> str:
    """``a***@example.com``: enough for the recipient to recognise, little for anyone else."""
    local, _, domain = address.rpartition("@")
    return f"{local[:1]}***@{domain}"


def _what(unsubscribe: Unsubscribe) -> str:
    kind = "all email" if unsubscribe.scope == "global" else f"{unsubscribe.scope} email"
    return f"{kind} to {masked(unsubscribe.address)}"


def _not_valid() -> HTMLResponse:
    return _page("Link not valid", "<p>This unsubscribe link is not valid. If you copied it, "
                 "check that it is complete.</p>", status=404)


def _verify(request: Request) -> Unsubscribe | None:
    settings: Settings = request.app.state.send_service.settings
    return verify_token(settings.suppressions.unsubscribe_secrets,
                        request.path_params["token"])


async def confirm_page(request: Request) -> HTMLResponse:
    found = _verify(request)
    if found is None:
        return _not_valid()
    # Relative to this page (a verified token holds no '/' or ':'): the button posts where the
    # link pointed, also behind a path prefix (PUBLIC_BASE_URL https://host/mail), where a bare
    # "/u/…" would post to the host's root.
    action = html.escape(f"./{request.path_params['token']}", quote=True)
    return _page("Unsubscribe?", f"""<p>Stop sending {html.escape(_what(found))}?</p>
<form method="post" action="{action}">
<input type="hidden" name="List-Unsubscribe" value="One-Click">
<button type="submit">Unsubscribe</button>
</form>""")


async def unsubscribe(request: Request) -> HTMLResponse:
    found = _verify(request)
    if found is None:
        return _not_valid()
    settings: Settings = request.app.state.send_service.settings
    prefix = settings.redis.key_prefix
    entry = Suppression(address=found.address, reason="unsubscribe", scope=found.scope,
                        source_message_id=found.message_id)
    async with request.app.state.redis.pipeline(transaction=True) as pipe:
        add_to(pipe, prefix, entry)
        if settings.webhooks.enabled:
            lifecycle.emit(pipe, prefix, lifecycle.lifecycle_event(
                lifecycle.UNSUBSCRIBED, found.message_id, recipient=found.address,
                stream=None if found.scope == "global" else found.scope, scope=found.scope))
        await pipe.execute()
    return _page("Unsubscribed", f"<p>Done: no more {html.escape(_what(found))}.</p>")


def unsubscribe_routes() -> list[Route]:
    return [Route("/u/{token}", confirm_page, methods=["GET"]),
            Route("/u/{token}", unsubscribe, methods=["POST"])]
