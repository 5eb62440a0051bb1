"""Tiny generated chest volumes + EMR snippets in the renderer's layout, for tests and smoke runs.

Not evaluation data and not a stand-in for the LIDC renderer: just enough structure (body, two
lungs near -850 HU, one nodule whose size and spiculation depend on the label, and a report whose
risk factors lean with the label) that a tiny model can learn something in seconds, so tests can
fail when the pipeline is broken.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np


def toy_volume(rng: np.random.Generator, label: int, shape: tuple[int, int, int] = (24, 32, 32),
               nodule: list | None = None) -> np.ndarray:
    """(D, H, W) Hounsfield units; ``nodule`` (a list) receives (z, y, x, radius) in voxels."""
    d, h, w = shape
    z, y, x = np.meshgrid(np.linspace(-1, 1, d), np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    hu = np.full(shape, -1000.0, dtype=np.float32)
    body = (y / 0.8) ** 2 + (x / 0.95) ** 2 < 1
    hu[body] = 40.0
    lungs = []
    for cx in (-0.45, 0.45):
        lung = ((y / 0.6) ** 2 + ((x - cx) / 0.35) ** 2 + (z / 1.1) ** 2) < 1
        hu[lung] = -850.0
        lungs.append(lung)
    side = int(rng.integers(2))
    cand = np.argwhere(lungs[side])
    cz, cy, cx = cand[rng.integers(len(cand))]
    radius = rng.uniform(2.2, 3.5) if label else rng.uniform(1.0, 2.0)
    zz, yy, xx = np.meshgrid(np.arange(d), np.arange(h), np.arange(w), indexing="ij")
    dist = np.sqrt((zz - cz) ** 2 + (yy - cy) ** 2 + (xx - cx) ** 2)
    if label:  # spiculated margin: radius modulated by direction
        theta = np.arctan2(yy - cy, xx - cx)
        dist = dist / (1 + 0.35 * np.maximum(0, np.sin(5 * theta)))
    hu[dist < radius] = 30.0 if label or rng.random() < 0.5 else 400.0  # some benign ones calcified
    if nodule is not None:
        nodule.extend([int(cz), int(cy), int(cx), float(radius)])
    hu += rng.normal(0, 25, size=shape).astype(np.float32)
    return hu


def toy_report(rng: np.random.Generator, label: int) -> str:
    age = int(rng.normal(66 if label else 58, 8))
    smoke = rng.random() < (0.8 if label else 0.4)
    pack = int(rng.uniform(20, 60)) if smoke else 0
    history = f"Former smoker, {pack} pack-years." if smoke else "Never smoker."
    family = " Family history of lung cancer." if rng.random() < (0.3 if label else 0.1) else ""
    sex = "woman" if age % 2 else "man"  # no draw of its own: the toy studies stay as they were
    return f"{age}-year-old {sex}. {history}{family} A pulmonary nodule is noted. No pleural effusion."


def write_toy_dataset(out: str | Path, n: int = 16, shape: tuple[int, int, int] = (24, 32, 32), seed: int = 0,
                      first_patient: int = 1) -> Path:
    """``out/labels.csv`` + ``out/volumes/*.nii.gz`` + ``out/reports/*.txt`` + ``out/nodules.csv``
    (nodule centres in voxels, for the candidate ranker); balanced labels."""
    import nibabel as nib

    out = Path(out)
    (out / "volumes").mkdir(parents=True, exist_ok=True)
    (out / "reports").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows, nodules = [], []
    for i in range(n):
        label = i % 2
        patient = f"LIDC-IDRI-{first_patient + i:04d}"
        study = f"{patient}-s0"
        nodule: list = []
        hu = toy_volume(rng, label, shape, nodule)
        nodules.append({"study_id": study, "label": label, "z_vox": nodule[0], "y_vox": nodule[1], "x_vox": nodule[2],
                        "diameter_mm": round(2 * 2.0 * nodule[3], 1)})
        # (D, H, W) -> NIfTI (X, Y, Z) with 2 mm voxels; RAS affine
        data = np.transpose(hu[:, ::-1, :], (2, 1, 0)).astype(np.int16)
        nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0])), str(out / "volumes" / f"{study}.nii.gz"))
        (out / "reports" / f"{study}.txt").write_text(toy_report(rng, label))
        rows.append({"study_id": study, "patient_id": patient, "label": "malignant" if label else "benign",
                     "path": f"volumes/{study}.nii.gz", "format": "nifti", "report_path": f"reports/{study}.txt",
                     "contrast": int(i % 4 < 2), "slice_spacing_mm": 2.0})
    with (out / "labels.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with (out / "nodules.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(nodules[0]))
        writer.writeheader()
        writer.writerows(nodules)
    return out
