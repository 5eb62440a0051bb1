"""The analysis as a DICOM Structured Report: what it says, how it is filed, and that it is valid."""

from __future__ import annotations

import io

import pydicom
import pytest

from apps.medical.service import risk_band
from apps.medical.structured_report import ENHANCED_SR_SOP_CLASS, structured_report_for

RESULT = {
    "probability": 0.734, "risk": risk_band(0.734),
    "location": {"voxel_zyx": [40, 60, 70], "relative_zyx": [0.5, 0.4, 0.6], "description": "right lung, upper third",
                 "position_mm": [-80.2, 30.5, -120.0]},
    "findings": [{"voxel_zyx": [40, 60, 70], "position_mm": [-80.2, 30.5, -120.0], "diameter_mm": 14.23, "influence": 1.0},
                 {"voxel_zyx": [10, 20, 30], "position_mm": None, "diameter_mm": 5.1, "influence": 0.21}],
    "modality_weights": {"ct": 0.71, "report": 0.29}, "model_version": "medical-fusion-test",
    "disclaimer": "Research prototype. Not a medical device; not for diagnosis.",
}
STUDY = "1.2.826.0.1.3680043.2.1125.1"
KEY = "0123456789abcdef0123456789abcdef"


def _tree(item, depth=0):
    """(depth, relationship, value type, concept meaning, value) for every content item, in order."""
    out = []
    for child in item.get("ContentSequence", []):
        concept = child.ConceptNameCodeSequence[0].CodeMeaning
        value = child.get("TextValue")
        if child.ValueType == "NUM":
            measured = child.MeasuredValueSequence[0]
            value = (float(measured.NumericValue), measured.MeasurementUnitsCodeSequence[0].CodeValue)
        out.append((depth, child.RelationshipType, child.ValueType, concept, value))
        out += _tree(child, depth + 1)
    return out


def test_the_report_says_what_the_analysis_found_and_names_no_patient():
    data, study = structured_report_for(RESULT, STUDY, KEY)
    ds = pydicom.dcmread(io.BytesIO(data))
    assert study == STUDY and ds.StudyInstanceUID == STUDY and ds.SOPClassUID == ENHANCED_SR_SOP_CLASS
    assert ds.Modality == "SR" and ds.VerificationFlag == "UNVERIFIED" and ds.CompletionFlag == "COMPLETE"
    assert ds.PatientName == "" and ds.PatientID == "" and ds.PatientBirthDate == "" and ds.AccessionNumber == ""
    assert ds.PatientIdentityRemoved == "YES" and "113110" in {c.CodeValue for c in ds.DeidentificationMethodCodeSequence}
    assert ds.ConceptNameCodeSequence[0].CodeValue == "18748-4"  # Diagnostic imaging report
    tree = _tree(ds)
    assert (1, "CONTAINS", "NUM", "Probability of cancer", (73.4, "%")) in tree
    findings = [t for t in tree if t[3] == "Finding"]
    assert any("high" in t[4] and "not a clinical Lung-RADS" in t[4] for t in findings)
    assert any("right lung, upper third" in t[4] and "-80.2, 30.5, -120.0" in t[4] for t in findings)
    # each candidate's diameter is a number, a property of that candidate
    candidate = tree.index(next(t for t in tree if t[4] and str(t[4]).startswith("Candidate 1")))
    assert tree[candidate + 1] == (2, "HAS PROPERTIES", "NUM", "Diameter", (14.2, "mm"))
    assert (2, "HAS PROPERTIES", "NUM", "Diameter", (5.1, "mm")) in tree
    assert (0, "HAS OBS CONTEXT", "TEXT", "Algorithm Version", "medical-fusion-test") in tree
    assert any(t[3] == "Impression" and "73 %" in t[4] for t in tree)
    assert (0, "CONTAINS", "TEXT", "Comment", RESULT["disclaimer"]) in tree


def test_the_same_result_and_study_give_the_same_instance_and_no_study_a_study_of_its_own():
    first = pydicom.dcmread(io.BytesIO(structured_report_for(RESULT, STUDY, KEY)[0]))
    again = pydicom.dcmread(io.BytesIO(structured_report_for(RESULT, STUDY, KEY)[0]))
    assert (first.SeriesInstanceUID, first.SOPInstanceUID) == (again.SeriesInstanceUID, again.SOPInstanceUID)
    other = pydicom.dcmread(io.BytesIO(structured_report_for(RESULT, "1.2.3.4", KEY)[0]))
    assert other.SOPInstanceUID != first.SOPInstanceUID
    alone, study = structured_report_for(RESULT, None, KEY)
    alone = pydicom.dcmread(io.BytesIO(alone))
    assert alone.StudyInstanceUID == study != STUDY and study.startswith("2.25.")
    assert "113110" not in {c.CodeValue for c in alone.DeidentificationMethodCodeSequence}  # no source UID retained
    with pytest.raises(ValueError):
        structured_report_for(RESULT, "1.02.3", KEY)


def test_a_report_only_result_without_location_or_candidates(dicom_errors):
    result = {**RESULT, "location": None, "findings": [], "modality_weights": {"ct": 0.0, "report": 1.0}}
    data, _ = structured_report_for(result, STUDY, KEY)
    tree = _tree(pydicom.dcmread(io.BytesIO(data)))
    assert not any(str(t[4]).startswith(("Candidate", "Estimated nodule")) for t in tree)
    assert any(t[3] == "Impression" and "from the report." in t[4] for t in tree)
    assert dicom_errors(data) == []


def test_the_report_passes_the_dicom_validator(dicom_errors):
    assert dicom_errors(structured_report_for(RESULT, STUDY, KEY)[0]) == []
    assert dicom_errors(structured_report_for(RESULT, None, KEY)[0]) == []
