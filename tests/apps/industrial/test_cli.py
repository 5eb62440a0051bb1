"""The industrial CLI commands on generated data (typer's runner, no subprocess)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from apps.industrial import cli
from tests.apps.industrial.conftest import vibration_signal
from tests.apps.industrial.test_data import make_deeppcb


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command("eval")(cli.evaluate)
    app.add_typer(cli.data, name="data")
    return app


def test_data_prepare_and_splits(tmp_path):
    root = make_deeppcb(tmp_path / "deeppcb")
    runner = CliRunner()
    r = runner.invoke(_app(), ["data", "prepare", "--deeppcb", str(root), "--out", str(tmp_path / "prep")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "prep" / "data.yaml").exists() and len(list((tmp_path / "prep" / "images" / "val").glob("*.png"))) == 2
    r = runner.invoke(_app(), ["data", "splits", "--deeppcb", str(root), "--out", str(tmp_path / "lists")])
    assert r.exit_code == 0, r.output
    assert len((tmp_path / "lists" / "deeppcb_val.txt").read_text().splitlines()) == 2


def test_split_lists_ship_inside_the_package(tmp_path):
    """An installed triptych (a wheel) has no checkout around it: the defaults must point into the package."""
    from pathlib import Path

    import apps.industrial
    from apps.industrial import SPLITS
    from apps.industrial.data import DEEPPCB_VAL_GROUPS

    package = Path(apps.industrial.__file__).resolve().parent
    assert SPLITS.resolve().parent == package
    train, val = ((SPLITS / f"deeppcb_{name}.txt").read_text().split() for name in ("train", "val"))
    assert len(train) == 2 * 752 and len(val) == 2 * 248  # image and label path per board
    assert {p.split("/")[0] for p in val} == set(DEEPPCB_VAL_GROUPS)
    assert not {p.split("/")[0] for p in train} & set(DEEPPCB_VAL_GROUPS)
    # rewriting lists names its folder: no default writes into the installed package
    r = CliRunner().invoke(_app(), ["data", "splits", "--deeppcb", str(tmp_path)])
    assert r.exit_code == 2 and "--out" in r.output


def test_eval_cwru_writes_one_flat_json(tmp_path, tiny_bundles):
    folder = tmp_path / "cwru" / "Data" / "1772 RPM"
    folder.mkdir(parents=True)
    np.savez(folder / "1772_IR_7_DE12.npz", DE=vibration_signal(seconds=1.0, impact_hz=160.0)[:, None])
    np.savez(folder / "1772_Normal.npz", DE=vibration_signal(rate=48_000, seconds=1.0)[:, None])
    out = tmp_path / "m.json"
    r = CliRunner().invoke(_app(), ["eval", "--cwru", str(tmp_path / "cwru"), "--json", str(out), "--vibration",
                                    str(tiny_bundles / "vibration"), "--threads", "1"])
    assert r.exit_code == 0, r.output
    metrics = json.loads(out.read_text())
    assert {"accuracy", "macro_f1", "n_windows"} <= set(metrics)
    assert metrics["n_windows"] == 5 + 5 and all(isinstance(v, float) for v in metrics.values())


def test_eval_cwru_macro_f1_averages_the_states_present(tmp_path, tiny_bundles, monkeypatch):
    # The other loads' set holds fault recordings only: a perfect model must score 1.0, not 0.25
    # for "normal", "ball" and "outer_race" F1s of zero; a window wrongly called normal costs recall.
    from apps.industrial import train
    from apps.industrial.data import FAULT_CLASSES
    from apps.industrial.evaluate import evaluate_cwru

    folder = tmp_path / "cwru" / "Data" / "1750 RPM"
    folder.mkdir(parents=True)
    np.savez(folder / "1750_IR_7_DE12.npz", DE=vibration_signal(seconds=1.0, impact_hz=160.0)[:, None])
    inner = FAULT_CLASSES.index("inner_race")

    def calls(miss_first: bool):
        def predict(model, windows):
            probs = np.zeros((len(windows), len(FAULT_CLASSES)), dtype=np.float32)
            probs[:, inner] = 1.0
            if miss_first:
                probs[0] = [1.0, 0, 0, 0]
            return probs
        return predict

    monkeypatch.setattr(train, "predict_windows", calls(False))
    assert evaluate_cwru(tiny_bundles / "vibration", tmp_path / "cwru")["macro_f1"] == 1.0
    monkeypatch.setattr(train, "predict_windows", calls(True))
    m = evaluate_cwru(tiny_bundles / "vibration", tmp_path / "cwru")
    assert m["macro_f1"] == pytest.approx(2 * 0.8 / 1.8) and m["accuracy"] == pytest.approx(0.8)


def test_eval_deeppcb_keys(tmp_path, tiny_bundles):
    root = make_deeppcb(tmp_path / "deeppcb")
    out = tmp_path / "d.json"
    r = CliRunner().invoke(_app(), ["eval", "--deeppcb", str(root), "--split", "trainval.txt", "--json", str(out),
                                    "--detector", str(tiny_bundles / "detector"), "--threads", "1", "--backend", "torch"])
    assert r.exit_code == 0, r.output
    metrics = json.loads(out.read_text())
    assert {"map50", "map50_95", "precision", "recall", "board_false_alarm_rate", "board_recall", "images_per_second"} <= set(metrics)
    assert metrics["n_boards"] == 4 and metrics["n_templates"] == 4
    # preparation (registration + encoding) is timed too, so the rate with it is the lower one
    assert metrics["preparation_ms_per_image"] > 0
    assert 0 < metrics["images_per_second_with_preparation"] < metrics["images_per_second"]


def test_data_crops_leaves_out_the_bundles_held_out_groups_unless_all_groups(tmp_path, tiny_bundles):
    import shutil

    root = make_deeppcb(tmp_path / "deeppcb")
    bundle = tmp_path / "detector"
    shutil.copytree(tiny_bundles / "detector", bundle)
    config = json.loads((bundle / "config.json").read_text())
    (bundle / "config.json").write_text(json.dumps({**config, "held_out_groups": ["group13000"]}))
    counts = {}
    for flag in ([], ["--all-groups"]):
        out = tmp_path / f"crops{len(flag)}.npz"
        r = CliRunner().invoke(_app(), ["data", "crops", "--deeppcb", str(root), "--split", "trainval.txt", "--bundle", str(bundle),
                                        "--out", str(out), "--size", "24", "--jitters", "0", *flag])
        assert r.exit_code == 0, r.output
        with np.load(out) as z:
            counts[bool(flag)] = (len(z["y"]), sorted(str(g) for g in z["groups"]))
    assert counts[False] == (4, ["group00041"])  # 2 boards x 2 boxes
    assert counts[True] == (8, ["group00041", "group13000"])


def test_eval_deeppcb_with_two_workers_scores_the_same(tmp_path, tiny_bundles):
    """Boards sent two per call and split across two onnxruntime sessions: the same detections and board scores."""
    root = make_deeppcb(tmp_path / "deeppcb", per_group=3)  # 6 boards: pairs, and an odd one out per group
    results = []
    for workers in ("1", "2"):
        out = tmp_path / f"w{workers}.json"
        r = CliRunner().invoke(_app(), ["eval", "--deeppcb", str(root), "--split", "trainval.txt", "--json", str(out),
                                        "--detector", str(tiny_bundles / "detector"), "--threads", "2", "--workers", workers,
                                        "--precision", "fp32"])
        assert r.exit_code == 0, r.output
        results.append(json.loads(out.read_text()))
    one, two = results
    assert one["n_boards"] == two["n_boards"] == 6
    for key in ("map50", "map50_95", "precision", "recall", "board_false_alarm_rate", "board_recall", "board_fa@0.1", "board_recall@0.1"):
        assert two[key] == pytest.approx(one[key], abs=1e-6), key


def test_eval_deeppcb_refuses_an_empty_list_before_loading_the_detector(tmp_path):
    root = make_deeppcb(tmp_path / "deeppcb")
    (root / "PCBData" / "empty.txt").write_text("")
    # a detector that does not exist: the list must be refused first, by what it lacks
    r = CliRunner().invoke(_app(), ["eval", "--deeppcb", str(root), "--split", "empty.txt", "--detector", str(tmp_path / "nope")])
    assert isinstance(r.exception, ValueError) and "no boards to evaluate" in str(r.exception)


@pytest.mark.parametrize(("signal", "message"), [(np.zeros(10), "long enough for one 2048-sample window"),
                                                 (np.full(24_000, np.nan), "NaN or infinite samples")])
def test_eval_cwru_refuses_unusable_recordings(tmp_path, tiny_bundles, signal, message):
    np.savez(tmp_path / "1797_B_007_DE12.npz", DE=signal[:, None])
    r = CliRunner().invoke(_app(), ["eval", "--cwru", str(tmp_path), "--vibration", str(tiny_bundles / "vibration"),
                                    "--json", str(tmp_path / "m.json")])
    assert isinstance(r.exception, ValueError) and message in str(r.exception)
    assert not (tmp_path / "m.json").exists()


@pytest.mark.parametrize("content", [b"PK\x03\x04 not a zip", b"garbage!!", None])
def test_load_cwru_names_a_file_that_is_not_an_npz_archive(tmp_path, content):
    from apps.industrial.data import load_cwru

    path = tmp_path / "1797_B_007_DE12.npz"
    if content is None:  # an object array: numpy would talk about pickles
        np.savez(path, DE=np.array([{"a": 1}], dtype=object))
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=r"1797_B_007_DE12\.npz") as raised:
        load_cwru(tmp_path)
    assert "pickle" not in str(raised.value)


def test_train_defect_classifier_refuses_crops_that_are_not_an_npz(tmp_path):
    app = typer.Typer()
    app.command("train")(cli.train)
    app.command("eval")(cli.evaluate)
    crops = tmp_path / "crops.npz"
    crops.write_bytes(b"nope")
    r = CliRunner().invoke(app, ["train", "--part", "defect-classifier", "--crops", str(crops), "--out", str(tmp_path / "o")])
    assert isinstance(r.exception, ValueError) and "not a NumPy .npz archive" in str(r.exception)


def test_eval_deeppcb_reads_each_board_with_or_without_its_template_whatever_the_order(tmp_path, tiny_bundles):
    """One board without its template used to switch the whole run (mode, threshold, reclassifier) to that
    board's path when it came last in the list, and not when it came first."""
    root = make_deeppcb(tmp_path / "deeppcb")
    (root / "PCBData" / "group13000" / "13000" / "13000001_temp.jpg").unlink()
    lines = (root / "PCBData" / "trainval.txt").read_text().split()
    pairs = [" ".join(lines[i:i + 2]) for i in range(0, len(lines), 2)]
    results = []
    for name, order in (("last.txt", pairs), ("first.txt", pairs[::-1])):
        (root / "PCBData" / name).write_text("\n".join(order) + "\n")
        out = tmp_path / f"{name}.json"
        r = CliRunner().invoke(_app(), ["eval", "--deeppcb", str(root), "--split", name, "--json", str(out),
                                        "--detector", str(tiny_bundles / "detector_template"), "--threads", "1",
                                        "--backend", "torch", "--no-classifier"])
        assert r.exit_code == 0, r.output
        results.append(json.loads(out.read_text()))
    last, first = results
    assert last["template_used"] == first["template_used"] == 0.75 and last["n_templates"] == 3
    assert "decision_threshold_template" in last and "decision_threshold_no_template" in last
    for key in ("board_false_alarm_rate", "board_recall", "map50", "board_fa_repaired", "decision_threshold"):
        assert last[key] == pytest.approx(first[key], abs=1e-9), key


