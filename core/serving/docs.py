"""The API docs pages, Swagger UI at ``/docs`` and ReDoc at ``/redoc``, with their scripts, style and
icon served by the app itself under ``/docs-assets/``.

FastAPI's own pages load Swagger UI and ReDoc from cdn.jsdelivr.net, their icon from
fastapi.tiangolo.com and ReDoc's fonts from Google: on a site without internet access (the product
promises to run offline) they stay blank. The files come from the ``fastapi-offline`` package, only
its files: Swagger UI 5 (it reads the OpenAPI 3.1 FastAPI writes) and ReDoc 2.

Every URL a page names starts with the request's ``root_path``, as FastAPI's own pages do, so the
pages work for an app served alone (``/docs``) and for one mounted under the gateway
(``/medical/docs`` loads ``/medical/docs-assets/...``). A Content-Security-Policy keeps the pages to
their own origin.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse, Response

ASSETS_PREFIX = "/docs-assets"
ASSET_PACKAGE = "fastapi_offline"
# by name, not a folder mount: no part of a request's path reaches the file system, and the types do
# not depend on the host's mime.types
ASSET_TYPES = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "redoc.standalone.js": "text/javascript; charset=utf-8",
    "favicon.png": "image/png",
}
# The pages may load and call their own origin only. Whatever the bundled scripts reach for (ReDoc's
# footer shows a logo from cdn.redoc.ly) is refused by the browser rather than attempted: on an offline
# site it would fail anyway, on a connected one it would tell a third party who reads the docs. Inline
# code and styles stay allowed: FastAPI's pages configure Swagger UI inline, both UIs style inline, and
# ReDoc's search runs in a worker made from a blob.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; connect-src 'self'; "
        "base-uri 'self'; frame-ancestors 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
}
# the files change only when the package is upgraded: a day's cache spares the 2.7 MB on every visit,
# and the ETag turns a later revalidation into a 304
ASSET_CACHE_CONTROL = "public, max-age=86400"


@functools.cache
def read_asset(name: str) -> tuple[bytes, str]:
    """A docs asset's bytes and ETag, read on first use and shared by every app of the process."""
    data = (importlib.resources.files(ASSET_PACKAGE) / "static" / name).read_bytes()
    return data, f'"{hashlib.sha256(data).hexdigest()[:32]}"'


def _asset_endpoint(name: str) -> Callable[[Request], Awaitable[Response]]:
    media_type = ASSET_TYPES[name]

    async def asset(request: Request) -> Response:
        data, etag = read_asset(name)
        headers = {"ETag": etag, "Cache-Control": ASSET_CACHE_CONTROL, "X-Content-Type-Options": "nosniff"}
        if etag in request.headers.get("if-none-match", ""):
            return Response(status_code=304, headers=headers)
        return Response(data, media_type=media_type, headers=headers)

    return asset


def request_root(request: Request) -> str:
    """Where the app is reached: "" served alone, "/medical" under the gateway (behind any proxy's prefix)."""
    return request.scope.get("root_path", "").rstrip("/")


def add_offline_docs(app: FastAPI, docs_url: str = "/docs", redoc_url: str = "/redoc") -> None:
    """Swagger UI at ``docs_url`` (with its OAuth2 redirect page) and ReDoc at ``redoc_url``, as FastAPI's
    defaults but with every file from ``ASSETS_PREFIX``. ``app`` must be built with ``docs_url=None,
    redoc_url=None``, so that FastAPI adds no pages of its own; pages, redirect and assets stay out of the
    schema and need no key, as FastAPI's do."""
    if app.docs_url or app.redoc_url:
        raise ValueError("build the app with docs_url=None and redoc_url=None: FastAPI's own docs pages load from a CDN")
    importlib.resources.files(ASSET_PACKAGE)  # a missing package fails the app's build, not its first docs visit
    for name in ASSET_TYPES:
        app.add_route(f"{ASSETS_PREFIX}/{name}", _asset_endpoint(name), include_in_schema=False)
    if not app.openapi_url:
        return  # no schema, nothing to show (as FastAPI does)
    openapi_url, redirect_url = app.openapi_url, app.swagger_ui_oauth2_redirect_url

    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request_root(request)
        page = get_swagger_ui_html(
            openapi_url=root + openapi_url, title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{ASSETS_PREFIX}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_PREFIX}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_PREFIX}/favicon.png",
            oauth2_redirect_url=root + redirect_url if redirect_url else None,
            init_oauth=app.swagger_ui_init_oauth, swagger_ui_parameters=app.swagger_ui_parameters,
        )
        page.headers.update(PAGE_HEADERS)
        return page

    async def swagger_ui_redirect(request: Request) -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    async def redoc(request: Request) -> HTMLResponse:
        root = request_root(request)
        page = get_redoc_html(
            openapi_url=root + openapi_url, title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{ASSETS_PREFIX}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{ASSETS_PREFIX}/favicon.png", with_google_fonts=False,
        )
        page.headers.update(PAGE_HEADERS)
        return page

    # plain routes, GET and HEAD, as FastAPI adds its own
    if docs_url:
        app.add_route(docs_url, swagger_ui, include_in_schema=False)
        if redirect_url:
            app.add_route(redirect_url, swagger_ui_redirect, include_in_schema=False)
    if redoc_url:
        app.add_route(redoc_url, redoc, include_in_schema=False)
