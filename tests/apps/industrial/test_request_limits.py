"""What a request may ask of the industrial API: a time budget that grows with its boards, one rule for
sample_rate, and a 415 for a body that is not a multipart form."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient

from apps.industrial.api import create_app
from apps.industrial.settings import IndustrialSettings
from tests.apps.industrial.conftest import board_png, vibration_signal

KEY = {"X-API-Key": "k"}
LARGEST = 4096  # IndustrialSettings.max_image_side


def _settings(tiny_bundles, tmp_path, **overrides) -> IndustrialSettings:
    return IndustrialSettings(
        detector_dir=tiny_bundles / "detector", vibration_dir=tiny_bundles / "vibration", fusion_dir=tiny_bundles / "fusion",
        template_detector_dir=tiny_bundles / "detector_template", defect_classifier_dir=tiny_bundles / "defect_classifier",
        database_url=f"sqlite:///{tmp_path}/t.db", artefact_dir=tmp_path / "art", api_keys={"k": "line"},
        torch_threads=1, detector_backend="torch", detector_precision="fp32", **overrides,
    )


def _ready(client: TestClient) -> TestClient:
    for _ in range(400):
        if client.get("/ready").status_code == 200:
            break
        time.sleep(0.05)
    return client


@pytest.fixture
def client(tiny_bundles, tmp_path):
    with TestClient(create_app(_settings(tiny_bundles, tmp_path))) as c:
        yield _ready(c)


def traced_board(side: int, shift: int = 0) -> np.ndarray:
    """A board of horizontal traces and scattered pin-holes: of the patterns tried, the slowest to inspect with a
    template at 4096 px (its registration scans every shift of the whole board)."""
    rng = np.random.default_rng(0)
    board = np.full((side, side), 255, np.uint8)
    for y in range(0, side, 40):
        board[y : y + 6, :] = 0
    dots = 4000 * side // LARGEST
    board[rng.integers(0, side, dots), rng.integers(0, side, dots)] = 0
    return np.roll(board, shift, 0)


def _png(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _wav() -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, vibration_signal(rate=12_000, seconds=0.3), 12_000, format="WAV", subtype="FLOAT")
    return buf.getvalue()


def _npy() -> bytes:
    buf = io.BytesIO()
    np.save(buf, vibration_signal(seconds=0.3).astype(np.float64))
    return buf.getvalue()


def _csv() -> bytes:
    return ("accel_g\n" + "\n".join(f"{v:.6f}" for v in vibration_signal(seconds=0.3))).encode()


# ------------------------------------------------------------------------------------ time budget
def test_a_batch_of_the_largest_boards_with_templates_gets_the_time_its_work_needs(tiny_bundles, tmp_path):
    """Registering a 4096 px template alone outlasts a short request's timeout (here 0.2 s); the boards of one
    call share model calls, so every board of the call waits for the work of all of them, and the app stays
    ready meanwhile."""
    settings = _settings(tiny_bundles, tmp_path, request_timeout_s=0.2)
    big, big_template = _png(traced_board(LARGEST)), _png(traced_board(LARGEST, shift=3))
    small = board_png(seed=1)
    with TestClient(create_app(settings)) as c:
        batcher = _ready(c).app.state.batchers["inspect"]
        real_submit, budgets = batcher.submit, []

        async def submit(item, timeout_s=None):
            budgets.append(timeout_s)
            return await real_submit(item, timeout_s=timeout_s)

        batcher.submit = submit
        files = [("images", ("big.png", big, "image/png")), ("images", ("small.png", small, "image/png")),
                 ("templates", ("big_t.png", big_template, "image/png")), ("templates", ("small_t.png", small, "image/png"))]
        r = c.post("/v1/inspect/batch", files=files, headers=KEY)
        assert r.status_code == 200, r.text
        assert [x["board"] for x in r.json()["results"]] == [0, 1] and r.json()["errors"] == []
        megapixels = (2 * LARGEST**2 + 2 * 160**2) / 1e6
        expected = 0.2 + 2 * settings.seconds_per_board + settings.seconds_per_megapixel * megapixels
        assert budgets == [pytest.approx(expected)] * 2
        r = c.post("/v1/inspect", files={"image": ("big.png", big, "image/png"), "template": ("t.png", big_template, "image/png")},
                   headers=KEY)
        assert r.status_code == 200, r.text
        assert budgets[-1] == pytest.approx(0.2 + settings.seconds_per_board + settings.seconds_per_megapixel * 2 * LARGEST**2 / 1e6)
        assert c.get("/ready").status_code == 200


@pytest.mark.slow
def test_the_shipped_models_inspect_the_largest_board_within_its_budget_on_one_thread(tmp_path):
    """The per-unit costs in IndustrialSettings are what the shipped models need on one thread, with room to
    spare: a 4096 px board with its template (the dearest accepted board) and a 640 px one, each within its
    share of a call's budget (the request_timeout_s on top is left for queueing)."""
    from apps.industrial.service import InspectionItem, load_runner

    settings = IndustrialSettings(database_url=f"sqlite:///{tmp_path}/t.db", artefact_dir=tmp_path / "art",
                                  torch_threads=1, detector_workers=1)
    runner = load_runner(settings)
    for side in (640, LARGEST):
        board, template = traced_board(side), traced_board(side, shift=3)
        started = time.perf_counter()
        [result] = runner.predict_batch([InspectionItem(board, template)])
        seconds = time.perf_counter() - started
        assert isinstance(result, dict), result
        share = settings.seconds_per_board + settings.seconds_per_megapixel * 2 * side**2 / 1e6
        assert seconds < share, f"a {side} px board with template took {seconds:.2f} s; its budget share is {share:.2f} s"


