"""Fixtures for the contact-centre model/service tests: tiny bundles and generated audio/text."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

INTENTS = ["card_arrival", "lost_or_stolen_card", "transfer_fee_charged", "exchange_rate"]


def tone(seconds: float = 1.5, f0: float = 150.0, sr: int = 16000, loud: float = 0.3) -> np.ndarray:
    """A voiced-like harmonic signal with a small pitch glide and amplitude envelope."""
    t = np.arange(int(seconds * sr)) / sr
    f = f0 * (1 + 0.1 * np.sin(2 * np.pi * 1.5 * t))
    phase = 2 * np.pi * np.cumsum(f) / sr
    x = sum(np.sin(k * phase) / k for k in range(1, 8))
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t) ** 2
    return (loud * x * env / 3).astype(np.float32)


def wav_bytes(x: np.ndarray, sr: int = 16000) -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, x, sr, format="WAV", subtype="PCM_16")
    return buf.getvalue()


@pytest.fixture(scope="session")
def cs_tiny_bundles(tmp_path_factory) -> dict[str, Path]:
    """Bundles of tiny, randomly initialised models in the shipped format (config + safetensors + card)."""
    import torch

    from apps.customer_service.data import EKMAN_LABELS
    from apps.customer_service.encoders import TextEncoderConfig, VoiceEncoderConfig
    from apps.customer_service.model import (
        EmotionFusion,
        FusionConfigCS,
        TextClassifier,
        TextClassifierConfig,
        VoiceEmotionConfig,
        VoiceEmotionModel,
        voice_ensemble_state,
    )
    from core.bundle import ModelCard, save_bundle

    root = tmp_path_factory.mktemp("cs_bundles")
    torch.manual_seed(0)
    enc = TextEncoderConfig.from_name("tiny").to_dict()
    out = {}
    for name, labels in (("intent", INTENTS), ("text_emotion", list(EKMAN_LABELS))):
        cfg = TextClassifierConfig(labels=labels, encoder=TextEncoderConfig.from_dict(enc), head_dropout=0.0)
        model = TextClassifier(cfg)
        save_bundle(root / name, model.trainable_state(), {"model": cfg.to_dict()},
                    ModelCard(name=f"tiny-{name}", version="0.0.1", task="test"))
        out[name] = root / name
    vcfg = VoiceEmotionConfig(encoder=VoiceEncoderConfig.from_name("tiny"))
    members = [VoiceEmotionModel(vcfg), VoiceEmotionModel(vcfg)]
    save_bundle(root / "voice", voice_ensemble_state(members), {"model": vcfg.to_dict(), "ensemble": 2},
                ModelCard(name="tiny-voice", version="0.0.1", task="test"))
    out["voice"] = root / "voice"
    fusion = EmotionFusion(FusionConfigCS.from_name("tiny"))
    save_bundle(root / "fusion", fusion, {"model": fusion.config.to_dict()},
                ModelCard(name="tiny-fusion", version="0.0.1", task="test"))
    out["fusion"] = root / "fusion"
    from apps.customer_service.dialogue import DialogueActConfig, DialogueActModel

    acts = DialogueActModel(DialogueActConfig.from_name("tiny"))
    save_bundle(root / "dialogue_acts", acts.trainable_state(), {"model": acts.config.to_dict()},
                ModelCard(name="tiny-dialogue-acts", version="0.0.1", task="test"))
    out["dialogue_acts"] = root / "dialogue_acts"
    return out


@pytest.fixture()
def cs_settings(cs_tiny_bundles, tmp_path):
    from apps.customer_service.settings import CustomerServiceSettings

    return CustomerServiceSettings(
        intent_bundle=cs_tiny_bundles["intent"], text_emotion_bundle=cs_tiny_bundles["text_emotion"],
        voice_emotion_bundle=cs_tiny_bundles["voice"], fusion_bundle=cs_tiny_bundles["fusion"],
        dialogue_acts_bundle=cs_tiny_bundles["dialogue_acts"],
        database_url=f"sqlite:///{tmp_path}/cs.db", artefact_dir=tmp_path / "artefacts",
        max_audio_seconds=20.0, asr_lm="generic",
    )


def assert_voice_bundle_refuses_another_encoder(tmp_path, key: str, current_sha256: str, match: str) -> None:
    """The shipped voice bundle records ``key`` (e.g. "ge2e_sha256") of the encoder it was fitted on; a copy
    whose record names another encoder must not load."""
    import json
    import shutil

    import pytest

    from apps.customer_service.model import load_voice_model
    from apps.customer_service.settings import WEIGHTS_DIR
    from core.bundle import BundleError

    copy = tmp_path / "voice_emotion"
    shutil.copytree(WEIGHTS_DIR / "voice_emotion", copy)
    load_voice_model(copy)
    config = json.loads((copy / "config.json").read_text())
    fitted = next(c for c in [config, *config.get("members", [])] if key in c)
    assert fitted[key] == current_sha256
    fitted[key] = "0" * 64
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(BundleError, match=match):
        load_voice_model(copy)
