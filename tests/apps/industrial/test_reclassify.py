"""The defect crop classifier: crops, training, the relabelling rule, bundles (torch and onnxruntime),
evaluation and the service."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from apps.industrial.detector import Detection
from apps.industrial.reclassify import (
    CropClassifierConfig,
    CropTrainConfig,
    DefectCropClassifier,
    DefectReclassifier,
    RelabelConfig,
    crop_box,
    dihedral,
    jittered_box,
    load_reclassifier,
    no_template_view,
    train_crop_classifier,
    train_reclassifier_bundle,
)


def test_crop_box_keeps_context_and_pads_outside_the_image():
    cfg = CropClassifierConfig(size=16, context=0.5, min_side=8)
    encoded = np.zeros((64, 64, 3), np.uint8)
    encoded[20:30, 20:30] = 255
    crop = crop_box(encoded, (20, 20, 30, 30), cfg)  # 10 px box + 5 px each side = 20 px window
    assert crop.shape == (16, 16, 3) and crop.dtype == np.uint8
    assert crop[8, 8].tolist() == [255, 255, 255] and crop[0, 0].tolist() == [0, 0, 0]
    edge = crop_box(np.full((64, 64, 3), 200, np.uint8), (0, 0, 8, 8), cfg)  # the window hangs off the corner
    assert edge[0, 0].tolist() == [0, 0, 0] and edge[-1, -1].tolist() == [200, 200, 200]
    tiny = crop_box(encoded, (24, 24, 25, 25), cfg)  # a 1-px box still gets min_side of context
    assert tiny.shape == (16, 16, 3)


def test_jitter_and_dihedral_views():
    rng = np.random.default_rng(0)
    boxes = np.stack([jittered_box((10, 10, 30, 20), 0.1, rng) for _ in range(200)])
    assert np.all(boxes[:, 2] > boxes[:, 0]) and abs(np.mean((boxes[:, 0] + boxes[:, 2]) / 2) - 20) < 1
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    views = {tuple(dihedral(x, k).flatten().tolist()) for k in range(8)}
    assert len(views) == 8  # eight distinct orientations, each a permutation of the same pixels
    assert all(sorted(v) == sorted(x.flatten().tolist()) for v in views)


def test_no_template_view_matches_the_encoding_without_a_template():
    from apps.industrial.data import encode_input

    rng = np.random.default_rng(0)
    test, template = (
        (rng.random((32, 32)) > 0.5).astype(np.uint8) * 255,
        (rng.random((32, 32)) > 0.5).astype(np.uint8) * 255,
    )
    with_template = encode_input(test, template, registered=True)
    assert np.array_equal(no_template_view(with_template), encode_input(test, None))
    crops = torch.from_numpy(with_template).permute(2, 0, 1)[None].float()
    assert torch.equal(
        no_template_view(crops)[0].permute(1, 2, 0), torch.from_numpy(encode_input(test, None)).float()
    )


def _separable_crops(n: int, size: int = 16, seed: int = 0):
    """Class k = a bright blob in channel k % 3, small for k < 3 and large for k >= 3."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 6, n)
    x = np.zeros((n, size, size, 3), np.uint8)
    for i, k in enumerate(y):
        r = 2 if k < 3 else 6
        c = rng.integers(r, size - r, 2)
        x[i, c[0] - r : c[0] + r, c[1] - r : c[1] + r, k % 3] = 255
    return x, y


def test_training_learns_a_separable_task():
    x, y = _separable_crops(600)
    cfg = CropClassifierConfig.from_name("tiny")
    model = train_crop_classifier(x, y, cfg, CropTrainConfig(epochs=12, batch_size=32, lr=1e-2), log=None)
    xt, yt = _separable_crops(200, seed=1)
    with torch.no_grad():
        acc = float(
            (model(torch.from_numpy(xt).permute(0, 3, 1, 2).float() / 255).argmax(1).numpy() == yt).mean()
        )
    assert acc > 0.9


def _constant_model(probs: list[float]) -> DefectCropClassifier:
    """A classifier that answers ``probs`` whatever the crop (zero weights, log-probability biases)."""
    model = DefectCropClassifier(CropClassifierConfig.from_name("tiny"))
    with torch.no_grad():
        model.head[1].weight.zero_()
        model.head[1].bias.copy_(torch.log(torch.tensor(probs)))
    return model.eval()