def test_eval_deeppcb_sends_boards_without_a_template_to_the_image_only_detector(tmp_path, tiny_bundles, monkeypatch):
    """As the service routes a request: a board with its template to the template-aware detector, a board
    without one to the image-only detector (not to the template-aware one on the image alone), each decided
    at the threshold of the detector that read it; the metrics stay over all boards together."""
    import shutil

    from apps.industrial import detector as det_module
    from apps.industrial import settings as settings_module

    weights = tmp_path / "weights"
    for name, conf in (("detector", {"conf": 0.7}), ("detector_template", {"conf": 0.6, "conf_no_template": 0.3})):
        shutil.copytree(tiny_bundles / name, weights / name)
        config = json.loads((weights / name / "config.json").read_text())
        config["detector"].update(conf)
        (weights / name / "config.json").write_text(json.dumps(config))
    monkeypatch.setattr(settings_module, "get_settings", lambda: settings_module.IndustrialSettings(
        detector_dir=weights / "detector", template_detector_dir=weights / "detector_template", defect_classifier_dir=None))
    seen = []  # per detector call (one board per call): the detector's input and the number of inputs
    real_detect = det_module.detect
    monkeypatch.setattr(det_module, "detect", lambda model, images, config, **kw: seen.append((config.input, len(images)))
                        or real_detect(model, images, config, **kw))

    root = make_deeppcb(tmp_path / "deeppcb")
    (root / "PCBData" / "group13000" / "13000" / "13000001_temp.jpg").unlink()  # the last board of the list
    out = tmp_path / "mixed.json"
    with pytest.warns(UserWarning, match="image-only detector"):
        r = CliRunner().invoke(_app(), ["eval", "--deeppcb", str(root), "--split", "trainval.txt", "--json", str(out),
                                        "--threads", "1", "--workers", "1", "--backend", "torch"])
    assert r.exit_code == 0, r.output
    # tested image, template and repaired scan of each board with a template; the tested image alone otherwise
    assert seen == [("template-diff", 3)] * 3 + [("gray", 1)]
    m = json.loads(out.read_text())
    assert m["template_used"] == 0.75 and m["n_boards"] == 4 and m["n_templates"] == 3
    assert m["decision_threshold_template"] == 0.6 and m["decision_threshold_no_template"] == 0.7  # the image-only one's
    assert m["decision_threshold"] == 0.6

    seen.clear()  # --no-template: every board on the image alone, by the image-only detector
    r = CliRunner().invoke(_app(), ["eval", "--deeppcb", str(root), "--split", "trainval.txt", "--json", str(out),
                                    "--threads", "1", "--workers", "1", "--backend", "torch", "--no-template"])
    assert r.exit_code == 0, r.output
    assert seen == [("gray", 3)] * 3 + [("gray", 1)] and json.loads(out.read_text())["template_used"] == 0.0


