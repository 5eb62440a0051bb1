"""CT ingestion: a DICOM series (zip or folder), a multi-frame DICOM file, or NIfTI -> ``CTVolume``.

Everything a user can get wrong is refused with ``IngestError``: its ``message`` says what was
wrong and what is accepted, carries no PHI (never a patient name or ID, only counts, sizes and tag
names), and its ``status_code`` (413 too large, 415 wrong kind, 422 unusable content) is what the
API should answer. Checks: modality CT (DICOM) or HU-like values (NIfTI, which has no modality
tag), one series only, consistent rows/columns/pixel spacing/orientation, evenly spaced slices
(a gap of about a whole multiple of the spacing is reported as missing slices), and sizes within
``IngestLimits``. Zips go through ``core.serving.safe_unzip`` (bomb- and traversal-safe).
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ACCEPTED = ("a zip of one DICOM CT series, a folder of one DICOM CT series, a multi-frame DICOM CT file, "
            "or a NIfTI volume in Hounsfield units (.nii, .nii.gz)")


class IngestError(ValueError):
    """A CT input that cannot be used. ``message`` is safe to show users and to log (no PHI)."""

    def __init__(self, message: str, *, code: str = "invalid_ct", status_code: int = 422, detail: dict | None = None):
        super().__init__(message)
        self.message = message
        self.code = code
        self.status_code = status_code
        self.detail = detail or {}

    def to_api_error(self):
        from core.serving import ApiError

        return ApiError(self.status_code, self.code, self.message, detail=self.detail or None)


@dataclass(frozen=True)
class IngestLimits:
    max_files: int = 2000  # DICOM files in one series / zip
    max_archive_bytes: int = 1024**3  # uncompressed zip content
    max_voxels: int = 512 * 512 * 1200  # ~315 M voxels: a 0.6 mm whole-body scan; beyond that is refused
    min_slices: int = 8
    min_matrix: int = 16  # rows / columns
    max_matrix: int = 2048
    pixel_spacing_mm: tuple[float, float] = (0.1, 5.0)
    slice_spacing_mm: tuple[float, float] = (0.2, 12.0)
    spacing_tolerance: float = 0.1  # relative deviation of a slice gap from the median still accepted
    max_compression_ratio: float = 200.0  # gzip NIfTI: CT compresses about 2:1; a 600 KB file of 1.2 G voxels is a bomb


@dataclass
class CTVolume:
    """HU voxels ``data`` (X = columns, Y = rows, Z = slices) and the RAS affine that places them."""

    data: np.ndarray  # (X, Y, Z) float32 HU
    affine_ras: np.ndarray  # (4, 4) voxel index -> RAS mm
    source_format: str  # "dicom-series" | "dicom-multiframe" | "nifti" | "mhd"
    study_uid: str | None = None  # for audit hashing only; never logged in clear
    series_uid: str | None = None
    meta: dict = field(default_factory=dict)  # non-identifying acquisition facts

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size (x, y, z) in mm."""
        return tuple(float(v) for v in np.linalg.norm(self.affine_ras[:3, :3], axis=0))

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.data.shape)

    def to_metatensor(self):
        """(1, X, Y, Z) MONAI MetaTensor carrying the affine, for ``transforms.preprocess_volume``."""
        import torch
        from monai.data import MetaTensor

        return MetaTensor(torch.from_numpy(np.ascontiguousarray(self.data, dtype=np.float32))[None],
                          affine=torch.as_tensor(self.affine_ras, dtype=torch.float64))

    def to_nifti(self, path: str | Path) -> Path:
        import nibabel as nib

        image = nib.Nifti1Image(np.round(self.data).astype(np.int16), self.affine_ras)
        image.header.set_xyzt_units("mm", "sec")
        nib.save(image, str(path))
        return Path(path)


LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


# -------------------------------------------------------------------------------------------- entry points

