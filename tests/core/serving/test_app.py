"""create_service_app: error shape, never 500 on bad input, request ids, model headers, readiness,
results committed before the response, metrics, logs without bodies."""

from __future__ import annotations

import json
import logging
import threading

import pytest
from fastapi.testclient import TestClient

from core.serving import ResultStore
from core.serving.logs import JsonFormatter
from tests.core.serving.helpers import DoubleRunner, make_app, wait_ready


def _shape(response):
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "detail"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]


def test_health_ready_and_model_headers(tmp_path):
    with TestClient(make_app(tmp_path)) as client:
        assert client.get("/health").json() == {"status": "ok", "app": "test"}
        ready = wait_ready(client)
        assert ready["runners"] == {"double": {"version": "1.2.3", "sha256": "ab" * 32, "queue": 0, "stalled": False}}
        response = client.post("/double", json={"x": 2})
        assert response.status_code == 200 and response.json()["y"] == 4
        assert response.headers["x-model-version"] == "1.2.3"
        assert response.headers["x-model-sha256"] == "ab" * 32
        assert len(response.headers["x-request-id"]) == 32
        echoed = client.get("/health", headers={"X-Request-ID": "trace-42"})
        assert echoed.headers["x-request-id"] == "trace-42"
        hostile = client.get("/health", headers={"X-Request-ID": "a b\x7f" * 40})
        assert hostile.headers["x-request-id"] != "a b\x7f" * 40
        assert "/health" in client.get("/openapi.json").json()["paths"]
        assert client.head("/health").status_code == 200 and client.head("/ready").status_code == 200  # load balancers' probes


def test_not_ready_until_models_load_then_ready(tmp_path):
    gate = threading.Event()

    def slow_loader():
        gate.wait(10)
        return {"double": DoubleRunner()}

    with TestClient(make_app(tmp_path, load_runners=slow_loader)) as client:
        assert client.get("/health").status_code == 200  # the process answers while loading
        loading = client.get("/ready")
        assert loading.status_code == 503 and loading.json()["ready"] is False
        early = client.post("/double", json={"x": 1})
        assert early.status_code == 503 and _shape(early)["code"] == "not_ready"
        assert "retry-after" in early.headers
        assert early.headers["x-model-version"] == "loading"
        gate.set()
        wait_ready(client)
        assert client.post("/double", json={"x": 1}).json()["y"] == 2


def test_load_failure_reported_by_ready(tmp_path):
    def broken():
        raise FileNotFoundError("weights/model.safetensors missing")

    with TestClient(make_app(tmp_path, load_runners=broken)) as client:
        for _ in range(200):
            body = client.get("/ready").json()
            if body["error"]:
                break
            threading.Event().wait(0.02)
        assert body["ready"] is False and "FileNotFoundError" in body["error"]
        response = client.post("/double", json={"x": 1})
        assert response.status_code == 503 and _shape(response)["code"] == "model_unavailable"


BAD_INPUTS = [
    ("post", "/double", {"content": b"{not json", "headers": {"content-type": "application/json"}}),
    ("post", "/double", {"json": {"x": "seven"}}),
    ("post", "/double", {"json": {"y": 1}}),
    ("post", "/double", {"json": [1, 2, 3]}),
    ("post", "/double", {"content": b"\x00\xff\xfe" * 100, "headers": {"content-type": "application/octet-stream"}}),
    ("post", "/double", {"json": {"x": -5}}),  # the model refuses this item
    ("post", "/double", {"content": b'{"x": 1e400}', "headers": {"content-type": "application/json"}}),
    ("post", "/double", {"content": b'{"x": NaN}', "headers": {"content-type": "application/json"}}),
    ("get", "/double", {}),
    ("post", "/nowhere", {"json": {}}),
    ("post", "/image", {"data": {"file": "not a file"}}),
    ("post", "/image", {"content": b"--x\r\ngarbage", "headers": {"content-type": "multipart/form-data; boundary=x"}}),
    ("post", "/archive", {"files": {"file": ("a.zip", b"PK\x03\x04broken", "application/zip")}}),
]


