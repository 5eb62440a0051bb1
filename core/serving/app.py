"""``create_service_app``: the FastAPI factory every app uses.

It adds request IDs, JSON request logs (metadata only), one error body shape, ``/health``,
``/ready`` (true once ``load_runners()`` has run in the background), ``/metrics`` (per-app
registry), a dynamic batcher per model runner and a result store. Responses carry
``X-Request-ID``, ``X-Model-Version`` and ``X-Model-Sha256``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import inspect
import logging
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response

from core.serving.batching import DynamicBatcher, ModelRunner
from core.serving.docs import add_offline_docs
from core.serving.errors import ApiError, error_body, install_error_handlers
from core.serving.metrics import CONTENT_TYPE_LATEST, ServiceMetrics
from core.serving.settings import AppSettings
from core.serving.store import ResultStore, is_storage_error, summary_period

if TYPE_CHECKING:
    from core.serving.retention import ArtefactPaths

log = logging.getLogger("triptych.serving")

# Apps in one gateway load their models one after another: first imports of transformers'
# lazy modules are not thread-safe ("cannot import name 'AutoConfig'" under concurrent loads),
# and parallel loading buys nothing on a couple of cores.
_LOAD_LOCK = threading.Lock()


def _load_serially(load_runners: LoadRunners) -> Any:
    with _LOAD_LOCK:
        return load_runners()
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
# multipart framing and other form fields on top of the largest single upload
_FORM_OVERHEAD = 1024 * 1024
STORAGE_UNAVAILABLE = ApiError(
    503, "storage_unavailable", "the database could not be written or read (busy, full or unreachable); nothing from "
    "this request was acknowledged: retry shortly", headers={"Retry-After": "5"})

LoadRunners = Callable[[], "Mapping[str, ModelRunner] | Any"]


class _BodyTooLarge(Exception):
    pass


def resolve_request_id(scope: dict, headers: Mapping[str, str]) -> str:
    """The request's id: one already set by an outer layer (the gateway), else the client's
    ``X-Request-ID`` when it is a plain token, else a new one. Stored in ``scope["state"]``."""
    state = scope.setdefault("state", {})
    request_id = state.get("request_id")
    if not request_id:
        incoming = headers.get("x-request-id", "")
        request_id = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex
        state["request_id"] = request_id
    return request_id


class ServiceMiddleware:
    """Pure ASGI middleware: request id, body-size cap, model headers, metrics, one log line."""

    def __init__(self, app: Any, service: FastAPI) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        service = self.service
        settings: AppSettings = service.state.settings
        limit = settings.max_upload_bytes + _FORM_OVERHEAD
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        request_id = resolve_request_id(scope, headers)
        started = time.perf_counter()
        status = {"code": 500, "started": False}

        too_large = ApiError(
            413, "too_large", f"request body exceeds {limit} bytes; the upload limit is {settings.max_upload_bytes} bytes"
        )

        async def send_raw(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                status["started"] = True
                extra = [(b"x-request-id", request_id.encode())]
                version, sha = service.state.model_headers
                extra += [(b"x-model-version", version.encode("latin-1", "replace")), (b"x-model-sha256", sha.encode())]
                own = [(k, _same_site_location(v, headers.get("host", ""))) if k.lower() == b"location" else (k, v)
                       for k, v in message.get("headers", [])]
                message = {**message, "headers": own + extra}
            await send(message)

        async def send_wrapper(message: dict) -> None:
            # a body cut off at the limit surfaces in FastAPI as a generic 400 parse error; answer
            # what really happened instead
            if received["over"]:
                if message["type"] == "http.response.start" and not status["started"]:
                    await too_large.response()(scope, receive, send_raw)
                return
            await send_raw(message)

        received = {"bytes": 0, "over": False}

        async def receive_wrapper() -> dict:
            message = await receive()
            if message["type"] == "http.request":
                received["bytes"] += len(message.get("body", b""))
                if received["bytes"] > limit:
                    received["over"] = True
                    raise _BodyTooLarge()
            return message

        try:
            declared = int(headers.get("content-length", "0") or 0)
        except ValueError:
            declared = 0
        try:
            if declared > limit:
                raise _BodyTooLarge()  # refused before a byte is read or spooled
            await self.app(scope, receive_wrapper, send_wrapper)
        except _BodyTooLarge:
            if not status["started"]:
                await too_large.response()(scope, receive, send_raw)
        except Exception as exc:
            if is_storage_error(exc):
                # locked past the busy timeout, disk full, server gone: nothing was acknowledged, the client
                # may retry; a 500 would read as a bug in its request
                log.error("storage unavailable", exc_info=True, extra={"app": service.state.name, "request_id": request_id})
                if not status["started"]:
                    await STORAGE_UNAVAILABLE.response()(scope, receive, send_wrapper)
            else:
                log.exception("unhandled error", extra={"app": service.state.name, "request_id": request_id})
                if not status["started"]:
                    body = error_body("internal_error", f"internal error; quote request id {request_id}")
                    await JSONResponse(body, status_code=500)(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            seconds = time.perf_counter() - started
            service.state.metrics.observe_request(scope.get("method", ""), template, status["code"], seconds)
            log.info(
                "request",
                extra={
                    "app": service.state.name, "request_id": request_id, "method": scope.get("method"),
                    "route": template, "status": status["code"], "ms": round(seconds * 1000, 2),
                },
            )


def _same_site_location(location: bytes, host: str) -> bytes:
    """A Location naming this service's own host (Starlette's trailing-slash redirect, URLs built from the
    request) as a path: the Host header is the client's word, and behind a proxy it names the proxy's upstream,
    which a browser cannot reach; a path follows whatever address the client used."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        url = urlsplit(location.decode("latin-1"))
    except ValueError:
        return location
    if not url.scheme or not url.netloc or url.netloc.lower() != host.lower():
        return location
    return urlunsplit(("", "", url.path or "/", url.query, url.fragment)).encode("latin-1")