def ingest_path(path: str | Path, limits: IngestLimits | None = None) -> CTVolume:
    """A folder (DICOM series), a .nii/.nii.gz file, or a DICOM file (multi-frame)."""
    limits = limits or IngestLimits()
    path = Path(path)
    if path.is_dir():
        files = [p for p in sorted(path.rglob("*")) if p.is_file() and not p.name.startswith(".")]
        return read_dicom_series(files, limits)
    if not path.is_file():
        raise IngestError(f"no such file or folder: {path.name}", code="not_found", status_code=404)
    head = path.read_bytes()[:348]
    kind = sniff(head, path.name)
    if kind == "nifti":
        return read_nifti(path, limits)
    if kind == "dicom":
        return read_dicom_file(path, limits)
    if kind == "zip":
        return ingest_bytes(path.read_bytes(), path.name, limits=limits)
    raise IngestError(f"{path.name}: not a recognised CT format. Accepted: {ACCEPTED}.", code="unsupported_type",
                      status_code=415)


def ingest_bytes(data: bytes, filename: str = "upload", *, limits: IngestLimits | None = None,
                 workdir: str | Path | None = None) -> CTVolume:
    """An uploaded body: zip (DICOM series), DICOM file, or NIfTI (.nii or gzip-compressed)."""
    limits = limits or IngestLimits()
    kind = sniff(data[:348], filename)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        tmp = Path(tmp)
        if kind == "zip":
            files = _safe_unzip(data, tmp / "series", limits)
            if any(f.name.lower().endswith((".nii", ".nii.gz")) for f in files) and len(files) == 1:
                return read_nifti(files[0], limits)
            return read_dicom_series(files, limits)
        if kind == "nifti":
            name = "volume.nii.gz" if data[:2] == b"\x1f\x8b" else "volume.nii"
            (tmp / name).write_bytes(data)
            return read_nifti(tmp / name, limits)
        if kind == "dicom":
            (tmp / "image.dcm").write_bytes(data)
            return read_dicom_file(tmp / "image.dcm", limits)
    raise IngestError(f"the upload is not a recognised CT format. Accepted: {ACCEPTED}.", code="unsupported_type",
                      status_code=415)


def ingest_upload(data: bytes, kind: str | None, workdir: str | Path,
                  limits: IngestLimits | None = None) -> tuple[Path, str | None]:
    """What the service calls: upload bytes -> (a PHI-free NIfTI in ``workdir``, StudyInstanceUID or None).

    ``kind`` is core.serving's sniff result; only zip, dicom and nifti are CT carriers. The NIfTI
    holds voxels and geometry only, so nothing identifying is written to disk; the UID is returned
    for the caller to hash."""
    if kind not in (None, "zip", "dicom", "nifti"):
        raise IngestError(f"a {kind} upload is not a CT volume. Accepted: {ACCEPTED}.", code="unsupported_type",
                          status_code=415)
    volume = ingest_bytes(data, "upload.nii.gz" if kind == "nifti" else "upload", limits=limits, workdir=workdir)
    path = volume.to_nifti(Path(workdir) / "ct.nii.gz")
    return path, volume.study_uid


def sniff(head: bytes, filename: str = "") -> str | None:
    """'zip' | 'dicom' | 'nifti' | None from magic bytes (``filename`` is kept for callers' symmetry)."""
    if head[:4] == b"PK\x03\x04":
        return "zip"
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if len(head) >= 348 and head[344:348] in (b"n+1\x00", b"ni1\x00"):
        return "nifti"
    if len(head) >= 4 and int.from_bytes(head[:4], "little") == 348 and len(head) >= 348:
        return "nifti"
    if head[:2] == b"\x1f\x8b":  # gzip: NIfTI is the only gzip we accept; nibabel checks the content
        return "nifti"
    return None