@pytest.mark.parametrize("method,path,kwargs", BAD_INPUTS)
def test_bad_input_is_4xx_with_error_shape(tmp_path, method, path, kwargs):
    with TestClient(make_app(tmp_path), raise_server_exceptions=False) as client:
        wait_ready(client)
        response = getattr(client, method)(path, **kwargs)
        assert 400 <= response.status_code < 500, response.text
        error = _shape(response)
        assert error["code"] in {
            "invalid_request", "invalid_input", "not_found", "method_not_allowed", "corrupt_upload",
            "unsupported_media_type", "bad_request",
        }


def test_validation_errors_do_not_echo_input(tmp_path):
    with TestClient(make_app(tmp_path)) as client:
        wait_ready(client)
        response = client.post("/double", json={"x": "4111 1111 1111 1111"})
        assert response.status_code == 422
        assert "4111" not in response.text


def test_in_route_pydantic_errors_are_422_without_values(tmp_path):
    with TestClient(make_app(tmp_path)) as client:
        response = client.post("/parse-form", data={"meta": '{"x": "card 4111111111111111"}'})
        assert response.status_code == 422 and _shape(response)["code"] == "invalid_input"
        assert "4111111111111111" not in response.text and "x" in response.json()["error"]["message"]
        assert client.post("/parse-form", data={"meta": '{"x": 2}'}).json() == {"x": 2.0}


def test_real_bug_is_500_with_request_id_and_shape(tmp_path):
    with TestClient(make_app(tmp_path), raise_server_exceptions=False) as client:
        response = client.get("/bug")
        assert response.status_code == 500
        error = _shape(response)
        assert error["code"] == "internal_error"
        assert response.headers["x-request-id"] in error["message"]


def test_result_committed_before_response(tmp_path):
    app = make_app(tmp_path)
    with TestClient(app) as client:
        wait_ready(client)
        response = client.post("/double", json={"x": 21}, headers={"X-Request-ID": "req-1"})
        result_id = response.json()["id"]
        # a separate engine/connection (another process would see the same): the row is durable now
        other = ResultStore(app.state.settings.database_url)
        row = other.get_result(result_id)
        other.close()
        assert row is not None and row["payload"] == {"x": 21.0, "y": 42.0} and row["request_id"] == "req-1"


def test_failed_persistence_is_never_acknowledged(tmp_path):
    app = make_app(tmp_path)

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    with TestClient(app, raise_server_exceptions=False) as client:
        wait_ready(client)
        app.state.store.save_result = broken_save
        response = client.post("/double", json={"x": 1})
        assert response.status_code == 500 and "id" not in response.json()


def test_metrics_endpoint_and_per_app_registries(tmp_path):
    first = make_app(tmp_path / "a")
    second = make_app(tmp_path / "b")  # same metric names, same process: no registry clash
    with TestClient(first) as client, TestClient(second) as other:
        wait_ready(client)
        wait_ready(other)
        for x in range(5):
            client.post("/double", json={"x": x})
        client.post("/double", json={"x": -1})
        text = client.get("/metrics").text
        assert 'triptych_requests_total{app="test",method="POST",route="/double",status="200"} 5.0' in text
        assert 'route="/double",status="422"} 1.0' in text
        assert "triptych_request_seconds_bucket" in text
        assert "triptych_batch_size_count" in text and "triptych_queue_depth" in text
        assert 'triptych_model_info{app="test",runner="double",sha256="' + "ab" * 32 + '",version="1.2.3"} 1.0' in text
        assert 'triptych_batch_items_total{app="test",outcome="error",runner="double"} 1.0' in text
        assert 'route="/double"' not in other.get("/metrics").text  # separate registries


def test_request_log_is_json_metadata_without_body(tmp_path, caplog):
    secret = "Patient Jane Roe NHS 9434765919"
    with TestClient(make_app(tmp_path)) as client:
        wait_ready(client)
        with caplog.at_level(logging.INFO, logger="triptych.serving"):
            client.post("/double?note=" + secret.replace(" ", "%20"), json={"x": 3, "note": secret})
    records = [r for r in caplog.records if r.getMessage() == "request"]
    assert records
    lines = [JsonFormatter().format(r) for r in records]
    entry = json.loads(lines[-1])
    assert entry["route"] == "/double" and entry["status"] == 200 and entry["method"] == "POST"
    assert "request_id" in entry and "ms" in entry
    assert all("9434765919" not in line and "Jane" not in line and "note" not in line for line in lines)


