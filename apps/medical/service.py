"""Radiology service logic (pure Python, no HTTP): CT upload -> model input, model -> result.

``MedicalRunner`` is the ``ModelRunner`` the API batches through: each item is one study (the CT
array already through the shared pipeline, plus the report text or None). Per study it returns the
calibrated probability, the modality weights, a risk band, a location estimate and heat-map PNGs
(Grad-CAM for a whole-volume model; each candidate's occlusion share for a candidate model) written
under the artefact directory. Nothing here logs inputs: reports and DICOM
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
from typing import TYPE_CHECKING, Any

import numpy as np

from core.serving.artefacts import write_durably

if TYPE_CHECKING:
    from core.serving.retention import ArtefactFolder

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
ARTEFACT_FOLDER = "medical"  # under the settings' artefact_dir: one folder of heat maps per analysis


def study_artefacts(artefact_dir: str | Path, payload: dict) -> list[Path]:
    """The files a stored analysis owns (its heat-map folder), erased with it."""
    artefact_id = str(payload.get("artefact_id") or "")
    return [Path(artefact_dir) / ARTEFACT_FOLDER / artefact_id] if _ARTEFACT_ID.match(artefact_id) else []


def study_artefact_folder(artefact_dir: str | Path) -> ArtefactFolder:
    """The analyses' heat-map folders as retention sees them (``core.serving.retention.ArtefactFolder``):
    a stored analysis' files (``study_artefacts``), named by its payload's ``artefact_id``; a folder no
    stored analysis names (its process died before the row was stored) is swept."""
    import functools

    from core.serving.retention import ArtefactFolder

    return ArtefactFolder(Path(artefact_dir) / ARTEFACT_FOLDER, functools.partial(study_artefacts, artefact_dir),
                          fields=("artefact_id",), pattern=_ARTEFACT_ID)
_ARTEFACT_NAME = re.compile(r"^slice_\d{1,4}\.png$")


def risk_band(probability: float) -> dict[str, str]:
    if not 0.0 <= probability <= 1.0:  # also catches NaN
        raise ValueError(f"probability {probability} outside 0..1")
    for upper, name, meaning in RISK_BANDS:
        if probability < upper:
            return {"band": name, "meaning": meaning, "note": RISK_BAND_NOTE}
    raise AssertionError("unreachable")


def slice_png(volume: np.ndarray, heat: np.ndarray, z: int, scale: int) -> bytes:
    """Axial slice ``z`` of a (D, H, W) layout volume with its heat map, as a PNG in radiological
    convention: the layout's x runs from the patient's left to right, while the source DICOM images and
    PACS viewers show the patient's right on the image's left, so the columns are mirrored."""
    from apps.medical.gradcam import overlay_png

    return overlay_png(volume[:, :, ::-1], heat[:, :, ::-1], z, scale=scale)


@dataclass
class CandidateInput:
    """CT input of a candidate-stage model: the candidates plus the lung-windowed native volume the
    heat-map slices are drawn on."""

    candidates: Any  # apps.medical.candidates.Candidates
    display: np.ndarray  # (D, H, W) float 0..1 at the scan's own resolution
    to_lps: np.ndarray | None = None  # (4, 4) layout voxel (z, y, x, 1) -> DICOM patient coordinates, mm


@dataclass
class StudyInput:
    volume: np.ndarray | CandidateInput | None  # (D, H, W) 0..1 at volume_shape / candidates / None
    report: str | None  # EMR / report text, or None


class CTInputError(ValueError):
    """The CT upload cannot be used; the message says why and what is accepted (no PHI in it)."""

    def __init__(self, message: str, status_code: int = 422, code: str = "invalid_ct"):
        super().__init__(message)
        self.status_code, self.code = status_code, code


class ReportInputError(ValueError):
    """A report sent without a CT states too little for the report model to read (no PHI in the message)."""

    def __init__(self, message: str, code: str = "insufficient_history"):
        super().__init__(message)
        self.status_code, self.code = 422, code


def check_report_alone(text: str | None) -> None:
    """Refuses a report that is to be read without a CT when its clinical history lacks a fact every training
    history stated (``risk.CORE_HISTORY``): its answer would be an extrapolation that looks like a reading
    (a bare '66-year-old woman.' read 0.90). With a CT the report only adds to the scan's evidence."""
    from apps.medical.risk import CORE_HISTORY, history_gaps

    gaps = history_gaps(text)
    if gaps:
        missing = "; ".join(CORE_HISTORY[g] for g in gaps)
        raise ReportInputError(
            f"A report without a CT is read from its clinical history, and this one does not state: {missing}. "
            "Send the CT as well, or a history that states them (the report model learnt from histories of "
            "current and former smokers that give age, sex and pack-years; never-smokers are outside it).")


