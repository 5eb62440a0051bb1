"""A static page served by an app: its files only, a strict CSP, links that resolve under a mount."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from core.serving.errors import install_error_handlers
from core.serving.web import KIT, page_router


@pytest.fixture()
def client(tmp_path):
    (tmp_path / "index.html").write_text("<!doctype html><title>page</title><script src='app.js'></script>")
    (tmp_path / "app.js").write_text("console.log('hi');")
    (tmp_path / "secret.py").write_text("KEY = 1")
    sub = FastAPI()
    install_error_handlers(sub)
    sub.include_router(page_router(tmp_path))
    root = FastAPI()
    root.mount("/app", sub)
    with TestClient(root) as c:
        yield c


def test_page_and_assets_with_security_headers(client):
    page = client.get("/app/ui/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp and "unsafe-inline" not in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    js = client.get("/app/ui/app.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript") and "console" in js.text


def test_bare_prefix_redirects_relatively_under_the_mount(client):
    r = client.get("/app/ui", follow_redirects=False)
    assert r.status_code == 308 and r.headers["location"] == "ui/"
    assert client.get("/app/ui").url.path == "/app/ui/"


@pytest.mark.parametrize("path", ["/app/ui/secret.py", "/app/ui/nothing.js", "/app/ui/..%2Fsecret.py", "/app/ui/%2e%2e"])
def test_only_the_pages_files_are_served(client, path):
    r = client.get(path)
    assert r.status_code == 404 and "KEY" not in r.text


def test_a_folder_without_the_index_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError):
        page_router(tmp_path)


def test_the_shared_kit_is_served_beside_every_page(client):
    js = client.get("/app/ui/common.js")
    assert js.status_code == 200 and "const triptych" in js.text and "innerHTML" not in js.text
    assert client.get("/app/ui/common.css").headers["content-type"].startswith("text/css")


def test_a_page_file_may_not_shadow_the_kit(tmp_path):
    (tmp_path / "index.html").write_text("<!doctype html>")
    (tmp_path / "common.js").write_text("// mine")
    with pytest.raises(ValueError, match="common.js"):
        page_router(tmp_path)


@pytest.mark.skipif(shutil.which("node") is None, reason="node not installed")
def test_kit_script_parses():
    out = subprocess.run(["node", "--check", str(KIT / "common.js")], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr


def test_kit_markers_are_filled_in(tmp_path):
    from core.serving.web import KIT_PARTS, page_files

    (tmp_path / "index.html").write_text("<head>\n  <!-- kit:head -->\n</head><body><!-- kit:api-key -->"
                                         "<!-- kit:period --></body>")
    html = page_files(tmp_path)["index.html"][0].decode()
    assert "<!-- kit:" not in html and all(part in html for part in KIT_PARTS.values())
    assert 'src="common.js"' in html and 'id="api-key"' in html
