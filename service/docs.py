"""Interactive API docs at ``/docs``, served from assets shipped with the package (offline)."""

from __future__ import annotations

from pathlib import Path

import swagger_ui_bundle
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

_PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>email-service API</title>
  <link rel="stylesheet" href="/docs/static/swagger-ui.css">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="/docs/static/swagger-ui-bundle.js"></script>
  <script>
    window.ui = SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui",
                                 persistAuthorization: true});
  </script>
</body>
</html>
"""


async def docs_page(request: Request) -> HTMLResponse:
    return HTMLResponse(_PAGE)


def docs_routes() -> list[BaseRoute]:
    assets = Path(swagger_ui_bundle.swagger_ui_path)
    return [
        Route("/docs", docs_page, methods=["GET"]),
        Mount("/docs/static", app=StaticFiles(directory=assets), name="docs-static"),
    ]
