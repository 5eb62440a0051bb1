from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from core.losses import ContrastiveLoss, class_weights, focal_loss, info_nce
from core.metrics import (
    classification_metrics,
    expected_calibration_error,
    median_rank,
    recall_at_k,
    retrieval_metrics,
)


def test_info_nce_low_for_aligned_high_for_shuffled():
    torch.manual_seed(0)
    a = torch.randn(64, 32)
    aligned = info_nce(a, a + 0.01 * torch.randn_like(a), 0.07)
    shuffled = info_nce(a, a[torch.randperm(64)], 0.07)
    assert aligned < 0.1
    assert shuffled > np.log(64) - 1.0
    assert shuffled > aligned * 20


def test_contrastive_temperature_is_learnable_and_clamped():
    loss = ContrastiveLoss(initial_temperature=0.07, min_temperature=0.05)
    a, b = torch.randn(8, 4), torch.randn(8, 4)
    loss(a, b).backward()
    assert loss.log_inverse_temperature.grad is not None
    with torch.no_grad():
        loss.log_inverse_temperature.fill_(100.0)
    assert loss.temperature.item() == pytest.approx(0.05)


def test_focal_with_gamma_zero_equals_weighted_cross_entropy():
    torch.manual_seed(0)
    logits, targets = torch.randn(16, 3), torch.randint(0, 3, (16,))
    weight = class_weights([10, 5, 1])
    assert torch.allclose(focal_loss(logits, targets, gamma=0.0, weight=weight), F.cross_entropy(logits, targets, weight=weight))
    assert focal_loss(logits, targets, gamma=2.0) < F.cross_entropy(logits, targets)


def test_class_weights_favour_rare_classes():
    w = class_weights([100, 10])
    assert w[1] > w[0] and torch.isclose(w.mean(), torch.tensor(1.0))


def test_recall_at_k_and_median_rank_by_hand():
    # Row 0 true match ranked 1st, row 1 ranked 2nd, row 2 ranked 3rd.
    sim = torch.tensor([[0.9, 0.1, 0.0], [0.8, 0.5, 0.1], [0.9, 0.8, 0.1]])
    assert recall_at_k(sim, 1) == pytest.approx(1 / 3)
    assert recall_at_k(sim, 2) == pytest.approx(2 / 3)
    assert median_rank(sim) == 2.0
    constant = torch.zeros(4, 4)
    assert recall_at_k(constant, 1) == 0.0  # ties cannot look perfect


def test_retrieval_metrics_perfect_for_identical_embeddings():
    a = torch.randn(10, 8)
    metrics = retrieval_metrics(a, a)
    assert metrics["recall@1_a2b"] == 1.0 and metrics["median_rank_b2a"] == 1.0


def test_classification_metrics_multiclass_and_binary():
    y = np.array([0, 1, 2, 2])
    probs = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.2, 0.7], [0.6, 0.3, 0.1]])
    m = classification_metrics(y, probs)
    assert m["accuracy"] == 0.75
    assert m["uar"] == pytest.approx((1 + 1 + 0.5) / 3)
    assert m["confusion_matrix"] == [[1, 0, 0], [0, 1, 0], [1, 0, 1]]
    binary = classification_metrics(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
    assert binary["roc_auc"] == pytest.approx(0.75)


def test_ece_zero_when_calibrated():
    assert expected_calibration_error(np.array([1, 1, 0, 0]), np.array([1.0, 1.0, 0.0, 0.0])) == 0.0
    assert expected_calibration_error(np.array([0, 0]), np.array([0.9, 0.9])) == pytest.approx(0.9)


def test_aligner_learns_paired_retrieval():
    from core.fusion import CrossModalAligner

    torch.manual_seed(0)
    latent = torch.randn(256, 4)
    view_a = latent @ torch.randn(4, 12) + 0.05 * torch.randn(256, 12)
    view_b = torch.tanh(latent @ torch.randn(4, 10)) + 0.05 * torch.randn(256, 10)
    aligner = CrossModalAligner({"a": 12, "b": 10}, dim=16)
    before = retrieval_metrics(aligner.embed("a", view_a[:64]).detach(), aligner.embed("b", view_b[:64]).detach())
    optimizer = torch.optim.Adam(aligner.parameters(), lr=1e-2)
    for _ in range(150):
        optimizer.zero_grad()
        aligner("a", view_a[:192], "b", view_b[:192]).backward()
        optimizer.step()
    with torch.no_grad():
        after = retrieval_metrics(aligner.embed("a", view_a[192:]), aligner.embed("b", view_b[192:]))
    assert after["recall@5_a2b"] > 0.5 and after["recall@5_a2b"] > before["recall@5_a2b"] + 0.2
    assert after["median_rank_a2b"] < before["median_rank_a2b"]