def _model_headers(runners: Mapping[str, ModelRunner]) -> tuple[str, str]:
    if not runners:
        return "none", "none"
    if len(runners) == 1:
        runner = next(iter(runners.values()))
        return str(runner.version), str(runner.sha256)
    names = sorted(runners)
    return (
        ",".join(f"{n}={runners[n].version}" for n in names),
        ",".join(f"{n}={runners[n].sha256}" for n in names),
    )


async def _load(app: FastAPI, load_runners: LoadRunners | None) -> None:
    state = app.state
    settings: AppSettings = state.settings
    try:
        runners: Mapping[str, ModelRunner] = {}
        if load_runners is not None:
            # loading reads bundles and builds models: keep it off the event loop
            loaded = await asyncio.to_thread(_load_serially, load_runners)
            if inspect.isawaitable(loaded):
                loaded = await loaded
            runners = dict(loaded or {})
        for name, runner in runners.items():
            if not isinstance(runner, ModelRunner):
                raise TypeError(f"runner {name!r} lacks name/version/sha256/predict_batch")
            batcher = DynamicBatcher(
                runner,
                max_batch=settings.max_batch,
                max_delay_ms=settings.max_delay_ms,
                max_queue=settings.max_queue,
                timeout_s=settings.request_timeout_s,
                observer=state.metrics.batch_observer(name),
            )
            await batcher.start()
            state.batchers[name] = batcher
            state.metrics.model_loaded(name, str(runner.version), str(runner.sha256))
        state.runners = dict(runners)
        state.model_headers = _model_headers(runners)
        state.ready = True
        state.metrics.ready.labels(state.name).set(1)
        log.info("models loaded", extra={"app": state.name, "runners": sorted(runners)})
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        state.load_error = f"{type(exc).__name__}: {exc}"
        state.model_headers = ("unavailable", "unavailable")
        log.exception("model loading failed", extra={"app": state.name})


def get_and_head(app: FastAPI, path: str, **kwargs: Any) -> Callable:
    """A route for GET and HEAD, documented once: one route with both methods gave OpenAPI two operations of
    the same id (FastAPI warns, and generated clients break on it)."""

    def register(endpoint: Callable) -> Callable:
        app.add_api_route(path, endpoint, methods=["GET"], **kwargs)
        app.add_api_route(path, endpoint, methods=["HEAD"], include_in_schema=False, **kwargs)
        return endpoint

    return register


