from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from core.compression import channel_sparsity, export_onnx, onnx_session, prune_channels, quantize_int8


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv1d(1, 8, 5, padding=2), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 32, 4)).eval()


def test_onnx_export_matches_torch(tmp_path):
    model = _model()
    x = torch.randn(3, 1, 32)
    path = export_onnx(model, (x,), tmp_path / "m.onnx", ["signal"], ["logits"])
    session = onnx_session(path)
    out = session.run(None, {"signal": torch.randn(5, 1, 32).numpy()})[0]  # dynamic batch
    assert out.shape == (5, 4)
    ort_out = session.run(None, {"signal": x.numpy()})[0]
    np.testing.assert_allclose(ort_out, model(x).detach().numpy(), atol=1e-4)


def test_int8_quantisation_stays_close():
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4)).eval()
    x = torch.randn(32, 16)
    quantised = quantize_int8(model)
    assert any("quantized" in type(m).__module__ for m in quantised.modules())
    assert torch.allclose(quantised(x), model(x), atol=0.05)


@pytest.mark.parametrize("amount", [0.25, 0.5])
def test_structured_pruning_zeroes_that_share_of_channels(amount):
    pruned = prune_channels(_model(), amount=amount)
    assert channel_sparsity(pruned) == pytest.approx(amount, abs=0.05)
    assert channel_sparsity(_model()) == 0.0
