"""An operator's own ultralytics checkpoint becomes a detector bundle once (bundle-detector) and serves the
predictions ultralytics itself makes; what is not such a checkpoint is refused, saying why."""

from __future__ import annotations

import copy
import json
import os
import re

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from apps.industrial import cli
from apps.industrial.data import DEFECT_CLASSES

PKU_MARKET_PCB = ["missing_hole", "mouse_bite", "open_circuit", "short", "spur", "spurious_copper"]  # another PCB set's names
# DeepPCB's six, in another order and spelling, as a factory's own labelling tool may write them
RELABELLED = ["Short", "open", "Pin_Hole", "Mouse Bite", "copper", "spur"]


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command("eval")(cli.evaluate)  # two commands, so that `data` stays a group
    app.add_typer(cli.data, name="data")
    return app


def _convert(*args: str):
    return CliRunner().invoke(_app(), ["data", "bundle-detector", *args])


def _key(name: str) -> str:
    return re.sub(r"[\s_-]+", "", name).lower()


def _board(side: int = 640) -> np.ndarray:
    """A bilevel 'PCB' (traces, pads, a break): binarising leaves it as it is, so both paths see the same pixels."""
    rng = np.random.default_rng(1)
    board = np.zeros((side, side), np.uint8)
    for y in range(24, side - 24, 40):
        board[y : y + 9, 20 : side - 20] = 255
    for x, y in rng.integers(20, side - 40, (40, 2)):
        board[y : y + 18, x : x + 18] = 255
    board[100:109, 300:316] = 0
    return board


def _detection_model(names: list[str]):
    """A yolo11n DetectionModel as `yolo train model=yolo11n.yaml` builds it, given what training would: batch-norm
    statistics (from one pass over _board(); at initialisation its class features vanish) and class biases that
    let a few dozen boxes on _board() clear 0.25 (at initialisation every score sits near 0)."""
    import torch
    from ultralytics.cfg import get_cfg
    from ultralytics.nn.tasks import DetectionModel, yaml_model_load

    torch.manual_seed(0)
    model = DetectionModel(dict(yaml_model_load("yolo11n.yaml")), ch=3, nc=len(names), verbose=False)
    model.names = dict(enumerate(names))
    model.args = get_cfg(overrides={"model": "yolo11n.yaml", "data": "pcb.yaml", "imgsz": 640, "epochs": 3})
    classes = [branch[-1] for branch in model.model[-1].cv3]
    x = torch.from_numpy(np.repeat(_board()[None, None] / 255.0, 3, 1)).float()
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average: one pass sets the statistics
    with torch.no_grad():
        model.train()(x)
        for norm in norms:
            norm.momentum = 0.03  # ultralytics' own
        for conv in classes:
            conv.bias.zero_()
        scores = model.eval()(x)[0][0, 4:].max(0).values
        logit = torch.log(scores / (1 - scores))
        best = logit.sort(descending=True).values
        shift = float(np.log(1 / 3) - (best[39] + best[40]) / 2)  # 40 anchors above 0.25, none on the line
        for conv in classes:
            conv.bias.fill_(shift)
    return model


def _save_like_yolo_train(model, weights_dir) -> None:
    """weights/last.pt as ultralytics' trainer saves each epoch (EMA in fp16, optimizer state, train_args) and
    weights/best.pt as a finished run leaves it (ultralytics' own strip_optimizer: the EMA as 'model')."""
    import torch
    from ultralytics import __version__
    from ultralytics.utils.torch_utils import strip_optimizer

    weights_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = {
        "epoch": 2, "best_fitness": 0.33, "model": None, "ema": copy.deepcopy(model).half(), "updates": 30,
        "optimizer": torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9).state_dict(),
        "train_args": vars(model.args),
        "train_metrics": {"metrics/precision(B)": 0.61, "metrics/recall(B)": 0.5, "metrics/mAP50(B)": 0.55,
                          "metrics/mAP50-95(B)": 0.3, "val/box_loss": 1.2, "fitness": 0.33},
        "train_results": {}, "date": "2025-01-01T00:00:00+00:00", "version": __version__,
        "license": "AGPL-3.0 (https://ultralytics.com/license)", "docs": "https://docs.ultralytics.com",
    }
    torch.save(checkpoint, weights_dir / "last.pt")
    strip_optimizer(weights_dir / "last.pt", weights_dir / "best.pt")


def _service(bundle, tiny_bundles, tmp_path, template_detector_dir=None):
    from apps.industrial.service import load_runner
    from apps.industrial.settings import IndustrialSettings

    settings = IndustrialSettings(detector_dir=bundle, template_detector_dir=template_detector_dir, vibration_dir=tiny_bundles / "vibration",
                                  fusion_dir=tiny_bundles / "fusion", database_url=f"sqlite:///{tmp_path}/t.db",
                                  artefact_dir=tmp_path / "art", torch_threads=1, detector_backend="torch",
                                  detector_precision="fp32", decision_rule="image")
    return load_runner(settings)


