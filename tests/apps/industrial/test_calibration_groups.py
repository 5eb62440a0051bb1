"""Board groups held out of detector training calibrate its board decision (threshold, Platt, INT8 data)."""

from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner

from apps.industrial import cli
from apps.industrial.data import (
    group_of_board_file,
    load_deeppcb,
    parse_groups,
    prepare_ultralytics,
    select_groups,
)
from tests.apps.industrial.test_data import make_deeppcb

GROUPS = ("group00041", "group44000", "group13000")


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command("eval")(cli.evaluate)
    app.add_typer(cli.data, name="data")
    return app


def test_group_names_and_selection(tmp_path):
    assert parse_groups("group44000, 77000") == ("group44000", "group77000")
    assert parse_groups(None) == () and parse_groups("") == ()
    with pytest.raises(ValueError, match="group44000"):
        parse_groups("boards44000")
    assert group_of_board_file("44000123.png") == group_of_board_file("44000123_temp.png") == "group44000"
    assert group_of_board_file("00041007.png") == "group00041"
    with pytest.raises(ValueError, match="DeepPCB board file"):
        group_of_board_file("board.png")
    samples = load_deeppcb(make_deeppcb(tmp_path / "d", groups=GROUPS))
    assert {s.group for s in select_groups(samples, include=("group44000",))} == {"group44000"}
    assert {s.group for s in select_groups(samples, exclude=("group44000",))} == {"group00041", "group13000"}
    with pytest.raises(ValueError, match="not in this list"):
        select_groups(samples, exclude=("group77000",))  # a typo must not silently keep every board


def test_training_list_leaves_the_groups_out(tmp_path):
    from apps.industrial.detector import train_image_list

    root = make_deeppcb(tmp_path / "d", groups=GROUPS)
    prepare_ultralytics(root, tmp_path / "p", input_mode="template-diff")
    listed = train_image_list(tmp_path / "p" / "images" / "train", ("group44000",), tmp_path / "train.txt")
    names = [line.rsplit("/", 1)[-1] for line in listed.read_text().split()]
    # group13000 is a validation group: prepare put it in images/val, never in the training folder
    assert sorted(names) == ["00041000.png", "00041000_temp.png", "00041001.png", "00041001_temp.png"]
    assert (tmp_path / "p" / "labels" / "train" / "00041000.txt").exists()  # ultralytics' images/ -> labels/ swap finds it
    with pytest.raises(ValueError, match="no images"):
        train_image_list(tmp_path / "p" / "images" / "train", ("group77000",), tmp_path / "x.txt")


def test_splits_write_fit_and_calibration_lists(tmp_path):
    root = make_deeppcb(tmp_path / "d", groups=GROUPS)
    r = CliRunner().invoke(_app(), ["data", "splits", "--deeppcb", str(root), "--out", str(tmp_path / "l"),
                                    "--calibration-groups", "group44000"])
    assert r.exit_code == 0, r.output
    calib = (tmp_path / "l" / "deeppcb_calib.txt").read_text().split()
    fit = (tmp_path / "l" / "deeppcb_fit.txt").read_text().split()
    assert {line.split("/")[0] for line in calib} == {"group44000"} and {line.split("/")[0] for line in fit} == {"group00041"}


@pytest.fixture()
def held_out_bundle(tmp_path):
    import torch

    from apps.industrial.detector import DetectorConfig, build_model, detector_bundle_config, model_yaml
    from core.bundle import ModelCard, save_bundle

    torch.manual_seed(0)
    cfg = model_yaml("yolo11n")
    config = detector_bundle_config(DetectorConfig.from_name("tiny-template"), cfg)
    config["held_out_groups"] = ["group44000"]
    return save_bundle(tmp_path / "det", build_model(cfg), config, ModelCard("det", "t", "test")).path


def test_threshold_is_chosen_on_the_held_out_groups_only(tmp_path, held_out_bundle):
    root = make_deeppcb(tmp_path / "d", groups=GROUPS[:2])
    out = tmp_path / "t.json"
    base = ["data", "threshold", "--deeppcb", str(root), "--split", "trainval.txt", "--bundle", str(held_out_bundle),
            "--precision", "fp32", "--json", str(out)]
    r = CliRunner().invoke(_app(), base)
    assert r.exit_code == 0, r.output
    assert "held-out groups group44000" in r.output
    m = json.loads(out.read_text())
    assert m["n_boards"] == 2  # group44000's two boards, every one (not every 3rd)
    conf = json.loads((held_out_bundle / "config.json").read_text())["detector"]["conf"]
    assert conf == pytest.approx(m["conf"])
    r = CliRunner().invoke(_app(), base + ["--groups", "group00041"])
    assert r.exit_code != 0 and "was trained on board groups ['group00041']" in str(r.exception)


