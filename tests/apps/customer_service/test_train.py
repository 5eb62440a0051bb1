"""The CPU training parts end to end on generated corpora: voice ensemble -> bundle -> fusion -> bundle."""

from __future__ import annotations

import json
import shutil

import numpy as np

from apps.customer_service.model import AveragedVoiceModel, load_fusion, load_voice_model
from apps.customer_service.train import (
    FusionTrainConfig,
    LinearVoiceConfig,
    VoiceTrainConfig,
    run_fusion_training,
    run_linear_voice_training,
    run_voice_training,
)
from tests.apps.customer_service.conftest import tone
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
                                 cache_dir=tmp_path / "cache", log=lambda s: None, model="mlp")
    assert {"ravdess_macro_f1", "emodb_macro_f1"} <= set(metrics)
    voice = load_voice_model(weights / "voice_emotion")
    assert len(voice.members) == 2 and voice.blocks == ("stats",)
    assert np.load(runs / "voice_oof.npz")["oof"].shape == (15, 9)

    # The shipped kind: linear model on openSMILE functionals averaged with the MLP ensemble.
    metrics = run_linear_voice_training(data, runs, weights, LinearVoiceConfig(blocks=("egemaps",), grid=(1e-3, 1e-1)),
                                        tmp_path / "cache", log=lambda s: None, mlp_weight=0.5,
                                        mlp_cfg=VoiceTrainConfig(epochs=5, ensemble=2))
    assert {"ravdess_macro_f1", "linear_emodb_macro_f1", "mlp_ravdess_macro_f1"} <= set(metrics)
    voice = load_voice_model(weights / "voice_emotion")
    assert isinstance(voice, AveragedVoiceModel) and voice.blocks == ("egemaps", "stats")
    assert json.loads((weights / "voice_emotion" / "config.json").read_text())["type"] == "average"
    p = voice.predict_proba(np.stack([voice.features(tone(0.7))]))
    assert p.shape == (1, 9) and abs(p.sum() - 1) < 1e-5
    oof = np.load(runs / "voice_oof.npz")["oof"]
    assert oof.shape == (15, 9) and np.allclose(oof.sum(1), 1, atol=1e-4)

    # The default kind: three linear models averaged, on Whisper statistics, GE2E statistics with
    # speed-perturbed training copies and openSMILE functionals without.
    metrics = run_linear_voice_training(data, runs, weights, LinearVoiceConfig(blocks=("whisper",), grid=(1e-3, 1e-1),
                                                                             speed_rates=()),
                                        tmp_path / "cache", log=lambda s: None,
                                        others=(LinearVoiceConfig(blocks=("ge2e",), grid=(1e-3,), speed_rates=(0.9,)),
                                                LinearVoiceConfig(blocks=("egemaps",), grid=(1e-3,), speed_rates=())))
    assert {"ravdess_macro_f1", "member_a_emodb_macro_f1", "member_b_ravdess_macro_f1",
            "member_c_emodb_macro_f1"} <= set(metrics)
    # every member trains with telephone-band copies (the default) and is also scored on band-limited clips
    assert {"telephone_ravdess_macro_f1", "member_c_telephone_emodb_macro_f1", "g711_emodb_macro_f1"} <= set(metrics)
    card = (weights / "voice_emotion" / "MODEL_CARD.md").read_text()
    assert "telephone-band copy" in card and "Whisper base encoder" in card
    trio = load_voice_model(weights / "voice_emotion")
    assert isinstance(trio, AveragedVoiceModel) and trio.blocks == ("whisper", "ge2e", "egemaps")
    config = json.loads((weights / "voice_emotion" / "config.json").read_text())
    assert [m["blocks"] for m in config["members"]] == [["whisper"], ["ge2e"], ["egemaps"]]
    assert "whisper_sha256" in config["members"][0] and "ge2e_sha256" in config["members"][1]
    assert config["weights"] == [1 / 3] * 3
    p = trio.predict_proba(np.stack([trio.features(tone(0.7))]))
    assert p.shape == (1, 9) and abs(p.sum() - 1) < 1e-5
    assert ", (b) a class-balanced logistic regression" in card and " and (c) a class-balanced" in card

    report = run_fusion_training(data, runs, weights, FusionTrainConfig(pairs_per_clip=2, epochs=2), log=lambda s: None)
    assert {"clean_fused_macro_f1", "noisy_mean_text_weight", "fixed_mean_text_weight"} <= set(report)
    fusion = load_fusion(weights / "fusion")
    assert "by label" in (weights / "fusion" / "MODEL_CARD.md").read_text().lower()
    assert fusion.version == "1.0.0"


def test_fusion_without_text_decides_as_the_voice_does():
    """No class bias is learned: whatever the gate learns, an absent (or zero-weight) text leaves the voice's decision."""
    import numpy as np
    import torch

    from apps.customer_service.train import FusionTrainConfig, build_pairs, fit_fusion

    rng = np.random.default_rng(0)
    voice_y = rng.integers(0, 7, 200)
    voice_p = rng.dirichlet(np.ones(7), 200).astype(np.float32)
    text_y = rng.integers(0, 7, 100)
    text_p = np.eye(7, dtype=np.float32)[text_y] * 0.7 + 0.3 / 7
    cfg = FusionTrainConfig(epochs=3, pairs_per_clip=2)
    model = fit_fusion(build_pairs(voice_p, voice_y, text_p, text_y, text_p[:2], cfg, rng, "mixed"), cfg)
    assert torch.count_nonzero(model.class_bias) == 0
    present = torch.tensor([[True, False]]).repeat(200, 1)
    logp, weights = model(torch.tensor(voice_p), torch.tensor(text_p[:1]).repeat(200, 1), present, torch.ones(200))
    assert torch.equal(logp.argmax(1), torch.tensor(voice_p).argmax(1)) and torch.all(weights[:, 1] == 0)
