"""Heat-map slices as DICOM Secondary Capture images that a PACS files with the source study.

One single-frame RGB Secondary Capture instance (SOP class 1.2.840.10008.5.1.4.1.1.7) per heat-map
slice, all in one new series, in a zip. The only link to the patient is the Study Instance UID the
caller passes: it is never stored by the service (the stored artefacts are the PNGs alone), so the
instances are built at download time. Patient and study attributes of type 2 are present and empty,
as the Secondary Capture IOD allows; no name, ID, date of birth or accession number is written.
"""

from __future__ import annotations

import io
import re
import zipfile
from datetime import UTC, datetime

import numpy as np

SECONDARY_CAPTURE_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.7"
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")
SERIES_DESCRIPTION = "triptych heat map (not for diagnosis)"


def valid_uid(uid: str) -> bool:
    """A DICOM UID: dot-separated numbers without leading zeros, at most 64 characters (PS3.5 9.1)."""
    return len(uid) <= 64 and bool(_UID.match(uid))


def secondary_capture(rgb: np.ndarray, *, study_uid: str, series_uid: str, instance_number: int,
                      model_version: str, slice_label: str, when: datetime | None = None) -> bytes:
    """One (H, W, 3) uint8 image -> the bytes of a Secondary Capture instance (explicit VR little endian)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {rgb.shape} {rgb.dtype}")
    if not valid_uid(study_uid) or not valid_uid(series_uid):
        raise ValueError("study and series UIDs must be valid DICOM UIDs")
    when = when or datetime.now(UTC)
    sop_uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SECONDARY_CAPTURE_SOP_CLASS
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = SECONDARY_CAPTURE_SOP_CLASS, sop_uid
    ds.SpecificCharacterSet = "ISO_IR 100"
    # Patient and General Study modules: type 2 attributes present and empty (no PHI is written)
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "", "", "", ""
    ds.StudyInstanceUID, ds.StudyDate, ds.StudyTime = study_uid, "", ""
    ds.ReferringPhysicianName, ds.StudyID, ds.AccessionNumber = "", "", ""
    # General Series / SC Equipment / General Image
    ds.SeriesInstanceUID, ds.Modality, ds.SeriesNumber = series_uid, "OT", 9001
    ds.SeriesDescription = SERIES_DESCRIPTION
    ds.ConversionType = "WSD"  # workstation
    ds.SecondaryCaptureDeviceManufacturer = "triptych"
    ds.SecondaryCaptureDeviceSoftwareVersions = model_version[:64]
    ds.InstanceNumber = instance_number
    ds.ContentDate, ds.ContentTime = when.strftime("%Y%m%d"), when.strftime("%H%M%S")
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


def heatmaps_to_secondary_capture_zip(pngs: list, study_uid: str | None, model_version: str) -> tuple[bytes, str]:
    """Heat-map PNG paths -> (zip of Secondary Capture instances, the Study Instance UID they carry).

    Without ``study_uid`` the instances get a new study of their own (a PACS then shows them apart).
    """
    from PIL import Image
    from pydicom.uid import generate_uid

    if study_uid is not None and not valid_uid(study_uid):
        raise ValueError("study_uid must be a DICOM UID: numbers separated by dots, at most 64 characters")
    study_uid = study_uid or generate_uid()
    series_uid = generate_uid()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for number, path in enumerate(pngs, start=1):
            rgb = np.asarray(Image.open(path).convert("RGB"), dtype=np.uint8)
            label = path.stem.replace("_", " ")
            data = secondary_capture(rgb, study_uid=study_uid, series_uid=series_uid, instance_number=number,
                                     model_version=model_version, slice_label=label)
            archive.writestr(f"SC{number:04d}.dcm", data)
    return buffer.getvalue(), study_uid
