"""De-identification: DICOM PS3.15 Annex E Basic Application Level Confidentiality Profile, and report
text redaction (names, dates, identifiers, contacts).

DICOM: each attribute of the profile's table (E.1-1, the identifying attributes; the common subset
that appears in CT objects, listed in ``BASIC_PROFILE``) gets its action - X remove, Z replace with
an empty value, D replace with a dummy value, U replace the UID with a consistent new one (the same
input UID and salt give the same output UID, so a series stays a series). Sequences are walked
recursively, private tags, overlays and curves are removed, and any person name left in a
non-listed element is emptied. The result records PatientIdentityRemoved = YES and the method
(code 113100 "Basic Application Confidentiality Profile").

Text: ``redact_report`` replaces names after titles or name labels, dates in numeric and written
forms, identifiers (MRN, accession, long digit runs, LIDC-style IDs), phone numbers, e-mail
addresses and ages above 89 (HIPAA Safe Harbor) with bracketed placeholders. Clinical numbers
(sizes, pack-years, ages up to 89) are kept.
"""

from __future__ import annotations

import hashlib
import re

# (group, element): action. Subset of PS3.15 Table E.1-1 (Basic Profile column).
BASIC_PROFILE: dict[tuple[int, int], str] = {
    (0x0008, 0x0014): "U",  # Instance Creator UID
    (0x0008, 0x0018): "U",  # SOP Instance UID
    (0x0008, 0x0020): "Z",  # Study Date
    (0x0008, 0x0021): "X",  # Series Date
    (0x0008, 0x0022): "X",  # Acquisition Date
    (0x0008, 0x0023): "Z",  # Content Date
    (0x0008, 0x002A): "X",  # Acquisition DateTime
    (0x0008, 0x0030): "Z",  # Study Time
    (0x0008, 0x0031): "X",  # Series Time
    (0x0008, 0x0032): "X",  # Acquisition Time
    (0x0008, 0x0033): "Z",  # Content Time
    (0x0008, 0x0050): "Z",  # Accession Number
    (0x0008, 0x0080): "X",  # Institution Name
    (0x0008, 0x0081): "X",  # Institution Address
    (0x0008, 0x0082): "X",  # Institution Code Sequence
    (0x0008, 0x0090): "Z",  # Referring Physician's Name
    (0x0008, 0x0092): "X",  # Referring Physician's Address
    (0x0008, 0x0094): "X",  # Referring Physician's Telephone Numbers
    (0x0008, 0x0096): "X",  # Referring Physician Identification Sequence
    (0x0008, 0x1010): "X",  # Station Name
    (0x0008, 0x1030): "X",  # Study Description
    (0x0008, 0x103E): "X",  # Series Description
    (0x0008, 0x1040): "X",  # Institutional Department Name
    (0x0008, 0x1048): "X",  # Physician(s) of Record
    (0x0008, 0x1050): "X",  # Performing Physician's Name
    (0x0008, 0x1060): "X",  # Name of Physician(s) Reading Study
    (0x0008, 0x1070): "X",  # Operators' Name
    (0x0008, 0x1080): "X",  # Admitting Diagnoses Description
    (0x0008, 0x1111): "X",  # Referenced Performed Procedure Step Sequence
    (0x0008, 0x1120): "X",  # Referenced Patient Sequence
    (0x0008, 0x1155): "U",  # Referenced SOP Instance UID
    (0x0008, 0x2111): "X",  # Derivation Description
    (0x0010, 0x0010): "Z",  # Patient's Name
    (0x0010, 0x0020): "Z",  # Patient ID
    (0x0010, 0x0021): "X",  # Issuer of Patient ID
    (0x0010, 0x0030): "Z",  # Patient's Birth Date
    (0x0010, 0x0032): "X",  # Patient's Birth Time
    (0x0010, 0x0040): "Z",  # Patient's Sex
    (0x0010, 0x1000): "X",  # Other Patient IDs
    (0x0010, 0x1001): "X",  # Other Patient Names
    (0x0010, 0x1002): "X",  # Other Patient IDs Sequence
    (0x0010, 0x1005): "X",  # Patient's Birth Name
    (0x0010, 0x1010): "X",  # Patient's Age
    (0x0010, 0x1020): "X",  # Patient's Size
    (0x0010, 0x1030): "X",  # Patient's Weight
    (0x0010, 0x1040): "X",  # Patient's Address
    (0x0010, 0x1060): "X",  # Patient's Mother's Birth Name
    (0x0010, 0x1090): "X",  # Medical Record Locator
    (0x0010, 0x2000): "X",  # Medical Alerts
    (0x0010, 0x2110): "X",  # Allergies
    (0x0010, 0x2154): "X",  # Patient's Telephone Numbers
    (0x0010, 0x2160): "X",  # Ethnic Group
    (0x0010, 0x2180): "X",  # Occupation
    (0x0010, 0x21A0): "X",  # Smoking Status
    (0x0010, 0x21B0): "X",  # Additional Patient History
    (0x0010, 0x21C0): "X",  # Pregnancy Status
    (0x0010, 0x4000): "X",  # Patient Comments
    (0x0018, 0x1000): "X",  # Device Serial Number
    (0x0018, 0x1002): "U",  # Device UID
    (0x0018, 0x1004): "X",  # Plate ID
    (0x0018, 0x1030): "X",  # Protocol Name
    (0x0018, 0x700A): "X",  # Detector ID
    (0x0020, 0x000D): "U",  # Study Instance UID
    (0x0020, 0x000E): "U",  # Series Instance UID
    (0x0020, 0x0010): "Z",  # Study ID
    (0x0020, 0x0052): "U",  # Frame of Reference UID
    (0x0020, 0x0200): "U",  # Synchronization Frame of Reference UID
    (0x0020, 0x4000): "X",  # Image Comments
    (0x0020, 0x9161): "U",  # Concatenation UID
    (0x0032, 0x1032): "X",  # Requesting Physician
    (0x0032, 0x1060): "X",  # Requested Procedure Description
    (0x0032, 0x1070): "X",  # Requested Contrast Agent
    (0x0038, 0x0010): "X",  # Admission ID
    (0x0038, 0x0300): "X",  # Current Patient Location
    (0x0038, 0x0400): "X",  # Patient's Institution Residence
    (0x0040, 0x0244): "X",  # Performed Procedure Step Start Date
    (0x0040, 0x0253): "X",  # Performed Procedure Step ID
    (0x0040, 0x0254): "X",  # Performed Procedure Step Description
    (0x0040, 0x0275): "X",  # Request Attributes Sequence
    (0x0040, 0x1001): "X",  # Requested Procedure ID
    (0x0040, 0x2016): "X",  # Placer Order Number / Imaging Service Request
    (0x0040, 0x2017): "X",  # Filler Order Number / Imaging Service Request
    (0x0040, 0xA073): "D",  # Verifying Observer Sequence
    (0x0040, 0xA075): "D",  # Verifying Observer Name
    (0x0040, 0xA123): "D",  # Person Name
    (0x0040, 0xA124): "U",  # UID
    (0x0040, 0xA730): "X",  # Content Sequence
    (0x0088, 0x0140): "U",  # Storage Media File-set UID
    (0x0400, 0x0561): "X",  # Original Attributes Sequence
    (0x3006, 0x0024): "U",  # Referenced Frame of Reference UID
    (0x3006, 0x00C2): "U",  # Related Frame of Reference UID
}

