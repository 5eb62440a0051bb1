"""Heat-map slices as DICOM Secondary Capture images that a PACS files with the source study.

One single-frame RGB Secondary Capture instance (SOP class 1.2.840.10008.5.1.4.1.1.7) per heat-map
slice, all in one new series, in a zip. The only link to the patient is the Study Instance UID the
caller passes: it is never stored by the service (the stored artefacts are the PNGs alone), so the
instances are built at download time. Patient and study attributes of type 2 are present and empty,
as the Secondary Capture IOD allows; no name, ID, date of birth or accession number is written.

The instances follow the PS3.15 Basic Application Level Confidentiality Profile and say so
(PatientIdentityRemoved, DeidentificationMethodCodeSequence): dates are empty, the descriptions kept
are this module's fixed text (Clean Descriptors Option), and the study UID the caller passes is kept
(Retain UIDs Option), which is what files the instances with the study. Series and instance UIDs
are derived from the result's key and that study UID, so downloading the same result again gives
the same instances: a PACS replaces them instead of filing a second copy.
"""

from __future__ import annotations

import io
import re
import zipfile

import numpy as np

SECONDARY_CAPTURE_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.7"
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")
SERIES_DESCRIPTION = "triptych heat map (not for diagnosis)"
# PS3.16 CID 7050 codes for DeidentificationMethodCodeSequence
BASIC_PROFILE = ("113100", "Basic Application Confidentiality Profile")
CLEAN_DESCRIPTORS = ("113105", "Clean Descriptors Option")
RETAIN_UIDS = ("113110", "Retain UIDs Option")
# the heat-map PNGs are axial slices in radiological view (service.slice_png): along a row towards the
# patient's left, down a column towards the back
AXIAL_RADIOLOGICAL = ("L", "P")


def valid_uid(uid: str) -> bool:
    """A DICOM UID: dot-separated numbers without leading zeros, at most 64 characters (PS3.5 9.1)."""
    return len(uid) <= 64 and bool(_UID.match(uid))


def derived_instance(sop_class: str, sop_uid: str, study_uid: str, series_uid: str, study_uid_retained: bool,
                     charset: str):
    """The part every instance the service derives from a study shares (this Secondary Capture, the
    Structured Report): file meta, SOP, the Patient and General Study modules with their type 2
    attributes present and empty (no PHI is written), the series UID, and the record of the PS3.15
    profile it follows. ``study_uid_retained``: the study UID is the source study's (Retain UIDs)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian

    if not all(valid_uid(u) for u in (study_uid, series_uid, sop_uid)):
        raise ValueError("study, series and instance UIDs must be valid DICOM UIDs")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop_class, sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_uid
    ds.SpecificCharacterSet = charset
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "", "", "", ""
    ds.StudyInstanceUID, ds.StudyDate, ds.StudyTime = study_uid, "", ""
    ds.ReferringPhysicianName, ds.StudyID, ds.AccessionNumber = "", "", ""
    ds.SeriesInstanceUID = series_uid
    # Confidentiality profile record (PS3.15 E.1.1)
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "DICOM PS3.15 E.1 Basic Profile (triptych)"
    codes = [BASIC_PROFILE, CLEAN_DESCRIPTORS] + ([RETAIN_UIDS] if study_uid_retained else [])
    ds.DeidentificationMethodCodeSequence = Sequence([_code(value, meaning) for value, meaning in codes])
    return ds


def secondary_capture(rgb: np.ndarray, *, study_uid: str, series_uid: str, instance_number: int,
                      model_version: str, slice_label: str, sop_uid: str | None = None,
                      study_uid_retained: bool = True, patient_orientation: tuple[str, str] = AXIAL_RADIOLOGICAL) -> bytes:
    """One (H, W, 3) uint8 image -> the bytes of a Secondary Capture instance (explicit VR little endian).
    ``sop_uid``: None for a new random one; ``study_uid_retained``: the study UID is the source study's."""
    from pydicom.uid import generate_uid

    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {rgb.shape} {rgb.dtype}")
    if sop_uid is not None and not valid_uid(sop_uid):
        raise ValueError("study, series and instance UIDs must be valid DICOM UIDs")
    ds = derived_instance(SECONDARY_CAPTURE_SOP_CLASS, sop_uid or generate_uid(), study_uid, series_uid,
                          study_uid_retained, charset="ISO_IR 100")
    # General Series / SC Equipment / General Image
    ds.Modality, ds.SeriesNumber = "OT", 9001
    ds.SeriesDescription = SERIES_DESCRIPTION
    # the chest is no paired body part: with it named, Laterality (type 2C) is rightly absent
    ds.BodyPartExamined = "CHEST"
    ds.ConversionType = "WSD"  # workstation
    ds.SecondaryCaptureDeviceManufacturer = "triptych"
    ds.SecondaryCaptureDeviceSoftwareVersions = model_version[:64]
    ds.InstanceNumber = instance_number
    ds.PatientOrientation = list(patient_orientation)  # type 2C: an SC image has no Image Orientation (Patient)
    ds.ContentDate, ds.ContentTime = "", ""  # profile action Z: the analysis date dates the examination
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.DerivationDescription = f"explanation overlay on CT {slice_label}"[:1024]
    ds.BurnedInAnnotation = "NO"
    ds.ImageComments = "Model explanation, not a diagnosis. " + slice_label
    # Image Pixel module
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.Rows, ds.Columns = int(rgb.shape[0]), int(rgb.shape[1])
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.ascontiguousarray(rgb).tobytes()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


