"""Evaluation of the shipped contact-centre models on datasets in their original layout.

Each function returns ONE FLAT dict metric-name -> number (the CLI writes it with ``--json``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from apps.customer_service.data import (
    DATASET_CLASSES,
    EKMAN_LABELS,
    VOICE_LABELS,
    load_banking77,
    load_emotion_corpus,
    load_goemotions,
)
from apps.customer_service.settings import get_settings


def _scores(y: np.ndarray, pred: np.ndarray, labels: list[int]) -> dict[str, float]:
    """Macro-F1 over the ``labels`` that occur in the file or in the predictions: a file holding 40 of the 77
    intents is not scored 0 on the 37 it never asks about (a class predicted but absent still counts, as 0)."""
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

    seen = set(np.unique(y).tolist()) | set(np.unique(pred).tolist())
    return {
        "accuracy": float(accuracy_score(y, pred)),
        "macro_f1": float(f1_score(y, pred, labels=[c for c in labels if c in seen], average="macro", zero_division=0)),
        "uar": float(balanced_accuracy_score(y, pred)),
    }


def evaluate_intent(csv_path: str | Path, bundle: str | Path | None = None, batch_size: int = 64) -> dict:
    """BANKING77 CSV (text,category) -> accuracy, macro_f1, mean confidence, ECE."""
    from apps.customer_service.model import load_text_classifier
    from core.metrics import expected_calibration_error

    texts, cats = load_banking77(csv_path)  # before the model: a wrong file is refused in a second, not after 12 s
    model = load_text_classifier(bundle or get_settings().intent_bundle)
    labels = model.config.labels
    unknown = sorted(set(cats) - set(labels))
    if unknown:
        raise ValueError(f"{csv_path}: categories not among the 77 intents: {unknown[:5]}")
    y = np.array([labels.index(c) for c in cats])
    proba = model.predict_proba(texts, batch_size=batch_size).numpy()
    pred = proba.argmax(1)
    out = _scores(y, pred, list(range(len(labels))))
    out.pop("uar")
    out["mean_confidence"] = float(proba.max(1).mean())
    out["ece"] = float(expected_calibration_error(y, proba))
    out["n"] = float(len(y))
    return out


def evaluate_dialogue(folder: str | Path, intent_bundle: str | Path | None = None,
                      acts_bundle: str | Path | None = None) -> dict:
    """A folder with ``heldout_turns.jsonl`` ({"text", "acts", "style"} per line: one caller turn and its dialogue
    acts) and/or ``heldout_calls.jsonl`` ({"turns", "asked", "style"}: a call's caller turns and the BANKING77
    intents asked, in order) -> per-act F1, request-or-not accuracy (also per style), and per call: whether the
    call's intent is one asked, whether every asked intent is listed in its requests, how many unasked ones are
    listed; the ``*_whole_text`` keys score the caller's whole text read as one query (the service until
    session 21). Turns are read one utterance each, as the service reads a caller's utterances."""
    import json

    from apps.customer_service.dialogue import act_metrics, load_dialogue_acts
    from apps.customer_service.model import load_text_classifier
    from apps.customer_service.service import CustomerServiceEngine

    folder = Path(folder)
    turns_file, calls_file = folder / "heldout_turns.jsonl", folder / "heldout_calls.jsonl"
    if not turns_file.is_file() and not calls_file.is_file():
        raise FileNotFoundError(f"{folder} has neither heldout_turns.jsonl nor heldout_calls.jsonl")
    settings = get_settings()
    acts = load_dialogue_acts(acts_bundle or settings.dialogue_acts_bundle)
    names = list(acts.config.acts)
    out: dict[str, float] = {}
    if turns_file.is_file():
        rows = [json.loads(line) for line in turns_file.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
        unknown = sorted({a for r in rows for a in r["acts"]} - set(names))
        if unknown:
            raise ValueError(f"{turns_file}: acts not among {names}: {unknown}")
        targets = np.array([[float(a in r["acts"]) for a in names] for r in rows], dtype=np.float32)
        proba = acts.predict_proba([r["text"] for r in rows])
        out |= act_metrics(proba, targets, names, acts.config.threshold) | {"turns": len(rows)}
        j = names.index("request")
        for style in sorted({r.get("style", "") for r in rows} - {""}):
            m = np.array([r.get("style") == style for r in rows])
            out[f"request_accuracy_{style}"] = round(float(((proba[m, j] >= acts.config.threshold) == (targets[m, j] == 1)).mean()), 4)
            out[f"turns_{style}"] = int(m.sum())
    if calls_file.is_file():
        calls = [json.loads(line) for line in calls_file.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
        intent = load_text_classifier(intent_bundle or settings.intent_bundle)
        unknown = sorted({a for c in calls for a in c["asked"]} - set(intent.config.labels))
        if unknown:
            raise ValueError(f"{calls_file}: intents not among the 77: {unknown}")
        engine = CustomerServiceEngine(settings, intent=intent, dialogue_acts=acts)
        whole = intent.predict_proba([" ".join(c["turns"]) for c in calls]).numpy()
        labels = intent.config.labels
        scores: dict[str, list] = {}
        for call, p in zip(calls, whole):
            asked = set(call["asked"])
            best, requests = engine.read_intents([{"speaker": "caller", "text": t} for t in call["turns"]])
            listed = {r["label"] for r in requests}
            ranked = [labels[i] for i in np.argsort(-p)]
            row = {"call_intent_in_asked": best is not None and best["label"] in asked,
                   "all_asked_listed": asked <= listed,
                   "asked_listed_share": len(asked & listed) / len(asked),
                   "unasked_listed_per_call": len(listed - asked),
                   "call_intent_in_asked_whole_text": ranked[0] in asked,
                   # as many of the whole text's best intents as the call asked for: all of them among those?
                   "all_asked_in_top_k_whole_text": asked <= set(ranked[:len(asked)]),
                   "all_asked_in_top3_whole_text": asked <= set(ranked[:3])}
            group = "one_request" if len(asked) == 1 else "two_requests"
            for key, value in row.items():
                scores.setdefault(key, []).append(value)
                scores.setdefault(f"{key}_{group}", []).append(value)
        out |= {k: round(float(np.mean(v)), 4) for k, v in scores.items()} | {"calls": len(calls)}
    return out


def evaluate_text_emotion(tsv_path: str | Path, bundle: str | Path | None = None) -> dict:
    """GoEmotions Ekman TSV, scored on rows with exactly one label (argmax over the 7 classes): ``n`` rows
    scored, ``n_skipped_multi_label`` rows with several labels left out."""
    from apps.customer_service.model import load_text_classifier

    texts, labs = load_goemotions(tsv_path)  # before the model: a wrong file is refused at once
    model = load_text_classifier(bundle or get_settings().text_emotion_bundle)
    if list(model.config.labels) != list(EKMAN_LABELS):
        raise ValueError(f"bundle labels {model.config.labels} are not the Ekman 7")
    rows = [i for i, lab in enumerate(labs) if len(lab) == 1]
    if not rows:
        raise ValueError(f"{tsv_path}: no single-label rows")
    y = np.array([labs[i][0] for i in rows])
    if y.max() >= len(EKMAN_LABELS):
        raise ValueError(f"{tsv_path}: label index {y.max()} outside the Ekman 7 (is this the ekman/ file?)")
    proba = model.predict_proba([texts[i] for i in rows]).numpy()
    out = _scores(y, proba.argmax(1), list(range(len(EKMAN_LABELS))))
    out["n"] = float(len(rows))
    out["n_skipped_multi_label"] = float(len(labs) - len(rows))  # rows with several labels are not scored
    return out


def evaluate_voice_emotion(root: str | Path, bundle: str | Path | None = None,
                           speaker_norm_bundle: str | Path | None = None, telephone: bool = False) -> dict:
    """RAVDESS or Emo-DB folder (labels.csv + audio) -> macro_f1, uar, accuracy.

    ``telephone``: every clip is first band-limited as a narrow-band (8 kHz) phone line delivers it,
    which is what a contact centre's recordings are; the studio corpora are wide-band.

    The argmax is restricted to the corpus's own classes (one label space covers both corpora).
    ``macro_f1``/``uar``/``accuracy`` are per clip (what the service does). When the speaker-norm
    bundle exists, ``speaker_norm_*`` keys add the same scores with features z-scored per speaker
    over the folder's own clips (labels unused).
    """
    from apps.customer_service.data import read_audio
    from apps.customer_service.model import load_voice_model
    from apps.customer_service.smile import voice_features
    from apps.customer_service.train import speaker_normalize

    corpus, clips = load_emotion_corpus(root)  # before the model: a missing audio file is refused at once
    if not clips:
        raise ValueError(f"{root}: labels.csv lists no clips")
    settings = get_settings()
    model = load_voice_model(bundle or settings.voice_emotion_bundle)
    audio = [read_audio(c.path) for c in clips]
    if telephone:
        from apps.customer_service.speech.audio import telephone_band

        audio = [telephone_band(a) for a in audio]
    blocks: dict[tuple, np.ndarray] = {}  # features per block list, shared by the two bundles

    def features(blocks_of_model: tuple) -> np.ndarray:
        key = tuple(blocks_of_model)
        if key not in blocks:
            blocks[key] = np.stack([voice_features(a, key) for a in audio])
        return blocks[key]

    x = features(model.blocks)
    allowed = np.array([name in DATASET_CLASSES[corpus] for name in VOICE_LABELS])
    y = np.array([VOICE_LABELS.index(c.label) for c in clips])
    classes = [VOICE_LABELS.index(n) for n in DATASET_CLASSES[corpus]]

    def score(proba: np.ndarray) -> dict:
        return _scores(y, np.where(allowed[None, :], proba, -1.0).argmax(1), classes)

    out = score(model.predict_proba(x))
    spk_bundle = Path(speaker_norm_bundle or settings.voice_emotion_speaker_norm_bundle)
    if (spk_bundle / "config.json").is_file():
        spk_model = load_voice_model(spk_bundle)
        speakers = np.array([c.speaker for c in clips])
        x_spk = speaker_normalize(features(spk_model.blocks), speakers)
        for k, v in score(spk_model.predict_proba(x_spk)).items():
            out[f"speaker_norm_{k}"] = v
    out["n"] = float(len(clips))
    out["speakers"] = float(len({c.speaker for c in clips}))
    out["telephone_band"] = float(telephone)
    return out


def evaluate_asr(root: str | Path, limit: int | None = None, telephone: bool = False, workers: int = 1,
                 backend: str = "pocketsphinx", model_path: str | Path | None = None) -> dict:
    """Delegates to the speech side (LibriSpeech / FSDD / Sphinx layouts)."""
    from apps.customer_service.speech import evaluate_asr as _evaluate_asr

    return _evaluate_asr(root, limit=limit, telephone=telephone, workers=workers, backend=backend,
                         model_path=model_path)
