"""A small static web page served by an app (e.g. the contact centre's page for staff).

The page's files are read once when the router is built: no part of a request's path reaches the
file system. Every response carries a strict Content-Security-Policy (scripts, styles and
connections from the same origin only; no inline code), so the page works offline and data shown
in it cannot run as code.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import RedirectResponse, Response

from core.serving.errors import ApiError

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
        "media-src 'self' blob:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


# What every page may use (common.js: API key, headers, errors, DOM from text; common.css), served
# beside the page's own files.
KIT = Path(__file__).resolve().parent / "page"


# Markers a page's index.html places where the kit's parts go, so that every page loads the kit the
# same way: the head (kit, then the page's own style.css and app.js) and the API-key field common.js reads.
KIT_PARTS = {
    "<!-- kit:head -->": """<meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <link rel="icon" href="data:,">
  <link rel="stylesheet" href="common.css">
  <link rel="stylesheet" href="style.css">
  <script src="common.js" defer></script>
  <script src="app.js" defer></script>""",
    "<!-- kit:api-key -->": """<label class="key">API key
    <input id="api-key" type="password" autocomplete="off" placeholder="only if the service asks for one">
  </label>""",
    # a summary's period and its refresh button (common.js showPeriod and savePeriod read the hours)
    "<!-- kit:period -->": """<label class="inline">Period
      <select id="period">
        <option value="8">last 8 hours</option>
        <option value="24" selected>last 24 hours</option>
        <option value="168">last 7 days</option>
      </select>
    </label>
    <button id="summary-refresh" type="button">Refresh</button>""",
}


def _files(folder: Path) -> dict[str, tuple[bytes, str]]:
    return {p.name: (p.read_bytes(), CONTENT_TYPES[p.suffix]) for p in sorted(Path(folder).iterdir())
            if p.is_file() and p.suffix in CONTENT_TYPES}


def page_files(folder: Path, index: str = "index.html") -> dict[str, tuple[bytes, str]]:
    """What a page serves: ``folder``'s files (the index with the ``KIT_PARTS`` markers filled in) and
    the shared ``KIT``'s, by name."""
    files, kit = _files(folder), _files(KIT)
    if index not in files:
        raise FileNotFoundError(f"{folder} has no {index}")
    clash = set(files) & set(kit)
    if clash:
        raise ValueError(f"{folder}: {sorted(clash)} would hide the shared page kit's files of that name")
    html = files[index][0].decode()
    for marker, part in KIT_PARTS.items():
        html = html.replace(marker, part)
    return {**files, index: (html.encode(), files[index][1]), **kit}


def page_router(folder: Path, prefix: str = "/ui", index: str = "index.html") -> APIRouter:
    """GET ``{prefix}/`` answers ``folder/index``, GET ``{prefix}/{name}`` the other files of ``folder``
    and of the shared ``KIT`` (one level, known suffixes only), and ``{prefix}`` redirects to
    ``{prefix}/`` so that the page's relative links resolve under any mount point."""
    files = page_files(folder, index)
    router = APIRouter(include_in_schema=False)

    def serve(name: str) -> Response:
        body, media_type = files[name]
        return Response(body, media_type=media_type, headers=SECURITY_HEADERS)

    # HEAD too: link checkers and uptime probes ask with it
    @router.api_route(prefix, methods=["GET", "HEAD"])
    async def to_page() -> RedirectResponse:
        return RedirectResponse(prefix.rsplit("/", 1)[-1] + "/", status_code=308)  # relative: works under a mount

    @router.api_route(prefix + "/", methods=["GET", "HEAD"])
    async def page() -> Response:
        return serve(index)

    @router.api_route(prefix + "/{name}", methods=["GET", "HEAD"])
    async def asset(name: str) -> Response:
        if name not in files:
            raise ApiError(404, "not_found", f"no file {name!r} on this page")
        return serve(name)

    return router
