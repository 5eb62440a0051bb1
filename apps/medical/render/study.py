"""Render one LIDC scan as a labelled chest CT study with its paired report."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from apps.medical.render import emr
from apps.medical.render.lidc_db import Nodule, Scan, scan_nodules
from apps.medical.render.phantom import (
    Anatomy,
    Grid,
    finish,
    inside_lung,
    make_grid,
    nodule_intensity,
    paint_nodule,
    plan_anatomy,
    render_anatomy,
)

MALIGNANT_MIN, BENIGN_MAX = 4.0, 2.0  # median reader malignancy; in between (2.5 .. 3.5) is left out


@dataclass(frozen=True)
class RenderConfig:
    target_xy_mm: float = 2.0  # output pixel spacing ~ a whole multiple of the scan's own
    target_z_mm: float = 2.5  # output slice spacing ~ a whole multiple of the scan's own
    noise_hu: tuple[float, float] = (10.0, 22.0)  # scanner noise std range at 2.5 mm slices
    dicom_share: float = 0.1  # share of studies written as a DICOM series instead of NIfTI
    emphysema_strength: float = 0.06  # share of upper-lung voxels made lucent when emphysema is present
    # The released renders (seed 0 under datasets/rendered) keep the readers' outline pixels inside the
    # nodule; pylidc leaves them out, which matches the LIDC list3.2 volumes (equivalent diameter
    # ~7-23 % smaller, most for small nodules). False follows pylidc.
    contour_points_inside: bool = True

    @classmethod
    def from_name(cls, name: str) -> RenderConfig:
        presets = {
            "default": cls(),
            "fine": cls(target_xy_mm=1.5, target_z_mm=2.0),
            "pylidc": cls(contour_points_inside=False),  # nodule extent exactly as pylidc's masks
            # tests: ~64 px in-plane and 6 mm slices, a few hundredths of a second per study
            "tiny": cls(target_xy_mm=5.5, target_z_mm=6.0),
        }
        if name not in presets:
            raise KeyError(f"unknown render preset {name!r}; choose from {sorted(presets)}")
        return presets[name]


def nodule_label(median: float) -> int | None:
    if median >= MALIGNANT_MIN:
        return 1
    if median <= BENIGN_MAX:
        return 0
    return None


@dataclass
class RenderedStudy:
    study_id: str
    patient_id: str
    scan_id: int
    label: int
    volume: np.ndarray  # (z, y, x) int16 HU, z ascending = towards the head
    spacing: tuple[float, float, float]  # (dz, dy, dx) mm
    origin_lps: tuple[float, float, float]  # LPS mm of voxel (0, 0, 0)
    clinical: emr.Clinical
    report: str
    contrast: bool
    slice_thickness: float
    nodules: list[dict] = field(default_factory=list)
    excluded_nodules: int = 0


def study_rng(seed: int, scan_id: int, stream: int = 0) -> np.random.Generator:
    """Independent of rendering order, so any subset or any worker count gives the same studies."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(scan_id), int(stream)]))


def study_label(nodules: list[Nodule]) -> tuple[int | None, list[Nodule], int]:
    """(label, nodules kept for rendering, nodules left out as indeterminate).

    A study is malignant when any nodule's median rating is >= 4, benign when it has at least one
    nodule rated <= 2 and none >= 4. Indeterminate nodules (median 2.5-3.5) are not rendered."""
    kept = [n for n in nodules if nodule_label(n.rating("malignancy")) is not None]
    if not kept:
        return None, [], len(nodules)
    label = int(any(nodule_label(n.rating("malignancy")) == 1 for n in kept))
    return label, kept, len(nodules) - len(kept)


def _relocate(an: Anatomy, xyz: np.ndarray) -> np.ndarray:
    """Nearest point towards the lung centre (same slice) that lies inside a lung, or xyz itself."""
    if inside_lung(an, *xyz, margin=0.95):
        return xyz
    lung = min(an.lungs, key=lambda L: abs(xyz[0] - L.cx))
    target = np.array([lung.cx, lung.cy, xyz[2]])
    direction = target - xyz
    dist = float(np.linalg.norm(direction))
    for step in np.arange(2.0, dist, 2.0):
        p = xyz + direction / dist * step
        if inside_lung(an, *p, margin=0.9):
            return p
    return target


