"""Dataset readers on generated files in the datasets' own layouts, and the leak-free vibration split."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from apps.industrial.data import (
    load_cwru,
    load_deeppcb,
    parse_cwru_name,
    prepare_ultralytics,
    read_deeppcb_boxes,
    split_by_group,
)
from apps.industrial.signals import WINDOW, frame, resample, time_blocks, validate_signal


def make_deeppcb(root, groups=("group00041", "group13000"), per_group=2):
    lines = []
    for g in groups:
        gid = g.replace("group", "")
        (root / "PCBData" / g / gid).mkdir(parents=True)
        (root / "PCBData" / g / f"{gid}_not").mkdir(parents=True)
        for i in range(per_group):
            stem = f"{gid}{i:03d}"
            a = np.full((64, 64), 255, np.uint8)
            Image.fromarray(a).save(root / "PCBData" / g / gid / f"{stem}_temp.jpg")
            a[10:20, 10:20] = 0
            Image.fromarray(a).save(root / "PCBData" / g / gid / f"{stem}_test.jpg")
            (root / "PCBData" / g / f"{gid}_not" / f"{stem}.txt").write_text("10 10 20 20 3\n30 5 40 12 6")
            lines.append(f"{g}/{gid}/{stem}.jpg {g}/{gid}_not/{stem}.txt")
    (root / "PCBData" / "trainval.txt").write_text("\n".join(lines) + "\n")
    return root


def test_deeppcb_reader_and_group_split(tmp_path):
    root = make_deeppcb(tmp_path)
    samples = load_deeppcb(root, "trainval.txt")
    assert len(samples) == 4
    s = samples[0]
    assert s.image.name.endswith("_test.jpg") and s.template.name.endswith("_temp.jpg")
    assert s.boxes.tolist() == [[10, 10, 20, 20], [30, 5, 40, 12]] and s.classes.tolist() == [2, 5]
    train, val = split_by_group(samples, ("group13000",))
    assert {x.group for x in train} == {"group00041"} and {x.group for x in val} == {"group13000"}


def test_an_evaluation_reads_deeppcbs_own_test_list_when_the_folder_has_one(tmp_path):
    from apps.industrial.data import default_eval_split

    root = make_deeppcb(tmp_path)
    assert default_eval_split(root) == "trainval.txt"  # the development copy: trainval only
    (root / "PCBData" / "test.txt").write_text((root / "PCBData" / "trainval.txt").read_text().splitlines()[0] + "\n")
    assert default_eval_split(root) == "test.txt"
    assert len(load_deeppcb(root, default_eval_split(root))) == 1


def test_deeppcb_boxes_refuse_unknown_type(tmp_path):
    (tmp_path / "a.txt").write_text("1 2 3 4 9\n")
    with pytest.raises(ValueError, match="type 9"):
        read_deeppcb_boxes(tmp_path / "a.txt")


def test_prepare_ultralytics_writes_bilevel_png_and_yolo_labels(tmp_path):
    root = make_deeppcb(tmp_path / "src")
    counts = prepare_ultralytics(root, tmp_path / "out", val_groups=("group13000",))
    assert counts == {"train": 2, "train_background": 2, "val": 2}
    png = Image.open(tmp_path / "out" / "images" / "train" / "00041000.png")
    assert png.mode == "1"
    label = (tmp_path / "out" / "labels" / "train" / "00041000.txt").read_text().split("\n")[0].split()
    assert label[0] == "2" and abs(float(label[1]) - 15 / 64) < 1e-5 and abs(float(label[3]) - 10 / 64) < 1e-5
    assert not (tmp_path / "out" / "labels" / "train" / "00041000_temp.txt").exists()  # background image


def test_cwru_names():
    assert parse_cwru_name("1797_IR_14_DE12.npz") == {"label": 2, "rpm": 1797, "rate": 12000, "mil": 14}
    assert parse_cwru_name("1730_OR@6_21_DE12.npz")["label"] == 3
    assert parse_cwru_name("1797_Normal.npz") == {"label": 0, "rpm": 1797, "rate": 48000, "mil": 0}
    with pytest.raises(ValueError):
        parse_cwru_name("whatever.npz")


def test_load_cwru_any_depth(tmp_path):
    (tmp_path / "Data" / "1772 RPM").mkdir(parents=True)
    np.savez(tmp_path / "Data" / "1772 RPM" / "1772_B_7_DE12.npz", DE=np.ones((3000, 1)), FE=np.zeros((3000, 1)))
    (rec,) = load_cwru(tmp_path)
    assert rec.label == 1 and rec.rpm == 1772 and rec.sample_rate == 12000 and rec.signal.shape == (3000,)


def test_load_cwru_reads_the_accelerometer_asked_for_and_skips_files_without_it(tmp_path):
    np.savez(tmp_path / "1797_B_7_DE12.npz", DE=np.ones((3000, 1)), FE=np.full((3000, 1), 2.0), BA=np.full((3000, 1), 3.0))
    np.savez(tmp_path / "1797_B_28_DE12.npz", DE=np.ones((3000, 1)))  # CWRU's 28-mil files hold DE alone
    assert [r.signal[0] for r in load_cwru(tmp_path)] == [1.0, 1.0]
    assert [(r.path.name, r.signal[0]) for r in load_cwru(tmp_path, "FE")] == [("1797_B_7_DE12.npz", 2.0)]
    assert [r.signal[0] for r in load_cwru(tmp_path, "BA")] == [3.0]
    (tmp_path / "1797_B_7_DE12.npz").unlink()
    with pytest.raises(FileNotFoundError, match="FE channel"):
        load_cwru(tmp_path, "FE")
    with pytest.raises(ValueError, match="DE, FE, BA"):
        load_cwru(tmp_path, "XX")


def test_load_cwru_ignores_hidden_files_and_folders(tmp_path):
    """A folder copied from macOS holds ``._<name>.npz`` AppleDouble files (not archives, not CWRU names)."""
    np.savez(tmp_path / "1772_B_7_DE12.npz", DE=np.ones((3000, 1)))
    (tmp_path / "._1772_B_7_DE12.npz").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        ")
    (tmp_path / ".Trashes").mkdir()
    np.savez(tmp_path / ".Trashes" / "1772_IR_7_DE12.npz", DE=np.ones((3000, 1)))
    assert [r.path.name for r in load_cwru(tmp_path)] == ["1772_B_7_DE12.npz"]


def test_load_cwru_reads_upper_case_extensions(tmp_path):
    np.savez(tmp_path / "1750_IR_7_DE12.npz", DE=np.ones((3000, 1)))
    np.savez(tmp_path / "1750_B_7_DE12.npz", DE=np.ones((3000, 1)))
    (tmp_path / "1750_B_7_DE12.npz").rename(tmp_path / "1750_B_7_DE12.NPZ")
    assert sorted(r.label for r in load_cwru(tmp_path)) == [1, 2]


def test_fan_end_fault_files_parse_at_12_khz_and_are_read_only_for_the_fan_end_sensor(tmp_path):
    """CWRU's fan-end fault files are ``<rpm>_<fault>_<mil>_FE.npz`` with no rate: all are 12 kHz."""
    assert parse_cwru_name("1730_IR_7_FE.npz") == {"label": 2, "rpm": 1730, "rate": 12000, "mil": 7}
    three = {"DE": np.ones((3000, 1)), "FE": np.full((3000, 1), 2.0), "BA": np.full((3000, 1), 3.0)}
    np.savez(tmp_path / "1730_B_7_DE12.npz", **three)
    np.savez(tmp_path / "1730_OR@3_14_FE.npz", **three)
    with pytest.warns(UserWarning, match=r"1 fan-end fault recording\(s\) skipped .*1730_OR@3_14_FE\.npz"):
        assert [r.path.name for r in load_cwru(tmp_path)] == ["1730_B_7_DE12.npz"]
    with pytest.warns(UserWarning, match="skipped for the BA accelerometer"):
        assert [r.path.name for r in load_cwru(tmp_path, "BA")] == ["1730_B_7_DE12.npz"]
    fan = load_cwru(tmp_path, "FE")
    assert [(r.path.name, r.signal[0], r.sample_rate, r.label) for r in fan] == [
        ("1730_B_7_DE12.npz", 2.0, 12000, 1), ("1730_OR@3_14_FE.npz", 2.0, 12000, 3)]
    (tmp_path / "1730_B_7_DE12.npz").unlink()
    with pytest.raises(FileNotFoundError, match="fan-end fault recording"), pytest.warns(UserWarning):
        load_cwru(tmp_path)


def test_time_blocks_never_share_samples():
    train, val = time_blocks(100_000, 0.25)
    assert train.stop + WINDOW <= val.start
    x = np.arange(100_000, dtype=np.float32)
    tr, va = frame(x[train], stride=256), frame(x[val])
    assert tr.max() < va.min()


def test_resample_48k_to_12k_keeps_a_tone():
    t = np.arange(48_000) / 48_000
    y = resample(np.sin(2 * np.pi * 1000 * t), 48_000)
    assert y.shape == (12_000,)
    spectrum = np.abs(np.fft.rfft(y))
    assert abs(np.argmax(spectrum) * 12_000 / len(y) - 1000) < 2


@pytest.mark.parametrize(
    "signal,rate,match",
    [
        (np.zeros(0), 12_000, "empty"),
        (np.full(5000, np.nan), 12_000, "NaN"),
        (np.ones(5000), 12_000, "constant"),
        (np.random.randn(5000), 10.0, "outside"),
        (np.random.randn(100), 12_000, "at least"),
    ],
)
def test_bad_vibration_is_refused(signal, rate, match):
    with pytest.raises(ValueError, match=match):
        validate_signal(signal, rate)
