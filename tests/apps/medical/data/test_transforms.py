"""The MONAI CT pipeline: one result whatever the file format, lungs cropped, window and shape right."""

from __future__ import annotations

import numpy as np
import pytest

from apps.medical.ingest import ingest_path
from apps.medical.render.writers import write_dicom_series, write_nifti
from apps.medical.transforms import (
    CTTransformConfig,
    build_transforms,
    load_for_model,
    lung_mask,
    preprocess_volume,
)
from tests.apps.medical.data.conftest import phantom_volume

SPACING, ORIGIN = (2.5, 1.5, 1.5), (-30.0, -30.0, -100.0)
SHAPE = (16, 24, 24)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("tf")
    vol = phantom_volume(shape=(24, 48, 48))
    return (write_nifti(root / "v.nii.gz", vol, SPACING, ORIGIN),
            write_dicom_series(root / "dcm", vol, SPACING, ORIGIN, patient_id="P", study_key="k"), vol)


def test_same_output_for_nifti_dicom_and_ingested(files):
    nii, dcm, _ = files
    a = load_for_model(nii, SHAPE)
    b = load_for_model(dcm, SHAPE)
    c = preprocess_volume(ingest_path(dcm), SHAPE)
    assert a.shape == SHAPE and a.dtype == np.float32
    assert 0.0 <= a.min() and a.max() <= 1.0
    assert np.abs(a - b).max() < 1e-5 and np.abs(a - c).max() < 1e-5


def test_lung_crop_keeps_the_lungs_and_drops_outside_air(files):
    nii, _, _ = files
    cropped = load_for_model(nii, SHAPE)
    uncropped = load_for_model(nii, SHAPE, CTTransformConfig(lung_crop=False))
    lung_level = (-850 + 1000) / 1400
    # lungs fill more of the cropped field; the air around the patient (window 0) mostly goes
    assert (np.abs(cropped - lung_level) < 0.05).mean() > (np.abs(uncropped - lung_level) < 0.05).mean() + 0.04
    assert (cropped < 0.02).mean() < (uncropped < 0.02).mean()


def test_lung_mask_excludes_outside_air():
    vol = np.transpose(phantom_volume(shape=(10, 40, 40)), (2, 1, 0)).astype(np.float32)
    mask = lung_mask(vol, -400)
    assert mask.any() and not mask[0].any() and not mask[:, 0].any()
    assert np.all(vol[mask] < -400)


def test_orientation_is_canonical(tmp_path):
    """A volume stored head-first and with flipped rows gives the same model input after Orientation."""
    vol = phantom_volume(shape=(24, 48, 48))
    vol[5:8, 10:14, 30:34] = 200  # an asymmetric marker
    a = load_for_model(write_nifti(tmp_path / "a.nii.gz", vol, SPACING, ORIGIN), SHAPE,
                       CTTransformConfig(lung_crop=False))
    import nibabel as nib

    img = nib.load(str(tmp_path / "a.nii.gz"))
    flipped = nib.Nifti1Image(np.asarray(img.dataobj)[:, ::-1, ::-1], img.affine @ np.array(
        [[1, 0, 0, 0], [0, -1, 0, 47], [0, 0, -1, 23], [0, 0, 0, 1]], dtype=float))
    nib.save(flipped, str(tmp_path / "b.nii.gz"))
    b = load_for_model(tmp_path / "b.nii.gz", SHAPE, CTTransformConfig(lung_crop=False))
    assert np.abs(a - b).max() < 1e-4


def test_compose_and_presets():
    compose = build_transforms(CTTransformConfig.from_name("tiny"))
    names = [type(t).__name__ for t in compose.transforms]
    assert names[:3] == ["LoadImage", "EnsureChannelFirst", "Orientation"] and "ScaleIntensityRange" in names
    with pytest.raises(KeyError):
        CTTransformConfig.from_name("huge")