# ------------------------------------------------------------------------------------ sample_rate
VIBRATION_FILES = {
    "none": None,
    "csv": ("v.csv", _csv(), "text/csv"),
    "npy": ("v.npy", _npy(), "application/octet-stream"),
    "wav": ("v.wav", _wav(), "audio/wav"),
}


@pytest.mark.parametrize("rate", ["nan", "inf", "-inf", "0", "-1"])
@pytest.mark.parametrize("kind", list(VIBRATION_FILES))
def test_a_sample_rate_that_is_not_a_positive_number_is_refused_the_same_way_whatever_the_file(client, kind, rate):
    # a WAV carries its own rate, and NaN compared with it used to pass unnoticed
    files = {"image": ("b.png", board_png(), "image/png")}
    if VIBRATION_FILES[kind] is not None:
        files["vibration"] = VIBRATION_FILES[kind]
    r = client.post("/v1/inspect", files=files, data={"sample_rate": rate}, headers=KEY)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["message"] == "sample_rate must be a positive number"


def test_a_batch_refuses_a_nan_sample_rate_with_wav_vibrations(client):
    files = [("images", ("b.png", board_png(), "image/png")), ("vibrations", VIBRATION_FILES["wav"])]
    r = client.post("/v1/inspect/batch", files=files, data={"sample_rate": "nan"}, headers=KEY)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["message"] == "sample_rate must be a positive number"
    # the WAV's own rate, or a positive one that agrees with it, is still fine
    assert client.post("/v1/inspect/batch", files=files, headers=KEY).status_code == 200
    assert client.post("/v1/inspect/batch", files=files, data={"sample_rate": "12000"}, headers=KEY).status_code == 200


# ------------------------------------------------------------------------------------ body type
@pytest.mark.parametrize("path,field", [("/v1/inspect", "'image'"), ("/v1/inspect/batch", "'images'")])
@pytest.mark.parametrize("body", [
    {"content": board_png(), "headers": {"content-type": "image/png"}},
    {"json": {"image": "aGVsbG8="}},
    {"data": {"sample_rate": "12000"}},  # url-encoded: a form, but one that cannot carry files
    {"content": board_png()},  # no content type at all
], ids=["raw-png", "json", "urlencoded", "no-content-type"])
def test_a_body_that_is_not_a_multipart_form_is_refused_with_415_naming_the_form(client, path, field, body):
    body = dict(body)  # the parameters are shared by both paths
    r = client.post(path, headers={**KEY, **body.pop("headers", {})}, **body)
    assert r.status_code == 415, r.text
    error = r.json()["error"]
    assert error["code"] == "unsupported_media_type"
    assert "multipart/form-data" in error["message"] and field in error["message"] and "PNG" in error["message"]
