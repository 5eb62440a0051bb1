"""The API docs pages (/docs, /redoc) work offline: every file they load comes from the app itself, at
the right prefix, for an app served alone, for one mounted under the gateway, and for the gateway."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from core.plugins import AppPlugin
from core.serving.docs import ASSET_TYPES, ASSETS_PREFIX, read_asset
from core.serving.gateway import create_gateway
from tests.core.serving.helpers import make_app

ALPHA = AppPlugin(name="alpha", mount="/alpha", summary="a", create_app="tests.core.serving.fakeapps:create_alpha")
BETA = AppPlugin(name="beta", mount="/beta", summary="b", create_app="tests.core.serving.fakeapps:create_beta")

DOCS_PAGES = ("/docs", "/redoc")
# what FastAPI's own pages load from other hosts
OTHER_HOSTS = ("cdn", "jsdelivr", "tiangolo", "googleapis", "unpkg")
EXPECTED_TYPES = {".js": "text/javascript", ".css": "text/css", ".png": "image/png", ".json": "application/json"}


@pytest.fixture(autouse=True)
def _gateway_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("TRIPTYCH_TEST_GATEWAY_DIR", str(tmp_path))


def referenced_urls(html: str) -> list[str]:
    """Every URL a docs page makes the browser load: its links and scripts, Swagger UI's ``url: '...'``
    and ReDoc's ``spec-url``."""
    return re.findall(r'(?:src|href|spec-url)="([^"]*)"', html) + re.findall(r"\burl: '([^']*)'", html)


def assert_docs_offline(client: TestClient, root: str) -> None:
    """Each docs page under ``root`` ("" or "/alpha") names only paths under ``root`` on the same origin,
    and each of them answers 200 with its type."""
    for page in DOCS_PAGES:
        response = client.get(root + page)
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/html"), page
        policy = response.headers["content-security-policy"]  # the browser refuses what the bundles reach for
        assert "default-src 'self'" in policy and "connect-src 'self'" in policy and "http" not in policy, page
        html = response.text
        assert "http://" not in html and "https://" not in html, page
        assert not [host for host in OTHER_HOSTS if host in html], page
        urls = referenced_urls(html)
        assert f"{root}/openapi.json" in urls and any(ASSETS_PREFIX in u for u in urls), (page, urls)
        for url in urls:
            assert url.startswith(f"{root}/") and not url.startswith("//"), (page, url)  # "//host/..." is another host
            asset = client.get(url)
            expected = EXPECTED_TYPES["." + url.rsplit(".", 1)[-1]]
            assert asset.status_code == 200 and asset.headers["content-type"].startswith(expected), (page, url)


def test_standalone_app_serves_its_docs_assets(tmp_path):
    with TestClient(make_app(tmp_path)) as client:
        assert_docs_offline(client, "")
        assert "swagger-ui-bundle.js" in client.get("/docs").text and "redoc.standalone.js" in client.get("/redoc").text
        redirect = client.get("/docs/oauth2-redirect")  # FastAPI's pages had it: Swagger UI's OAuth2 flows land here
        assert redirect.status_code == 200 and "oauth2" in redirect.text
        assert "oauth2RedirectUrl: window.location.origin + '/docs/oauth2-redirect'" in client.get("/docs").text
        assert client.head("/docs").status_code == 200 and client.head(f"{ASSETS_PREFIX}/swagger-ui.css").status_code == 200
        paths = client.get("/openapi.json").json()["paths"]
        assert not [p for p in paths if p.startswith(("/docs", "/redoc"))]  # not API operations


def test_docs_and_assets_need_no_api_key(tmp_path):
    # FastAPI's pages were open with keys configured: they show the schema, which holds no data
    with TestClient(make_app(tmp_path, api_keys={"k3y": "line"})) as client:
        assert client.post("/line-only").status_code == 401  # keys are on
        assert_docs_offline(client, "")


def test_mounted_apps_and_gateway_serve_docs_under_their_prefix():
    with TestClient(create_gateway(plugins=[ALPHA, BETA])) as client:
        for root in ("", "/alpha", "/beta"):
            assert_docs_offline(client, root)
        assert "/alpha/docs/oauth2-redirect" in client.get("/alpha/docs").text
        assert client.get("/alpha/docs/oauth2-redirect").status_code == 200
        assert client.get(f"{ASSETS_PREFIX}/favicon.png").content == client.get(f"/beta{ASSETS_PREFIX}/favicon.png").content


def test_assets_are_cached_and_revalidated(tmp_path):
    with TestClient(make_app(tmp_path)) as client:
        for name, media_type in ASSET_TYPES.items():
            first = client.get(f"{ASSETS_PREFIX}/{name}")
            assert first.status_code == 200 and first.headers["content-type"] == media_type
            assert first.content == read_asset(name)[0] and len(first.content) > 1000
            assert "max-age" in first.headers["cache-control"] and first.headers["x-content-type-options"] == "nosniff"
            again = client.get(f"{ASSETS_PREFIX}/{name}", headers={"If-None-Match": first.headers["etag"]})
            assert again.status_code == 304 and not again.content
        missing = client.get(f"{ASSETS_PREFIX}/../settings.py")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
        assert client.get(f"{ASSETS_PREFIX}/swagger-ui-standalone-preset.js").status_code == 404


def test_served_swagger_ui_reads_openapi_3_1():
    # FastAPI writes OpenAPI 3.1, which Swagger UI renders from version 5 on ("Unable to render this
    # definition" before); ReDoc 2 reads it too
    bundle = read_asset("swagger-ui-bundle.js")[0].decode()
    version = re.search(r'PACKAGE_VERSION:"(\d+)\.(\d+)\.(\d+)"', bundle)
    assert version and int(version.group(1)) >= 5, version
    assert "isOAS31" in bundle
    redoc = re.search(r'ReDoc Version: ","(\d+)\.\d+\.\d+"', read_asset("redoc.standalone.js")[0].decode())
    assert redoc and int(redoc.group(1)) >= 2
    assert read_asset("favicon.png")[0].startswith(b"\x89PNG")


def test_refuses_an_app_with_fastapis_own_docs():
    from fastapi import FastAPI

    from core.serving.docs import add_offline_docs

    with pytest.raises(ValueError, match="docs_url=None"):
        add_offline_docs(FastAPI())