def test_relabel_changes_classes_only_above_the_floor():
    encoded = np.zeros((64, 64, 3), np.uint8)
    dets = [
        Detection(0, 0.9, (5, 5, 15, 15)),
        Detection(2, 0.05, (30, 30, 40, 40)),
        Detection(4, 0.5, (40, 5, 50, 15)),
    ]
    sure = DefectReclassifier(
        _constant_model([0.01, 0.01, 0.01, 0.95, 0.01, 0.01]), RelabelConfig(min_confidence=0.1)
    )
    out = sure.relabel(dets, encoded)
    assert [d.cls for d in out] == [3, 2, 3]  # the low-confidence box keeps the detector's class
    assert [(d.confidence, d.box_px) for d in out] == [(d.confidence, d.box_px) for d in dets]
    # A close call goes to the detector's class: log(0.45) + 0.5 > log(0.55).
    close = DefectReclassifier(
        _constant_model([0.45, 0.55 - 4e-4, 1e-4, 1e-4, 1e-4, 1e-4]), RelabelConfig(detector_class_bonus=0.5)
    )
    assert close.relabel(dets[:1], encoded)[0].cls == 0
    assert (
        DefectReclassifier(close.model, RelabelConfig(detector_class_bonus=0.0))
        .relabel(dets[:1], encoded)[0]
        .cls
        == 1
    )
    assert sure.relabel([], encoded) == []
    # Two boxes on one defect that NMS kept because their classes differed: once both are class 3, the
    # weaker goes when they overlap at least as much as the detector's NMS IoU.
    twins = [
        Detection(3, 0.8, (5, 5, 15, 15)),
        Detection(4, 0.6, (5, 5, 15, 16)),
        Detection(4, 0.5, (40, 40, 50, 50)),
    ]
    assert [(d.cls, d.confidence) for d in sure.relabel(twins, encoded, nms_iou=0.6)] == [(3, 0.8), (3, 0.5)]
    assert len(sure.relabel(twins, encoded)) == 3  # without an IoU nothing is dropped


def test_bundle_round_trip_torch_and_onnx(tmp_path):
    x, y = _separable_crops(240)
    config = CropClassifierConfig.from_name("tiny")
    np.savez(
        tmp_path / "crops.npz", x=x, y=y, config=json.dumps(config.to_dict()), groups=np.array(["group00041"])
    )
    metrics = train_reclassifier_bundle(
        tmp_path / "crops.npz",
        tmp_path / "bundle",
        CropTrainConfig(epochs=2, batch_size=32),
        relabel=RelabelConfig(min_confidence=0.2),
        log=None,
    )
    assert metrics["train_crops"] == 240
    card = json.loads((tmp_path / "bundle" / "card.json").read_text())
    assert "group00041" in card["data"][0] and "--part defect-classifier" in card["reproduce"]
    eager = load_reclassifier(tmp_path / "bundle", backend="torch")
    onnx = load_reclassifier(tmp_path / "bundle", backend="onnx", cache_dir=tmp_path / "cache")
    assert eager.relabel_config.min_confidence == 0.2 and eager.sha256 and onnx.session is not None
    np.testing.assert_allclose(eager.probabilities(x[:7]), onnx.probabilities(x[:7]), atol=1e-4)
    with pytest.raises(ValueError, match="backend"):
        load_reclassifier(tmp_path / "bundle", backend="tensorrt")


def _eager_template_detector_that_sees_opens(tiny_bundles, out):
    """The tiny template detector with its class biases set so that every anchor reads 'open' at ~0.99."""
    from apps.industrial.detector import build_model
    from core.bundle import ModelCard, load_bundle, save_bundle

    bundle = load_bundle(tiny_bundles / "detector_template")
    model = build_model(bundle.config["model_yaml"])
    model.load_state_dict(bundle.state_dict)
    with torch.no_grad():
        for branch in model.model[-1].cv3:
            branch[-1].bias.fill_(-10.0)
            branch[-1].bias[0] = 6.0
    save_bundle(out, model, bundle.config, ModelCard("det-template-hot", "t", "test"))
    return out


def test_service_relabels_boxes_of_boards_sent_with_a_template(tiny_bundles, tmp_path):
    import time

    from fastapi.testclient import TestClient

    from apps.industrial.api import create_app
    from apps.industrial.settings import IndustrialSettings
    from tests.apps.industrial.conftest import board_png

    hot = _eager_template_detector_that_sees_opens(tiny_bundles, tmp_path / "hot")
    settings = IndustrialSettings(
        detector_dir=tiny_bundles / "detector",
        vibration_dir=tiny_bundles / "vibration",
        fusion_dir=tiny_bundles / "fusion",
        template_detector_dir=hot,
        defect_classifier_dir=tiny_bundles / "defect_classifier",
        database_url=f"sqlite:///{tmp_path}/t.db",
        artefact_dir=tmp_path / "art",
        api_keys={"k": "line"},
        torch_threads=1,
        detector_backend="torch",
        detector_precision="fp32",
        decision_rule="image",
    )
    files = {
        "image": ("b.png", board_png(seed=3, defect=True), "image/png"),
        "template": ("t.png", board_png(seed=3), "image/png"),
    }

    def inspect():
        with TestClient(create_app(settings)) as client:
            for _ in range(400):
                if client.get("/ready").status_code == 200:
                    break
                time.sleep(0.05)
            r = client.post("/v1/inspect", files=files, headers={"X-API-Key": "k"})
        assert r.status_code == 200, r.text
        return {d["class"] for d in r.json()["defects"]}, r.headers["x-model-version"]

    classes, version = inspect()
    assert classes == {"pin-hole"}  # the detector said 'open' everywhere; the tiny classifier says pin-hole
    assert "defect-classifier@t" in version
    settings.defect_classifier_dir = None
    classes, version = inspect()
    assert classes == {"open"} and "defect-classifier" not in version


