"""The contact-centre page: served by the app, its script talks to routes that exist, and it parses."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

WEB = Path(__file__).resolve().parents[3] / "apps" / "customer_service" / "web"
KIT = Path(__file__).resolve().parents[3] / "core" / "serving" / "page"


@pytest.fixture(scope="module")
def app(cs_tiny_bundles, tmp_path_factory):
    from apps.customer_service.api import create_app
    from apps.customer_service.settings import CustomerServiceSettings

    tmp = tmp_path_factory.mktemp("cs_web")
    return create_app(CustomerServiceSettings(
        intent_bundle=cs_tiny_bundles["intent"], text_emotion_bundle=cs_tiny_bundles["text_emotion"],
        voice_emotion_bundle=cs_tiny_bundles["voice"], fusion_bundle=cs_tiny_bundles["fusion"],
        database_url=f"sqlite:///{tmp}/cs.db", artefact_dir=tmp / "artefacts", asr_lm="generic",
        api_keys={"agent-key": "agent", "line-key": "line"}))


def test_page_and_every_file_it_links_are_served(app):
    with TestClient(app) as client:
        page = client.get("/ui/")
        assert page.status_code == 200 and "Analyse a call" in page.text
        for name in [n for n in re.findall(r'(?:src|href)="([^"]+)"', page.text) if ":" not in n] + ["pcm-worklet.js"]:
            r = client.get(f"/ui/{name}")
            source = WEB / name if (WEB / name).exists() else KIT / name  # the page's own, or the shared kit's
            assert r.status_code == 200 and r.text == source.read_text(), name


def test_script_uses_routes_the_app_has_and_ids_the_page_has(app):
    script, page = (WEB / "app.js").read_text(), (WEB / "index.html").read_text()
    paths = set(app.openapi()["paths"])
    used = set(re.findall(r'BASE \+ "(v1/[^"?]+)"', script)) | set(re.findall(r"\$\{BASE\}(v1/[a-z/]+)", script))
    assert used == {"v1/calls:analyze", "v1/stream"}
    assert "/v1/calls:analyze" in paths  # the WebSocket is exercised below
    ids = set(re.findall(r'\$\("([a-z0-9-]+)"\)', script + (KIT / "common.js").read_text()))
    missing = {i for i in ids if f'id="{i}"' not in page}
    assert ids and not missing, missing
    assert "innerHTML" not in script  # transcripts are shown as text, never parsed as HTML
    assert 'registerProcessor("pcm-16k"' in (WEB / "pcm-worklet.js").read_text() and '"pcm-16k"' in script


@pytest.mark.skipif(shutil.which("node") is None, reason="node not installed")
@pytest.mark.parametrize("name", ["app.js", "pcm-worklet.js"])
def test_scripts_parse(name):
    out = subprocess.run(["node", "--check", str(WEB / name)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


def test_live_stream_needs_the_agents_key(app):
    """Call audio is PII: with keys configured the WebSocket wants one, as the REST routes do."""
    from starlette.websockets import WebSocketDisconnect

    with TestClient(app) as client:
        with client.websocket_connect("/v1/stream") as ws:
            ws.send_text('{"type": "auth", "key": "line-key"}')
            assert ws.receive_json()["code"] == "forbidden"
            with pytest.raises(WebSocketDisconnect):
                ws.receive_json()
        with client.websocket_connect("/v1/stream") as ws:
            ws.send_text('{"type": "auth", "key": "agent-key"}')
            assert ws.receive_json()["type"] == "ready"
            ws.send_text('{"type": "end"}')
            assert ws.receive_json()["type"] == "end"
        assert client.get("/v1/results/x").status_code == 401