def render_study(scan: Scan, seed: int, config: RenderConfig | None = None,
                 nodules: list[Nodule] | None = None) -> RenderedStudy | None:
    """Render one scan; None when it has no nodule with a usable (non-indeterminate) rating."""
    config = config or RenderConfig()
    nodules = scan_nodules(scan, config.contour_points_inside) if nodules is None else nodules
    label, kept, n_excluded = study_label(nodules)
    if label is None:
        return None
    rng = study_rng(seed, scan.id)
    clinical = emr.sample_clinical(study_rng(seed, scan.id, 1), label)
    grid = make_grid(scan, config.target_xy_mm, config.target_z_mm)
    ps = scan.pixel_spacing
    centroids = [n.centroid_mm(ps) for n in kept]
    an = plan_anatomy(rng, grid, centroids, contrast=scan.contrast_used,
                      emphysema=config.emphysema_strength if clinical.emphysema else 0.0)
    vol, lung = render_anatomy(rng, grid, an)
    meta = []
    for n, xyz in zip(kept, centroids):
        new = _relocate(an, xyz)
        shift = new - xyz
        dr, dc = int(round(shift[1] / ps)), int(round(shift[0] / ps))
        hu = nodule_intensity(rng, n, ps, scan.slice_spacing)
        paint_nodule(vol, grid, scan, n, hu, shift_px=(dr, dc, 0.0))
        L = min(an.lungs, key=lambda L: abs(new[0] - L.cx))
        t = float(np.clip(an.t_of(new[2]), 0, 1))
        y_frac = float(np.clip((new[1] - (L.cy - L.b)) / (2 * L.b), 0, 1))
        meta.append(dict(
            n_readers=n.n_readers, malignancy_median=n.rating("malignancy"),
            malignancy_ratings=";".join(map(str, n.ratings_of("malignancy"))),
            texture_median=n.rating("texture"), calcification=";".join(map(str, n.ratings_of("calcification"))),
            spiculation_median=n.rating("spiculation"), diameter_mm=round(n.diameter_mm(ps), 1),
            volume_mm3=round(n.volume_mm3(ps, scan.slice_spacing), 1),
            x_mm=round(float(new[0]), 1), y_mm=round(float(new[1]), 1), z_mm=round(float(new[2]), 1),
            shift_mm=round(float(np.hypot(dr * ps, dc * ps)), 1), lobe=emr.lobe_of(L.side, t, y_frac),
            label=nodule_label(n.rating("malignancy")),
        ))
    noise = rng.uniform(*config.noise_hu) * np.sqrt(2.5 / grid.dz)
    volume = finish(rng, vol, grid, float(noise))
    # the index nodule leads the report: the most suspicious-rated for malignant studies would leak
    # the label through ordering, so lead with the largest nodule whatever the label
    order = sorted(range(len(meta)), key=lambda i: -meta[i]["diameter_mm"])
    meta = [meta[i] for i in order]
    report = emr.report_text(study_rng(seed, scan.id, 2), [m["lobe"] for m in meta], clinical, scan.contrast_used)
    x0 = float(grid.x_centres()[0] - (NATIVE_HALF := 255.5) * ps)
    y0 = float(grid.y_centres()[0] - NATIVE_HALF * ps)
    return RenderedStudy(
        study_id=f"{scan.patient_id}_s{scan.id:04d}", patient_id=scan.patient_id, scan_id=scan.id, label=label,
        volume=volume, spacing=(grid.dz, grid.dx, grid.dx), origin_lps=(x0, y0, float(grid.z_centres()[0])),
        clinical=clinical, report=report, contrast=scan.contrast_used,
        slice_thickness=max(scan.slice_thickness, grid.dz), nodules=meta, excluded_nodules=n_excluded,
    )


__all__ = ["Grid", "RenderConfig", "RenderedStudy", "nodule_label", "render_study", "study_label"]