def test_evaluation_relabels_the_tested_boards(tiny_bundles, tmp_path):
    from apps.industrial.data import PcbSample
    from apps.industrial.detector import load_detector
    from apps.industrial.evaluate import board_scores
    from tests.apps.industrial.conftest import board_png

    hot = _eager_template_detector_that_sees_opens(tiny_bundles, tmp_path / "hot")
    model, config, _ = load_detector(hot)
    (tmp_path / "t.png").write_bytes(board_png(seed=3, defect=True))
    (tmp_path / "r.png").write_bytes(board_png(seed=3))
    sample = PcbSample(
        tmp_path / "t.png", tmp_path / "r.png", np.array([[60, 10, 66, 15]], np.float32), np.array([0])
    )
    reclassifier = load_reclassifier(tiny_bundles / "defect_classifier", backend="torch")
    plain, top, *_ = board_scores(model, config, [sample], True, nms_conf=0.5)
    relabelled, top2, *_ = board_scores(
        model, config, [sample], True, nms_conf=0.5, reclassifier=reclassifier
    )
    assert {d.cls for d in plain[0]} == {0} and {d.cls for d in relabelled[0]} == {5}
    # Boxes and confidences are the detector's (same-class twins that clipping at the border made overlap
    # more than the NMS IoU are dropped, the stronger kept).
    assert {(d.confidence, d.box_px) for d in relabelled[0]} <= {(d.confidence, d.box_px) for d in plain[0]}
    assert max(d.confidence for d in relabelled[0]) == max(d.confidence for d in plain[0])
    assert all(np.array_equal(top[k], top2[k]) for k in top)  # board scores are the detector's either way


def test_board_scores_drop_boxes_the_template_refutes_as_the_service_does(tiny_bundles, tmp_path):
    from apps.industrial.data import PcbSample
    from apps.industrial.detector import load_detector
    from apps.industrial.evaluate import board_scores
    from apps.industrial.service import TEMPLATE_MIN_DIFF
    from tests.apps.industrial.conftest import board_png

    hot = _eager_template_detector_that_sees_opens(tiny_bundles, tmp_path / "hot")  # boxes everywhere at ~0.99
    model, config, _ = load_detector(hot)
    (tmp_path / "t.png").write_bytes(board_png(seed=3, defect=True))
    (tmp_path / "r.png").write_bytes(board_png(seed=3))
    sample = PcbSample(tmp_path / "t.png", tmp_path / "r.png", np.array([[60, 10, 66, 15]], np.float32), np.array([0]))
    dets, top, modes, *_ = board_scores(model, config, [sample], True, nms_conf=0.5)
    assert modes == ["repaired"] and TEMPLATE_MIN_DIFF > 0
    # the template read against itself differs nowhere: every box is refuted and the board passes, as in the service
    assert top["template"][0] == 0.0
    assert len(dets[0]) > 1  # the listed detections (for mAP) keep the refuted boxes
    # this random detector's boxes are large: at a lower share, those over the broken trace still count
    _, loose, *_ = board_scores(model, config, [sample], True, nms_conf=0.5, refute_min_diff=1e-6)
    assert loose["template"][0] == 0.0 and loose["test"][0] > 0.9
    _, every, *_ = board_scores(model, config, [sample], True, nms_conf=0.5, refute_min_diff=0.0)
    assert every["template"][0] > 0.9 and every["test"][0] == loose["test"][0]


def test_relabel_many_is_relabel_per_image():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = DefectCropClassifier(CropClassifierConfig.from_name("tiny")).eval()
    reclassifier = DefectReclassifier(model, RelabelConfig(min_confidence=0.1, detector_class_bonus=0.0))
    images = [rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in range(3)]
    boxes = [
        [Detection(0, 0.9, (5, 5, 15, 15)), Detection(1, 0.7, (5, 5, 15, 16)), Detection(2, 0.05, (30, 30, 40, 40))],
        [],
        [Detection(4, 0.5, (40, 5, 50, 15)), Detection(5, 0.3, (20, 20, 34, 30))],
    ]
    for iou in (None, 0.6):
        one_by_one = [reclassifier.relabel(d, e, nms_iou=iou) for d, e in zip(boxes, images)]
        assert reclassifier.relabel_many(boxes, images, nms_iou=iou) == one_by_one
    relabelled = reclassifier.relabel_many(boxes, images)
    assert [d.cls for ds in relabelled for d in ds] != [d.cls for ds in boxes for d in ds]  # the crops did decide
    assert relabelled[0][2].cls == 2  # below the confidence floor: the detector's class
    assert reclassifier.relabel_many([], []) == []