def test_eval_both_inputs_writes_the_vibration_keys_unprefixed_too(tmp_path, tiny_bundles):
    """With --deeppcb and --cwru the vibration keys carry a vibration_ prefix; no detection key is named
    accuracy, macro_f1 or n_windows, so the issue's names are written as well."""
    root = make_deeppcb(tmp_path / "deeppcb")
    np.savez(tmp_path / "1772_IR_7_DE12.npz", DE=vibration_signal(seconds=1.0, impact_hz=160.0)[:, None])
    out = tmp_path / "both.json"
    r = CliRunner().invoke(_app(), ["eval", "--deeppcb", str(root), "--split", "trainval.txt", "--cwru", str(tmp_path),
                                    "--json", str(out), "--detector", str(tiny_bundles / "detector"), "--vibration",
                                    str(tiny_bundles / "vibration"), "--threads", "1", "--backend", "torch",
                                    "--no-classifier"])
    assert r.exit_code == 0, r.output
    m = json.loads(out.read_text())
    assert {"map50", "board_recall", "accuracy", "macro_f1", "n_windows"} <= set(m)
    for key in ("accuracy", "macro_f1", "n_windows", "recording_accuracy"):
        assert m[key] == m[f"vibration_{key}"]
    assert m["n_windows"] == 5 and m["n_boards"] == 4


