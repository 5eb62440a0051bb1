"""Dense 3-D nodule detector: every voxel of the scan is looked at, ground glass included.

The classical proposal stage (``apps.medical.candidates``) ranks a Hessian / distance-map pool; it
keeps the largest nodule in its top 8 for ~78 % of malignant validation studies, and the ones it
loses are mostly large ground-glass nodules outranked by ribs and vessels. This network replaces
that stage: a small 3-D encoder with a top-down path (a 3-D feature pyramid) reads the whole scan
resampled to a fixed grid and predicts, on cells of 4 voxels (8 x 8 x 10 mm), CenterNet-style

- ``heat``: a nodule centre is here (Gaussian targets, focal loss; Zhou et al. 2019),
- ``size``: log diameter of that nodule (mm),
- ``malignancy``: logit that the nodule here is malignant (the readers' median rating >= 4).

Its peaks become the candidates of the CT encoder (crops + ``DETECTOR_FEATURES``), so the fusion
model, the occlusion heat maps and serving work on them as on the classical candidates. Trained on
the rendered training patients' nodule positions (``apps.medical.train.train_detector``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from core.config import ConfigBase

# per candidate, what the CT encoder sees besides the crop
DETECTOR_FEATURES = ("heat_logit", "diameter_mm", "malignancy_logit", "sphere_mean_hu", "sphere_p90_hu", "solid_fraction",
                     "ground_glass_fraction")
STRIDE = 4  # two stride-2 convolutions before the output cells


@dataclass
class NoduleDetectorConfig(ConfigBase):
    spacing_mm: list[float] = field(default_factory=lambda: [2.5, 2.0, 2.0])  # (z, y, x) grid the network reads
    channels: list[int] = field(default_factory=lambda: [16, 32, 64, 64])  # at 1/2, 1/4, 1/8, 1/16
    hu_min: float = -1000.0
    hu_max: float = 400.0
    min_separation_mm: float = 10.0  # peaks closer than this are one nodule
    # "batch": statistics of the training patches, fixed at inference; "group": per scan, which
    # differ between a training patch and a whole scan (a lot more air outside the body)
    norm: str = "batch"
    dropout: float = 0.1  # channel dropout before the heads (training only)

    PRESETS = {
        "tiny": {"channels": [4, 8, 8, 8]},
        "small": {},
        "wide": {"channels": [24, 48, 96, 96]},
        "small_group_norm": {"norm": "group", "dropout": 0.0},
    }


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm3d(channels)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    raise ValueError(f"unknown norm {kind!r}; choose batch or group")


def _conv(cin: int, cout: int, stride: int = 1, norm: str = "batch") -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(cin, cout, 3, stride=stride, padding=1, bias=False), _norm(norm, cout),
                         nn.ReLU(inplace=True))


class _Residual(nn.Module):
    def __init__(self, channels: int, norm: str = "batch"):
        super().__init__()
        self.body = nn.Sequential(_conv(channels, channels, norm=norm),
                                  nn.Conv3d(channels, channels, 3, padding=1, bias=False), _norm(norm, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.body(x))


class NoduleDetector(nn.Module):
    """(B, 1, D, H, W) lung-windowed 0..1 -> {"heat", "size", "malignancy"}: (B, D/4, H/4, W/4) each."""

    def __init__(self, config: NoduleDetectorConfig | None = None):
        super().__init__()
        self.config = config = config or NoduleDetectorConfig()
        c0, c1, c2, c3 = config.channels
        n = config.norm
        self.stem = _conv(1, c0, 2, n)
        self.down1 = nn.Sequential(_conv(c0, c1, 2, n), _Residual(c1, n))
        self.down2 = nn.Sequential(_conv(c1, c2, 2, n), _Residual(c2, n))
        self.down3 = nn.Sequential(_conv(c2, c3, 2, n), _Residual(c3, n))
        self.lateral3 = nn.Conv3d(c3, c2, 1)
        self.smooth2 = _conv(c2, c2, norm=n)
        self.lateral2 = nn.Conv3d(c2, c1, 1)
        self.smooth1 = _conv(c1, c1, norm=n)
        self.head = nn.Sequential(_conv(c1, c1, norm=n), nn.Dropout3d(config.dropout), nn.Conv3d(c1, 3, 1))
        with torch.no_grad():  # a nodule centre is rare: start the heat near a 1 % prior (CenterNet)
            self.head[-1].bias.copy_(torch.tensor([-4.6, 2.3, 0.0]))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f1 = self.down1(self.stem(x))
        f2 = self.down2(f1)
        f3 = self.down3(f2)
        p2 = self.smooth2(f2 + F.interpolate(self.lateral3(f3), size=f2.shape[2:], mode="trilinear", align_corners=False))
        p1 = self.smooth1(f1 + F.interpolate(self.lateral2(p2), size=f1.shape[2:], mode="trilinear", align_corners=False))
        out = self.head(p1)
        return {"heat": out[:, 0], "size": out[:, 1], "malignancy": out[:, 2]}


def prepare_volume(hu: np.ndarray, spacing, config: NoduleDetectorConfig) -> tuple[np.ndarray, np.ndarray]:
    """HU (D, H, W) at ``spacing`` -> (windowed 0..1 volume on the detector's grid, per-axis factor
    grid index -> input index). A volume within 5 % of the grid on every axis is not resampled.

    Resampling is linear with the corners aligned (output voxel o reads input o * (n_in - 1) / (n_out - 1)),
    which is ``scipy.ndimage.zoom(order=1, grid_mode=False)``, the function used until 2026-12-02; torch's
    trilinear interpolation computes it to ~1e-5 of the window on torch's threads: 30 instead of 130-230 ms
    for a rendered study on 2 threads."""
    spacing = np.asarray(spacing, dtype=np.float64)
    target = np.asarray(config.spacing_mm, dtype=np.float64)
    zoom = spacing / target
    x = np.clip((hu.astype(np.float32) - config.hu_min) / (config.hu_max - config.hu_min), 0.0, 1.0)
    if np.all(np.abs(zoom - 1.0) < 0.05):
        return x, np.ones(3)
    shape = tuple(max(1, round(n * z)) for n, z in zip(hu.shape, zoom))  # scipy.ndimage.zoom's output shape
    with torch.no_grad():
        x = F.interpolate(torch.from_numpy(x)[None, None], size=shape, mode="trilinear", align_corners=True)[0, 0].numpy()
    return x, (np.asarray(hu.shape) - 1) / np.maximum(np.asarray(x.shape) - 1, 1)


@dataclass
class Detections:
    centres_vox: np.ndarray  # (n, 3) float, (z, y, x) in the input volume
    heat_logit: np.ndarray  # (n,)
    diameter_mm: np.ndarray  # (n,)
    malignancy_logit: np.ndarray  # (n,)
    lung_ml: float = 0.0  # air inside the body (lung_volume_ml); set by detect()


LUNG_THRESHOLD_HU = -400.0  # air-like voxels inside the body count as lung (transforms.CTTransformConfig's)


def lung_volume_ml(x: np.ndarray, config: NoduleDetectorConfig) -> float:
    """Millilitres of air inside the body in ``x`` (prepare_volume's windowed volume on the detector's
    grid), by ``transforms.lung_mask``: a chest CT holds litres, a scan without the chest almost none.
    Every second voxel along each axis is enough for that and costs an eighth (~0.03 s, not 0.2 s)."""
    from apps.medical.transforms import lung_mask

    threshold = (LUNG_THRESHOLD_HU - config.hu_min) / (config.hu_max - config.hu_min)
    mask = lung_mask(np.transpose(x[::2, ::2, ::2], (2, 1, 0)), threshold)
    return float(mask.sum() * np.prod(config.spacing_mm) * 8 / 1000.0)


def decode(out: dict[str, torch.Tensor], k: int, config: NoduleDetectorConfig) -> list[Detections]:
    """Top-``k`` heat peaks per scan (non-maximum suppression by ``min_separation_mm``), each centre
    refined by the heat-weighted mean of its 3^3 cells; positions on the detector's grid."""
    heat = out["heat"].float()
    cell_mm = np.asarray(config.spacing_mm) * STRIDE
    results = []
    for b in range(heat.shape[0]):
        h = heat[b]
        p = torch.sigmoid(h)
        peaks = (F.max_pool3d(p[None, None], 3, stride=1, padding=1)[0, 0] == p)
        cand = torch.nonzero(peaks)
        scores = h[peaks]
        order = torch.argsort(scores, descending=True)[: max(8 * k, 64)]
        cand, scores = cand[order].cpu().numpy(), scores[order].cpu().numpy()
        kept: list[int] = []
        for i in range(len(cand)):
            if len(kept) == k:
                break
            if kept and (np.linalg.norm((cand[kept] - cand[i]) * cell_mm, axis=1) < config.min_separation_mm).any():
                continue
            kept.append(i)
        pn = p.cpu().numpy()
        centres = []
        for i in kept:
            c = cand[i]
            lo, hi = np.maximum(c - 1, 0), np.minimum(c + 2, pn.shape)
            w = pn[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
            grid = np.stack(np.meshgrid(*[np.arange(a, z) for a, z in zip(lo, hi)], indexing="ij"), -1)
            centres.append((grid * w[..., None]).sum((0, 1, 2)) / max(float(w.sum()), 1e-6))
        idx = tuple(cand[kept].T) if kept else (np.zeros(0, int),) * 3
        results.append(Detections(
            np.asarray(centres, np.float64).reshape(-1, 3) * STRIDE,
            scores[kept].astype(np.float32) if kept else np.zeros(0, np.float32),
            np.exp(out["size"][b].float().cpu().numpy()[idx]).astype(np.float32),
            out["malignancy"][b].float().cpu().numpy()[idx].astype(np.float32)))
    return results


def channels_last_for_inference(detector: NoduleDetector) -> NoduleDetector:
    """``detector`` with its weights in the channels-last 3-D layout, in place, and ``detect`` feeding it volumes so:
    oneDNN's CPU convolutions run ~40 % faster on it (a reserved study's forward on 2 threads: 354 -> 209 ms),
    outputs equal to ~1e-5 of a logit. For inference: the state dict's tensors are then not contiguous
    (``model.weights_digest`` copies them; a bundle must not be saved from such a model)."""
    detector.to(memory_format=torch.channels_last_3d)
    detector.channels_last = True
    return detector


def detect(hu: np.ndarray, spacing, detector: NoduleDetector, k: int = 8) -> Detections:
    """HU volume (D, H, W) + spacing (z, y, x) -> the top-``k`` nodule detections, centres in ``hu``'s voxels."""
    x, factor = prepare_volume(hu, spacing, detector.config)
    detector.eval()
    with torch.no_grad():
        volume = torch.from_numpy(x)[None, None]
        if getattr(detector, "channels_last", False):
            volume = volume.contiguous(memory_format=torch.channels_last_3d)
        out = detector(volume)
    det = decode(out, k, detector.config)[0]
    det.centres_vox = np.clip(det.centres_vox * factor, 0, np.asarray(hu.shape) - 1)
    det.lung_ml = lung_volume_ml(x, detector.config)
    return det


def detection_candidates(hu: np.ndarray, spacing, detector: NoduleDetector, config):
    """The detector's top ``config.k`` as ``candidates.Candidates`` (crops + ``DETECTOR_FEATURES``):
    the CT encoder's input, in training, evaluation and serving alike."""
    from apps.medical.candidates import Candidates, _sphere_values, crop

    k = config.k
    out = Candidates(np.zeros((k, config.crop, config.crop, config.crop), np.float32),
                     np.zeros((k, len(DETECTOR_FEATURES)), np.float32), np.zeros(k, bool), -np.ones((k, 3), np.int64), 0.0,
                     np.zeros(k, np.float32))
    if hu.ndim != 3 or min(hu.shape) < 8:
        raise ValueError(f"expected a 3-D CT volume, got shape {hu.shape}")
    det = detect(hu, spacing, detector, k)
    out.lung_ml = det.lung_ml
    for slot in range(len(det.heat_logit)):
        centre = det.centres_vox[slot]
        radius = float(np.clip(det.diameter_mm[slot] / 2.0, 2.0, 20.0))
        sphere = _sphere_values(hu, spacing, np.round(centre).astype(int), radius)
        if sphere.size == 0:
            sphere = np.array([-1000.0], np.float32)
        out.crops[slot] = crop(hu, spacing, centre, config)
        out.geometry[slot] = [det.heat_logit[slot], det.diameter_mm[slot], det.malignancy_logit[slot],
                              (sphere.mean() + 1000.0) / 1000.0, (np.percentile(sphere, 90) + 1000.0) / 1000.0,
                              float((sphere > -300).mean()), float(((sphere > -800) & (sphere <= -300)).mean())]
        out.mask[slot] = True
        out.centres_vox[slot] = np.round(centre).astype(np.int64)
        out.radius_mm[slot] = radius
    return out


# -- training targets and loss ------------------------------------------------------------------


def heat_targets(shape_cells, nodules, config: NoduleDetectorConfig) -> dict[str, np.ndarray]:
    """Targets on the output cells for nodules ``(z, y, x, diameter_mm, malignant)`` given in the
    detector grid's voxels: Gaussian heat (1 at each centre's cell, sigma = max(d / 4, 2.5 mm)),
    log diameter and malignancy of the nearest nodule where its heat is >= 0.5."""
    heat = np.zeros(shape_cells, np.float32)
    size = np.zeros(shape_cells, np.float32)
    malignant = np.zeros(shape_cells, np.float32)
    cell_mm = np.asarray(config.spacing_mm) * STRIDE
    axes = [np.arange(n, dtype=np.float32) for n in shape_cells]
    for z, y, x, d, m in nodules:
        centre = np.array([z, y, x], np.float32) / STRIDE
        sigma = max(d / 4.0, 2.5) / cell_mm
        g = np.exp(-0.5 * sum(((a - c) / s) ** 2 for a, c, s in zip(np.meshgrid(*axes, indexing="ij"), centre, sigma)))
        peak = tuple(np.clip(np.round(centre).astype(int), 0, np.asarray(shape_cells) - 1))
        g[peak] = 1.0
        closer = g > heat
        heat = np.where(closer, g, heat)
        size = np.where(closer, np.log(max(d, 1.0)), size)
        malignant = np.where(closer, float(m), malignant)
    return {"heat": heat, "size": size, "malignant": malignant}


def detector_loss(out: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CenterNet focal loss on the heat, L1 on log size and BCE on malignancy near centres."""
    heat_t = target["heat"]
    logit = out["heat"].float()
    p = torch.sigmoid(logit).clamp(1e-4, 1 - 1e-4)
    pos = heat_t >= 0.999
    n_pos = pos.sum().clamp_min(1)
    pos_loss = -(((1 - p) ** 2) * torch.log(p))[pos].sum()
    neg_loss = -(((1 - heat_t) ** 4) * (p ** 2) * torch.log(1 - p))[~pos].sum()
    near = heat_t >= 0.5
    w = heat_t[near]
    size = (F.l1_loss(out["size"].float()[near], target["size"][near], reduction="none") * w).sum() / w.sum().clamp_min(1)
    mal = (F.binary_cross_entropy_with_logits(out["malignancy"].float()[near], target["malignant"][near], reduction="none")
           * w).sum() / w.sum().clamp_min(1)
    heat = (pos_loss + neg_loss) / n_pos
    return {"loss": heat + size + mal, "heat": heat, "size": size, "malignancy": mal}
