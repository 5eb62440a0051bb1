"""Evaluation: IU reports (``--reports``) and rendered CT studies (``--ct``); flat metric dicts."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def evaluate_reports(reports_file: str | Path, classifier_path: str | Path) -> dict[str, float]:
    """AUC and F1 (at the threshold chosen on training data) of the IU nodule/mass classifier."""
    from sklearn.metrics import f1_score, roc_auc_score

    from apps.medical.data import load_iu_reports
    from apps.medical.reports import ReportClassifier

    reports = load_iu_reports(reports_file)
    if not reports:
        raise ValueError(f"{reports_file} has the IU columns but no reports to evaluate")
    model = ReportClassifier.load(classifier_path)
    y = np.array([r.label for r in reports])
    p = model.predict_proba([r.text for r in reports])
    auc = float(roc_auc_score(y, p)) if len(set(y.tolist())) == 2 else float("nan")
    return {"auc": auc, "f1": float(f1_score(y, p >= model.threshold, zero_division=0)),
            "threshold": float(model.threshold), "reports": float(len(y)), "positives": float(y.sum())}


def evaluate_ct(ct_dir: str | Path, bundle_dir: str | Path, bert_path: str = "", cache: Path | None = None,
                patients: tuple[int, int] | None = None, side: str | None = None,
                ct_only_dir: str | Path | None = None, report_only_dir: str | Path | None = None) -> dict[str, float]:
    """Fused, CT-only and text-only AUC, accuracy and ECE (calibrated) on a rendered set, and the AUCs of
    its case-mix subgroups (``subgroup_metrics``). ``side``: "val" or "train" keeps only the patients on
    that side of the fusion model's training split (``patient_split``), for a training render.

    With a dedicated single-input model (``ct_only_dir`` / ``report_only_dir``, as the service answers a
    study with one input), ``auc_ct_only`` / ``auc_text_only`` (and ``ece_*``) are that model's, and
    ``auc_ct_only_fusion`` / ``auc_text_only_fusion`` (``ece_*_fusion``) the fusion model's own with the
    other input absent."""
    import torch

    from apps.medical.data import load_rendered, patient_split
    from apps.medical.model import load_model, reads_same_ct
    from apps.medical.train import (
        FusionTrainConfig,
        StudyDataset,
        _auc,
        ct_arrays,
        embed_reports,
        predict_logits,
        report_risk,
    )
    from core.metrics import expected_calibration_error

    # the studies are read and checked before the models load (10-14 s)
    studies = load_rendered(ct_dir, patients)
    if side is not None:
        if side not in ("val", "train"):
            raise ValueError(f"side must be 'val' or 'train', not {side!r}")
        split = FusionTrainConfig.val_fraction, FusionTrainConfig.seed
        studies = [s for s in studies if patient_split(s.patient_id, *split) == side]
    if not studies:
        raise ValueError(f"no labelled studies in {ct_dir}")
    missing = [str(s.volume_path) for s in studies if not s.volume_path.exists()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} of the {len(studies)} volumes listed in {ct_dir}/labels.csv are "
                                f"missing, e.g. {missing[0]}")
    model, _ = load_model(bundle_dir, bert_path)
    if model.uses_detector:  # as the service runs it (the evaluation saves no model)
        from apps.medical.detector import channels_last_for_inference

        channels_last_for_inference(model.detector)
    y = np.array([s.label for s in studies])
    volumes = ct_arrays(model, studies, cache, log=lambda m: None)
    hidden, mask = embed_reports(model, [s.report for s in studies])
    risk = report_risk([s.report for s in studies])
    scores = {}
    for name, ct_on, rep_on in (("fused", True, True), ("ct", True, False), ("text", False, True)):
        ds = StudyDataset(volumes, hidden, mask, y, present_ct=ct_on, present_report=rep_on, risk=risk)
        scores[name] = predict_logits(model, ds)
    dedicated = {}
    answering = {"ct": model, "text": model}
    for name, directory, ct_on in (("ct", ct_only_dir, True), ("text", report_only_dir, False)):
        if directory:
            single, _ = load_model(directory, bert_path, detector_from=model, bert_from=model)
            own = volumes if reads_same_ct(single, model) else ct_arrays(single, studies, cache, log=lambda m: None)
            same_text = (single.config.clause_tokens, single.config.max_clauses) == (model.config.clause_tokens,
                                                                                     model.config.max_clauses)
            own_hidden, own_mask = (hidden, mask) if same_text else embed_reports(single, [s.report for s in studies])
            ds = StudyDataset(own, own_hidden, own_mask, y, present_ct=ct_on, present_report=not ct_on, risk=risk)
            dedicated[f"auc_{name}_only_fusion"] = _auc(y, scores[name])
            dedicated[f"ece_{name}_only_fusion"] = expected_calibration_error(
                y, model.calibrated(torch.from_numpy(scores[name])).numpy())
            scores[name] = predict_logits(single, ds)
            answering[name] = single
    prob = model.calibrated(torch.from_numpy(scores["fused"])).numpy()
    # a study with one input gets the answering model's calibrated probability: how well it is calibrated too
    single_ece = {f"ece_{name}_only": expected_calibration_error(y, m.calibrated(torch.from_numpy(scores[name])).numpy())
                  for name, m in answering.items()}
    return {
        "auc": _auc(y, scores["fused"]),
        "auc_ct_only": _auc(y, scores["ct"]),
        "auc_text_only": _auc(y, scores["text"]),
        **dedicated,
        "accuracy": float(((prob >= 0.5) == y).mean()),
        "ece": expected_calibration_error(y, prob),
        **single_ece,
        "studies": float(len(y)),
        "malignant": float(y.sum()),
        **subgroup_metrics(ct_dir, [s.study_id for s in studies], y, scores["fused"], scores["ct"]),
    }


# Case-mix subgroups read from the renderer's labels.csv: name -> (column, test on its value). Contrast-
# enhanced studies are much easier than plain ones (the fusion card's session-16 notes), so a set's share
# of them moves its AUC; slice spacing is resampled to the detector's 2.5 mm grid.
SUBGROUPS = {
    "contrast": ("contrast", lambda v: v.strip() == "1"),
    "plain": ("contrast", lambda v: v.strip() == "0"),
    "slices_2p5mm_or_less": ("slice_spacing_mm", lambda v: float(v) <= 2.5),
    "slices_over_2p5mm": ("slice_spacing_mm", lambda v: float(v) > 2.5),
}


def subgroup_metrics(ct_dir: str | Path, study_ids: list[str], y: np.ndarray, fused: np.ndarray,
                     ct_only: np.ndarray) -> dict[str, float]:
    """``auc_<group>``, ``auc_ct_only_<group>`` and ``studies_<group>`` for each SUBGROUPS entry whose
    column labels.csv has and whose studies hold both labels; nothing for sets without the columns."""
    import csv

    from apps.medical.data import LABELS_FILE
    from apps.medical.train import _auc

    with (Path(ct_dir) / LABELS_FILE).open(newline="", encoding="utf-8") as handle:
        rows = {row["study_id"]: row for row in csv.DictReader(handle)}
    out: dict[str, float] = {}
    for name, (column, test) in SUBGROUPS.items():
        values = [rows.get(sid, {}).get(column) for sid in study_ids]
        if any(v in (None, "") for v in values):
            continue
        member = np.array([test(v) for v in values])
        if len(set(y[member].tolist())) < 2:
            continue
        out[f"auc_{name}"] = _auc(y[member], fused[member])
        out[f"auc_ct_only_{name}"] = _auc(y[member], ct_only[member])
        out[f"studies_{name}"] = float(member.sum())
    return out


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