def test_eval_deeppcb_names_a_split_list_whose_lines_are_not_deeppcb_pairs(tmp_path):
    root = make_deeppcb(tmp_path / "deeppcb")
    other = tmp_path / "intents.csv"
    other.write_text("text,category\nI sent some money,transfer_not_received\n")
    r = CliRunner().invoke(_app(), ["eval", "--deeppcb", str(root), "--split", str(other), "--detector", str(tmp_path / "nope")])
    message = str(r.exception)
    assert isinstance(r.exception, ValueError) and "line 2 is not a DeepPCB pair ('I sent some money" in message
    assert "'group20085/20085/20085000.jpg group20085/20085_not/20085000.txt'" in message


def test_eval_refuses_a_missing_bundle_folder_by_its_option_before_evaluating(tmp_path):
    root = make_deeppcb(tmp_path / "deeppcb")
    for option in ("--classifier", "--vibration"):
        r = CliRunner().invoke(_app(), ["eval", "--deeppcb", str(root), option, str(tmp_path / "nope")])
        assert f"{option} {tmp_path / 'nope'} does not exist" in str(r.exception)


@pytest.mark.parametrize(("command", "missing"), [(["card"], "card.json"), (["border", "--px", "16"], "config.json")])
def test_data_bundle_commands_name_what_the_folder_lacks(tmp_path, command, missing):
    r = CliRunner().invoke(_app(), ["data", command[0], "--bundle", str(tmp_path), *command[1:]])
    assert str(r.exception) == f"--bundle {tmp_path} is incomplete: {missing} is missing"


@pytest.mark.parametrize("command", ["quantize", "threshold", "platt"])
def test_commands_that_rewrite_a_bundle_need_it_named(command, tmp_path):
    """An installed triptych must not rewrite its own shipped weights because an option was left out."""
    r = CliRunner().invoke(_app(), ["data", command, "--deeppcb", str(tmp_path)])
    assert r.exit_code == 2 and "--bundle" in r.output
