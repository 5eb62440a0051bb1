"""Tiny bundles and generated inputs for the industrial tests (no real data, seconds to build)."""

from __future__ import annotations

import io

import numpy as np
import pytest


@pytest.fixture(scope="session")
def tiny_bundles(tmp_path_factory):
    """Detector (random yolo11n at 128 px), vibration and fusion bundles in a temp folder."""
    import torch

    from apps.industrial.detector import DetectorConfig, build_model, detector_bundle_config, model_yaml
    from apps.industrial.encoders import VibrationEncoderConfig
    from apps.industrial.model import FusionModel, FusionModelConfig, VibrationClassifier
    from core.bundle import ModelCard, save_bundle

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("industrial_weights")
    cfg = model_yaml("yolo11n")
    det = build_model(cfg)
    config = DetectorConfig(arch="yolo11n", imgsz=128, conf=0.5, report_conf=0.01)
    save_bundle(root / "detector", det, detector_bundle_config(config, cfg), ModelCard("det", "t", "test"))
    tconfig = DetectorConfig.from_name("tiny-template")
    tconfig.conf, tconfig.report_conf = 0.5, 0.01
    save_bundle(root / "detector_template", build_model(cfg), {**detector_bundle_config(tconfig, cfg), "platt": {"a": 2.0, "b": -1.0}},
                ModelCard("det-template", "t", "test"))
    vib_cfg = VibrationEncoderConfig.from_name("tiny")
    vib = VibrationClassifier(vib_cfg)
    save_bundle(root / "vibration", vib, {"encoder": vib_cfg.to_dict(), "classes": ["normal", "ball", "inner_race", "outer_race"]},
                ModelCard("vib", "t", "test"))
    fcfg = FusionModelConfig.from_name("tiny")
    fcfg.image.in_dim = 6  # region score tokens: one per defect class
    fcfg.vibration_dim = vib_cfg.dim
    fusion = FusionModel(fcfg)
    save_bundle(root / "fusion", fusion, {"fusion": fcfg.to_dict(), "coupling": 0.5,
                 "bayes": {"platt_a": 1.0, "platt_b": 0.0, "train_prior": 0.2, "defect_rate_by_state": [0.2, 0.6, 0.9, 0.75]}}, ModelCard("fus", "t", "test"))
    # Defect classifier that calls every box of a board read with its template a pin-hole (zero weights,
    # biases favouring class 5), relabelling from confidence 0: the service's wiring shows in every class.
    from apps.industrial.reclassify import (
        CropClassifierConfig,
        DefectCropClassifier,
        RelabelConfig,
        reclassifier_config,
    )

    classifier = DefectCropClassifier(CropClassifierConfig.from_name("tiny"))
    with torch.no_grad():
        classifier.head[1].weight.zero_()
        classifier.head[1].bias.copy_(torch.tensor([0.0, 0, 0, 0, 0, 10.0]))
    save_bundle(root / "defect_classifier", classifier, reclassifier_config(classifier, RelabelConfig(min_confidence=0.0)),
                ModelCard("defect-classifier", "t", "test"))
    return root


def board_png(size: int = 160, seed: int = 0, defect: bool = False) -> bytes:
    """A binarised synthetic 'PCB': traces and pads, optionally a break (open) in one trace."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    a = np.zeros((size, size), np.uint8)
    for y in range(10, size - 10, 20):
        a[y : y + 5, 10 : size - 10] = 255
    for _ in range(6):
        x, y = rng.integers(10, size - 20, 2)
        a[y : y + 8, x : x + 8] = 255
    if defect:
        a[10:15, 60:66] = 0
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def vibration_signal(rate: int = 12_000, seconds: float = 0.5, impact_hz: float = 0.0, seed: int = 0) -> np.ndarray:
    """Noise plus, optionally, decaying 3 kHz bursts repeating at impact_hz (a bearing-fault caricature)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(rate * seconds)) / rate
    x = 0.1 * rng.standard_normal(len(t))
    if impact_hz:
        phase = (t * impact_hz) % 1.0
        x += np.exp(-(phase / impact_hz) / 0.002) * np.sin(2 * np.pi * 3000 * t)  # 2 ms ring-down
    return x.astype(np.float32)


# A board whose "defects" are white blocks on black, and a detector that finds exactly those: its boxes follow
# the pixels wherever an orientation puts them (the tiny random detectors find nothing).
BLOB_BOARD_SIZE = (120, 200)  # (H, W): not square, so a rotation shows
BLOB_BOXES = [[20.0, 30.0, 60.0, 50.0], [150.0, 90.0, 160.0, 100.0]]  # x1 y1 x2 y2: 40 px (0.83 mm) and 10 px (0.21 mm)


def blob_board(blobs: bool = True) -> np.ndarray:
    a = np.zeros(BLOB_BOARD_SIZE, np.uint8)
    for x1, y1, x2, y2 in BLOB_BOXES if blobs else []:
        a[int(y1) : int(y2), int(x1) : int(x2)] = 255
    return a


def encode(gray: np.ndarray, fmt: str = "PNG", orientation: int | None = None) -> bytes:
    """The pixels as stored in a file of ``fmt``, optionally with an EXIF orientation tag."""
    from PIL import Image

    buf = io.BytesIO()
    options = {"quality": 95} if fmt == "JPEG" else {}
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        options["exif"] = exif.tobytes()
    Image.fromarray(gray).save(buf, format=fmt, **options)
    return buf.getvalue()


@pytest.fixture()
def blob_detector(monkeypatch):
    """The service's detectors (both) report the white blocks of the tested image, class open, confidence 0.9."""
    from scipy import ndimage

    from apps.industrial import detector

    real = detector.detect_with_tokens

    def blobs(model, images, config, grid=4, conf=None):
        _, tokens = real(model, images, config, grid, conf)
        found = []
        for im in images:
            labels, _ = ndimage.label(im.encoded[..., 0] > 128)
            found.append([detector.Detection(0, 0.9, (float(s[1].start), float(s[0].start), float(s[1].stop), float(s[0].stop)))
                          for s in ndimage.find_objects(labels)])
        return found, tokens

    monkeypatch.setattr(detector, "detect_with_tokens", blobs)
