"""The template-aware detector input: one encoding (data.encode_input) in training data, training-time
template dropout, evaluation and serving; the no-template path; shapes and dtypes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from apps.industrial.data import drop_template, encode_input, load_gray, repaired_scan
from apps.industrial.detector import DetectorConfig, prepare_image
from tests.apps.industrial.conftest import board_png
from tests.apps.industrial.test_data import make_deeppcb

TD = DetectorConfig(arch="yolo11n", imgsz=160, conf=0.6, conf_no_template=0.3, input="template-diff")


def _pair(size=160):
    return load_gray(board_png(size, seed=3, defect=True)), load_gray(board_png(size, seed=3, defect=False))


def test_encoding_channels_shapes_and_no_template_path():
    test, template = _pair()
    enc = encode_input(test, template)
    assert enc.shape == (160, 160, 3) and enc.dtype == np.uint8
    assert np.array_equal(enc[..., 0], test) and np.array_equal(enc[..., 1], template)  # already bilevel
    assert enc[..., 2].max() == 255 and (enc[..., 2] > 0).sum() == 5 * 6  # only the cut trace differs
    alone = encode_input(test, None)
    assert np.array_equal(alone[..., 1], alone[..., 0]) and not alone[..., 2].any()
    assert np.array_equal(drop_template(enc), alone)  # training-time dropout == a request without template
    gray = encode_input(test, template, "gray")
    assert all(np.array_equal(gray[..., c], test) for c in range(3))  # the gray model never sees the template
    with pytest.raises(ValueError, match="aligned and equal in size"):
        encode_input(test, template[:100])
    with pytest.raises(ValueError, match="2-D"):
        encode_input(np.zeros((4, 4, 3), np.uint8), None)
    noisy = (test.astype(int) + np.random.default_rng(0).integers(-60, 60, test.shape)).clip(0, 255).astype(np.uint8)
    assert set(np.unique(encode_input(noisy, template))) <= {0, 255}  # binarised before the difference


def test_a_shifted_template_is_registered_before_the_difference():
    from apps.industrial.data import register_template

    test, template = _pair()
    for dy, dx in ((2, -3), (-4, 1), (0, 3)):
        moved = np.roll(template, (dy, dx), axis=(0, 1))
        back, shift = register_template(test, moved)
        assert shift == (-dy, -dx)
        assert np.array_equal(back[8:-8, 8:-8], template[8:-8, 8:-8])
        diff = encode_input(test, moved)[..., 2]
        assert (diff[8:-8, 8:-8] > 0).sum() == 5 * 6  # only the cut trace, no edge lines from the shift
    same, shift = register_template(test, template)
    assert shift == (0, 0) and same is template  # a registered pair is left untouched
    beyond = np.roll(template, (9, 0), axis=(0, 1))  # further than max_shift: not searched
    assert max(abs(v) for v in register_template(test, beyond)[1]) <= 4


def test_prepare_image_is_the_encoding_letterboxed():
    test, template = _pair()
    for tmpl in (template, None):
        p = prepare_image(test, TD, tmpl)
        assert p.tensor.shape == (3, 160, 160) and p.tensor.dtype == np.float32
        assert 0.0 <= p.tensor.min() and p.tensor.max() <= 1.0
        assert np.array_equal(p.tensor, encode_input(test, tmpl).transpose(2, 0, 1) / np.float32(255))
    small = DetectorConfig(imgsz=64, input="template-diff")
    rect = prepare_image(test[:, :80], small, template[:, :80])
    assert rect.tensor.shape == (3, 64, 64) and rect.pad == (16, 0) and rect.scale == pytest.approx(0.4)
    assert np.allclose(rect.tensor[:, :, :16], 114 / 255)  # ultralytics' pad value in every channel


def test_prepared_training_data_decodes_to_the_same_encoding(tmp_path):
    """What ultralytics reads (cv2, BGR -> RGB in its Format step) equals encode_input of the board."""
    import cv2

    from apps.industrial.data import load_deeppcb, prepare_ultralytics

    root = make_deeppcb(tmp_path / "src")
    counts = prepare_ultralytics(root, tmp_path / "out", val_groups=("group13000",), input_mode="template-diff")
    assert counts == {"train": 2, "train_background": 2, "val": 2}
    assert "input: template-diff" in (tmp_path / "out" / "data.yaml").read_text()
    s = next(x for x in load_deeppcb(root) if x.group == "group00041")
    def read(name):
        return cv2.imread(str(tmp_path / "out" / "images" / "train" / name), cv2.IMREAD_COLOR)[..., ::-1]
    assert np.array_equal(read(f"{s.stem}.png"), encode_input(load_gray(s.image), load_gray(s.template)))
    background = read(f"{s.stem}_temp.png")
    assert np.array_equal(background, encode_input(repaired_scan(s), load_gray(s.template)))
    assert not background[..., 2].any()  # the repaired scan has no defect left
    with pytest.raises(ValueError, match="bilevel"):
        prepare_ultralytics(root, tmp_path / "g", input_mode="template-diff", bilevel=False)


def test_training_dropout_uses_the_no_template_encoding():
    from ultralytics.data.dataset import YOLODataset

    from apps.industrial.detector import template_dropout

    test, template = _pair()
    chw = torch.from_numpy(encode_input(test, template).transpose(2, 0, 1).copy())

    class Fake:
        augment = True
        transforms = staticmethod(lambda label: label)

        def get_image_and_label(self, index):
            return {"img": chw.clone()}

    undo = template_dropout(1.0, "template-diff")
    try:
        dropped = YOLODataset.__getitem__(Fake(), 0)["img"]
        Fake.augment = False  # validation / evaluation data are never dropped
        kept = YOLODataset.__getitem__(Fake(), 0)["img"]
    finally:
        undo()
    assert dropped.dtype == torch.uint8 and dropped.shape == chw.shape
    assert np.array_equal(dropped.numpy().transpose(1, 2, 0), encode_input(test, None))
    assert torch.equal(kept, chw)
    Fake.augment = True
    assert torch.equal(YOLODataset.__getitem__(Fake(), 0)["img"], chw)  # undone


class Recorder(torch.nn.Module):
    """Stands in for the detector: records its input, finds nothing."""

    def forward(self, x):
        self.seen = x.clone()
        return torch.zeros(x.shape[0], 4 + 6, 10)


def test_service_and_eval_feed_the_same_encoding(tmp_path):
    from apps.industrial.data import load_deeppcb
    from apps.industrial.evaluate import board_inputs
    from apps.industrial.service import DecisionPolicy, InspectionItem, InspectionRunner

    test, template = _pair()
    runner = InspectionRunner.__new__(InspectionRunner)
    runner.detector, runner.det_config, runner.vibration, runner.fusion = Recorder(), TD, None, None
    runner.template_detector = runner.template_config = None
    runner.policy, runner.decision_rule = DecisionPolicy(TD.conf, defect_threshold_no_template=TD.conf_no_template), "image"
    out = runner.predict_batch([InspectionItem(test, template), InspectionItem(test)])
    assert [o["decision"] for o in out] == ["pass", "pass"]
    seen = runner.detector.seen.numpy()
    assert np.array_equal(seen[0], prepare_image(test, TD, template).tensor)
    assert np.array_equal(seen[1], prepare_image(test, TD, None).tensor)  # no template: test, test, 0
    assert np.array_equal(seen[1][1], seen[1][0]) and not seen[1][2].any()
    assert runner.policy.threshold(True) == 0.6 and runner.policy.threshold(False) == 0.3

    root = make_deeppcb(tmp_path)
    s = load_deeppcb(root)[0]
    config = DetectorConfig(imgsz=64, input="template-diff")
    inputs = board_inputs(s, config)
    assert inputs["primary_clean"] == "repaired"
    assert np.array_equal(inputs["test"].tensor, prepare_image(load_gray(s.image), config, load_gray(s.template)).tensor)
    assert not inputs["repaired"].tensor[2].any() and not inputs["template"].tensor[2].any()
    alone = board_inputs(s, config, use_template=False)
    assert alone["primary_clean"] == "template"
    assert np.array_equal(alone["test"].tensor, prepare_image(load_gray(s.image), config).tensor)


def test_service_routes_boards_by_template():
    """With a template-aware second detector: boards with a template go to it, the others to the image-only one."""
    from apps.industrial.service import DecisionPolicy, InspectionItem, InspectionRunner

    test, template = _pair()
    runner = InspectionRunner.__new__(InspectionRunner)
    gray = DetectorConfig(imgsz=160, conf=0.75)
    runner.detector, runner.det_config, runner.template_detector, runner.template_config = Recorder(), gray, Recorder(), TD
    runner.vibration, runner.fusion, runner.decision_rule = None, None, "image"
    runner.policy = DecisionPolicy(0.75, defect_threshold_template=0.6)
    out = runner.predict_batch([InspectionItem(test), InspectionItem(test, template), InspectionItem(test)])
    assert [o["detector_input"] for o in out] == ["image", "image+template", "image"]
    assert runner.detector.seen.shape[0] == 2 and runner.template_detector.seen.shape[0] == 1
    assert np.array_equal(runner.template_detector.seen[0].numpy(), prepare_image(test, TD, template).tensor)
    assert np.array_equal(runner.detector.seen[0].numpy(), prepare_image(test, gray).tensor)  # gray: 3 x the image
    assert runner.policy.threshold(True) == 0.6 and runner.policy.threshold(False) == 0.75


def test_no_template_decision_uses_its_own_threshold():
    from apps.industrial.detector import Detection
    from apps.industrial.service import DecisionPolicy, InspectionItem, InspectionRunner

    test, template = _pair()
    runner = InspectionRunner.__new__(InspectionRunner)
    runner.det_config, runner.fusion, runner.decision_rule = TD, None, "image"
    runner.template_detector = runner.template_config = None
    runner.policy = DecisionPolicy(0.6, report_threshold=0.25, defect_threshold_no_template=0.3)
    box = Detection(0, 0.45, (58.0, 8.0, 68.0, 17.0))  # on the cut trace: the template supports it
    assert runner._decide(InspectionItem(test, template), [box], None, None, None, 1.0, 0.0)["decision"] == "pass"
    assert runner._decide(InspectionItem(test), [box], None, None, None, 1.0, 0.0)["decision"] == "fail"
    assert TD.decision_threshold(True) == 0.6 and TD.decision_threshold(False) == 0.3
    assert DetectorConfig(conf=0.7, conf_no_template=0.2).decision_threshold(False) == 0.7  # gray input: one threshold


def test_choose_threshold():
    from apps.industrial.evaluate import choose_threshold

    clean, defective = np.linspace(0.0, 0.2, 200), np.linspace(0.8, 1.0, 200)
    t = choose_threshold(defective, clean)
    assert 0.2 < t < 0.8 and t == pytest.approx(0.5, abs=0.05)
    overlap_clean, overlap_def = np.array([0.1, 0.2, 0.9]), np.array([0.3, 0.5, 0.95])
    t = choose_threshold(overlap_def, overlap_clean, slack=0.0)
    errors = (overlap_clean >= t).sum() + (overlap_def < t).sum()
    assert errors == 1


def test_tiny_template_model_runs_both_paths(tiny_bundles, tmp_path):
    """A random template-diff yolo11n bundle: prepared inputs of both paths go through the real detector."""
    from apps.industrial.detector import (
        build_model,
        detect,
        detector_bundle_config,
        load_detector,
        model_yaml,
    )
    from core.bundle import ModelCard, save_bundle

    torch.manual_seed(0)
    cfg = model_yaml("yolo11n")
    config = DetectorConfig.from_name("tiny-template")
    save_bundle(tmp_path / "det", build_model(cfg), detector_bundle_config(config, cfg), ModelCard("det", "t", "test"))
    model, loaded, _ = load_detector(tmp_path / "det")
    assert loaded.input == "template-diff" and loaded.imgsz == 128
    test, template = _pair(128)
    out = detect(model, [prepare_image(test, loaded, template), prepare_image(test, loaded)], loaded, conf=0.0)
    assert len(out) == 2 and all(isinstance(d, list) for d in out)


def test_a_large_board_is_registered_as_exactly_and_about_as_fast_as_a_640_px_one():
    import time

    from apps.industrial.data import register_template, shift_image

    rng = np.random.default_rng(0)
    board = np.full((4096, 4096), 255, np.uint8)
    board[(np.arange(4096) % 40) < 6, :] = 0
    board[:, (np.arange(4096) % 53) < 3] = 0
    board[rng.integers(0, 4096, 4000), rng.integers(0, 4096, 4000)] = 0
    for dy, dx in ((3, -2), (-4, 4), (1, 0)):
        start = time.perf_counter()
        _, shift = register_template(board, shift_image(board, -dy, -dx))
        assert shift == (dy, dx) and time.perf_counter() - start < 0.5  # stride 2 took 0.7-1.2 s


def _reference_shift(test, template, k=4, stride=2):
    """The search as first written (mean |difference| per shift, float), kept here to pin the fast one to it."""
    h, w = test.shape
    core = test[k:h - k:stride, k:w - k:stride].astype(np.int16)
    best, arg = np.abs(core - template[k:h - k:stride, k:w - k:stride]).mean(), (0, 0)
    for sy in range(-k, k + 1):
        for sx in range(-k, k + 1):
            if sy or sx:
                score = np.abs(core - template[k - sy:h - k - sy:stride, k - sx:w - k - sx:stride]).mean()
                if score < best - 1e-9:
                    best, arg = score, (sy, sx)
    return arg


@pytest.mark.parametrize("bilevel", [True, False])
def test_registration_chooses_the_shift_the_plain_search_chooses_ties_included(bilevel):
    from apps.industrial import data
    from apps.industrial.data import register_template, shift_image

    rng = np.random.default_rng(7)
    cases = 0
    for trial in range(40):
        h, w = int(rng.integers(40, 90)), int(rng.integers(40, 90))
        board = np.where(rng.random((h, w)) < rng.uniform(0.05, 0.6), 0, 255).astype(np.uint8)
        if trial % 4 == 0:  # periodic tracks: several shifts tie
            board[:] = 255
            board[:, (np.arange(w) % 3) == 0] = 0
        if not bilevel:
            board = rng.integers(0, 256, (h, w)).astype(np.uint8) if trial % 4 else board // 2 + 40
        template = shift_image(board, int(rng.integers(-5, 6)), int(rng.integers(-5, 6)))
        if trial % 3 == 0:  # and noise the shift cannot explain
            flip = rng.random((h, w)) < 0.1
            template = np.where(flip, 255 - template, template).astype(np.uint8)
        assert data._bilevel(board) == bilevel or trial % 4 == 0
        _, shift = register_template(board, template, stride=2)
        assert shift == _reference_shift(board, template), trial
        cases += 1
    blank = np.full((64, 64), 255, np.uint8)
    assert register_template(blank, blank)[1] == (0, 0)  # every shift ties: none is taken
    assert cases == 40


def test_bilevel_registration_counts_differing_pixels_with_or_without_numpy_bitwise_count(monkeypatch):
    from apps.industrial import data

    rng = np.random.default_rng(1)
    test = np.where(rng.random((70, 70)) < 0.3, 0, 255).astype(np.uint8)
    template = np.where(rng.random((70, 70)) < 0.3, 0, 255).astype(np.uint8)
    core = test[4:66:2, 4:66:2]
    fast = data._bit_mismatches(core, template, 4, 2)
    plain = data._absolute_differences(core, template, 4, 2)
    assert fast.keys() == plain.keys() and all(255 * fast[s] == plain[s] for s in plain)
    monkeypatch.delattr(np, "bitwise_count", raising=False)
    assert data._bit_mismatches(core, template, 4, 2) == fast


def test_binarize_thresholds_at_128_into_0_and_255_bytes():
    from apps.industrial.data import binarize

    gray = np.random.default_rng(2).integers(0, 256, (50, 70)).astype(np.uint8)
    gray[0, :4] = (127, 128, 0, 255)
    for image in (gray, gray[3:40:3, 5:60:2]):  # a strided crop too, as template_support passes
        out = binarize(image)
        assert out.dtype == np.uint8 and out.shape == image.shape
        assert np.array_equal(out, np.where(image >= 128, 255, 0))
    assert tuple(binarize(gray)[0, :4]) == (0, 255, 0, 255)