def _safe_unzip(data: bytes, dest: Path, limits: IngestLimits) -> list[Path]:
    from core.serving import ApiError, safe_unzip

    try:
        files = safe_unzip(data, dest, max_files=limits.max_files, max_total_bytes=limits.max_archive_bytes)
    except ApiError as exc:
        raise IngestError(exc.message, code=exc.code, status_code=exc.status_code) from None
    files = [f for f in files if f.is_file() and not f.name.startswith(".") and "__MACOSX" not in f.parts]
    if not files:
        raise IngestError(f"the zip holds no files. Accepted: {ACCEPTED}.", code="empty_upload")
    return files


# -------------------------------------------------------------------------------------------- DICOM

def withhold_header_values_from_logs() -> None:
    """Stop pydicom validating header values as it reads them: it reports an invalid one by quoting it in a
    log line and a warning ("Invalid value for VR UI: '1.2.826.ROE.JANE...'"), and header text may be PHI.
    Nothing is lost: ingestion checks every value it uses itself. Process-wide (pydicom has one setting), so
    the service calls it when it starts, never at import."""
    from pydicom import config

    config.settings.reading_validation_mode = config.IGNORE


def _dcmread(path: Path, header_only: bool):
    """The dataset, or None when it is not readable DICOM. pydicom converts element values lazily, so
    every element is converted here: an unknown VR or a value of the wrong length in a hostile file is
    found now, not as a stray exception at the first attribute read."""
    import pydicom
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    try:
        meta = pydicom.filereader.read_file_meta_info(str(path))  # the meta group alone: cheap
    except Exception:  # noqa: BLE001 - not DICOM (no preamble, broken meta): dcmread would fail too
        return None
    if meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian:
        # pydicom inflates a deflated dataset whole, in memory, before reading a tag: 1 MB can become 1 GB
        raise IngestError("deflated DICOM (transfer syntax Deflated Explicit VR Little Endian) is not accepted; "
                          "send uncompressed, RLE, JPEG, JPEG-LS or JPEG 2000 DICOM.", code="unsupported_transfer_syntax",
                          status_code=415)
    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=header_only)
        ds.walk(lambda dataset, element: None)
        ds.file_meta.walk(lambda dataset, element: None)
        return ds
    except Exception:  # noqa: BLE001 - InvalidDicomError, NotImplementedError (unknown VR), BytesLengthException, ...
        return None


# DICOM's defined terms for Modality (PS3.3 C.7.3.1.1.1): only these are repeated in an answer; any other
# value is header text a misfiled study may have put anything into
_MODALITY_TERMS = frozenset(
    "AR ASMT AU BDUS BI BMD CR CT CTPROTOCOL DG DOC DX ECG EPS ES FID GM HC HD IO IOL IVOCT IVUS KER KO LEN LS MG MR "
    "M3D NM OAM OCT OP OPM OPT OPTBSV OPTENF OPV OSS OT PLAN PR PT PX REG RESP RF RG RTDOSE RTIMAGE RTINTENT RTPLAN "
    "RTRAD RTRECORD RTSEGANN RTSTRUCT RWV SEG SM SMR SR SRF STAIN TEXTUREMAP TG US VA XA XC".split())


def _check_modality(ds, where: str) -> None:
    modality = str(getattr(ds, "Modality", "") or "").strip().upper()
    if modality != "CT":
        shown = modality if modality in _MODALITY_TERMS else ("missing" if not modality else "not a DICOM modality term")
        raise IngestError(f"{where}: modality is {shown}; only CT is accepted.", code="not_ct",
                          detail={"modality": shown})


def _floats(value, n: int, name: str, where: str) -> np.ndarray:
    try:
        out = np.array([float(v) for v in value], dtype=float)
    except (TypeError, ValueError):
        out = np.zeros(0)
    if out.size != n or not np.isfinite(out).all():
        raise IngestError(f"{where}: {name} is missing or malformed.", code="bad_geometry")
    return out


