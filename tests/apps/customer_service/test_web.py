"""The contact-centre page: served by the app, its script talks to routes that exist, and it parses."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.core.serving.pages import assert_page_served, assert_script_matches, assert_scripts_parse

WEB = Path(__file__).resolve().parents[3] / "apps" / "customer_service" / "web"


@pytest.fixture(scope="module")
def app(cs_tiny_bundles, tmp_path_factory):
    from apps.customer_service.api import create_app
    from apps.customer_service.settings import CustomerServiceSettings

    tmp = tmp_path_factory.mktemp("cs_web")
    return create_app(CustomerServiceSettings(
        intent_bundle=cs_tiny_bundles["intent"], text_emotion_bundle=cs_tiny_bundles["text_emotion"],
        voice_emotion_bundle=cs_tiny_bundles["voice"], fusion_bundle=cs_tiny_bundles["fusion"],
        dialogue_acts_bundle=cs_tiny_bundles["dialogue_acts"],
        database_url=f"sqlite:///{tmp}/cs.db", artefact_dir=tmp / "artefacts", asr_lm="generic",
        api_keys={"agent-key": "agent", "line-key": "line"}))


def test_page_and_every_file_it_links_are_served(app):
    with TestClient(app) as client:
        assert "Analyse a call" in assert_page_served(client, WEB)
        assert client.get("/ui/pcm-worklet.js").text == (WEB / "pcm-worklet.js").read_text()  # loaded by the script


def test_script_uses_routes_the_app_has_and_ids_the_page_has(app):
    # the WebSocket is exercised below
    assert_script_matches(app, WEB, {"v1/calls:analyze", "v1/stream", "v1/results", "v1/results/{}", "v1/results:summary", "v1/results.csv"})
    script = (WEB / "app.js").read_text()
    assert 'registerProcessor("pcm-16k"' in (WEB / "pcm-worklet.js").read_text() and '"pcm-16k"' in script


@pytest.mark.skipif(shutil.which("node") is None, reason="node not installed")
def test_scripts_parse():
    assert_scripts_parse(WEB / "app.js", WEB / "pcm-worklet.js")


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
