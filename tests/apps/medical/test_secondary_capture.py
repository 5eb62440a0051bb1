import io
import zipfile

import numpy as np
import pytest
from PIL import Image

from apps.medical.secondary_capture import (
    SECONDARY_CAPTURE_SOP_CLASS,
    heatmaps_to_secondary_capture_zip,
    secondary_capture,
    valid_uid,
)


def test_uid_rules():
    assert valid_uid("1.2.840.113619.2.55.3") and valid_uid("2.25.1234")
    for bad in ("1.02.3", "1..2", "abc", "1.2.", "1", "1.2.3 ", "1." + "1" * 64):
        assert not valid_uid(bad), bad


def test_instance_reads_back_with_the_study_uid_and_no_phi():
    import pydicom

    rgb = np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    data = secondary_capture(rgb, study_uid="1.2.3.4", series_uid="1.2.3.5", instance_number=2,
                             model_version="medical-fusion-x", slice_label="slice 17")
    ds = pydicom.dcmread(io.BytesIO(data))
    assert ds.SOPClassUID == SECONDARY_CAPTURE_SOP_CLASS and ds.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID
    assert ds.StudyInstanceUID == "1.2.3.4" and ds.SeriesInstanceUID == "1.2.3.5" and ds.InstanceNumber == 2
    assert (ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation) == (24, 32, 3, "RGB")
    np.testing.assert_array_equal(ds.pixel_array, rgb)
    assert ds.PatientName == "" and ds.PatientID == "" and ds.PatientBirthDate == "" and ds.AccessionNumber == ""
    with pytest.raises(ValueError):
        secondary_capture(rgb[..., 0], study_uid="1.2", series_uid="1.3", instance_number=1, model_version="m", slice_label="s")


def test_zip_has_one_instance_per_slice_in_one_series(tmp_path):
    import pydicom

    paths = []
    for z in (12, 3):
        path = tmp_path / f"slice_{z}.png"
        Image.fromarray(np.full((8, 8, 3), z, np.uint8)).save(path)
        paths.append(path)
    data, study = heatmaps_to_secondary_capture_zip(paths, None, "v1")
    assert valid_uid(study)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        sets = [pydicom.dcmread(io.BytesIO(archive.read(n))) for n in sorted(archive.namelist())]
    assert len(sets) == 2 and {d.SeriesInstanceUID for d in sets} == {sets[0].SeriesInstanceUID}
    assert {d.StudyInstanceUID for d in sets} == {study} and len({d.SOPInstanceUID for d in sets}) == 2
    assert sets[0].pixel_array[0, 0, 0] == 12 and "slice 12" in sets[0].ImageComments
    with pytest.raises(ValueError):
        heatmaps_to_secondary_capture_zip(paths, "not-a-uid", "v1")


def _instances(data: bytes) -> list:
    import pydicom

    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return [pydicom.dcmread(io.BytesIO(archive.read(n))) for n in sorted(archive.namelist())]


def _slices(tmp_path) -> list:
    paths = []
    for z in (12, 3):
        path = tmp_path / f"slice_{z}.png"
        Image.fromarray(np.full((8, 8, 3), z, np.uint8)).save(path)
        paths.append(path)
    return paths


def test_instances_follow_the_basic_confidentiality_profile(tmp_path):
    """PS3.15 E.1.1: no dates (Z attributes empty), PatientIdentityRemoved YES and the profile (with
    the options used) recorded; descriptions kept are the service's own fixed text."""
    from apps.medical.deid import BASIC_PROFILE

    (ds,) = _instances(heatmaps_to_secondary_capture_zip(_slices(tmp_path)[:1], "1.2.3.4", "v1", key="a" * 32)[0])
    assert ds.PatientIdentityRemoved == "YES" and ds.DeidentificationMethod
    codes = {item.CodeValue for item in ds.DeidentificationMethodCodeSequence}
    assert {"113100", "113105", "113110"} <= codes  # basic profile, clean descriptors, retain UIDs
    for (group, element), action in BASIC_PROFILE.items():
        if (group, element) in ds and action in ("Z", "X") and ds[group, element].VR != "UI":
            value = ds[group, element].value
            kept_descriptor = (group, element) in ((0x0008, 0x103E), (0x0008, 0x2111), (0x0020, 0x4000))
            assert value in ("", None) or kept_descriptor, f"({group:04X},{element:04X}) = {value!r}"
    assert ds.StudyInstanceUID == "1.2.3.4"


def test_instances_carry_the_patient_orientation_of_their_rows_and_columns(tmp_path):
    """PS3.3 C.7.6.1: an image without Image Orientation (Patient) needs Patient Orientation (type 2C);
    the heat-map slices are axial in radiological view, rows to the patient's left, columns to the back."""
    (ds,) = _instances(heatmaps_to_secondary_capture_zip(_slices(tmp_path)[:1], None, "v1")[0])
    assert list(ds.PatientOrientation) == ["L", "P"]


def test_downloading_twice_gives_the_same_instances(tmp_path):
    """A PACS keys instances by UID: a retried download must replace, not duplicate, the series."""
    paths = _slices(tmp_path)
    first = _instances(heatmaps_to_secondary_capture_zip(paths, "1.2.3.4", "v1", key="a" * 32)[0])
    again = _instances(heatmaps_to_secondary_capture_zip(paths, "1.2.3.4", "v1", key="a" * 32)[0])
    assert [d.SOPInstanceUID for d in first] == [d.SOPInstanceUID for d in again]
    assert first[0].SeriesInstanceUID == again[0].SeriesInstanceUID
    assert all(valid_uid(d.SOPInstanceUID) and d.file_meta.MediaStorageSOPInstanceUID == d.SOPInstanceUID for d in first)
    other = _instances(heatmaps_to_secondary_capture_zip(paths, "1.2.3.5", "v1", key="a" * 32)[0])
    assert other[0].SeriesInstanceUID != first[0].SeriesInstanceUID  # filed with another study: other UIDs
    own = heatmaps_to_secondary_capture_zip(paths, None, "v1", key="a" * 32)[1]
    assert own == heatmaps_to_secondary_capture_zip(paths, None, "v1", key="a" * 32)[1]


def test_instances_name_the_z_of_their_slice_when_the_analysis_placed_it(tmp_path):
    """The analysis writes each heat-map slice's z (DICOM patient coordinates) beside the PNGs: the
    instance then says where its source image is, as a viewer's Slice Location would."""
    import json

    paths = []
    for z in (12, 3):
        path = tmp_path / f"slice_{z}.png"
        Image.fromarray(np.full((8, 8, 3), z, np.uint8)).save(path)
        paths.append(path)
    (tmp_path / "positions.json").write_text(json.dumps({"slice_12.png": -152.5}))
    first, second = _instances(heatmaps_to_secondary_capture_zip(paths, None, "v1")[0])
    assert "slice 12 (z -152.5 mm)" in first.ImageComments and "z -152.5 mm" in first.DerivationDescription
    assert second.ImageComments.endswith("slice 3")  # not placed: named by its index alone


def test_an_instance_passes_the_dicom_validator(dicom_errors):
    rgb = np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    data = secondary_capture(rgb, study_uid="1.2.3.4", series_uid="1.2.3.5", instance_number=1,
                             model_version="medical-fusion-x", slice_label="slice 17 (z -120.0 mm)")
    assert dicom_errors(data) == []  # it once lacked the body part, so Laterality (type 2C) was due
