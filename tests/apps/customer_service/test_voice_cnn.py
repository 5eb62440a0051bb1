"""The voice-emotion CRNN experiment: training on log-mels, out-of-fold collection, corpus metrics."""

from __future__ import annotations

import numpy as np
import pytest

from apps.customer_service import voice_cnn as V


def test_tiny_crnn_trains_and_predicts_probabilities():
    rng = np.random.default_rng(0)
    feats = [rng.standard_normal((16, int(rng.integers(30, 80)))).astype(np.float32) for _ in range(12)]
    y = np.arange(12) % 9
    model = V.train_emotion_model(feats, y, V.EmotionTrainConfig(epochs=1, batch_size=4, crop_frames=40),
                                  preset="tiny", log=lambda _: None)
    proba = V.predict_feats(model, feats[:5])
    assert proba.shape == (5, 9) and np.allclose(proba.sum(1), 1.0, atol=1e-5)


def test_out_of_fold_collection_and_restricted_metrics(tmp_path):
    n = 6
    for seed in (0, 1):
        for fold, idx in enumerate(([0, 1, 2], [3, 4, 5])):
            proba = np.full((3, 9), 0.01, dtype=np.float32)
            proba[np.arange(3), [4, 8, 0]] = 0.9  # angry, boredom, neutral
            np.savez(tmp_path / f"emo_oof_f{fold}_s{seed}.npz", proba=proba, index=np.array(idx))
    oof = V.collect_oof(tmp_path, n)
    assert oof.shape == (n, 9)
    corpora = np.array(["ravdess"] * 3 + ["emodb"] * 3)
    y = np.array([4, 1, 0, 4, 8, 0])  # ravdess clip 2 is "calm": "boredom" is not a RAVDESS class
    m = V.corpus_metrics(oof, y, corpora)
    assert m["emodb_accuracy"] == 1.0
    assert m["ravdess_accuracy"] == pytest.approx(2 / 3, abs=1e-3)  # rounded to 4 places
    with pytest.raises(FileNotFoundError):
        V.collect_oof(tmp_path, n + 1)
