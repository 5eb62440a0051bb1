"""The text-emotion ensemble: members trained per seed -> finalisation -> served bundle, on tiny models."""

from __future__ import annotations

import json

import numpy as np
import pytest

from apps.customer_service.data import EKMAN_LABELS
from apps.customer_service.model import TextEnsemble, load_text_classifier
from apps.customer_service.train import EmotionRecipe, _finalize_text_emotion, train_emotion_member

WORDS = {"anger": "furious", "disgust": "gross", "fear": "scared", "joy": "thrilled", "neutral": "tuesday",
         "sadness": "miserable", "surprise": "wow"}


def _write_ekman(folder, n_train: int = 20, n_dev: int = 8, seed: int = 0):
    """GoEmotions' ``text<TAB>ids<TAB>comment_id`` layout; one keyword per class, some multi-label train rows."""
    rng = np.random.default_rng(seed)
    fillers = ["i", "am", "so", "today", "the", "this", "really", "it", "was", "my"]
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in (("train.tsv", n_train), ("dev.tsv", n_dev)):
        lines = []
        for i in range(n):
            for c, label in enumerate(EKMAN_LABELS):
                ids = [c]
                toks = list(rng.choice(fillers, 4)) + [WORDS[label]]
                if name == "train.tsv" and i % 7 == 0:  # a multi-label row spreads its target mass
                    other = (c + 1) % len(EKMAN_LABELS)
                    ids.append(other)
                    toks.append(WORDS[EKMAN_LABELS[other]])
                rng.shuffle(toks)
                lines.append(f"{' '.join(toks)}\t{','.join(map(str, ids))}\tid{name[0]}{i}_{c}")
        (folder / name).write_text("\n".join(lines) + "\n")
    return folder


@pytest.mark.slow
def test_text_emotion_members_finalise_into_a_served_ensemble(tmp_path):
    ekman = _write_ekman(tmp_path / "ekman")
    run = tmp_path / "run"
    run.mkdir()
    recipe = EmotionRecipe(preset="tiny", lora_r=4, lora_alpha=8, max_length=16, lr=5e-3, head_lr=2e-2, epochs=3,
                           batch_size=16, seeds=(0, 1), keep_epochs=2)
    for seed in recipe.seeds:
        train_emotion_member(ekman, None, run, seed, recipe, deadline=1e12, log=lambda s: None)
    info = json.loads((run / "emotion_s0.json").read_text())
    assert info["epochs_run"] == 3 and info["kept_epochs"] == [2, 3] and info["n_train"] == 140
    assert np.load(run / "emotion_s1.npz")["logits"].shape == (3, 56, 7)  # every epoch's dev logits
    (run / "emotion_meta.json").write_text(json.dumps({"labels": list(EKMAN_LABELS), "encoder": recipe.encoder().to_dict(),
                                                       "recipe": recipe.__dict__, "class_weights": [1.0] * 7}))
    weights = tmp_path / "weights"
    metrics = _finalize_text_emotion(run, weights, ekman, log=lambda s: None)
    assert metrics["members"] == 2 and metrics["epochs"] == 3
    assert metrics["lexical_weight"] in (0.0, 0.1, 0.2, 0.3)
    assert metrics["dev_macro_f1"] >= 0.9  # one keyword per class: easy, the calibrated mix must get it
    model = load_text_classifier(weights / "text_emotion")
    assert isinstance(model, TextEnsemble) and len(model.members) == 2
    assert len(model.config.logit_bias) == 7
    p = model.predict_proba(["i am so furious today", "wow it was really a tuesday"]).numpy()
    assert p.shape == (2, 7) and np.allclose(p.sum(1), 1.0, atol=1e-5)
    assert EKMAN_LABELS[int(p[0].argmax())] == "anger"
    card_md = (weights / "text_emotion" / "MODEL_CARD.md").read_text()
    assert "2 MiniLM-L6" in card_md and "test.tsv was never read" in card_md and "by_ensemble_size" not in card_md
    card = json.loads((weights / "text_emotion" / "card.json").read_text())
    assert set(card["extra"]["by_ensemble_size"]) == {"1", "2"}


def test_a_deadline_that_cut_the_members_at_different_epochs_is_refused(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    recipe = EmotionRecipe(seeds=(0, 1), epochs=3)
    for seed, kept in ((0, [2, 3]), (1, [1])):
        (run / f"emotion_s{seed}.json").write_text(json.dumps({"seed": seed, "epochs_run": max(kept), "kept_epochs": kept,
                                                               "history": [], "n_train": 1}))
    (run / "emotion_meta.json").write_text(json.dumps({"labels": list(EKMAN_LABELS), "encoder": {}, "recipe": recipe.__dict__,
                                                       "class_weights": [1.0] * 7}))
    with pytest.raises(RuntimeError, match="different epochs"):
        _finalize_text_emotion(run, tmp_path / "w", tmp_path, log=lambda s: None)