def _orientation(value, where: str) -> np.ndarray:
    """ImageOrientationPatient as 6 floats, refused unless it is two orthogonal unit vectors: zeros or
    parallel vectors have no slice normal, and every slice would then seem to sit at one position."""
    iop = _floats(value, 6, "ImageOrientationPatient", where)
    row, col = iop[:3], iop[3:]
    tol = 1e-2  # headers round direction cosines to a few decimals
    if abs(np.linalg.norm(row) - 1) > tol or abs(np.linalg.norm(col) - 1) > tol or abs(row @ col) > tol:
        raise IngestError(f"{where}: ImageOrientationPatient is not two orthogonal unit vectors (row and column "
                          "directions).", code="bad_geometry")
    return iop


def _number(ds, name: str, default: float, where: str, cast=float):
    """One numeric header value (``default`` when absent, empty or zero); a value that is not one finite
    number (text, several values, NaN) is refused naming the tag, never its content (headers may hold PHI)."""
    try:
        value = getattr(ds, name, None)
        out = cast(value) if value is not None and value != "" else default
        finite = math.isfinite(out)
    except Exception:  # noqa: BLE001 - pydicom raises many kinds for malformed values (MultiValue, bad VR, text)
        finite = False
    if not finite:
        raise IngestError(f"{where}: {name} is malformed; one number is required.", code="bad_header")
    return out or default


def _first_item(sequence):
    """The first item of a DICOM sequence, or None when it is absent or empty."""
    try:
        return sequence[0] if sequence is not None and len(sequence) else None
    except (TypeError, IndexError, KeyError):
        return None


def _check_matrix(rows: int, cols: int, limits: IngestLimits) -> None:
    for name, n in (("rows", rows), ("columns", cols)):
        if not limits.min_matrix <= n <= limits.max_matrix:
            raise IngestError(f"image has {n} {name}; accepted {limits.min_matrix}..{limits.max_matrix}.",
                              code="absurd_size", status_code=413 if n > limits.max_matrix else 422)


def _check_spacing(pixel: np.ndarray, slice_gap: float, limits: IngestLimits) -> None:
    lo, hi = limits.pixel_spacing_mm
    if not all(lo <= p <= hi for p in pixel):
        raise IngestError(f"pixel spacing {pixel.round(3).tolist()} mm is outside {lo}..{hi} mm.", code="bad_spacing")
    lo, hi = limits.slice_spacing_mm
    if not lo <= slice_gap <= hi:
        raise IngestError(f"slice spacing {slice_gap:.3g} mm is outside {lo}..{hi} mm.", code="bad_spacing")


def _check_voxels(shape: tuple[int, ...], limits: IngestLimits) -> None:
    n = int(np.prod(shape))
    if n > limits.max_voxels:
        raise IngestError(f"volume of {'x'.join(map(str, shape))} voxels is larger than the {limits.max_voxels} accepted.",
                          code="absurd_size", status_code=413)


def check_slice_positions(positions: np.ndarray, limits: IngestLimits) -> float:
    """Median slice gap after checking positions are distinct, evenly spaced and complete."""
    gaps = np.diff(positions)
    if (np.abs(gaps) < 1e-3).any():
        raise IngestError("two slices share one position (duplicate or overlapping series).", code="duplicate_slices")
    median = float(np.median(gaps))
    dev = np.abs(gaps - median) / median
    bad = np.flatnonzero(dev > limits.spacing_tolerance)
    if bad.size:
        i = int(bad[0])
        ratio = gaps[i] / median
        if ratio > 1.5 and abs(ratio - round(ratio)) < limits.spacing_tolerance * round(ratio):
            missing = int(sum(round(g / median) - 1 for g in gaps[bad] if g > median))
            raise IngestError(
                f"missing slices: about {missing} slice(s) absent (gap of {gaps[i]:.3g} mm after slice {i + 1} "
                f"where the spacing is {median:.3g} mm).", code="missing_slices", detail={"missing": missing})
        raise IngestError(
            f"inconsistent slice spacing: gaps from {gaps.min():.3g} to {gaps.max():.3g} mm "
            f"(median {median:.3g} mm); an evenly spaced series is required.", code="inconsistent_spacing")
    return median


