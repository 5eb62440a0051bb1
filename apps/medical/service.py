"""Radiology service logic (pure Python, no HTTP): CT upload -> model input, model -> result.

``MedicalRunner`` is the ``ModelRunner`` the API batches through: each item is one study (the CT
array already through the shared pipeline, plus the report text or None). Per study it returns the
calibrated probability, the modality weights, a risk band, a location estimate and Grad-CAM
heat-map PNGs written under the artefact directory. Nothing here logs inputs: reports and DICOM
headers can hold PHI.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

DISCLAIMER = (
    "Research prototype trained on rendered (synthetic) CT volumes built from LIDC-IDRI annotations. "
    "Not a medical device and not for diagnostic use; a radiologist must review every study."
)

# Bands follow the British Thoracic Society (2015) cut-offs for nodule malignancy risk models
# (below 10 %: surveillance; 10-70 %: further imaging; above 70 %: consider resection), applied to
# this model's calibrated probability. They are NOT Lung-RADS categories.
RISK_BANDS = (
    (0.10, "low", "below 10 % estimated probability"),
    (0.70, "intermediate", "10-70 % estimated probability"),
    (1.01, "high", "70 % or more estimated probability"),
)
RISK_BAND_NOTE = ("Model risk band from BTS 2015 probability cut-offs (10 %, 70 %) applied to this model's "
                  "calibrated output; not a clinical Lung-RADS category.")

_ARTEFACT_ID = re.compile(r"^[0-9a-f]{32}$")
_ARTEFACT_NAME = re.compile(r"^slice_\d{1,4}\.png$")


def risk_band(probability: float) -> dict[str, str]:
    if not 0.0 <= probability <= 1.0:  # also catches NaN
        raise ValueError(f"probability {probability} outside 0..1")
    for upper, name, meaning in RISK_BANDS:
        if probability < upper:
            return {"band": name, "meaning": meaning, "note": RISK_BAND_NOTE}
    raise AssertionError("unreachable")


@dataclass
class StudyInput:
    volume: np.ndarray | None  # (D, H, W) float 0..1 at the model's volume_shape, or None
    report: str | None  # EMR / report text, or None


class CTInputError(ValueError):
    """The CT upload cannot be used; the message says why and what is accepted (no PHI in it)."""

    def __init__(self, message: str, status_code: int = 422, code: str = "invalid_ct"):
        super().__init__(message)
        self.status_code, self.code = status_code, code


def volume_from_upload(data: bytes, kind: str, shape: list[int]) -> tuple[np.ndarray, str]:
    """Upload bytes -> (model array, study key for hashing). ``kind`` from core.serving.sniff_kind.

    The study key is the DICOM StudyInstanceUID when there is one, else the sha256 of the bytes; it
    is only ever stored hashed.
    """
    from apps.medical.volumes import load_volume

    with tempfile.TemporaryDirectory(prefix="triptych-ct-") as tmp:
        tmp_path = Path(tmp)
        ingest = _ingest_module()
        if ingest is not None:
            try:
                path, study_uid = ingest.ingest_upload(data, kind, tmp_path)
            except ingest.IngestError as exc:  # checked: modality, spacing, missing slices, sizes, zip safety
                raise CTInputError(exc.message, exc.status_code, exc.code) from None
        elif kind == "nifti":
            suffix = ".nii.gz" if data[:2] == b"\x1f\x8b" else ".nii"
            path = tmp_path / f"upload{suffix}"
            path.write_bytes(data)
            study_uid = None
        else:
            raise CTInputError(f"a {kind} upload cannot be read by this installation; send a NIfTI volume (.nii, .nii.gz)")
        try:
            volume = load_volume(path, shape)
        except Exception as exc:  # readers raise many types (MONAI wraps them in RuntimeError); input's fault here
            raise CTInputError(f"could not read the CT volume ({type(exc).__name__}); "
                               "send a complete NIfTI volume, DICOM file or zipped DICOM series") from None
    key = study_uid or hashlib.sha256(data).hexdigest()
    return volume, key


def _ingest_module():
    try:
        from apps.medical import ingest
    except ImportError:
        return None
    return ingest


class MedicalRunner:
    """ModelRunner for the fused model (one study per item; Grad-CAM needs a backward per study)."""

    name = "fusion"

    def __init__(self, bundle_dir: str | Path, artefact_dir: str | Path, bert_path: str = "",
                 heatmap_slices: int = 3, threads: int = 2):
        import torch

        from apps.medical.model import load_model

        torch.set_num_threads(max(1, threads))
        self.model, bundle = load_model(bundle_dir, bert_path)
        self.version = bundle.version
        self.sha256 = bundle.sha256
        self.volume_shape = list(self.model.config.volume_shape)
        self.artefact_dir = Path(artefact_dir) / "medical"
        self.heatmap_slices = heatmap_slices
        self._lock = threading.Lock()  # the CT encoder keeps its last feature map: one study at a time

    def predict_batch(self, items: list[StudyInput]) -> list[Any]:
        out: list[Any] = []
        for item in items:
            try:
                out.append(self.analyze(item))
            except Exception as exc:  # one bad study must not fail its neighbours
                out.append(exc)
        return out

    def analyze(self, item: StudyInput) -> dict[str, Any]:
        import torch

        from apps.medical.gradcam import describe_location, grad_cam, overlay_png, top_slices

        if item.volume is None and not (item.report and item.report.strip()):
            raise CTInputError("send a CT volume, a report, or both")
        report = None
        if item.report and item.report.strip():
            report = self.model.report_encoder.tokenize([item.report])
        with self._lock:
            if item.volume is None:
                with torch.no_grad():
                    logits, weights = self.model(None, report)
                probability = float(self.model.calibrated(logits)[0])
                return self._result(probability, [float(w) for w in weights[0]], None, [])
            if tuple(item.volume.shape) != tuple(self.volume_shape):
                raise CTInputError(f"volume shape {item.volume.shape} != model input {self.volume_shape}")
            ct = torch.from_numpy(np.ascontiguousarray(item.volume, dtype=np.float32))[None, None]
            cam = grad_cam(self.model, ct, report)
        artefact_id = uuid.uuid4().hex
        folder = self.artefact_dir / artefact_id
        folder.mkdir(parents=True, exist_ok=True)
        names = []
        for z in top_slices(cam.heatmap, self.heatmap_slices):
            name = f"slice_{z}.png"
            (folder / name).write_bytes(overlay_png(item.volume, cam.heatmap, z))
            names.append(name)
        location = describe_location(cam.peak, tuple(cam.heatmap.shape))
        return self._result(cam.probability, cam.weights, location, names, artefact_id)

    def _result(self, probability: float, weights: list[float], location: dict | None, heatmaps: list[str],
                artefact_id: str | None = None) -> dict[str, Any]:
        return {
            "probability": round(probability, 4),
            "risk": risk_band(probability),
            "modality_weights": {"ct": round(weights[0], 4), "report": round(weights[1], 4)},
            "location": location,
            "artefact_id": artefact_id,
            "heatmaps": heatmaps,
            "model_version": self.version,
            "model_sha256": self.sha256,
            "disclaimer": DISCLAIMER,
        }

    def artefact_path(self, artefact_id: str, name: str) -> Path | None:
        """Path of a heat-map PNG, or None for anything that is not one of ours (no traversal)."""
        if not _ARTEFACT_ID.match(artefact_id) or not _ARTEFACT_NAME.match(name):
            return None
        path = self.artefact_dir / artefact_id / name
        return path if path.is_file() else None
