"""Service logic without HTTP: decoding, decisions, template refutation, detection metrics."""

from __future__ import annotations

import io

import numpy as np
import pytest

from apps.industrial.detector import Detection, DetectorConfig, detection_scores
from apps.industrial.service import (
    DecisionPolicy,
    InspectionItem,
    InspectionRunner,
    _csv_first_column,
    _csv_first_column_fast,
    decode_image,
    decode_vibration,
    vibration_windows,
)
from tests.apps.industrial.conftest import blob_board, board_png, encode, vibration_signal

_X = np.random.default_rng(0).standard_normal(40)
CSV_LAYOUTS = {
    "plain": "\n".join(f"{v:.6f}" for v in _X),
    "header": "accel_g\n" + "\n".join(f"{v:.6f}" for v in _X),
    "two columns": "t,a\n" + "\n".join(f"{v},{i}" for i, v in enumerate(_X)),
    "tabs": "t\ta\n" + "\n".join(f"{v}\t0" for v in _X),
    "spaces": "\n".join(f"  {v}   0" for v in _X),
    "blank lines": "a\n\n" + "\n\n".join(f"{v}" for v in _X) + "\n\n",
    "crlf": "a\r\n" + "\r\n".join(f"{v}" for v in _X),
    "comma and space": "a, b\n" + "\n".join(f"{v}, 1" for v in _X),
    "two header lines": "title\nunits\n" + "\n".join(f"{v}" for v in _X),
    "decimal commas": "t;a\n" + "\n".join(f"{str(v).replace('.', ',')};0" for v in _X),
    "ragged rows": "a,b\n" + "\n".join(f"{v},1" if i % 2 else f"{v}" for i, v in enumerate(_X)),
}


@pytest.mark.parametrize("layout", sorted(CSV_LAYOUTS))
def test_the_fast_csv_reader_agrees_with_the_line_loop_or_leaves_it_the_file(layout):
    text = CSV_LAYOUTS[layout]
    fast, loop = _csv_first_column_fast(text), _csv_first_column(text)
    np.testing.assert_allclose(loop, _X, atol=1e-6)
    if layout in ("two header lines", "decimal commas", "ragged rows"):
        assert fast is None  # the line loop reads these
    else:
        np.testing.assert_array_equal(fast, loop)


def test_decode_vibration_formats():
    x = vibration_signal(seconds=0.3)
    csv = ("time_s,accel\n" + "\n".join(f"{v},{v}" for v in x)).encode()
    with pytest.raises(ValueError, match="non-numeric"):
        decode_vibration(b"1.0\nabc\n2.0\n", "csv", 12_000)
    signal, rate = decode_vibration(("a\n" + "\n".join(map(str, x))).encode(), "csv", 12_000)
    assert rate == 12_000 and np.allclose(signal, x, atol=1e-6)
    with pytest.raises(ValueError):  # first column is text after the header row
        decode_vibration(b"a,b\nx,1\n", "csv", 12_000)
    for sep in (";", "\t", " "):  # other separators: the first column is still the signal
        signal, _ = decode_vibration(("t" + sep + "a\n" + "\n".join(f"{v}{sep}0" for v in x)).encode(), "csv", 12_000)
        assert np.allclose(signal, x, atol=1e-6)
    european = "t;a\n" + "\n".join(f"{v:.6f}".replace(".", ",") + ";1,5" for v in x)  # decimal commas
    assert np.allclose(decode_vibration(european.encode(), "csv", 12_000)[0], x, atol=1e-5)
    with pytest.raises(ValueError, match="no numbers .* decimal point"):
        decode_vibration(b"time\nstart\nstop\n", "csv", 12_000)
    buf = io.BytesIO()
    np.save(buf, x[:, None])
    assert decode_vibration(buf.getvalue(), "npy", 12_000)[0].shape == x.shape
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="object arrays"):
        decode_vibration(buf.getvalue(), "npy", 12_000)
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, x, 12_000, format="WAV")
    with pytest.raises(ValueError, match="contradicts"):
        decode_vibration(buf.getvalue(), "wav", 48_000)
    assert decode_vibration(buf.getvalue(), "wav", None)[1] == 12_000
    del csv


def test_vibration_windows_resample_and_cap():
    assert vibration_windows(vibration_signal(rate=48_000, seconds=1.0), 48_000).shape == (5, 2048)
    assert vibration_windows(vibration_signal(seconds=3.0), 12_000).shape == (8, 2048)


