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

from apps.medical.reports import report_label, report_text

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
    to_int = lambda s: patient_number(s) if "LIDC" in s else int(s)  # noqa: E731
    return to_int(lo), to_int(hi or lo)
