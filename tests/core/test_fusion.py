from __future__ import annotations

import torch

from core.encoders import EncoderOutput, create_encoder
from core.fusion import (
    FusionConfig,
    ModalityGate,
    ModalityGraphAttention,
    ProgressiveFusion,
    SpatioTemporalAttention,
    SpatioTemporalConfig,
    masked_softmax,
)
from core.heads import ClassificationHead, TaskRouter
from core.model import MultimodalModel


def test_masked_softmax_zero_rows_have_no_nan():
    scores = torch.randn(3, 4)
    mask = torch.tensor([[True, True, False, False], [False] * 4, [True] * 4])
    probs = masked_softmax(scores, mask)
    assert torch.isfinite(probs).all()
    assert torch.allclose(probs[0].sum(), torch.tensor(1.0)) and (probs[0, 2:] == 0).all()
    assert (probs[1] == 0).all()


def test_gate_weights_sum_to_one_over_present_and_zero_for_absent():
    gate = ModalityGate(dim=8, num_modalities=3, reliability_dim=1)
    summaries = torch.randn(5, 3, 8)
    present = torch.tensor([[1, 1, 1], [1, 0, 1], [0, 0, 1], [0, 1, 0], [0, 0, 0]], dtype=torch.bool)
    fused, weights = gate(summaries, present, torch.rand(5, 3, 1))
    assert torch.isfinite(fused).all() and torch.isfinite(weights).all()
    assert torch.allclose(weights[:4].sum(dim=1), torch.ones(4), atol=1e-6)
    assert (weights[~present] == 0).all()
    assert (weights[4] == 0).all() and (fused[4] == 0).all()


def test_gate_sees_reliability():
    torch.manual_seed(0)
    gate = ModalityGate(dim=4, num_modalities=2, reliability_dim=1)
    summaries = torch.randn(1, 2, 4)
    present = torch.ones(1, 2, dtype=torch.bool)
    _, low = gate(summaries, present, torch.tensor([[[0.0], [0.0]]]))
    _, high = gate(summaries, present, torch.tensor([[[5.0], [0.0]]]))
    assert not torch.allclose(low, high)


def test_graph_attention_ignores_absent_nodes():
    torch.manual_seed(0)
    graph = ModalityGraphAttention(dim=8, heads=2)
    nodes = torch.randn(2, 3, 8)
    present = torch.tensor([[True, True, False], [True, True, False]])
    out1, alpha = graph(nodes, present)
    nodes2 = nodes.clone()
    nodes2[:, 2] = 100.0  # garbage in the absent node must not change present nodes
    out2, _ = graph(nodes2, present)
    assert torch.allclose(out1[:, :2], out2[:, :2], atol=1e-6)
    assert (out1[:, 2] == 0).all()
    assert torch.allclose(alpha[:, :, :2, :].sum(-1), torch.ones(2, 2, 2), atol=1e-6)


def test_spatiotemporal_attention_shapes_and_mask_isolation():
    torch.manual_seed(0)
    st = SpatioTemporalAttention(SpatioTemporalConfig.from_name("tiny")).eval()
    grid = torch.randn(2, 4, 6, 16)
    mask = torch.ones(2, 4, 6, dtype=torch.bool)
    mask[1, 3, :] = False
    mask[1, :, 5] = False
    out, maps = st(grid, mask)
    assert out.shape == grid.shape and torch.isfinite(out).all()
    assert set(maps) == {"spatial", "temporal"}
    grid2 = grid.clone()
    grid2[1, 3, :] = 50.0
    grid2[1, :, 5] = -50.0
    out2, _ = st(grid2, mask)
    assert torch.allclose(out[1][mask[1]], out2[1][mask[1]], atol=1e-5)
    assert (out2[1][~mask[1]] == 0).all()
    pooled = SpatioTemporalAttention.pool(out, mask)
    assert pooled.shape == (2, 16)


def test_progressive_fusion_with_missing_modalities_is_finite():
    cfg = FusionConfig.from_name("tiny")
    fusion = ProgressiveFusion(["a", "b"], cfg)
    a = EncoderOutput(torch.randn(3, 2, 16), torch.tensor([[1, 1], [0, 0], [0, 0]], dtype=torch.bool))
    b = EncoderOutput(torch.randn(3, 5, 16), torch.tensor([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.bool))
    out = fusion({"a": a, "b": b})
    assert torch.isfinite(out.fused).all() and torch.isfinite(out.weights).all()
    assert out.present.tolist() == [[True, True], [False, True], [False, False]]
    assert out.weights[1].tolist() == [0.0, 1.0]
    assert (out.fused[2] == 0).all()


def test_model_routes_tasks_and_accepts_absent_modality():
    encoders = {
        "vec": create_encoder("vector", "mlp", in_dim=8, dim=16, hidden=16),
        "sig": create_encoder("signal", "conv_lstm", dim=16, conv_channels=8, conv_layers=2, lstm_hidden=8),
    }
    model = MultimodalModel(encoders, FusionConfig.from_name("tiny"), {"a": ClassificationHead(16, 3), "b": ClassificationHead(16, 5)})
    x = {"vec": torch.randn(4, 8), "sig": None}
    out = model(x, task="b")
    assert out.logits.shape == (4, 5)
    assert (out.weights[:, 1] == 0).all()
    routed = model({"vec": torch.randn(4, 8), "sig": torch.randn(4, 1, 128)}, task=["a", "b", "a", "b"]).logits
    assert routed["a"][0].tolist() == [0, 2] and routed["a"][1].shape == (2, 3)
    assert routed["b"][1].shape == (2, 5)


def test_router_rejects_unknown_task():
    import pytest

    router = TaskRouter({"intent": ClassificationHead(4, 2)})
    with pytest.raises(KeyError, match="intent"):
        router(torch.randn(1, 4), "emotion")


def test_model_refuses_inconsistent_batch_sizes():
    import pytest

    encoders = {name: create_encoder("vector", "mlp", in_dim=8, dim=16, hidden=16) for name in ("a", "b")}
    model = MultimodalModel(encoders, FusionConfig.from_name("tiny"), {"main": ClassificationHead(16, 2)})
    with pytest.raises(ValueError, match="disagree on the batch size"):
        model({"a": torch.randn(3, 8), "b": torch.randn(4, 8)})
    with pytest.raises(ValueError, match="no modality"):
        model({"a": None, "b": None})
    # Only a present mask: every modality absent, the batch size still comes from the mask.
    out = model({"a": None, "b": None}, present={"a": torch.zeros(2, dtype=torch.bool)})
    assert out.logits.shape == (2, 2) and (out.weights == 0).all()
