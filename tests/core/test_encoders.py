"""One contract test over every registered encoder, core's and every installed app's."""

from __future__ import annotations

import pytest
import torch

from core.encoders import EncoderOutput, get_entry, list_encoders
from core.plugins import discover_plugins


def _load_app_encoders() -> None:
    for plugin in discover_plugins():
        try:
            plugin.load_encoders()
        except ModuleNotFoundError as exc:  # an app whose encoders are not written yet
            if not (exc.name or "").startswith("apps."):
                raise


_load_app_encoders()
ENCODERS = list_encoders()


def test_registry_has_generic_encoders():
    assert ("vector", "mlp") in ENCODERS
    assert ("signal", "conv_lstm") in ENCODERS


@pytest.mark.parametrize("key", ENCODERS, ids=[f"{m}/{n}" for m, n in ENCODERS])
def test_encoder_contract(key):
    entry = get_entry(*key)
    assert entry.example is not None, f"encoder {key} registers no example for the contract test"
    torch.manual_seed(0)
    kwargs, batch = entry.example()
    encoder = entry.builder(**kwargs)
    assert encoder.modality == key[0]
    assert encoder.dim > 0
    encoder.train()
    out = encoder(batch)
    assert isinstance(out, EncoderOutput)
    batch_size, tokens, dim = out.tokens.shape
    assert batch_size == 2 and tokens >= 1 and dim == encoder.dim
    assert out.mask.dtype == torch.bool and out.mask.shape == (batch_size, tokens)
    assert out.mask.any(dim=1).all(), "every example sample should have at least one valid token"
    assert torch.isfinite(out.tokens).all()
    # Gradients reach every trainable parameter through the valid tokens.
    assert any(p.requires_grad for p in encoder.parameters()), f"{key}: the example must build a trainable encoder"
    (out.tokens * out.mask.unsqueeze(-1)).pow(2).mean().backward()
    missing = [n for n, p in encoder.named_parameters() if p.requires_grad and (p.grad is None or not torch.isfinite(p.grad).all())]
    assert not missing, f"no gradient reached: {missing[:5]}"
    # (A grad may be exactly zero by design, e.g. LoRA's A matrices while B is zero-initialised.)
    assert any(p.grad.abs().sum() > 0 for p in encoder.parameters() if p.grad is not None)


def test_signal_encoder_masks_padded_tail():
    kwargs, batch = get_entry("signal", "conv_lstm").example()
    encoder = get_entry("signal", "conv_lstm").builder(**kwargs)
    out = encoder(batch)
    assert out.mask[0].all()
    assert out.mask[1].sum() == out.mask.shape[1] // 2  # half-length signal -> half the tokens


def test_unknown_encoder_names_the_registered_ones():
    from core.encoders import create_encoder

    with pytest.raises(KeyError, match="registered"):
        create_encoder("vector", "does-not-exist")
