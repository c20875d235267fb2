"""Interactive API docs at ``/docs``: Swagger UI 5 (reads OpenAPI 3.1), served from assets
vendored into the package (``service/static/swagger-ui``, see ``scripts/vendor-swagger-ui.sh``),
so the page works offline and loads nothing from a CDN."""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

#: The vendored swagger-ui-dist files (version in its VERSION file).
ASSETS = Path(__file__).resolve().parent / "static" / "swagger-ui"

_PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>email-service API</title>
  <link rel="icon" type="image/png" href="/docs/static/favicon-32x32.png">
  <link rel="stylesheet" href="/docs/static/swagger-ui.css">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="/docs/static/swagger-ui-bundle.js"></script>
  <script>
    window.ui = SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui",
                                 deepLinking: true, persistAuthorization: true});
  </script>
</body>
</html>
"""


async def docs_page(request: Request) -> HTMLResponse:
    return HTMLResponse(_PAGE)


def docs_routes() -> list[BaseRoute]:
    return [
        Route("/docs", docs_page, methods=["GET"]),
        Mount("/docs/static", app=StaticFiles(directory=ASSETS), name="docs-static"),
    ]
