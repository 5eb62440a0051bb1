"""Gateway: mounts plugins, skips unwritten apps, aggregates /health and /ready, runs sub lifespans."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from core.plugins import AppPlugin
from core.serving.gateway import create_gateway
from tests.core.serving.helpers import wait_ready

ALPHA = AppPlugin(name="alpha", mount="/alpha", summary="a", create_app="tests.core.serving.fakeapps:create_alpha")
BETA = AppPlugin(name="beta", mount="/beta", summary="b", create_app="tests.core.serving.fakeapps:create_beta")
UNWRITTEN = AppPlugin(name="ghost", mount="/ghost", summary="g", create_app="apps.ghost_app_not_written.api:create_app")
BROKEN = AppPlugin(name="broken", mount="/broken", summary="x", create_app="tests.core.serving.fakeapps:create_broken")


@pytest.fixture(autouse=True)
def _gateway_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("TRIPTYCH_TEST_GATEWAY_DIR", str(tmp_path))


def test_mounts_apps_and_loads_their_models():
    gateway = create_gateway(plugins=[ALPHA, BETA, UNWRITTEN])
    with TestClient(gateway) as client:
        health = client.get("/health").json()
        assert health["status"] == "ok"
        assert health["apps"]["alpha"]["status"] == "mounted"
        assert health["apps"]["ghost"]["status"] == "skipped"
        assert "apps.ghost_app_not_written" in health["apps"]["ghost"]["reason"]
        # sub-app lifespans ran under the gateway: each app loaded its runner
        ready = wait_ready(client)
        assert ready["apps"]["alpha"]["ready"] and ready["apps"]["beta"]["ready"]
        assert ready["apps"]["alpha"]["runners"]["double"]["version"] == "1.2.3"
        assert client.get("/alpha/ready").status_code == 200
        response = client.post("/beta/double", json={"x": 5}, headers={"X-Request-ID": "trace-9"})
        assert response.status_code == 200 and response.json()["y"] == 10
        assert response.headers.get_list("x-request-id") == ["trace-9"]  # one id through both layers
        assert len(client.get("/health").headers["x-request-id"]) == 32
        assert client.head("/health").status_code == 200  # load balancers probe with HEAD too
        generated = client.post("/beta/double", json={"x": 1})
        assert len(generated.headers.get_list("x-request-id")) == 1
        assert response.headers["x-model-version"] == "1.2.3"
        metrics = client.get("/alpha/metrics").text
        assert 'triptych_requests_total{app="test",method="POST",route="/double",status="200"} 1.0' not in metrics
        assert 'triptych_requests_total{app="test",method="POST",route="/double",status="200"}' in client.get("/beta/metrics").text
        assert client.get("/ghost/anything").status_code == 404
        assert client.get("/nowhere").json()["error"]["code"] == "not_found"
        index = client.get("/").json()["apps"]
        assert index["beta"]["docs"] == "/beta/docs" and "page" not in index["beta"]
        assert index["alpha"]["page"] == "/alpha/ui/" and client.get(index["alpha"]["page"]).text.endswith("alpha</title>")
        page = client.get("/", headers={"Accept": "text/html,application/xhtml+xml"})  # a browser at the address
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert '<a href="/alpha/ui/">open the page</a>' in page.text and '<a href="/beta/docs">API docs</a>' in page.text
        assert "ghost</strong> (skipped)" in page.text and page.headers["content-security-policy"]
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("error")  # FastAPI warns of a duplicate operation id
            schemas = [client.get(path).json() for path in ("/openapi.json", "/alpha/openapi.json")]
        for schema in schemas:
            ids = [op["operationId"] for item in schema["paths"].values() for op in item.values()]
            assert len(ids) == len(set(ids)) and "get" in schema["paths"]["/health"]
        assert client.head("/alpha/ready").status_code == 200
        # an app's address opens its page (or, without one, its docs); HEAD works on pages too
        assert client.get("/alpha").url.path == "/alpha/ui/" and client.get("/beta/").url.path == "/beta/docs"
        assert client.head("/alpha/ui/").status_code == 200
        docs = client.get("/alpha/docs")
        assert docs.status_code == 200 and "/alpha/openapi.json" in docs.text  # docs work under the mount


def test_a_mounted_apps_trailing_slash_redirect_keeps_its_mount_and_the_clients_address():
    with TestClient(create_gateway(plugins=[ALPHA]), base_url="http://upstream.internal:8000") as client:
        wait_ready(client)
        moved = client.get("/alpha/health/", follow_redirects=False)
        assert moved.status_code in (307, 308) and moved.headers["location"] == "/alpha/health"


def test_not_ready_when_an_app_failed_or_none_mounted():
    with TestClient(create_gateway(plugins=[ALPHA, BROKEN])) as client:
        ready = client.get("/ready")
        assert ready.status_code == 503
        assert ready.json()["apps"]["broken"]["status"] == "failed"
        assert "bug" in ready.json()["apps"]["broken"]["reason"]
        assert client.get("/health").status_code == 200
    with TestClient(create_gateway(plugins=[UNWRITTEN])) as client:
        assert client.get("/ready").status_code == 503
        assert client.get("/health").status_code == 200


def test_single_app_and_unknown_names():
    gateway = create_gateway(["beta"], plugins=[ALPHA, BETA])
    assert sorted(gateway.state.mounted) == ["beta"]
    with pytest.raises(KeyError, match="installed apps: alpha, beta"):
        create_gateway(["gamma"], plugins=[ALPHA, BETA])


def test_installed_plugins_are_discovered():
    from core.plugins import discover_plugins

    names = {p.name: p.mount for p in discover_plugins()}
    assert names == {"customer-service": "/customer-service", "industrial": "/industrial", "medical": "/medical"}


def test_gateway_under_uvicorn_loads_sub_apps(tmp_path):
    """The real server path: uvicorn runs only the gateway's lifespan, which must start each app's."""
    import time

    import httpx

    from core.serving.bench import LoopbackServer

    with LoopbackServer(create_gateway(plugins=[ALPHA, UNWRITTEN])) as server:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and httpx.get(server.url + "/ready").status_code != 200:
            time.sleep(0.05)  # LoopbackServer waits for /ready, so this is normally already true
        ready = httpx.get(server.url + "/ready").json()
        assert ready["ready"] and ready["apps"]["alpha"]["ready"] and ready["apps"]["ghost"]["status"] == "skipped"
        response = httpx.post(server.url + "/alpha/double", json={"x": 4})
        assert response.status_code == 200 and response.json()["y"] == 8
        assert response.headers["x-model-sha256"] == "ab" * 32