DUMMY_BY_VR = {"PN": "ANONYMOUS", "DA": "19000101", "TM": "000000", "DT": "19000101000000", "LO": "REMOVED",
               "SH": "REMOVED", "CS": "REMOVED", "UI": "2.25.0"}


def new_uid(old: str, salt: str) -> str:
    """A valid UID (2.25 = UUID-derived root) determined by the old UID and a secret salt."""
    digest = hashlib.sha256(f"{salt}|{old}".encode()).digest()
    return "2.25." + str(int.from_bytes(digest[:16], "big"))


def phi_hash(value: str, salt: str = "") -> str:
    """Stable one-way hash for audit records (e.g. a Study Instance UID), hex sha256."""
    return hashlib.sha256(f"{salt}|{value}".encode()).hexdigest()


def _apply(ds, salt: str) -> None:
    from pydicom.dataelem import DataElement
    from pydicom.sequence import Sequence

    for elem in list(ds):
        tag = (elem.tag.group, elem.tag.element)
        action = BASIC_PROFILE.get(tag)
        if elem.tag.is_private or elem.tag.group & 0xFF00 in (0x5000, 0x6000):
            del ds[elem.tag]  # private data, curves and overlays (may burn in names)
            continue
        if action == "X":
            del ds[elem.tag]
        elif action == "Z":
            ds[elem.tag] = DataElement(elem.tag, elem.VR, Sequence() if elem.VR == "SQ" else "")
        elif action == "D":
            if elem.VR == "SQ":
                ds[elem.tag] = DataElement(elem.tag, "SQ", Sequence())
            else:
                ds[elem.tag] = DataElement(elem.tag, elem.VR, DUMMY_BY_VR.get(elem.VR, ""))
        elif action == "U":
            if elem.VM > 1:
                elem.value = [new_uid(str(v), salt) for v in elem.value]
            elif elem.value:
                elem.value = new_uid(str(elem.value), salt)
        elif elem.VR == "SQ":
            for item in elem.value:
                _apply(item, salt)
        elif elem.VR == "PN" and elem.value:
            elem.value = ""  # a person name the table does not list is still a person name