def load_ct_input(path: str | Path, shape: list[int] | None = None, candidates=None):
    """A CT file -> the model's CT input: the resized volume (``shape``) or, given ``candidates``
    (the model's ``extract_candidates``: HU + spacing -> candidates), a ``CandidateInput``. The one
    path for evaluation and serving; training reaches the same ``extract_candidates``."""
    if candidates is None:
        from apps.medical.volumes import load_volume

        return load_volume(path, shape)
    from apps.medical.candidates import load_hu_placed
    from apps.medical.volumes import window

    hu, spacing, to_lps = load_hu_placed(path)
    return CandidateInput(candidates(hu, spacing), window(hu), to_lps)


def volume_from_upload(data: bytes, kind: str, shape) -> tuple[Any, str]:
    """Upload bytes -> (model CT input, study key for hashing). ``kind`` from core.serving.sniff_kind;
    ``shape`` is the model's volume shape or a callable path -> CT input (``MedicalRunner.load_ct``).

    The study key is the DICOM StudyInstanceUID when there is one, else the sha256 of the bytes; it
    is only ever stored hashed.
    """
    with tempfile.TemporaryDirectory(prefix="triptych-ct-") as tmp:
        tmp_path = Path(tmp)
        ingest = _ingest_module()
        if ingest is not None:
            try:
                path, study_uid = ingest.ingest_upload(data, kind, tmp_path)
            except ingest.IngestError as exc:  # checked: modality, spacing, missing slices, sizes, zip safety
                raise CTInputError(exc.message, exc.status_code, exc.code) from None
            except Exception as exc:  # noqa: BLE001 - a reader tripping on a hostile header is still the upload's fault
                raise CTInputError(f"the CT upload could not be read ({type(exc).__name__}); accepted: {ingest.ACCEPTED}",
                                   code="corrupt_ct") from None
        elif kind == "nifti":
            suffix = ".nii.gz" if data[:2] == b"\x1f\x8b" else ".nii"
            path = tmp_path / f"upload{suffix}"
            path.write_bytes(data)
            study_uid = None
        else:
            raise CTInputError(f"a {kind} upload cannot be read by this installation; send a NIfTI volume (.nii, .nii.gz)")
        try:
            volume = shape(path) if callable(shape) else load_ct_input(path, shape)
        except CTInputError:
            raise
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


@dataclass
class AnsweringModel:
    """A loaded bundle and the name the answer gives it (``answered_by``)."""

    name: str
    model: Any
    version: str
    sha256: str


ANSWERED_BY = {(True, True): "fusion", (True, False): "ct_only", (False, True): "report_only"}