def read_dicom_series(files: list[Path], limits: IngestLimits | None = None) -> CTVolume:
    """One CT series from many single-frame files (or one multi-frame file among them)."""
    limits = limits or IngestLimits()
    if len(files) > limits.max_files:
        raise IngestError(f"{len(files)} files; at most {limits.max_files} are accepted.", code="absurd_size",
                          status_code=413)
    headers = []
    for f in files:
        ds = _dcmread(f, header_only=True)
        if ds is not None and "Rows" in ds:  # image objects only (skips DICOMDIR, reports, XML)
            headers.append((f, ds))
    # scout / localizer images ride along in many exports; they are not part of the volume
    headers = [(f, ds) for f, ds in headers if "LOCALIZER" not in [str(v).upper() for v in ds.get("ImageType", [])]]
    if not headers:
        raise IngestError(f"no DICOM files found. Accepted: {ACCEPTED}.", code="unsupported_type", status_code=415)
    series = {str(getattr(ds, "SeriesInstanceUID", "")) for _, ds in headers}
    if len(series) > 1:
        raise IngestError(f"the upload holds {len(series)} series; send one CT series at a time.", code="multiple_series")
    for _, ds in headers:
        _check_modality(ds, "DICOM series")
    if len(headers) == 1:
        return read_dicom_file(headers[0][0], limits)
    first = headers[0][1]
    iop = _orientation(getattr(first, "ImageOrientationPatient", None), "DICOM series")
    rows, cols = _number(first, "Rows", 0, "DICOM series", int), _number(first, "Columns", 0, "DICOM series", int)
    _check_matrix(rows, cols, limits)
    pixel = _floats(getattr(first, "PixelSpacing", None), 2, "PixelSpacing", "DICOM series")
    for _, ds in headers[1:]:
        if _number(ds, "Rows", 0, "DICOM series", int) != rows or _number(ds, "Columns", 0, "DICOM series", int) != cols:
            raise IngestError("slices differ in size (rows x columns); one consistent series is required.",
                              code="inconsistent_geometry")
        other = _floats(getattr(ds, "ImageOrientationPatient", None), 6, "ImageOrientationPatient", "DICOM series")
        if np.abs(other - iop).max() > 1e-3:
            raise IngestError("slices differ in orientation; one consistent series is required.",
                              code="inconsistent_geometry")
        if np.abs(_floats(getattr(ds, "PixelSpacing", None), 2, "PixelSpacing", "DICOM series") - pixel).max() > 1e-4:
            raise IngestError("slices differ in pixel spacing; one consistent series is required.",
                              code="inconsistent_spacing")
    if len(headers) < limits.min_slices:
        raise IngestError(f"{len(headers)} slices; a CT volume needs at least {limits.min_slices}.", code="too_few_slices")
    _check_voxels((cols, rows, len(headers)), limits)
    normal = np.cross(iop[:3], iop[3:])
    positions = np.array([_floats(getattr(ds, "ImagePositionPatient", None), 3, "ImagePositionPatient",
                                  "DICOM series") @ normal for _, ds in headers])
    order = np.argsort(positions)
    gap = check_slice_positions(positions[order], limits)
    _check_spacing(pixel, gap, limits)
    corners = np.array([_floats(headers[i][1].ImagePositionPatient, 3, "ImagePositionPatient", "DICOM series")
                        for i in order])
    drift = corners - corners[0] - np.outer(positions[order] - positions[order][0], normal)
    if np.abs(drift).max() > 0.5 * min(pixel):  # slices shift sideways: gantry tilt or a sheared stack
        raise IngestError("slices are not stacked along their normal (gantry tilt or sheared series); "
                          "send an untilted, resampled series.", code="tilted_series")
    data = np.empty((cols, rows, len(headers)), dtype=np.float32)
    for k, i in enumerate(order):
        ds = _dcmread(headers[i][0], header_only=False)
        if ds is None:
            raise IngestError(f"slice {k + 1} could not be read.", code="corrupt_dicom")
        data[:, :, k] = _pixels_hu(ds, f"slice {k + 1}").T
    origin = _floats(headers[order[0]][1].ImagePositionPatient, 3, "ImagePositionPatient", "DICOM series")
    affine = _lps_affine(iop, pixel, normal * gap, origin)
    _check_hu(data, "DICOM series")
    return CTVolume(data=data, affine_ras=LPS_TO_RAS @ affine, source_format="dicom-series",
                    study_uid=str(getattr(first, "StudyInstanceUID", "") or "") or None,
                    series_uid=str(getattr(first, "SeriesInstanceUID", "") or "") or None,
                    meta={"slices": len(headers), "slice_thickness": _number(first, "SliceThickness", gap, "DICOM series")})


