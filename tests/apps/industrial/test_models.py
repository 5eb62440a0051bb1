"""Encoders, the fusion model and the detector plumbing on tiny configs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from apps.industrial.encoders import (
    DetectorTokenEncoder,
    VibrationEncoder,
    VibrationEncoderConfig,
    analytic_envelope,
)
from apps.industrial.model import FusionModel, FusionModelConfig, VibrationClassifier
from tests.apps.industrial.conftest import vibration_signal


def test_encoders_are_registered():
    import apps.industrial.encoders  # noqa: F401
    from core.encoders import list_encoders

    assert ("vibration", "envelope_conv_lstm") in list_encoders() and ("image", "detector_tokens") in list_encoders()


def test_envelope_recovers_the_impact_rate():
    x = torch.from_numpy(vibration_signal(impact_hz=107.0, seconds=1.0))[None]
    env = analytic_envelope(x - x.mean(), 12_000, 1_000.0)[0].numpy()
    spectrum = np.abs(np.fft.rfft(env - env.mean()))
    freqs = np.fft.rfftfreq(len(env), 1 / 12_000)
    band = (freqs > 20) & (freqs < 600)
    assert abs(freqs[band][np.argmax(spectrum[band])] - 107.0) < 3.0


@pytest.mark.parametrize("envelope_only", [False, True])
def test_vibration_encoder_shapes_and_amplitude_invariance(envelope_only):
    cfg = VibrationEncoderConfig.from_name("tiny", envelope_only=envelope_only)
    enc = VibrationEncoder(**cfg.to_dict()).eval()
    x = torch.from_numpy(np.stack([vibration_signal(seconds=2048 / 12_000, seed=s) for s in range(2)]))
    out = enc(x)
    steps = 2048 // (cfg.decimate if envelope_only else 1) // 2**cfg.conv_layers
    assert out.tokens.shape == (2, steps, cfg.dim) and out.mask.all()
    # per-window normalisation: a sensor with 7x the gain gives the same tokens
    torch.testing.assert_close(enc(7 * x).tokens, out.tokens, atol=1e-4, rtol=1e-3)


def test_vibration_classifier_learns_impact_rates():
    """Two 'states' that differ only in impact rate: a few steps of training must separate them."""
    torch.manual_seed(0)
    cfg = VibrationEncoderConfig.from_name("tiny", envelope_only=True)
    model = VibrationClassifier(cfg, num_classes=2)
    xs = [vibration_signal(seconds=2048 / 12_000, impact_hz=hz, seed=s) for s in range(16) for hz in (60.0, 160.0)]
    x = torch.from_numpy(np.stack(xs))
    y = torch.tensor([0, 1] * 16)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(40):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(), loss.backward(), opt.step()
    model.eval()
    test = torch.from_numpy(np.stack([vibration_signal(seconds=2048 / 12_000, impact_hz=hz, seed=100 + s) for s in range(4) for hz in (60.0, 160.0)]))
    assert (model(test).argmax(1) == torch.tensor([0, 1] * 4)).float().mean() >= 0.75


def test_fusion_handles_missing_modalities():
    cfg = FusionModelConfig.from_name("tiny")
    model = FusionModel(cfg).eval()
    present = torch.tensor([[True, True], [True, False], [False, True]])
    logit, weights = model(torch.randn(3, 16, 8), torch.randn(3, 64, 16), torch.randn(3, 6), present)
    assert logit.shape == (3,)
    torch.testing.assert_close(weights.sum(1), torch.ones(3))
    assert weights[1, 1] == 0 and weights[2, 0] == 0
    # a missing modality's inputs cannot change the output
    img2 = torch.randn(3, 16, 8)
    logit2, _ = model(img2, torch.randn(3, 64, 16), torch.randn(3, 6), torch.tensor([[False, True]] * 3))
    logit3, _ = model(torch.randn(3, 16, 8), torch.randn(3, 64, 16), torch.randn(3, 6), torch.tensor([[False, True]] * 3))
    assert logit2.shape == logit3.shape


def test_detector_token_encoder():
    enc = DetectorTokenEncoder(in_dim=8, dim=16)
    out = enc(torch.randn(2, 4, 8))
    assert out.tokens.shape == (2, 4, 16)


def test_missing_vibration_ignores_its_tokens():
    torch.manual_seed(0)
    model = FusionModel(FusionModelConfig.from_name("tiny")).eval()
    present = torch.tensor([[True, False]])
    img, ev = torch.randn(1, 16, 8), torch.randn(1, 6)
    a, _ = model(img, torch.randn(1, 64, 16), ev, present)
    b, _ = model(img, torch.randn(1, 64, 16), ev, present)
    torch.testing.assert_close(a, b)


def test_onnx_detector_matches_torch(tiny_bundles, tmp_path):
    from apps.industrial.data import load_gray
    from apps.industrial.detector import detect_with_tokens, load_detector, load_onnx_detector, prepare_image
    from tests.apps.industrial.conftest import board_png

    torch_model, config, _ = load_detector(tiny_bundles / "detector")
    onnx_model, _, _ = load_onnx_detector(tiny_bundles / "detector", threads=1, cache_dir=tmp_path)
    images = [prepare_image(load_gray(board_png(seed=s)), config) for s in range(2)]
    d1, t1 = detect_with_tokens(torch_model, images, config, conf=0.0001)
    d2, t2 = detect_with_tokens(onnx_model, images, config, conf=0.0001)
    np.testing.assert_allclose(t1, t2, atol=1e-3, rtol=1e-3)
    assert [len(d) for d in d1] == [len(d) for d in d2]
    for a, b in zip(d1[0][:20], d2[0][:20]):
        assert a.cls == b.cls and abs(a.confidence - b.confidence) < 1e-3
    assert len(list(tmp_path.glob("detector-*.onnx"))) == 1
    # two workers sharing two threads split the batch and agree with one session
    pooled, _, _ = load_onnx_detector(tiny_bundles / "detector", threads=2, cache_dir=tmp_path, workers=2)
    assert len(pooled.pool.sessions) == 2
    d3, t3 = detect_with_tokens(pooled, images, config, conf=0.0001)
    np.testing.assert_allclose(t3, t2, atol=1e-5)
    assert [[d.cls for d in ds] for ds in d3] == [[d.cls for d in ds] for ds in d2]
    np.testing.assert_allclose([d.confidence for ds in d3 for d in ds], [d.confidence for ds in d2 for d in ds], atol=1e-5)


def test_fusion_card_benchmark_table_names_the_threshold():
    from apps.industrial.fusion_train import benchmark_table

    bench = {}
    for c in (0.0, 0.5):
        bench[f"c{c:g}/defect_share"] = 0.2 + c / 10
        bench[f"c{c:g}/learned/mean_vibration_weight"] = 0.3
        for m in ("image_only", "vibration_only", "bayes", "learned"):
            bench[f"c{c:g}/{m}/false_alarm_rate"], bench[f"c{c:g}/{m}/miss_rate"] = 0.01 * (1 + c), 0.0
    lines = benchmark_table(bench, (0.0, 0.5), 0.7035).splitlines()
    assert "(>=0.7035)" in lines[0] and len(lines) == 4
    assert lines[3].startswith("| 0.5 | 0.250 | 0.015 / 0.000")


def test_every_detector_architecture_builds_and_detects_six_classes():
    import torch

    from apps.industrial.detector import ARCHITECTURES, build_model, model_yaml

    sizes = {}
    for arch in ARCHITECTURES:
        model = build_model(model_yaml(arch)).eval()
        with torch.no_grad():
            out = model(torch.zeros(1, 3, 64, 64))
        pred = out[0] if isinstance(out, (list, tuple)) else out
        assert pred.shape[1] == 4 + 6, arch
        sizes[arch] = sum(p.numel() for p in model.parameters())
    assert sizes["yolo11s"] > 3 * sizes["yolo11n"]  # the "s" scale, not the nano one


def test_border_frames_the_image_and_boxes_map_back():
    import torch

    from apps.industrial.data import load_gray
    from apps.industrial.detector import (
        DEFECT_CLASSES,
        DetectorConfig,
        _nms,
        prepare_image,
        region_score_tokens,
    )
    from tests.apps.industrial.conftest import board_png

    gray = load_gray(board_png(size=128, seed=3))
    flush = prepare_image(gray, DetectorConfig(imgsz=128))
    framed = prepare_image(gray, DetectorConfig(imgsz=128, border=16))
    assert framed.tensor.shape == (3, 160, 160) and framed.pad == (16, 16)
    np.testing.assert_array_equal(framed.tensor[:, 16:144, 16:144], flush.tensor)
    assert np.all(framed.tensor[:, :16] == np.float32(114 / 255)) and np.all(framed.tensor[:, :, 144:] == np.float32(114 / 255))

    # one anchor: a 10 x 20 px box centred at (40, 50) of the image, i.e. (56, 66) on the canvas, class 2
    pred = torch.zeros(1, 4 + len(DEFECT_CLASSES), 1)
    pred[0, :4, 0] = torch.tensor([56.0, 66.0, 10.0, 20.0])
    pred[0, 4 + 2, 0] = 0.9
    det = _nms(pred, [framed], DetectorConfig(imgsz=128, border=16), conf=0.5)[0]
    assert len(det) == 1 and det[0].cls == 2
    np.testing.assert_allclose(det[0].box_px, (35.0, 40.0, 45.0, 60.0), atol=1e-4)
    tokens = region_score_tokens(pred, 128, grid=4, border=16)  # image cell (40 // 32, 50 // 32) = (1, 1)
    assert tokens[0, 1 * 4 + 1, 2] == np.float32(0.9) and tokens[0].sum() == np.float32(0.9)


def test_onnx_detector_with_a_border_matches_torch(tiny_bundles, tmp_path):
    import shutil

    from apps.industrial.data import load_gray
    from apps.industrial.detector import detect, load_detector, load_onnx_detector, prepare_image
    from apps.industrial.fusion_train import set_detector_border
    from tests.apps.industrial.conftest import board_png

    bundle = shutil.copytree(tiny_bundles / "detector", tmp_path / "framed")
    set_detector_border(bundle, 16)
    torch_model, config, _ = load_detector(bundle)
    onnx_model, _, _ = load_onnx_detector(bundle, threads=1, cache_dir=tmp_path)
    assert config.canvas == config.imgsz + 32
    images = [prepare_image(load_gray(board_png(seed=s)), config) for s in range(2)]
    d1, d2 = detect(torch_model, images, config, conf=0.0001), detect(onnx_model, images, config, conf=0.0001)
    assert [len(d) for d in d1] == [len(d) for d in d2] and sum(len(d) for d in d1) > 0
    for a, b in zip(d1[0][:20], d2[0][:20]):
        assert a.cls == b.cls and abs(a.confidence - b.confidence) < 1e-3
        np.testing.assert_allclose(a.box_px, b.box_px, atol=0.05)
    assert [p.name for p in tmp_path.glob("detector-*.onnx")] == [f"detector-{_sha(bundle)}-{config.canvas}-dflsum.onnx"]


def _sha(bundle) -> str:
    from core.bundle import load_bundle

    return load_bundle(bundle).sha256[:16]


def test_exported_box_decoding_is_ultralytics_dfl():
    from ultralytics.nn.modules.block import DFL

    from apps.industrial.detector import dfl_expectation

    dfl = DFL(16)
    x = torch.randn(2, 64, 50) * 4
    torch.testing.assert_close(dfl_expectation(dfl, x), dfl(x), atol=1e-4, rtol=1e-5)
