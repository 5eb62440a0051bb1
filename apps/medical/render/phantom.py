"""A procedural chest CT around real LIDC nodules.

The volume lives on the scan's own native grid, coarsened by whole factors (so a 0.70 mm pixel
becomes 2.1 mm and a 1.25 mm slice 2.5 mm): every nodule outline maps onto it exactly, and the
block average of the radiologists' consensus mask is the partial-volume effect a real scanner
would show. Anatomy is analytic: per-slice 2-D shapes scaled along z (body, fat, muscle, lungs
with apices, diaphragm domes and a cardiac notch, heart, aorta, spine, sternum, table), plus
rasterised tubes (ribs, branching vessels, trachea and bronchi). Then a point-spread blur and
correlated scanner noise whose strength follows slice thickness.

Axes: arrays are (z, y, x) = (slice, row, column); x grows to the patient's left, y to the back,
z to the head (DICOM LPS, with z ascending by index).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from apps.medical.render.lidc_db import NATIVE_SIZE, Nodule, Scan

AIR, FAT, MUSCLE, BLOOD, CONTRAST_BLOOD = -1000.0, -100.0, 45.0, 40.0, 220.0
LUNG = -850.0


@dataclass(frozen=True)
class Grid:
    f_xy: int  # native pixels per output pixel
    f_z: int  # native slices per output slice
    pixel_spacing: float  # native, mm
    slice_spacing: float  # native, mm
    nz: int
    ny: int
    nx: int
    z0: float  # lower edge of the first output slab, mm

    @property
    def dx(self) -> float:
        return self.pixel_spacing * self.f_xy

    @property
    def dz(self) -> float:
        return self.slice_spacing * self.f_z

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.nz, self.ny, self.nx)

    def z_centres(self) -> np.ndarray:
        return self.z0 + (np.arange(self.nz) + 0.5) * self.dz

    def x_centres(self) -> np.ndarray:
        """Output column centres in mm from native pixel (0, 0)."""
        return (np.arange(self.nx) * self.f_xy + (self.f_xy - 1) / 2) * self.pixel_spacing

    def y_centres(self) -> np.ndarray:
        return (np.arange(self.ny) * self.f_xy + (self.f_xy - 1) / 2) * self.pixel_spacing

    def slab_of(self, z: np.ndarray | float) -> np.ndarray:
        return np.floor((np.asarray(z) - self.z0) / self.dz).astype(int)


def make_grid(scan: Scan, target_xy_mm: float, target_z_mm: float) -> Grid:
    ps, ss = scan.pixel_spacing, scan.slice_spacing
    f_xy = max(1, int(np.ceil(target_xy_mm / ps - 0.25)))  # never much finer than asked
    f_z = max(1, int(target_z_mm / ss + 0.5))
    n_native = int(round((scan.zvals[-1] - scan.zvals[0]) / ss)) + 1
    nz = max(1, n_native // f_z)
    n = NATIVE_SIZE // f_xy
    return Grid(f_xy=f_xy, f_z=f_z, pixel_spacing=ps, slice_spacing=ss, nz=nz, ny=n, nx=n,
                z0=float(scan.zvals[0]) - ss / 2)


@dataclass
class Lung:
    cx: float
    cy: float
    a: float  # lateral semi-axis, mm
    b: float  # antero-posterior semi-axis, mm
    side: int  # -1 right lung (image left, small x), +1 left lung


@dataclass
class Anatomy:
    body_cx: float
    body_cy: float
    body_a: float
    body_b: float
    fat: float  # subcutaneous fat thickness, mm
    lungs: list[Lung]
    base: float  # z of the lung bases (diaphragm), mm
    apex: float  # z of the lung apices, mm
    dome_frac: float  # fraction of lung height taken by the diaphragm domes
    heart_r: float
    contrast: bool
    emphysema: float  # 0 none, else the share of upper-lung voxels destroyed
    extra: dict = field(default_factory=dict)

    def t_of(self, z: np.ndarray | float) -> np.ndarray:
        return (np.asarray(z) - self.base) / (self.apex - self.base)


def lung_scale(t: np.ndarray) -> np.ndarray:
    """Lung cross-section scale along its height: widest low, a rounded apex at t = 1."""
    t = np.asarray(t, dtype=float)
    s = np.sqrt(np.clip(1 - ((t - 0.3) / 0.7) ** 2, 0, 1))
    s = np.where(t <= 0.3, 1.0, s)
    return np.where((t < 0) | (t > 1), 0.0, s)


def _rho(x, y, cx, cy, a, b):
    return np.sqrt(((x - cx) / a) ** 2 + ((y - cy) / b) ** 2)


def heart_centre(an: Anatomy) -> tuple[float, float]:
    return an.body_cx + 0.12 * an.body_a, an.body_cy - 0.22 * an.body_b


def heart_scale(t: np.ndarray) -> np.ndarray:
    return np.sqrt(np.clip(1 - ((np.asarray(t) - 0.22) / 0.32) ** 2, 0, 1))


def dome_scale(t: np.ndarray, dome_frac: float) -> np.ndarray:
    return 0.92 * np.sqrt(np.clip(1 - np.asarray(t) / dome_frac, 0, 1))


def inside_lung(an: Anatomy, x: float, y: float, z: float, margin: float = 1.0) -> bool:
    """Whether (x, y, z) mm lies inside a lung (margin < 1 demands room around it)."""
    t = float(an.t_of(z))
    s = float(lung_scale(t)) * margin
    hx, hy = heart_centre(an)
    if _rho(x, y, hx, hy, an.heart_r, an.heart_r * 0.8) <= float(heart_scale(t)) / margin:
        return False
    for lung in an.lungs:
        if _rho(x, y, lung.cx, lung.cy, lung.a, lung.b) <= s and \
                _rho(x, y, lung.cx, lung.cy + 0.1 * lung.b, lung.a, lung.b) > float(dome_scale(t, an.dome_frac)) / margin:
            return True
    return False


def plan_anatomy(rng: np.random.Generator, grid: Grid, nodule_xyz: list[np.ndarray], contrast: bool,
                 emphysema: float) -> Anatomy:
    """Random anatomy whose lungs contain the nodules at their original positions where possible."""
    fov = NATIVE_SIZE * grid.pixel_spacing
    z_lo, z_hi = grid.z0, grid.z0 + grid.nz * grid.dz
    cx = fov / 2 + rng.normal(0, 6)
    cy = fov / 2 + rng.normal(-5, 8)
    half_w = rng.uniform(115, 140)  # lateral half-width of the two lungs together
    lungs = []
    for side in (-1, 1):
        a = half_w * rng.uniform(0.40, 0.46)
        lungs.append(Lung(cx=cx + side * (half_w - a), cy=cy + rng.normal(0, 3), a=a, b=rng.uniform(75, 95), side=side))
    height = rng.uniform(200, 260)
    apex = min(z_hi + rng.uniform(-20, 25), z_lo + height) if z_hi - z_lo < height else z_hi - rng.uniform(0, 25)
    base = apex - height
    an = Anatomy(body_cx=cx, body_cy=cy, body_a=0, body_b=0, fat=rng.uniform(6, 22), lungs=lungs, base=base,
                 apex=apex, dome_frac=rng.uniform(0.16, 0.26), heart_r=rng.uniform(48, 62), contrast=contrast,
                 emphysema=emphysema)
    for xyz in nodule_xyz:  # stretch the lungs (z first, then in-plane) over every nodule
        x, y, z = map(float, xyz)
        if z > an.apex - 0.12 * (an.apex - an.base):
            an.apex = z + 0.14 * (z - an.base) + 4
        t = float(an.t_of(z))
        if t < an.dome_frac + 0.05:
            # lower the base until the nodule sits above the dome: t(z) = dome + 0.06
            k = an.dome_frac + 0.06
            an.base = (z - k * an.apex) / (1 - k)
    an.body_cx, an.body_cy = cx, cy
    for xyz in nodule_xyz:
        x, y, z = map(float, xyz)
        lung = min(an.lungs, key=lambda L: abs(x - L.cx))
        s = max(float(lung_scale(an.t_of(z))), 0.3)
        need = _rho(x, y, lung.cx, lung.cy, lung.a, lung.b) / (0.9 * s)
        if need > 1:
            grow = min(need, 1.35)
            lung.a *= grow
            lung.b *= grow
    hx, hy = heart_centre(an)
    for xyz in nodule_xyz:  # shrink the heart rather than swallow a nodule
        x, y, z = map(float, xyz)
        hs = float(heart_scale(an.t_of(z)))
        if hs > 0:
            r_needed = _rho(x, y, hx, hy, 1.0, 0.8) / hs / 1.15
            an.heart_r = float(np.clip(min(an.heart_r, r_needed), 25, an.heart_r))
    # the body wraps the lungs with ribs, muscle and fat around them
    wall = rng.uniform(18, 28) + an.fat
    an.body_a = max(abs(L.cx + L.side * L.a - cx) for L in an.lungs) + wall
    an.body_b = max(max(L.b + abs(L.cy - cy) for L in an.lungs) + wall, 0.72 * an.body_a)
    return an


def _paint_tube(vol: np.ndarray, grid: Grid, p0: np.ndarray, p1: np.ndarray, r: float | tuple, value: float | tuple,
                within: np.ndarray | None = None) -> None:
    """Blend a capsule from p0 to p1 (x, y, z mm) into vol with a partial-volume edge.

    ``r`` and ``value`` may be tuples (outer first): a wall and a lumen, or cortex and marrow."""
    radii = r if isinstance(r, tuple) else (r,)
    values = value if isinstance(value, tuple) else (value,)
    rmax = max(radii)
    lo = np.minimum(p0, p1) - rmax - grid.dx
    hi = np.maximum(p0, p1) + rmax + grid.dx
    xs, ys, zs = grid.x_centres(), grid.y_centres(), grid.z_centres()
    ix = np.searchsorted(xs, [lo[0], hi[0]])
    iy = np.searchsorted(ys, [lo[1], hi[1]])
    iz = np.searchsorted(zs, [lo[2] - grid.dz / 2, hi[2] + grid.dz / 2])
    if ix[0] >= ix[1] or iy[0] >= iy[1] or iz[0] >= iz[1]:
        return
    X = (xs[ix[0]:ix[1]] - p0[0]).astype(np.float32)[None, None, :]
    Y = (ys[iy[0]:iy[1]] - p0[1]).astype(np.float32)[None, :, None]
    Z = (zs[iz[0]:iz[1]] - p0[2]).astype(np.float32)[:, None, None]
    d = (p1 - p0).astype(np.float32)
    L2 = float(d @ d) or 1e-9
    u = np.clip((X * d[0] + Y * d[1] + Z * d[2]) / L2, 0, 1)
    dist = np.sqrt((X - u * d[0]) ** 2 + (Y - u * d[1]) ** 2 + (Z - u * d[2]) ** 2)
    region = (slice(iz[0], iz[1]), slice(iy[0], iy[1]), slice(ix[0], ix[1]))
    sub = vol[region]
    inv = np.float32(1.0 / grid.dx)
    for radius, val in zip(radii, values):
        w = np.clip((radius - dist) * inv + 0.5, 0, 1)
        if within is not None:
            w *= within[region]
        sub += (np.float32(val) - sub) * w


def _vessel_tree(rng: np.random.Generator, an: Anatomy, lung: Lung, hilum: np.ndarray, depth_max: int):
    """Branching segments (p0, p1, radius, depth) from a hilum towards the lung periphery."""
    segments = []
    stack = []
    for direction in ([0, -0.3, 1.0], [lung.side * 0.9, 0.1, 0.2], [lung.side * 0.3, 0.4, -1.0], [0.2 * lung.side, -0.8, -0.3]):
        v = np.asarray(direction, float) + rng.normal(0, 0.15, 3)
        stack.append((hilum, v / np.linalg.norm(v), rng.uniform(4.5, 6.0), 0))
    while stack:
        p0, v, r, depth = stack.pop()
        length = rng.uniform(18, 34) * 0.82**depth
        p1 = p0 + v * length
        if not inside_lung(an, *p1):
            p1 = p0 + v * length * 0.5
            if not inside_lung(an, *p1):
                continue
        segments.append((p0, p1, r, depth))
        if depth < depth_max:
            outward = p1 - hilum
            outward = outward / (np.linalg.norm(outward) + 1e-9)
            for _ in range(2):
                child = v + 0.75 * rng.normal(0, 1, 3) + 0.6 * outward
                stack.append((p1, child / np.linalg.norm(child), r * rng.uniform(0.66, 0.8), depth + 1))
    return segments


def render_anatomy(rng: np.random.Generator, grid: Grid, an: Anatomy) -> tuple[np.ndarray, np.ndarray]:
    """The nodule-free chest volume (float32 HU) and its lung mask."""
    from scipy import ndimage

    X = grid.x_centres()[None, :]  # (1, nx)
    Y = grid.y_centres()[:, None]  # (ny, 1)
    zc = grid.z_centres()
    t = an.t_of(zc)
    cx, cy, A, B = an.body_cx, an.body_cy, an.body_a, an.body_b

    # 2-D chest wall, shared by every slice
    rb = _rho(X, Y, cx, cy, A, B)
    base2d = np.full((grid.ny, grid.nx), AIR, np.float32)
    base2d[rb <= 1] = FAT
    inner = _rho(X, Y, cx, cy, A - an.fat, B - an.fat) <= 1
    base2d[inner] = MUSCLE
    table_y = cy + B + 18
    table = (np.abs(Y - table_y - 0.0008 * (X - cx) ** 2) < 3) & (np.abs(X - cx) < A * 1.15)
    base2d[table] = 120
    spine_y = cy + B - an.fat - 38
    vb = _rho(X, Y, cx, spine_y, 19, 16)
    base2d[vb <= 1] = 700
    base2d[vb <= 0.8] = 230
    canal = _rho(X, Y, cx, spine_y + 25, 8, 7) <= 1
    lamina = (_rho(X, Y, cx, spine_y + 25, 17, 13) <= 1) & ~canal
    spinous = (np.abs(X - cx) < 4) & (Y > spine_y + 30) & (Y < spine_y + 52)
    base2d[lamina | spinous] = 500
    base2d[canal] = 15
    sternum_y = cy - B + an.fat + 10
    st = _rho(X, Y, cx, sternum_y, 16, 7)
    aorta_desc = _rho(X, Y, cx + 22, spine_y - 26, 12, 12) <= 1
    aorta_asc = _rho(X, Y, cx + 8, cy - 0.35 * B, 15, 15) <= 1
    blood = CONTRAST_BLOOD if an.contrast else BLOOD
    vol = np.broadcast_to(base2d, grid.shape).copy()

    # discs interrupt the vertebral bodies every ~28 mm
    disc = ((zc - an.base) % 28.0) < 5.0
    vb_core = vb <= 1
    for k in np.flatnonzero(disc):
        vol[k][vb_core] = 85
    for k in np.flatnonzero(t > 0.12):
        vol[k][st <= 1] = 420
        vol[k][st <= 0.6] = 200
    for k in np.flatnonzero(t < 0.78):
        vol[k][aorta_desc] = blood
    for k in np.flatnonzero((t > 0.42) & (t < 0.76)):
        vol[k][aorta_asc] = blood

    # lungs, with the heart and the diaphragm domes carved out
    s = lung_scale(t)[:, None, None]
    hx, hy = heart_centre(an)
    heart2d = _rho(X, Y, hx, hy, an.heart_r, an.heart_r * 0.8)
    hs = heart_scale(t)[:, None, None]
    heart = heart2d[None] <= hs
    ds = dome_scale(t, an.dome_frac)[:, None, None]
    lung = np.zeros(grid.shape, bool)
    for L in an.lungs:
        lung |= (_rho(X, Y, L.cx, L.cy, L.a, L.b)[None] <= s) & \
            (_rho(X, Y, L.cx, L.cy + 0.1 * L.b, L.a, L.b)[None] > ds)
    lung &= ~heart
    below = t < an.dome_frac + 0.02  # liver / spleen under the domes
    for k in np.flatnonzero(below):
        vol[k][inner & ~(vb <= 1) & ~canal] = 58 if not an.contrast else 110
    vol[heart] = blood
    # the myocardium around the blood pool
    wall = (heart2d[None] <= hs * 1.0) & (heart2d[None] > hs * 0.82)
    vol[wall] = 55 if not an.contrast else 120

    # parenchyma: dependent density gradient and a slow texture
    def smooth2d():
        small = rng.normal(0, 1, (grid.ny // 10 + 3, grid.nx // 10 + 3)).astype(np.float32)
        return ndimage.zoom(small, [grid.ny / small.shape[0], grid.nx / small.shape[1]], order=1)[: grid.ny, : grid.nx]

    phase = np.cumsum(rng.normal(0, 1, grid.nz)) * (grid.dz / 25.0)  # slow random walk along z
    field = (smooth2d()[None] * np.cos(phase).astype(np.float32)[:, None, None]
             + smooth2d()[None] * np.sin(phase).astype(np.float32)[:, None, None])
    grad = (35 * (Y - cy) / B).astype(np.float32)[None]
    paren = LUNG + rng.uniform(-25, 25) + grad + 12 * field
    if an.emphysema > 0:
        # centrilobular lucencies, upper-lung predominant
        fine = rng.random(grid.shape, dtype=np.float32)
        upper = np.clip((t[:, None, None] - 0.35) / 0.4, 0, 1)
        holes = fine < an.emphysema * (0.4 + upper) * (0.6 + 0.4 * (field > 0))
        paren = np.where(holes, rng.uniform(-985, -960), paren)
    vol = np.where(lung, paren, vol).astype(np.float32)
    lung_f = lung.astype(np.float32)

    # vessels and airways
    carina_z = an.base + 0.62 * (an.apex - an.base)
    trachea_y = spine_y - 48
    carina = np.array([cx, trachea_y, carina_z])
    top = np.array([cx, trachea_y, grid.z0 + grid.nz * grid.dz + 10])
    for L in an.lungs:
        hilum = np.array([L.cx - L.side * 0.55 * L.a, L.cy + 0.05 * L.b, an.base + 0.55 * (an.apex - an.base)])
        for p0, p1, r, _depth in _vessel_tree(rng, an, L, hilum, depth_max=5):
            _paint_tube(vol, grid, p0, p1, r, blood, within=lung_f)
        # small peripheral vessels seen end-on or in short runs; calibre falls with distance from the hilum
        n_small = int(rng.integers(220, 320))
        for _ in range(n_small):
            p = np.array([rng.normal(L.cx, 0.5 * L.a), rng.normal(L.cy, 0.5 * L.b),
                          rng.uniform(an.base, an.apex)])
            if not inside_lung(an, *p, margin=0.97):
                continue
            away = p - hilum
            dist = float(np.linalg.norm(away))
            v = away / (dist + 1e-9) + rng.normal(0, 0.5, 3)
            v /= np.linalg.norm(v)
            r = float(np.clip(3.2 - dist / 45 + rng.normal(0, 0.3), 0.6, 3.0))
            _paint_tube(vol, grid, p, p + v * rng.uniform(5, 16), r, blood, within=lung_f)
        bronchus_end = hilum + np.array([L.side * 6, 6, 4])
        _paint_tube(vol, grid, carina, bronchus_end, (8.0, 6.0), (20, AIR))
        for p0, p1, r, _depth in _vessel_tree(rng, an, L, bronchus_end, depth_max=2):
            _paint_tube(vol, grid, p0, p1, (r * 0.9 + 1.2, r * 0.9), (0, AIR), within=lung_f)
    _paint_tube(vol, grid, carina, top, (10.5, 8.5), (30, AIR))

    # ribs: tubes that wrap the cavity, descending from the spine towards the front
    Ar, Br = A - an.fat - 9, B - an.fat - 9
    n_ribs = 11
    step = (an.apex - an.base + 40) / n_ribs
    for i in range(n_ribs):
        z_back = an.apex + 8 - i * step
        drop = rng.uniform(45, 75)
        for side in (-1, 1):
            phis = np.linspace(0.1 * np.pi, 0.8 * np.pi, 7)
            pts = np.stack([cx + side * Ar * np.sin(phis), cy + Br * np.cos(phis),
                            z_back - drop * (phis / np.pi) ** 1.5], axis=1)
            for p0, p1 in zip(pts[:-1], pts[1:]):
                _paint_tube(vol, grid, p0, p1, (5.5, 3.5), (650, 220))
    return vol, lung


def finish(rng: np.random.Generator, vol: np.ndarray, grid: Grid, noise_hu: float) -> np.ndarray:
    """Scanner blur and correlated noise, then int16 HU."""
    from scipy import ndimage

    vol = ndimage.gaussian_filter(vol, sigma=(0.0, 0.6, 0.6), truncate=2.0)  # slices already average along z
    noise = rng.standard_normal(vol.shape, dtype=np.float32)
    noise = ndimage.uniform_filter(noise, size=(1, 2, 2))  # in-plane correlation, as filtered back-projection gives
    vol += noise * np.float32(noise_hu * 2.0)  # a 2x2 box divides the std by 2
    return np.clip(np.rint(vol), -1024, 3071).astype(np.int16)


# ----------------------------------------------------------------------------------------- nodules

def _mode(values: list[int]) -> int:
    vals, counts = np.unique(values, return_counts=True)
    return int(vals[np.argmax(counts)])


def nodule_intensity(rng: np.random.Generator, nodule: Nodule, pixel_spacing: float, slice_spacing: float) -> np.ndarray:
    """HU for each native voxel of the consensus mask, following texture / calcification / structure."""
    from scipy import ndimage

    mask = nodule.mask
    depth = ndimage.distance_transform_edt(np.pad(mask, 1), sampling=(slice_spacing, pixel_spacing, pixel_spacing))[1:-1, 1:-1, 1:-1]
    rho = depth / max(float(depth.max()), 1e-6)  # 0 at the edge, 1 at the deepest point
    texture = nodule.rating("texture")  # 1 ground glass ... 5 solid
    solid_frac = float(np.interp(texture, [1, 2, 3, 4, 5], [0.0, 0.2, 0.5, 0.85, 1.0]))
    ggo = rng.uniform(-720, -520)
    solid = rng.uniform(-5, 45)
    grain = ndimage.gaussian_filter(rng.normal(0, 1, mask.shape).astype(np.float32), 1.0) * 40
    hu = np.where(rho >= 1 - solid_frac, solid + grain, ggo + grain * 2)
    calc = nodule.ratings_of("calcification")  # 6 = absent
    present = [c for c in calc if c != 6]
    if len(present) * 2 >= len(calc):
        kind = _mode(present)
        bone = rng.uniform(450, 900)
        if kind == 3:  # solid
            sel = rho >= 0.0
        elif kind == 5:  # central
            sel = rho >= 0.55
        elif kind == 2:  # laminated
            sel = np.sin(rho * 3.5 * np.pi) > 0.3
        elif kind == 1:  # popcorn
            sel = ndimage.gaussian_filter(rng.normal(0, 1, mask.shape), 1.2) > 0.25
        else:  # 4: non-central
            k, r, c = np.indices(mask.shape)
            centre = np.array([x.mean() for x in np.nonzero(mask)])
            d = rng.normal(0, 1, 3)
            proj = (k - centre[0]) * d[0] + (r - centre[1]) * d[1] + (c - centre[2]) * d[2]
            sel = proj > np.percentile(proj[mask], 60)
        hu = np.where(sel & mask, bone + grain, hu)
    structure = _mode(nodule.ratings_of("internalStructure"))  # 1 soft tissue, 2 fluid, 3 fat, 4 air
    if structure == 2:
        hu = np.where(rho > 0.5, 12 + grain * 0.3, hu)
    elif structure == 3:
        hu = np.where(rho > 0.4, -90 + grain * 0.3, hu)
    elif structure == 4:
        hu = np.where(rho > 0.6, -950.0, hu)
    return np.where(mask, hu, 0).astype(np.float32)


def paint_nodule(vol: np.ndarray, grid: Grid, scan: Scan, nodule: Nodule, hu: np.ndarray,
                 shift_px: tuple[int, int, float] = (0, 0, 0.0)) -> None:
    """Block-average the native mask and intensities onto the output grid (partial volume)."""
    f = grid.f_xy
    dr, dc, dz = shift_px
    row0, col0 = nodule.row0 + dr, nodule.col0 + dc
    r_al, c_al = (row0 // f) * f, (col0 // f) * f
    K, R, C = nodule.mask.shape
    pad_r0, pad_c0 = row0 - r_al, col0 - c_al
    Rp = -(-(pad_r0 + R) // f) * f
    Cp = -(-(pad_c0 + C) // f) * f
    occ = np.zeros((K, Rp, Cp), np.float32)
    val = np.zeros((K, Rp, Cp), np.float32)
    occ[:, pad_r0:pad_r0 + R, pad_c0:pad_c0 + C] = nodule.mask
    val[:, pad_r0:pad_r0 + R, pad_c0:pad_c0 + C] = hu
    occ = occ.reshape(K, Rp // f, f, Cp // f, f).sum((2, 4))
    val = val.reshape(K, Rp // f, f, Cp // f, f).sum((2, 4))
    slabs = grid.slab_of(nodule.zs + dz)
    keep = (slabs >= 0) & (slabs < grid.nz)
    if not keep.any():
        return
    s_lo = int(slabs[keep].min())
    n_s = int(slabs[keep].max()) - s_lo + 1
    occ_s = np.zeros((n_s,) + occ.shape[1:], np.float32)
    val_s = np.zeros_like(occ_s)
    np.add.at(occ_s, slabs[keep] - s_lo, occ[keep])
    np.add.at(val_s, slabs[keep] - s_lo, val[keep])
    # native slices per slab, so a slab is averaged over all of its planes, nodule or not
    per_slab = np.bincount(np.clip(grid.slab_of(scan.zvals), 0, grid.nz - 1), minlength=grid.nz).astype(np.float32)
    norm = (f * f * np.maximum(per_slab[s_lo:s_lo + n_s], 1.0))[:, None, None]
    occ_s = np.minimum(occ_s / norm, 1.0)
    val_s /= norm
    rr0, cc0 = r_al // f, c_al // f
    r_lo, c_lo = max(rr0, 0), max(cc0, 0)
    r_hi, c_hi = min(rr0 + occ.shape[1], grid.ny), min(cc0 + occ.shape[2], grid.nx)
    if r_lo >= r_hi or c_lo >= c_hi:
        return
    o = occ_s[:, r_lo - rr0:r_hi - rr0, c_lo - cc0:c_hi - cc0]
    v = val_s[:, r_lo - rr0:r_hi - rr0, c_lo - cc0:c_hi - cc0]
    sub = vol[s_lo:s_lo + n_s, r_lo:r_hi, c_lo:c_hi]
    sub *= 1 - o
    sub += v
