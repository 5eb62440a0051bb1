"""One path from a CT file to the model's input array, shared by training, evaluation and serving.

It uses the app's MONAI transforms (``apps.medical.transforms``: orientation, resampling, HU lung
window, lung crop, resize) when they are available and otherwise a plain equivalent on nibabel
(RAS orientation, HU window -1000..400, resize), so the model code never depends on which one ran.
Output: float32 ``(D, H, W)`` in 0..1, axis 0 = axial slices (inferior -> superior).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

HU_MIN, HU_MAX = -1000.0, 400.0


def window(hu: np.ndarray) -> np.ndarray:
    return np.clip((hu.astype(np.float32) - HU_MIN) / (HU_MAX - HU_MIN), 0.0, 1.0)


def resize(volume: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Trilinear resize of a (D, H, W) array (torch, no scipy)."""
    import torch
    import torch.nn.functional as F

    if tuple(volume.shape) == tuple(shape):
        return volume.astype(np.float32, copy=False)
    t = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))[None, None]
    return F.interpolate(t, size=tuple(shape), mode="trilinear", align_corners=False)[0, 0].numpy()


def _monai_pipeline(path: Path, shape: tuple[int, int, int]) -> np.ndarray | None:
    try:
        from apps.medical import transforms  # the data helper's MONAI pipeline
    except ImportError:
        return None
    loader = getattr(transforms, "load_for_model", None)
    if loader is None:
        return None
    volume = np.asarray(loader(path, shape))  # contract: (D, H, W) float in 0..1
    return volume.astype(np.float32)


def _nifti_fallback(path: Path, shape: tuple[int, int, int]) -> np.ndarray:
    import nibabel as nib

    image = nib.as_closest_canonical(nib.load(str(path)))  # RAS+: array axes (x: R->L... , y, z)
    hu = np.asarray(image.dataobj, dtype=np.float32)  # (X, Y, Z), scl_slope/inter applied
    if hu.ndim == 4:
        hu = hu[..., 0]
    if hu.ndim != 3:
        raise ValueError(f"expected a 3-D CT volume, got shape {hu.shape}")
    # (X, Y, Z) -> (Z, Y, X): axial slices first, rows anterior->posterior flipped to radiological view
    volume = np.transpose(hu, (2, 1, 0))[:, ::-1, :]
    return resize(window(volume), shape)


def load_volume(path: str | Path, shape: tuple[int, int, int] | list[int]) -> np.ndarray:
    """A CT file (NIfTI, or whatever the MONAI pipeline accepts: DICOM folder / file) -> model array."""
    path = Path(path)
    shape = tuple(int(s) for s in shape)
    volume = _monai_pipeline(path, shape)
    if volume is None:
        if not (path.name.endswith(".nii") or path.name.endswith(".nii.gz")):
            raise ValueError(f"{path.name}: only NIfTI can be read without the MONAI pipeline")
        volume = _nifti_fallback(path, shape)
    if volume.shape != shape:
        volume = resize(volume, shape)
    return np.clip(volume, 0.0, 1.0).astype(np.float32)


def to_uint8(volume: np.ndarray) -> np.ndarray:
    return np.round(np.clip(volume, 0, 1) * 255).astype(np.uint8)
