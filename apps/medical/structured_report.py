"""A stored analysis as a DICOM Structured Report that a PACS files with the source study.

One Enhanced SR instance (SOP class 1.2.840.10008.5.1.4.1.1.88.22): the structured result a radiologist
files beside the images, read by any SR viewer, where the Secondary Capture (``secondary_capture``)
carries the heat maps as pictures. Its content tree follows the outline of TID 2000 (Basic Diagnostic
Imaging Report: a Findings and an Impression section under a "Diagnostic imaging report" container)
without claiming the template:

- Findings: the probability of malignancy (NUM, %), the risk band and what it means, the estimated
  nodule location, each candidate that moved the decision (its diameter as NUM in mm, its position in
  patient coordinates and its share of the decision), the weight each modality had;
- Impression: one sentence a reader can take in at a glance;
- the algorithm's name and version, and the disclaimer.

As with the Secondary Capture, the only link to the patient is the Study Instance UID the caller
passes (never stored by the service); patient attributes are present and empty, dates carry the
PS3.15 Basic Profile's dummy values (the SR document's content date and time are type 1), and the
instance says which profile it follows. Its UIDs are derived from the result's id and that study UID:
downloading it again gives the same instance, which a PACS replaces instead of filing twice.
"""

from __future__ import annotations

import io
from typing import Any

from apps.medical.secondary_capture import derived_instance, valid_uid

ENHANCED_SR_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.88.22"
SERIES_DESCRIPTION = "triptych malignancy estimate (not for diagnosis)"
# (value, scheme, meaning)
REPORT = ("18748-4", "LN", "Diagnostic imaging report")
FINDINGS = ("121070", "DCM", "Findings")
IMPRESSIONS = ("121072", "DCM", "Impressions")
FINDING = ("121071", "DCM", "Finding")
IMPRESSION = ("121073", "DCM", "Impression")
PROBABILITY_OF_CANCER = ("111047", "DCM", "Probability of cancer")
DIAMETER = ("81827009", "SCT", "Diameter")
ALGORITHM_NAME = ("111001", "DCM", "Algorithm Name")
ALGORITHM_VERSION = ("111003", "DCM", "Algorithm Version")
COMMENT = ("121106", "DCM", "Comment")
PERCENT = ("%", "UCUM", "percent")
MILLIMETRE = ("mm", "UCUM", "millimeter")
# PS3.15 Basic Profile dummy values for dates and times a module requires (type 1)
DUMMY_DATE, DUMMY_TIME = "19000101", "000000"
SR_SERIES_NUMBER = 9002  # beside the Secondary Capture's 9001


def _coded(value: str, scheme: str, meaning: str):
    from pydicom.dataset import Dataset

    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _item(value_type: str, concept: tuple[str, str, str], relationship: str = "CONTAINS"):
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    item = Dataset()
    item.RelationshipType = relationship
    item.ValueType = value_type
    item.ConceptNameCodeSequence = Sequence([_coded(*concept)])
    return item


def _text(concept: tuple[str, str, str], text: str, relationship: str = "CONTAINS"):
    item = _item("TEXT", concept, relationship)
    item.TextValue = text[:1024]
    return item


def _num(concept: tuple[str, str, str], value: float, unit: tuple[str, str, str], digits: int = 1,
         relationship: str = "CONTAINS"):
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    item = _item("NUM", concept, relationship)
    measured = Dataset()
    measured.NumericValue = f"{value:.{digits}f}"  # DS: at most 16 characters
    measured.MeasurementUnitsCodeSequence = Sequence([_coded(*unit)])
    item.MeasuredValueSequence = Sequence([measured])
    return item


def _container(concept: tuple[str, str, str], children: list, relationship: str | None = "CONTAINS"):
    from pydicom.sequence import Sequence

    item = _item("CONTAINER", concept, relationship or "CONTAINS")
    if relationship is None:  # the root has no relationship to a parent
        del item.RelationshipType
    item.ContinuityOfContent = "SEPARATE"
    item.ContentSequence = Sequence(children)
    return item


def _mm(values) -> str:
    return ", ".join(f"{v:.1f}" for v in values)