def create_service_app(
    *,
    name: str,
    settings: AppSettings,
    routers: Iterable[APIRouter] = (),
    load_runners: LoadRunners | None = None,
    description: str = "",
    version: str = "0.1.0",
    page: Path | None = None,
    text_limit_hint: str | None = None,
    artefacts: ArtefactPaths | None = None,
) -> FastAPI:
    """Build one app's FastAPI. ``load_runners()`` (sync, may be slow) returns ``{name: ModelRunner}``
    and runs in a thread when the app starts; ``/ready`` says when it has finished. ``page``: a folder
    served as the app's web page at ``/ui/`` (``core.serving.web.page_router``). ``text_limit_hint``:
    what the app's text fields accept ("'text' takes at most 20000 characters"), said in the 413 to a
    form field over the form parser's 1 MB limit (else: send the content as a file). ``artefacts``: the
    files of a stored payload, erased with it (``core.serving.retention``: ``settings.retention_days``
    and the apps' erase routes); an ``ArtefactFolder`` also has its orphaned folders swept."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.loader = asyncio.create_task(_load(app, load_runners), name=f"load-{name}")
        from core.serving.retention import ArtefactFolder, retention_loop

        retention = None
        # results expire by age when a period is set; a crash's orphaned files are swept whatever the period
        if settings.retention_days is not None or isinstance(artefacts, ArtefactFolder):
            retention = asyncio.create_task(retention_loop(app.state.store, name, settings.retention_days, artefacts,
                                                           settings.retention_check_s), name=f"retention-{name}")
        try:
            yield
        finally:
            if retention is not None:
                retention.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await retention
            app.state.loader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await app.state.loader
            for batcher in list(app.state.batchers.values()):
                await batcher.stop()
            from core.serving.jobs import drain_jobs

            await drain_jobs()  # background jobs store their outcome (503 for those the stop cut off)
            app.state.batchers.clear()
            app.state.ready = False

    # docs pages of our own (core.serving.docs): FastAPI's load their files from a CDN
    app = FastAPI(title=f"triptych {name}", description=description, version=version, lifespan=lifespan,
                  docs_url=None, redoc_url=None)
    add_offline_docs(app)
    app.state.name = name
    app.state.settings = settings
    app.state.metrics = ServiceMetrics(name)
    app.state.store = ResultStore(settings.database_url, busy_timeout_s=settings.database_busy_timeout_s)
    app.state.batchers = {}
    app.state.runners = {}
    app.state.ready = False
    app.state.load_error = None
    app.state.model_headers = ("loading", "loading")
    app.state.text_limit_hint = text_limit_hint
    app.state.artefacts = artefacts
    install_error_handlers(app)
    app.add_middleware(ServiceMiddleware, service=app)

    # HEAD too: some load balancers probe with it
    @get_and_head(app, "/health", tags=["ops"], summary="Process is up")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "app": name}

    @get_and_head(app, "/ready", tags=["ops"], summary="Models are loaded")
    async def ready() -> JSONResponse:
        state = app.state
        runners = {
            n: {"version": str(r.version), "sha256": str(r.sha256), "queue": b.queue_depth if (b := state.batchers.get(n)) else 0,
                "stalled": bool(b and b.stalled)}
            for n, r in state.runners.items()
        }
        # a model call stuck past the request timeout makes every request 504: not ready
        is_ready = bool(state.ready) and not any(r["stalled"] for r in runners.values())
        body = {"ready": is_ready, "app": name, "runners": runners, "error": state.load_error}
        headers = {} if is_ready else {"Retry-After": "2"}
        return JSONResponse(body, status_code=200 if is_ready else 503, headers=headers)

    @app.get("/v1/me", tags=["auth"], summary="The caller's role, as the API key presented gives it")
    async def me(request: Request) -> dict[str, Any]:
        """What a page asks before offering what only some roles may do (the audit trail, erasure): the
        role of the key presented, None with keys off (every route open). 401 without a valid key."""
        from core.serving.auth import require_role

        who = await require_role()(request)
        return {"role": who.role, "authenticated": who.authenticated}

    @app.get("/metrics", tags=["ops"], summary="Prometheus metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(app.state.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    for router in routers:
        app.include_router(router)
    app.state.page = None
    if page is not None:  # the app's web page; the gateway's index links to it
        from core.serving.web import page_router

        app.include_router(page_router(page, prefix="/ui"))
        app.state.page = "/ui/"

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def home() -> RedirectResponse:
        """The app's address (/medical/) opens its page, or its API docs when it has none."""
        return RedirectResponse("ui/" if app.state.page else "docs", status_code=307)  # relative: any mount
    return app


