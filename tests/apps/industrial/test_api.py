"""HTTP contract of /v1/inspect and /v1/inspect/batch on tiny bundles and generated inputs."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient

from apps.industrial.api import create_app
from apps.industrial.settings import IndustrialSettings
from tests.apps.industrial.conftest import BLOB_BOXES, blob_board, board_png, encode, vibration_signal


@pytest.fixture(params=["bayes", "learned"])
def client(tiny_bundles, tmp_path, request):
    settings = IndustrialSettings(
        detector_dir=tiny_bundles / "detector", vibration_dir=tiny_bundles / "vibration", fusion_dir=tiny_bundles / "fusion",
        template_detector_dir=tiny_bundles / "detector_template", defect_classifier_dir=tiny_bundles / "defect_classifier",
        database_url=f"sqlite:///{tmp_path}/t.db", artefact_dir=tmp_path / "art", api_keys={"k": "line", "a": "agent", "adm": "admin"},
        torch_threads=1, detector_backend="torch", detector_precision="fp32", decision_rule=request.param,
    )
    with TestClient(create_app(settings)) as c:
        for _ in range(400):
            if c.get("/ready").status_code == 200:
                break
            time.sleep(0.05)
        yield c


KEY = {"X-API-Key": "k"}


def _csv(x: np.ndarray) -> bytes:
    return ("accel_g\n" + "\n".join(f"{v:.6f}" for v in x)).encode()


def test_inspect_image_and_vibration(client):
    files = {"image": ("b.png", board_png(defect=True), "image/png"), "vibration": ("v.csv", _csv(vibration_signal(seconds=0.4)), "text/csv")}
    r = client.post("/v1/inspect", files=files, data={"sample_rate": "12000"}, headers=KEY)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["decision"] in {"pass", "fail", "review"}
    assert set(body["machine_state"]["probabilities"]) == {"normal", "ball", "inner_race", "outer_race"}
    assert abs(sum(body["machine_state"]["probabilities"].values()) - 1) < 1e-3
    assert abs(sum(body["modality_weights"].values()) - 1) < 1e-3 and 0 <= body["defect_probability"] <= 1
    for d in body["defects"]:
        assert set(d) >= {"class", "confidence", "box_px", "size_mm"}
        assert abs(d["size_mm"] - max(d["box_px"][2] - d["box_px"][0], d["box_px"][3] - d["box_px"][1]) / 48.0) < 0.01
    assert body["id"] and body["model_version"] == r.headers["x-model-version"]
    assert {"decode_ms", "detector_ms", "vibration_ms", "fusion_ms"} <= set(body["timings_ms"])


def test_inspect_image_only_and_wav_and_npy(client):
    r = client.post("/v1/inspect", files={"image": ("b.png", board_png(), "image/png")}, headers=KEY)
    assert r.status_code == 200, r.text
    assert r.json()["machine_state"] is None and r.json()["modality_weights"]["vibration"] == 0
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, vibration_signal(rate=48_000, seconds=0.3), 48_000, format="WAV", subtype="FLOAT")
    r = client.post("/v1/inspect", files={"vibration": ("v.wav", buf.getvalue(), "audio/wav")}, headers=KEY)
    assert r.status_code == 200, r.text
    assert r.json()["decision"] in {"review", "fail"}  # no image: never "pass"
    npy = io.BytesIO()
    np.save(npy, vibration_signal(seconds=0.3).astype(np.float64))
    r = client.post("/v1/inspect", files={"vibration": ("v.npy", npy.getvalue(), "application/octet-stream")},
                    data={"sample_rate": "12000"}, headers=KEY)
    assert r.status_code == 200, r.text


def test_template_is_accepted(client):
    png = board_png(seed=3)
    r = client.post("/v1/inspect", files={"image": ("b.png", png, "image/png"), "template": ("t.png", png, "image/png")}, headers=KEY)
    assert r.status_code == 200, r.text
    assert r.json()["template_refuted"] == sum(bool(d.get("refuted_by_template")) for d in r.json()["defects"])
    assert r.json()["detector_input"] == "image+template"  # routed to the template-aware detector
    assert "det-template@t" in r.headers["x-model-version"] and "defect-classifier@" in r.headers["x-model-version"]
    r = client.post("/v1/inspect", files={"image": ("b.png", png, "image/png")}, headers=KEY)
    assert r.json()["detector_input"] == "image"


@pytest.mark.parametrize(
    "files,data,fragment",
    [
        ({"image": ("x.png", b"not an image at all", "image/png")}, {}, ""),
        ({"vibration": ("v.csv", b"1.0\n2.0\n", "text/csv")}, {"sample_rate": "12000"}, "at least"),
        ({"vibration": ("v.csv", _csv(np.full(5000, np.nan)), "text/csv")}, {"sample_rate": "12000"}, "NaN"),
        ({"vibration": ("v.csv", _csv(np.random.randn(5000)), "text/csv")}, {}, "sample_rate"),
        ({"vibration": ("v.csv", _csv(np.random.randn(5000)), "text/csv")}, {"sample_rate": "5"}, "outside"),
        # finite but beyond float32: the models' NaN used to surface as "Out of range float values are not JSON compliant"
        ({"vibration": ("v.csv", _csv(np.random.randn(5000) * 1e37), "text/csv")}, {"sample_rate": "12000"}, "must lie within"),
        ({"vibration": ("v.csv", b"", "text/csv")}, {"sample_rate": "12000"}, ""),
        ({}, {}, "send an image"),
    ],
)
def test_bad_input_is_a_clear_4xx(client, files, data, fragment):
    r = client.post("/v1/inspect", files=files or {"unused": ("u.txt", b"x", "text/plain")}, data=data, headers=KEY)
    assert 400 <= r.status_code < 500, r.text
    assert fragment in r.json()["error"]["message"]


def test_uploads_are_decoded_off_the_event_loop(client, monkeypatch):
    """Parsing a 50 MB CSV takes seconds; on the event loop it stalled every app behind the gateway
    (even /health) for that long. Decoding must run in a worker thread."""
    import asyncio

    from apps.industrial import service

    seen = []

    def spy(decode):
        def wrapped(*args, **kwargs):
            try:
                asyncio.get_running_loop()
                seen.append("event loop")
            except RuntimeError:
                seen.append("worker thread")
            return decode(*args, **kwargs)
        return wrapped

    for name in ("decode_image", "decode_vibration", "vibration_windows"):
        monkeypatch.setattr(service, name, spy(getattr(service, name)))
    files = {"image": ("b.png", board_png(), "image/png"), "vibration": ("v.csv", _csv(vibration_signal(seconds=0.3)), "text/csv")}
    r = client.post("/v1/inspect", files=files, data={"sample_rate": "12000"}, headers=KEY)
    assert r.status_code == 200, r.text
    assert seen == ["worker thread"] * 3


def test_wrong_template_size_and_auth(client):
    files = {"image": ("b.png", board_png(size=160), "image/png"), "template": ("t.png", board_png(size=96), "image/png")}
    r = client.post("/v1/inspect", files=files, headers=KEY)
    assert r.status_code == 422 and "aligned" in r.json()["error"]["message"]
    assert client.post("/v1/inspect", files={"image": ("b.png", board_png(), "image/png")}).status_code == 401
    assert client.post("/v1/inspect", files={"image": ("b.png", board_png(), "image/png")}, headers={"X-API-Key": "a"}).status_code == 403


def test_batch(client):
    files = [("images", (f"b{i}.png", board_png(seed=i), "image/png")) for i in range(3)]
    files += [("vibrations", (f"v{i}.csv", _csv(vibration_signal(seconds=0.3, seed=i)), "text/csv")) for i in range(3)]
    r = client.post("/v1/inspect/batch", files=files, data={"sample_rate": "12000"}, headers=KEY)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == 3 and len({x["id"] for x in results}) == 3
    assert [x["detector_input"] for x in results] == ["image"] * 3
    r = client.post("/v1/inspect/batch", files=files[:3] + files[3:4], data={"sample_rate": "12000"}, headers=KEY)
    assert r.status_code == 422 and "one per board" in r.json()["error"]["message"]
    files = [("images", (f"b{i}.png", board_png(seed=i), "image/png")) for i in range(2)]
    files += [("templates", (f"t{i}.png", board_png(seed=i), "image/png")) for i in range(2)]
    r = client.post("/v1/inspect/batch", files=files, headers=KEY)
    assert r.status_code == 200, r.text
    assert [x["detector_input"] for x in r.json()["results"]] == ["image+template"] * 2
    r = client.post("/v1/inspect/batch", files=files[:3], headers=KEY)
    assert r.status_code == 422 and "templates" in r.json()["error"]["message"]


def _boxes(inspection: dict) -> list[list[float]]:
    return sorted(d["box_px"] for d in inspection["defects"])


def _near(boxes, expected, px: float = 1.0) -> bool:  # JPEG ringing may move a blob's edge by a pixel
    return len(boxes) == len(expected) and np.abs(np.array(boxes) - np.array(expected)).max() <= px


def test_a_board_rotated_by_its_exif_orientation_gets_the_boxes_of_the_board_as_displayed(client, blob_detector):
    """A JPEG stored on its side with the EXIF tag "rotate 90" (6) is shown upright by a browser: the service reads
    it upright too, image and template alike, single and batch calls, so box_px are where the page draws them."""
    upright = blob_board()  # 200x120 as displayed
    stored = np.ascontiguousarray(np.rot90(upright, 1))  # the file's pixels: 120x200, turned a quarter left
    tagged, png = encode(stored, "JPEG", orientation=6), encode(upright, "PNG")

    def inspect(image: bytes, template: bytes | None = None) -> dict:
        files = {"image": ("b.jpg", image, "image/jpeg")}
        if template is not None:
            files["template"] = ("t.jpg", template, "image/jpeg")
        r = client.post("/v1/inspect", files=files, headers=KEY)
        assert r.status_code == 200, r.text
        return r.json()

    assert _boxes(inspect(png)) == sorted(BLOB_BOXES)  # the blob detector on the upright board
    assert _near(_boxes(inspect(tagged)), sorted(BLOB_BOXES))  # the same boxes, in the displayed board's pixels
    w = upright.shape[1]  # sanity: the same file without its tag is read as stored, its boxes turned with it
    assert _near(_boxes(inspect(encode(stored, "JPEG"))), sorted([y1, w - x2, y2, w - x1] for x1, y1, x2, y2 in BLOB_BOXES))
    # templates are read as displayed too: a tagged one fits an upright image and the other way round
    bare = blob_board(blobs=False)
    for image, template in ((tagged, encode(bare)), (png, encode(np.ascontiguousarray(np.rot90(bare, 1)), "JPEG", 6))):
        result = inspect(image, template)
        assert result["detector_input"] == "image+template" and _near(_boxes(result), sorted(BLOB_BOXES))
    files = [("images", ("a.jpg", tagged, "image/jpeg")), ("images", ("b.png", png, "image/png"))]
    r = client.post("/v1/inspect/batch", files=files, headers=KEY)
    assert r.status_code == 200, r.text
    assert all(_near(_boxes(x), sorted(BLOB_BOXES)) for x in r.json()["results"])


def test_batch_reports_a_board_the_model_fails_on_beside_the_stored_others(client):
    from core.serving import ApiError

    batcher = client.app.state.batchers["inspect"]
    real_submit, calls = batcher.submit, []

    async def submit(item, timeout_s=None):
        calls.append(item)
        if len(calls) == 2:
            raise ApiError(503, "queue_full", "the model queue is full; retry shortly")
        if len(calls) == 3:
            raise RuntimeError("a bug")
        return await real_submit(item, timeout_s=timeout_s)

    batcher.submit = submit
    files = [("images", (f"b{i}.png", board_png(seed=i), "image/png")) for i in range(4)]
    r = client.post("/v1/inspect/batch", files=files, headers=KEY)
    assert r.status_code == 200, r.text
    body = r.json()
    assert [x["board"] for x in body["results"]] == [0, 3]
    assert [(e["board"], e["code"]) for e in body["errors"]] == [(1, "queue_full"), (2, "internal_error")]
    stored = client.app.state.store.list_results("industrial", "inspect_batch")
    assert sorted(x["id"] for x in stored) == sorted(x["id"] for x in body["results"])

    async def full(item, timeout_s=None):
        raise ApiError(503, "queue_full", "full", headers={"Retry-After": "1"})

    batcher.submit = full
    r = client.post("/v1/inspect/batch", files=files[:2], headers=KEY)
    assert r.status_code == 503 and r.headers["Retry-After"] == "1"  # every board failed: the call fails as one


def test_a_stored_inspection_reads_back_as_answered_with_its_board_serial(client):
    r = client.post("/v1/inspect", files={"image": ("b.png", board_png(defect=True), "image/png")},
                    data={"board_id": "SN-0042/L3"}, headers=KEY)
    assert r.status_code == 200, r.text
    answered = r.json()
    assert answered["board_id"] == "SN-0042/L3"
    stored = client.get(f"/v1/inspections/{answered['id']}", headers=KEY)
    assert stored.status_code == 200, stored.text
    stored = stored.json()
    assert stored.pop("created_at") and answered.pop("created_at") is None
    assert stored == answered  # model version and serial included: which models decided, on which board

    files = [("images", (f"b{i}.png", board_png(seed=i), "image/png")) for i in range(2)]
    r = client.post("/v1/inspect/batch", files=files, data={"board_ids": ["A-1", "A-2"]}, headers=KEY)
    assert r.status_code == 200, r.text
    assert [(x["board"], x["board_id"]) for x in r.json()["results"]] == [(0, "A-1"), (1, "A-2")]
    listed = client.get("/v1/inspections", params={"limit": 3}, headers=KEY).json()["results"]
    assert [x["board_id"] for x in listed] == ["A-2", "A-1", "SN-0042/L3"]  # newest first, both endpoints
    decision = answered["decision"]
    same = client.get("/v1/inspections", params={"decision": decision}, headers=KEY).json()["results"]
    assert answered["id"] in [x["id"] for x in same] and all(x["decision"] == decision for x in same)
    other = {"pass": "fail", "fail": "pass", "review": "pass"}[decision]
    assert answered["id"] not in [x["id"] for x in client.get("/v1/inspections", params={"decision": other}, headers=KEY).json()["results"]]
    board = client.get("/v1/inspections", params={"board_id": "SN-0042/L3"}, headers=KEY).json()["results"]
    assert [x["id"] for x in board] == [answered["id"]]  # one board's history, found by the database
    assert client.get("/v1/inspections", params={"board_id": "<x>"}, headers=KEY).status_code == 422

    assert client.get("/v1/inspections/nope", headers=KEY).status_code == 404
    assert client.get(f"/v1/inspections/{answered['id']}", headers={"X-API-Key": "a"}).status_code == 403  # an agent, not the line
    assert client.get("/v1/inspections", params={"decision": "maybe"}, headers=KEY).status_code == 422


@pytest.mark.parametrize("board_id", ["<script>", "a" * 65, "SN\n42", " leading-space"])
def test_a_board_serial_that_is_not_one_is_refused_before_anything_runs(client, board_id):
    r = client.post("/v1/inspect", files={"image": ("b.png", board_png(), "image/png")}, data={"board_id": board_id}, headers=KEY)
    assert r.status_code == 422 and "board_id must be" in r.json()["error"]["message"]
    files = [("images", (f"b{i}.png", board_png(seed=i), "image/png")) for i in range(2)]
    r = client.post("/v1/inspect/batch", files=files, data={"board_ids": ["ok-1"]}, headers=KEY)
    assert r.status_code == 422 and "board_ids" in r.json()["error"]["message"]
    assert client.app.state.store.list_results("industrial") == []


def test_the_period_summary_counts_what_was_answered(client):
    import datetime as dt

    answered = []
    for i in range(3):
        r = client.post("/v1/inspect", files={"image": ("b.png", board_png(defect=i != 1, seed=i), "image/png")}, headers=KEY)
        assert r.status_code == 200, r.text
        answered.append(r.json())
    r = client.post("/v1/inspect", files={"vibration": ("v.csv", _csv(vibration_signal(seconds=0.4)), "text/csv")},
                    data={"sample_rate": "12000"}, headers=KEY)
    assert r.status_code == 200, r.text
    answered.append(r.json())

    r = client.get("/v1/inspections:summary", headers=KEY)
    assert r.status_code == 200, r.text
    s = r.json()
    assert s["complete"] and s["inspections"] == 4 and s["boards_imaged"] == 3
    for decision in ("pass", "fail", "review"):
        assert s["decisions"][decision] == sum(a["decision"] == decision for a in answered)
    kept = [d["class"] for a in answered for d in a["defects"] if not d.get("refuted_by_template")]
    assert {c["class"]: c["defects"] for c in s["defect_classes"]} == {c: kept.count(c) for c in set(kept)}
    assert s["machine_states"] == {answered[-1]["machine_state"]["label"]: 1}

    now = dt.datetime.now(dt.UTC)
    before = client.get("/v1/inspections:summary", params={"until": (now - dt.timedelta(hours=1)).isoformat()}, headers=KEY)
    assert before.status_code == 200 and before.json()["inspections"] == 0  # the period is honoured
    local = now.astimezone(dt.timezone(dt.timedelta(hours=-5))) - dt.timedelta(minutes=10)  # another offset, same moment
    assert client.get("/v1/inspections:summary", params={"since": local.isoformat()}, headers=KEY).json()["inspections"] == 4
    bad = client.get("/v1/inspections:summary", params={"since": now.isoformat(), "until": now.isoformat()}, headers=KEY)
    assert bad.status_code == 422 and "must be before" in bad.json()["error"]["message"]
    assert client.get("/v1/inspections:summary", params={"since": "yesterday"}, headers=KEY).status_code == 422
    assert client.get("/v1/inspections:summary", headers={"X-API-Key": "a"}).status_code == 403


def test_an_admin_erases_a_stored_inspection_and_the_erasure_is_audited(client):
    r = client.post("/v1/inspect", files={"image": ("b.png", board_png(), "image/png")}, data={"board_id": "SN-9"}, headers=KEY)
    assert r.status_code == 200, r.text
    inspection = r.json()["id"]
    assert client.delete(f"/v1/inspections/{inspection}", headers=KEY).status_code == 403  # the line may not
    assert client.delete(f"/v1/inspections/{inspection}", headers={"X-API-Key": "adm"}).status_code == 204
    assert client.get(f"/v1/inspections/{inspection}", headers=KEY).status_code == 404
    assert client.get("/v1/inspections", params={"board_id": "SN-9"}, headers=KEY).json()["results"] == []
    erased = client.app.state.store.list_audit("industrial", action="results:erase")
    assert [a["outcome"]["result_id"] for a in erased] == [inspection] and erased[0]["role"] == "admin"
    assert client.delete(f"/v1/inspections/{inspection}", headers={"X-API-Key": "adm"}).status_code == 404


def test_a_period_exports_as_csv_one_row_per_board_oldest_first(client):
    import csv
    import datetime as dt

    since = dt.datetime.now(dt.UTC)
    files = [("images", (f"b{i}.png", board_png(defect=i == 0, seed=i), "image/png")) for i in range(2)]
    r = client.post("/v1/inspect/batch", files=files, data={"board_ids": ["SN-1", "SN-2"]}, headers=KEY)
    assert r.status_code == 200, r.text
    answered = r.json()["results"]
    r = client.get("/v1/inspections.csv", params={"since": since.isoformat()}, headers=KEY)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert r.headers["content-disposition"].startswith('attachment; filename="inspections-')
    table = list(csv.DictReader(io.StringIO(r.text)))
    assert [row["board_id"] for row in table] == ["SN-1", "SN-2"]  # oldest first
    for row, board in zip(table, answered):
        kept = [d for d in board["defects"] if not d.get("refuted_by_template")]
        assert row["id"] == board["id"] and row["decision"] == board["decision"] and int(row["defects"]) == len(kept)
        assert dt.datetime.fromisoformat(row["created_at"]) >= since - dt.timedelta(seconds=1)
    assert client.get("/v1/inspections.csv", params={"until": since.isoformat(), "since": since.isoformat()},
                      headers=KEY).status_code == 422
    assert client.get("/v1/inspections.csv", headers={"X-API-Key": "a"}).status_code == 403


def test_a_batch_is_stored_whole_or_not_at_all(client, monkeypatch):
    """A batch whose third board's write failed used to answer 500 with two boards stored: the line re-sent it
    and the shift's summary counted those boards twice."""
    from sqlalchemy.exc import OperationalError

    store = client.app.state.store
    real = store.save_results

    def fails_on_the_third(app, kind, items, role=None, audit=None):
        if len(items) > 2:  # the store's one transaction fails (the rollback itself is test_store's)
            raise OperationalError("INSERT", {}, Exception("database is locked"))
        return real(app, kind, items, role, audit)

    monkeypatch.setattr(store, "save_results", fails_on_the_third)
    files = [("images", (f"b{i}.png", board_png(seed=i), "image/png")) for i in range(4)]
    long_id = "r" * 64  # a valid request id: each board's must still fit the 64-character column
    r = client.post("/v1/inspect/batch", files=files, data={"board_ids": [f"SN-{i}" for i in range(4)]},
                    headers=KEY | {"X-Request-ID": long_id})
    assert r.status_code == 503 and r.json()["error"]["code"] == "storage_unavailable", r.text
    assert store.list_results("industrial", "inspect_batch") == []
    monkeypatch.undo()
    r = client.post("/v1/inspect/batch", files=files, headers=KEY | {"X-Request-ID": long_id})
    assert r.status_code == 200, r.text
    stored = store.list_results("industrial", "inspect_batch")
    assert len(stored) == 4 and all(len(row["request_id"]) <= 64 for row in stored)
    assert sorted(row["request_id"][-2:] for row in stored) == ["-0", "-1", "-2", "-3"]