def _pixels_hu(ds, where: str) -> np.ndarray:
    try:
        arr = ds.pixel_array
    except Exception as exc:  # pydicom raises many kinds for unsupported or corrupt pixel data
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", "") or str(syntax or "unknown")
        raise IngestError(f"{where}: pixel data cannot be decoded ({type(exc).__name__}; transfer syntax {name}). "
                          "Uncompressed, RLE, JPEG, JPEG-LS and JPEG 2000 DICOM are read.",
                          code="corrupt_dicom") from None
    slope = _number(ds, "RescaleSlope", 1.0, where)
    intercept = _number(ds, "RescaleIntercept", 0.0, where)
    return arr.astype(np.float32) * slope + intercept


def _lps_affine(iop: np.ndarray, pixel: np.ndarray, step: np.ndarray, origin: np.ndarray) -> np.ndarray:
    """Index (column, row, slice) -> LPS mm. PixelSpacing is (between rows, between columns)."""
    affine = np.eye(4)
    affine[:3, 0] = iop[:3] * pixel[1]
    affine[:3, 1] = iop[3:] * pixel[0]
    affine[:3, 2] = step
    affine[:3, 3] = origin
    return affine


def read_dicom_file(path: Path, limits: IngestLimits | None = None) -> CTVolume:
    """A multi-frame CT file (enhanced CT or legacy multi-frame). A single-frame file is refused."""
    limits = limits or IngestLimits()
    ds = _dcmread(path, header_only=True)
    if ds is None:
        raise IngestError(f"the file is not readable DICOM. Accepted: {ACCEPTED}.", code="unsupported_type",
                          status_code=415)
    _check_modality(ds, "DICOM file")
    frames = _number(ds, "NumberOfFrames", 1, "DICOM file", int)
    if frames < 2:
        raise IngestError("a single CT slice is not a volume; send the whole series (zip or folder) or a multi-frame file.",
                          code="too_few_slices")
    if frames < limits.min_slices:
        raise IngestError(f"{frames} frames; a CT volume needs at least {limits.min_slices}.", code="too_few_slices")
    rows, cols = _number(ds, "Rows", 0, "DICOM file", int), _number(ds, "Columns", 0, "DICOM file", int)
    _check_matrix(rows, cols, limits)
    _check_voxels((cols, rows, frames), limits)
    shared = _first_item(ds.get("SharedFunctionalGroupsSequence"))
    per_frame = ds.get("PerFrameFunctionalGroupsSequence", None)

    def group(item, seq, attr):
        if item is None or seq not in item:
            return None
        inner = _first_item(item[seq].value)
        return getattr(inner, attr, None) if inner is not None else None

    iop = group(shared, "PlaneOrientationSequence", "ImageOrientationPatient") or getattr(ds, "ImageOrientationPatient", None)
    pixel = group(shared, "PixelMeasuresSequence", "PixelSpacing") or getattr(ds, "PixelSpacing", None)
    iop = _orientation(iop, "DICOM file")
    pixel = _floats(pixel, 2, "PixelSpacing", "DICOM file")
    normal = np.cross(iop[:3], iop[3:])
    if per_frame is not None and len(per_frame) == frames:
        pos = [group(f, "PlanePositionSequence", "ImagePositionPatient") for f in per_frame]
        if any(p is None for p in pos):
            raise IngestError("DICOM file: a frame lacks its position.", code="bad_geometry")
        positions3 = np.array([_floats(p, 3, "ImagePositionPatient", "DICOM file") for p in pos])
    else:
        # legacy multi-frame: first position plus an even step along the normal
        origin = _floats(getattr(ds, "ImagePositionPatient", None), 3, "ImagePositionPatient", "DICOM file")
        step = _number(ds, "SpacingBetweenSlices", 0.0, "DICOM file") or _number(ds, "SliceThickness", 0.0, "DICOM file")
        if step <= 0:
            raise IngestError("DICOM file: no per-frame positions and no slice spacing.", code="bad_geometry")
        positions3 = origin[None] + np.arange(frames)[:, None] * step * normal[None]
    positions = positions3 @ normal
    order = np.argsort(positions)
    gap = check_slice_positions(positions[order], limits)
    _check_spacing(pixel, gap, limits)
    full = _dcmread(path, header_only=False)
    try:
        arr = full.pixel_array  # (frames, rows, cols)
    except Exception as exc:
        raise IngestError(f"DICOM file: pixel data cannot be decoded ({type(exc).__name__}).", code="corrupt_dicom") from None
    slope, intercept = _frame_rescale(full, shared, per_frame, frames)
    hu = arr.astype(np.float32) * slope[:, None, None] + intercept[:, None, None]
    data = np.ascontiguousarray(np.transpose(hu[order], (2, 1, 0)))
    affine = _lps_affine(iop, pixel, normal * gap, positions3[order[0]])
    _check_hu(data, "DICOM file")
    return CTVolume(data=data, affine_ras=LPS_TO_RAS @ affine, source_format="dicom-multiframe",
                    study_uid=str(getattr(ds, "StudyInstanceUID", "") or "") or None,
                    series_uid=str(getattr(ds, "SeriesInstanceUID", "") or "") or None, meta={"slices": frames})


