"""Loaders for the medical datasets in their original layouts.

- IU X-ray reports: ``indiana_reports.csv`` (uid, MeSH, Problems, image, indication, comparison,
  findings, impression) as published by Open-i / Kaggle.
- Rendered LIDC studies: the folder written by ``triptych data medical render`` (``labels.csv`` plus
  one volume and one report per study). CT ingestion itself lives in ``ingest.py``.
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
    with path.open(newline="", encoding="utf-8") as handle:
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
    lo, _, hi = spec.partition(":")
    to_int = lambda s: patient_number(s) if "LIDC" in s else int(s)
    return to_int(lo), to_int(hi or lo)


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
            return (root / row[key]).read_text(encoding="utf-8")
    value = row.get("report", "") or ""
    candidate = root / value
    if value and len(value) < 260 and "\n" not in value and candidate.is_file():
        return candidate.read_text(encoding="utf-8")
    return value


def load_rendered(root: str | Path, patients: tuple[int, int] | None = None) -> list[RenderedStudy]:
    """Studies listed in ``root/labels.csv`` (the renderer's layout), optionally for a patient range."""
    root = Path(root)
    labels = root / LABELS_FILE
    if not labels.is_file():
        raise FileNotFoundError(f"{root} has no {LABELS_FILE}; expected a folder written by `triptych data medical render`")
    studies = []
    with labels.open(newline="", encoding="utf-8") as handle:
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