def findings_items(result: dict[str, Any]) -> list:
    """The Findings section's items for one stored analysis (the analyze response's fields)."""
    from pydicom.sequence import Sequence

    risk = result["risk"]
    items = [
        _num(PROBABILITY_OF_CANCER, 100.0 * float(result["probability"]), PERCENT),
        _text(FINDING, f"Risk band: {risk['band']}. {risk['meaning']} ({risk['note']})"),
    ]
    location = result.get("location")
    if location:
        where = location["description"]
        if location.get("position_mm"):
            where += f" at ({_mm(location['position_mm'])}) mm, DICOM patient coordinates (LPS)"
        items.append(_text(FINDING, f"Estimated nodule location: {where}"))
    for rank, finding in enumerate(result.get("findings") or [], start=1):
        position = (f" centred at ({_mm(finding['position_mm'])}) mm (LPS)" if finding.get("position_mm") else "")
        candidate = _text(FINDING, f"Candidate {rank}: about {finding['diameter_mm']:.1f} mm{position}; "
                                   f"share of the decision {finding['influence']:.2f} of the most influential")
        # its diameter as a number a viewer can tabulate, a property of this candidate
        candidate.ContentSequence = Sequence([_num(DIAMETER, float(finding["diameter_mm"]), MILLIMETRE,
                                                   relationship="HAS PROPERTIES")])
        items.append(candidate)
    weights = result.get("modality_weights") or {}
    if weights:
        items.append(_text(FINDING, "Weight of each input in the decision: "
                                    + ", ".join(f"{name} {w:.2f}" for name, w in weights.items())))
    return items


def impression_text(result: dict[str, Any]) -> str:
    risk = result["risk"]
    names = {"ct": "the CT", "report": "the report"}
    sent = [names.get(m, m) for m, w in (result.get("modality_weights") or {}).items() if w > 0]
    return (f"Estimated probability that the nodule is malignant: {100 * float(result['probability']):.0f} % "
            f"({risk['band']} band, not a Lung-RADS category), from {' and '.join(sent) or 'the inputs'}. "
            "Model output for research; not a diagnosis.")


def structured_report(result: dict[str, Any], *, study_uid: str, series_uid: str, sop_uid: str,
                      study_uid_retained: bool = True) -> bytes:
    """A stored analysis (the analyze response's fields, ``model_version`` and ``disclaimer``
    included) -> the bytes of an Enhanced SR instance (explicit VR little endian)."""
    from pydicom.sequence import Sequence

    # UTF-8: whatever characters the texts carry
    ds = derived_instance(ENHANCED_SR_SOP_CLASS, sop_uid, study_uid, series_uid, study_uid_retained, charset="ISO_IR 192")
    # SR Document Series, General Equipment
    ds.Modality, ds.SeriesNumber = "SR", SR_SERIES_NUMBER
    ds.SeriesDescription = SERIES_DESCRIPTION
    ds.ReferencedPerformedProcedureStepSequence = Sequence([])
    ds.Manufacturer = "triptych"
    ds.SoftwareVersions = str(result["model_version"])[:64]
    # SR Document General: a model's output that no one has signed
    ds.InstanceNumber = 1
    ds.CompletionFlag, ds.VerificationFlag = "COMPLETE", "UNVERIFIED"
    ds.ContentDate, ds.ContentTime = DUMMY_DATE, DUMMY_TIME  # type 1 here; the profile's dummy values
    ds.PerformedProcedureCodeSequence = Sequence([])
    # SR Document Content: the root container and its tree
    findings = _container(FINDINGS, findings_items(result))
    impressions = _container(IMPRESSIONS, [_text(IMPRESSION, impression_text(result))])
    algorithm = [_text(ALGORITHM_NAME, "triptych radiology fusion model", "HAS OBS CONTEXT"),
                 _text(ALGORITHM_VERSION, str(result["model_version"]), "HAS OBS CONTEXT")]
    disclaimer = _text(COMMENT, str(result.get("disclaimer") or "Not a medical device; not for diagnosis."))
    root = _container(REPORT, algorithm + [findings, impressions, disclaimer], relationship=None)
    for name in ("ValueType", "ConceptNameCodeSequence", "ContinuityOfContent", "ContentSequence"):
        setattr(ds, name, getattr(root, name))
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def structured_report_for(result: dict[str, Any], study_uid: str | None, key: str) -> tuple[bytes, str]:
    """(SR bytes, the Study Instance UID it carries) for a stored analysis named by ``key`` (its result
    id). Without ``study_uid`` the report gets a study of its own; the same key and study UID always
    give the same series and instance UIDs."""
    from apps.medical.deid import new_uid

    if study_uid is not None and not valid_uid(study_uid):
        raise ValueError("study_uid must be a DICOM UID: numbers separated by dots, at most 64 characters")
    source = study_uid
    study = source or new_uid(f"{source}|study", key)
    data = structured_report(result, study_uid=study, series_uid=new_uid(f"{source}|sr-series", key),
                             sop_uid=new_uid(f"{source}|sr-instance", key), study_uid_retained=source is not None)
    return data, study
