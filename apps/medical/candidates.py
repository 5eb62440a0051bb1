"""Nodule candidates at native resolution: a classical proposal stage, then a learned ranker.

The CT branch must see nodule-scale evidence (a 5-30 mm nodule is one to three voxels of a resized
whole-lung volume), so the scan is searched at its own spacing:

1. lung mask: air inside the body (``transforms.lung_mask``), closed and hole-filled per slice so
   nodules inside the lung and against the pleura belong to it;
2. proposals from two detectors whose failures differ:
   - a multi-scale Hessian "dot" filter (Li, Sone & Doi, Med Phys 2003): at each scale the
     eigenvalues of the scale-normalised Hessian, |l3|^2/|l1| where all three are negative. It is
     large for round structures and near zero for tubes (vessels have one flat direction). HU go
     through a soft compression first (lung 0, ground glass ~0.6, solid 1) so a -600 HU
     ground-glass nodule is not drowned by the 40 HU vessels around it;
   - maxima of the Euclidean distance transform of dense tissue: thick structures whatever their
     shape (large nodules that touch a vessel or the pleura are not round at every scale);
3. every proposal gets ``FEATURES`` (size, Hessian shape, intensity, isolation, position in the lung);
4. a ranker (``apps.medical.model.CandidateRanker``, trained on the rendered nodules' positions and
   stored in the model bundle) scores them; the top ``k`` become crops + features for the CT encoder.

The same ``propose`` / ``extract`` run in training, evaluation and serving.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FEATURES = ("radius_mm", "eq_diameter_mm", "from_distance_map", "hessian_scale_mm", "log_dot", "ratio_21", "ratio_31",
            "dt_radius_mm", "centre_hu", "sphere_mean_hu", "sphere_p90_hu", "solid_fraction", "dense_fraction",
            "log_volume_mm3", "component_mean_hu", "component_max_hu", "compactness", "extent", "border_fraction",
            "shell_density", "pleura_distance_mm", "lateral_fraction", "axial_fraction", "ap_fraction")
# the encoder sees the ranker's logit as one more feature
GEOMETRY_FEATURES = FEATURES + ("ranker_logit",)


@dataclass(frozen=True)
class CandidateConfig:
    k: int = 8  # candidates kept per study
    crop: int = 24  # crop edge in voxels
    crop_mm: float = 2.0  # crop voxel size (isotropic)
    dense_hu: float = -650.0
    lung_hu: float = -400.0
    smooth_sigma_vox: float = 0.7
    close_mm: float = 16.0  # closing radius of the lung mask (pulls juxtapleural nodules inside)
    max_hole_mm2: float = 1500.0  # per-slice holes up to ~44 mm across are filled into the lung
    scales_mm: tuple[float, ...] = (1.5, 2.25, 3.25, 4.5, 6.0, 8.0, 10.5)  # Hessian Gaussian sigmas
    min_dot: float = 5.0  # weakest Hessian response proposed (compressed-HU units, scale-normalised)
    pool_hessian: int = 120
    pool_distance: int = 40
    min_radius_mm: float = 1.5  # smaller distance maxima are noise or vessel crumbs
    hu_min: float = -1000.0
    hu_max: float = 400.0
    proposal_version: int = 2  # bump when ``propose`` changes: cached proposals are keyed by the config


@dataclass
class Candidates:
    crops: np.ndarray  # (k, S, S, S) float32 0..1 (lung window); zeros where absent
    geometry: np.ndarray  # (k, len(GEOMETRY_FEATURES)) float32; zeros where absent
    mask: np.ndarray  # (k,) bool, True = a real candidate
    centres_vox: np.ndarray  # (k, 3) int (z, y, x) in the input volume; -1 where absent
    lung_ml: float
    radius_mm: np.ndarray | None = None  # (k,) estimated radius of each candidate (for drawing); 0 where absent


def load_hu(path: str | Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    """NIfTI / DICOM folder / DICOM file / LUNA16 .mhd -> (HU (D, H, W) float32, spacing (z, y, x) mm).

    Orientation to RAS then the model layout of ``apps.medical.transforms`` (same axes as the model
    volumes), at the scan's own spacing."""
    hu, spacing, _ = load_hu_placed(path)
    return hu, spacing