def test_decode_image_limits():
    assert decode_image(board_png(size=64)).shape == (64, 64)
    with pytest.raises(ValueError, match="accepted sides"):
        decode_image(board_png(size=64), min_side=100)
    with pytest.raises(ValueError, match="PNG, JPEG"):
        decode_image(b"\x89PNG\r\n\x1a\n garbage")


def test_decode_image_scales_high_bit_depth_frames_instead_of_clipping_them():
    """A line camera's 12- or 16-bit frame (or a float one) decodes to the 8-bit board it shows; PIL's
    own conversion clips such frames at 255, i.e. almost white."""
    from PIL import Image

    gray = decode_image(board_png(size=64, defect=True))
    frames = {
        "12-bit TIFF": (Image.fromarray(gray.astype(np.uint16) * 16), "TIFF"),
        "16-bit PNG": (Image.fromarray(gray.astype(np.uint16) * 257), "PNG"),
        "float TIFF in 0..1": (Image.fromarray(gray.astype(np.float32) / 255), "TIFF"),
    }
    for name, (frame, fmt) in frames.items():
        buffer = io.BytesIO()
        frame.save(buffer, fmt)
        decoded = decode_image(buffer.getvalue())
        assert decoded.dtype == np.uint8 and decoded.shape == gray.shape, name
        assert np.abs(decoded.astype(int) - gray).max() <= 1, name


# EXIF orientation -> how a viewer turns the stored pixels to show them (numpy, independent of PIL's ImageOps)
SHOWN = {
    2: np.fliplr, 3: lambda a: np.rot90(a, 2), 4: np.flipud, 5: lambda a: a.T,
    6: lambda a: np.rot90(a, -1), 7: lambda a: np.rot90(a, 2).T, 8: lambda a: np.rot90(a, 1),
}


@pytest.mark.parametrize("orientation", sorted(SHOWN))
def test_a_jpeg_is_decoded_as_displayed_its_exif_orientation_applied(orientation):
    """A phone's or camera's JPEG tagged e.g. "rotate 90": browsers (the web page's canvas) show it turned, so the
    service reads it turned too, and box_px refer to what a user sees."""
    stored = np.ascontiguousarray(np.rot90(blob_board(), 1))  # a 200x120 file of the 120x200 board
    untagged, tagged = decode_image(encode(stored, "JPEG")), decode_image(encode(stored, "JPEG", orientation))
    np.testing.assert_array_equal(tagged, SHOWN[orientation](untagged))  # the same JPEG pixels, turned
    if orientation in (6, 8):
        assert tagged.shape == (120, 200) and untagged.shape == (200, 120)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF", "BMP", "JPEG"])
def test_an_image_without_an_orientation_decodes_as_its_pixels_are_stored(fmt):
    """PNG, TIFF, BMP and a JPEG without the tag (DeepPCB's scans; see test_real_data) or tagged upright (1) are
    read exactly as before: the pixels as stored."""
    from PIL import Image

    gray = decode_image(board_png(size=96, defect=True))
    for orientation in (None, 1) if fmt in ("JPEG", "TIFF") else (None,):
        data = encode(gray, fmt, orientation)
        np.testing.assert_array_equal(decode_image(data), np.asarray(Image.open(io.BytesIO(data)).convert("L")))


def _runner(policy):
    """An image-only runner without models: enough to exercise the decision logic."""
    runner = InspectionRunner.__new__(InspectionRunner)
    runner.fusion, runner.policy, runner.decision_rule = None, policy, "image"
    runner.det_config, runner.template_detector = DetectorConfig(), None  # gray input: templates only refute boxes
    return runner


def test_template_refutes_unsupported_boxes_and_decides():
    from apps.industrial.data import load_gray

    image = load_gray(board_png(defect=True))
    template = load_gray(board_png(defect=False))
    on_defect = Detection(0, 0.9, (58.0, 8.0, 68.0, 17.0))  # covers the cut trace
    elsewhere = Detection(1, 0.8, (100.0, 100.0, 110.0, 110.0))  # nothing differs there
    runner = _runner(DecisionPolicy(defect_threshold=0.75, report_threshold=0.25))
    item = InspectionItem(image, template)
    out = runner._decide(item, [on_defect, elsewhere], None, None, None, 1.0, 0.0)
    by_class = {d["class"]: d for d in out["defects"]}
    assert by_class["short"]["refuted_by_template"] and not by_class["open"].get("refuted_by_template")
    assert out["template_refuted"] == 1 and out["decision"] == "fail"
    # only the refuted box above threshold -> the board passes
    out = runner._decide(item, [elsewhere], None, None, None, 1.0, 0.0)
    assert out["decision"] == "pass" and len(out["defects"]) == 1
    # without a template the same box fails the board; below the decision threshold it is listed only
    assert runner._decide(InspectionItem(image), [elsewhere], None, None, None, 1.0, 0.0)["decision"] == "fail"
    low = Detection(1, 0.5, (100.0, 100.0, 110.0, 110.0))
    out = runner._decide(InspectionItem(image), [low], None, None, None, 1.0, 0.0)
    assert out["decision"] == "pass" and len(out["defects"]) == 1
    assert out["defects"][0]["size_mm"] == pytest.approx(10 / 48, abs=1e-3)