class MedicalRunner:
    """ModelRunner for the fused model (one study per item; Grad-CAM needs a backward per study).

    A study sent with one input only is answered by that input's dedicated model when one is given
    (``ct_only_dir`` / ``report_only_dir``: bundles trained with ``--modalities ct|report``), else by
    the fusion model with the other input absent."""

    name = "fusion"

    def __init__(self, bundle_dir: str | Path, artefact_dir: str | Path, bert_path: str = "",
                 heatmap_slices: int = 3, threads: int = 2, min_lung_ml: float = 0.0,
                 ct_only_dir: str | Path | None = None, report_only_dir: str | Path | None = None):
        import torch

        from apps.medical.model import load_model

        torch.set_num_threads(max(1, threads))
        self.model, bundle = load_model(bundle_dir, bert_path)
        self.version = bundle.version
        self.sha256 = bundle.sha256
        self.models = {"fusion": AnsweringModel("fusion", self.model, bundle.version, bundle.sha256)}
        for name, modality, directory in (("ct_only", "ct", ct_only_dir), ("report_only", "report", report_only_dir)):
            if directory:
                self.models[name] = self._single_input_model(name, modality, directory, bert_path)
        if len(self.models) > 1:  # what /ready and the model headers show: every model that may answer
            self.version = ",".join(f"{m.name}={m.version}" for m in self.models.values())
            self.sha256 = ",".join(f"{m.name}={m.sha256}" for m in self.models.values())
        self.volume_shape = list(self.model.config.volume_shape)
        self.candidate_config = self.model.candidate_config() if self.model.uses_candidates else None
        self.artefact_dir = Path(artefact_dir) / ARTEFACT_FOLDER
        self.heatmap_slices = heatmap_slices
        self.min_lung_ml = min_lung_ml
        self._lock = threading.Lock()  # the CT encoder keeps its last feature map: one study at a time
        if self.model.uses_detector:  # after the single-input models read its weights; this runner saves nothing
            from apps.medical.detector import channels_last_for_inference

            channels_last_for_inference(self.model.detector)

    def _single_input_model(self, name: str, modality: str, directory: str | Path, bert_path: str) -> AnsweringModel:
        """A dedicated model must read what the fusion model reads: its CT input is the fusion model's
        (``load_ct``), its frozen BERT is the fusion model's (shared, not loaded again)."""
        from apps.medical.model import load_model, reads_same_ct

        model, bundle = load_model(directory, bert_path, detector_from=self.model, bert_from=self.model)
        if bundle.config.get("modalities") != modality:
            raise ValueError(f"{directory} is not a {modality}-only model (its modalities: "
                             f"{bundle.config.get('modalities', 'both')})")
        if modality == "ct" and not reads_same_ct(model, self.model):
            raise ValueError(f"{directory} reads another CT input than the fusion model (its candidates or volume "
                             "differ); train it from the fusion model's pack with --share-detector")
        return AnsweringModel(name, model, bundle.version, bundle.sha256)

    def answering(self, has_ct: bool, has_report: bool) -> AnsweringModel:
        """The model that answers a study with these inputs."""
        name = ANSWERED_BY[(has_ct, has_report)]
        return self.models.get(name, self.models["fusion"])

    def load_ct(self, path: str | Path):
        """A CT file -> this model's CT input (what ``StudyInput.volume`` holds). A candidate model's
        input is refused when the scan shows less than ``min_lung_ml`` of lung: a probability of lung
        cancer read off an abdomen would look like an answer."""
        extract = self.model.extract_candidates if self.candidate_config is not None else None
        ct = load_ct_input(path, self.volume_shape, extract)
        if isinstance(ct, CandidateInput) and ct.candidates.lung_ml < self.min_lung_ml:
            raise CTInputError(f"no lungs in view: {ct.candidates.lung_ml:.0f} ml of air inside the body, where a chest CT "
                               f"shows at least {self.min_lung_ml:.0f} ml; send a chest CT", code="no_lungs")
        return ct

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

        from apps.medical.gradcam import describe_location, grad_cam, top_slices

        if item.volume is None and not (item.report and item.report.strip()):
            raise CTInputError("send a CT volume, a report, or both")
        has_report = bool(item.report and item.report.strip())
        answering = self.answering(item.volume is not None, has_report)
        model = answering.model
        if item.volume is None and getattr(model.report_encoder, "risk_proj", None) is not None:
            check_report_alone(item.report)
        report = model.report_encoder.tokenize([item.report]) if has_report else None
        with self._lock:
            if item.volume is None:
                with torch.no_grad():
                    logits, weights = model(None, report)
                probability = float(model.calibrated(logits)[0])
                return self._result(answering, probability, [float(w) for w in weights[0]], None, [],
                                    evidence=self._evidence(model))
            if self.candidate_config is not None:
                if not isinstance(item.volume, CandidateInput):
                    raise CTInputError("this model reads nodule candidates; load the CT with MedicalRunner.load_ct")
                return self._analyze_candidates(answering, item.volume, report)
            if tuple(item.volume.shape) != tuple(self.volume_shape):
                raise CTInputError(f"volume shape {item.volume.shape} != model input {self.volume_shape}")
            ct = torch.from_numpy(np.ascontiguousarray(item.volume, dtype=np.float32))[None, None]
            cam = grad_cam(model, ct, report)
        artefact_id = uuid.uuid4().hex
        folder = self.artefact_dir / artefact_id
        folder.mkdir(parents=True, exist_ok=True)
        names = []
        for z in top_slices(cam.heatmap, self.heatmap_slices):
            name = f"slice_{z}.png"
            write_durably(folder / name, slice_png(item.volume, cam.heatmap, z, scale=4))
            names.append(name)
        location = describe_location(cam.peak, tuple(cam.heatmap.shape))
        return self._result(answering, cam.probability, cam.weights, location, names, artefact_id)

    def _analyze_candidates(self, answering: AnsweringModel, ct_input: CandidateInput, report) -> dict[str, Any]:
        """Probability plus an occlusion explanation: each candidate's share is the drop of the
        malignancy logit when it alone is masked out; the heat map puts a blob of that weight at
        each candidate, the location is the candidate that mattered most."""
        import torch

        from apps.medical.gradcam import describe_location

        c = ct_input.candidates
        crops = torch.from_numpy(c.crops)[None, :, None]
        geometry = torch.from_numpy(c.geometry)[None]
        mask = torch.from_numpy(c.mask)[None]
        k = mask.shape[1]
        # row 0: all candidates; row i+1: candidate i masked out (one batched forward)
        masks = mask.repeat(k + 1, 1)
        masks[1:] &= ~torch.eye(k, dtype=torch.bool)
        batch = {"crops": crops.expand(k + 1, -1, -1, -1, -1, -1), "geometry": geometry.expand(k + 1, -1, -1), "mask": masks}
        rep = None
        model = answering.model
        with torch.no_grad():
            if report is not None:  # the report's clause vectors once, shared by the k + 1 rows
                hidden, segment_mask = model.report_encoder.embed(report)
                rep = {"hidden": hidden.expand(k + 1, -1, -1), "segment_mask": segment_mask.expand(k + 1, -1)}
                if "risk" in report:
                    rep["risk"] = report["risk"].expand(k + 1, -1)
            logits, weights = model(batch, rep)
        evidence = self._evidence(model)
        probability = float(model.calibrated(logits[:1])[0])
        share = np.clip((logits[0] - logits[1:]).numpy(), 0.0, None) * c.mask
        display = ct_input.display
        heat = np.zeros(display.shape, np.float32)
        if c.mask.any():
            best = int(np.argmax(np.where(c.mask, share, -np.inf))) if share.max() > 0 else int(np.flatnonzero(c.mask)[0])
            peak_share = max(float(share.max()), 1e-6)
            for i in np.flatnonzero(c.mask):
                z, y, x = (int(v) for v in c.centres_vox[i])
                w = float(share[i]) / peak_share if share.max() > 0 else float(i == best)
                if w > 0:
                    # roughly the candidate's radius in voxels (rendered and most CT grids are ~2 mm)
                    r = max(2.0, float(c.radius_mm[i]) / 2.0) if c.radius_mm is not None else 2.0
                    box = tuple(slice(max(0, v - int(3 * r)), min(n, v + int(3 * r) + 1))
                                for v, n in zip((z, y, x), display.shape))
                    zz, yy, xx = np.ogrid[box]
                    blob = w * np.exp(-((zz - z) ** 2 + (yy - y) ** 2 + (xx - x) ** 2) / (2 * r * r))
                    heat[box] = np.maximum(heat[box], blob.astype(np.float32))
            peak = tuple(int(v) for v in c.centres_vox[best])
            location = describe_location(peak, tuple(display.shape))
            location["description"] = location["description"].replace("heat-map peak", "most influential nodule candidate")
            location["candidate_diameter_mm"] = round(float(c.geometry[best, 1]), 1)
            location["position_mm"] = self._position(ct_input, peak)
            slices = [peak[0]] + [int(c.centres_vox[i, 0]) for i in np.argsort(-share) if c.mask[i] and share[i] > 0
                                  and int(c.centres_vox[i, 0]) != peak[0]]
            slices = list(dict.fromkeys(slices))[: self.heatmap_slices]
            findings = self._findings(c, share)
            for finding in findings:
                finding["position_mm"] = self._position(ct_input, finding["voxel_zyx"])
        else:
            location, slices, findings = None, [], []
        artefact_id = uuid.uuid4().hex
        folder = self.artefact_dir / artefact_id
        folder.mkdir(parents=True, exist_ok=True)
        names = []
        for z in slices:
            name = f"slice_{z}.png"
            write_durably(folder / name, slice_png(display, heat, z, scale=2))
            names.append(name)
        result = self._result(answering, probability, [float(w) for w in weights[0]], location, names, artefact_id,
                              findings, evidence)
        if ct_input.to_lps is not None:  # each slice's table position, as a viewer's Slice Location reads it
            import json

            from apps.medical.secondary_capture import POSITIONS_FILE

            centre = (np.asarray(display.shape[1:]) - 1) / 2
            result["heatmap_z_mm"] = [self._position(ct_input, (z, *centre))[2] for z in slices]
            # beside the PNGs: the Secondary Capture, built at download time, names each slice's z too
            write_durably(folder / POSITIONS_FILE, json.dumps(dict(zip(names, result["heatmap_z_mm"]))).encode())
        return result

    @staticmethod
    def _position(ct_input: CandidateInput, voxel_zyx) -> list[float] | None:
        from apps.medical.candidates import patient_position

        return None if ct_input.to_lps is None else patient_position(ct_input.to_lps, voxel_zyx)

    @staticmethod
    def _evidence(model) -> dict[str, float] | None:
        """The last forward's per-modality log-odds of its first row (the study as sent: every candidate
        present), by modality name; None unless an evidence-sum model."""
        from apps.medical.model import MODALITIES

        evidence = model.modality_evidence()
        return None if evidence is None else {m: round(float(evidence[0, i]), 4) + 0.0 for i, m in enumerate(MODALITIES)}  # no -0.0

    def _findings(self, c, share: np.ndarray, top: int = 3) -> list[dict[str, Any]]:
        """The candidates with a positive occlusion share, most influential first."""
        from apps.medical.detector import DETECTOR_FEATURES

        detector = self.model.uses_detector
        peak = max(float(share.max()), 1e-6)
        out = []
        for i in np.argsort(-share, kind="stable"):
            if len(out) == top or share[i] <= 0 or not c.mask[i]:
                break
            item = {"voxel_zyx": [int(v) for v in c.centres_vox[i]],
                    "diameter_mm": round(2.0 * float(c.radius_mm[i]), 1) if c.radius_mm is not None else 0.0,
                    "influence": round(float(share[i]) / peak, 3)}
            if detector:
                heat, mal = (float(c.geometry[i, DETECTOR_FEATURES.index(k)]) for k in ("heat_logit", "malignancy_logit"))
                item.update(nodule_probability=round(1 / (1 + np.exp(-heat)), 3), malignancy_score=round(1 / (1 + np.exp(-mal)), 3))
            out.append(item)
        return out

    @staticmethod
    def _result(answering: AnsweringModel, probability: float, weights: list[float], location: dict | None,
                heatmaps: list[str], artefact_id: str | None = None, findings: list[dict] | None = None,
                evidence: dict[str, float] | None = None) -> dict[str, Any]:
        return {
            "probability": round(probability, 4),
            "risk": risk_band(probability),
            "modality_weights": {"ct": round(weights[0], 4), "report": round(weights[1], 4)},
            "modality_evidence": evidence,
            "location": location,
            "findings": findings or [],
            "artefact_id": artefact_id,
            "heatmaps": heatmaps,
            "answered_by": answering.name,
            "model_version": answering.version,
            "model_sha256": answering.sha256,
            "disclaimer": DISCLAIMER,
        }

    def artefact_path(self, artefact_id: str, name: str) -> Path | None:
        """Path of a heat-map PNG, or None for anything that is not one of ours (no traversal)."""
        if not _ARTEFACT_ID.match(artefact_id) or not _ARTEFACT_NAME.match(name):
            return None
        path = self.artefact_dir / artefact_id / name
        return path if path.is_file() else None

    def artefact_slices(self, artefact_id: str) -> list[Path]:
        """The heat-map PNGs of one result, in slice order ([] for an unknown id)."""
        if not _ARTEFACT_ID.match(artefact_id):
            return []
        folder = self.artefact_dir / artefact_id
        paths = [p for p in folder.glob("slice_*.png") if _ARTEFACT_NAME.match(p.name)] if folder.is_dir() else []
        return sorted(paths, key=lambda p: int(p.stem.split("_")[1]))
