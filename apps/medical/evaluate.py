"""Evaluation: IU reports (``--reports``) and rendered CT studies (``--ct``); flat metric dicts."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def evaluate_reports(reports_file: str | Path, classifier_path: str | Path) -> dict[str, float]:
    """AUC and F1 (at the threshold chosen on training data) of the IU nodule/mass classifier."""
    from sklearn.metrics import f1_score, roc_auc_score

    from apps.medical.data import load_iu_reports
    from apps.medical.reports import ReportClassifier

    model = ReportClassifier.load(classifier_path)
    reports = load_iu_reports(reports_file)
    y = np.array([r.label for r in reports])
    p = model.predict_proba([r.text for r in reports])
    auc = float(roc_auc_score(y, p)) if len(set(y.tolist())) == 2 else float("nan")
    return {"auc": auc, "f1": float(f1_score(y, p >= model.threshold, zero_division=0)),
            "threshold": float(model.threshold), "reports": float(len(y)), "positives": float(y.sum())}


def evaluate_ct(ct_dir: str | Path, bundle_dir: str | Path, bert_path: str = "", cache: Path | None = None,
                patients: tuple[int, int] | None = None) -> dict[str, float]:
    """Fused, CT-only and text-only AUC, accuracy and ECE (calibrated) on a rendered set."""
    import torch

    from apps.medical.data import load_rendered
    from apps.medical.model import load_model
    from apps.medical.train import StudyDataset, _auc, ct_arrays, embed_reports, predict_logits, report_risk
    from core.metrics import expected_calibration_error

    model, _ = load_model(bundle_dir, bert_path)
    studies = load_rendered(ct_dir, patients)
    if not studies:
        raise ValueError(f"no labelled studies in {ct_dir}")
    y = np.array([s.label for s in studies])
    volumes = ct_arrays(model, studies, cache, log=lambda m: None)
    hidden, mask = embed_reports(model, [s.report for s in studies])
    risk = report_risk([s.report for s in studies])
    scores = {}
    for name, ct_on, rep_on in (("fused", True, True), ("ct", True, False), ("text", False, True)):
        ds = StudyDataset(volumes, hidden, mask, y, present_ct=ct_on, present_report=rep_on, risk=risk)
        scores[name] = predict_logits(model, ds)
    prob = model.calibrated(torch.from_numpy(scores["fused"])).numpy()
    return {
        "auc": _auc(y, scores["fused"]),
        "auc_ct_only": _auc(y, scores["ct"]),
        "auc_text_only": _auc(y, scores["text"]),
        "accuracy": float(((prob >= 0.5) == y).mean()),
        "ece": expected_calibration_error(y, prob),
        "studies": float(len(y)),
        "malignant": float(y.sum()),
    }


def record_in_card(bundle_dir: str | Path, metrics: dict[str, float], prefix: str, reproduce: str = "") -> None:
    """Add evaluation numbers to a bundle's card (card.json + MODEL_CARD.md); weights untouched."""
    import json

    from core.bundle import CARD_JSON, CARD_MD, ModelCard

    bundle_dir = Path(bundle_dir)
    card = ModelCard(**json.loads((bundle_dir / CARD_JSON).read_text()))
    card.metrics.update({f"{prefix}{k}": round(float(v), 4) for k, v in metrics.items()})
    if reproduce:
        card.reproduce = (card.reproduce + "\n" + reproduce).strip()
    (bundle_dir / CARD_JSON).write_text(json.dumps(card.__dict__, indent=2) + "\n")
    (bundle_dir / CARD_MD).write_text(card.to_markdown())
