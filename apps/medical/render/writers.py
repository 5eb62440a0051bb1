"""Write rendered volumes as NIfTI (RAS affine) or as a DICOM CT series (one file per slice)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def nifti_affine(spacing_zyx: tuple[float, float, float], origin_lps: tuple[float, float, float]) -> np.ndarray:
    """Affine from (i=column, j=row, k=slice) to RAS mm: LPS x, y flip sign."""
    dz, dy, dx = spacing_zyx
    x0, y0, z0 = origin_lps
    return np.array([[-dx, 0, 0, -x0], [0, -dy, 0, -y0], [0, 0, dz, z0], [0, 0, 0, 1]], dtype=float)


def write_nifti(path: Path, volume_zyx: np.ndarray, spacing_zyx, origin_lps) -> Path:
    import nibabel as nib

    data = np.ascontiguousarray(np.transpose(volume_zyx, (2, 1, 0)))  # (x, y, z) as NIfTI stores it
    image = nib.Nifti1Image(data, nifti_affine(spacing_zyx, origin_lps))
    image.header.set_xyzt_units("mm", "sec")
    image.header.set_qform(image.affine, code=1)
    image.header.set_sform(image.affine, code=1)
    image.header["descrip"] = b"triptych LIDC-rendered chest CT (HU)"
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, str(path))
    return path


def _uid(*parts: object) -> str:
    from pydicom.uid import generate_uid

    # deterministic: the same study renders to the same UIDs
    return generate_uid(entropy_srcs=[str(p) for p in parts])


def write_dicom_series(folder: Path, volume_zyx: np.ndarray, spacing_zyx, origin_lps, *, patient_id: str,
                       study_key: str, age: int | None = None, sex: str | None = None,
                       slice_thickness: float | None = None, description: str = "LIDC-rendered chest CT") -> Path:
    """One CT Image Storage file per slice, HU stored directly (slope 1, intercept 0, signed)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, CTImageStorage, ExplicitVRLittleEndian

    folder.mkdir(parents=True, exist_ok=True)
    dz, dy, dx = spacing_zyx
    x0, y0, z0 = origin_lps
    study_uid, series_uid, frame_uid = _uid(study_key, "study"), _uid(study_key, "series"), _uid(study_key, "frame")
    nz, ny, nx = volume_zyx.shape
    for k in range(nz):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = _uid(study_key, "slice", k)
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.Modality = "CT"
        ds.PatientID = patient_id
        ds.PatientName = "RENDERED^LIDC"
        if age is not None:
            ds.PatientAge = f"{int(age):03d}Y"
        ds.PatientSex = sex or ""  # type 2: present, empty when unknown
        # what the CT Image IOD requires (dciodvfy-clean): type 2 attributes present, empty where a
        # rendered study has no such thing (dates, physicians, accession)
        ds.PatientBirthDate, ds.StudyDate, ds.StudyTime = "", "", ""
        ds.ReferringPhysicianName, ds.StudyID, ds.AccessionNumber = "", "", ""
        ds.BodyPartExamined, ds.PatientPosition = "CHEST", "HFS"  # no paired body part: no Laterality
        ds.PositionReferenceIndicator, ds.Manufacturer = "", "triptych renderer"
        ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]  # simulated, not acquired
        ds.KVP, ds.AcquisitionNumber = "", 1
        ds.SeriesDescription = description
        ds.SeriesNumber, ds.InstanceNumber = 1, k + 1
        ds.ImagePositionPatient = [float(x0), float(y0), float(z0 + k * dz)]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = [float(dy), float(dx)]
        ds.SliceThickness = float(slice_thickness or dz)
        ds.SpacingBetweenSlices = float(dz)
        ds.SliceLocation = float(z0 + k * dz)
        ds.Rows, ds.Columns = ny, nx
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "HU"
        ds.WindowCenter, ds.WindowWidth = -600, 1500
        ds.PixelData = np.ascontiguousarray(volume_zyx[k].astype("<i2")).tobytes()
        ds.save_as(folder / f"IM{k + 1:04d}.dcm", enforce_file_format=True)
    return folder