def _frame_rescale(ds, shared, per_frame, frames: int) -> tuple[np.ndarray, np.ndarray]:
    def from_item(item):
        inner = _first_item(item["PixelValueTransformationSequence"].value) \
            if item is not None and "PixelValueTransformationSequence" in item else None
        if inner is not None:
            return _number(inner, "RescaleSlope", 1.0, "DICOM file"), _number(inner, "RescaleIntercept", 0.0, "DICOM file")
        return None

    default = from_item(shared) or (_number(ds, "RescaleSlope", 1.0, "DICOM file"), _number(ds, "RescaleIntercept", 0.0, "DICOM file"))
    pairs = [(from_item(f) or default) for f in per_frame] if per_frame is not None and len(per_frame) == frames \
        else [default] * frames
    return np.array([p[0] for p in pairs], np.float32), np.array([p[1] for p in pairs], np.float32)


# -------------------------------------------------------------------------------------------- NIfTI

def read_nifti(path: Path, limits: IngestLimits | None = None) -> CTVolume:
    import nibabel as nib

    limits = limits or IngestLimits()
    try:
        image = nib.load(str(path))
        shape = tuple(int(s) for s in image.shape)
    except Exception as exc:  # nibabel raises ImageFileError, OSError, zlib / EOF errors, ValueError ...
        raise IngestError(f"the NIfTI file cannot be read ({type(exc).__name__}).", code="corrupt_nifti") from None
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise IngestError(f"NIfTI has shape {shape}; a 3-D CT volume is required.", code="bad_geometry")
    _check_nifti_voxel_size(path, image)
    if shape[2] < limits.min_slices:
        raise IngestError(f"{shape[2]} slices; a CT volume needs at least {limits.min_slices}.", code="too_few_slices")
    _check_matrix(shape[1], shape[0], limits)
    _check_voxels(shape, limits)
    _check_nifti_ratio(path, int(np.prod(shape)) * image.get_data_dtype().itemsize, limits)
    affine = np.asarray(image.affine, dtype=float)
    zooms = np.linalg.norm(affine[:3, :3], axis=0)
    if not np.isfinite(affine).all() or (zooms <= 0).any():
        raise IngestError("NIfTI affine is missing or degenerate.", code="bad_geometry")
    _check_spacing(np.sort(zooms[:2]), float(zooms[2]), limits)
    try:
        data = np.asarray(image.dataobj, dtype=np.float32).reshape(shape)
    except Exception as exc:
        raise IngestError(f"the NIfTI voxel data cannot be read ({type(exc).__name__}).", code="corrupt_nifti") from None
    _check_hu(data, "NIfTI")
    return CTVolume(data=data, affine_ras=affine, source_format="nifti", meta={"slices": shape[2]})


