"""The GE2E speaker encoder: weight import from Resemblyzer's layout, the bundled weights, the feature block."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from apps.customer_service import ge2e
from apps.customer_service.ge2e import GE2EConfig, GE2EEncoder, import_resemblyzer, load_encoder
from tests.apps.customer_service.conftest import assert_voice_bundle_refuses_another_encoder, tone


def _resemblyzer_checkpoint(path, config: GE2EConfig) -> torch.nn.LSTM:
    """A randomly initialised checkpoint in Resemblyzer's layout (one multi-layer nn.LSTM + projection)."""
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(config.n_mels, config.hidden, config.layers, batch_first=True)
    state = {f"lstm.{k}": v for k, v in lstm.state_dict().items()}
    state |= {"linear.weight": torch.randn(4, config.hidden), "linear.bias": torch.zeros(4),
              "similarity_weight": torch.ones(1), "similarity_bias": torch.zeros(1)}
    torch.save({"step": 1, "model_state": state, "optimizer_state": None}, path)
    return lstm


def test_import_maps_every_layer_of_the_multilayer_lstm(tmp_path):
    config = GE2EConfig.from_name("tiny")
    reference = _resemblyzer_checkpoint(tmp_path / "pretrained.pt", config)
    bundle = import_resemblyzer(tmp_path / "pretrained.pt", tmp_path / "encoder", config)
    encoder = load_encoder(bundle)
    # The bundle stores fp16: compare with the reference rounded the same way.
    with torch.no_grad():
        for p in reference.parameters():
            p.copy_(p.half().float())
        mel = torch.rand(2, 25, config.n_mels)
        expected, _ = reference(mel)
        tokens = encoder({"mel": mel}).tokens
    assert tokens.shape == (2, 25, config.layers * config.hidden)
    torch.testing.assert_close(tokens[..., -config.hidden:], expected, rtol=1e-4, atol=1e-5)


def test_import_refuses_a_checkpoint_of_another_shape(tmp_path):
    _resemblyzer_checkpoint(tmp_path / "pretrained.pt", GE2EConfig.from_name("tiny"))
    with pytest.raises((KeyError, RuntimeError)):
        import_resemblyzer(tmp_path / "pretrained.pt", tmp_path / "encoder", GE2EConfig())


def test_statistics_ignore_recording_gain_and_follow_the_voice(tmp_path):
    config = GE2EConfig.from_name("tiny")
    _resemblyzer_checkpoint(tmp_path / "pretrained.pt", config)
    encoder = load_encoder(import_resemblyzer(tmp_path / "pretrained.pt", tmp_path / "encoder", config))
    quiet, loud = encoder.utterance_statistics(tone(1.0, loud=0.05)), encoder.utterance_statistics(tone(1.0, loud=0.6))
    assert quiet.shape == (2 * config.layers * config.hidden,) and quiet.dtype == np.float32
    np.testing.assert_allclose(quiet, loud, rtol=1e-3, atol=1e-5)  # RMS-normalised before the mel frames
    low, high = encoder.utterance_statistics(tone(1.0, f0=110)), encoder.utterance_statistics(tone(1.0, f0=260))
    assert np.abs(low - high).max() > 1e-3


def test_shipped_encoder_is_the_resemblyzer_network_and_feeds_the_ge2e_block():
    from apps.customer_service.smile import voice_features

    encoder = load_encoder()
    assert isinstance(encoder, GE2EEncoder) and encoder.dim == 768
    x = voice_features(tone(1.2), (ge2e.BLOCK,))
    assert x.shape == (ge2e.feature_dim(),) == (1536,) and np.all(np.isfinite(x))
    assert x[768:].min() >= 0 and x[768:].max() > 0  # standard deviations of frame outputs


def test_a_voice_bundle_fitted_on_another_encoder_is_refused(tmp_path):
    assert_voice_bundle_refuses_another_encoder(tmp_path, "ge2e_sha256", load_encoder().sha256, "speaker encoder")
