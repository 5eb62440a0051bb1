"""Classical, deterministic nodule-candidate stage at native resolution (no learning, no resizing of
the whole lung): the CT branch sees nodule-scale evidence instead of a 3.5-5 mm whole-lung grid.

Steps on the HU volume in model layout (D, H, W) = (feet->head, front->back, right->left):
1. lung mask: air inside the body (``transforms.lung_mask``), closed and hole-filled per slice so
   nodules inside the lung and against the pleura belong to it;
2. dense tissue inside the lung: lightly smoothed HU above ``dense_hu`` (-650 keeps ground-glass
   nodules, which the renderer and real scans put at -720..-520 HU, while noisy lung at -850 stays out);
3. Euclidean distance transform of the dense mask in mm: its local maxima are the centres of thick
   structures and their value is the local radius. Vessels are thin tubes (small radius) whatever
   they touch, so a nodule keeps its own maximum even when a vessel runs into it;
4. top-k maxima by radius with non-maximum suppression -> fixed-size crops (isotropic mm grid,
   lung-windowed) + geometry features of the connected dense component around each centre.

The same ``extract`` runs in training, evaluation and serving.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

GEOMETRY_FEATURES = ("radius_mm", "eq_diameter_mm", "log_volume_mm3", "mean_hu", "max_hu", "compactness",
                     "extent", "border_fraction", "shell_density", "rank")


@dataclass(frozen=True)
class CandidateConfig:
    k: int = 8  # candidates kept per study
    crop: int = 32  # crop edge in voxels
    crop_mm: float = 2.0  # crop voxel size (isotropic)
    dense_hu: float = -650.0
    lung_hu: float = -400.0
    smooth_sigma_vox: float = 0.7
    close_mm: float = 16.0  # closing radius of the lung mask (pulls juxtapleural nodules inside)
    min_radius_mm: float = 1.5  # smaller maxima are noise or vessel crumbs
    max_hole_mm2: float = 1500.0  # per-slice holes up to ~44 mm across are filled into the lung
    pool: int = 40  # maxima (largest radius first, after suppression) scored for blobness
    hu_min: float = -1000.0
    hu_max: float = 400.0


@dataclass
class Candidates:
    crops: np.ndarray  # (k, S, S, S) float32 0..1 (lung window); zeros where absent
    geometry: np.ndarray  # (k, len(GEOMETRY_FEATURES)) float32; zeros where absent
    mask: np.ndarray  # (k,) bool, True = a real candidate
    centres_vox: np.ndarray  # (k, 3) int (z, y, x) in the input volume; -1 where absent
    lung_ml: float


def load_hu(path: str | Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    """NIfTI / DICOM folder / DICOM file / LUNA16 .mhd -> (HU (D, H, W) float32, spacing (z, y, x) mm).

    Orientation to RAS then the model layout of ``apps.medical.transforms`` (same axes as the model
    volumes), at the scan's own spacing."""
    from apps.medical.transforms import _quiet_monai

    _quiet_monai()
    if str(path).lower().endswith(".mhd"):
        from apps.medical.luna import read_mhd

        return hu_from_ctvolume(read_mhd(path))
    from monai.transforms import EnsureChannelFirst, LoadImage

    img = EnsureChannelFirst()(LoadImage(image_only=True, ensure_channel_first=False)(str(path)))
    return _to_layout(img)


def hu_from_ctvolume(volume) -> tuple[np.ndarray, tuple[float, float, float]]:
    """An ingested ``apps.medical.ingest.CTVolume`` -> (HU (D, H, W), spacing (z, y, x))."""
    return _to_layout(volume.to_metatensor())


