"""On generated two-view data, the fused model beats each view alone and survives a missing view."""

from __future__ import annotations

import torch
from torch.nn import functional as F
from torch.utils.data import TensorDataset

from core.encoders import create_encoder
from core.fusion import FusionConfig
from core.heads import ClassificationHead
from core.model import MultimodalModel
from core.training import TrainConfig, fit


def _two_view_data(n: int, seed: int):
    """Label = 2·bit_a + bit_b; view A carries only bit_a, view B only bit_b (plus noise)."""
    g = torch.Generator().manual_seed(seed)
    bit_a, bit_b = torch.randint(0, 2, (n,), generator=g), torch.randint(0, 2, (n,), generator=g)
    centre = torch.randn(2, 8, generator=torch.Generator().manual_seed(99)) * 2
    view_a = centre[bit_a] + 0.5 * torch.randn(n, 8, generator=g)
    view_b = centre[bit_b] + 0.5 * torch.randn(n, 8, generator=g)
    return view_a, view_b, 2 * bit_a + bit_b


def _model():
    encoders = {name: create_encoder("vector", "mlp", in_dim=8, dim=16, hidden=32, dropout=0.0) for name in ("a", "b")}
    return MultimodalModel(encoders, FusionConfig.from_name("tiny"), {"main": ClassificationHead(16, 4, dropout=0.0)})


def _accuracy(model, a, b, y, present=None):
    model.eval()
    with torch.no_grad():
        logits = model({"a": a, "b": b}, present=present).logits
    return (logits.argmax(-1) == y).float().mean().item()


def test_fusion_beats_single_views_and_handles_missing():
    torch.manual_seed(0)
    train_a, train_b, train_y = _two_view_data(768, seed=1)
    test_a, test_b, test_y = _two_view_data(400, seed=2)
    # Drop one view for half of the training samples so the model learns to cope.
    drop = torch.rand(len(train_y), generator=torch.Generator().manual_seed(3))
    keep_a, keep_b = drop >= 0.25, (drop < 0.25) | (drop >= 0.5)
    dataset = TensorDataset(train_a, train_b, train_y, keep_a, keep_b)

    def loss_fn(model, batch, device):
        a, b, y, ka, kb = batch
        return F.cross_entropy(model({"a": a, "b": b}, present={"a": ka, "b": kb}).logits, y)

    model = _model()
    fit(model, dataset, None, loss_fn=loss_fn, config=TrainConfig(epochs=25, batch_size=64, lr=3e-3, patience=0, progress=False, scheduler="none"))

    n = len(test_y)
    ones, zeros = torch.ones(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool)
    fused = _accuracy(model, test_a, test_b, test_y)
    only_a = _accuracy(model, test_a, test_b, test_y, {"a": ones, "b": zeros})
    only_b = _accuracy(model, test_a, test_b, test_y, {"a": zeros, "b": ones})
    assert fused > 0.9, fused
    assert fused > only_a + 0.2 and fused > only_b + 0.2, (fused, only_a, only_b)
    # One view alone still recovers its bit: about 0.5, far above chance (0.25).
    assert only_a > 0.4 and only_b > 0.4, (only_a, only_b)
    # Half the batch missing view B: the present half stays right, the rest falls back gracefully.
    half = torch.arange(n) % 2 == 0
    mixed = _accuracy(model, test_a, test_b, test_y, {"a": ones, "b": half})
    assert mixed > (fused + only_a) / 2 - 0.05, (mixed, fused, only_a)
