"""INT8 detector: built from a tiny random yolo11n, close to fp32, selected by a setting, refused when bad."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from tests.apps.industrial.conftest import board_png


@pytest.fixture(scope="module")
def int8_bundle(tmp_path_factory):
    """A tiny random yolo11n bundle (128 px) with detector-int8.onnx calibrated on generated boards."""
    import torch

    from apps.industrial.data import load_gray
    from apps.industrial.detector import (
        DetectorConfig,
        build_model,
        detector_bundle_config,
        model_yaml,
        prepare_image,
        quantize_detector,
    )
    from core.bundle import ModelCard, save_bundle

    root = tmp_path_factory.mktemp("int8")
    bundle = root / "detector"
    # A freshly built yolo11n's activations shrink to ~1e-9 by the head and its class bias prior
    # pins scores near 1e-3: quantisation error would be invisible. Batch-norm statistics taken on
    # generated boards (data-dependent init) and zero class biases give O(1) activations and spread
    # scores, on which INT8 error shows.
    torch.manual_seed(0)
    cfg = model_yaml("yolo11n")
    model = build_model(cfg)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # cumulative average over the init batch
    config = DetectorConfig(arch="yolo11n", imgsz=128, conf=0.5, report_conf=0.01)
    boards = np.stack([prepare_image(load_gray(board_png(size=128, seed=200 + s, defect=s % 2 == 0)), config).tensor for s in range(8)])
    model.train()
    with torch.no_grad():
        model(torch.from_numpy(boards))
    for head in model.model[-1].cv3:
        torch.nn.init.zeros_(head[-1].bias)
    model.eval()
    save_bundle(bundle, model, detector_bundle_config(config, cfg), ModelCard("tiny-det", "t", "test"))
    images = []
    for seed in range(8):
        path = root / f"calib{seed}.png"
        path.write_bytes(board_png(size=128, seed=100 + seed, defect=seed % 2 == 1))
        images.append(path)
    quantize_detector(bundle, images, cache_dir=root / "cache", log=lambda *_: None)
    return bundle


def test_int8_model_is_quantised_and_close_to_fp32(int8_bundle, tmp_path):
    import onnx

    from apps.industrial.data import load_gray
    from apps.industrial.detector import INT8_FILE, load_onnx_detector, prepare_image

    fp32, config, _ = load_onnx_detector(int8_bundle, threads=1, cache_dir=tmp_path, precision="fp32")
    int8, _, _ = load_onnx_detector(int8_bundle, threads=1, precision="int8")
    assert int8.path.name == INT8_FILE and fp32.path.name != INT8_FILE
    ops = {n.op_type for n in onnx.load(str(int8.path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert int8.path.stat().st_size < 0.5 * fp32.path.stat().st_size  # int8 weights: ~1/4 of fp32

    # Random weights are chaotic (no redundancy to absorb rounding), so "close" is judged against
    # what the model's outputs vary by between two boards, not against a fixed tolerance.
    x, y = (prepare_image(load_gray(board_png(size=128, seed=s, defect=True)), config).tensor[None] for s in (7, 9))
    p32, p8, q32 = fp32(x), int8(x), fp32(y)
    assert p8.shape == p32.shape
    out32, out8, other = p32[0, 4:], p8[0, 4:], q32[0, 4:]  # class scores
    assert np.corrcoef(out8.ravel(), out32.ravel())[0, 1] > 0.5
    assert np.abs(out8 - out32).mean() < 0.75 * np.abs(other - out32).mean()  # measured 0.5-0.6
    box_err = np.abs(p8[0, :4] - p32[0, :4])  # box centre / size in input pixels (128 px input)
    assert np.median(box_err) < 4.0, np.median(box_err)


def test_card_records_int8_and_the_weights_it_came_from(int8_bundle):
    from core.bundle import sha256_file

    card = json.loads((int8_bundle / "card.json").read_text())
    meta = card["extra"]["int8"]
    assert meta["sha256"] == sha256_file(int8_bundle / "detector-int8.onnx")
    assert meta["source_sha256"] == card["sha256"] == sha256_file(int8_bundle / "model.safetensors")
    assert meta["sha256"] in (int8_bundle / "MODEL_CARD.md").read_text()


def _settings(tiny_bundles, detector_dir, tmp_path, **kw):
    from apps.industrial.settings import IndustrialSettings

    kw.setdefault("template_detector_dir", None)
    return IndustrialSettings(detector_dir=detector_dir, vibration_dir=tiny_bundles / "vibration", fusion_dir=tiny_bundles / "fusion",
                              database_url=f"sqlite:///{tmp_path}/t.db", artefact_dir=tmp_path / "art", torch_threads=1, **kw)


def test_precision_setting_switches_backends(int8_bundle, tiny_bundles, tmp_path, monkeypatch):
    from apps.industrial.data import load_gray
    from apps.industrial.detector import INT8_FILE
    from apps.industrial.service import InspectionItem, load_runner

    monkeypatch.setenv("TRIPTYCH_HOME", str(tmp_path / "home"))  # the fp32 export cache
    assert _settings(tiny_bundles, int8_bundle, tmp_path).detector_precision in ("fp32", "int8")
    monkeypatch.setenv("TRIPTYCH_INDUSTRIAL_DETECTOR_PRECISION", "int8")
    assert _settings(tiny_bundles, int8_bundle, tmp_path).detector_precision == "int8"
    monkeypatch.delenv("TRIPTYCH_INDUSTRIAL_DETECTOR_PRECISION")

    item = InspectionItem(image=load_gray(board_png(size=128, seed=3, defect=True)))
    out = {}
    for precision in ("fp32", "int8"):
        runner = load_runner(_settings(tiny_bundles, int8_bundle, tmp_path, detector_precision=precision))
        assert (runner.detector.path.name == INT8_FILE) == (precision == "int8")
        assert ("-int8" in runner.version) == (precision == "int8")  # reported in X-Model-Version
        [result] = runner.predict_batch([item])
        assert result["decision"] in ("pass", "fail", "review")
        out[precision] = result
    with pytest.raises(ValueError, match="onnx"):
        load_runner(_settings(tiny_bundles, int8_bundle, tmp_path, detector_backend="torch", detector_precision="int8"))
    with pytest.raises(ValueError, match="precision"):
        load_runner(_settings(tiny_bundles, int8_bundle, tmp_path, detector_precision="int4"))


def test_missing_or_bad_int8_is_refused(int8_bundle, tiny_bundles, tmp_path):
    from apps.industrial.detector import INT8_FILE, load_onnx_detector
    from apps.industrial.fusion_train import set_detector_border
    from apps.industrial.service import load_runner
    from core.bundle import BundleError

    with pytest.raises(BundleError, match="no INT8 model"):  # a bundle that never had one
        load_onnx_detector(tiny_bundles / "detector", precision="int8")

    bad = tmp_path / "detector"
    shutil.copytree(int8_bundle, bad)
    data = bytearray((bad / INT8_FILE).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bad / INT8_FILE).write_bytes(bytes(data))
    with pytest.raises(BundleError, match="corrupt"):
        load_onnx_detector(bad, precision="int8")
    with pytest.raises(BundleError, match="corrupt"):  # the service refuses it at load too
        load_runner(_settings(tiny_bundles, bad, tmp_path, detector_precision="int8"))

    (bad / INT8_FILE).unlink()
    with pytest.raises(BundleError, match="missing"):
        load_onnx_detector(bad, precision="int8")

    other = tmp_path / "other"
    shutil.copytree(int8_bundle, other)
    card = json.loads((other / "card.json").read_text())
    card["extra"]["int8"]["source_sha256"] = "0" * 64
    (other / "card.json").write_text(json.dumps(card))
    with pytest.raises(BundleError, match="other weights"):
        load_onnx_detector(other, precision="int8")

    # a margin set after quantising: the INT8 model takes the old input size and must be rebuilt
    framed = tmp_path / "framed"
    shutil.copytree(int8_bundle, framed)
    set_detector_border(framed, 16)
    with pytest.raises(BundleError, match="takes 128 px inputs but the config asks for 160"):
        load_onnx_detector(framed, precision="int8")
    with pytest.raises(ValueError, match="multiple of 16"):
        set_detector_border(framed, 10)


def test_full_range_int8_is_refused_where_kernels_saturate(int8_bundle, monkeypatch):
    import core.compression as compression
    from apps.industrial.detector import INT8_FILE, load_onnx_detector
    from core.bundle import BundleError

    assert not compression.full_range_int8_weights(int8_bundle / INT8_FILE)  # what quantize_detector writes: 7-bit
    monkeypatch.setattr(compression, "full_range_int8_weights", lambda path: True)  # a bundle quantised before that
    monkeypatch.setattr(compression, "int8_kernels_saturate", lambda: False)
    load_onnx_detector(int8_bundle, precision="int8")  # a VNNI (or non-x86) CPU runs it right
    monkeypatch.setattr(compression, "int8_kernels_saturate", lambda: True)
    with pytest.raises(BundleError, match="saturate.*rebuild"):
        load_onnx_detector(int8_bundle, precision="int8")


def test_calibration_refuses_validation_groups(tmp_path):
    from apps.industrial.detector import calibration_images

    pcb = tmp_path / "PCBData"
    lines = []
    for group in ("group00041", "group13000"):
        gid = group.removeprefix("group")
        (pcb / group / f"{gid}_not").mkdir(parents=True)
        (pcb / group / f"{gid}_not" / f"{gid}000.txt").write_text("")
        lines.append(f"{group}/{gid}/{gid}000.jpg {group}/{gid}_not/{gid}000.txt")
    (tmp_path / "train.txt").write_text(lines[0] + "\n")
    (tmp_path / "mixed.txt").write_text("\n".join(lines) + "\n")
    assert len(calibration_images(tmp_path, tmp_path / "train.txt", n=4)) == 1
    with pytest.raises(ValueError, match="validation board groups"):
        calibration_images(tmp_path, tmp_path / "mixed.txt", n=4)


@pytest.mark.parametrize("bundle", ["detector", "detector_template"])
def test_shipped_int8_detectors_hold_seven_bit_weights(bundle):
    """Full 8-bit weights saturate onnxruntime's kernels on x86 CPUs without VNNI: a shipped model must run right
    on every CPU, whatever the machine that checks it."""
    from pathlib import Path

    import apps.industrial
    from apps.industrial.detector import INT8_FILE
    from core.compression import full_range_int8_weights

    path = Path(apps.industrial.__file__).parent / "weights" / bundle / INT8_FILE
    assert not full_range_int8_weights(path)
    assert "7-bit" in json.loads((path.parent / "card.json").read_text())["extra"]["int8"]["format"]