def _to_layout(img) -> tuple[np.ndarray, tuple[float, float, float]]:
    from monai.transforms import Orientation

    img = Orientation(axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S")))(img)
    affine = np.asarray(img.affine, dtype=float)[:3, :3]
    sx, sy, sz = (float(np.linalg.norm(affine[:, i])) for i in range(3))
    arr = np.asarray(img[0], dtype=np.float32)
    hu = np.ascontiguousarray(np.transpose(arr, (2, 1, 0))[:, ::-1, :])
    return hu, (sz, sy, sx)


def lung_region(hu: np.ndarray, spacing: tuple[float, float, float], config: CandidateConfig) -> np.ndarray:
    from scipy import ndimage

    from apps.medical.transforms import lung_mask

    air = lung_mask(np.transpose(hu, (2, 1, 0)), config.lung_hu).transpose(2, 1, 0)  # helper wants (X, Y, Z)
    radius = [max(1, round(config.close_mm / (2.0 * s))) for s in spacing]
    zz, yy, xx = np.ogrid[-radius[0]:radius[0] + 1, -radius[1]:radius[1] + 1, -radius[2]:radius[2] + 1]
    ball = (zz / radius[0]) ** 2 + (yy / radius[1]) ** 2 + (xx / radius[2]) ** 2 <= 1.0
    pad = max(radius)
    # each lung on its own: closed together, the mediastinum between them would become a filled hole
    if not air.any():
        return air
    mid = round(float(np.argwhere(air.any(axis=(0, 1)))[:, 0].mean()))
    out = np.zeros_like(air)
    for half in (slice(0, mid), slice(mid, air.shape[2])):
        part = air[:, :, half]
        if not part.any():
            continue
        # closing at half resolution: a ball wide enough for a 30 mm juxtapleural nodule's bite out of
        # the lung costs a fraction of a second there
        coarse = part[::2, ::2, ::2]
        closed = ndimage.binary_closing(np.pad(coarse, pad), structure=ball)[pad:-pad, pad:-pad, pad:-pad]
        up = closed.repeat(2, 0).repeat(2, 1).repeat(2, 2)[: part.shape[0], : part.shape[1], : part.shape[2]]
        closed = part | up
        for z, sl in enumerate(closed):
            # holes = background components not touching the slice border (binary_fill_holes, faster)
            labels, n = ndimage.label(~sl)
            if n:
                border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
                area = np.bincount(labels.ravel(), minlength=n + 1).astype(float) * spacing[1] * spacing[2]
                # only nodule-sized holes: a large one is the heart or a diaphragm dome seen through the lung
                fill = area <= config.max_hole_mm2
                fill[0] = False
                fill[border] = False
                sl = sl | fill[labels]
            out[z, :, half] = sl
    return out


def extract(hu: np.ndarray, spacing: tuple[float, float, float], config: CandidateConfig | None = None) -> Candidates:
    """HU volume (D, H, W) + spacing (z, y, x) mm -> top-k candidates with crops and geometry."""
    from scipy import ndimage

    config = config or CandidateConfig()
    if hu.ndim != 3 or min(hu.shape) < 4:
        raise ValueError(f"expected a 3-D CT volume, got shape {hu.shape}")
    hu = hu.astype(np.float32, copy=False)
    spacing = tuple(float(s) for s in spacing)
    lung = lung_region(hu, spacing, config)
    smooth = ndimage.gaussian_filter(hu, config.smooth_sigma_vox)
    dense = (smooth > config.dense_hu) & lung
    k, feats = config.k, len(GEOMETRY_FEATURES)
    out = Candidates(np.zeros((k, config.crop, config.crop, config.crop), np.float32), np.zeros((k, feats), np.float32),
                     np.zeros(k, bool), -np.ones((k, 3), np.int64), float(lung.sum() * np.prod(spacing) / 1000.0))
    if not dense.any():
        return out
    # the transform only on the dense voxels' box (+1 background voxel): same values, less volume
    nz = np.argwhere(dense)
    lo, hi = np.maximum(nz.min(0) - 1, 0), nz.max(0) + 2
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    dist = np.zeros(dense.shape, np.float32)
    dist[box] = ndimage.distance_transform_edt(np.pad(dense[box], 1), sampling=spacing)[1:-1, 1:-1, 1:-1]
    peaks = (dist == ndimage.maximum_filter(dist, size=3)) & (dist >= config.min_radius_mm)
    idx = np.argwhere(peaks)
    if len(idx) == 0:
        return out
    radii = dist[tuple(idx.T)]
    order = np.argsort(-radii, kind="stable")
    chosen: list[tuple[np.ndarray, float]] = []
    sp = np.asarray(spacing)
    for i in order:
        p, r = idx[i], float(radii[i])
        # suppress maxima inside (or just next to) an already chosen structure
        if all(np.linalg.norm((p - q) * sp) > max(r + rq, 2.0 * rq) for q, rq in chosen):
            chosen.append((p, r))
        if len(chosen) == config.pool:
            break
    # blobness: a nodule is a thick, isolated, compact structure; a vessel of the same radius
    # continues through the shell around it and out of the box
    scored = []
    for p, r in chosen:
        g = geometry(hu, dense, spacing, p, r, 0, config)
        score = r * max(0.05, 1.0 - 3.0 * g[8]) * max(0.2, 1.0 - g[7]) / max(1.0, g[6] / 1.5)
        scored.append((score, p, r, g))
    # half the slots for the thickest structures (large nodules often touch vessels or pleura and
    # score as less isolated), half for the most blob-like of the rest
    by_radius = scored[: (k + 1) // 2]
    rest = sorted(scored[len(by_radius):], key=lambda t: -t[0])
    for slot, (_, p, r, g) in enumerate((by_radius + rest)[:k]):
        g[9] = slot
        out.crops[slot] = crop(hu, spacing, p, config)
        out.geometry[slot] = g
        out.mask[slot] = True
        out.centres_vox[slot] = p
    return out


def crop(hu: np.ndarray, spacing, centre, config: CandidateConfig) -> np.ndarray:
    """Isotropic ``crop`` ^3 grid of ``crop_mm`` voxels centred on ``centre``, lung-windowed to 0..1."""
    from scipy import ndimage

    offs = (np.arange(config.crop, dtype=np.float32) - (config.crop - 1) / 2.0) * config.crop_mm
    axes = [centre[a] + offs / spacing[a] for a in range(3)]
    grid = np.meshgrid(*axes, indexing="ij")
    values = ndimage.map_coordinates(hu, grid, order=1, mode="constant", cval=config.hu_min)
    return np.clip((values - config.hu_min) / (config.hu_max - config.hu_min), 0.0, 1.0).astype(np.float32)


def geometry(hu: np.ndarray, dense: np.ndarray, spacing, centre, radius: float, rank: int,
             config: CandidateConfig) -> np.ndarray:
    """Features of the dense component around ``centre`` within a box of 3x its radius (>= 12 mm)."""
    from scipy import ndimage

    half = [max(2, int(np.ceil(max(3.0 * radius, 12.0) / s))) for s in spacing]
    lo = [max(0, int(c) - h) for c, h in zip(centre, half)]
    hi = [min(n, int(c) + h + 1) for c, h, n in zip(centre, half, dense.shape)]
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    local = dense[box]
    labels, _ = ndimage.label(local)
    comp = labels == labels[tuple(int(c) - a for c, a in zip(centre, lo))]
    voxel_ml = float(np.prod(spacing))
    n = int(comp.sum())
    volume = n * voxel_ml
    eq_d = (6.0 * volume / np.pi) ** (1.0 / 3.0)
    pts = np.argwhere(comp)
    ext = (pts.max(0) - pts.min(0) + 1) * np.asarray(spacing)
    compactness = volume / max(float(np.prod(ext)), 1e-6)
    extent = float(ext.max() / max(eq_d, 1e-6))
    touches = np.zeros_like(comp)
    for a in range(3):
        sl = [slice(None)] * 3
        sl[a] = 0
        touches[tuple(sl)] = True
        sl[a] = -1
        touches[tuple(sl)] = True
    border = float((comp & touches).sum()) / max(n, 1)
    vals = hu[box][comp]
    # dense fraction of a shell at 1.5-2.5 radii: low for an isolated nodule, higher for a vessel crossing
    zz, yy, xx = np.meshgrid(*[(np.arange(a, b) - c) * s for a, b, c, s in zip(lo, hi, centre, spacing)], indexing="ij")
    rr = np.sqrt(zz ** 2 + yy ** 2 + xx ** 2)
    shell = (rr >= 1.5 * radius) & (rr <= 2.5 * radius + 1.0)
    shell_density = float(local[shell].mean()) if shell.any() else 0.0
    return np.array([radius, eq_d, np.log1p(volume), (vals.mean() + 1000.0) / 1000.0, (vals.max() + 1000.0) / 1000.0,
                     compactness, extent, border, shell_density, rank], dtype=np.float32)
