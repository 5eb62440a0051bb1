"""Grad-CAM over the CT encoder's last feature map -> a voxel heat map, the top slices as PNG overlays,
and a coarse nodule-location estimate.

Grad-CAM (Selvaraju et al., 2017): weight each channel of the feature map by the mean gradient of
the malignancy logit with respect to it, sum, ReLU, upsample to the volume. The heat map says
where the model looked, not where a nodule certainly is.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from apps.medical.model import MedicalModel


@dataclass
class CamResult:
    probability: float  # calibrated
    weights: list[float]  # modality gate weights (ct, report)
    heatmap: np.ndarray  # (D, H, W) in 0..1
    peak: tuple[int, int, int]  # voxel index (z, y, x) of the hottest point


def grad_cam(model: MedicalModel, ct: torch.Tensor, report: dict[str, torch.Tensor] | None) -> CamResult:
    """One study: ``ct`` (1, 1, D, H, W). Runs the model once with gradients on the feature map."""
    model.eval()
    with torch.enable_grad():
        logits, weights = model(ct, report)
        fmap = model.ct_encoder.feature_map  # (1, C, d, h, w)
        (grads,) = torch.autograd.grad(logits.sum(), fmap)
    channel_weights = grads.mean(dim=(2, 3, 4), keepdim=True)
    cam = F.relu((channel_weights * fmap).sum(dim=1, keepdim=True)).detach()  # (1, 1, d, h, w)
    if float(cam.max()) <= 0:  # gradients all negative: fall back to activation magnitude
        cam = fmap.detach().abs().mean(dim=1, keepdim=True)
    cam = F.interpolate(cam, size=ct.shape[2:], mode="trilinear", align_corners=False)[0, 0]
    cam = cam - cam.min()
    cam = (cam / cam.max().clamp_min(1e-8)).numpy()
    peak = tuple(int(i) for i in np.unravel_index(int(cam.argmax()), cam.shape))
    probability = float(model.calibrated(logits.detach())[0])
    return CamResult(probability, [float(w) for w in weights.detach()[0]], cam, peak)  # type: ignore[arg-type]


def top_slices(heatmap: np.ndarray, k: int = 3, min_gap: int = 2) -> list[int]:
    """Axial slices with the largest heat, at least ``min_gap`` apart, hottest first."""
    scores = heatmap.reshape(heatmap.shape[0], -1).max(axis=1)
    chosen: list[int] = []
    for z in np.argsort(-scores):
        if all(abs(int(z) - c) >= min_gap for c in chosen):
            chosen.append(int(z))
        if len(chosen) == k:
            break
    return chosen


def _jet(values: np.ndarray) -> np.ndarray:
    """0..1 -> RGB uint8 with a jet-like ramp (blue -> cyan -> yellow -> red); no matplotlib needed."""
    v = np.clip(values, 0, 1)[..., None]
    r = np.clip(1.5 - np.abs(4 * v - 3), 0, 1)
    g = np.clip(1.5 - np.abs(4 * v - 2), 0, 1)
    b = np.clip(1.5 - np.abs(4 * v - 1), 0, 1)
    return (np.concatenate([r, g, b], axis=-1) * 255).astype(np.uint8)


def overlay_png(volume: np.ndarray, heatmap: np.ndarray, z: int, alpha: float = 0.45, scale: int = 4) -> bytes:
    """PNG bytes: CT slice ``z`` in grey (0..1 window) with the heat map blended where it is warm."""
    from PIL import Image

    grey = (np.clip(volume[z], 0, 1) * 255).astype(np.uint8)
    base = np.stack([grey] * 3, axis=-1).astype(np.float32)
    heat = heatmap[z]
    colour = _jet(heat).astype(np.float32)
    a = (alpha * np.clip(heat, 0, 1))[..., None]  # cool regions stay readable
    blended = (base * (1 - a) + colour * a).astype(np.uint8)
    image = Image.fromarray(blended, "RGB")
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def describe_location(peak: tuple[int, int, int], shape: tuple[int, int, int]) -> dict:
    """Coarse, patient-frame description of the heat-map peak.

    The shared transforms give (D, H, W) with D from feet to head, H front to back and W along RAS x,
    which increases towards the patient's right: W runs from the patient's left to right (the
    opposite of a DICOM image's columns). The description is only as good as the scan's orientation
    header, so the result also carries the voxel position and says it is an estimate.
    """
    z, y, x = peak
    d, h, w = shape
    rel = (z / max(1, d - 1), y / max(1, h - 1), x / max(1, w - 1))
    third = ("lower", "middle", "upper")[min(2, int(rel[0] * 3))]
    side = "left" if rel[2] < 0.5 else "right"  # RAS: small x is the patient's left
    return {
        "voxel_zyx": [int(z), int(y), int(x)],
        "relative_zyx": [round(v, 3) for v in rel],
        "description": f"{side} lung, {third} third (estimate from the heat-map peak)",
    }