def _check_nifti_voxel_size(path: Path, image) -> None:
    """Without an sform the affine is built from pixdim, and nibabel silently turns a zero pixdim into
    1 mm: a scan of unknown voxel size would be read at a made-up scale. Its header is re-read here
    unfixed to see what the file itself says."""
    from nibabel.openers import ImageOpener

    if int(image.header.get("sform_code", 0)) > 0:
        return
    with ImageOpener(str(path)) as f:
        raw = type(image.header).from_fileobj(f, check=False)
    pixdim = np.asarray(raw["pixdim"][1:4], dtype=float)
    if not (np.isfinite(pixdim) & (pixdim != 0)).all():
        raise IngestError(f"NIfTI voxel size (pixdim) is {pixdim.tolist()} and there is no sform; the voxel size "
                          "in mm is required.", code="bad_geometry")


def _check_nifti_ratio(path: Path, expanded: int, limits: IngestLimits) -> None:
    """A gzip NIfTI must not inflate beyond ``max_compression_ratio``: reading a tiny file that declares
    a huge volume of one value would otherwise cost minutes and gigabytes before any check could refuse it."""
    with open(path, "rb") as f:
        if f.read(2) != b"\x1f\x8b":
            return
    stored = max(path.stat().st_size, 1)
    if expanded / stored > limits.max_compression_ratio:
        raise IngestError(f"the NIfTI file expands {expanded / stored:.0f}:1 ({stored} bytes to {expanded}); at most "
                          f"{limits.max_compression_ratio:.0f}:1 is accepted (decompression-bomb guard).",
                          code="decompression_bomb", status_code=413)


def _check_hu(data: np.ndarray, where: str) -> None:
    """CT in HU has air near -1000 and little beyond bone; other modalities or raw counts do not."""
    if not np.isfinite(data).all():
        raise IngestError(f"{where}: voxels hold NaN or infinite values.", code="not_ct")
    sample = data[::4, ::4, ::2] if data.size > 1_000_000 else data
    lo, hi = np.percentile(sample, [1, 99.9])
    if lo > -500 or lo < -3100 or hi > 5000:
        raise IngestError(
            f"{where}: values from {lo:.0f} to {hi:.0f} do not look like CT in Hounsfield units "
            "(air about -1000, soft tissue 0-100, bone up to ~3000); only CT is accepted.", code="not_ct")
    if hi < -500:  # a chest's wall, vessels and mediastinum are far more than 0.1 % of any chest CT
        raise IngestError(f"{where}: no body in the volume (99.9 % of voxels read as air, below {hi:.0f} HU); "
                          "send a chest CT.", code="not_ct")