def test_int8_calibration_inputs_skip_held_out_groups(tmp_path):
    from apps.industrial.detector import calibration_items

    root = make_deeppcb(tmp_path / "d", groups=GROUPS[:2], per_group=3)
    items = calibration_items(root, "trainval.txt", n=6, input_mode="template-diff", exclude_groups=("group44000",))
    assert len(items) == 3 and all("44000" not in str(item[0]) for item in items)


def test_card_command_records_metrics_and_notes(tmp_path, held_out_bundle):
    (tmp_path / "m.json").write_text(json.dumps({"map50": 0.5, "board_recall": 1.0}))
    (tmp_path / "n.txt").write_text("Session 5: calibrated on held-out groups.")
    (tmp_path / "s.txt").write_text("by board group: calibration = group44000")
    r = CliRunner().invoke(_app(), ["data", "card", "--bundle", str(held_out_bundle), "--metrics", f"val_int8={tmp_path / 'm.json'}",
                                    "--notes-file", str(tmp_path / "n.txt"), "--field", f"split={tmp_path / 's.txt'}"])
    assert r.exit_code == 0, r.output
    card = json.loads((held_out_bundle / "card.json").read_text())
    assert card["metrics"]["val_int8_map50"] == 0.5 and card["notes"].startswith("Session 5")
    assert card["split"] == "by board group: calibration = group44000"
    markdown = (held_out_bundle / "MODEL_CARD.md").read_text()
    assert "val_int8_board_recall" in markdown and "calibration = group44000" in markdown
    r = CliRunner().invoke(_app(), ["data", "card", "--bundle", str(held_out_bundle), "--metrics", "nofile"])
    assert r.exit_code != 0
    (tmp_path / "train.json").write_text(json.dumps({"mAP50": 0.99, "epochs_run": 82, "input": "template-diff"}))
    (tmp_path / "lim.txt").write_text("first limit\n\nsecond limit\n")
    r = CliRunner().invoke(_app(), ["data", "card", "--bundle", str(held_out_bundle), "--replace-metrics", "--training",
                                    str(tmp_path / "train.json"), "--field", f"limitations={tmp_path / 'lim.txt'}"])
    assert r.exit_code == 0, r.output
    card = json.loads((held_out_bundle / "card.json").read_text())
    # ultralytics' per-epoch validator number is not a validation result of this repo's evaluator
    assert card["metrics"] == {"ultralytics_val_mAP50": 0.99, "epochs_run": 82.0}
    assert card["limitations"] == ["first limit", "second limit"]


@pytest.mark.parametrize("preset,pairs", [("tiny-template", "tested+template vs "), ("tiny", "tested vs template,")])
def test_platt_says_what_it_was_fitted_on(tmp_path, preset, pairs):
    """`data platt` on held-out groups; the label names the inputs the detector really saw (an image-only
    detector is shown no template)."""
    import torch

    from apps.industrial.detector import DetectorConfig, build_model, detector_bundle_config, model_yaml
    from core.bundle import ModelCard, save_bundle

    torch.manual_seed(0)
    cfg = model_yaml("yolo11n")
    config = detector_bundle_config(DetectorConfig.from_name(preset), cfg)
    config["held_out_groups"] = ["group44000"]
    bundle = save_bundle(tmp_path / "det", build_model(cfg), config, ModelCard("det", "t", "test")).path
    root = make_deeppcb(tmp_path / "d", groups=GROUPS[:2], per_group=3)
    r = CliRunner().invoke(_app(), ["data", "platt", "--deeppcb", str(root), "--split", "trainval.txt", "--bundle", str(bundle),
                                    "--precision", "fp32"])
    assert r.exit_code == 0, r.output
    platt = json.loads((bundle / "config.json").read_text())["platt"]
    assert platt["fitted_on"].startswith("group44000 (3 boards, " + pairs)
