"""Loaders for the medical datasets in their original layouts.

- IU X-ray reports: ``indiana_reports.csv`` (uid, MeSH, Problems, image, indication, comparison,
  findings, impression) as published by Open-i / Kaggle.
- Rendered LIDC studies: the folder written by ``triptych data medical render`` (``labels.csv`` plus
  one volume and one report per study). CT ingestion itself lives in ``ingest.py``.

Text files are read as ``utf-8-sig``: a CSV saved by Excel or a Windows tool starts with a byte-order
mark, which plain ``utf-8`` would glue onto the first column's name (``\ufeffuid``).
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

from apps.medical.reports import report_label, report_text, uid_split

IU_FILE = "indiana_reports.csv"
IU_COLUMNS = ("uid", "MeSH", "findings", "impression")


@dataclass(frozen=True)
class IUReport:
    uid: str
    text: str  # findings + impression only: the classifier never sees MeSH/Problems/indication
    label: int  # 1 when MeSH names a nodule, mass or neoplasm


def resolve_iu_file(path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir():
        path = path / IU_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no IU reports file at {path} (expected {IU_FILE})")
    return path


def load_iu_reports(path: str | Path) -> list[IUReport]:
    """Read ``indiana_reports.csv`` (a file or the folder holding it)."""
    path = resolve_iu_file(path)
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in IU_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path} lacks columns {missing}; expected the IU layout {IU_COLUMNS}")
        return [
            IUReport(uid=row["uid"], text=report_text(row["findings"], row["impression"]), label=report_label(row["MeSH"]))
            for row in reader
        ]


# -- rendered LIDC studies ---------------------------------------------------------------------

_PATIENT = re.compile(r"LIDC-IDRI-(\d{4})")


def patient_number(patient_id: str) -> int:
    match = _PATIENT.search(patient_id)
    if not match:
        raise ValueError(f"not an LIDC-IDRI patient id: {patient_id!r}")
    return int(match.group(1))


def parse_patient_range(spec: str) -> tuple[int, int]:
    """``"LIDC-IDRI-0001:LIDC-IDRI-0800"`` or ``"1:800"`` -> (1, 800)."""
    expected = f"a patient range looks like LIDC-IDRI-0001:LIDC-IDRI-0800 (or 1:800), not {spec!r}"
    lo, _, hi = spec.partition(":")

    def to_int(s: str) -> int:
        s = s.strip()
        if "LIDC" in s:
            return patient_number(s)
        if not s.isdigit():
            raise ValueError(expected)
        return int(s)

    first, last = to_int(lo), to_int(hi or lo)
    if first > last:
        raise ValueError(f"{expected}: the first patient comes after the last")
    return first, last


@dataclass(frozen=True)
class RenderedStudy:
    study_id: str
    patient_id: str
    label: int  # 1 malignant, 0 benign (readers' median malignancy; 3 left out by the renderer)
    volume_path: Path  # NIfTI file or DICOM series folder
    report: str  # EMR text: clinical context + findings sentence


LABELS_FILE = "labels.csv"


def _read_report(root: Path, row: dict[str, str]) -> str:
    for key in ("report_path", "report_file"):
        if row.get(key):
            return (root / row[key]).read_text(encoding="utf-8-sig")
    value = row.get("report", "") or ""
    candidate = root / value
    if value and len(value) < 260 and "\n" not in value and candidate.is_file():
        return candidate.read_text(encoding="utf-8-sig")
    return value


def load_rendered(root: str | Path, patients: tuple[int, int] | None = None) -> list[RenderedStudy]:
    """Studies listed in ``root/labels.csv`` (the renderer's layout), optionally for a patient range."""
    root = Path(root)
    labels = root / LABELS_FILE
    if not labels.is_file():
        raise FileNotFoundError(f"{root} has no {LABELS_FILE}; expected a folder written by `triptych data medical render`")
    studies = []
    with labels.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        required = {"study_id", "patient_id", "label", "path"}
        missing = required - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{labels} lacks columns {sorted(missing)}")
        for row in reader:
            label = row["label"].strip().lower()
            if label in ("", "nan", "excluded", "indeterminate", "3"):
                continue
            label_int = {"malignant": 1, "benign": 0, "1": 1, "0": 0}.get(label)
            if label_int is None:
                raise ValueError(f"{labels}: unknown label {row['label']!r} for study {row['study_id']}")
            if patients is not None:
                number = patient_number(row["patient_id"])
                if not patients[0] <= number <= patients[1]:
                    continue
            studies.append(RenderedStudy(row["study_id"], row["patient_id"], label_int, root / row["path"], _read_report(root, row)))
    return studies


def patient_split(patient_id: str, val_fraction: float = 0.2, seed: int = 0) -> str:
    """Deterministic train/val assignment by patient (every study of a patient on one side)."""
    return uid_split(patient_id, val_fraction, seed)


def rendered_nodule_centres(root: str | Path, with_labels: bool = False
                            ) -> dict[str, tuple[tuple[float, float, float], list[tuple[float, ...]]]]:
    """Per study: the voxel spacing (z, y, x) mm and its rendered nodules as ``(z, y, x, diameter_mm)``
    (``+ (malignant 0/1,)`` with ``with_labels``) voxel coordinates in the layout of
    ``candidates.load_hu``, for training the candidate ranker and the nodule detector. NIfTI studies
    only (their header gives the grid); DICOM-series studies are left out.

    ``nodules.csv`` holds x/y in mm from the scan's native pixel (0, 0) and z in patient mm; the
    renderer's grid coarsens native pixels by a whole factor ``f`` and writes the NIfTI origin at
    ``x0 = ((f - 1) / 2 - 255.5) * native_pixel``, which gives ``f`` back from the header."""
    import nibabel as nib

    root = Path(root)
    path = root / "nodules.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the candidate ranker trains on a rendered set's nodules.csv")
    by_study: dict[str, list[dict[str, str]]] = {}
    with path.open(newline="", encoding="utf-8-sig") as f:
        for row in csv.DictReader(f):
            by_study.setdefault(row["study_id"], []).append(row)
    out: dict[str, tuple[tuple[float, float, float], list[tuple[float, ...]]]] = {}
    for study in load_rendered(root):
        if study.study_id not in by_study or not str(study.volume_path).endswith((".nii", ".nii.gz")):
            continue
        image = nib.load(str(study.volume_path))
        zooms = [float(z) for z in image.header.get_zooms()[:3]]
        spacing = (zooms[2], zooms[1], zooms[0])
        rows = by_study[study.study_id]
        if "z_vox" in rows[0]:  # positions already in the load_hu layout (generated sets)
            out[study.study_id] = (spacing, [(float(r["z_vox"]), float(r["y_vox"]), float(r["x_vox"]), float(r["diameter_mm"]))
                                             + ((float(r["label"]),) if with_labels else ()) for r in rows])
            continue
        affine, nx = image.affine, int(image.shape[0])
        dx, dy, dz = -float(affine[0, 0]), -float(affine[1, 1]), float(affine[2, 2])
        x0, z0 = -float(affine[0, 3]), float(affine[2, 3])
        f = max(1, round(-256.0 / (x0 / dx - 0.5)))
        offset = (f - 1) / (2.0 * f)  # native pixel centre -> coarse voxel index
        out[study.study_id] = ((dz, dy, dx), [
            ((float(r["z_mm"]) - z0) / dz, float(r["y_mm"]) / dy - offset, nx - 1 - (float(r["x_mm"]) / dx - offset),
             float(r["diameter_mm"])) + ((float(r["label"]),) if with_labels else ())
            for r in rows
        ])
    return out
