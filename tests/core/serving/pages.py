"""Checks every app's web page gets (used by the apps' test_web modules)."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from core.serving.web import KIT, page_files


def assert_page_served(client, web: Path) -> str:
    """GET /ui/ and every file it links come back as ``page_files`` builds them (the page's own, its
    index with the kit's parts filled in, the shared kit's); every kit marker was filled in."""
    files = page_files(web)
    page = client.get("/ui/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.content == files["index.html"][0] and "<!-- kit:" not in page.text
    for name in [n for n in re.findall(r'(?:src|href)="([^"]+)"', page.text) if ":" not in n and not n.startswith("#")]:
        r = client.get(f"/ui/{name}")
        assert r.status_code == 200 and r.content == files[name][0], name
    return page.text


def assert_script_matches(app, web: Path, routes: set[str]) -> None:
    """The page's script calls exactly ``routes`` (``BASE + "v1/..."``, or ``${BASE}v1/...`` with ``{}`` for
    each substitution), the HTTP ones exist in the app, every element id the scripts look up exists in
    the page as served, and nothing is parsed as HTML."""
    script, page = (web / "app.js").read_text(), page_files(web)["index.html"][0].decode()
    literal = set(re.findall(r'BASE \+ "(v1/[^"?]+)"', script))
    templated = {re.sub(r"\$\{[^}]+\}", "{}", m) for m in re.findall(r"\$\{BASE\}(v1/[^`?]+)", script)}
    assert literal | templated == routes
    paths = {re.sub(r"\{[^}]+\}", "{}", path) for path in app.openapi()["paths"]}  # /v1/results/{result_id} -> {}
    assert {r for r in routes if "/" + r not in paths} <= {"v1/stream"}  # WebSockets are not in the OpenAPI
    ids = set(re.findall(r'\$\("([a-z0-9-]+)"\)', script + (KIT / "common.js").read_text()))
    missing = {i for i in ids if f'id="{i}"' not in page}
    assert ids and not missing, missing
    assert "innerHTML" not in script


def assert_scripts_parse(*paths: Path) -> None:
    if shutil.which("node") is None:
        return
    for path in paths:
        out = subprocess.run(["node", "--check", str(path)], capture_output=True, text=True, timeout=60, check=False)
        assert out.returncode == 0, (path, out.stderr)


def wait_status(page, selector: str, done, timeout_s: float) -> str:
    """Poll a status element of a page open in playwright until ``done(text, class)``; its text.
    Polled from Python: ``page.wait_for_function`` evaluates strings, which the pages' CSP forbids."""
    import time

    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        text, cls = page.locator(selector).evaluate("e => [e.textContent, e.className]")  # one read: no race
        if done(text, cls):
            return text
        time.sleep(0.2)
    raise TimeoutError(f"{selector}: {page.text_content(selector)!r}")


CHROMIUM = os.environ.get("TRIPTYCH_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
# pytestmark of the browser tests: they need the playwright package (dev extra) and a Chromium
BROWSER = [pytest.mark.browser,
           pytest.mark.skipif(importlib.util.find_spec("playwright") is None, reason="playwright not installed"),
           pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (or set TRIPTYCH_CHROMIUM)")]


@contextlib.contextmanager
def open_page(url: str, args: tuple[str, ...] = (), **page_options) -> Iterator[tuple[Any, list[str]]]:
    """A page of a headless Chromium at ``url`` and the list its script errors, CSP violations and
    failed requests are appended to."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", *args])
        try:
            page = browser.new_page(**page_options)
            problems: list[str] = []
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.goto(url)
            yield page, problems
        finally:
            browser.close()