# -- dependencies -----------------------------------------------------------------------------
# async on purpose: FastAPI runs plain ``def`` dependencies in a thread pool, one hop per request
def get_batcher(name: str) -> Callable[[Request], DynamicBatcher]:
    """A dependency giving the batcher of runner ``name`` (503 with Retry-After until loaded)."""

    async def dependency(request: Request) -> DynamicBatcher:
        state = request.app.state
        batcher = state.batchers.get(name)
        if batcher is None:
            if state.load_error:
                raise ApiError(503, "model_unavailable", f"model {name!r} failed to load; see /ready", {"error": state.load_error})
            if state.ready:
                raise ApiError(503, "model_unavailable", f"model {name!r} is not served by this app")
            raise ApiError(503, "not_ready", f"model {name!r} is still loading; retry shortly", headers={"Retry-After": "2"})
        return batcher

    dependency.__name__ = f"get_batcher_{name}"
    return dependency


async def get_store(request: Request) -> ResultStore:
    return request.app.state.store


async def get_app_settings(request: Request) -> AppSettings:
    return request.app.state.settings


async def get_request_id(request: Request) -> str:
    return request.scope.get("state", {}).get("request_id") or uuid.uuid4().hex


async def stored_result(store: ResultStore, app: str, result_id: str, missing: str,
                        kind: str | None = None) -> dict[str, Any]:
    """The stored result ``result_id`` of ``app`` (and of ``kind`` when given), else a 404 saying ``missing``."""
    row = await store.aget_result(result_id)
    if row is None or row.get("app") != app or (kind is not None and row.get("kind") != kind):
        raise ApiError(404, "not_found", missing)
    return row


# A summary reads a few payload fields of each stored result in its period; past this many results it
# covers the newest only and says so (a line at one board a second stores 28,800 in 8 h).
SUMMARY_MAX_ROWS = 200_000


async def get_period(
    since: Annotated[dt.datetime | None, Query(description="start, ISO 8601 (no offset: UTC); default: 24 h before until")] = None,
    until: Annotated[dt.datetime | None, Query(description="end, ISO 8601 (no offset: UTC); default: now")] = None,
) -> tuple[dt.datetime, dt.datetime]:
    """A summary route's ``[since, until)`` in UTC from its query (``store.summary_period``; 422 when empty)."""
    return summary_period(since, until)


async def period_rows(store: ResultStore, app: str, kind: str | tuple[str, ...], fields: dict,
                      period: tuple[dt.datetime, dt.datetime]) -> tuple[list[dict[str, Any]], bool]:
    """A summary's rows (``fields`` of each result in ``period``, newest first) and whether they are all
    of them (at most ``SUMMARY_MAX_ROWS``, the newest)."""
    rows = await store.apayload_fields(app, kind, fields, since=period[0], until=period[1], limit=SUMMARY_MAX_ROWS + 1)
    return rows[:SUMMARY_MAX_ROWS], len(rows) <= SUMMARY_MAX_ROWS


async def csv_export(store: ResultStore, app: str, kind: str | tuple[str, ...], fields: dict,
                     period: tuple[dt.datetime, dt.datetime], lines: Callable[[list[dict[str, Any]]], Iterable[str]],
                     name: str) -> Response:
    """A period's results as a streamed CSV download, oldest first: ``lines`` turns the rows (``fields`` of
    each, with its id and time) into CSV text; ``name`` ("calls") names the file and the 413 when the
    period holds more than ``SUMMARY_MAX_ROWS``."""
    from fastapi.responses import StreamingResponse

    since, until = period
    rows = await store.apayload_fields(app, kind, fields, since=since, until=until, limit=SUMMARY_MAX_ROWS + 1,
                                       with_ids=True)
    if len(rows) > SUMMARY_MAX_ROWS:
        raise ApiError(413, "too_many_rows", f"the period holds more than {SUMMARY_MAX_ROWS:,} {name}; export a "
                                             "shorter one (since / until)")
    return StreamingResponse(lines(rows[::-1]), media_type="text/csv; charset=utf-8", headers={
        "Content-Disposition": f'attachment; filename="{name}-{since:%Y%m%dT%H%M}-{until:%Y%m%dT%H%M}.csv"'})