@pytest.mark.parametrize("names", [list(DEFECT_CLASSES), RELABELLED], ids=["deeppcb-order", "relabelled"])
def test_a_yolo_train_checkpoint_serves_what_ultralytics_predicts(names, tiny_bundles, tmp_path):
    from ultralytics import YOLO

    from apps.industrial.detector import load_detector
    from apps.industrial.service import InspectionItem
    from core.bundle import sha256_file

    weights = tmp_path / "runs" / "detect" / "train" / "weights"
    _save_like_yolo_train(_detection_model(names), weights)
    out = tmp_path / "bundle"
    r = _convert("--weights", str(weights / "best.pt"), "--arch", "yolo11n", "--out", str(out))
    assert r.exit_code == 0, r.output
    assert "TRIPTYCH_INDUSTRIAL_DETECTOR_DIR" in r.output and ("matched by name" in r.output) == (names != list(DEFECT_CLASSES))

    _, config, bundle = load_detector(out)  # safetensors + YAML: the service's loader, nothing unpickled
    source = bundle.card.extra["source_checkpoint"]
    assert source["sha256"] == sha256_file(weights / "best.pt") and source["class_names"] == names
    assert config.imgsz == 640 and config.arch == "yolo11n" and bundle.card.metrics["ultralytics_val_mAP50"] == 0.55

    board = _board()
    theirs = YOLO(str(weights / "best.pt")).predict(np.repeat(board[..., None], 3, 2), imgsz=640, conf=config.report_conf,
                                                     iou=config.iou, max_det=config.max_det, device="cpu", verbose=False)[0]
    expected = sorted(zip(theirs.boxes.conf.tolist(), theirs.boxes.xyxy.tolist(), [theirs.names[int(c)] for c in theirs.boxes.cls]),
                      key=lambda d: -d[0])
    served = _service(out, tiny_bundles, tmp_path).predict_batch([InspectionItem(board)])[0]
    defects = sorted(served["defects"], key=lambda d: -d["confidence"])
    assert 5 <= len(expected) == len(defects) < config.max_det
    for (confidence, box, name), defect in zip(expected, defects):
        assert _key(defect["class"]) == _key(name)  # the class ultralytics names is the one served, whatever its index
        assert defect["confidence"] == pytest.approx(confidence, abs=1e-3)
        np.testing.assert_allclose(defect["box_px"], box, atol=0.1)


@pytest.mark.parametrize("names", [PKU_MARKET_PCB, ["defect", "scratch"]], ids=["other-six", "two-classes"])
def test_a_checkpoint_of_other_classes_is_refused_naming_both(names, tmp_path):
    from apps.industrial.checkpoint import CheckpointError

    _save_like_yolo_train(_detection_model(names), tmp_path / "weights")
    r = _convert("--weights", str(tmp_path / "weights" / "best.pt"), "--out", str(tmp_path / "bundle"))
    assert isinstance(r.exception, CheckpointError)
    message = str(r.exception)
    assert str(names) in message and str(list(DEFECT_CLASSES)) in message
    assert not (tmp_path / "bundle").exists()