def test_oversized_bodies_are_413_even_when_streamed(tmp_path):
    def chunks():
        for _ in range(40):
            yield b"a" * 65536  # 2.6 MB without a Content-Length (chunked)

    with TestClient(make_app(tmp_path, max_upload_bytes=100_000)) as client:
        wait_ready(client)
        for path, content_type in (("/image", "multipart/form-data; boundary=xyz"), ("/double", "application/json")):
            response = client.post(path, content=chunks(), headers={"content-type": content_type})
            assert response.status_code == 413 and _shape(response)["code"] == "too_large"
        declared = client.post("/double", content=b"x" * 1_200_000, headers={"content-type": "application/json"})
        assert declared.status_code == 413
        assert client.post("/double", json={"x": 1}).status_code == 200  # the app is fine afterwards


_OVER_A_PART = "x" * (1024 * 1024 + 1)  # Starlette's form parser ends a text field at 1 MB


@pytest.mark.parametrize("kwargs", [
    {"files": {"file": ("a.png", b"\x89PNG", "image/png")}, "data": {"note": _OVER_A_PART}},  # a multipart part
    {"data": {"note": _OVER_A_PART}},  # an urlencoded field
])
def test_a_text_field_over_the_form_limit_is_413_saying_the_limit_and_what_to_do(tmp_path, kwargs):
    """It was Starlette's 400 "Part exceeded maximum size of 1024KB.": the wrong status, and no word of
    what is accepted instead."""
    with TestClient(make_app(tmp_path), raise_server_exceptions=False) as client:
        wait_ready(client)
        response = client.post("/image", **kwargs)
        assert response.status_code == 413, response.text
        error = _shape(response)
        assert error["code"] == "too_large" and error["detail"] == {"max_field_bytes": 1024 * 1024}
        assert "1024 KB" in error["message"] and "as a file" in error["message"]
        assert "xxxx" not in response.text  # the field's content is not echoed


def test_an_app_names_its_own_text_limit_in_the_413(tmp_path):
    from core.serving import create_service_app
    from tests.core.serving.helpers import make_settings, router

    app = create_service_app(name="test", settings=make_settings(tmp_path), routers=[router], load_runners=dict,
                             text_limit_hint="'text' takes at most 20000 characters")
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.post("/image", data={"text": _OVER_A_PART})
        assert response.status_code == 413
        assert _shape(response)["message"] == ("A form field is over 1024 KB, the most a text field may hold; "
                                               "'text' takes at most 20000 characters.")


@pytest.mark.parametrize(("body", "content_type", "reason"), [
    (b"abc", "multipart/form-data", "Missing boundary"),
    (b'--x\r\nContent-Disposition: form-data\r\n\r\nhi\r\n--x--\r\n', "multipart/form-data; boundary=x", '"name"'),
    (b'--x\r\nContent-Disposition form-data\r\n\r\nhi\r\n--x--\r\n', "multipart/form-data; boundary=x", "Invalid multipart"),
    (b"&".join(b"f%d=1" % i for i in range(1001)), "application/x-www-form-urlencoded", "Too many fields"),
])
def test_other_malformed_forms_stay_400_naming_the_reason(tmp_path, body, content_type, reason):
    with TestClient(make_app(tmp_path), raise_server_exceptions=False) as client:
        wait_ready(client)
        response = client.post("/image", content=body, headers={"content-type": content_type})
        assert response.status_code == 400, response.text
        error = _shape(response)
        assert error["code"] == "bad_request" and error["message"].startswith("The form could not be read: ")
        assert reason in error["message"]


def test_failed_load_marks_model_headers_unavailable(tmp_path):
    def broken():
        raise FileNotFoundError("no weights")

    with TestClient(make_app(tmp_path, load_runners=broken)) as client:
        for _ in range(200):
            if client.get("/ready").json()["error"]:
                break
            threading.Event().wait(0.02)
        assert client.get("/health").headers["x-model-version"] == "unavailable"


def test_configure_logging_writes_json_lines(capsys):
    from core.serving.logs import configure_logging

    configure_logging("info")
    try:
        logging.getLogger("triptych.serving").info("request", extra={"route": "/x", "status": 200})
        line = capsys.readouterr().err.strip().splitlines()[-1]
        entry = json.loads(line)
        assert entry["msg"] == "request" and entry["route"] == "/x" and entry["level"] == "info"
        # uvicorn's own handshake line, as its WebSocket protocol writes it
        logging.getLogger("uvicorn.error").info('%s - "WebSocket %s" [accepted]', "127.0.0.1:5000",
                                                "/customer-service/v1/stream?key=agent-secret")
        entry = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
        assert entry["msg"] == '127.0.0.1:5000 - "WebSocket /customer-service/v1/stream" [accepted]'
    finally:
        for name in ("triptych", "uvicorn", "uvicorn.error"):
            logging.getLogger(name).filters.clear()
            logging.getLogger(name).handlers.clear()
            logging.getLogger(name).propagate = True
        logging.getLogger("uvicorn.access").disabled = False