def load_hu_placed(path: str | Path) -> tuple[np.ndarray, tuple[float, float, float], np.ndarray]:
    """``load_hu`` and the (4, 4) affine from a layout voxel (z, y, x, 1) to DICOM patient
    coordinates (LPS mm): where a viewer shows that voxel."""
    from apps.medical.transforms import _quiet_monai

    _quiet_monai()
    if str(path).lower().endswith(".mhd"):
        from apps.medical.luna import read_mhd

        img = read_mhd(path).to_metatensor()
    else:
        from monai.transforms import EnsureChannelFirst, LoadImage

        img = EnsureChannelFirst()(LoadImage(image_only=True, ensure_channel_first=False)(str(path)))
    return _to_layout_placed(img)


def hu_from_ctvolume(volume) -> tuple[np.ndarray, tuple[float, float, float]]:
    """An ingested ``apps.medical.ingest.CTVolume`` -> (HU (D, H, W), spacing (z, y, x))."""
    return _to_layout(volume.to_metatensor())


def _to_layout(img) -> tuple[np.ndarray, tuple[float, float, float]]:
    hu, spacing, _ = _to_layout_placed(img)
    return hu, spacing


def _to_layout_placed(img) -> tuple[np.ndarray, tuple[float, float, float], np.ndarray]:
    from monai.transforms import Orientation

    img = Orientation(axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S")))(img)
    ras = np.asarray(img.affine, dtype=float)  # RAS voxel (x, y, z, 1) -> RAS mm
    sx, sy, sz = (float(np.linalg.norm(ras[:3, i])) for i in range(3))
    arr = np.asarray(img[0], dtype=np.float32)
    hu = np.ascontiguousarray(np.transpose(arr, (2, 1, 0))[:, ::-1, :])
    # layout (z, y, x) holds RAS voxel (x, H - 1 - y, z): the rows were flipped to put anterior on top
    to_ras_voxel = np.array([[0, 0, 1, 0], [0, -1, 0, hu.shape[1] - 1], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=float)
    to_lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ ras @ to_ras_voxel
    return hu, (sz, sy, sx), to_lps


def patient_position(to_lps: np.ndarray, voxel_zyx) -> list[float]:
    """A layout voxel (z, y, x) -> DICOM patient coordinates (x, y, z) in mm (LPS), rounded to 0.1 mm."""
    return [round(float(v), 1) + 0.0 for v in (to_lps @ np.array([*voxel_zyx, 1.0], dtype=float))[:3]]


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


@dataclass
class Proposals:
    """Every proposal of one study, before ranking."""

    centres_vox: np.ndarray  # (P, 3) int (z, y, x)
    features: np.ndarray  # (P, len(FEATURES)) float32
    lung_ml: float


Ranker = Callable[[np.ndarray], np.ndarray]  # (P, len(FEATURES)) -> (P,) logits, higher = more nodule-like


def _compress(hu: np.ndarray) -> np.ndarray:
    """Lung 0, ground glass (-650 HU) ~600, solid tissue ~1000: contrast a dot filter can compare."""
    return (1000.0 * np.tanh(np.clip(hu + 850.0, 0.0, None) / 300.0)).astype(np.float32)


def _dot_response(v: np.ndarray, inside: np.ndarray, spacing: np.ndarray, s: float):
    """Dot response, eigenvalue ratios (l2/l1, l3/l1) and the voxels they belong to, at scale ``s`` mm."""
    from scipy import ndimage

    sigma = s / spacing
    # separable Gaussian derivatives sharing their passes: z first, then y, then x (15 passes, not 18)
    gz = [ndimage.gaussian_filter1d(v, sigma[0], axis=0, order=o, truncate=3.0) for o in (0, 1, 2)]
    h = {}
    for (a, b), (oz, oy, ox) in {(0, 0): (2, 0, 0), (1, 1): (0, 2, 0), (2, 2): (0, 0, 2), (0, 1): (1, 1, 0),
                                 (0, 2): (1, 0, 1), (1, 2): (0, 1, 1)}.items():
        gy = ndimage.gaussian_filter1d(gz[oz], sigma[1], axis=1, order=oy, truncate=3.0)
        # per mm^2 and scale-normalised by s^2, so responses compare across scales
        h[a, b] = ndimage.gaussian_filter1d(gy, sigma[2], axis=2, order=ox, truncate=3.0) * (s * s / (spacing[a] * spacing[b]))
    trace = h[0, 0] + h[1, 1] + h[2, 2]
    idx = np.nonzero(inside & (trace < -30.0))
    lam = symmetric_eigvals3({key: value[idx] for key, value in h.items()})  # ascending: lam[:, 0] the most negative
    dot = np.where(lam[:, 2] < 0, lam[:, 2] ** 2 / np.maximum(np.abs(lam[:, 0]), 1e-6), 0.0).astype(np.float32)
    ratios = np.stack([lam[:, 1] / np.minimum(lam[:, 0], -1e-6), lam[:, 2] / np.minimum(lam[:, 0], -1e-6)], axis=1)
    return idx, dot, ratios


def symmetric_eigvals3(h: dict[tuple[int, int], np.ndarray]) -> np.ndarray:
    """Eigenvalues (N, 3), ascending, of N symmetric 3x3 matrices given by their upper entries h[a, b].

    The closed form (trigonometric solution of the characteristic cubic) in float64: several times
    faster than LAPACK's batched ``eigvalsh`` on the ~10^5-10^6 voxels of a scan, and as exact for the
    features built from it (tested against ``np.linalg.eigvalsh``).
    """
    a00, a11, a22 = (h[i, i].astype(np.float64) for i in range(3))
    a01, a02, a12 = h[0, 1].astype(np.float64), h[0, 2].astype(np.float64), h[1, 2].astype(np.float64)
    q = (a00 + a11 + a22) / 3.0
    b00, b11, b22 = a00 - q, a11 - q, a22 - q
    p = np.sqrt((b00 ** 2 + b11 ** 2 + b22 ** 2 + 2.0 * (a01 ** 2 + a02 ** 2 + a12 ** 2)) / 6.0)
    safe = np.where(p > 0, p, 1.0)
    det = (b00 * (b11 * b22 - a12 * a12) - a01 * (a01 * b22 - a12 * a02) + a02 * (a01 * a12 - b11 * a02)) / safe ** 3
    phi = np.arccos(np.clip(det / 2.0, -1.0, 1.0)) / 3.0
    largest = q + 2.0 * p * np.cos(phi)
    smallest = q + 2.0 * p * np.cos(phi + 2.0 * np.pi / 3.0)
    middle = 3.0 * q - largest - smallest
    return np.stack([smallest, middle, largest], axis=1).astype(np.float32)


def hessian_dots(hu: np.ndarray, spacing, lung: np.ndarray, config: CandidateConfig):
    """Best dot response over scales, its scale (mm) and eigenvalue ratios, on the lung's box.
    Scales of two voxels and more run on a 2x block-averaged grid: 16x cheaper, same peaks."""
    nz = np.argwhere(lung)
    lo, hi = np.maximum(nz.min(0) - 6, 0), np.minimum(nz.max(0) + 7, hu.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    v, inside = _compress(hu[box]), lung[box]
    shape = v.shape
    best = np.zeros(shape, np.float32)
    best_scale = np.zeros(shape, np.float32)
    ratios = np.zeros(shape + (2,), np.float32)
    sp = np.asarray(spacing, dtype=np.float64)
    even = tuple(n - n % 2 for n in shape)
    coarse_v = v[: even[0], : even[1], : even[2]].reshape(even[0] // 2, 2, even[1] // 2, 2, even[2] // 2, 2).mean((1, 3, 5))
    coarse_inside = inside[: even[0], : even[1], : even[2]].reshape(even[0] // 2, 2, even[1] // 2, 2, even[2] // 2, 2).any((1, 3, 5))
    for s in config.scales_mm:
        coarse = bool((s / sp).min() >= 2.0) and min(even) >= 4
        if coarse:
            idx, dot, rat = _dot_response(coarse_v, coarse_inside, 2.0 * sp, s)
            # each coarse voxel stands for its 2x2x2 block
            idx = tuple(2 * a for a in idx)
            blocks = [(dz, dy, dx) for dz in (0, 1) for dy in (0, 1) for dx in (0, 1)]
            idx = tuple(np.concatenate([a + d[i] for d in blocks]) for i, a in enumerate(idx))
            dot, rat = np.tile(dot, 8), np.tile(rat, (8, 1))
        else:
            idx, dot, rat = _dot_response(v, inside, sp, s)
        better = dot > best[idx]
        sub = tuple(a[better] for a in idx)
        best[sub] = dot[better]
        best_scale[sub] = s
        ratios[sub] = rat[better]
    return box, best, best_scale, ratios


def _suppress(points: np.ndarray, values: np.ndarray, extent_mm: np.ndarray, spacing, keep: int,
              factor: float, min_mm: float = 3.0) -> list[tuple[np.ndarray, float]]:
    """Strongest first; a point inside an already kept one's extent is dropped."""
    sp = np.asarray(spacing)
    kept: list[tuple[np.ndarray, float]] = []
    for i in np.argsort(-values, kind="stable"):
        p = points[i]
        if all(np.linalg.norm((p - q) * sp) > max(factor * e, min_mm) for q, e in kept):
            kept.append((p, float(extent_mm[i])))
            if len(kept) == keep:
                break
    return kept


def propose(hu: np.ndarray, spacing: tuple[float, float, float], config: CandidateConfig | None = None) -> Proposals:
    """HU volume (D, H, W) + spacing (z, y, x) mm -> all proposals with their ``FEATURES``."""
    from scipy import ndimage

    config = config or CandidateConfig()
    if hu.ndim != 3 or min(hu.shape) < 4:
        raise ValueError(f"expected a 3-D CT volume, got shape {hu.shape}")
    hu = hu.astype(np.float32, copy=False)
    spacing = tuple(float(s) for s in spacing)
    lung = lung_region(hu, spacing, config)
    lung_ml = float(lung.sum() * np.prod(spacing) / 1000.0)
    empty = Proposals(np.zeros((0, 3), np.int64), np.zeros((0, len(FEATURES)), np.float32), lung_ml)
    if not lung.any():
        return empty
    box, dots, scales, ratios = hessian_dots(hu, spacing, lung, config)
    peaks = np.argwhere((dots == ndimage.maximum_filter(dots, size=3)) & (dots > config.min_dot))
    offset = np.array([b.start for b in box])
    chosen = [(p + offset, r, 0.0) for p, r in _suppress(
        peaks, dots[tuple(peaks.T)], scales[tuple(peaks.T)] * np.sqrt(3.0), spacing, config.pool_hessian, 1.5)]

    smooth = ndimage.gaussian_filter(hu, config.smooth_sigma_vox)
    dense = (smooth > config.dense_hu) & lung
    dist = np.zeros(dense.shape, np.float32)
    if dense.any():
        nz = np.argwhere(dense)
        lo, hi = np.maximum(nz.min(0) - 1, 0), nz.max(0) + 2
        dbox = tuple(slice(a, b) for a, b in zip(lo, hi))
        dist[dbox] = ndimage.distance_transform_edt(np.pad(dense[dbox], 1), sampling=spacing)[1:-1, 1:-1, 1:-1]
        maxima = np.argwhere((dist == ndimage.maximum_filter(dist, size=3)) & (dist >= config.min_radius_mm))
        radii = dist[tuple(maxima.T)]
        chosen += [(p, r, 1.0) for p, r in _suppress(maxima, radii, radii, spacing, config.pool_distance, 2.0)]
    if not chosen:
        return empty

    full = np.zeros(hu.shape, np.float32)
    dot_full, scale_full, ratio_full = full.copy(), full.copy(), np.zeros(hu.shape + (2,), np.float32)
    dot_full[box], scale_full[box], ratio_full[box] = dots, scales, ratios
    # distance to the lung surface at half resolution: a position feature, mm precision is enough
    coarse = np.asarray(spacing) * 2
    pleura = ndimage.distance_transform_edt(np.pad(lung[::2, ::2, ::2], 1), sampling=coarse)[1:-1, 1:-1, 1:-1]
    nzl = np.argwhere(lung)
    lmin, lmax = nzl.min(0), nzl.max(0)
    span = np.maximum(lmax - lmin, 1)
    mid_x = (lmin[2] + lmax[2]) / 2.0
    feats, centres = [], []
    for c, r, from_distance in chosen:
        c = np.asarray(c, dtype=np.int64)
        t = tuple(c)
        r = max(float(r), 2.0)
        comp = component_features(hu, dense, spacing, c, r) if dense[t] else np.zeros(8, np.float32)
        sphere = _sphere_values(hu, spacing, c, r)
        feats.append([
            r, comp[0], from_distance, scale_full[t], np.log1p(dot_full[t]), ratio_full[t][0], ratio_full[t][1], dist[t],
            (smooth[t] + 1000.0) / 1000.0, (sphere.mean() + 1000.0) / 1000.0, (np.percentile(sphere, 90) + 1000.0) / 1000.0,
            float((sphere > -400).mean()), float((sphere > -750).mean()), *comp[1:],
            float(pleura[tuple(np.minimum(c // 2, np.array(pleura.shape) - 1))]),
            abs(c[2] - mid_x) / (span[2] / 2.0), (c[0] - lmin[0]) / span[0], (c[1] - lmin[1]) / span[1],
        ])
        centres.append(c)
    return Proposals(np.array(centres, np.int64), np.asarray(feats, np.float32), lung_ml)


def _sphere_values(hu: np.ndarray, spacing, centre, radius_mm: float) -> np.ndarray:
    half = [int(np.ceil(radius_mm / s)) + 1 for s in spacing]
    lo = [max(0, int(c) - h) for c, h in zip(centre, half)]
    hi = [min(n, int(c) + h + 1) for c, h, n in zip(centre, half, hu.shape)]
    axes = [(np.arange(a, b) - c) * s for a, b, c, s in zip(lo, hi, centre, spacing)]
    zz, yy, xx = np.meshgrid(*axes, indexing="ij")
    inside = zz ** 2 + yy ** 2 + xx ** 2 <= radius_mm ** 2
    return hu[tuple(slice(a, b) for a, b in zip(lo, hi))][inside]


def extract(hu: np.ndarray, spacing: tuple[float, float, float], config: CandidateConfig | None = None,
            ranker: Ranker | None = None, proposals: Proposals | None = None) -> Candidates:
    """HU volume -> the top-``k`` proposals (by ``ranker``; by Hessian response without one) with
    crops and ``GEOMETRY_FEATURES``. ``proposals`` skips ``propose`` when already computed."""
    config = config or CandidateConfig()
    p = proposals if proposals is not None else propose(hu, spacing, config)
    k = config.k
    out = Candidates(np.zeros((k, config.crop, config.crop, config.crop), np.float32),
                     np.zeros((k, len(GEOMETRY_FEATURES)), np.float32), np.zeros(k, bool), -np.ones((k, 3), np.int64),
                     p.lung_ml, np.zeros(k, np.float32))
    if len(p.features) == 0:
        return out
    if ranker is not None:
        scores = np.asarray(ranker(p.features), dtype=np.float32).reshape(-1)
    else:
        scores = p.features[:, FEATURES.index("log_dot")] + p.features[:, FEATURES.index("dt_radius_mm")] / 5.0
    order = np.argsort(-scores, kind="stable")[:k]
    for slot, i in enumerate(order):
        out.crops[slot] = crop(hu, spacing, p.centres_vox[i], config)
        out.geometry[slot] = np.append(p.features[i], scores[i])
        out.mask[slot] = True
        out.centres_vox[slot] = p.centres_vox[i]
        out.radius_mm[slot] = p.features[i, FEATURES.index("radius_mm")]
    return out


def crop(hu: np.ndarray, spacing, centre, config: CandidateConfig) -> np.ndarray:
    """Isotropic ``crop`` ^3 grid of ``crop_mm`` voxels centred on ``centre``, lung-windowed to 0..1."""
    from scipy import ndimage

    offs = (np.arange(config.crop, dtype=np.float32) - (config.crop - 1) / 2.0) * config.crop_mm
    axes = [centre[a] + offs / spacing[a] for a in range(3)]
    grid = np.meshgrid(*axes, indexing="ij")
    values = ndimage.map_coordinates(hu, grid, order=1, mode="constant", cval=config.hu_min)
    return np.clip((values - config.hu_min) / (config.hu_max - config.hu_min), 0.0, 1.0).astype(np.float32)


def component_features(hu: np.ndarray, dense: np.ndarray, spacing, centre, radius: float) -> np.ndarray:
    """The dense component around ``centre`` within a box of 3x its radius (>= 12 mm): equivalent
    diameter, log volume, mean and max HU, compactness, extent, border fraction, shell density."""
    from scipy import ndimage

    half = [max(2, int(np.ceil(max(3.0 * radius, 12.0) / s))) for s in spacing]
    lo = [max(0, int(c) - h) for c, h in zip(centre, half)]
    hi = [min(n, int(c) + h + 1) for c, h, n in zip(centre, half, dense.shape)]
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    local = dense[box]
    labels, _ = ndimage.label(local)
    comp = labels == labels[tuple(int(c) - a for c, a in zip(centre, lo))]
    n = int(comp.sum())
    volume = n * float(np.prod(spacing))
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
    return np.array([eq_d, np.log1p(volume), (vals.mean() + 1000.0) / 1000.0, (vals.max() + 1000.0) / 1000.0,
                     compactness, extent, border, shell_density], dtype=np.float32)