def test_a_misregistered_template_still_refutes():
    """A template a few pixels off differs along every edge; registered, it refutes as an aligned one does."""
    from apps.industrial.data import load_gray
    from apps.industrial.service import template_support

    image = load_gray(board_png(defect=True))
    shifted = np.roll(load_gray(board_png(defect=False)), (2, -3), axis=(0, 1))
    on_edges = Detection(1, 0.8, (12.0, 12.0, 24.0, 24.0))  # trace edges, no defect: 27 % differ unregistered
    assert template_support(image, shifted, on_edges.box_px) > 0.2
    runner = _runner(DecisionPolicy(defect_threshold=0.75, report_threshold=0.25))
    item = InspectionItem(image, shifted)
    runner.align_templates([item])  # predict_batch's first step
    out = runner._decide(item, [on_edges], None, None, None, 1.0, 0.0)
    assert out["defects"][0]["template_difference"] == 0.0
    assert out["defects"][0]["refuted_by_template"] and out["decision"] == "pass"


def test_detection_scores():
    gt = (np.array([[10, 10, 30, 30], [50, 50, 60, 70]], np.float32), np.array([0, 3]))
    perfect = [Detection(0, 0.9, (10, 10, 30, 30)), Detection(3, 0.8, (50, 50, 60, 70))]
    s = detection_scores([perfect], [gt])
    assert s.map50 == pytest.approx(1.0, abs=0.01) and s.map50_95 == pytest.approx(1.0, abs=0.01)
    wrong_class = [Detection(1, 0.9, (10, 10, 30, 30)), Detection(2, 0.8, (50, 50, 60, 70))]
    assert detection_scores([wrong_class], [gt]).map50 < 0.01
    shifted = [Detection(0, 0.9, (12, 12, 32, 32)), Detection(3, 0.8, (50, 50, 60, 70))]  # IoU 0.68 and 1
    s = detection_scores([shifted], [gt])
    assert s.map50 == pytest.approx(1.0, abs=0.01) and s.map50_95 < 0.95


def test_a_defect_below_its_class_acceptable_size_is_listed_but_does_not_fail_the_board():
    from apps.industrial.data import load_gray
    from apps.industrial.settings import IndustrialSettings

    image = load_gray(board_png(defect=True))
    spur = Detection(3, 0.9, (100.0, 100.0, 104.0, 104.0))  # 4 px: 0.083 mm at 48 px/mm
    opened = Detection(0, 0.9, (100.0, 100.0, 104.0, 104.0))  # the same size, an open
    policy = DecisionPolicy(defect_threshold=0.75, report_threshold=0.25, min_defect_mm_by_class={"spur": 0.1})
    runner = _runner(policy)
    out = runner._decide(InspectionItem(image), [spur], None, None, None, 1.0, 0.0)
    assert out["decision"] == "pass" and out["defects"][0]["below_min_size"] and out["defects"][0]["class"] == "spur"
    out = runner._decide(InspectionItem(image), [opened], None, None, None, 1.0, 0.0)
    assert out["decision"] == "fail" and "below_min_size" not in out["defects"][0]  # the class not named: 0 mm
    policy.min_defect_mm = 0.05  # the global floor applies to the classes not named
    assert runner._decide(InspectionItem(image), [opened], None, None, None, 1.0, 0.0)["decision"] == "fail"
    policy.min_defect_mm = 0.09
    assert runner._decide(InspectionItem(image), [opened], None, None, None, 1.0, 0.0)["decision"] == "pass"
    with pytest.raises(ValueError, match="unknown defect classes"):
        IndustrialSettings(min_defect_mm_by_class={"scratch": 0.1})


@pytest.mark.parametrize("band", [0.5, 0.7, -0.1])
def test_a_review_band_outside_a_probability_is_refused(band):
    from apps.industrial.settings import IndustrialSettings

    with pytest.raises(ValueError, match="review_band"):
        IndustrialSettings(review_band=band)
    assert IndustrialSettings(review_band=0.0).review_band == 0.0
