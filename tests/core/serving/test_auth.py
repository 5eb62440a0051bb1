"""Roles: off without keys, enforced with keys, admin passes every check."""

from __future__ import annotations

import pytest
from fastapi import WebSocket
from fastapi.testclient import TestClient
from pydantic import ValidationError

from tests.core.serving.helpers import make_app, make_settings

KEYS = {"line-key": "line", "rad-key": "radiologist", "agent-key": "agent", "root-key": "admin"}


def test_roles_off_when_no_keys(tmp_path):
    with TestClient(make_app(tmp_path)) as client:
        response = client.post("/line-only")
        assert response.status_code == 200
        assert response.json() == {"role": None, "authenticated": False}


def test_roles_enforced_when_keys_configured(tmp_path):
    with TestClient(make_app(tmp_path, api_keys=KEYS)) as client:
        missing = client.post("/line-only")
        assert missing.status_code == 401 and missing.json()["error"]["code"] == "unauthorized"
        assert missing.headers["www-authenticate"] == "Bearer"
        assert "X-API-Key" in missing.json()["error"]["message"]

        unknown = client.post("/line-only", headers={"X-API-Key": "guess"})
        assert unknown.status_code == 401

        wrong_role = client.post("/line-only", headers={"X-API-Key": "rad-key"})
        assert wrong_role.status_code == 403
        assert wrong_role.json()["error"]["message"].endswith("allowed roles: line (or admin)")

        ok = client.post("/line-only", headers={"X-API-Key": "line-key"})
        assert ok.status_code == 200 and ok.json() == {"role": "line", "authenticated": True}

        bearer = client.post("/line-only", headers={"Authorization": "Bearer line-key"})
        assert bearer.status_code == 200

        admin = client.post("/line-only", headers={"Authorization": "Bearer root-key"})
        assert admin.status_code == 200 and admin.json()["role"] == "admin"

        for key, status in (("rad-key", 200), ("agent-key", 200), ("line-key", 403), ("root-key", 200)):
            assert client.post("/clinical", headers={"X-API-Key": key}).status_code == status

        # operational endpoints stay open for probes
        assert client.get("/health").status_code == 200


def test_keys_from_environment_and_unknown_roles_refused(tmp_path, monkeypatch):
    from core.serving import AppSettings

    monkeypatch.setenv("TRIPTYCH_API_KEYS", '{"k1": "line"}')
    assert AppSettings(database_url="sqlite://").api_keys == {"k1": "line"}
    with pytest.raises(ValidationError):
        make_settings(tmp_path, api_keys={"k": "superuser"})


def test_require_role_rejects_unknown_role_names():
    from core.serving import require_role

    with pytest.raises(ValueError):
        require_role("doctor")


def _ws_app(keys: dict[str, str]):
    from types import SimpleNamespace

    from fastapi import FastAPI

    from core.serving.auth import authorize_websocket

    app = FastAPI()
    app.state.settings = SimpleNamespace(api_keys=keys)

    @app.websocket("/ws")
    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        who = await authorize_websocket(websocket, "agent", timeout_s=2.0)
        if who is not None:
            await websocket.send_json({"type": "ready", "role": who.role})
            await websocket.close()

    return app


@pytest.mark.parametrize("headers,first,expect", [
    ({}, None, "unauthorized"),  # nothing sent within the timeout
    ({}, '{"type": "auth", "key": "guess"}', "unauthorized"),
    ({}, b"\x00\x00", "unauthorized"),  # audio before the key
    ({}, "[" * 100_000, "unauthorized"),  # nested past json's recursion limit: no key, not a crash
    ({}, '{"type": "auth", "key": "\\ud800"}', "unauthorized"),  # a lone surrogate: no key, not a crash
    ({}, '{"type": "auth", "key": "line-key"}', "forbidden"),
    ({}, '{"type": "auth", "key": "agent-key"}', "agent"),
    ({"X-API-Key": "agent-key"}, None, "agent"),
    ({"Authorization": "Bearer root-key"}, None, "admin"),
])
def test_websocket_needs_a_key_of_an_allowed_role(headers, first, expect):
    """Keys configured: a WebSocket is refused (error, close 1008) like a request without a valid key;
    browsers, which cannot set headers, send the key as the first message."""
    from starlette.websockets import WebSocketDisconnect

    with TestClient(_ws_app(KEYS)) as client, client.websocket_connect("/ws", headers=headers) as ws:
        if isinstance(first, bytes):
            ws.send_bytes(first)
        elif first is not None:
            ws.send_text(first)
        msg = ws.receive_json()
        if expect in ("unauthorized", "forbidden"):
            assert msg["type"] == "error" and msg["code"] == expect and msg["message"]
            assert ('"type": "auth"' in msg["message"]) == (expect == "unauthorized")  # says how a browser sends it
            with pytest.raises(WebSocketDisconnect) as closed:
                ws.receive_json()
            assert closed.value.code == 1008 and closed.value.reason == expect
        else:
            assert msg == {"type": "ready", "role": expect}


def test_websocket_open_without_keys():
    with TestClient(_ws_app({})) as client, client.websocket_connect("/ws") as ws:
        assert ws.receive_json() == {"type": "ready", "role": None}


def test_admin_only_refusal_names_admin_once():
    from core.serving.auth import Principal, _authorize
    from core.serving.errors import ApiError

    with pytest.raises(ApiError) as refused:
        _authorize(Principal(role="radiologist", key_id=None, authenticated=True), ("admin",))
    assert refused.value.message.endswith("allowed roles: admin")


def test_me_says_the_callers_role(tmp_path):
    with TestClient(make_app(tmp_path)) as client:  # keys off: every route open, no role
        assert client.get("/v1/me").json() == {"role": None, "authenticated": False}
    with TestClient(make_app(tmp_path, api_keys=KEYS)) as client:
        assert client.get("/v1/me").status_code == 401
        assert client.get("/v1/me", headers={"X-API-Key": "guess"}).status_code == 401
        assert client.get("/v1/me", headers={"X-API-Key": "rad-key"}).json() == {"role": "radiologist",
                                                                                  "authenticated": True}
        assert client.get("/v1/me", headers={"Authorization": "Bearer root-key"}).json()["role"] == "admin"
