"""The docs pages in a real headless Chromium that can reach no host but the app's own: Swagger UI and
ReDoc render the operations of an app mounted under the gateway (needs ``playwright`` and a Chromium,
skipped otherwise, like the pages' browser tests)."""

from __future__ import annotations

import pytest

from core.plugins import AppPlugin
from core.serving.bench import LoopbackServer
from core.serving.gateway import create_gateway
from tests.core.serving.pages import BROWSER, open_page

pytestmark = BROWSER

BETA = AppPlugin(name="beta", mount="/beta", summary="b", create_app="tests.core.serving.fakeapps:create_beta")
# every host but the loopback server resolves to nothing: a page that needs a file from a CDN breaks,
# as on an offline site
OFFLINE = ("--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",)


@pytest.mark.timeout(120)
def test_docs_render_with_no_other_host_reachable(tmp_path, monkeypatch):
    monkeypatch.setenv("TRIPTYCH_TEST_GATEWAY_DIR", str(tmp_path))
    with LoopbackServer(create_gateway(plugins=[BETA])) as server:
        with open_page(server.url + "/beta/docs", args=OFFLINE) as (page, problems):
            page.wait_for_selector(".opblock", timeout=30_000)  # Swagger UI drew the operations
            assert "/double" in page.locator(".opblock-summary-path").all_text_contents()
            page.click("#operations-ops-health_health_get .opblock-summary")  # "Try it out" calls the app
            page.click("text=Try it out")
            page.click("text=Execute")
            page.wait_for_selector(".live-responses-table .response-col_status", timeout=10_000)
            assert "200" in page.locator(".live-responses-table .response-col_status").all_text_contents()
            assert not problems, problems
        with open_page(server.url + "/beta/redoc", args=OFFLINE) as (page, problems):
            page.wait_for_selector("[data-section-id^='operation/']", timeout=30_000)  # ReDoc drew them too
            # ReDoc's footer asks cdn.redoc.ly for a logo (hidden when it fails): the page's policy refuses it
            refused = [p for p in problems if "cdn.redoc.ly" in p and "Content Security Policy" in p]
            assert problems == refused, problems