POSITIONS_FILE = "positions.json"


def slice_positions(folder) -> dict[str, float]:
    """Heat-map PNG name -> its slice's z in DICOM patient coordinates (mm), as the analysis wrote them
    beside the PNGs ({} when it could not place them)."""
    import json

    try:
        positions = json.loads((folder / POSITIONS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): float(v) for k, v in positions.items()} if isinstance(positions, dict) else {}


def _code(value: str, meaning: str):
    from pydicom.dataset import Dataset

    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
    return item


def heatmaps_to_secondary_capture_zip(pngs: list, study_uid: str | None, model_version: str,
                                      key: str | None = None) -> tuple[bytes, str]:
    """Heat-map PNG paths -> (zip of Secondary Capture instances, the Study Instance UID they carry).

    Without ``study_uid`` the instances get a new study of their own (a PACS then shows them apart).
    ``key`` names the result (its artefact id): the same key and study UID give the same UIDs, so a
    repeated download replaces rather than duplicates; None gives new random UIDs.
    """
    from PIL import Image
    from pydicom.uid import generate_uid

    from apps.medical.deid import new_uid

    if study_uid is not None and not valid_uid(study_uid):
        raise ValueError("study_uid must be a DICOM UID: numbers separated by dots, at most 64 characters")

    source = study_uid  # None: the instances form a study of their own

    def uid(part: str) -> str:
        return new_uid(f"{source}|{part}", key) if key else generate_uid()

    study_uid = source or uid("study")
    series_uid = uid("series")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for number, path in enumerate(pngs, start=1):
            rgb = np.asarray(Image.open(path).convert("RGB"), dtype=np.uint8)
            label = path.stem.replace("_", " ")
            z_mm = slice_positions(path.parent).get(path.name)
            if z_mm is not None:  # where the radiologist finds the source image: its Slice Location
                label += f" (z {z_mm:.1f} mm)"
            data = secondary_capture(rgb, study_uid=study_uid, series_uid=series_uid, instance_number=number,
                                     model_version=model_version, slice_label=label, sop_uid=uid(f"instance|{path.name}"),
                                     study_uid_retained=source is not None)
            archive.writestr(f"SC{number:04d}.dcm", data)
    return buffer.getvalue(), study_uid