def deidentify_dataset(ds, salt: str):
    """De-identify a pydicom Dataset in place (and return it)."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    _apply(ds, salt)
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "MediaStorageSOPInstanceUID" in meta and "SOPInstanceUID" in ds:
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "DICOM PS3.15 E.1 Basic Profile (triptych)"
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator = "113100", "DCM"
    code.CodeMeaning = "Basic Application Confidentiality Profile"
    ds.DeidentificationMethodCodeSequence = Sequence([code])
    return ds


def deidentify_file(src, dst, salt: str) -> None:
    import pydicom

    ds = pydicom.dcmread(str(src))
    deidentify_dataset(ds, salt)
    ds.save_as(str(dst))


# ------------------------------------------------------------------------------------------ report text

_MONTHS = r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|jun(?:e)?|jul(?:y)?|aug(?:ust)?|sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)\.?"
_NAME = r"[A-Z][a-zA-Z'\-]+(?:\s+[A-Z]\b\.?)?(?:\s+[A-Z][a-zA-Z'\-]+)?"

_PATTERNS: list[tuple[re.Pattern, str]] = [
    (re.compile(r"\b[\w.+-]+@[\w-]+\.[\w.-]+\b"), "[EMAIL]"),
    (re.compile(r"\bLIDC-IDRI-\d{4}\b"), "[ID]"),
    (re.compile(r"(?i)\b(?:MRN|medical record(?: number)?|accession(?: number| no\.?)?|patient id|record(?: no\.?)?|"
                r"id|ssn)\b\s*[:#]?\s*[A-Z0-9][A-Z0-9\-]{3,}\b"), "[ID]"),
    (re.compile(r"\b\d{3}-\d{2}-\d{4}\b"), "[ID]"),  # SSN
    (re.compile(r"(?<![\w.])(?:\+?\d{1,2}[\s.-])?\(?\d{3}\)?[\s.-]\d{3}[\s.-]\d{4}\b"), "[PHONE]"),
    (re.compile(r"\b\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2})?)?\b"), "[DATE]"),
    (re.compile(r"\b\d{1,2}[/.-]\d{1,2}[/.-]\d{2,4}\b"), "[DATE]"),
    (re.compile(rf"(?i)\b{_MONTHS}\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+\d{{4}}\b"), "[DATE]"),
    (re.compile(rf"(?i)\b\d{{1,2}}(?:st|nd|rd|th)?\s+{_MONTHS},?\s+\d{{4}}\b"), "[DATE]"),
    (re.compile(rf"(?i)\b{_MONTHS}\s+\d{{4}}\b"), "[DATE]"),
    (re.compile(rf"\b(?:Dr|Mr|Mrs|Ms|Miss|Prof)\.?\s+{_NAME}"), "[NAME]"),
    (re.compile(rf"(?i:\b(?:patient|pt|name|patient name|physician|radiologist|referring(?: physician)?|"
                rf"dictated by|signed by|attending))\s*[:]\s*{_NAME}"), "[NAME]"),
    (re.compile(r"\b(?:9\d|1[0-4]\d)[- ](?:year|yr)s?[- ]old\b"), "[AGE>89]"),
    (re.compile(r"\b\d{7,}\b"), "[ID]"),
]


def redact_report(text: str) -> str:
    """Replace names, dates, identifiers, contacts and ages over 89 with placeholders."""
    for pattern, placeholder in _PATTERNS:
        if placeholder == "[NAME]":
            text = pattern.sub(lambda m: _keep_label(m.group(0)) + "[NAME]", text)
        else:
            text = pattern.sub(placeholder, text)
    return text


def _keep_label(match: str) -> str:
    """'Patient: John Smith' -> 'Patient: '; 'Dr. Smith' -> ''."""
    if ":" in match:
        return match[: match.index(":") + 1] + " "
    return ""
