"""De-identification of DICOM (PS3.15 basic profile) and of report text."""

from __future__ import annotations

import numpy as np
import pytest

from apps.medical.deid import deidentify_dataset, new_uid, phi_hash, redact_report


@pytest.fixture
def ct():
    import pydicom
    from pydicom.data import get_testdata_file

    return pydicom.dcmread(get_testdata_file("CT_small.dcm", download=False))


def test_basic_profile_strips_identity_and_keeps_pixels(ct):
    pixels = ct.pixel_array.copy()
    study, series = ct.StudyInstanceUID, ct.SeriesInstanceUID
    assert str(ct.PatientName) and any(e.tag.is_private for e in ct)
    deidentify_dataset(ct, salt="s")
    assert str(ct.PatientName) == "" and ct.PatientID == "" and ct.get("PatientBirthDate", "") == ""
    assert "InstitutionName" not in ct and "StudyDate" not in ct or ct.StudyDate == ""
    assert not any(e.tag.is_private for e in ct)
    assert ct.PatientIdentityRemoved == "YES" and ct.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
    assert ct.StudyInstanceUID == new_uid(study, "s") != study and ct.SeriesInstanceUID == new_uid(series, "s")
    assert ct.file_meta.MediaStorageSOPInstanceUID == ct.SOPInstanceUID
    assert np.array_equal(ct.pixel_array, pixels) and ct.Modality == "CT"


def test_uids_are_consistent_per_salt():
    assert new_uid("1.2.3", "a") == new_uid("1.2.3", "a") != new_uid("1.2.3", "b")
    assert new_uid("1.2.3", "a").startswith("2.25.") and len(new_uid("1.2.3", "a")) <= 64
    assert phi_hash("1.2.3") == phi_hash("1.2.3") and "1.2.3" not in phi_hash("1.2.3")


def test_names_in_sequences_are_removed(ct):
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    item = Dataset()
    item.PersonName = "Doe^Jane"
    item.ReferencedSOPInstanceUID = "1.2.3.4"
    ct.OtherPatientIDsSequence = Sequence([Dataset()])
    ct.ProcedureCodeSequence = Sequence([item])
    deidentify_dataset(ct, salt="s")
    assert "OtherPatientIDsSequence" not in ct
    inner = ct.ProcedureCodeSequence[0]
    assert "Doe" not in str(inner.PersonName) and inner.ReferencedSOPInstanceUID == new_uid("1.2.3.4", "s")


@pytest.mark.parametrize("text, gone", [
    ("Patient: John Smith was seen.", "John"),
    ("Dictated by Dr. Alice Brown.", "Brown"),
    ("Exam date 03/04/2019, prior 2018-11-02 and January 5, 2020.", "2019"),
    ("MRN: 12345678, accession # A7654321.", "12345678"),
    ("Call 555-123-4567 or mail j.smith@example.org.", "555"),
    ("Subject LIDC-IDRI-0042 follow-up.", "0042"),
    ("A 93-year-old woman.", "93"),
])
def test_report_redaction_removes_phi(text, gone):
    assert gone not in redact_report(text)


def test_report_redaction_keeps_clinical_numbers():
    text = "62-year-old man, 45 pack-years. 12 mm nodule in the right upper lobe. No pleural effusion."
    assert redact_report(text) == text