class _RunsCode:
    """A pickle that would create a folder when unpickled: what a restricted load must refuse, not run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


@pytest.mark.parametrize("kind", ["png-renamed", "state-dict", "tensor", "runs-code", "text-file"])
def test_a_file_that_is_not_an_ultralytics_checkpoint_is_refused(kind, tmp_path):
    import torch

    from apps.industrial.checkpoint import CheckpointError
    from tests.apps.industrial.conftest import board_png

    path = tmp_path / ("notes.txt" if kind == "text-file" else "best.pt")
    marker = tmp_path / "code-ran"
    if kind == "png-renamed":
        path.write_bytes(board_png())
    elif kind == "state-dict":  # weights without the architecture: nothing says what network they belong to
        torch.save(_detection_model(list(DEFECT_CLASSES)).state_dict(), path)
    elif kind == "tensor":
        torch.save(torch.zeros(3), path)
    elif kind == "runs-code":
        torch.save({"model": _RunsCode(marker)}, path)
    else:
        path.write_text("best weights are on the share drive")
    r = _convert("--weights", str(path), "--out", str(tmp_path / "bundle"))
    assert isinstance(r.exception, CheckpointError), r.output
    assert str(path) in str(r.exception)
    assert {"png-renamed": "is not a PyTorch checkpoint", "state-dict": "holds no ultralytics model",
            "tensor": "holds no ultralytics model", "runs-code": "were refused, not run",
            "text-file": "is not an ultralytics checkpoint (.pt)"}[kind] in str(r.exception)
    assert not marker.exists() and not (tmp_path / "bundle").exists()


def test_a_path_that_is_not_a_local_file_or_run_folder_is_refused(tmp_path):
    from apps.industrial.checkpoint import CheckpointError

    missing = _convert("--weights", str(tmp_path / "runs" / "best.pt"), "--out", str(tmp_path / "b"))
    assert isinstance(missing.exception, FileNotFoundError) and "does not exist" in str(missing.exception)
    (tmp_path / "empty").mkdir()
    empty = _convert("--weights", str(tmp_path / "empty"), "--out", str(tmp_path / "b"))
    assert isinstance(empty.exception, FileNotFoundError)
    assert "holds neither model.safetensors nor best.pt, last.pt" in str(empty.exception)
    url = _convert("--weights", "https://example.com/best.pt", "--out", str(tmp_path / "b"))
    assert isinstance(url.exception, CheckpointError) and "nothing is downloaded" in str(url.exception)
    os.mkfifo(tmp_path / "best.pt")  # reading a pipe would block on whatever writes to it
    pipe = _convert("--weights", str(tmp_path / "best.pt"), "--out", str(tmp_path / "b"))
    assert isinstance(pipe.exception, CheckpointError) and "not a regular file" in str(pipe.exception)
    assert not (tmp_path / "b").exists()


def test_a_run_folder_converts_its_checkpoint_and_an_interrupted_run_its_ema(tmp_path):
    import torch

    from apps.industrial.detector import load_detector

    model = _detection_model(list(DEFECT_CLASSES))
    run = tmp_path / "train"
    _save_like_yolo_train(model, run / "weights")
    (run / "weights" / "best.pt").unlink()  # stopped before ultralytics stripped it: last.pt holds the EMA
    wrong = _convert("--weights", str(run), "--arch", "yolo11s", "--out", str(tmp_path / "bundle"))
    assert "holds a yolo11n" in str(wrong.exception) and not (tmp_path / "bundle").exists()
    r = _convert("--weights", str(run), "--out", str(tmp_path / "bundle"))
    assert r.exit_code == 0, r.output
    served, config, bundle = load_detector(tmp_path / "bundle")
    assert bundle.card.extra["source_checkpoint"]["checkpoint"] == "last.pt" and bundle.card.sha256
    x = torch.rand(1, 3, 64, 64)
    reference = copy.deepcopy(model).half().float().eval().fuse(verbose=False)  # the EMA was saved in fp16
    with torch.inference_mode():
        torch.testing.assert_close(served(x)[0], reference(x)[0], atol=1e-4, rtol=1e-4)
    card = json.loads((tmp_path / "bundle" / "card.json").read_text())
    assert any("TRIPTYCH_INDUSTRIAL_DETECTOR_PRECISION=fp32" in line for line in card["limitations"])


def test_serving_pointed_at_a_checkpoint_refuses_it_and_names_the_conversion(tiny_bundles, tmp_path):
    from apps.industrial.detector import load_detector, load_onnx_detector
    from core.bundle import BundleError

    weights = tmp_path / "runs" / "detect" / "train" / "weights"
    _save_like_yolo_train(_detection_model(list(DEFECT_CLASSES)), weights)
    for path in (weights / "best.pt", weights, weights.parent):
        with pytest.raises(BundleError, match="is an ultralytics checkpoint.*bundle-detector --weights"):
            load_detector(path)
        with pytest.raises(BundleError, match="never unpickles"):
            load_onnx_detector(path, precision="int8")  # the service's default detector path
    # a template detector folder without model.safetensors would otherwise just turn template detection off
    with pytest.raises(BundleError, match="is an ultralytics checkpoint"):
        _service(tiny_bundles / "detector", tiny_bundles, tmp_path, template_detector_dir=weights)


def test_trained_safetensors_still_bundle_and_need_their_arch(tmp_path):
    from apps.industrial.detector import build_model, export_weights, load_detector, model_yaml

    cfg = model_yaml("yolo11n")
    (tmp_path / "run").mkdir()
    export_weights(build_model(cfg), cfg, tmp_path / "run")
    without = _convert("--weights", str(tmp_path / "run"), "--out", str(tmp_path / "bundle"))
    assert without.exit_code != 0 and "--arch is needed" in without.output
    r = _convert("--weights", str(tmp_path / "run"), "--arch", "yolo11n", "--out", str(tmp_path / "bundle"))
    assert r.exit_code == 0, r.output
    _, config, bundle = load_detector(tmp_path / "bundle")
    assert config.arch == "yolo11n" and bundle.card.name == "industrial-detector-yolo11n"
