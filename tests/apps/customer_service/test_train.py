"""The CPU training parts end to end on generated corpora: voice ensemble -> bundle -> fusion -> bundle."""

from __future__ import annotations

import shutil

import numpy as np

from apps.customer_service.model import load_fusion, load_voice_model
from apps.customer_service.train import (
    FusionTrainConfig,
    VoiceTrainConfig,
    run_fusion_training,
    run_voice_training,
)
from tests.apps.customer_service.test_data import _write_emodb, _write_ravdess


def test_voice_and_fusion_training_write_loadable_bundles(tmp_path, cs_tiny_bundles):
    data = tmp_path / "data"
    (data / "ravdess").mkdir(parents=True)
    _write_ravdess(data / "ravdess", actors=(1, 2, 3, 4), emotions=((1, "neutral"), (5, "angry"), (3, "happy")))
    _write_emodb(data / "emodb")
    ekman = data / "goemotions" / "ekman"
    ekman.mkdir(parents=True)
    rows = [f"comment {i} about feelings\t{i % 7}\tid{i}" for i in range(70)]
    (ekman / "dev.tsv").write_text("\n".join(rows) + "\n")
    weights = tmp_path / "weights"
    shutil.copytree(cs_tiny_bundles["text_emotion"], weights / "text_emotion")
    runs = tmp_path / "runs"

    metrics = run_voice_training(data, runs, weights, VoiceTrainConfig(epochs=5, ensemble=2),
                                 cache_dir=tmp_path / "cache", log=lambda s: None)
    assert {"ravdess_macro_f1", "emodb_macro_f1"} <= set(metrics)
    voice = load_voice_model(weights / "voice_emotion")
    assert len(voice.members) == 2
    assert np.load(runs / "voice_oof.npz")["oof"].shape == (15, 9)

    report = run_fusion_training(data, runs, weights, FusionTrainConfig(pairs_per_clip=2, epochs=2), log=lambda s: None)
    assert {"clean_fused_macro_f1", "noisy_mean_text_weight", "fixed_mean_text_weight"} <= set(report)
    fusion = load_fusion(weights / "fusion")
    assert "by label" in (weights / "fusion" / "MODEL_CARD.md").read_text().lower()
    assert fusion.version == "1.0.0"
