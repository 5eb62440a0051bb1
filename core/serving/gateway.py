"""One port for every installed app: each plugin's FastAPI is mounted at its prefix
(``/customer-service``, ``/medical``, ``/industrial``); ``/health`` and ``/ready`` aggregate them.

Starlette does not run a mounted app's lifespan, so the gateway's own lifespan enters each
sub-app's lifespan (that is where each app starts loading its models in the background).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Iterable
from html import escape
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse

from core.plugins import AppPlugin, discover_plugins
from core.serving.app import get_and_head
from core.serving.docs import add_offline_docs
from core.serving.errors import install_error_handlers
from core.serving.web import SECURITY_HEADERS

log = logging.getLogger("triptych.serving.gateway")


def _select(plugins: list[AppPlugin], app_names: Iterable[str] | None) -> list[AppPlugin]:
    if app_names is None:
        return plugins
    wanted = list(app_names)
    known = {p.name: p for p in plugins}
    missing = [n for n in wanted if n not in known]
    if missing:
        raise KeyError(f"unknown app(s) {missing}; installed apps: {', '.join(sorted(known)) or 'none'}")
    return [known[n] for n in wanted]


class _GatewayRequestId:
    """Gives gateway-level responses (``/health``, ``/ready``, 404s) an ``X-Request-ID`` too; mounted
    apps reuse the same id, so one id follows a request through both layers."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        from core.serving.app import resolve_request_id

        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        request_id = resolve_request_id(scope, headers)

        async def send_with_id(message: dict) -> None:
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers", [])}
                if b"x-request-id" not in present:
                    message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", request_id.encode())]}
            await send(message)

        await self.app(scope, receive, send_with_id)


def create_gateway(app_names: Iterable[str] | None = None, plugins: list[AppPlugin] | None = None) -> FastAPI:
    """The root app. ``app_names`` restricts the mounts (``serve --app``); ``plugins`` replaces
    discovery (tests). An app whose modules are not written yet is skipped and reported."""
    selected = _select(discover_plugins() if plugins is None else list(plugins), app_names)
    mounted: dict[str, tuple[AppPlugin, FastAPI]] = {}
    unavailable: dict[str, dict[str, Any]] = {}
    for plugin in selected:
        try:
            sub = plugin.load_create_app()()
        except ModuleNotFoundError as exc:
            if not (exc.name or "").startswith("apps."):
                raise  # a missing third-party package is an installation error, not an unwritten app
            log.warning("app skipped: module not written yet", extra={"app": plugin.name, "missing": exc.name})
            unavailable[plugin.name] = {"mount": plugin.mount, "status": "skipped", "reason": f"module {exc.name} not found"}
            continue
        except Exception as exc:
            log.exception("app failed to build", extra={"app": plugin.name})
            unavailable[plugin.name] = {"mount": plugin.mount, "status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
            continue
        mounted[plugin.name] = (plugin, sub)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            for name, (_, sub) in mounted.items():
                try:
                    await stack.enter_async_context(sub.router.lifespan_context(sub))
                except Exception as exc:
                    log.exception("app failed to start", extra={"app": name})
                    unavailable[name] = {"mount": mounted[name][0].mount, "status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
            yield

    root = FastAPI(title="triptych", description="The triptych apps behind one gateway.", lifespan=lifespan,
                   docs_url=None, redoc_url=None)
    add_offline_docs(root)  # FastAPI's own docs pages load their files from a CDN
    install_error_handlers(root)
    root.add_middleware(_GatewayRequestId)
    root.state.mounted = {name: sub for name, (_, sub) in mounted.items()}
    root.state.unavailable = unavailable

    def _app_status(name: str) -> dict[str, Any]:
        if name in unavailable:
            return dict(unavailable[name])
        plugin, sub = mounted[name]
        state = sub.state
        batchers = getattr(state, "batchers", {})
        stalled = sorted(n for n, b in batchers.items() if getattr(b, "stalled", False))
        return {
            "mount": plugin.mount,
            "status": "mounted",
            "ready": bool(getattr(state, "ready", True)) and not stalled,
            "stalled": stalled,
            "error": getattr(state, "load_error", None),
            "runners": {n: {"version": str(r.version), "sha256": str(r.sha256)} for n, r in getattr(state, "runners", {}).items()},
        }

    def _all() -> dict[str, dict[str, Any]]:
        return {p.name: _app_status(p.name) for p in selected}

    def _links(name: str, mount: str) -> dict[str, str]:
        links = {"docs": mount + "/docs"}
        page = getattr(mounted[name][1].state, "page", None) if name in mounted else None
        if page:
            links["page"] = mount + page  # the app's web page (create_service_app's page)
        return links

    @root.get("/", tags=["ops"], summary="What is mounted where (a browser gets a page with the links)")
    async def index(request: Request) -> Any:
        apps = _all()
        body = {"apps": {n: {"mount": a["mount"], "status": a["status"], **_links(n, a["mount"])} for n, a in apps.items()}}
        if "text/html" in request.headers.get("accept", ""):  # someone opened the address in a browser
            return HTMLResponse(_landing_page(body["apps"], {p.name: p.summary for p in selected}), headers=SECURITY_HEADERS)
        return body

    @get_and_head(root, "/health", tags=["ops"], summary="Gateway process is up; per-app mount status")
    async def health() -> dict[str, Any]:
        apps = _all()
        return {"status": "ok", "apps": {n: {k: a[k] for k in ("mount", "status") if k in a} | ({"reason": a["reason"]} if "reason" in a else {}) for n, a in apps.items()}}

    @get_and_head(root, "/ready", tags=["ops"], summary="Every mounted app has loaded its models")
    async def ready() -> JSONResponse:
        apps = _all()
        live = [a for a in apps.values() if a["status"] == "mounted"]
        failed = [a for a in apps.values() if a["status"] == "failed"]
        is_ready = bool(live) and all(a["ready"] for a in live) and not failed
        return JSONResponse({"ready": is_ready, "apps": apps}, status_code=200 if is_ready else 503,
                            headers={} if is_ready else {"Retry-After": "2"})

    for name, (plugin, sub) in mounted.items():
        root.mount(plugin.mount, sub, name=name)
    return root


def _landing_page(apps: dict[str, dict[str, Any]], summaries: dict[str, str]) -> str:
    """Every mounted app with its page, API docs and state, for whoever opens the gateway's address."""
    rows = []
    for name, app in apps.items():
        links = [f'<a href="{escape(app[k])}">{label}</a>' for k, label in (("page", "open the page"), ("docs", "API docs"))
                 if k in app]
        rows.append(f"<li><strong>{escape(name)}</strong> ({escape(app['status'])}): {escape(summaries.get(name, ''))}"
                    f"{' · ' if links else ''}{' · '.join(links)}</li>")
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>triptych</title></head><body>"
            "<h1>triptych</h1><ul>" + "".join(rows) + "</ul>"
            '<p><a href="/ready">readiness</a> · <a href="/health">health</a></p></body></html>')


def run_gateway(app_name: str | None = None, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """``triptych serve``: every app on one port, or ``--app NAME`` alone (same URL prefix)."""
    import uvicorn

    from core.offline import enforce_offline
    from core.serving.logs import configure_logging

    enforce_offline()
    configure_logging(log_level)
    gateway = create_gateway([app_name] if app_name else None)
    log.info("serving", extra={"host": host, "port": port, "apps": sorted(gateway.state.mounted)})
    uvicorn.run(gateway, host=host, port=port, log_level=log_level, log_config=None, access_log=False)