def test_stalled_model_call_makes_ready_503(tmp_path):
    gate = threading.Event()
    runner = DoubleRunner(gate=gate)
    with TestClient(make_app(tmp_path, runner=runner, request_timeout_s=0.2), raise_server_exceptions=False) as client:
        wait_ready(client)
        timed_out = client.post("/double", json={"x": 1})  # the runner hangs on the gate
        assert timed_out.status_code == 504 and _shape(timed_out)["code"] == "timeout"
        threading.Event().wait(0.1)
        stalled = client.get("/ready")
        assert stalled.status_code == 503 and stalled.json()["runners"]["double"]["stalled"] is True
        gate.set()
        wait_ready(client)  # the call finished: ready again
        assert client.post("/double", json={"x": 2}).json()["y"] == 4


def test_a_database_that_cannot_take_the_result_is_a_503_and_the_log_quotes_none_of_it(tmp_path, caplog):
    import sqlite3

    with TestClient(make_app(tmp_path, database_busy_timeout_s=0.2)) as client:
        wait_ready(client)
        holder = sqlite3.connect(tmp_path / "serving.db", isolation_level=None, check_same_thread=False)
        holder.execute("BEGIN IMMEDIATE")  # another writer holds the database past the busy timeout
        with caplog.at_level(logging.INFO, logger="triptych.serving"):
            r = client.post("/double", json={"x": 123456.789}, headers={"X-Request-ID": "req-secret-42"})
        holder.rollback()
        assert r.status_code == 503 and r.json()["error"]["code"] == "storage_unavailable", r.text
        assert r.headers["retry-after"] == "5"
        assert client.post("/double", json={"x": 1}).status_code == 200  # and once it is free again, 200
    lines = [JsonFormatter().format(record) for record in caplog.records]
    failure = [json.loads(line) for line in lines if '"storage unavailable"' in line]
    assert failure and "sqlalchemy" in failure[0]["traceback"] and "message withheld" in failure[0]["traceback"]
    assert all("123456" not in line and "246913" not in line for line in lines)


def test_logged_tracebacks_keep_where_and_what_but_no_message():
    from core.serving.logs import traceback_without_messages

    card, name = "4539 1488 0343 6467", "Jane Roe"  # data reaches an exception at run time, never in source lines
    try:
        try:
            raise ValueError(f"card {card}")
        except ValueError as inner:
            raise RuntimeError(f"while reading {name}'s call") from inner
    except RuntimeError:
        import sys

        text = traceback_without_messages(sys.exc_info())
    assert "ValueError (message withheld)" in text and "RuntimeError (message withheld)" in text
    assert "test_logged_tracebacks_keep_where_and_what_but_no_message" in text  # the frames stay
    assert "4539" not in text and "Jane" not in text


def test_a_trailing_slash_redirect_stays_on_the_address_the_client_used(tmp_path):
    # Starlette writes the redirect absolute, from the client's Host header (behind a proxy: the upstream's
    # address, which a browser cannot reach); the service answers a path instead
    with TestClient(make_app(tmp_path), base_url="http://evil.example") as client:
        wait_ready(client)
        moved = client.get("/health/?probe=1", follow_redirects=False)
        assert moved.status_code == 307 and moved.headers["location"] == "/health?probe=1"
        assert client.get("/health/", follow_redirects=True).json()["status"] == "ok"


def test_a_location_elsewhere_is_left_alone():
    from core.serving.app import _same_site_location

    assert _same_site_location(b"https://other.example/x", "svc:8000") == b"https://other.example/x"
    assert _same_site_location(b"/already/a/path", "svc:8000") == b"/already/a/path"
    assert _same_site_location(b"http://SVC:8000/a/b?c=1#d", "svc:8000") == b"/a/b?c=1#d"
    assert _same_site_location(b"http://svc:8000", "svc:8000") == b"/"
